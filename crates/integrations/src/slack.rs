//! Slack on the wire: request signatures (`X-Slack-Signature`, `v0=` HMAC-SHA256 over
//! `v0:{timestamp}:{body}`, within five minutes), what arrives at the one request URL (slash commands and
//! interactions, form-encoded; Events API callbacks, JSON), the Web API methods the server calls, and Block
//! Kit pieces. Every Slack error code we meet is explained with what to do about it.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// How far a request's timestamp may be from now, as Slack advises.
pub const TOLERANCE_SECS: i64 = 300;
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
pub const SIGNATURE_HEADER: &str = "x-slack-signature";

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request has no {0} header: it did not come from Slack")]
    Missing(&'static str),
    #[error(
        "the request's timestamp is {0} s away from this server's clock (at most 300 s is accepted): a replayed \
         request, or this server's clock is wrong (check NTP)"
    )]
    Stale(i64),
    #[error(
        "the signature does not match: the signing secret in the Slack settings is not this app's (Basic \
         Information → App Credentials → Signing Secret)"
    )]
    Mismatch,
}

/// The checks that need no secret: both headers there, the timestamp within five minutes of `now`, the
/// signature `v0=` and hex. Returns the signature's bytes.
pub fn precheck(timestamp: Option<&str>, signature: Option<&str>, now: i64) -> Result<Vec<u8>, VerifyError> {
    let timestamp =
        timestamp.map(str::trim).filter(|t| !t.is_empty()).ok_or(VerifyError::Missing("X-Slack-Request-Timestamp"))?;
    let signature =
        signature.map(str::trim).filter(|s| !s.is_empty()).ok_or(VerifyError::Missing("X-Slack-Signature"))?;
    let at: i64 = timestamp.parse().map_err(|_| VerifyError::Missing("numeric X-Slack-Request-Timestamp"))?;
    let skew = now.saturating_sub(at).saturating_abs();
    if skew > TOLERANCE_SECS {
        return Err(VerifyError::Stale(skew));
    }
    let presented = signature.strip_prefix("v0=").ok_or(VerifyError::Mismatch)?;
    let presented = hex::decode(presented).map_err(|_| VerifyError::Mismatch)?;
    if presented.len() != 32 {
        return Err(VerifyError::Mismatch);
    }
    Ok(presented)
}

/// Checks a request as Slack signs it, at `now` (Unix seconds).
pub fn verify(
    signing_secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let presented = precheck(timestamp, signature, now)?;
    let timestamp = timestamp.unwrap_or_default().trim();
    let mut mac = HmacSha256::new_from_slice(signing_secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&presented).map_err(|_| VerifyError::Mismatch)
}

/// A slash command (`/viberator …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub command: String,
    pub text: String,
    pub user_id: String,
    pub channel_id: String,
    pub trigger_id: String,
    pub team_id: String,
}

/// A button click or a form submitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Interaction {
    BlockAction {
        user_id: String,
        trigger_id: String,
        action_id: String,
        value: String,
        channel_id: Option<String>,
        /// The message the button is on, and its thread.
        message_ts: Option<String>,
        thread_ts: Option<String>,
    },
    ViewSubmission {
        user_id: String,
        view_id: String,
        callback_id: String,
        private_metadata: String,
        /// Each input's value by its block id (a select's chosen option value).
        values: BTreeMap<String, String>,
    },
    /// Anything else (view closed, shortcuts): answered and ignored.
    Other(String),
}

/// A message event (`message` or `app_mention`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent {
    pub event_id: String,
    pub user: Option<String>,
    /// Set for messages from bots (ours included).
    pub bot_id: Option<String>,
    /// Edits, joins, bot messages…: only plain messages act.
    pub subtype: Option<String>,
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub text: String,
}

/// What arrived at the request URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The Events API's handshake when the request URL is saved.
    UrlVerification {
        challenge: String,
    },
    Command(Command),
    Interaction(Interaction),
    Message(MessageEvent),
    /// Understood, and nothing to do (the reason is logged).
    Ignored(String),
}

