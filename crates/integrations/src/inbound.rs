//! Inbound webhooks: each provider's signature check and payload parser,
//! written from its public documentation. Pure functions over the request's
//! headers and raw body: no I/O, no panics, whatever arrives.

use hmac::{KeyInit, Mac};
use http::HeaderMap;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use viberglass_domain::WebhookProvider;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The message for a signature that does not match.
pub const SECRET_MISMATCH: &str = "the shared secret differs from the sender's: rotate it on both ends, then redeliver";
/// The message for an unsigned or form-encoded body on a signed custom configuration.
pub const EXPECTED_SIGNED_JSON: &str =
    "expected signed JSON: enable signing upstream, or turn signing off for this integration";
/// How far a Linear delivery's `webhookTimestamp` may be from when it arrived.
pub const LINEAR_FRESHNESS_SECS: i64 = 60;

/// A delivery refused before it was read: the HTTP status to answer and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub message: String,
}

fn reject(status: u16, message: impl Into<String>) -> Rejection {
    Rejection { status, message: message.into() }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// Whether the body is form-encoded (or multipart), by its content type.
pub fn is_form(headers: &HeaderMap) -> bool {
    header(headers, "content-type").is_some_and(|ct| {
        let ct = ct.to_ascii_lowercase();
        ct.starts_with("application/x-www-form-urlencoded") || ct.starts_with("multipart/")
    })
}

/// `HMAC-SHA256(secret, body)` as lowercase hex.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a presented hex HMAC (with or without `sha256=`) in constant time.
fn hmac_matches(secret: &str, body: &[u8], presented: &str) -> bool {
    let presented = presented.strip_prefix("sha256=").unwrap_or(presented).trim();
    let Ok(bytes) = hex::decode(presented) else { return false };
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

/// Compares two secrets in constant time (over their digests, so lengths do not show either).
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// The header each provider signs with.
pub fn signature_header(provider: WebhookProvider) -> &'static str {
    match provider {
        WebhookProvider::Github => "x-hub-signature-256",
        WebhookProvider::Gitlab => "x-gitlab-token",
        WebhookProvider::Jira => "x-hub-signature",
        WebhookProvider::Shortcut => "payload-signature",
        WebhookProvider::Linear => "linear-signature",
        WebhookProvider::Custom => "x-webhook-signature-256",
    }
}

/// Checks that a delivery comes from the holder of `secret`, as the provider signs: GitHub
/// `X-Hub-Signature-256: sha256=<hex>`, GitLab's `X-Gitlab-Token` (the secret itself), Jira
/// `X-Hub-Signature: sha256=<hex>`, Shortcut `Payload-Signature: <hex>`, Linear `Linear-Signature: <hex>`
/// with `webhookTimestamp` within a minute of `received_at`, custom `X-Webhook-Signature-256: sha256=<hex>`.
/// An unsigned delivery passes only where `require_signature` is off.
pub fn verify(
    provider: WebhookProvider,
    secret: &str,
    require_signature: bool,
    headers: &HeaderMap,
    body: &[u8],
    received_at: OffsetDateTime,
) -> Result<(), Rejection> {
    let name = signature_header(provider);
    if provider == WebhookProvider::Custom && require_signature && is_form(headers) {
        return Err(reject(415, EXPECTED_SIGNED_JSON));
    }
    match header(headers, name) {
        None if !require_signature => {}
        None if provider == WebhookProvider::Custom => return Err(reject(401, EXPECTED_SIGNED_JSON)),
        None => {
            return Err(reject(
                401,
                format!(
                    "the delivery is not signed (no {name} header): set this configuration's secret as the webhook's \
                     secret in {provider}, then redeliver"
                ),
            ));
        }
        Some(presented) => {
            let ok = match provider {
                WebhookProvider::Gitlab => same_secret(presented, secret),
                _ => hmac_matches(secret, body, presented),
            };
            if !ok {
                return Err(reject(401, SECRET_MISMATCH));
            }
        }
    }
    if provider == WebhookProvider::Linear {
        let stamp = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("webhookTimestamp")?.as_i64());
        let Some(stamp) = stamp else {
            return Err(reject(400, "the payload has no numeric webhookTimestamp (milliseconds): is this Linear?"));
        };
        let skew = (received_at.unix_timestamp() * 1000).checked_sub(stamp).map_or(i64::MAX, |d| d / 1000);
        if skew.abs() > LINEAR_FRESHNESS_SECS {
            return Err(reject(
                401,
                format!(
                    "stale delivery: its webhookTimestamp is {skew} s from when it arrived (at most \
                     {LINEAR_FRESHNESS_SECS} s): check the sender's and this server's clocks; a replayed delivery is \
                     refused"
                ),
            ));
        }
    }
    Ok(())
}

