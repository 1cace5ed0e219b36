//! The workflow's operations that start runs, for every channel (the API, the
//! UI through it, Slack): approving a document (and Approve & Continue) and
//! requesting a revision. Same checks, same audit, whoever asks.

use viberglass_domain::workflow::{ApprovalAction, PhaseDocument, approval_transition};
use viberglass_domain::{Job, Phase, ProjectRole, Ticket, TicketId};
use viberglass_store::ApprovalChange;

use super::runs::{RunRequest, Trigger, ensure_not_archived, start_run};
use super::{ServiceError, ServiceResult};
use crate::AppState;
use crate::identity::{Caller, audit};

/// The rank of a phase in the ticket's order.
pub fn phase_rank(phase: Phase) -> u8 {
    match phase {
        Phase::Research => 0,
        Phase::Planning => 1,
        Phase::Execution => 2,
    }
}

/// Records a workflow action on a ticket in the audit log.
pub async fn audit_ticket(
    state: &AppState,
    caller: &Caller,
    ticket: &Ticket,
    action: &str,
    details: serde_json::Value,
) {
    audit(state, Some(caller), action, "ticket", Some(ticket.id.to_string()), Some(ticket.project_id), details).await;
}

/// The caller's role in the ticket's project (admins are maintainers everywhere).
pub async fn role_in(
    state: &AppState,
    caller: &Caller,
    project: viberglass_domain::ProjectId,
) -> ServiceResult<Option<ProjectRole>> {
    if caller.is_admin() {
        return Ok(Some(ProjectRole::Maintainer));
    }
    match caller.user_id() {
        Some(user) => Ok(state.store.member_role(project, user).await?),
        None => Ok(None),
    }
}

/// Whether the caller is a maintainer of the project (admins are).
pub async fn require_maintainer(state: &AppState, caller: &Caller, ticket: &Ticket, what: &str) -> ServiceResult<()> {
    if role_in(state, caller, ticket.project_id).await?.is_some_and(|r| r.includes(ProjectRole::Maintainer)) {
        return Ok(());
    }
    Err(ServiceError::forbidden(
        "forbidden",
        format!("{what} needs the maintainer role in the project: ask one of its maintainers"),
    ))
}

/// The ticket's current document of `phase`.
pub async fn current_document(state: &AppState, ticket: &Ticket, phase: Phase) -> ServiceResult<PhaseDocument> {
    state.store.get_document(ticket.id, phase).await?.ok_or_else(|| {
        ServiceError::unprocessable(
            "no_document",
            format!("the ticket has no {phase} document yet: run the {phase} phase first"),
        )
    })
}

/// The approval change `action` makes to `document`, refused when the person read another revision or the
/// document's state does not allow it.
pub fn approval_change(
    ticket: &Ticket,
    phase: Phase,
    document: &PhaseDocument,
    action: ApprovalAction,
    caller: &Caller,
    comment: String,
    seen_revision: Option<i64>,
) -> ServiceResult<ApprovalChange> {
    if let Some(seen) = seen_revision
        && seen != document.revision
    {
        return Err(ServiceError::conflict(
            "stale_revision",
            format!(
                "you read revision {seen}, but the document is at revision {}: read it again first",
                document.revision
            ),
        ));
    }
    let new_state = approval_transition(document.approval_state, action)
        .map_err(|why| ServiceError::conflict("approval_not_allowed", format!("cannot {action}: {why}")))?;
    Ok(ApprovalChange {
        ticket_id: ticket.id,
        phase,
        expected: document.approval_state,
        revision: document.revision,
        new_state,
        logged: action.logged().to_owned(),
        actor: caller.user_id(),
        comment,
    })
}

/// What Approve & Continue needs.
pub struct Continue<'a> {
    /// The phase whose document is approved.
    pub phase: Phase,
    /// The clanker (id or slug) that runs the next phase.
    pub clanker: &'a str,
    pub comment: String,
    /// The revision the person read.
    pub revision: Option<i64>,
}

/// **Approve & Continue** (a maintainer): approves the document, moves the ticket to the next phase and
/// queues its run, in one transaction.
pub async fn approve_and_continue(
    state: &AppState,
    caller: &Caller,
    ticket: &Ticket,
    request: Continue<'_>,
) -> ServiceResult<Job> {
    let Continue { phase, clanker, comment, revision } = request;
    require_maintainer(state, caller, ticket, "Approve & Continue").await?;
    let next = phase.next().ok_or_else(|| {
        ServiceError::invalid("phase", format!("`{phase}` has no document: use research or planning"))
    })?;
    // The same refusal as every other way a run starts, before anything else is looked at.
    ensure_not_archived(ticket)?;
    if phase_rank(ticket.phase) > phase_rank(next) {
        return Err(ServiceError::conflict(
            "phase_passed",
            format!("the ticket is already in {}: continuing from {phase} would move it back", ticket.phase),
        ));
    }
    let document = current_document(state, ticket, phase).await?;
    let comment: String = comment.chars().take(10_000).collect();
    let approval =
        approval_change(ticket, phase, &document, ApprovalAction::Approve, caller, comment.clone(), revision)?;
    // The prompt is built as if the approval had happened: the gate is the approval itself.
    let run = RunRequest {
        ticket,
        phase: next,
        clanker,
        trigger: Trigger::ApproveAndContinue { approval: Box::new(approval) },
    };
    let job = start_run(state, Some(caller), run).await?;
    for (action, details) in [
        ("approved", serde_json::json!({"phase": phase, "revision": document.revision, "comment": comment})),
        ("phase_changed", serde_json::json!({"from": phase, "to": next})),
    ] {
        audit_ticket(state, caller, ticket, action, details).await;
    }
    Ok(job)
}

/// **Request revision**: a new run of the phase whose prompt carries the feedback and the document's open
/// comments.
pub async fn request_revision(
    state: &AppState,
    caller: &Caller,
    ticket: &Ticket,
    phase: Phase,
    clanker: &str,
    feedback: &str,
) -> ServiceResult<Job> {
    let feedback = viberglass_domain::validation::bounded_text(feedback, "feedback", 1, 20_000)
        .map_err(|m| ServiceError::invalid("feedback", m))?;
    current_document(state, ticket, phase).await?;
    let run = RunRequest { ticket, phase, clanker, trigger: Trigger::Revision { feedback: feedback.clone() } };
    let job = start_run(state, Some(caller), run).await?;
    audit_ticket(
        state,
        caller,
        ticket,
        "revision_requested",
        serde_json::json!({"phase": phase, "job": job.id, "feedback": feedback}),
    )
    .await;
    super::tickets::refresh_status(&state.store, ticket.id).await;
    Ok(job)
}

/// The clanker a ticket's runs use when a channel names none (Slack): its newest run's.
pub async fn last_clanker(state: &AppState, ticket: TicketId) -> ServiceResult<Option<String>> {
    let jobs = state
        .store
        .list_jobs(
            &viberglass_store::JobFilter { ticket_id: Some(ticket), ..Default::default() },
            viberglass_domain::PageRequest { limit: 1, after: None },
        )
        .await?;
    let Some(clanker) = jobs.items.first().and_then(|j| j.clanker_id) else { return Ok(None) };
    Ok(state.store.get_clanker(clanker).await.ok().map(|c| c.slug.as_str().to_owned()))
}
