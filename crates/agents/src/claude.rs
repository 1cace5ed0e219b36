//! Claude Code: `claude -p ... --output-format stream-json --verbose`.

use serde_json::Value;
use viberglass_domain::AgentKind;

use crate::events::brief;
use crate::{Adapter, AgentEvent, ErrorKind, Invocation, RunContext, StreamParser};

pub struct ClaudeCode;

impl Adapter for ClaudeCode {
    fn kind(&self) -> AgentKind {
        AgentKind::ClaudeCode
    }

    fn default_key_secret(&self) -> &'static str {
        "ANTHROPIC_API_KEY"
    }

    fn upstream(&self, settings: &crate::AgentSettings) -> Result<crate::Upstream, String> {
        Ok(crate::Upstream::new(settings.base_url.as_ref(), "https://api.anthropic.com", crate::KeyStyle::Anthropic))
    }

    fn invocation(&self, cx: &RunContext<'_>) -> Invocation {
        let mut args: Vec<String> =
            // `-p` without a prompt argument: Claude Code reads the prompt from standard input.
            ["-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        if let Some(model) = &cx.settings.model {
            args.extend(["--model".to_owned(), model.clone()]);
        }
        if let Some(extra) = &cx.settings.system_prompt {
            args.extend(["--append-system-prompt".to_owned(), extra.clone()]);
        }
        let mut env = vec![
            ("HOME".to_owned(), cx.home.display().to_string()),
            ("ANTHROPIC_API_KEY".to_owned(), cx.api_key.to_owned()),
            // Root inside our sandbox: allow skipping permission prompts.
            ("IS_SANDBOX".to_owned(), "1".to_owned()),
            // No telemetry, update checks or other calls outside the model API.
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_owned(), "1".to_owned()),
            ("DISABLE_AUTOUPDATER".to_owned(), "1".to_owned()),
            // Fail at once on a bad key instead of retrying for minutes.
            ("CLAUDE_CODE_MAX_RETRIES".to_owned(), "0".to_owned()),
        ];
        if let Some(url) = &cx.settings.base_url {
            env.push(("ANTHROPIC_BASE_URL".to_owned(), url.clone()));
        }
        Invocation {
            program: cx.settings.binary.clone().unwrap_or_else(|| "claude".to_owned()),
            args,
            env,
            home_files: Vec::new(),
            stdin: cx.prompt.to_owned(),
        }
    }

    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(Parser)
    }
}

/// Claude Code's stream-json reader; Qwen Code writes the same shapes.
pub(crate) struct Parser;

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            items.iter().filter_map(|i| i.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        other => other.to_string(),
    }
}

fn tool_summary(name: &str, input: &Value) -> String {
    let field = match name {
        "Bash" => "command",
        "Write" | "Edit" | "Read" | "MultiEdit" => "file_path",
        "Glob" | "Grep" => "pattern",
        _ => "",
    };
    input.get(field).and_then(Value::as_str).map_or_else(|| brief(&input.to_string()), brief)
}

