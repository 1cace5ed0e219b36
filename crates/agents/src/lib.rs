//! Agent adapters. Each knows how to run its CLI unattended (flags, the
//! environment it needs, what keeps it quiet) and how to read its output
//! stream into normalized [`AgentEvent`]s, and classifies how a run ended.
//! No I/O here: the worker runs the command and feeds the lines in.
#![forbid(unsafe_code)]

mod claude;
mod codex;
mod events;
mod gemini;
mod kimi;
mod opencode;
mod qwen;
mod vibe;

use std::path::PathBuf;

pub use viberglass_domain::AgentSettings;
use viberglass_domain::{AgentKind, Failure};

pub use events::{AgentEvent, ErrorKind};

/// What one run needs to build its command line.
pub struct RunContext<'a> {
    pub prompt: &'a str,
    /// A fresh home directory for the CLI (outside /tmp).
    pub home: PathBuf,
    /// The settings the CLI runs with. The worker points `base_url` at its
    /// loopback key proxy, so the CLI never talks to the provider itself.
    pub settings: &'a AgentSettings,
    /// The key the CLI presents: the worker's per-run placeholder, which only
    /// its key proxy accepts (the real key never enters the agent's sandbox).
    pub api_key: &'a str,
}

/// How a provider takes its API key, which the worker's key proxy adds to
/// each request the CLI makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// Anthropic: `x-api-key: <key>`.
    Anthropic,
    /// OpenAI and the APIs that copy it (Mistral, Moonshot, OpenAI-compatible gateways):
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// Google Gemini: `x-goog-api-key: <key>` (a `key` query parameter is replaced too).
    Google,
}

/// Where an agent's model requests really go, and how the key is presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub base_url: String,
    pub style: KeyStyle,
}

impl Upstream {
    fn new(base_url: Option<&String>, default: &str, style: KeyStyle) -> Upstream {
        Upstream { base_url: base_url.cloned().unwrap_or_else(|| default.to_owned()), style }
    }
}

/// The upstream of the CLIs that speak several model APIs (Qwen Code, OpenCode), by provider name.
pub(crate) fn provider_upstream(agent: &str, provider: &str, settings: &AgentSettings) -> Result<Upstream, String> {
    let known = match provider {
        "openai" | "openai-responses" => Some(("https://api.openai.com/v1", KeyStyle::Bearer)),
        "anthropic" => Some(("https://api.anthropic.com/v1", KeyStyle::Anthropic)),
        "google" | "gemini" => Some(("https://generativelanguage.googleapis.com/v1beta", KeyStyle::Google)),
        "mistral" => Some(("https://api.mistral.ai/v1", KeyStyle::Bearer)),
        "moonshot" | "moonshotai" => Some(("https://api.moonshot.ai/v1", KeyStyle::Bearer)),
        _ => None,
    };
    match (known, &settings.base_url) {
        (Some((default, style)), url) => Ok(Upstream::new(url.as_ref(), default, style)),
        // Any other provider: an OpenAI-compatible API at the URL the clanker names.
        (None, Some(url)) => Ok(Upstream { base_url: url.clone(), style: KeyStyle::Bearer }),
        (None, None) => Err(format!(
            "the {agent} provider `{provider}` has no known API address: set agent_settings.base_url to its \
             OpenAI-compatible base URL, or use openai, anthropic, google, mistral or moonshot"
        )),
    }
}

/// A command to run in the checkout, with stdin closed.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Files to write under the run's fresh home before starting (e.g. the CLI's settings).
    pub home_files: Vec<(String, String)>,
    /// What the CLI reads on its standard input: the prompt. Never a
    /// command-line argument, where it would show in `ps` and break past
    /// the kernel's argument limit (E2BIG) on a large ticket.
    pub stdin: String,
}

/// What the CLIs that take their prompt from an argument are given, with the
/// real prompt on standard input (which they add to it).
pub const STDIN_PROMPT: &str = "Do what the text on standard input asks.";

/// Reads one CLI's output, line by line.
pub trait StreamParser: Send {
    /// The events a line of output carries. Lines it does not understand
    /// come back as [`AgentEvent::Raw`]: never an error, never a panic.
    fn line(&mut self, line: &str) -> Vec<AgentEvent>;
}

/// One agent CLI.
pub trait Adapter: Send + Sync {
    fn kind(&self) -> AgentKind;
    /// The secret (environment variable) the API key usually lives in.
    fn default_key_secret(&self) -> &'static str;
    /// Where the CLI's model requests really go (the clanker's `base_url`, or
    /// the provider's API) and how that API takes its key.
    fn upstream(&self, settings: &AgentSettings) -> Result<Upstream, String>;
    fn invocation(&self, cx: &RunContext<'_>) -> Invocation;
    fn parser(&self) -> Box<dyn StreamParser>;
    /// A parser for the CLI's standard error, for a CLI that reports model API errors there (only its
    /// [`AgentEvent::Error`]s count).
    fn stderr_parser(&self) -> Option<Box<dyn StreamParser>> {
        None
    }
    /// For a CLI that keeps its token usage in files rather than its stream (Kimi Code, Mistral Vibe): the
    /// directory under the run's home it writes them in, and their file name.
    fn usage_files(&self) -> Option<(&'static str, &'static str)> {
        None
    }
    /// The [`AgentEvent::Usage`] events one of those files holds.
    fn usage_from(&self, _content: &str) -> Vec<AgentEvent> {
        Vec::new()
    }
}

/// The adapter for an agent, if one exists yet.
pub fn adapter(kind: AgentKind) -> Option<&'static dyn Adapter> {
    match kind {
        AgentKind::ClaudeCode => Some(&claude::ClaudeCode),
        AgentKind::Codex => Some(&codex::Codex),
        AgentKind::QwenCli => Some(&qwen::QwenCode),
        AgentKind::GeminiCli => Some(&gemini::GeminiCli),
        AgentKind::Opencode => Some(&opencode::OpenCode),
        AgentKind::KimiCode => Some(&kimi::KimiCode),
        AgentKind::MistralVibe => Some(&vibe::MistralVibe),
        _ => None,
    }
}

/// How a run ended, from its exit status and what its stream said.
pub fn classify(agent: AgentKind, exit_code: Option<i32>, events: &[AgentEvent]) -> Option<Failure> {
    events::classify(agent, exit_code, events)
}

/// Feeds every line of a recorded stream through a parser (for tests).
#[cfg(test)]
pub(crate) fn parse_all(parser: &mut dyn StreamParser, lines: &str) -> Vec<AgentEvent> {
    lines.lines().flat_map(|l| parser.line(l)).collect()
}
