//! Jobs and their events: the durable queue.
//!
//! Every status change is one guarded update (`WHERE status IN (...)`), so a
//! late or repeated callback cannot move a finished job, and two servers
//! cannot both act on the same transition. Job rows are never deleted.

use sqlx::types::Json;
use viberglass_domain::protocol::JobResult;
use viberglass_domain::{
    ClankerId, EventKind, EventType, Failure, Job, JobEvent, JobId, JobSpec, JobStatus, LogLevel, NewEvent,
    NewJobEvent, Page, PageRequest, Phase, ProjectId, TicketId, UserId, job::bound_message,
};

use crate::dbtime::DbTime;
use crate::outbox::emit;
use crate::rows::{RowExt, parse_stored, to_u32};
use crate::sql::{Arg, Sql, bound};
use crate::{Store, StoreError, on_pool};

const ENTITY: &str = "job";
const TABLE: &str = "jobs";

/// The columns of the light job view: everything but the frozen spec, which
/// can carry a megabyte of attachments and is read only by the bootstrap.
macro_rules! light_columns {
    () => {
        "id, project_id, ticket_id, clanker_id, phase, status, attempt, retry_of, compute_kind, compute_ref, \
         dispatch_attempts, progress_step, status_message, failure, result, branch, commit_sha, pull_request_url, \
         requested_by, cancelled_by, queued_at, dispatched_at, started_at, last_heartbeat_at, finished_at, updated_at, \
         request_id"
    };
}
macro_rules! select {
    ($($rest:literal),*) => {
        concat!("SELECT ", light_columns!(), " FROM jobs ", $($rest),*)
    };
}
macro_rules! returning {
    () => {
        concat!(" RETURNING ", light_columns!())
    };
}

pub(crate) const INSERT: &str = "INSERT INTO jobs (id, project_id, ticket_id, clanker_id, phase, status, attempt, retry_of, spec, \
     requested_by, queued_at, updated_at, request_id) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10, $10, $11)";
const SELECT_BY_ID: &str = select!("WHERE id = $1");
const SELECT_SPEC: &str = "SELECT spec FROM jobs WHERE id = $1";
/// The list statement for one filter combination (see [`crate::sql`]).
fn page_query(filter: &JobFilter, page: PageRequest) -> Sql {
    let mut sql = Sql::new(select!("WHERE true"));
    if let Some(after) = page.after {
        sql.and(" AND id < ", Arg::Uuid(after.id()));
    }
    if let Some(p) = filter.project_id {
        sql.and(" AND project_id = ", Arg::Uuid(p.as_uuid()));
    }
    if let Some(t) = filter.ticket_id {
        sql.and(" AND ticket_id = ", Arg::Uuid(t.as_uuid()));
    }
    if let Some(c) = filter.clanker_id {
        sql.and(" AND clanker_id = ", Arg::Uuid(c.as_uuid()));
    }
    if let Some(s) = filter.status {
        sql.and(" AND status = ", Arg::Text(s.as_str().into()));
    }
    if let Some(user) = filter.member_of {
        sql.and(
            " AND project_id IN (SELECT project_id FROM project_members WHERE user_id = ",
            Arg::Uuid(user.as_uuid()),
        )
        .push(")");
    }
    if filter.unresolved_only {
        sql.push(
            " AND (ticket_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs later WHERE later.ticket_id = jobs.ticket_id \
             AND later.phase = jobs.phase AND later.id > jobs.id AND later.status = 'completed'))",
        );
    }
    sql.push(" ORDER BY id DESC LIMIT ").arg(Arg::Int(i64::from(page.limit) + 1));
    sql
}

const SELECT_RERUN: &str = "SELECT id FROM jobs WHERE retry_of = $1 ORDER BY id DESC LIMIT 1";
const SELECT_LIVE: &str = select!("WHERE status IN ('dispatching', 'active') ORDER BY id LIMIT $1");
const SELECT_TOKEN: &str = "SELECT status, token_hash FROM jobs WHERE id = $1";