/// The delivery's id: the provider's header (GitHub `X-GitHub-Delivery`, GitLab `Idempotency-Key` or
/// `X-Gitlab-Event-UUID`, Jira `X-Atlassian-Webhook-Identifier`, Linear `Linear-Delivery`, custom
/// `X-Webhook-Delivery` or `Idempotency-Key`, Shortcut's payload `id`), else `sha256:<hash of the body>`.
pub fn delivery_key(provider: WebhookProvider, headers: &HeaderMap, body: &[u8]) -> String {
    let names: &[&str] = match provider {
        WebhookProvider::Github => &["x-github-delivery"],
        // GitLab's Idempotency-Key is made once per event and kept by its retries; older versions send only
        // X-Gitlab-Event-UUID.
        WebhookProvider::Gitlab => &["idempotency-key", "x-gitlab-event-uuid"],
        WebhookProvider::Jira => &["x-atlassian-webhook-identifier"],
        WebhookProvider::Shortcut => &[],
        WebhookProvider::Linear => &["linear-delivery"],
        WebhookProvider::Custom => &["x-webhook-delivery", "idempotency-key"],
    };
    let usable = |v: &str| v.len() <= 200 && v.chars().all(|c| c.is_ascii_graphic());
    if let Some(found) = names.iter().find_map(|n| header(headers, n)).filter(|v| usable(v)) {
        return found.to_owned();
    }
    if provider == WebhookProvider::Shortcut
        && let Some(id) =
            serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("id")?.as_str().map(str::to_owned))
        && usable(&id)
    {
        return format!("payload:{id}");
    }
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// The headers a delivery keeps for redelivery and for people reading it (never an auth header).
pub fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    const KEEP: &[&str] = &[
        "content-type",
        "user-agent",
        "x-github-event",
        "x-github-delivery",
        "x-hub-signature-256",
        "x-hub-signature",
        "x-gitlab-event",
        "x-gitlab-event-uuid",
        "x-gitlab-token",
        "idempotency-key",
        "x-atlassian-webhook-identifier",
        "payload-signature",
        "linear-signature",
        "linear-delivery",
        "linear-event",
        "x-webhook-signature-256",
        "x-webhook-delivery",
    ];
    KEEP.iter()
        .filter_map(|n| {
            header(headers, n).map(|v| {
                // GitLab's token is the shared secret itself: only its digest is kept (enough to check it again on
                // redelivery, see [`restore_gitlab_token`]).
                let kept = if *n == "x-gitlab-token" { token_digest(v) } else { v.chars().take(500).collect() };
                ((*n).to_owned(), kept)
            })
        })
        .collect()
}

fn token_digest(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// For a stored GitLab delivery: puts `secret` back as its token when the kept digest is the secret's (so the
/// redelivery passes exactly when the original token was the current secret).
pub fn restore_gitlab_token(headers: &mut HeaderMap, secret: &str) {
    let matches = header(headers, "x-gitlab-token")
        .is_some_and(|kept| bool::from(kept.as_bytes().ct_eq(token_digest(secret).as_bytes())));
    if matches && let Ok(value) = http::HeaderValue::from_str(secret) {
        headers.insert("x-gitlab-token", value);
    }
}

/// A payload that could not be read: which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParseError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ParseError {
    ParseError { field: field.to_owned(), message: message.into() }
}

/// Where a ticket came from in its source, and how to reach it again for feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRef {
    /// Stable id in the source: `owner/repo#12`, `group/project#3`, `PROJ-7`, a Shortcut story id, a Linear
    /// issue id.
    pub external_id: String,
    /// What feedback needs to reach it (repository and number, Jira key and site, …).
    pub locator: Value,
}

/// What happened to an issue.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Opened,
    Edited,
    Closed,
    /// A label was added (its name).
    Labeled(String),
}

/// An issue filed or changed in the source. Fields a partial update does not carry are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct IssueEvent {
    pub change: Change,
    pub source: SourceRef,
    pub title: Option<String>,
    pub description: Option<String>,
    pub labels: Option<Vec<String>>,
    pub url: Option<String>,
    /// An explicit severity (custom `severity`, Jira priority, Linear priority), as a word.
    pub severity: Option<String>,
    pub category: Option<String>,
    /// Context for the ticket's metadata (reporter, source ids…).
    pub metadata: Map<String, Value>,
}

/// A comment on a source issue.
#[derive(Debug, Clone, PartialEq)]
pub struct CommentEvent {
    pub source: SourceRef,
    pub body: String,
    pub author: Option<String>,
    /// Written by a bot or an app (never a trigger: our own feedback comes back this way).
    pub by_bot: bool,
    /// Written by someone the source counts as a member (GitHub: owner, member or collaborator); trackers
    /// (Jira, Shortcut, Linear) count as members. GitLab notes carry no role: `false`, and the receiver asks
    /// GitLab about `author_id`.
    pub trusted: bool,
    /// The author's numeric id (GitLab), for a membership check.
    pub author_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to do, and why.
    Ignore(String),
    Issue(Box<IssueEvent>),
    Comment(CommentEvent),
}

/// A delivery read: its event name (as [`WebhookProvider::events`] names them) and what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub event: String,
    pub action: Action,
}

fn ignore(event: impl Into<String>, why: impl Into<String>) -> Result<Inbound, ParseError> {
    Ok(Inbound { event: event.into(), action: Action::Ignore(why.into()) })
}

/// Reads `path` (dotted) from `v`.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key)).filter(|v| !v.is_null())
}

fn text(v: &Value, path: &str) -> Result<String, ParseError> {
    match at(v, path) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad(path, format!("must be a string, not {}", kind(other)))),
        None => Err(bad(path, "is missing")),
    }
}

fn opt_text(v: &Value, path: &str) -> Option<String> {
    at(v, path).and_then(Value::as_str).map(str::to_owned)
}

