//! Per-request context: the request id and the request's log span.
//!
//! A valid `X-Request-Id` from the client is kept (so a proxy's id follows
//! the request through), otherwise one is minted. The id is returned in the
//! response header, recorded on the request span (so every log line inside
//! the request carries it), and logged once more on the closing line with
//! the method, the matched route, the status and the latency.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A client-supplied id is accepted when it is 1 to 128 visible ASCII
/// characters from a safe set; anything else is replaced.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

pub async fn request_context(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<crate::metrics::Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    // Named `METHOD /route` in traces, a server span; a caller's `traceparent` makes it a child of the caller's
    // where the configuration trusts it. The method is one of the standard ones or `_OTHER`: any token is a method
    // to HTTP, and none may grow the metrics' series.
    let method = standard_method(&method);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = %route,
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
        crate::telemetry::continue_request_trace(&span, parent);
    }
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let mut response = CURRENT.scope(id.clone(), next.run(req).instrument(span.clone())).await;
    let elapsed = started.elapsed().as_secs_f64();
    let latency_ms = elapsed * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    metrics.record(method, &route, status, elapsed);
    span.in_scope(|| {
        if status >= 500 {
            tracing::error!(status, latency_ms, "request finished");
        } else {
            tracing::info!(status, latency_ms, "request finished");
        }
    });
    response
}

/// The request's method as metrics and traces name it: a standard method, else `_OTHER`.
fn standard_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::{is_valid_request_id, standard_method};

    #[test]
    fn only_standard_methods_become_labels() {
        assert_eq!(standard_method(&axum::http::Method::PATCH), "PATCH");
        let invented = axum::http::Method::from_bytes(b"AAAA1").unwrap();
        assert_eq!(standard_method(&invented), "_OTHER");
    }

    #[test]
    fn request_ids_from_proxies_are_kept_and_junk_is_replaced() {
        assert!(is_valid_request_id("0192abcd-1234"));
        assert!(is_valid_request_id("Root=1-5e1b4151-5ac6c58f5b5dd2c1b1b0ab43"));
        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id("has space"));
        assert!(!is_valid_request_id(&"x".repeat(129)));
        assert!(!is_valid_request_id("line\nbreak"));
    }
}
