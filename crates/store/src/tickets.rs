//! Tickets.

use viberglass_domain::{
    EventType, NewEvent, NewTicket, Page, PageRequest, ProjectId, Ticket, TicketFilter, TicketId, TicketPatch, UserId,
};

use crate::dbtime::DbTime;
use crate::outbox::emit;
use crate::rows::{RowExt, contains_pattern, parse_stored};
use crate::sql::{Arg, Sql, bound};
use crate::versioned::modify;
use crate::{Store, StoreError, on_pool};
use viberglass_domain::ticket::ArchivedFilter;

const TABLE: &str = "tickets";
const ENTITY: &str = "ticket";

macro_rules! select {
    ($($rest:literal),*) => {
        concat!(
            "SELECT id, project_id, title, description, severity, phase, status, source, external_id, external_url, \
             pull_request_url, workflow_override_reason, workflow_overridden_at, workflow_overridden_by, created_by, \
             archived_at, created_at, updated_at, category, metadata FROM tickets ",
            $($rest),*
        )
    };
}

pub(crate) const INSERT: &str = "INSERT INTO tickets (id, project_id, title, description, severity, phase, status, source, \
     external_id, external_url, pull_request_url, workflow_override_reason, workflow_overridden_at, \
     workflow_overridden_by, created_by, archived_at, created_at, updated_at, category, metadata) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)";

/// Inserts ticket `$t` on the open transaction `$tx` (shared by filing and webhook deliveries).
macro_rules! insert_ticket {
    ($tx:expr, $t:expr) => {{
        let t: &viberglass_domain::Ticket = &$t;
        sqlx::query($crate::tickets::INSERT)
            .bind(t.id.as_uuid())
            .bind(t.project_id.as_uuid())
            .bind(t.title.clone())
            .bind(t.description.clone())
            .bind(t.severity.as_str())
            .bind(t.phase.as_str())
            .bind(t.status.as_str())
            .bind(t.source.as_str())
            .bind(t.external_id.clone())
            .bind(t.external_url.clone())
            .bind(t.pull_request_url.clone())
            .bind(t.workflow_override_reason.clone())
            .bind($crate::dbtime::DbTime::opt(t.workflow_overridden_at))
            .bind(t.workflow_overridden_by.map(|u| u.as_uuid()))
            .bind(t.created_by.map(|u| u.as_uuid()))
            .bind($crate::dbtime::DbTime::opt(t.archived_at))
            .bind($crate::dbtime::DbTime(t.created_at))
            .bind($crate::dbtime::DbTime(t.updated_at))
            .bind(t.category.map(|c| c.as_str()))
            .bind(t.metadata.to_string())
            .execute(&mut *$tx)
            .await
    }};
}
pub(crate) use insert_ticket;

/// Writes a ticket's editable fields, guarded by the `updated_at` it was read with.
const UPDATE: &str = "UPDATE tickets SET title = $2, description = $3, severity = $4, external_url = $5, \
     archived_at = $6, updated_at = $7, category = $9, metadata = $10 WHERE id = $1 AND updated_at = $8";

