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

use viberglass_domain::{EventType, NewEvent, NewTicket};

use crate::dbtime::DbTime;
use crate::outbox::emit;
use crate::rows::{RowExt, parse_stored};
use crate::tickets::insert_ticket;
use crate::{Store, StoreError, on_pool};

/// Writes `schedule.execution_finished` for execution `$id` (ended with `$status` and `$message`) on the open
/// transaction `$tx`, with its schedule's project and name, and the execution's ticket and job.
macro_rules! emit_finished {
    ($store:expr, $tx:expr, $id:expr, $status:expr, $message:expr) => {{
        let id: ExecutionId = $id;
        let status: ExecutionStatus = $status;
        let message: Option<&str> = $message;
        async {
            let schedule = sqlx::query(SCHEDULE_OF_EXECUTION).bind(id.as_uuid()).fetch_one(&mut *$tx).await?;
            let execution = sqlx::query(EXECUTION_BY_ID).bind(id.as_uuid()).fetch_one(&mut *$tx).await?;
            let execution = execution_from_row(&execution)?;
            let mut event = NewEvent::new(
                EventType::ScheduleExecutionFinished,
                serde_json::json!({"schedule_id": schedule.uuid("id")?, "schedule": schedule.text("name")?,
                    "execution_id": id, "slot": execution.slot.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(), "trigger": execution.trigger,
                    "status": status, "message": message}),
            )
            .project(ProjectId::from_uuid(schedule.uuid("project_id")?))
            .ticket(execution.ticket_id);
            if let Some(job) = execution.job_id {
                event = event.job(job);
            }
            emit!($store, $tx, &event)?;
            Ok::<_, StoreError>(())
        }
        .await
    }};
}

const TEMPLATE: &str = "task template";
const SCHEDULE: &str = "schedule";
const EXECUTION: &str = "execution";

macro_rules! template_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, project_id, name, clanker, phase, instructions, open_pull_request, secrets, created_at, \
             updated_at FROM task_templates ",
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
     open_pull_request, secrets, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)";
const UPDATE_TEMPLATE: &str = "UPDATE task_templates SET name = $2, clanker = $3, phase = $4, instructions = $5, \
     open_pull_request = $6, secrets = $7, updated_at = $8 WHERE id = $1";
const TEMPLATE_BY_ID: &str = template_sql!("WHERE id = $1");
const TEMPLATES_OF: &str = template_sql!("WHERE project_id = $1 ORDER BY name LIMIT 500");
const INSERT_SCHEDULE: &str = "INSERT INTO schedules (id, project_id, template_id, name, cadence, expression, \
     timezone, interval_secs, anchor_at, active, overlap, missed, standing_ticket_id, next_run_at, created_by, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)";
const UPDATE_SCHEDULE: &str = "UPDATE schedules SET template_id = $2, name = $3, cadence = $4, expression = $5, \
     timezone = $6, interval_secs = $7, anchor_at = $8, overlap = $9, missed = $10, standing_ticket_id = $11, \
     active = $12, next_run_at = CASE WHEN $13 THEN $14 WHEN $12 THEN next_run_at ELSE NULL END, updated_at = $15 \
     WHERE id = $1";
const SCHEDULE_BY_ID: &str = schedule_sql!("WHERE id = $1");
const SCHEDULES_OF: &str = schedule_sql!("WHERE project_id = $1 ORDER BY name LIMIT 500");
const DUE: &str = schedule_sql!(
    "WHERE active AND next_run_at IS NOT NULL AND next_run_at <= $1 \
     AND project_id IN (SELECT id FROM projects WHERE archived_at IS NULL) ORDER BY next_run_at LIMIT $2"
);
const SET_ACTIVE: &str =
    "UPDATE schedules SET active = $2, next_run_at = $3, updated_at = $4 WHERE id = $1 AND active <> $2";
const TAKE_SLOT: &str = "UPDATE schedules SET next_run_at = $3, last_run_at = COALESCE($4, last_run_at), \
     runs = runs + $5, skipped = skipped + $6, updated_at = $7 WHERE id = $1 AND active AND next_run_at = $2";
