//! The ticket workflow's state: documents edited by people, their revisions
//! and line comments, approvals (each recorded in the approvals log in the
//! same transaction), phase changes, overrides, and prompt templates.

use sqlx::types::Json;
use viberglass_domain::workflow::{
    ApprovalRecord, ApprovalState, CommentStatus, DocumentComment, DocumentRevision, PhaseDocument, PromptKind,
};
use viberglass_domain::{EventType, Job, JobStatus, NewEvent, Phase, ProjectId, TicketId, TicketStatus, UserId};

use crate::dbtime::DbTime;
use crate::jobs::NewJob;
use crate::outbox::emit;
use crate::rows::{RowExt, parse_stored};
use crate::{Store, StoreError, on_pool};

const ENTITY: &str = "document";

fn document_from_row(r: &impl RowExt) -> Result<PhaseDocument, StoreError> {
    Ok(PhaseDocument {
        phase: parse_stored(ENTITY, r.text("phase")?)?,
        content: r.text("content")?,
        revision: r.int("revision")?,
        approval_state: parse_stored(ENTITY, r.text("approval_state")?)?,
        approved_at: r.opt_time("approved_at")?,
        approved_by: r.opt_uuid("approved_by")?.map(UserId::from_uuid),
        updated_at: r.time("updated_at")?,
    })
}

/// What an approval changes: the document's state (only if it is still
/// `expected`) and one line in the approvals log.
#[derive(Debug, Clone)]
pub struct ApprovalChange {
    pub ticket_id: TicketId,
    pub phase: Phase,
    pub expected: ApprovalState,
    /// The revision the person saw: an edit since then makes the action stale.
    pub revision: i64,
    pub new_state: ApprovalState,
    /// `approval_requested`, `approved`, `rejected` or `revoked`.
    pub logged: String,
    pub actor: Option<UserId>,
    pub comment: String,
}

const UPDATE_APPROVAL: &str = "UPDATE phase_documents SET approval_state = $3, \
     approved_at = CASE WHEN $3 = 'approved' THEN $5 ELSE NULL END, \
     approved_by = CASE WHEN $3 = 'approved' THEN $6 ELSE NULL END, updated_at = $5 \
     WHERE ticket_id = $1 AND phase = $2 AND approval_state = $4 AND revision = $7";
const INSERT_APPROVAL: &str = "INSERT INTO phase_approvals (id, ticket_id, phase, action, actor_id, comment, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

