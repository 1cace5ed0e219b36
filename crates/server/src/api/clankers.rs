use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use viberglass_domain::{Clanker, ClankerInput, ClankerStatus, Page, ValidationErrors};

use super::parse_page;
use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::identity::Caller;
use crate::service::clankers::{self as service, find_clanker};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListClankersQuery {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Lists clankers, newest first.
#[utoipa::path(
    get, path = "/api/v1/clankers", tag = "clankers", params(ListClankersQuery),
    responses((status = 200, body = Page<Clanker>), (status = 400, body = ErrorBody))
)]
pub async fn list_clankers(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListClankersQuery>,
) -> ApiResult<Json<Page<Clanker>>> {
    let mut errors = ValidationErrors::new();
    let page = parse_page(&mut errors, query.limit, query.cursor.as_deref());
    errors.into_result(())?;
    Ok(Json(state.store.list_clankers(page).await?))
}

/// Saves a clanker: which agent, its settings, the compute target and instruction files.
/// It starts `inactive`; **Start** provisions it.
#[utoipa::path(
    post, path = "/api/v1/clankers", tag = "clankers", request_body = ClankerInput,
    responses((status = 201, body = Clanker), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn create_clanker(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<ClankerInput>,
) -> ApiResult<impl IntoResponse> {
    let clanker = service::create_clanker(&state, &caller, input).await?;
    let location = format!("/api/v1/clankers/{}", clanker.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(clanker)))
}

/// Reads a clanker by id or slug, with its status message.
#[utoipa::path(
    get, path = "/api/v1/clankers/{clanker}", tag = "clankers",
    params(("clanker" = String, Path, description = "The clanker's id or slug")),
    responses((status = 200, body = Clanker), (status = 404, body = ErrorBody))
)]
pub async fn get_clanker(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Clanker>> {
    Ok(Json(find_clanker(&state.store, &key).await?))
}

/// Changes a clanker: the fields present replace the current ones
/// (`instruction_files` and `secrets` as whole lists); runs in flight keep what they started with.
#[utoipa::path(
    patch, path = "/api/v1/clankers/{clanker}", tag = "clankers", request_body = ClankerInput,
    params(("clanker" = String, Path, description = "The clanker's id or slug")),
    responses((status = 200, body = Clanker), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn update_clanker(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<ClankerInput>,
) -> ApiResult<Json<Clanker>> {
    Ok(Json(service::update_clanker(&state, &caller, &key, input).await?))
}

/// Provisions a clanker on its compute target. Idempotent; the status message says what happened.
#[utoipa::path(
    post, path = "/api/v1/clankers/{clanker}/start", tag = "clankers",
    params(("clanker" = String, Path, description = "The clanker's id or slug")),
    responses((status = 200, body = Clanker), (status = 404, body = ErrorBody))
)]
pub async fn start_clanker(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Clanker>> {
    Ok(Json(service::start_clanker(&state, &caller, &key).await?))
}

/// Marks a clanker inactive: it takes no new runs; runs in flight finish.
#[utoipa::path(
    post, path = "/api/v1/clankers/{clanker}/stop", tag = "clankers",
    params(("clanker" = String, Path, description = "The clanker's id or slug")),
    responses((status = 200, body = Clanker), (status = 404, body = ErrorBody))
)]
pub async fn stop_clanker(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Clanker>> {
    let clanker = find_clanker(&state.store, &key).await?;
    state
        .store
        .set_clanker_status(clanker.id, ClankerStatus::Inactive, Some("stopped: takes no new runs".into()))
        .await?;
    Ok(Json(state.store.get_clanker(clanker.id).await?))
}
