//! Harnesses run the agent. The command harness runs a configured command
//! line in the checkout; the agent CLIs get harnesses of their own.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use viberglass_domain::{Failure, FailureLayer, HarnessSpec, JobSpec, LogLevel};

use crate::events::EventSink;

/// What the agent did, as far as the pipeline cares.
pub enum AgentEnd {
    /// It finished; the usage it reported, if any.
    Finished(Option<Usage>),
    Cancelled,
}

pub use viberglass_domain::protocol::Usage;

/// Runs the agent described by `spec.harness` in `repo`, streaming its output as log lines.
pub async fn run_agent(
    spec: &JobSpec,
    secrets: &std::collections::BTreeMap<String, String>,
    repo: &Path,
    home: &Path,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<AgentEnd, Failure> {
    let command = match &spec.harness {
        HarnessSpec::Command { command } => command,
        HarnessSpec::Agent { agent, settings } => {
            return run_cli(*agent, settings, spec, secrets, repo, home, sink, cancel).await;
        }
    };
    let (program, args) = command.split_first().ok_or_else(|| {
        Failure::new(
            FailureLayer::Agent,
            "no_command",
            "the clanker's command is empty: set agent_settings.command",
            false,
        )
    })?;
    // The prompt is a file in the agent's home (and its standard input),
    // never an argument or a variable: those are limited to 128 KiB each.
    let prompt_file = home.join(".viberglass-prompt.md");
    std::fs::write(&prompt_file, &spec.prompt).map_err(|e| Failure::internal(format!("writing the prompt: {e}")))?;
    ensure_program(program).map_err(|why| {
        Failure::new(
            FailureLayer::Agent,
            "agent_not_installed",
            format!("the agent command `{program}` cannot start ({why}): install it on the worker or fix the clanker's command"),
            false,
        )
    })?;
    let ooms = crate::guard::oom_kills();
    let mut child = agent_command(program, repo, home)
        .args(args)
        .current_dir(repo)
        // Some CLIs (OpenCode) take their project directory from PWD, not from the real cwd.
        .env("PWD", repo)
        .stdin(std::fs::File::open(&prompt_file).map_err(|e| Failure::internal(format!("reading the prompt: {e}")))?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("HOME", home)
        .env("VIBERGLASS_PHASE", spec.phase.as_str())
        .env("VIBERGLASS_PROMPT_FILE", &prompt_file)
        .env("VIBERGLASS_TICKET_TITLE", spec.ticket_title.chars().take(1000).collect::<String>())
        .envs(secrets)
        .env_remove("VIBERGLASS_JOB_TOKEN")
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Failure::new(
                FailureLayer::Agent,
                "agent_not_installed",
                format!("the agent command `{program}` could not start ({e}): install it on the worker or fix the clanker's command"),
                false,
            )
        })?;
    let group = child.id();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let out_sink = sink.clone();
    let out = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).split(b'\n');
        while let Ok(Some(bytes)) = lines.next_segment().await {
            let line = text_of(&bytes);
            out_sink.log(LogLevel::Info, &line);
        }
    });
    let err_sink = sink.clone();
    let err = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).split(b'\n');
        while let Ok(Some(bytes)) = lines.next_segment().await {
            let line = text_of(&bytes);
            err_sink.log(LogLevel::Warn, &line);
        }
    });
    let status = tokio::select! {
        status = child.wait() => status,
        () = cancel.cancelled() => {
            stop_group(group);
            let _ = child.kill().await;
            let _ = stop_leftovers(sink, None).await;
            return Ok(AgentEnd::Cancelled);
        }
    };
    // Nothing the agent started outlives it: git runs next, on its checkout.
    stop_group(group);
    stop_leftovers(sink, None).await?;
    let _ = tokio::join!(out, err);
    let status = status.map_err(|e| Failure::internal(format!("waiting for the agent: {e}")))?;
    if status.success() {
        Ok(AgentEnd::Finished(None))
    } else if let Some(failure) = out_of_memory(ooms) {
        Err(failure)
    } else {
        Err(Failure::new(
            FailureLayer::Agent,
            "agent_exited_nonzero",
            format!(
                "the agent exited with {}: read the job's log for its last lines; fix the cause (or the clanker's command) and re-run",
                status.code().map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"))
            ),
            true,
        ))
    }
}

