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

/// The system's programs and libraries, visible read-only in the sandbox.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/opt"];

/// The few /etc files programs need (users, name resolution, TLS roots,
/// the dynamic linker's cache), visible read-only in the sandbox.
const SYSTEM_FILES: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/pki",
    "/etc/alternatives",
    "/etc/mime.types",
    "/etc/os-release",
];

/// What to bind read-only so that the programs a clanker names run in the
/// sandbox, wherever they live: for each absolute path (taken at its real,
/// canonical location, where a link there leads), its package (the nearest
/// `node_modules` or Python virtual environment above it, whose other files
/// it loads), else its own directory. Only the file itself is bound when
/// that directory is a broad one (`/`, a top-level directory such as `/tmp`,
/// a home directory) or holds something workers must never see (`protected`:
/// the workspaces and the data directory around them, the server's home);
/// never anything inside the workspaces. Paths with `..` are refused.
fn program_binds(programs: &[String], protected: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    use std::path::{Component, Path, PathBuf};
    let home = std::env::var_os("HOME").map(PathBuf::from).and_then(|h| std::fs::canonicalize(h).ok());
    let protected: Vec<PathBuf> =
        protected.iter().chain(home.iter()).map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())).collect();
    let exposes = |dir: &Path| {
        dir.components().count() < 3
            || dir.starts_with("/home") && dir.components().count() < 4
            || protected.iter().any(|p| p.starts_with(dir) || dir.starts_with(p))
    };
    let root_of = |file: &Path| -> Option<PathBuf> {
        if protected.iter().any(|p| file.starts_with(p)) {
            return None;
        }
        let package = file
            .ancestors()
            .skip(1)
            .find(|dir| dir.file_name().is_some_and(|n| n == "node_modules") || dir.join("pyvenv.cfg").is_file());
        match package.or_else(|| file.parent()) {
            Some(dir) if !exposes(dir) => Some(dir.to_owned()),
            _ => Some(file.to_owned()),
        }
    };
    let mut binds: Vec<PathBuf> = Vec::new();
    for program in programs.iter().map(Path::new).filter(|p| p.is_absolute()) {
        if program.components().any(|c| matches!(c, Component::ParentDir)) {
            continue;
        }
        let Ok(real) = std::fs::canonicalize(program) else { continue };
        // The system's own programs are in the sandbox already.
        if SYSTEM_DIRS.iter().any(|dir| program.starts_with(dir) || real.starts_with(dir)) {
            continue;
        }
        // The path as named, when it is a link (bound at its own place so it resolves), and where it leads.
        let named = (real != program).then(|| program.to_owned());
        for file in named.into_iter().chain(std::iter::once(real)) {
            let Some(root) = root_of(&file) else { continue };
            if !binds.iter().any(|b| root.starts_with(b)) {
                binds.retain(|b| !b.starts_with(&root));
                binds.push(root);
            }
        }
    }
    binds
}

/// Environment variables a worker inherits from the server; nothing else
/// (in particular no server secrets) reaches it.
const PASSED_THROUGH: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR"];

impl LocalTarget {
    pub fn new(settings: LocalSettings) -> Self {
        let bwrap = match settings.sandbox {
            Sandbox::None => None,
            Sandbox::Auto | Sandbox::Bubblewrap => match &settings.bwrap {
                Some(path) => path.is_file().then(|| path.clone()),
                None => find_bwrap(),
            },
        };
        Self { settings, bwrap }
    }

    /// Why workers cannot start here, if they cannot: a sandbox was asked
    /// for (`auto` asks for one too) and bubblewrap is missing. Running agents
    /// unsandboxed is a choice someone makes (`none`), never a fallback.
    fn sandbox_missing(&self) -> Option<ComputeError> {
        if self.settings.sandbox == Sandbox::None || self.bwrap.is_some() {
            return None;
        }
        Some(ComputeError::Permanent(
            "bubblewrap is not installed: install the `bubblewrap` package, or set VIBERGLASS_SANDBOX=none to run \
             agents unsandboxed on this host"
                .into(),
        ))
    }

