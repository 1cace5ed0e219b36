use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use viberglass_domain::{NewProject, Page, Project, ProjectInput, ProjectPatch, ValidationErrors};
use viberglass_store::{ProjectFilter, Store};

use super::{parse_archived, parse_page};
use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::service::projects::find_project;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListProjectsQuery {
    /// `exclude` (default), `include` or `only`.
    archived: Option<String>,
    /// Matches name, slug and description, case-insensitively: at most 256 characters, no control characters.
    #[param(max_length = 256)]
    q: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A project may only name a secret and an integration that exist.
async fn check_secret(store: &Store, patch: &ProjectPatch) -> ApiResult<()> {
    if let Some(Some(name)) = &patch.scm_integration
        && store.get_integration_by_name(name).await.is_err()
    {
        return Err(ApiError::unknown_reference(ValidationErrors::single(
            "scm_integration",
            format!("there is no integration named {name}: create it first (POST /api/v1/integrations)"),
        )));
    }
    if let Some(Some(name)) = &patch.credential_secret {
        match store.get_secret_by_name(name).await {
            Ok(_) => {}
            Err(viberglass_store::StoreError::NotFound { .. }) => {
                return Err(ApiError::unknown_reference(ValidationErrors::single(
                    "credential_secret",
                    format!("there is no secret named {name}: declare it first (POST /api/v1/secrets)"),
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Lists projects, newest first.
#[utoipa::path(
    get, path = "/api/v1/projects", tag = "projects", params(ListProjectsQuery),
    responses((status = 200, body = Page<Project>), (status = 400, body = ErrorBody))
)]
pub async fn list_projects(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    ApiQuery(query): ApiQuery<ListProjectsQuery>,
) -> ApiResult<Json<Page<Project>>> {
    let mut errors = ValidationErrors::new();
    let filter = ProjectFilter {
        archived: parse_archived(&mut errors, query.archived.as_deref()),
        search: errors.check("q", viberglass_domain::validation::search_text(query.q)).flatten(),
        member_of: caller.member_filter(),
    };
    let page = parse_page(&mut errors, query.limit, query.cursor.as_deref());
    errors.into_result(())?;
    Ok(Json(state.store.list_projects(&filter, page).await?))
}

/// Creates a project. Only `name` is required; the slug is derived from it when not given.
#[utoipa::path(
    post, path = "/api/v1/projects", tag = "projects", request_body = ProjectInput,
    responses((status = 201, body = Project), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn create_project(
    State(state): State<AppState>,
    caller: crate::identity::Caller,
    ApiJson(input): ApiJson<ProjectInput>,
) -> ApiResult<impl IntoResponse> {
    let new = NewProject::parse(input)?;
    check_local(&state, &new.0)?;
    check_secret(&state.store, &new.0).await?;
    let project = state.store.create_project(new).await?;
    tracing::info!(project_id = %project.id, slug = project.slug.as_str(), "project created");
    crate::identity::audit(
        &state,
        Some(&caller),
        "project_created",
        "project",
        Some(project.id.to_string()),
        Some(project.id),
        serde_json::json!({"slug": project.slug.as_str(), "repository_url": project.repository_url}),
    )
    .await;
    let location = format!("/api/v1/projects/{}", project.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(project)))
}

/// Reads a project by id or slug.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = Project), (status = 404, body = ErrorBody))
)]
pub async fn get_project(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Project>> {
    Ok(Json(find_project(&state.store, &key).await?))
}

/// Changes a project's settings: only the fields present change; `null` clears an optional one.
#[utoipa::path(
    patch, path = "/api/v1/projects/{project}", tag = "projects", request_body = ProjectInput,
    params(("project" = String, Path, description = "The project's id or slug")),
    responses(
        (status = 200, body = Project), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)
    )
)]
pub async fn update_project(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<ProjectInput>,
) -> ApiResult<Json<Project>> {
    let patch = ProjectPatch::parse(input)?;
    // A change of nothing (`{}`, or only nulls for required fields) changes nothing, as a JSON merge patch would.
    if patch.is_empty() {
        return Ok(Json(find_project(&state.store, &key).await?));
    }
    check_local(&state, &patch)?;
    // Where code is fetched from and pushed to, and with which credential,
    // decide where a secret's value goes: only administrators change them.
    let sensitive = [
        ("repository_url", patch.repository_url.is_some()),
        ("pr_repository_url", patch.pr_repository_url.is_some()),
        ("credential_secret", patch.credential_secret.is_some()),
        ("scm_integration", patch.scm_integration.is_some()),
        ("scm_username", patch.scm_username.is_some()),
    ];
    if let Some((field, _)) = sensitive.iter().find(|(_, touched)| *touched)
        && !caller.is_admin()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("only an administrator may change {field}: it decides where the project's credential is sent"),
        ));
    }
    check_secret(&state.store, &patch).await?;
    let project = find_project(&state.store, &key).await?;
    if let Some(limit) = patch.max_execution_secs
        && limit > viberglass_compute::LAMBDA_MAX_SECS
    {
        // A Lambda clanker scoped to this project could not finish runs that long.
        let mut page = viberglass_domain::PageRequest { limit: viberglass_domain::page::MAX_PAGE_SIZE, after: None };
        loop {
            let clankers = state.store.list_clankers(page).await?;
            let mut scoped = None;
            for listed in clankers.items.iter().filter(|c| c.compute == viberglass_domain::ComputeKind::Lambda) {
                // A list leaves out the projects: read the clanker whole.
                let clanker = state.store.get_clanker(listed.id).await?;
                if clanker.projects.contains(&project.id) {
                    scoped = Some(clanker);
                    break;
                }
            }
            if let Some(lambda) = scoped {
                return Err(ApiError::invalid_field(
                    "max_execution_secs",
                    format!(
                        "clanker `{}` runs this project's jobs on Lambda, which stops every run at {} s: switch it to \
                         ECS (edit its compute; it keeps its id, secrets and history), or keep the limit at most {} s",
                        lambda.slug.as_str(),
                        viberglass_compute::LAMBDA_MAX_SECS,
                        viberglass_compute::LAMBDA_MAX_SECS
                    ),
                ));
            }
            match clankers.next_cursor.as_deref() {
                Some(cursor) => {
                    page = viberglass_domain::PageRequest::parse(
                        Some(viberglass_domain::page::MAX_PAGE_SIZE),
                        Some(cursor),
                    )
                    .map_err(|(field, message)| ApiError::invalid_field(field, message))?;
                }
                None => break,
            }
        }
    }
    let updated = state.store.update_project(project.id, patch).await?;
    tracing::info!(project_id = %updated.id, "project updated");
    let before = serde_json::to_value(&project).unwrap_or_default();
    let after = serde_json::to_value(&updated).unwrap_or_default();
    let changed: Vec<&String> = after
        .as_object()
        .map(|a| {
            a.iter().filter(|(k, v)| *k != "updated_at" && before.get(k.as_str()) != Some(v)).map(|(k, _)| k).collect()
        })
        .unwrap_or_default();
    crate::auth::audit(
        &state,
        Some(&caller),
        "project_updated",
        "project",
        Some(updated.id.to_string()),
        Some(updated.id),
        serde_json::json!({"changed": changed}),
    )
    .await;
    Ok(Json(updated))
}

