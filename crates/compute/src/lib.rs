//! Compute targets: where a viberator (worker process) runs. The server only
//! asks a target to launch, stop and inspect workers; the target owns the
//! engine-specific details. The local target runs workers as child
//! processes of the server; Docker, Kubernetes, ECS and Lambda come later
//! behind the same trait.
#![forbid(unsafe_code)]

mod local;

use std::path::PathBuf;

use futures::future::BoxFuture;
use viberglass_domain::{ComputeKind, JobId};

pub use local::LocalTarget;

/// What a worker needs to start: only its job id, where to call back, and
/// the job's token. Everything else comes from the bootstrap call.
#[derive(Clone)]
pub struct LaunchRequest {
    pub job_id: JobId,
    pub server_url: String,
    pub token: String,
}

impl std::fmt::Debug for LaunchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchRequest").field("job_id", &self.job_id).field("server_url", &self.server_url).finish()
    }
}

/// Whether a launched worker still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Running,
    /// It ran and is gone (exited, killed, or never existed on this host).
    Gone,
}

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// Trying again later may work (the engine is busy or briefly unreachable).
    #[error("{0}")]
    Transient(String),
    /// It will not work until someone changes something.
    #[error("{0}")]
    Permanent(String),
}

impl ComputeError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ComputeError::Transient(_))
    }
}

/// What a clanker's provisioning reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub message: String,
}

/// A place workers run.
pub trait ComputeTarget: Send + Sync {
    fn kind(&self) -> ComputeKind;

    /// Makes the target ready for a clanker's workers (idempotent).
    fn provision(&self) -> BoxFuture<'_, Result<Provisioned, ComputeError>>;

    /// Starts a worker for a job; returns how the target names it (e.g. `local:4242`).
    fn launch(&self, request: LaunchRequest) -> BoxFuture<'_, Result<String, ComputeError>>;

    /// Stops a worker and everything it started. Stopping a gone worker succeeds.
    fn stop<'a>(&'a self, compute_ref: &'a str) -> BoxFuture<'a, Result<(), ComputeError>>;

    fn inspect<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, WorkerState>;

    /// The last lines the worker wrote to its own log, when the target keeps one.
    fn log_tail(&self, job_id: JobId) -> BoxFuture<'_, Option<String>>;
}

/// Where the local target keeps workspaces, and which binary it runs.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub worker_binary: PathBuf,
    pub workspace_root: PathBuf,
    /// Extra environment for workers (e.g. `LOG_FORMAT`).
    pub env: Vec<(String, String)>,
    pub sandbox: Sandbox,
}

/// How local workers are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Bubblewrap when it is installed, else none.
    Auto,
    /// Bubblewrap, required.
    Bubblewrap,
    /// None: workers run as plain child processes.
    None,
}
