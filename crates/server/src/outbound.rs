//! Outbound webhooks, delivered from the outbox:
//!
//! - the `outbound-webhooks` consumer owes each event to every active subscription that wants it (one row per
//!   event and subscription: an event handled twice is owed once), with its body fixed then;
//! - [`delivery_loop`] claims due rows with a lease (one server at a time attempts a row), sends them signed
//!   (Standard Webhooks, `webhook-id` = the event's id on every attempt), records every attempt, and retries
//!   failures with exponential backoff and jitter up to the maximum age.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use viberglass_domain::{AttemptError, DomainEvent, OutboundAttempt, Subscription, SubscriptionAuth, SubscriptionId};
use viberglass_integrations::outbound::{self, Auth, Outgoing};
use viberglass_store::{AfterAttempt, ClaimedDelivery, NewOutbound};

use crate::AppState;
use crate::error::error_chain;
use crate::outbox::Consumer;

/// Owes events to the subscriptions that want them.
///
/// The active subscriptions are read once per batch of events (not once per
/// event: most events are owed to nobody, and a busy server files thousands
/// a second) and matched in memory, as the per-event query would: the
/// event's project or none, created no later than the event. The events of a
/// batch were all written before it began, so a subscription created since
/// is too new for them anyway.
#[derive(Default)]
pub struct OutboundWebhooks {
    batch: std::sync::Mutex<Option<Arc<Vec<Subscription>>>>,
}

/// Past this many active subscriptions, each event reads its own.
const BATCH_SUBSCRIPTIONS: u32 = 2000;

impl OutboundWebhooks {
    async fn subscriptions(&self, state: &AppState, event: &DomainEvent) -> Result<Vec<Subscription>, String> {
        let cached = self.batch.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let all = match cached {
            Some(all) => all,
            None => {
                let all =
                    state.store.active_subscriptions(BATCH_SUBSCRIPTIONS + 1).await.map_err(|e| error_chain(&e))?;
                let all = Arc::new(all);
                *self.batch.lock().unwrap_or_else(|p| p.into_inner()) = Some(all.clone());
                all
            }
        };
        if all.len() > BATCH_SUBSCRIPTIONS as usize {
            return state
                .store
                .subscriptions_for_event(event.project_id, event.created_at)
                .await
                .map_err(|e| error_chain(&e));
        }
        Ok(all
            .iter()
            .filter(|s| s.project_id.is_none() || s.project_id == event.project_id)
            .filter(|s| s.created_at <= event.created_at)
            .cloned()
            .collect())
    }
}

impl Consumer for OutboundWebhooks {
    fn name(&self) -> &'static str {
        "outbound-webhooks"
    }

    fn batch_started(&self) {
        *self.batch.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn handle<'a>(&'a self, state: &'a AppState, event: &'a DomainEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let subs = self.subscriptions(state, event).await?;
            if subs.is_empty() {
                return Ok(());
            }
            let body = event.webhook_body().to_string();
            let owed: Vec<NewOutbound> = subs
                .iter()
                .filter(|s| s.wants(event.event_type))
                .map(|s| NewOutbound {
                    subscription_id: s.id,
                    event_id: event.id,
                    event_type: event.event_type.as_str().to_owned(),
                    body: body.clone(),
                })
                .collect();
            if state.store.enqueue_outbound(&owed).await.map_err(|e| error_chain(&e))? > 0 {
                state.outbound_wake.notify_one();
            }
            Ok(())
        })
    }
}

/// How many deliveries are attempted at once by one server.
const CONCURRENCY: usize = 16;

/// The wait before the attempt after `failures` failed ones: `min` doubling per failure up to `max`, then a
/// random point in its upper half (so receivers coming back are not hit by every server at once).
pub fn backoff(failures: i64, min: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).clamp(0, 30) as u32;
    let full = min.saturating_mul(1u32 << exp.min(20)).min(max);
    let half = full / 2;
    half + Duration::from_millis(rand::random::<u64>() % (half.as_millis().max(1) as u64))
}

/// A subscription as the loop sends to it.
struct Prepared {
    subscription: Subscription,
    secrets: Vec<String>,
    headers: std::collections::BTreeMap<String, String>,
    auth: Auth,
}

async fn prepare(state: &AppState, id: SubscriptionId) -> Result<Prepared, String> {
    let stored = state.store.get_subscription(id).await.map_err(|e| error_chain(&e))?;
    let creds = crate::service::subscriptions::open(state, &stored)?;
    let sub = stored.subscription;
    let mut secrets = vec![creds.secret.clone()];
    if let (Some(prev), Some(until)) = (&creds.previous_secret, sub.previous_secret_until)
        && until > viberglass_store::now()
    {
        secrets.push(prev.clone());
    }
    let auth = match sub.auth {
        SubscriptionAuth::None => Auth::None,
        SubscriptionAuth::Bearer => Auth::Bearer(creds.token.clone().unwrap_or_default()),
        SubscriptionAuth::Basic => Auth::Basic {
            username: sub.username.clone().unwrap_or_default(),
            password: creds.password.clone().unwrap_or_default(),
        },
    };
    Ok(Prepared { subscription: sub, secrets, headers: creds.headers, auth })
}

