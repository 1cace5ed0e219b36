//! The failure taxonomy: why a job failed, in words that name the layer that
//! broke, the cause and the fix, modelled on the original troubleshooting
//! guide. Each failure also says whether running the job again can help.

use serde::{Deserialize, Serialize};

named_enum!(
    /// The layer that broke.
    FailureLayer, "failure layer", {
        Provisioning => "provisioning",
        Dispatch => "dispatch",
        Bootstrap => "bootstrap",
        Secrets => "secrets",
        Clone => "clone",
        AgentAuth => "agent_auth",
        Agent => "agent",
        AgentTimeout => "agent_timeout",
        NoChanges => "no_changes",
        Commit => "commit",
        Push => "push",
        PullRequest => "pull_request",
        Heartbeat => "heartbeat",
        Timeout => "timeout",
        Cancelled => "cancelled",
        Internal => "internal",
    }
);

impl FailureLayer {
    /// The layers only the server decides (a worker claiming one is wrong or lying).
    pub fn server_only(self) -> bool {
        matches!(
            self,
            FailureLayer::Cancelled
                | FailureLayer::Heartbeat
                | FailureLayer::Timeout
                | FailureLayer::Provisioning
                | FailureLayer::Dispatch
                | FailureLayer::Bootstrap
        )
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub layer: FailureLayer,
    /// Stable and machine-readable, e.g. `repository_not_found`.
    pub code: String,
    /// For people: the cause and what to do about it.
    pub message: String,
    /// What the failing component said, for debugging (never contains secrets).
    pub detail: String,
    /// Whether running the job again, unchanged, can succeed.
    pub retryable: bool,
}

impl Failure {
    pub fn new(layer: FailureLayer, code: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self { layer, code: code.to_owned(), message: message.into(), detail: String::new(), retryable }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        // Keep the stored detail bounded: the head says what failed.
        self.detail = detail.chars().take(4000).collect();
        self
    }

    /// The worker stopped heartbeating.
    pub fn heartbeat_lost(grace_secs: u64) -> Self {
        Self::new(
            FailureLayer::Heartbeat,
            "worker_stopped_reporting",
            format!(
                "the worker stopped reporting: no heartbeat for more than {grace_secs} s, so it was stopped. It probably \
                 crashed, ran out of memory or lost its network; read the job's last log lines, then re-run the job"
            ),
            true,
        )
    }

    /// The run took longer than its project allows.
    pub fn time_limit(limit_secs: u64) -> Self {
        Self::new(
            FailureLayer::Timeout,
            "max_execution_time_exceeded",
            format!(
                "the run exceeded the project's maximum execution time of {} and was stopped; raise \
                 `max_execution_secs` in the project settings if the work needs longer, then re-run",
                human_duration(limit_secs)
            ),
            false,
        )
    }

    pub fn cancelled(by: &str) -> Self {
        Self::new(FailureLayer::Cancelled, "cancelled", format!("cancelled by {by}"), true)
    }

    /// The compute target could not start the worker.
    pub fn dispatch(target: &str, error: &str, retryable: bool) -> Self {
        Self::new(
            FailureLayer::Dispatch,
            "worker_start_failed",
            format!(
                "the {target} compute target could not start the worker: check the clanker's compute settings and \
                 its status message, fix them, then re-run"
            ),
            retryable,
        )
        .with_detail(error)
    }

    /// The worker process ended before it ever reported.
    pub fn worker_exited_at_start(log_tail: Option<String>) -> Self {
        Self::new(
            FailureLayer::Dispatch,
            "worker_exited_at_start",
            "the worker started but exited before reporting to the server: the detail has the last lines of its log \
             (a sandbox that cannot start, a wrong server URL, a missing binary); fix the clanker's compute settings or \
             VIBERGLASS_PUBLIC_URL, then re-run",
            false,
        )
        .with_detail(log_tail.unwrap_or_else(|| "the worker left no log".into()))
    }

    /// The worker's process went away while the job ran (killed, crashed,
    /// out of memory), seen by its compute target before any heartbeat lapsed.
    pub fn worker_exited(log_tail: Option<String>) -> Self {
        Self::new(
            FailureLayer::Heartbeat,
            "worker_exited",
            "the worker process exited while the job was running, without reporting a result (killed, crashed or \
             out of memory): its agent was stopped too; the detail has the last lines of its log; re-run the job",
            true,
        )
        .with_detail(log_tail.unwrap_or_else(|| "the worker left no log".into()))
    }

    /// The worker went away and its compute target says why (`reason`, e.g.
    /// "killed: out of memory ...: raise the clanker's memory limit").
    pub fn worker_ended(code: &str, reason: &str, log_tail: Option<String>) -> Self {
        Self::new(
            FailureLayer::Heartbeat,
            code,
            format!(
                "the worker exited while the job was running, without reporting a result: {reason}; its agent was \
                 stopped too, and the detail has the last lines of its log"
            ),
            code != "worker_out_of_memory",
        )
        .with_detail(log_tail.unwrap_or_else(|| "the worker left no log".into()))
    }

    /// The compute target could not start the worker it was asked for, and
    /// says why (`reason`, e.g. "the cluster cannot pull the worker image ...").
    pub fn worker_never_started(code: &str, reason: &str, log_tail: Option<String>) -> Self {
        Self::new(
            FailureLayer::Dispatch,
            code,
            format!("the worker never started: {reason}; fix that, then re-run the job"),
            false,
        )
        .with_detail(log_tail.unwrap_or_else(|| "the worker left no log".into()))
    }

    /// The server restarted and the worker it had started is gone.
    pub fn orphaned() -> Self {
        Self::new(
            FailureLayer::Heartbeat,
            "worker_gone_after_restart",
            "the server restarted and the worker for this job was no longer running; re-run the job",
            true,
        )
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            FailureLayer::Internal,
            "internal",
            "the job failed because of a Viberglass error; the detail says where, and re-running may help",
            true,
        )
        .with_detail(detail)
    }
}

/// `90` → "1 min 30 s", `2700` → "45 min".
pub fn human_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if s > 0 || parts.is_empty() {
        parts.push(format!("{s} s"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_name_parses_back() {
        for name in FailureLayer::NAMES {
            assert_eq!(name.parse::<FailureLayer>().unwrap().as_str(), *name);
        }
    }

    #[test]
    fn the_time_limit_message_says_which_limit_and_where_to_raise_it() {
        let f = Failure::time_limit(30);
        assert_eq!(f.layer, FailureLayer::Timeout);
        assert!(f.message.contains("30 s") && f.message.contains("max_execution_secs"), "{}", f.message);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(2700), "45 min");
        assert_eq!(human_duration(90), "1 min 30 s");
        assert_eq!(human_duration(0), "0 s");
        assert_eq!(human_duration(3661), "1 h 1 min 1 s");
    }

    #[test]
    fn details_are_bounded() {
        let f = Failure::internal("x".repeat(10_000));
        assert_eq!(f.detail.len(), 4000);
    }
}