/// Runs an agent CLI through its adapter: its output becomes normalized
/// agent events (raw lines kept at debug level), and its end is classified.
#[allow(clippy::too_many_arguments)]
async fn run_cli(
    agent: viberglass_domain::AgentKind,
    settings: &viberglass_domain::AgentSettings,
    spec: &JobSpec,
    secrets: &std::collections::BTreeMap<String, String>,
    repo: &Path,
    home: &Path,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<AgentEnd, Failure> {
    use viberglass_agents::AgentEvent;
    let adapter = viberglass_agents::adapter(agent).ok_or_else(|| {
        Failure::new(
            FailureLayer::Agent,
            "agent_unsupported",
            format!("this worker cannot run the {agent} agent yet"),
            false,
        )
    })?;
    // The key is checked before the CLI starts: a missing key is a
    // configuration problem, not something the CLI should discover.
    let key_name = settings.api_key_secret.clone().unwrap_or_else(|| adapter.default_key_secret().to_owned());
    let Some(api_key) = secrets.get(&key_name) else {
        return Err(Failure::new(
            FailureLayer::Secrets,
            "agent_key_missing",
            format!(
                "clanker {} has no secret {key_name} for the {agent} agent's API key: attach a secret named {key_name} to the clanker (or set agent_settings.api_key_secret), then re-run",
                spec.clanker_name
            ),
            false,
        ));
    };
    std::fs::create_dir_all(home.join(".codex"))
        .map_err(|e| Failure::internal(format!("creating the agent's home: {e}")))?;
    // The real key stays here, in the worker: the CLI talks to a loopback
    // proxy that adds it, and holds only a placeholder that proxy accepts.
    let upstream = adapter.upstream(settings).map_err(|why| {
        Failure::new(FailureLayer::Agent, "agent_api_unknown", format!("clanker {}: {why}", spec.clanker_name), false)
    })?;
    let proxy = crate::keyproxy::KeyProxy::start(&upstream.base_url, upstream.style, api_key, sink).await.map_err(
        |why| {
            Failure::new(
                FailureLayer::Agent,
                "agent_api_invalid",
                format!(
                    "the model API address of clanker {} cannot be used: {why}; fix agent_settings.base_url, then re-run",
                    spec.clanker_name
                ),
                false,
            )
        },
    )?;
    let proxied = viberglass_domain::AgentSettings { base_url: Some(proxy.base_url().to_owned()), ..settings.clone() };
    let invocation = adapter.invocation(&viberglass_agents::RunContext {
        prompt: &spec.prompt,
        home: home.to_owned(),
        settings: &proxied,
        api_key: proxy.placeholder(),
    });
    // Every other secret of the clanker reaches the agent as a variable (as
    // configured); the model key never does.
    let secrets: std::collections::BTreeMap<&String, &String> =
        secrets.iter().filter(|(name, _)| **name != key_name).collect();
    for (path, content) in &invocation.home_files {
        let path = home.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::internal(format!("writing the agent's settings: {e}")))?;
        }
        std::fs::write(&path, content).map_err(|e| Failure::internal(format!("writing the agent's settings: {e}")))?;
    }
    ensure_program(&invocation.program).map_err(|why| {
        Failure::new(
            FailureLayer::Agent,
            "agent_not_installed",
            format!(
                "the {agent} CLI `{}` cannot start ({why}): install it on the worker, or set agent_settings.binary",
                invocation.program
            ),
            false,
        )
    })?;
    let ooms = crate::guard::oom_kills();
    let mut child = agent_command(&invocation.program, repo, home)
        .args(&invocation.args)
        .current_dir(repo)
        // Some CLIs (OpenCode) take their project directory from PWD, not from the real cwd.
        .env("PWD", repo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(secrets)
        .envs(invocation.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // The proxy is on loopback: never through an HTTP proxy the host may configure.
        .env("NO_PROXY", no_proxy("NO_PROXY"))
        .env("no_proxy", no_proxy("no_proxy"))
        .env_remove("VIBERGLASS_JOB_TOKEN")
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Failure::new(
                FailureLayer::Agent,
                "agent_not_installed",
                format!("the {agent} CLI `{}` could not start ({e}): install it on the worker, or set agent_settings.binary", invocation.program),
                false,
            )
        })?;
    let group = child.id();
    tracing::info!(agent = %agent, program = invocation.program, "agent started");
    // The prompt goes in on standard input, written alongside the reading
    // below (a large prompt would otherwise fill the pipe and stall both sides).
    let mut stdin = child.stdin.take().expect("piped stdin");
    let prompt = invocation.stdin.clone();
    let feed = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(prompt.as_bytes()).await;
        let _ = stdin.shutdown().await;
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let err_sink = sink.clone();
    // A CLI that reports model API errors on standard error (Mistral Vibe) has a parser for it too.
    let mut err_parser = adapter.stderr_parser();
    let err = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).split(b'\n');
        let mut errors = Vec::new();
        while let Ok(Some(bytes)) = lines.next_segment().await {
            let line = text_of(&bytes);
            err_sink.log(LogLevel::Warn, &line);
            for event in err_parser.as_mut().map(|p| p.line(&line)).unwrap_or_default() {
                if let AgentEvent::Error { .. } = event {
                    err_sink.agent(&event);
                    errors.push(event);
                }
            }
        }
        errors
    });
    let mut parser = adapter.parser();
    let mut kept = Vec::new();
    // Bytes, decoded leniently: an agent printing invalid UTF-8 must not stop the reading (and stall the pipe).
    let mut lines = BufReader::new(stdout).split(b'\n');
    let silence = std::time::Duration::from_secs(spec.agent_silence_secs.max(1));
    let mut silent = false;
    let read = async {
        loop {
            // An agent that prints nothing for this long is stuck (typically on a
            // model API that stalled mid-stream): stop it rather than wait for
            // the CLI's own, much longer, timeout.
            let line = match tokio::time::timeout(silence, lines.next_segment()).await {
                Ok(Ok(Some(bytes))) => text_of(&bytes),
                Ok(_) => break,
                Err(_) => {
                    silent = true;
                    let _ = child.start_kill();
                    break;
                }
            };
            for event in parser.line(&line) {
                match &event {
                    AgentEvent::Raw { line } => sink.log(LogLevel::Debug, line),
                    other => sink.agent(other),
                }
                if matches!(
                    event,
                    AgentEvent::Error { .. } | AgentEvent::ToolFinished { .. } | AgentEvent::Usage { .. }
                ) {
                    kept.push(event);
                }
            }
        }
        child.wait().await
    };
    let status = tokio::select! {
        status = read => status,
        () = cancel.cancelled() => {
            stop_group(group);
            let _ = stop_leftovers(sink, group).await;
            return Ok(AgentEnd::Cancelled);
        }
    };
    stop_group(group);
    stop_leftovers(sink, None).await?;
    feed.abort();
    kept.extend(err.await.unwrap_or_default());
    let status = status.map_err(|e| Failure::internal(format!("waiting for the agent: {e}")))?;
    if silent {
        let api = &upstream.base_url;
        return Err(Failure::new(
            FailureLayer::AgentTimeout,
            "agent_silent",
            format!(
                "the {agent} agent printed nothing for {} s and was stopped: its model API at {api} probably stalled \
                 mid-answer. Check that the provider answers (status page, gateway logs), then re-run; raise \
                 VIBERGLASS_AGENT_SILENCE_SECS if the model legitimately thinks that long",
                silence.as_secs()
            ),
            true,
        ));
    }
    if !status.success()
        && let Some(failure) = out_of_memory(ooms)
    {
        return Err(failure);
    }
    // A CLI that keeps its token usage in files (not its stream) has left them in its home by now. The home
    // is the agent's to write: a few files, 10 MiB in all, summed into one event.
    if let Some((dir, name)) = adapter.usage_files() {
        let mut budget: u64 = 10 * 1024 * 1024;
        let mut total: Option<AgentEvent> = None;
        for path in files_named(&home.join(dir), name, 4).into_iter().take(16) {
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if !meta.is_file() || meta.len() > budget || std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
                continue;
            }
            budget -= meta.len();
            let Ok(content) = std::fs::read_to_string(&path) else { continue };
            for event in adapter.usage_from(&content) {
                total = Some(match (total, event) {
                    (
                        Some(AgentEvent::Usage { input_tokens: a, output_tokens: b, cost_usd: c }),
                        AgentEvent::Usage { input_tokens, output_tokens, cost_usd },
                    ) => AgentEvent::Usage {
                        input_tokens: a.saturating_add(input_tokens),
                        output_tokens: b.saturating_add(output_tokens),
                        cost_usd: match (c, cost_usd) {
                            (Some(x), Some(y)) => Some(x + y),
                            (x, y) => x.or(y),
                        },
                    },
                    (_, event) => event,
                });
            }
        }
        if let Some(event) = total {
            sink.agent(&event);
            kept.push(event);
        }
    }
    if let Some(failure) = viberglass_agents::classify(agent, status.code(), &kept) {
        // The proxy saw the provider itself fail to answer: that is the cause, whatever the CLI made of it.
        if let Some(why) = proxy.unreachable() {
            return Err(Failure::new(
                FailureLayer::Agent,
                "provider_unreachable",
                format!(
                    "the agent could not reach the model API ({why}): check the network and `agent_settings.base_url`, then re-run"
                ),
                true,
            )
            .with_detail(failure.message));
        }
        return Err(failure);
    }
    let usage = kept.iter().fold(None, |total: Option<Usage>, e| match e {
        AgentEvent::Usage { input_tokens, output_tokens, cost_usd } => {
            let mut t = total.unwrap_or_default();
            t.input_tokens = t.input_tokens.saturating_add(*input_tokens);
            t.output_tokens = t.output_tokens.saturating_add(*output_tokens);
            t.cost_usd = match (t.cost_usd, cost_usd) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(*b),
            };
            Some(t)
        }
        _ => total,
    });
    Ok(AgentEnd::Finished(usage))
}

