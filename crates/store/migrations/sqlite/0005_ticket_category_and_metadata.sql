-- What kind of change a ticket asks for, and context from its source (page
-- URL, browser, reporter…) as a flat JSON object.
-- The PostgreSQL twin is ../postgres/0005_ticket_category_and_metadata.sql.
ALTER TABLE tickets ADD COLUMN category TEXT;
ALTER TABLE tickets ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