/// The two clients: one refusing private destinations, one allowing them (for subscriptions an administrator
/// allowed, or every subscription with `VIBERGLASS_WEBHOOK_ALLOW_PRIVATE`).
struct Clients {
    strict: reqwest::Client,
    open: reqwest::Client,
    timeout: Duration,
}

/// One attempt of one claimed delivery, recorded.
async fn attempt(
    state: &AppState,
    clients: &Clients,
    owner: &str,
    prepared: &Result<Prepared, String>,
    delivery: ClaimedDelivery,
) {
    let started_at = viberglass_store::now();
    let number = delivery.attempts + 1;
    let (outcome, project) = match prepared {
        Ok(p) => {
            let allow = p.subscription.allow_private || state.config.webhook_allow_private;
            let id = delivery.event_id.to_string();
            let out = Outgoing {
                url: &p.subscription.url,
                id: &id,
                timestamp: started_at.unix_timestamp(),
                body: &delivery.body,
                secrets: p.secrets.iter().map(String::as_str).collect(),
                headers: &p.headers,
                auth: p.auth.clone(),
                allow_private: allow,
            };
            let client = if allow { &clients.open } else { &clients.strict };
            (outbound::deliver(client, &out, clients.timeout).await, p.subscription.project_id)
        }
        Err(message) => (
            outbound::Outcome {
                status: None,
                response: None,
                error: Some((AttemptError::Other, message.clone())),
                duration: Duration::ZERO,
            },
            None,
        ),
    };
    let max_age = time::Duration::seconds(state.config.webhook_max_age_secs as i64);
    let mut error = outcome.error.clone();
    let after = match &outcome.error {
        None => AfterAttempt::Succeeded,
        Some((_, message)) if outcome.gone() => AfterAttempt::GiveUp { gone: Some(message.clone()) },
        Some(_) if viberglass_store::now() - delivery.window_start >= max_age => {
            if let Some((_, message)) = &mut error {
                message.push_str(&format!(
                    "; given up after {number} attempts over {} (the maximum age): redeliver it once the receiver works",
                    crate::service::subscriptions::human_secs(state.config.webhook_max_age_secs)
                ));
            }
            AfterAttempt::GiveUp { gone: None }
        }
        Some(_) => {
            let wait = backoff(
                number,
                Duration::from_millis(state.config.webhook_retry_min_ms),
                Duration::from_secs(state.config.webhook_retry_max_secs),
            );
            AfterAttempt::Retry(viberglass_store::now() + wait)
        }
    };
    let record = OutboundAttempt {
        attempt: number,
        started_at,
        duration_ms: outcome.duration.as_millis() as i64,
        status_code: outcome.status,
        response: outcome.response.clone(),
        error_kind: error.as_ref().map(|(k, _)| *k),
        error: error.as_ref().map(|(_, m)| m.clone()),
        server: owner.to_owned(),
    };
    if let Some((kind, message)) = &error {
        tracing::info!(subscription = %delivery.subscription_id, event = %delivery.event_id, attempt = number,
            kind = kind.as_str(), error = message.as_str(), "outbound webhook attempt failed");
    }
    if let Err(e) =
        crate::service::subscriptions::record_attempt(state, &delivery, owner, &record, &after, project).await
    {
        tracing::error!(error = %error_chain(&e), "outbound webhooks: could not record an attempt");
    }
}

/// The most attempts one server makes at once to one subscription: a slow receiver takes its own share of the
/// loop, never everyone's.
const PER_SUBSCRIPTION: usize = 8;

/// How many deliveries of one subscription a server holds at most (attempting or waiting for a share).
const HELD_PER_SUBSCRIPTION: usize = PER_SUBSCRIPTION * 3;

