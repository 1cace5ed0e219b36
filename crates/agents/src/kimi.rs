//! Kimi Code (kimi-cli): `kimi --print --output-format stream-json --yolo`,
//! the prompt on standard input, configured by a `~/.kimi/config.toml` in the
//! run's fresh home (a `kimi` provider at the clanker's `base_url`, the model,
//! telemetry off) with the key in `KIMI_API_KEY`, the variable kimi-cli reads
//! for that provider. Print mode never opens its interface, never checks for
//! updates and approves its own tool calls.
//!
//! Its stream is one JSON message per line (`{"role": "assistant", "content",
//! "tool_calls"}`, then `{"role": "tool", "tool_call_id", "content"}` for each
//! result); a model API error is a plain line (`Error code: 401 - {...}`,
//! `Connection error.`). Print mode reports no token usage.

use serde_json::Value;
use viberglass_domain::AgentKind;

use crate::events::brief;
use crate::{Adapter, AgentEvent, ErrorKind, Invocation, RunContext, StreamParser};

pub struct KimiCode;

const DEFAULT_BASE_URL: &str = "https://api.moonshot.ai/v1";
const DEFAULT_MODEL: &str = "kimi-k2-turbo-preview";

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

impl Adapter for KimiCode {
    fn kind(&self) -> AgentKind {
        AgentKind::KimiCode
    }

    fn default_key_secret(&self) -> &'static str {
        "KIMI_API_KEY"
    }

    fn upstream(&self, settings: &crate::AgentSettings) -> Result<crate::Upstream, String> {
        Ok(crate::Upstream::new(settings.base_url.as_ref(), DEFAULT_BASE_URL, crate::KeyStyle::Bearer))
    }

    fn invocation(&self, cx: &RunContext<'_>) -> Invocation {
        let base_url = cx.settings.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let model = cx.settings.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        let config = format!(
            "default_model = \"viberglass\"\ntelemetry = false\n\n[providers.viberglass]\ntype = \"kimi\"\n\
             base_url = {}\napi_key = {}\n\n[models.viberglass]\nprovider = \"viberglass\"\nmodel = {}\n\
             max_context_size = 262144\n",
            toml_string(&base_url),
            toml_string(cx.api_key),
            toml_string(&model)
        );
        let prompt = match &cx.settings.system_prompt {
            Some(extra) => format!("{extra}\n\n{}", cx.prompt),
            None => cx.prompt.to_owned(),
        };
        Invocation {
            program: cx.settings.binary.clone().unwrap_or_else(|| "kimi".to_owned()),
            // No `-p`: with standard input not a terminal, kimi reads the prompt from it.
            args: vec![
                "--print".into(),
                "--output-format".into(),
                "stream-json".into(),
                "--yolo".into(),
                "-m".into(),
                "viberglass".into(),
            ],
            env: vec![
                ("HOME".to_owned(), cx.home.display().to_string()),
                ("KIMI_SHARE_DIR".to_owned(), cx.home.join(".kimi").display().to_string()),
                ("KIMI_API_KEY".to_owned(), cx.api_key.to_owned()),
                ("KIMI_DISABLE_TELEMETRY".to_owned(), "1".to_owned()),
                ("KIMI_CLI_NO_AUTO_UPDATE".to_owned(), "1".to_owned()),
                // Its error lines are wrapped at the terminal's width otherwise (80 columns in a pipe).
                ("COLUMNS".to_owned(), "10000".to_owned()),
            ],
            home_files: vec![(".kimi/config.toml".to_owned(), config)],
            stdin: prompt,
        }
    }

    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(Parser)
    }

    fn usage_files(&self) -> Option<(&'static str, &'static str)> {
        Some((".kimi/sessions", "wire.jsonl"))
    }

    /// The session's wire log: a `StatusUpdate` with `token_usage` after each step.
    fn usage_from(&self, content: &str) -> Vec<AgentEvent> {
        content
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|v| v["message"]["type"] == "StatusUpdate")
            .filter_map(|v| {
                let usage = v["message"]["payload"]["token_usage"].as_object()?.clone();
                let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
                Some(AgentEvent::Usage {
                    input_tokens: n("input_other")
                        .saturating_add(n("input_cache_read"))
                        .saturating_add(n("input_cache_creation")),
                    output_tokens: n("output"),
                    cost_usd: None,
                })
            })
            .collect()
    }
}

struct Parser;

/// A tool call's one-line summary: its command or path, else its arguments.
pub(crate) fn tool_summary(arguments: &Value) -> String {
    ["command", "path", "file_path", "pattern", "url"]
        .iter()
        .find_map(|k| arguments[*k].as_str())
        .map_or_else(|| brief(&arguments.to_string()), brief)
}

/// The text of a tool result or message content: a string, or the text parts of a list.
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p["text"].as_str().or_else(|| p.as_str())).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

/// An OpenAI-SDK error line: `Error code: 401 - {'error': {...}}`.
pub(crate) fn sdk_error(line: &str) -> Option<AgentEvent> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("Error code: ") {
        let status = rest.split_whitespace().next().and_then(|s| s.parse::<u64>().ok());
        return Some(AgentEvent::Error { kind: ErrorKind::from_status(status, rest), message: line.to_owned() });
    }
    if line == "Connection error." || line.starts_with("Request timed out") {
        return Some(AgentEvent::Error { kind: ErrorKind::Unreachable, message: line.to_owned() });
    }
    None
}

