//! The Docker target: one container of the worker image per job, on the
//! engine at `DOCKER_HOST` (or the local socket).
//!
//! A container is named `viberglass-<job id>` and labelled with the job and
//! the owning host, so a restarted server finds its workers again. The job's
//! token is copied into the container's workspace as a file before it starts
//! (the worker deletes it once read, before its agent starts), never put in
//! its environment. Stop kills and removes the container; a container whose
//! worker exited stays until its job has ended (so its exit code, an
//! out-of-memory kill and its last log lines can be read), then the engine
//! removes it.

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use viberglass_domain::{ComputeKind, JobId};

use crate::{ComputeConfig, ComputeError, ComputeTarget, ExitReason, LaunchRequest, Provisioned, WorkerState};

/// The image a Docker clanker runs when it names none.
pub const DEFAULT_IMAGE: &str = "viberglass-worker:latest";
/// Where the image's worker keeps its job (owned by the image's user).
const WORKSPACE: &str = "/workspace";
const TOKEN_FILE: &str = ".viberglass-token";
const JOB_LABEL: &str = "io.viberglass.job";
const HOST_LABEL: &str = "io.viberglass.host";
const SELF_CHECK_LABEL: &str = "io.viberglass.self-check";

/// A Docker clanker's settings (`compute_config`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// The worker image (built from docker/worker.Dockerfile).
    #[serde(default = "default_image")]
    pub image: String,
    /// CPUs a worker may use (e.g. 1.5); unlimited when absent.
    pub cpus: Option<f64>,
    /// Memory a worker may use, in MiB; unlimited when absent.
    pub memory_mb: Option<u64>,
    /// The Docker network the container joins (`bridge` when absent; `host`
    /// for a server reachable only on the Docker host's loopback).
    pub network: Option<String>,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}

impl DockerConfig {
    pub(crate) fn validate(self) -> Result<DockerConfig, String> {
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err("`compute_config.image` must be an image name such as viberglass-worker:latest".into());
        }
        if let Some(cpus) = self.cpus
            && !(cpus > 0.0 && cpus <= 512.0)
        {
            return Err("`compute_config.cpus` must be more than 0 (e.g. 1.5)".into());
        }
        if let Some(memory) = self.memory_mb
            && !(64..=MAX_MEMORY_MB).contains(&memory)
        {
            return Err(format!("`compute_config.memory_mb` must be between 64 and {MAX_MEMORY_MB} (MiB)"));
        }
        if let Some(network) = &self.network
            && (network.trim().is_empty()
                || network.chars().any(char::is_whitespace)
                || network.starts_with("container:")
                || network == "none")
        {
            return Err(
                "`compute_config.network` must be a Docker network name such as bridge (not none or container:…)"
                    .into(),
            );
        }
        Ok(self)
    }
}

/// The host's Docker settings.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// Names this server's workers (see `LocalSettings::host_id`).
    pub host_id: String,
    /// Whether clankers may use `"network": "host"` (the Docker host's own
    /// network: its loopback services and its cloud metadata endpoint).
    pub allow_host_network: bool,
}

/// How long one call to the Docker engine may take before it counts as unreachable.
const CALL_TIMEOUT_SECS: u64 = 30;
/// The most memory a clanker may ask for, in MiB (1 TiB).
const MAX_MEMORY_MB: u64 = 1024 * 1024;

pub struct DockerTarget {
    settings: DockerSettings,
}

/// A Docker compute ref: `docker:<host id>:<container id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    pub host: String,
    pub container: String,
}

impl DockerRef {
    pub fn parse(compute_ref: &str) -> Option<DockerRef> {
        let rest = compute_ref.strip_prefix("docker:")?;
        let (host, container) = rest.rsplit_once(':')?;
        let valid = !host.is_empty() && !container.is_empty() && container.chars().all(|c| c.is_ascii_hexdigit());
        valid.then(|| DockerRef { host: host.to_owned(), container: container.to_owned() })
    }
}

impl std::fmt::Display for DockerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "docker:{}:{}", self.host, self.container)
    }
}

/// Where the engine is, for messages.
fn engine_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

