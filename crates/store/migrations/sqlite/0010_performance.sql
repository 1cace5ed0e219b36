-- Performance (issue 22). The twin is ../postgres/0010_performance.sql.
--
-- Ticket search: an FTS5 index with the trigram tokenizer (case-insensitive
-- substring matching) over title and description. A ticket's rowid can change
-- on VACUUM (its key is a UUID), so the index is keyed by ticket_search, a
-- stable integer per ticket. The store uses the index to find candidates and
-- then applies the same `lower(x) LIKE` test as PostgreSQL, so results are
-- identical on both backends.
-- The archive: few tickets, listed newest first.
CREATE INDEX tickets_archived ON tickets (id) WHERE archived_at IS NOT NULL;
-- The board's filters: a phase or a status, newest first.
CREATE INDEX tickets_phase ON tickets (phase, id);
CREATE INDEX tickets_status ON tickets (status, id);

CREATE TABLE ticket_search (
    rowid       INTEGER PRIMARY KEY,
    -- No foreign key: the delete trigger below removes the row itself, after the index entry.
    ticket_id   BLOB NOT NULL UNIQUE
);
CREATE VIRTUAL TABLE tickets_fts USING fts5(title, description, tokenize = 'trigram');

INSERT INTO ticket_search (ticket_id) SELECT id FROM tickets ORDER BY id;
INSERT INTO tickets_fts (rowid, title, description)
    SELECT s.rowid, t.title, t.description FROM ticket_search s JOIN tickets t ON t.id = s.ticket_id;

CREATE TRIGGER tickets_search_insert AFTER INSERT ON tickets BEGIN
    INSERT INTO ticket_search (ticket_id) VALUES (new.id);
    INSERT INTO tickets_fts (rowid, title, description) VALUES (last_insert_rowid(), new.title, new.description);
END;

CREATE TRIGGER tickets_search_update AFTER UPDATE OF title, description ON tickets BEGIN
    UPDATE tickets_fts SET title = new.title, description = new.description
        WHERE rowid = (SELECT rowid FROM ticket_search WHERE ticket_id = new.id);
END;

CREATE TRIGGER tickets_search_delete AFTER DELETE ON tickets BEGIN
    DELETE FROM tickets_fts WHERE rowid = (SELECT rowid FROM ticket_search WHERE ticket_id = old.id);
    DELETE FROM ticket_search WHERE ticket_id = old.id;
END;
