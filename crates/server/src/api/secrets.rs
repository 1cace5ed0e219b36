use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use viberglass_domain::{NewSecret, Secret, SecretInput};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::ApiJson;

/// Lists secrets by name. Values are never returned.
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets", responses((status = 200, body = Vec<Secret>)))]
pub async fn list_secrets(State(state): State<AppState>) -> ApiResult<Json<Vec<Secret>>> {
    Ok(Json(state.store.list_secrets().await?))
}

/// Declares a secret. The `env` backend reads the server's environment
/// variable named by `reference` (default: the secret's name) at use time.
#[utoipa::path(
    post, path = "/api/v1/secrets", tag = "secrets", request_body = SecretInput,
    responses((status = 201, body = Secret), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn create_secret(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<SecretInput>,
) -> ApiResult<impl IntoResponse> {
    let secret = state.store.create_secret(NewSecret::parse(input)?).await?;
    tracing::info!(secret = secret.name, backend = %secret.backend, "secret declared");
    Ok((StatusCode::CREATED, Json(secret)))
}