fn number(v: &Value, path: &str) -> Result<u64, ParseError> {
    match at(v, path) {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad(path, "must be a positive whole number")),
        Some(Value::String(s)) => s.parse().map_err(|_| bad(path, "must be a positive whole number")),
        Some(other) => Err(bad(path, format!("must be a number, not {}", kind(other)))),
        None => Err(bad(path, "is missing")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Names from an array of label objects (`name` or `title`) or strings.
fn label_names(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| match l {
            Value::String(s) => Some(s.clone()),
            other => other.get("name").or_else(|| other.get("title")).and_then(Value::as_str).map(str::to_owned),
        })
        .take(100)
        .collect()
}

fn json_body(body: &[u8]) -> Result<Value, ParseError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad("body", format!("is not JSON ({e}): send the event as application/json")))?;
    if !value.is_object() {
        return Err(bad("body", format!("must be a JSON object, not {}", kind(&value))));
    }
    Ok(value)
}

/// Reads a delivery's payload.
pub fn parse(provider: WebhookProvider, headers: &HeaderMap, body: &[u8]) -> Result<Inbound, ParseError> {
    match provider {
        WebhookProvider::Github => github(headers, body),
        WebhookProvider::Gitlab => gitlab(headers, body),
        WebhookProvider::Jira => jira(body),
        WebhookProvider::Shortcut => shortcut(body),
        WebhookProvider::Linear => linear(body),
        WebhookProvider::Custom => custom(body),
    }
}

fn github(headers: &HeaderMap, body: &[u8]) -> Result<Inbound, ParseError> {
    let event = header(headers, "x-github-event").ok_or_else(|| bad("X-GitHub-Event", "header is missing"))?;
    // GitHub can send `application/x-www-form-urlencoded` with the JSON in `payload`.
    let form_payload;
    let body = if is_form(headers) {
        form_payload = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| bad("payload", "the form-encoded body has no `payload` field"))?;
        form_payload.as_bytes()
    } else {
        body
    };
    let v = json_body(body)?;
    let action = opt_text(&v, "action").unwrap_or_default();
    let name = format!("{event}.{action}");
    match event {
        "ping" => return ignore("ping", "ping: GitHub checked the webhook; it is set up"),
        "issues" | "issue_comment" => {}
        other => {
            return ignore(other, format!("`{other}` events are not handled: send only Issues and Issue comments"));
        }
    }
    let repository = text(&v, "repository.full_name")?;
    let number = number(&v, "issue.number")?;
    let source = SourceRef {
        external_id: format!("{repository}#{number}"),
        locator: serde_json::json!({"repository": repository, "number": number}),
    };
    if event == "issue_comment" {
        if action != "created" {
            return ignore(name, format!("comment {action}: only new comments can start runs"));
        }
        if at(&v, "issue.pull_request").is_some() {
            return ignore(name, "a comment on a pull request, not an issue");
        }
        let by_bot = opt_text(&v, "comment.user.type").is_some_and(|t| t == "Bot")
            || at(&v, "comment.performed_via_github_app").is_some();
        return Ok(Inbound {
            event: name,
            action: Action::Comment(CommentEvent {
                source,
                body: text(&v, "comment.body")?,
                author: opt_text(&v, "comment.user.login"),
                by_bot,
                trusted: matches!(
                    opt_text(&v, "comment.author_association").as_deref(),
                    Some("OWNER" | "MEMBER" | "COLLABORATOR")
                ),
                author_id: None,
            }),
        });
    }
    let change = match action.as_str() {
        "opened" => Change::Opened,
        "edited" => Change::Edited,
        "closed" => Change::Closed,
        "labeled" => Change::Labeled(text(&v, "label.name")?),
        other => return ignore(name, format!("issue {other}: not handled")),
    };
    if at(&v, "issue.pull_request").is_some() {
        return ignore(name, "a pull request, not an issue");
    }
    let labels = label_names(at(&v, "issue.labels"));
    let category = labels.iter().find_map(|l| category_from_label(l));
    let mut metadata = Map::new();
    if let Some(user) = opt_text(&v, "issue.user.login") {
        metadata.insert("reporter".into(), Value::String(user));
    }
    metadata.insert("github_issue".into(), Value::String(source.external_id.clone()));
    Ok(Inbound {
        event: name,
        action: Action::Issue(Box::new(IssueEvent {
            change,
            source,
            title: Some(text(&v, "issue.title")?),
            description: Some(opt_text(&v, "issue.body").unwrap_or_default()),
            labels: Some(labels),
            url: opt_text(&v, "issue.html_url"),
            severity: None,
            category,
            metadata,
        })),
    })
}