const SELECT_BY_ID: &str = select!("WHERE id = $1");
pub(crate) const SELECT_BY_EXTERNAL: &str = select!("WHERE project_id = $1 AND source = $2 AND external_id = $3");
/// The list statement for one filter combination (see [`crate::sql`]).
/// Search is `lower(x) LIKE '%term%'` on both backends, found through
/// pg_trgm's GIN indexes on PostgreSQL and narrowed by the FTS5 trigram index
/// on SQLite (terms of three characters or more), so both give the same rows.
pub(crate) fn page_query(backend: crate::Backend, filter: &TicketFilter, page: PageRequest) -> Sql {
    let mut sql = Sql::new(select!("WHERE true"));
    if let Some(after) = page.after {
        sql.and(" AND id < ", Arg::Uuid(after.id()));
    }
    match filter.archived {
        ArchivedFilter::Include => {}
        ArchivedFilter::Exclude => {
            sql.push(" AND archived_at IS NULL");
        }
        ArchivedFilter::Only => {
            sql.push(" AND archived_at IS NOT NULL");
        }
    }
    if let Some(p) = filter.project_id {
        sql.and(" AND project_id = ", Arg::Uuid(p.as_uuid()));
    }
    if let Some(p) = filter.phase {
        sql.and(" AND phase = ", Arg::Text(p.as_str().into()));
    }
    if let Some(s) = filter.status {
        sql.and(" AND status = ", Arg::Text(s.as_str().into()));
    }
    if let Some(s) = filter.severity {
        sql.and(" AND severity = ", Arg::Text(s.as_str().into()));
    }
    if let Some(term) = filter.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let pattern = contains_pattern(term);
        sql.one_shot = true;
        match backend {
            crate::Backend::Postgres => {
                // Backslash is PostgreSQL's default LIKE escape; an explicit
                // ESCAPE clause would hide the pattern from the trigram index.
                sql.and(" AND (lower(title) LIKE ", Arg::Text(pattern.clone()))
                    .and(" OR lower(description) LIKE ", Arg::Text(pattern))
                    .push(")");
            }
            crate::Backend::Sqlite => {
                if term.chars().count() >= 3 {
                    let phrase = format!("\"{}\"", term.to_lowercase().replace('"', "\"\""));
                    sql.and(
                        " AND id IN (SELECT s.ticket_id FROM ticket_search s WHERE s.rowid IN \
                         (SELECT rowid FROM tickets_fts WHERE tickets_fts MATCH ",
                        Arg::Text(phrase),
                    )
                    .push("))");
                }
                sql.and(" AND (lower(title) LIKE ", Arg::Text(pattern.clone()))
                    .push(" ESCAPE '\\'")
                    .and(" OR lower(description) LIKE ", Arg::Text(pattern))
                    .push(" ESCAPE '\\')");
            }
        }
    }
    if let Some(user) = filter.member_of {
        sql.and(
            " AND project_id IN (SELECT project_id FROM project_members WHERE user_id = ",
            Arg::Uuid(user.as_uuid()),
        )
        .push(")");
    }
    sql.push(" ORDER BY id DESC LIMIT ").arg(Arg::Int(i64::from(page.limit) + 1));
    sql
}

