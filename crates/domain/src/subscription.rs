//! Outbound webhooks: subscriptions (instance-wide, set by administrators, or
//! a project's, set by its maintainers) to the outbox's events, delivered
//! signed in the Standard Webhooks format, retried, and recorded attempt by
//! attempt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::validation::{ValidationErrors, bounded_text};
use crate::{EventType, OutboundDeliveryId, ProjectId, SubscriptionId};

named_enum!(
    /// How the server authenticates to the destination, besides the signature.
    SubscriptionAuth, "authentication", {
        None => "none",
        /// `Authorization: Bearer <token>`.
        Bearer => "bearer",
        /// `Authorization: Basic <username:password>`.
        Basic => "basic",
    }
);

named_enum!(
    /// Where one event (or test) stands with one subscription.
    OutboundStatus, "delivery status", {
        /// Waiting for its next attempt.
        Pending => "pending",
        /// The destination answered 2xx.
        Succeeded => "succeeded",
        /// Given up: past the maximum age, or the destination answered 410 Gone.
        Failed => "failed",
    }
);

/// The type of the event "Send test event" delivers.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// Whose a subscription is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionScope {
    /// Every project's events (administrators).
    Instance,
    /// One project's events (its maintainers).
    Project(ProjectId),
}

impl SubscriptionScope {
    pub fn project_id(self) -> Option<ProjectId> {
        match self {
            SubscriptionScope::Instance => None,
            SubscriptionScope::Project(p) => Some(p),
        }
    }
}

/// A subscription as the API shows it. Its secret, header values, bearer token and password are write-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subscription {
    pub id: SubscriptionId,
    /// The project whose events it receives; `null`: every project's (instance-wide).
    pub project_id: Option<ProjectId>,
    /// Where events are posted.
    pub url: String,
    pub description: String,
    /// The event types delivered; empty: every type in the catalogue.
    pub events: Vec<EventType>,
    /// The extra headers' names (their values are write-only).
    pub headers: Vec<String>,
    pub auth: SubscriptionAuth,
    /// Basic authentication's user name.
    pub username: Option<String>,
    /// Whether the destination may be a loopback, link-local or private address (set by administrators).
    pub allow_private: bool,
    pub active: bool,
    /// Why the server turned it off (410 Gone, or failing past the maximum age).
    pub disabled_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    /// Since when every attempt has failed (cleared by a success).
    #[serde(with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub secret_rotated_at: OffsetDateTime,
    /// Until when the previous secret's signature is sent too (after a rotation with an overlap).
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Subscription {
    /// Whether it wants events of `event_type`.
    pub fn wants(&self, event_type: EventType) -> bool {
        self.events.is_empty() || self.events.contains(&event_type)
    }
}

/// What a subscription keeps sealed: the signing secret(s), header values and authentication. Its `Debug`
/// shows no value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionCredentials {
    /// `whsec_<base64>`.
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_secret_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for SubscriptionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionCredentials")
            .field("secret", &"…")
            .field("previous_secret", &self.previous_secret.as_ref().map(|_| "…"))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A subscription as a client sends it, to create or change one.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    pub url: Option<String>,
    pub description: Option<String>,
    /// Event type names from the catalogue (`GET /api/v1/webhook-events`); empty: every type.
    pub events: Option<Vec<String>>,
    /// `whsec_` and the base64 of 24 to 64 random bytes; left out on create, one is generated and shown once.
    pub secret: Option<String>,
    /// Extra headers sent with every delivery (replaces the ones set before).
    pub headers: Option<BTreeMap<String, String>>,
    /// `none`, `bearer` (with `token`) or `basic` (with `username` and `password`).
    pub auth: Option<String>,
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub active: Option<bool>,
    /// Allows a loopback, link-local or private destination (administrators only).
    pub allow_private: Option<bool>,
}

/// A validated change: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<EventType>>,
    pub secret: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub auth: Option<AuthChange>,
    pub active: Option<bool>,
    pub allow_private: Option<bool>,
}

/// New authentication: the kind with its token (bearer) or user name and password (basic).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthChange {
    pub kind: SubscriptionAuth,
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The most extra headers a subscription sends.
pub const MAX_HEADERS: usize = 20;

