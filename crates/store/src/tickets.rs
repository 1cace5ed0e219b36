//! Tickets.

use viberglass_domain::{
    EventType, NewEvent, NewTicket, Page, PageRequest, ProjectId, Ticket, TicketFilter, TicketId, TicketPatch, UserId,
};

use crate::dbtime::DbTime;
use crate::outbox::emit;
use crate::rows::{RowExt, contains_pattern, parse_stored};
use crate::sql::{Arg, Sql, bound};
use crate::users::NewAudit;
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
        self.file_ticket(project_id, new, created_by, |_| None).await
    }

    /// Files a ticket in a project, with its `ticket.filed` event and the
    /// audit entry `audit` makes for it (if any) in the same transaction. Concurrent filings
    /// share transactions (see [`crate::group`]): each caller is answered once
    /// its ticket is committed, or with its own error.
    pub async fn file_ticket(
        &self,
        project_id: ProjectId,
        new: NewTicket,
        created_by: Option<UserId>,
        audit: impl FnOnce(&Ticket) -> Option<NewAudit>,
    ) -> Result<Ticket, StoreError> {
        let t = new.into_ticket(project_id, created_by, crate::now());
        let audit = audit(&t);
        let event = NewEvent::new(
            EventType::TicketFiled,
            serde_json::json!({"ticket_id": t.id, "title": t.title, "severity": t.severity, "source": t.source,
                "category": t.category, "external_url": t.external_url, "created_by": t.created_by}),
        )
        .project(project_id)
        .ticket(Some(t.id));
        let item = Filing { ticket: t.clone(), event, audit };
        let store = self.clone();
        self.ticket_filings
            .submit(
                item,
                move |batch| {
                    let store = store.clone();
                    async move { store.write_filings(batch).await }
                },
                || {
                    Err(StoreError::Database(sqlx::Error::Protocol(
                        "the batch writing this ticket ended without an answer".into(),
                    )))
                },
            )
            .await?;
        Ok(t)
    }

    /// Writes a batch of filings in one transaction; when that fails (one
    /// ticket's external id is taken, say), writes each on its own so every
    /// caller gets its own answer.
    async fn write_filings(&self, batch: Vec<Filing>) -> Vec<Result<(), StoreError>> {
        if batch.len() > 1 {
            match self.write_filing_batch(&batch).await {
                Ok(results) => return results,
                Err(e) => {
                    tracing::debug!(error = %e, size = batch.len(), "a batch of filings failed; writing each alone")
                }
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        for item in batch {
            let one = self.write_filing_batch(std::slice::from_ref(&item)).await;
            results.push(one.and_then(|mut r| r.pop().unwrap_or(Ok(()))));
        }
        results
    }

    /// One transaction for `batch`: tickets in a missing or archived project
    /// are answered with that error and left out; the rest are inserted with
    /// their events and audit entries (on PostgreSQL, one statement per table
    /// for the whole batch). `Err` when the transaction failed as a whole.
    async fn write_filing_batch(&self, batch: &[Filing]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(batch.len());
        let fail = self.take_injected_outbox_failure();
        let now = crate::now();
        let written = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let mut projects: Vec<(ProjectId, Option<bool>)> = Vec::new();
            for item in batch {
                let project = item.ticket.project_id;
                let archived = match projects.iter().find(|(p, _)| *p == project) {
                    Some((_, archived)) => *archived,
                    None => {
                        let row = sqlx::query("SELECT archived_at IS NOT NULL AS archived FROM projects WHERE id = $1")
                            .bind(project.as_uuid())
                            .fetch_optional(&mut *tx)
                            .await?;
                        let archived = row.map(|r| sqlx::Row::try_get::<bool, _>(&r, "archived")).transpose()?;
                        projects.push((project, archived));
                        archived
                    }
                };
                results.push(match archived {
                    None => Err(StoreError::not_found("project", project)),
                    Some(true) => Err(StoreError::ParentArchived { entity: "project", id: project.to_string() }),
                    Some(false) => Ok(()),
                });
            }
            if fail {
                return Err(sqlx::Error::Protocol("injected outbox failure".into()));
            }
            let accepted: Vec<&Filing> =
                batch.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(f, _)| f).collect();
            InsertFilings::insert_filings(&mut tx, &accepted, now).await?;
            tx.commit().await
        }
        .await);
        written.map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        Ok(results)
    }

    /// Tickets whose workflow override is still in place (not archived),
    /// newest first: a gate skipped once and left open.
    pub async fn tickets_with_override(&self, limit: u32) -> Result<Vec<Ticket>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(select!(
                "WHERE workflow_override_reason IS NOT NULL AND archived_at IS NULL ORDER BY id DESC LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(from_row)
            .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
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

/// A ticket being filed, with what commits with it.
#[derive(Clone)]
pub(crate) struct Filing {
    ticket: Ticket,
    event: NewEvent,
    audit: Option<NewAudit>,
}

const INSERT_EVENT_BATCH_POSTGRES: &str = "INSERT INTO events (event_id, type, project_id, ticket_id, job_id, data, created_at) \
     SELECT e, t, p, k, j, d::jsonb, c FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], \
     $6::text[], $7::timestamptz[]) AS u(e, t, p, k, j, d, c)";
const INSERT_TICKET_BATCH_POSTGRES: &str = "INSERT INTO tickets (id, project_id, title, description, severity, phase, \
     status, source, external_id, external_url, pull_request_url, workflow_override_reason, workflow_overridden_at, \
     workflow_overridden_by, created_by, archived_at, created_at, updated_at, category, metadata) \
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::timestamptz[], $14::uuid[], $15::uuid[], \
     $16::timestamptz[], $17::timestamptz[], $18::timestamptz[], $19::text[], $20::text[])";
const INSERT_AUDIT_BATCH_POSTGRES: &str = "INSERT INTO audit_log (id, actor_id, channel, action, target_kind, \
     target_id, project_id, details, request_id, created_at) \
     SELECT i, a, ch, ac, k, t, p, d::jsonb, r, c FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], \
     $5::text[], $6::text[], $7::uuid[], $8::text[], $9::text[], $10::timestamptz[]) AS u(i, a, ch, ac, k, t, p, d, r, c)";

/// Inserts accepted filings (tickets, then their events, then their audit
/// entries) on an open write transaction.
trait InsertFilings {
    fn insert_filings<'a>(
        &'a mut self,
        items: &'a [&'a Filing],
        now: time::OffsetDateTime,
    ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'a;
}

impl InsertFilings for sqlx::Transaction<'static, sqlx::Sqlite> {
    /// SQLite runs in this process: a statement per row costs no round trip,
    /// and the commit is what batching saves.
    async fn insert_filings<'a>(
        &'a mut self,
        items: &'a [&'a Filing],
        now: time::OffsetDateTime,
    ) -> Result<(), sqlx::Error> {
        {
            for f in items {
                insert_ticket!(*self, f.ticket)?;
                crate::outbox::insert_event!(&mut **self, &f.event, now)?;
                if let Some(a) = &f.audit {
                    crate::users::insert_audit!(&mut **self, a, now)?;
                }
            }
            Ok(())
        }
    }
}