fn field(map: &BTreeMap<String, String>, name: &str) -> Result<String, String> {
    map.get(name).cloned().filter(|v| !v.is_empty()).ok_or_else(|| format!("the slash command has no `{name}`"))
}

fn text_at(value: &Value, pointer: &str) -> Option<String> {
    value.pointer(pointer).and_then(Value::as_str).map(str::to_owned)
}

/// Reads a request body by its content type. Never panics on what arrives.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Request, String> {
    let content_type = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    // The content type is not signed: a body is read only in the form its first byte says it is, so a signed
    // JSON event cannot be replayed as a form (or the other way round).
    let json_like = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if content_type == "application/x-www-form-urlencoded" && json_like {
        return Err("a form-encoded body that is JSON: not what Slack sends".into());
    }
    if content_type == "application/json" && !json_like {
        return Err("a JSON body that is not an object: not what Slack sends".into());
    }
    if content_type == "application/x-www-form-urlencoded" {
        let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        if let Some(payload) = form.get("payload") {
            let payload: Value =
                serde_json::from_str(payload).map_err(|e| format!("the interaction payload is not JSON: {e}"))?;
            return Ok(Request::Interaction(interaction(&payload)?));
        }
        if form.contains_key("command") {
            return Ok(Request::Command(Command {
                command: field(&form, "command")?,
                text: form.get("text").cloned().unwrap_or_default(),
                user_id: field(&form, "user_id")?,
                channel_id: field(&form, "channel_id")?,
                trigger_id: field(&form, "trigger_id")?,
                team_id: form.get("team_id").cloned().unwrap_or_default(),
            }));
        }
        return Err("a form without `command` or `payload`: not a slash command or an interaction".into());
    }
    if content_type == "application/json" {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("the event is not JSON: {e}"))?;
        return match value["type"].as_str() {
            Some("url_verification") => Ok(Request::UrlVerification {
                challenge: text_at(&value, "/challenge").ok_or("url_verification without a challenge")?,
            }),
            Some("event_callback") => event(&value),
            Some(other) => Ok(Request::Ignored(format!("event envelope `{other}`"))),
            None => Err("an event without `type`".into()),
        };
    }
    Err(format!("content type `{content_type}`: Slack sends application/x-www-form-urlencoded or application/json"))
}

fn event(value: &Value) -> Result<Request, String> {
    let e = &value["event"];
    let kind = e["type"].as_str().unwrap_or_default();
    if !matches!(kind, "message" | "app_mention") {
        return Ok(Request::Ignored(format!("event `{kind}`")));
    }
    let (Some(channel), Some(ts)) = (text_at(e, "/channel"), text_at(e, "/ts")) else {
        return Err(format!("a `{kind}` event without channel or ts"));
    };
    Ok(Request::Message(MessageEvent {
        event_id: text_at(value, "/event_id").unwrap_or_default(),
        user: text_at(e, "/user"),
        bot_id: text_at(e, "/bot_id"),
        subtype: text_at(e, "/subtype"),
        channel,
        ts,
        thread_ts: text_at(e, "/thread_ts"),
        text: text_at(e, "/text").unwrap_or_default(),
    }))
}