fn gitlab(headers: &HeaderMap, body: &[u8]) -> Result<Inbound, ParseError> {
    let event = header(headers, "x-gitlab-event").unwrap_or_default().to_owned();
    let v = json_body(body)?;
    let kind = text(&v, "object_kind")?;
    let project = text(&v, "project.path_with_namespace")?;
    let project_id = at(&v, "project.id").and_then(Value::as_u64);
    match kind.as_str() {
        "issue" => {
            let action = opt_text(&v, "object_attributes.action").unwrap_or_else(|| "open".into());
            let name = format!("issue.{action}");
            let iid = number(&v, "object_attributes.iid")?;
            let source = SourceRef {
                external_id: format!("{project}#{iid}"),
                locator: serde_json::json!({"project": project, "project_id": project_id, "iid": iid}),
            };
            let change = match action.as_str() {
                "open" => Change::Opened,
                "update" => {
                    // A label added in this update counts as labeled.
                    let before = label_names(at(&v, "changes.labels.previous"));
                    let after = label_names(at(&v, "changes.labels.current"));
                    match after.into_iter().find(|l| !before.contains(l)) {
                        Some(added) => Change::Labeled(added),
                        None => Change::Edited,
                    }
                }
                "close" => Change::Closed,
                other => return ignore(name, format!("issue {other}: not handled")),
            };
            let labels = {
                let top = label_names(at(&v, "labels"));
                if top.is_empty() { label_names(at(&v, "object_attributes.labels")) } else { top }
            };
            let mut metadata = Map::new();
            if let Some(user) = opt_text(&v, "user.username") {
                metadata.insert("reporter".into(), Value::String(user));
            }
            metadata.insert("gitlab_issue".into(), Value::String(source.external_id.clone()));
            let category = labels.iter().find_map(|l| category_from_label(l));
            Ok(Inbound {
                event: name,
                action: Action::Issue(Box::new(IssueEvent {
                    change,
                    source,
                    title: Some(text(&v, "object_attributes.title")?),
                    description: Some(opt_text(&v, "object_attributes.description").unwrap_or_default()),
                    labels: Some(labels),
                    url: opt_text(&v, "object_attributes.url"),
                    severity: None,
                    category,
                    metadata,
                })),
            })
        }
        "note" => {
            let noteable = opt_text(&v, "object_attributes.noteable_type").unwrap_or_default();
            if noteable != "Issue" {
                return ignore(
                    format!("note.{}", noteable.to_lowercase()),
                    format!("a note on a {noteable}, not an issue"),
                );
            }
            let iid = number(&v, "issue.iid")?;
            let source = SourceRef {
                external_id: format!("{project}#{iid}"),
                locator: serde_json::json!({"project": project, "project_id": project_id, "iid": iid}),
            };
            let by_bot = at(&v, "user.bot").and_then(Value::as_bool).unwrap_or(false)
                || opt_text(&v, "user.username").is_some_and(|u| u.ends_with("_bot") || u.contains("-bot-"));
            Ok(Inbound {
                event: "note.issue".into(),
                action: Action::Comment(CommentEvent {
                    source,
                    body: text(&v, "object_attributes.note")?,
                    author: opt_text(&v, "user.username"),
                    by_bot,
                    trusted: false,
                    author_id: at(&v, "user.id")
                        .and_then(Value::as_u64)
                        .or_else(|| at(&v, "object_attributes.author_id").and_then(Value::as_u64)),
                }),
            })
        }
        other => ignore(
            if event.is_empty() { other.to_owned() } else { event },
            format!("`{other}` events are not handled: send only Issue and Note events"),
        ),
    }
}

