-- Secrets whose value Viberglass wrote (database values, SSM parameters it
-- created) are `managed`: deleting the secret deletes the value too.
-- The PostgreSQL twin is ../postgres/0002_secret_values_and_access.sql.
ALTER TABLE secrets ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX audit_log_created ON audit_log (id);
CREATE INDEX project_members_user ON project_members (user_id);
