//! Ticket sources' side effects, as outbox consumers and one loop:
//!
//! - `source-runs` starts the runs deliveries asked for (`ticket.run_requested`), each with the event's id
//!   as the job's, so an event handled twice queues one job. A run that cannot start (a gate, a clanker not
//!   started) is noted on its delivery, which turns `failed` with the reason.
//! - `source-feedback` queues a comment (and on GitHub and GitLab a label) for the source issue when a
//!   sourced ticket's run starts and ends, once per event.
//! - [`feedback_loop`] sends what is queued, retrying 429s, 5xx and network errors with exponential backoff,
//!   and records every attempt. A feedback failure never touches the job.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use viberglass_domain::{DeliveryId, DeliveryStatus, DomainEvent, EventType, JobId, Phase, WebhookProvider};
use viberglass_integrations::feedback::{self, Target};
use viberglass_store::{Feedback, NewFeedback, StoreError};

use crate::AppState;
use crate::error::error_chain;
use crate::outbox::Consumer;
use crate::service::ServiceError;
use crate::service::runs::{RunRequest, Trigger, start_run};

fn store_error(e: &StoreError) -> String {
    error_chain(e)
}

/// Starts the runs ticket sources asked for.
pub struct SourceRuns;

impl Consumer for SourceRuns {
    fn name(&self) -> &'static str {
        "source-runs"
    }

    fn handle<'a>(&'a self, state: &'a AppState, event: &'a DomainEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if event.event_type != EventType::TicketRunRequested {
                return Ok(());
            }
            let job = JobId::from_uuid(event.id);
            match state.store.get_job(job).await {
                Ok(_) => return Ok(()),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(store_error(&e)),
            }
            let delivery = event.data["delivery_id"].as_str().and_then(|d| d.parse::<DeliveryId>().ok());
            let phase = event.data["phase"].as_str().and_then(|p| p.parse::<Phase>().ok());
            let clanker = event.data["clanker"].as_str().unwrap_or_default().to_owned();
            let reason = event.data["reason"].as_str().unwrap_or("ticket source").to_owned();
            let (Some(ticket_id), Some(phase)) = (event.ticket_id, phase) else {
                tracing::warn!(event = %event.id, "ticket.run_requested without a ticket or phase: skipped");
                return Ok(());
            };
            let ticket = match state.store.get_ticket(ticket_id).await {
                Ok(t) => t,
                Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(store_error(&e)),
            };
            let request =
                RunRequest { ticket: &ticket, phase, clanker: &clanker, trigger: Trigger::Source { reason, job } };
            match start_run(state, None, request).await {
                Ok(job) => {
                    tracing::info!(job_id = %job.id, ticket_id = %ticket.id, "run started for a ticket source");
                    Ok(())
                }
                Err(ServiceError::Store(StoreError::Conflict { .. })) => Ok(()),
                Err(ServiceError::Store(e)) if !matches!(e, StoreError::NotFound { .. }) => Err(store_error(&e)),
                Err(refused) => {
                    let message = format!("the ticket was filed, but its {phase} run could not start: {refused}");
                    tracing::warn!(ticket_id = %ticket.id, reason = %refused, "a ticket source's run could not start");
                    if let Some(delivery) = delivery {
                        state
                            .store
                            .note_delivery(delivery, DeliveryStatus::Failed, &message)
                            .await
                            .map_err(|e| store_error(&e))?;
                    }
                    Ok(())
                }
            }
        })
    }
}

/// Queues feedback to a sourced ticket's source when its runs start and end.
pub struct SourceFeedback;

/// Keeps a comment from mentioning anyone (our own comments must never trigger a run, here or elsewhere).
fn quiet(text: &str) -> String {
    text.replace('@', "@\u{200B}")
}

