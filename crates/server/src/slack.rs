//! Slack's side effects: the `slack-mirror` outbox consumer, which keeps a
//! bound thread's messages in step with the ticket, and [`slack_loop`],
//! which acts on what Slack sent (the inbox) and sends what is owed.
//!
//! Each message has a key (`<thread>:job:<id>`, `<thread>:doc:<phase>:<rev>`,
//! `<thread>:pr:<url>`…) and a body built from the current state, so an event
//! handled twice changes nothing, and a job's message is one message edited
//! in place from queued to its end rather than one per event. Mirroring reads
//! the outbox, so a restart or a crash loses nothing; posts are claimed with
//! a lease, so several servers never send one twice.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use viberglass_domain::slack::escape;
use viberglass_domain::workflow::{ApprovalState, PhaseDocument};
use viberglass_domain::{DomainEvent, EventType, Job, JobStatus, Phase, SlackThread, Ticket};
use viberglass_integrations::slack::{self as wire, Client, SlackError};
use viberglass_store::{ClaimedPost, NewSlackPost, PostOutcome, StoreError};

use crate::AppState;
use crate::error::error_chain;
use crate::outbox::Consumer;
use crate::service::slack::{self as service, APPROVE_ACTION, Outcome, REVISE_ACTION, button_value, ticket_link};

/// The most attempts one message gets before it is marked failed.
pub const MAX_ATTEMPTS: i64 = 8;
/// How long a claimed request is held.
const LEASE: time::Duration = time::Duration::seconds(60);
/// How long a claimed message is held: longer than its send can take (an upload is three calls of at most
/// 10 s), short enough that a message a killed server held is sent by another soon after.
const POST_LEASE: time::Duration = time::Duration::seconds(40);
/// How long a handled request is kept for the Slack page.
const INBOX_DAYS: i64 = 30;
/// A document longer than this is uploaded as a file too; the message keeps the start.
const SNIPPET: usize = 2_500;

fn store_error(e: &StoreError) -> String {
    error_chain(e)
}

/// Keeps bound threads in step with their tickets.
pub struct SlackMirror;

impl Consumer for SlackMirror {
    fn name(&self) -> &'static str {
        "slack-mirror"
    }

    fn handle<'a>(&'a self, state: &'a AppState, event: &'a DomainEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(ticket_id) = event.ticket_id else { return Ok(()) };
            let relevant = matches!(
                event.event_type,
                EventType::JobQueued
                    | EventType::JobStarted
                    | EventType::JobProgress
                    | EventType::JobCompleted
                    | EventType::JobFailed
                    | EventType::JobCancelled
                    | EventType::PullRequestOpened
                    | EventType::PullRequestUpdated
                    | EventType::ApprovalApproved
                    | EventType::ApprovalRejected
                    | EventType::ApprovalRevoked
                    | EventType::DocumentRevised
            );
            if !relevant {
                return Ok(());
            }
            let Some(thread) = state.store.live_slack_thread(ticket_id).await.map_err(|e| store_error(&e))? else {
                return Ok(());
            };
            let ticket = match state.store.get_ticket(ticket_id).await {
                Ok(t) => t,
                Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(store_error(&e)),
            };
            let mut posts = Vec::new();
            if let Some(job_id) = event.job_id {
                let job = match state.store.get_job(job_id).await {
                    Ok(j) => Some(j),
                    Err(StoreError::NotFound { .. }) => None,
                    Err(e) => return Err(store_error(&e)),
                };
                if let Some(job) = job {
                    if event.event_type.as_str().starts_with("job.") {
                        posts.push(job_post(state, &thread, &job));
                    }
                    if event.event_type == EventType::JobCompleted
                        && let Some(doc) = document(state, &ticket, job.phase).await?
                    {
                        posts.extend(document_posts(state, &thread, &ticket, &doc));
                    }
                    if matches!(event.event_type, EventType::PullRequestOpened | EventType::PullRequestUpdated)
                        && let Some(url) = event.data["url"].as_str()
                    {
                        posts.push(pull_request_post(&thread, url, &job, event.event_type));
                    }
                }
            }
            if matches!(
                event.event_type,
                EventType::ApprovalApproved
                    | EventType::ApprovalRejected
                    | EventType::ApprovalRevoked
                    | EventType::DocumentRevised
            ) && let Some(phase) = event.data["phase"].as_str().and_then(|p| p.parse::<Phase>().ok())
                && let Some(doc) = document(state, &ticket, phase).await?
            {
                // Only a document already posted is edited (its buttons go once approved); a person's edit
                // between runs posts nothing new.
                let key = doc_key(&thread, &doc);
                if state.store.slack_post(&key).await.map_err(|e| store_error(&e))?.is_some() {
                    posts.extend(document_posts(state, &thread, &ticket, &doc).into_iter().take(1));
                }
            }
            let mut changed = false;
            for post in &posts {
                changed |= state.store.upsert_slack_post(post).await.map_err(|e| store_error(&e))?;
            }
            if changed {
                state.slack_wake.notify_one();
            }
            Ok(())
        })
    }
}