/// Plain text from Jira's description or comment body: a string (API v2) or an Atlassian Document (v3).
fn jira_text(v: Option<&Value>) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => out.push_str(s),
            Value::Object(o) => {
                if let Some(Value::String(t)) = o.get("text") {
                    out.push_str(t);
                }
                if let Some(Value::Array(content)) = o.get("content") {
                    for c in content {
                        walk(c, out);
                    }
                }
                if matches!(o.get("type").and_then(Value::as_str), Some("paragraph" | "heading" | "hardBreak")) {
                    out.push('\n');
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    if let Some(v) = v {
        walk(v, &mut out);
    }
    out.trim_end().to_owned()
}

fn jira_source(v: &Value) -> Result<SourceRef, ParseError> {
    let key = text(v, "issue.key")?;
    let site = opt_text(v, "issue.self").and_then(|s| s.split("/rest/").next().map(str::to_owned));
    Ok(SourceRef { external_id: key.clone(), locator: serde_json::json!({"key": key, "site": site}) })
}

fn jira(body: &[u8]) -> Result<Inbound, ParseError> {
    let v = json_body(body)?;
    let event = text(&v, "webhookEvent")?;
    match event.as_str() {
        "jira:issue_created" | "jira:issue_updated" => {
            let source = jira_source(&v)?;
            let labels = label_names(at(&v, "issue.fields.labels"));
            let added = at(&v, "changelog.items").and_then(Value::as_array).and_then(|items| {
                items.iter().find(|i| i.get("field").and_then(Value::as_str) == Some("labels")).and_then(|i| {
                    let from: Vec<&str> =
                        i.get("fromString").and_then(Value::as_str).unwrap_or("").split(' ').collect();
                    i.get("toString")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .split(' ')
                        .find(|l| !l.is_empty() && !from.contains(l))
                        .map(str::to_owned)
                })
            });
            let change = match (event.as_str(), added) {
                ("jira:issue_created", _) => Change::Opened,
                (_, Some(label)) => Change::Labeled(label),
                _ => Change::Edited,
            };
            let url = source.locator["site"].as_str().map(|site| format!("{site}/browse/{}", source.external_id));
            let mut metadata = Map::new();
            if let Some(user) =
                opt_text(&v, "issue.fields.reporter.displayName").or_else(|| opt_text(&v, "user.displayName"))
            {
                metadata.insert("reporter".into(), Value::String(user));
            }
            if let Some(kind) = opt_text(&v, "issue.fields.issuetype.name") {
                metadata.insert("jira_issue_type".into(), Value::String(kind));
            }
            metadata.insert("jira_issue".into(), Value::String(source.external_id.clone()));
            let category = opt_text(&v, "issue.fields.issuetype.name")
                .and_then(|t| category_from_label(&t))
                .or_else(|| labels.iter().find_map(|l| category_from_label(l)));
            Ok(Inbound {
                event,
                action: Action::Issue(Box::new(IssueEvent {
                    change,
                    title: Some(text(&v, "issue.fields.summary")?),
                    description: Some(jira_text(at(&v, "issue.fields.description"))),
                    labels: Some(labels),
                    url,
                    severity: opt_text(&v, "issue.fields.priority.name"),
                    category,
                    metadata,
                    source,
                })),
            })
        }
        "comment_created" => {
            let source = jira_source(&v)?;
            let body = jira_text(at(&v, "comment.body"));
            if at(&v, "comment.body").is_none() {
                return Err(bad("comment.body", "is missing"));
            }
            let author = opt_text(&v, "comment.author.displayName");
            let by_bot = opt_text(&v, "comment.author.accountType").is_some_and(|t| t == "app");
            Ok(Inbound {
                event,
                action: Action::Comment(CommentEvent {
                    source,
                    body,
                    author,
                    by_bot,
                    // A Jira Service Management customer is outside the team.
                    trusted: opt_text(&v, "comment.author.accountType").is_none_or(|t| t != "customer"),
                    author_id: None,
                }),
            })
        }
        other => {
            ignore(other, format!("`{other}` events are not handled: send issue created/updated and comment created"))
        }
    }
}

fn shortcut(body: &[u8]) -> Result<Inbound, ParseError> {
    let v = json_body(body)?;
    let actions = at(&v, "actions").and_then(Value::as_array).ok_or_else(|| bad("actions", "is missing"))?;
    let label_name = |id: &Value| -> Option<String> {
        at(&v, "references")?.as_array()?.iter().find_map(|r| {
            (r.get("entity_type")?.as_str()? == "label" && r.get("id")? == id)
                .then(|| r.get("name")?.as_str().map(str::to_owned))
                .flatten()
        })
    };
    let pick = |entity: &str, verbs: &[&str]| {
        actions.iter().find(|a| {
            a.get("entity_type").and_then(Value::as_str) == Some(entity)
                && a.get("action").and_then(Value::as_str).is_some_and(|v| verbs.contains(&v))
        })
    };
    // A comment delivery also carries the story's update (its `comment_ids`): the comment is what counts.
    let relevant = pick("story-comment", &["create"]).or_else(|| pick("story", &["create", "update"]));
    let Some(a) = relevant else {
        let first = actions
            .first()
            .map(|a| {
                format!(
                    "{}.{}",
                    opt_text(a, "entity_type").unwrap_or_default(),
                    opt_text(a, "action").unwrap_or_default()
                )
            })
            .unwrap_or_default();
        return ignore(first, "no story create/update or comment in this delivery");
    };
    let entity = text(a, "entity_type")?;
    let action = text(a, "action")?;
    let event = format!("{entity}.{action}");
    if entity == "story-comment" {
        let comment_id = at(a, "id").cloned();
        let story = at(a, "story_id")
            .cloned()
            .or_else(|| {
                // The story the comment was added to: the sibling story action whose comment_ids gained it.
                actions.iter().find_map(|s| {
                    let adds = at(s, "changes.comment_ids.adds")?.as_array()?;
                    (s.get("entity_type")?.as_str()? == "story" && adds.iter().any(|c| Some(c) == comment_id.as_ref()))
                        .then(|| s.get("id").cloned())
                        .flatten()
                })
            })
            .ok_or_else(|| bad("actions[].story_id", "is missing (and no story action lists the comment)"))?;
        let story = match &story {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => return Err(bad("actions[].story_id", format!("must be a number, not {}", kind(other)))),
        };
        let source = SourceRef { external_id: story.clone(), locator: serde_json::json!({"story_id": story}) };
        return Ok(Inbound {
            event,
            action: Action::Comment(CommentEvent {
                source,
                body: text(a, "text")?,
                author: opt_text(a, "author_id").or_else(|| opt_text(&v, "member_id")),
                by_bot: false,
                trusted: true,
                author_id: None,
            }),
        });
    }
    let id = number(a, "id")?.to_string();
    let source = SourceRef { external_id: id.clone(), locator: serde_json::json!({"story_id": id}) };
    let labels: Option<Vec<String>> = match at(a, "label_ids").and_then(Value::as_array) {
        Some(ids) => Some(ids.iter().filter_map(label_name).collect()),
        None if action == "create" => Some(Vec::new()),
        None => at(a, "changes.label_ids.adds")
            .and_then(Value::as_array)
            .map(|adds| adds.iter().filter_map(label_name).collect::<Vec<_>>())
            .filter(|l| !l.is_empty()),
    };
    let added =
        at(a, "changes.label_ids.adds").and_then(Value::as_array).and_then(|adds| adds.first()).and_then(label_name);
    let change = match (action.as_str(), added) {
        ("create", _) => Change::Opened,
        (_, Some(label)) => Change::Labeled(label),
        _ => Change::Edited,
    };
    let description = opt_text(a, "description").or_else(|| opt_text(a, "changes.description.new"));
    let story_type = opt_text(a, "story_type").or_else(|| opt_text(a, "changes.story_type.new"));
    let mut metadata = Map::new();
    metadata.insert("shortcut_story".into(), Value::String(id));
    if let Some(t) = &story_type {
        metadata.insert("shortcut_story_type".into(), Value::String(t.clone()));
    }
    Ok(Inbound {
        event,
        action: Action::Issue(Box::new(IssueEvent {
            change,
            source,
            title: if action == "create" {
                Some(text(a, "name")?)
            } else {
                opt_text(a, "name").or_else(|| opt_text(a, "changes.name.new"))
            },
            description: if action == "create" { Some(description.unwrap_or_default()) } else { description },
            labels,
            url: opt_text(a, "app_url"),
            severity: None,
            category: story_type.as_deref().and_then(category_from_label),
            metadata,
        })),
    })
}

fn linear(body: &[u8]) -> Result<Inbound, ParseError> {
    let v = json_body(body)?;
    let kind = text(&v, "type")?;
    let action = text(&v, "action")?;
    let event = format!("{kind}.{action}");
    match (kind.as_str(), action.as_str()) {
        ("Issue", "create" | "update") => {
            let id = text(&v, "data.id")?;
            let identifier = opt_text(&v, "data.identifier")
                .or_else(|| Some(format!("{}-{}", opt_text(&v, "data.team.key")?, at(&v, "data.number")?.as_u64()?)));
            let source = SourceRef {
                external_id: id.clone(),
                locator: serde_json::json!({"issue_id": id, "identifier": identifier}),
            };
            let labels = label_names(at(&v, "data.labels"));
            let added = at(&v, "updatedFrom.labelIds").and_then(Value::as_array).and_then(|before| {
                let before: Vec<&Value> = before.iter().collect();
                at(&v, "data.labels")?.as_array()?.iter().find_map(|l| {
                    (!before.contains(&l.get("id")?)).then(|| l.get("name")?.as_str().map(str::to_owned)).flatten()
                })
            });
            let change = match (action.as_str(), added) {
                ("create", _) => Change::Opened,
                (_, Some(label)) => Change::Labeled(label),
                _ => Change::Edited,
            };
            let severity = match at(&v, "data.priority").and_then(Value::as_u64) {
                Some(1) => Some("critical".to_owned()),
                Some(2) => Some("high".to_owned()),
                Some(3) => Some("medium".to_owned()),
                Some(4) => Some("low".to_owned()),
                _ => None,
            };
            let mut metadata = Map::new();
            if let Some(identifier) = identifier {
                metadata.insert("linear_issue".into(), Value::String(identifier));
            }
            if let Some(team) = opt_text(&v, "data.team.key") {
                metadata.insert("linear_team".into(), Value::String(team));
            }
            let category = labels.iter().find_map(|l| category_from_label(l));
            Ok(Inbound {
                event,
                action: Action::Issue(Box::new(IssueEvent {
                    change,
                    source,
                    title: Some(text(&v, "data.title")?),
                    description: Some(opt_text(&v, "data.description").unwrap_or_default()),
                    labels: Some(labels),
                    url: opt_text(&v, "data.url").or_else(|| opt_text(&v, "url")),
                    severity,
                    category,
                    metadata,
                })),
            })
        }
        ("Comment", "create") => {
            let issue = opt_text(&v, "data.issueId")
                .or_else(|| opt_text(&v, "data.issue.id"))
                .ok_or_else(|| bad("data.issueId", "is missing"))?;
            let source = SourceRef {
                external_id: issue.clone(),
                locator: serde_json::json!({"issue_id": issue, "identifier": opt_text(&v, "data.issue.identifier")}),
            };
            let by_bot =
                at(&v, "data.botActor").is_some() || at(&v, "data.user").is_none() && at(&v, "data.userId").is_none();
            Ok(Inbound {
                event,
                action: Action::Comment(CommentEvent {
                    source,
                    body: text(&v, "data.body")?,
                    author: opt_text(&v, "data.user.name"),
                    by_bot,
                    trusted: true,
                    author_id: None,
                }),
            })
        }
        _ => ignore(event.clone(), format!("`{event}` is not handled: send Issue create/update and Comment create")),
    }
}

/// A custom sender's body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomBody {
    title: Option<Value>,
    description: Option<Value>,
    severity: Option<Value>,
    category: Option<Value>,
    external_id: Option<Value>,
    url: Option<Value>,
    metadata: Option<Value>,
}