impl Consumer for SourceFeedback {
    fn name(&self) -> &'static str {
        "source-feedback"
    }

    fn handle<'a>(&'a self, state: &'a AppState, event: &'a DomainEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if !matches!(
                event.event_type,
                EventType::JobStarted | EventType::JobCompleted | EventType::JobFailed | EventType::JobCancelled
            ) {
                return Ok(());
            }
            let (Some(ticket_id), Some(job_id)) = (event.ticket_id, event.job_id) else { return Ok(()) };
            let Some((config_id, _)) = state.store.ticket_source(ticket_id).await.map_err(|e| store_error(&e))? else {
                return Ok(());
            };
            let config = match state.store.get_webhook_config(config_id).await {
                Ok(c) => c.config,
                Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(store_error(&e)),
            };
            if !config.feedback || !config.provider.has_feedback() {
                return Ok(());
            }
            let job = match state.store.get_job(job_id).await {
                Ok(j) => j,
                Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(store_error(&e)),
            };
            let link = format!("{}/tickets/{}", state.engine.server_url.trim_end_matches('/'), ticket_id);
            let phase = job.phase;
            let (body, label) = match event.event_type {
                EventType::JobStarted => (
                    format!("Viberglass started the {phase} run (attempt {}).\n\nFollow it: {link}", job.attempt),
                    None,
                ),
                EventType::JobCompleted => match (phase, job.pull_request_url.as_deref()) {
                    (Phase::Execution, Some(pr)) => (
                        format!("Viberglass finished the execution run: the pull request is {pr}\n\nTicket: {link}"),
                        Some(config.success_label.clone()),
                    ),
                    (Phase::Execution, None) => (
                        format!("Viberglass finished the execution run; the change is recorded on the ticket: {link}"),
                        Some(config.success_label.clone()),
                    ),
                    (Phase::Research, _) => {
                        (format!("Viberglass finished research: RESEARCH.md is ready for review at {link}"), None)
                    }
                    (Phase::Planning, _) => {
                        (format!("Viberglass finished planning: PLAN.md is ready for review at {link}"), None)
                    }
                },
                EventType::JobFailed => (
                    format!(
                        "Viberglass's {phase} run failed: {}\n\nTicket: {link}",
                        job.status_message.as_deref().unwrap_or("no reason was recorded")
                    ),
                    (phase == Phase::Execution).then(|| config.failure_label.clone()),
                ),
                _ => (format!("Viberglass's {phase} run was cancelled. Ticket: {link}"), None),
            };
            let label = label.filter(|_| config.provider.has_labels());
            let new = NewFeedback {
                event_id: event.id,
                ticket_id,
                job_id: Some(job_id),
                config_id,
                body: quiet(&body),
                label,
            };
            state.store.enqueue_feedback(&new).await.map_err(|e| store_error(&e))?;
            state.engine.wake.notify_one();
            Ok(())
        })
    }
}

/// The most attempts one feedback gets.
pub const MAX_ATTEMPTS: i64 = 8;

/// The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s… up to 10 minutes, with jitter.
pub fn backoff(attempts: i64) -> time::Duration {
    let base = 1i64 << attempts.clamp(0, 10);
    let jitter = rand::random::<u64>() % 250;
    time::Duration::seconds(base.min(600)) + time::Duration::milliseconds(jitter as i64)
}

/// Where a ticket's feedback goes, with which token.
async fn target(state: &AppState, f: &Feedback) -> Result<Target, String> {
    let config = state.store.get_webhook_config(f.config_id).await.map_err(|e| store_error(&e))?.config;
    let (_, locator) =
        state.store.ticket_source(f.ticket_id).await.map_err(|e| store_error(&e))?.ok_or("the ticket has no source")?;
    target_for(state, &config, locator).await
}

