//! Slack: the request URL Slack posts to (`/api/slack/events`, public: the
//! signature is the credential), the app's settings with Test connection and
//! its manifest, and a ticket's thread (see, link, unlink).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use viberglass_domain::{SlackPost, SlackSettings, SlackSettingsInput, SlackThread, TicketId};
use viberglass_store::InboxSummary;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::ApiJson;
use crate::identity::Caller;
use crate::service::slack as service;

/// The app manifest shipped in the repository, with its placeholder address.
pub const MANIFEST: &str = include_str!("../../../../docs/slack-app-manifest.yml");
const PLACEHOLDER: &str = "https://viberglass.example.com";

/// The request URL: where Slack sends slash commands, interactivity and events.
pub const REQUEST_PATH: &str = "/api/slack/events";

/// Receives what Slack sends: slash commands, button clicks and form submissions (form-encoded), and Events
/// API callbacks (JSON). Answered within Slack's three seconds; the work continues after the answer. `401` for
/// a bad, stale (over five minutes) or replayed signature; `404` when Slack is not set up.
#[utoipa::path(
    post, path = "/api/slack/events", tag = "slack",
    request_body(content = String, description = "What Slack sends, as it sends it"),
    responses((status = 200, description = "Accepted (a form's field errors come back as `response_action: errors`)"),
        (status = 400), (status = 401), (status = 404)),
    security(())
)]
pub async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = service::receive(&state, &headers, &body).await;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match answer.body {
        Some(body) => (status, Json(body)).into_response(),
        None => status.into_response(),
    }
}

/// The Slack page's facts: the settings (none until saved), where to point the app, and what arrived lately.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SlackView {
    pub settings: Option<SlackSettings>,
    /// The URL to paste for the slash command, interactivity and event subscriptions.
    pub request_url: String,
    /// The app manifest with this server's address filled in (YAML).
    pub manifest: String,
    /// The latest requests Slack sent and what came of them.
    pub recent: Vec<InboxSummary>,
}

/// This server's public address.
pub fn public_url(state: &AppState) -> String {
    state.engine.server_url.trim_end_matches('/').to_owned()
}

/// Reads the Slack settings, the request URL and the filled-in manifest (an administrator).
#[utoipa::path(
    get, path = "/api/v1/slack", tag = "slack",
    responses((status = 200, body = SlackView))
)]
pub async fn get_settings(State(state): State<AppState>) -> ApiResult<Json<SlackView>> {
    Ok(Json(view(&state).await?))
}

pub async fn view(state: &AppState) -> ApiResult<SlackView> {
    let base = public_url(state);
    Ok(SlackView {
        settings: state.store.get_slack_settings().await?,
        request_url: format!("{base}{REQUEST_PATH}"),
        manifest: MANIFEST.replace(PLACEHOLDER, &base),
        recent: state.store.recent_slack_inbox(20).await?,
    })
}

/// Saves the Slack app's settings: the names of the secrets holding its signing secret and bot token (and the
/// Web API address, for proxies). Test connection runs right after: the answer says what it found.
#[utoipa::path(
    put, path = "/api/v1/slack", tag = "slack", request_body = SlackSettingsInput,
    responses((status = 200, body = SlackSettings), (status = 400, body = ErrorBody))
)]
pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<SlackSettingsInput>,
) -> ApiResult<Json<SlackSettings>> {
    Ok(Json(service::save_settings(&state, &caller, input).await?))
}

/// Removes the Slack settings: the request URL refuses everything until they are saved again.
#[utoipa::path(
    delete, path = "/api/v1/slack", tag = "slack",
    responses((status = 204), (status = 404, body = ErrorBody))
)]
pub async fn delete_settings(State(state): State<AppState>, caller: Caller) -> ApiResult<StatusCode> {
    service::remove_settings(&state, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Test connection: `auth.test` with the bot token. The answer's `test_error` says what failed and what to do.
#[utoipa::path(
    post, path = "/api/v1/slack/test", tag = "slack",
    responses((status = 200, body = SlackSettings), (status = 422, body = ErrorBody))
)]
pub async fn test_settings(State(state): State<AppState>) -> ApiResult<Json<SlackSettings>> {
    Ok(Json(service::test_connection(&state).await?))
}

/// A ticket's Slack thread: the live one, its messages, and the threads it had before.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TicketSlack {
    pub thread: Option<SlackThread>,
    /// The live thread's messages and where each stands.
    pub posts: Vec<SlackPost>,
    /// Every thread the ticket has had, newest first.
    pub history: Vec<SlackThread>,
}

pub async fn ticket_slack(state: &AppState, ticket: TicketId) -> ApiResult<TicketSlack> {
    let thread = state.store.live_slack_thread(ticket).await?;
    let posts = match &thread {
        Some(t) => state.store.slack_posts_of(t.id).await?,
        None => Vec::new(),
    };
    Ok(TicketSlack { thread, posts, history: state.store.slack_threads_of(ticket).await? })
}

#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/slack", tag = "slack",
    params(("ticket_id" = String, Path)),
    responses((status = 200, body = TicketSlack), (status = 404, body = ErrorBody))
)]
pub async fn get_ticket_thread(
    State(state): State<AppState>,
    Path(ticket_id): Path<String>,
) -> ApiResult<Json<TicketSlack>> {
    let ticket = state.store.get_ticket(crate::extract::parse_ticket_id(&ticket_id)?).await?;
    Ok(Json(ticket_slack(&state, ticket.id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkInput {
    /// The thread: its first message's link (Copy link), or `CHANNEL/TIMESTAMP`.
    pub thread: String,
}

/// Links a Slack thread to the ticket (a maintainer), replacing its thread: the ticket's runs are mirrored
/// there from now on, and replies there act on it.
#[utoipa::path(
    put, path = "/api/v1/tickets/{ticket_id}/slack", tag = "slack", request_body = LinkInput,
    params(("ticket_id" = String, Path)),
    responses((status = 200, body = SlackThread), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody))
)]
pub async fn link_ticket_thread(
    State(state): State<AppState>,
    caller: Caller,
    Path(ticket_id): Path<String>,
    ApiJson(input): ApiJson<LinkInput>,
) -> ApiResult<Json<SlackThread>> {
    let ticket = state.store.get_ticket(crate::extract::parse_ticket_id(&ticket_id)?).await?;
    Ok(Json(service::link_thread(&state, &caller, &ticket, &input.thread).await?))
}

/// Unlinks the ticket's Slack thread (a maintainer): nothing more is mirrored there.
#[utoipa::path(
    delete, path = "/api/v1/tickets/{ticket_id}/slack", tag = "slack",
    params(("ticket_id" = String, Path)),
    responses((status = 200, body = SlackThread), (status = 404, body = ErrorBody))
)]
pub async fn unlink_ticket_thread(
    State(state): State<AppState>,
    caller: Caller,
    Path(ticket_id): Path<String>,
) -> ApiResult<Json<SlackThread>> {
    let ticket = state.store.get_ticket(crate::extract::parse_ticket_id(&ticket_id)?).await?;
    Ok(Json(service::unlink_thread(&state, &caller, &ticket).await?))
}
