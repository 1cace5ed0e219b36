use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use viberglass_domain::{Job, JobEvent, JobStatus, Page, Phase, TicketId, ValidationErrors};
use viberglass_store::JobFilter;

use super::{parse_page, parse_param};
use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, parse_job_id};
use crate::identity::Caller;
use crate::service::{self, clankers::find_clanker, projects::find_project, runs};

/// A run request: which phase, with which clanker.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// `research`, `planning` or `execution`.
    phase: String,
    /// The clanker's id or slug.
    clanker: String,
}

/// Starts a run of one phase of a ticket with a clanker. Returns at once with the queued job.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/runs", tag = "jobs", request_body = RunRequest,
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses(
        (status = 202, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "The project, clanker or ticket cannot run yet; the message says why")
    )
)]
pub async fn create_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(ticket_id): Path<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> ApiResult<impl IntoResponse> {
    let ticket_id: TicketId = ticket_id
        .parse()
        .map_err(|e: viberglass_domain::ids::InvalidId| ApiError::invalid_field("ticket_id", e.to_string()))?;
    let phase: Phase = request
        .phase
        .parse()
        .map_err(|e: viberglass_domain::states::UnknownValue| ApiError::invalid_field("phase", e.to_string()))?;
    let ticket = state.store.get_ticket(ticket_id).await?;
    let run = runs::RunRequest { ticket: &ticket, phase, clanker: &request.clanker, trigger: runs::Trigger::Run };
    let job = runs::start_run(&state, Some(&caller), run).await?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/jobs/{}", job.id))], Json(job)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Only this project's jobs (id or slug).
    project: Option<String>,
    /// Only this ticket's jobs.
    ticket: Option<String>,
    /// Only this clanker's jobs (id or slug).
    clanker: Option<String>,
    /// `queued`, `dispatching`, `active`, `completed`, `failed` or `cancelled`.
    status: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Lists jobs, newest first.
#[utoipa::path(
    get, path = "/api/v1/jobs", tag = "jobs", params(ListJobsQuery),
    responses((status = 200, body = Page<Job>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListJobsQuery>,
) -> ApiResult<Json<Page<Job>>> {
    let mut errors = ValidationErrors::new();
    let status = parse_param::<JobStatus>(&mut errors, "status", query.status.as_deref());
    let ticket_id = parse_param::<TicketId>(&mut errors, "ticket", query.ticket.as_deref());
    let page = parse_page(&mut errors, query.limit, query.cursor.as_deref());
    errors.into_result(())?;
    let mut filter = JobFilter { status, ticket_id, member_of: caller.member_filter(), ..JobFilter::default() };
    if let Some(key) = query.project.as_deref().filter(|k| !k.is_empty()) {
        filter.project_id = Some(find_project(&state.store, key).await?.id);
    }
    if let Some(key) = query.clanker.as_deref().filter(|k| !k.is_empty()) {
        filter.clanker_id = Some(find_clanker(&state.store, key).await?.id);
    }
    Ok(Json(state.store.list_jobs(&filter, page).await?))
}

/// Reads a job: its status, status message (the failure's cause and fix when it failed) and result.
#[utoipa::path(
    get, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(state.store.get_job(parse_job_id(&id)?).await?))
}

/// Cancels a job and stops its worker. Cancelling a finished job is a 409.
#[utoipa::path(
    post, path = "/api/v1/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn cancel_job(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(service::jobs::cancel_job(&state, &caller, parse_job_id(&id)?).await?))
}

/// Runs a job again as a new job linked to it (the next attempt). Always safe.
#[utoipa::path(
    post, path = "/api/v1/jobs/{job_id}/rerun", tag = "jobs",
    params(("job_id" = String, Path, description = "The job to repeat")),
    responses((status = 202, body = Job), (status = 404, body = ErrorBody))
)]
pub async fn rerun_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let job = service::jobs::rerun_job(&state, &caller, parse_job_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/jobs/{}", job.id))], Json(job)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this event id (0 or absent: from the start).
    after: Option<i64>,
    /// At most this many events, 1 to 1000 (default 500).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Also return the job itself (`job`), so one call polls a job's status and its new log lines.
    include_job: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    /// The job, when asked for with `include_job=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    pub items: Vec<JobEvent>,
    /// Pass as `after` for the next page; absent when this page was not full.
    pub next_after: Option<i64>,
}

