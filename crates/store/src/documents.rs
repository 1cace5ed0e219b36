//! Phase documents (RESEARCH.md, PLAN.md) and their revisions.

use viberglass_domain::{JobId, Phase, TicketId};

use crate::dbtime::DbTime;
use crate::outbox::emit;
use crate::rows::RowExt;
use crate::{Store, StoreError, on_pool};

const SELECT_DOCUMENT: &str = "SELECT id, revision FROM phase_documents WHERE ticket_id = $1 AND phase = $2";
// A document an agent wrote is ready for review: its approval is requested at
// once, so the ticket shows "awaiting approval" instead of staying "researching".
const INSERT_DOCUMENT: &str = "INSERT INTO phase_documents (id, ticket_id, phase, content, revision, approval_state, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, 1, 'approval_requested', $5, $5)";
const UPDATE_DOCUMENT: &str = "UPDATE phase_documents SET content = $2, revision = $3, approval_state = 'approval_requested', \
     approved_at = NULL, approved_by = NULL, updated_at = $4 WHERE id = $1 AND revision = $5";
const INSERT_REVISION: &str = "INSERT INTO document_revisions (id, document_id, revision, content, source, author_id, \
     job_id, created_at) VALUES ($1, $2, $3, $4, 'agent', NULL, $5, $6)";
const SELECT_CONTENT: &str = "SELECT content, revision FROM phase_documents WHERE ticket_id = $1 AND phase = $2";

impl Store {
    /// Saves a document an agent wrote as the next revision of the ticket's
    /// phase document. Returns the revision number.
    pub async fn save_agent_document(
        &self,
        ticket_id: TicketId,
        phase: Phase,
        content: &str,
        job_id: JobId,
    ) -> Result<i64, StoreError> {
        let now = DbTime(crate::now());
        let revision = on_pool!(self, |pool| {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let existing = sqlx::query(SELECT_DOCUMENT)
                .bind(ticket_id.as_uuid())
                .bind(phase.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.uuid("id")?, r.int("revision")?)))
                .transpose()?;
            let (document_id, revision) = match existing {
                None => {
                    let id = uuid::Uuid::now_v7();
                    sqlx::query(INSERT_DOCUMENT)
                        .bind(id)
                        .bind(ticket_id.as_uuid())
                        .bind(phase.as_str())
                        .bind(content)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    (id, 1)
                }
                Some((id, current)) => {
                    sqlx::query(UPDATE_DOCUMENT)
                        .bind(id)
                        .bind(content)
                        .bind(current + 1)
                        .bind(now)
                        .bind(current)
                        .execute(&mut *tx)
                        .await?;
                    (id, current + 1)
                }
            };
            sqlx::query(INSERT_REVISION)
                .bind(uuid::Uuid::now_v7())
                .bind(document_id)
                .bind(revision)
                .bind(content)
                .bind(job_id.as_uuid())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let project = sqlx::query("SELECT project_id FROM tickets WHERE id = $1")
                .bind(ticket_id.as_uuid())
                .fetch_one(&mut *tx)
                .await?
                .uuid("project_id")?;
            let project = viberglass_domain::ProjectId::from_uuid(project);
            emit!(self, tx, &crate::workflow::document_event(ticket_id, project, phase, revision, "agent"))?;
            let requested = viberglass_domain::NewEvent::new(
                viberglass_domain::EventType::ApprovalRequested,
                serde_json::json!({"ticket_id": ticket_id, "phase": phase, "revision": revision, "by": "agent"}),
            )
            .project(project)
            .ticket(Some(ticket_id));
            emit!(self, tx, &requested)?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(revision)
        })
        .map_err(|e| StoreError::from_write("document", "document_revisions", e))?;
        Ok(revision)
    }

    /// The current content and revision of a ticket's phase document, if any.
    pub async fn phase_document(&self, ticket_id: TicketId, phase: Phase) -> Result<Option<(String, i64)>, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_CONTENT)
                .bind(ticket_id.as_uuid())
                .bind(phase.as_str())
                .fetch_optional(pool)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.text("content")?, r.int("revision")?)))
                .transpose()
        })?;
        Ok(row)
    }
}