/// Archives a project: it leaves the default lists and takes no new tickets. Idempotent.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/archive", tag = "projects",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = Project), (status = 404, body = ErrorBody))
)]
pub async fn archive_project(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Project>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(state.store.archive_project(project.id).await?))
}

/// Restores an archived project. Idempotent.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/unarchive", tag = "projects",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = Project), (status = 404, body = ErrorBody))
)]
pub async fn unarchive_project(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Project>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(state.store.unarchive_project(project.id).await?))
}

/// Clone URLs on this machine's own files are refused unless the server allows them.
fn check_local(state: &AppState, patch: &ProjectPatch) -> ApiResult<()> {
    if state.config.allow_local_repositories {
        return Ok(());
    }
    let mut errors = ValidationErrors::new();
    for (field, url) in [("repository_url", &patch.repository_url), ("pr_repository_url", &patch.pr_repository_url)] {
        if let Some(Some(url)) = url
            && viberglass_domain::scm::is_local_repository(url)
        {
            errors.add(
                field,
                format!(
                    "`{url}` is a path on the server's own disk, which projects may not clone from: give the \
                     repository's https or ssh URL (an operator can allow local repositories with \
                     VIBERGLASS_ALLOW_LOCAL_REPOSITORIES=true)"
                ),
            );
        }
    }
    Ok(errors.into_result(())?)
}
