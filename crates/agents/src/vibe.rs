//! Mistral Vibe: `vibe -p --output streaming --auto-approve --trust`, the
//! prompt on standard input (a bare `-p` reads it), configured by a
//! `~/.vibe/config.toml` in the run's fresh home (a `mistral` provider at the
//! clanker's `base_url`, the model as the active one, telemetry, update checks
//! and connectors off) with the key in `MISTRAL_API_KEY`, the variable the
//! provider entry names. `VIBE_CLI=python` keeps the Python programmatic mode
//! (never the terminal interface).
//!
//! Its stream is one history entry per line: `message` entries (the user's,
//! then the assistant's text) and `effect` entries (a tool call with its
//! outcome, once finished). Model API errors and stops go to standard error
//! only (`Error: Invalid API key …`, `Error: API error occurred: Status 429
//! …`), which its standard-error parser reads. Programmatic mode reports no
//! token usage on its streams.

use serde_json::Value;
use viberglass_domain::AgentKind;

use crate::events::brief;
use crate::{Adapter, AgentEvent, ErrorKind, Invocation, RunContext, StreamParser};

pub struct MistralVibe;

const DEFAULT_BASE_URL: &str = "https://api.mistral.ai/v1";
const DEFAULT_MODEL: &str = "devstral-medium-latest";
const EXPORT_DIR: &str = ".vibe-export";

fn toml_string(value: &str) -> String {
    Value::String(value.to_owned()).to_string()
}

/// `scheme://host[:port]` of a URL (where Vibe asks for its managed configuration).
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

impl Adapter for MistralVibe {
    fn kind(&self) -> AgentKind {
        AgentKind::MistralVibe
    }

    fn default_key_secret(&self) -> &'static str {
        "MISTRAL_API_KEY"
    }

    fn upstream(&self, settings: &crate::AgentSettings) -> Result<crate::Upstream, String> {
        let upstream = crate::Upstream::new(settings.base_url.as_ref(), DEFAULT_BASE_URL, crate::KeyStyle::Bearer);
        // Vibe's Mistral client takes `https://host/v1`: it splits the version off and adds `/v1/chat/completions`.
        let path = upstream.base_url[origin(&upstream.base_url).len()..].trim_end_matches('/');
        let versioned = path
            .rsplit('/')
            .next()
            .is_some_and(|v| v.len() > 1 && v.starts_with('v') && v[1..].chars().all(|c| c.is_ascii_digit()));
        if !versioned {
            return Err(format!(
                "Mistral Vibe needs a base URL that ends in its API version, e.g. https://api.mistral.ai/v1; \
                 `{}` does not: set agent_settings.base_url to it",
                upstream.base_url
            ));
        }
        Ok(upstream)
    }

    fn invocation(&self, cx: &RunContext<'_>) -> Invocation {
        let base_url = cx.settings.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let model = cx.settings.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        let config = format!(
            "active_model = \"viberglass\"\nenable_telemetry = false\nenable_update_checks = false\n\
             enable_auto_update = false\nenable_connectors = false\nvibe_base_url = {}\n\n[[providers]]\n\
             name = \"viberglass\"\napi_base = {}\napi_key_env_var = \"MISTRAL_API_KEY\"\nbackend = \"mistral\"\n\n\
             [[models]]\nname = {}\nprovider = \"viberglass\"\nalias = \"viberglass\"\n",
            toml_string(origin(&base_url)),
            toml_string(&base_url),
            toml_string(&model)
        );
        let prompt = match &cx.settings.system_prompt {
            Some(extra) => format!("{extra}\n\n{}", cx.prompt),
            None => cx.prompt.to_owned(),
        };
        Invocation {
            program: cx.settings.binary.clone().unwrap_or_else(|| "vibe".to_owned()),
            args: vec!["-p".into(), "--output".into(), "streaming".into(), "--auto-approve".into(), "--trust".into()],
            env: vec![
                ("HOME".to_owned(), cx.home.display().to_string()),
                ("VIBE_HOME".to_owned(), cx.home.join(".vibe").display().to_string()),
                ("MISTRAL_API_KEY".to_owned(), cx.api_key.to_owned()),
                ("VIBE_CLI".to_owned(), "python".to_owned()),
                // A refused or unreachable API is retried for five minutes by default: two is plenty here.
                ("VIBE_API_RETRY_MAX_ELAPSED_TIME".to_owned(), "120".to_owned()),
            ],
            home_files: vec![(".vibe/config.toml".to_owned(), config)],
            stdin: prompt,
        }
    }

    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(Parser)
    }

    fn stderr_parser(&self) -> Option<Box<dyn StreamParser>> {
        Some(Box::new(ErrorParser))
    }

    fn usage_files(&self) -> Option<(&'static str, &'static str)> {
        Some((EXPORT_DIR, "export.json"))
    }

    /// `export.json`: `{"usage": {"input_tokens", "output_tokens", ...}, "cost_usd"}`.
    fn usage_from(&self, content: &str) -> Vec<AgentEvent> {
        let Ok(export) = serde_json::from_str::<Value>(content) else { return Vec::new() };
        let Some(usage) = export["usage"].as_object() else { return Vec::new() };
        let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        vec![AgentEvent::Usage {
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            cost_usd: export["cost_usd"].as_f64().filter(|c| *c > 0.0),
        }]
    }
}

