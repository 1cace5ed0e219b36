//! Optimistic updates: read a row, change it in Rust, write it back only if
//! nobody else wrote it meanwhile (`WHERE updated_at = $read`), and retry a
//! few times if someone did. Portable across both backends (no `FOR UPDATE`)
//! and no edit is silently lost.

use time::OffsetDateTime;

use crate::StoreError;

/// A row with an `updated_at` column that guards its updates.
pub(crate) trait Versioned: Clone + PartialEq {
    fn updated_at(&self) -> OffsetDateTime;
    fn set_updated_at(&mut self, at: OffsetDateTime);
}

impl Versioned for viberglass_domain::Project {
    fn updated_at(&self) -> OffsetDateTime {
        self.updated_at
    }
    fn set_updated_at(&mut self, at: OffsetDateTime) {
        self.updated_at = at;
    }
}

impl Versioned for viberglass_domain::Ticket {
    fn updated_at(&self) -> OffsetDateTime {
        self.updated_at
    }
    fn set_updated_at(&mut self, at: OffsetDateTime) {
        self.updated_at = at;
    }
}

impl Versioned for viberglass_domain::Integration {
    fn updated_at(&self) -> OffsetDateTime {
        self.updated_at
    }
    fn set_updated_at(&mut self, at: OffsetDateTime) {
        self.updated_at = at;
    }
}

const ATTEMPTS: usize = 5;

/// Applies `change` to the row `read` returns. `write(new, read_at)` must
/// store `new` only where `updated_at = read_at` and return the number of
/// rows it changed. A change that changes nothing writes nothing.
pub(crate) async fn modify<T, R, W>(
    entity: &'static str,
    read: impl Fn() -> R,
    write: impl Fn(T, OffsetDateTime) -> W,
    change: impl Fn(&mut T),
) -> Result<T, StoreError>
where
    T: Versioned,
    R: Future<Output = Result<T, StoreError>>,
    W: Future<Output = Result<u64, StoreError>>,
{
    for _ in 0..ATTEMPTS {
        let before = read().await?;
        let mut after = before.clone();
        change(&mut after);
        if after == before {
            return Ok(before);
        }
        // Strictly later than what we read, even if the clock has not moved.
        after.set_updated_at(crate::now().max(before.updated_at() + time::Duration::microseconds(1)));
        if write(after.clone(), before.updated_at()).await? == 1 {
            return Ok(after);
        }
    }
    Err(StoreError::Contended { entity })
}