async fn document(state: &AppState, ticket: &Ticket, phase: Phase) -> Result<Option<PhaseDocument>, String> {
    if phase.document_name().is_none() {
        return Ok(None);
    }
    state.store.get_document(ticket.id, phase).await.map_err(|e| store_error(&e))
}

fn job_link(state: &AppState, job: &Job) -> String {
    format!("{}/jobs/{}", state.engine.server_url.trim_end_matches('/'), job.id)
}

fn title(phase: Phase) -> &'static str {
    match phase {
        Phase::Research => "Research",
        Phase::Planning => "Planning",
        Phase::Execution => "Execution",
    }
}

fn took(job: &Job) -> String {
    match (job.started_at, job.finished_at) {
        (Some(a), Some(b)) => {
            let secs = (b - a).whole_seconds().max(0);
            if secs >= 60 { format!(" in {}m {}s", secs / 60, secs % 60) } else { format!(" in {secs}s") }
        }
        _ => String::new(),
    }
}

/// The job's one message, from its current state.
fn job_post(state: &AppState, thread: &SlackThread, job: &Job) -> NewSlackPost {
    let link = job_link(state, job);
    let phase = title(job.phase);
    let attempt = if job.attempt > 1 { format!(" (attempt {})", job.attempt) } else { String::new() };
    let text = match job.status {
        JobStatus::Queued => format!("⏳ *{phase}* run{attempt} queued · <{link}|job>"),
        JobStatus::Dispatching | JobStatus::Active => {
            let step = job.progress_step.as_deref().unwrap_or("starting");
            format!("🔄 *{phase}* run{attempt} in progress: _{}_ · <{link}|live log>", escape(step))
        }
        JobStatus::Completed => format!("✅ *{phase}* run{attempt} finished{} · <{link}|job>", took(job)),
        JobStatus::Failed => {
            let (layer, code) = job
                .failure
                .as_ref()
                .map(|f| (f.layer.to_string(), escape(&f.code)))
                .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
            let message = job.status_message.as_deref().unwrap_or("no reason was recorded");
            format!(
                "❌ *{phase}* run{attempt} failed{}\n*Layer:* {layer} (`{code}`)\n{}\n<{link}|Open the job> to read its log and re-run it.",
                took(job),
                escape(message)
            )
        }
        JobStatus::Cancelled => format!(
            "⏹ *{phase}* run{attempt} cancelled{} · <{link}|job>",
            job.cancelled_by.as_deref().map(|b| format!(" by {}", escape(b))).unwrap_or_default()
        ),
    };
    NewSlackPost {
        key: format!("{}:job:{}", thread.id, job.id),
        thread_id: Some(thread.id),
        is_root: false,
        channel: thread.channel.clone(),
        method: "message",
        body: json!({"text": text}),
    }
}

fn doc_key(thread: &SlackThread, doc: &PhaseDocument) -> String {
    format!("{}:doc:{}:{}", thread.id, doc.phase, doc.revision)
}

/// A document's message (the start of it, with Approve & Continue and Request changes until it is approved),
/// and, for a long one, the whole document as a file.
fn document_posts(state: &AppState, thread: &SlackThread, ticket: &Ticket, doc: &PhaseDocument) -> Vec<NewSlackPost> {
    let name = doc.phase.document_name().unwrap_or("the document");
    let link = ticket_link(state, ticket.id);
    let long = doc.content.chars().count() > SNIPPET;
    // The agent wrote it: escaped, so it can neither mention anyone (`<!channel>`) nor hide a link.
    let snippet = escape(&wire::cut(&doc.content, SNIPPET).replace("```", "ˋˋˋ"));
    let header = match doc.approval_state {
        ApprovalState::Approved => format!("✅ *{name}* (revision {}) is approved.", doc.revision),
        ApprovalState::Rejected => format!("🚫 *{name}* (revision {}) was rejected.", doc.revision),
        _ => format!("📄 *{name}* (revision {}) is ready for review.", doc.revision),
    };
    let mut blocks = vec![wire::section(&header), wire::section(&format!("```{snippet}```"))];
    let more = if long {
        format!("The whole document is attached below and on <{link}|the ticket page>.")
    } else {
        format!("Comment line by line on <{link}|the ticket page>.")
    };
    blocks.push(wire::context(&more));
    if matches!(doc.approval_state, ApprovalState::Draft | ApprovalState::ApprovalRequested) {
        let value = button_value(ticket.id, doc.phase, doc.revision);
        blocks.push(wire::buttons(&[
            (APPROVE_ACTION, "Approve & Continue", &value, Some("primary")),
            (REVISE_ACTION, "Request changes", &value, None),
        ]));
    }
    let mut posts = vec![NewSlackPost {
        key: doc_key(thread, doc),
        thread_id: Some(thread.id),
        is_root: false,
        channel: thread.channel.clone(),
        method: "message",
        body: json!({"text": header, "blocks": blocks}),
    }];
    if long {
        posts.push(NewSlackPost {
            key: format!("{}:file:{}:{}", thread.id, doc.phase, doc.revision),
            thread_id: Some(thread.id),
            is_root: false,
            channel: thread.channel.clone(),
            method: "file",
            body: json!({"filename": name, "title": format!("{name} (revision {})", doc.revision),
                "content": doc.content}),
        });
    }
    posts
}