struct Parser;

impl StreamParser for Parser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let raw = || vec![AgentEvent::Raw { line: line.to_owned() }];
        let Ok(value) = serde_json::from_str::<Value>(line) else { return raw() };
        match (value["type"].as_str(), value["role"].as_str()) {
            (Some("message"), Some("assistant")) => value["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|part| match part["type"].as_str() {
                    Some("text") => {
                        Some(AgentEvent::Text { text: part["text"].as_str().unwrap_or_default().to_owned() })
                    }
                    Some("thinking" | "reasoning") => Some(AgentEvent::Reasoning {
                        text: part["text"].as_str().or(part["thinking"].as_str()).unwrap_or_default().to_owned(),
                    }),
                    _ => None,
                })
                .collect(),
            // The prompt, and approval questions (answered by --auto-approve): nothing to report.
            (Some("message"), _) | (Some("callback"), _) => Vec::new(),
            (Some("effect"), _) => {
                let detail = &value["detail"];
                let input = &detail["input"];
                let id = value["id"].as_str().unwrap_or_default().to_owned();
                let tool = detail["toolName"]
                    .as_str()
                    .or(value["title"].as_str())
                    .unwrap_or("tool")
                    .trim_start_matches("file_system.")
                    .to_owned();
                let summary = input["command"]
                    .as_str()
                    .or(input["filePath"].as_str())
                    .map_or_else(|| brief(detail["display"]["summary"].as_str().unwrap_or_default()), brief);
                let mut events = vec![AgentEvent::ToolStarted { id: id.clone(), tool, summary }];
                let state = &value["state"];
                let ok = state["status"] == "completed";
                if ok
                    && let Some(change) = match detail["kind"].as_str() {
                        Some("file_write") => Some("write"),
                        Some("file_edit") => Some("edit"),
                        _ => None,
                    }
                {
                    events.push(AgentEvent::FileChanged {
                        path: input["filePath"].as_str().unwrap_or_default().to_owned(),
                        change: change.to_owned(),
                    });
                }
                let outcome = state["error"]["message"]
                    .as_str()
                    .or(state["outputText"].as_str())
                    .or(state["status"].as_str())
                    .unwrap_or_default();
                events.push(AgentEvent::ToolFinished { id, ok, summary: brief(outcome) });
                events
            }
            _ => raw(),
        }
    }
}

/// Vibe's standard error: `Error: …` lines are model API (or setup) errors.
struct ErrorParser;