pub(crate) fn from_row(r: &impl RowExt) -> Result<Ticket, StoreError> {
    Ok(Ticket {
        id: TicketId::from_uuid(r.uuid("id")?),
        project_id: ProjectId::from_uuid(r.uuid("project_id")?),
        title: r.text("title")?,
        description: r.text("description")?,
        severity: parse_stored(ENTITY, r.text("severity")?)?,
        phase: parse_stored(ENTITY, r.text("phase")?)?,
        status: parse_stored(ENTITY, r.text("status")?)?,
        source: parse_stored(ENTITY, r.text("source")?)?,
        external_id: r.opt_text("external_id")?,
        external_url: r.opt_text("external_url")?,
        category: r.opt_text("category")?.map(|c| parse_stored(ENTITY, c)).transpose()?,
        metadata: serde_json::from_str(&r.text("metadata")?)
            .map_err(|e| StoreError::Corrupt { entity: ENTITY, detail: format!("metadata: {e}") })?,
        pull_request_url: r.opt_text("pull_request_url")?,
        workflow_override_reason: r.opt_text("workflow_override_reason")?,
        workflow_overridden_at: r.opt_time("workflow_overridden_at")?,
        workflow_overridden_by: r.opt_uuid("workflow_overridden_by")?.map(UserId::from_uuid),
        created_by: r.opt_uuid("created_by")?.map(UserId::from_uuid),
        archived_at: r.opt_time("archived_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

impl Store {
    /// Files a ticket in a project. The project must exist and not be archived.
    pub async fn create_ticket(
        &self,
        project_id: ProjectId,
        new: NewTicket,
        created_by: Option<UserId>,
    ) -> Result<Ticket, StoreError> {
        let project = self.get_project(project_id).await?;
        if project.archived_at.is_some() {
            return Err(StoreError::ParentArchived { entity: "project", id: project_id.to_string() });
        }
        let t = new.into_ticket(project_id, created_by, crate::now());
        let event = NewEvent::new(
            EventType::TicketFiled,
            serde_json::json!({"ticket_id": t.id, "title": t.title, "severity": t.severity, "source": t.source,
                "category": t.category, "external_url": t.external_url, "created_by": t.created_by}),
        )
        .project(project_id)
        .ticket(Some(t.id));
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            insert_ticket!(tx, t)?;
            emit!(self, tx, &event)?;
            tx.commit().await
        }
        .await)
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        Ok(t)
    }

    pub async fn get_ticket(&self, id: TicketId) -> Result<Ticket, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_ID).bind(id.as_uuid()).fetch_optional(pool).await?.map(|r| from_row(&r)).transpose()
        })?;
        row.ok_or_else(|| StoreError::not_found(ENTITY, id))
    }

    pub async fn list_tickets(&self, filter: &TicketFilter, page: PageRequest) -> Result<Page<Ticket>, StoreError> {
        let sql = page_query(self.backend(), filter, page);
        let rows = on_pool!(self, |pool| {
            bound!(sql).fetch_all(pool).await?.iter().map(from_row).collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Page::from_rows(rows, page.limit, |t| t.id.as_uuid()))
    }

    /// The plan of the list statement for `filter` (`EXPLAIN` on PostgreSQL,
    /// `EXPLAIN QUERY PLAN` on SQLite), one line per plan line: what the
    /// index test reads, and what an operator asks for a slow list.
    pub async fn explain_list_tickets(&self, filter: &TicketFilter, page: PageRequest) -> Result<String, StoreError> {
        self.explain(page_query(self.backend(), filter, page)).await
    }

    pub async fn update_ticket(&self, id: TicketId, patch: TicketPatch) -> Result<Ticket, StoreError> {
        self.modify_ticket(id, EventType::TicketEdited, |t| patch.clone().apply(t)).await
    }

    /// Archives a ticket; archiving an archived ticket changes nothing.
    pub async fn archive_ticket(&self, id: TicketId) -> Result<Ticket, StoreError> {
        let now = crate::now();
        self.modify_ticket(id, EventType::TicketArchived, |t| {
            t.archived_at.get_or_insert(now);
        })
        .await
    }

    pub async fn unarchive_ticket(&self, id: TicketId) -> Result<Ticket, StoreError> {
        self.modify_ticket(id, EventType::TicketEdited, |t| t.archived_at = None).await
    }

    /// Records the pull request a ticket's execution opened (or updated).
    pub async fn set_ticket_pull_request(&self, id: TicketId, url: &str) -> Result<(), StoreError> {
        let now = DbTime(crate::now());
        on_pool!(self, |pool| {
            sqlx::query("UPDATE tickets SET pull_request_url = $2, updated_at = $3 WHERE id = $1")
                .bind(id.as_uuid())
                .bind(url)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    /// A read-modify-write of a ticket, guarded by the `updated_at` read, with
    /// its `event` in the same transaction.
    async fn modify_ticket(
        &self,
        id: TicketId,
        event_type: EventType,
        change: impl Fn(&mut Ticket),
    ) -> Result<Ticket, StoreError> {
        let read = || self.get_ticket(id);
        let write = |t: Ticket, read_at| async move {
            let event = NewEvent::new(
                event_type,
                serde_json::json!({"ticket_id": t.id, "title": t.title, "severity": t.severity,
                    "archived": t.archived_at.is_some()}),
            )
            .project(t.project_id)
            .ticket(Some(t.id));
            on_pool!(self, |pool| async {
                let mut tx = crate::BeginWrite::begin_write(pool).await?;
                let changed = sqlx::query(UPDATE)
                    .bind(id.as_uuid())
                    .bind(t.title.clone())
                    .bind(t.description.clone())
                    .bind(t.severity.as_str())
                    .bind(t.external_url.clone())
                    .bind(DbTime::opt(t.archived_at))
                    .bind(DbTime(t.updated_at))
                    .bind(DbTime(read_at))
                    .bind(t.category.map(|c| c.as_str()))
                    .bind(t.metadata.to_string())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if changed == 1 {
                    emit!(self, tx, &event)?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(changed)
            }
            .await)
            .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))
        };
        modify(ENTITY, read, write, change).await
    }
}
