//! Clankers: saved worker configurations. A clanker names the agent CLI and
//! its settings, the compute target workers run on, and the instruction
//! files (AGENTS.md, skills/) every run receives.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::job::{HarnessSpec, InstructionFile};
use crate::validation::{ValidationErrors, bounded_text};
use crate::{ClankerId, ProjectSlug};

named_enum!(
    /// The agent a clanker runs.
    AgentKind, "agent", {
        /// A fixed command line (for scripted work and tests).
        Command => "command",
        ClaudeCode => "claude-code",
        Codex => "codex",
        GeminiCli => "gemini-cli",
        QwenCli => "qwen-cli",
        Opencode => "opencode",
        KimiCode => "kimi-code",
        MistralVibe => "mistral-vibe",
    }
);

named_enum!(
    /// Where a clanker's workers run.
    ComputeKind, "compute target", {
        /// A child process of the server, in its own workspace directory.
        Local => "local",
        Docker => "docker",
        Kubernetes => "kubernetes",
        Ecs => "ecs",
        Lambda => "lambda",
    }
);

named_enum!(
    ClankerStatus, "clanker status", {
        Inactive => "inactive",
        Deploying => "deploying",
        Active => "active",
        Failed => "failed",
    }
);

/// A clanker's settings for an agent CLI (`agent_settings` of every agent but `command`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// The model to ask for (the CLI's default when absent).
    pub model: Option<String>,
    /// The model API's base URL, for proxies, gateways and tests.
    pub base_url: Option<String>,
    /// The secret holding the API key (default: the agent's usual variable, e.g. ANTHROPIC_API_KEY).
    pub api_key_secret: Option<String>,
    /// Extra instructions appended to the agent's system prompt.
    pub system_prompt: Option<String>,
    /// The CLI's executable (default: its usual name on the PATH).
    pub binary: Option<String>,
    /// For CLIs that speak several model APIs (Qwen Code, OpenCode): `openai` (default), `openai-responses`
    /// (Qwen Code) or `anthropic`.
    pub provider: Option<String>,
}

/// A clanker as stored.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Clanker {
    pub id: ClankerId,
    pub name: String,
    pub slug: ProjectSlug,
    pub description: String,
    pub agent: AgentKind,
    /// Agent settings; for `command`: `{"command": ["sh", "-c", "..."]}`.
    pub agent_settings: serde_json::Value,
    pub compute: ComputeKind,
    pub compute_config: serde_json::Value,
    pub status: ClankerStatus,
    /// What provisioning last said, for people.
    pub status_message: Option<String>,
    /// How many of this clanker's runs may be active at once.
    pub max_concurrent_jobs: u32,
    pub instruction_files: Vec<InstructionFile>,
    /// The secrets (by name) its agent receives as environment variables.
    pub secrets: Vec<String>,
    /// Any project may run it (set by an admin); otherwise only `projects`.
    pub shared: bool,
    /// The projects that may run it when it is not shared.
    pub projects: Vec<crate::ProjectId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Clanker {
    /// Whether a run of `project` may use this clanker (and so receive its secrets).
    pub fn allowed_in(&self, project: crate::ProjectId) -> bool {
        self.shared || self.projects.contains(&project)
    }

    /// How runs of this clanker drive their agent.
    pub fn harness(&self) -> Result<HarnessSpec, String> {
        harness_for(self.agent, &self.agent_settings)
    }
}

fn harness_for(agent: AgentKind, settings: &serde_json::Value) -> Result<HarnessSpec, String> {
    match agent {
        AgentKind::Command => {
            let command: Vec<String> =
                settings.get("command").and_then(|c| serde_json::from_value(c.clone()).ok()).ok_or(
                    "the command agent needs `agent_settings.command`: a list such as [\"sh\", \"-c\", \"make fix\"]",
                )?;
            if command.is_empty() || command[0].trim().is_empty() {
                return Err("`agent_settings.command` must name a program".into());
            }
            Ok(HarnessSpec::Command { command })
        }
        AgentKind::ClaudeCode
        | AgentKind::Codex
        | AgentKind::QwenCli
        | AgentKind::GeminiCli
        | AgentKind::Opencode
        | AgentKind::KimiCode
        | AgentKind::MistralVibe => {
            let parsed: AgentSettings = serde_json::from_value(settings.clone())
                .map_err(|e| format!("`agent_settings` for {agent} are invalid: {e}; known settings are model, base_url, api_key_secret, system_prompt and binary"))?;
            if let Some(provider) = &parsed.provider
                && !matches!(provider.as_str(), "openai" | "openai-responses" | "anthropic")
            {
                return Err(format!(
                    "`agent_settings.provider` `{provider}` is not known: use openai, openai-responses or anthropic"
                ));
            }
            if let Some(name) = &parsed.api_key_secret {
                crate::secret::parse_secret_name(name).map_err(|e| format!("`agent_settings.api_key_secret`: {e}"))?;
            }
            Ok(HarnessSpec::Agent { agent, settings: parsed })
        }
    }
}

