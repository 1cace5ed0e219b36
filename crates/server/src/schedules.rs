//! The scheduler: takes due slots and starts executions, on every server at
//! once without running a slot twice.
//!
//! Each round reads "now" from the server's clock (a test clock in tests):
//!
//! 1. every active schedule whose `next_run_at` has come is planned
//!    (`schedule::plan`: on time it runs; after downtime, one catch-up run
//!    or none), its overlap policy applied (a slot that comes while an
//!    execution is live is skipped, or with `queue` one waits), and claimed
//!    by one guarded update with its execution row (`Store::claim_slot`):
//!    whichever server loses the race moves on;
//! 2. queued executions whose schedule runs nothing are started
//!    (`service::schedules::start_execution`: one server takes each);
//! 3. an execution taken by a server that stopped before its job was queued
//!    is started again with the same job id.
//!
//! The `schedule-executions` outbox consumer follows each execution's job to
//! its end and wakes the scheduler, so a waiting execution starts at once.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use viberglass_domain::schedule::{ExecutionStatus, ExecutionTrigger, OverlapPolicy, Schedule, plan};
use viberglass_domain::{DomainEvent, EventType};
use viberglass_store::SlotClaim;

use crate::AppState;
use crate::outbox::Consumer;
use crate::service::schedules as service;

/// How long an execution may stay taken without its job before it is started again.
const STRANDED_AFTER: time::Duration = time::Duration::seconds(60);

/// Runs scheduler rounds until `shutdown`.
pub async fn scheduler_loop(state: AppState, poll: Duration, shutdown: CancellationToken) {
    loop {
        let worked = round(&state).await;
        if shutdown.is_cancelled() {
            return;
        }
        if !worked {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
                () = state.schedule_wake.notified() => {}
            }
        }
    }
}

