//! A fake Slack: the Web API methods Viberglass calls (`auth.test`,
//! `chat.postMessage`, `chat.update`, `chat.postEphemeral`, `views.open`,
//! `users.info`, and file upload through `files.getUploadURLExternal`, the
//! upload URL and `files.completeUploadExternal`), with workspace state
//! (users with e-mails, channels the app is or is not in, messages with
//! their threads and edits, ephemeral messages, opened views, files), a
//! switchable rate limit (HTTP 429 with `Retry-After`, as Slack answers), and
//! the refusals that matter (`invalid_auth`, `not_in_channel`,
//! `channel_not_found`, `message_not_found`, `cant_update_message`,
//! `expired_trigger_id`, `user_not_found`), answered with HTTP 200 and
//! `ok: false` as Slack does.
//!
//! [`SlackSender`] is Slack's other half: it signs slash commands,
//! interactions and events (`v0=` HMAC-SHA256 of `v0:{ts}:{body}` with the
//! app's signing secret) and posts them to the server's request URL; a slash
//! command or a button click issues a trigger id valid for three seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

pub const TEAM: &str = "T0ACME";
pub const BOT_USER: &str = "U0VIBERGLASS";
pub const BOT_ID: &str = "B0VIBERGLASS";

/// A message in a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    /// Who posted it: the bot, or a person.
    pub user: String,
    pub text: String,
    pub blocks: Value,
    pub edits: u32,
}

impl Message {
    /// The text of the message and its blocks (what a person reads).
    pub fn all_text(&self) -> String {
        format!("{}\n{}", self.text, self.blocks)
    }

