//! Wake-ups: the dispatcher and the reaper sleep until the jobs change
//! instead of polling the database on a short timer.
//!
//! Every store write that can make a job dispatchable or change the set of
//! live jobs (a job queued, requeued, claimed or ended) calls
//! [`Wakes::jobs_changed`] after it commits. That wakes this process's loops
//! at once and, on PostgreSQL, marks the change for the sender task, which
//! announces it on the `viberglass_wake` channel (one notification for every
//! burst of changes, sent outside the writes' transactions so they never wait
//! on PostgreSQL's notification lock). Every server's listener (the one the
//! credential cache uses) wakes its own loops when it hears one.
//!
//! A loop may sleep long only while [`Wakes::live`] says its listener hears:
//! otherwise it polls at its configured interval, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// The channel job changes are announced on.
pub(crate) const CHANNEL: &str = "viberglass_wake";
/// The payload for a change to the jobs.
pub(crate) const JOBS: &str = "jobs";

#[derive(Debug, Default)]
pub(crate) struct Wakes {
    /// Whether this store's listener hears other servers' changes now.
    live: AtomicBool,
    dispatcher: Arc<Notify>,
    reaper: Arc<Notify>,
    /// A change not announced to other servers yet.
    unsent: AtomicBool,
    send: Notify,
}

impl Wakes {
    pub(crate) fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub(crate) fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        // Whoever sleeps long on the strength of the listener re-decides now.
        self.wake_local();
    }

    /// A job changed here: wake this process's loops, and tell the others.
    pub(crate) fn jobs_changed(&self) {
        self.wake_local();
        self.unsent.store(true, Ordering::Release);
        self.send.notify_one();
    }

    /// Another server announced a change.
    pub(crate) fn heard(&self, payload: &str) {
        if payload == JOBS {
            self.wake_local();
        }
    }

    fn wake_local(&self) {
        // `notify_one` keeps a permit when the loop is busy, so a change made
        // during its round is not missed.
        self.dispatcher.notify_one();
        self.reaper.notify_one();
    }

    pub(crate) fn dispatcher(&self) -> Arc<Notify> {
        self.dispatcher.clone()
    }

    pub(crate) fn reaper(&self) -> Arc<Notify> {
        self.reaper.clone()
    }
}

/// Announces this store's job changes to the other servers until `stop`.
pub(crate) async fn send(pool: sqlx::PgPool, wakes: Arc<Wakes>, stop: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            () = stop.notified() => return,
            () = wakes.send.notified() => {}
        }
        if !wakes.unsent.swap(false, Ordering::AcqRel) {
            continue;
        }
        let announced = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(JOBS).execute(&pool).await;
        if let Err(err) = announced {
            if pool.is_closed() {
                return;
            }
            tracing::debug!(error = %err, "could not announce a job change; the other servers find it when they poll");
        }
    }
}
