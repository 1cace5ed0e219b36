//! Outbound webhooks: subscriptions (settings as JSON, credentials sealed),
//! one delivery row per (subscription, event), claimed with a lease so one
//! server at a time attempts it, and every attempt.

use time::OffsetDateTime;
use viberglass_domain::{
    AttemptError, OutboundAttempt, OutboundDelivery, OutboundDeliveryId, OutboundStatus, Page, PageRequest, ProjectId,
    Subscription, SubscriptionId,
};

use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored};
use crate::secrets::SealedValue;
use crate::{Store, StoreError, on_pool};

const ENTITY: &str = "subscription";
const DELIVERY: &str = "outbound delivery";

macro_rules! subscription_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, project_id, settings, active, disabled_reason, disabled_at, failing_since, \
             credentials_ciphertext, credentials_nonce, credentials_key_id, secret_rotated_at, previous_secret_until, \
             created_at, updated_at FROM webhook_subscriptions ",
            $rest
        )
    };
}

macro_rules! delivery_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, subscription_id, event_id, event_type, status, attempts, next_attempt_at, last_status_code, \
             last_error, created_at, updated_at, delivered_at FROM outbound_deliveries ",
            $rest
        )
    };
}

/// A subscription with its sealed credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSubscription {
    pub subscription: Subscription,
    pub credentials: SealedValue,
}

/// A delivery taken for an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub id: OutboundDeliveryId,
    pub subscription_id: SubscriptionId,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub body: String,
    pub attempts: i64,
    /// Since when it has been retried (its creation, or its last redelivery): the maximum age counts from here.
    pub window_start: OffsetDateTime,
}

/// An event owed to a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutbound {
    pub subscription_id: SubscriptionId,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub body: String,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterAttempt {
    Succeeded,
    /// Tried again at this time.
    Retry(OffsetDateTime),
    /// Given up; with 410 Gone the subscription is turned off with this reason too.
    GiveUp {
        gone: Option<String>,
    },
}

fn subscription_from_row(r: &impl RowExt) -> Result<StoredSubscription, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { entity: ENTITY, detail };
    let mut s: Subscription =
        serde_json::from_str(&r.text("settings")?).map_err(|e| corrupt(format!("settings: {e}")))?;
    s.id = SubscriptionId::from_uuid(r.uuid("id")?);
    s.project_id = r.opt_uuid("project_id")?.map(ProjectId::from_uuid);
    s.active = r.flag("active")?;
    s.disabled_reason = r.opt_text("disabled_reason")?;
    s.disabled_at = r.opt_time("disabled_at")?;
    s.failing_since = r.opt_time("failing_since")?;
    s.secret_rotated_at = r.time("secret_rotated_at")?;
    s.previous_secret_until = r.opt_time("previous_secret_until")?;
    s.created_at = r.time("created_at")?;
    s.updated_at = r.time("updated_at")?;
    let credentials = SealedValue {
        ciphertext: r.opt_bytes("credentials_ciphertext")?.unwrap_or_default(),
        nonce: r.opt_bytes("credentials_nonce")?.unwrap_or_default(),
        key_id: r.text("credentials_key_id")?,
    };
    Ok(StoredSubscription { subscription: s, credentials })
}

fn delivery_from_row(r: &impl RowExt) -> Result<OutboundDelivery, StoreError> {
    Ok(OutboundDelivery {
        id: OutboundDeliveryId::from_uuid(r.uuid("id")?),
        subscription_id: SubscriptionId::from_uuid(r.uuid("subscription_id")?),
        event_id: r.uuid("event_id")?,
        event_type: r.text("event_type")?,
        status: parse_stored(DELIVERY, r.text("status")?)?,
        attempts: r.int("attempts")?,
        next_attempt_at: None,
        last_status_code: status_code(r, "last_status_code")?,
        last_error: r.opt_text("last_error")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        delivered_at: r.opt_time("delivered_at")?,
        attempt_log: Vec::new(),
    })
    .and_then(|mut d| {
        if d.status == OutboundStatus::Pending {
            d.next_attempt_at = Some(r.time("next_attempt_at")?);
        }
        Ok(d)
    })
}

fn status_code(r: &impl RowExt, col: &str) -> Result<Option<u16>, StoreError> {
    Ok(r.opt_int(col)?.and_then(|v| u16::try_from(v).ok()))
}

fn settings_json(s: &Subscription) -> Result<String, StoreError> {
    serde_json::to_string(s).map_err(|e| StoreError::Corrupt { entity: ENTITY, detail: e.to_string() })
}

