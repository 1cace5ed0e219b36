//! The clock the server's loops read "now" from. Production uses the system
//! clock; tests hand every server a shared [`ManualClock`] and move it on, so
//! a schedule due every minute runs fifty slots without fifty real minutes.
//!
//! Only decisions about *when* (which scheduled slot is due) read this clock;
//! the time stamps rows carry are the store's own (the real time they were
//! written).

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until told to move (tests). Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn at(t: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }

    pub fn set(&self, t: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    pub fn advance(&self, by: time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The clock a server is given.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = time::macros::datetime!(2026-03-29 00:59 UTC);
        let clock = ManualClock::at(start);
        let other = clock.clone();
        assert_eq!(other.now(), start);
        clock.advance(time::Duration::minutes(2));
        assert_eq!(other.now(), start + time::Duration::minutes(2));
        other.set(start);
        assert_eq!(clock.now(), start);
    }
}
