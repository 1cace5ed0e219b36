//! The key proxy: the agent's model API key never enters its sandbox.
//!
//! The worker keeps the real key and serves the agent CLI a loopback HTTP
//! endpoint; the CLI's base URL points at it and it is given a placeholder
//! key, random for each run. Each request that presents the placeholder is
//! forwarded to the one configured provider (its scheme, host and port fixed
//! when the proxy starts, whatever path the CLI asks for) with the real key
//! added the way that provider takes it; answers stream straight back.
//! Requests without the placeholder (another process on the host that found
//! the port) are refused. Redirects are passed back to the CLI, never
//! followed, so the key is never sent to a host the provider redirects to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use viberglass_agents::KeyStyle;
use viberglass_domain::LogLevel;

use crate::events::EventSink;

/// The largest request body the proxy forwards (a long conversation with a 1 MiB prompt fits many times over).
const MAX_REQUEST: usize = 64 * 1024 * 1024;

/// Headers a client may carry its key in: all are removed before forwarding.
const KEY_HEADERS: &[&str] = &["authorization", "x-api-key", "x-goog-api-key", "api-key"];

/// Per-hop headers (RFC 9110 section 7.6.1), never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

struct Shared {
    /// `scheme://host[:port]` of the provider: the only place requests go.
    origin: String,
    style: KeyStyle,
    key: String,
    placeholder: String,
    client: reqwest::Client,
    sink: EventSink,
    /// Why the provider could not be reached, the last time it could not.
    unreachable: Arc<Mutex<Option<String>>>,
    /// Requests refused for a wrong key (logged once, so nobody can flood the job's log).
    refused: std::sync::atomic::AtomicU64,
}

/// A running key proxy. Stops when dropped.
pub struct KeyProxy {
    base_url: String,
    placeholder: String,
    address: SocketAddr,
    stop: CancellationToken,
    unreachable: Arc<Mutex<Option<String>>>,
}