/// Claims the oldest queued job whose project and clanker are under their
/// concurrency limits. Jobs over a limit keep their place and wait. The
/// running counts are computed once per claim (the running set is small),
/// not once per queued row.
const CLAIM_SQLITE: &str = concat!(
    "UPDATE jobs SET status = 'dispatching', dispatched_at = $1, token_hash = $2, updated_at = $1, \
             dispatch_attempts = dispatch_attempts + 1 \
             WHERE status = 'queued' AND id = (\
               WITH running AS (SELECT project_id, clanker_id FROM jobs WHERE status IN ('dispatching', 'active')), \
               by_project AS (SELECT project_id, COUNT(*) AS n FROM running GROUP BY project_id), \
               by_clanker AS (SELECT clanker_id, COUNT(*) AS n FROM running WHERE clanker_id IS NOT NULL GROUP BY clanker_id) \
               SELECT j.id FROM jobs j \
               JOIN projects p ON p.id = j.project_id \
               LEFT JOIN clankers c ON c.id = j.clanker_id \
               LEFT JOIN by_project bp ON bp.project_id = j.project_id \
               LEFT JOIN by_clanker bc ON bc.clanker_id = j.clanker_id \
               WHERE j.status = 'queued' AND (j.dispatch_after IS NULL OR j.dispatch_after <= $1) \
                 AND COALESCE(bp.n, 0) < p.max_concurrent_jobs \
                 AND (c.id IS NULL OR COALESCE(bc.n, 0) < c.max_concurrent_jobs) \
               ORDER BY j.id LIMIT 1)",
    returning!()
);
/// PostgreSQL claims through a function (migration 0010) that takes no global lock.
const CLAIM_POSTGRES: &str = concat!("SELECT ", light_columns!(), " FROM viberglass_claim_job($1, $2)");

const SET_COMPUTE_REF: &str = "UPDATE jobs SET compute_ref = $2, compute_kind = $4, updated_at = $3 \
     WHERE id = $1 AND status IN ('dispatching', 'active')";
const REQUEUE: &str = "UPDATE jobs SET status = 'queued', token_hash = NULL, status_message = $2, updated_at = $3, \
     dispatch_after = $4, bootstrapped_at = NULL, bootstrap_instance = NULL WHERE id = $1 AND status = 'dispatching'";
const START: &str = "UPDATE jobs SET status = 'active', last_heartbeat_at = $2, updated_at = $2, \
     started_at = COALESCE(started_at, $2) WHERE id = $1 AND status = 'dispatching' RETURNING project_id, ticket_id, phase";
const HEARTBEAT: &str = "UPDATE jobs SET last_heartbeat_at = $2, updated_at = $2 WHERE id = $1 AND status = 'active'";
const FINISH: &str = "UPDATE jobs SET status = $2, result = $3, failure = $4, failure_layer = $5, status_message = $6, \
     cancelled_by = $7, finished_at = $8, updated_at = $8, tokens_in = $9, tokens_out = $10, cost_microusd = $11, \
     branch = COALESCE($12, branch), commit_sha = $13, pull_request_url = $14 \
     WHERE id = $1 AND status IN ('queued', 'dispatching', 'active') RETURNING project_id, ticket_id, phase, attempt";
const SET_TICKET_PR: &str = "UPDATE tickets SET pull_request_url = $2, updated_at = $3 WHERE id = $1";
const MARK_BOOTSTRAPPED: &str = "UPDATE jobs SET bootstrapped_at = $2, bootstrap_instance = $3 \
     WHERE id = $1 AND bootstrapped_at IS NULL";
const SELECT_BOOTSTRAPPED: &str = "SELECT bootstrap_instance FROM jobs WHERE id = $1";
const USAGE: &str = "SELECT COUNT(*) AS jobs, CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT) AS tokens_in, \
     CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT) AS tokens_out, \
     CAST(COALESCE(SUM(cost_microusd), 0) AS BIGINT) AS cost_microusd FROM jobs \
     WHERE ($1 IS NULL OR project_id = $1) AND ($2 IS NULL OR ticket_id = $2)";
const SET_PROGRESS: &str = "UPDATE jobs SET progress_step = $2, status_message = $2, updated_at = $3 \
     WHERE id = $1 AND status IN ('dispatching', 'active') AND (progress_step IS NULL OR progress_step <> $2) \
     RETURNING project_id, ticket_id, phase";
const INSERT_EVENT: &str = "INSERT INTO job_events (job_id, worker_seq, kind, level, message, data, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job_id, worker_seq) DO NOTHING";
/// PostgreSQL: a worker's batch of events in one statement.
const INSERT_EVENTS_BATCH: &str = "INSERT INTO job_events (job_id, worker_seq, kind, level, message, data, created_at) \
     SELECT $1, e.seq, e.kind, e.level, e.message, e.data::jsonb, $7 \
     FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY \
       AS e(seq, kind, level, message, data, n) \
     ORDER BY e.n \
     ON CONFLICT (job_id, worker_seq) DO NOTHING RETURNING worker_seq";
const SELECT_EVENTS: &str = "SELECT id, job_id, kind, level, message, data, created_at FROM job_events \
     WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3";

/// Writes one server-made line (`worker_seq` NULL) to a job's log, through `$executor` (a pool or a transaction).
macro_rules! insert_line {
    ($executor:expr, $id:expr, $kind:expr, $level:expr, $message:expr, $data:expr, $at:expr) => {
        sqlx::query(INSERT_EVENT)
            .bind($id.as_uuid())
            .bind(None::<i64>)
            .bind($kind.as_str())
            .bind($level.as_str())
            .bind(bound_message($message))
            .bind($data.map(Json))
            .bind(DbTime($at))
            .execute($executor)
    };
}

