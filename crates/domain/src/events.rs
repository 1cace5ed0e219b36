//! Domain events: what happened that someone outside may care about. Each is
//! written to the outbox in the same transaction as the change it describes,
//! and read by consumers (ticket status, outbound webhooks, Slack, ...).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{JobId, ProjectId, TicketId};

named_enum!(
    /// The event catalogue. Names are `noun.verb`, stable: receivers match on them.
    EventType, "event type", {
        TicketFiled => "ticket.filed",
        TicketEdited => "ticket.edited",
        TicketPhaseChanged => "ticket.phase_changed",
        TicketStatusChanged => "ticket.status_changed",
        TicketArchived => "ticket.archived",
        /// A ticket source (a webhook's new ticket or a comment naming the bot) asked for a run; the
        /// `source-runs` consumer starts it, with the event's id as the job's.
        TicketRunRequested => "ticket.run_requested",
        JobQueued => "job.queued",
        JobStarted => "job.started",
        /// A running job reached a milestone (cloning, running the agent, pushing, opening the pull request).
        JobProgress => "job.progress",
        JobCompleted => "job.completed",
        JobFailed => "job.failed",
        JobCancelled => "job.cancelled",
        DocumentRevised => "document.revised",
        ApprovalRequested => "approval.requested",
        ApprovalApproved => "approval.approved",
        ApprovalRejected => "approval.rejected",
        ApprovalRevoked => "approval.revoked",
        PullRequestOpened => "pull_request.opened",
        PullRequestUpdated => "pull_request.updated",
        /// A scheduled task's execution ended: completed, failed, skipped (its slot came while the previous
        /// one ran, or was missed) or cancelled.
        ScheduleExecutionFinished => "schedule.execution_finished",
    }
);

impl EventType {
    /// Whether the event can change what a ticket's lifecycle status should be.
    pub fn moves_ticket_status(self) -> bool {
        !matches!(
            self,
            EventType::TicketStatusChanged
                | EventType::TicketFiled
                | EventType::TicketEdited
                | EventType::TicketRunRequested
                | EventType::JobProgress
                | EventType::ScheduleExecutionFinished
        )
    }
}

const EXAMPLE_PROJECT: &str = "019a0000-0000-7000-8000-00000000000a";
const EXAMPLE_TICKET: &str = "019a0000-0000-7000-8000-00000000000b";
const EXAMPLE_JOB: &str = "019a0000-0000-7000-8000-00000000000c";