impl KeyProxy {
    /// Starts a proxy for `upstream` (a base URL such as `https://api.openai.com/v1`).
    pub async fn start(upstream: &str, style: KeyStyle, key: &str, sink: &EventSink) -> Result<KeyProxy, String> {
        let url = reqwest::Url::parse(upstream).map_err(|e| format!("`{upstream}` is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("`{upstream}` is not an http(s) URL with a host"));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(format!("`{upstream}` must not carry credentials or a query"));
        }
        let origin = url.origin().ascii_serialization();
        let prefix = url.path().trim_end_matches('/').to_owned();
        let placeholder = format!("viberglass-placeholder-{:032x}", rand::random::<u128>());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the proxy's HTTP client: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen on loopback for the key proxy: {e}"))?;
        let address = listener.local_addr().map_err(|e| format!("the key proxy's address: {e}"))?;
        let unreachable = Arc::new(Mutex::new(None));
        let shared = Arc::new(Shared {
            origin,
            style,
            key: key.to_owned(),
            placeholder: placeholder.clone(),
            client,
            sink: sink.clone(),
            unreachable: unreachable.clone(),
            refused: std::sync::atomic::AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
            .with_state(shared);
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        Ok(KeyProxy { base_url: format!("http://{address}{prefix}"), placeholder, address, stop, unreachable })
    }

    /// The base URL the CLI is given: the proxy, with the provider's path.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The key the CLI is given, which only this proxy accepts.
    pub fn placeholder(&self) -> &str {
        &self.placeholder
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Why the provider could not be reached, if a request found it so: the
    /// worker names this as the cause of a failed run, whatever the CLI made of it.
    pub fn unreachable(&self) -> Option<String> {
        self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for KeyProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The key a request presents, in whichever header or query parameter the CLI used.
fn presented<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<&'a str> {
    let mut found: Vec<&str> = KEY_HEADERS
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .map(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or(value).trim())
        .collect();
    found.extend(query.into_iter().flat_map(|q| q.split('&')).filter_map(|pair| pair.strip_prefix("key=")));
    found
}

/// Compares in time independent of where the values first differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error and its causes, on one line (reqwest's own message names only the first).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    // Shaped like the providers' own errors, so the CLI shows the message.
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message, "code": kind}});
    (status, axum::Json(body)).into_response()
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let query = parts.uri.query();
    let keys = presented(&parts.headers, query);
    // Compared in full: a request must carry this run's placeholder and nothing else.
    if keys.is_empty() || keys.iter().any(|k| !same(k, &shared.placeholder)) {
        if shared.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            shared.sink.log(
                LogLevel::Warn,
                "key proxy: refused a request that did not present this run's key (further ones are not logged)",
            );
        }
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "the Viberglass key proxy accepts only the key it gave this run's agent".into(),
        );
    }
    let body = match axum::body::to_bytes(body, MAX_REQUEST).await {
        Ok(body) => body,
        Err(e) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("request body: {e}"));
        }
    };
    // Only origin-form targets (`/path`): `*` or anything else could change the host the key goes to.
    if !parts.uri.path().starts_with('/') {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "the request target must be a path".into());
    }
    let mut url = format!("{}{}", shared.origin, parts.uri.path());
    let kept: Vec<&str> = query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.starts_with("key=")).collect();
    if !kept.is_empty() {
        url.push('?');
        url.push_str(&kept.join("&"));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        let lower = name.as_str();
        if !KEY_HEADERS.contains(&lower) && !HOP_BY_HOP.contains(&lower) {
            headers.append(name.clone(), value.clone());
        }
    }
    let (name, value) = match shared.style {
        KeyStyle::Anthropic => ("x-api-key", shared.key.clone()),
        KeyStyle::Bearer => ("authorization", format!("Bearer {}", shared.key)),
        KeyStyle::Google => ("x-goog-api-key", shared.key.clone()),
    };
    let Ok(mut value) = HeaderValue::from_str(&value) else {
        return error(
            StatusCode::BAD_GATEWAY,
            "authentication_error",
            "the clanker's API key has characters no HTTP header may carry: fix the secret's value".into(),
        );
    };
    value.set_sensitive(true);
    headers.insert(HeaderName::from_static(name), value);
    // However the path reads, the request goes to the provider's origin or nowhere.
    match reqwest::Url::parse(&url) {
        Ok(parsed) if parsed.origin().ascii_serialization() == shared.origin => {}
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "the request target is not a path".into()),
    }
    let method = parts.method.clone();
    let answer = shared.client.request(method.clone(), &url).headers(headers).body(body).send().await;
    let upstream = match answer {
        Ok(upstream) => upstream,
        Err(e) => {
            let message = format!("the model API at {} cannot be reached: {}", shared.origin, causes(&e));
            *shared.unreachable.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
            shared.sink.log(LogLevel::Warn, &format!("key proxy: {method} {}: {message}", parts.uri.path()));
            return error(StatusCode::BAD_GATEWAY, "api_error", message);
        }
    };
    let status = upstream.status();
    if status.is_client_error() || status.is_server_error() {
        shared.sink.log(LogLevel::Warn, &format!("model API: {method} {} answered {status}", parts.uri.path()));
    } else {
        shared.sink.log(LogLevel::Debug, &format!("model API: {method} {} answered {status}", parts.uri.path()));
    }
    let mut response = Response::builder().status(status);
    for (name, value) in upstream.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }
    // Streamed through as it arrives (server-sent events), never buffered.
    let stream = futures::stream::unfold(Some(upstream), |upstream| async move {
        let mut upstream = upstream?;
        match upstream.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(upstream))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, "api_error", format!("the model API's answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider that echoes what it was sent: path, query and the key headers.
    async fn echo() -> (SocketAddr, CancellationToken) {
        async fn handle(request: Request) -> Response {
            let headers = request.headers();
            let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let body = serde_json::json!({
                "path": request.uri().path(),
                "query": request.uri().query(),
                "authorization": get("authorization"),
                "x-api-key": get("x-api-key"),
                "x-goog-api-key": get("x-goog-api-key"),
                "anthropic-version": get("anthropic-version"),
            });
            if request.uri().path() == "/redirect" {
                return Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", "http://127.0.0.1:9/elsewhere")
                    .body(Body::empty())
                    .unwrap();
            }
            if request.uri().path() == "/stream" {
                let chunks = futures::stream::iter(
                    ["data: one\n\n", "data: two\n\n"].map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c))),
                );
                return Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(chunks))
                    .unwrap();
            }
            axum::Json(body).into_response()
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let app = axum::Router::new().fallback(handle);
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        (address, stop)
    }

    fn sink() -> EventSink {
        EventSink::detached()
    }

    #[tokio::test]
    async fn each_style_gets_the_real_key_and_the_agent_only_a_placeholder() {
        let (provider, _stop) = echo().await;
        let client = reqwest::Client::new();
        for (style, header) in [
            (KeyStyle::Anthropic, "x-api-key"),
            (KeyStyle::Bearer, "authorization"),
            (KeyStyle::Google, "x-goog-api-key"),
        ] {
            let proxy = KeyProxy::start(&format!("http://{provider}/v1"), style, "sk-real", &sink()).await.unwrap();
            assert!(proxy.base_url().ends_with("/v1"), "{}", proxy.base_url());
            assert!(!proxy.placeholder().contains("sk-real"));
            let request = client.post(format!("{}/messages?alt=sse", proxy.base_url()));
            let request = match style {
                KeyStyle::Anthropic => request.header("x-api-key", proxy.placeholder()),
                KeyStyle::Bearer => request.bearer_auth(proxy.placeholder()),
                KeyStyle::Google => request.header("x-goog-api-key", proxy.placeholder()),
            };
            let seen: serde_json::Value = request
                .header("anthropic-version", "2023-06-01")
                .body("{}")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let expected = if style == KeyStyle::Bearer { "Bearer sk-real" } else { "sk-real" };
            assert_eq!(seen[header], expected, "{style:?}: {seen}");
            assert_eq!(seen["path"], "/v1/messages");
            assert_eq!(seen["query"], "alt=sse");
            assert_eq!(seen["anthropic-version"], "2023-06-01", "other headers pass through");
            for other in ["x-api-key", "authorization", "x-goog-api-key"].iter().filter(|h| **h != header) {
                assert_eq!(seen[*other], "", "{style:?}: no placeholder is forwarded in {other}");
            }
        }
    }

    #[tokio::test]
    async fn a_key_in_the_query_is_replaced_for_google() {
        let (provider, _stop) = echo().await;
        let proxy = KeyProxy::start(&format!("http://{provider}"), KeyStyle::Google, "g-real", &sink()).await.unwrap();
        let url =
            format!("{}/v1beta/models/m:streamGenerateContent?key={}&alt=sse", proxy.base_url(), proxy.placeholder());
        let seen: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert_eq!(seen["query"], "alt=sse", "{seen}");
        assert_eq!(seen["x-goog-api-key"], "g-real");
    }

    #[tokio::test]
    async fn requests_without_this_runs_placeholder_are_refused() {
        let (provider, _stop) = echo().await;
        let proxy = KeyProxy::start(&format!("http://{provider}"), KeyStyle::Bearer, "sk-real", &sink()).await.unwrap();
        let client = reqwest::Client::new();
        let url = format!("{}/v1/responses", proxy.base_url());
        let none = client.post(&url).send().await.unwrap();
        assert_eq!(none.status(), 401);
        let wrong = client.post(&url).bearer_auth("viberglass-placeholder-0000").send().await.unwrap();
        assert_eq!(wrong.status(), 401);
        let text = wrong.text().await.unwrap();
        assert!(!text.contains("sk-real") && text.contains("key proxy"), "{text}");
        // Two keys, one of them right, is still refused.
        let mixed =
            client.post(&url).bearer_auth(proxy.placeholder()).header("x-api-key", "stolen").send().await.unwrap();
        assert_eq!(mixed.status(), 401);
    }

    #[tokio::test]
    async fn redirects_go_back_to_the_cli_and_streams_stream() {
        let (provider, _stop) = echo().await;
        let proxy = KeyProxy::start(&format!("http://{provider}"), KeyStyle::Bearer, "sk-real", &sink()).await.unwrap();
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let redirected =
            client.get(format!("{}/redirect", proxy.base_url())).bearer_auth(proxy.placeholder()).send().await.unwrap();
        assert_eq!(redirected.status(), 307);
        assert_eq!(redirected.headers()["location"], "http://127.0.0.1:9/elsewhere");
        let streamed =
            client.get(format!("{}/stream", proxy.base_url())).bearer_auth(proxy.placeholder()).send().await.unwrap();
        assert_eq!(streamed.headers()["content-type"], "text/event-stream");
        assert_eq!(streamed.text().await.unwrap(), "data: one\n\ndata: two\n\n");
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_a_clear_bad_gateway() {
        let proxy = KeyProxy::start("http://127.0.0.1:9", KeyStyle::Anthropic, "sk-real", &sink()).await.unwrap();
        let answer = reqwest::Client::new()
            .post(format!("{}/v1/messages", proxy.base_url()))
            .header("x-api-key", proxy.placeholder())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 502);
        let text = answer.text().await.unwrap();
        assert!(text.contains("cannot be reached") && !text.contains("sk-real"), "{text}");
        assert!(proxy.unreachable().unwrap().contains("127.0.0.1:9"), "{:?}", proxy.unreachable());
    }

    #[tokio::test]
    async fn bad_upstreams_are_refused_at_start() {
        for bad in ["not a url", "ftp://host/x", "https://user:pw@host/v1", "https://host/v1?key=x"] {
            assert!(KeyProxy::start(bad, KeyStyle::Bearer, "k", &sink()).await.is_err(), "{bad}");
        }
    }
}
