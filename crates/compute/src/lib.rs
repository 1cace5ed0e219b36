//! Compute targets: where a viberator (worker process) runs. The server only
//! asks a target to provision, launch, stop and inspect workers; the target
//! owns the engine-specific details. The [`ComputeRegistry`] maps each
//! [`ComputeKind`] to its target; a clanker's typed [`ComputeConfig`] goes
//! with every call. The local target runs workers as child processes of the
//! server; Docker runs them in containers, Kubernetes as Jobs, ECS as
//! Fargate tasks and Lambda as function invocations.
#![forbid(unsafe_code)]

mod docker;
mod ecs;
mod kubernetes;
mod lambda;
mod local;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use viberglass_domain::{ComputeKind, JobId};

pub use docker::{DEFAULT_IMAGE, DockerConfig, DockerRef, DockerSettings, DockerTarget};
pub use ecs::{AwsComputeSettings, EcsConfig, EcsRef, EcsTarget, fargate_memory};
pub use kubernetes::{KubernetesConfig, KubernetesRef, KubernetesSettings, KubernetesTarget, required_permissions};
pub use lambda::{LAMBDA_MAX_SECS, LambdaConfig, LambdaTarget};
pub use local::{LocalRef, LocalTarget};

/// A clanker's compute settings, parsed for its kind. Unknown settings are
/// refused when the clanker is saved.
#[derive(Debug, Clone, PartialEq)]
pub enum ComputeConfig {
    Local(LocalConfig),
    Docker(DockerConfig),
    Kubernetes(KubernetesConfig),
    Ecs(EcsConfig),
    Lambda(LambdaConfig),
}

/// The local target's per-clanker settings. None yet: the host's own
/// settings (sandbox, worker binary) apply to every local clanker.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {}

impl ComputeConfig {
    /// Parses a clanker's `compute_config` for its `kind`.
    pub fn parse(kind: ComputeKind, config: &serde_json::Value) -> Result<ComputeConfig, String> {
        let config = if config.is_null() { serde_json::json!({}) } else { config.clone() };
        match kind {
            ComputeKind::Local => serde_json::from_value(config)
                .map(ComputeConfig::Local)
                .map_err(|e| format!("`compute_config` for the local target is invalid: {e}; it takes no settings")),
            ComputeKind::Docker => serde_json::from_value::<DockerConfig>(config)
                .map_err(|e| {
                    format!(
                        "`compute_config` for the Docker target is invalid: {e}; its settings are image, cpus, memory_mb \
                         and network"
                    )
                })?
                .validate()
                .map(ComputeConfig::Docker),
            ComputeKind::Kubernetes => serde_json::from_value::<KubernetesConfig>(config)
                .map_err(|e| {
                    format!(
                        "`compute_config` for the Kubernetes target is invalid: {e}; its settings are namespace, image, \
                         service_account, image_pull_secret, cpus and memory_mb"
                    )
                })?
                .validate()
                .map(ComputeConfig::Kubernetes),
            ComputeKind::Ecs => serde_json::from_value::<EcsConfig>(config)
                .map_err(|e| {
                    format!(
                        "`compute_config` for the ECS target is invalid: {e}; its settings are cluster, image, cpu, \
                         memory, subnets, security_groups, assign_public_ip, execution_role_arn, task_role_arn and \
                         log_group"
                    )
                })?
                .validate()
                .map(ComputeConfig::Ecs),
            ComputeKind::Lambda => serde_json::from_value::<LambdaConfig>(config)
                .map_err(|e| {
                    format!(
                        "`compute_config` for the Lambda target is invalid: {e}; its settings are function_name, image, \
                         role_arn, memory_mb, timeout_secs, ephemeral_storage_mb, subnets and security_groups"
                    )
                })?
                .validate()
                .map(ComputeConfig::Lambda),
        }
    }

    pub fn kind(&self) -> ComputeKind {
        match self {
            ComputeConfig::Local(_) => ComputeKind::Local,
            ComputeConfig::Docker(_) => ComputeKind::Docker,
            ComputeConfig::Kubernetes(_) => ComputeKind::Kubernetes,
            ComputeConfig::Ecs(_) => ComputeKind::Ecs,
            ComputeConfig::Lambda(_) => ComputeKind::Lambda,
        }
    }
}

/// What a worker needs to start: only its job id, where to call back, and
/// the job's token. Everything else comes from the bootstrap call.
#[derive(Clone)]
pub struct LaunchRequest {
    pub job_id: JobId,
    pub server_url: String,
    pub token: String,
    pub config: ComputeConfig,
    /// The programs the clanker names (see `HarnessSpec::program`), which the
    /// worker must be able to run: the local target binds absolute ones into its sandbox.
    pub programs: Vec<String>,
    /// The job's time limit (the project's `max_execution_secs`), for targets
    /// that enforce one of their own as a backstop.
    pub time_limit_secs: Option<u64>,
}

