//! The ticket workflow: research and planning documents that people edit,
//! comment on and approve; Approve & Continue; request revision; the
//! workflow override; prompt templates and their preview.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use viberglass_domain::workflow::{
    ApprovalAction, ApprovalRecord, CommentStatus, DocumentComment, DocumentRevision, PhaseDocument, PromptKind,
    line_diff, validate_template,
};
use viberglass_domain::{Job, Phase, Ticket, TicketId, ValidationErrors};
use viberglass_store::StoreError;

use crate::AppState;
use crate::identity::{Caller, audit};
use crate::service::projects::find_project;
use crate::service::workflow::{self as service, audit_ticket, phase_rank};

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;

fn parse_ticket(text: &str) -> ApiResult<TicketId> {
    text.parse().map_err(|e: viberglass_domain::ids::InvalidId| ApiError::invalid_field("ticket_id", e.to_string()))
}

/// `research` or `planning`: the phases with documents.
fn parse_document_phase(text: &str) -> ApiResult<Phase> {
    match text.parse::<Phase>() {
        Ok(phase) if phase.document_name().is_some() => Ok(phase),
        _ => Err(ApiError::invalid_field("phase", format!("`{text}` has no document: use research or planning"))),
    }
}

async fn ticket(state: &AppState, id: &str) -> ApiResult<Ticket> {
    Ok(state.store.get_ticket(parse_ticket(id)?).await?)
}

async fn refresh_status(state: &AppState, id: TicketId) {
    crate::service::tickets::refresh_status(&state.store, id).await;
}

/// Working on a later phase's document moves the ticket to that phase.
async fn advance_to(state: &AppState, ticket: &Ticket, phase: Phase) -> ApiResult<()> {
    if phase_rank(phase) > phase_rank(ticket.phase) {
        state.store.set_ticket_phase(ticket.id, phase).await?;
    }
    Ok(())
}

/// A document with its comments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentView {
    pub document: PhaseDocument,
    pub comments: Vec<DocumentComment>,
}

/// Reads a ticket's research or planning document with its line comments.
#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/documents/{phase}", tag = "workflow",
    params(("ticket_id" = String, Path), ("phase" = String, Path, description = "`research` or `planning`")),
    responses((status = 200, body = DocumentView), (status = 404, body = ErrorBody))
)]
pub async fn get_document(
    State(state): State<AppState>,
    Path((ticket_id, phase)): Path<(String, String)>,
) -> ApiResult<Json<DocumentView>> {
    let ticket = ticket(&state, &ticket_id).await?;
    let phase = parse_document_phase(&phase)?;
    let document = state.store.get_document(ticket.id, phase).await?.ok_or_else(|| {
        ApiError::not_found(format!("the ticket has no {phase} document yet: run the {phase} phase to write one"))
    })?;
    let comments = state.store.list_comments(ticket.id, phase).await?;
    Ok(Json(DocumentView { document, comments }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentEdit {
    content: String,
    /// The revision the edit started from (0 for a new document); a later one
    /// saved meanwhile makes this a 409, so no edit is lost.
    base_revision: i64,
}

/// Saves a person's edit as a new revision (the document returns to draft).
#[utoipa::path(
    put, path = "/api/v1/tickets/{ticket_id}/documents/{phase}", tag = "workflow", request_body = DocumentEdit,
    params(("ticket_id" = String, Path), ("phase" = String, Path, description = "`research` or `planning`")),
    responses((status = 200, body = PhaseDocument), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn edit_document(
    State(state): State<AppState>,
    caller: Caller,
    Path((ticket_id, phase)): Path<(String, String)>,
    ApiJson(edit): ApiJson<DocumentEdit>,
) -> ApiResult<Json<PhaseDocument>> {
    let ticket = ticket(&state, &ticket_id).await?;
    let phase = parse_document_phase(&phase)?;
    if edit.content.chars().count() > 500_000 {
        return Err(ApiError::invalid_field("content", "must be at most 500000 characters"));
    }
    let revision = match state
        .store
        .save_person_document(ticket.id, phase, &edit.content, caller.user_id(), edit.base_revision)
        .await
    {
        Err(StoreError::Contended { .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "stale_revision",
                format!(
                    "the {phase} document changed since revision {}: reload it and apply your edit again",
                    edit.base_revision
                ),
            ));
        }
        other => other?,
    };
    advance_to(&state, &ticket, phase).await?;
    audit_ticket(
        &state,
        &caller,
        &ticket,
        "document_edited",
        serde_json::json!({"phase": phase, "revision": revision}),
    )
    .await;
    refresh_status(&state, ticket.id).await;
    let document = state
        .store
        .get_document(ticket.id, phase)
        .await?
        .ok_or_else(|| ApiError::internal("saved document vanished"))?;
    Ok(Json(document))
}

#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/documents/{phase}/revisions", tag = "workflow",
    params(("ticket_id" = String, Path), ("phase" = String, Path)),
    responses((status = 200, body = Vec<DocumentRevision>))
)]
pub async fn list_revisions(
    State(state): State<AppState>,
    Path((ticket_id, phase)): Path<(String, String)>,
) -> ApiResult<Json<Vec<DocumentRevision>>> {
    let ticket = ticket(&state, &ticket_id).await?;
    Ok(Json(state.store.list_revisions(ticket.id, parse_document_phase(&phase)?).await?))
}

/// One revision, with its diff from the one before it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevisionView {
    pub revision: i64,
    pub content: String,
    /// Unified line diff from the previous revision (`-` removed, `+` added).
    pub diff: String,
}

