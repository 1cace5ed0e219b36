//! Clankers and their instruction files.

use viberglass_domain::{
    Clanker, ClankerId, ClankerStatus, InstructionFile, NewClanker, Page, PageRequest, ProjectId, ProjectSlug,
};

use sqlx::types::Json;

use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored, to_u32};
use crate::{Store, StoreError, on_pool};

const TABLE: &str = "clankers";
const ENTITY: &str = "clanker";

macro_rules! select {
    ($($rest:literal),*) => {
        concat!(
            "SELECT id, name, slug, description, agent, agent_settings, compute, compute_config, status, \
             status_message, max_concurrent_jobs, shared, created_at, updated_at FROM clankers ",
            $($rest),*
        )
    };
}

const INSERT: &str = "INSERT INTO clankers (id, name, slug, description, agent, agent_settings, compute, \
     compute_config, status, status_message, max_concurrent_jobs, created_at, updated_at, shared) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
const INSERT_PROJECT: &str = "INSERT INTO clanker_projects (clanker_id, project_id) VALUES ($1, $2)";
const DELETE_PROJECTS: &str = "DELETE FROM clanker_projects WHERE clanker_id = $1";
const SELECT_PROJECTS: &str = "SELECT project_id FROM clanker_projects WHERE clanker_id = $1 ORDER BY project_id";
const INSERT_FILE: &str = "INSERT INTO clanker_files (clanker_id, path, content, updated_at) VALUES ($1, $2, $3, $4)";
const INSERT_SECRET: &str =
    "INSERT INTO clanker_secrets (clanker_id, secret_id) SELECT $1, id FROM secrets WHERE name = $2";
const SELECT_SECRETS: &str = "SELECT secrets.name AS name FROM clanker_secrets \
     JOIN secrets ON secrets.id = clanker_secrets.secret_id WHERE clanker_secrets.clanker_id = $1 ORDER BY secrets.name";
const DELETE_FILES: &str = "DELETE FROM clanker_files WHERE clanker_id = $1";
const DELETE_SECRETS: &str = "DELETE FROM clanker_secrets WHERE clanker_id = $1";
/// Guarded by the `updated_at` the caller read, so a concurrent edit is never lost.
const UPDATE: &str = "UPDATE clankers SET name = $2, slug = $3, description = $4, agent = $5, agent_settings = $6, \
     compute = $7, compute_config = $8, max_concurrent_jobs = $9, updated_at = $10, shared = $11 \
     WHERE id = $1 AND updated_at = $12";
const SELECT_FILES: &str = "SELECT path, content FROM clanker_files WHERE clanker_id = $1 ORDER BY path";
const SELECT_BY_ID: &str = select!("WHERE id = $1");
const SELECT_BY_SLUG: &str = select!("WHERE slug = $1");
const SELECT_PAGE: &str = select!("WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2");
const SET_STATUS: &str = "UPDATE clankers SET status = $2, status_message = $3, updated_at = $4 WHERE id = $1";

