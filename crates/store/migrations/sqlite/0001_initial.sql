-- Viberglass schema, version 1 (SQLite).
-- Ids are UUIDv7 stored as 16-byte BLOBs, so they sort by creation time.
-- Timestamps are UTC, stored as TEXT in one fixed format so they compare as text.
-- The PostgreSQL twin of this file is ../postgres/0001_initial.sql: change both together.

CREATE TABLE users (
    id              BLOB PRIMARY KEY NOT NULL,
    email           TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL DEFAULT '',
    password_hash   TEXT,
    is_admin        BOOLEAN NOT NULL DEFAULT FALSE,
    disabled_at     TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE sessions (
    id              BLOB PRIMARY KEY NOT NULL,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash      TEXT NOT NULL UNIQUE,
    ip              TEXT,
    user_agent      TEXT,
    created_at      TEXT NOT NULL,
    last_seen_at    TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    revoked_at      TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id              BLOB PRIMARY KEY NOT NULL,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    token_hash      TEXT NOT NULL UNIQUE,
    token_prefix    TEXT NOT NULL,
    expires_at      TEXT,
    last_used_at    TEXT,
    revoked_at      TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE secrets (
    id              BLOB PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL UNIQUE,
    backend         TEXT NOT NULL CHECK (backend IN ('env', 'database', 'ssm')),
    -- env: the variable name; ssm: the parameter path; database: unused.
    reference       TEXT,
    ciphertext      BLOB,
    nonce           BLOB,
    key_id          TEXT,
    description     TEXT NOT NULL DEFAULT '',
    created_by      BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE integrations (
    id              BLOB PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    base_url        TEXT,
    config          TEXT NOT NULL DEFAULT '{}',
    credential_secret_id BLOB REFERENCES secrets (id) ON DELETE RESTRICT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE projects (
    id                      BLOB PRIMARY KEY NOT NULL,
    name                    TEXT NOT NULL UNIQUE,
    slug                    TEXT NOT NULL UNIQUE,
    description             TEXT NOT NULL DEFAULT '',
    repository_url          TEXT,
    base_branch             TEXT NOT NULL DEFAULT 'main',
    pr_repository_url       TEXT,
    pr_base_branch          TEXT,
    branch_name_template    TEXT NOT NULL,
    scm_integration_id      BLOB REFERENCES integrations (id) ON DELETE SET NULL,
    credential_secret_id    BLOB REFERENCES secrets (id) ON DELETE RESTRICT,
    scm_username            TEXT NOT NULL DEFAULT 'x-access-token',
    max_execution_secs      INTEGER NOT NULL CHECK (max_execution_secs > 0),
    max_concurrent_jobs     INTEGER NOT NULL CHECK (max_concurrent_jobs > 0),
    research_needs_approval BOOLEAN NOT NULL DEFAULT FALSE,
    planning_needs_approval BOOLEAN NOT NULL DEFAULT TRUE,
    allow_run_all           BOOLEAN NOT NULL DEFAULT FALSE,
    agent_instructions      TEXT NOT NULL DEFAULT '',
    archived_at             TEXT,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL
);

CREATE TABLE project_members (
    project_id      BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('viewer', 'member', 'maintainer')),
    created_at      TEXT NOT NULL,
    PRIMARY KEY (project_id, user_id)
);

CREATE TABLE project_secrets (
    project_id      BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    secret_id       BLOB NOT NULL REFERENCES secrets (id) ON DELETE RESTRICT,
    PRIMARY KEY (project_id, secret_id)
);

CREATE TABLE prompt_templates (
    id              BLOB PRIMARY KEY NOT NULL,
    project_id      BLOB REFERENCES projects (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    template        TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE UNIQUE INDEX prompt_templates_system_kind_key ON prompt_templates (kind) WHERE project_id IS NULL;
CREATE UNIQUE INDEX prompt_templates_project_kind_key ON prompt_templates (project_id, kind) WHERE project_id IS NOT NULL;

CREATE TABLE clankers (
    id              BLOB PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    slug            TEXT NOT NULL UNIQUE,
    description     TEXT NOT NULL DEFAULT '',
    agent           TEXT NOT NULL,
    agent_settings  TEXT NOT NULL DEFAULT '{}',
    compute         TEXT NOT NULL,
    compute_config  TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'inactive' CHECK (status IN ('inactive', 'deploying', 'active', 'failed')),
    status_message  TEXT,
    max_concurrent_jobs INTEGER NOT NULL DEFAULT 1 CHECK (max_concurrent_jobs > 0),
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE clanker_secrets (
    clanker_id      BLOB NOT NULL REFERENCES clankers (id) ON DELETE CASCADE,
    secret_id       BLOB NOT NULL REFERENCES secrets (id) ON DELETE RESTRICT,
    PRIMARY KEY (clanker_id, secret_id)
);

CREATE TABLE clanker_files (
    clanker_id      BLOB NOT NULL REFERENCES clankers (id) ON DELETE CASCADE,
    path            TEXT NOT NULL,
    content         TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (clanker_id, path)
);

CREATE TABLE tickets (
    id                          BLOB PRIMARY KEY NOT NULL,
    project_id                  BLOB NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
    title                       TEXT NOT NULL,
    description                 TEXT NOT NULL DEFAULT '',
    severity                    TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    phase                       TEXT NOT NULL CHECK (phase IN ('research', 'planning', 'execution')),
    status                      TEXT NOT NULL,
    source                      TEXT NOT NULL,
    external_id                 TEXT,
    external_url                TEXT,
    pull_request_url            TEXT,
    workflow_override_reason    TEXT,
    workflow_overridden_at      TEXT,
    workflow_overridden_by      BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_by                  BLOB REFERENCES users (id) ON DELETE SET NULL,
    archived_at                 TEXT,
    created_at                  TEXT NOT NULL,
    updated_at                  TEXT NOT NULL
);
CREATE INDEX tickets_project ON tickets (project_id, id);
CREATE UNIQUE INDEX tickets_external_id_key ON tickets (project_id, source, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE phase_documents (
    id              BLOB PRIMARY KEY NOT NULL,
    ticket_id       BLOB NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    phase           TEXT NOT NULL CHECK (phase IN ('research', 'planning')),
    content         TEXT NOT NULL DEFAULT '',
    revision        INTEGER NOT NULL DEFAULT 0,
    approval_state  TEXT NOT NULL DEFAULT 'draft'
                    CHECK (approval_state IN ('draft', 'approval_requested', 'approved', 'rejected')),
    approved_at     TEXT,
    approved_by     BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (ticket_id, phase)
);

CREATE TABLE document_revisions (
    id              BLOB PRIMARY KEY NOT NULL,
    document_id     BLOB NOT NULL REFERENCES phase_documents (id) ON DELETE CASCADE,
    revision        INTEGER NOT NULL,
    content         TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('agent', 'person')),
    author_id       BLOB REFERENCES users (id) ON DELETE SET NULL,
    job_id          BLOB,
    created_at      TEXT NOT NULL,
    UNIQUE (document_id, revision)
);

CREATE TABLE document_comments (
    id              BLOB PRIMARY KEY NOT NULL,
    document_id     BLOB NOT NULL REFERENCES phase_documents (id) ON DELETE CASCADE,
    revision        INTEGER NOT NULL,
    line            INTEGER NOT NULL CHECK (line > 0),
    body            TEXT NOT NULL,
    suggestion      TEXT,
    status          TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    author_id       BLOB REFERENCES users (id) ON DELETE SET NULL,
    resolved_by     BLOB REFERENCES users (id) ON DELETE SET NULL,
    resolved_at     TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX document_comments_document ON document_comments (document_id, status);

CREATE TABLE phase_approvals (
    id              BLOB PRIMARY KEY NOT NULL,
    ticket_id       BLOB NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    phase           TEXT NOT NULL,
    action          TEXT NOT NULL CHECK (action IN ('approval_requested', 'approved', 'rejected', 'revoked')),
    actor_id        BLOB REFERENCES users (id) ON DELETE SET NULL,
    comment         TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL
);
CREATE INDEX phase_approvals_ticket ON phase_approvals (ticket_id, id);

CREATE TABLE jobs (
    id                  BLOB PRIMARY KEY NOT NULL,
    project_id          BLOB NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
    ticket_id           BLOB REFERENCES tickets (id) ON DELETE RESTRICT,
    clanker_id          BLOB REFERENCES clankers (id) ON DELETE SET NULL,
    phase               TEXT NOT NULL CHECK (phase IN ('research', 'planning', 'execution')),
    status              TEXT NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'dispatching', 'active', 'completed', 'failed', 'cancelled')),
    attempt             INTEGER NOT NULL DEFAULT 1,
    retry_of            BLOB REFERENCES jobs (id) ON DELETE RESTRICT,
    spec                TEXT NOT NULL,
    -- sha256 of the job's worker token; the token itself is never stored.
    token_hash          TEXT,
    compute_ref         TEXT,
    dispatch_attempts   INTEGER NOT NULL DEFAULT 0,
    -- After a transient dispatch failure: not before this time.
    dispatch_after      TEXT,
    progress_step       TEXT,
    status_message      TEXT,
    failure_layer       TEXT,
    failure             TEXT,
    result              TEXT,
    tokens_in           INTEGER NOT NULL DEFAULT 0,
    tokens_out          INTEGER NOT NULL DEFAULT 0,
    cost_microusd       INTEGER NOT NULL DEFAULT 0,
    requested_by        BLOB REFERENCES users (id) ON DELETE SET NULL,
    cancelled_by        TEXT,
    queued_at           TEXT NOT NULL,
    dispatched_at       TEXT,
    started_at          TEXT,
    last_heartbeat_at   TEXT,
    finished_at         TEXT,
    updated_at          TEXT NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_ticket ON jobs (ticket_id, id);
CREATE INDEX jobs_project ON jobs (project_id, id);
CREATE INDEX jobs_clanker ON jobs (clanker_id, status);

CREATE TABLE job_events (
    id              INTEGER PRIMARY KEY,
    job_id          BLOB NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- The worker's own sequence number: a batch sent twice is stored once.
    worker_seq      INTEGER,
    kind            TEXT NOT NULL CHECK (kind IN ('progress', 'log', 'agent', 'status')),
    level           TEXT NOT NULL DEFAULT 'info',
    message         TEXT NOT NULL,
    data            TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, id);
CREATE UNIQUE INDEX job_events_worker_seq_key ON job_events (job_id, worker_seq);

CREATE TABLE audit_log (
    id              BLOB PRIMARY KEY NOT NULL,
    actor_id        BLOB REFERENCES users (id) ON DELETE SET NULL,
    channel         TEXT NOT NULL,
    action          TEXT NOT NULL,
    target_kind     TEXT NOT NULL,
    target_id       TEXT,
    project_id      BLOB REFERENCES projects (id) ON DELETE SET NULL,
    details         TEXT NOT NULL DEFAULT '{}',
    request_id      TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX audit_log_project ON audit_log (project_id, id);
