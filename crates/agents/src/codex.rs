//! Codex: `codex exec --json ...`.

use serde_json::Value;
use viberglass_domain::AgentKind;

use crate::events::brief;
use crate::{Adapter, AgentEvent, ErrorKind, Invocation, RunContext, StreamParser};

pub struct Codex;

impl Adapter for Codex {
    fn kind(&self) -> AgentKind {
        AgentKind::Codex
    }

    fn default_key_secret(&self) -> &'static str {
        "OPENAI_API_KEY"
    }

    fn upstream(&self, settings: &crate::AgentSettings) -> Result<crate::Upstream, String> {
        Ok(crate::Upstream::new(settings.base_url.as_ref(), "https://api.openai.com/v1", crate::KeyStyle::Bearer))
    }

    fn invocation(&self, cx: &RunContext<'_>) -> Invocation {
        let model = cx.settings.model.clone().unwrap_or_else(|| "gpt-5.5".to_owned());
        let mut args: Vec<String> = vec![
            "exec".into(),
            "--json".into(),
            "--skip-git-repo-check".into(),
            "--ephemeral".into(),
            "-m".into(),
            model,
        ];
        // Our own provider entry: the key from our variable, no retries (a bad key fails at once).
        let base_url = cx.settings.base_url.clone().unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
        args.extend([
            "-c".into(),
            "model_provider=viberglass".into(),
            "-c".into(),
            format!(
                "model_providers.viberglass={{name=\"Viberglass\",base_url=\"{base_url}\",env_key=\"VIBERGLASS_OPENAI_KEY\",wire_api=\"responses\",request_max_retries=0,stream_max_retries=0}}"
            ),
            "-c".into(),
            "analytics.enabled=false".into(),
            "--disable".into(),
            "plugins".into(),
            // Our sandbox (bubblewrap) isolates the run; Codex's own would need its helper binaries.
            "--dangerously-bypass-approvals-and-sandbox".into(),
        ]);
        let prompt = match &cx.settings.system_prompt {
            Some(extra) => format!("{extra}\n\n{}", cx.prompt),
            None => cx.prompt.to_owned(),
        };
        // `-`: the prompt comes on standard input.
        args.push("-".into());
        let env = vec![
            ("HOME".to_owned(), cx.home.display().to_string()),
            ("CODEX_HOME".to_owned(), cx.home.join(".codex").display().to_string()),
            ("VIBERGLASS_OPENAI_KEY".to_owned(), cx.api_key.to_owned()),
        ];
        Invocation {
            program: cx.settings.binary.clone().unwrap_or_else(|| "codex".to_owned()),
            args,
            env,
            home_files: Vec::new(),
            stdin: prompt,
        }
    }

    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(Parser)
    }
}

struct Parser;

fn status_in(message: &str) -> Option<u64> {
    message.split_whitespace().find_map(|w| w.parse::<u64>().ok().filter(|n| (400..600).contains(n)))
}