#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/documents/{phase}/revisions/{revision}", tag = "workflow",
    params(("ticket_id" = String, Path), ("phase" = String, Path),
        ("revision" = i64, Path, minimum = 1, description = "A revision number, from 1")),
    responses((status = 200, body = RevisionView), (status = 404, body = ErrorBody))
)]
pub async fn get_revision(
    State(state): State<AppState>,
    Path((ticket_id, phase, revision)): Path<(String, String, String)>,
) -> ApiResult<Json<RevisionView>> {
    // Parsed here, not by the extractor: its refusal would be plain text, not the error body.
    let revision = revision
        .parse::<i64>()
        .ok()
        .filter(|r| *r >= 1)
        .ok_or_else(|| ApiError::invalid_field("revision", "must be a revision number from 1"))?;
    let ticket = ticket(&state, &ticket_id).await?;
    let phase = parse_document_phase(&phase)?;
    let content = state
        .store
        .revision_content(ticket.id, phase, revision)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("the {phase} document has no revision {revision}")))?;
    let previous = state.store.revision_content(ticket.id, phase, revision - 1).await?.unwrap_or_default();
    Ok(Json(RevisionView { revision, diff: line_diff(&previous, &content), content }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentInput {
    /// The line of the current revision, from 1.
    line: i64,
    body: String,
    /// Replacement text proposed for the line.
    suggestion: Option<String>,
}

/// Comments on a line of the document's current revision.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/documents/{phase}/comments", tag = "workflow", request_body = CommentInput,
    params(("ticket_id" = String, Path), ("phase" = String, Path)),
    responses((status = 201, body = Vec<DocumentComment>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn add_comment(
    State(state): State<AppState>,
    caller: Caller,
    Path((ticket_id, phase)): Path<(String, String)>,
    ApiJson(input): ApiJson<CommentInput>,
) -> ApiResult<impl IntoResponse> {
    let ticket = ticket(&state, &ticket_id).await?;
    let phase = parse_document_phase(&phase)?;
    let mut errors = ValidationErrors::new();
    let body = errors.check("body", viberglass_domain::validation::bounded_text(&input.body, "body", 1, 10_000));
    // Replacement text keeps its indentation, so it is bounded but not trimmed.
    if let Some(suggestion) = &input.suggestion
        && (suggestion.chars().count() > 10_000
            || suggestion.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')))
    {
        errors
            .add("suggestion", "must be at most 10000 characters, without control characters but tabs and line breaks");
    }
    let lines = state.store.get_document(ticket.id, phase).await?.map(|d| d.content.lines().count().max(1) as i64);
    if let Some(lines) = lines
        && !(1..=lines).contains(&input.line)
    {
        errors.add("line", format!("must be a line of the current revision, 1 to {lines} (got {})", input.line));
    }
    errors.into_result(())?;
    let id = state
        .store
        .add_comment(
            ticket.id,
            phase,
            input.line,
            body.as_deref().unwrap_or_default(),
            input.suggestion.as_deref(),
            caller.user_id(),
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("the ticket has no {phase} document to comment on")))?;
    audit_ticket(
        &state,
        &caller,
        &ticket,
        "comment_added",
        serde_json::json!({"phase": phase, "comment": id, "line": input.line}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(state.store.list_comments(ticket.id, phase).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentStatusInput {
    /// `open` or `resolved`.
    status: String,
}

#[utoipa::path(
    patch, path = "/api/v1/tickets/{ticket_id}/comments/{comment_id}", tag = "workflow", request_body = CommentStatusInput,
    params(("ticket_id" = String, Path), ("comment_id" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn set_comment_status(
    State(state): State<AppState>,
    caller: Caller,
    Path((ticket_id, comment_id)): Path<(String, String)>,
    ApiJson(input): ApiJson<CommentStatusInput>,
) -> ApiResult<StatusCode> {
    let ticket = ticket(&state, &ticket_id).await?;
    let comment: uuid::Uuid =
        comment_id.parse().map_err(|_| ApiError::invalid_field("comment_id", "is not a comment id"))?;
    let status: CommentStatus = input
        .status
        .parse()
        .map_err(|e: viberglass_domain::states::UnknownValue| ApiError::invalid_field("status", e.to_string()))?;
    if !state.store.set_comment_status(ticket.id, comment, status, caller.user_id()).await? {
        return Err(ApiError::not_found("the ticket has no such comment"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalInput {
    /// `request`, `approve`, `reject` or `revoke`.
    action: String,
    #[serde(default)]
    comment: String,
    /// The revision the person read: if the document changed since, the action is refused (409).
    revision: Option<i64>,
}

fn moved() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "document_changed", "the document changed meanwhile: reload it and try again")
}

/// Requests approval (a member), or approves, rejects or revokes (a
/// maintainer). Recorded in the approvals log with the user and the comment.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/documents/{phase}/approval", tag = "workflow", request_body = ApprovalInput,
    params(("ticket_id" = String, Path), ("phase" = String, Path)),
    responses((status = 200, body = PhaseDocument), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn approval(
    State(state): State<AppState>,
    caller: Caller,
    Path((ticket_id, phase)): Path<(String, String)>,
    ApiJson(input): ApiJson<ApprovalInput>,
) -> ApiResult<Json<PhaseDocument>> {
    let ticket = ticket(&state, &ticket_id).await?;
    let phase = parse_document_phase(&phase)?;
    let action: ApprovalAction = input
        .action
        .parse()
        .map_err(|e: viberglass_domain::states::UnknownValue| ApiError::invalid_field("action", e.to_string()))?;
    if action.needs_maintainer() {
        service::require_maintainer(&state, &caller, &ticket, &format!("to {action}")).await?;
    }
    let document = service::current_document(&state, &ticket, phase).await?;
    let change = service::approval_change(
        &ticket,
        phase,
        &document,
        action,
        &caller,
        input.comment.chars().take(10_000).collect(),
        input.revision,
    )?;
    if !state.store.apply_approval(&change).await? {
        return Err(moved());
    }
    advance_to(&state, &ticket, phase).await?;
    audit_ticket(
        &state,
        &caller,
        &ticket,
        &change.logged,
        serde_json::json!({"phase": phase, "revision": document.revision, "comment": change.comment}),
    )
    .await;
    refresh_status(&state, ticket.id).await;
    Ok(Json(service::current_document(&state, &ticket, phase).await?))
}

#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/approvals", tag = "workflow",
    params(("ticket_id" = String, Path)),
    responses((status = 200, body = Vec<ApprovalRecord>))
)]
pub async fn list_approvals(
    State(state): State<AppState>,
    Path(ticket_id): Path<String>,
) -> ApiResult<Json<Vec<ApprovalRecord>>> {
    Ok(Json(state.store.list_approvals(parse_ticket(&ticket_id)?).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContinueInput {
    /// The phase whose document is approved: `research` or `planning`.
    phase: String,
    /// The clanker (id or slug) that runs the next phase.
    clanker: String,
    #[serde(default)]
    comment: String,
    /// The revision the person read (see the approval endpoint).
    revision: Option<i64>,
}

/// **Approve & Continue** (a maintainer): approves the document, moves the
/// ticket to the next phase and queues its run, in one transaction.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/approve-and-continue", tag = "workflow", request_body = ContinueInput,
    params(("ticket_id" = String, Path)),
    responses((status = 202, body = Job), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn approve_and_continue(
    State(state): State<AppState>,
    caller: Caller,
    Path(ticket_id): Path<String>,
    ApiJson(input): ApiJson<ContinueInput>,
) -> ApiResult<impl IntoResponse> {
    let ticket = ticket(&state, &ticket_id).await?;
    let phase = parse_document_phase(&input.phase)?;
    let request =
        service::Continue { phase, clanker: &input.clanker, comment: input.comment, revision: input.revision };
    let job = service::approve_and_continue(&state, &caller, &ticket, request).await?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/jobs/{}", job.id))], Json(job)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviseInput {
    /// The clanker (id or slug) that writes the new revision.
    clanker: String,
    /// What to change; sent to the agent with the document's open comments.
    feedback: String,
}

/// **Request revision**: a new run of the phase whose prompt carries the
/// feedback and the document's open comments.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/documents/{phase}/revise", tag = "workflow", request_body = ReviseInput,
    params(("ticket_id" = String, Path), ("phase" = String, Path)),
    responses((status = 202, body = Job), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn request_revision(
    State(state): State<AppState>,
    caller: Caller,
    Path((ticket_id, phase)): Path<(String, String)>,
    ApiJson(input): ApiJson<ReviseInput>,
) -> ApiResult<impl IntoResponse> {
    let ticket = ticket(&state, &ticket_id).await?;
    let phase = parse_document_phase(&phase)?;
    let job = service::request_revision(&state, &caller, &ticket, phase, &input.clanker, &input.feedback).await?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/jobs/{}", job.id))], Json(job)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideInput {
    /// Why the gates are skipped for this ticket (required).
    reason: String,
}

/// Sets a workflow override (a maintainer): the approval gates no longer
/// hold this ticket back. Who and when are recorded.
#[utoipa::path(
    put, path = "/api/v1/tickets/{ticket_id}/override", tag = "workflow", request_body = OverrideInput,
    params(("ticket_id" = String, Path)),
    responses((status = 200, body = Ticket), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub async fn set_override(
    State(state): State<AppState>,
    caller: Caller,
    Path(ticket_id): Path<String>,
    ApiJson(input): ApiJson<OverrideInput>,
) -> ApiResult<Json<Ticket>> {
    let ticket = ticket(&state, &ticket_id).await?;
    let reason = viberglass_domain::validation::bounded_text(&input.reason, "reason", 1, 2000)
        .map_err(|m| ApiError::invalid_field("reason", format!("{m}: say why the approval gates are skipped")))?;
    state.store.set_workflow_override(ticket.id, Some(&reason), caller.user_id()).await?;
    audit_ticket(&state, &caller, &ticket, "override_set", serde_json::json!({"reason": reason})).await;
    Ok(Json(state.store.get_ticket(ticket.id).await?))
}

/// Clears the workflow override: the gates hold again.
#[utoipa::path(
    delete, path = "/api/v1/tickets/{ticket_id}/override", tag = "workflow",
    params(("ticket_id" = String, Path)),
    responses((status = 200, body = Ticket), (status = 403, body = ErrorBody))
)]
pub async fn clear_override(
    State(state): State<AppState>,
    caller: Caller,
    Path(ticket_id): Path<String>,
) -> ApiResult<Json<Ticket>> {
    let ticket = ticket(&state, &ticket_id).await?;
    state.store.set_workflow_override(ticket.id, None, None).await?;
    audit_ticket(&state, &caller, &ticket, "override_cleared", serde_json::json!({})).await;
    Ok(Json(state.store.get_ticket(ticket.id).await?))
}

/// A prompt as a project runs it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PromptView {
    pub kind: PromptKind,
    pub template: String,
    /// True when the project overrides the system default.
    pub overridden: bool,
    pub default_template: String,
}

fn parse_kind(text: &str) -> ApiResult<PromptKind> {
    text.parse().map_err(|e: viberglass_domain::states::UnknownValue| ApiError::invalid_field("kind", e.to_string()))
}

/// Every prompt kind as the project runs it: its override or the system default.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/prompts", tag = "workflow",
    params(("project" = String, Path)),
    responses((status = 200, body = Vec<PromptView>))
)]
pub async fn list_prompts(
    State(state): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<PromptView>>> {
    let project = find_project(&state.store, &project).await?;
    let mut views = Vec::new();
    for kind in PromptKind::ALL {
        let overridden = state.store.prompt_template(project.id, *kind).await?;
        views.push(PromptView {
            kind: *kind,
            overridden: overridden.is_some(),
            template: overridden.unwrap_or_else(|| kind.default_template().to_owned()),
            default_template: kind.default_template().to_owned(),
        });
    }
    Ok(Json(views))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptInput {
    template: String,
}

/// Overrides a prompt for the project (a maintainer). Checked now: unknown
/// variables and missing required ones are refused at save time.
#[utoipa::path(
    put, path = "/api/v1/projects/{project}/prompts/{kind}", tag = "workflow", request_body = PromptInput,
    params(("project" = String, Path), ("kind" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody))
)]
pub async fn set_prompt(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, kind)): Path<(String, String)>,
    ApiJson(input): ApiJson<PromptInput>,
) -> ApiResult<StatusCode> {
    let project = find_project(&state.store, &project).await?;
    let kind = parse_kind(&kind)?;
    let template = validate_template(kind, &input.template).map_err(|m| ApiError::invalid_field("template", m))?;
    state.store.set_prompt_template(project.id, kind, Some(&template)).await?;
    audit(
        &state,
        Some(&caller),
        "prompt_changed",
        "project",
        Some(project.id.to_string()),
        Some(project.id),
        serde_json::json!({"kind": kind}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the project's override: the system default applies again.
#[utoipa::path(
    delete, path = "/api/v1/projects/{project}/prompts/{kind}", tag = "workflow",
    params(("project" = String, Path), ("kind" = String, Path)),
    responses((status = 204))
)]
pub async fn reset_prompt(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, kind)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = find_project(&state.store, &project).await?;
    let kind = parse_kind(&kind)?;
    state.store.set_prompt_template(project.id, kind, None).await?;
    audit(
        &state,
        Some(&caller),
        "prompt_reset",
        "project",
        Some(project.id.to_string()),
        Some(project.id),
        serde_json::json!({"kind": kind}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewInput {
    /// The phase to preview a run of.
    phase: String,
    /// Preview a revision run with this feedback.
    feedback: Option<String>,
}

/// The prompt the agent would get, as text.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PromptPreview {
    pub prompt: String,
}

/// Renders the prompt a run would get now, without running anything.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/prompt-preview", tag = "workflow", request_body = PreviewInput,
    params(("ticket_id" = String, Path)),
    responses((status = 200, body = PromptPreview), (status = 400, body = ErrorBody))
)]
pub async fn preview_prompt(
    State(state): State<AppState>,
    Path(ticket_id): Path<String>,
    ApiJson(input): ApiJson<PreviewInput>,
) -> ApiResult<Json<PromptPreview>> {
    let ticket = ticket(&state, &ticket_id).await?;
    let phase: Phase = input
        .phase
        .parse()
        .map_err(|e: viberglass_domain::states::UnknownValue| ApiError::invalid_field("phase", e.to_string()))?;
    let prompt = crate::service::runs::preview_prompt(&state, &ticket, phase, input.feedback.as_deref()).await?;
    Ok(Json(PromptPreview { prompt }))
}
