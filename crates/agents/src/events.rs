//! The normalized agent event stream, and the failure classification.

use serde::Serialize;
use viberglass_domain::{AgentKind, Failure, FailureLayer};

/// Why the model API refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Auth,
    RateLimit,
    Quota,
    Overloaded,
    ModelNotFound,
    Unreachable,
    Other,
}

impl ErrorKind {
    /// From an HTTP status and the provider's error name.
    pub fn from_status(status: Option<u64>, name: &str) -> ErrorKind {
        let name = name.to_lowercase();
        match status {
            Some(401) | Some(403) => ErrorKind::Auth,
            Some(429) if name.contains("quota") || name.contains("billing") || name.contains("insufficient") => {
                ErrorKind::Quota
            }
            Some(429) => ErrorKind::RateLimit,
            Some(529) | Some(503) => ErrorKind::Overloaded,
            Some(404) => ErrorKind::ModelNotFound,
            _ if name.contains("authentication")
                || name.contains("unauthenticated")
                || name.contains("invalid_api_key")
                || name.contains("api key") =>
            {
                ErrorKind::Auth
            }
            _ if name.contains("resource_exhausted") => ErrorKind::RateLimit,
            _ if name.contains("unavailable") => ErrorKind::Overloaded,

            _ if name.contains("quota") || name.contains("billing") => ErrorKind::Quota,
            _ if name.contains("rate_limit") || name.contains("rate limit") => ErrorKind::RateLimit,
            _ if name.contains("overloaded") => ErrorKind::Overloaded,
            _ if name.contains("model_not_found") || name.contains("not_found") => ErrorKind::ModelNotFound,
            _ if name.contains("connect") || name.contains("unreachable") => ErrorKind::Unreachable,
            _ => ErrorKind::Other,
        }
    }
}

/// One thing the agent did or said, in the same shape for every CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// What the agent said.
    Text {
        text: String,
    },
    Reasoning {
        text: String,
    },
    ToolStarted {
        id: String,
        tool: String,
        summary: String,
    },
    ToolFinished {
        id: String,
        ok: bool,
        summary: String,
    },
    FileChanged {
        path: String,
        change: String,
    },
    Usage {
        input_tokens: u64,
        output_tokens: u64,
        cost_usd: Option<f64>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// A line this adapter does not understand, kept as it was.
    Raw {
        line: String,
    },
}

impl AgentEvent {
    /// A one-line description for the job log.
    pub fn summary(&self) -> String {
        match self {
            AgentEvent::Text { text } => format!("agent: {}", first_line(text)),
            AgentEvent::Reasoning { text } => format!("thinking: {}", first_line(text)),
            AgentEvent::ToolStarted { tool, summary, .. } => format!("tool {tool}: {summary}"),
            AgentEvent::ToolFinished { ok, summary, .. } => {
                format!("tool {}: {summary}", if *ok { "finished" } else { "failed" })
            }
            AgentEvent::FileChanged { path, change } => format!("file {change}: {path}"),
            AgentEvent::Usage { input_tokens, output_tokens, cost_usd } => match cost_usd {
                Some(cost) => format!("usage: {input_tokens} tokens in, {output_tokens} out, ${cost:.4}"),
                None => format!("usage: {input_tokens} tokens in, {output_tokens} out"),
            },
            AgentEvent::Error { kind, message } => format!("model API error ({kind:?}): {message}"),
            AgentEvent::Raw { line } => line.clone(),
        }
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// Shortens a tool input for display.
pub(crate) fn brief(text: &str) -> String {
    first_line(text)
}

fn key_hint(agent: AgentKind) -> &'static str {
    match agent {
        AgentKind::ClaudeCode => "ANTHROPIC_API_KEY for Claude Code",
        AgentKind::Codex | AgentKind::Opencode => "OPENAI_API_KEY for Codex and OpenCode",
        AgentKind::GeminiCli => "GEMINI_API_KEY for Gemini CLI",
        AgentKind::KimiCode => "KIMI_API_KEY for Kimi Code",
        AgentKind::MistralVibe => "MISTRAL_API_KEY for Mistral Vibe",
        _ => "the agent's API key",
    }
}

pub(crate) fn classify(agent: AgentKind, exit_code: Option<i32>, events: &[AgentEvent]) -> Option<Failure> {
    let error = events.iter().find_map(|e| match e {
        AgentEvent::Error { kind, message } => Some((*kind, message.clone())),
        _ => None,
    });
    if let Some((kind, message)) = error {
        let failure = match kind {
            ErrorKind::Auth => Failure::new(
                FailureLayer::AgentAuth,
                "agent_authentication_failed",
                format!(
                    "the agent's API key secret is missing or stale: the model API refused it. Check the clanker's secrets (it must include the key, e.g. {}), confirm the secret resolves on the Secrets page, then re-run",
                    key_hint(agent)
                ),
                false,
            ),
            ErrorKind::Quota => Failure::new(
                FailureLayer::Agent,
                "agent_quota_exhausted",
                "the model provider says the account's quota or credit is used up: add credit or raise the limit with the provider, then re-run",
                false,
            ),
            ErrorKind::RateLimit => Failure::new(
                FailureLayer::Agent,
                "agent_rate_limited",
                "the model provider is rate-limiting this key: wait a few minutes and re-run, or lower the clanker's concurrency",
                true,
            ),
            ErrorKind::Overloaded => Failure::new(
                FailureLayer::Agent,
                "provider_overloaded",
                "the model provider is overloaded and refused the request: re-running after a few minutes is usually enough",
                true,
            ),
            ErrorKind::ModelNotFound => Failure::new(
                FailureLayer::Agent,
                "model_not_found",
                "the model the clanker asks for does not exist or this key cannot use it: fix `agent_settings.model`, then re-run",
                false,
            ),
            ErrorKind::Unreachable => Failure::new(
                FailureLayer::Agent,
                "provider_unreachable",
                "the agent could not reach the model API: check the network and `agent_settings.base_url`, then re-run",
                true,
            ),
            ErrorKind::Other => Failure::new(
                FailureLayer::Agent,
                "agent_api_error",
                "the model API returned an error: the detail has its words; re-running may help",
                true,
            ),
        };
        return Some(failure.with_detail(message));
    }
    match exit_code {
        Some(0) => {
            let failed_tools =
                events.iter().filter(|e| matches!(e, AgentEvent::ToolFinished { ok: false, .. })).count();
            let finished_tools = events.iter().filter(|e| matches!(e, AgentEvent::ToolFinished { .. })).count();
            // Every tool call failed, yet the agent reports success: do not believe it.
            if finished_tools > 0 && failed_tools == finished_tools {
                return Some(Failure::new(
                    FailureLayer::Agent,
                    "agent_tools_failed",
                    "the agent reported success but every tool it ran failed: read the job's agent events for the tool errors, fix the cause (often the sandbox or a missing program), then re-run",
                    true,
                ));
            }
            None
        }
        code => Some(Failure::new(
            FailureLayer::Agent,
            "agent_exited_nonzero",
            format!(
                "the agent exited with {}: read the job's log for its last lines; fix the cause and re-run",
                code.map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"))
            ),
            true,
        )),
    }
}
