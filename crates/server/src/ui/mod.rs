//! The web UI: server-rendered pages (askama templates compiled into the
//! binary), htmx and one small script for progressive enhancement, and live
//! logs over the API's Server-Sent Events.
//!
//! Pages read through the store, narrowed to the caller's projects like the
//! API's lists. Every change a page offers is a form posted to
//! `/act/{API path}` ([`act`]), which replays it against the JSON API itself
//! with the browser's own credentials and origin headers, so the API's rules,
//! validation and audit log apply to the UI unchanged. Every page has one
//! rule in [`PAGES`], checked by the same guard as the API.

mod act;
mod pages;
mod view;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use viberglass_domain::ProjectRole;

use crate::AppState;
use crate::auth::Rule::{Admin, Authenticated, Project, Public};
use crate::auth::{Rule, Scope};
use crate::error::ApiError;

pub use act::ApiService;

use ProjectRole::{Maintainer, Member, Viewer};

/// Every page and what it needs (the same rules as the API's routes).
pub const PAGES: &[(&str, &str, Rule)] = &[
    ("GET", "/assets/{file}", Public),
    ("GET", "/setup", Public),
    ("GET", "/login", Public),
    // Forms post here; the API route it names applies its own rule.
    ("POST", "/act/{*api}", Public),
    ("GET", "/", Authenticated),
    ("GET", "/projects", Authenticated),
    ("GET", "/projects/new", Admin),
    ("GET", "/projects/{project}", Project(Viewer, Scope::Project)),
    ("GET", "/projects/{project}/settings", Project(Maintainer, Scope::Project)),
    ("GET", "/projects/{project}/webhooks", Project(Maintainer, Scope::Project)),
    ("GET", "/projects/{project}/webhook-subscriptions", Project(Maintainer, Scope::Project)),
    ("GET", "/projects/{project}/schedules", Project(Viewer, Scope::Project)),
    ("GET", "/projects/{project}/schedules/{schedule_id}", Project(Viewer, Scope::Project)),
    ("GET", "/webhook-subscriptions", Admin),
    ("GET", "/webhook-subscriptions/{subscription_id}", Project(Maintainer, Scope::Subscription)),
    ("GET", "/projects/{project}/tickets/new", Project(Member, Scope::Project)),
    ("GET", "/tickets", Authenticated),
    ("GET", "/tickets/{ticket_id}", Project(Viewer, Scope::Ticket)),
    ("GET", "/jobs", Authenticated),
    ("GET", "/jobs/{job_id}", Project(Viewer, Scope::Job)),
    ("GET", "/clankers", Authenticated),
    ("GET", "/clankers/new", Admin),
    ("GET", "/clankers/{clanker}", Authenticated),
    ("GET", "/clankers/{clanker}/edit", Admin),
    ("GET", "/secrets", Authenticated),
    ("GET", "/integrations", Authenticated),
    ("GET", "/users", Admin),
    ("GET", "/slack", Admin),
    ("GET", "/tokens", Authenticated),
    ("GET", "/audit", Admin),
    ("GET", "/doctor", Admin),
];

/// The pages, each behind the access guard.
pub fn router(state: AppState, api: ApiService) -> Router<AppState> {
    Router::new()
        .route("/setup", get(pages::setup))
        .route("/login", get(pages::login))
        .route("/act/{*api}", post(act::act))
        .route("/", get(pages::dashboard))
        .route("/projects", get(pages::projects))
        .route("/projects/new", get(pages::new_project))
        .route("/projects/{project}", get(pages::project))
        .route("/projects/{project}/settings", get(pages::project_settings))
        .route("/projects/{project}/webhooks", get(pages::webhooks))
        .route("/projects/{project}/webhook-subscriptions", get(pages::project_subscriptions))
        .route("/projects/{project}/schedules", get(pages::schedules))
        .route("/projects/{project}/schedules/{schedule_id}", get(pages::schedule))
        .route("/webhook-subscriptions", get(pages::instance_subscriptions))
        .route("/webhook-subscriptions/{subscription_id}", get(pages::subscription))
        .route("/projects/{project}/tickets/new", get(pages::new_ticket))
        .route("/tickets", get(pages::tickets))
        .route("/tickets/{ticket_id}", get(pages::ticket))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{job_id}", get(pages::job))
        .route("/clankers", get(pages::clankers))
        .route("/clankers/new", get(pages::new_clanker))
        .route("/clankers/{clanker}", get(pages::clanker))
        .route("/clankers/{clanker}/edit", get(pages::edit_clanker))
        .route("/secrets", get(pages::secrets))
        .route("/integrations", get(pages::integrations))
        .route("/slack", get(pages::slack))
        .route("/users", get(pages::users))
        .route("/tokens", get(pages::tokens))
        .route("/audit", get(pages::audit))
        .route("/doctor", get(pages::doctor))
        .route("/assets/{file}", get(asset))
        .route_layer(axum::middleware::from_fn_with_state(state, page_guard))
        .layer(axum::Extension(api))
}

/// The API's guard, answering like a page: no session → the sign-in page;
/// refused → an error page.
async fn page_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let wanted = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let is_get = request.method() == axum::http::Method::GET;
    match crate::auth::check(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(error) if error.status == StatusCode::UNAUTHORIZED && is_get => {
            Redirect::to(&format!("/login?next={}", view::encode(&wanted))).into_response()
        }
        Err(error) => error_page(&error),
    }
}

/// A refusal or failure as a page: what went wrong and where to go.
pub(crate) fn error_page(error: &ApiError) -> Response {
    let page = view::ErrorPage {
        status: error.status.as_u16(),
        title: error.status.canonical_reason().unwrap_or("Error").to_owned(),
        message: error.body.message.clone(),
        hint: error.body.hint.clone(),
        fields: error.body.fields.iter().map(|f| (f.field.clone(), f.message.clone())).collect(),
    };
    let mut response = view::render(&page);
    *response.status_mut() = error.status;
    response
}

/// The not-found answer for a browser asking for a page that does not exist.
pub(crate) fn page_not_found(path: &str) -> Response {
    error_page(
        &ApiError::not_found(format!("there is no page {path}"))
            .with_hint("go back to the dashboard and follow the links from there"),
    )
}

const HTMX: &[u8] = include_bytes!("../../assets/htmx-2.0.11.min.js");
const APP_JS: &[u8] = include_bytes!("../../assets/app.js");
const APP_CSS: &[u8] = include_bytes!("../../assets/app.css");

/// The embedded static files. Names carry a version, so they may be cached.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, mime) = match file.as_str() {
        "htmx-2.0.11.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return page_not_found(&format!("/assets/{file}")),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}
