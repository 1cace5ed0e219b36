//! A webhook sender that signs and labels deliveries exactly as each provider
//! does, and the recorded sample payloads (`crates/integrations/samples/`)
//! with the fields a test sets.

use serde_json::{Value, json};
pub use viberglass_integrations::inbound::sign;

/// A recorded sample payload by name (e.g. `github-issues-opened`).
pub fn sample(name: &str) -> Value {
    let text = match name {
        "github-issues-opened" => include_str!("../../integrations/samples/github-issues-opened.json"),
        "github-issues-labeled" => include_str!("../../integrations/samples/github-issues-labeled.json"),
        "github-issues-edited" => include_str!("../../integrations/samples/github-issues-edited.json"),
        "github-issues-closed" => include_str!("../../integrations/samples/github-issues-closed.json"),
        "github-issue_comment-created" => include_str!("../../integrations/samples/github-issue_comment-created.json"),
        "gitlab-issue-hook" => include_str!("../../integrations/samples/gitlab-issue-hook.json"),
        "gitlab-note-hook-issue" => include_str!("../../integrations/samples/gitlab-note-hook-issue.json"),
        "jira-issue-created" => include_str!("../../integrations/samples/jira-issue-created.json"),
        "jira-issue-updated" => include_str!("../../integrations/samples/jira-issue-updated.json"),
        "jira-comment-created" => include_str!("../../integrations/samples/jira-comment-created.json"),
        "shortcut-story-create" => include_str!("../../integrations/samples/shortcut-story-create.json"),
        "shortcut-story-update" => include_str!("../../integrations/samples/shortcut-story-update.json"),
        "shortcut-comment-create" => include_str!("../../integrations/samples/shortcut-comment-create.json"),
        "linear-issue-create" => include_str!("../../integrations/samples/linear-issue-create.json"),
        "linear-issue-update" => include_str!("../../integrations/samples/linear-issue-update.json"),
        "linear-comment-create" => include_str!("../../integrations/samples/linear-comment-create.json"),
        other => panic!("no sample payload {other}"),
    };
    serde_json::from_str(text).unwrap()
}

/// Sets `path` (slash-separated JSON pointer without the leading slash) in `value`.
pub fn set(value: &mut Value, path: &str, to: Value) {
    let pointer = format!("/{path}");
    match value.pointer_mut(&pointer) {
        Some(slot) => *slot = to,
        None => {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            value.pointer_mut(if parent.is_empty() { "" } else { parent }).expect("parent exists")[key] = to;
        }
    }
}

/// One delivery: the body as sent and its headers.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Delivery {
    /// Sends it to `url` (the server's address plus the configuration's path).
    pub async fn send(&self, client: &reqwest::Client, url: &str) -> reqwest::Response {
        let mut request = client.post(url).body(self.body.clone());
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        request.send().await.unwrap()
    }

    /// The same delivery with a header replaced (a wrong signature, another delivery id).
    pub fn with_header(mut self, name: &str, value: &str) -> Delivery {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

fn json_headers(extra: Vec<(&str, String)>) -> Vec<(String, String)> {
    let mut h = vec![("content-type".to_owned(), "application/json".to_owned())];
    h.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
    h
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// GitHub: `X-GitHub-Event`, `X-GitHub-Delivery` (a GUID), `X-Hub-Signature-256: sha256=<hex>`.
pub fn github(secret: &str, event: &str, payload: &Value) -> Delivery {
    let body = payload.to_string().into_bytes();
    let signature = format!("sha256={}", sign(secret, &body));
    Delivery {
        headers: json_headers(vec![
            ("x-github-event", event.to_owned()),
            ("x-github-delivery", id()),
            ("x-hub-signature-256", signature),
            ("user-agent", "GitHub-Hookshot/044aadd".to_owned()),
        ]),
        body,
    }
}

/// GitLab: `X-Gitlab-Event`, the secret itself in `X-Gitlab-Token`, `Idempotency-Key` and `X-Gitlab-Event-UUID`.
pub fn gitlab(secret: &str, event: &str, payload: &Value) -> Delivery {
    Delivery {
        body: payload.to_string().into_bytes(),
        headers: json_headers(vec![
            ("x-gitlab-event", event.to_owned()),
            ("x-gitlab-token", secret.to_owned()),
            ("idempotency-key", id()),
            ("x-gitlab-event-uuid", id()),
            ("user-agent", "GitLab/17.5.0".to_owned()),
        ]),
    }
}

/// Jira: `X-Hub-Signature: sha256=<hex>` when a secret is set, `X-Atlassian-Webhook-Identifier`.
pub fn jira(secret: Option<&str>, payload: &Value) -> Delivery {
    let body = payload.to_string().into_bytes();
    let mut extra = vec![("x-atlassian-webhook-identifier", id())];
    if let Some(secret) = secret {
        extra.push(("x-hub-signature", format!("sha256={}", sign(secret, &body))));
    }
    Delivery { headers: json_headers(extra), body }
}

/// Shortcut: `Payload-Signature: <hex>`; the delivery's id is the payload's `id`.
pub fn shortcut(secret: &str, payload: &Value) -> Delivery {
    let mut payload = payload.clone();
    payload["id"] = json!(id());
    let body = payload.to_string().into_bytes();
    Delivery { headers: json_headers(vec![("payload-signature", sign(secret, &body))]), body }
}

/// Linear: `Linear-Signature: <hex>`, `Linear-Delivery`, `Linear-Event`, and `webhookTimestamp` (ms) set to now.
pub fn linear(secret: &str, payload: &Value) -> Delivery {
    let mut payload = payload.clone();
    payload["webhookTimestamp"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
    let event = payload["type"].as_str().unwrap_or("Issue").to_owned();
    let body = payload.to_string().into_bytes();
    Delivery {
        headers: json_headers(vec![
            ("linear-signature", sign(secret, &body)),
            ("linear-delivery", id()),
            ("linear-event", event),
        ]),
        body,
    }
}

/// A custom sender: `X-Webhook-Signature-256: sha256=<hex>` when `secret` is given.
pub fn custom(secret: Option<&str>, payload: &Value) -> Delivery {
    let body = payload.to_string().into_bytes();
    let mut extra = Vec::new();
    if let Some(secret) = secret {
        extra.push(("x-webhook-signature-256", format!("sha256={}", sign(secret, &body))));
    }
    Delivery { headers: json_headers(extra), body }
}
