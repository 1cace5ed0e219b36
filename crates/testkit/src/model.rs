//! A scripted model server speaking the Anthropic Messages API, the OpenAI
//! Responses API and OpenAI Chat Completions (the API Kimi Code and Mistral
//! Vibe use; streaming or not), and Gemini's, for driving the real agent
//! CLIs offline. Each test gives it a script of steps; it records every
//! request so the test can assert what the CLI sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One answer of the model.
#[derive(Debug, Clone)]
pub enum Step {
    /// A tool call that runs a shell command (Anthropic `Bash`, OpenAI `exec_command`).
    Run(String),
    /// A tool call that creates a file (Anthropic `Write`, OpenAI `apply_patch`), relative to the working directory.
    Write { path: String, content: String },
    /// A tool call that replaces `old` with `new` in a file (Anthropic `Edit`, OpenAI `apply_patch`).
    Edit { path: String, old: String, new: String },
    /// The final answer.
    Text(String),
    /// The next step, answered only after a delay (a slow stream).
    Slow { delay_ms: u64, step: Box<Step> },
    /// An HTTP error: 401 (bad key), 429 (rate limit), 529 (overloaded), ...
    Fail { status: u16, no_retry_header: bool },
    /// The answer starts streaming, then stalls for `secs` without another byte (a provider hanging mid-answer).
    Stall { secs: u64 },
}

/// A request the CLI made.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Inner {
    script: Mutex<VecDeque<Step>>,
    requests: Mutex<Vec<Recorded>>,
}

/// A running mock model server. Stops when dropped.
pub struct MockModel {
    pub address: SocketAddr,
    inner: Arc<Inner>,
    stop: tokio_util::sync::CancellationToken,
}

impl MockModel {
    pub async fn start(script: Vec<Step>) -> MockModel {
        let inner = Arc::new(Inner { script: Mutex::new(script.into()), requests: Mutex::new(Vec::new()) });
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        MockModel { address, inner, stop }
    }

    /// The base URL for Anthropic clients (`ANTHROPIC_BASE_URL`).
    pub fn anthropic_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The base URL for OpenAI clients (ends in `/v1`).
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Every model request so far (side queries included).
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for MockModel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(State(inner): State<Arc<Inner>>, uri: Uri, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_owned();
    inner.requests.lock().unwrap_or_else(|e| e.into_inner()).push(Recorded {
        path: path.clone(),
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned())).collect(),
        body: body.clone(),
    });
    let anthropic = path.ends_with("/messages");
    let openai = path.ends_with("/responses");
    let gemini = path.contains(":streamGenerateContent");
    if path.contains(":countTokens") {
        return Json(json!({"totalTokens": 100})).into_response();
    }
    if path.contains(":generateContent") {
        // Side queries (routing, loop checks) get a neutral answer without using up the script.
        return Json(gemini_response(&Step::Text("{}".into()), &body)).into_response();
    }
    if gemini {
        let step =
            inner.script.lock().unwrap_or_else(|e| e.into_inner()).pop_front().unwrap_or(Step::Text("Done.".into()));
        let step = match step {
            Step::Slow { delay_ms, step } => {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                *step
            }
            other => other,
        };
        if let Step::Fail { status, .. } = step {
            let name = match status {
                401 => "UNAUTHENTICATED",
                429 => "RESOURCE_EXHAUSTED",
                503 | 529 => "UNAVAILABLE",
                404 => "NOT_FOUND",
                _ => "INTERNAL",
            };
            let body = json!({"error": {"code": status, "message": format!("mock {name}"), "status": name}});
            return (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(body))
                .into_response();
        }
        let data = gemini_response(&step, &body);
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream")
            .body(Body::from(format!("data: {data}\r\n\r\n")))
            .expect("an SSE response");
    }
    if path.ends_with("/chat/completions") {
        return chat_completions(&inner, &body).await;
    }
    if path.ends_with("/api/v1/code/managed-config") {
        // Mistral Vibe asks for an organisation's managed settings: there are none.
        return Json(json!({"state": "disabled"})).into_response();
    }
    if path.ends_with("/models") {
        let model = "mock-model";
        return Json(json!({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "mock",
            "context_length": 262_144, "created": 0}]}))
        .into_response();
    }
    if !anthropic && !openai {
        return (StatusCode::OK, "ok").into_response();
    }
    // Side queries without tools (e.g. a session title) do not use up the script.
    let has_tools = body.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let step = if has_tools || openai {
        inner.script.lock().unwrap_or_else(|e| e.into_inner()).pop_front().unwrap_or(Step::Text("Done.".into()))
    } else {
        Step::Text("{\"title\": \"Viberglass job\"}".into())
    };
    let step = match step {
        Step::Slow { delay_ms, step } => {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            *step
        }
        other => other,
    };
    match step {
        Step::Fail { status, no_retry_header } => failure(anthropic, status, no_retry_header),
        Step::Stall { secs } => stalled(anthropic_stream(&Step::Text(String::new()), &body).remove(0), secs),
        step if anthropic => sse(anthropic_stream(&step, &body)),
        step => sse(openai_stream(&step)),
    }
}