const INSERT_EXECUTION: &str = "INSERT INTO schedule_executions (id, schedule_id, slot, trigger, status, message, \
     created_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const INSERT_SLOT_EXECUTION: &str = "INSERT INTO schedule_executions (id, schedule_id, slot, trigger, status, \
     message, created_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (schedule_id, slot) DO NOTHING";
const EXECUTION_BY_ID: &str = execution_sql!("WHERE id = $1");
const EXECUTIONS_OF: &str = execution_sql!("WHERE schedule_id = $1 ORDER BY id DESC LIMIT $2");
const LIVE_EXECUTIONS: &str =
    execution_sql!("WHERE schedule_id = $1 AND status IN ('queued', 'running') ORDER BY id LIMIT 10");
const READY_EXECUTIONS: &str = execution_sql!(
    "WHERE status = 'queued' AND NOT EXISTS (SELECT 1 FROM schedule_executions r \
     WHERE r.schedule_id = schedule_executions.schedule_id AND r.status = 'running') \
     AND schedule_id IN (SELECT s.id FROM schedules s JOIN projects p ON p.id = s.project_id \
     WHERE s.active AND p.archived_at IS NULL) ORDER BY id LIMIT $1"
);
const STRANDED_EXECUTIONS: &str = execution_sql!(
    "WHERE status = 'running' AND started_at < $1 AND job_id IS NOT NULL \
     AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = schedule_executions.job_id) ORDER BY id LIMIT $2"
);
const EXECUTION_OF_JOB: &str = execution_sql!("WHERE job_id = $1");
const BEGIN_EXECUTION: &str = "UPDATE schedule_executions SET status = 'running', ticket_id = $2, job_id = $3, \
     started_at = $4 WHERE id = $1 AND status = 'queued' AND NOT EXISTS (SELECT 1 FROM schedule_executions r \
     WHERE r.schedule_id = $5 AND r.status = 'running')";
const FINISH_EXECUTION: &str = "UPDATE schedule_executions SET status = $2, message = $3, finished_at = $4 \
     WHERE id = $1 AND status IN ('queued', 'running')";
const FINISH_BY_JOB: &str = "UPDATE schedule_executions SET status = $2, message = $3, finished_at = $4 \
     WHERE job_id = $1 AND status = 'running' RETURNING id";
const COUNT_FAILURE: &str = "UPDATE schedules SET failures = failures + 1 WHERE id = $1";
const COUNT_FAILURE_OF_EXECUTION: &str = "UPDATE schedules SET failures = failures + 1 \
     WHERE id = (SELECT schedule_id FROM schedule_executions WHERE id = $1)";
const SCHEDULE_OF_EXECUTION: &str = "SELECT schedules.id AS id, schedules.project_id AS project_id, \
     schedules.name AS name FROM schedule_executions JOIN schedules ON schedules.id = schedule_executions.schedule_id \
     WHERE schedule_executions.id = $1";

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
        secrets: serde_json::from_str(&r.text("secrets")?).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
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
                .bind(serde_json::Value::from(t.secrets.clone()).to_string())
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(TEMPLATE, "task_templates", e))?;
        self.get_task_template(t.id).await
    }

    /// Replaces a template's settings (its id and project stay).
    pub async fn update_task_template(&self, t: &TaskTemplate) -> Result<TaskTemplate, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(UPDATE_TEMPLATE)
                .bind(t.id.as_uuid())
                .bind(&t.name)
                .bind(&t.clanker)
                .bind(t.phase.as_str())
                .bind(&t.instructions)
                .bind(t.open_pull_request)
                .bind(serde_json::Value::from(t.secrets.clone()).to_string())
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| StoreError::from_write(TEMPLATE, "task_templates", e))?;
        if n == 0 {
            return Err(StoreError::not_found(TEMPLATE, t.id));
        }
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

    /// Replaces a schedule's settings; its next slot becomes `s.next_run_at` only when `moved` (a new cadence,
    /// paused or resumed), so an edit never puts back a slot a scheduler took meanwhile.
    pub async fn update_schedule(&self, s: &Schedule, moved: bool) -> Result<Schedule, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(UPDATE_SCHEDULE)
                .bind(s.id.as_uuid())
                .bind(s.template_id.as_uuid())
                .bind(&s.name)
                .bind(s.cadence.as_str())
                .bind(&s.expression)
                .bind(&s.timezone)
                .bind(i64::try_from(s.interval_secs).unwrap_or(i64::MAX))
                .bind(DbTime(s.anchor_at))
                .bind(s.overlap.as_str())
                .bind(s.missed.as_str())
                .bind(s.standing_ticket_id.map(|t| t.as_uuid()))
                .bind(s.active)
                .bind(moved)
                .bind(s.next_run_at.map(DbTime))
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| StoreError::from_write(SCHEDULE, "schedules", e))?;
        if n == 0 {
            return Err(StoreError::not_found(SCHEDULE, s.id));
        }
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
                return Ok::<_, StoreError>(None);
            }
            let mut recorded = false;
            if let Some((slot, trigger, status, message)) = &claim.execution {
                // A slot already recorded (an edit put a taken slot back) moves on without a second row.
                recorded = sqlx::query(INSERT_SLOT_EXECUTION)
                    .bind(id.as_uuid())
                    .bind(claim.schedule_id.as_uuid())
                    .bind(DbTime(*slot))
                    .bind(trigger.as_str())
                    .bind(status.as_str())
                    .bind(message.as_deref())
                    .bind(now)
                    .bind((*status == ExecutionStatus::Skipped).then_some(now))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if recorded && *status == ExecutionStatus::Skipped {
                    emit_finished!(self, tx, id, *status, message.as_deref())?;
                }
            }
            tx.commit().await?;
            Ok(Some(recorded))
        }
        .await)?;
        match won {
            None => Ok(None),
            Some(true) => Ok(Some(Some(self.get_execution(id).await?))),
            Some(false) => Ok(Some(None)),
        }
    }

    /// Records a run asked for by hand (Run now) at `slot`; a conflict when one already waits.
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

    /// Queued executions that may start now (their schedule runs nothing), oldest first.
    pub async fn ready_executions(&self, limit: i64) -> Result<Vec<Execution>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(READY_EXECUTIONS).bind(limit).fetch_all(pool).await?;
            rows.iter().map(execution_from_row).collect()
        })
    }

    /// Executions taken to run before `before` whose job was never queued (their server stopped between
    /// the two): started again with the same job id, so a second try cannot queue a second job.
    pub async fn stranded_executions(&self, before: OffsetDateTime, limit: i64) -> Result<Vec<Execution>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(STRANDED_EXECUTIONS).bind(DbTime(before)).bind(limit).fetch_all(pool).await?;
            rows.iter().map(execution_from_row).collect()
        })
    }

    /// The execution whose run is `job`, if any.
    pub async fn execution_of_job(&self, job: JobId) -> Result<Option<Execution>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(EXECUTION_OF_JOB)
                .bind(job.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| execution_from_row(&r))
                .transpose()
        })
    }

    /// Takes a queued execution to run as `job` on its ticket: the standing ticket `ticket`, or `file`d now
    /// (with its `ticket.filed` event), in one transaction, only where it is still queued and its schedule
    /// runs nothing else. The ticket's id, or `None` when another server took it (or something runs).
    pub async fn begin_execution(
        &self,
        execution: &Execution,
        project: ProjectId,
        ticket: Result<TicketId, NewTicket>,
        created_by: Option<UserId>,
        job: JobId,
    ) -> Result<Option<TicketId>, StoreError> {
        let now = crate::now();
        let (ticket_id, filed) = match ticket {
            Ok(id) => (id, None),
            Err(new) => {
                let t = new.into_ticket(project, created_by, now);
                let event = NewEvent::new(
                    EventType::TicketFiled,
                    serde_json::json!({"ticket_id": t.id, "title": t.title, "severity": t.severity,
                        "source": t.source, "category": t.category, "external_url": t.external_url,
                        "created_by": t.created_by}),
                )
                .project(project)
                .ticket(Some(t.id));
                (t.id, Some((t, event)))
            }
        };
        let began = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            // The ticket first (the execution refers to it); rolled back with the rest when the execution was
            // not there to take.
            if let Some((t, event)) = &filed {
                insert_ticket!(tx, *t)?;
                emit!(self, tx, event)?;
            }
            let n = sqlx::query(BEGIN_EXECUTION)
                .bind(execution.id.as_uuid())
                .bind(ticket_id.as_uuid())
                .bind(job.as_uuid())
                .bind(DbTime(now))
                .bind(execution.schedule_id.as_uuid())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n != 1 {
                tx.rollback().await?;
                return Ok::<_, sqlx::Error>(false);
            }
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(|e| StoreError::from_write(EXECUTION, "schedule_executions", e));
        match began {
            Ok(began) => Ok(began.then_some(ticket_id)),
            // Another execution of the schedule began meanwhile (one runs at a time): this one waits.
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ends a queued or running execution (its run could not start, or was cancelled) with why; a failure
    /// counts on its schedule. False when it had ended already.
    pub async fn finish_execution(
        &self,
        execution: &Execution,
        status: ExecutionStatus,
        message: &str,
    ) -> Result<bool, StoreError> {
        let now = DbTime(crate::now());
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let n = sqlx::query(FINISH_EXECUTION)
                .bind(execution.id.as_uuid())
                .bind(status.as_str())
                .bind(message)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 1 {
                if status == ExecutionStatus::Failed {
                    sqlx::query(COUNT_FAILURE).bind(execution.schedule_id.as_uuid()).execute(&mut *tx).await?;
                }
                emit_finished!(self, tx, execution.id, status, Some(message))?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(n == 1)
        }
        .await)
    }

    /// The running execution of `job` ended; the execution, if there was one (a failure counts on its
    /// schedule), with `schedule.execution_finished` in the same transaction.
    pub async fn finish_execution_of_job(
        &self,
        job: JobId,
        status: ExecutionStatus,
        message: Option<&str>,
    ) -> Result<Option<Execution>, StoreError> {
        let now = DbTime(crate::now());
        let id = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let row = sqlx::query(FINISH_BY_JOB)
                .bind(job.as_uuid())
                .bind(status.as_str())
                .bind(message)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let id = match row {
                Some(r) => Some(ExecutionId::from_uuid(r.uuid("id")?)),
                None => None,
            };
            if let Some(id) = id {
                if status == ExecutionStatus::Failed {
                    sqlx::query(COUNT_FAILURE_OF_EXECUTION).bind(id.as_uuid()).execute(&mut *tx).await?;
                }
                emit_finished!(self, tx, id, status, message)?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(id)
        }
        .await)?;
        match id {
            Some(id) => Ok(Some(self.get_execution(id).await?)),
            None => Ok(None),
        }
    }
}
