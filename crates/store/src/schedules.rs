//! Scheduled tasks: task templates, schedules and their executions.
//!
//! A due slot is taken by one guarded update (`next_run_at` moves from the
//! slot that was due to the next one only where it still holds the due
//! slot), in the same transaction as the slot's execution row, which is
//! unique per (schedule, slot): however many servers look at a due schedule,
//! exactly one runs its slot.

use time::OffsetDateTime;
use viberglass_domain::schedule::{Execution, ExecutionStatus, ExecutionTrigger, Schedule, TaskTemplate};
use viberglass_domain::{ExecutionId, JobId, ProjectId, ScheduleId, TaskTemplateId, TicketId, UserId};

use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored};
use crate::{Store, StoreError, on_pool};

const TEMPLATE: &str = "task template";
const SCHEDULE: &str = "schedule";
const EXECUTION: &str = "execution";

macro_rules! template_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, project_id, name, clanker, phase, instructions, open_pull_request, created_at, updated_at \
             FROM task_templates ",
            $rest
        )
    };
}
macro_rules! schedule_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, project_id, template_id, name, cadence, expression, timezone, interval_secs, anchor_at, \
             active, overlap, missed, standing_ticket_id, next_run_at, last_run_at, runs, failures, skipped, \
             created_by, created_at, updated_at FROM schedules ",
            $rest
        )
    };
}
macro_rules! execution_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, schedule_id, slot, trigger, status, ticket_id, job_id, message, created_at, started_at, \
             finished_at FROM schedule_executions ",
            $rest
        )
    };
}

const INSERT_TEMPLATE: &str = "INSERT INTO task_templates (id, project_id, name, clanker, phase, instructions, \
     open_pull_request, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)";
const TEMPLATE_BY_ID: &str = template_sql!("WHERE id = $1");
const TEMPLATES_OF: &str = template_sql!("WHERE project_id = $1 ORDER BY name LIMIT 500");
const INSERT_SCHEDULE: &str = "INSERT INTO schedules (id, project_id, template_id, name, cadence, expression, \
     timezone, interval_secs, anchor_at, active, overlap, missed, standing_ticket_id, next_run_at, created_by, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)";
const SCHEDULE_BY_ID: &str = schedule_sql!("WHERE id = $1");
const SCHEDULES_OF: &str = schedule_sql!("WHERE project_id = $1 ORDER BY name LIMIT 500");
const DUE: &str =
    schedule_sql!("WHERE active AND next_run_at IS NOT NULL AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2");
const SET_ACTIVE: &str =
    "UPDATE schedules SET active = $2, next_run_at = $3, updated_at = $4 WHERE id = $1 AND active <> $2";
const TAKE_SLOT: &str = "UPDATE schedules SET next_run_at = $3, last_run_at = COALESCE($4, last_run_at), \
     runs = runs + $5, skipped = skipped + $6, updated_at = $7 WHERE id = $1 AND active AND next_run_at = $2";
const INSERT_EXECUTION: &str = "INSERT INTO schedule_executions (id, schedule_id, slot, trigger, status, message, \
     created_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const EXECUTION_BY_ID: &str = execution_sql!("WHERE id = $1");
const EXECUTIONS_OF: &str = execution_sql!("WHERE schedule_id = $1 ORDER BY id DESC LIMIT $2");
const LIVE_EXECUTIONS: &str =
    execution_sql!("WHERE schedule_id = $1 AND status IN ('queued', 'running') ORDER BY id LIMIT 10");
const START_EXECUTION: &str = "UPDATE schedule_executions SET status = 'running', ticket_id = $2, job_id = $3, \
     started_at = $4 WHERE id = $1 AND status = 'queued'";
const FAIL_QUEUED: &str = "UPDATE schedule_executions SET status = 'failed', message = $2, finished_at = $3 \
     WHERE id = $1 AND status = 'queued'";