fn pull_request_post(thread: &SlackThread, url: &str, job: &Job, kind: EventType) -> NewSlackPost {
    // A link only when it is a plain http(s) address: nothing in it can close the link or start a mention.
    let plain = (url.starts_with("https://") || url.starts_with("http://"))
        && !url.contains(['|', '<', '>', ' ', '\n'])
        && url.len() <= 2_000;
    let link = if plain { format!("<{url}>") } else { format!("`{}`", escape(url)) };
    let text = if kind == EventType::PullRequestOpened {
        format!("🔀 Pull request opened: {link}")
    } else {
        format!("🔀 Pull request updated by attempt {}: {link}", job.attempt)
    };
    NewSlackPost {
        key: format!("{}:pr:{url}", thread.id),
        thread_id: Some(thread.id),
        is_root: false,
        channel: thread.channel.clone(),
        method: "message",
        body: json!({"text": text}),
    }
}

/// The wait before attempt `attempts + 1`: 2 s, 4 s… up to 5 minutes, with jitter.
fn backoff(attempts: i64) -> time::Duration {
    let base = 1i64 << attempts.clamp(1, 8);
    time::Duration::seconds(base.min(300)) + time::Duration::milliseconds((rand::random::<u64>() % 500) as i64)
}

/// Sends one message: a post (then its timestamp), an edit, a file or an ephemeral answer.
async fn send(client: &Client, post: &ClaimedPost) -> Result<PostOutcome, SlackError> {
    let body = &post.body;
    let text = body["text"].as_str().unwrap_or_default();
    let blocks = body.get("blocks").filter(|b| b.is_array());
    let thread = if post.is_root { None } else { post.thread_ts.as_deref().or(body["thread_ts"].as_str()) };
    match post.method.as_str() {
        "ephemeral" => {
            let user = body["user"].as_str().unwrap_or_default();
            client.post_ephemeral(&post.channel, user, thread, text).await?;
            Ok(PostOutcome::Sent { ts: String::new(), edit: false })
        }
        "file" => {
            if let Some(ts) = &post.ts {
                return Ok(PostOutcome::Sent { ts: ts.clone(), edit: false });
            }
            let name = body["filename"].as_str().unwrap_or("document.md");
            let title = body["title"].as_str().unwrap_or(name);
            let content = body["content"].as_str().unwrap_or_default();
            let file = client.upload_file(&post.channel, thread, name, title, content.as_bytes()).await?;
            Ok(PostOutcome::Sent { ts: file, edit: false })
        }
        _ => match &post.ts {
            None => {
                let ts = client.post_message(&post.channel, thread, text, blocks).await?;
                Ok(PostOutcome::Sent { ts, edit: false })
            }
            Some(ts) => match client.update_message(&post.channel, ts, text, blocks).await {
                Ok(()) => Ok(PostOutcome::Sent { ts: ts.clone(), edit: true }),
                Err(e @ SlackError::Api { .. })
                    if matches!(e.code(), Some("message_not_found" | "cant_update_message")) =>
                {
                    Ok(PostOutcome::Lost { error: e.to_string() })
                }
                Err(e) => Err(e),
            },
        },
    }
}