fn interaction(payload: &Value) -> Result<Interaction, String> {
    let user_id = text_at(payload, "/user/id").ok_or("an interaction without a user")?;
    match payload["type"].as_str().unwrap_or_default() {
        "block_actions" => {
            let action = &payload["actions"][0];
            Ok(Interaction::BlockAction {
                user_id,
                trigger_id: text_at(payload, "/trigger_id").unwrap_or_default(),
                action_id: text_at(action, "/action_id").ok_or("a block action without action_id")?,
                value: text_at(action, "/value")
                    .or_else(|| text_at(action, "/selected_option/value"))
                    .unwrap_or_default(),
                channel_id: text_at(payload, "/channel/id").or_else(|| text_at(payload, "/container/channel_id")),
                message_ts: text_at(payload, "/message/ts").or_else(|| text_at(payload, "/container/message_ts")),
                thread_ts: text_at(payload, "/message/thread_ts"),
            })
        }
        "view_submission" => {
            let view = &payload["view"];
            let mut values = BTreeMap::new();
            if let Some(blocks) = view["state"]["values"].as_object() {
                for (block, actions) in blocks {
                    let Some(actions) = actions.as_object() else { continue };
                    for action in actions.values() {
                        let value = text_at(action, "/selected_option/value")
                            .or_else(|| text_at(action, "/value"))
                            .unwrap_or_default();
                        values.insert(block.clone(), value);
                    }
                }
            }
            Ok(Interaction::ViewSubmission {
                user_id,
                view_id: text_at(view, "/id").ok_or("a view submission without a view id")?,
                callback_id: text_at(view, "/callback_id").unwrap_or_default(),
                private_metadata: text_at(view, "/private_metadata").unwrap_or_default(),
                values,
            })
        }
        other => Ok(Interaction::Other(other.to_owned())),
    }
}

/// A Web API call that did not work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    #[error("Slack's rate limit: retry after {} s", .0.as_secs())]
    RateLimited(Duration),
    /// Slack answered `ok: false`; `needed` is the missing scope of a `missing_scope`.
    #[error("{}", explain(code, needed.as_deref()))]
    Api { code: String, needed: Option<String> },
    #[error("Slack answered HTTP {0}")]
    Http(u16),
    #[error("Slack could not be reached: {0}")]
    Network(String),
}

impl SlackError {
    /// Whether trying again later may help.
    pub fn retryable(&self) -> bool {
        match self {
            SlackError::RateLimited(_) | SlackError::Network(_) => true,
            SlackError::Http(status) => *status >= 500,
            SlackError::Api { code, .. } => {
                matches!(code.as_str(), "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout")
            }
        }
    }

    /// Slack's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SlackError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What a Slack error code means for us, and what to do.
pub fn explain(code: &str, needed: Option<&str>) -> String {
    match code {
        "invalid_auth" | "not_authed" | "token_revoked" | "token_expired" | "account_inactive" => format!(
            "Slack refused the bot token ({code}): install the app to the workspace again and put its Bot User \
             OAuth Token (xoxb-…) in the bot token secret"
        ),
        "missing_scope" => format!(
            "the bot token lacks the scope {}: add it under OAuth & Permissions (the manifest in docs/slack-app-manifest.yml lists every scope), then reinstall the app",
            needed.unwrap_or("this call needs")
        ),
        "not_in_channel" => {
            "the app is not in the channel: invite it there (/invite @Viberglass), then retry".to_owned()
        }
        "channel_not_found" => {
            "Slack does not know the channel, or the app cannot see it (a private channel: invite the app first)"
                .to_owned()
        }
        "is_archived" => "the channel is archived: link the ticket to a thread in another channel".to_owned(),
        "expired_trigger_id" | "invalid_trigger_id" | "trigger_exchanged" => {
            "the form could not be opened within Slack's three seconds: run the command again".to_owned()
        }
        "message_not_found" | "cant_update_message" | "thread_not_found" => {
            format!("the message is gone from Slack ({code})")
        }
        "user_not_found" | "users_not_found" => format!("Slack does not know the user ({code})"),
        "msg_too_long" | "invalid_blocks" | "invalid_arguments" => {
            format!("Slack refused the message ({code}): please report this as a Viberglass bug")
        }
        other => format!("Slack answered {other}"),
    }
}

/// A Slack user as `users.info` describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub email: Option<String>,
    pub team_id: Option<String>,
    pub deleted: bool,
    pub bot: bool,
    /// A guest or a member of another organisation (Slack Connect).
    pub guest: bool,
    /// `false` when Slack says the address is not confirmed; `None` when it does not say.
    pub email_confirmed: Option<bool>,
}