/// The agent's failure, when the kernel killed a process of the worker's
/// memory cgroup during its run (`before` is the count when it started).
fn out_of_memory(before: Option<u64>) -> Option<Failure> {
    let after = crate::guard::oom_kills()?;
    (after > before?).then(|| {
        Failure::new(
            FailureLayer::Agent,
            "agent_out_of_memory",
            "the agent was killed: out of memory (the worker's memory limit was reached): raise the clanker's memory \
             limit (compute_config.memory_mb), or have the agent work in smaller steps, then re-run",
            false,
        )
    })
}

/// Stops what the agent left running outside its process group (see
/// [`crate::guard`]). Fails closed: git must never run (with the
/// credential) next to something the agent left that would not stop.
async fn stop_leftovers(sink: &EventSink, leader: Option<u32>) -> Result<(), Failure> {
    match crate::guard::stop_leftovers(leader).await {
        Ok(0) => Ok(()),
        Ok(stopped) => {
            sink.log(LogLevel::Warn, &format!("stopped {stopped} process(es) the agent left running after it exited"));
            Ok(())
        }
        Err(left) => Err(Failure::new(
            FailureLayer::Agent,
            "agent_processes_left",
            format!(
                "{left} process(es) the agent started kept running (forking faster than they could be stopped); the \
                 job stops here, before anything is pushed: read the agent's log, then re-run"
            ),
            false,
        )),
    }
}