/// A clanker as a client sends it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClankerInput {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub description: Option<String>,
    pub agent: Option<String>,
    pub agent_settings: Option<serde_json::Value>,
    pub compute: Option<String>,
    pub compute_config: Option<serde_json::Value>,
    pub max_concurrent_jobs: Option<u32>,
    pub instruction_files: Option<Vec<InstructionFile>>,
    /// Names of secrets the agent receives as environment variables.
    pub secrets: Option<Vec<String>>,
    /// Any project may run it (default false for a new clanker).
    pub shared: Option<bool>,
    /// The projects (ids or slugs) that may run it when it is not shared.
    pub projects: Option<Vec<String>>,
}

impl ClankerInput {
    /// This input laid over an existing clanker: what a change (PATCH) validates as a whole.
    pub fn over(self, current: &Clanker) -> ClankerInput {
        ClankerInput {
            name: self.name.or_else(|| Some(current.name.clone())),
            slug: self.slug.or_else(|| Some(current.slug.as_str().to_owned())),
            description: self.description.or_else(|| Some(current.description.clone())),
            agent: self.agent.or_else(|| Some(current.agent.as_str().to_owned())),
            agent_settings: self.agent_settings.or_else(|| Some(current.agent_settings.clone())),
            compute: self.compute.or_else(|| Some(current.compute.as_str().to_owned())),
            compute_config: self.compute_config.or_else(|| Some(current.compute_config.clone())),
            max_concurrent_jobs: self.max_concurrent_jobs.or(Some(current.max_concurrent_jobs)),
            instruction_files: self.instruction_files.or_else(|| Some(current.instruction_files.clone())),
            secrets: self.secrets.or_else(|| Some(current.secrets.clone())),
            shared: self.shared.or(Some(current.shared)),
            projects: self.projects.or_else(|| Some(current.projects.iter().map(|p| p.to_string()).collect())),
        }
    }
}

/// A validated new clanker.
#[derive(Debug, Clone, PartialEq)]
pub struct NewClanker {
    pub name: String,
    pub slug: ProjectSlug,
    pub description: String,
    pub agent: AgentKind,
    pub agent_settings: serde_json::Value,
    pub compute: ComputeKind,
    pub compute_config: serde_json::Value,
    pub max_concurrent_jobs: u32,
    pub instruction_files: Vec<InstructionFile>,
    pub secrets: Vec<String>,
    pub shared: bool,
    /// The projects, as the client named them (ids or slugs); the service resolves them into `projects`.
    pub project_keys: Vec<String>,
    pub projects: Vec<crate::ProjectId>,
}

/// Checks an instruction file's path: AGENTS.md, or a markdown file under
/// skills/, relative, without `..`.
pub fn parse_instruction_path(path: &str) -> Result<String, String> {
    let path = path.trim();
    let safe = !path.starts_with('/')
        && !path.split('/').any(|p| p.is_empty() || p == ".." || p == ".")
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if safe && (path == "AGENTS.md" || (path.starts_with("skills/") && path.ends_with(".md"))) {
        Ok(path.to_owned())
    } else {
        Err(format!("`{path}` is not an allowed instruction file: use AGENTS.md or skills/<name>.md"))
    }
}