impl InsertFilings for sqlx::Transaction<'static, sqlx::Postgres> {
    /// One statement per table for the whole batch: the rows travel as
    /// arrays and `unnest` turns them back into rows, so PostgreSQL parses,
    /// plans and executes three statements however many tickets there are.
    async fn insert_filings<'a>(
        &'a mut self,
        items: &'a [&'a Filing],
        now: time::OffsetDateTime,
    ) -> Result<(), sqlx::Error> {
        {
            if items.is_empty() {
                return Ok(());
            }
            let tickets: Vec<&Ticket> = items.iter().map(|f| &f.ticket).collect();
            let texts = |f: fn(&Ticket) -> Option<String>| tickets.iter().map(|t| f(t)).collect::<Vec<_>>();
            let times =
                |f: fn(&Ticket) -> Option<time::OffsetDateTime>| tickets.iter().map(|t| f(t)).collect::<Vec<_>>();
            sqlx::query(INSERT_TICKET_BATCH_POSTGRES)
                .bind(tickets.iter().map(|t| t.id.as_uuid()).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.project_id.as_uuid()).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.title.clone()).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.description.clone()).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.severity.as_str()).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.phase.as_str()).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.source.as_str()).collect::<Vec<_>>())
                .bind(texts(|t| t.external_id.clone()))
                .bind(texts(|t| t.external_url.clone()))
                .bind(texts(|t| t.pull_request_url.clone()))
                .bind(texts(|t| t.workflow_override_reason.clone()))
                .bind(times(|t| t.workflow_overridden_at))
                .bind(tickets.iter().map(|t| t.workflow_overridden_by.map(|u| u.as_uuid())).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.created_by.map(|u| u.as_uuid())).collect::<Vec<_>>())
                .bind(times(|t| t.archived_at))
                .bind(tickets.iter().map(|t| t.created_at).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.updated_at).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.category.map(|c| c.as_str())).collect::<Vec<_>>())
                .bind(tickets.iter().map(|t| t.metadata.to_string()).collect::<Vec<_>>())
                .execute(&mut **self)
                .await?;
            let events: Vec<&NewEvent> = items.iter().map(|f| &f.event).collect();
            sqlx::query(INSERT_EVENT_BATCH_POSTGRES)
                .bind(events.iter().map(|_| uuid::Uuid::now_v7()).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.project_id.map(|p| p.as_uuid())).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.ticket_id.map(|t| t.as_uuid())).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.job_id.map(|j| j.as_uuid())).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.data.to_string()).collect::<Vec<_>>())
                .bind(events.iter().map(|_| now).collect::<Vec<_>>())
                .execute(&mut **self)
                .await?;
            let audits: Vec<&NewAudit> = items.iter().filter_map(|f| f.audit.as_ref()).collect();
            if !audits.is_empty() {
                sqlx::query(INSERT_AUDIT_BATCH_POSTGRES)
                    .bind(audits.iter().map(|_| uuid::Uuid::now_v7()).collect::<Vec<_>>())
                    .bind(audits.iter().map(|a| a.actor_id.map(|u| u.as_uuid())).collect::<Vec<_>>())
                    .bind(audits.iter().map(|a| a.channel.clone()).collect::<Vec<_>>())
                    .bind(audits.iter().map(|a| a.action.clone()).collect::<Vec<_>>())
                    .bind(audits.iter().map(|a| a.target_kind.clone()).collect::<Vec<_>>())
                    .bind(audits.iter().map(|a| a.target_id.clone()).collect::<Vec<_>>())
                    .bind(audits.iter().map(|a| a.project_id.map(|p| p.as_uuid())).collect::<Vec<_>>())
                    .bind(audits.iter().map(|a| a.details.to_string()).collect::<Vec<_>>())
                    .bind(audits.iter().map(|a| a.request_id.clone()).collect::<Vec<_>>())
                    .bind(audits.iter().map(|_| now).collect::<Vec<_>>())
                    .execute(&mut **self)
                    .await?;
            }
            Ok(())
        }
    }
}
