//! Secrets: names with a backend. Values are write-only: they go in with a
//! create or a change and never come out of the API, the logs or the audit log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use viberglass_domain::secret::parse_secret_value;
use viberglass_domain::{NewSecret, Secret, SecretBackend, SecretInput, SecretPatchInput, ValidationErrors};

use crate::AppState;
use crate::auth::{Caller, audit};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;

/// Lists secrets by name. Values are never returned.
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets", responses((status = 200, body = Vec<Secret>)))]
pub async fn list_secrets(State(state): State<AppState>) -> ApiResult<Json<Vec<Secret>>> {
    Ok(Json(state.store.list_secrets().await?))
}

#[utoipa::path(
    get, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 200, body = Secret), (status = 404, body = ErrorBody))
)]
pub async fn get_secret(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Secret>> {
    Ok(Json(state.store.get_secret_by_name(&name).await?))
}

fn unprocessable(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// Declares a secret. `env` reads the server's environment variable named by
/// `reference` (default: the secret's name) at use time; `database` encrypts
/// `value` (AES-256-GCM) and stores it; `ssm` reads the SecureString at
/// `reference` (default: the configured prefix + the name), writing it first
/// when a `value` is given.
#[utoipa::path(
    post, path = "/api/v1/secrets", tag = "secrets", request_body = SecretInput,
    responses((status = 201, body = Secret), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn create_secret(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<SecretInput>,
) -> ApiResult<impl IntoResponse> {
    let mut new = NewSecret::parse(input)?;
    if state.store.get_secret_by_name(&new.name).await.is_ok() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("a secret named {} already exists", new.name),
        ));
    }
    let (sealed, managed) = match new.backend {
        SecretBackend::Env => (None, false),
        SecretBackend::Database => {
            let value = new.value.take().unwrap_or_default();
            (Some(state.vault.seal(&new.name, &value)), true)
        }
        SecretBackend::Ssm => {
            let path = state.vault.ssm_path(&new.name, new.reference.as_deref());
            new.reference = Some(path.clone());
            match new.value.take() {
                Some(value) => {
                    state
                        .vault
                        .put_ssm(&state.env, &path, &value, false)
                        .await
                        .map_err(|why| unprocessable("ssm_write_failed", format!("cannot write {path}: {why}")))?;
                    (None, true)
                }
                None => (None, false),
            }
        }
    };
    let secret = state.store.create_secret(new, sealed, managed).await?;
    tracing::info!(secret = secret.name, backend = %secret.backend, "secret declared");
    audit(
        &state,
        Some(&caller),
        "secret_created",
        "secret",
        Some(secret.name.clone()),
        None,
        serde_json::json!({"backend": secret.backend, "reference": secret.reference}),
    )
    .await;
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/api/v1/secrets/{}", secret.name))], Json(secret)))
}

/// Sets a new value (`database`, `ssm`) or description. The value is write-only.
#[utoipa::path(
    patch, path = "/api/v1/secrets/{name}", tag = "secrets", request_body = SecretPatchInput,
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 200, body = Secret), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn update_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<SecretPatchInput>,
) -> ApiResult<Json<Secret>> {
    let secret = state.store.get_secret_by_name(&name).await?;
    let mut errors = ValidationErrors::new();
    let value = input.value.as_deref().and_then(|v| errors.check("value", parse_secret_value(v)));
    let description = input.description.as_deref().and_then(|d| {
        errors.check("description", viberglass_domain::validation::bounded_text(d, "description", 0, 1000))
    });
    if value.is_some() && secret.backend == SecretBackend::Env {
        errors.add("value", "an env secret's value lives in the server's environment: change the variable there");
    }
    errors.into_result(())?;
    let mut sealed = None;
    let mut managed = None;
    if let Some(value) = &value {
        match secret.backend {
            SecretBackend::Database => sealed = Some(state.vault.seal(&secret.name, value)),
            SecretBackend::Ssm if !secret.managed => {
                return Err(unprocessable(
                    "not_managed",
                    format!(
                        "{} reads a parameter Viberglass did not create: change it in SSM itself (or declare a new secret with a value)",
                        secret.name
                    ),
                ));
            }
            SecretBackend::Ssm => {
                let path = state.vault.ssm_path(&secret.name, secret.reference.as_deref());
                state
                    .vault
                    .put_ssm(&state.env, &path, value, true)
                    .await
                    .map_err(|why| unprocessable("ssm_write_failed", format!("cannot write {path}: {why}")))?;
                managed = Some(true);
            }
            SecretBackend::Env => {}
        }
    }
    let updated = state.store.update_secret(&name, sealed, managed, description).await?;
    audit(
        &state,
        Some(&caller),
        "secret_updated",
        "secret",
        Some(name.clone()),
        None,
        serde_json::json!({"value_changed": value.is_some()}),
    )
    .await;
    Ok(Json(updated))
}

/// Deletes a secret (and, when Viberglass wrote it, its SSM parameter).
/// Refused while clankers, projects or integrations use it: the answer names them.
#[utoipa::path(
    delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let secret = state.store.get_secret_by_name(&name).await?;
    let users = state.store.secret_users(&name).await?;
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secret_in_use",
            format!("secret {name} is used by {}: point them at another secret first", users.describe()),
        ));
    }
    if secret.backend == SecretBackend::Ssm && secret.managed {
        let path = state.vault.ssm_path(&secret.name, secret.reference.as_deref());
        state
            .vault
            .delete_ssm(&state.env, &path)
            .await
            .map_err(|why| unprocessable("ssm_delete_failed", format!("cannot delete {path}: {why}")))?;
    }
    state.store.delete_secret(&name).await?;
    audit(&state, Some(&caller), "secret_deleted", "secret", Some(name), None, serde_json::json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer to a secret's **Test**.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretTest {
    pub ok: bool,
    /// What was checked, or exactly what is wrong and how to fix it.
    pub message: String,
}

/// **Test**: checks that the secret resolves (the variable is set, the value
/// decrypts, the SSM parameter is readable) without revealing it.
#[utoipa::path(
    post, path = "/api/v1/secrets/{name}/test", tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 200, body = SecretTest), (status = 404, body = ErrorBody))
)]
pub async fn test_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<SecretTest>> {
    let secret = state.store.get_secret_by_name(&name).await?;
    let answer = match state.vault.read(&state.store, &state.env, &secret).await {
        Ok(value) => SecretTest {
            ok: true,
            message: format!("{name} resolves ({} backend, {} characters)", secret.backend, value.chars().count()),
        },
        Err(why) => SecretTest { ok: false, message: format!("{name} does not resolve: {why}") },
    };
    audit(&state, Some(&caller), "secret_tested", "secret", Some(name), None, serde_json::json!({"ok": answer.ok}))
        .await;
    Ok(Json(answer))
}
