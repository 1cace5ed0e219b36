//! The job engine inside `serve`: the dispatcher, which starts workers for
//! queued jobs on their clanker's compute target; the reaper, which fails
//! jobs whose worker exited, went silent or ran past the project's time
//! limit, and stops their compute; and the outbox delivery loop (see
//! [`crate::outbox`]). Each loop is supervised: a panic is logged and the
//! loop restarted; shutdown waits for all of them.
//!
//! Every loop is safe to run in several servers at once: claims and
//! transitions are guarded updates, so each job is dispatched once and
//! failed once, and a server only inspects or stops the workers it owns.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use viberglass_compute::{ComputeConfig, ComputeRegistry, ComputeTarget, LaunchRequest, WorkerState};
use viberglass_domain::{EventKind, Failure, Job, JobStatus, LogLevel};
use viberglass_store::{Outcome, Store, StoreError};

use crate::error::error_chain;
use crate::identity::mint_token;
use crate::service::jobs::end_job;

/// How many times a transient dispatch failure is retried before the job fails.
const MAX_DISPATCH_ATTEMPTS: u32 = 5;

/// What the engine needs: the store, the compute targets and timing.
#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    pub compute: ComputeRegistry,
    /// The URL workers call back to.
    pub server_url: Arc<str>,
    pub wake: Arc<tokio::sync::Notify>,
    pub dispatch_interval: Duration,
    pub reaper_interval: Duration,
    pub heartbeat_interval: Duration,
    /// Whether [`Engine::spawn`] runs the dispatcher (always, except in
    /// tests that claim jobs by hand).
    pub dispatcher: bool,
    /// Where launches and job ends are counted (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The longest the dispatcher and the reaper sleep on a quiet server whose
/// store hears every job change (a change wakes them at once).
const IDLE_WAIT: Duration = Duration::from_secs(30);

/// The reaper sweeps ended workers' leftovers every this many rounds.
const SWEEP_EVERY: u64 = 10;

/// How long to wait before dispatching again after `attempts` transient
/// failures: 2 s, 4 s, 8 s, ... up to a minute.
pub fn dispatch_backoff(attempts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempts.clamp(1, 6)).min(60))
}

