//! The application: shared state and the router with its middleware.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa_swagger_ui::SwaggerUi;
use viberglass_store::Store;

use crate::config::{Config, EncryptionKey};
use crate::error::ApiError;
use crate::request::request_context;

/// What every handler can reach: concrete handles built once at startup.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Reads and writes secret values.
    pub vault: Arc<crate::vault::Vault>,
    /// Failed sign-ins per account and per address.
    pub limiter: Arc<crate::auth::LoginLimiter>,
    pub config: Arc<Config>,
    /// Encrypts stored secrets.
    pub encryption_key: Arc<EncryptionKey>,
    /// The dispatcher and reaper, and the compute targets they drive.
    pub engine: crate::engine::Engine,
    /// Reads the server's environment, where `env` secrets live.
    pub env: EnvLookup,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Wakes the outbound webhook delivery loop when deliveries are owed.
    pub outbound_wake: Arc<tokio::sync::Notify>,
    /// Wakes the Slack loop when something is to be sent to Slack or acted on.
    pub slack_wake: Arc<tokio::sync::Notify>,
    /// The client Slack's Web API is called through (no redirects, a timeout).
    pub slack_http: reqwest::Client,
    /// The Slack signing secret as last read (its name, value, and when), so requests cost no backend calls.
    pub slack_secret: SlackSecretCache,
    /// Where the scheduler reads "now" from (the system clock; a [`crate::clock::ManualClock`] in tests).
    pub clock: crate::clock::SharedClock,
    /// Wakes the scheduler (a schedule saved or resumed, Run now, an execution ended).
    pub schedule_wake: Arc<tokio::sync::Notify>,
}

pub type SlackSecretCache = Arc<std::sync::Mutex<Option<(String, String, std::time::Instant)>>>;

/// Looks up an environment variable (replaceable in tests).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
pub const DOCS_PATH: &str = "/api/docs";

/// The OpenAPI document of every API route, as served.
pub fn openapi() -> serde_json::Value {
    finish(crate::api::router().into_openapi())
}

/// The served document, serialized on the first request for it: building it
/// (a second walk of every route) costs start-up time, and holding it as a
/// JSON tree costs memory, on every server, for a page few open.
static OPENAPI_JSON: tokio::sync::OnceCell<axum::body::Bytes> = tokio::sync::OnceCell::const_new();

async fn openapi_json() -> Response {
    // One build however many ask at once: the others wait for it.
    let built = OPENAPI_JSON
        .get_or_try_init(|| async {
            match tokio::task::spawn_blocking(|| serde_json::to_vec(&openapi())).await {
                Ok(Ok(built)) => Ok(axum::body::Bytes::from(built)),
                Ok(Err(err)) => Err(format!("the OpenAPI document does not serialize: {err}")),
                Err(err) => Err(format!("building the OpenAPI document failed: {err}")),
            }
        })
        .await;
    match built {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        Err(why) => ApiError::internal(why).into_response(),
    }
}

/// The derived document plus what the derive cannot say: the shared error answers, and the validation's
/// lengths, patterns, ranges and required combinations (`api::constraints`).
fn finish(mut openapi: utoipa::openapi::OpenApi) -> serde_json::Value {
    crate::api::complete(&mut openapi);
    let mut doc = serde_json::to_value(&openapi).expect("the OpenAPI document serializes");
    let missing = crate::api::constraints::apply(&mut doc);
    debug_assert!(missing.is_empty(), "constraints name fields the document lacks: {missing:?}");
    doc
}

/// Builds the whole HTTP application.
pub fn build_router(state: AppState) -> Router {
    // The document is served from `openapi_json`, built when first asked for.
    let (api, _) = crate::api::router().split_for_parts();
    // Every API route passes the access guard (its rule, the caller, CSRF, the role).
    let api = api.route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::guard));
    // The pages replay their forms against the API itself (see ui::act).
    let internal = api.clone().with_state(state.clone()).layer(DefaultBodyLimit::max(state.config.body_limit_bytes));
    let ui = crate::ui::router(state.clone(), crate::ui::ApiService(internal));
    let body_limit = state.config.body_limit_bytes;
    let origins = state.config.cors_allowed_origins.clone();
    let metrics = state.metrics.clone();
    let hosts =
        Arc::new(crate::hosts::AllowedHosts::new(state.config.public_url.as_deref(), &state.config.allowed_hosts));
    let mut router = api
        .merge(ui)
        .route(OPENAPI_PATH, axum::routing::get(openapi_json))
        .merge(SwaggerUi::new(DOCS_PATH).config(utoipa_swagger_ui::Config::new([OPENAPI_PATH])))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Router::layer wraps every route (and the fallbacks), so the request
        // span sees the matched route; the panic guard sits inside it so a
        // panic is still logged with the request's id.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(metrics, request_context))
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost: a request for another host name is refused before anything else looks at it.
        .layer(axum::middleware::from_fn_with_state(hosts, crate::hosts::guard));
    if !origins.is_empty() {
        let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
                .allow_headers([axum::http::header::CONTENT_TYPE, axum::http::header::AUTHORIZATION])
                .allow_credentials(true)
                .expose_headers([crate::request::X_REQUEST_ID.clone()]),
        );
    }
    router
}

async fn route_not_found(method: Method, uri: Uri, headers: axum::http::HeaderMap) -> Response {
    // A browser asking for a page gets a page.
    let wants_html = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html && !uri.path().starts_with("/api/") {
        return crate::ui::page_not_found(uri.path());
    }
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", format!("there is no route {method} {}", uri.path()))
        .with_hint(format!("the API is described at {DOCS_PATH}"))
        .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not accept {method}", uri.path()),
    )
    .with_hint(format!("the API is described at {DOCS_PATH}"))
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("a handler panicked").into_response()
}
