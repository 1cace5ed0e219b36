-- Outbound webhooks: subscriptions (instance-wide when project_id is NULL),
-- one delivery row per event and subscription (unique: an event handled
-- twice is owed once), and every attempt. The twin is
-- ../postgres/0007_outbound_webhooks.sql.
CREATE TABLE webhook_subscriptions (
    id                      BLOB PRIMARY KEY NOT NULL,
    project_id              BLOB REFERENCES projects (id) ON DELETE RESTRICT,
    settings                TEXT NOT NULL,
    active                  BOOLEAN NOT NULL,
    disabled_reason         TEXT,
    disabled_at             TEXT,
    failing_since           TEXT,
    credentials_ciphertext  BLOB NOT NULL,
    credentials_nonce       BLOB NOT NULL,
    credentials_key_id      TEXT NOT NULL,
    secret_rotated_at       TEXT NOT NULL,
    previous_secret_until   TEXT,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL
);
CREATE INDEX webhook_subscriptions_project ON webhook_subscriptions (project_id);

CREATE TABLE outbound_deliveries (
    id                  BLOB PRIMARY KEY NOT NULL,
    subscription_id     BLOB NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE RESTRICT,
    event_id            BLOB NOT NULL,
    event_type          TEXT NOT NULL,
    body                TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TEXT NOT NULL,
    lease_owner         TEXT,
    window_start        TEXT NOT NULL,
    last_status_code    INTEGER,
    last_error          TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    delivered_at        TEXT
);
CREATE UNIQUE INDEX outbound_deliveries_event_key ON outbound_deliveries (subscription_id, event_id);
CREATE INDEX outbound_deliveries_due ON outbound_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbound_deliveries_subscription ON outbound_deliveries (subscription_id, id);
-- What a server holds, by subscription (its share of the delivery loop).
CREATE INDEX outbound_deliveries_held ON outbound_deliveries (lease_owner, subscription_id)
    WHERE status = 'pending' AND lease_owner IS NOT NULL;

CREATE TABLE outbound_attempts (
    delivery_id         BLOB NOT NULL REFERENCES outbound_deliveries (id) ON DELETE RESTRICT,
    attempt             INTEGER NOT NULL,
    started_at          TEXT NOT NULL,
    duration_ms         INTEGER NOT NULL,
    status_code         INTEGER,
    response            TEXT,
    error_kind          TEXT,
    error               TEXT,
    server              TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
