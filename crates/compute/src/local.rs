//! The local target: each worker is a child process of the server, in its
//! own process group and workspace directory, with a scrubbed environment.
//! Stop kills the whole process group, so the agent and anything it spawned
//! go too. Workers outlive a server restart (they are not killed with it),
//! and a restarted server finds them again through `/proc`.

use std::process::Stdio;

use futures::FutureExt;
use futures::future::BoxFuture;
use viberglass_domain::{ComputeKind, JobId};

use crate::{
    ComputeConfig, ComputeError, ComputeTarget, LaunchRequest, LocalSettings, Provisioned, Sandbox, WorkerState,
};

/// How the local target names a worker: the host that owns it, its pid and
/// the process's start time (in clock ticks since boot), so a reused pid is
/// never mistaken for it. Written `local:<host>:<pid>:<start>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRef {
    pub host: String,
    pub pid: u32,
    pub start: u64,
}

impl LocalRef {
    pub fn parse(compute_ref: &str) -> Option<LocalRef> {
        let rest = compute_ref.strip_prefix("local:")?;
        let (rest, start) = rest.rsplit_once(':')?;
        let (host, pid) = rest.rsplit_once(':')?;
        if host.is_empty() {
            return None;
        }
        Some(LocalRef { host: host.to_owned(), pid: pid.parse().ok()?, start: start.parse().ok()? })
    }
}

impl std::fmt::Display for LocalRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "local:{}:{}:{}", self.host, self.pid, self.start)
    }
}

/// A process's start time (field 22 of `/proc/<pid>/stat`), and whether it is a zombie.
fn process_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after its last `)`.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z");
    // `rest` starts at field 3 (state), so field 22 is index 19.
    Some((fields.get(19)?.parse().ok()?, zombie))
}

pub struct LocalTarget {
    settings: LocalSettings,
    /// The bubblewrap binary, when workers are sandboxed.
    bwrap: Option<std::path::PathBuf>,
}

/// Finds `bwrap` on the PATH.
fn find_bwrap() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("bwrap")).find(|candidate| candidate.is_file())
}

/// Environment variables a worker inherits from the server; nothing else
/// (in particular no server secrets) reaches it.
const PASSED_THROUGH: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR"];

impl LocalTarget {
    pub fn new(settings: LocalSettings) -> Self {
        let bwrap = match settings.sandbox {
            Sandbox::None => None,
            Sandbox::Auto | Sandbox::Bubblewrap => find_bwrap(),
        };
        Self { settings, bwrap }
    }

    /// Whether workers run inside bubblewrap.
    pub fn sandboxed(&self) -> bool {
        self.bwrap.is_some()
    }