fn status_of(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn unreachable(error: &DockerError) -> ComputeError {
    ComputeError::Transient(format!(
        "cannot reach the Docker engine at {} ({error}): start dockerd, or point DOCKER_HOST at the engine, and check \
         that this server's user may use its socket",
        engine_address()
    ))
}

/// A single-file tar archive (the job's token), in the ustar format Docker's archive endpoint takes.
fn token_archive(token: &str) -> Vec<u8> {
    let mut header = [0u8; 512];
    let name = TOKEN_FILE.as_bytes();
    header[..name.len()].copy_from_slice(name);
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    // Readable by whichever user the image runs as (Docker 20.10 cannot map
    // the owner onto a user of a container that has not started); the worker
    // deletes it through its own workspace directory before its agent starts.
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], token.len() as u64);
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    let mut archive = header.to_vec();
    archive.extend_from_slice(token.as_bytes());
    archive.resize(archive.len().div_ceil(512) * 512, 0);
    archive.resize(archive.len() + 1024, 0);
    archive
}

impl DockerTarget {
    pub fn new(settings: DockerSettings) -> Self {
        Self { settings }
    }

    fn client(&self) -> Result<Docker, ComputeError> {
        let address = engine_address();
        // Plain HTTP to another machine would carry every job's token and control of its engine in the clear.
        if let Some(rest) = address.strip_prefix("tcp://").or_else(|| address.strip_prefix("http://")) {
            let host = rest.split([':', '/']).next().unwrap_or_default();
            if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
                return Err(ComputeError::Permanent(format!(
                    "DOCKER_HOST {address} is plain, unencrypted TCP to another machine, which Viberglass refuses: \
                     reach that engine through an SSH tunnel to a local socket, or run the server on the Docker host"
                )));
            }
        }
        Docker::connect_with_defaults()
            .map(|d| d.with_timeout(std::time::Duration::from_secs(CALL_TIMEOUT_SECS)))
            .map_err(|e| {
                ComputeError::Permanent(format!("cannot use the Docker engine at {address} ({e}): check DOCKER_HOST"))
            })
    }

    /// Refuses the host network unless this server allows it.
    fn check_network(&self, config: &DockerConfig) -> Result<(), ComputeError> {
        if config.network.as_deref() == Some("host") && !self.settings.allow_host_network {
            return Err(ComputeError::Permanent(
                "`\"network\": \"host\"` gives agents the Docker host's own network (its loopback services, its \
                 cloud metadata endpoint and role): use a bridge network, or set VIBERGLASS_DOCKER_ALLOW_HOST_NETWORK=true \
                 if this host has nothing an agent must not reach"
                    .into(),
            ));
        }
        Ok(())
    }

    fn config(config: &ComputeConfig) -> Result<&DockerConfig, ComputeError> {
        match config {
            ComputeConfig::Docker(docker) => Ok(docker),
            other => {
                Err(ComputeError::Permanent(format!("the Docker target was given a {} configuration", other.kind())))
            }
        }
    }

    fn container_name(job_id: JobId) -> String {
        format!("viberglass-{job_id}")
    }

    /// The container a compute ref names (by its id), else the job's by name.
    fn container_of(job_id: JobId, compute_ref: &str) -> String {
        DockerRef::parse(compute_ref).map_or_else(|| Self::container_name(job_id), |r| r.container)
    }

    /// The container body every worker of `config` runs with.
    fn body(
        &self,
        config: &DockerConfig,
        job: Option<JobId>,
        cmd: Vec<String>,
        env: Vec<String>,
    ) -> ContainerCreateBody {
        let mut labels = HashMap::from([(HOST_LABEL.to_owned(), self.settings.host_id.clone())]);
        match job {
            Some(job) => labels.insert(JOB_LABEL.to_owned(), job.to_string()),
            None => labels.insert(SELF_CHECK_LABEL.to_owned(), "true".to_owned()),
        };
        let memory = config.memory_mb.map(|mb| (mb * 1024 * 1024) as i64);
        ContainerCreateBody {
            image: Some(config.image.clone()),
            cmd: Some(cmd),
            env: Some(env),
            labels: Some(labels),
            working_dir: Some(WORKSPACE.to_owned()),
            host_config: Some(HostConfig {
                memory,
                // No swap beyond the limit: over it, the kernel kills the worker, and we say so.
                memory_swap: memory,
                nano_cpus: config.cpus.map(|c| (c * 1e9) as i64),
                network_mode: config.network.clone(),
                // An init process reaps what the agent leaves behind.
                init: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                pids_limit: Some(4096),
                // An agent's output must not fill the Docker host's disk.
                log_config: Some(bollard::models::HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), "10m".to_owned()),
                        ("max-file".to_owned(), "2".to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs `viberglass worker --self-check` in the image, as a job's worker would start.
    async fn self_check(
        &self,
        docker: &Docker,
        config: &DockerConfig,
        programs: &[String],
    ) -> Result<(), ComputeError> {
        let mut cmd = vec!["worker".to_owned(), "--self-check".to_owned()];
        cmd.extend(programs.iter().map(|p| format!("--program={p}")));
        // What an earlier self-check left (a server stopped half-way through one).
        let filters = HashMap::from([(
            "label",
            vec![format!("{HOST_LABEL}={}", self.settings.host_id), SELF_CHECK_LABEL.to_owned()],
        )]);
        if let Ok(stale) = docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
        {
            // Old ones only: a self-check of another Start may be running right now.
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            let old = stale.into_iter().filter(|c| c.created.is_some_and(|at| now - at > 300));
            for container in old.filter_map(|c| c.id) {
                let _ = docker
                    .remove_container(&container, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
                    .await;
            }
        }
        let name = format!("viberglass-self-check-{}", JobId::new());
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = docker
            .create_container(Some(options), self.body(config, None, cmd, Vec::new()))
            .await
            .map_err(|e| ComputeError::Permanent(format!("cannot create a container of `{}`: {e}", config.image)))?;
        let outcome = async {
            docker
                .start_container(&created.id, None)
                .await
                .map_err(|e| ComputeError::Permanent(format!("cannot start a container of `{}`: {e}", config.image)))?;
            let wait = docker.wait_container(&created.id, Some(WaitContainerOptionsBuilder::default().build()));
            let code = match tokio::time::timeout(std::time::Duration::from_secs(60), wait.collect::<Vec<_>>()).await {
                Ok(results) => match results.into_iter().last() {
                    Some(Ok(done)) => done.status_code,
                    // A non-zero exit arrives as an error carrying the code.
                    Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
                    Some(Err(e)) => return Err(ComputeError::Transient(format!("waiting for the self-check: {e}"))),
                    None => -1,
                },
                Err(_) => {
                    return Err(ComputeError::Permanent(format!(
                        "the worker image `{}` did not answer its self-check within 60 s",
                        config.image
                    )));
                }
            };
            let output = self.logs(docker, &created.id, 20).await;
            if code == 0 && output.contains("viberglass worker ok") {
                Ok(())
            } else if output.contains("the clanker's program cannot run") {
                Err(ComputeError::Permanent(format!(
                    "{} in the image `{}`: install it in the image, or fix the clanker's command or `binary`",
                    output.trim(),
                    config.image
                )))
            } else {
                Err(ComputeError::Permanent(format!(
                    "the worker image `{}` does not run `viberglass worker` (exit code {code}): {}; build it from \
                     docker/worker.Dockerfile (scripts/worker-image)",
                    config.image,
                    output.trim()
                )))
            }
        }
        .await;
        let _ = docker
            .remove_container(&created.id, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
            .await;
        outcome
    }

    /// The container's last `lines` lines of output.
    async fn logs(&self, docker: &Docker, container: &str, lines: usize) -> String {
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&lines.to_string()).build();
        let mut stream = docker.logs(container, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if text.len() > 64 * 1024 {
                break;
            }
        }
        text
    }

    async fn launch_inner(&self, request: LaunchRequest) -> Result<String, ComputeError> {
        let config = Self::config(&request.config)?;
        self.check_network(config)?;
        let docker = self.client()?;
        let name = Self::container_name(request.job_id);
        // A launch that failed half-way left its container behind: start afresh.
        match docker.remove_container(&name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) if status_of(&e).is_none() => return Err(unreachable(&e)),
            Err(e) => return Err(ComputeError::Transient(format!("cannot remove the old container {name}: {e}"))),
        }
        let job = request.job_id.to_string();
        let env = vec![
            format!("VIBERGLASS_SERVER_URL={}", request.server_url),
            format!("VIBERGLASS_JOB_TOKEN_FILE={WORKSPACE}/{TOKEN_FILE}"),
            format!("VIBERGLASS_WORKSPACE={WORKSPACE}"),
            "LOG_FORMAT=json".to_owned(),
        ];
        let body = self.body(config, Some(request.job_id), vec!["worker".into(), "--job".into(), job], env);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = match docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(ComputeError::Permanent(format!(
                    "image `{}` is not on the Docker host {}: build it with scripts/worker-image (or `docker build -f \
                     docker/worker.Dockerfile`), or set the clanker's compute_config.image",
                    config.image,
                    engine_address()
                )));
            }
            Err(e) if status_of(&e).is_none() => return Err(unreachable(&e)),
            Err(e) => return Err(ComputeError::Permanent(format!("the Docker engine refused the container: {e}"))),
        };
        let remove = || async {
            let _ = docker
                .remove_container(&created.id, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
                .await;
        };
        // The token, as a file owned by the image's user, before anything runs.
        let upload = UploadToContainerOptionsBuilder::default().path(WORKSPACE).build();
        if let Err(e) = docker
            .upload_to_container(&created.id, Some(upload), bollard::body_full(token_archive(&request.token).into()))
            .await
        {
            remove().await;
            return Err(ComputeError::Transient(format!("cannot copy the job's token into its container: {e}")));
        }
        if let Err(e) = docker.start_container(&created.id, None).await {
            remove().await;
            return Err(ComputeError::Permanent(format!(
                "the Docker engine could not start the worker's container: {e}"
            )));
        }
        let short: String = created.id.chars().take(12).collect();
        Ok(DockerRef { host: self.settings.host_id.clone(), container: short }.to_string())
    }

    async fn state_of(&self, job_id: JobId, compute_ref: &str) -> WorkerState {
        let Some(r) = DockerRef::parse(compute_ref) else { return WorkerState::Foreign };
        if r.host != self.settings.host_id {
            return WorkerState::Foreign;
        }
        let Ok(docker) = self.client() else { return WorkerState::Unknown };
        match docker.inspect_container(&r.container, None).await {
            Ok(found) => {
                let ours = found
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(JOB_LABEL))
                    .is_some_and(|j| *j == job_id.to_string());
                let running = found.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                let starting = found
                    .state
                    .as_ref()
                    .and_then(|s| s.status)
                    .is_some_and(|s| matches!(s, bollard::models::ContainerStateStatusEnum::CREATED));
                if ours && (running || starting) { WorkerState::Running } else { WorkerState::Gone }
            }
            Err(e) if status_of(&e) == Some(404) => WorkerState::Gone,
            // The engine cannot be asked: say nothing rather than fail a job that may be fine.
            Err(_) => WorkerState::Unknown,
        }
    }
}

impl ComputeTarget for DockerTarget {
    fn kind(&self) -> ComputeKind {
        ComputeKind::Docker
    }

    fn provision<'a>(
        &'a self,
        config: &'a ComputeConfig,
        programs: &'a [String],
    ) -> BoxFuture<'a, Result<Provisioned, ComputeError>> {
        Box::pin(async move {
            let config = Self::config(config)?;
            self.check_network(config)?;
            let docker = self.client()?;
            docker.ping().await.map_err(|e| {
                ComputeError::Permanent(format!(
                    "cannot reach the Docker engine at {} ({e}): start dockerd, or point DOCKER_HOST at the engine, \
                     and check that this server's user may use its socket",
                    engine_address()
                ))
            })?;
            match docker.inspect_image(&config.image).await {
                Ok(_) => {}
                Err(e) if status_of(&e) == Some(404) => {
                    return Err(ComputeError::Permanent(format!(
                        "image `{}` is not on the Docker host {}: build it with scripts/worker-image (or `docker build \
                         -f docker/worker.Dockerfile`), or set the clanker's compute_config.image",
                        config.image,
                        engine_address()
                    )));
                }
                Err(e) => return Err(ComputeError::Permanent(format!("cannot inspect image `{}`: {e}", config.image))),
            }
            self.self_check(&docker, config, programs).await?;
            let limits = match (config.cpus, config.memory_mb) {
                (None, None) => "no CPU or memory limit".to_owned(),
                (cpus, memory) => format!(
                    "limits: {} CPU, {} memory",
                    cpus.map_or("any".into(), |c| c.to_string()),
                    memory.map_or("any".into(), |m| format!("{m} MiB"))
                ),
            };
            Ok(Provisioned {
                message: format!(
                    "ready: workers run in containers of `{}` on the Docker host {} (network {}, {limits}), and the \
                     image passed its self-check",
                    config.image,
                    engine_address(),
                    config.network.as_deref().unwrap_or("bridge"),
                ),
            })
        })
    }

    fn launch(&self, request: LaunchRequest) -> BoxFuture<'_, Result<String, ComputeError>> {
        Box::pin(self.launch_inner(request))
    }

    fn stop<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Result<(), ComputeError>> {
        Box::pin(async move {
            let Some(r) = DockerRef::parse(compute_ref) else {
                return Err(ComputeError::Permanent(format!("`{compute_ref}` is not a Docker worker")));
            };
            crate::ours_to_stop(compute_ref, &r.host, &self.settings.host_id)?;
            let docker = self.client()?;
            // By name too: the container is this job's whatever its id.
            for container in [r.container.clone(), Self::container_name(job_id)] {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                match docker.remove_container(&container, Some(options)).await {
                    Ok(()) => {}
                    Err(e) if matches!(status_of(&e), Some(404 | 409)) => {}
                    Err(e) if status_of(&e).is_none() => return Err(unreachable(&e)),
                    Err(e) => {
                        return Err(ComputeError::Transient(format!("cannot remove the container {container}: {e}")));
                    }
                }
            }
            Ok(())
        })
    }

    fn inspect<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, WorkerState> {
        Box::pin(self.state_of(job_id, compute_ref))
    }

    fn log_tail<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let docker = self.client().ok()?;
            let text = self.logs(&docker, &Self::container_of(job_id, compute_ref), 40).await;
            (!text.trim().is_empty()).then_some(text)
        })
    }

    fn exit_reason<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Option<ExitReason>> {
        Box::pin(async move {
            let docker = self.client().ok()?;
            let found = docker.inspect_container(&Self::container_of(job_id, compute_ref), None).await.ok()?;
            let state = found.state?;
            let memory = found.host_config.and_then(|h| h.memory).filter(|m| *m > 0);
            if state.oom_killed == Some(true) {
                let limit = memory.map_or_else(String::new, |m| format!(" (its limit is {} MiB)", m / 1024 / 1024));
                return Some(ExitReason {
                    code: "worker_out_of_memory",
                    message: format!(
                        "killed: out of memory{limit}: raise the clanker's memory limit (compute_config.memory_mb), \
                         then re-run"
                    ),
                    started: true,
                });
            }
            let code = state.exit_code?;
            Some(ExitReason {
                code: "worker_exited",
                message: match code {
                    137 => "the container was killed (exit code 137: SIGKILL, e.g. `docker kill` or the host)".into(),
                    code => format!("the container exited with code {code}"),
                },
                started: true,
            })
        })
    }

    fn leftovers(&self) -> BoxFuture<'_, Vec<(JobId, String)>> {
        Box::pin(async move {
            let Ok(docker) = self.client() else { return Vec::new() };
            let filters = HashMap::from([("label", vec![format!("{HOST_LABEL}={}", self.settings.host_id)])]);
            let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
            let Ok(containers) = docker.list_containers(Some(options)).await else { return Vec::new() };
            containers
                .into_iter()
                .filter_map(|c| {
                    let job = c.labels.as_ref()?.get(JOB_LABEL)?.parse::<JobId>().ok()?;
                    let id: String = c.id?.chars().take(12).collect();
                    Some((job, DockerRef { host: self.settings.host_id.clone(), container: id }.to_string()))
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_name_their_host_and_container() {
        let r = DockerRef { host: "host-a".into(), container: "0123456789ab".into() };
        assert_eq!(DockerRef::parse(&r.to_string()), Some(r));
        assert_eq!(DockerRef::parse("docker:h:not-hex"), None);
        assert_eq!(DockerRef::parse("local:h:1:2"), None);
    }

    #[test]
    fn the_token_archive_is_one_file_in_ustar() {
        let archive = token_archive("secret-token");
        assert_eq!(archive.len() % 512, 0);
        assert_eq!(&archive[..TOKEN_FILE.len()], TOKEN_FILE.as_bytes());
        assert_eq!(&archive[100..107], b"0000644");
        assert_eq!(&archive[257..262], b"ustar");
        assert_eq!(&archive[512..524], b"secret-token");
        // The checksum: the header's bytes summed with the checksum field as spaces.
        let mut header = archive[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
        let stored = std::str::from_utf8(&archive[148..154]).unwrap();
        assert_eq!(u64::from_str_radix(stored, 8).unwrap(), sum);
    }

    #[test]
    fn configs_are_checked() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<DockerConfig>(v).map_err(|e| e.to_string()).and_then(DockerConfig::validate)
        };
        assert_eq!(parse(serde_json::json!({})).unwrap().image, DEFAULT_IMAGE);
        assert!(parse(serde_json::json!({"cpus": 0})).is_err());
        assert!(parse(serde_json::json!({"memory_mb": 10})).is_err());
        assert!(parse(serde_json::json!({"image": "a b"})).is_err());
        assert!(parse(serde_json::json!({"gpus": 1})).is_err(), "unknown settings are refused");
        let ok = parse(serde_json::json!({"image": "w:1", "cpus": 1.5, "memory_mb": 512, "network": "host"})).unwrap();
        assert_eq!((ok.cpus, ok.memory_mb, ok.network.as_deref()), (Some(1.5), Some(512), Some("host")));
    }
}
