//! Scheduled tasks: a project's task templates and schedules, the cadence
//! preview, pause and resume, Run now, and executions with their jobs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use viberglass_domain::schedule::{Execution, TaskTemplate};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::identity::Caller;
use crate::service::projects::find_project;
use crate::service::schedules::{
    self as service, CadenceInput, CadencePreview, ExecutionView, ScheduleInput, ScheduleView, TemplateInput,
};

/// Lists a project's task templates.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/task-templates", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = Vec<TaskTemplate>), (status = 404, body = ErrorBody))
)]
pub async fn list_templates(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<Vec<TaskTemplate>>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(state.store.list_task_templates(project.id).await?))
}

/// Creates a task template: a clanker allowed in the project, a phase, instructions, and optionally which of
/// the clanker's secrets its runs get and whether execution runs open a pull request.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/task-templates", tag = "schedules", request_body = TemplateInput,
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 201, body = TaskTemplate), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn create_template(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<TemplateInput>,
) -> ApiResult<impl IntoResponse> {
    let project = find_project(&state.store, &key).await?;
    let t = service::create_template(&state, &caller, &project, input).await?;
    let location = format!("/api/v1/projects/{}/task-templates/{}", project.slug.as_str(), t.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(t)))
}

/// Reads a task template (by id or name).
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/task-templates/{template_id}", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("template_id" = String, Path, description = "The template's id or name")),
    responses((status = 200, body = TaskTemplate), (status = 404, body = ErrorBody))
)]
pub async fn get_template(
    State(state): State<AppState>,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<TaskTemplate>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::find_template(&state, &project, &id).await?))
}

/// Changes a task template; its schedules' next executions use the new settings.
#[utoipa::path(
    patch, path = "/api/v1/projects/{project}/task-templates/{template_id}", tag = "schedules",
    request_body = TemplateInput,
    params(("project" = String, Path, description = "The project's id or slug"),
        ("template_id" = String, Path, description = "The template's id or name")),
    responses((status = 200, body = TaskTemplate), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn update_template(
    State(state): State<AppState>,
    caller: Caller,
    Path((key, id)): Path<(String, String)>,
    ApiJson(input): ApiJson<TemplateInput>,
) -> ApiResult<Json<TaskTemplate>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::update_template(&state, &caller, &project, &id, input).await?))
}

/// Lists a project's schedules, each with its next runs.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/schedules", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = Vec<ScheduleView>), (status = 404, body = ErrorBody))
)]
pub async fn list_schedules(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<Vec<ScheduleView>>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::views(&state, &project).await?))
}

/// Creates a schedule: a template on a cron expression in a time zone, or on an interval. An invalid
/// expression is refused with the position and the reason; the answer shows the next five runs.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/schedules", tag = "schedules", request_body = ScheduleInput,
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 201, body = ScheduleView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn create_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<ScheduleInput>,
) -> ApiResult<impl IntoResponse> {
    let project = find_project(&state.store, &key).await?;
    let view = service::create_schedule(&state, &caller, &project, input).await?;
    let location = format!("/api/v1/projects/{}/schedules/{}", project.slug.as_str(), view.schedule.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(view)))
}

/// Checks a cadence and previews its next five runs, without saving anything.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/schedule-preview", tag = "schedules", request_body = CadenceInput,
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = CadencePreview), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn preview(
    State(state): State<AppState>,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<CadenceInput>,
) -> ApiResult<Json<CadencePreview>> {
    find_project(&state.store, &key).await?;
    Ok(Json(service::preview(&state, &input)?))
}

/// Reads a schedule (by id or name) with its next runs.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/schedules/{schedule_id}", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("schedule_id" = String, Path, description = "The schedule's id or name")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody))
)]
pub async fn get_schedule(
    State(state): State<AppState>,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    let project = find_project(&state.store, &key).await?;
    let s = service::find_schedule(&state, &project, &id).await?;
    Ok(Json(service::view(&state, s).await?))
}

/// Changes a schedule; a new cadence moves its next run to the first slot after now.
#[utoipa::path(
    patch, path = "/api/v1/projects/{project}/schedules/{schedule_id}", tag = "schedules",
    request_body = ScheduleInput,
    params(("project" = String, Path, description = "The project's id or slug"),
        ("schedule_id" = String, Path, description = "The schedule's id or name")),
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn update_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path((key, id)): Path<(String, String)>,
    ApiJson(input): ApiJson<ScheduleInput>,
) -> ApiResult<Json<ScheduleView>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::update_schedule(&state, &caller, &project, &id, input).await?))
}

/// Pauses a schedule: no slot comes until it is resumed.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/schedules/{schedule_id}/pause", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("schedule_id" = String, Path, description = "The schedule's id or name")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody))
)]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::set_active(&state, &caller, &project, &id, false).await?))
}

/// Resumes a schedule from its next slot after now (slots passed while paused are not caught up).
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/schedules/{schedule_id}/resume", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("schedule_id" = String, Path, description = "The schedule's id or name")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody))
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::set_active(&state, &caller, &project, &id, true).await?))
}

/// Run now: an execution outside the cadence, started at once (409 while one runs and overlap is skip).
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/schedules/{schedule_id}/run", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("schedule_id" = String, Path, description = "The schedule's id or name")),
    responses((status = 202, body = Execution), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn run_now(
    State(state): State<AppState>,
    caller: Caller,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let project = find_project(&state.store, &key).await?;
    let execution = service::run_now(&state, &caller, &project, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(execution)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExecutionsQuery {
    /// How many, newest first: 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// Lists a schedule's executions, newest first, each with its job.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/schedules/{schedule_id}/executions", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("schedule_id" = String, Path, description = "The schedule's id or name"), ExecutionsQuery),
    responses((status = 200, body = Vec<ExecutionView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn list_executions(
    State(state): State<AppState>,
    Path((key, id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<ExecutionsQuery>,
) -> ApiResult<Json<Vec<ExecutionView>>> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(crate::error::ApiError::invalid_field("limit", "must be between 1 and 200"));
    }
    let project = find_project(&state.store, &key).await?;
    let s = service::find_schedule(&state, &project, &id).await?;
    Ok(Json(service::executions(&state, &s, i64::from(limit)).await?))
}

/// Reads one execution with its job.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/executions/{execution_id}", tag = "schedules",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("execution_id" = String, Path, description = "The execution's id")),
    responses((status = 200, body = ExecutionView), (status = 404, body = ErrorBody))
)]
pub async fn get_execution(
    State(state): State<AppState>,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<ExecutionView>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::find_execution(&state, &project, &id).await?))
}