impl Store {
    pub async fn get_document(&self, ticket: TicketId, phase: Phase) -> Result<Option<PhaseDocument>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "SELECT phase, content, revision, approval_state, approved_at, approved_by, updated_at \
                 FROM phase_documents WHERE ticket_id = $1 AND phase = $2",
            )
            .bind(ticket.as_uuid())
            .bind(phase.as_str())
            .fetch_optional(pool)
            .await?
            .map(|r| document_from_row(&r))
            .transpose()
        })
    }

    /// Saves a person's edit as the next revision, only if the document is
    /// still at `base_revision` (else `Contended`: someone saved meanwhile).
    /// The edit returns the document to draft.
    pub async fn save_person_document(
        &self,
        ticket: TicketId,
        phase: Phase,
        content: &str,
        author: Option<UserId>,
        base_revision: i64,
    ) -> Result<i64, StoreError> {
        let now = DbTime(crate::now());
        let saved = on_pool!(self, |pool| {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let row = sqlx::query("SELECT id, revision FROM phase_documents WHERE ticket_id = $1 AND phase = $2")
                .bind(ticket.as_uuid())
                .bind(phase.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let (id, current) = match row {
                Some(r) => (r.uuid("id")?, r.int("revision")?),
                None if base_revision == 0 => {
                    let id = uuid::Uuid::now_v7();
                    sqlx::query(
                        "INSERT INTO phase_documents (id, ticket_id, phase, content, revision, approval_state, \
                         created_at, updated_at) VALUES ($1, $2, $3, '', 0, 'draft', $4, $4)",
                    )
                    .bind(id)
                    .bind(ticket.as_uuid())
                    .bind(phase.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    (id, 0)
                }
                None => return Err(StoreError::NotFound { entity: ENTITY, id: format!("{ticket}/{phase}") }),
            };
            if current != base_revision {
                return Err(StoreError::Contended { entity: ENTITY });
            }
            let updated = sqlx::query(
                "UPDATE phase_documents SET content = $2, revision = $3, approval_state = 'draft', approved_at = NULL, \
                 approved_by = NULL, updated_at = $4 WHERE id = $1 AND revision = $5",
            )
            .bind(id)
            .bind(content)
            .bind(current + 1)
            .bind(now)
            .bind(current)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
                return Err(StoreError::Contended { entity: ENTITY });
            }
            sqlx::query(
                "INSERT INTO document_revisions (id, document_id, revision, content, source, author_id, job_id, \
                 created_at) VALUES ($1, $2, $3, $4, 'person', $5, NULL, $6)",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(id)
            .bind(current + 1)
            .bind(content)
            .bind(author.map(|a| a.as_uuid()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let project = sqlx::query("SELECT project_id FROM tickets WHERE id = $1")
                .bind(ticket.as_uuid())
                .fetch_one(&mut *tx)
                .await?
                .uuid("project_id")?;
            let event = document_event(ticket, ProjectId::from_uuid(project), phase, current + 1, "person");
            emit!(self, tx, &event)?;
            tx.commit().await?;
            Ok::<_, StoreError>(current + 1)
        });
        match saved {
            // Two first saves at once, or a revision number taken meanwhile: the loser is stale.
            Err(StoreError::Database(sqlx::Error::Database(db))) if db.is_unique_violation() => {
                Err(StoreError::Contended { entity: ENTITY })
            }
            other => other,
        }
    }

    pub async fn list_revisions(&self, ticket: TicketId, phase: Phase) -> Result<Vec<DocumentRevision>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "SELECT r.revision, r.source, r.author_id, u.email AS author_email, r.job_id, r.created_at \
                 FROM document_revisions r JOIN phase_documents d ON d.id = r.document_id \
                 LEFT JOIN users u ON u.id = r.author_id WHERE d.ticket_id = $1 AND d.phase = $2 ORDER BY r.revision",
            )
            .bind(ticket.as_uuid())
            .bind(phase.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(DocumentRevision {
                    revision: r.int("revision")?,
                    source: r.text("source")?,
                    author_id: r.opt_uuid("author_id")?.map(UserId::from_uuid),
                    author_email: r.opt_text("author_email")?,
                    job_id: r.opt_uuid("job_id")?.map(viberglass_domain::JobId::from_uuid),
                    created_at: r.time("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    pub async fn revision_content(
        &self,
        ticket: TicketId,
        phase: Phase,
        revision: i64,
    ) -> Result<Option<String>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "SELECT r.content FROM document_revisions r JOIN phase_documents d ON d.id = r.document_id \
                 WHERE d.ticket_id = $1 AND d.phase = $2 AND r.revision = $3",
            )
            .bind(ticket.as_uuid())
            .bind(phase.as_str())
            .bind(revision)
            .fetch_optional(pool)
            .await?
            .map(|r| r.text("content").map_err(StoreError::from))
            .transpose()
        })
    }

    /// Comments on the document's current revision's line `line`.
    pub async fn add_comment(
        &self,
        ticket: TicketId,
        phase: Phase,
        line: i64,
        body: &str,
        suggestion: Option<&str>,
        author: Option<UserId>,
    ) -> Result<Option<uuid::Uuid>, StoreError> {
        let now = DbTime(crate::now());
        let id = uuid::Uuid::now_v7();
        let inserted = on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO document_comments (id, document_id, revision, line, body, suggestion, status, author_id, \
                 created_at, updated_at) SELECT $1, d.id, d.revision, $4, $5, $6, 'open', $7, $8, $8 \
                 FROM phase_documents d WHERE d.ticket_id = $2 AND d.phase = $3",
            )
            .bind(id)
            .bind(ticket.as_uuid())
            .bind(phase.as_str())
            .bind(line)
            .bind(body)
            .bind(suggestion)
            .bind(author.map(|a| a.as_uuid()))
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok((inserted == 1).then_some(id))
    }

    pub async fn list_comments(&self, ticket: TicketId, phase: Phase) -> Result<Vec<DocumentComment>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "SELECT c.id, d.phase, c.revision, c.line, c.body, c.suggestion, c.status, c.author_id, \
                 u.email AS author_email, c.created_at FROM document_comments c \
                 JOIN phase_documents d ON d.id = c.document_id LEFT JOIN users u ON u.id = c.author_id \
                 WHERE d.ticket_id = $1 AND d.phase = $2 ORDER BY c.line, c.id",
            )
            .bind(ticket.as_uuid())
            .bind(phase.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(DocumentComment {
                    id: r.uuid("id")?,
                    phase: parse_stored(ENTITY, r.text("phase")?)?,
                    revision: r.int("revision")?,
                    line: r.int("line")?,
                    body: r.text("body")?,
                    suggestion: r.opt_text("suggestion")?,
                    status: parse_stored(ENTITY, r.text("status")?)?,
                    author_id: r.opt_uuid("author_id")?.map(UserId::from_uuid),
                    author_email: r.opt_text("author_email")?,
                    created_at: r.time("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    /// Resolves or reopens a comment of the ticket; `false` when it has no such comment.
    pub async fn set_comment_status(
        &self,
        ticket: TicketId,
        comment: uuid::Uuid,
        status: CommentStatus,
        by: Option<UserId>,
    ) -> Result<bool, StoreError> {
        let now = DbTime(crate::now());
        let resolved = status == CommentStatus::Resolved;
        let changed = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE document_comments SET status = $3, resolved_by = CASE WHEN $4 THEN $5 ELSE NULL END, \
                 resolved_at = CASE WHEN $4 THEN $6 ELSE NULL END, updated_at = $6 WHERE id = $1 \
                 AND document_id IN (SELECT id FROM phase_documents WHERE ticket_id = $2)",
            )
            .bind(comment)
            .bind(ticket.as_uuid())
            .bind(status.as_str())
            .bind(resolved)
            .bind(by.map(|b| b.as_uuid()))
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(changed == 1)
    }

    /// Applies an approval action and logs it, in one transaction; `false`
    /// (nothing changed, nothing logged) when the document moved meanwhile.
    pub async fn apply_approval(&self, change: &ApprovalChange) -> Result<bool, StoreError> {
        self.approve_inner(change, None).await.map(|r| r.is_some())
    }

    /// **Approve & Continue**: approves the document, logs it, moves the
    /// ticket to the next phase and queues its run, all in one transaction.
    /// `None` when the document moved meanwhile (nothing changed).
    pub async fn approve_and_continue(
        &self,
        change: &ApprovalChange,
        next_phase: Phase,
        job: NewJob,
    ) -> Result<Option<Job>, StoreError> {
        let id = job.id;
        match self.approve_inner(change, Some((next_phase, job))).await? {
            Some(()) => {
                self.append_event(
                    id,
                    viberglass_domain::EventKind::Status,
                    viberglass_domain::LogLevel::Info,
                    "queued (Approve & Continue)",
                    None,
                )
                .await?;
                Ok(Some(self.get_job(id).await?))
            }
            None => Ok(None),
        }
    }

    async fn approve_inner(
        &self,
        change: &ApprovalChange,
        continue_with: Option<(Phase, NewJob)>,
    ) -> Result<Option<()>, StoreError> {
        let now = DbTime(crate::now());
        let spec = match &continue_with {
            Some((_, job)) => Some(
                serde_json::to_value(&job.spec)
                    .map_err(|e| StoreError::Corrupt { entity: "job", detail: e.to_string() })?,
            ),
            None => None,
        };
        on_pool!(self, |pool| {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let moved = sqlx::query(UPDATE_APPROVAL)
                .bind(change.ticket_id.as_uuid())
                .bind(change.phase.as_str())
                .bind(change.new_state.as_str())
                .bind(change.expected.as_str())
                .bind(now)
                .bind(change.actor.map(|a| a.as_uuid()))
                .bind(change.revision)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved != 1 {
                return Ok::<_, StoreError>(None);
            }
            sqlx::query(INSERT_APPROVAL)
                .bind(uuid::Uuid::now_v7())
                .bind(change.ticket_id.as_uuid())
                .bind(change.phase.as_str())
                .bind(change.logged.as_str())
                .bind(change.actor.map(|a| a.as_uuid()))
                .bind(change.comment.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let project = sqlx::query("SELECT project_id FROM tickets WHERE id = $1")
                .bind(change.ticket_id.as_uuid())
                .fetch_one(&mut *tx)
                .await?
                .uuid("project_id")
                .map(ProjectId::from_uuid)?;
            if let Some(event_type) = approval_event(&change.logged) {
                let event = NewEvent::new(
                    event_type,
                    serde_json::json!({"ticket_id": change.ticket_id, "phase": change.phase, "revision": change.revision,
                        "state": change.new_state, "actor": change.actor, "comment": change.comment}),
                )
                .project(project)
                .ticket(Some(change.ticket_id));
                emit!(self, tx, &event)?;
            }
            if let (Some((next_phase, job)), Some(spec)) = (&continue_with, &spec) {
                let phase_event = NewEvent::new(
                    EventType::TicketPhaseChanged,
                    serde_json::json!({"ticket_id": change.ticket_id, "phase": next_phase}),
                )
                .project(project)
                .ticket(Some(change.ticket_id));
                emit!(self, tx, &phase_event)?;
                emit!(self, tx, &crate::jobs::queued_event(job, 1, None))?;
                sqlx::query("UPDATE tickets SET phase = $2, status = $3, updated_at = $4 WHERE id = $1")
                    .bind(change.ticket_id.as_uuid())
                    .bind(next_phase.as_str())
                    .bind(crate::jobs::working_status(*next_phase).as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(crate::jobs::INSERT)
                    .bind(job.id.as_uuid())
                    .bind(job.project_id.as_uuid())
                    .bind(job.ticket_id.map(|t| t.as_uuid()))
                    .bind(job.clanker_id.map(|c| c.as_uuid()))
                    .bind(job.spec.phase.as_str())
                    .bind(1i64)
                    .bind(None::<uuid::Uuid>)
                    .bind(Json(spec.clone()))
                    .bind(job.requested_by.map(|u| u.as_uuid()))
                    .bind(now)
                    .bind(job.request_id.as_deref())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            if continue_with.is_some() {
                self.jobs_changed();
            }
            Ok(Some(()))
        })
    }

    pub async fn list_approvals(&self, ticket: TicketId) -> Result<Vec<ApprovalRecord>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "SELECT a.phase, a.action, a.actor_id, u.email AS actor_email, a.comment, a.created_at \
                 FROM phase_approvals a LEFT JOIN users u ON u.id = a.actor_id WHERE a.ticket_id = $1 ORDER BY a.id",
            )
            .bind(ticket.as_uuid())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(ApprovalRecord {
                    phase: parse_stored(ENTITY, r.text("phase")?)?,
                    action: r.text("action")?,
                    actor_id: r.opt_uuid("actor_id")?.map(UserId::from_uuid),
                    actor_email: r.opt_text("actor_email")?,
                    comment: r.text("comment")?,
                    created_at: r.time("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    /// Sets (with a reason) or clears a ticket's workflow override.
    pub async fn set_workflow_override(
        &self,
        ticket: TicketId,
        reason: Option<&str>,
        by: Option<UserId>,
    ) -> Result<(), StoreError> {
        let now = DbTime(crate::now());
        let set = reason.is_some();
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE tickets SET workflow_override_reason = $2, \
                 workflow_overridden_at = CASE WHEN $3 THEN $5 ELSE NULL END, \
                 workflow_overridden_by = CASE WHEN $3 THEN $4 ELSE NULL END, updated_at = $5 WHERE id = $1",
            )
            .bind(ticket.as_uuid())
            .bind(reason)
            .bind(set)
            .bind(by.map(|b| b.as_uuid()))
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Moves a ticket to a phase, with its `ticket.phase_changed` event.
    pub async fn set_ticket_phase(&self, ticket: TicketId, phase: Phase) -> Result<(), StoreError> {
        self.set_ticket_field(
            ticket,
            "UPDATE tickets SET phase = $2, updated_at = $3 WHERE id = $1 AND phase <> $2 \
             RETURNING project_id",
            EventType::TicketPhaseChanged,
            phase.as_str(),
            true,
        )
        .await
    }

    /// Stores a ticket's lifecycle status, with its `ticket.status_changed`
    /// event when it changed. Not a person's edit, so `updated_at` stays.
    pub async fn set_ticket_status(&self, ticket: TicketId, status: TicketStatus) -> Result<(), StoreError> {
        self.set_ticket_field(
            ticket,
            "UPDATE tickets SET status = $2 WHERE id = $1 AND status <> $2 \
             RETURNING project_id",
            EventType::TicketStatusChanged,
            status.as_str(),
            false,
        )
        .await
    }

    async fn set_ticket_field(
        &self,
        ticket: TicketId,
        sql: &'static str,
        event_type: EventType,
        value: &str,
        touch: bool,
    ) -> Result<(), StoreError> {
        let field = if event_type == EventType::TicketPhaseChanged { "phase" } else { "status" };
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let mut query = sqlx::query(sql).bind(ticket.as_uuid()).bind(value);
            if touch {
                query = query.bind(DbTime(crate::now()));
            }
            if let Some(row) = query.fetch_optional(&mut *tx).await? {
                let event = NewEvent::new(event_type, serde_json::json!({"ticket_id": ticket, field: value}))
                    .project(ProjectId::from_uuid(row.uuid("project_id")?))
                    .ticket(Some(ticket));
                emit!(self, tx, &event)?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await)
    }

    /// The phase and status of the ticket's latest run.
    pub async fn latest_run(&self, ticket: TicketId) -> Result<Option<(Phase, JobStatus)>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("SELECT phase, status FROM jobs WHERE ticket_id = $1 ORDER BY id DESC LIMIT 1")
                .bind(ticket.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| Ok((parse_stored("job", r.text("phase")?)?, parse_stored("job", r.text("status")?)?)))
                .transpose()
        })
    }

    /// A project's override of a prompt, if it has one.
    pub async fn prompt_template(&self, project: ProjectId, kind: PromptKind) -> Result<Option<String>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("SELECT template FROM prompt_templates WHERE project_id = $1 AND kind = $2")
                .bind(project.as_uuid())
                .bind(kind.as_str())
                .fetch_optional(pool)
                .await?
                .map(|r| r.text("template").map_err(StoreError::from))
                .transpose()
        })
    }

    /// Saves (or, with `None`, removes) a project's override of a prompt.
    pub async fn set_prompt_template(
        &self,
        project: ProjectId,
        kind: PromptKind,
        template: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = DbTime(crate::now());
        on_pool!(self, |pool| {
            match template {
                Some(template) => sqlx::query(
                    "INSERT INTO prompt_templates (id, project_id, kind, template, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (project_id, kind) WHERE project_id IS NOT NULL \
                     DO UPDATE SET template = excluded.template, updated_at = excluded.updated_at",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(project.as_uuid())
                .bind(kind.as_str())
                .bind(template)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ()),
                None => sqlx::query("DELETE FROM prompt_templates WHERE project_id = $1 AND kind = $2")
                    .bind(project.as_uuid())
                    .bind(kind.as_str())
                    .execute(pool)
                    .await
                    .map(|_| ()),
            }
        })?;
        Ok(())
    }
}

/// The outbox event an approvals-log action is.
fn approval_event(logged: &str) -> Option<EventType> {
    Some(match logged {
        "approval_requested" => EventType::ApprovalRequested,
        "approved" => EventType::ApprovalApproved,
        "rejected" => EventType::ApprovalRejected,
        "revoked" => EventType::ApprovalRevoked,
        _ => return None,
    })
}

/// The `document.revised` event of a new revision.
pub(crate) fn document_event(
    ticket: TicketId,
    project: ProjectId,
    phase: Phase,
    revision: i64,
    source: &str,
) -> NewEvent {
    NewEvent::new(
        EventType::DocumentRevised,
        serde_json::json!({"ticket_id": ticket, "phase": phase, "revision": revision, "source": source,
            "document": phase.document_name()}),
    )
    .project(project)
    .ticket(Some(ticket))
}
