//! Gemini CLI: `gemini -p ... -o stream-json --yolo`, with a settings file in
//! its fresh home that selects API-key auth and turns telemetry, usage
//! statistics, update checks and folder trust prompts off.

use serde_json::Value;
use viberglass_domain::AgentKind;

use crate::events::brief;
use crate::{Adapter, AgentEvent, ErrorKind, Invocation, RunContext, StreamParser};

pub struct GeminiCli;

const SETTINGS: &str = r#"{"security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": false}},
 "privacy": {"usageStatisticsEnabled": false}, "telemetry": {"enabled": false},
 "general": {"disableAutoUpdate": true, "disableUpdateNag": true}}
"#;

impl Adapter for GeminiCli {
    fn kind(&self) -> AgentKind {
        AgentKind::GeminiCli
    }

    fn default_key_secret(&self) -> &'static str {
        "GEMINI_API_KEY"
    }

    fn upstream(&self, settings: &crate::AgentSettings) -> Result<crate::Upstream, String> {
        Ok(crate::Upstream::new(
            settings.base_url.as_ref(),
            "https://generativelanguage.googleapis.com",
            crate::KeyStyle::Google,
        ))
    }

    fn invocation(&self, cx: &RunContext<'_>) -> Invocation {
        let prompt = match &cx.settings.system_prompt {
            Some(extra) => format!("{extra}\n\n{}", cx.prompt),
            None => cx.prompt.to_owned(),
        };
        // Gemini CLI adds what it reads on standard input to the `-p` text.
        let mut args: Vec<String> =
            vec!["-p".into(), crate::STDIN_PROMPT.into(), "-o".into(), "stream-json".into(), "--yolo".into()];
        if let Some(model) = &cx.settings.model {
            args.extend(["-m".to_owned(), model.clone()]);
        }
        let mut env = vec![
            ("HOME".to_owned(), cx.home.display().to_string()),
            ("GEMINI_API_KEY".to_owned(), cx.api_key.to_owned()),
        ];
        if let Some(url) = &cx.settings.base_url {
            env.push(("GOOGLE_GEMINI_BASE_URL".to_owned(), url.clone()));
        }
        Invocation {
            program: cx.settings.binary.clone().unwrap_or_else(|| "gemini".to_owned()),
            args,
            env,
            home_files: vec![(".gemini/settings.json".to_owned(), SETTINGS.to_owned())],
            stdin: prompt,
        }
    }

    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(Parser)
    }
}

struct Parser;

impl StreamParser for Parser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let raw = || vec![AgentEvent::Raw { line: line.to_owned() }];
        let Ok(value) = serde_json::from_str::<Value>(line) else { return raw() };
        match value["type"].as_str().unwrap_or_default() {
            "init" => Vec::new(),
            "message" if value["role"] == "assistant" => {
                vec![AgentEvent::Text { text: value["content"].as_str().unwrap_or_default().to_owned() }]
            }
            "message" => Vec::new(),
            "tool_use" => {
                let tool = value["tool_name"].as_str().unwrap_or("tool").to_owned();
                let params = &value["parameters"];
                let summary = params["command"]
                    .as_str()
                    .or_else(|| params["file_path"].as_str())
                    .map_or_else(|| brief(&params.to_string()), brief);
                let mut events = vec![AgentEvent::ToolStarted {
                    id: value["tool_id"].as_str().unwrap_or_default().to_owned(),
                    tool: tool.clone(),
                    summary,
                }];
                if matches!(tool.as_str(), "write_file" | "replace") {
                    let path = params["file_path"].as_str().unwrap_or_default().to_owned();
                    events.push(AgentEvent::FileChanged {
                        path,
                        change: if tool == "replace" { "edit".into() } else { "write".into() },
                    });
                }
                events
            }
            "tool_result" => vec![AgentEvent::ToolFinished {
                id: value["tool_id"].as_str().unwrap_or_default().to_owned(),
                ok: value["status"] == "success",
                summary: brief(
                    value["output"].as_str().or_else(|| value["error"]["message"].as_str()).unwrap_or_default(),
                ),
            }],
            "result" => {
                let stats = &value["stats"];
                let mut events = vec![AgentEvent::Usage {
                    input_tokens: stats["input_tokens"].as_u64().unwrap_or(0),
                    output_tokens: stats["output_tokens"].as_u64().unwrap_or(0),
                    cost_usd: None,
                }];
                if value["status"] == "error" {
                    let message = value["error"]["message"].as_str().unwrap_or("the run failed").to_owned();
                    events.push(AgentEvent::Error { kind: ErrorKind::from_status(None, &message), message });
                }
                events
            }
            "error" => {
                let message = value["message"].as_str().unwrap_or("error").to_owned();
                vec![AgentEvent::Error { kind: ErrorKind::from_status(None, &message), message }]
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
        let events = parse(include_str!("../tests/streams/gemini-cli-success.jsonl"));
        assert!(
            matches!(&events[0], AgentEvent::ToolStarted { tool, summary, .. } if tool == "run_shell_command" && summary.contains("RESEARCH.md")),
            "{events:#?}"
        );
        assert!(matches!(&events[1], AgentEvent::ToolFinished { ok: true, .. }));
        assert!(matches!(&events[2], AgentEvent::Text { .. }));
        assert!(matches!(&events[3], AgentEvent::Usage { input_tokens: 240, .. }));
    }

    #[test]
    fn a_bad_key_is_an_auth_error() {
        let events = parse(include_str!("../tests/streams/gemini-cli-auth.jsonl"));
        assert!(events.iter().any(|e| matches!(e, AgentEvent::Error { kind: ErrorKind::Auth, .. })), "{events:#?}");
    }

    #[test]
    fn unknown_and_malformed_lines_are_kept_raw() {
        assert!(matches!(parse("{oops").as_slice(), [AgentEvent::Raw { .. }]));
        assert!(matches!(parse(r#"{"type":"future_thing"}"#).as_slice(), [AgentEvent::Raw { .. }]));
    }

    #[test]
    fn the_command_line_and_settings_file_keep_it_unattended() {
        let settings = crate::AgentSettings {
            base_url: Some("http://127.0.0.1:4".into()),
            model: Some("gemini-x".into()),
            ..Default::default()
        };
        let inv =
            GeminiCli.invocation(&RunContext { prompt: "p", home: "/h".into(), settings: &settings, api_key: "k" });
        assert!(inv.args.windows(2).any(|w| w == ["-o", "stream-json"]) && inv.args.contains(&"--yolo".to_owned()));
        assert!(inv.env.contains(&("GOOGLE_GEMINI_BASE_URL".to_owned(), "http://127.0.0.1:4".to_owned())));
        let (path, content) = &inv.home_files[0];
        assert_eq!(path, ".gemini/settings.json");
        let parsed: Value = serde_json::from_str(content).unwrap();
        assert_eq!(parsed["security"]["auth"]["selectedType"], "gemini-api-key");
        assert_eq!(parsed["telemetry"]["enabled"], false);
    }
}
