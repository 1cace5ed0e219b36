//! Inbound webhooks: configurations (settings as JSON, the secret sealed),
//! deliveries, where sourced tickets came from, and the feedback owed to
//! their sources. A delivery that changes anything commits its row, the
//! ticket change and their events in one transaction; the delivery id is
//! unique per configuration among applied deliveries, so a repeat is a
//! duplicate and changes nothing.

use time::OffsetDateTime;
use viberglass_domain::{
    Delivery, DeliveryFilter, DeliveryId, DeliveryPayload, DeliveryStatus, EventType, JobId, NewEvent, Page,
    PageRequest, Phase, ProjectId, Ticket, TicketId, TicketSource, WebhookConfig, WebhookConfigId,
};

use crate::dbtime::DbTime;
use crate::outbox::emit;
use crate::rows::{RowExt, parse_stored};
use crate::secrets::SealedValue;
use crate::tickets::insert_ticket;
use crate::{Store, StoreError, on_pool};

const ENTITY: &str = "webhook";

macro_rules! feedback_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, ticket_id, job_id, config_id, body, label, status, attempts, attempt_log, \
     last_error, next_attempt_at, created_at FROM source_feedback ",
            $rest
        )
    };
}

/// How many refused (unverified) deliveries per configuration keep their body.
pub const KEPT_REFUSED_PAYLOADS: i64 = 100;

/// A configuration with its sealed secret.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWebhookConfig {
    pub config: WebhookConfig,
    pub secret: SealedValue,
}

macro_rules! config_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, project_id, provider, settings, secret_ciphertext, secret_nonce, \
     secret_key_id, secret_rotated_at, created_at, updated_at FROM webhook_configs ",
            $rest
        )
    };
}

fn config_from_row(r: &impl RowExt) -> Result<StoredWebhookConfig, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { entity: ENTITY, detail };
    let mut config: WebhookConfig =
        serde_json::from_str(&r.text("settings")?).map_err(|e| corrupt(format!("settings: {e}")))?;
    config.id = WebhookConfigId::from_uuid(r.uuid("id")?);
    config.project_id = ProjectId::from_uuid(r.uuid("project_id")?);
    config.provider = parse_stored(ENTITY, r.text("provider")?)?;
    config.path = WebhookConfig::path_for(config.provider, config.id);
    config.secret_rotated_at = r.time("secret_rotated_at")?;
    config.created_at = r.time("created_at")?;
    config.updated_at = r.time("updated_at")?;
    let secret = SealedValue {
        ciphertext: r.opt_bytes("secret_ciphertext")?.unwrap_or_default(),
        nonce: r.opt_bytes("secret_nonce")?.unwrap_or_default(),
        key_id: r.text("secret_key_id")?,
    };
    Ok(StoredWebhookConfig { config, secret })
}

macro_rules! delivery_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, config_id, project_id, provider, delivery_key, event, status, \
     error_message, response_status, ticket_id, redeliveries, received_at, updated_at FROM webhook_deliveries ",
            $rest
        )
    };
}

fn delivery_from_row(r: &impl RowExt) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: DeliveryId::from_uuid(r.uuid("id")?),
        config_id: r.opt_uuid("config_id")?.map(WebhookConfigId::from_uuid),
        project_id: r.opt_uuid("project_id")?.map(ProjectId::from_uuid),
        provider: r.text("provider")?,
        delivery_key: r.text("delivery_key")?,
        event: r.text("event")?,
        status: parse_stored(ENTITY, r.text("status")?)?,
        error_message: r.opt_text("error_message")?,
        response_status: u16::try_from(r.int("response_status")?).unwrap_or(0),
        ticket_id: r.opt_uuid("ticket_id")?.map(TicketId::from_uuid),
        redeliveries: r.int("redeliveries")?,
        received_at: r.time("received_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// A delivery to record as it was received.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub config_id: Option<WebhookConfigId>,
    pub project_id: Option<ProjectId>,
    pub provider: String,
    pub delivery_key: String,
    pub event: String,
    pub status: DeliveryStatus,
    pub error_message: Option<String>,
    pub response_status: u16,
    pub ticket_id: Option<TicketId>,
    /// The headers kept (JSON object).
    pub headers: serde_json::Value,
    pub payload: Option<Vec<u8>>,
    /// The body's SHA-256 (hex): a body is applied once per configuration, whatever its delivery id.
    pub body_sha256: String,
    pub received_at: OffsetDateTime,
}