impl StreamParser for Parser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let raw = || vec![AgentEvent::Raw { line: line.to_owned() }];
        let Ok(value) = serde_json::from_str::<Value>(line) else { return raw() };
        match value.get("type").and_then(Value::as_str).unwrap_or_default() {
            "thread.started" | "turn.started" => Vec::new(),
            "item.started" | "item.updated" => {
                let item = &value["item"];
                match item["type"].as_str() {
                    Some("command_execution") if value["type"] == "item.started" => vec![AgentEvent::ToolStarted {
                        id: item["id"].as_str().unwrap_or_default().to_owned(),
                        tool: "shell".into(),
                        summary: brief(item["command"].as_str().unwrap_or_default()),
                    }],
                    _ => Vec::new(),
                }
            }
            "item.completed" => {
                let item = &value["item"];
                let id = item["id"].as_str().unwrap_or_default().to_owned();
                match item["type"].as_str() {
                    Some("agent_message") => {
                        vec![AgentEvent::Text { text: item["text"].as_str().unwrap_or_default().to_owned() }]
                    }
                    Some("reasoning") => {
                        vec![AgentEvent::Reasoning { text: item["text"].as_str().unwrap_or_default().to_owned() }]
                    }
                    Some("command_execution") => {
                        let ok = item["exit_code"].as_i64() == Some(0) && item["status"].as_str() != Some("failed");
                        vec![AgentEvent::ToolFinished {
                            id,
                            ok,
                            summary: brief(item["aggregated_output"].as_str().unwrap_or_default()),
                        }]
                    }
                    Some("file_change") => item["changes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| AgentEvent::FileChanged {
                            path: c["path"].as_str().unwrap_or_default().to_owned(),
                            change: c["kind"].as_str().unwrap_or("update").to_owned(),
                        })
                        .collect(),
                    Some("error") => {
                        let message = item["message"].as_str().unwrap_or_default();
                        // Missing model metadata is a warning, not a failure.
                        if message.contains("metadata") {
                            vec![AgentEvent::Raw { line: line.to_owned() }]
                        } else {
                            vec![AgentEvent::Error {
                                kind: ErrorKind::from_status(status_in(message), message),
                                message: message.to_owned(),
                            }]
                        }
                    }
                    _ => raw(),
                }
            }
            "turn.completed" => {
                let usage = &value["usage"];
                vec![AgentEvent::Usage {
                    input_tokens: usage["input_tokens"].as_u64().unwrap_or(0),
                    output_tokens: usage["output_tokens"].as_u64().unwrap_or(0),
                    cost_usd: None,
                }]
            }
            "turn.failed" | "error" => {
                let message = value["error"]["message"]
                    .as_str()
                    .or_else(|| value["message"].as_str())
                    .unwrap_or("the turn failed")
                    .to_owned();
                if message.starts_with("Reconnecting") {
                    return raw();
                }
                vec![AgentEvent::Error { kind: ErrorKind::from_status(status_in(&message), &message), message }]
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
    fn a_recorded_command_run_becomes_tool_events_text_and_usage() {
        let events = parse(include_str!("../tests/streams/codex-success.jsonl"));
        assert!(
            matches!(events.first(), Some(AgentEvent::ToolStarted { tool, summary, .. }) if tool == "shell" && summary.contains("RESEARCH.md")),
            "{events:#?}"
        );
        assert!(events.iter().any(|e| matches!(e, AgentEvent::ToolFinished { ok: true, .. })), "{events:#?}");
        assert!(events.iter().any(|e| matches!(e, AgentEvent::Text { .. })), "{events:#?}");
        assert!(events.iter().any(|e| matches!(e, AgentEvent::Usage { .. })), "{events:#?}");
    }

    #[test]
    fn a_bad_key_is_an_auth_error() {
        let events = parse(include_str!("../tests/streams/codex-auth.jsonl"));
        assert!(events.iter().any(|e| matches!(e, AgentEvent::Error { kind: ErrorKind::Auth, .. })), "{events:#?}");
    }

    #[test]
    fn malformed_lines_are_kept_raw() {
        let events = parse("{broken\n{\"type\":\"brand.new\"}");
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| matches!(e, AgentEvent::Raw { .. })));
    }

    #[test]
    fn the_command_line_runs_unattended_and_quiet() {
        let settings = crate::AgentSettings { base_url: Some("http://127.0.0.1:2/v1".into()), ..Default::default() };
        let cx = RunContext { prompt: "do it", home: "/w/home".into(), settings: &settings, api_key: "k" };
        let inv = Codex.invocation(&cx);
        assert_eq!(&inv.args[..2], ["exec", "--json"]);
        assert!(inv.args.contains(&"analytics.enabled=false".to_owned()));
        assert!(inv.args.windows(2).any(|w| w == ["--disable", "plugins"]));
        assert!(
            inv.args
                .iter()
                .any(|a| a.contains("base_url=\"http://127.0.0.1:2/v1\"") && a.contains("request_max_retries=0"))
        );
        assert!(inv.env.contains(&("CODEX_HOME".to_owned(), "/w/home/.codex".to_owned())));
    }
}