/// Claims and sends due deliveries until `shutdown`: up to [`CONCURRENCY`] attempts in flight, at most
/// [`PER_SUBSCRIPTION`] of them for one subscription. A subscription's claimed deliveries beyond its share wait
/// here (leased to this server) and start as its attempts end; the claim passes over a subscription of which
/// this server holds [`HELD_PER_SUBSCRIPTION`] already, so a slow receiver never fills the loop.
pub async fn delivery_loop(state: AppState, owner: String, poll: Duration, shutdown: CancellationToken) {
    let timeout = Duration::from_millis(state.config.webhook_timeout_ms);
    let clients =
        Arc::new(Clients { strict: outbound::client(false, timeout), open: outbound::client(true, timeout), timeout });
    // Held deliveries start within (held / share) rounds of the timeout: the lease outlasts them.
    let lease_for = timeout * (HELD_PER_SUBSCRIPTION / PER_SUBSCRIPTION + 3) as u32 + Duration::from_secs(15);
    let lease = time::Duration::try_from(lease_for).unwrap_or_default();
    let owner = Arc::new(owner);
    let mut per_subscription: HashMap<SubscriptionId, usize> = HashMap::new();
    let mut waiting: HashMap<SubscriptionId, std::collections::VecDeque<(ClaimedDelivery, std::time::Instant)>> =
        HashMap::new();
    let mut tasks: HashMap<tokio::task::Id, SubscriptionId> = HashMap::new();
    // Spawned, not merely polled here: an attempt inside a transaction must go on while this loop awaits the store.
    let mut running = tokio::task::JoinSet::new();
    // Whether to claim on this round: after an attempt ended, a wake-up or a poll; not after an empty claim.
    let mut claim = true;
    let mut pruned: Option<std::time::Instant> = None;
    let start = |d: ClaimedDelivery, running: &mut tokio::task::JoinSet<()>, tasks: &mut HashMap<_, _>| {
        let (state, clients, owner) = (state.clone(), clients.clone(), owner.clone());
        let sub = d.subscription_id;
        let task = running.spawn(async move {
            // Read for each attempt: a rotated secret or a changed URL applies to the very next one.
            let p = prepare(&state, d.subscription_id).await;
            attempt(&state, &clients, &owner, &p, d).await
        });
        tasks.insert(task.id(), sub);
    };
    loop {
        if pruned.is_none_or(|p| p.elapsed() > Duration::from_secs(600)) {
            pruned = Some(std::time::Instant::now());
            let cutoff = viberglass_store::now() - time::Duration::days(i64::from(state.config.webhook_delivery_days));
            match state.store.prune_outbound_bodies(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deliveries = n, "emptied outbound webhook bodies past their retention"),
                Err(e) => tracing::error!(error = %error_chain(&e), "outbound webhooks: store error"),
            }
        }
        let capacity = CONCURRENCY.saturating_sub(running.len());
        if claim && capacity > 0 && !shutdown.is_cancelled() {
            let claimed =
                match state.store.claim_outbound(&owner, capacity as i64, HELD_PER_SUBSCRIPTION as i64, lease).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %error_chain(&e), "outbound webhooks: store error");
                        Vec::new()
                    }
                };
            claim = !claimed.is_empty();
            for d in claimed {
                let count = per_subscription.entry(d.subscription_id).or_default();
                if *count < PER_SUBSCRIPTION {
                    *count += 1;
                    start(d, &mut running, &mut tasks);
                } else {
                    waiting.entry(d.subscription_id).or_default().push_back((d, std::time::Instant::now()));
                }
            }
        }
        if running.is_empty() {
            if shutdown.is_cancelled() {
                break;
            }
            if !claim {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = state.outbound_wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
                claim = true;
            }
            continue;
        }
        // Wait for an attempt to end (or for more to claim while there is room).
        let room = running.len() < CONCURRENCY;
        tokio::select! {
            Some(ended) = running.join_next_with_id() => {
                claim = true;
                let task = match ended {
                    Ok((task, ())) => task,
                    Err(e) => {
                        // A panicked attempt: its delivery's lease lapses and it is attempted again.
                        tracing::error!(error = %e, "outbound webhooks: an attempt panicked");
                        e.id()
                    }
                };
                let Some(sub) = tasks.remove(&task) else { continue };
                // The subscription's next waiting delivery takes the freed share, while its lease has room.
                let mut stale = Vec::new();
                let mut next = None;
                if let Some(queue) = waiting.get_mut(&sub) {
                    while let Some((d, since)) = queue.pop_front() {
                        if shutdown.is_cancelled() || since.elapsed() + timeout + Duration::from_secs(5) > lease_for {
                            stale.push(d.id);
                        } else {
                            next = Some(d);
                            break;
                        }
                    }
                }
                match next {
                    Some(d) => start(d, &mut running, &mut tasks),
                    None => {
                        if let Some(n) = per_subscription.get_mut(&sub) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                per_subscription.remove(&sub);
                                waiting.remove(&sub);
                            }
                        }
                    }
                }
                if !stale.is_empty()
                    && let Err(e) = state.store.release_outbound(&owner, &stale, viberglass_store::now()).await
                {
                    tracing::error!(error = %error_chain(&e), "outbound webhooks: store error");
                }
            }
            () = state.outbound_wake.notified(), if room => { claim = true; }
            () = tokio::time::sleep(poll), if room => { claim = true; }
        }
    }
    // Deliveries still waiting here go back at once (the server is stopping).
    let left: Vec<_> = waiting.into_values().flatten().map(|(d, _)| d.id).collect();
    if !left.is_empty() {
        let _ = state.store.release_outbound(&owner, &left, viberglass_store::now()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let min = Duration::from_secs(5);
        let max = Duration::from_secs(3600);
        for _ in 0..100 {
            let first = backoff(1, min, max);
            assert!(first >= Duration::from_millis(2500) && first <= min, "{first:?}");
            let fourth = backoff(4, min, max);
            assert!(fourth >= Duration::from_secs(20) && fourth <= Duration::from_secs(40), "{fourth:?}");
            let late = backoff(40, min, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }
}