const FINISH_BY_JOB: &str = "UPDATE schedule_executions SET status = $2, message = $3, finished_at = $4 \
     WHERE job_id = $1 AND status = 'running' RETURNING id";
const COUNT_FAILURE: &str = "UPDATE schedules SET failures = failures + 1 WHERE id = $1";

/// A due slot, as the scheduler decided it: where the schedule moves, and what runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotClaim {
    pub schedule_id: ScheduleId,
    /// The slot that was due (the guard).
    pub due: OffsetDateTime,
    pub next: Option<OffsetDateTime>,
    /// The execution to record: its slot, why, and whether it runs (`queued`) or is `skipped` with a reason.
    pub execution: Option<(OffsetDateTime, ExecutionTrigger, ExecutionStatus, Option<String>)>,
    /// Slots passed over without an execution row (missed while no server ran).
    pub skipped: i64,
}

fn template_from_row(r: &impl RowExt) -> Result<TaskTemplate, StoreError> {
    Ok(TaskTemplate {
        id: TaskTemplateId::from_uuid(r.uuid("id")?),
        project_id: ProjectId::from_uuid(r.uuid("project_id")?),
        name: r.text("name")?,
        clanker: r.text("clanker")?,
        phase: parse_stored(TEMPLATE, r.text("phase")?)?,
        instructions: r.text("instructions")?,
        open_pull_request: r.flag("open_pull_request")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn schedule_from_row(r: &impl RowExt) -> Result<Schedule, StoreError> {
    Ok(Schedule {
        id: ScheduleId::from_uuid(r.uuid("id")?),
        project_id: ProjectId::from_uuid(r.uuid("project_id")?),
        template_id: TaskTemplateId::from_uuid(r.uuid("template_id")?),
        name: r.text("name")?,
        cadence: parse_stored(SCHEDULE, r.text("cadence")?)?,
        expression: r.text("expression")?,
        timezone: r.text("timezone")?,
        interval_secs: u64::try_from(r.int("interval_secs")?).unwrap_or(0),
        anchor_at: r.time("anchor_at")?,
        active: r.flag("active")?,
        overlap: parse_stored(SCHEDULE, r.text("overlap")?)?,
        missed: parse_stored(SCHEDULE, r.text("missed")?)?,
        standing_ticket_id: r.opt_uuid("standing_ticket_id")?.map(TicketId::from_uuid),
        next_run_at: r.opt_time("next_run_at")?,
        last_run_at: r.opt_time("last_run_at")?,
        runs: r.int("runs")?,
        failures: r.int("failures")?,
        skipped: r.int("skipped")?,
        created_by: r.opt_uuid("created_by")?.map(UserId::from_uuid),
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn execution_from_row(r: &impl RowExt) -> Result<Execution, StoreError> {
    Ok(Execution {
        id: ExecutionId::from_uuid(r.uuid("id")?),
        schedule_id: ScheduleId::from_uuid(r.uuid("schedule_id")?),
        slot: r.time("slot")?,
        trigger: parse_stored(EXECUTION, r.text("trigger")?)?,
        status: parse_stored(EXECUTION, r.text("status")?)?,
        ticket_id: r.opt_uuid("ticket_id")?.map(TicketId::from_uuid),
        job_id: r.opt_uuid("job_id")?.map(JobId::from_uuid),
        message: r.opt_text("message")?,
        created_at: r.time("created_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

impl Store {
    pub async fn create_task_template(&self, t: &TaskTemplate) -> Result<TaskTemplate, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(INSERT_TEMPLATE)
                .bind(t.id.as_uuid())
                .bind(t.project_id.as_uuid())
                .bind(&t.name)
                .bind(&t.clanker)
                .bind(t.phase.as_str())
                .bind(&t.instructions)
                .bind(t.open_pull_request)
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(TEMPLATE, "task_templates", e))?;
        self.get_task_template(t.id).await
    }

    pub async fn get_task_template(&self, id: TaskTemplateId) -> Result<TaskTemplate, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(TEMPLATE_BY_ID)
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| template_from_row(&r))
                .transpose()
        })?
        .ok_or_else(|| StoreError::not_found(TEMPLATE, id))
    }

    pub async fn list_task_templates(&self, project: ProjectId) -> Result<Vec<TaskTemplate>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(TEMPLATES_OF).bind(project.as_uuid()).fetch_all(pool).await?;
            rows.iter().map(template_from_row).collect()
        })
    }

    pub async fn create_schedule(&self, s: &Schedule) -> Result<Schedule, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(INSERT_SCHEDULE)
                .bind(s.id.as_uuid())
                .bind(s.project_id.as_uuid())
                .bind(s.template_id.as_uuid())
                .bind(&s.name)
                .bind(s.cadence.as_str())
                .bind(&s.expression)
                .bind(&s.timezone)
                .bind(i64::try_from(s.interval_secs).unwrap_or(i64::MAX))
                .bind(DbTime(s.anchor_at))
                .bind(s.active)
                .bind(s.overlap.as_str())
                .bind(s.missed.as_str())
                .bind(s.standing_ticket_id.map(|t| t.as_uuid()))
                .bind(s.next_run_at.map(DbTime))
                .bind(s.created_by.map(|u| u.as_uuid()))
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(SCHEDULE, "schedules", e))?;
        self.get_schedule(s.id).await
    }

    pub async fn get_schedule(&self, id: ScheduleId) -> Result<Schedule, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(SCHEDULE_BY_ID)
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| schedule_from_row(&r))
                .transpose()
        })?
        .ok_or_else(|| StoreError::not_found(SCHEDULE, id))
    }

    pub async fn list_schedules(&self, project: ProjectId) -> Result<Vec<Schedule>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(SCHEDULES_OF).bind(project.as_uuid()).fetch_all(pool).await?;
            rows.iter().map(schedule_from_row).collect()
        })
    }

    /// Pauses (`next_run_at` none) or resumes (from `next`) a schedule; false when it already was.
    pub async fn set_schedule_active(
        &self,
        id: ScheduleId,
        active: bool,
        next: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(SET_ACTIVE)
                .bind(id.as_uuid())
                .bind(active)
                .bind(next.map(DbTime))
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Active schedules whose next slot is at or before `now`, oldest slot first.
    pub async fn due_schedules(&self, now: OffsetDateTime, limit: i64) -> Result<Vec<Schedule>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(DUE).bind(DbTime(now)).bind(limit).fetch_all(pool).await?;
            rows.iter().map(schedule_from_row).collect()
        })
    }

    /// Takes a due slot: moves the schedule on and records the slot's execution, in one transaction, only where
    /// the schedule still holds `due`. `None` when another server took it first.
    pub async fn claim_slot(&self, claim: &SlotClaim) -> Result<Option<Option<Execution>>, StoreError> {
        let now = DbTime(crate::now());
        let id = ExecutionId::new();
        let ran = claim.execution.as_ref().filter(|e| e.2 != ExecutionStatus::Skipped);
        let won = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let moved = sqlx::query(TAKE_SLOT)
                .bind(claim.schedule_id.as_uuid())
                .bind(DbTime(claim.due))
                .bind(claim.next.map(DbTime))
                .bind(ran.map(|e| DbTime(e.0)))
                .bind(i64::from(ran.is_some()))
                .bind(
                    claim.skipped
                        + i64::from(claim.execution.as_ref().is_some_and(|e| e.2 == ExecutionStatus::Skipped)),
                )
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved != 1 {
                return Ok::<_, StoreError>(false);
            }
            if let Some((slot, trigger, status, message)) = &claim.execution {
                sqlx::query(INSERT_EXECUTION)
                    .bind(id.as_uuid())
                    .bind(claim.schedule_id.as_uuid())
                    .bind(DbTime(*slot))
                    .bind(trigger.as_str())
                    .bind(status.as_str())
                    .bind(message.as_deref())
                    .bind(now)
                    .bind((*status == ExecutionStatus::Skipped).then_some(now))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .await)?;
        if !won {
            return Ok(None);
        }
        match claim.execution {
            Some(_) => Ok(Some(Some(self.get_execution(id).await?))),
            None => Ok(Some(None)),
        }
    }

    /// Records a run asked for by hand (Run now) at `slot`.
    pub async fn manual_execution(&self, schedule: ScheduleId, slot: OffsetDateTime) -> Result<Execution, StoreError> {
        let id = ExecutionId::new();
        on_pool!(self, |pool| {
            sqlx::query(INSERT_EXECUTION)
                .bind(id.as_uuid())
                .bind(schedule.as_uuid())
                .bind(DbTime(slot))
                .bind(ExecutionTrigger::Manual.as_str())
                .bind(ExecutionStatus::Queued.as_str())
                .bind(None::<String>)
                .bind(DbTime(crate::now()))
                .bind(None::<DbTime>)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(EXECUTION, "schedule_executions", e))?;
        self.get_execution(id).await
    }

    pub async fn get_execution(&self, id: ExecutionId) -> Result<Execution, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(EXECUTION_BY_ID)
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| execution_from_row(&r))
                .transpose()
        })?
        .ok_or_else(|| StoreError::not_found(EXECUTION, id))
    }

    /// A schedule's executions, newest first.
    pub async fn list_executions(&self, schedule: ScheduleId, limit: i64) -> Result<Vec<Execution>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(EXECUTIONS_OF).bind(schedule.as_uuid()).bind(limit).fetch_all(pool).await?;
            rows.iter().map(execution_from_row).collect()
        })
    }

    /// A schedule's queued and running executions, oldest first.
    pub async fn live_executions(&self, schedule: ScheduleId) -> Result<Vec<Execution>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(LIVE_EXECUTIONS).bind(schedule.as_uuid()).fetch_all(pool).await?;
            rows.iter().map(execution_from_row).collect()
        })
    }

    /// A queued execution's run started; false when it was not queued any more.
    pub async fn start_execution(&self, id: ExecutionId, ticket: TicketId, job: JobId) -> Result<bool, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(START_EXECUTION)
                .bind(id.as_uuid())
                .bind(ticket.as_uuid())
                .bind(job.as_uuid())
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// A queued execution whose run could not start, with why (counted as a failure).
    pub async fn fail_queued_execution(&self, execution: &Execution, message: &str) -> Result<bool, StoreError> {
        let now = DbTime(crate::now());
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let n =
                sqlx::query(FAIL_QUEUED).bind(execution.id.as_uuid()).bind(message).bind(now).execute(&mut *tx).await?;
            if n.rows_affected() == 1 {
                sqlx::query(COUNT_FAILURE).bind(execution.schedule_id.as_uuid()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(n.rows_affected() == 1)
        }
        .await)
    }

    /// The running execution of `job` ended; the execution, if there was one (a failure counts on its schedule).
    pub async fn finish_execution_of_job(
        &self,
        job: JobId,
        status: ExecutionStatus,
        message: Option<&str>,
    ) -> Result<Option<Execution>, StoreError> {
        let now = DbTime(crate::now());
        let id = on_pool!(self, |pool| {
            async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let row = sqlx::query(FINISH_BY_JOB)
                .bind(job.as_uuid())
                .bind(status.as_str())
                .bind(message)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let id = match row {
                Some(r) => Some(r.uuid("id")?),
                None => None,
            };
            if let Some(id) = id
                && status == ExecutionStatus::Failed
            {
                sqlx::query("UPDATE schedules SET failures = failures + 1 WHERE id = (SELECT schedule_id FROM schedule_executions WHERE id = $1)")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(id)
        }
        .await
        })?;
        match id {
            Some(id) => Ok(Some(self.get_execution(ExecutionId::from_uuid(id)).await?)),
            None => Ok(None),
        }
    }
}