impl Person {
    /// Why this person may not act for a Viberglass user of the workspace `team`, if they may not.
    pub fn refusal(&self, team: Option<&str>) -> Option<&'static str> {
        if self.deleted {
            Some("the Slack account is deactivated")
        } else if self.bot {
            Some("bots and apps do not act for people")
        } else if self.guest {
            Some("guests and people from other organisations cannot act for a Viberglass user")
        } else if self.email_confirmed == Some(false) {
            Some("the Slack account's e-mail address is not confirmed")
        } else if team.is_some() && self.team_id.is_some() && self.team_id.as_deref() != team {
            Some("the Slack account belongs to another workspace")
        } else {
            None
        }
    }
}

/// Who the bot is (`auth.test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub team_id: String,
    pub team: String,
    pub user_id: String,
}

/// The Web API, with the bot token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    api_url: String,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("api_url", &self.api_url).finish_non_exhaustive()
    }
}

/// The HTTP client Slack calls go through: no redirects (a token never follows one), a timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// The wait a 429 asks for: `Retry-After` seconds (1 s when absent, at most 15 minutes).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let secs = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.clamp(1, 900))
}

impl Client {
    pub fn new(http: reqwest::Client, api_url: &str, token: &str) -> Self {
        Self { http, api_url: api_url.trim_end_matches('/').to_owned(), token: token.to_owned() }
    }

    /// An upload goes only to Slack's own file host (https, `*.slack.com`) or to the Web API's own origin.
    fn may_upload_to(&self, upload: &str) -> bool {
        let (Ok(upload), Ok(api)) = (url::Url::parse(upload), url::Url::parse(&self.api_url)) else { return false };
        let slack = upload.scheme() == "https"
            && upload.host_str().is_some_and(|h| h == "slack.com" || h.ends_with(".slack.com"));
        slack || upload.origin() == api.origin()
    }

    async fn answer(response: Result<reqwest::Response, reqwest::Error>) -> Result<Value, SlackError> {
        let response = response.map_err(|e| SlackError::Network(network_reason(&e)))?;
        let status = response.status();
        if status.as_u16() == 429 {
            return Err(SlackError::RateLimited(retry_after(response.headers())));
        }
        if !status.is_success() {
            return Err(SlackError::Http(status.as_u16()));
        }
        let body: Value = response.json().await.map_err(|_| SlackError::Http(status.as_u16()))?;
        if body["ok"].as_bool() == Some(true) {
            return Ok(body);
        }
        Err(SlackError::Api {
            code: body["error"].as_str().unwrap_or("unknown_error").to_owned(),
            needed: body["needed"].as_str().map(str::to_owned),
        })
    }

    /// Calls a method with a JSON body.
    pub async fn call(&self, method: &str, body: &Value) -> Result<Value, SlackError> {
        let response = self
            .http
            .post(format!("{}/{method}", self.api_url))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await;
        Self::answer(response).await
    }

    /// Calls a method with form arguments (the methods that take no JSON).
    pub async fn call_form(&self, method: &str, args: &[(&str, &str)]) -> Result<Value, SlackError> {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(args).finish();
        let response = self
            .http
            .post(format!("{}/{method}", self.api_url))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        Self::answer(response).await
    }