/// Runs `make()` until `shutdown`, restarting it (after a pause) when it
/// panics, so one bad iteration never silently stops a loop for good.
pub fn supervise<F, Fut>(name: &'static str, shutdown: CancellationToken, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let run = std::panic::AssertUnwindSafe(make()).catch_unwind();
            match run.await {
                Ok(()) => return,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(task = name, panic = what, "a background loop panicked; restarting it");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

impl Engine {
    fn target(&self, job: &Job) -> Option<&Arc<dyn ComputeTarget>> {
        self.compute.get(job.compute_kind?)
    }

    /// Runs the dispatcher and the reaper until `shutdown`; the handles end with them.
    pub fn spawn(self, shutdown: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut loops = Vec::new();
        if self.dispatcher {
            let dispatcher = self.clone();
            let stop = shutdown.clone();
            loops.push(supervise("dispatcher", shutdown.clone(), move || {
                let engine = dispatcher.clone();
                let stop = stop.clone();
                async move { engine.dispatch_loop(stop).await }
            }));
        }
        let reaper = self.clone();
        let stop = shutdown.clone();
        let reap = supervise("reaper", shutdown, move || {
            let engine = reaper.clone();
            let stop = stop.clone();
            async move { engine.reap_loop(stop).await }
        });
        loops.push(reap);
        loops
    }

    async fn dispatch_loop(&self, shutdown: CancellationToken) {
        let store_wake = self.store.dispatcher_wake();
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
            let wait = self.dispatch_wait().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = store_wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long the dispatcher may sleep when nothing is dispatchable: until
    /// a job change wakes it (or the earliest retry delay ends) while the
    /// store hears every server's job changes; its interval otherwise.
    async fn dispatch_wait(&self) -> Duration {
        if !self.store.hears_job_changes() {
            return self.dispatch_interval;
        }
        match self.store.next_dispatch_after().await {
            Ok(Some(at)) => {
                let until = (at - viberglass_store::now()).try_into().unwrap_or(Duration::ZERO);
                until.clamp(self.dispatch_interval.min(Duration::from_millis(10)), IDLE_WAIT)
            }
            Ok(None) => IDLE_WAIT,
            Err(_) => self.dispatch_interval,
        }
    }

    /// Claims and starts one job. `Ok(false)` when nothing was dispatchable.
    pub async fn dispatch_one(&self) -> Result<bool, StoreError> {
        let (token, hash) = mint_token();
        let Some(job) = self.store.claim_next_job(&hash).await? else { return Ok(false) };
        let span = tracing::info_span!(
            "job",
            job_id = %job.id,
            attempt = job.attempt,
            otel.name = "dispatch",
            job.id = %job.id,
            job.phase = job.phase.as_str(),
            ticket.id = job.ticket_id.map(|t| t.to_string()),
            project.id = %job.project_id,
            clanker.id = job.clanker_id.map(|c| c.to_string()),
        );
        // The trace of the request that queued it (a re-run starts its own). The claim leaves the spec out.
        if crate::telemetry::enabled() {
            let spec = match &job.spec {
                Some(spec) => Some(spec.clone()),
                None => self.store.job_spec(job.id).await.ok(),
            };
            if let Some(parent) = spec.as_ref().and_then(|s| s.traceparent.as_deref()) {
                crate::telemetry::continue_trace(&span, parent);
            }
        }
        self.start_worker(job, token).instrument(span).await?;
        Ok(true)
    }

    async fn start_worker(&self, job: Job, token: String) -> Result<(), StoreError> {
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
            end_job(self, &job, Outcome::failed(failure)).await?;
            return Ok(());
        };
        let config = match ComputeConfig::parse(clanker.compute, &clanker.compute_config) {
            Ok(config) => config,
            Err(message) => {
                end_job(self, &job, Outcome::failed(Failure::dispatch(clanker.compute.as_str(), &message, false)))
                    .await?;
                return Ok(());
            }
        };
        let Some(target) = self.compute.get(clanker.compute) else {
            let failure = Failure::dispatch(
                clanker.compute.as_str(),
                "this compute target is not available in this server",
                false,
            );
            end_job(self, &job, Outcome::failed(failure)).await?;
            return Ok(());
        };
        let request = LaunchRequest {
            job_id: job.id,
            server_url: self.server_url.to_string(),
            token,
            config,
            programs: crate::service::clankers::programs_of(&clanker),
            time_limit_secs: job.spec.as_ref().map(|s| s.max_execution_secs),
        };
        let config = request.config.clone();
        match target.launch(request).await {
            Ok(compute_ref) => {
                tracing::info!(compute_ref, clanker = clanker.slug.as_str(), "worker started");
                self.metrics.job_dispatched(&job, clanker.compute);
                if self.store.set_job_compute_ref(job.id, clanker.compute, &compute_ref).await? {
                    let logs = target
                        .log_location(&config, &compute_ref)
                        .map(|at| format!("; its own log: {at}"))
                        .unwrap_or_default();
                    self.store
                        .append_event(
                            job.id,
                            EventKind::Status,
                            LogLevel::Info,
                            &format!("worker started ({compute_ref}){logs}"),
                            None,
                        )
                        .await?;
                } else {
                    // Cancelled while we were starting it.
                    if let Err(err) = target.stop(job.id, &compute_ref).await {
                        self.store
                            .append_event(
                                job.id,
                                EventKind::Status,
                                LogLevel::Warn,
                                &format!("could not stop the worker ({compute_ref}): {err}"),
                                None,
                            )
                            .await?;
                    }
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
                    end_job(self, &job, Outcome::failed(failure)).await?;
                }
            }
        }
        Ok(())
    }

    async fn reap_loop(&self, shutdown: CancellationToken) {
        self.adopt_or_fail_orphans().await;
        let store_wake = self.store.reaper_wake();
        let mut rounds: u64 = 0;
        loop {
            let live = match self.reap_once().await {
                Ok(live) => live,
                Err(err) => {
                    tracing::error!(error = %error_chain(&err), "reaper: store error");
                    1
                }
            };
            // Now and then: what ended workers left on their targets (exited containers).
            if rounds.is_multiple_of(SWEEP_EVERY)
                && let Err(err) = self.sweep_once().await
            {
                tracing::error!(error = %error_chain(&err), "sweeper: store error");
            }
            rounds += 1;
            // Live jobs are watched every interval (silence, time limits,
            // workers gone); with none, nothing can go wrong until a job
            // changes, which wakes this loop when the store hears every server.
            let wait = if live == 0 && self.store.hears_job_changes() { IDLE_WAIT } else { self.reaper_interval };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = store_wake.notified(), if live == 0 => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// What the job's compute target says of its worker (`Foreign` when
    /// another host owns it, or no target here can tell).
    async fn worker_state(&self, job: &Job) -> WorkerState {
        match (self.target(job), &job.compute_ref) {
            (Some(target), Some(compute_ref)) => target.inspect(job.id, compute_ref).await,
            _ => WorkerState::Foreign,
        }
    }

    /// Removes what this host's ended workers left on their compute targets
    /// (a container is kept after its worker exits, for its exit reason,
    /// until its job has ended). Jobs this database does not know belong to
    /// another installation sharing the engine: left alone.
    pub async fn sweep_once(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kind in self.compute.kinds() {
            let Some(target) = self.compute.get(kind) else { continue };
            for (job_id, compute_ref) in target.leftovers().await {
                let job = match self.store.get_job(job_id).await {
                    Ok(job) => job,
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if job.status.is_terminal() && target.stop(job_id, &compute_ref).await.is_ok() {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed the leftovers of ended workers");
        }
        Ok(removed)
    }

    /// Fails jobs whose worker exited, went silent or overran, and stops their compute.
    /// One reaper round; returns how many live jobs it looked at.
    pub async fn reap_once(&self) -> Result<usize, StoreError> {
        let now = viberglass_store::now();
        let live = self.store.live_jobs(1000).await?;
        let count = live.len();
        for job in live {
            let Some(limits) = self.store.job_limits(job.id).await? else { continue };
            let last_sign = job.last_heartbeat_at.or(job.dispatched_at).unwrap_or(job.queued_at);
            let silent = (now - last_sign).whole_seconds();
            let running = job.started_at.map(|s| (now - s).whole_seconds()).unwrap_or(0);
            // The compute target sees a worker's exit at once: a worker that
            // is gone will not report, so say so now, with its log, instead
            // of after the heartbeat grace (a just-launched one gets 2 s to exec).
            let gone = job.compute_ref.is_some()
                && (job.status == JobStatus::Active || silent >= 2)
                && self.worker_state(&job).await == WorkerState::Gone;
            let failure = if gone {
                let compute_ref = job.compute_ref.as_deref().unwrap_or_default();
                let (tail, reason) = match self.target(&job) {
                    Some(target) => {
                        (target.log_tail(job.id, compute_ref).await, target.exit_reason(job.id, compute_ref).await)
                    }
                    None => (None, None),
                };
                match reason {
                    // It never ran (its image could not be pulled, no node had room): that is the message.
                    Some(reason) if !reason.started => {
                        Failure::worker_never_started(reason.code, &reason.message, tail)
                    }
                    // The target knows why (out of memory, killed): that is the message.
                    Some(reason) if reason.code != "worker_exited" || job.last_heartbeat_at.is_some() => {
                        Failure::worker_ended(reason.code, &reason.message, tail)
                    }
                    // What the target saw (an exit code, where its log is) goes with it.
                    Some(reason) if job.last_heartbeat_at.is_none() => {
                        let mut failure = Failure::worker_exited_at_start(tail);
                        failure.message = format!("{} [{}]", failure.message, reason.message);
                        failure
                    }
                    _ if job.last_heartbeat_at.is_none() => Failure::worker_exited_at_start(tail),
                    _ => Failure::worker_exited(tail),
                }
            } else if silent > limits.heartbeat_grace_secs as i64 {
                Failure::heartbeat_lost(limits.heartbeat_grace_secs)
            } else if job.status == JobStatus::Active && running > limits.max_execution_secs as i64 {
                Failure::time_limit(limits.max_execution_secs)
            } else {
                continue;
            };
            let layer = failure.layer;
            if end_job(self, &job, Outcome::failed(failure)).await? {
                tracing::warn!(job_id = %job.id, layer = layer.as_str(), "reaper failed the job");
                self.stop_compute(&job).await;
            }
        }
        Ok(count)
    }

    /// Tells the job's compute target that its worker has bootstrapped (so a
    /// token it handed over through the target can go).
    pub async fn worker_started(&self, job: &Job) {
        if let (Some(target), Some(compute_ref)) = (self.target(job), &job.compute_ref) {
            target.worker_started(job.id, compute_ref).await;
        }
    }

    /// Stops a job's worker (and its agent), if it has one and this server owns it.
    pub async fn stop_compute(&self, job: &Job) {
        let Some(compute_ref) = &job.compute_ref else { return };
        let Some(target) = self.target(job) else {
            return tracing::warn!(job_id = %job.id, compute_ref, "no compute target here can stop this worker");
        };
        if self.worker_state(job).await == WorkerState::Foreign {
            return tracing::info!(job_id = %job.id, compute_ref, "the worker belongs to another host; its server stops it");
        }
        match target.stop(job.id, compute_ref).await {
            Err(err) => {
                tracing::warn!(job_id = %job.id, error = %err, "could not stop the worker");
                let _ = self
                    .store
                    .append_event(
                        job.id,
                        EventKind::Status,
                        LogLevel::Warn,
                        &format!("could not stop the worker ({compute_ref}): {err}"),
                        None,
                    )
                    .await;
            }
            Ok(()) => {
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
    }

    /// At boot: jobs a dead server left dispatching or active are adopted
    /// when their worker still runs, and failed when it is gone and silent.
    /// Workers of other hosts are left to their own servers (and the
    /// heartbeat grace).
    async fn adopt_or_fail_orphans(&self) {
        let jobs = match self.store.live_jobs(1000).await {
            Ok(jobs) => jobs,
            Err(err) => return tracing::error!(error = %error_chain(&err), "boot check: store error"),
        };
        let now = viberglass_store::now();
        let quiet_for = (self.heartbeat_interval * 3).as_secs() as i64;
        for job in jobs {
            let state = match &job.compute_ref {
                Some(_) => self.worker_state(&job).await,
                None => WorkerState::Gone,
            };
            let last_sign = job.last_heartbeat_at.or(job.dispatched_at).unwrap_or(job.queued_at);
            match state {
                WorkerState::Running => tracing::info!(job_id = %job.id, "adopted a running worker"),
                WorkerState::Gone if (now - last_sign).whole_seconds() > quiet_for => {
                    if let Ok(true) = end_job(self, &job, Outcome::failed(Failure::orphaned())).await {
                        tracing::warn!(job_id = %job.id, "failed a job whose worker did not survive the restart");
                    }
                }
                WorkerState::Gone | WorkerState::Foreign | WorkerState::Unknown => {}
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
        assert_eq!(crate::identity::hash_token(&a), hash_a);
        assert_ne!(hash_a, a);
    }

    #[tokio::test]
    async fn a_panicking_loop_is_restarted() {
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let counter = runs.clone();
        let handle = supervise("test", shutdown.clone(), move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    panic!("first run fails");
                }
            }
        });
        handle.await.unwrap();
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2, "restarted once, then ended normally");
    }
}
