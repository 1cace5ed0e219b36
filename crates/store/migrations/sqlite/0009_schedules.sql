-- Scheduled tasks: a project's task templates (clanker, phase, instructions),
-- schedules over them (a cron expression in a time zone, or an interval;
-- the next slot is claimed by one guarded update, so exactly one server runs
-- it), and one execution row per slot (unique: a slot runs once). The twin
-- is ../postgres/0009_schedules.sql.
CREATE TABLE task_templates (
    id                  BLOB PRIMARY KEY NOT NULL,
    project_id          BLOB NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
    name                TEXT NOT NULL,
    clanker             TEXT NOT NULL,
    phase               TEXT NOT NULL CHECK (phase IN ('research', 'planning', 'execution')),
    instructions        TEXT NOT NULL,
    open_pull_request   BOOLEAN NOT NULL,
    secrets             TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE UNIQUE INDEX task_templates_name_key ON task_templates (project_id, name);

CREATE TABLE schedules (
    id                  BLOB PRIMARY KEY NOT NULL,
    project_id          BLOB NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
    template_id         BLOB NOT NULL REFERENCES task_templates (id) ON DELETE RESTRICT,
    name                TEXT NOT NULL,
    cadence             TEXT NOT NULL CHECK (cadence IN ('cron', 'interval')),
    expression          TEXT NOT NULL,
    timezone            TEXT NOT NULL,
    interval_secs       INTEGER NOT NULL,
    anchor_at           TEXT NOT NULL,
    active              BOOLEAN NOT NULL,
    overlap             TEXT NOT NULL CHECK (overlap IN ('skip', 'queue')),
    missed              TEXT NOT NULL CHECK (missed IN ('run_once', 'skip')),
    standing_ticket_id  BLOB REFERENCES tickets (id) ON DELETE RESTRICT,
    next_run_at         TEXT,
    last_run_at         TEXT,
    runs                INTEGER NOT NULL DEFAULT 0,
    failures            INTEGER NOT NULL DEFAULT 0,
    skipped             INTEGER NOT NULL DEFAULT 0,
    created_by          BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE UNIQUE INDEX schedules_name_key ON schedules (project_id, name);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE active;

CREATE TABLE schedule_executions (
    id                  BLOB PRIMARY KEY NOT NULL,
    schedule_id         BLOB NOT NULL REFERENCES schedules (id) ON DELETE RESTRICT,
    slot                TEXT NOT NULL,
    trigger             TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual')),
    status              TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'skipped', 'cancelled')),
    ticket_id           BLOB REFERENCES tickets (id) ON DELETE RESTRICT,
    job_id              BLOB,
    message             TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT
);
CREATE UNIQUE INDEX schedule_executions_slot_key ON schedule_executions (schedule_id, slot);
CREATE INDEX schedule_executions_schedule ON schedule_executions (schedule_id, id);
-- At most one execution of a schedule waits, and at most one runs, whichever server writes.
CREATE UNIQUE INDEX schedule_executions_one_waiting ON schedule_executions (schedule_id) WHERE status = 'queued';
CREATE UNIQUE INDEX schedule_executions_one_running ON schedule_executions (schedule_id) WHERE status = 'running';
CREATE INDEX schedule_executions_job ON schedule_executions (job_id) WHERE job_id IS NOT NULL;
