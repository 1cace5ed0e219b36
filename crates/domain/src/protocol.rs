//! The worker protocol's message bodies, shared by the server and the worker.
//! Versioned by the URL prefix `/api/worker/v1`. Plain data: no transport here.

use crate::{Failure, JobId, JobSpec, JobStatus, NewJobEvent};
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "/api/worker/v1";

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
    Completed { result: serde_json::Value, summary: String },
    Failed { failure: Failure },
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultReply {
    pub status: JobStatus,
}
