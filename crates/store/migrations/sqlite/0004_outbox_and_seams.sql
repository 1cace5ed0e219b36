-- The outbox: one row per domain event, written in the same transaction as
-- the change it describes; consumers read it in id order with a cursor each.
-- The PostgreSQL twin is ../postgres/0004_outbox_and_seams.sql.
CREATE TABLE events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Stable across redeliveries: receivers dedupe on it.
    event_id        BLOB NOT NULL UNIQUE,
    type            TEXT NOT NULL,
    project_id      BLOB,
    ticket_id       BLOB,
    job_id          BLOB,
    data            TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX events_ticket ON events (ticket_id, id);

-- One row per named consumer: how far it has read, and which server holds
-- its lease (only the holder reads, so no event runs twice at once).
CREATE TABLE event_consumers (
    name            TEXT PRIMARY KEY,
    cursor          BIGINT NOT NULL DEFAULT 0,
    owner           TEXT,
    lease_until     TEXT,
    handled         BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_at      TEXT NOT NULL
);

-- Which compute target ran a job, and what its typed result says (usage
-- already has columns).
ALTER TABLE jobs ADD COLUMN compute_kind TEXT;
ALTER TABLE jobs ADD COLUMN branch TEXT;
ALTER TABLE jobs ADD COLUMN commit_sha TEXT;
ALTER TABLE jobs ADD COLUMN pull_request_url TEXT;
-- The bootstrap answers one worker per job: the first to ask, named by the
-- hash of the value it sends (its retries are answered again).
ALTER TABLE jobs ADD COLUMN bootstrapped_at TEXT;
ALTER TABLE jobs ADD COLUMN bootstrap_instance TEXT;

-- Clankers are scoped to projects: shared ones run anywhere, others only in
-- the projects listed. Existing clankers stay shared, so nothing breaks.
ALTER TABLE clankers ADD COLUMN shared BOOLEAN NOT NULL DEFAULT 1;
CREATE TABLE clanker_projects (
    clanker_id      BLOB NOT NULL REFERENCES clankers (id) ON DELETE CASCADE,
    project_id      BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (clanker_id, project_id)
);