/// Headers the server sets itself.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "authorization",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    // Hop-by-hop and forwarding headers an internal target might trust.
    "forwarded",
    "x-real-ip",
    "te",
    "upgrade",
    "expect",
    "cookie",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
];

/// Parses a destination: an absolute http(s) URL with a host, no user or password in it.
pub fn parse_destination(value: &str) -> Result<url::Url, String> {
    let v = value.trim();
    if v.len() > 2000 {
        return Err("must be at most 2000 characters".into());
    }
    let url =
        url::Url::parse(v).map_err(|e| format!("is not a URL ({e}): use e.g. https://hooks.example.com/viberglass"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be http or https, not {}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password: use auth basic instead".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    Ok(url)
}

/// Whether two URLs share scheme, host and port (an unreadable one shares nothing).
pub fn same_origin(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// Parses a Standard Webhooks secret: `whsec_` and the base64 of 24 to 64 bytes.
pub fn parse_signing_secret(value: &str) -> Result<String, String> {
    let v = value.trim();
    let body = v.strip_prefix("whsec_").ok_or("must start with `whsec_` (the Standard Webhooks secret format)")?;
    let bytes = decode_base64(body).ok_or("must be `whsec_` followed by standard base64")?;
    if !(24..=64).contains(&bytes.len()) {
        return Err(format!("must hold 24 to 64 random bytes (this one holds {})", bytes.len()));
    }
    Ok(v.to_owned())
}

/// Standard base64 with padding, decoded without a dependency (the domain does no I/O and needs little).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

fn parse_header(name: &str, value: &str) -> Result<(String, String), String> {
    let n = name.trim().to_ascii_lowercase();
    if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!(
            "`{}` is not a header name: letters, digits and - only, at most 64",
            name.chars().take(64).collect::<String>()
        ));
    }
    if RESERVED_HEADERS.contains(&n.as_str()) || n.starts_with("webhook-") || n.starts_with("x-forwarded-") {
        return Err(format!("`{n}` is set by the server itself (use auth for Authorization)"));
    }
    if value.len() > 1000 || value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("the value of `{n}` must be at most 1000 printable characters"));
    }
    Ok((n, value.to_owned()))
}