/// A job to queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Chosen by the caller, so the spec can name it (e.g. in the branch name).
    pub id: JobId,
    pub project_id: ProjectId,
    pub ticket_id: Option<TicketId>,
    pub clanker_id: Option<ClankerId>,
    pub spec: JobSpec,
    pub requested_by: Option<UserId>,
    /// The id of the API request that queued it (`x-request-id`), when one did.
    pub request_id: Option<String>,
}

/// Who a job's bootstrap goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapClaim {
    /// The first worker to ask.
    First,
    /// The same worker asking again.
    Again,
    /// Another process holding the job's token.
    Taken,
}

/// How long a job may be silent, and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    pub heartbeat_grace_secs: u64,
    pub max_execution_secs: u64,
}

/// Which jobs a list returns.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub project_id: Option<ProjectId>,
    pub ticket_id: Option<TicketId>,
    pub clanker_id: Option<ClankerId>,
    pub status: Option<JobStatus>,
    /// Only the projects this user is a member of.
    pub member_of: Option<viberglass_domain::UserId>,
    /// Leave out jobs a later run of the same ticket and phase has made good
    /// (a failure whose re-run completed needs nobody's attention).
    pub unresolved_only: bool,
}

/// Tokens and cost the agents reported, summed over jobs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct UsageSummary {
    pub jobs: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Completed {
        result: JobResult,
        summary: String,
    },
    /// Failed; `result` keeps what the run did before it failed (a pushed branch).
    Failed {
        failure: Failure,
        result: Option<JobResult>,
    },
    Cancelled {
        by: String,
    },
}

impl Outcome {
    pub fn failed(failure: Failure) -> Self {
        Outcome::Failed { failure, result: None }
    }

    fn result(&self) -> Option<&JobResult> {
        match self {
            Outcome::Completed { result, .. } => Some(result),
            Outcome::Failed { result, .. } => result.as_ref(),
            Outcome::Cancelled { .. } => None,
        }
    }
}

/// The `job.queued` event of a new job.
pub(crate) fn queued_event(new: &NewJob, attempt: u32, retry_of: Option<JobId>) -> NewEvent {
    NewEvent::new(
        EventType::JobQueued,
        serde_json::json!({
            "job_id": new.id, "phase": new.spec.phase, "attempt": attempt, "retry_of": retry_of,
            "clanker": new.spec.clanker_name,
        }),
    )
    .project(new.project_id)
    .ticket(new.ticket_id)
    .job(new.id)
}

fn corrupt(detail: impl ToString) -> StoreError {
    StoreError::Corrupt { entity: ENTITY, detail: detail.to_string() }
}

fn from_row(r: &impl RowExt) -> Result<Job, StoreError> {
    let failure: Option<Failure> = r.opt_json("failure")?.map(serde_json::from_value).transpose().map_err(corrupt)?;

    Ok(Job {
        id: JobId::from_uuid(r.uuid("id")?),
        project_id: ProjectId::from_uuid(r.uuid("project_id")?),
        ticket_id: r.opt_uuid("ticket_id")?.map(TicketId::from_uuid),
        clanker_id: r.opt_uuid("clanker_id")?.map(ClankerId::from_uuid),
        phase: parse_stored::<Phase>(ENTITY, r.text("phase")?)?,
        status: parse_stored(ENTITY, r.text("status")?)?,
        attempt: to_u32(ENTITY, "attempt", r.int("attempt")?)?,
        retry_of: r.opt_uuid("retry_of")?.map(JobId::from_uuid),
        dispatch_attempts: to_u32(ENTITY, "dispatch_attempts", r.int("dispatch_attempts")?)?,

        status_message: r.opt_text("status_message")?,
        failure,
        progress_step: r.opt_text("progress_step")?,
        result: r.opt_json("result")?.map(serde_json::from_value).transpose().map_err(corrupt)?,
        compute_kind: r.opt_text("compute_kind")?.map(|k| parse_stored(ENTITY, k)).transpose()?,
        compute_ref: r.opt_text("compute_ref")?,
        branch: r.opt_text("branch")?,
        commit_sha: r.opt_text("commit_sha")?,
        pull_request_url: r.opt_text("pull_request_url")?,
        requested_by: r.opt_uuid("requested_by")?.map(UserId::from_uuid),
        cancelled_by: r.opt_text("cancelled_by")?,
        queued_at: r.time("queued_at")?,
        dispatched_at: r.opt_time("dispatched_at")?,
        started_at: r.opt_time("started_at")?,
        last_heartbeat_at: r.opt_time("last_heartbeat_at")?,
        finished_at: r.opt_time("finished_at")?,
        updated_at: r.time("updated_at")?,
        request_id: r.opt_text("request_id")?,
        spec: None,
    })
}

