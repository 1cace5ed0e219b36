//! Inbound webhooks: the receiver every ticket source posts to
//! (`/api/webhooks/{provider}/{config}`, public: the signature is the
//! credential), the project's configurations, and its delivery log with
//! redelivery.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use viberglass_domain::{
    Delivery, DeliveryFilter, DeliveryPayload, DeliveryStatus, Page, ValidationErrors, WebhookConfig, WebhookConfigId,
    WebhookConfigInput,
};
use viberglass_store::Feedback;

use super::{parse_page, parse_param};
use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::identity::Caller;
use crate::service::projects::find_project;
use crate::service::webhooks::{self as service, CreatedConfig};

/// Receives a ticket source's delivery. The answer comes after the delivery, and whatever it changed, are
/// committed: `200` with `status` processed, ignored (with the reason) or duplicate; `401` for a bad or missing
/// signature, `415` for a form-encoded body to a signed custom configuration, `404` for an unknown
/// configuration, `422` for a payload that cannot be read. Every delivery is recorded.
#[utoipa::path(
    post, path = "/api/webhooks/{provider}/{config}", tag = "webhooks",
    params(
        ("provider" = String, Path, description = "github, gitlab, jira, shortcut, linear or custom"),
        ("config" = String, Path, description = "The configuration's id")
    ),
    request_body(content = String, description = "The provider's payload, as it sends it"),
    responses((status = 200, description = "Recorded; `status` says what became of it"), (status = 401), (status = 404),
        (status = 415), (status = 422)),
    security(())
)]
pub async fn receive(
    State(state): State<AppState>,
    Path((provider, config)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = service::receive(&state, &provider, &config, &headers, &body).await;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(answer.body)).into_response()
}

/// Lists a project's webhook configurations (secrets are never shown).
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/webhooks", tag = "webhooks",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = Vec<WebhookConfig>), (status = 404, body = ErrorBody))
)]
pub async fn list_configs(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<Vec<WebhookConfig>>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(state.store.list_webhook_configs(project.id).await?))
}

/// Creates a webhook configuration. Leave `secret` out to have one generated: it is in this answer only.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/webhooks", tag = "webhooks", request_body = WebhookConfigInput,
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 201, body = CreatedConfig), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn create_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<WebhookConfigInput>,
) -> ApiResult<impl IntoResponse> {
    let project = find_project(&state.store, &key).await?;
    let created = service::create_config(&state, &caller, &project, input).await?;
    let location = format!("/api/v1/projects/{}/webhooks/{}", project.slug.as_str(), created.config.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)))
}

/// Reads a webhook configuration.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/webhooks/{webhook_id}", tag = "webhooks",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("webhook_id" = String, Path, description = "The configuration's id")),
    responses((status = 200, body = WebhookConfig), (status = 404, body = ErrorBody))
)]
pub async fn get_config(
    State(state): State<AppState>,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<WebhookConfig>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::find_config(&state, &project, &id).await?.config))
}

/// Changes a webhook configuration; a `secret` rotates the shared secret (set the same on the sender).
#[utoipa::path(
    patch, path = "/api/v1/projects/{project}/webhooks/{webhook_id}", tag = "webhooks", request_body = WebhookConfigInput,
    params(("project" = String, Path, description = "The project's id or slug"),
        ("webhook_id" = String, Path, description = "The configuration's id")),
    responses((status = 200, body = WebhookConfig), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn update_config(
    State(state): State<AppState>,
    caller: Caller,
    Path((key, id)): Path<(String, String)>,
    ApiJson(input): ApiJson<WebhookConfigInput>,
) -> ApiResult<Json<WebhookConfig>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::update_config(&state, &caller, &project, &id, input).await?))
}

/// Replaces the shared secret with a generated one, shown in this answer only.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/webhooks/{webhook_id}/rotate-secret", tag = "webhooks",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("webhook_id" = String, Path, description = "The configuration's id")),
    responses((status = 200, body = CreatedConfig), (status = 404, body = ErrorBody))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<CreatedConfig>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::rotate_secret(&state, &caller, &project, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only this configuration's deliveries.
    webhook: Option<String>,
    /// processed, ignored, duplicate, rejected or failed.
    status: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Lists a project's webhook deliveries, newest first, with their outcome and reason.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/webhook-deliveries", tag = "webhooks", params(
        ("project" = String, Path, description = "The project's id or slug"), DeliveriesQuery),
    responses((status = 200, body = Page<Delivery>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Path(key): Path<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<Page<Delivery>>> {
    let mut errors = ValidationErrors::new();
    let status = parse_param::<DeliveryStatus>(&mut errors, "status", query.status.as_deref());
    let config_id = parse_param::<WebhookConfigId>(&mut errors, "webhook", query.webhook.as_deref());
    let page = parse_page(&mut errors, query.limit, query.cursor.as_deref());
    errors.into_result(())?;
    let project = find_project(&state.store, &key).await?;
    let filter = DeliveryFilter { project_id: Some(project.id), config_id, status };
    Ok(Json(state.store.list_deliveries(&filter, page).await?))
}

async fn project_delivery(state: &AppState, key: &str, id: &str) -> ApiResult<Delivery> {
    let project = find_project(&state.store, key).await?;
    let parsed =
        id.parse().map_err(|_| crate::error::ApiError::invalid_field("delivery_id", "is not a delivery id"))?;
    let delivery = state.store.get_delivery(parsed).await?;
    if delivery.project_id != Some(project.id) {
        return Err(crate::error::ApiError::not_found(format!("there is no delivery {id} in this project")));
    }
    Ok(delivery)
}

/// Reads one delivery.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}", tag = "webhooks",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("delivery_id" = String, Path, description = "The delivery's id")),
    responses((status = 200, body = Delivery), (status = 404, body = ErrorBody))
)]
pub async fn get_delivery(
    State(state): State<AppState>,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<Delivery>> {
    Ok(Json(project_delivery(&state, &key, &id).await?))
}

/// Reads a delivery's kept headers and raw payload (maintainers only; the payload is kept for a while, then
/// removed).
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}/payload", tag = "webhooks",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("delivery_id" = String, Path, description = "The delivery's id")),
    responses((status = 200, body = DeliveryPayload), (status = 404, body = ErrorBody))
)]
pub async fn get_payload(
    State(state): State<AppState>,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<DeliveryPayload>> {
    let delivery = project_delivery(&state, &key, &id).await?;
    Ok(Json(state.store.delivery_payload_view(delivery.id).await?))
}

/// Processes a refused or failed delivery again from its stored payload (after fixing the secret or the
/// configuration). Applied deliveries are not applied twice (409).
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}/redeliver", tag = "webhooks",
    params(("project" = String, Path, description = "The project's id or slug"),
        ("delivery_id" = String, Path, description = "The delivery's id")),
    responses((status = 200, body = Delivery), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((key, id)): Path<(String, String)>,
) -> ApiResult<Json<Delivery>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(service::redeliver(&state, &caller, &project, &id).await?))
}

/// The feedback a sourced ticket sent (or owes) its source issue, with every attempt.
#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/feedback", tag = "webhooks",
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses((status = 200, description = "Feedback rows, newest first"), (status = 404, body = ErrorBody))
)]
pub async fn ticket_feedback(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<Feedback>>> {
    let id = crate::extract::parse_ticket_id(&id)?;
    state.store.get_ticket(id).await?;
    Ok(Json(state.store.list_feedback(id).await?))
}
