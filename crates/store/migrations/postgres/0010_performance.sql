-- Performance (issue 22). The twin is ../sqlite/0010_performance.sql.
--
-- Ticket search: trigram GIN indexes on lower(title) and lower(description),
-- which `lower(x) LIKE '%term%'` uses. pg_trgm ships with PostgreSQL's
-- contrib and is a trusted extension; where it cannot be created (a server
-- without contrib, a role without CREATE) the migration still succeeds and
-- search scans, as it did before.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_trgm cannot be created (%): ticket search will scan the table', SQLERRM;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        EXECUTE 'CREATE INDEX tickets_title_trgm ON tickets USING gin (lower(title) gin_trgm_ops)';
        EXECUTE 'CREATE INDEX tickets_description_trgm ON tickets USING gin (lower(description) gin_trgm_ops)';
    END IF;
END $$;

-- The archive: few tickets, listed newest first.
CREATE INDEX tickets_archived ON tickets (id) WHERE archived_at IS NOT NULL;
-- The board's filters: a phase or a status, newest first.
CREATE INDEX tickets_phase ON tickets (phase, id);
CREATE INDEX tickets_status ON tickets (status, id);

-- The running set, counted per project and per clanker by every claim.
CREATE INDEX jobs_running_project ON jobs (project_id) WHERE status IN ('dispatching', 'active');
CREATE INDEX jobs_running_clanker ON jobs (clanker_id) WHERE status IN ('dispatching', 'active');

-- Claims the oldest queued job whose project and clanker are under their
-- concurrency limits, in one round trip and without a global lock:
--   * candidates are read FOR UPDATE SKIP LOCKED, so two claimers never take
--     the same job;
--   * the limits are made exact by a transaction-scoped advisory lock per
--     project and per clanker (tried, never waited for: a claimer that cannot
--     get one moves on, and the holder claims that job or finds it over its
--     limit), taken before the running jobs are counted again under a fresh
--     snapshot;
--   * the claimed job's "dispatching" event is written in the same call.
-- Claimers of different projects and clankers never wait for one another.
CREATE FUNCTION viberglass_claim_job(p_now TIMESTAMPTZ, p_token TEXT) RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cand RECORD;
    running BIGINT;
    claimed jobs%ROWTYPE;
BEGIN
    FOR cand IN
        WITH load AS (SELECT project_id, clanker_id FROM jobs WHERE status IN ('dispatching', 'active')),
        by_project AS (SELECT project_id, COUNT(*) AS n FROM load GROUP BY project_id),
        by_clanker AS (SELECT clanker_id, COUNT(*) AS n FROM load WHERE clanker_id IS NOT NULL GROUP BY clanker_id)
        SELECT j.id, j.project_id, j.clanker_id, p.max_concurrent_jobs AS project_max,
               c.max_concurrent_jobs AS clanker_max
        FROM jobs j
        JOIN projects p ON p.id = j.project_id
        LEFT JOIN clankers c ON c.id = j.clanker_id
        LEFT JOIN by_project bp ON bp.project_id = j.project_id
        LEFT JOIN by_clanker bc ON bc.clanker_id = j.clanker_id
        WHERE j.status = 'queued' AND (j.dispatch_after IS NULL OR j.dispatch_after <= p_now)
          AND COALESCE(bp.n, 0) < p.max_concurrent_jobs
          AND (c.id IS NULL OR COALESCE(bc.n, 0) < c.max_concurrent_jobs)
        ORDER BY j.id
        LIMIT 16
        FOR UPDATE OF j SKIP LOCKED
    LOOP
        IF NOT pg_try_advisory_xact_lock(1447641669, hashtext(cand.project_id::text)) THEN
            CONTINUE;
        END IF;
        SELECT COUNT(*) INTO running FROM jobs
            WHERE project_id = cand.project_id AND status IN ('dispatching', 'active');
        IF running >= cand.project_max THEN
            CONTINUE;
        END IF;
        IF cand.clanker_id IS NOT NULL THEN
            IF NOT pg_try_advisory_xact_lock(1447641667, hashtext(cand.clanker_id::text)) THEN
                CONTINUE;
            END IF;
            SELECT COUNT(*) INTO running FROM jobs
                WHERE clanker_id = cand.clanker_id AND status IN ('dispatching', 'active');
            IF running >= cand.clanker_max THEN
                CONTINUE;
            END IF;
        END IF;
        UPDATE jobs SET status = 'dispatching', dispatched_at = p_now, token_hash = p_token, updated_at = p_now,
               dispatch_attempts = dispatch_attempts + 1
            WHERE id = cand.id AND status = 'queued'
            RETURNING * INTO claimed;
        IF FOUND THEN
            INSERT INTO job_events (job_id, kind, level, message, created_at)
                VALUES (cand.id, 'status', 'info', 'dispatching: starting the worker', p_now);
            RETURN NEXT claimed;
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END $$;
