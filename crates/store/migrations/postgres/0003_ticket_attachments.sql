-- Files attached to a ticket (screenshots, logs): kept in the database, never
-- deleted with the ticket row (tickets are archived, not deleted).
-- The SQLite twin is ../sqlite/0003_ticket_attachments.sql.
CREATE TABLE ticket_attachments (
    id              UUID PRIMARY KEY,
    ticket_id       UUID NOT NULL REFERENCES tickets (id) ON DELETE RESTRICT,
    filename        TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    size            BIGINT NOT NULL,
    sha256          TEXT NOT NULL,
    content         BYTEA NOT NULL,
    uploaded_by     UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX ticket_attachments_ticket ON ticket_attachments (ticket_id, id);
