-- Inbound webhooks: configurations (where a ticket source delivers, its
-- sealed secret, and its settings as JSON), every delivery with its outcome,
-- where each sourced ticket came from, and the feedback owed to its source.
-- The twin is ../postgres/0006_inbound_webhooks.sql.
CREATE TABLE webhook_configs (
    id                  BLOB PRIMARY KEY NOT NULL,
    project_id          BLOB NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
    provider            TEXT NOT NULL,
    settings            TEXT NOT NULL,
    secret_ciphertext   BLOB NOT NULL,
    secret_nonce        BLOB NOT NULL,
    secret_key_id       TEXT NOT NULL,
    secret_rotated_at   TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX webhook_configs_project ON webhook_configs (project_id);

CREATE TABLE webhook_deliveries (
    id                  BLOB PRIMARY KEY NOT NULL,
    config_id           BLOB REFERENCES webhook_configs (id) ON DELETE RESTRICT,
    project_id          BLOB REFERENCES projects (id) ON DELETE RESTRICT,
    provider            TEXT NOT NULL,
    delivery_key        TEXT NOT NULL,
    body_sha256         TEXT NOT NULL,
    event               TEXT NOT NULL DEFAULT '',
    status              TEXT NOT NULL CHECK (status IN ('processed', 'ignored', 'duplicate', 'rejected', 'failed')),
    error_message       TEXT,
    response_status     INTEGER NOT NULL,
    ticket_id           BLOB REFERENCES tickets (id) ON DELETE RESTRICT,
    headers             TEXT NOT NULL DEFAULT '{}',
    payload             BLOB,
    redeliveries        INTEGER NOT NULL DEFAULT 0,
    received_at         TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
-- A delivery id is taken once per configuration by a delivery that was
-- applied (or rightly ignored, or applied and then failed to start its run);
-- refused ones, and failed ones that applied nothing, leave it free for the
-- sender's retry.
CREATE UNIQUE INDEX webhook_deliveries_delivery_key_key ON webhook_deliveries (config_id, delivery_key)
    WHERE status IN ('processed', 'ignored') OR (status = 'failed' AND ticket_id IS NOT NULL);
-- The same signed body is applied once too, whatever delivery id comes with it
-- (a replay with a fresh id is a duplicate).
CREATE UNIQUE INDEX webhook_deliveries_body_sha256_key ON webhook_deliveries (config_id, body_sha256)
    WHERE status IN ('processed', 'ignored') OR (status = 'failed' AND ticket_id IS NOT NULL);
CREATE INDEX webhook_deliveries_config ON webhook_deliveries (config_id, id);
CREATE INDEX webhook_deliveries_project ON webhook_deliveries (project_id, id);

CREATE TABLE ticket_sources (
    ticket_id           BLOB PRIMARY KEY NOT NULL REFERENCES tickets (id) ON DELETE RESTRICT,
    config_id           BLOB NOT NULL REFERENCES webhook_configs (id) ON DELETE RESTRICT,
    provider            TEXT NOT NULL,
    locator             TEXT NOT NULL,
    created_at          TEXT NOT NULL
);

CREATE TABLE source_feedback (
    id                  BLOB PRIMARY KEY NOT NULL,
    event_id            BLOB NOT NULL,
    ticket_id           BLOB NOT NULL REFERENCES tickets (id) ON DELETE RESTRICT,
    job_id              BLOB,
    config_id           BLOB NOT NULL REFERENCES webhook_configs (id) ON DELETE RESTRICT,
    body                TEXT NOT NULL,
    label               TEXT,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    attempt_log         TEXT NOT NULL DEFAULT '[]',
    last_error          TEXT,
    next_attempt_at     TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE UNIQUE INDEX source_feedback_event_id_key ON source_feedback (event_id);
CREATE INDEX source_feedback_due ON source_feedback (status, next_attempt_at);
CREATE INDEX source_feedback_ticket ON source_feedback (ticket_id, id);
