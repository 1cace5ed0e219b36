use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use viberglass_domain::{
    Clanker, ClankerId, ClankerInput, ClankerStatus, NewClanker, Page, ProjectSlug, ValidationErrors,
};
use viberglass_store::Store;

use super::parse_page;
use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListClankersQuery {
    /// Page size, 1 to 200 (default 50).
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Finds a clanker by id or by slug.
pub(crate) async fn find_clanker(store: &Store, key: &str) -> ApiResult<Clanker> {
    let found = match key.parse::<ClankerId>() {
        Ok(id) => store.get_clanker(id).await,
        Err(_) => match ProjectSlug::parse(key) {
            Ok(slug) => store.get_clanker_by_slug(&slug).await,
            Err(_) => return Err(ApiError::not_found(format!("there is no clanker `{key}`: give its id or slug"))),
        },
    };
    found.map_err(ApiError::from)
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
    ApiJson(input): ApiJson<ClankerInput>,
) -> ApiResult<impl IntoResponse> {
    let new = NewClanker::parse(input)?;
    check_secrets(&state.store, &new.secrets).await?;
    let clanker = state.store.create_clanker(new).await?;
    tracing::info!(clanker_id = %clanker.id, slug = clanker.slug.as_str(), "clanker created");
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
    Path(key): Path<String>,
    ApiJson(input): ApiJson<ClankerInput>,
) -> ApiResult<Json<Clanker>> {
    let current = find_clanker(&state.store, &key).await?;
    let new = NewClanker::parse(input.over(&current))?;
    check_secrets(&state.store, &new.secrets).await?;
    Ok(Json(state.store.update_clanker(current.id, new).await?))
}

/// A clanker may only name secrets that exist.
async fn check_secrets(store: &Store, names: &[String]) -> ApiResult<()> {
    let mut errors = ValidationErrors::new();
    for (i, name) in names.iter().enumerate() {
        match store.get_secret_by_name(name).await {
            Ok(_) => {}
            Err(viberglass_store::StoreError::NotFound { .. }) => {
                errors.add(
                    &format!("secrets[{i}]"),
                    format!("there is no secret named {name}: declare it first (POST /api/v1/secrets)"),
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(errors.into_result(())?)
}

/// Provisions a clanker on its compute target. Idempotent; the status message says what happened.
#[utoipa::path(
    post, path = "/api/v1/clankers/{clanker}/start", tag = "clankers",
    params(("clanker" = String, Path, description = "The clanker's id or slug")),
    responses((status = 200, body = Clanker), (status = 404, body = ErrorBody))
)]
pub async fn start_clanker(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Clanker>> {
    let clanker = find_clanker(&state.store, &key).await?;
    let (status, message) = match state.engine.local.provision().await {
        Ok(done) if clanker.compute == viberglass_domain::ComputeKind::Local => (ClankerStatus::Active, done.message),
        Ok(_) => (ClankerStatus::Failed, format!("the {} compute target is not available yet", clanker.compute)),
        Err(err) => (ClankerStatus::Failed, format!("provisioning failed: {err}")),
    };
    state.store.set_clanker_status(clanker.id, status, Some(message)).await?;
    Ok(Json(state.store.get_clanker(clanker.id).await?))
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
