//! Tickets: filing one (from any source), and keeping its lifecycle status
//! in step with its phase, documents, runs and pull request.

use viberglass_domain::workflow::{LifecycleFacts, lifecycle_status};
use viberglass_domain::{NewTicket, Project, Ticket, TicketId, TicketInput, TicketStatus};
use viberglass_store::{Store, StoreError};

use super::ServiceResult;
use crate::AppState;
use crate::identity::{Caller, audit_entry};

/// Files a ticket in `project`: from the UI, the API, and later webhooks,
/// Slack and schedules (the input's `source` says which). Records who filed
/// it; the audit entry and the outbox's `ticket.filed` commit with the ticket.
pub async fn file_ticket(
    state: &AppState,
    caller: Option<&Caller>,
    project: &Project,
    input: TicketInput,
) -> ServiceResult<Ticket> {
    let new = NewTicket::parse(input)?;
    let audit = |t: &Ticket| {
        Some(audit_entry(
            caller,
            "ticket_filed",
            "ticket",
            Some(t.id.to_string()),
            Some(project.id),
            serde_json::json!({"title": t.title, "source": t.source}),
        ))
    };
    let ticket = state.store.file_ticket(project.id, new, caller.and_then(Caller::user_id), audit).await?;
    tracing::info!(ticket_id = %ticket.id, project_id = %project.id, source = ticket.source.as_str(), "ticket filed");
    Ok(ticket)
}

/// Reads a ticket with its lifecycle status as the rules give it now,
/// stored first so that lists and this read agree.
pub async fn get_ticket(store: &Store, id: TicketId) -> ServiceResult<Ticket> {
    let mut ticket = store.get_ticket(id).await?;
    let status = derived_status(store, &ticket).await?;
    if status != ticket.status {
        store.set_ticket_status(id, status).await?;
        ticket.status = status;
    }
    Ok(ticket)
}

/// Recomputes a ticket's lifecycle status and stores it. Failures are
/// logged, never fatal: the outbox's ticket-status consumer repeats this for
/// every event that can move a status, so a missed refresh is caught up.
pub async fn refresh_status(store: &Store, id: TicketId) {
    if let Err(e) = try_refresh_status(store, id).await {
        tracing::warn!(ticket_id = %id, error = %e, "could not refresh the ticket's status");
    }
}

/// [`refresh_status`], saying when it could not.
pub async fn try_refresh_status(store: &Store, id: TicketId) -> Result<(), StoreError> {
    let ticket = store.get_ticket(id).await?;
    let status = derived_status(store, &ticket).await?;
    store.set_ticket_status(id, status).await
}

/// The lifecycle status the rules give a ticket now.
pub async fn derived_status(store: &Store, ticket: &Ticket) -> Result<TicketStatus, StoreError> {
    Ok(lifecycle_status(&facts(store, ticket).await?))
}

async fn facts(store: &Store, ticket: &Ticket) -> Result<LifecycleFacts, StoreError> {
    let document = match ticket.phase.document_name() {
        Some(_) => store.get_document(ticket.id, ticket.phase).await?.map(|d| d.approval_state),
        None => None,
    };
    Ok(LifecycleFacts {
        phase: ticket.phase,
        document,
        latest_run: store.latest_run(ticket.id).await?,
        pull_request_open: ticket.pull_request_url.is_some(),
        archived: ticket.archived_at.is_some(),
    })
}
