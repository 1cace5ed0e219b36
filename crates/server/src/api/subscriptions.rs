//! Outbound webhooks: the event catalogue, subscriptions (instance-wide for
//! administrators, a project's for its maintainers), their deliveries with
//! every attempt, redelivery and test events.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use viberglass_domain::{
    EventType, OutboundDelivery, OutboundStatus, Page, Subscription, SubscriptionInput, SubscriptionScope,
    ValidationErrors,
};

use super::{parse_page, parse_param};
use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::identity::Caller;
use crate::service::projects::find_project;
use crate::service::subscriptions::{self as service, WithSecret};

/// One type of the event catalogue, with an example of what is delivered.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CatalogueEntry {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub description: String,
    /// A delivered body of this type: `{type, timestamp, data}`.
    pub example: serde_json::Value,
}

/// The catalogue: every event type a subscription can receive.
pub fn catalogue() -> Vec<CatalogueEntry> {
    EventType::ALL
        .iter()
        .map(|&t| CatalogueEntry {
            event_type: t,
            description: t.description().to_owned(),
            example: serde_json::json!({"type": t, "timestamp": "2026-12-01T09:30:00.123456Z", "data": t.example_data()}),
        })
        .collect()
}

/// The OpenAPI `webhooks` section: one entry per event type, with its example body and the signature headers.
pub fn openapi_webhooks() -> Option<utoipa::openapi::Paths> {
    let mut paths = serde_json::Map::new();
    for entry in catalogue() {
        paths.insert(
            entry.event_type.as_str().to_owned(),
            serde_json::json!({"post": {
                "summary": entry.description,
                "description": "Posted to each subscription that wants this type, signed in the Standard Webhooks format: `webhook-signature: v1,<base64 HMAC-SHA256 of \"{webhook-id}.{webhook-timestamp}.{body}\">` keyed by the secret's bytes after `whsec_`. `webhook-id` is the event's id, the same on every attempt: deduplicate on it. Answer 2xx within 10 s; 410 turns the subscription off; anything else is retried with backoff.",
                "parameters": [
                    {"name": "webhook-id", "in": "header", "required": true, "schema": {"type": "string"}},
                    {"name": "webhook-timestamp", "in": "header", "required": true, "schema": {"type": "integer"}},
                    {"name": "webhook-signature", "in": "header", "required": true, "schema": {"type": "string"}}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"example": entry.example}}},
                "responses": {"200": {"description": "Received"}, "410": {"description": "Never send again: the subscription is turned off"}}
            }}),
        );
    }
    serde_json::from_value(serde_json::Value::Object(paths)).ok()
}

/// The event catalogue, with an example body for each type.
#[utoipa::path(
    get, path = "/api/v1/webhook-events", tag = "subscriptions",
    responses((status = 200, body = Vec<CatalogueEntry>))
)]
pub async fn events() -> Json<Vec<CatalogueEntry>> {
    Json(catalogue())
}

/// Lists the instance-wide subscriptions (administrators).
#[utoipa::path(
    get, path = "/api/v1/webhook-subscriptions", tag = "subscriptions",
    responses((status = 200, body = Vec<Subscription>))
)]
pub async fn list_instance(State(state): State<AppState>) -> ApiResult<Json<Vec<Subscription>>> {
    Ok(Json(state.store.list_subscriptions(None).await?))
}

/// Creates an instance-wide subscription: every project's events (administrators). Leave `secret` out to have
/// one generated: it is in this answer only.
#[utoipa::path(
    post, path = "/api/v1/webhook-subscriptions", tag = "subscriptions", request_body = SubscriptionInput,
    responses((status = 201, body = WithSecret), (status = 400, body = ErrorBody))
)]
pub async fn create_instance(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<SubscriptionInput>,
) -> ApiResult<impl IntoResponse> {
    let created = service::create(&state, &caller, SubscriptionScope::Instance, input).await?;
    let location = format!("/api/v1/webhook-subscriptions/{}", created.subscription.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)))
}

