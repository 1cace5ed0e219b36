-- Viberglass schema, version 1 (PostgreSQL).
-- Ids are UUIDv7 stored as UUID, so they sort by creation time.
-- Timestamps are UTC, stored as TIMESTAMPTZ.
-- The PostgreSQL twin of this file is ../sqlite/0001_initial.sql: change both together.

CREATE TABLE users (
    id              UUID PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL DEFAULT '',
    password_hash   TEXT,
    is_admin        BOOLEAN NOT NULL DEFAULT FALSE,
    disabled_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE sessions (
    id              UUID PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash      TEXT NOT NULL UNIQUE,
    ip              TEXT,
    user_agent      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    last_seen_at    TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    revoked_at      TIMESTAMPTZ
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id              UUID PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    token_hash      TEXT NOT NULL UNIQUE,
    token_prefix    TEXT NOT NULL,
    expires_at      TIMESTAMPTZ,
    last_used_at    TIMESTAMPTZ,
    revoked_at      TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE secrets (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    backend         TEXT NOT NULL CHECK (backend IN ('env', 'database', 'ssm')),
    -- env: the variable name; ssm: the parameter path; database: unused.
    reference       TEXT,
    ciphertext      BYTEA,
    nonce           BYTEA,
    key_id          TEXT,
    description     TEXT NOT NULL DEFAULT '',
    created_by      UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE integrations (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    base_url        TEXT,
    config          JSONB NOT NULL DEFAULT '{}',
    credential_secret_id UUID REFERENCES secrets (id) ON DELETE RESTRICT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE projects (
    id                      UUID PRIMARY KEY,
    name                    TEXT NOT NULL UNIQUE,
    slug                    TEXT NOT NULL UNIQUE,
    description             TEXT NOT NULL DEFAULT '',
    repository_url          TEXT,
    base_branch             TEXT NOT NULL DEFAULT 'main',
    pr_repository_url       TEXT,
    pr_base_branch          TEXT,
    branch_name_template    TEXT NOT NULL,
    scm_integration_id      UUID REFERENCES integrations (id) ON DELETE SET NULL,
    credential_secret_id    UUID REFERENCES secrets (id) ON DELETE RESTRICT,
    scm_username            TEXT NOT NULL DEFAULT 'x-access-token',
    max_execution_secs      BIGINT NOT NULL CHECK (max_execution_secs > 0),
    max_concurrent_jobs     BIGINT NOT NULL CHECK (max_concurrent_jobs > 0),
    research_needs_approval BOOLEAN NOT NULL DEFAULT FALSE,
    planning_needs_approval BOOLEAN NOT NULL DEFAULT TRUE,
    allow_run_all           BOOLEAN NOT NULL DEFAULT FALSE,
    agent_instructions      TEXT NOT NULL DEFAULT '',
    archived_at             TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);

CREATE TABLE project_members (
    project_id      UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('viewer', 'member', 'maintainer')),
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project_id, user_id)
);

CREATE TABLE project_secrets (
    project_id      UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    secret_id       UUID NOT NULL REFERENCES secrets (id) ON DELETE RESTRICT,
    PRIMARY KEY (project_id, secret_id)
);

CREATE TABLE prompt_templates (
    id              UUID PRIMARY KEY,
    project_id      UUID REFERENCES projects (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    template        TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX prompt_templates_system_kind_key ON prompt_templates (kind) WHERE project_id IS NULL;
CREATE UNIQUE INDEX prompt_templates_project_kind_key ON prompt_templates (project_id, kind) WHERE project_id IS NOT NULL;

CREATE TABLE clankers (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL,
    slug            TEXT NOT NULL UNIQUE,
    description     TEXT NOT NULL DEFAULT '',
    agent           TEXT NOT NULL,
    agent_settings  JSONB NOT NULL DEFAULT '{}',
    compute         TEXT NOT NULL,
    compute_config  JSONB NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'inactive' CHECK (status IN ('inactive', 'deploying', 'active', 'failed')),
    status_message  TEXT,
    max_concurrent_jobs BIGINT NOT NULL DEFAULT 1 CHECK (max_concurrent_jobs > 0),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE clanker_secrets (
    clanker_id      UUID NOT NULL REFERENCES clankers (id) ON DELETE CASCADE,
    secret_id       UUID NOT NULL REFERENCES secrets (id) ON DELETE RESTRICT,
    PRIMARY KEY (clanker_id, secret_id)
);

CREATE TABLE clanker_files (
    clanker_id      UUID NOT NULL REFERENCES clankers (id) ON DELETE CASCADE,
    path            TEXT NOT NULL,
    content         TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (clanker_id, path)
);

CREATE TABLE tickets (
    id                          UUID PRIMARY KEY,
    project_id                  UUID NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
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
    workflow_overridden_at      TIMESTAMPTZ,
    workflow_overridden_by      UUID REFERENCES users (id) ON DELETE SET NULL,
    created_by                  UUID REFERENCES users (id) ON DELETE SET NULL,
    archived_at                 TIMESTAMPTZ,
    created_at                  TIMESTAMPTZ NOT NULL,
    updated_at                  TIMESTAMPTZ NOT NULL
);
CREATE INDEX tickets_project ON tickets (project_id, id);
CREATE UNIQUE INDEX tickets_external_id_key ON tickets (project_id, source, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE phase_documents (
    id              UUID PRIMARY KEY,
    ticket_id       UUID NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    phase           TEXT NOT NULL CHECK (phase IN ('research', 'planning')),
    content         TEXT NOT NULL DEFAULT '',
    revision        BIGINT NOT NULL DEFAULT 0,
    approval_state  TEXT NOT NULL DEFAULT 'draft'
                    CHECK (approval_state IN ('draft', 'approval_requested', 'approved', 'rejected')),
    approved_at     TIMESTAMPTZ,
    approved_by     UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (ticket_id, phase)
);

CREATE TABLE document_revisions (
    id              UUID PRIMARY KEY,
    document_id     UUID NOT NULL REFERENCES phase_documents (id) ON DELETE CASCADE,
    revision        BIGINT NOT NULL,
    content         TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('agent', 'person')),
    author_id       UUID REFERENCES users (id) ON DELETE SET NULL,
    job_id          UUID,
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (document_id, revision)
);

CREATE TABLE document_comments (
    id              UUID PRIMARY KEY,
    document_id     UUID NOT NULL REFERENCES phase_documents (id) ON DELETE CASCADE,
    revision        BIGINT NOT NULL,
    line            BIGINT NOT NULL CHECK (line > 0),
    body            TEXT NOT NULL,
    suggestion      TEXT,
    status          TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    author_id       UUID REFERENCES users (id) ON DELETE SET NULL,
    resolved_by     UUID REFERENCES users (id) ON DELETE SET NULL,
    resolved_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX document_comments_document ON document_comments (document_id, status);

CREATE TABLE phase_approvals (
    id              UUID PRIMARY KEY,
    ticket_id       UUID NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    phase           TEXT NOT NULL,
    action          TEXT NOT NULL CHECK (action IN ('approval_requested', 'approved', 'rejected', 'revoked')),
    actor_id        UUID REFERENCES users (id) ON DELETE SET NULL,
    comment         TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX phase_approvals_ticket ON phase_approvals (ticket_id, id);

CREATE TABLE jobs (
    id                  UUID PRIMARY KEY,
    project_id          UUID NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
    ticket_id           UUID REFERENCES tickets (id) ON DELETE RESTRICT,
    clanker_id          UUID REFERENCES clankers (id) ON DELETE SET NULL,
    phase               TEXT NOT NULL CHECK (phase IN ('research', 'planning', 'execution')),
    status              TEXT NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'dispatching', 'active', 'completed', 'failed', 'cancelled')),
    attempt             BIGINT NOT NULL DEFAULT 1,
    retry_of            UUID REFERENCES jobs (id) ON DELETE RESTRICT,
    spec                JSONB NOT NULL,
    -- sha256 of the job's worker token; the token itself is never stored.
    token_hash          TEXT,
    compute_ref         TEXT,
    dispatch_attempts   BIGINT NOT NULL DEFAULT 0,
    -- After a transient dispatch failure: not before this time.
    dispatch_after      TIMESTAMPTZ,
    progress_step       TEXT,
    status_message      TEXT,
    failure_layer       TEXT,
    failure             JSONB,
    result              JSONB,
    tokens_in           BIGINT NOT NULL DEFAULT 0,
    tokens_out          BIGINT NOT NULL DEFAULT 0,
    cost_microusd       BIGINT NOT NULL DEFAULT 0,
    requested_by        UUID REFERENCES users (id) ON DELETE SET NULL,
    cancelled_by        TEXT,
    queued_at           TIMESTAMPTZ NOT NULL,
    dispatched_at       TIMESTAMPTZ,
    started_at          TIMESTAMPTZ,
    last_heartbeat_at   TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_ticket ON jobs (ticket_id, id);
CREATE INDEX jobs_project ON jobs (project_id, id);
CREATE INDEX jobs_clanker ON jobs (clanker_id, status);

CREATE TABLE job_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- The worker's own sequence number: a batch sent twice is stored once.
    worker_seq      BIGINT,
    kind            TEXT NOT NULL CHECK (kind IN ('progress', 'log', 'agent', 'status')),
    level           TEXT NOT NULL DEFAULT 'info',
    message         TEXT NOT NULL,
    data            JSONB,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, id);
CREATE UNIQUE INDEX job_events_worker_seq_key ON job_events (job_id, worker_seq);

CREATE TABLE audit_log (
    id              UUID PRIMARY KEY,
    actor_id        UUID REFERENCES users (id) ON DELETE SET NULL,
    channel         TEXT NOT NULL,
    action          TEXT NOT NULL,
    target_kind     TEXT NOT NULL,
    target_id       TEXT,
    project_id      UUID REFERENCES projects (id) ON DELETE SET NULL,
    details         JSONB NOT NULL DEFAULT '{}',
    request_id      TEXT,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_log_project ON audit_log (project_id, id);
