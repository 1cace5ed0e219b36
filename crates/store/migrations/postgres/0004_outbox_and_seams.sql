-- The outbox: one row per domain event, written in the same transaction as
-- the change it describes; consumers read it in id order with a cursor each.
-- The SQLite twin is ../sqlite/0004_outbox_and_seams.sql.
CREATE TABLE events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Stable across redeliveries: receivers dedupe on it.
    event_id        UUID NOT NULL UNIQUE,
    type            TEXT NOT NULL,
    project_id      UUID,
    ticket_id       UUID,
    job_id          UUID,
    data            JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_ticket ON events (ticket_id, id);

-- One row per named consumer: how far it has read, and which server holds
-- its lease (only the holder reads, so no event runs twice at once).
CREATE TABLE event_consumers (
    name            TEXT PRIMARY KEY,
    cursor          BIGINT NOT NULL DEFAULT 0,
    owner           TEXT,
    lease_until     TIMESTAMPTZ,
    handled         BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_at      TIMESTAMPTZ NOT NULL
);

-- Which compute target ran a job, and what its typed result says (usage
-- already has columns).
ALTER TABLE jobs ADD COLUMN compute_kind TEXT;
ALTER TABLE jobs ADD COLUMN branch TEXT;
ALTER TABLE jobs ADD COLUMN commit_sha TEXT;
ALTER TABLE jobs ADD COLUMN pull_request_url TEXT;
-- The bootstrap answers one worker per job: the first to ask, named by the
-- hash of the value it sends (its retries are answered again).
ALTER TABLE jobs ADD COLUMN bootstrapped_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN bootstrap_instance TEXT;

-- Clankers are scoped to projects: shared ones run anywhere, others only in
-- the projects listed. Existing clankers stay shared, so nothing breaks.
ALTER TABLE clankers ADD COLUMN shared BOOLEAN NOT NULL DEFAULT TRUE;
CREATE TABLE clanker_projects (
    clanker_id      UUID NOT NULL REFERENCES clankers (id) ON DELETE CASCADE,
    project_id      UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (clanker_id, project_id)
);
