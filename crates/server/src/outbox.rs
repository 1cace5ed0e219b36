//! Outbox consumers: what reacts to domain events. Each consumer is named,
//! reads the outbox in order from its own cursor, and holds a lease while it
//! reads, so across several servers on one database an event is handled by
//! one consumer instance at a time, at least once, and a restarted (or
//! killed) server's consumers resume from their last acknowledged event.
//!
//! Consumers must be idempotent on the event id: an event handled just
//! before a crash is handled again. Outbound webhooks, Slack mirroring and
//! feedback to ticket sources plug in here as more consumers.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use viberglass_domain::DomainEvent;
use viberglass_store::{Store, StoreError};

use crate::AppState;
use crate::error::error_chain;

/// How long a consumer's lease lasts without renewal. A consumer renews it
/// after every batch; a killed server's lease lapses after this long.
pub const LEASE: Duration = Duration::from_secs(15);
/// The most events one batch reads.
const BATCH: u32 = 200;
/// After a batch smaller than [`BATCH`], the loop waits this long before the
/// next: under a stream of writes, events then arrive in batches instead of
/// one or two at a time, each batch costing every consumer a lease and an
/// acknowledgement (two commits). What it adds to an event's delivery is
/// this, once.
const GATHER: Duration = Duration::from_millis(20);
/// How long a gap in the outbox's ids is waited for (a transaction that took
/// its id and has not committed yet) before it is taken as a rollback.
pub const GAP_WAIT: Duration = Duration::from_secs(5);

/// A reader's memory of the gap it is waiting at, timed by its own clock
/// from when it first saw the gap (writers' clocks play no part).
#[derive(Debug, Default)]
pub struct GapWatch {
    waiting: Option<(i64, std::time::Instant)>,
}

impl GapWatch {
    /// How many of `events` (read after `cursor`) may be handed on now: up to
    /// the first gap, unless this reader has waited at that gap long enough.
    pub fn ready(&mut self, cursor: i64, events: &[DomainEvent], wait: Duration) -> usize {
        let mut expected = cursor + 1;
        for (i, event) in events.iter().enumerate() {
            if event.seq != expected {
                match self.waiting {
                    Some((seq, since)) if seq == event.seq && since.elapsed() >= wait => self.waiting = None,
                    Some((seq, _)) if seq == event.seq => return i,
                    _ => {
                        self.waiting = Some((event.seq, std::time::Instant::now()));
                        return i;
                    }
                }
            }
            expected = event.seq + 1;
        }
        events.len()
    }
}

/// Something that reacts to domain events, with a context `C` (the
/// application state in the server).
pub trait Consumer<C = AppState>: Send + Sync {
    /// Stable: the cursor is stored under it.
    fn name(&self) -> &'static str;

    /// Handles one event. An error stops the batch at this event, which is
    /// retried on the next round.
    fn handle<'a>(&'a self, cx: &'a C, event: &'a DomainEvent) -> BoxFuture<'a, Result<(), String>>;

    /// Called before each batch of events is handled: what a consumer read
    /// for the previous batch (to answer many events with one query) is
    /// stale now.
    fn batch_started(&self) {}
}

/// Keeps a ticket's stored lifecycle status in step with everything that
/// moves it (runs ending, documents, approvals, pull requests), so a refresh
/// missed in a crash is caught up and lists never disagree with the rules.
pub struct TicketStatus;

impl Consumer for TicketStatus {
    fn name(&self) -> &'static str {
        "ticket-status"
    }

    fn handle<'a>(&'a self, state: &'a AppState, event: &'a DomainEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match event.ticket_id {
                Some(ticket) if event.event_type.moves_ticket_status() => {
                    match crate::service::tickets::try_refresh_status(&state.store, ticket).await {
                        // A ticket that no longer exists has no status to keep.
                        Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
                        Err(e) => Err(crate::error::error_chain(&e)),
                    }
                }
                _ => Ok(()),
            }
        })
    }
}

/// The consumers every server runs.
pub fn consumers() -> Vec<Arc<dyn Consumer>> {
    vec![
        Arc::new(TicketStatus),
        Arc::new(crate::sources::SourceRuns),
        Arc::new(crate::sources::SourceFeedback),
        Arc::new(crate::outbound::OutboundWebhooks::default()),
        Arc::new(crate::slack::SlackMirror),
        Arc::new(crate::schedules::ScheduleExecutions),
    ]
}