/// Acts on what Slack sent and sends what is owed, until `shutdown`.
pub async fn slack_loop(state: AppState, poll: Duration, shutdown: CancellationToken) {
    let mut pruned: Option<std::time::Instant> = None;
    // After a 429, nothing is sent until Slack's Retry-After has passed.
    let mut paused_until: Option<time::OffsetDateTime> = None;
    loop {
        if pruned.is_none_or(|p| p.elapsed() > Duration::from_secs(600)) {
            pruned = Some(std::time::Instant::now());
            let before = viberglass_store::now() - time::Duration::seconds(wire::TOLERANCE_SECS * 2);
            if let Err(e) = state.store.prune_slack_signatures(before).await {
                tracing::error!(error = %store_error(&e), "Slack: could not prune seen signatures");
            }
            let old = viberglass_store::now() - time::Duration::days(INBOX_DAYS);
            if let Err(e) = state.store.prune_slack_inbox(old).await {
                tracing::error!(error = %store_error(&e), "Slack: could not prune handled requests");
            }
        }
        let mut worked = false;
        // One at a time: an item is acted on well within its lease, so no other server takes it meanwhile.
        match state.store.claim_slack_inbox(1, LEASE).await {
            Ok(items) => {
                for item in items {
                    worked = true;
                    let outcome = service::process(&state, &item).await;
                    let (done, text, retry) = match outcome {
                        Outcome::Done(text) => (true, text, None),
                        Outcome::Refused(text) => (false, text, None),
                        Outcome::Retry(text) if item.attempts < MAX_ATTEMPTS => {
                            (false, text, Some(viberglass_store::now() + backoff(item.attempts)))
                        }
                        Outcome::Retry(text) => {
                            (false, format!("gave up after {} attempts: {text}", item.attempts), None)
                        }
                    };
                    if done {
                        tracing::info!(kind = %item.kind, outcome = %text, "Slack request handled");
                    } else {
                        tracing::warn!(kind = %item.kind, outcome = %text, retrying = retry.is_some(), "Slack request not handled");
                    }
                    if let Err(e) = state.store.finish_slack_inbox(&item, done, &text, retry).await {
                        tracing::error!(error = %store_error(&e), "Slack: store error");
                    }
                }
            }
            Err(e) => tracing::error!(error = %store_error(&e), "Slack: store error"),
        }
        let paused = paused_until.is_some_and(|p| p > viberglass_store::now());
        if !paused {
            worked |= send_due(&state, &mut paused_until).await;
        }
        if worked {
            continue;
        }
        let wait = match paused_until {
            Some(until) if until > viberglass_store::now() => Duration::try_from(until - viberglass_store::now())
                .unwrap_or(poll)
                .min(poll.max(Duration::from_secs(1))),
            _ => poll,
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = state.slack_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Sends the due messages; whether there were any.
async fn send_due(state: &AppState, paused_until: &mut Option<time::OffsetDateTime>) -> bool {
    // One at a time: each is sent well within its lease.
    let posts = match state.store.claim_slack_posts(1, POST_LEASE).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %store_error(&e), "Slack: store error");
            return false;
        }
    };
    if posts.is_empty() {
        return false;
    }
    let settings = state.store.get_slack_settings().await.ok().flatten();
    let client = match &settings {
        Some(s) => service::client(state, s).await,
        None => Err("Slack is not set up: an administrator saves the Slack settings".into()),
    };
    for post in &posts {
        let now = viberglass_store::now();
        let outcome = match (&client, *paused_until) {
            (_, Some(until)) if until > now => {
                PostOutcome::Retry { at: until, error: "waiting out Slack's rate limit".into() }
            }
            (Err(why), _) => {
                PostOutcome::Retry { at: now + backoff(post.attempts), error: format!("no Slack client: {why}") }
            }
            (Ok(client), _) => match send(client, post).await {
                Ok(outcome) => outcome,
                Err(SlackError::RateLimited(wait)) => {
                    let until = now + time::Duration::try_from(wait).unwrap_or(time::Duration::seconds(1));
                    *paused_until = Some(until);
                    tracing::warn!(
                        retry_after_secs = wait.as_secs(),
                        "Slack's rate limit: waiting before sending more"
                    );
                    PostOutcome::Retry {
                        at: until,
                        error: format!("rate limited by Slack: retry after {} s", wait.as_secs()),
                    }
                }
                Err(e) if e.retryable() && post.attempts < MAX_ATTEMPTS => {
                    PostOutcome::Retry { at: now + backoff(post.attempts), error: e.to_string() }
                }
                Err(e) => PostOutcome::Failed { error: e.to_string() },
            },
        };
        match &outcome {
            PostOutcome::Failed { error } => {
                tracing::warn!(key = %post.key, channel = %post.channel, error = %error, "a Slack message could not be sent")
            }
            PostOutcome::Retry { error, .. } => {
                tracing::debug!(key = %post.key, error = %error, "a Slack message will be retried")
            }
            _ => {}
        }
        match state.store.record_slack_post(post, &outcome).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(key = %post.key, "a Slack message's lease passed before its outcome was recorded")
            }
            Err(e) => tracing::error!(error = %store_error(&e), "Slack: store error"),
        }
    }
    true
}
