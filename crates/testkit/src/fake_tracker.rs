//! A fake issue tracker speaking the subset of Jira (REST v2 comments),
//! Shortcut (REST v3 story comments) and Linear (GraphQL `commentCreate`)
//! that feedback uses, with state: issues, their comments, one token per
//! provider, and failures on demand. It refuses as they do: Jira's 401
//! without credentials and 404 `errorMessages` for an unknown issue;
//! Shortcut's 401 and 404 `{message}`; Linear's GraphQL errors (an
//! authentication error with HTTP 400, an unknown issue as an `errors` entry
//! with HTTP 200).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tracker {
    Jira,
    Shortcut,
    Linear,
}

#[derive(Default)]
struct State_ {
    tokens: BTreeMap<Tracker, String>,
    /// (tracker, issue key/id) → comments.
    issues: BTreeMap<(Tracker, String), Vec<String>>,
    failures: Vec<u16>,
    requests: Vec<String>,
}

/// A running fake tracker. Stops when dropped.
pub struct FakeTracker {
    pub address: SocketAddr,
    state: Arc<Mutex<State_>>,
    stop: tokio_util::sync::CancellationToken,
}

impl FakeTracker {
    pub async fn start() -> FakeTracker {
        let state = Arc::new(Mutex::new(State_::default()));
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let (address, stop) = crate::serve_fake(app).await;
        FakeTracker { address, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The token `tracker` accepts (Jira: `email:api-token`, sent as Basic).
    pub fn set_token(&self, tracker: Tracker, token: &str) {
        self.state.lock().unwrap().tokens.insert(tracker, token.to_owned());
    }

    pub fn add_issue(&self, tracker: Tracker, key: &str) {
        self.state.lock().unwrap().issues.entry((tracker, key.to_owned())).or_default();
    }

    pub fn comments(&self, tracker: Tracker, key: &str) -> Vec<String> {
        self.state.lock().unwrap().issues.get(&(tracker, key.to_owned())).cloned().unwrap_or_default()
    }

    /// The next calls answer these statuses, in order.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().failures.extend_from_slice(statuses);
    }

    /// `METHOD path` of every request.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeTracker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    State(state): State<Arc<Mutex<State_>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    s.requests.push(format!("{method} {}", uri.path()));
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let tracker = match segments.as_slice() {
        ["rest", "api", "2", "issue", _, "comment"] => Tracker::Jira,
        ["api", "v3", "stories", _, "comments"] => Tracker::Shortcut,
        ["graphql"] => Tracker::Linear,
        _ => return reply(StatusCode::NOT_FOUND, json!({"message": "Not found"})),
    };
    let expected = s.tokens.get(&tracker).cloned().unwrap_or_default();
    let presented = match tracker {
        Tracker::Jira => header(&headers, "authorization")
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).ok()?).ok()),
        Tracker::Shortcut => header(&headers, "shortcut-token").map(str::to_owned),
        Tracker::Linear => header(&headers, "authorization").map(str::to_owned),
    };
    if presented.as_deref() != Some(expected.as_str()) || expected.is_empty() {
        return match tracker {
            Tracker::Jira => reply(StatusCode::UNAUTHORIZED, json!({"errorMessages": ["You are not authenticated."]})),
            Tracker::Shortcut => reply(StatusCode::UNAUTHORIZED, json!({"message": "Unauthorized"})),
            Tracker::Linear => reply(
                StatusCode::BAD_REQUEST,
                json!({"errors": [{"message": "Authentication required, not authenticated",
                    "extensions": {"type": "authentication error", "code": "AUTHENTICATION_ERROR"}}]}),
            ),
        };
    }
    if !s.failures.is_empty() {
        let status = s.failures.remove(0);
        return reply(StatusCode::from_u16(status).unwrap(), json!({"message": "try again later"}));
    }
    match tracker {
        Tracker::Jira | Tracker::Shortcut => {
            let key = segments[if tracker == Tracker::Jira { 4 } else { 3 }].to_owned();
            let text = input[if tracker == Tracker::Jira { "body" } else { "text" }].as_str().map(str::to_owned);
            let Some(comments) = s.issues.get_mut(&(tracker, key)) else {
                return match tracker {
                    Tracker::Jira => reply(
                        StatusCode::NOT_FOUND,
                        json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}}),
                    ),
                    _ => reply(StatusCode::NOT_FOUND, json!({"message": "Resource not found."})),
                };
            };
            let Some(text) = text else {
                return reply(StatusCode::BAD_REQUEST, json!({"errorMessages": ["Comment body can not be empty!"]}));
            };
            comments.push(text.clone());
            reply(StatusCode::CREATED, json!({"id": comments.len().to_string(), "body": text, "text": text}))
        }
        Tracker::Linear => {
            let query = input["query"].as_str().unwrap_or_default();
            if !query.contains("commentCreate") {
                return reply(StatusCode::OK, json!({"errors": [{"message": "Unknown operation"}]}));
            }
            let vars = &input["variables"]["input"];
            let (Some(issue), Some(text)) = (vars["issueId"].as_str(), vars["body"].as_str()) else {
                return reply(
                    StatusCode::OK,
                    json!({"errors": [{"message": "Argument Validation Error",
                    "extensions": {"type": "invalid input"}}], "data": null}),
                );
            };
            let Some(comments) = s.issues.get_mut(&(Tracker::Linear, issue.to_owned())) else {
                return reply(
                    StatusCode::OK,
                    json!({"errors": [{"message": "Entity not found: Issue",
                    "extensions": {"type": "invalid input", "code": "INPUT_ERROR"}}], "data": null}),
                );
            };
            comments.push(text.to_owned());
            reply(
                StatusCode::OK,
                json!({"data": {"commentCreate": {"success": true, "comment": {"id": format!("c{}", comments.len())}}}}),
            )
        }
    }
}
