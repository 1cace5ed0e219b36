//! OpenCode: `opencode run --format json --auto`, configured entirely
//! through `OPENCODE_CONFIG_CONTENT`: the provider's base URL, the key (by
//! environment reference, never inline), the model declared so no catalogue
//! download is needed, and sharing and auto-update off.

use serde_json::{Value, json};
use viberglass_domain::AgentKind;

use crate::events::brief;
use crate::{Adapter, AgentEvent, ErrorKind, Invocation, RunContext, StreamParser};

pub struct OpenCode;

impl Adapter for OpenCode {
    fn kind(&self) -> AgentKind {
        AgentKind::Opencode
    }

    fn default_key_secret(&self) -> &'static str {
        "OPENAI_API_KEY"
    }

    fn upstream(&self, settings: &crate::AgentSettings) -> Result<crate::Upstream, String> {
        crate::provider_upstream("OpenCode", settings.provider.as_deref().unwrap_or("openai"), settings)
    }

    fn invocation(&self, cx: &RunContext<'_>) -> Invocation {
        let provider = cx.settings.provider.clone().unwrap_or_else(|| "openai".to_owned());
        let model = cx.settings.model.clone().unwrap_or_else(|| "gpt-5.5".to_owned());
        let mut options = json!({"apiKey": "{env:VIBERGLASS_AGENT_KEY}"});
        if let Some(url) = &cx.settings.base_url {
            options["baseURL"] = json!(url);
        }
        let config = json!({
            "provider": {provider.clone(): {"options": options, "models": {model.clone(): {"name": model.clone()}}}},
            "autoupdate": false,
            "share": "disabled",
        });
        let prompt = match &cx.settings.system_prompt {
            Some(extra) => format!("{extra}\n\n{}", cx.prompt),
            None => cx.prompt.to_owned(),
        };
        let args = vec![
            "run".into(),
            "--format".into(),
            "json".into(),
            "-m".into(),
            format!("{provider}/{model}"),
            "--auto".into(),
            // `run` adds what it reads on standard input to its message.
            crate::STDIN_PROMPT.into(),
        ];
        let env = vec![
            ("HOME".to_owned(), cx.home.display().to_string()),
            ("VIBERGLASS_AGENT_KEY".to_owned(), cx.api_key.to_owned()),
            ("OPENCODE_CONFIG_CONTENT".to_owned(), config.to_string()),
        ];
        Invocation {
            program: cx.settings.binary.clone().unwrap_or_else(|| "opencode".to_owned()),
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

impl StreamParser for Parser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let raw = || vec![AgentEvent::Raw { line: line.to_owned() }];
        let Ok(value) = serde_json::from_str::<Value>(line) else { return raw() };
        let part = &value["part"];
        match value["type"].as_str().unwrap_or_default() {
            "step_start" => Vec::new(),
            "text" => vec![AgentEvent::Text { text: part["text"].as_str().unwrap_or_default().to_owned() }],
            "reasoning" => vec![AgentEvent::Reasoning { text: part["text"].as_str().unwrap_or_default().to_owned() }],
            // OpenCode reports a tool call once it has finished: both ends at once.
            "tool_use" => {
                let tool = part["tool"].as_str().unwrap_or("tool").to_owned();
                let id = part["callID"].as_str().unwrap_or_default().to_owned();
                let state = &part["state"];
                let input = &state["input"];
                let summary = input["command"]
                    .as_str()
                    .or_else(|| input["filePath"].as_str())
                    .map_or_else(|| brief(&input.to_string()), brief);
                let mut events = vec![AgentEvent::ToolStarted { id: id.clone(), tool: tool.clone(), summary }];
                if matches!(tool.as_str(), "write" | "edit") {
                    events.push(AgentEvent::FileChanged {
                        path: input["filePath"].as_str().unwrap_or_default().to_owned(),
                        change: tool.clone(),
                    });
                }
                let ok = state["status"] == "completed";
                let output = state["output"].as_str().or_else(|| state["error"].as_str()).unwrap_or_default();
                events.push(AgentEvent::ToolFinished { id, ok, summary: brief(output) });
                events
            }
            "step_finish" => vec![AgentEvent::Usage {
                input_tokens: part["tokens"]["input"].as_u64().unwrap_or(0),
                output_tokens: part["tokens"]["output"].as_u64().unwrap_or(0),
                cost_usd: part["cost"].as_f64().filter(|c| *c > 0.0),
            }],
            "error" => {
                let error = &value["error"];
                let message =
                    error["data"]["message"].as_str().or_else(|| error["name"].as_str()).unwrap_or("error").to_owned();
                let status = error["data"]["statusCode"].as_u64();
                let body = error["data"]["responseBody"].as_str().unwrap_or_default();
                vec![AgentEvent::Error { kind: ErrorKind::from_status(status, &format!("{message} {body}")), message }]
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
        let events = parse(include_str!("../tests/streams/opencode-success.jsonl"));
        assert!(
            matches!(&events[0], AgentEvent::ToolStarted { tool, summary, .. } if tool == "bash" && summary.contains("RESEARCH.md")),
            "{events:#?}"
        );
        assert!(matches!(&events[1], AgentEvent::ToolFinished { ok: true, .. }));
        assert!(matches!(&events[2], AgentEvent::Usage { input_tokens: 120, output_tokens: 42, .. }));
        assert!(events.iter().any(|e| matches!(e, AgentEvent::Text { text } if text.starts_with("Done"))));
    }

    #[test]
    fn a_bad_key_is_an_auth_error() {
        let events = parse(include_str!("../tests/streams/opencode-auth.jsonl"));
        assert!(matches!(events.as_slice(), [AgentEvent::Error { kind: ErrorKind::Auth, .. }]), "{events:#?}");
    }

    #[test]
    fn unknown_and_malformed_lines_are_kept_raw() {
        assert!(matches!(parse("}{").as_slice(), [AgentEvent::Raw { .. }]));
        assert!(matches!(parse(r#"{"type":"permission_asked"}"#).as_slice(), [AgentEvent::Raw { .. }]));
    }

    #[test]
    fn the_config_names_the_key_by_reference_and_declares_the_model() {
        let settings = crate::AgentSettings {
            provider: Some("anthropic".into()),
            model: Some("claude-x".into()),
            base_url: Some("http://127.0.0.1:5/v1".into()),
            ..Default::default()
        };
        let inv = OpenCode.invocation(&RunContext {
            prompt: "p",
            home: "/h".into(),
            settings: &settings,
            api_key: "secret-key",
        });
        assert_eq!(&inv.args[..3], ["run", "--format", "json"]);
        assert!(
            inv.args.windows(2).any(|w| w == ["-m", "anthropic/claude-x"]) && inv.args.contains(&"--auto".to_owned())
        );
        let config = &inv.env.iter().find(|(k, _)| k == "OPENCODE_CONFIG_CONTENT").unwrap().1;
        assert!(!config.contains("secret-key"), "the key is referenced, not inlined");
        let config: Value = serde_json::from_str(config).unwrap();
        assert_eq!(config["provider"]["anthropic"]["options"]["baseURL"], "http://127.0.0.1:5/v1");
        assert!(config["provider"]["anthropic"]["models"]["claude-x"].is_object());
        assert_eq!(config["share"], "disabled");
    }
}
