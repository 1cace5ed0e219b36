//! Projects.

use viberglass_domain::ticket::ArchivedFilter;
use viberglass_domain::{NewProject, Page, PageRequest, Project, ProjectId, ProjectPatch, ProjectSlug};

use crate::dbtime::DbTime;
use crate::rows::{RowExt, contains_pattern, to_u32};
use crate::versioned::modify;
use crate::{Store, StoreError, on_pool};

const TABLE: &str = "projects";
const ENTITY: &str = "project";

macro_rules! select {
    ($($rest:literal),*) => {
        concat!(
            "SELECT id, name, slug, description, repository_url, base_branch, pr_repository_url, pr_base_branch, \
             branch_name_template, (SELECT integrations.name FROM integrations \
             WHERE integrations.id = projects.scm_integration_id) AS scm_integration, (SELECT secrets.name FROM secrets WHERE secrets.id = projects.credential_secret_id) \
             AS credential_secret, scm_username, max_execution_secs, max_concurrent_jobs, agent_instructions, \
             research_needs_approval, planning_needs_approval, allow_run_all, \
             archived_at, created_at, updated_at FROM projects ",
            $($rest),*
        )
    };
}

const INSERT: &str = "INSERT INTO projects (id, name, slug, description, repository_url, base_branch, pr_repository_url, \
     pr_base_branch, branch_name_template, credential_secret_id, scm_username, max_execution_secs, max_concurrent_jobs, \
     agent_instructions, archived_at, scm_integration_id, research_needs_approval, planning_needs_approval, \
     allow_run_all, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
     $9, (SELECT id FROM secrets WHERE name = $10), $11, $12, $13, $14, $15, \
     (SELECT id FROM integrations WHERE name = $16), $17, $18, $19, $20, $21)";
/// Writes every field of a project, guarded by the `updated_at` it was read
/// with, so two concurrent edits cannot silently overwrite each other.
const UPDATE: &str = "UPDATE projects SET name = $2, slug = $3, description = $4, repository_url = $5, base_branch = $6, \
     pr_repository_url = $7, pr_base_branch = $8, branch_name_template = $9, \
     credential_secret_id = (SELECT id FROM secrets WHERE name = $10), scm_username = $11, max_execution_secs = $12, \
     max_concurrent_jobs = $13, agent_instructions = $14, archived_at = $15, \
     scm_integration_id = (SELECT id FROM integrations WHERE name = $16), research_needs_approval = $17, \
     planning_needs_approval = $18, allow_run_all = $19, updated_at = $20 \
     WHERE id = $1 AND updated_at = $21";
const SELECT_BY_ID: &str = select!("WHERE id = $1");
const SELECT_BY_SLUG: &str = select!("WHERE slug = $1");
const SELECT_PAGE: &str = select!(
    "WHERE ($1 IS NULL OR id < $1) ",
    "AND ($2 = 'include' OR ($2 = 'exclude' AND archived_at IS NULL) OR ($2 = 'only' AND archived_at IS NOT NULL)) ",
    "AND ($3 IS NULL OR lower(name) LIKE $3 ESCAPE '\\' OR slug LIKE $3 ESCAPE '\\' OR lower(description) LIKE $3 ESCAPE '\\') ",
    "AND ($5 IS NULL OR id IN (SELECT project_id FROM project_members WHERE user_id = $5)) ",
    "ORDER BY id DESC LIMIT $4"
);

/// Which projects a list returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectFilter {
    pub archived: ArchivedFilter,
    /// Matches name, slug and description, case-insensitively.
    pub search: Option<String>,
    /// Only the projects this user is a member of.
    pub member_of: Option<viberglass_domain::UserId>,
}

pub(crate) fn archived_param(filter: ArchivedFilter) -> &'static str {
    match filter {
        ArchivedFilter::Exclude => "exclude",
        ArchivedFilter::Include => "include",
        ArchivedFilter::Only => "only",
    }
}

