//! SCM integrations: GitHub or GitLab at an address, with a credential that
//! refers to a secret; projects link one by name. **Test connection** calls
//! the provider and says who the token is and what it may do.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use viberglass_domain::scm::repository_path;
use viberglass_domain::{Integration, IntegrationId, IntegrationInput, IntegrationPatch, NewIntegration};
use viberglass_scm::AccessReport;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;
use crate::service::projects::find_project;

/// Finds an integration by id or by name.
async fn find_integration(state: &AppState, key: &str) -> ApiResult<Integration> {
    match key.parse::<IntegrationId>() {
        Ok(id) => state.store.get_integration(id).await.map_err(ApiError::from),
        Err(_) => state
            .store
            .get_integration_by_name(key)
            .await
            .map_err(|_| ApiError::not_found(format!("there is no integration `{key}`: give its id or name"))),
    }
}

/// An integration may only name a secret that exists.
async fn check_secret(state: &AppState, secret: Option<&String>) -> ApiResult<()> {
    if let Some(name) = secret
        && state.store.get_secret_by_name(name).await.is_err()
    {
        return Err(ApiError::unknown_reference(viberglass_domain::ValidationErrors::single(
            "credential_secret",
            format!("there is no secret named {name}: declare it first (POST /api/v1/secrets)"),
        )));
    }
    Ok(())
}

/// Lists integrations by name.
#[utoipa::path(get, path = "/api/v1/integrations", tag = "integrations", responses((status = 200, body = Vec<Integration>)))]
pub async fn list_integrations(State(state): State<AppState>) -> ApiResult<Json<Vec<Integration>>> {
    Ok(Json(state.store.list_integrations().await?))
}

/// Creates an SCM integration (GitHub or GitLab; `base_url` for GitHub
/// Enterprise or a self-hosted GitLab).
#[utoipa::path(
    post, path = "/api/v1/integrations", tag = "integrations", request_body = IntegrationInput,
    responses((status = 201, body = Integration), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn create_integration(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    ApiJson(input): ApiJson<IntegrationInput>,
) -> ApiResult<impl IntoResponse> {
    let new = NewIntegration::parse(input)?;
    check_secret(&state, new.credential_secret.as_ref()).await?;
    let integration = state.store.create_integration(new).await?;
    tracing::info!(integration = integration.name, kind = %integration.kind, "integration created");
    crate::auth::audit(
        &state,
        Some(&caller),
        "integration_created",
        "integration",
        Some(integration.name.clone()),
        None,
        serde_json::json!({"kind": integration.kind, "base_url": integration.base_url, "credential_secret": integration.credential_secret}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/integrations/{}", integration.id))],
        Json(integration),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/integrations/{integration}", tag = "integrations",
    params(("integration" = String, Path, description = "The integration's id or name")),
    responses((status = 200, body = Integration), (status = 404, body = ErrorBody))
)]
pub async fn get_integration(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Integration>> {
    Ok(Json(find_integration(&state, &key).await?))
}

/// Changes an integration: only the fields sent; `credential_secret: null` removes the credential.
#[utoipa::path(
    patch, path = "/api/v1/integrations/{integration}", tag = "integrations", request_body = IntegrationInput,
    params(("integration" = String, Path, description = "The integration's id or name")),
    responses((status = 200, body = Integration), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn update_integration(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<IntegrationInput>,
) -> ApiResult<Json<Integration>> {
    let integration = find_integration(&state, &key).await?;
    let patch = IntegrationPatch::parse(input)?;
    if let Some(secret) = &patch.credential_secret {
        check_secret(&state, secret.as_ref()).await?;
    }
    let updated = state.store.update_integration(integration.id, patch).await?;
    crate::auth::audit(
        &state,
        Some(&caller),
        "integration_updated",
        "integration",
        Some(updated.name.clone()),
        None,
        serde_json::json!({"base_url": updated.base_url, "credential_secret": updated.credential_secret}),
    )
    .await;
    Ok(Json(updated))
}

/// Deletes an integration. Refused while projects use it: the answer names them.
#[utoipa::path(
    delete, path = "/api/v1/integrations/{integration}", tag = "integrations",
    params(("integration" = String, Path, description = "The integration's id or name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn delete_integration(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    let integration = find_integration(&state, &key).await?;
    let users = state.store.integration_users(integration.id).await?;
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "integration_in_use",
            format!(
                "integration {} is used by project(s) {}: unlink it from them first (PATCH the project with \"scm_integration\": null)",
                integration.name,
                users.join(", ")
            ),
        ));
    }
    state.store.delete_integration(integration.id).await?;
    tracing::info!(integration = integration.name, "integration deleted");
    crate::auth::audit(
        &state,
        Some(&caller),
        "integration_deleted",
        "integration",
        Some(integration.name.clone()),
        None,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// What Test connection checks the token against.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestConnection {
    /// A project (id or slug) whose repository to check.
    project: Option<String>,
    /// Or a repository as `owner/name`.
    repository: Option<String>,
}

/// **Test connection**: calls the provider with the integration's token and
/// reports who the token is, whether it can read the repository, push to it
/// and open pull requests on it, and what to fix when it cannot.
#[utoipa::path(
    post, path = "/api/v1/integrations/{integration}/test", tag = "integrations", request_body = TestConnection,
    params(("integration" = String, Path, description = "The integration's id or name")),
    responses((status = 200, body = AccessReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn test_integration(
    State(state): State<AppState>,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<TestConnection>,
) -> ApiResult<Json<AccessReport>> {
    let integration = find_integration(&state, &key).await?;
    let repository = match (&request.project, &request.repository) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field("repository", "give either a project or a repository, not both"));
        }
        (Some(project), None) => {
            let project = find_project(&state.store, project).await?;
            let url = project.repository_url.clone().ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "project_has_no_repository",
                    format!("project {} has no repository yet: set its repository_url", project.slug.as_str()),
                )
            })?;
            let url = project.pr_repository_url.clone().unwrap_or(url);
            Some(repository_path(&url).map(|(_, path)| path).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not_a_forge_repository",
                    format!("{url} has no owner/name path the provider can look up"),
                )
            })?)
        }
        (None, Some(repository)) => {
            let repository = repository.trim().trim_matches('/');
            if repository.split('/').count() < 2 || repository.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ApiError::invalid_field("repository", "must be `owner/name`, e.g. acme/app"));
            }
            Some(repository.to_owned())
        }
        (None, None) => None,
    };
    let Some(secret) = &integration.credential_secret else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_credential",
            format!(
                "integration {} has no credential: set its credential_secret to the secret holding the token",
                integration.name
            ),
        ));
    };
    let whose = format!("integration {}", integration.name);
    let token = crate::vault::resolve(&state, secret, &whose)
        .await
        .map_err(|failure| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "secret_unresolved", failure.message))?;
    let api_url = integration.api_url();
    let Some(forge) = viberglass_scm::connect(integration.kind, &api_url, &token) else {
        return Err(ApiError::internal("an integration without a provider"));
    };
    let report = viberglass_scm::check_access(&forge, &api_url, repository.as_deref()).await;
    tracing::info!(integration = integration.name, ok = report.ok, "integration tested");
    Ok(Json(report))
}