    /// The value of the button with `action_id`, if the message has one.
    pub fn button(&self, action_id: &str) -> Option<String> {
        self.blocks.as_array()?.iter().find_map(|b| {
            b["elements"].as_array()?.iter().find(|e| e["action_id"] == action_id)?["value"].as_str().map(str::to_owned)
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ephemeral {
    pub channel: String,
    pub user: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub id: String,
    pub channel: String,
    pub thread_ts: Option<String>,
    pub title: String,
    pub content: Vec<u8>,
}

/// One Web API call, as received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub at: Instant,
    /// 200, or 429 when rate limited.
    pub status: u16,
}

#[derive(Default)]
struct State_ {
    token: String,
    users: BTreeMap<String, Option<String>>,
    /// Users `users.info` describes as guests (`is_restricted`).
    guests: Vec<String>,
    /// Channel → whether the app is in it.
    channels: BTreeMap<String, bool>,
    messages: Vec<Message>,
    ephemerals: Vec<Ephemeral>,
    /// Views opened, with the trigger they used.
    views: Vec<(String, Value)>,
    triggers: BTreeMap<String, Instant>,
    uploads: BTreeMap<String, (String, Option<Vec<u8>>)>,
    files: Vec<File>,
    /// The next this many calls answer 429 with this Retry-After.
    limited: Option<(u32, u64)>,
    calls: Vec<Call>,
    clock: u64,
}

impl State_ {
    fn next_ts(&mut self) -> String {
        self.clock += 1;
        format!("{}.{:06}", 1_700_000_000 + self.clock, self.clock)
    }
}

/// A running fake Slack workspace. Stops when dropped.
#[derive(Clone)]
pub struct FakeSlack {
    pub address: SocketAddr,
    state: Arc<Mutex<State_>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        if Arc::strong_count(&self.state) <= 2 {
            self.stop.cancel();
        }
    }
}

fn ok(body: Value) -> Response {
    let mut body = body;
    body["ok"] = json!(true);
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn fail(error: &str) -> Response {
    (StatusCode::OK, axum::Json(json!({"ok": false, "error": error}))).into_response()
}

impl FakeSlack {
    /// A workspace whose app has the bot token `token`.
    pub async fn start(token: &str) -> FakeSlack {
        let state = Arc::new(Mutex::new(State_ { token: token.to_owned(), ..Default::default() }));
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let (address, stop) = crate::serve_fake(app).await;
        FakeSlack { address, state, stop }
    }

    /// The Web API root to configure: `http://…/api`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.address)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State_) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// A person in the workspace, with an e-mail Slack shares (or none).
    pub fn add_user(&self, id: &str, email: Option<&str>) {
        self.with(|s| s.users.insert(id.to_owned(), email.map(str::to_owned)));
    }

    /// A guest of the workspace (`is_restricted`), with an e-mail Slack shares.
    pub fn add_guest(&self, id: &str, email: &str) {
        self.with(|s| {
            s.users.insert(id.to_owned(), Some(email.to_owned()));
            s.guests.push(id.to_owned());
        });
    }

    /// A channel; `app_member` says whether the app was invited.
    pub fn add_channel(&self, id: &str, app_member: bool) {
        self.with(|s| s.channels.insert(id.to_owned(), app_member));
    }

    /// A person's message; its ts.
    pub fn person_says(&self, channel: &str, user: &str, thread_ts: Option<&str>, text: &str) -> String {
        self.with(|s| {
            let ts = s.next_ts();
            s.messages.push(Message {
                channel: channel.to_owned(),
                ts: ts.clone(),
                thread_ts: thread_ts.map(str::to_owned),
                user: user.to_owned(),
                text: text.to_owned(),
                blocks: json!([]),
                edits: 0,
            });
            ts
        })
    }

    /// The next `calls` Web API calls answer 429 with `Retry-After: retry_after`.
    pub fn rate_limit(&self, calls: u32, retry_after: u64) {
        self.with(|s| s.limited = Some((calls, retry_after)));
    }

    pub fn messages(&self) -> Vec<Message> {
        self.with(|s| s.messages.clone())
    }

    /// The bot's messages in a thread (the parent included when the bot posted it), oldest first.
    pub fn thread(&self, channel: &str, thread_ts: &str) -> Vec<Message> {
        self.with(|s| {
            s.messages
                .iter()
                .filter(|m| m.channel == channel && (m.ts == thread_ts || m.thread_ts.as_deref() == Some(thread_ts)))
                .cloned()
                .collect()
        })
    }

    pub fn ephemerals(&self) -> Vec<Ephemeral> {
        self.with(|s| s.ephemerals.clone())
    }

    pub fn views(&self) -> Vec<Value> {
        self.with(|s| s.views.iter().map(|(_, v)| v.clone()).collect())
    }

    pub fn files(&self) -> Vec<File> {
        self.with(|s| s.files.clone())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }

    fn issue_trigger(&self) -> String {
        self.with(|s| {
            s.clock += 1;
            let id = format!("{}.{}.trigger{:08x}", s.clock, 47445629121u64, rand_u32());
            s.triggers.insert(id.clone(), Instant::now());
            id
        })
    }
}

fn rand_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// The call's arguments: JSON body, form body or query string.
fn arguments(headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Value {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut args = serde_json::Map::new();
    if content_type.starts_with("application/json") {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
            args = map;
        }
    } else {
        for (k, v) in form_urlencoded::parse(body) {
            args.insert(k.into_owned(), json!(v.into_owned()));
        }
    }
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        args.entry(k.into_owned()).or_insert(json!(v.into_owned()));
    }
    Value::Object(args)
}

async fn handle(State(state): State<Arc<Mutex<State_>>>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let mut s = state.lock().unwrap();
    if let Some(file) = path.strip_prefix("/upload/") {
        return match s.uploads.get_mut(file) {
            Some((_, content)) => {
                *content = Some(body.to_vec());
                (StatusCode::OK, format!("OK - {}", body.len())).into_response()
            }
            None => (StatusCode::NOT_FOUND, "no such upload").into_response(),
        };
    }
    let Some(method) = path.strip_prefix("/api/").map(str::to_owned) else {
        return (StatusCode::NOT_FOUND, "not a Web API path").into_response();
    };
    if let Some((left, retry_after)) = s.limited {
        s.limited = if left > 1 { Some((left - 1, retry_after)) } else { None };
        s.calls.push(Call { method, at: Instant::now(), status: 429 });
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after.to_string())],
            axum::Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response();
    }
    s.calls.push(Call { method: method.clone(), at: Instant::now(), status: 200 });
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => return fail("not_authed"),
        Some(t) if t != s.token => return fail("invalid_auth"),
        Some(_) => {}
    }
    let args = arguments(&headers, &uri, &body);
    let arg = |k: &str| args[k].as_str().map(str::to_owned);
    let channel_check = |s: &State_, channel: &Option<String>| -> Result<String, &'static str> {
        let channel = channel.clone().ok_or("channel_not_found")?;
        match s.channels.get(&channel) {
            None => Err("channel_not_found"),
            Some(false) => Err("not_in_channel"),
            Some(true) => Ok(channel),
        }
    };
    match method.as_str() {
        "auth.test" => ok(json!({"url": "https://acme.slack.com/", "team": "Acme", "user": "viberglass",
            "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID})),
        "chat.postMessage" => {
            let channel = match channel_check(&s, &arg("channel")) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let text = arg("text").unwrap_or_default();
            let blocks = args.get("blocks").cloned().unwrap_or(json!([]));
            if text.is_empty() && blocks.as_array().is_none_or(Vec::is_empty) {
                return fail("no_text");
            }
            let thread_ts = arg("thread_ts");
            if let Some(parent) = &thread_ts
                && !s.messages.iter().any(|m| m.channel == channel && &m.ts == parent && m.thread_ts.is_none())
            {
                return fail("thread_not_found");
            }
            let ts = s.next_ts();
            s.messages.push(Message {
                channel: channel.clone(),
                ts: ts.clone(),
                thread_ts,
                user: BOT_USER.into(),
                text,
                blocks,
                edits: 0,
            });
            ok(json!({"channel": channel, "ts": ts}))
        }
        "chat.update" => {
            let (channel, ts) = (arg("channel").unwrap_or_default(), arg("ts").unwrap_or_default());
            let Some(message) = s.messages.iter_mut().find(|m| m.channel == channel && m.ts == ts) else {
                return fail("message_not_found");
            };
            if message.user != BOT_USER {
                return fail("cant_update_message");
            }
            message.text = arg("text").unwrap_or_default();
            message.blocks = args.get("blocks").cloned().unwrap_or(json!([]));
            message.edits += 1;
            ok(json!({"channel": channel, "ts": ts}))
        }
        "chat.postEphemeral" => {
            let channel = match channel_check(&s, &arg("channel")) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let user = arg("user").unwrap_or_default();
            if !s.users.contains_key(&user) {
                return fail("user_not_in_channel");
            }
            let text = arg("text").unwrap_or_default();
            s.ephemerals.push(Ephemeral { channel, user, text });
            let ts = s.next_ts();
            ok(json!({"message_ts": ts}))
        }
        "views.open" => {
            let trigger = arg("trigger_id").unwrap_or_default();
            let Some(issued) = s.triggers.remove(&trigger) else { return fail("invalid_trigger_id") };
            if issued.elapsed() > Duration::from_secs(3) {
                return fail("expired_trigger_id");
            }
            let Some(view) = args.get("view").filter(|v| v["type"] == "modal").cloned() else {
                return fail("invalid_arguments");
            };
            s.clock += 1;
            let id = format!("V{:08}", s.clock);
            let mut view = view;
            view["id"] = json!(id);
            s.views.push((trigger, view.clone()));
            ok(json!({"view": view}))
        }
        "users.info" => {
            let user = arg("user").unwrap_or_default();
            match s.users.get(&user) {
                None => fail("user_not_found"),
                Some(email) => {
                    let mut profile = json!({"real_name": user});
                    if let Some(email) = email {
                        profile["email"] = json!(email);
                    }
                    let guest = s.guests.contains(&user);
                    ok(json!({"user": {"id": user, "team_id": TEAM, "name": user, "deleted": false, "is_bot": false,
                        "is_restricted": guest, "is_ultra_restricted": false, "is_email_confirmed": true,
                        "profile": profile}}))
                }
            }
        }
        "files.getUploadURLExternal" => {
            let (Some(filename), Some(_)) = (arg("filename"), arg("length")) else { return fail("invalid_arguments") };
            s.clock += 1;
            let id = format!("F{:08}", s.clock);
            s.uploads.insert(id.clone(), (filename, None));
            let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1").to_owned();
            ok(json!({"upload_url": format!("http://{host}/upload/{id}"), "file_id": id}))
        }
        "files.completeUploadExternal" => {
            let Some(files) = args.get("files").and_then(Value::as_array).cloned() else {
                return fail("invalid_arguments");
            };
            let channel = match channel_check(&s, &arg("channel_id")) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let thread_ts = arg("thread_ts");
            let mut done = Vec::new();
            for f in files {
                let id = f["id"].as_str().unwrap_or_default().to_owned();
                let Some((name, Some(content))) = s.uploads.remove(&id) else { return fail("file_not_found") };
                let title = f["title"].as_str().map(str::to_owned).unwrap_or(name);
                s.files.push(File {
                    id: id.clone(),
                    channel: channel.clone(),
                    thread_ts: thread_ts.clone(),
                    title,
                    content,
                });
                done.push(json!({"id": id}));
            }
            ok(json!({"files": done}))
        }
        _ => fail("unknown_method"),
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Slack's signature of a request body at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Sends what Slack sends to a request URL, signed with the app's signing secret.
pub struct SlackSender {
    pub url: String,
    pub secret: String,
    pub slack: FakeSlack,
    http: reqwest::Client,
}

/// A form value: what a person typed or chose for a block.
pub fn typed(block: &str, value: &str) -> (String, String) {
    (block.to_owned(), value.to_owned())
}

impl SlackSender {
    pub fn new(url: &str, secret: &str, slack: &FakeSlack) -> Self {
        Self { url: url.to_owned(), secret: secret.to_owned(), slack: slack.clone(), http: reqwest::Client::new() }
    }

    /// Posts a body with the given timestamp and signature (for the refusal tests).
    pub async fn raw(
        &self,
        content_type: &str,
        body: Vec<u8>,
        timestamp: i64,
        signature: Option<String>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", timestamp.to_string());
        if let Some(signature) = signature {
            request = request.header("x-slack-signature", signature);
        }
        request.body(body).send().await.unwrap()
    }

    /// Posts a body signed now, as Slack does.
    pub async fn signed(&self, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        let ts = now();
        let signature = sign(&self.secret, ts, &body);
        self.raw(content_type, body, ts, Some(signature)).await
    }

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().into_bytes()
    }

    /// The slash command form body, with a fresh trigger.
    pub fn command_body(&self, user: &str, channel: &str, text: &str) -> Vec<u8> {
        let trigger = self.slack.issue_trigger();
        Self::form(&[
            ("token", "deprecated-verification-token"),
            ("team_id", TEAM),
            ("team_domain", "acme"),
            ("channel_id", channel),
            ("channel_name", "general"),
            ("user_id", user),
            ("user_name", user),
            ("command", "/viberator"),
            ("text", text),
            ("api_app_id", "A0VIBERGLASS"),
            ("response_url", "https://hooks.slack.com/commands/T0ACME/1/abc"),
            ("trigger_id", &trigger),
        ])
    }

    /// `/viberator text` from `user` in `channel`.
    pub async fn slash(&self, user: &str, channel: &str, text: &str) -> reqwest::Response {
        let body = self.command_body(user, channel, text);
        self.signed("application/x-www-form-urlencoded", body).await
    }

    async fn interaction(&self, payload: Value) -> reqwest::Response {
        let body = Self::form(&[("payload", &payload.to_string())]);
        self.signed("application/x-www-form-urlencoded", body).await
    }

    /// Submits an opened view with these values (block id → typed text or chosen option value).
    pub async fn submit(&self, user: &str, view: &Value, values: &[(String, String)]) -> reqwest::Response {
        let mut state = serde_json::Map::new();
        for (block, value) in values {
            let element = view["blocks"]
                .as_array()
                .and_then(|bs| bs.iter().find(|b| b["block_id"] == block.as_str()))
                .map(|b| b["element"]["type"].as_str().unwrap_or("plain_text_input").to_owned())
                .unwrap_or_else(|| "plain_text_input".into());
            let action = if element == "static_select" {
                json!({"type": element, "selected_option": {"value": value, "text": {"type": "plain_text", "text": value}}})
            } else {
                json!({"type": element, "value": value})
            };
            state.insert(block.clone(), json!({ block.clone(): action }));
        }
        let payload = json!({"type": "view_submission", "team": {"id": TEAM}, "user": {"id": user, "team_id": TEAM},
            "api_app_id": "A0VIBERGLASS", "trigger_id": self.slack.issue_trigger(),
            "view": {"id": view["id"], "type": "modal", "callback_id": view["callback_id"],
                "private_metadata": view["private_metadata"], "state": {"values": state}}});
        self.interaction(payload).await
    }

    /// Clicks the button `action_id` on a message, as `user`.
    pub async fn click(&self, user: &str, message: &Message, action_id: &str) -> reqwest::Response {
        let value = message.button(action_id).unwrap_or_else(|| panic!("no {action_id} button on {message:?}"));
        let mut msg = json!({"type": "message", "ts": message.ts, "text": message.text});
        if let Some(t) = &message.thread_ts {
            msg["thread_ts"] = json!(t);
        }
        let payload = json!({"type": "block_actions", "team": {"id": TEAM}, "user": {"id": user},
            "api_app_id": "A0VIBERGLASS", "trigger_id": self.slack.issue_trigger(),
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel},
            "channel": {"id": message.channel}, "message": msg,
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b", "value": value,
                "action_ts": format!("{}.000001", now())}]});
        self.interaction(payload).await
    }

    /// `user` replies `text` in a thread: the message lands in the workspace and its events are sent (a
    /// mention of the bot sends `app_mention` too, as Slack does); the answer to the `message` event.
    pub async fn reply(&self, user: &str, channel: &str, thread_ts: &str, text: &str) -> reqwest::Response {
        let ts = self.slack.person_says(channel, user, Some(thread_ts), text);
        let event = |kind: &str| {
            json!({"token": "x", "team_id": TEAM, "api_app_id": "A0VIBERGLASS", "type": "event_callback",
                "event_id": format!("Ev{}", rand_u32()), "event_time": now(),
                "event": {"type": kind, "user": user, "text": text, "ts": ts, "channel": channel,
                    "thread_ts": thread_ts, "channel_type": "channel", "event_ts": ts}})
        };
        let answer = self.signed("application/json", event("message").to_string().into_bytes()).await;
        if text.contains(&format!("<@{BOT_USER}>")) {
            let mention = self.signed("application/json", event("app_mention").to_string().into_bytes()).await;
            assert_eq!(mention.status(), 200, "the app_mention event was refused");
        }
        answer
    }

    /// An `event_callback` of any event, signed.
    pub async fn event(&self, event: Value) -> reqwest::Response {
        let body = json!({"type": "event_callback", "team_id": TEAM, "event_id": format!("Ev{}", rand_u32()),
            "event": event});
        self.signed("application/json", body.to_string().into_bytes()).await
    }
}
