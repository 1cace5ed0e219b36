//! Jobs (runs): one worker invocation for one phase, and the events it reports.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::failure::Failure;
use crate::{ClankerId, JobId, Phase, ProjectId, TicketId, UserId};

named_enum!(
    /// Where a job stands. `completed`, `failed` and `cancelled` are final:
    /// every transition is one guarded update, so nothing moves a finished job.
    JobStatus, "job status", {
        /// Waiting for the dispatcher (and for a free slot under the concurrency limits).
        Queued => "queued",
        /// Claimed; the compute target is starting the worker.
        Dispatching => "dispatching",
        /// The worker is running and reporting.
        Active => "active",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// A file the worker writes into the workspace before the agent runs
/// (AGENTS.md, skills/...), and excludes from commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstructionFile {
    pub path: String,
    pub content: String,
}

/// How the agent is run. The command harness runs a fixed command line; the
/// agent CLIs come with their own harnesses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HarnessSpec {
    /// Runs `command` (argv) in the repository checkout.
    Command { command: Vec<String> },
    /// Runs an agent CLI unattended through its adapter.
    Agent { agent: crate::AgentKind, settings: crate::clanker::AgentSettings },
}

impl HarnessSpec {
    /// The program the clanker names explicitly (a command's first word, an
    /// agent CLI's `binary`): compute targets make sure workers can run it.
    pub fn program(&self) -> Option<&str> {
        match self {
            HarnessSpec::Command { command } => command.first().map(String::as_str),
            HarnessSpec::Agent { settings, .. } => settings.binary.as_deref(),
        }
        .filter(|p| !p.trim().is_empty())
    }
}

/// Everything a worker needs to run a job, frozen when the job is queued so a
/// later settings change cannot alter a run in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSpec {
    pub phase: Phase,
    pub repository_url: String,
    pub base_branch: String,
    /// The branch execution commits to.
    pub branch: String,
    /// What the agent is asked to do.
    pub prompt: String,
    pub harness: HarnessSpec,
    pub instruction_files: Vec<InstructionFile>,
    pub max_execution_secs: u64,
    /// How often the worker must report; the reaper allows `heartbeat_grace_secs` of silence.
    pub heartbeat_interval_secs: u64,
    pub heartbeat_grace_secs: u64,
    /// Keep the workspace of a failed run for inspection.
    pub keep_workspace_on_failure: bool,
    pub ticket_title: String,
    /// The secrets (by name) the agent receives as environment variables.
    #[serde(default)]
    pub secret_names: Vec<String>,
    /// The clanker that runs the job, for messages.
    #[serde(default)]
    pub clanker_name: String,
    /// Where an execution's change goes after the push (none: push only).
    #[serde(default)]
    pub scm: Option<ScmSpec>,
    /// Who execution commits are written by.
    #[serde(default)]
    pub commit_author: CommitAuthor,
    /// How long an agent CLI may print nothing before its run fails in the
    /// `agent_timeout` layer (a model API that stalls mid-stream).
    #[serde(default = "default_agent_silence_secs")]
    pub agent_silence_secs: u64,
    /// The W3C trace context of the request (or loop) that queued the job, when the server exports traces: the
    /// dispatch and the worker continue that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn default_agent_silence_secs() -> u64 {
    300
}

/// Where an execution's change goes once its branch is pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScmSpec {
    pub provider: crate::ScmProvider,
    /// The provider's REST API root; none for plain git.
    pub api_url: Option<String>,
    /// `owner/name` of the repository the branch is pushed to.
    pub repository: String,
    /// `owner/name` of the repository the pull request is opened on (another
    /// one than `repository` in a fork flow).
    pub pr_repository: String,
    /// The branch the pull request targets.
    pub pr_base_branch: String,
    pub ticket_id: Option<crate::TicketId>,
    /// A link back to the ticket, for the pull request's body.
    pub ticket_url: Option<String>,
    /// The ticket's description (bounded), for a generated body.
    pub ticket_description: String,
    /// Labels put on the pull request.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// The author of execution commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitAuthor {
    pub name: String,
    pub email: String,
}

impl Default for CommitAuthor {
    fn default() -> Self {
        Self { name: "Viberglass".into(), email: "viberglass@localhost".into() }
    }
}

