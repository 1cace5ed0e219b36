//! Files attached to tickets, kept in the database with their sha256.

use sha2::{Digest, Sha256};
use viberglass_domain::{Attachment, TicketId, UserId};

use crate::dbtime::DbTime;
use crate::rows::RowExt;
use crate::{Store, StoreError, on_pool};

const TABLE: &str = "ticket_attachments";
const ENTITY: &str = "attachment";
macro_rules! columns {
    () => {
        "id, ticket_id, filename, content_type, size, sha256, uploaded_by, created_at"
    };
}
const INSERT: &str =
    concat!("INSERT INTO ticket_attachments (", columns!(), ", content) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
const SELECT_LIST: &str =
    concat!("SELECT ", columns!(), " FROM ticket_attachments WHERE ticket_id = $1 ORDER BY id LIMIT 1000");
const SELECT_ONE: &str =
    concat!("SELECT ", columns!(), ", content FROM ticket_attachments WHERE ticket_id = $1 AND id = $2");

/// A file to attach.
pub struct NewAttachment {
    pub ticket_id: TicketId,
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
    pub uploaded_by: Option<UserId>,
}

fn from_row(r: &impl RowExt) -> Result<Attachment, StoreError> {
    Ok(Attachment {
        id: r.uuid("id")?,
        ticket_id: TicketId::from_uuid(r.uuid("ticket_id")?),
        filename: r.text("filename")?,
        content_type: r.text("content_type")?,
        size: u64::try_from(r.int("size")?).unwrap_or_default(),
        sha256: r.text("sha256")?,
        uploaded_by: r.opt_uuid("uploaded_by")?.map(UserId::from_uuid),
        created_at: r.time("created_at")?,
    })
}

impl Store {
    pub async fn add_attachment(&self, new: NewAttachment) -> Result<Attachment, StoreError> {
        let attachment = Attachment {
            id: uuid::Uuid::now_v7(),
            ticket_id: new.ticket_id,
            filename: new.filename,
            content_type: new.content_type,
            size: new.content.len() as u64,
            sha256: hex::encode(Sha256::digest(&new.content)),
            uploaded_by: new.uploaded_by,
            created_at: crate::now(),
        };
        on_pool!(self, |pool| {
            sqlx::query(INSERT)
                .bind(attachment.id)
                .bind(attachment.ticket_id.as_uuid())
                .bind(attachment.filename.clone())
                .bind(attachment.content_type.clone())
                .bind(attachment.size as i64)
                .bind(attachment.sha256.clone())
                .bind(attachment.uploaded_by.map(|u| u.as_uuid()))
                .bind(DbTime(attachment.created_at))
                .bind(new.content.as_slice())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        Ok(attachment)
    }

    /// A ticket's attachments, oldest first (without their content).
    pub async fn list_attachments(&self, ticket: TicketId) -> Result<Vec<Attachment>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(SELECT_LIST)
                .bind(ticket.as_uuid())
                .fetch_all(pool)
                .await?
                .iter()
                .map(from_row)
                .collect::<Result<Vec<_>, _>>()
        })
    }

    /// One attachment of a ticket with its content.
    pub async fn attachment_content(
        &self,
        ticket: TicketId,
        id: uuid::Uuid,
    ) -> Result<(Attachment, Vec<u8>), StoreError> {
        let found = on_pool!(self, |pool| {
            match sqlx::query(SELECT_ONE).bind(ticket.as_uuid()).bind(id).fetch_optional(pool).await? {
                Some(row) => Some((from_row(&row)?, row.opt_bytes("content")?.unwrap_or_default())),
                None => None,
            }
        });
        found.ok_or_else(|| StoreError::NotFound { entity: ENTITY, id: id.to_string() })
    }
}