    /// Whether `compute_ref` names a live worker of `job` owned by this host.
    fn state_of(&self, job_id: JobId, compute_ref: &str) -> WorkerState {
        let Some(r) = LocalRef::parse(compute_ref) else {
            // Not ours to judge (an older or another target's form): never touch it.
            return WorkerState::Foreign;
        };
        if r.host != self.settings.host_id {
            return WorkerState::Foreign;
        }
        match process_start(r.pid) {
            Some((start, zombie)) if start == r.start && !zombie => {
                // The same process, still this job's worker (its command line names the job).
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", r.pid)).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&job_id.to_string()) {
                    WorkerState::Running
                } else {
                    WorkerState::Gone
                }
            }
            _ => WorkerState::Gone,
        }
    }

    async fn launch_inner(&self, request: LaunchRequest) -> Result<String, ComputeError> {
        // Checked here because inside a sandbox a missing binary would only
        // show as a worker that never reports.
        if !self.settings.worker_binary.is_file() {
            return Err(ComputeError::Permanent(format!(
                "cannot start {}: no such file; check that the viberglass binary is installed there",
                self.settings.worker_binary.display()
            )));
        }

        let workspace = self.settings.workspace_root.join(request.job_id.to_string());
        std::fs::create_dir_all(&workspace).map_err(|e| {
            ComputeError::Permanent(format!("cannot create the workspace {}: {e}", workspace.display()))
        })?;
        let log = std::fs::File::create(workspace.join("worker.log"))
            .map_err(|e| ComputeError::Permanent(format!("cannot create the worker log: {e}")))?;
        let log_err = log.try_clone().map_err(|e| ComputeError::Permanent(e.to_string()))?;
        let mut command = match &self.bwrap {
            // The whole system read-only, the workspace writable, a private
            // /tmp, its own PID, IPC and UTS namespaces; the network stays
            // shared so the worker can reach the server and the forge. Not
            // --die-with-parent: a worker must outlive a server restart.
            Some(bwrap) => {
                let mut c = tokio::process::Command::new(bwrap);
                c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
                    .arg("--bind")
                    .arg(&workspace)
                    .arg(&workspace)
                    .arg("--chdir")
                    .arg(&workspace)
                    .args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "viberglass-worker", "--"])
                    .arg(&self.settings.worker_binary);
                c
            }
            None => tokio::process::Command::new(&self.settings.worker_binary),
        };
        command
            .arg("worker")
            .arg("--job")
            .arg(request.job_id.to_string())
            .current_dir(&workspace)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        for name in PASSED_THROUGH {
            if let Ok(value) = std::env::var(name) {
                command.env(name, value);
            }
        }
        command
            .env("HOME", workspace.join("home"))
            .env("VIBERGLASS_SERVER_URL", &request.server_url)
            .env("VIBERGLASS_JOB_TOKEN", &request.token)
            .env("VIBERGLASS_WORKSPACE", &workspace);
        for (name, value) in &self.settings.env {
            command.env(name, value);
        }
        let mut child = command.spawn().map_err(|e| {
            ComputeError::Permanent(format!(
                "cannot start {}: {e}; check that the viberglass binary is installed there",
                self.settings.worker_binary.display()
            ))
        })?;
        let pid = child.id().ok_or_else(|| ComputeError::Transient("the worker exited at once".into()))?;
        // Without its start time the worker could not be told from a later
        // process with the same pid: never hand out a ref that cannot be checked.
        let Some((start, _)) = process_start(pid) else {
            let _ = child.start_kill();
            return Err(ComputeError::Transient(format!(
                "cannot read /proc/{pid}/stat for the worker just started: is /proc mounted?"
            )));
        };
        // Reap the child when it exits so it does not linger as a zombie.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(LocalRef { host: self.settings.host_id.clone(), pid, start }.to_string())
    }
}

impl ComputeTarget for LocalTarget {
    fn kind(&self) -> ComputeKind {
        ComputeKind::Local
    }

    fn provision<'a>(&'a self, _config: &'a ComputeConfig) -> BoxFuture<'a, Result<Provisioned, ComputeError>> {
        async move {
            if !self.settings.worker_binary.exists() {
                return Err(ComputeError::Permanent(format!(
                    "the worker binary {} does not exist",
                    self.settings.worker_binary.display()
                )));
            }
            std::fs::create_dir_all(&self.settings.workspace_root).map_err(|e| {
                ComputeError::Permanent(format!("cannot create {}: {e}", self.settings.workspace_root.display()))
            })?;
            if self.settings.sandbox == Sandbox::Bubblewrap && self.bwrap.is_none() {
                return Err(ComputeError::Permanent(
                    "the sandbox is set to bubblewrap but `bwrap` is not installed: install bubblewrap".into(),
                ));
            }
            let message = if self.sandboxed() {
                "ready: workers run sandboxed with bubblewrap (read-only system, writable workspace, private /tmp, \
                 own PID namespace)"
            } else {
                "ready, unsandboxed: bubblewrap is not installed, so workers run as plain local processes (each in \
                 its own workspace directory and process group, with a scrubbed environment); install bubblewrap \
                 to sandbox them"
            };
            Ok(Provisioned { message: message.into() })
        }
        .boxed()
    }