/// The HTTP status in a message such as "API Error: 529 Overloaded".
fn api_status(message: &str) -> Option<u64> {
    let rest = message.split("API Error: ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

impl StreamParser for Parser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let raw = || vec![AgentEvent::Raw { line: line.to_owned() }];
        let Ok(value) = serde_json::from_str::<Value>(line) else { return raw() };
        let kind = value.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "system" => match value.get("subtype").and_then(Value::as_str) {
                Some("api_retry") => vec![AgentEvent::Error {
                    kind: ErrorKind::from_status(
                        value.get("error_status").and_then(Value::as_u64),
                        value.get("error").and_then(Value::as_str).unwrap_or_default(),
                    ),
                    message: value.get("error").and_then(Value::as_str).unwrap_or("api error").to_owned(),
                }],
                _ => Vec::new(),
            },
            "assistant" => {
                let message = value.get("message").cloned().unwrap_or_default();
                let mut events = Vec::new();
                if let Some(error) = value.get("error").and_then(Value::as_str) {
                    let message = text(&message["content"]);
                    let kind = ErrorKind::from_status(api_status(&message), &format!("{error} {message}"));
                    events.push(AgentEvent::Error { kind, message });
                    return events;
                }
                for block in message.get("content").and_then(Value::as_array).into_iter().flatten() {
                    match block.get("type").and_then(Value::as_str) {
                        Some("text") => events.push(AgentEvent::Text { text: text(&block["text"]) }),
                        Some("thinking") => events.push(AgentEvent::Reasoning { text: text(&block["thinking"]) }),
                        Some("tool_use") => {
                            let name = block.get("name").and_then(Value::as_str).unwrap_or("tool").to_owned();
                            let input = block.get("input").cloned().unwrap_or_default();
                            let summary = tool_summary(&name, &input);
                            let id = block.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                            events.push(AgentEvent::ToolStarted { id, tool: name.clone(), summary });
                            if matches!(name.as_str(), "Write" | "Edit" | "MultiEdit") {
                                let path = input.get("file_path").and_then(Value::as_str).unwrap_or_default();
                                events.push(AgentEvent::FileChanged {
                                    path: path.to_owned(),
                                    change: name.to_lowercase(),
                                });
                            }
                        }
                        _ => {}
                    }
                }
                events
            }
            "user" => value["message"]["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                .map(|b| AgentEvent::ToolFinished {
                    id: b.get("tool_use_id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    ok: !b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                    summary: brief(&text(&b["content"])),
                })
                .collect(),
            "result" => {
                let usage = &value["usage"];
                let mut events = vec![AgentEvent::Usage {
                    input_tokens: usage["input_tokens"].as_u64().unwrap_or(0)
                        + usage["cache_read_input_tokens"].as_u64().unwrap_or(0)
                        + usage["cache_creation_input_tokens"].as_u64().unwrap_or(0),
                    output_tokens: usage["output_tokens"].as_u64().unwrap_or(0),
                    cost_usd: value["total_cost_usd"].as_f64(),
                }];
                if value["is_error"].as_bool() == Some(true) {
                    // Claude Code puts the message in `result`, Qwen Code in `error.message`.
                    let message = value["result"]
                        .as_str()
                        .or_else(|| value["error"]["message"].as_str())
                        .unwrap_or("the run failed")
                        .to_owned();
                    let status = value["api_error_status"].as_u64().or_else(|| api_status(&message));

                    events.push(AgentEvent::Error { kind: ErrorKind::from_status(status, &message), message });
                }
                events
            }
            _ => raw(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &str) -> Vec<AgentEvent> {
        crate::parse_all(&mut Parser, lines)
    }

    #[test]
    fn a_recorded_tool_run_becomes_tool_events_text_and_usage() {
        let events = parse(include_str!("../tests/streams/claude-code-success.jsonl"));
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                AgentEvent::ToolStarted { .. } => "tool_started",
                AgentEvent::ToolFinished { .. } => "tool_finished",
                AgentEvent::Text { .. } => "text",
                AgentEvent::Usage { .. } => "usage",
                AgentEvent::FileChanged { .. } => "file_changed",
                AgentEvent::Reasoning { .. } => "reasoning",
                AgentEvent::Error { .. } => "error",
                AgentEvent::Raw { .. } => "raw",
            })
            .collect();
        assert_eq!(kinds, ["tool_started", "tool_finished", "text", "usage"], "{events:#?}");
        assert!(
            matches!(&events[0], AgentEvent::ToolStarted { tool, summary, .. } if tool == "Bash" && summary.contains("RESEARCH.md"))
        );
    }

    #[test]
    fn a_bad_key_is_an_auth_error() {
        let events = parse(include_str!("../tests/streams/claude-code-auth.jsonl"));
        assert!(events.iter().any(|e| matches!(e, AgentEvent::Error { kind: ErrorKind::Auth, .. })), "{events:#?}");
    }

    #[test]
    fn an_overloaded_provider_is_told_apart_from_other_errors() {
        let line = r#"{"type":"assistant","error":"unknown","message":{"content":[{"type":"text","text":"API Error: 529 Overloaded. This is a server-side issue"}]}}"#;
        assert!(matches!(Parser.line(line).as_slice(), [AgentEvent::Error { kind: ErrorKind::Overloaded, .. }]));
        let line = r#"{"type":"assistant","error":"rate_limit","message":{"content":[{"type":"text","text":"API Error: 429 rate limited"}]}}"#;
        assert!(matches!(Parser.line(line).as_slice(), [AgentEvent::Error { kind: ErrorKind::RateLimit, .. }]));
    }

    #[test]
    fn malformed_and_unknown_lines_are_kept_raw() {
        let events = parse("not json at all\n{\"type\":\"something_new\",\"x\":1}\n{\"type\":\"assistant\"}");
        assert!(matches!(&events[0], AgentEvent::Raw { line } if line == "not json at all"));
        assert!(matches!(&events[1], AgentEvent::Raw { .. }));
        assert_eq!(events.len(), 2, "an assistant line without content carries nothing");
    }

    #[test]
    fn the_command_line_runs_unattended_and_quiet() {
        let settings = crate::AgentSettings {
            model: Some("sonnet".into()),
            base_url: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        };
        let cx = RunContext { prompt: "do it", home: "/w/home".into(), settings: &settings, api_key: "k" };
        let inv = ClaudeCode.invocation(&cx);
        assert_eq!(inv.program, "claude");
        assert!(inv.args.windows(2).any(|w| w == ["--output-format", "stream-json"]));
        assert!(inv.args.contains(&"--dangerously-skip-permissions".to_owned()));
        assert!(inv.args.windows(2).any(|w| w == ["--model", "sonnet"]));
        for (name, value) in [
            ("IS_SANDBOX", "1"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:1"),
        ] {
            assert!(inv.env.contains(&(name.to_owned(), value.to_owned())), "{name}");
        }
    }
}