impl StreamParser for Parser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let raw = || vec![AgentEvent::Raw { line: line.to_owned() }];
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            return sdk_error(line).map_or_else(raw, |e| vec![e]);
        };
        match value["role"].as_str() {
            Some("assistant") => {
                let mut events = Vec::new();
                match &value["content"] {
                    Value::String(text) if !text.trim().is_empty() => {
                        events.push(AgentEvent::Text { text: text.clone() })
                    }
                    Value::Array(parts) => {
                        for part in parts {
                            match part["type"].as_str() {
                                Some("text") => events.push(AgentEvent::Text {
                                    text: part["text"].as_str().unwrap_or_default().to_owned(),
                                }),
                                Some("think") => events.push(AgentEvent::Reasoning {
                                    text: part["think"].as_str().unwrap_or_default().to_owned(),
                                }),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
                for call in value["tool_calls"].as_array().into_iter().flatten() {
                    let id = call["id"].as_str().unwrap_or_default().to_owned();
                    let tool = call["function"]["name"].as_str().unwrap_or("tool").to_owned();
                    let arguments: Value = call["function"]["arguments"]
                        .as_str()
                        .and_then(|a| serde_json::from_str(a).ok())
                        .unwrap_or(Value::Null);
                    events.push(AgentEvent::ToolStarted { id, tool: tool.clone(), summary: tool_summary(&arguments) });
                    if matches!(tool.as_str(), "WriteFile" | "StrReplaceFile") {
                        events.push(AgentEvent::FileChanged {
                            path: arguments["path"].as_str().unwrap_or_default().to_owned(),
                            change: if tool == "WriteFile" { "write".into() } else { "edit".into() },
                        });
                    }
                }
                events
            }
            Some("tool") => {
                let text = content_text(&value["content"]);
                let ok = !text.contains("<system>ERROR");
                let summary = text.replace("<system>", "").replace("</system>", " ");
                vec![AgentEvent::ToolFinished {
                    id: value["tool_call_id"].as_str().unwrap_or_default().to_owned(),
                    ok,
                    summary: brief(summary.trim()),
                }]
            }
            _ => raw(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_run_reads_as_tool_calls_their_results_and_the_answer() {
        let events = crate::parse_all(&mut Parser, include_str!("../tests/streams/kimi-code-tools.jsonl"));
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                AgentEvent::Text { .. } => "text",
                AgentEvent::ToolStarted { .. } => "started",
                AgentEvent::ToolFinished { ok: true, .. } => "finished",
                AgentEvent::ToolFinished { ok: false, .. } => "failed",
                AgentEvent::FileChanged { .. } => "file",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            ["text", "started", "file", "finished", "started", "file", "finished", "started", "finished", "text"],
            "{events:#?}"
        );
        assert!(events.iter().any(|e| matches!(e, AgentEvent::ToolStarted { tool, summary, .. }
            if tool == "Shell" && summary == "cat hello.txt")));
        assert!(crate::classify(AgentKind::KimiCode, Some(0), &events).is_none());
    }

    #[test]
    fn usage_comes_from_the_session_wire_log() {
        let events = KimiCode.usage_from(include_str!("../tests/streams/kimi-code-wire.jsonl"));
        assert_eq!(events, [AgentEvent::Usage { input_tokens: 1234, output_tokens: 56, cost_usd: None }]);
        assert!(KimiCode.usage_from("not json\n{}").is_empty());
    }

    #[test]
    fn model_api_errors_are_classified() {
        let cases = [
            (
                "Error code: 401 - {'error': {'message': 'Invalid Authentication', 'type': 'invalid_authentication_error'}}",
                ErrorKind::Auth,
            ),
            (
                "Error code: 429 - {'error': {'message': 'Rate limit reached', 'type': 'rate_limit_reached_error'}}",
                ErrorKind::RateLimit,
            ),
            (
                "Error code: 404 - {'error': {'message': 'Not found the model x or Permission denied', 'type': 'resource_not_found_error'}}",
                ErrorKind::ModelNotFound,
            ),
            ("Connection error.", ErrorKind::Unreachable),
        ];
        for (line, kind) in cases {
            let events = Parser.line(line);
            assert!(matches!(&events[..], [AgentEvent::Error { kind: k, .. }] if *k == kind), "{line}: {events:?}");
        }
        assert!(matches!(&Parser.line("To resume this session: kimi -r x")[..], [AgentEvent::Raw { .. }]));
    }

    #[test]
    fn the_command_line_and_the_config_point_at_the_clanker_settings() {
        let settings = crate::AgentSettings {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            model: Some("kimi-test\"x".into()),
            ..Default::default()
        };
        let inv =
            KimiCode.invocation(&RunContext { prompt: "p", home: "/w/home".into(), settings: &settings, api_key: "k" });
        assert!(inv.args.windows(2).any(|w| w == ["--output-format", "stream-json"]));
        assert!(inv.args.contains(&"--print".to_owned()) && !inv.args.contains(&"-p".to_owned()));
        assert_eq!(inv.stdin, "p");
        let (path, config) = &inv.home_files[0];
        assert_eq!(path, ".kimi/config.toml");
        assert!(
            config.contains("base_url = \"http://127.0.0.1:9/v1\"") && config.contains("model = \"kimi-test\\\"x\"")
        );
        assert!(config.contains("telemetry = false"));
        assert!(inv.env.contains(&("KIMI_API_KEY".to_owned(), "k".to_owned())));
    }
}