    pub async fn auth_test(&self) -> Result<Identity, SlackError> {
        let body = self.call("auth.test", &json!({})).await?;
        Ok(Identity {
            team_id: body["team_id"].as_str().unwrap_or_default().to_owned(),
            team: body["team"].as_str().unwrap_or_default().to_owned(),
            user_id: body["user_id"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Posts a message (in a thread when `thread_ts` is set); its timestamp.
    pub async fn post_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
        blocks: Option<&Value>,
    ) -> Result<String, SlackError> {
        let mut body = json!({"channel": channel, "text": text, "unfurl_links": false, "unfurl_media": false});
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        if let Some(blocks) = blocks {
            body["blocks"] = blocks.clone();
        }
        let answer = self.call("chat.postMessage", &body).await?;
        answer["ts"].as_str().map(str::to_owned).ok_or(SlackError::Api { code: "no_ts".into(), needed: None })
    }

    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: Option<&Value>,
    ) -> Result<(), SlackError> {
        let mut body = json!({"channel": channel, "ts": ts, "text": text});
        body["blocks"] = blocks.cloned().unwrap_or_else(|| json!([]));
        self.call("chat.update", &body).await.map(|_| ())
    }

    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        thread_ts: Option<&str>,
        text: &str,
    ) -> Result<(), SlackError> {
        let mut body = json!({"channel": channel, "user": user, "text": text});
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        self.call("chat.postEphemeral", &body).await.map(|_| ())
    }

    pub async fn open_view(&self, trigger_id: &str, view: &Value) -> Result<(), SlackError> {
        self.call("views.open", &json!({"trigger_id": trigger_id, "view": view})).await.map(|_| ())
    }

    /// Who a user is (`users.info`; the e-mail needs the `users:read.email` scope).
    pub async fn user_info(&self, user: &str) -> Result<Person, SlackError> {
        let body = self.call_form("users.info", &[("user", user)]).await?;
        let u = &body["user"];
        let flag = |k: &str| u[k].as_bool().unwrap_or(false);
        Ok(Person {
            email: u["profile"]["email"].as_str().map(str::to_owned),
            team_id: u["team_id"].as_str().map(str::to_owned),
            deleted: flag("deleted"),
            bot: flag("is_bot") || flag("is_app_user"),
            guest: flag("is_restricted") || flag("is_ultra_restricted") || flag("is_stranger"),
            email_confirmed: u["is_email_confirmed"].as_bool(),
        })
    }

    /// Uploads a file into a thread (`files.getUploadURLExternal`, the upload, `files.completeUploadExternal`).
    pub async fn upload_file(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        filename: &str,
        title: &str,
        content: &[u8],
    ) -> Result<String, SlackError> {
        let length = content.len().to_string();
        let ticket =
            self.call_form("files.getUploadURLExternal", &[("filename", filename), ("length", &length)]).await?;
        let (Some(url), Some(file)) = (ticket["upload_url"].as_str(), ticket["file_id"].as_str()) else {
            return Err(SlackError::Api { code: "no_upload_url".into(), needed: None });
        };
        if !self.may_upload_to(url) {
            return Err(SlackError::Api { code: "unexpected_upload_url".into(), needed: None });
        }
        let uploaded = self.http.post(url).body(content.to_vec()).send().await;
        let uploaded = uploaded.map_err(|e| SlackError::Network(network_reason(&e)))?;
        if !uploaded.status().is_success() {
            return Err(SlackError::Http(uploaded.status().as_u16()));
        }
        let mut body = json!({"files": [{"id": file, "title": title}], "channel_id": channel});
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        self.call("files.completeUploadExternal", &body).await?;
        Ok(file.to_owned())
    }
}

fn network_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "the connection failed (DNS, firewall or proxy)".into()
    } else {
        "the request failed".into()
    }
}

/// A section of mrkdwn text (cut to Slack's 3,000 characters).
pub fn section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(text, 3000)}})
}

/// Small grey text under a message.
pub fn context(text: &str) -> Value {
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(text, 3000)}]})
}

/// A row of buttons: (action id, label, value, style).
pub fn buttons(buttons: &[(&str, &str, &str, Option<&str>)]) -> Value {
    let elements: Vec<Value> = buttons
        .iter()
        .map(|(action, label, value, style)| {
            let mut b = json!({"type": "button", "action_id": action, "text": {"type": "plain_text", "text": label},
                "value": value});
            if let Some(style) = style {
                b["style"] = json!(style);
            }
            b
        })
        .collect();
    json!({"type": "actions", "elements": elements})
}

