//! The job engine inside `serve`: the dispatcher, which starts workers for
//! queued jobs, and the reaper, which fails jobs whose worker went silent or
//! ran past the project's time limit, and stops their compute.
//!
//! Both are loops over the database, safe to run in several servers at
//! once: claims and transitions are guarded updates, so each job is
//! dispatched once and failed once.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use viberglass_compute::{ComputeTarget, LaunchRequest, WorkerState};
use viberglass_domain::{ComputeKind, EventKind, Failure, Job, JobStatus, LogLevel};
use viberglass_store::{Outcome, Store, StoreError};

use crate::error::error_chain;

/// How many times a transient dispatch failure is retried before the job fails.
const MAX_DISPATCH_ATTEMPTS: u32 = 5;

/// What the engine needs: the store, the compute targets and timing.
#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    pub local: Arc<dyn ComputeTarget>,
    /// The URL workers call back to.
    pub server_url: Arc<str>,
    pub wake: Arc<tokio::sync::Notify>,
    pub dispatch_interval: Duration,
    pub reaper_interval: Duration,
    pub heartbeat_interval: Duration,
}

/// How long to wait before dispatching again after `attempts` transient
/// failures: 2 s, 4 s, 8 s, ... up to a minute.
pub fn dispatch_backoff(attempts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempts.clamp(1, 6)).min(60))
}