/// A page of a job's events (progress, log lines, agent events, status changes), in order.
#[utoipa::path(
    get, path = "/api/v1/jobs/{job_id}/events", tag = "jobs", params(("job_id" = String, Path), EventsQuery),
    responses((status = 200, body = EventPage), (status = 404, body = ErrorBody))
)]
pub async fn list_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventPage>> {
    let id = parse_job_id(&id)?;
    let limit = query.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", format!("must be between 1 and 1000 (got {limit})")));
    }
    let job = state.store.get_job(id).await?;
    let items = state.store.list_job_events(id, query.after.unwrap_or(0).max(0), limit).await?;
    let next_after = (items.len() == limit as usize).then(|| items.last().map(|e| e.id)).flatten();
    Ok(Json(EventPage { job: query.include_job.unwrap_or(false).then_some(job), items, next_after }))
}

/// Streams a job's events live (Server-Sent Events). Each event's `id` is
/// the event id: reconnect with `Last-Event-ID` to resume without gaps or
/// repeats. The stream ends with an `end` event once the job has finished.
#[utoipa::path(
    get, path = "/api/v1/jobs/{job_id}/events/stream", tag = "jobs",
    params(("job_id" = String, Path), ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event")),
    responses((status = 200, description = "text/event-stream of job events", content_type = "text/event-stream"), (status = 404, body = ErrorBody))
)]
pub async fn stream_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = parse_job_id(&id)?;
    state.store.get_job(id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    struct Cursor {
        after: i64,
        done: bool,
    }
    let store = state.store.clone();
    let stream = futures::stream::unfold(Cursor { after, done: false }, move |mut cursor| {
        let store = store.clone();
        async move {
            if cursor.done {
                return None;
            }
            loop {
                match store.list_job_events(id, cursor.after, 500).await {
                    Ok(events) if !events.is_empty() => {
                        cursor.after = events.last().map_or(cursor.after, |e| e.id);
                        let frames: Vec<Result<Event, Infallible>> = events
                            .iter()
                            .map(|e| {
                                Ok(Event::default()
                                    .id(e.id.to_string())
                                    .event(e.kind.as_str())
                                    .data(serde_json::to_string(e).unwrap_or_default()))
                            })
                            .collect();
                        return Some((futures::stream::iter(frames), cursor));
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "event stream: store error"),
                }
                // Nothing new: end once the job has finished (its last events are already sent).
                if let Ok(job) = store.get_job(id).await
                    && job.status.is_terminal()
                {
                    cursor.done = true;
                    let end = Event::default().event("end").data(serde_json::json!({"status": job.status}).to_string());
                    return Some((futures::stream::iter(vec![Ok(end)]), cursor));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok(Sse::new(futures::StreamExt::flatten(stream)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Tokens and cost the agents reported over a project's jobs.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/usage", tag = "jobs",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = viberglass_store::UsageSummary), (status = 404, body = ErrorBody))
)]
pub async fn project_usage(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<viberglass_store::UsageSummary>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(state.store.usage_summary(Some(project.id), None).await?))
}

/// Tokens and cost the agents reported over a ticket's jobs.
#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/usage", tag = "jobs",
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses((status = 200, body = viberglass_store::UsageSummary), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn ticket_usage(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<viberglass_store::UsageSummary>> {
    let id: TicketId = id
        .parse()
        .map_err(|e: viberglass_domain::ids::InvalidId| ApiError::invalid_field("ticket_id", e.to_string()))?;
    let ticket = state.store.get_ticket(id).await?;
    Ok(Json(state.store.usage_summary(None, Some(ticket.id)).await?))
}