fn custom(body: &[u8]) -> Result<Inbound, ParseError> {
    let v = json_body(body)?;
    let parsed: CustomBody = serde_json::from_value(v).map_err(|e| {
        bad(
            "body",
            format!("{e}: the body is {{title, description, severity?, category?, external_id?, url?, metadata?}}"),
        )
    })?;
    let string = |field: &str, value: Option<Value>| -> Result<Option<String>, ParseError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) if field == "external_id" => Ok(Some(n.to_string())),
            Some(other) => Err(bad(field, format!("must be a string, not {}", kind(&other)))),
        }
    };
    let title = string("title", parsed.title)?.ok_or_else(|| bad("title", "is missing"))?;
    let external_id = string("external_id", parsed.external_id)?;
    let metadata = match parsed.metadata {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o,
        Some(other) => return Err(bad("metadata", format!("must be a JSON object, not {}", kind(&other)))),
    };
    let source = SourceRef {
        external_id: external_id.clone().unwrap_or_default(),
        locator: serde_json::json!({"external_id": external_id}),
    };
    Ok(Inbound {
        event: "ticket".into(),
        action: Action::Issue(Box::new(IssueEvent {
            change: Change::Opened,
            source,
            title: Some(title),
            description: Some(string("description", parsed.description)?.unwrap_or_default()),
            labels: None,
            url: string("url", parsed.url)?,
            severity: string("severity", parsed.severity)?,
            category: string("category", parsed.category)?,
            metadata,
        })),
    })
}

/// A ticket category from a label or issue type: bug, feature (enhancement, story), question, chore (task),
/// docs (documentation), improvement.
pub fn category_from_label(label: &str) -> Option<String> {
    let l = label.trim().to_lowercase();
    let last = l.rsplit([':', '/', '=']).next().unwrap_or(&l).trim();
    Some(
        match last {
            "bug" | "defect" | "incident" => "bug",
            "feature" | "enhancement" | "story" | "feature request" | "new feature" => "feature",
            "improvement" => "improvement",
            "question" => "question",
            "chore" | "task" | "maintenance" => "chore",
            "docs" | "documentation" => "docs",
            _ => return None,
        }
        .to_owned(),
    )
}

