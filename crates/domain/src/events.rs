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
        )
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
