//! Qwen Code: `qwen -p ... -o stream-json --yolo`. Its stream has Claude
//! Code's shapes (system/assistant/user/result), so it shares that parser.

use viberglass_domain::AgentKind;

use crate::{Adapter, Invocation, RunContext, StreamParser};

pub struct QwenCode;

impl Adapter for QwenCode {
    fn kind(&self) -> AgentKind {
        AgentKind::QwenCli
    }

    fn default_key_secret(&self) -> &'static str {
        "OPENAI_API_KEY"
    }

    fn upstream(&self, settings: &crate::AgentSettings) -> Result<crate::Upstream, String> {
        let provider = settings.provider.as_deref().unwrap_or("openai");
        let mut upstream = crate::provider_upstream("Qwen Code", provider, settings)?;
        // Qwen Code's Anthropic client adds `/v1` itself.
        if provider == "anthropic" && settings.base_url.is_none() {
            upstream.base_url = "https://api.anthropic.com".to_owned();
        }
        Ok(upstream)
    }

    fn invocation(&self, cx: &RunContext<'_>) -> Invocation {
        let provider = cx.settings.provider.clone().unwrap_or_else(|| "openai".to_owned());
        let mut args: Vec<String> = vec![
            // Like Gemini CLI, Qwen Code adds standard input to the `-p` text.
            "-p".into(),
            crate::STDIN_PROMPT.into(),
            "-o".into(),
            "stream-json".into(),
            "--yolo".into(),
            "--auth-type".into(),
            provider.clone(),
        ];
        if let Some(model) = &cx.settings.model {
            args.extend(["-m".to_owned(), model.clone()]);
        }
        if let Some(extra) = &cx.settings.system_prompt {
            args.extend(["--append-system-prompt".to_owned(), extra.clone()]);
        }
        let (key_var, url_var) = if provider == "anthropic" {
            ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
        } else {
            ("OPENAI_API_KEY", "OPENAI_BASE_URL")
        };
        let mut env = vec![
            ("HOME".to_owned(), cx.home.display().to_string()),
            (key_var.to_owned(), cx.api_key.to_owned()),
            // Our bubblewrap sandbox isolates the run; the CLI's warning about it is noise.
            ("QWEN_CODE_SUPPRESS_YOLO_WARNING".to_owned(), "1".to_owned()),
        ];
        if let Some(url) = &cx.settings.base_url {
            env.push((url_var.to_owned(), url.clone()));
        }
        Invocation {
            program: cx.settings.binary.clone().unwrap_or_else(|| "qwen".to_owned()),
            args,
            env,
            home_files: Vec::new(),
            stdin: cx.prompt.to_owned(),
        }
    }

    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(crate::claude::Parser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgentEvent;

    #[test]
    fn a_recorded_run_reads_like_claude_code_and_a_refused_tool_is_seen() {
        let mut parser = QwenCode.parser();
        let events: Vec<AgentEvent> = include_str!("../tests/streams/qwen-code-tool-refused.jsonl")
            .lines()
            .flat_map(|l| parser.line(l))
            .collect();
        assert!(
            events.iter().any(|e| matches!(e, AgentEvent::ToolStarted { tool, .. } if tool == "Bash")),
            "{events:#?}"
        );
        assert!(events.iter().any(|e| matches!(e, AgentEvent::ToolFinished { ok: false, .. })), "{events:#?}");
        let failure =
            crate::classify(AgentKind::QwenCli, Some(0), &events).expect("claimed success but every tool failed");
        assert_eq!(failure.code, "agent_tools_failed");
    }

    #[test]
    fn the_command_line_picks_the_provider_variables() {
        let settings = crate::AgentSettings {
            provider: Some("anthropic".into()),
            base_url: Some("http://127.0.0.1:3".into()),
            ..Default::default()
        };
        let cx = RunContext { prompt: "p", home: "/w/home".into(), settings: &settings, api_key: "k" };
        let inv = QwenCode.invocation(&cx);
        assert!(inv.args.windows(2).any(|w| w == ["-o", "stream-json"]) && inv.args.contains(&"--yolo".to_owned()));
        assert!(inv.args.windows(2).any(|w| w == ["--auth-type", "anthropic"]));
        assert!(inv.env.contains(&("ANTHROPIC_BASE_URL".to_owned(), "http://127.0.0.1:3".to_owned())));
        assert!(inv.env.contains(&("ANTHROPIC_API_KEY".to_owned(), "k".to_owned())));
        let default = crate::AgentSettings::default();
        let inv = QwenCode.invocation(&RunContext { prompt: "p", home: "/h".into(), settings: &default, api_key: "k" });
        assert!(inv.env.contains(&("OPENAI_API_KEY".to_owned(), "k".to_owned())));
    }
}

#[cfg(test)]
mod recorded_errors {
    use super::*;
    use crate::{AgentEvent, ErrorKind};

    #[test]
    fn a_bad_key_is_an_auth_error() {
        let mut parser = QwenCode.parser();
        let events: Vec<AgentEvent> =
            include_str!("../tests/streams/qwen-code-auth.jsonl").lines().flat_map(|l| parser.line(l)).collect();
        assert!(events.iter().any(|e| matches!(e, AgentEvent::Error { kind: ErrorKind::Auth, .. })), "{events:#?}");
    }
}