/// Where a configuration's calls to its source go for the issue at `locator`, with which token.
pub async fn target_for(
    state: &AppState,
    config: &viberglass_domain::WebhookConfig,
    locator: serde_json::Value,
) -> Result<Target, String> {
    let project = state.store.get_project(config.project_id).await.map_err(|e| store_error(&e))?;
    let integration = match &project.scm_integration {
        Some(name) if matches!(config.provider, WebhookProvider::Github | WebhookProvider::Gitlab) => {
            state.store.get_integration_by_name(name).await.ok()
        }
        _ => None,
    };
    let forge = matches!(config.provider, WebhookProvider::Github | WebhookProvider::Gitlab);
    // Only GitHub and GitLab fall back to the project's SCM credential and API: a token never goes to another
    // provider, and an address is never taken from a payload.
    let secret = config
        .feedback_secret
        .clone()
        .or_else(|| integration.as_ref().and_then(|i| i.credential_secret.clone()).filter(|_| forge))
        .or_else(|| project.credential_secret.clone().filter(|_| forge))
        .ok_or_else(|| {
            format!(
                "no token to comment with: an administrator sets the webhook configuration's feedback secret{}",
                if forge { ", or gives the project an SCM integration with a credential" } else { "" }
            )
        })?;
    let api_url = config
        .feedback_api_url
        .clone()
        .or_else(|| integration.as_ref().map(|i| i.api_url()).filter(|_| forge))
        .or_else(|| config.provider.default_api_url().map(str::to_owned))
        .or_else(|| match config.provider {
            WebhookProvider::Github => Some("https://api.github.com".to_owned()),
            WebhookProvider::Gitlab => Some("https://gitlab.com/api/v4".to_owned()),
            _ => None,
        })
        .ok_or("no API address for feedback: an administrator sets the webhook configuration's feedback API URL (Jira: your site, e.g. https://acme.atlassian.net)")?;
    // The project's own credential speaks only for the project's own repository: an issue elsewhere needs a
    // feedback secret an administrator chose.
    if forge && config.feedback_secret.is_none() {
        let issue_repo = locator["repository"].as_str().or_else(|| locator["project"].as_str()).unwrap_or_default();
        let own = project.repository_url.as_deref().and_then(viberglass_domain::scm::repository_path).map(|(_, p)| p);
        if own.as_deref() != Some(issue_repo) {
            return Err(format!(
                "the issue is in {issue_repo}, not the project's repository ({}): the project's credential is used \
                 only for its own repository; an administrator can set a feedback secret for this source",
                own.as_deref().unwrap_or("none")
            ));
        }
    }
    let token = crate::vault::resolve(state, &secret, &format!("the {} webhook's feedback", config.provider))
        .await
        .map_err(|f| f.message)?;
    Ok(Target { provider: config.provider, api_url, token, locator })
}

/// Sends one feedback row: the comment, then the label. Returns the error and whether to retry.
async fn send(state: &AppState, http: &reqwest::Client, f: &Feedback) -> Result<(), (String, bool)> {
    let target = target(state, f).await.map_err(|e| (e, false))?;
    // A retry after the comment went through but the label failed would comment twice: comments are sent only
    // until one is delivered, which the attempt log records.
    let commented = f.attempt_log.as_array().into_iter().flatten().any(|a| a["commented"] == true);
    if !commented {
        feedback::comment(http, &target, &f.body).await.map_err(|e| (e.message, e.retryable))?;
    }
    if let Some(label) = &f.label
        && let Err(e) = feedback::add_label(http, &target, label).await
    {
        return Err((format!("commented, but the label failed: {}", e.message), e.retryable));
    }
    Ok(())
}

/// Sends queued feedback until `shutdown`.
pub async fn feedback_loop(state: AppState, poll: Duration, shutdown: CancellationToken) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default();
    let mut pruned: Option<std::time::Instant> = None;
    loop {
        if pruned.is_none_or(|p| p.elapsed() > Duration::from_secs(600)) {
            pruned = Some(std::time::Instant::now());
            let cutoff = crate::service::webhooks::payload_cutoff(state.config.webhook_payload_days);
            match state.store.prune_delivery_payloads(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deliveries = n, "removed webhook payloads past their retention"),
                Err(e) => tracing::error!(error = %store_error(&e), "webhook payload pruning: store error"),
            }
        }
        let due = match state.store.claim_due_feedback(20, time::Duration::seconds(60)).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %store_error(&e), "feedback: store error");
                Vec::new()
            }
        };
        for f in &due {
            let outcome = send(&state, &http, f).await;
            let (error, retry_at) = match &outcome {
                Ok(()) => (None, None),
                Err((message, retryable)) if *retryable && f.attempts + 1 < MAX_ATTEMPTS => {
                    (Some(message.as_str()), Some(viberglass_store::now() + backoff(f.attempts)))
                }
                Err((message, _)) => (Some(message.as_str()), None),
            };
            if let Some(message) = error {
                tracing::warn!(ticket_id = %f.ticket_id, attempt = f.attempts + 1, retrying = retry_at.is_some(), error = message, "feedback to the ticket's source failed");
            }
            let commented = matches!(&outcome, Err((m, _)) if m.starts_with("commented, but"));
            if let Err(e) = state.store.record_feedback_attempt(f.id, error, retry_at, commented).await {
                tracing::error!(error = %store_error(&e), "feedback: store error");
            }
        }
        if !due.is_empty() {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
        }
    }
}