/// One line of an agent's output as text (invalid UTF-8 replaced, a trailing CR dropped).
fn text_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.strip_suffix('\r').unwrap_or(&text).to_owned()
}

/// The host's `NO_PROXY` list with loopback added.
fn no_proxy(name: &str) -> String {
    match std::env::var(name) {
        Ok(list) if !list.trim().is_empty() => format!("{list},127.0.0.1,localhost"),
        _ => "127.0.0.1,localhost".to_owned(),
    }
}

/// Kills the agent's process group (it leads one of its own), so nothing it
/// started in the background survives it.
fn stop_group(leader: Option<u32>) {
    if let Some(pid) = leader {
        let _ =
            std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
    }
}

/// The command that runs an agent program: inside a sandbox of its own (its
/// own PID namespace, a new session, dying with the worker) when the worker
/// was given bubblewrap (`VIBERGLASS_AGENT_BWRAP`), so the agent cannot see
/// the worker's process, memory or environment, and may write only its
/// checkout and its home (not the workspace around them, where the worker
/// keeps its git helpers and log); else the program itself.
fn agent_command(program: &str, repo: &Path, home: &Path) -> tokio::process::Command {
    let mut command = match std::env::var_os("VIBERGLASS_AGENT_BWRAP") {
        Some(bwrap) if !bwrap.is_empty() => {
            let mut command = tokio::process::Command::new(bwrap);
            command.args(["--dev-bind", "/", "/"]);
            if let Some(workspace) = repo.parent() {
                command.arg("--ro-bind").arg(workspace).arg(workspace);
            }
            command.arg("--bind").arg(repo).arg(repo).arg("--bind").arg(home).arg(home);
            command
                .args(["--unshare-pid", "--proc", "/proc", "--die-with-parent", "--new-session"])
                .arg("--chdir")
                .arg(repo)
                .arg("--")
                .arg(program);
            command
        }
        _ => tokio::process::Command::new(program),
    };
    // The worker's own variables: the agent never gets them.
    for name in WORKER_ONLY {
        command.env_remove(name);
    }
    // The trace exporter's settings (OTEL_EXPORTER_OTLP_HEADERS can hold a collector's key).
    for (name, _) in std::env::vars_os().filter(|(name, _)| name.to_str().is_some_and(|n| n.starts_with("OTEL_"))) {
        command.env_remove(name);
    }
    command
}