    /// The command that starts the worker binary with `args`, inside the
    /// sandbox when there is one, with `workspace` writable and the
    /// clanker's `programs` visible.
    fn worker_command(
        &self,
        workspace: &std::path::Path,
        args: &[&str],
        programs: &[String],
    ) -> tokio::process::Command {
        let binary = &self.settings.worker_binary;
        let mut command = match &self.bwrap {
            // Only what a job needs: the system's programs and libraries and a
            // few /etc files, read-only; the worker binary, bound by path (so
            // it may live under /tmp); the job's own workspace, writable; a
            // private /tmp; own PID, IPC and UTS namespaces. Never the data
            // directory, the server's home or config, other workspaces or the
            // host's /proc. The network stays shared: agents need their model
            // API. Not --die-with-parent: a worker must outlive a server restart.
            Some(bwrap) => {
                let mut c = tokio::process::Command::new(bwrap);
                for dir in SYSTEM_DIRS {
                    match std::fs::symlink_metadata(dir) {
                        // Merged /usr: /bin -> usr/bin and the like.
                        Ok(meta) if meta.file_type().is_symlink() => {
                            if let Ok(target) = std::fs::read_link(dir) {
                                c.arg("--symlink").arg(target).arg(dir);
                            }
                        }
                        Ok(_) => {
                            c.args(["--ro-bind", dir, dir]);
                        }
                        Err(_) => {}
                    }
                }
                for file in SYSTEM_FILES {
                    c.args(["--ro-bind-try", file, file]);
                }
                for path in &self.settings.read_only_paths {
                    c.arg("--ro-bind-try").arg(path).arg(path);
                }
                c.args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
                // After the private /tmp, so an agent CLI may live under /tmp too.
                let protected = [
                    self.settings.workspace_root.clone(),
                    self.settings.workspace_root.parent().map(|p| p.to_owned()).unwrap_or_default(),
                ];
                for path in program_binds(programs, &protected) {
                    c.arg("--ro-bind-try").arg(&path).arg(&path);
                }
                c.arg("--ro-bind")
                    .arg(binary)
                    .arg(binary)
                    .arg("--bind")
                    .arg(workspace)
                    .arg(workspace)
                    // The sandbox's own root (where mount points were made) is read-only too.
                    .args(["--remount-ro", "/"])
                    .arg("--chdir")
                    .arg(workspace)
                    .args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "viberglass-worker", "--"])
                    .arg(binary);
                c
            }
            None => tokio::process::Command::new(binary),
        };
        command.args(args).current_dir(workspace).env_clear();
        for name in PASSED_THROUGH {
            if let Ok(value) = std::env::var(name) {
                command.env(name, value);
            }
        }
        // The server's trace export settings, so its workers' spans reach the same collector (the worker keeps
        // them from its agent).
        for (name, value) in
            std::env::vars_os().filter(|(name, _)| name.to_str().is_some_and(|n| n.starts_with("OTEL_")))
        {
            command.env(name, value);
        }
        command
    }

    /// Runs `viberglass worker --self-check` the way a job's worker starts, so
    /// that "ready" means a job can start here.
    async fn self_check(&self, programs: &[String]) -> Result<(), ComputeError> {
        let dir = self.settings.workspace_root.join(format!(".self-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| ComputeError::Permanent(format!("cannot create {}: {e}", dir.display())))?;
        let checks: Vec<String> = programs.iter().map(|p| format!("--program={p}")).collect();
        let mut args = vec!["worker", "--self-check"];
        args.extend(checks.iter().map(String::as_str));
        let mut command = self.worker_command(&dir, &args, programs);
        command.env("HOME", &dir).stdin(Stdio::null()).kill_on_drop(true);
        let output = tokio::time::timeout(std::time::Duration::from_secs(30), command.output()).await;
        let _ = std::fs::remove_dir_all(&dir);
        let sandbox = if self.bwrap.is_some() { " inside the sandbox" } else { "" };
        match output {
            Ok(Ok(out))
                if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("viberglass worker ok") =>
            {
                Ok(())
            }
            Ok(Ok(out)) if String::from_utf8_lossy(&out.stderr).contains("the clanker's program cannot run") => {
                Err(ComputeError::Permanent(format!(
                    "{}{sandbox}: install it, fix the clanker's command or `binary`, or make its directory visible \
                     to workers with VIBERGLASS_SANDBOX_PATHS",
                    String::from_utf8_lossy(&out.stderr).trim().chars().take(500).collect::<String>()
                )))
            }
            Ok(Ok(out)) => Err(ComputeError::Permanent(format!(
                "the worker binary {} does not run{sandbox} ({}): {}",
                self.settings.worker_binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim().chars().take(500).collect::<String>()
            ))),
            Ok(Err(e)) => Err(ComputeError::Permanent(format!(
                "cannot start the worker binary {}{sandbox}: {e}",
                self.settings.worker_binary.display()
            ))),
            Err(_) => Err(ComputeError::Permanent(format!(
                "the worker binary {} did not answer its self-check{sandbox} within 30 s",
                self.settings.worker_binary.display()
            ))),
        }
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
        if let Some(missing) = self.sandbox_missing() {
            return Err(missing);
        }
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
        // The token goes in a file the worker reads and deletes at once, never
        // in its environment, where its agent could read it (/proc/<pid>/environ).
        let token_file = workspace.join(".viberglass-token");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&token_file);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_file)
                .and_then(|mut f| f.write_all(request.token.as_bytes()).map(|()| f))
                .map_err(|e| ComputeError::Permanent(format!("cannot write the job's token file: {e}")))?;
            let _ = file.flush();
        }
        let job = request.job_id.to_string();
        let mut command = self.worker_command(&workspace, &["worker", "--job", &job], &request.programs);
        command.stdin(Stdio::null()).stdout(log).stderr(log_err).process_group(0).kill_on_drop(false);
        command
            .env("HOME", workspace.join("home"))
            .env("VIBERGLASS_SERVER_URL", &request.server_url)
            .env("VIBERGLASS_JOB_TOKEN_FILE", &token_file)
            .env("VIBERGLASS_WORKSPACE", &workspace)
            .env("TMPDIR", "/tmp");
        // The worker runs its agent in a sandbox of its own (its own PID
        // namespace), so the agent cannot see the worker's process, memory or
        // environment.
        if let Some(bwrap) = &self.bwrap {
            command.env("VIBERGLASS_AGENT_BWRAP", bwrap);
        }
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

    fn provision<'a>(
        &'a self,
        _config: &'a ComputeConfig,
        programs: &'a [String],
    ) -> BoxFuture<'a, Result<Provisioned, ComputeError>> {
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
            if let Some(missing) = self.sandbox_missing() {
                return Err(missing);
            }
            self.self_check(programs).await?;
            let message = if self.sandboxed() {
                "ready: workers run sandboxed with bubblewrap (read-only system, writable workspace, private /tmp, \
                 own PID namespace), and the worker binary passed its self-check there (the clanker's program included)"
            } else {
                "ready, unsandboxed (VIBERGLASS_SANDBOX=none): workers run as plain local processes (each in its own \
                 workspace directory and process group, with a scrubbed environment) and their agents can read \
                 whatever this server's user can; set VIBERGLASS_SANDBOX=auto with bubblewrap installed to sandbox them"
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

    fn log_tail<'a>(&'a self, job_id: JobId, _compute_ref: &'a str) -> BoxFuture<'a, Option<String>> {
        async move {
            let path = self.settings.workspace_root.join(job_id.to_string()).join("worker.log");
            // The workspace is the agent's to write: never follow a link it put
            // there, and read only the end of the file.
            let meta = std::fs::symlink_metadata(&path).ok()?;
            if !meta.file_type().is_file() {
                return Some("the worker's log was replaced by something that is not a file".into());
            }
            let mut file = std::fs::File::open(&path).ok()?;
            use std::io::{Read, Seek, SeekFrom};
            let from = meta.len().saturating_sub(64 * 1024);
            file.seek(SeekFrom::Start(from)).ok()?;
            let mut bytes = Vec::new();
            file.take(64 * 1024).read_to_end(&mut bytes).ok()?;
            let text = String::from_utf8_lossy(&bytes);
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
            bwrap: None,
            read_only_paths: Vec::new(),
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
            programs: Vec::new(),
            time_limit_secs: None,
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

    #[test]
    fn programs_are_bound_with_their_package_and_never_a_whole_broad_directory() {
        let root = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(root.path()).unwrap();
        let package = base.join("tools/node_modules/@acme/cli");
        std::fs::create_dir_all(&package).unwrap();
        std::fs::create_dir_all(base.join("tools/node_modules/.bin")).unwrap();
        std::fs::write(package.join("cli.js"), "").unwrap();
        let link = base.join("tools/node_modules/.bin/cli");
        std::os::unix::fs::symlink("../@acme/cli/cli.js", &link).unwrap();
        let binds = program_binds(&[link.display().to_string(), "sh".into()], &[]);
        assert_eq!(binds, [base.join("tools/node_modules")], "the node_modules tree, once; a name binds nothing");

        let loose = base.join("agent");
        std::fs::write(&loose, "").unwrap();
        let nested = base.join("bin/agent");
        std::fs::create_dir_all(base.join("bin")).unwrap();
        std::fs::write(&nested, "").unwrap();
        assert_eq!(program_binds(&[nested.display().to_string()], &[]), [base.join("bin")], "its own directory");
        // A directory holding (or inside) what workers must never see: the file alone, or nothing.
        let data = base.join("data");
        std::fs::create_dir_all(data.join("workspaces/job")).unwrap();
        std::fs::write(data.join("workspaces/job/x"), "").unwrap();
        let protected = std::slice::from_ref(&data);
        assert_eq!(program_binds(&[loose.display().to_string()], protected), vec![loose]);
        assert!(program_binds(&[data.join("workspaces/job/x").display().to_string()], protected).is_empty());
        assert_eq!(program_binds(&["/usr/bin/../bin/sh".into()], &[]), Vec::<std::path::PathBuf>::new(), "no `..`");
        assert!(program_binds(&["/bin/sh".into()], &[]).is_empty(), "system programs are there already");
        assert_eq!(program_binds(&[base.join("agent").display().to_string()], &[]), vec![base]);
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
            programs: Vec::new(),
            time_limit_secs: None,
        };
        let err = target.launch(request).await.unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("/nonexistent/viberglass"), "{err}");
        assert!(target.provision(&ComputeConfig::Local(Default::default()), &[]).await.is_err());
    }
}
