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
    Finished,
    Cancelled,
}

/// Runs the agent described by `spec.harness` in `repo`, streaming its output as log lines.
pub async fn run_agent(
    spec: &JobSpec,
    secrets: &std::collections::BTreeMap<String, String>,
    repo: &Path,
    home: &Path,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<AgentEnd, Failure> {
    let HarnessSpec::Command { command } = &spec.harness;
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
        Ok(AgentEnd::Finished)
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