    fn launch(&self, request: LaunchRequest) -> BoxFuture<'_, Result<String, ComputeError>> {
        self.launch_inner(request).boxed()
    }

    fn stop<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Result<(), ComputeError>> {
        async move {
            let Some(r) = LocalRef::parse(compute_ref).filter(|r| r.host == self.settings.host_id) else {
                return Err(ComputeError::Permanent(format!(
                    "`{compute_ref}` is not a worker of this host ({}): only its own host's server stops it",
                    self.settings.host_id
                )));
            };
            let pid = r.pid;
            // Re-check the process's identity right before the kill: a pid
            // reused by another process since must never be signalled. When
            // the leader is gone its group (the agent) may live on, and the
            // group is killed all the same.
            match process_start(pid) {
                Some((start, _)) if start != r.start => return Ok(()),
                // Alive (not a zombie) under that pid and start: still it must be this job's worker.
                Some((_, false)) if self.state_of(job_id, compute_ref) != WorkerState::Running => return Ok(()),
                // A gone or zombie leader's group can still hold the agent: the kernel does
                // not hand its number to a new process while the group exists.
                _ => {}
            }
            // The worker leads its own process group: kill the group.
            let status = tokio::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status()
                .await
                .map_err(|e| ComputeError::Transient(format!("cannot run kill: {e}")))?;
            if !status.success() {
                tracing::debug!(pid, "kill found no process group; the worker was already gone");
            }
            Ok(())
        }
        .boxed()
    }

    fn log_tail(&self, job_id: JobId) -> BoxFuture<'_, Option<String>> {
        async move {
            let path = self.settings.workspace_root.join(job_id.to_string()).join("worker.log");
            let text = std::fs::read_to_string(path).ok()?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            Some(tail.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect())
        }
        .boxed()
    }

    fn inspect<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, WorkerState> {
        async move { self.state_of(job_id, compute_ref) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_refs_name_their_host_pid_and_start() {
        let r = LocalRef::parse("local:build-1.example:4242:987654").unwrap();
        assert_eq!(r, LocalRef { host: "build-1.example".into(), pid: 4242, start: 987654 });
        assert_eq!(r.to_string(), "local:build-1.example:4242:987654");
        for bad in ["local:4242", "docker:x", "local::1:2", "local:h:x:2"] {
            assert!(LocalRef::parse(bad).is_none(), "{bad}");
        }
    }

    fn target(binary: &str, root: &std::path::Path) -> LocalTarget {
        LocalTarget::new(LocalSettings {
            host_id: "host-a".into(),
            worker_binary: binary.into(),
            workspace_root: root.to_owned(),
            env: Vec::new(),
            sandbox: Sandbox::None,
        })
    }

    #[tokio::test]
    async fn a_launched_worker_is_found_running_and_stop_kills_its_group() {
        let root = tempfile::tempdir().unwrap();
        // A stand-in worker: sleeps, with a child of its own in the same group.
        let script = root.path().join("fake-worker");
        std::fs::write(&script, "#!/bin/sh\nsleep 300 &\nsleep 300\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let target = target(script.to_str().unwrap(), root.path());
        let job = JobId::new();
        let request = LaunchRequest {
            job_id: job,
            server_url: "http://127.0.0.1:1".into(),
            token: "t".into(),
            config: ComputeConfig::Local(Default::default()),
        };
        let compute_ref = target.launch(request).await.unwrap();
        // Until the child has exec'd, /proc shows the parent's command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while target.inspect(job, &compute_ref).await != WorkerState::Running {
            assert!(std::time::Instant::now() < deadline, "the launched worker is never seen running");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }

        assert_eq!(
            target.inspect(JobId::new(), &compute_ref).await,
            WorkerState::Gone,
            "another job's id does not match"
        );
        let other_host = compute_ref.replace("local:host-a:", "local:host-b:");
        assert_eq!(target.inspect(job, &other_host).await, WorkerState::Foreign);
        assert!(target.stop(job, &other_host).await.is_err(), "another host's worker is never stopped");
        assert_eq!(target.inspect(job, &compute_ref).await, WorkerState::Running, "still running");
        target.stop(job, &compute_ref).await.unwrap();
        for _ in 0..100 {
            if target.inspect(job, &compute_ref).await == WorkerState::Gone {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the worker still runs after stop");
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_permanent_error() {
        let root = tempfile::tempdir().unwrap();
        let target = target("/nonexistent/viberglass", root.path());
        let request = LaunchRequest {
            job_id: JobId::new(),
            server_url: String::new(),
            token: String::new(),
            config: ComputeConfig::Local(Default::default()),
        };
        let err = target.launch(request).await.unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("/nonexistent/viberglass"), "{err}");
        assert!(target.provision(&ComputeConfig::Local(Default::default())).await.is_err());
    }
}