impl StreamParser for ErrorParser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let Some(message) = line.trim().strip_prefix("Error: ") else {
            return vec![AgentEvent::Raw { line: line.to_owned() }];
        };
        let status = message
            .split("Status ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse::<u64>().ok());
        let kind = if message.starts_with("Invalid API key") || message.starts_with("Missing MISTRAL_API_KEY") {
            ErrorKind::Auth
        } else if message.contains("connection attempts failed") || message.contains("ConnectError") {
            ErrorKind::Unreachable
        } else if status == Some(400) && message.contains("invalid_model") {
            ErrorKind::ModelNotFound
        } else {
            ErrorKind::from_status(status, message)
        };
        vec![AgentEvent::Error { kind, message: line.trim().to_owned() }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_run_reads_as_tool_calls_with_their_outcome_and_the_answer() {
        let events = crate::parse_all(&mut Parser, include_str!("../tests/streams/mistral-vibe-tools.jsonl"));
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                AgentEvent::Text { text } => format!("text {text}"),
                AgentEvent::ToolStarted { tool, summary, .. } => format!("{tool}: {summary}"),
                AgentEvent::ToolFinished { ok, .. } => format!("finished ok={ok}"),
                AgentEvent::FileChanged { path, change } => format!("{change} {path}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "write_file: hello.txt",
                "write hello.txt",
                "finished ok=true",
                "search_replace: hello.txt",
                "edit hello.txt",
                "finished ok=true",
                "bash: rm -rf /tmp/vibestub/nonexistent && false",
                "finished ok=false",
                "text Hello from stub.",
            ],
            "{events:#?}"
        );
    }

    #[test]
    fn usage_comes_from_the_export_file() {
        let export = r#"{"outcome": "finished", "usage": {"input_tokens": 100, "output_tokens": 20,
            "cached_input_tokens": 0, "total_tokens": 120}, "cost_usd": 0.0012, "steps": 1}"#;
        assert_eq!(
            MistralVibe.usage_from(export),
            [AgentEvent::Usage { input_tokens: 100, output_tokens: 20, cost_usd: Some(0.0012) }]
        );
        assert!(MistralVibe.usage_from("{").is_empty());
    }

    #[test]
    fn its_standard_error_classifies_model_api_errors() {
        let cases = [
            (
                "Error: Invalid API key (from env var MISTRAL_API_KEY). Please check your API key and try again.",
                ErrorKind::Auth,
            ),
            (
                "Error: API error occurred: Status 429. Body: {\"message\":\"Requests rate limit exceeded\"}",
                ErrorKind::RateLimit,
            ),
            ("Error: API error occurred: Status 404. Body: {\"message\":\"Not found\"}", ErrorKind::ModelNotFound),
            ("Error: API error occurred: Status 400. Body: {\"code\":\"invalid_model\"}", ErrorKind::ModelNotFound),
            ("Error: All connection attempts failed", ErrorKind::Unreachable),
        ];
        for (line, kind) in cases {
            let events = ErrorParser.line(line);
            assert!(matches!(&events[..], [AgentEvent::Error { kind: k, .. }] if *k == kind), "{line}: {events:?}");
        }
        assert!(matches!(&ErrorParser.line("Stopped: turn_limit")[..], [AgentEvent::Raw { .. }]));
    }

    #[test]
    fn the_config_points_at_the_clanker_settings_and_a_base_url_needs_its_version() {
        let settings = crate::AgentSettings {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            model: Some("mistral-test".into()),
            ..Default::default()
        };
        let inv = MistralVibe.invocation(&RunContext {
            prompt: "p",
            home: "/w/home".into(),
            settings: &settings,
            api_key: "k",
        });
        assert_eq!(inv.args[..3], ["-p", "--output", "streaming"]);
        assert_eq!(inv.stdin, "p");
        let config = &inv.home_files[0].1;
        assert!(config.contains("api_base = \"http://127.0.0.1:9/v1\"") && config.contains("name = \"mistral-test\""));
        assert!(
            config.contains("vibe_base_url = \"http://127.0.0.1:9\"") && config.contains("enable_telemetry = false")
        );
        assert!(inv.env.contains(&("MISTRAL_API_KEY".to_owned(), "k".to_owned())));
        assert!(MistralVibe.upstream(&settings).is_ok());
        assert!(MistralVibe.upstream(&crate::AgentSettings::default()).is_ok());
        let bare =
            crate::AgentSettings { base_url: Some("https://gateway.example.com/mistral".into()), ..Default::default() };
        assert!(MistralVibe.upstream(&bare).unwrap_err().contains("ends in its API version"));
    }
}