/// Lists a project's subscriptions.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/webhook-subscriptions", tag = "subscriptions",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = Vec<Subscription>), (status = 404, body = ErrorBody))
)]
pub async fn list_project(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<Vec<Subscription>>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(state.store.list_subscriptions(Some(project.id)).await?))
}

/// Creates a subscription to a project's events. Leave `secret` out to have one generated: it is in this
/// answer only.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/webhook-subscriptions", tag = "subscriptions",
    request_body = SubscriptionInput,
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 201, body = WithSecret), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<SubscriptionInput>,
) -> ApiResult<impl IntoResponse> {
    let project = find_project(&state.store, &key).await?;
    let created = service::create(&state, &caller, SubscriptionScope::Project(project.id), input).await?;
    let location = format!("/api/v1/webhook-subscriptions/{}", created.subscription.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)))
}

/// Reads a subscription.
#[utoipa::path(
    get, path = "/api/v1/webhook-subscriptions/{subscription_id}", tag = "subscriptions",
    params(("subscription_id" = String, Path, description = "The subscription's id")),
    responses((status = 200, body = Subscription), (status = 404, body = ErrorBody))
)]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Subscription>> {
    Ok(Json(service::find(&state, &id).await?.subscription))
}

/// Changes a subscription: its URL, events, headers (replacing them), authentication, description, `active`
/// (turning it on again clears why it was turned off); a `secret` replaces the signing secret at once.
#[utoipa::path(
    patch, path = "/api/v1/webhook-subscriptions/{subscription_id}", tag = "subscriptions",
    request_body = SubscriptionInput,
    params(("subscription_id" = String, Path, description = "The subscription's id")),
    responses((status = 200, body = Subscription), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody))
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<SubscriptionInput>,
) -> ApiResult<Json<Subscription>> {
    let stored = service::find(&state, &id).await?;
    Ok(Json(service::update(&state, &caller, stored.subscription.id, input).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// How long the old secret still signs too (seconds, default 86400, at most 604800; 0: stop at once).
    pub overlap_secs: Option<u64>,
}

/// Generates a new signing secret, shown in this answer only. During the overlap every delivery carries both
/// signatures, so the receiver can switch to the new secret without losing any.
#[utoipa::path(
    post, path = "/api/v1/webhook-subscriptions/{subscription_id}/rotate-secret", tag = "subscriptions",
    request_body(content = Option<RotateInput>, description = "Optional: the overlap"),
    params(("subscription_id" = String, Path, description = "The subscription's id")),
    responses((status = 200, body = WithSecret), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<WithSecret>> {
    let input: RotateInput = if body.iter().all(u8::is_ascii_whitespace) {
        RotateInput::default()
    } else {
        // `null` is no body too.
        crate::extract::parse_json::<Option<RotateInput>>(&body)?.unwrap_or_default()
    };
    let stored = service::find(&state, &id).await?;
    let overlap = input.overlap_secs;
    Ok(Json(service::rotate_secret(&state, &caller, stored.subscription.id, overlap).await?))
}

/// Queues a `webhook.test` event for the subscription; it is attempted, recorded and retried like any other.
#[utoipa::path(
    post, path = "/api/v1/webhook-subscriptions/{subscription_id}/test", tag = "subscriptions",
    params(("subscription_id" = String, Path, description = "The subscription's id")),
    responses((status = 202, body = OutboundDelivery), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn send_test(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let stored = service::find(&state, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(service::send_test(&state, &caller, &stored).await?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// pending, succeeded or failed.
    status: Option<String>,
    /// `true`: only the failing ones (given up, or pending after a failed attempt).
    failing: Option<bool>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Lists a subscription's deliveries, newest first (`failing=true`: the failing ones).
#[utoipa::path(
    get, path = "/api/v1/webhook-subscriptions/{subscription_id}/deliveries", tag = "subscriptions",
    params(("subscription_id" = String, Path, description = "The subscription's id"), DeliveriesQuery),
    responses((status = 200, body = Page<OutboundDelivery>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<Page<OutboundDelivery>>> {
    let mut errors = ValidationErrors::new();
    let status = parse_param::<OutboundStatus>(&mut errors, "status", query.status.as_deref());
    let page = parse_page(&mut errors, query.limit, query.cursor.as_deref());
    errors.into_result(())?;
    let stored = service::find(&state, &id).await?;
    let failing = query.failing.unwrap_or(false);
    Ok(Json(state.store.list_outbound(stored.subscription.id, status, failing, page).await?))
}

/// A delivery with every attempt and the body it sends.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: OutboundDelivery,
    /// The JSON body sent (the same on every attempt).
    pub body: String,
}

/// Reads one delivery with its attempts (time, duration, status, the answer's start, the error).
#[utoipa::path(
    get, path = "/api/v1/webhook-subscriptions/{subscription_id}/deliveries/{delivery_id}", tag = "subscriptions",
    params(("subscription_id" = String, Path, description = "The subscription's id"),
        ("delivery_id" = String, Path, description = "The delivery's id")),
    responses((status = 200, body = DeliveryDetail), (status = 404, body = ErrorBody))
)]
pub async fn get_delivery(
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult<Json<DeliveryDetail>> {
    let stored = service::find(&state, &id).await?;
    let delivery = service::find_delivery(&state, stored.subscription.id, &delivery).await?;
    let body = state.store.outbound_body(delivery.id).await?;
    Ok(Json(DeliveryDetail { delivery, body }))
}

/// Sends a delivery again now, whatever became of it (the same `webhook-id`: receivers that have it dedupe).
#[utoipa::path(
    post, path = "/api/v1/webhook-subscriptions/{subscription_id}/deliveries/{delivery_id}/redeliver",
    tag = "subscriptions",
    params(("subscription_id" = String, Path, description = "The subscription's id"),
        ("delivery_id" = String, Path, description = "The delivery's id")),
    responses((status = 200, body = OutboundDelivery), (status = 404, body = ErrorBody))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult<Json<OutboundDelivery>> {
    let stored = service::find(&state, &id).await?;
    let delivery = service::find_delivery(&state, stored.subscription.id, &delivery).await?;
    Ok(Json(service::redeliver(&state, &caller, &stored.subscription, delivery.id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverFailedInput {
    /// RFC 3339: failed deliveries created at or after this time are sent again.
    pub since: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedeliveredCount {
    pub redelivered: u64,
}

/// Sends every failed delivery of the subscription created since a time again.
#[utoipa::path(
    post, path = "/api/v1/webhook-subscriptions/{subscription_id}/redeliver-failed", tag = "subscriptions",
    request_body = RedeliverFailedInput,
    params(("subscription_id" = String, Path, description = "The subscription's id")),
    responses((status = 200, body = RedeliveredCount), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn redeliver_failed(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RedeliverFailedInput>,
) -> ApiResult<Json<RedeliveredCount>> {
    let since = parse_since(&input.since)?;
    let stored = service::find(&state, &id).await?;
    let redelivered = service::redeliver_failed(&state, &caller, &stored.subscription, since).await?;
    Ok(Json(RedeliveredCount { redelivered }))
}

/// An RFC 3339 time, or a `datetime-local` form value (`2026-12-01T09:30`, taken as UTC).
fn parse_since(value: &str) -> Result<time::OffsetDateTime, crate::error::ApiError> {
    let v = value.trim();
    let rfc = time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(v, &rfc) {
        return Ok(t);
    }
    let local = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    time::PrimitiveDateTime::parse(v, &local).map(|t| t.assume_utc()).map_err(|_| {
        crate::error::ApiError::invalid_field("since", "must be an RFC 3339 time, e.g. 2026-12-01T09:30:00Z")
    })
}