/// A run a delivery asks for, started later by the `source-runs` consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedRun {
    pub phase: Phase,
    pub clanker: String,
    /// Why: "new ticket", "comment by alice"….
    pub reason: String,
}

/// What an applied delivery changes, in the same transaction as its row.
#[derive(Debug, Clone)]
pub enum DeliveryChange {
    /// Nothing (an ignored delivery): only the row.
    Nothing,
    /// A new ticket, where it came from, and perhaps a run.
    File { ticket: Box<Ticket>, config_id: WebhookConfigId, locator: serde_json::Value, run: Option<RequestedRun> },
    /// New values for a sourced ticket's fields (`archive` when the source closed it), and perhaps a run.
    Update { ticket: Box<Ticket>, archive: bool, run: Option<RequestedRun> },
    /// A run on a ticket (a comment trigger).
    Run { ticket: Box<Ticket>, run: RequestedRun },
}

/// How applying a delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Recorded and applied.
    Done(Delivery),
    /// The configuration already applied this delivery id: nothing changed (the duplicate is recorded).
    Duplicate(Delivery),
    /// A ticket for the same source issue was filed meanwhile: read it again and apply as an update.
    TicketExists,
}

const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries (id, config_id, project_id, provider, delivery_key, \
     event, status, error_message, response_status, ticket_id, headers, payload, redeliveries, received_at, \
     updated_at, body_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $13, $14)";
/// A redelivery takes over its own row (a refused or failed one).
const REAPPLY_DELIVERY: &str = "UPDATE webhook_deliveries SET status = $2, event = $3, error_message = $4, \
     response_status = $5, ticket_id = COALESCE($6, ticket_id), redeliveries = redeliveries + 1, updated_at = $7 \
     WHERE id = $1 AND status IN ('rejected', 'failed')";
const UPDATE_TICKET: &str = "UPDATE tickets SET title = $2, description = $3, severity = $4, external_url = $5, \
     category = $6, metadata = $7, archived_at = $8, updated_at = $9 WHERE id = $1";

fn run_event(ticket: &Ticket, run: &RequestedRun, delivery: DeliveryId) -> NewEvent {
    NewEvent::new(
        EventType::TicketRunRequested,
        serde_json::json!({"ticket_id": ticket.id, "phase": run.phase, "clanker": run.clanker,
            "reason": run.reason, "delivery_id": delivery}),
    )
    .project(ticket.project_id)
    .ticket(Some(ticket.id))
}