fn from_row(r: &impl RowExt) -> Result<Project, StoreError> {
    Ok(Project {
        id: ProjectId::from_uuid(r.uuid("id")?),
        name: r.text("name")?,
        slug: ProjectSlug::stored(&r.text("slug")?).map_err(|detail| StoreError::Corrupt { entity: ENTITY, detail })?,
        description: r.text("description")?,
        repository_url: r.opt_text("repository_url")?,
        base_branch: r.text("base_branch")?,
        pr_repository_url: r.opt_text("pr_repository_url")?,
        pr_base_branch: r.opt_text("pr_base_branch")?,
        branch_name_template: r.text("branch_name_template")?,
        scm_integration: r.opt_text("scm_integration")?,
        credential_secret: r.opt_text("credential_secret")?,
        scm_username: r.text("scm_username")?,
        max_execution_secs: to_u32(ENTITY, "max_execution_secs", r.int("max_execution_secs")?)?,
        max_concurrent_jobs: to_u32(ENTITY, "max_concurrent_jobs", r.int("max_concurrent_jobs")?)?,
        agent_instructions: r.text("agent_instructions")?,
        research_needs_approval: r.flag("research_needs_approval")?,
        planning_needs_approval: r.flag("planning_needs_approval")?,
        allow_run_all: r.flag("allow_run_all")?,
        archived_at: r.opt_time("archived_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// Binds every column of a project in the order INSERT and UPDATE use ($2..$19).
macro_rules! bind_fields {
    ($query:expr, $p:expr) => {
        $query
            .bind($p.name.clone())
            .bind($p.slug.as_str().to_owned())
            .bind($p.description.clone())
            .bind($p.repository_url.clone())
            .bind($p.base_branch.clone())
            .bind($p.pr_repository_url.clone())
            .bind($p.pr_base_branch.clone())
            .bind($p.branch_name_template.clone())
            .bind($p.credential_secret.clone())
            .bind($p.scm_username.clone())
            .bind(i64::from($p.max_execution_secs))
            .bind(i64::from($p.max_concurrent_jobs))
            .bind($p.agent_instructions.clone())
            .bind(DbTime::opt($p.archived_at))
            .bind($p.scm_integration.clone())
            .bind($p.research_needs_approval)
            .bind($p.planning_needs_approval)
            .bind($p.allow_run_all)
    };
}

impl Store {
    pub async fn create_project(&self, new: NewProject) -> Result<Project, StoreError> {
        let project = new.into_project(crate::now());
        on_pool!(self, |pool| {
            bind_fields!(sqlx::query(INSERT).bind(project.id.as_uuid()), project)
                .bind(DbTime(project.created_at))
                .bind(DbTime(project.updated_at))
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        Ok(project)
    }

    /// A project by id: from the cache of projects while it is live (see
    /// `credentials`), else from the database.
    pub async fn get_project(&self, id: ProjectId) -> Result<Project, StoreError> {
        if let Some(project) = self.credentials.project(&format!("id:{id}")) {
            return Ok(project);
        }
        let generation = self.credentials.generation();
        let project = self.read_project(id).await?;
        self.credentials.put_project(&project, generation);
        Ok(project)
    }

    /// A project as the database has it now (never from the cache): for decisions a stale copy must not make
    /// (which credential a worker gets, whether the project is archived).
    pub async fn read_project(&self, id: ProjectId) -> Result<Project, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_ID).bind(id.as_uuid()).fetch_optional(pool).await?.map(|r| from_row(&r)).transpose()
        })?;
        row.ok_or_else(|| StoreError::not_found(ENTITY, id))
    }

    pub async fn get_project_by_slug(&self, slug: &ProjectSlug) -> Result<Project, StoreError> {
        if let Some(project) = self.credentials.project(&format!("slug:{}", slug.as_str())) {
            return Ok(project);
        }
        let generation = self.credentials.generation();
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_SLUG)
                .bind(slug.as_str())
                .fetch_optional(pool)
                .await?
                .map(|r| from_row(&r))
                .transpose()
        })?;
        let project = row.ok_or_else(|| StoreError::not_found(ENTITY, slug.as_str()))?;
        self.credentials.put_project(&project, generation);
        Ok(project)
    }

    /// Tells every server's cache of projects that a project's view may
    /// have changed (a project, or an integration or secret it names).
    pub(crate) async fn projects_changed(&self) {
        self.credentials_changed(crate::credentials::Change::Projects).await;
    }

    pub async fn list_projects(&self, filter: &ProjectFilter, page: PageRequest) -> Result<Page<Project>, StoreError> {
        let after = page.after.map(|c| c.id());
        let search = filter.search.as_deref().filter(|s| !s.trim().is_empty()).map(contains_pattern);
        let rows = on_pool!(self, |pool| {
            sqlx::query(SELECT_PAGE)
                .bind(after)
                .bind(archived_param(filter.archived))
                .bind(search)
                .bind(i64::from(page.limit) + 1)
                .bind(filter.member_of.map(|u| u.as_uuid()))
                .fetch_all(pool)
                .await?
                .iter()
                .map(from_row)
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Page::from_rows(rows, page.limit, |p| p.id.as_uuid()))
    }

    /// Applies a change to a project and returns it as stored.
    pub async fn update_project(&self, id: ProjectId, patch: ProjectPatch) -> Result<Project, StoreError> {
        let project = self.modify_project(id, |p| patch.clone().apply(p)).await?;
        // A raised job limit can make queued jobs dispatchable.
        self.jobs_changed();
        Ok(project)
    }

    /// Archives a project; archiving an archived project changes nothing.
    pub async fn archive_project(&self, id: ProjectId) -> Result<Project, StoreError> {
        let now = crate::now();
        self.modify_project(id, |p| {
            p.archived_at.get_or_insert(now);
        })
        .await
    }

    pub async fn unarchive_project(&self, id: ProjectId) -> Result<Project, StoreError> {
        self.modify_project(id, |p| p.archived_at = None).await
    }

    /// Reads (from the database, never the cache: the write is guarded by
    /// the row's `updated_at`), changes and writes a project, then announces
    /// the change to every server's cache.
    async fn modify_project(&self, id: ProjectId, change: impl Fn(&mut Project)) -> Result<Project, StoreError> {
        let read = || self.read_project(id);
        let write = |project: Project, read_at| async move {
            on_pool!(self, |pool| {
                bind_fields!(sqlx::query(UPDATE).bind(id.as_uuid()), project)
                    .bind(DbTime(project.updated_at))
                    .bind(DbTime(read_at))
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))
        };
        let modified = modify(ENTITY, read, write, change).await;
        // Announced even when the write failed: a change that half happened must not be trusted from memory.
        self.projects_changed().await;
        modified
    }
}
