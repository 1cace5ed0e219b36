//! Jobs: how a run ends (the one place a job's end takes effect), what a
//! worker's report is allowed to claim, cancelling and re-running.

use viberglass_domain::protocol::{JobResult, WorkerResult};
use viberglass_domain::{Failure, FailureLayer, Job, JobId, JobSpec, Phase, ScmProvider};
use viberglass_store::{Outcome, StoreError};

use super::runs::{RunRequest, Trigger, start_run};
use super::{ServiceError, ServiceResult};
use crate::AppState;
use crate::engine::Engine;
use crate::identity::{Caller, audit};

/// Ends a job (unless it already ended) and brings its ticket's lifecycle
/// status in step. Every end goes through here: a worker's report, the
/// reaper, a cancel, a failed bootstrap. The job's row, its pull request on
/// the ticket and its outbox events commit together; the outbox's
/// ticket-status consumer repeats the status refresh, so a crash between the
/// two loses nothing. Returns whether this call ended the job; only that call counts it in the metrics.
pub async fn end_job(engine: &Engine, job: &Job, outcome: Outcome) -> Result<bool, StoreError> {
    let store = &engine.store;
    let end = crate::metrics::JobEnd::of(&outcome);
    let ended = store.finish_job(job.id, outcome).await?;
    if ended {
        engine.metrics.job_ended(job, &end);
        if let Some(ticket) = job.ticket_id {
            super::tickets::refresh_status(store, ticket).await;
        }
    }
    Ok(ended)
}

/// Takes a worker's report as outside input: a worker runs next to an
/// agent that may have been steered by the ticket's text. The server keeps
/// what it already knows (the branch comes from the spec), a pull request
/// must be on the project's forge, layers only the server decides are
/// refused, and sizes are bounded.
pub fn accept_report(spec: &JobSpec, report: WorkerResult) -> Outcome {
    match report {
        WorkerResult::Completed { result, summary } => {
            let summary: String = summary.chars().take(2000).collect();
            match checked_result(spec, result) {
                Ok(result) => Outcome::Completed { result, summary },
                Err(failure) => Outcome::failed(failure),
            }
        }
        WorkerResult::Failed { mut failure, result } => {
            // Only the server decides these layers: a worker claiming one is wrong or lying.
            if failure.layer.server_only() {
                failure.layer = FailureLayer::Internal;
            }
            failure.code = failure.code.chars().take(100).collect();
            failure.message = failure.message.chars().take(4000).collect();
            failure.detail = failure.detail.chars().take(16_000).collect();
            let result = result.and_then(|r| checked_result(spec, r).ok());
            Outcome::Failed { failure, result }
        }
    }
}

fn checked_result(spec: &JobSpec, result: JobResult) -> Result<JobResult, Failure> {
    let mut result = result.bounded();
    let publishes = spec.phase == Phase::Execution;
    if !publishes {
        // Research and planning push nothing and open nothing, whatever a worker says.
        result.pushed = false;
        result.branch = None;
        result.commit = None;
        result.pull_request = None;
        result.changed_files.clear();
    }
    if result.pushed || result.branch.is_some() {
        if result.branch.as_deref() != Some(spec.branch.as_str()) {
            return Err(Failure::new(
                FailureLayer::Internal,
                "foreign_branch",
                format!(
                    "the worker reported the branch `{}`, but this job pushes `{}`: the report was refused; \
                     re-run the job, and check the worker's log for tampering",
                    result.branch.as_deref().unwrap_or(""),
                    spec.branch
                ),
                false,
            ));
        }
        // The spec's branch, not the worker's word.
        result.branch = Some(spec.branch.clone());
    }
    if let Some(pr) = &result.pull_request
        && !is_projects_pull_request(spec, &pr.url)
    {
        return Err(Failure::new(
            FailureLayer::PullRequest,
            "foreign_pull_request",
            format!(
                "the worker reported the pull request {}, which is not a pull request of the project's repository on \
                 its forge: the link was refused; re-run the job, and check the worker's log for tampering",
                pr.url
            ),
            false,
        ));
    }
    Ok(result)
}

/// An http(s) URL as browsers read it, without userinfo.
fn strict_url(text: &str) -> Option<url::Url> {
    if text.chars().any(|c| c == '\\' || c.is_whitespace() || c.is_control()) {
        return None;
    }
    let url = url::Url::parse(text).ok()?;
    let plain = matches!(url.scheme(), "https" | "http") && url.username().is_empty() && url.password().is_none();
    (plain && url.host_str().is_some()).then_some(url)
}

