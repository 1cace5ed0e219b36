//! The outbox: domain events written in the same transaction as the change
//! they describe, and named consumers that read them in order.
//!
//! Writers call [`emit!`] on their open transaction, so a change and its
//! event commit together or not at all. Each consumer has one row in
//! `event_consumers`: a cursor (the last event it handled) and a lease (the
//! server reading it now, until when). Only the lease holder reads, so no
//! event runs twice at once across servers; an expired lease passes to the
//! next server that asks, so a killed server's consumer resumes where it
//! stopped (at least once: the events after its last acknowledged cursor).
//!
//! PostgreSQL hands out ids before commit, so a transaction that commits
//! late can make a smaller id appear after a larger one was read: a reader
//! must wait at a gap in the ids for a while before it takes it for a
//! rolled-back transaction (the server's delivery loop does, timing the gap
//! from when it first saw it). On PostgreSQL, leases are timed by the
//! database's clock, so servers with skewed clocks still agree on them.

use std::time::Duration;

use viberglass_domain::{DomainEvent, JobId, ProjectId, TicketId};

use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored};
use crate::{Store, StoreError, on_pool};

pub(crate) const INSERT: &str = "INSERT INTO events (event_id, type, project_id, ticket_id, job_id, data, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const SELECT_AFTER: &str = "SELECT id, event_id, type, project_id, ticket_id, job_id, data, created_at FROM events \
     WHERE id > $1 ORDER BY id LIMIT $2";
const ENSURE_CONSUMER: &str =
    "INSERT INTO event_consumers (name, cursor, updated_at) VALUES ($1, 0, $2) ON CONFLICT (name) DO NOTHING";
const TAKE_LEASE_SQLITE: &str = "UPDATE event_consumers SET owner = $2, lease_until = $3, updated_at = $4 \
     WHERE name = $1 AND (owner IS NULL OR owner = $2 OR lease_until IS NULL OR lease_until < $4) RETURNING cursor";
const TAKE_LEASE_POSTGRES: &str = "UPDATE event_consumers \
     SET owner = $2, lease_until = clock_timestamp() + $3 * INTERVAL '1 millisecond', updated_at = $4 \
     WHERE name = $1 AND (owner IS NULL OR owner = $2 OR lease_until IS NULL OR lease_until < clock_timestamp()) \
     RETURNING cursor";
const ADVANCE_SQLITE: &str = "UPDATE event_consumers SET cursor = $3, handled = handled + $4, lease_until = $5, \
     last_error = $6, updated_at = $7 WHERE name = $1 AND owner = $2 AND cursor <= $3";
const ADVANCE_POSTGRES: &str = "UPDATE event_consumers SET cursor = $3, handled = handled + $4, \
     lease_until = clock_timestamp() + $5 * INTERVAL '1 millisecond', last_error = $6, updated_at = $7 \
     WHERE name = $1 AND owner = $2 AND cursor <= $3";
const RELEASE: &str =
    "UPDATE event_consumers SET owner = NULL, lease_until = NULL, updated_at = $3 WHERE name = $1 AND owner = $2";
const SELECT_CONSUMERS: &str = "SELECT c.name, c.cursor, c.owner, c.lease_until, c.handled, c.last_error, \
     (SELECT COUNT(*) FROM events e WHERE e.id > c.cursor) AS pending FROM event_consumers c ORDER BY c.name";
const SELECT_LAG: &str = "SELECT c.name, \
     (SELECT COUNT(*) FROM events e WHERE e.id > c.cursor) AS pending, \
     (SELECT e.created_at FROM events e WHERE e.id > c.cursor ORDER BY e.id LIMIT 1) AS oldest \
     FROM event_consumers c ORDER BY c.name";

/// Inserts one event, timed `$now`, through `$executor`.
macro_rules! insert_event {
    ($executor:expr, $event:expr, $now:expr) => {{
        let event: &viberglass_domain::NewEvent = $event;
        sqlx::query($crate::outbox::INSERT)
            .bind(uuid::Uuid::now_v7())
            .bind(event.event_type.as_str())
            .bind(event.project_id.map(|p| p.as_uuid()))
            .bind(event.ticket_id.map(|t| t.as_uuid()))
            .bind(event.job_id.map(|j| j.as_uuid()))
            .bind(sqlx::types::Json(event.data.clone()))
            .bind($crate::dbtime::DbTime($now))
            .execute($executor)
            .await
            .map(|_| ())
    }};
}
pub(crate) use insert_event;

/// Writes one event on an open transaction (`&mut *tx`), so it commits with
/// the change it describes. Fails when a test injected a failure.
macro_rules! emit {
    ($store:expr, $tx:expr, $event:expr) => {{
        if $store.take_injected_outbox_failure() {
            Err(sqlx::Error::Protocol("injected outbox failure".into()))
        } else {
            $crate::outbox::insert_event!(&mut *$tx, $event, $crate::now())
        }
    }};
}
pub(crate) use emit;

/// A consumer's position, as operators see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ConsumerState {
    pub name: String,
    pub cursor: i64,
    /// The server holding its lease, if any.
    pub owner: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub lease_until: Option<time::OffsetDateTime>,
    /// Events handled since it was created.
    pub handled: i64,
    /// Events written after its cursor.
    pub pending: i64,
    pub last_error: Option<String>,
}

/// How far behind a consumer is, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerLag {
    pub name: String,
    /// Events written after its cursor.
    pub pending: i64,
    /// The age of the oldest of those, in seconds (0 when caught up).
    pub lag_seconds: f64,
}