impl Store {
    pub async fn create_webhook_config(
        &self,
        config: &WebhookConfig,
        secret: &SealedValue,
    ) -> Result<StoredWebhookConfig, StoreError> {
        let project = self.read_project(config.project_id).await?;
        if project.archived_at.is_some() {
            return Err(StoreError::ParentArchived { entity: "project", id: project.id.to_string() });
        }
        let now = crate::now();
        let mut config = config.clone();
        config.created_at = now;
        config.updated_at = now;
        config.secret_rotated_at = now;
        let settings = serde_json::to_string(&config)
            .map_err(|e| StoreError::Corrupt { entity: ENTITY, detail: e.to_string() })?;
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO webhook_configs (id, project_id, provider, settings, secret_ciphertext, secret_nonce, \
                 secret_key_id, secret_rotated_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8)",
            )
            .bind(config.id.as_uuid())
            .bind(config.project_id.as_uuid())
            .bind(config.provider.as_str())
            .bind(settings.clone())
            .bind(secret.ciphertext.clone())
            .bind(secret.nonce.clone())
            .bind(secret.key_id.clone())
            .bind(DbTime(now))
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(ENTITY, "webhook_configs", e))?;
        Ok(StoredWebhookConfig { config, secret: secret.clone() })
    }

    pub async fn get_webhook_config(&self, id: WebhookConfigId) -> Result<StoredWebhookConfig, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(config_sql!("WHERE id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| config_from_row(&r))
                .transpose()
        })?;
        row.ok_or_else(|| StoreError::NotFound { entity: ENTITY, id: id.to_string() })
    }

    pub async fn list_webhook_configs(&self, project: ProjectId) -> Result<Vec<WebhookConfig>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(config_sql!("WHERE project_id = $1 ORDER BY id LIMIT 200"))
                .bind(project.as_uuid())
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| config_from_row(r).map(|c| c.config)).collect()
        })
    }

    /// Changes a configuration (guarded by the `updated_at` it read), and its secret when `secret` is given.
    pub async fn update_webhook_config(
        &self,
        id: WebhookConfigId,
        change: impl Fn(&mut WebhookConfig),
        secret: Option<&SealedValue>,
    ) -> Result<WebhookConfig, StoreError> {
        for _ in 0..5 {
            let before = self.get_webhook_config(id).await?;
            let mut config = before.config.clone();
            change(&mut config);
            let now = crate::now();
            config.updated_at = now;
            if secret.is_some() {
                config.secret_rotated_at = now;
            }
            let settings = serde_json::to_string(&config)
                .map_err(|e| StoreError::Corrupt { entity: ENTITY, detail: e.to_string() })?;
            let sealed = secret.unwrap_or(&before.secret);
            let changed = on_pool!(self, |pool| {
                sqlx::query(
                    "UPDATE webhook_configs SET settings = $2, secret_ciphertext = $3, secret_nonce = $4, \
                     secret_key_id = $5, secret_rotated_at = $6, updated_at = $7 WHERE id = $1 AND updated_at = $8",
                )
                .bind(id.as_uuid())
                .bind(settings.clone())
                .bind(sealed.ciphertext.clone())
                .bind(sealed.nonce.clone())
                .bind(sealed.key_id.clone())
                .bind(DbTime(config.secret_rotated_at))
                .bind(DbTime(now))
                .bind(DbTime(before.config.updated_at))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
            })?;
            if changed == 1 {
                return Ok(config);
            }
        }
        Err(StoreError::Contended { entity: ENTITY })
    }

    /// Every configuration's sealed secret, for key rotation.
    pub async fn webhook_secrets(&self) -> Result<Vec<(WebhookConfigId, SealedValue)>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(config_sql!("ORDER BY id")).fetch_all(pool).await?;
            rows.iter().map(|r| config_from_row(r).map(|c| (c.config.id, c.secret))).collect()
        })
    }

    /// Stores a secret re-sealed under another key (the value is unchanged: `secret_rotated_at` stays).
    pub async fn reseal_webhook_secret(&self, id: WebhookConfigId, secret: &SealedValue) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("UPDATE webhook_configs SET secret_ciphertext = $2, secret_nonce = $3, secret_key_id = $4 WHERE id = $1")
                .bind(id.as_uuid())
                .bind(secret.ciphertext.clone())
                .bind(secret.nonce.clone())
                .bind(secret.key_id.clone())
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    /// Records a delivery that changes nothing (refused, failed, or a duplicate).
    pub async fn record_delivery(&self, new: &NewDelivery) -> Result<Delivery, StoreError> {
        debug_assert!(!matches!(new.status, DeliveryStatus::Processed | DeliveryStatus::Ignored));
        on_pool!(self, |pool| {
            sqlx::query(INSERT_DELIVERY)
                .bind(new.id.as_uuid())
                .bind(new.config_id.map(|c| c.as_uuid()))
                .bind(new.project_id.map(|p| p.as_uuid()))
                .bind(new.provider.clone())
                .bind(new.delivery_key.clone())
                .bind(new.event.clone())
                .bind(new.status.as_str())
                .bind(new.error_message.clone())
                .bind(i64::from(new.response_status))
                .bind(new.ticket_id.map(|t| t.as_uuid()))
                .bind(new.headers.to_string())
                .bind(new.payload.clone())
                .bind(DbTime(new.received_at))
                .bind(new.body_sha256.clone())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(ENTITY, "webhook_deliveries", e))?;
        // Refused deliveries keep their body for redelivery, but only the newest few per configuration: a sender
        // without the secret cannot fill the disk.
        if let (Some(config), Some(_), DeliveryStatus::Rejected) = (new.config_id, &new.payload, new.status) {
            on_pool!(self, |pool| {
                sqlx::query(
                    "UPDATE webhook_deliveries SET payload = NULL WHERE config_id = $1 AND status = 'rejected' \
                     AND payload IS NOT NULL AND id NOT IN (SELECT id FROM webhook_deliveries WHERE config_id = $1 \
                     AND status = 'rejected' AND payload IS NOT NULL ORDER BY id DESC LIMIT $2)",
                )
                .bind(config.as_uuid())
                .bind(KEPT_REFUSED_PAYLOADS)
                .execute(pool)
                .await
                .map(|_| ())
            })?;
        }
        self.get_delivery(new.id).await
    }

    /// Applies a delivery: its row (or, for a redelivery, its old row taken over), the ticket change and its
    /// events in one transaction. A delivery id the configuration already applied is a duplicate.
    pub async fn apply_delivery(
        &self,
        new: &NewDelivery,
        change: &DeliveryChange,
        redelivery_of: Option<DeliveryId>,
    ) -> Result<Applied, StoreError> {
        let id = redelivery_of.unwrap_or(new.id);
        let now = crate::now();
        let ticket_id = match change {
            DeliveryChange::Nothing => None,
            DeliveryChange::File { ticket, .. }
            | DeliveryChange::Update { ticket, .. }
            | DeliveryChange::Run { ticket, .. } => Some(ticket.id),
        };
        let mut events = Vec::new();
        match change {
            DeliveryChange::Nothing => {}
            DeliveryChange::File { ticket, run, .. } => {
                events.push(
                    NewEvent::new(
                        EventType::TicketFiled,
                        serde_json::json!({"ticket_id": ticket.id, "title": ticket.title, "severity": ticket.severity,
                            "source": ticket.source, "category": ticket.category, "external_url": ticket.external_url,
                            "created_by": null, "delivery_id": id}),
                    )
                    .project(ticket.project_id)
                    .ticket(Some(ticket.id)),
                );
                events.extend(run.iter().map(|r| run_event(ticket, r, id)));
            }
            DeliveryChange::Update { ticket, archive, run } => {
                events.push(
                    NewEvent::new(
                        EventType::TicketEdited,
                        serde_json::json!({"ticket_id": ticket.id, "delivery_id": id}),
                    )
                    .project(ticket.project_id)
                    .ticket(Some(ticket.id)),
                );
                if *archive {
                    events.push(
                        NewEvent::new(
                            EventType::TicketArchived,
                            serde_json::json!({"ticket_id": ticket.id, "delivery_id": id}),
                        )
                        .project(ticket.project_id)
                        .ticket(Some(ticket.id)),
                    );
                }
                events.extend(run.iter().map(|r| run_event(ticket, r, id)));
            }
            DeliveryChange::Run { ticket, run } => events.push(run_event(ticket, run, id)),
        }
        // A new ticket is inserted after the delivery row (which detects a duplicate first): the row links
        // to it once it exists.
        let filed = matches!(change, DeliveryChange::File { .. });
        let row_ticket = if filed { None } else { ticket_id };
        let result = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let status = new.status.as_str();
            let wrote = match redelivery_of {
                None => {
                    sqlx::query(INSERT_DELIVERY)
                        .bind(id.as_uuid())
                        .bind(new.config_id.map(|c| c.as_uuid()))
                        .bind(new.project_id.map(|p| p.as_uuid()))
                        .bind(new.provider.clone())
                        .bind(new.delivery_key.clone())
                        .bind(new.event.clone())
                        .bind(status)
                        .bind(new.error_message.clone())
                        .bind(i64::from(new.response_status))
                        .bind(row_ticket.map(|t| t.as_uuid()))
                        .bind(new.headers.to_string())
                        .bind(new.payload.clone())
                        .bind(DbTime(new.received_at))
                        .bind(new.body_sha256.clone())
                        .execute(&mut *tx)
                        .await
                }
                Some(old) => {
                    sqlx::query(REAPPLY_DELIVERY)
                        .bind(old.as_uuid())
                        .bind(status)
                        .bind(new.event.clone())
                        .bind(new.error_message.clone())
                        .bind(i64::from(new.response_status))
                        .bind(row_ticket.map(|t| t.as_uuid()))
                        .bind(DbTime(now))
                        .execute(&mut *tx)
                        .await
                }
            };
            let wrote = match wrote {
                Ok(done) => done.rows_affected(),
                Err(e) => return Ok::<_, sqlx::Error>(Err(e)),
            };
            // A redelivery whose row is no longer refused or failed was taken by another one meanwhile.
            if redelivery_of.is_some() && wrote == 0 {
                return Ok(Err(sqlx::Error::RowNotFound));
            }
            let applied = match change {
                DeliveryChange::Nothing | DeliveryChange::Run { .. } => Ok(()),
                DeliveryChange::File { ticket, config_id, locator, .. } => match insert_ticket!(tx, **ticket) {
                    Err(e) => Err(e),
                    Ok(_) => sqlx::query(
                        "INSERT INTO ticket_sources (ticket_id, config_id, provider, locator, created_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(ticket.id.as_uuid())
                    .bind(config_id.as_uuid())
                    .bind(new.provider.clone())
                    .bind(locator.to_string())
                    .bind(DbTime(now))
                    .execute(&mut *tx)
                    .await
                    .map(|_| ()),
                },
                DeliveryChange::Update { ticket, archive, .. } => sqlx::query(UPDATE_TICKET)
                    .bind(ticket.id.as_uuid())
                    .bind(ticket.title.clone())
                    .bind(ticket.description.clone())
                    .bind(ticket.severity.as_str())
                    .bind(ticket.external_url.clone())
                    .bind(ticket.category.map(|c| c.as_str()))
                    .bind(ticket.metadata.to_string())
                    .bind(if *archive {
                        Some(DbTime(ticket.archived_at.unwrap_or(now)))
                    } else {
                        DbTime::opt(ticket.archived_at)
                    })
                    .bind(DbTime(now))
                    .execute(&mut *tx)
                    .await
                    .map(|_| ()),
            };
            let applied = match (applied, filed) {
                (Ok(()), true) => sqlx::query("UPDATE webhook_deliveries SET ticket_id = $2 WHERE id = $1")
                    .bind(id.as_uuid())
                    .bind(ticket_id.map(|t| t.as_uuid()))
                    .execute(&mut *tx)
                    .await
                    .map(|_| ()),
                (other, _) => other,
            };
            if let Err(e) = applied {
                return Ok(Err(e));
            }
            for event in &events {
                emit!(self, tx, event)?;
            }
            tx.commit().await?;
            Ok(Ok(()))
        }
        .await)?;
        match result {
            // A new row is known without reading it back; a redelivery's (its count, its first arrival) is read.
            Ok(()) if redelivery_of.is_none() => Ok(Applied::Done(Delivery {
                id,
                config_id: new.config_id,
                project_id: new.project_id,
                provider: new.provider.clone(),
                delivery_key: new.delivery_key.clone(),
                event: new.event.clone(),
                status: new.status,
                error_message: new.error_message.clone(),
                response_status: new.response_status,
                ticket_id,
                redeliveries: 0,
                received_at: new.received_at,
                updated_at: new.received_at,
            })),
            Ok(()) => Ok(Applied::Done(self.get_delivery(id).await?)),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                let message = db.message().to_owned();
                let constraint = db.constraint().unwrap_or_default().to_owned();
                if constraint.starts_with("tickets_") || message.contains(": tickets.") {
                    return Ok(Applied::TicketExists);
                }
                // Only the delivery id and body indexes mean "applied before"; any other violation is an error.
                let ours = ["webhook_deliveries_delivery_key_key", "webhook_deliveries_body_sha256_key"];
                let is_delivery = ours.contains(&constraint.as_str())
                    || message.contains("webhook_deliveries.delivery_key")
                    || message.contains("webhook_deliveries.body_sha256");
                if !is_delivery {
                    return Err(StoreError::Conflict { entity: ENTITY, field: format!("{constraint}{message}") });
                }
                let mut dup = new.clone();
                dup.status = DeliveryStatus::Duplicate;
                dup.error_message = Some(match redelivery_of {
                    Some(_) => "this delivery id was applied since: nothing changed".to_owned(),
                    None => "this delivery id was already applied: nothing changed".to_owned(),
                });
                dup.response_status = 200;
                dup.ticket_id = None;
                dup.payload = None;
                if let Some(old) = redelivery_of {
                    return Ok(Applied::Duplicate(self.get_delivery(old).await?));
                }
                Ok(Applied::Duplicate(self.record_delivery(&dup).await?))
            }
            Err(sqlx::Error::RowNotFound) if redelivery_of.is_some() => {
                Ok(Applied::Duplicate(self.get_delivery(id).await?))
            }
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    /// Marks a stored delivery's redelivery that was refused or failed again.
    pub async fn redelivery_failed(
        &self,
        id: DeliveryId,
        status: DeliveryStatus,
        event: &str,
        message: &str,
        response_status: u16,
    ) -> Result<Delivery, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(REAPPLY_DELIVERY)
                .bind(id.as_uuid())
                .bind(status.as_str())
                .bind(event.to_owned())
                .bind(Some(message.to_owned()))
                .bind(i64::from(response_status))
                .bind(None::<uuid::Uuid>)
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        self.get_delivery(id).await
    }

    /// Notes on an applied delivery what became of what it asked for (a run that could not start).
    pub async fn note_delivery(&self, id: DeliveryId, status: DeliveryStatus, message: &str) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("UPDATE webhook_deliveries SET status = $2, error_message = $3, updated_at = $4 WHERE id = $1")
                .bind(id.as_uuid())
                .bind(status.as_str())
                .bind(message.to_owned())
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    pub async fn get_delivery(&self, id: DeliveryId) -> Result<Delivery, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(delivery_sql!("WHERE id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| delivery_from_row(&r))
                .transpose()
        })?;
        row.ok_or_else(|| StoreError::NotFound { entity: "delivery", id: id.to_string() })
    }

    /// A delivery's kept headers and body (the body is gone after the retention period).
    pub async fn delivery_payload(&self, id: DeliveryId) -> Result<(serde_json::Value, Option<Vec<u8>>), StoreError> {
        let row = on_pool!(self, |pool| {
            match sqlx::query("SELECT headers, payload FROM webhook_deliveries WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Ok::<_, StoreError>(Some((
                    serde_json::from_str(&r.text("headers")?).unwrap_or_default(),
                    r.opt_bytes("payload")?,
                ))),
                None => Ok(None),
            }
        })?;
        row.ok_or_else(|| StoreError::NotFound { entity: "delivery", id: id.to_string() })
    }

    /// The payload as the API shows it.
    pub async fn delivery_payload_view(&self, id: DeliveryId) -> Result<DeliveryPayload, StoreError> {
        let (headers, body) = self.delivery_payload(id).await?;
        let headers = headers
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().unwrap_or_default();
                        // A GitLab token is the secret itself: only its digest is kept, and not shown either.
                        let shown = if k == "x-gitlab-token" { "(hidden)".to_owned() } else { v.to_owned() };
                        (k.clone(), shown)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(DeliveryPayload { headers, body: body.map(|b| String::from_utf8_lossy(&b).into_owned()) })
    }

    pub async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        page: PageRequest,
    ) -> Result<Page<Delivery>, StoreError> {
        let limit = i64::from(page.limit) + 1;
        let rows = on_pool!(self, |pool| {
            let rows = sqlx::query(delivery_sql!(
                "WHERE ($1 IS NULL OR id < $1) AND ($2 IS NULL OR project_id = $2) \
                 AND ($3 IS NULL OR config_id = $3) AND ($4 IS NULL OR status = $4) ORDER BY id DESC LIMIT $5"
            ))
            .bind(page.after.map(|c| c.id()))
            .bind(filter.project_id.map(|p| p.as_uuid()))
            .bind(filter.config_id.map(|c| c.as_uuid()))
            .bind(filter.status.map(|s| s.as_str()))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(delivery_from_row).collect::<Result<Vec<_>, StoreError>>()
        })?;
        Ok(Page::from_rows(rows, page.limit, |d| d.id.as_uuid()))
    }

    /// Deliveries by provider and status, and feedback by status (for `/metrics`).
    pub async fn webhook_counts(&self) -> Result<(Vec<(String, String, i64)>, Vec<(String, i64)>), StoreError> {
        let deliveries = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT provider, status, COUNT(*) AS n FROM webhook_deliveries GROUP BY provider, status \
                 ORDER BY provider, status",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok::<_, sqlx::Error>((r.text("provider")?, r.text("status")?, r.int("n")?)))
            .collect::<Result<Vec<_>, _>>()
        })?;
        let feedback = on_pool!(self, |pool| {
            sqlx::query("SELECT status, COUNT(*) AS n FROM source_feedback GROUP BY status ORDER BY status")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok::<_, sqlx::Error>((r.text("status")?, r.int("n")?)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok((deliveries, feedback))
    }

    /// Removes the bodies of deliveries received before `before` (their rows stay). Returns how many.
    pub async fn prune_delivery_payloads(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done = on_pool!(self, |pool| {
            sqlx::query("UPDATE webhook_deliveries SET payload = NULL WHERE payload IS NOT NULL AND received_at < $1")
                .bind(DbTime(before))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(done)
    }

    /// The ticket a source issue filed in `project`, if any.
    pub async fn find_sourced_ticket(
        &self,
        project: ProjectId,
        source: TicketSource,
        external_id: &str,
    ) -> Result<Option<Ticket>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(crate::tickets::SELECT_BY_EXTERNAL)
                .bind(project.as_uuid())
                .bind(source.as_str())
                .bind(external_id.to_owned())
                .fetch_optional(pool)
                .await?
                .map(|r| crate::tickets::from_row(&r))
                .transpose()
        })
    }

    /// Where a sourced ticket came from: its configuration and the locator.
    pub async fn ticket_source(
        &self,
        ticket: TicketId,
    ) -> Result<Option<(WebhookConfigId, serde_json::Value)>, StoreError> {
        on_pool!(self, |pool| {
            match sqlx::query("SELECT config_id, locator FROM ticket_sources WHERE ticket_id = $1")
                .bind(ticket.as_uuid())
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Ok(Some((
                    WebhookConfigId::from_uuid(r.uuid("config_id")?),
                    serde_json::from_str(&r.text("locator")?).unwrap_or_default(),
                ))),
                None => Ok(None),
            }
        })
    }

    /// Queues feedback for an outbox event, once (a repeated event id queues nothing). Returns whether it did.
    pub async fn enqueue_feedback(&self, new: &NewFeedback) -> Result<bool, StoreError> {
        let now = crate::now();
        let done = on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO source_feedback (id, event_id, ticket_id, job_id, config_id, body, label, status, \
                 attempts, attempt_log, next_attempt_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, '[]', $8, $8, $8) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(new.event_id)
            .bind(new.ticket_id.as_uuid())
            .bind(new.job_id.map(|j| j.as_uuid()))
            .bind(new.config_id.as_uuid())
            .bind(new.body.clone())
            .bind(new.label.clone())
            .bind(DbTime(now))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Takes up to `limit` pending feedback rows that are due, each for `lease` (another server skips them
    /// meanwhile).
    pub async fn claim_due_feedback(&self, limit: i64, lease: time::Duration) -> Result<Vec<Feedback>, StoreError> {
        let now = crate::now();
        let due = on_pool!(self, |pool| {
            let rows = sqlx::query(feedback_sql!(
                "WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2"
            ))
            .bind(DbTime(now))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(feedback_from_row).collect::<Result<Vec<_>, StoreError>>()
        })?;
        let mut claimed = Vec::new();
        for f in due {
            let took = on_pool!(self, |pool| {
                sqlx::query("UPDATE source_feedback SET next_attempt_at = $2 WHERE id = $1 AND status = 'pending' AND next_attempt_at = $3")
                    .bind(f.id)
                    .bind(DbTime(now + lease))
                    .bind(DbTime(f.next_attempt_at))
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })?;
            if took == 1 {
                claimed.push(f);
            }
        }
        Ok(claimed)
    }

    /// Records one attempt: delivered, failed for good, or pending again at `retry_at`.
    pub async fn record_feedback_attempt(
        &self,
        id: uuid::Uuid,
        error: Option<&str>,
        retry_at: Option<OffsetDateTime>,
        commented: bool,
    ) -> Result<(), StoreError> {
        let now = crate::now();
        let status = match (error, retry_at) {
            (None, _) => "delivered",
            (Some(_), Some(_)) => "pending",
            (Some(_), None) => "failed",
        };
        let entry = serde_json::json!({"at": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(), "error": error,
            "commented": error.is_none() || commented}).to_string();
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let log: Option<String> = sqlx::query_scalar("SELECT attempt_log FROM source_feedback WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let mut log: Vec<serde_json::Value> = log.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default();
            log.push(serde_json::from_str(&entry).unwrap_or_default());
            if log.len() > 20 {
                log.drain(..log.len() - 20);
            }
            sqlx::query(
                "UPDATE source_feedback SET status = $2, attempts = attempts + 1, attempt_log = $3, last_error = $4, \
                 next_attempt_at = $5, updated_at = $6 WHERE id = $1",
            )
            .bind(id)
            .bind(status)
            .bind(serde_json::Value::Array(log).to_string())
            .bind(error.map(str::to_owned))
            .bind(DbTime(retry_at.unwrap_or(now)))
            .bind(DbTime(now))
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await)?;
        Ok(())
    }

    /// A ticket's feedback to its source, newest first.
    pub async fn list_feedback(&self, ticket: TicketId) -> Result<Vec<Feedback>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(feedback_sql!("WHERE ticket_id = $1 ORDER BY id DESC LIMIT 100"))
                .bind(ticket.as_uuid())
                .fetch_all(pool)
                .await?;
            rows.iter().map(feedback_from_row).collect()
        })
    }
}

