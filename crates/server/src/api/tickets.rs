use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use viberglass_domain::{
    Page, Phase, Severity, Ticket, TicketFilter, TicketInput, TicketPatch, TicketStatus, ValidationErrors,
};

use super::{parse_archived, parse_page, parse_param};
use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, parse_ticket_id};
use crate::service::projects::find_project;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTicketsQuery {
    /// Only this project's tickets (id or slug).
    project: Option<String>,
    /// `research`, `planning` or `execution`.
    phase: Option<String>,
    /// A lifecycle status such as `open` or `in_review`.
    status: Option<String>,
    /// `low`, `medium`, `high` or `critical`.
    severity: Option<String>,
    /// `exclude` (default), `include` or `only`.
    archived: Option<String>,
    /// Matches title and description, case-insensitively: at most 256 characters, no control characters.
    #[param(max_length = 256)]
    q: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Lists tickets, newest first, with filters and search.
#[utoipa::path(
    get, path = "/api/v1/tickets", tag = "tickets", params(ListTicketsQuery),
    responses((status = 200, body = Page<Ticket>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn list_tickets(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    ApiQuery(query): ApiQuery<ListTicketsQuery>,
) -> ApiResult<Json<Page<Ticket>>> {
    let mut errors = ValidationErrors::new();
    let mut filter = TicketFilter {
        project_id: None,
        phase: parse_param::<Phase>(&mut errors, "phase", query.phase.as_deref()),
        status: parse_param::<TicketStatus>(&mut errors, "status", query.status.as_deref()),
        severity: parse_param::<Severity>(&mut errors, "severity", query.severity.as_deref()),
        archived: parse_archived(&mut errors, query.archived.as_deref()),
        search: errors.check("q", viberglass_domain::validation::search_text(query.q)).flatten(),
        member_of: caller.member_filter(),
    };
    let page = parse_page(&mut errors, query.limit, query.cursor.as_deref());
    errors.into_result(())?;
    if let Some(key) = query.project.as_deref().filter(|k| !k.is_empty()) {
        filter.project_id = Some(find_project(&state.store, key).await?.id);
    }
    Ok(Json(state.store.list_tickets(&filter, page).await?))
}

/// Files a ticket in a project. Only `title` is required. New tickets start in research, open.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/tickets", tag = "tickets", request_body = TicketInput,
    params(("project" = String, Path, description = "The project's id or slug")),
    responses(
        (status = 201, body = Ticket), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody, description = "The project is archived")
    )
)]
pub async fn create_ticket(
    State(state): State<AppState>,
    caller: crate::identity::Caller,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<TicketInput>,
) -> ApiResult<impl IntoResponse> {
    let project = find_project(&state.store, &key).await?;
    let ticket = crate::service::tickets::file_ticket(&state, Some(&caller), &project, input).await?;
    let location = format!("/api/v1/tickets/{}", ticket.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(ticket)))
}

/// Reads a ticket.
#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}", tag = "tickets",
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses((status = 200, body = Ticket), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn get_ticket(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Ticket>> {
    // The lifecycle status as the rules give it now, stored, so lists agree.
    Ok(Json(crate::service::tickets::get_ticket(&state.store, parse_ticket_id(&id)?).await?))
}

/// Edits a ticket's title, description, severity or link. Phase and status change only through the workflow.
#[utoipa::path(
    patch, path = "/api/v1/tickets/{ticket_id}", tag = "tickets", request_body = TicketInput,
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses((status = 200, body = Ticket), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn update_ticket(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<TicketInput>,
) -> ApiResult<Json<Ticket>> {
    let id = parse_ticket_id(&id)?;
    let patch = TicketPatch::parse(input)?;
    // A change of nothing changes nothing, as a JSON merge patch would.
    if patch.is_empty() {
        return Ok(Json(state.store.get_ticket(id).await?));
    }
    let ticket = state.store.update_ticket(id, patch).await?;
    tracing::info!(ticket_id = %ticket.id, "ticket updated");
    Ok(Json(ticket))
}

/// Archives a ticket. Idempotent.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/archive", tag = "tickets",
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses((status = 200, body = Ticket), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn archive_ticket(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Ticket>> {
    Ok(Json(state.store.archive_ticket(parse_ticket_id(&id)?).await?))
}

/// Restores an archived ticket. Idempotent.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/unarchive", tag = "tickets",
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses((status = 200, body = Ticket), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn unarchive_ticket(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Ticket>> {
    Ok(Json(state.store.unarchive_ticket(parse_ticket_id(&id)?).await?))
}