impl CommitAuthor {
    /// Parses `Name <email>`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let err = || format!("`{value}` is not a commit author: write it as `Name <email@example.com>`");
        let (name, rest) = value.split_once('<').ok_or_else(err)?;
        let email = rest.strip_suffix('>').ok_or_else(err)?.trim();
        let name = name.trim();
        if name.is_empty() || email.is_empty() || !email.contains('@') || value.chars().any(char::is_control) {
            return Err(err());
        }
        Ok(Self { name: name.to_owned(), email: email.to_owned() })
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: JobId,
    pub project_id: ProjectId,
    pub ticket_id: Option<TicketId>,
    pub clanker_id: Option<ClankerId>,
    pub phase: Phase,
    pub status: JobStatus,
    /// 1 for a first run; a re-run is the attempt after the job it repeats.
    pub attempt: u32,
    /// The job this one re-runs.
    pub retry_of: Option<JobId>,
    /// How many times the dispatcher tried to start a worker for it.
    pub dispatch_attempts: u32,

    /// For people: the latest progress while running, the failure's message when failed.
    pub status_message: Option<String>,
    pub failure: Option<Failure>,
    /// The last progress step the worker reported.
    pub progress_step: Option<String>,
    pub result: Option<crate::protocol::JobResult>,
    /// The compute target that ran it (`local`, `docker`, ...).
    pub compute_kind: Option<crate::ComputeKind>,
    /// Where the worker runs, as the compute target names it (`local:<host>:<pid>:<start>`).
    pub compute_ref: Option<String>,
    /// The branch an execution pushed (the spec's branch: the server never takes a worker's word for it).
    pub branch: Option<String>,
    pub commit_sha: Option<String>,
    /// The pull request it opened or updated, checked to be on the project's forge.
    pub pull_request_url: Option<String>,
    pub requested_by: Option<UserId>,
    /// The id of the request that queued it (its `x-request-id`, which the server's log lines of that request
    /// carry; a caller may choose it), when a request did: runs the background loops queue (ticket sources,
    /// schedules, Slack's inbox) have none.
    pub request_id: Option<String>,
    pub cancelled_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub dispatched_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_heartbeat_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(skip)]
    pub spec: Option<JobSpec>,
}

named_enum!(
    /// What a job event is.
    EventKind, "event kind", {
        /// A pipeline step started or finished (clone, agent, commit, ...).
        Progress => "progress",
        /// A line of output.
        Log => "log",
        /// A normalized agent event (tool call, message, usage, ...).
        Agent => "agent",
        /// The job's status changed.
        Status => "status",
    }
);

named_enum!(
    LogLevel, "log level", {
        Debug => "debug",
        Info => "info",
        Warn => "warn",
        Error => "error",
    }
);

/// One stored job event. `id` orders a job's events and resumes a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvent {
    pub id: i64,
    pub job_id: JobId,
    pub kind: EventKind,
    pub level: LogLevel,
    pub message: String,
    pub data: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An event as a worker sends it; `seq` numbers the worker's events so a
/// batch sent twice (after a lost response) is stored once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJobEvent {
    pub seq: u64,
    pub kind: EventKind,
    #[serde(default = "default_level")]
    pub level: LogLevel,
    pub message: String,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

fn default_level() -> LogLevel {
    LogLevel::Info
}

/// The longest event message stored; longer ones are cut and say so.
pub const MAX_EVENT_MESSAGE_BYTES: usize = 8 * 1024;

/// Cuts `message` to [`MAX_EVENT_MESSAGE_BYTES`] on a character boundary, saying how much was cut.
pub fn bound_message(message: &str) -> String {
    if message.len() <= MAX_EVENT_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_EVENT_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … [cut {} bytes]", &message[..end], message.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_are_terminal() {
        assert!(JobStatus::Cancelled.is_terminal());
        assert!(!JobStatus::Dispatching.is_terminal());
    }

    #[test]
    fn long_messages_are_cut_and_say_so() {
        let cut = bound_message(&"é".repeat(10_000));
        assert!(cut.ends_with("bytes]"), "{}", &cut[cut.len() - 30..]);
        assert!(cut.len() < MAX_EVENT_MESSAGE_BYTES + 40);
        assert_eq!(bound_message("short"), "short");
    }

    #[test]
    fn harness_specs_are_tagged() {
        let spec: HarnessSpec = serde_json::from_str(r#"{"kind":"command","command":["sh","-c","true"]}"#).unwrap();
        assert_eq!(spec, HarnessSpec::Command { command: vec!["sh".into(), "-c".into(), "true".into()] });
    }
}
