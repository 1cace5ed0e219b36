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
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(repo)
        // Some CLIs (OpenCode) take their project directory from PWD, not from the real cwd.
        .env("PWD", repo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("HOME", home)
        .env("VIBERGLASS_PHASE", spec.phase.as_str())
        .env("VIBERGLASS_PROMPT", &spec.prompt)
        .env("VIBERGLASS_TICKET_TITLE", &spec.ticket_title)
        .envs(secrets)
        .env_remove("VIBERGLASS_JOB_TOKEN")
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
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let out_sink = sink.clone();
    let out = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            out_sink.log(LogLevel::Info, &line);
        }
    });
    let err_sink = sink.clone();
    let err = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            err_sink.log(LogLevel::Warn, &line);
        }
    });
    let status = tokio::select! {
        status = child.wait() => status,
        () = cancel.cancelled() => {
            let _ = child.kill().await;
            return Ok(AgentEnd::Cancelled);
        }
    };
    let _ = tokio::join!(out, err);
    let status = status.map_err(|e| Failure::internal(format!("waiting for the agent: {e}")))?;
    if status.success() {
        Ok(AgentEnd::Finished(None))
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
    let invocation = adapter.invocation(&viberglass_agents::RunContext {
        prompt: &spec.prompt,
        home: home.to_owned(),
        settings,
        api_key,
    });
    for (path, content) in &invocation.home_files {
        let path = home.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::internal(format!("writing the agent's settings: {e}")))?;
        }
        std::fs::write(&path, content).map_err(|e| Failure::internal(format!("writing the agent's settings: {e}")))?;
    }
    let mut child = tokio::process::Command::new(&invocation.program)

        .args(&invocation.args)
        .current_dir(repo)
        // Some CLIs (OpenCode) take their project directory from PWD, not from the real cwd.
        .env("PWD", repo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(secrets)
        .envs(invocation.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("VIBERGLASS_JOB_TOKEN")
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
    tracing::info!(agent = %agent, program = invocation.program, "agent started");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let err_sink = sink.clone();
    let err = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            err_sink.log(LogLevel::Warn, &line);
        }
    });
    let mut parser = adapter.parser();
    let mut kept = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    let silence = std::time::Duration::from_secs(spec.agent_silence_secs.max(1));
    let mut silent = false;
    let read = async {
        loop {
            // An agent that prints nothing for this long is stuck (typically on a
            // model API that stalled mid-stream): stop it rather than wait for
            // the CLI's own, much longer, timeout.
            let line = match tokio::time::timeout(silence, lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
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
        () = cancel.cancelled() => return Ok(AgentEnd::Cancelled),
    };
    let _ = err.await;
    let status = status.map_err(|e| Failure::internal(format!("waiting for the agent: {e}")))?;
    if silent {
        let api = settings.base_url.clone().unwrap_or_else(|| adapter.default_base_url().to_owned());
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
    if let Some(failure) = viberglass_agents::classify(agent, status.code(), &kept) {
        return Err(failure);
    }
    let usage = kept.iter().fold(None, |total: Option<Usage>, e| match e {
        AgentEvent::Usage { input_tokens, output_tokens, cost_usd } => {
            let mut t = total.unwrap_or_default();
            t.input_tokens += input_tokens;
            t.output_tokens += output_tokens;
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