impl std::fmt::Debug for LaunchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchRequest").field("job_id", &self.job_id).field("server_url", &self.server_url).finish()
    }
}

/// Why a worker ended, as its target saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitReason {
    /// The failure code (`worker_out_of_memory`, `worker_exited`).
    pub code: &'static str,
    /// For people: what happened and what to do.
    pub message: String,
    /// Whether the worker ran at all (`false`: its image could not be
    /// pulled, no node had room for it).
    pub started: bool,
}

/// Whether a launched worker still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Running,
    /// It ran and is gone (exited, killed, or never existed).
    Gone,
    /// Another host owns it: only that host's server may inspect or stop it.
    Foreign,
    /// The target cannot be asked right now (its engine or API server is
    /// unreachable): nothing is concluded, but stopping it is still tried.
    Unknown,
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

    /// Makes the target ready for a clanker's workers (idempotent), checking
    /// that a worker there can run `programs` (the ones the clanker names).
    fn provision<'a>(
        &'a self,
        config: &'a ComputeConfig,
        programs: &'a [String],
    ) -> BoxFuture<'a, Result<Provisioned, ComputeError>>;

    /// Starts a worker for a job; returns how the target names it, owner
    /// included (e.g. `local:<host>:<pid>:<start>`).
    fn launch(&self, request: LaunchRequest) -> BoxFuture<'_, Result<String, ComputeError>>;

    /// Stops a worker and everything it started. Stopping a gone worker
    /// succeeds; stopping another owner's worker is refused (`Permanent`).
    fn stop<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Result<(), ComputeError>>;

    fn inspect<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, WorkerState>;

    /// The last lines the worker wrote to its own log, when the target keeps one.
    fn log_tail<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Option<String>>;

    /// Why a worker that is gone ended, when the target can tell (an
    /// out-of-memory kill, an exit code, an image it could not pull), for
    /// the job's failure.
    fn exit_reason<'a>(&'a self, _job_id: JobId, _compute_ref: &'a str) -> BoxFuture<'a, Option<ExitReason>> {
        Box::pin(async { None })
    }

    /// Where a launched worker's own log can be read outside Viberglass
    /// (a CloudWatch Logs group and stream), for the job's log.
    fn log_location(&self, _config: &ComputeConfig, _compute_ref: &str) -> Option<String> {
        None
    }

    /// The worker has made its first call (read its token, fetched its
    /// job): a target that handed it the token through something others may
    /// read (a Kubernetes Secret) removes that now.
    fn worker_started<'a>(&'a self, _job_id: JobId, _compute_ref: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// What this host's workers left on the target (a container kept after
    /// its worker exited, for its exit reason): each with its job and compute
    /// ref. The engine stops those whose job has ended in its database, and
    /// leaves alone those it does not know (another installation's).
    fn leftovers(&self) -> BoxFuture<'_, Vec<(JobId, String)>> {
        Box::pin(async { Vec::new() })
    }
}

/// Refuses to stop another host's worker: only the server that owns it (by host id) does.
pub(crate) fn ours_to_stop(compute_ref: &str, host: &str, own: &str) -> Result<(), ComputeError> {
    if host == own {
        Ok(())
    } else {
        Err(ComputeError::Permanent(format!(
            "the worker {compute_ref} belongs to host {host}, not this one: only its own server stops it"
        )))
    }
}

/// The compute targets this server can drive, by kind.
#[derive(Clone, Default)]
pub struct ComputeRegistry {
    targets: HashMap<ComputeKind, Arc<dyn ComputeTarget>>,
}

impl ComputeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the target for its kind.
    pub fn register(&mut self, target: Arc<dyn ComputeTarget>) {
        self.targets.insert(target.kind(), target);
    }

    pub fn get(&self, kind: ComputeKind) -> Option<&Arc<dyn ComputeTarget>> {
        self.targets.get(&kind)
    }

    /// The kinds this server can run, for messages.
    pub fn kinds(&self) -> Vec<ComputeKind> {
        ComputeKind::ALL.iter().copied().filter(|k| self.targets.contains_key(k)).collect()
    }
}

/// Where the local target keeps workspaces, and which binary it runs.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// This host's id: local compute refs carry it, and only this host's
    /// servers inspect or stop the processes they name.
    pub host_id: String,
    pub worker_binary: PathBuf,
    pub workspace_root: PathBuf,
    /// Extra environment for workers (e.g. `LOG_FORMAT`).
    pub env: Vec<(String, String)>,
    pub sandbox: Sandbox,
    /// The bubblewrap binary; `None`: `bwrap` on the PATH.
    pub bwrap: Option<PathBuf>,
    /// Directories besides the system's that sandboxed workers see,
    /// read-only (e.g. where agent CLIs are installed outside `/usr`).
    pub read_only_paths: Vec<PathBuf>,
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
