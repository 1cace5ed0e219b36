//! The viberator: `viberglass worker` runs exactly one job and exits.
//!
//! It starts knowing only its job id, the server's URL and the job's token;
//! everything else comes from the bootstrap call. While it works it
//! heartbeats; the answer can order it to stop. Every report is retried
//! with backoff, so a server restart does not lose the run.
#![forbid(unsafe_code)]

pub mod client;
pub mod events;
pub mod git;
pub mod guard;
pub mod harness;
pub mod keyproxy;
pub mod lambda;
pub mod pipeline;
pub mod trace;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use viberglass_domain::JobId;
use viberglass_domain::protocol::WorkerResult;

use crate::client::Client;
use crate::events::EventSink;

/// What the worker is started with.
pub struct WorkerConfig {
    pub job_id: JobId,
    pub server_url: String,
    pub token: String,
    pub workspace: PathBuf,
}

/// Runs the job. Returns the process exit code: 0 when the outcome was
/// reported (even a failure of the job itself), 1 when it could not be.
pub async fn run(config: WorkerConfig) -> u8 {
    guard::harden();
    let span = tracing::info_span!("job", job_id = %config.job_id);
    // Instrumented, not entered: a guard held across `.await` would leak the span into other tasks.
    run_job(config).instrument(span).await
}

async fn run_job(config: WorkerConfig) -> u8 {
    let client = Client::new(&config.server_url, config.job_id, config.token.clone());

    let boot = match client.bootstrap().await {
        Ok(boot) => boot,
        Err(err) => {
            tracing::error!(error = %err, "bootstrap failed; the server's reaper will fail the job");
            return 1;
        }
    };
    tracing::info!(phase = %boot.spec.phase, "bootstrapped");
    // The rest is one span, in the trace of the request that queued the job (when the server traces).
    let span = tracing::info_span!(
        parent: None,
        "worker",
        job_id = %config.job_id,
        otel.name = "worker",
        job.id = %config.job_id,
        job.phase = boot.spec.phase.as_str(),
        clanker.name = %boot.spec.clanker_name,
    );
    if let Some(parent) = &boot.spec.traceparent {
        trace::continue_trace(&span, parent);
    }
    run_booted(config, client, boot).instrument(span).await
}

async fn run_booted(config: WorkerConfig, client: Client, boot: viberglass_domain::protocol::Bootstrap) -> u8 {
    let mut secret_values: Vec<String> = boot.secrets.values().cloned().collect();
    secret_values.extend(boot.git_credential.as_ref().map(|c| c.password.clone()));
    secret_values.push(config.token.clone());
    let sink = EventSink::start(client.clone(), secret_values);
    let cancel = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        Duration::from_secs(boot.spec.heartbeat_interval_secs.max(1)),
        cancel.clone(),
    ));

    let end = pipeline::run(pipeline::Context {
        boot: &boot,
        workspace: &config.workspace,
        sink: &sink,
        client: &client,
        cancel: &cancel,
    })
    .await;
    sink.close().await;
    let job_failed = matches!(&end, pipeline::End::Report(result) if matches!(**result, WorkerResult::Failed { .. }));
    let code = match end {
        pipeline::End::Cancelled => {
            tracing::info!("stopped: the job was cancelled");
            0
        }
        pipeline::End::Report(result) => {
            report(&client, &result)
                .instrument(tracing::info_span!("step", otel.name = "report", step.name = "report"))
                .await
        }
    };
    heartbeat.abort();
    cleanup(&config.workspace, (job_failed || code != 0) && boot.spec.keep_workspace_on_failure);
    code
}

async fn report(client: &Client, result: &WorkerResult) -> u8 {
    match client.result(result).await {
        Ok(reply) => {
            tracing::info!(status = %reply.status, "reported the result");
            0
        }
        Err(err) if err.job_ended() => {
            tracing::info!("the job had already ended on the server");
            0
        }
        Err(err) => {
            tracing::error!(error = %err, "could not report the result");
            1
        }
    }
}

async fn heartbeat_loop(client: Client, every: Duration, cancel: CancellationToken) {
    loop {
        match client.heartbeat().await {
            Ok(reply) if reply.cancel => {
                tracing::info!(status = %reply.status, "the server ordered a stop");
                cancel.cancel();
                return;
            }
            Ok(_) => {}
            Err(err) if err.job_ended() => {
                cancel.cancel();
                return;
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Removes the checkout; keeps it when asked to after a failure.
fn cleanup(workspace: &std::path::Path, keep: bool) {
    if keep {
        tracing::info!(workspace = %workspace.display(), "keeping the workspace of the failed run");
        return;
    }
    let _ = std::fs::remove_dir_all(workspace.join("repo"));
    let _ = std::fs::remove_dir_all(workspace.join("home"));
}