fn from_row(r: &impl RowExt) -> Result<Clanker, StoreError> {
    Ok(Clanker {
        id: ClankerId::from_uuid(r.uuid("id")?),
        name: r.text("name")?,
        slug: ProjectSlug::stored(&r.text("slug")?).map_err(|detail| StoreError::Corrupt { entity: ENTITY, detail })?,
        description: r.text("description")?,
        agent: parse_stored(ENTITY, r.text("agent")?)?,
        agent_settings: r.json("agent_settings")?,
        compute: parse_stored(ENTITY, r.text("compute")?)?,
        compute_config: r.json("compute_config")?,
        status: parse_stored(ENTITY, r.text("status")?)?,
        status_message: r.opt_text("status_message")?,
        max_concurrent_jobs: to_u32(ENTITY, "max_concurrent_jobs", r.int("max_concurrent_jobs")?)?,
        instruction_files: Vec::new(),
        secrets: Vec::new(),
        shared: r.flag("shared")?,
        projects: Vec::new(),
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

impl Store {
    pub async fn create_clanker(&self, new: NewClanker) -> Result<Clanker, StoreError> {
        let now = crate::now();
        let clanker = Clanker {
            id: ClankerId::new(),
            name: new.name,
            slug: new.slug,
            description: new.description,
            agent: new.agent,
            agent_settings: new.agent_settings,
            compute: new.compute,
            compute_config: new.compute_config,
            status: ClankerStatus::Inactive,
            status_message: None,
            max_concurrent_jobs: new.max_concurrent_jobs,
            instruction_files: new.instruction_files,
            secrets: new.secrets,
            shared: new.shared,
            projects: new.projects,
            created_at: now,
            updated_at: now,
        };
        let c = &clanker;
        // The body is an async block so that `?` stays inside it and every
        // error reaches `from_write`, which names a duplicate slug.
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            sqlx::query(INSERT)
                .bind(c.id.as_uuid())
                .bind(c.name.clone())
                .bind(c.slug.as_str().to_owned())
                .bind(c.description.clone())
                .bind(c.agent.as_str())
                .bind(Json(c.agent_settings.clone()))
                .bind(c.compute.as_str())
                .bind(Json(c.compute_config.clone()))
                .bind(c.status.as_str())
                .bind(c.status_message.clone())
                .bind(i64::from(c.max_concurrent_jobs))
                .bind(DbTime(c.created_at))
                .bind(DbTime(c.updated_at))
                .bind(c.shared)
                .execute(&mut *tx)
                .await?;
            for project in &c.projects {
                sqlx::query(INSERT_PROJECT).bind(c.id.as_uuid()).bind(project.as_uuid()).execute(&mut *tx).await?;
            }
            for file in &c.instruction_files {
                sqlx::query(INSERT_FILE)
                    .bind(c.id.as_uuid())
                    .bind(file.path.clone())
                    .bind(file.content.clone())
                    .bind(DbTime(now))
                    .execute(&mut *tx)
                    .await?;
            }
            for name in &c.secrets {
                sqlx::query(INSERT_SECRET).bind(c.id.as_uuid()).bind(name.clone()).execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await)
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;

        Ok(clanker)
    }

    pub async fn get_clanker(&self, id: ClankerId) -> Result<Clanker, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_ID).bind(id.as_uuid()).fetch_optional(pool).await?.map(|r| from_row(&r)).transpose()
        })?;
        let mut clanker = row.ok_or_else(|| StoreError::not_found(ENTITY, id))?;
        clanker.instruction_files = self.clanker_files(id).await?;
        clanker.secrets = self.clanker_secrets(id).await?;
        clanker.projects = self.clanker_projects(id).await?;
        Ok(clanker)
    }

    async fn clanker_projects(&self, id: ClankerId) -> Result<Vec<ProjectId>, StoreError> {
        let ids = on_pool!(self, |pool| {
            sqlx::query(SELECT_PROJECTS)
                .bind(id.as_uuid())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.uuid("project_id").map(ProjectId::from_uuid))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(ids)
    }

    pub async fn get_clanker_by_slug(&self, slug: &ProjectSlug) -> Result<Clanker, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_SLUG)
                .bind(slug.as_str())
                .fetch_optional(pool)
                .await?
                .map(|r| from_row(&r))
                .transpose()
        })?;
        let clanker = row.ok_or_else(|| StoreError::not_found(ENTITY, slug.as_str()))?;
        self.get_clanker(clanker.id).await
    }

    async fn clanker_files(&self, id: ClankerId) -> Result<Vec<InstructionFile>, StoreError> {
        let files = on_pool!(self, |pool| {
            sqlx::query(SELECT_FILES)
                .bind(id.as_uuid())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok::<_, sqlx::Error>(InstructionFile { path: r.text("path")?, content: r.text("content")? }))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(files)
    }

    async fn clanker_secrets(&self, id: ClankerId) -> Result<Vec<String>, StoreError> {
        let names = on_pool!(self, |pool| {
            sqlx::query(SELECT_SECRETS)
                .bind(id.as_uuid())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.text("name"))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(names)
    }

    /// Replaces a clanker's configuration (its status is kept), only if it is
    /// still as the caller read it (`read_at`, its `updated_at`); else
    /// `Contended`, and the caller reads again and re-applies its change.
    pub async fn update_clanker(
        &self,
        id: ClankerId,
        read_at: time::OffsetDateTime,
        new: NewClanker,
    ) -> Result<Clanker, StoreError> {
        let now = DbTime(crate::now().max(read_at + time::Duration::microseconds(1)));
        let changed = on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let changed = sqlx::query(UPDATE)
                .bind(id.as_uuid())
                .bind(new.name.clone())
                .bind(new.slug.as_str().to_owned())
                .bind(new.description.clone())
                .bind(new.agent.as_str())
                .bind(Json(new.agent_settings.clone()))
                .bind(new.compute.as_str())
                .bind(Json(new.compute_config.clone()))
                .bind(i64::from(new.max_concurrent_jobs))
                .bind(now)
                .bind(new.shared)
                .bind(DbTime(read_at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if changed == 0 {
                return Ok(0);
            }
            sqlx::query(DELETE_PROJECTS).bind(id.as_uuid()).execute(&mut *tx).await?;
            for project in &new.projects {
                sqlx::query(INSERT_PROJECT).bind(id.as_uuid()).bind(project.as_uuid()).execute(&mut *tx).await?;
            }
            sqlx::query(DELETE_FILES).bind(id.as_uuid()).execute(&mut *tx).await?;
            sqlx::query(DELETE_SECRETS).bind(id.as_uuid()).execute(&mut *tx).await?;
            for file in &new.instruction_files {
                sqlx::query(INSERT_FILE)
                    .bind(id.as_uuid())
                    .bind(file.path.clone())
                    .bind(file.content.clone())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            for name in &new.secrets {
                sqlx::query(INSERT_SECRET).bind(id.as_uuid()).bind(name.clone()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(changed)
        }
        .await)
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        if changed == 0 {
            // Gone, or changed since it was read.
            self.get_clanker(id).await?;
            return Err(StoreError::Contended { entity: ENTITY });
        }
        // A raised job limit can make queued jobs dispatchable.
        self.jobs_changed();
        self.get_clanker(id).await
    }

    /// Lists clankers, newest first (without their instruction files and secrets).
    pub async fn list_clankers(&self, page: PageRequest) -> Result<Page<Clanker>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(SELECT_PAGE)
                .bind(page.after.map(|c| c.id()))
                .bind(i64::from(page.limit) + 1)
                .fetch_all(pool)
                .await?
                .iter()
                .map(from_row)
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Page::from_rows(rows, page.limit, |c| c.id.as_uuid()))
    }

    /// At boot: clankers a stopped server left `deploying` (its Start was cut
    /// off) become `failed` with `message`; returns how many.
    pub async fn fail_interrupted_deploys(&self, message: &str) -> Result<u64, StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query("UPDATE clankers SET status = 'failed', status_message = $1, updated_at = $2 WHERE status = 'deploying'")
                .bind(message)
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(changed)
    }

    /// Records what provisioning or the compute target last said about a clanker.
    pub async fn set_clanker_status(
        &self,
        id: ClankerId,
        status: ClankerStatus,
        message: Option<String>,
    ) -> Result<(), StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query(SET_STATUS)
                .bind(id.as_uuid())
                .bind(status.as_str())
                .bind(message)
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if changed == 0 {
            return Err(StoreError::not_found(ENTITY, id));
        }
        Ok(())
    }
}