impl NewClanker {
    pub fn parse(input: ClankerInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let name = match input.name.as_deref() {
            None => {
                e.add("name", "is required: give the clanker a name");
                None
            }
            Some(v) => e.check("name", bounded_text(v, "name", 1, 100)),
        };
        let slug = match (input.slug.as_deref(), name.as_deref()) {
            (Some(s), _) => e.check("slug", ProjectSlug::parse(s)),
            (None, Some(n)) => Some(ProjectSlug::from_name(n, "clanker")),
            (None, None) => None,
        };
        let description =
            e.check("description", bounded_text(input.description.as_deref().unwrap_or(""), "description", 0, 2000));
        let agent = match input.agent.as_deref() {
            None => {
                e.add("agent", format!("is required: one of {}", AgentKind::NAMES.join(", ")));
                None
            }
            Some(v) => e.check("agent", v.parse::<AgentKind>()),
        };
        let agent_settings = input.agent_settings.unwrap_or_else(|| serde_json::json!({}));
        if let Some(agent) = agent
            && let Err(msg) = harness_for(agent, &agent_settings)
        {
            let field = if matches!(agent, AgentKind::Command | AgentKind::ClaudeCode | AgentKind::Codex) {
                "agent_settings"
            } else {
                "agent"
            };
            e.add(field, msg);
        }
        let compute = e.check("compute", input.compute.as_deref().unwrap_or("local").parse::<ComputeKind>());
        let max_concurrent_jobs = match input.max_concurrent_jobs.unwrap_or(2) {
            n @ 1..=100 => Some(n),
            n => {
                e.add("max_concurrent_jobs", format!("must be between 1 and 100 (got {n})"));
                None
            }
        };
        let mut instruction_files = Vec::new();
        for (i, file) in input.instruction_files.unwrap_or_default().into_iter().enumerate() {
            let field = format!("instruction_files[{i}].path");
            if let Some(path) = e.check(&field, parse_instruction_path(&file.path)) {
                if file.content.chars().count() > 256 * 1024 {
                    e.add(&format!("instruction_files[{i}].content"), "must be at most 262144 characters");
                }
                instruction_files.push(InstructionFile { path, content: file.content });
            }
        }
        let mut secrets = Vec::new();
        for (i, name) in input.secrets.unwrap_or_default().iter().enumerate() {
            if let Some(name) = e.check(&format!("secrets[{i}]"), crate::secret::parse_secret_name(name))
                && !secrets.contains(&name)
            {
                secrets.push(name);
            }
        }
        let mut project_keys = Vec::new();
        for (i, key) in input.projects.unwrap_or_default().iter().enumerate() {
            let key = key.trim();
            if key.is_empty() || key.len() > 100 {
                e.add(&format!("projects[{i}]"), "must be a project's id or slug");
            } else if !project_keys.iter().any(|k| k == key) {
                project_keys.push(key.to_owned());
            }
        }
        match (name, slug, description, agent, compute, max_concurrent_jobs) {
            (Some(name), Some(slug), Some(description), Some(agent), Some(compute), Some(max_concurrent_jobs))
                if e.is_empty() =>
            {
                Ok(NewClanker {
                    name,
                    slug,
                    description,
                    agent,
                    agent_settings,
                    compute,
                    compute_config: input.compute_config.unwrap_or_else(|| serde_json::json!({})),
                    max_concurrent_jobs,
                    instruction_files,
                    secrets,
                    shared: input.shared.unwrap_or(false),
                    project_keys,
                    projects: Vec::new(),
                })
            }
            _ => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<NewClanker, ValidationErrors> {
        NewClanker::parse(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn a_command_clanker_needs_a_command() {
        let err = parse(serde_json::json!({"name": "Runner", "agent": "command"})).unwrap_err();
        assert_eq!(err.fields[0].field, "agent_settings");
        let ok =
            parse(serde_json::json!({"name": "Runner", "agent": "command", "agent_settings": {"command": ["true"]}}))
                .unwrap();
        assert_eq!(ok.slug.as_str(), "runner");
        assert_eq!(ok.compute, ComputeKind::Local);
    }

    #[test]
    fn instruction_files_stay_inside_the_workspace() {
        assert!(parse_instruction_path("AGENTS.md").is_ok());
        assert!(parse_instruction_path("skills/testing.md").is_ok());
        for bad in ["../AGENTS.md", "/etc/passwd", "skills/../x.md", "README.md", "skills/a b.md"] {
            assert!(parse_instruction_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_agents_list_the_known_ones() {
        let err = parse(serde_json::json!({"name": "x", "agent": "gpt"})).unwrap_err();
        assert!(err.fields[0].message.contains("claude-code"), "{:?}", err.fields);
    }
}
