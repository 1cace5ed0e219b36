//! The worker protocol's message bodies, shared by the server and the worker.
//! Versioned by the URL prefix `/api/worker/v1`. Plain data: no transport here.

use crate::{Failure, JobId, JobSpec, JobStatus, NewJobEvent};
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "/api/worker/v1";
/// The header a worker names its own process with (a random value it picks
/// at start): the bootstrap answers one worker only.
pub const INSTANCE_HEADER: &str = "x-viberglass-worker";

/// What a worker receives when it starts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Bootstrap {
    pub job_id: JobId,
    pub spec: JobSpec,
    /// The secret values this job may use, by name.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Credentials for cloning and pushing, if the repository needs them.
    pub git_credential: Option<GitCredential>,
}

#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GitCredential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredential").field("username", &self.username).field("password", &"***").finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    pub status: JobStatus,
    /// Stop now: the job was cancelled or has otherwise ended.
    pub cancel: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventBatch {
    pub events: Vec<NewJobEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsReply {
    pub stored: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentUpload {
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentReply {
    pub revision: i64,
}

/// How the run ended, as the worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WorkerResult {
    Completed {
        result: JobResult,
        summary: String,
    },
    /// A failed run may still have done something worth keeping: a pushed
    /// branch and commit when only the pull request failed.
    Failed {
        failure: Failure,
        #[serde(default)]
        result: Option<JobResult>,
    },
}

/// What a run produced, typed. Everything in it came from the worker (and
/// so from a checkout an agent shaped): the server validates it before it
/// trusts any of it (see the result endpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct JobResult {
    /// The document a research or planning run wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The branch an execution committed to and pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pushed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_files: Vec<ChangedFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestRef>,
    /// On a plain git remote: the change itself, recorded in Viberglass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_stat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub diff_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A file an execution changed, as `git diff --name-status` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangedFile {
    pub status: String,
    pub path: String,
}

/// The pull (or merge) request an execution opened or updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PullRequestRef {
    /// GitHub's number, GitLab's iid.
    pub number: u64,
    pub url: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub head: String,
    /// `false` when an open pull request with the same head was updated.
    pub created: bool,
}

/// Tokens and cost the agent reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
}

/// The most a result's recorded diff may carry.
pub const MAX_RESULT_DIFF: usize = 256 * 1024;
/// The most changed files a result lists.
pub const MAX_RESULT_FILES: usize = 10_000;

impl JobResult {
    /// Bounds what a worker claims, so a hostile checkout cannot make the
    /// server store megabytes: the diff is cut, file lists capped, text fields
    /// bounded. Returns the bounded result.
    pub fn bounded(mut self) -> Self {
        fn cut(text: &mut String, max: usize) -> bool {
            if text.len() <= max {
                return false;
            }
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            true
        }
        if let Some(diff) = &mut self.diff
            && cut(diff, MAX_RESULT_DIFF)
        {
            self.diff_truncated = true;
        }
        if let Some(stat) = &mut self.diff_stat {
            cut(stat, 64 * 1024);
        }
        self.changed_files.truncate(MAX_RESULT_FILES);
        for file in &mut self.changed_files {
            cut(&mut file.path, 4096);
            cut(&mut file.status, 16);
        }
        for text in [&mut self.document, &mut self.branch, &mut self.commit].into_iter().flatten() {
            cut(text, 512);
        }
        if let Some(pr) = &mut self.pull_request {
            cut(&mut pr.url, 2048);
            cut(&mut pr.title, 512);
            cut(&mut pr.head, 512);
        }
        // Sums over many jobs must not overflow: no run reports more than this.
        if let Some(usage) = &mut self.usage {
            usage.input_tokens = usage.input_tokens.min(1_000_000_000_000);
            usage.output_tokens = usage.output_tokens.min(1_000_000_000_000);
            usage.cost_usd = usage.cost_usd.filter(|c| c.is_finite()).map(|c| c.clamp(0.0, 1_000_000.0));
        }
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultReply {
    pub status: JobStatus,
}