/// Feedback to queue for an outbox event.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    pub event_id: uuid::Uuid,
    pub ticket_id: TicketId,
    pub job_id: Option<JobId>,
    pub config_id: WebhookConfigId,
    pub body: String,
    pub label: Option<String>,
}

/// Feedback owed to a source, and how its attempts went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Feedback {
    pub id: uuid::Uuid,
    pub ticket_id: TicketId,
    pub job_id: Option<JobId>,
    pub config_id: WebhookConfigId,
    pub body: String,
    pub label: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub attempt_log: serde_json::Value,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

fn feedback_from_row(r: &impl RowExt) -> Result<Feedback, StoreError> {
    Ok(Feedback {
        id: r.uuid("id")?,
        ticket_id: TicketId::from_uuid(r.uuid("ticket_id")?),
        job_id: r.opt_uuid("job_id")?.map(JobId::from_uuid),
        config_id: WebhookConfigId::from_uuid(r.uuid("config_id")?),
        body: r.text("body")?,
        label: r.opt_text("label")?,
        status: r.text("status")?,
        attempts: r.int("attempts")?,
        attempt_log: serde_json::from_str(&r.text("attempt_log")?).unwrap_or_default(),
        last_error: r.opt_text("last_error")?,
        next_attempt_at: r.time("next_attempt_at")?,
        created_at: r.time("created_at")?,
    })
}