/// What a comment asks of `bot`: `None` when it does not mention `@bot`; else the phase word that follows the
/// mention (`research`, `plan`, `execute`…), or `""` for a bare mention (the ticket's current phase).
pub fn mention<'a>(body: &'a str, bot: &str) -> Option<&'a str> {
    // ASCII lowering keeps every byte offset, so positions found in `lower` are positions in `body`.
    let needle = format!("@{}", bot.to_ascii_lowercase());
    let lower = body.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower.get(from..).and_then(|s| s.find(&needle)) {
        let start = from + found;
        let end = start + needle.len();
        let before_ok =
            start == 0 || !lower[..start].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after_ok = !lower[end..].chars().next().is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-'));
        if before_ok && after_ok && body.is_char_boundary(end) {
            let rest = body[end..].trim_start_matches([' ', ',', ':']);
            let word = rest.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("");
            return Some(word);
        }
        from = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    const SECRET: &str = "It's a Secret to Everybody";

    #[test]
    fn github_signatures_match_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries": this secret and body give this signature.
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(format!("sha256={}", sign(SECRET, body)), sig);
        let now = OffsetDateTime::now_utc();
        verify(WebhookProvider::Github, SECRET, true, &headers(&[("x-hub-signature-256", sig)]), body, now).unwrap();
        let err = verify(
            WebhookProvider::Github,
            "another secret!!",
            true,
            &headers(&[("x-hub-signature-256", sig)]),
            body,
            now,
        )
        .unwrap_err();
        assert_eq!((err.status, err.message.as_str()), (401, SECRET_MISMATCH));
        let err = verify(WebhookProvider::Github, SECRET, true, &headers(&[]), body, now).unwrap_err();
        assert!(err.message.contains("x-hub-signature-256"), "{err:?}");
    }

    #[test]
    fn custom_configs_say_what_they_expect() {
        let now = OffsetDateTime::now_utc();
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let err = verify(WebhookProvider::Custom, SECRET, true, &form, b"title=x", now).unwrap_err();
        assert_eq!((err.status, err.message.as_str()), (415, EXPECTED_SIGNED_JSON));
        let err = verify(WebhookProvider::Custom, SECRET, true, &headers(&[]), b"{}", now).unwrap_err();
        assert_eq!((err.status, err.message.as_str()), (401, EXPECTED_SIGNED_JSON));
        verify(WebhookProvider::Custom, SECRET, false, &headers(&[]), b"{}", now).unwrap();
    }

    #[test]
    fn gitlab_compares_the_token_and_linear_checks_freshness() {
        let now = OffsetDateTime::now_utc();
        verify(WebhookProvider::Gitlab, SECRET, true, &headers(&[("x-gitlab-token", SECRET)]), b"{}", now).unwrap();
        assert!(
            verify(WebhookProvider::Gitlab, SECRET, true, &headers(&[("x-gitlab-token", "nope")]), b"{}", now).is_err()
        );
        let stamp = (now.unix_timestamp() - 120) * 1000;
        let body = format!("{{\"webhookTimestamp\": {stamp}}}");
        let h = headers(&[("linear-signature", &sign(SECRET, body.as_bytes()))]);
        let err = verify(WebhookProvider::Linear, SECRET, true, &h, body.as_bytes(), now).unwrap_err();
        assert!(err.message.starts_with("stale delivery"), "{err:?}");
        verify(WebhookProvider::Linear, SECRET, true, &h, body.as_bytes(), now - time::Duration::seconds(110)).unwrap();
    }

    #[test]
    fn delivery_keys_come_from_headers_else_the_body() {
        let h = headers(&[("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")]);
        assert_eq!(delivery_key(WebhookProvider::Github, &h, b"{}"), "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        let a = delivery_key(WebhookProvider::Custom, &headers(&[]), b"{\"title\": \"a\"}");
        assert!(a.starts_with("sha256:"));
        assert_ne!(a, delivery_key(WebhookProvider::Custom, &headers(&[]), b"{\"title\": \"b\"}"));
    }

    #[test]
    fn mentions_find_the_bot_and_the_word_after_it() {
        assert_eq!(mention("@viberglass plan this please", "viberglass"), Some("plan"));
        assert_eq!(mention("Hey @Viberglass", "viberglass"), Some(""));
        assert_eq!(mention("mail me at x@viberglass.dev", "viberglass"), None);
        assert_eq!(mention("@viberglass-bot run", "viberglass"), None);
        assert_eq!(mention("no mention", "viberglass"), None);
    }

    #[test]
    fn custom_bodies_name_the_bad_field() {
        let err = custom(br#"{"title": 5}"#).unwrap_err();
        assert_eq!(err.field, "title");
        let err = custom(br#"{"title": "x", "colour": "red"}"#).unwrap_err();
        assert!(err.message.contains("unknown field `colour`"), "{err}");
        let err = custom(b"title=x").unwrap_err();
        assert_eq!(err.field, "body");
    }

    fn sample(name: &str) -> Vec<u8> {
        let text = match name {
            "github-issues-opened" => include_str!("../samples/github-issues-opened.json"),
            "github-issues-labeled" => include_str!("../samples/github-issues-labeled.json"),
            "github-issues-closed" => include_str!("../samples/github-issues-closed.json"),
            "github-issue_comment-created" => include_str!("../samples/github-issue_comment-created.json"),
            "gitlab-issue-hook" => include_str!("../samples/gitlab-issue-hook.json"),
            "gitlab-note-hook-issue" => include_str!("../samples/gitlab-note-hook-issue.json"),
            "jira-issue-created" => include_str!("../samples/jira-issue-created.json"),
            "jira-issue-updated" => include_str!("../samples/jira-issue-updated.json"),
            "jira-comment-created" => include_str!("../samples/jira-comment-created.json"),
            "shortcut-story-create" => include_str!("../samples/shortcut-story-create.json"),
            "shortcut-story-update" => include_str!("../samples/shortcut-story-update.json"),
            "shortcut-comment-create" => include_str!("../samples/shortcut-comment-create.json"),
            "linear-issue-create" => include_str!("../samples/linear-issue-create.json"),
            "linear-issue-update" => include_str!("../samples/linear-issue-update.json"),
            "linear-comment-create" => include_str!("../samples/linear-comment-create.json"),
            other => panic!("{other}"),
        };
        text.as_bytes().to_vec()
    }

    fn issue(read: &Inbound) -> &IssueEvent {
        match &read.action {
            Action::Issue(i) => i,
            other => panic!("not an issue: {other:?}"),
        }
    }

    fn comment(read: &Inbound) -> &CommentEvent {
        match &read.action {
            Action::Comment(c) => c,
            other => panic!("not a comment: {other:?}"),
        }
    }

    #[test]
    fn every_recorded_sample_reads() {
        let gh = |event: &str| headers(&[("x-github-event", event)]);
        let read = parse(WebhookProvider::Github, &gh("issues"), &sample("github-issues-opened")).unwrap();
        assert_eq!(read.event, "issues.opened");
        let i = issue(&read);
        assert_eq!((i.change.clone(), i.source.external_id.contains('#')), (Change::Opened, true));
        assert!(i.title.as_deref().is_some_and(|t| !t.is_empty()));
        let read = parse(WebhookProvider::Github, &gh("issues"), &sample("github-issues-labeled")).unwrap();
        assert!(matches!(issue(&read).change, Change::Labeled(_)), "{read:?}");
        let read = parse(WebhookProvider::Github, &gh("issues"), &sample("github-issues-closed")).unwrap();
        assert_eq!(issue(&read).change, Change::Closed);
        let read =
            parse(WebhookProvider::Github, &gh("issue_comment"), &sample("github-issue_comment-created")).unwrap();
        assert!(matches!(read.action, Action::Comment(_) | Action::Ignore(_)), "{read:?}");

        let gl = |event: &str| headers(&[("x-gitlab-event", event)]);
        let read = parse(WebhookProvider::Gitlab, &gl("Issue Hook"), &sample("gitlab-issue-hook")).unwrap();
        assert_eq!(read.event, "issue.open");
        assert_eq!(issue(&read).labels.as_deref(), Some(&["API".to_owned()][..]));
        let read = parse(WebhookProvider::Gitlab, &gl("Note Hook"), &sample("gitlab-note-hook-issue")).unwrap();
        assert_eq!(comment(&read).source.external_id, "gitlab-org/gitlab-test#17");

        let none = headers(&[]);
        let read = parse(WebhookProvider::Jira, &none, &sample("jira-issue-created")).unwrap();
        assert_eq!(read.event, "jira:issue_created");
        assert!(issue(&read).url.as_deref().is_some_and(|u| u.contains("/browse/")), "{read:?}");
        let read = parse(WebhookProvider::Jira, &none, &sample("jira-issue-updated")).unwrap();
        assert_eq!(read.event, "jira:issue_updated");
        let read = parse(WebhookProvider::Jira, &none, &sample("jira-comment-created")).unwrap();
        assert_eq!(comment(&read).source.external_id, "ZUL-1");

        let read = parse(WebhookProvider::Shortcut, &none, &sample("shortcut-story-create")).unwrap();
        assert_eq!((read.event.as_str(), issue(&read).category.as_deref()), ("story.create", Some("feature")));
        let read = parse(WebhookProvider::Shortcut, &none, &sample("shortcut-story-update")).unwrap();
        assert_eq!(read.event, "story.update");
        let read = parse(WebhookProvider::Shortcut, &none, &sample("shortcut-comment-create")).unwrap();
        assert_eq!(comment(&read).source.external_id, "11", "the story whose comment_ids gained the comment");

        let read = parse(WebhookProvider::Linear, &none, &sample("linear-issue-create")).unwrap();
        let i = issue(&read);
        assert_eq!(
            (i.severity.as_deref(), i.metadata.get("linear_issue").and_then(Value::as_str)),
            (Some("critical"), Some("WEB-44"))
        );
        let read = parse(WebhookProvider::Linear, &none, &sample("linear-issue-update")).unwrap();
        assert_eq!(read.event, "Issue.update");
        let read = parse(WebhookProvider::Linear, &none, &sample("linear-comment-create")).unwrap();
        assert_eq!(comment(&read).source.external_id, "f9a37fcf-eb52-44be-a52c-0477f70e9952");
    }

    #[test]
    fn garbage_never_panics_and_names_what_is_wrong() {
        for provider in WebhookProvider::ALL {
            for body in [&b""[..], b"[]", b"{}", b"{\"actions\": 5}", b"\xff\xfe", b"{\"object_kind\": \"issue\"}"] {
                let h = headers(&[("x-github-event", "issues"), ("x-gitlab-event", "Issue Hook")]);
                if let Err(e) = parse(*provider, &h, body) {
                    assert!(!e.field.is_empty() && !e.message.is_empty());
                }
            }
        }
    }
}