/// The worker's own variables, which its agent never gets: its job's, and
/// those through which the compute platform hands the worker its cloud
/// identity (a Lambda function's role credentials, an ECS task role's
/// credential endpoint, EKS's web identity token) or its control interface
/// (the Lambda Runtime API, the ECS task metadata endpoint). A clanker secret
/// of the same name is still given to the agent: that one was chosen.
const WORKER_ONLY: &[&str] = &[
    "VIBERGLASS_SERVER_URL",
    "VIBERGLASS_JOB_TOKEN",
    "VIBERGLASS_JOB_TOKEN_FILE",
    "VIBERGLASS_WORKSPACE",
    "VIBERGLASS_AGENT_BWRAP",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "ECS_CONTAINER_METADATA_URI",
    "ECS_CONTAINER_METADATA_URI_V4",
    "AWS_LAMBDA_RUNTIME_API",
];

/// Whether `program` can be started: an executable file at that path, or on the PATH.
pub fn ensure_program(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |path: &Path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return if executable(Path::new(program)) {
            Ok(())
        } else {
            Err(format!("{program} is not an executable file"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
        Ok(())
    } else {
        Err(format!("`{program}` is not on the PATH"))
    }
}

/// Files named `name` under `dir`, at most `depth` levels down and 10 MiB each (an agent's own records).
fn files_named(dir: &std::path::Path, name: &str, depth: usize) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        let path = entry.path();
        if kind.is_dir() && depth > 0 {
            found.extend(files_named(&path, name, depth - 1));
        } else if kind.is_file()
            && entry.file_name() == name
            && entry.metadata().is_ok_and(|m| m.len() <= 10 * 1024 * 1024)
        {
            found.push(path);
        }
    }
    found
}