impl Store {
    pub async fn create_subscription(
        &self,
        subscription: &Subscription,
        credentials: &SealedValue,
    ) -> Result<Subscription, StoreError> {
        if let Some(project) = subscription.project_id {
            let project = self.read_project(project).await?;
            if project.archived_at.is_some() {
                return Err(StoreError::ParentArchived { entity: "project", id: project.id.to_string() });
            }
        }
        let now = crate::now();
        let mut s = subscription.clone();
        s.created_at = now;
        s.updated_at = now;
        s.secret_rotated_at = now;
        let settings = settings_json(&s)?;
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO webhook_subscriptions (id, project_id, settings, active, credentials_ciphertext, \
                 credentials_nonce, credentials_key_id, secret_rotated_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8)",
            )
            .bind(s.id.as_uuid())
            .bind(s.project_id.map(|p| p.as_uuid()))
            .bind(settings.clone())
            .bind(s.active)
            .bind(credentials.ciphertext.clone())
            .bind(credentials.nonce.clone())
            .bind(credentials.key_id.clone())
            .bind(DbTime(now))
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(ENTITY, "webhook_subscriptions", e))?;
        Ok(s)
    }

    pub async fn get_subscription(&self, id: SubscriptionId) -> Result<StoredSubscription, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(subscription_sql!("WHERE id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| subscription_from_row(&r))
                .transpose()
        })?;
        row.ok_or_else(|| StoreError::NotFound { entity: ENTITY, id: id.to_string() })
    }

    /// Subscriptions turned off or failing now (any project's), each with
    /// the error of its newest delivery that has one (ids are UUIDv7: by
    /// `subscription_id, id`, the index the deliveries have).
    pub async fn troubled_subscriptions(&self, limit: u32) -> Result<Vec<(Subscription, Option<String>)>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(subscription_sql!(
                "WHERE failing_since IS NOT NULL OR disabled_reason IS NOT NULL ORDER BY id LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| subscription_from_row(r).map(|s| s.subscription))
            .collect::<Result<Vec<_>, _>>()
        })?;
        let mut troubled = Vec::with_capacity(rows.len());
        for subscription in rows {
            let error: Option<String> = on_pool!(self, |pool| {
                sqlx::query_scalar(
                    "SELECT last_error FROM outbound_deliveries WHERE subscription_id = $1 AND last_error IS NOT NULL \
                     ORDER BY id DESC LIMIT 1",
                )
                .bind(subscription.id.as_uuid())
                .fetch_optional(pool)
                .await?
            });
            troubled.push((subscription, error));
        }
        Ok(troubled)
    }

    /// A project's subscriptions, or with `None` the instance-wide ones.
    pub async fn list_subscriptions(&self, project: Option<ProjectId>) -> Result<Vec<Subscription>, StoreError> {
        on_pool!(self, |pool| {
            let rows = match project {
                Some(p) => {
                    sqlx::query(subscription_sql!("WHERE project_id = $1 ORDER BY id LIMIT 200"))
                        .bind(p.as_uuid())
                        .fetch_all(pool)
                        .await?
                }
                None => {
                    sqlx::query(subscription_sql!("WHERE project_id IS NULL ORDER BY id LIMIT 200"))
                        .fetch_all(pool)
                        .await?
                }
            };
            rows.iter().map(|r| subscription_from_row(r).map(|s| s.subscription)).collect()
        })
    }

    /// Stores a changed subscription (and its credentials), guarded by the `updated_at` it was read with.
    /// Returns the stored subscription, or `None` when someone else changed it meanwhile (read again).
    pub async fn save_subscription(
        &self,
        subscription: &Subscription,
        credentials: &SealedValue,
        read_at: OffsetDateTime,
    ) -> Result<Option<Subscription>, StoreError> {
        let now = crate::now();
        let mut s = subscription.clone();
        s.updated_at = now;
        let settings = settings_json(&s)?;
        let changed = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE webhook_subscriptions SET settings = $2, active = $3, disabled_reason = $4, disabled_at = $5, \
                 failing_since = $6, credentials_ciphertext = $7, credentials_nonce = $8, credentials_key_id = $9, \
                 secret_rotated_at = $10, previous_secret_until = $11, updated_at = $12 WHERE id = $1 AND updated_at = $13",
            )
            .bind(s.id.as_uuid())
            .bind(settings.clone())
            .bind(s.active)
            .bind(s.disabled_reason.clone())
            .bind(s.disabled_at.map(DbTime))
            .bind(s.failing_since.map(DbTime))
            .bind(credentials.ciphertext.clone())
            .bind(credentials.nonce.clone())
            .bind(credentials.key_id.clone())
            .bind(DbTime(s.secret_rotated_at))
            .bind(s.previous_secret_until.map(DbTime))
            .bind(DbTime(now))
            .bind(DbTime(read_at))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok((changed == 1).then_some(s))
    }

    /// Every subscription's sealed credentials, for key rotation.
    pub async fn subscription_credentials(&self) -> Result<Vec<(SubscriptionId, SealedValue)>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(subscription_sql!("ORDER BY id")).fetch_all(pool).await?;
            rows.iter().map(|r| subscription_from_row(r).map(|s| (s.subscription.id, s.credentials))).collect()
        })
    }

    /// Stores credentials re-sealed under another key (the values are unchanged), only if they are still the
    /// ones `old` read (a concurrent change wins). Returns whether it wrote.
    pub async fn reseal_subscription(
        &self,
        id: SubscriptionId,
        old: &SealedValue,
        sealed: &SealedValue,
    ) -> Result<bool, StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE webhook_subscriptions SET credentials_ciphertext = $2, credentials_nonce = $3, \
                 credentials_key_id = $4 WHERE id = $1 AND credentials_key_id = $5 AND credentials_nonce = $6",
            )
            .bind(id.as_uuid())
            .bind(sealed.ciphertext.clone())
            .bind(sealed.nonce.clone())
            .bind(sealed.key_id.clone())
            .bind(old.key_id.clone())
            .bind(old.nonce.clone())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(changed == 1)
    }

    /// How many subscriptions a project has (`None`: instance-wide ones).
    pub async fn count_subscriptions(&self, project: Option<ProjectId>) -> Result<i64, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM webhook_subscriptions WHERE (project_id = $1 OR ($1 IS NULL AND project_id IS NULL))",
            )
            .bind(project.map(|p| p.as_uuid()))
            .fetch_one(pool)
            .await
        })?;
        Ok(n)
    }

    /// Whether a subscription has a delivery of `event_type` still pending (attempted or not).
    pub async fn has_pending(&self, subscription: SubscriptionId, event_type: &str) -> Result<bool, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM outbound_deliveries WHERE subscription_id = $1 AND event_type = $2 \
                 AND status = 'pending'",
            )
            .bind(subscription.as_uuid())
            .bind(event_type.to_owned())
            .fetch_one(pool)
            .await
        })?;
        Ok(n > 0)
    }

    /// Hands claimed deliveries back unattempted, due again at `at` (a server over its share for a subscription).
    pub async fn release_outbound(
        &self,
        owner: &str,
        ids: &[viberglass_domain::OutboundDeliveryId],
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        for id in ids {
            on_pool!(self, |pool| {
                sqlx::query(
                    "UPDATE outbound_deliveries SET next_attempt_at = $3, lease_owner = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                )
                .bind(id.as_uuid())
                .bind(owner.to_owned())
                .bind(DbTime(at))
                .execute(pool)
                .await
                .map(|_| ())
            })?;
        }
        Ok(())
    }

    /// The active subscriptions an event of `project` at `at` goes to: instance-wide ones and the project's,
    /// created no later than the event.
    pub async fn subscriptions_for_event(
        &self,
        project: Option<ProjectId>,
        at: OffsetDateTime,
    ) -> Result<Vec<Subscription>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(subscription_sql!(
                "WHERE active AND (project_id IS NULL OR project_id = $1) AND created_at <= $2 ORDER BY id LIMIT 500"
            ))
            .bind(project.map(|p| p.as_uuid()))
            .bind(DbTime(at))
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| subscription_from_row(r).map(|s| s.subscription)).collect()
        })
    }

    /// The active subscriptions of every project and of none, in id order, at most `limit`.
    pub async fn active_subscriptions(&self, limit: u32) -> Result<Vec<Subscription>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(subscription_sql!("WHERE active ORDER BY id LIMIT $1"))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| subscription_from_row(r).map(|s| s.subscription)).collect()
        })
    }

    /// Owes each event to its subscription once (a repeat of the same pair adds nothing). Returns how many rows
    /// were new.
    pub async fn enqueue_outbound(&self, owed: &[NewOutbound]) -> Result<u64, StoreError> {
        if owed.is_empty() {
            return Ok(0);
        }
        let now = crate::now();
        let added = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let mut added = 0;
            for o in owed {
                added += sqlx::query(
                    "INSERT INTO outbound_deliveries (id, subscription_id, event_id, event_type, body, status, attempts, \
                     next_attempt_at, window_start, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6, $6) \
                     ON CONFLICT (subscription_id, event_id) DO NOTHING",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(o.subscription_id.as_uuid())
                .bind(o.event_id)
                .bind(o.event_type.clone())
                .bind(o.body.clone())
                .bind(DbTime(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(added)
        }
        .await)
        .map_err(|e| StoreError::from_write(DELIVERY, "outbound_deliveries", e))?;
        Ok(added)
    }

    /// Takes up to `limit` due deliveries of active subscriptions for `lease` under `owner`: until it lapses, no
    /// other server attempts them. Subscriptions of which `owner` holds `per_subscription` rows already are
    /// passed over.
    pub async fn claim_outbound(
        &self,
        owner: &str,
        limit: i64,
        per_subscription: i64,
        lease: time::Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // The rows are picked once (a CTE; on PostgreSQL materialized and locked, skipping rows another server
        // is picking), then leased; the guard on the UPDATE re-checks them. A subscription of which this owner
        // already holds `$5` rows is passed over, so one busy subscription cannot fill a server's share.
        macro_rules! claim_sql {
            ($materialized:literal, $lock:literal) => {
                concat!(
                    "WITH held AS (SELECT subscription_id FROM outbound_deliveries WHERE lease_owner = $3 \
                     AND status = 'pending' AND next_attempt_at > $1 GROUP BY subscription_id HAVING COUNT(*) >= $5), \
                     picked AS ",
                    $materialized,
                    "(SELECT d.id FROM outbound_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id \
                     WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND s.active \
                     AND d.subscription_id NOT IN (SELECT subscription_id FROM held) ORDER BY d.next_attempt_at \
                     LIMIT $4",
                    $lock,
                    ") UPDATE outbound_deliveries SET next_attempt_at = $2, lease_owner = $3 \
                     WHERE id IN (SELECT id FROM picked) AND status = 'pending' AND next_attempt_at <= $1 \
                     RETURNING id, subscription_id, event_id, event_type, body, attempts, window_start"
                )
            };
        }
        const SQL: &str = claim_sql!("", "");
        const SQL_PG: &str = claim_sql!("MATERIALIZED ", " FOR UPDATE OF d SKIP LOCKED");
        let now = crate::now();
        let rows = match &self.pool {
            crate::Pool::Sqlite(pool) => sqlx::query(SQL)
                .bind(DbTime(now))
                .bind(DbTime(now + lease))
                .bind(owner.to_owned())
                .bind(limit)
                .bind(per_subscription)
                .fetch_all(pool)
                .await?
                .iter()
                .map(claimed_from_row)
                .collect::<Result<Vec<_>, _>>()?,
            crate::Pool::Postgres(pool) => sqlx::query(SQL_PG)
                .bind(DbTime(now))
                .bind(DbTime(now + lease))
                .bind(owner.to_owned())
                .bind(limit)
                .bind(per_subscription)
                .fetch_all(pool)
                .await?
                .iter()
                .map(claimed_from_row)
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(rows)
    }

    /// Records one attempt and what follows it, in one transaction: the attempt row, the delivery (only while
    /// `owner` still holds it), and the subscription's failing streak (cleared by a success, started by a
    /// failure; a 410 turns the subscription off). Returns whether the delivery moved (`false`: the lease was
    /// lost, so only the attempt was recorded) and since when the subscription has been failing.
    pub async fn record_outbound_attempt(
        &self,
        delivery: &ClaimedDelivery,
        owner: &str,
        attempt: &OutboundAttempt,
        after: &AfterAttempt,
    ) -> Result<(bool, Option<OffsetDateTime>), StoreError> {
        let now = crate::now();
        let (status, next, delivered) = match after {
            AfterAttempt::Succeeded => ("succeeded", now, Some(DbTime(now))),
            AfterAttempt::Retry(at) => ("pending", *at, None),
            AfterAttempt::GiveUp { .. } => ("failed", now, None),
        };
        let gone = match after {
            AfterAttempt::GiveUp { gone } => gone.clone(),
            _ => None,
        };
        let failing = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            sqlx::query(
                "INSERT INTO outbound_attempts (delivery_id, attempt, started_at, duration_ms, status_code, response, \
                 error_kind, error, server) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (delivery_id, attempt) DO NOTHING",
            )
            .bind(delivery.id.as_uuid())
            .bind(attempt.attempt)
            .bind(DbTime(attempt.started_at))
            .bind(attempt.duration_ms)
            .bind(attempt.status_code.map(i64::from))
            .bind(attempt.response.clone())
            .bind(attempt.error_kind.map(|k| k.as_str()))
            .bind(attempt.error.clone())
            .bind(attempt.server.clone())
            .execute(&mut *tx)
            .await?;
            let moved = sqlx::query(
                "UPDATE outbound_deliveries SET status = $3, attempts = attempts + 1, next_attempt_at = $4, \
                 lease_owner = NULL, last_status_code = $5, last_error = $6, updated_at = $7, \
                 delivered_at = COALESCE($8, delivered_at) WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
            )
            .bind(delivery.id.as_uuid())
            .bind(owner.to_owned())
            .bind(status)
            .bind(DbTime(next))
            .bind(attempt.status_code.map(i64::from))
            .bind(attempt.error.clone())
            .bind(DbTime(now))
            .bind(delivered)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            // An attempt made after the lease was lost is recorded, and changes nothing else.
            if !moved {
                tx.commit().await?;
                return Ok::<_, sqlx::Error>((false, None));
            }
            if attempt.error.is_none() {
                sqlx::query(
                    "UPDATE webhook_subscriptions SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
                )
                .bind(delivery.subscription_id.as_uuid())
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE webhook_subscriptions SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL",
                )
                .bind(delivery.subscription_id.as_uuid())
                .bind(DbTime(attempt.started_at))
                .execute(&mut *tx)
                .await?;
            }
            if let Some(reason) = &gone {
                sqlx::query(
                    "UPDATE webhook_subscriptions SET active = FALSE, disabled_reason = $2, disabled_at = $3, \
                     updated_at = $3 WHERE id = $1 AND active",
                )
                .bind(delivery.subscription_id.as_uuid())
                .bind(reason.clone())
                .bind(DbTime(now))
                .execute(&mut *tx)
                .await?;
            }
            let failing: Option<DbTime> =
                sqlx::query_scalar("SELECT failing_since FROM webhook_subscriptions WHERE id = $1")
                    .bind(delivery.subscription_id.as_uuid())
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>((true, failing.map(|t| t.0)))
        }
        .await)?;
        Ok(failing)
    }

    /// Turns a subscription off with a reason, once (returns whether this call did).
    pub async fn disable_subscription(&self, id: SubscriptionId, reason: &str) -> Result<bool, StoreError> {
        let now = crate::now();
        let done = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE webhook_subscriptions SET active = FALSE, disabled_reason = $2, disabled_at = $3, updated_at = $3 \
                 WHERE id = $1 AND active",
            )
            .bind(id.as_uuid())
            .bind(reason.to_owned())
            .bind(DbTime(now))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// A subscription's deliveries, newest first; `failing` narrows them to the failing ones (given up, or
    /// pending after a failed attempt).
    pub async fn list_outbound(
        &self,
        subscription: SubscriptionId,
        status: Option<OutboundStatus>,
        failing: bool,
        page: PageRequest,
    ) -> Result<Page<OutboundDelivery>, StoreError> {
        let limit = i64::from(page.limit) + 1;
        let rows = on_pool!(self, |pool| {
            let rows = sqlx::query(delivery_sql!(
                "WHERE subscription_id = $1 AND ($2 IS NULL OR id < $2) AND ($3 IS NULL OR status = $3) \
                 AND ($4 = 0 OR status = 'failed' OR (status = 'pending' AND attempts > 0)) ORDER BY id DESC LIMIT $5"
            ))
            .bind(subscription.as_uuid())
            .bind(page.after.map(|c| c.id()))
            .bind(status.map(|s| s.as_str()))
            .bind(i64::from(failing))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(delivery_from_row).collect::<Result<Vec<_>, StoreError>>()
        })?;
        Ok(Page::from_rows(rows, page.limit, |d| d.id.as_uuid()))
    }

    /// One delivery with its attempts, oldest first.
    pub async fn get_outbound(&self, id: OutboundDeliveryId) -> Result<OutboundDelivery, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(delivery_sql!("WHERE id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| delivery_from_row(&r))
                .transpose()
        })?;
        let mut delivery = row.ok_or_else(|| StoreError::NotFound { entity: DELIVERY, id: id.to_string() })?;
        delivery.attempt_log = on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT attempt, started_at, duration_ms, status_code, response, error_kind, error, server \
                 FROM outbound_attempts WHERE delivery_id = $1 ORDER BY attempt LIMIT 500",
            )
            .bind(id.as_uuid())
            .fetch_all(pool)
            .await?;
            rows.iter().map(attempt_from_row).collect::<Result<Vec<_>, StoreError>>()
        })?;
        Ok(delivery)
    }

    /// The body a delivery sends.
    pub async fn outbound_body(&self, id: OutboundDeliveryId) -> Result<String, StoreError> {
        let body: Option<String> = on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT body FROM outbound_deliveries WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await
        })?;
        body.ok_or_else(|| StoreError::NotFound { entity: DELIVERY, id: id.to_string() })
    }

    /// Makes a delivery of `subscription` due now again (whatever became of it), its maximum age counted from
    /// now, unless an attempt holds it right now. Returns whether it did.
    pub async fn redeliver_outbound(
        &self,
        subscription: SubscriptionId,
        id: OutboundDeliveryId,
    ) -> Result<bool, StoreError> {
        let now = crate::now();
        let done = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbound_deliveries SET status = 'pending', next_attempt_at = $3, window_start = $3, \
                 lease_owner = NULL, updated_at = $3 WHERE id = $1 AND subscription_id = $2 AND body <> '' \
                 AND NOT (status = 'pending' AND lease_owner IS NOT NULL AND next_attempt_at > $3)",
            )
            .bind(id.as_uuid())
            .bind(subscription.as_uuid())
            .bind(DbTime(now))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Makes every failed delivery of `subscription` created since `since` due now again. Returns how many.
    pub async fn redeliver_failed_outbound(
        &self,
        subscription: SubscriptionId,
        since: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let now = crate::now();
        let done = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbound_deliveries SET status = 'pending', next_attempt_at = $3, window_start = $3, \
                 lease_owner = NULL, updated_at = $3 WHERE subscription_id = $1 AND status = 'failed' AND created_at >= $2",
            )
            .bind(subscription.as_uuid())
            .bind(DbTime(since))
            .bind(DbTime(now))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done)
    }

    /// Empties the bodies of deliveries that succeeded before `before` (the rows and their attempts stay).
    /// Returns how many.
    pub async fn prune_outbound_bodies(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbound_deliveries SET body = '' WHERE status = 'succeeded' AND body <> '' AND delivered_at < $1",
            )
            .bind(DbTime(before))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done)
    }

    /// Deliveries by status (for `/metrics`).
    pub async fn outbound_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("SELECT status, COUNT(*) AS n FROM outbound_deliveries GROUP BY status ORDER BY status")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok::<_, StoreError>((r.text("status")?, r.int("n")?)))
                .collect()
        })
    }

    /// A subscription's deliveries by status, and how many of the pending ones are failing.
    pub async fn subscription_counts(&self, id: SubscriptionId) -> Result<(i64, i64, i64, i64), StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT CAST(COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT) AS pending, \
                 CAST(COALESCE(SUM(CASE WHEN status = 'pending' AND attempts > 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS retrying, \
                 CAST(COALESCE(SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END), 0) AS BIGINT) AS succeeded, \
                 CAST(COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS BIGINT) AS failed \
                 FROM outbound_deliveries WHERE subscription_id = $1",
            )
            .bind(id.as_uuid())
            .fetch_one(pool)
            .await
            .and_then(|r| Ok((r.int("pending")?, r.int("retrying")?, r.int("succeeded")?, r.int("failed")?)))
        })?;
        Ok(row)
    }
}

fn claimed_from_row(r: &impl RowExt) -> Result<ClaimedDelivery, StoreError> {
    Ok(ClaimedDelivery {
        id: OutboundDeliveryId::from_uuid(r.uuid("id")?),
        subscription_id: SubscriptionId::from_uuid(r.uuid("subscription_id")?),
        event_id: r.uuid("event_id")?,
        event_type: r.text("event_type")?,
        body: r.text("body")?,
        attempts: r.int("attempts")?,
        window_start: r.time("window_start")?,
    })
}

fn attempt_from_row(r: &impl RowExt) -> Result<OutboundAttempt, StoreError> {
    Ok(OutboundAttempt {
        attempt: r.int("attempt")?,
        started_at: r.time("started_at")?,
        duration_ms: r.int("duration_ms")?,
        status_code: status_code(r, "status_code")?,
        response: r.opt_text("response")?,
        error_kind: r.opt_text("error_kind")?.map(|k| parse_stored::<AttemptError>(DELIVERY, k)).transpose()?,
        error: r.opt_text("error")?,
        server: r.text("server")?,
    })
}
