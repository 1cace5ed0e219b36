-- Correlation: the request id of the API call that queued a job (runs queued by a webhook, Slack, a schedule or
-- a ticket source have none), so a failed job leads to the server log lines of the request that started it. The twin
-- is ../sqlite/0011_job_request_id.sql.
ALTER TABLE jobs ADD COLUMN request_id TEXT;