/// A new worker token and the hash the database keeps.
pub fn mint_token() -> (String, String) {
    let token = hex::encode(rand::random::<[u8; 32]>());
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Engine {
    fn target(&self, kind: ComputeKind) -> Option<&Arc<dyn ComputeTarget>> {
        (kind == ComputeKind::Local).then_some(&self.local)
    }

    /// Runs the dispatcher and the reaper until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) {
        let dispatcher = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { dispatcher.dispatch_loop(stop).await });
        tokio::spawn(async move { self.reap_loop(shutdown).await });
    }

    async fn dispatch_loop(&self, shutdown: CancellationToken) {
        loop {
            loop {
                match self.dispatch_one().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(err) => {
                        tracing::error!(error = %error_chain(&err), "dispatcher: store error");
                        break;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.dispatch_interval) => {}
            }
        }
    }

    /// Fails a job (unless it has already ended) and brings its ticket's
    /// lifecycle status in step, as a worker's own report would.
    async fn fail(&self, job: &Job, failure: Failure) -> Result<bool, StoreError> {
        let ended_now = self.store.finish_job(job.id, Outcome::Failed(failure)).await?;
        if ended_now && let Some(ticket) = job.ticket_id {
            crate::api::workflow::refresh_ticket_status(&self.store, ticket).await;
        }
        Ok(ended_now)
    }

    /// Claims and starts one job. `Ok(false)` when nothing was dispatchable.
    pub async fn dispatch_one(&self) -> Result<bool, StoreError> {
        let (token, hash) = mint_token();
        let Some(job) = self.store.claim_next_job(&hash).await? else { return Ok(false) };
        let span = tracing::info_span!("job", job_id = %job.id, attempt = job.attempt);
        let _guard = span.enter();
        let clanker = match job.clanker_id {
            Some(id) => match self.store.get_clanker(id).await {
                Ok(c) => Some(c),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let Some(clanker) = clanker else {
            let failure =
                Failure::dispatch("(none)", "the job's clanker no longer exists; re-run with another clanker", false);
            self.fail(&job, failure).await?;
            return Ok(true);
        };
        let Some(target) = self.target(clanker.compute) else {
            let failure = Failure::dispatch(
                clanker.compute.as_str(),
                "this compute target is not available in this server",
                false,
            );
            self.fail(&job, failure).await?;
            return Ok(true);
        };
        let request = LaunchRequest { job_id: job.id, server_url: self.server_url.to_string(), token };
        match target.launch(request).await {
            Ok(compute_ref) => {
                tracing::info!(compute_ref, clanker = clanker.slug.as_str(), "worker started");
                if self.store.set_job_compute_ref(job.id, &compute_ref).await? {
                    self.store
                        .append_event(
                            job.id,
                            EventKind::Status,
                            LogLevel::Info,
                            &format!("worker started ({compute_ref})"),
                            None,
                        )
                        .await?;
                } else {
                    // Cancelled while we were starting it.
                    let _ = target.stop(&compute_ref).await;
                }
            }
            Err(err) => {
                let attempts = job.dispatch_attempts;
                tracing::warn!(error = %err, attempts, "the compute target could not start the worker");
                if err.is_transient() && attempts < MAX_DISPATCH_ATTEMPTS {
                    let reason = format!("the {} target could not start the worker: {err}", clanker.compute);
                    self.store.requeue_job(job.id, &reason, dispatch_backoff(attempts)).await?;
                } else {
                    let failure = Failure::dispatch(clanker.compute.as_str(), &err.to_string(), err.is_transient());
                    self.fail(&job, failure).await?;
                }
            }
        }
        Ok(true)
    }

    async fn reap_loop(&self, shutdown: CancellationToken) {
        self.adopt_or_fail_orphans().await;
        loop {
            if let Err(err) = self.reap_once().await {
                tracing::error!(error = %error_chain(&err), "reaper: store error");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.reaper_interval) => {}
            }
        }
    }

    /// Fails silent and overlong jobs and stops their compute.
    pub async fn reap_once(&self) -> Result<(), StoreError> {
        let now = viberglass_store::now();
        for job in self.store.live_jobs(1000).await? {
            let Some(spec) = &job.spec else { continue };
            let last_sign = job.last_heartbeat_at.or(job.dispatched_at).unwrap_or(job.queued_at);
            let silent = (now - last_sign).whole_seconds();
            let running = job.started_at.map(|s| (now - s).whole_seconds()).unwrap_or(0);
            // A worker that never reported and whose process is gone will not
            // report: say so now, with its log, instead of after the grace.
            let never_reported = job.status == JobStatus::Dispatching && job.last_heartbeat_at.is_none();
            let gone = match (&job.compute_ref, never_reported && silent >= 2) {
                (Some(compute_ref), true) => self.local.inspect(job.id, compute_ref).await == WorkerState::Gone,
                _ => false,
            };
            let failure = if gone {
                Failure::worker_exited_at_start(self.local.log_tail(job.id).await)
            } else if silent > spec.heartbeat_grace_secs as i64 {
                Failure::heartbeat_lost(spec.heartbeat_grace_secs)
            } else if job.status == JobStatus::Active && running > spec.max_execution_secs as i64 {
                Failure::time_limit(spec.max_execution_secs)
            } else {
                continue;
            };
            if self.fail(&job, failure.clone()).await? {
                tracing::warn!(job_id = %job.id, layer = failure.layer.as_str(), "reaper failed the job");
                self.stop_compute(&job).await;
            }
        }
        Ok(())
    }

    /// Stops a job's worker, if it has one.
    pub async fn stop_compute(&self, job: &Job) {
        let Some(compute_ref) = &job.compute_ref else { return };
        // Every target we can launch on today is local.
        if let Err(err) = self.local.stop(compute_ref).await {
            tracing::warn!(job_id = %job.id, error = %err, "could not stop the worker");
        } else {
            let _ = self
                .store
                .append_event(
                    job.id,
                    EventKind::Status,
                    LogLevel::Info,
                    &format!("worker stopped ({compute_ref})"),
                    None,
                )
                .await;
        }
    }

    /// At boot: jobs a dead server left dispatching or active are adopted
    /// when their worker still runs, and failed when it is gone and silent.
    async fn adopt_or_fail_orphans(&self) {
        let jobs = match self.store.live_jobs(1000).await {
            Ok(jobs) => jobs,
            Err(err) => return tracing::error!(error = %error_chain(&err), "boot check: store error"),
        };
        let now = viberglass_store::now();
        let quiet_for = (self.heartbeat_interval * 3).as_secs() as i64;
        for job in jobs {
            let state = match &job.compute_ref {
                Some(r) => self.local.inspect(job.id, r).await,
                None => WorkerState::Gone,
            };
            let last_sign = job.last_heartbeat_at.or(job.dispatched_at).unwrap_or(job.queued_at);
            match state {
                WorkerState::Running => tracing::info!(job_id = %job.id, "adopted a running worker"),
                WorkerState::Gone if (now - last_sign).whole_seconds() > quiet_for => {
                    if let Ok(true) = self.fail(&job, Failure::orphaned()).await {
                        tracing::warn!(job_id = %job.id, "failed a job whose worker did not survive the restart");
                    }
                }
                WorkerState::Gone => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_retries_back_off_up_to_a_minute() {
        let delays: Vec<u64> = (1..=7).map(|a| dispatch_backoff(a).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, hash_a) = mint_token();
        let (b, _) = mint_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_token(&a), hash_a);
        assert_ne!(hash_a, a);
    }
}