fn event_from_row(r: &impl RowExt) -> Result<JobEvent, StoreError> {
    Ok(JobEvent {
        id: r.int("id")?,
        job_id: JobId::from_uuid(r.uuid("job_id")?),
        kind: parse_stored(ENTITY, r.text("kind")?)?,
        level: parse_stored(ENTITY, r.text("level")?)?,
        message: r.text("message")?,
        data: r.opt_json("data")?,
        created_at: r.time("created_at")?,
    })
}

impl Store {
    /// Queues a job (a first run).
    pub async fn create_job(&self, new: NewJob) -> Result<Job, StoreError> {
        self.insert_job(new, 1, None).await
    }

    /// Queues a new run (`new`, with a spec built afresh) as the next
    /// attempt of `old`. Always safe: the original job is untouched.
    pub async fn create_rerun(&self, old: &Job, new: NewJob) -> Result<Job, StoreError> {
        self.insert_job(new, old.attempt + 1, Some(old.id)).await
    }

    async fn insert_job(&self, new: NewJob, attempt: u32, retry_of: Option<JobId>) -> Result<Job, StoreError> {
        let id = new.id;

        let now = crate::now();
        let spec = serde_json::to_value(&new.spec).map_err(corrupt)?;
        let event = queued_event(&new, attempt, retry_of);
        let message = match retry_of {
            Some(previous) => format!("queued (attempt {attempt}, re-running {previous})"),
            None => "queued".to_owned(),
        };
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            sqlx::query(INSERT)
                .bind(id.as_uuid())
                .bind(new.project_id.as_uuid())
                .bind(new.ticket_id.map(|t| t.as_uuid()))
                .bind(new.clanker_id.map(|c| c.as_uuid()))
                .bind(new.spec.phase.as_str())
                .bind(i64::from(attempt))
                .bind(retry_of.map(|r| r.as_uuid()))
                .bind(Json(spec))
                .bind(new.requested_by.map(|u| u.as_uuid()))
                .bind(DbTime(now))
                .bind(new.request_id.as_deref())
                .execute(&mut *tx)
                .await?;
            emit!(self, tx, &event)?;
            // Its log's first line, in the same commit.
            insert_line!(&mut *tx, id, EventKind::Status, LogLevel::Info, &message, None::<serde_json::Value>, now)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        self.jobs_changed();
        self.get_job(id).await
    }

