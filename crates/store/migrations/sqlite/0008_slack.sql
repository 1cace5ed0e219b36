-- Slack: the installation's app (one row), threads bound to tickets, the
-- messages the server keeps in Slack (posted, then edited in place), what
-- Slack sent that is still to act on, and the signatures already seen (a
-- replayed request is refused). The twin is ../postgres/0008_slack.sql.
CREATE TABLE slack_settings (
    id                  INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    signing_secret      TEXT NOT NULL,
    bot_token_secret    TEXT NOT NULL,
    api_url             TEXT NOT NULL,
    team_id             TEXT,
    team_name           TEXT,
    bot_user_id         TEXT,
    tested_at           TEXT,
    test_error          TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);

CREATE TABLE slack_threads (
    id                  BLOB PRIMARY KEY NOT NULL,
    ticket_id           BLOB NOT NULL REFERENCES tickets (id) ON DELETE RESTRICT,
    channel             TEXT NOT NULL,
    thread_ts           TEXT,
    clanker             TEXT,
    origin              BLOB,
    linked_by           BLOB REFERENCES users (id) ON DELETE SET NULL,
    linked_via          TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    unlinked_at         TEXT,
    unlinked_by         BLOB REFERENCES users (id) ON DELETE SET NULL
);
-- One live thread per ticket, one ticket per live thread, one thread per /viberator request.
CREATE UNIQUE INDEX slack_threads_live_ticket ON slack_threads (ticket_id) WHERE unlinked_at IS NULL;
CREATE UNIQUE INDEX slack_threads_live_thread ON slack_threads (channel, thread_ts)
    WHERE unlinked_at IS NULL AND thread_ts IS NOT NULL;
CREATE UNIQUE INDEX slack_threads_origin ON slack_threads (origin) WHERE origin IS NOT NULL;
CREATE INDEX slack_threads_ticket ON slack_threads (ticket_id, id);

CREATE TABLE slack_posts (
    id                  BLOB PRIMARY KEY NOT NULL,
    key                 TEXT NOT NULL,
    thread_id           BLOB REFERENCES slack_threads (id) ON DELETE RESTRICT,
    is_root             BOOLEAN NOT NULL,
    channel             TEXT NOT NULL,
    method              TEXT NOT NULL CHECK (method IN ('message', 'file', 'ephemeral')),
    body                TEXT NOT NULL,
    version             INTEGER NOT NULL,
    sent_version        INTEGER NOT NULL DEFAULT 0,
    ts                  TEXT,
    edits               INTEGER NOT NULL DEFAULT 0,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    next_attempt_at     TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE UNIQUE INDEX slack_posts_key ON slack_posts (key);
CREATE INDEX slack_posts_due ON slack_posts (next_attempt_at) WHERE status = 'pending';
CREATE INDEX slack_posts_thread ON slack_posts (thread_id, id);

CREATE TABLE slack_inbox (
    id                  BLOB PRIMARY KEY NOT NULL,
    dedupe              TEXT NOT NULL,
    kind                TEXT NOT NULL,
    payload             TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    outcome             TEXT,
    next_attempt_at     TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE UNIQUE INDEX slack_inbox_dedupe ON slack_inbox (dedupe);
CREATE INDEX slack_inbox_due ON slack_inbox (next_attempt_at) WHERE status = 'pending';

CREATE TABLE slack_signatures (
    signature           TEXT PRIMARY KEY NOT NULL,
    seen_at             TEXT NOT NULL
);
CREATE INDEX slack_signatures_seen ON slack_signatures (seen_at);