impl EventType {
    /// What the event means, for the catalogue.
    pub fn description(self) -> &'static str {
        match self {
            EventType::TicketFiled => "A ticket was filed (web UI, API or a ticket source).",
            EventType::TicketEdited => "A ticket's title, description, severity or archive state changed.",
            EventType::TicketPhaseChanged => "A ticket moved to another phase (research, planning, execution).",
            EventType::TicketStatusChanged => "A ticket's lifecycle status changed.",
            EventType::TicketArchived => "A ticket was archived.",
            EventType::TicketRunRequested => {
                "A ticket source asked for a run (a new ticket or a comment naming the bot)."
            }
            EventType::JobQueued => "A run was queued for a ticket's phase.",
            EventType::JobStarted => "A worker picked the run up.",
            EventType::JobProgress => {
                "A running job reached a milestone: `step` says which (cloning, running the agent, pushing…)."
            }
            EventType::JobCompleted => "A run finished successfully.",
            EventType::JobFailed => "A run failed; `failure` names the layer and code, `message` the cause and fix.",
            EventType::JobCancelled => "A run was cancelled.",
            EventType::DocumentRevised => "RESEARCH.md or PLAN.md got a new revision (from the agent or a person).",
            EventType::ApprovalRequested => "A document's approval was requested.",
            EventType::ApprovalApproved => "A document was approved.",
            EventType::ApprovalRejected => "A document was rejected.",
            EventType::ApprovalRevoked => "A document's approval was revoked.",
            EventType::PullRequestOpened => "An execution run opened a pull request.",
            EventType::PullRequestUpdated => "An execution run updated the ticket's open pull request.",
            EventType::ScheduleExecutionFinished => {
                "A scheduled task's execution ended: `status` is completed, failed, skipped or cancelled, \
                 `message` says why (the failure's cause and fix, or why the slot was skipped)."
            }
        }
    }

    /// The `data` of a delivered event of this type, as an example (the ids are the delivery's own).
    pub fn example_data(self) -> serde_json::Value {
        use serde_json::json;
        let ids = json!({"project_id": EXAMPLE_PROJECT, "ticket_id": EXAMPLE_TICKET});
        let mut data = match self {
            EventType::TicketFiled => json!({"title": "Checkout button does nothing on Safari", "severity": "high",
                "source": "api", "category": "bug", "external_url": null, "created_by": null}),
            EventType::TicketEdited | EventType::TicketArchived => {
                json!({"title": "Checkout button does nothing on Safari",
                "severity": "high", "archived": self == EventType::TicketArchived})
            }
            EventType::TicketPhaseChanged => json!({"phase": "planning"}),
            EventType::TicketStatusChanged => json!({"status": "in_progress"}),
            EventType::TicketRunRequested => json!({"phase": "research", "clanker": "claude-docker",
                "reason": "GitHub issue #42 opened", "delivery_id": "019a0000-0000-7000-8000-00000000000d"}),
            EventType::JobQueued => json!({"job_id": EXAMPLE_JOB, "phase": "research", "attempt": 1, "retry_of": null,
                "clanker": "claude-docker"}),
            EventType::JobStarted => json!({"job_id": EXAMPLE_JOB, "phase": "research"}),
            EventType::JobProgress => json!({"job_id": EXAMPLE_JOB, "phase": "research", "step": "running the agent"}),
            EventType::JobCompleted | EventType::JobCancelled => json!({"job_id": EXAMPLE_JOB, "phase": "execution",
                "status": if self == EventType::JobCompleted { "completed" } else { "cancelled" }, "attempt": 1,
                "message": null, "failure": null}),
            EventType::JobFailed => json!({"job_id": EXAMPLE_JOB, "phase": "execution", "status": "failed",
                "attempt": 2, "message": "git push was refused: the token cannot write to acme/shop; give it contents: write, then re-run",
                "failure": {"layer": "push", "code": "push_not_permitted"}}),
            EventType::DocumentRevised => json!({"phase": "research", "revision": 2, "source": "agent",
                "document": "RESEARCH.md"}),
            EventType::ApprovalRequested
            | EventType::ApprovalApproved
            | EventType::ApprovalRejected
            | EventType::ApprovalRevoked => json!({"phase": "planning", "revision": 1, "state": match self {
                    EventType::ApprovalRequested => "approval_requested",
                    EventType::ApprovalApproved => "approved",
                    EventType::ApprovalRejected => "rejected",
                    _ => "draft",
                }, "actor": "019a0000-0000-7000-8000-00000000000e", "comment": null}),
            EventType::PullRequestOpened | EventType::PullRequestUpdated => json!({"job_id": EXAMPLE_JOB,
                "url": "https://github.com/acme/shop/pull/7", "number": 7, "branch": "viberglass/42-checkout-safari"}),
            EventType::ScheduleExecutionFinished => json!({"schedule_id": "019a0000-0000-7000-8000-00000000000f",
                "schedule": "weekly-dependency-bump", "execution_id": "019a0000-0000-7000-8000-000000000010",
                "slot": "2026-12-07T09:00:00Z", "trigger": "schedule", "status": "completed", "message": null,
                "job_id": EXAMPLE_JOB}),
        };
        if let (Some(map), Some(ids)) = (data.as_object_mut(), ids.as_object()) {
            for (k, v) in ids {
                map.insert(k.clone(), v.clone());
            }
        }
        data
    }
}

impl DomainEvent {
    /// The body an outbound webhook delivers: `{type, timestamp, data}` (Standard Webhooks), `data` carrying
    /// the event's facts and the ids of what it is about.
    pub fn webhook_body(&self) -> serde_json::Value {
        let mut data = match &self.data {
            serde_json::Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        let ids = [
            ("project_id", self.project_id.map(|p| p.to_string())),
            ("ticket_id", self.ticket_id.map(|t| t.to_string())),
            ("job_id", self.job_id.map(|j| j.to_string())),
        ];
        for (key, value) in ids {
            if let Some(v) = value {
                data.entry(key).or_insert(serde_json::Value::String(v));
            }
        }
        serde_json::json!({
            "type": self.event_type,
            "timestamp": self.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "data": data,
        })
    }
}

/// An event to write: what happened and to which entities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub event_type: EventType,
    pub project_id: Option<ProjectId>,
    pub ticket_id: Option<TicketId>,
    pub job_id: Option<JobId>,
    /// The event's payload: ids and the facts a receiver needs, never secrets.
    pub data: serde_json::Value,
}

impl NewEvent {
    pub fn new(event_type: EventType, data: serde_json::Value) -> Self {
        Self { event_type, project_id: None, ticket_id: None, job_id: None, data }
    }

    pub fn project(mut self, id: ProjectId) -> Self {
        self.project_id = Some(id);
        self
    }

    pub fn ticket(mut self, id: Option<TicketId>) -> Self {
        self.ticket_id = id;
        self
    }

    pub fn job(mut self, id: JobId) -> Self {
        self.job_id = Some(id);
        self
    }
}

/// An event as stored: its position in the outbox and its stable id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DomainEvent {
    /// Position in the outbox: consumers read in this order.
    pub seq: i64,
    /// Stable across redeliveries (receivers dedupe on it).
    pub id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub project_id: Option<ProjectId>,
    pub ticket_id: Option<TicketId>,
    pub job_id: Option<JobId>,
    pub data: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}