fn parse_events(values: Vec<String>) -> Result<Vec<EventType>, String> {
    let mut out = Vec::new();
    // An empty name is nothing (a form's "none ticked" marker).
    for v in values.into_iter().filter(|v| !v.trim().is_empty()) {
        let t = v.trim().parse::<EventType>().map_err(|_| {
            format!(
                "`{}` is not an event type: use one of {} (or none for every type)",
                v.chars().take(64).collect::<String>(),
                EventType::NAMES.join(", ")
            )
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

impl SubscriptionPatch {
    pub fn parse(input: SubscriptionInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let url = input.url.and_then(|v| e.check("url", parse_destination(&v).map(|u| u.to_string())));
        let description = input.description.and_then(|v| {
            let v = v.trim();
            if v.is_empty() {
                Some(String::new())
            } else {
                e.check("description", bounded_text(v, "description", 1, 500))
            }
        });
        let events = input.events.and_then(|v| e.check("events", parse_events(v)));
        let secret = input.secret.and_then(|v| e.check("secret", parse_signing_secret(&v)));
        let headers = input.headers.and_then(|map| {
            if map.len() > MAX_HEADERS {
                e.add("headers", format!("may hold at most {MAX_HEADERS} headers"));
                return None;
            }
            let mut out = BTreeMap::new();
            for (name, value) in map {
                let (n, v) = e.check("headers", parse_header(&name, &value))?;
                out.insert(n, v);
            }
            Some(out)
        });
        let secret_field = |v: Option<String>, field: &str, e: &mut ValidationErrors| -> Option<String> {
            let v = v?;
            if v.is_empty() || v.chars().count() > 4096 || v.chars().any(char::is_control) {
                e.add(field, "must be 1 to 4096 printable characters");
                return None;
            }
            Some(v)
        };
        let auth = match input.auth.as_deref().map(str::trim) {
            None => {
                for (field, given) in [
                    ("token", input.token.is_some()),
                    ("username", input.username.is_some()),
                    ("password", input.password.is_some()),
                ] {
                    if given {
                        e.add(field, "goes with auth: set auth to bearer or basic as well");
                    }
                }
                None
            }
            Some(kind) => match kind.parse::<SubscriptionAuth>() {
                Err(err) => {
                    e.add("auth", format!("{err}"));
                    None
                }
                Ok(SubscriptionAuth::None) => {
                    Some(AuthChange { kind: SubscriptionAuth::None, token: None, username: None, password: None })
                }
                Ok(SubscriptionAuth::Bearer) => match secret_field(input.token, "token", &mut e) {
                    Some(token) => Some(AuthChange {
                        kind: SubscriptionAuth::Bearer,
                        token: Some(token),
                        username: None,
                        password: None,
                    }),
                    None => {
                        if !e.fields.iter().any(|f| f.field == "token") {
                            e.add("token", "is required with auth bearer");
                        }
                        None
                    }
                },
                Ok(SubscriptionAuth::Basic) => {
                    let user = input.username.map(|u| u.trim().to_owned());
                    let user = match user {
                        Some(u)
                            if !u.is_empty()
                                && u.chars().count() <= 200
                                && !u.contains(':')
                                && !u.chars().any(char::is_control) =>
                        {
                            Some(u)
                        }
                        _ => {
                            e.add("username", "is required with auth basic: 1 to 200 characters, without `:`");
                            None
                        }
                    };
                    let password = secret_field(input.password, "password", &mut e);
                    if password.is_none() && !e.fields.iter().any(|f| f.field == "password") {
                        e.add("password", "is required with auth basic");
                    }
                    match (user, password) {
                        (Some(u), Some(p)) => Some(AuthChange {
                            kind: SubscriptionAuth::Basic,
                            token: None,
                            username: Some(u),
                            password: Some(p),
                        }),
                        _ => None,
                    }
                }
            },
        };
        e.into_result(SubscriptionPatch {
            url,
            description,
            events,
            secret,
            headers,
            auth,
            active: input.active,
            allow_private: input.allow_private,
        })
    }

    /// Applies the change to the visible fields and the sealed credentials (a new secret is the caller's: it
    /// decides about the overlap). A URL on another origin (scheme, host or port) drops the extra headers and
    /// the authentication unless the change gives them again: credentials are never sent somewhere new
    /// unasked.
    pub fn apply(&self, sub: &mut Subscription, creds: &mut SubscriptionCredentials) {
        let p = self.clone();
        if let Some(v) = p.url {
            if !same_origin(&sub.url, &v) {
                if p.headers.is_none() {
                    sub.headers.clear();
                    creds.headers.clear();
                }
                if p.auth.is_none() {
                    sub.auth = SubscriptionAuth::None;
                    sub.username = None;
                    creds.token = None;
                    creds.password = None;
                }
            }
            sub.url = v;
        }
        if let Some(v) = p.description {
            sub.description = v;
        }
        if let Some(v) = p.events {
            sub.events = v;
        }
        if let Some(headers) = p.headers {
            sub.headers = headers.keys().cloned().collect();
            creds.headers = headers;
        }
        if let Some(auth) = p.auth {
            sub.auth = auth.kind;
            sub.username = auth.username;
            creds.token = auth.token;
            creds.password = auth.password;
        }
        if let Some(v) = p.allow_private {
            sub.allow_private = v;
        }
        if let Some(active) = p.active {
            sub.active = active;
            if active {
                sub.disabled_reason = None;
                sub.disabled_at = None;
                sub.failing_since = None;
            }
        }
    }
}

/// A new subscription, validated: the visible fields, and the secret (given, or `None` to generate).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSubscription {
    pub subscription: Subscription,
    pub credentials: SubscriptionCredentials,
    pub secret_given: bool,
}

impl NewSubscription {
    /// `generated` is the secret to use when the input gives none.
    pub fn parse(
        scope: SubscriptionScope,
        input: SubscriptionInput,
        generated: String,
        now: OffsetDateTime,
    ) -> Result<Self, ValidationErrors> {
        if input.url.as_deref().is_none_or(|u| u.trim().is_empty()) {
            let mut e = match SubscriptionPatch::parse(SubscriptionInput { url: None, ..input }) {
                Ok(_) => ValidationErrors::new(),
                Err(e) => e,
            };
            e.add("url", "is required: where events are posted, e.g. https://hooks.example.com/viberglass");
            return Err(e);
        }
        let patch = SubscriptionPatch::parse(input)?;
        let mut subscription = Subscription {
            id: SubscriptionId::new(),
            project_id: scope.project_id(),
            url: String::new(),
            description: String::new(),
            events: Vec::new(),
            headers: Vec::new(),
            auth: SubscriptionAuth::None,
            username: None,
            allow_private: false,
            active: true,
            disabled_reason: None,
            disabled_at: None,
            failing_since: None,
            secret_rotated_at: now,
            previous_secret_until: None,
            created_at: now,
            updated_at: now,
        };
        let secret_given = patch.secret.is_some();
        let mut credentials =
            SubscriptionCredentials { secret: patch.secret.clone().unwrap_or(generated), ..Default::default() };
        patch.apply(&mut subscription, &mut credentials);
        Ok(NewSubscription { subscription, credentials, secret_given })
    }
}

named_enum!(
    /// Why one attempt failed, for the attempt log and the UI's wording.
    AttemptError, "attempt error", {
        /// The host name did not resolve.
        Dns => "dns",
        /// The destination resolved to a loopback, link-local or private address and that is not allowed.
        PrivateAddress => "private_address",
        /// Nothing listened, or the connection was reset.
        Refused => "refused",
        Tls => "tls",
        /// No answer within the timeout.
        Timeout => "timeout",
        /// The destination answered outside 2xx.
        Status => "status",
        /// Anything else on the way (a malformed answer, a redirect).
        Other => "other",
    }
);

/// One attempt to deliver, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboundAttempt {
    pub attempt: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub duration_ms: i64,
    /// The HTTP status answered, if any.
    pub status_code: Option<u16>,
    /// The start of the answer's body (at most 1 KiB).
    pub response: Option<String>,
    pub error_kind: Option<AttemptError>,
    /// What went wrong and what to do.
    pub error: Option<String>,
    /// The server that made it.
    pub server: String,
}

/// One event (or test) owed to one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboundDelivery {
    pub id: OutboundDeliveryId,
    pub subscription_id: SubscriptionId,
    /// The outbox event's id, sent as `webhook-id` (the same on every attempt and redelivery).
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub status: OutboundStatus,
    pub attempts: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    /// Its attempts, oldest first (only when one delivery is read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<OutboundAttempt>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> SubscriptionInput {
        serde_json::from_value(json).unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn a_new_subscription_gets_defaults_and_keeps_its_secrets_apart() {
        let new = NewSubscription::parse(
            SubscriptionScope::Instance,
            input(serde_json::json!({"url": "https://hooks.example.com/x", "events": ["job.failed", "job.failed"],
                "headers": {"X-Team": "core"}, "auth": "bearer", "token": "t0k"})),
            SECRET.into(),
            now(),
        )
        .unwrap();
        assert_eq!(new.subscription.project_id, None);
        assert_eq!(new.subscription.events, vec![EventType::JobFailed]);
        assert_eq!(new.subscription.headers, vec!["x-team".to_owned()]);
        assert_eq!(new.subscription.auth, SubscriptionAuth::Bearer);
        assert!(new.subscription.active && !new.subscription.allow_private && !new.secret_given);
        assert_eq!(new.credentials.secret, SECRET);
        assert_eq!(new.credentials.token.as_deref(), Some("t0k"));
        assert_eq!(new.credentials.headers["x-team"], "core");
        let shown = serde_json::to_string(&new.subscription).unwrap();
        assert!(!shown.contains("t0k") && !shown.contains("core") && !shown.contains("whsec"));
    }

    #[test]
    fn bad_fields_are_all_named() {
        let err = NewSubscription::parse(
            SubscriptionScope::Instance,
            input(serde_json::json!({"url": "ftp://x", "events": ["job.exploded"], "secret": "hunter2",
                "headers": {"Content-Type": "text/plain", "X-Ok": "a\nb"}, "auth": "basic", "username": "a:b"})),
            SECRET.into(),
            now(),
        )
        .unwrap_err();
        let fields: Vec<&str> = err.fields.iter().map(|f| f.field.as_str()).collect();
        for f in ["url", "events", "secret", "headers", "username", "password"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        let missing =
            NewSubscription::parse(SubscriptionScope::Instance, input(serde_json::json!({})), SECRET.into(), now())
                .unwrap_err();
        assert_eq!(missing.fields[0].field, "url");
        let token = SubscriptionPatch::parse(input(serde_json::json!({"token": "x"}))).unwrap_err();
        assert_eq!(token.fields[0].field, "token");
    }

    #[test]
    fn destinations_are_plain_http_urls() {
        assert!(parse_destination("https://hooks.example.com/a?b=1").is_ok());
        assert!(parse_destination("http://10.0.0.1:8080/").is_ok(), "the address is judged at connect time");
        for bad in ["https://user:pw@example.com/", "file:///etc/passwd", "http://", "not a url", "https://x/#f"] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_standard_webhooks_secrets() {
        assert!(parse_signing_secret(SECRET).is_ok());
        assert!(parse_signing_secret("whsec_c2hvcnQ=").unwrap_err().contains("24 to 64"));
        assert!(parse_signing_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(parse_signing_secret("whsec_!!!!").is_err());
        assert_eq!(decode_base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("aGk=aGk="), None);
    }

    #[test]
    fn moving_to_another_origin_drops_the_credentials_unless_given_again() {
        let json = serde_json::json!({"url": "https://ci.example/hook", "headers": {"x-key": "k"}, "auth": "bearer",
            "token": "t"});
        let mut new = NewSubscription::parse(SubscriptionScope::Instance, input(json), SECRET.into(), now()).unwrap();
        let path_only =
            SubscriptionPatch::parse(input(serde_json::json!({"url": "https://ci.example/other"}))).unwrap();
        path_only.apply(&mut new.subscription, &mut new.credentials);
        assert_eq!(new.credentials.token.as_deref(), Some("t"), "same origin: kept");
        let moved = SubscriptionPatch::parse(input(serde_json::json!({"url": "https://attacker.example/"}))).unwrap();
        moved.apply(&mut new.subscription, &mut new.credentials);
        assert!(new.credentials.token.is_none() && new.credentials.headers.is_empty());
        assert_eq!(new.subscription.auth, SubscriptionAuth::None);
        assert!(new.subscription.headers.is_empty());
        let given = SubscriptionPatch::parse(input(
            serde_json::json!({"url": "https://new.example/", "auth": "bearer", "token": "t2"}),
        ))
        .unwrap();
        given.apply(&mut new.subscription, &mut new.credentials);
        assert_eq!(new.credentials.token.as_deref(), Some("t2"));
        assert!(!format!("{:?}", new.credentials).contains("t2"), "Debug shows no value");
        for header in ["X-Forwarded-For", "Forwarded", "Cookie"] {
            let bad = SubscriptionPatch::parse(input(serde_json::json!({"headers": {header: "x"}})));
            assert!(bad.is_err(), "{header}");
        }
    }

    #[test]
    fn turning_a_subscription_on_clears_why_it_was_off() {
        let mut new = NewSubscription::parse(
            SubscriptionScope::Instance,
            input(serde_json::json!({"url": "https://x.io/"})),
            SECRET.into(),
            now(),
        )
        .unwrap();
        new.subscription.active = false;
        new.subscription.disabled_reason = Some("410".into());
        new.subscription.failing_since = Some(now());
        let patch = SubscriptionPatch::parse(input(serde_json::json!({"active": true}))).unwrap();
        patch.apply(&mut new.subscription, &mut new.credentials);
        assert!(
            new.subscription.active
                && new.subscription.disabled_reason.is_none()
                && new.subscription.failing_since.is_none()
        );
    }
}