/// One round; true when it did something (another round follows at once).
pub async fn round(state: &AppState) -> bool {
    let now = state.clock.now();
    let mut worked = false;
    match state.store.due_schedules(now, 50).await {
        Ok(due) => {
            for schedule in due {
                match take_slot(state, &schedule, now).await {
                    Ok(took) => worked |= took,
                    Err(e) => tracing::error!(schedule_id = %schedule.id, error = %e, "could not take a due slot"),
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "scheduler: could not read the due schedules"),
    }
    match state.store.ready_executions(20).await {
        Ok(ready) => {
            let mut seen = std::collections::HashSet::new();
            // The oldest of each schedule only: the others wait for it.
            for execution in ready.into_iter().filter(|e| seen.insert(e.schedule_id)) {
                match service::start_execution(state, &execution).await {
                    Ok(took) => worked |= took,
                    Err(e) => {
                        tracing::error!(execution_id = %execution.id, error = %e, "could not start a scheduled execution")
                    }
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "scheduler: could not read the waiting executions"),
    }
    let before = viberglass_store::now() - STRANDED_AFTER;
    match state.store.stranded_executions(before, 10).await {
        Ok(stranded) => {
            for execution in stranded {
                let (Some(ticket), Some(job)) = (execution.ticket_id, execution.job_id) else { continue };
                tracing::warn!(execution_id = %execution.id, "a scheduled execution was taken but its job never queued: starting it again");
                let template = match state.store.get_schedule(execution.schedule_id).await {
                    Ok(s) => state.store.get_task_template(s.template_id).await,
                    Err(e) => Err(e),
                };
                let result = match template {
                    Ok(template) => service::run_execution(state, &execution, &template, ticket, job).await,
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = result {
                    tracing::error!(execution_id = %execution.id, error = %e, "could not start a stranded execution");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "scheduler: could not read stranded executions"),
    }
    worked
}

/// Plans and claims a schedule's due slot; true when this server took it.
async fn take_slot(state: &AppState, schedule: &Schedule, now: time::OffsetDateTime) -> Result<bool, String> {
    let Some(due) = schedule.next_run_at else { return Ok(false) };
    let cadence = match schedule.parsed() {
        Ok(cadence) => cadence,
        Err(e) => {
            // Validated when saved; only a time-zone database that lost the zone gets here.
            tracing::error!(schedule_id = %schedule.id, reason = %e, "a schedule's cadence no longer parses: pausing it");
            state.store.set_schedule_active(schedule.id, false, None).await.map_err(|e| e.to_string())?;
            return Ok(true);
        }
    };
    let planned = plan(&cadence, due, now, schedule.missed);
    let (execution, skipped) = match planned.run {
        None => {
            // Missed while no server ran, and the policy is not to catch up: one row says so.
            let message = format!(
                "{} slot(s) from {} were missed while no server ran; the missed-run policy is skip, so none ran",
                planned.skipped,
                viberglass_domain::schedule::local_time(due, &schedule.timezone)
            );
            let row = (due, ExecutionTrigger::CatchUp, ExecutionStatus::Skipped, Some(message));
            (Some(row), i64::from(planned.skipped.saturating_sub(1)))
        }
        Some(slot) => {
            let trigger = if planned.skipped > 0 { ExecutionTrigger::CatchUp } else { ExecutionTrigger::Schedule };
            let live = state.store.live_executions(schedule.id).await.map_err(|e| e.to_string())?;
            let waiting = live.iter().any(|e| e.status == ExecutionStatus::Queued);
            let (status, message) = match (live.first(), schedule.overlap) {
                (None, _) => (ExecutionStatus::Queued, None),
                (Some(_), OverlapPolicy::Queue) if !waiting => (ExecutionStatus::Queued, None),
                (Some(busy), OverlapPolicy::Queue) => (
                    ExecutionStatus::Skipped,
                    Some(format!(
                        "execution {} was still {} and one already waited (overlap policy queue keeps one waiting)",
                        busy.id, busy.status
                    )),
                ),
                (Some(busy), OverlapPolicy::Skip) => (
                    ExecutionStatus::Skipped,
                    Some(format!(
                        "execution {} was still {} (overlap policy skip); set overlap to queue to run it afterwards",
                        busy.id, busy.status
                    )),
                ),
            };
            (Some((slot, trigger, status, message)), i64::from(planned.skipped))
        }
    };
    let claim = SlotClaim { schedule_id: schedule.id, due, next: planned.next, execution, skipped };
    match state.store.claim_slot(&claim).await.map_err(|e| e.to_string())? {
        None => Ok(false),
        Some(execution) => {
            if let Some(e) = &execution {
                tracing::info!(schedule_id = %schedule.id, execution_id = %e.id, slot = %e.slot, status = %e.status,
                    "scheduled slot taken");
            }
            Ok(true)
        }
    }
}

/// Follows each execution's job to its end (`job.completed`, `job.failed`, `job.cancelled`): the execution
/// ends with the job's outcome and message (the failure's layer, cause and fix), and its
/// `schedule.execution_finished` event is written with it.
pub struct ScheduleExecutions;

impl Consumer for ScheduleExecutions {
    fn name(&self) -> &'static str {
        "schedule-executions"
    }

    fn handle<'a>(&'a self, state: &'a AppState, event: &'a DomainEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let status = match event.event_type {
                EventType::JobCompleted => ExecutionStatus::Completed,
                EventType::JobFailed => ExecutionStatus::Failed,
                EventType::JobCancelled => ExecutionStatus::Cancelled,
                _ => return Ok(()),
            };
            let Some(job) = event.job_id else { return Ok(()) };
            let message = event.data.get("message").and_then(|m| m.as_str());
            let ended = state.store.finish_execution_of_job(job, status, message).await.map_err(|e| e.to_string())?;
            if let Some(execution) = ended {
                tracing::info!(execution_id = %execution.id, job_id = %job, status = %status, "scheduled execution ended");
                state.schedule_wake.notify_one();
            }
            Ok(())
        })
    }
}
