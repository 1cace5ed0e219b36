//! What a diagnostics bundle reads beyond the entities' own queries: the
//! webhook deliveries, inbound and outbound, that went wrong in a window.

use time::OffsetDateTime;

use crate::dbtime::DbTime;
use crate::rows::RowExt;
use crate::{Store, StoreError, on_pool};

/// One delivery that failed or was refused, either way it went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TroubledDelivery {
    /// `inbound` (a ticket source's webhook) or `outbound` (a subscription's).
    pub direction: &'static str,
    pub id: uuid::Uuid,
    /// The inbound provider, or the outbound subscription's id.
    pub source: String,
    /// The inbound event, or the outbound event type.
    pub event: String,
    pub status: String,
    /// The `error_message` (inbound) or `last_error` (outbound).
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Store {
    /// Inbound deliveries refused or failed, and outbound ones with an error, last changed in `[since, until]`,
    /// newest first, at most `limit` of each.
    pub async fn troubled_deliveries(
        &self,
        since: OffsetDateTime,
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TroubledDelivery>, StoreError> {
        let (since, until, limit) = (DbTime(since), DbTime(until), i64::from(limit));
        let mut found = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT id, provider, event, status, error_message, updated_at FROM webhook_deliveries \
                 WHERE status IN ('rejected', 'failed') AND updated_at >= $1 AND updated_at <= $2 \
                 ORDER BY updated_at DESC LIMIT $3",
            )
            .bind(since)
            .bind(until)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok::<_, sqlx::Error>(TroubledDelivery {
                    direction: "inbound",
                    id: r.uuid("id")?,
                    source: r.text("provider")?,
                    event: r.text("event")?,
                    status: r.text("status")?,
                    error: r.opt_text("error_message")?,
                    at: r.time("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
        })?;
        let outbound = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT id, subscription_id, event_type, status, last_error, updated_at FROM outbound_deliveries \
                 WHERE last_error IS NOT NULL AND updated_at >= $1 AND updated_at <= $2 \
                 ORDER BY updated_at DESC LIMIT $3",
            )
            .bind(since)
            .bind(until)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok::<_, sqlx::Error>(TroubledDelivery {
                    direction: "outbound",
                    id: r.uuid("id")?,
                    source: r.uuid("subscription_id")?.to_string(),
                    event: r.text("event_type")?,
                    status: r.text("status")?,
                    error: r.opt_text("last_error")?,
                    at: r.time("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
        })?;
        found.extend(outbound);
        Ok(found)
    }
}