/// A select input of (value, label) options.
pub fn select_input(block: &str, label: &str, options: &[(String, String)], initial: Option<&str>) -> Value {
    let option = |(value, text): &(String, String)| json!({"text": {"type": "plain_text", "text": cut(text, 75)}, "value": value});
    let mut element = json!({"type": "static_select", "action_id": block,
        "options": options.iter().take(100).map(option).collect::<Vec<_>>()});
    if let Some(initial) = initial.and_then(|i| options.iter().find(|(v, _)| v == i)) {
        element["initial_option"] = option(initial);
    }
    json!({"type": "input", "block_id": block, "label": {"type": "plain_text", "text": label}, "element": element})
}

/// A text input; `multiline` for a message.
pub fn text_input(block: &str, label: &str, initial: &str, multiline: bool, optional: bool) -> Value {
    let mut element = json!({"type": "plain_text_input", "action_id": block, "multiline": multiline});
    if !initial.is_empty() {
        element["initial_value"] = json!(cut(initial, 3000));
    }
    json!({"type": "input", "block_id": block, "optional": optional,
        "label": {"type": "plain_text", "text": label}, "element": element})
}

/// A modal view.
pub fn modal(callback_id: &str, title: &str, submit: &str, private_metadata: &str, blocks: Vec<Value>) -> Value {
    json!({"type": "modal", "callback_id": callback_id, "private_metadata": private_metadata,
        "title": {"type": "plain_text", "text": cut(title, 24)},
        "submit": {"type": "plain_text", "text": cut(submit, 24)},
        "close": {"type": "plain_text", "text": "Cancel"}, "blocks": blocks})
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, ts: &str, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn slacks_own_example_signature_verifies() {
        // The example from Slack's "Verifying requests from Slack".
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(verify(secret, Some("1531420618"), Some(signature), body, 1531420618 + 10), Ok(()));
        assert_eq!(sign(secret, "1531420618", body), signature);
    }

    #[test]
    fn stale_missing_and_wrong_signatures_are_refused() {
        let body = b"command=%2Fviberator";
        let good = sign("s3cret", "1700000000", body);
        assert_eq!(verify("s3cret", Some("1700000000"), Some(&good), body, 1700000000 + 299), Ok(()));
        assert_eq!(
            verify("s3cret", Some("1700000000"), Some(&good), body, 1700000000 + 301),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify("s3cret", Some("1700000000"), Some(&good), body, 1700000000 - 400),
            Err(VerifyError::Stale(400))
        );
        assert_eq!(verify("other", Some("1700000000"), Some(&good), body, 1700000000), Err(VerifyError::Mismatch));
        assert_eq!(verify("s3cret", Some("1700000000"), Some("v0=zz"), body, 1700000000), Err(VerifyError::Mismatch));
        assert!(matches!(verify("s3cret", None, Some(&good), body, 1700000000), Err(VerifyError::Missing(_))));
        assert!(matches!(verify("s3cret", Some("soon"), Some(&good), body, 1700000000), Err(VerifyError::Missing(_))));
        let tampered = b"command=%2Fviberator&text=x";
        assert_eq!(verify("s3cret", Some("1700000000"), Some(&good), tampered, 1700000000), Err(VerifyError::Mismatch));
    }

    #[test]
    fn commands_interactions_and_events_are_read() {
        let form = b"command=%2Fviberator&text=Cart+empties&user_id=U1&channel_id=C1&trigger_id=T.1&team_id=T0";
        let Ok(Request::Command(c)) = parse("application/x-www-form-urlencoded", form) else { panic!() };
        assert_eq!((c.text.as_str(), c.user_id.as_str(), c.trigger_id.as_str()), ("Cart empties", "U1", "T.1"));

        let payload = json!({"type": "view_submission", "user": {"id": "U1"}, "view": {"id": "V1",
            "callback_id": "vg_file", "private_metadata": "{\"channel\":\"C1\"}", "state": {"values": {
            "project": {"project": {"type": "static_select", "selected_option": {"value": "shop"}}},
            "title": {"title": {"type": "plain_text_input", "value": "Cart empties"}}}}}});
        let body =
            format!("payload={}", form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>());
        let Ok(Request::Interaction(Interaction::ViewSubmission { values, callback_id, .. })) =
            parse("application/x-www-form-urlencoded; charset=utf-8", body.as_bytes())
        else {
            panic!()
        };
        assert_eq!(callback_id, "vg_file");
        assert_eq!(values["project"], "shop");
        assert_eq!(values["title"], "Cart empties");

        let event = json!({"type": "event_callback", "event_id": "Ev1", "event": {"type": "message",
            "user": "U1", "channel": "C1", "ts": "1700000001.000100", "thread_ts": "1700000000.000100", "text": "lgtm"}});
        let Ok(Request::Message(m)) = parse("application/json", event.to_string().as_bytes()) else { panic!() };
        assert_eq!((m.thread_ts.as_deref(), m.text.as_str()), (Some("1700000000.000100"), "lgtm"));
        let reaction = json!({"type": "event_callback", "event": {"type": "reaction_added"}});
        assert!(matches!(parse("application/json", reaction.to_string().as_bytes()), Ok(Request::Ignored(_))));
        let hello = json!({"type": "url_verification", "challenge": "abc"});
        assert_eq!(
            parse("application/json", hello.to_string().as_bytes()),
            Ok(Request::UrlVerification { challenge: "abc".into() })
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for (ct, body) in [
            ("application/json", &b"{"[..]),
            ("application/json", b"[]"),
            ("application/x-www-form-urlencoded", b"payload=%7B"),
            ("application/x-www-form-urlencoded", b"payload=%7B%7D"),
            ("application/x-www-form-urlencoded", b"command=%2Fx"),
            ("text/plain", b"hi"),
            ("application/x-www-form-urlencoded", b" {\"type\":\"x\"}&payload=%7B%7D"),
            ("application/json", b"payload=%7B%7D"),
            ("application/json", b"{\"type\":\"event_callback\",\"event\":{\"type\":\"message\"}}"),
        ] {
            assert!(parse(ct, body).is_err(), "{ct} {:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn only_full_members_of_the_workspace_act() {
        let member = Person {
            email: Some("a@x".into()),
            team_id: Some("T1".into()),
            deleted: false,
            bot: false,
            guest: false,
            email_confirmed: Some(true),
        };
        assert_eq!(member.refusal(Some("T1")), None);
        assert!(Person { guest: true, ..member.clone() }.refusal(Some("T1")).unwrap().contains("guests"));
        assert!(Person { deleted: true, ..member.clone() }.refusal(None).is_some());
        assert!(Person { bot: true, ..member.clone() }.refusal(None).is_some());
        assert!(Person { email_confirmed: Some(false), ..member.clone() }.refusal(None).is_some());
        assert!(member.refusal(Some("T2")).unwrap().contains("another workspace"));
    }

    #[test]
    fn uploads_go_only_to_slack_or_the_api_itself() {
        let client = Client::new(reqwest::Client::new(), "https://slack.com/api", "xoxb");
        assert!(client.may_upload_to("https://files.slack.com/upload/v1/abc"));
        assert!(!client.may_upload_to("http://files.slack.com/upload/v1/abc"));
        assert!(!client.may_upload_to("https://files.slack.com.evil.example/upload"));
        assert!(!client.may_upload_to("http://169.254.169.254/latest"));
        let local = Client::new(reqwest::Client::new(), "http://127.0.0.1:9/api", "xoxb");
        assert!(local.may_upload_to("http://127.0.0.1:9/upload/F1"));
    }

    #[test]
    fn every_error_says_what_to_do() {
        assert!(explain("not_in_channel", None).contains("/invite"));
        assert!(explain("missing_scope", Some("users:read.email")).contains("users:read.email"));
        assert!(explain("invalid_auth", None).contains("bot token"));
        assert!(SlackError::RateLimited(Duration::from_secs(3)).retryable());
        assert!(!SlackError::Api { code: "channel_not_found".into(), needed: None }.retryable());
        assert_eq!(cut("abcdef", 4), "abc…");
    }
}