    /// A job in the light view (no spec).
    pub async fn get_job(&self, id: JobId) -> Result<Job, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_ID).bind(id.as_uuid()).fetch_optional(pool).await?.map(|r| from_row(&r)).transpose()
        })?;
        row.ok_or_else(|| StoreError::not_found(ENTITY, id))
    }

    /// The newest job that re-runs `id`, if any.
    pub async fn rerun_of(&self, id: JobId) -> Result<Option<JobId>, StoreError> {
        let found = on_pool!(self, |pool| {
            sqlx::query(SELECT_RERUN)
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| r.uuid("id").map(JobId::from_uuid))
                .transpose()
        })?;
        Ok(found)
    }

    /// A job's frozen spec: what its worker's bootstrap hands out.
    pub async fn job_spec(&self, id: JobId) -> Result<JobSpec, StoreError> {
        let value = on_pool!(self, |pool| {
            sqlx::query(SELECT_SPEC).bind(id.as_uuid()).fetch_optional(pool).await?.map(|r| r.json("spec")).transpose()
        })?;
        let value = value.ok_or_else(|| StoreError::not_found(ENTITY, id))?;
        serde_json::from_value(value).map_err(corrupt)
    }

    /// A job with its spec.
    pub async fn get_job_with_spec(&self, id: JobId) -> Result<Job, StoreError> {
        let mut job = self.get_job(id).await?;
        job.spec = Some(self.job_spec(id).await?);
        Ok(job)
    }

    /// Claims the job's bootstrap for the worker process `instance` (a hash
    /// of the value it sent). The first to ask gets it; the same instance
    /// asking again (a retry after a lost answer) gets it again; anyone else
    /// holding the token is `Taken`.
    pub async fn claim_bootstrap(&self, id: JobId, instance: &str) -> Result<BootstrapClaim, StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query(MARK_BOOTSTRAPPED)
                .bind(id.as_uuid())
                .bind(DbTime(crate::now()))
                .bind(instance)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if changed == 1 {
            return Ok(BootstrapClaim::First);
        }
        let holder = on_pool!(self, |pool| {
            sqlx::query(SELECT_BOOTSTRAPPED)
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| r.opt_text("bootstrap_instance"))
                .transpose()
        })?
        .flatten();
        Ok(if holder.as_deref() == Some(instance) { BootstrapClaim::Again } else { BootstrapClaim::Taken })
    }

    pub async fn list_jobs(&self, filter: &JobFilter, page: PageRequest) -> Result<Page<Job>, StoreError> {
        let sql = page_query(filter, page);
        let rows = on_pool!(self, |pool| {
            bound!(sql).fetch_all(pool).await?.iter().map(from_row).collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Page::from_rows(rows, page.limit, |j| j.id.as_uuid()))
    }

    /// The plan of the list statement for `filter` (see [`Store::explain_list_tickets`]).
    pub async fn explain_list_jobs(&self, filter: &JobFilter, page: PageRequest) -> Result<String, StoreError> {
        self.explain(page_query(filter, page)).await
    }

    /// The plan of the claim's candidate search: on PostgreSQL the statement
    /// inside `viberglass_claim_job`, read from the function itself.
    pub async fn explain_claim(&self) -> Result<String, StoreError> {
        match &self.pool {
            crate::Pool::Sqlite(_) => {
                let mut sql = Sql::new(CLAIM_SQLITE);
                sql.args = vec![Arg::Text(String::new()), Arg::Text(String::new())];
                self.explain(sql).await
            }
            crate::Pool::Postgres(pool) => {
                let source: String =
                    sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE proname = 'viberglass_claim_job'")
                        .fetch_one(pool)
                        .await?;
                let candidates = source
                    .split_once("FOR cand IN")
                    .and_then(|(_, rest)| rest.split_once("    LOOP"))
                    .map(|(query, _)| query.replace("p_now", "now()"))
                    .ok_or_else(|| StoreError::Corrupt {
                        entity: "job",
                        detail: "viberglass_claim_job has no candidate query".into(),
                    })?;
                self.explain(Sql::from_catalogue(candidates)).await
            }
        }
    }

    /// Claims the next dispatchable job, moving it to `dispatching` with the
    /// given token hash. `None` when nothing can be dispatched now.
    pub async fn claim_next_job(&self, token_hash: &str) -> Result<Option<Job>, StoreError> {
        let now = DbTime(crate::now());
        let claimed = match &self.pool {
            crate::Pool::Sqlite(pool) => {
                // One statement: SQLite runs it under its single write lock.
                sqlx::query(CLAIM_SQLITE)
                    .bind(now)
                    .bind(token_hash)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| from_row(&r))
                    .transpose()?
            }
            crate::Pool::Postgres(pool) => {
                // One round trip, no global lock: see viberglass_claim_job in
                // migrations/postgres/0010_performance.sql. It writes the
                // dispatching event too.
                let claimed = sqlx::query(CLAIM_POSTGRES)
                    .bind(now)
                    .bind(token_hash)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| from_row(&r))
                    .transpose()?;
                if claimed.is_some() {
                    self.jobs_changed();
                }
                return Ok(claimed);
            }
        };
        if let Some(job) = &claimed {
            self.jobs_changed();
            self.append_event(job.id, EventKind::Status, LogLevel::Info, "dispatching: starting the worker", None)
                .await?;
        }
        Ok(claimed)
    }

    /// When the earliest queued job that waits out a retry delay becomes
    /// dispatchable (`None` when none waits): the dispatcher sleeps until then.
    pub async fn next_dispatch_after(&self) -> Result<Option<time::OffsetDateTime>, StoreError> {
        let now = DbTime(crate::now());
        let at = on_pool!(self, |pool| {
            sqlx::query("SELECT MIN(dispatch_after) AS at FROM jobs WHERE status = 'queued' AND dispatch_after > $1")
                .bind(now)
                .fetch_one(pool)
                .await?
                .opt_time("at")?
        });
        Ok(at)
    }

    /// Records which target runs the worker and how it names it.
    pub async fn set_job_compute_ref(
        &self,
        id: JobId,
        kind: viberglass_domain::ComputeKind,
        compute_ref: &str,
    ) -> Result<bool, StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query(SET_COMPUTE_REF)
                .bind(id.as_uuid())
                .bind(compute_ref)
                .bind(DbTime(crate::now()))
                .bind(kind.as_str())
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(changed == 1)
    }

    /// Puts a job the compute target could not start back in the queue, to
    /// be dispatched again no sooner than `retry_in` from now.
    pub async fn requeue_job(
        &self,
        id: JobId,
        reason: &str,
        retry_in: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let now = crate::now();
        let after = now + time::Duration::try_from(retry_in).unwrap_or(time::Duration::ZERO);
        let changed = on_pool!(self, |pool| {
            sqlx::query(REQUEUE)
                .bind(id.as_uuid())
                .bind(reason)
                .bind(DbTime(now))
                .bind(DbTime(after))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if changed == 1 {
            self.jobs_changed();
            self.append_event(id, EventKind::Status, LogLevel::Warn, &format!("requeued: {reason}"), None).await?;
        }
        Ok(changed == 1)
    }

    /// Records a heartbeat (the first one makes the job `active`) and
    /// returns the job's status, which tells the worker whether to go on.
    pub async fn heartbeat_job(&self, id: JobId) -> Result<JobStatus, StoreError> {
        let now = DbTime(crate::now());
        on_pool!(self, |pool| async {
            let beat = sqlx::query(HEARTBEAT).bind(id.as_uuid()).bind(now).execute(pool).await?.rows_affected();
            if beat == 1 {
                return Ok::<_, StoreError>(());
            }
            // The first sign of life: the job starts, and says so in the outbox.
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            if let Some(row) = sqlx::query(START).bind(id.as_uuid()).bind(now).fetch_optional(&mut *tx).await? {
                let event = NewEvent::new(
                    EventType::JobStarted,
                    serde_json::json!({"job_id": id, "phase": row.text("phase")?}),
                )
                .project(ProjectId::from_uuid(row.uuid("project_id")?))
                .ticket(row.opt_uuid("ticket_id")?.map(TicketId::from_uuid))
                .job(id);
                emit!(self, tx, &event)?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await)?;
        self.job_status(id).await
    }

    async fn job_status(&self, id: JobId) -> Result<JobStatus, StoreError> {
        let status = on_pool!(self, |pool| {
            sqlx::query("SELECT status FROM jobs WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| r.text("status"))
                .transpose()
        })?;
        parse_stored(ENTITY, status.ok_or_else(|| StoreError::not_found(ENTITY, id))?)
    }

    /// Ends a job. Returns whether this call ended it: `false` when it had
    /// already ended (a late or repeated report), which changes nothing.
    ///
    /// In one transaction: the job's row (status, result, usage, branch,
    /// commit, pull request), the ticket's pull-request link when the result
    /// names one, and the outbox events (`job.completed` / `failed` /
    /// `cancelled`, and `pull_request.opened` / `updated`). The caller has
    /// validated the result (see the server's result endpoint).
    pub async fn finish_job(&self, id: JobId, outcome: Outcome) -> Result<bool, StoreError> {
        let now = crate::now();
        let (status, failure, message, cancelled_by) = match &outcome {
            Outcome::Completed { summary, .. } => (JobStatus::Completed, None, summary.clone(), None),
            Outcome::Failed { failure, .. } => {
                (JobStatus::Failed, Some(failure.clone()), failure.message.clone(), None)
            }
            Outcome::Cancelled { by } => {
                let failure = Failure::cancelled(by);
                (JobStatus::Cancelled, Some(failure.clone()), failure.message, Some(by.clone()))
            }
        };
        let result = outcome.result();
        let layer = failure.as_ref().map(|f| f.layer.as_str());
        let usage = result.and_then(|r| r.usage.clone()).unwrap_or_default();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let cost_microusd = usage.cost_usd.map_or(0, |c| (c * 1_000_000.0).round() as i64);
        let result_json = result.map(|r| serde_json::to_value(r).map(Json)).transpose().map_err(corrupt)?;
        let failure_json = failure.as_ref().map(|f| serde_json::to_value(f).map(Json)).transpose().map_err(corrupt)?;
        let pull_request = result.and_then(|r| r.pull_request.clone());
        let branch = result.and_then(|r| r.branch.clone()).filter(|_| result.is_some_and(|r| r.pushed));
        let commit = result.and_then(|r| r.commit.clone());
        let level = if status == JobStatus::Completed { LogLevel::Info } else { LogLevel::Error };
        let status_data =
            failure.as_ref().map(|f| serde_json::json!({"layer": f.layer, "code": f.code, "retryable": f.retryable}));
        let event_type = match status {
            JobStatus::Completed => EventType::JobCompleted,
            JobStatus::Cancelled => EventType::JobCancelled,
            _ => EventType::JobFailed,
        };
        let changed = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let row = sqlx::query(FINISH)
                .bind(id.as_uuid())
                .bind(status.as_str())
                .bind(result_json.clone())
                .bind(failure_json.clone())
                .bind(layer)
                .bind(message.clone())
                .bind(cancelled_by.clone())
                .bind(DbTime(now))
                .bind(count(usage.input_tokens))
                .bind(count(usage.output_tokens))
                .bind(cost_microusd)
                .bind(branch.clone())
                .bind(commit.clone())
                .bind(pull_request.as_ref().map(|p| p.url.clone()))
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { return Ok::<_, StoreError>(false) };
            let project = ProjectId::from_uuid(row.uuid("project_id")?);
            let ticket = row.opt_uuid("ticket_id")?.map(TicketId::from_uuid);
            let phase = row.text("phase")?;
            if let (Some(pr), Some(ticket)) = (&pull_request, ticket) {
                sqlx::query(SET_TICKET_PR)
                    .bind(ticket.as_uuid())
                    .bind(pr.url.clone())
                    .bind(DbTime(now))
                    .execute(&mut *tx)
                    .await?;
                let kind = if pr.created { EventType::PullRequestOpened } else { EventType::PullRequestUpdated };
                let event = NewEvent::new(
                    kind,
                    serde_json::json!({"job_id": id, "url": pr.url, "number": pr.number, "branch": branch}),
                )
                .project(project)
                .ticket(Some(ticket))
                .job(id);
                emit!(self, tx, &event)?;
            }
            let event = NewEvent::new(
                event_type,
                serde_json::json!({
                    "job_id": id, "phase": phase, "status": status, "attempt": row.int("attempt")?,
                    "message": message,
                    "failure": failure.as_ref().map(|f| serde_json::json!({"layer": f.layer, "code": f.code})),
                }),
            )
            .project(project)
            .ticket(ticket)
            .job(id);
            emit!(self, tx, &event)?;
            // The job's log says how it ended in the same commit: one commit per end, and no
            // ended job whose log stops short of its end.
            let line = format!("{status}: {message}");
            insert_line!(&mut *tx, id, EventKind::Status, level, &line, status_data.clone(), now).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)?;
        if changed {
            self.jobs_changed();
        }
        Ok(changed)
    }

    /// The branch the ticket's latest execution pushed, so that a follow-up
    /// execution continues it (and updates the same pull request) even when
    /// the branch template would name a new one. The column holds the spec's
    /// branch, never a branch a worker claimed.
    pub async fn ticket_work_branch(&self, ticket: TicketId) -> Result<Option<String>, StoreError> {
        let branch = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT branch FROM jobs WHERE ticket_id = $1 AND phase = 'execution' AND branch IS NOT NULL \
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(ticket.as_uuid())
            .fetch_optional(pool)
            .await?
            .map(|r| r.opt_text("branch"))
            .transpose()?
            .flatten()
        });
        Ok(branch)
    }

    /// Jobs still `dispatching` that were claimed before `before`: a worker
    /// should have called in long since (what `viberglass doctor` lists).
    pub async fn jobs_dispatching_before(
        &self,
        before: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(select!("WHERE status = 'dispatching' AND dispatched_at < $1 ORDER BY id LIMIT $2"))
                .bind(DbTime(before))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(from_row)
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    /// Jobs live at some moment of `[since, until]` (queued by its end, not
    /// finished before its start), newest first.
    pub async fn jobs_between(
        &self,
        since: time::OffsetDateTime,
        until: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(select!(
                "WHERE queued_at <= $2 AND (finished_at IS NULL OR finished_at >= $1) ORDER BY id DESC LIMIT $3"
            ))
            .bind(DbTime(since))
            .bind(DbTime(until))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(from_row)
            .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    /// How many jobs are in each status.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok::<_, sqlx::Error>((r.text("status")?, r.int("n")?)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    /// Usage summed over a project's or a ticket's jobs.
    pub async fn usage_summary(
        &self,
        project: Option<ProjectId>,
        ticket: Option<TicketId>,
    ) -> Result<UsageSummary, StoreError> {
        let summary = on_pool!(self, |pool| {
            let r = sqlx::query(USAGE)
                .bind(project.map(|p| p.as_uuid()))
                .bind(ticket.map(|t| t.as_uuid()))
                .fetch_one(pool)
                .await?;
            let n = |col: &str| r.int(col).map(|v| u64::try_from(v).unwrap_or(0));
            Ok::<_, sqlx::Error>(UsageSummary {
                jobs: n("jobs")?,
                input_tokens: n("tokens_in")?,
                output_tokens: n("tokens_out")?,
                cost_usd: n("cost_microusd")? as f64 / 1_000_000.0,
            })
        })?;
        Ok(summary)
    }

    /// The job's status and token hash, for authenticating its worker.
    pub async fn job_token(&self, id: JobId) -> Result<Option<(JobStatus, Option<String>)>, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_TOKEN)
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.text("status")?, r.opt_text("token_hash")?)))
                .transpose()
        })?;
        row.map(|(status, hash)| Ok((parse_stored(ENTITY, status)?, hash))).transpose()
    }

    /// The timing limits frozen in a job's spec, read without loading the
    /// spec itself (it can carry a megabyte of attachments).
    pub async fn job_limits(&self, id: JobId) -> Result<Option<JobLimits>, StoreError> {
        let row = match &self.pool {
            crate::Pool::Sqlite(pool) => sqlx::query(
                "SELECT CAST(json_extract(spec, '$.heartbeat_grace_secs') AS INTEGER) AS grace, \
                 CAST(json_extract(spec, '$.max_execution_secs') AS INTEGER) AS max FROM jobs WHERE id = $1",
            )
            .bind(id.as_uuid())
            .fetch_optional(pool)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.int("grace")?, r.int("max")?)))
            .transpose()?,
            crate::Pool::Postgres(pool) => sqlx::query(
                "SELECT CAST(spec->>'heartbeat_grace_secs' AS BIGINT) AS grace, \
                 CAST(spec->>'max_execution_secs' AS BIGINT) AS max FROM jobs WHERE id = $1",
            )
            .bind(id.as_uuid())
            .fetch_optional(pool)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.int("grace")?, r.int("max")?)))
            .transpose()?,
        };
        Ok(row.map(|(grace, max)| JobLimits {
            heartbeat_grace_secs: u64::try_from(grace).unwrap_or(0),
            max_execution_secs: u64::try_from(max).unwrap_or(0),
        }))
    }

    /// Jobs that are dispatching or running, oldest first (light view).
    pub async fn live_jobs(&self, limit: u32) -> Result<Vec<Job>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(SELECT_LIVE)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(from_row)
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    /// Stores a worker's events; an event whose `seq` was stored before is
    /// skipped. The last progress event becomes the job's status message.
    /// Returns how many were new.
    pub async fn append_worker_events(&self, id: JobId, events: &[NewJobEvent]) -> Result<u64, StoreError> {
        let now = DbTime(crate::now());
        // After the inserts (one per event on SQLite, one for the batch on
        // PostgreSQL), in the same transaction: the last new milestone
        // becomes the job's status message and a `job.progress` event (a
        // repeated batch, or the same step again, emits nothing).
        macro_rules! finish {
            ($tx:ident, $new:expr) => {{
                let new: Vec<bool> = $new;
                let progress = events.iter().zip(&new).rev().find(|(e, n)| **n && e.kind == EventKind::Progress);
                if let Some((progress, _)) = progress {
                    let step = bound_message(&progress.message);
                    let row = sqlx::query(SET_PROGRESS)
                        .bind(id.as_uuid())
                        .bind(&step)
                        .bind(now)
                        .fetch_optional(&mut *$tx)
                        .await?;
                    if let Some(row) = row {
                        let event = NewEvent::new(
                            EventType::JobProgress,
                            serde_json::json!({"job_id": id, "phase": row.text("phase")?, "step": step}),
                        )
                        .project(ProjectId::from_uuid(row.uuid("project_id")?))
                        .ticket(row.opt_uuid("ticket_id")?.map(TicketId::from_uuid))
                        .job(id);
                        emit!(self, $tx, &event)?;
                    }
                }
                $tx.commit().await?;
                Ok::<_, sqlx::Error>(new.iter().filter(|n| **n).count() as u64)
            }};
        }
        let seq = |event: &NewJobEvent| i64::try_from(event.seq).unwrap_or(i64::MAX);
        let inserted = match &self.pool {
            crate::Pool::Sqlite(pool) => {
                let mut tx = crate::BeginWrite::begin_write(pool).await?;
                let mut new = Vec::with_capacity(events.len());
                for event in events {
                    let rows = sqlx::query(INSERT_EVENT)
                        .bind(id.as_uuid())
                        .bind(seq(event))
                        .bind(event.kind.as_str())
                        .bind(event.level.as_str())
                        .bind(bound_message(&event.message))
                        .bind(event.data.clone().map(Json))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    new.push(rows == 1);
                }
                finish!(tx, new)
            }
            crate::Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // One statement for the batch, rows in the batch's order (the
                // event ids follow it); a `seq` stored before, or twice in
                // the batch, keeps its first row.
                let stored: Vec<i64> = sqlx::query_scalar(INSERT_EVENTS_BATCH)
                    .bind(id.as_uuid())
                    .bind(events.iter().map(seq).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.level.as_str()).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| bound_message(&e.message)).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.data.as_ref().map(|d| d.to_string())).collect::<Vec<_>>())
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?;
                let stored: std::collections::HashSet<i64> = stored.into_iter().collect();
                let mut seen = std::collections::HashSet::new();
                let new = events.iter().map(|e| stored.contains(&seq(e)) && seen.insert(seq(e))).collect();
                finish!(tx, new)
            }
        }?;
        Ok(inserted)
    }

    /// Stores an event the server itself reports about a job.
    pub async fn append_event(
        &self,
        id: JobId,
        kind: EventKind,
        level: LogLevel,
        message: &str,
        data: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| { insert_line!(pool, id, kind, level, message, data, crate::now()).await.map(|_| ()) })?;
        Ok(())
    }

    /// A job's events after `after` (an event id; 0 for the start), in order.
    pub async fn list_job_events(&self, id: JobId, after: i64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(SELECT_EVENTS)
                .bind(id.as_uuid())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(event_from_row)
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }
}

/// The status a ticket shows while its `phase` is being worked on.
pub(crate) fn working_status(phase: viberglass_domain::Phase) -> viberglass_domain::TicketStatus {
    match phase {
        viberglass_domain::Phase::Research => viberglass_domain::TicketStatus::Researching,
        viberglass_domain::Phase::Planning => viberglass_domain::TicketStatus::Planning,
        viberglass_domain::Phase::Execution => viberglass_domain::TicketStatus::InProgress,
    }
}