fn from_row(r: &impl RowExt) -> Result<DomainEvent, StoreError> {
    Ok(DomainEvent {
        seq: r.int("id")?,
        id: r.uuid("event_id")?,
        event_type: parse_stored("event", r.text("type")?)?,
        project_id: r.opt_uuid("project_id")?.map(ProjectId::from_uuid),
        ticket_id: r.opt_uuid("ticket_id")?.map(TicketId::from_uuid),
        job_id: r.opt_uuid("job_id")?.map(JobId::from_uuid),
        data: r.json("data")?,
        created_at: r.time("created_at")?,
    })
}

impl Store {
    /// Events after `after` (an outbox position; 0 for the start), in order.
    pub async fn list_outbox(&self, after: i64, limit: u32) -> Result<Vec<DomainEvent>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(SELECT_AFTER)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(from_row)
                .collect::<Result<Vec<_>, _>>()
        })
    }

    /// The newest event's position (0 for none): a reader caught up with it
    /// has nothing to do, and need not touch its lease.
    pub async fn outbox_head(&self) -> Result<i64, StoreError> {
        let head = on_pool!(self, |pool| {
            sqlx::query("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) AS head FROM events")
                .fetch_one(pool)
                .await
                .and_then(|r| r.int("head"))
        })?;
        Ok(head)
    }

    /// Takes (or renews) `consumer`'s lease for `owner` and returns its
    /// cursor; `None` while another owner's lease runs.
    pub async fn lease_consumer(&self, consumer: &str, owner: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        let now = crate::now();
        let until = now + time::Duration::try_from(ttl).unwrap_or(time::Duration::ZERO);
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let row = match &self.pool {
            crate::Pool::Sqlite(pool) => {
                sqlx::query(ENSURE_CONSUMER).bind(consumer).bind(DbTime(now)).execute(pool).await?;
                sqlx::query(TAKE_LEASE_SQLITE)
                    .bind(consumer)
                    .bind(owner)
                    .bind(DbTime(until))
                    .bind(DbTime(now))
                    .fetch_optional(pool)
                    .await?
                    .map(|r| r.int("cursor"))
                    .transpose()?
            }
            crate::Pool::Postgres(pool) => {
                sqlx::query(ENSURE_CONSUMER).bind(consumer).bind(DbTime(now)).execute(pool).await?;
                sqlx::query(TAKE_LEASE_POSTGRES)
                    .bind(consumer)
                    .bind(owner)
                    .bind(millis)
                    .bind(DbTime(now))
                    .fetch_optional(pool)
                    .await?
                    .map(|r| r.int("cursor"))
                    .transpose()?
            }
        };
        Ok(row)
    }

    /// Moves `consumer`'s cursor to `cursor` (having handled `handled` more
    /// events) and renews the lease. `false` when `owner` lost the lease.
    pub async fn advance_consumer(
        &self,
        consumer: &str,
        owner: &str,
        cursor: i64,
        handled: i64,
        last_error: Option<&str>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = crate::now();
        let until = now + time::Duration::try_from(ttl).unwrap_or(time::Duration::ZERO);
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let changed = match &self.pool {
            crate::Pool::Sqlite(pool) => sqlx::query(ADVANCE_SQLITE)
                .bind(consumer)
                .bind(owner)
                .bind(cursor)
                .bind(handled)
                .bind(DbTime(until))
                .bind(last_error)
                .bind(DbTime(now))
                .execute(pool)
                .await?
                .rows_affected(),
            crate::Pool::Postgres(pool) => sqlx::query(ADVANCE_POSTGRES)
                .bind(consumer)
                .bind(owner)
                .bind(cursor)
                .bind(handled)
                .bind(millis)
                .bind(last_error)
                .bind(DbTime(now))
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(changed == 1)
    }

    /// Gives up `consumer`'s lease (at shutdown), so another server may take it at once.
    pub async fn release_consumer(&self, consumer: &str, owner: &str) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(RELEASE).bind(consumer).bind(owner).bind(DbTime(crate::now())).execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    /// Every consumer's position and backlog.
    pub async fn consumer_states(&self) -> Result<Vec<ConsumerState>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(SELECT_CONSUMERS)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(ConsumerState {
                        name: r.text("name")?,
                        cursor: r.int("cursor")?,
                        owner: r.opt_text("owner")?,
                        lease_until: r.opt_time("lease_until")?,
                        handled: r.int("handled")?,
                        pending: r.int("pending")?,
                        last_error: r.opt_text("last_error")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    /// Every consumer's backlog: how many events and how old the oldest.
    pub async fn consumer_lag(&self) -> Result<Vec<ConsumerLag>, StoreError> {
        let now = crate::now();
        on_pool!(self, |pool| {
            sqlx::query(SELECT_LAG)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    let oldest = r.opt_time("oldest")?;
                    Ok(ConsumerLag {
                        name: r.text("name")?,
                        pending: r.int("pending")?,
                        lag_seconds: oldest.map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0)),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    /// Writes an event on its own (for changes that live outside the store,
    /// such as a pull request a worker opened on the forge).
    pub async fn emit_event(&self, event: &viberglass_domain::NewEvent) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            emit!(self, tx, event)?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// Makes the next event write fail, as if the database refused it
    /// between a change and its event (for tests of the outbox's atomicity).
    #[doc(hidden)]
    pub fn inject_outbox_failure(&self) {
        self.outbox_fault.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn take_injected_outbox_failure(&self) -> bool {
        self.outbox_fault.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}