/// Whether `url` is a pull (or merge) request page of the repository the
/// job opens pull requests on, on the forge it pushes to: the same scheme,
/// host and port as the clone URL (or the API's web host), and a path under
/// the pull-request repository.
fn is_projects_pull_request(spec: &JobSpec, url: &str) -> bool {
    let Some(scm) = spec.scm.as_ref().filter(|scm| scm.provider != ScmProvider::Git) else { return false };
    let Some(url) = strict_url(url) else { return false };
    let origin =
        |u: &url::Url| (u.scheme().to_owned(), u.host_str().map(str::to_ascii_lowercase), u.port_or_known_default());
    let mut forges: Vec<url::Url> = strict_url(&spec.repository_url).into_iter().collect();
    if let Some(api) = scm.api_url.as_deref().and_then(strict_url) {
        // api.github.com serves github.com; a self-hosted forge serves its API from its own host.
        if let Some(web) = api.host_str().and_then(|h| h.strip_prefix("api.")).map(str::to_owned) {
            let mut web_url = api.clone();
            if web_url.set_host(Some(&web)).is_ok() {
                forges.push(web_url);
            }
        }
        forges.push(api);
    }
    let path = url.path().to_ascii_lowercase();
    let under_repository = path.starts_with(&format!("/{}/", scm.pr_repository.to_ascii_lowercase()));
    under_repository && forges.iter().any(|forge| origin(forge) == origin(&url))
}
/// Cancels a job and stops its worker. A finished job is a conflict.
pub async fn cancel_job(state: &AppState, caller: &Caller, id: JobId) -> ServiceResult<Job> {
    let job = state.store.get_job(id).await?;
    if !end_job(&state.engine, &job, Outcome::Cancelled { by: caller.label() }).await? {
        let job = state.store.get_job(id).await?;
        return Err(ServiceError::Conflict {
            code: "job_finished",
            message: format!("the job already ended ({})", job.status),
            hint: Some("re-run it to start a new job".into()),
        });
    }
    let job = state.store.get_job(id).await?;
    state.engine.stop_compute(&job).await;
    tracing::info!(job_id = %id, by = caller.label(), "job cancelled");
    audit(
        state,
        Some(caller),
        "run_cancelled",
        "job",
        Some(id.to_string()),
        Some(job.project_id),
        serde_json::json!({}),
    )
    .await;
    Ok(job)
}

/// Runs a job again as a new attempt, through `start_run`: the same checks
/// as any run, and a spec built from today's settings and credentials.
pub async fn rerun_job(state: &AppState, caller: &Caller, id: JobId) -> ServiceResult<Job> {
    let old = state.store.get_job(id).await?;
    let Some(ticket_id) = old.ticket_id else {
        return Err(ServiceError::unprocessable("no_ticket", "this job has no ticket to run again"));
    };
    let Some(clanker) = old.clanker_id else {
        return Err(ServiceError::unprocessable(
            "clanker_missing",
            "the job's clanker no longer exists: start a new run with another clanker",
        ));
    };
    let ticket = state.store.get_ticket(ticket_id).await?;
    let clanker = clanker.to_string();
    let request = RunRequest {
        ticket: &ticket,
        phase: old.phase,
        clanker: &clanker,
        trigger: Trigger::Rerun { of: Box::new(old) },
    };
    start_run(state, Some(caller), request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_request_links_must_be_on_the_projects_forge() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "phase": "execution", "repository_url": "https://github.com/acme/shop.git", "base_branch": "main",
            "branch": "viberglass/t1", "prompt": "", "harness": {"kind": "command", "command": ["true"]},
            "instruction_files": [], "max_execution_secs": 60, "heartbeat_interval_secs": 5,
            "heartbeat_grace_secs": 60, "keep_workspace_on_failure": false, "ticket_title": "t",
            "scm": {"provider": "github", "api_url": "https://api.github.com", "repository": "acme/shop",
                "pr_repository": "acme/shop", "pr_base_branch": "main", "ticket_id": null, "ticket_url": null,
                "ticket_description": ""}
        }))
        .unwrap();
        assert!(is_projects_pull_request(&spec, "https://github.com/acme/shop/pull/7"));
        assert!(is_projects_pull_request(&spec, "https://GitHub.com/Acme/Shop/pull/7"));
        for hostile in [
            "https://evil.example/acme/shop/pull/7",
            "https://github.com.evil.example/acme/shop/pull/7",
            "https://github.com/attacker/x/pull/1",
            "https://evil.example\\@github.com/acme/shop/pull/7",
            "https://evil.example@github.com/acme/shop/pull/7",
            "https://github.com:8443/acme/shop/pull/7",
            "http://github.com/acme/shop/pull/7",
            "javascript:alert(1)//github.com/acme/shop/pull/7",
            "https://github.com/acme/shop-other/pull/7",
        ] {
            assert!(!is_projects_pull_request(&spec, hostile), "{hostile}");
        }
        let mut research = spec.clone();
        research.phase = Phase::Research;
        let claimed = JobResult {
            pull_request: Some(viberglass_domain::protocol::PullRequestRef {
                number: 7,
                url: "https://github.com/acme/shop/pull/7".into(),
                title: String::new(),
                head: String::new(),
                created: true,
            }),
            ..JobResult::default()
        };
        assert_eq!(checked_result(&research, claimed).unwrap().pull_request, None, "research opens nothing");
    }
}