/// Delivers outbox events to `consumers` until `shutdown`, then gives up
/// their leases so another server takes over at once.
pub async fn deliver_loop(
    state: AppState,
    consumers: Vec<Arc<dyn Consumer>>,
    owner: String,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut gaps: Vec<GapWatch> = consumers.iter().map(|_| GapWatch::default()).collect();
    // How far each consumer had read when this server last ran it: a consumer
    // caught up with the outbox's head is not run (no lease write per poll).
    let mut caught_up: Vec<Option<i64>> = consumers.iter().map(|_| None).collect();
    let mut renewed = std::time::Instant::now();
    loop {
        let mut busy = false;
        let mut full = false;
        let head = state.store.outbox_head().await.ok();
        // Renew held leases now and then even when idle, so a lease we hold never lapses unseen.
        if renewed.elapsed() > LEASE / 3 {
            caught_up.iter_mut().for_each(|c| *c = None);
            renewed = std::time::Instant::now();
        }
        for ((consumer, gaps), caught) in consumers.iter().zip(gaps.iter_mut()).zip(caught_up.iter_mut()) {
            if head.is_some() && *caught == head {
                continue;
            }
            match deliver_once(&state.store, &state, consumer.as_ref(), &owner, LEASE, gaps).await {
                Ok(0) => *caught = head,
                Ok(n) => {
                    busy = true;
                    full |= n >= BATCH as usize;
                }
                Err(err) => {
                    tracing::error!(consumer = consumer.name(), error = %error_chain(&err), "outbox: store error")
                }
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(if busy { GATHER.min(poll) } else { poll }) => {}
        }
    }
    for consumer in &consumers {
        let _ = state.store.release_consumer(consumer.name(), &owner).await;
    }
}

/// One batch for one consumer: takes its lease (or returns 0 while another
/// server holds it), handles the events after its cursor in order, and
/// moves the cursor past the last one handled. Returns how many it handled.
pub async fn deliver_once<C: Sync>(
    store: &Store,
    cx: &C,
    consumer: &dyn Consumer<C>,
    owner: &str,
    lease: Duration,
    gaps: &mut GapWatch,
) -> Result<usize, StoreError> {
    let Some(cursor) = store.lease_consumer(consumer.name(), owner, lease).await? else { return Ok(0) };
    let mut events = store.list_outbox(cursor, BATCH).await?;
    events.truncate(gaps.ready(cursor, &events, GAP_WAIT));
    let mut last = cursor;
    let mut handled = 0;
    let mut error = None;
    let started = std::time::Instant::now();
    consumer.batch_started();
    for event in &events {
        // Acknowledge (and so renew the lease) well before it could lapse:
        // a lapsed lease would let another server read the same events.
        if started.elapsed() > lease / 2 {
            break;
        }
        match consumer.handle(cx, event).await {
            Ok(()) => {
                last = event.seq;
                handled += 1;
            }
            Err(message) => {
                tracing::warn!(consumer = consumer.name(), event = %event.id, error = message, "outbox consumer failed; retrying later");
                error = Some(message);
                break;
            }
        }
    }
    if !store.advance_consumer(consumer.name(), owner, last, handled as i64, error.as_deref(), lease).await? {
        tracing::warn!(consumer = consumer.name(), "lost the consumer's lease while handling a batch");
    }
    Ok(handled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64) -> DomainEvent {
        DomainEvent {
            seq,
            id: uuid::Uuid::now_v7(),
            event_type: viberglass_domain::EventType::JobQueued,
            project_id: None,
            ticket_id: None,
            job_id: None,
            data: serde_json::json!({}),
            created_at: viberglass_store::now(),
        }
    }

    #[test]
    fn a_reader_waits_at_a_gap_it_first_saw_and_passes_it_once_it_is_old() {
        let mut gaps = GapWatch::default();
        let events = vec![event(1), event(2), event(4), event(5)];
        assert_eq!(gaps.ready(0, &events, Duration::from_secs(60)), 2, "event 3 may still commit");
        assert_eq!(gaps.ready(2, &events[2..], Duration::from_secs(60)), 0, "still waiting");
        assert_eq!(gaps.ready(2, &events[2..], Duration::ZERO), 2, "waited long enough: a rollback");
        assert_eq!(gaps.ready(0, &[event(1), event(2)], Duration::ZERO), 2, "no gap, no wait");
        assert_eq!(GapWatch::default().ready(9, &[event(12)], Duration::from_secs(60)), 0);
    }
}