fn failure(anthropic: bool, status: u16, no_retry_header: bool) -> Response {
    let (kind, message) = match status {
        401 => ("authentication_error", "invalid x-api-key"),
        429 => ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
        529 => ("overloaded_error", "Overloaded"),
        404 => ("not_found_error", "model: not-a-model"),
        _ => ("api_error", "Internal server error"),
    };
    let body = if anthropic {
        json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        let code = match status {
            401 => "invalid_api_key",
            429 => "rate_limit_exceeded",
            404 => "model_not_found",
            _ => "server_error",
        };
        json!({"error": {"message": message, "type": kind, "code": code}})
    };
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(body)).into_response();
    if no_retry_header {
        response.headers_mut().insert("x-should-retry", "false".parse().unwrap());
    }
    response
}

/// The first event of an answer, then nothing for `secs`, then the connection closes.
fn stalled((event, data): (String, Value), secs: u64) -> Response {
    stalled_after(format!("event: {event}\ndata: {data}\n\n"), secs)
}

/// `first`, then nothing for `secs`, then the connection closes.
fn stalled_after(first: String, secs: u64) -> Response {
    let stream = futures::stream::unfold(Some(first), move |first| async move {
        match first {
            Some(chunk) => Some((Ok::<_, std::io::Error>(chunk), None)),
            None => {
                tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
                None
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("an SSE response")
}

fn sse(events: Vec<(String, Value)>) -> Response {
    let mut text = String::new();
    for (event, data) in events {
        text.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    }
    sse_body(text)
}

/// A whole event stream, answered at once.
fn sse_body(text: String) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from(text))
        .expect("an SSE response")
}

fn anthropic_stream(step: &Step, request: &Value) -> Vec<(String, Value)> {
    let model = request.get("model").cloned().unwrap_or(json!("claude-test"));
    let mut events = vec![(
        "message_start".to_owned(),
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
               "content": [], "stop_reason": null, "stop_sequence": null,
               "usage": {"input_tokens": 120, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
    )];
    let cwd = working_directory(request);
    let tool = |name: &str, input: Value| {
        vec![
            (
                "content_block_start".to_owned(),
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "tool_use", "id": format!("toolu_{}", uuid::Uuid::new_v4().simple()), "name": name, "input": {}}}),
            ),
            (
                "content_block_delta".to_owned(),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
            ),
        ]
    };
    // Claude Code names its tools Bash/Write/Edit; Qwen Code run_shell_command/write_file/edit.
    let offered: Vec<String> = request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    let name = |claude: &'static str, qwen: &'static str| if offered.iter().any(|n| n == qwen) { qwen } else { claude };
    let stop_reason = match step {
        Step::Run(command) => {
            events.extend(tool(
                name("Bash", "run_shell_command"),
                json!({"command": command, "description": "Run a command"}),
            ));
            "tool_use"
        }
        Step::Write { path, content } => {
            events.extend(tool(
                name("Write", "write_file"),
                json!({"file_path": format!("{cwd}/{path}"), "content": content}),
            ));
            "tool_use"
        }
        Step::Edit { path, old, new } => {
            let input = json!({"file_path": format!("{cwd}/{path}"), "old_string": old, "new_string": new});
            events.extend(tool(name("Edit", "edit"), input));
            "tool_use"
        }
        Step::Text(text) => {
            events.push((
                "content_block_start".into(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            events.push((
                "content_block_delta".into(),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            ));
            "end_turn"
        }
        Step::Fail { .. } | Step::Slow { .. } | Step::Stall { .. } => unreachable!("answered before streaming"),
    };
    events.push(("content_block_stop".into(), json!({"type": "content_block_stop", "index": 0})));
    events.push((
        "message_delta".into(),
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": 42}}),
    ));
    events.push(("message_stop".into(), json!({"type": "message_stop"})));
    events
}

/// One Gemini `GenerateContentResponse` for a step (function calls by the names Gemini CLI offers).
fn gemini_response(step: &Step, _request: &Value) -> Value {
    let part = match step {
        Step::Run(command) => json!({"functionCall": {"name": "run_shell_command", "args": {"command": command}}}),
        Step::Write { path, content } => {
            json!({"functionCall": {"name": "write_file", "args": {"file_path": path, "content": content}}})
        }
        Step::Edit { path, old, new } => {
            json!({"functionCall": {"name": "replace", "args": {"file_path": path, "old_string": old, "new_string": new}}})
        }
        Step::Text(text) => json!({"text": text}),
        Step::Fail { .. } | Step::Slow { .. } | Step::Stall { .. } => unreachable!("answered before streaming"),
    };
    json!({"candidates": [{"content": {"parts": [part], "role": "model"}, "finishReason": "STOP", "index": 0}],
           "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 42, "totalTokenCount": 162},
           "modelVersion": "gemini-test"})
}

/// The absolute working directory Claude Code names in its system prompt.
fn working_directory(request: &Value) -> String {
    let system = request.get("system").map(Value::to_string).unwrap_or_default();
    system
        .split("Primary working directory: ")
        .nth(1)
        .and_then(|rest| rest.split(['\\', '"']).next())
        .map(|dir| dir.trim().to_owned())
        .unwrap_or_else(|| ".".to_owned())
}

/// An apply_patch body for a new file or a one-line replacement.
fn patch(step: &Step) -> String {
    match step {
        Step::Write { path, content } => {
            let lines: String = content.lines().map(|l| format!("+{l}\n")).collect();
            format!("*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n")
        }
        Step::Edit { path, old, new } => {
            format!("*** Begin Patch\n*** Update File: {path}\n@@\n-{old}\n+{new}\n*** End Patch\n")
        }
        _ => String::new(),
    }
}

fn openai_stream(step: &Step) -> Vec<(String, Value)> {
    let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let item = match step {
        Step::Run(command) => json!({"type": "function_call", "id": format!("fc_{}", uuid::Uuid::new_v4().simple()),
            "call_id": format!("call_{}", uuid::Uuid::new_v4().simple()), "name": "exec_command",
            "arguments": json!({"cmd": command}).to_string(), "status": "completed"}),
        Step::Write { .. } | Step::Edit { .. } => {
            json!({"type": "custom_tool_call", "id": format!("ctc_{}", uuid::Uuid::new_v4().simple()),
            "call_id": format!("call_{}", uuid::Uuid::new_v4().simple()), "name": "apply_patch", "input": patch(step), "status": "completed"})
        }
        Step::Text(text) => {
            json!({"type": "message", "id": format!("msg_{}", uuid::Uuid::new_v4().simple()), "role": "assistant",
            "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]})
        }
        Step::Fail { .. } | Step::Slow { .. } | Step::Stall { .. } => unreachable!("answered before streaming"),
    };
    let mut events = vec![
        (
            "response.created".to_owned(),
            json!({"type": "response.created", "response": {"id": id, "object": "response", "status": "in_progress", "output": []}}),
        ),
        (
            "response.output_item.added".to_owned(),
            json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        ),
    ];
    if let Step::Text(text) = step {
        events.push((
            "response.output_text.delta".into(),
            json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": text}),
        ));
    }
    events.push((
        "response.output_item.done".into(),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
    ));
    events.push((
        "response.completed".into(),
        json!({"type": "response.completed", "response": {"id": id, "object": "response", "status": "completed", "output": [item],
               "usage": {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 42,
                         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 162}}}),
    ));
    events
}

/// OpenAI Chat Completions: a scripted step as a tool call of the tools the request offers (a shell tool for
/// `Run`; a write tool, or the shell, for `Write` and `Edit`), or as text. Requests without tools (a title, a
/// summary) get a neutral answer without using up the script.
async fn chat_completions(inner: &Inner, request: &Value) -> Response {
    let tools: Vec<Value> = request.get("tools").and_then(Value::as_array).cloned().unwrap_or_default();
    let step = if tools.is_empty() {
        Step::Text("Viberglass job".into())
    } else {
        inner.script.lock().unwrap_or_else(|e| e.into_inner()).pop_front().unwrap_or(Step::Text("Done.".into()))
    };
    let step = match step {
        Step::Slow { delay_ms, step } => {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            *step
        }
        other => other,
    };
    let model = request.get("model").and_then(Value::as_str).unwrap_or("mock-model").to_owned();
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let (content, call) = match &step {
        Step::Fail { status, no_retry_header } => return failure(false, *status, *no_retry_header),
        Step::Stall { secs } => {
            let first = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
            return stalled_after(format!("data: {first}\n\n"), *secs);
        }
        Step::Text(text) => (Some(text.clone()), None),
        other => (None, Some(chat_tool_call(other, &tools))),
    };
    let usage = json!({"prompt_tokens": 120, "completion_tokens": 42, "total_tokens": 162});
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let message = match &call {
            Some(call) => json!({"role": "assistant", "content": null, "tool_calls": [call]}),
            None => json!({"role": "assistant", "content": content}),
        };
        let finish = if call.is_some() { "tool_calls" } else { "stop" };
        return Json(json!({"id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    match &call {
        Some(call) => {
            let mut delta = call.clone();
            delta["index"] = json!(0);
            chunks.push(chunk(json!({"tool_calls": [delta]}), Value::Null));
            chunks.push(chunk(json!({}), json!("tool_calls")));
        }
        None => {
            chunks.push(chunk(json!({"content": content}), Value::Null));
            chunks.push(chunk(json!({}), json!("stop")));
        }
    }
    // OpenAI's clients ask for usage in a chunk of its own (`stream_options.include_usage`); Mistral's
    // API sends it with the last choice.
    if request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true) {
        let mut last = chunk(json!({}), Value::Null);
        last["choices"] = json!([]);
        last["usage"] = usage;
        chunks.push(last);
    } else if let Some(finish) = chunks.last_mut() {
        finish["usage"] = usage;
    }
    let mut text = String::new();
    for c in chunks {
        text.push_str(&format!("data: {c}\n\n"));
    }
    text.push_str("data: [DONE]\n\n");
    sse_body(text)
}

/// The tool the request offers under one of `names` (case and `_` ignored), with its parameters' names.
fn offered<'a>(tools: &'a [Value], names: &[&str]) -> Option<(&'a str, Vec<String>)> {
    let norm = |n: &str| n.to_lowercase().replace(['_', '-'], "");
    tools.iter().find_map(|t| {
        let function = t.get("function").unwrap_or(t);
        let name = function.get("name")?.as_str()?;
        if !names.iter().any(|n| norm(n) == norm(name)) {
            return None;
        }
        let params = function
            .pointer("/parameters/properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        Some((name, params))
    })
}

fn pick<'a>(params: &'a [String], candidates: &[&'a str]) -> &'a str {
    candidates.iter().find(|c| params.iter().any(|p| p == *c)).copied().unwrap_or(candidates[0])
}

/// A Chat Completions tool call for a step, by the names the CLI offers.
fn chat_tool_call(step: &Step, tools: &[Value]) -> Value {
    const SHELLS: &[&str] = &["Shell", "bash", "run_shell_command", "shell", "exec_command"];
    let shell = |command: String| match offered(tools, SHELLS) {
        Some((name, params)) => (name.to_owned(), json!({ pick(&params, &["command", "cmd"]): command })),
        None => ("Shell".to_owned(), json!({"command": command})),
    };
    let (name, arguments) = match step {
        Step::Run(command) => shell(command.clone()),
        Step::Write { path, content } => match offered(tools, &["WriteFile", "write_file"]) {
            Some((name, params)) => (
                name.to_owned(),
                json!({ pick(&params, &["path", "file_path"]): path, pick(&params, &["content", "contents"]): content }),
            ),
            None => shell(format!("printf '%s' '{}' > '{path}'", content.replace('\'', "'\\''"))),
        },
        Step::Edit { path, old, new } => shell(format!(
            "python3 -c \"import sys;p=sys.argv[1];s=open(p).read();open(p,'w').write(s.replace(sys.argv[2],sys.argv[3],1))\" '{path}' '{}' '{}'",
            old.replace('\'', "'\\''"),
            new.replace('\'', "'\\''")
        )),
        _ => unreachable!("answered before streaming"),
    };
    json!({"id": format!("call_{}", uuid::Uuid::new_v4().simple()), "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()}})
}
