//! SCM integrations: a provider, its address and the secret holding its token.

use viberglass_domain::{Integration, IntegrationId, IntegrationPatch, NewIntegration};

use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored};
use crate::versioned::modify;
use crate::{Store, StoreError, on_pool};

const TABLE: &str = "integrations";
const ENTITY: &str = "integration";

macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, kind, base_url, (SELECT secrets.name FROM secrets \
             WHERE secrets.id = integrations.credential_secret_id) AS credential_secret, created_at, updated_at \
             FROM integrations ",
            $rest
        )
    };
}

const INSERT: &str = "INSERT INTO integrations (id, name, kind, base_url, credential_secret_id, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, (SELECT id FROM secrets WHERE name = $5), $6, $6)";
const UPDATE: &str = "UPDATE integrations SET name = $2, kind = $3, base_url = $4, \
     credential_secret_id = (SELECT id FROM secrets WHERE name = $5), updated_at = $6 WHERE id = $1 AND updated_at = $7";
const SELECT_ALL: &str = select!("ORDER BY name LIMIT 1000");
const SELECT_BY_ID: &str = select!("WHERE id = $1");
const SELECT_BY_NAME: &str = select!("WHERE name = $1");
const DELETE: &str = "DELETE FROM integrations WHERE id = $1";
const USERS: &str = "SELECT slug FROM projects WHERE scm_integration_id = $1 ORDER BY slug";
const SECRET_USERS: &str = "SELECT i.name FROM integrations i JOIN secrets s ON s.id = i.credential_secret_id \
     WHERE s.name = $1 ORDER BY i.name";

fn from_row(r: &impl RowExt) -> Result<Integration, StoreError> {
    Ok(Integration {
        id: IntegrationId::from_uuid(r.uuid("id")?),
        name: r.text("name")?,
        kind: parse_stored(ENTITY, r.text("kind")?)?,
        base_url: r.opt_text("base_url")?.unwrap_or_default(),
        credential_secret: r.opt_text("credential_secret")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

impl Store {
    pub async fn create_integration(&self, new: NewIntegration) -> Result<Integration, StoreError> {
        let now = crate::now();
        let integration = Integration {
            id: IntegrationId::new(),
            name: new.name,
            kind: new.kind,
            base_url: new.base_url,
            credential_secret: new.credential_secret,
            created_at: now,
            updated_at: now,
        };
        on_pool!(self, |pool| {
            sqlx::query(INSERT)
                .bind(integration.id.as_uuid())
                .bind(integration.name.clone())
                .bind(integration.kind.as_str())
                .bind(integration.base_url.clone())
                .bind(integration.credential_secret.clone())
                .bind(DbTime(now))
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        Ok(integration)
    }

    pub async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(SELECT_ALL).fetch_all(pool).await?.iter().map(from_row).collect::<Result<Vec<_>, _>>()
        })
    }

    pub async fn get_integration(&self, id: IntegrationId) -> Result<Integration, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_ID).bind(id.as_uuid()).fetch_optional(pool).await?.map(|r| from_row(&r)).transpose()
        })?;
        row.ok_or_else(|| StoreError::not_found(ENTITY, id))
    }

    pub async fn get_integration_by_name(&self, name: &str) -> Result<Integration, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_NAME).bind(name).fetch_optional(pool).await?.map(|r| from_row(&r)).transpose()
        })?;
        row.ok_or_else(|| StoreError::not_found(ENTITY, name))
    }

    pub async fn update_integration(
        &self,
        id: IntegrationId,
        patch: IntegrationPatch,
    ) -> Result<Integration, StoreError> {
        let read = || self.get_integration(id);
        let write = |i: Integration, read_at| async move {
            on_pool!(self, |pool| {
                sqlx::query(UPDATE)
                    .bind(id.as_uuid())
                    .bind(i.name.clone())
                    .bind(i.kind.as_str())
                    .bind(i.base_url.clone())
                    .bind(i.credential_secret.clone())
                    .bind(DbTime(i.updated_at))
                    .bind(DbTime(read_at))
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))
        };
        let modified = modify(ENTITY, read, write, |i| patch.clone().apply(i)).await;
        // A project's view names its integration.
        self.projects_changed().await;
        modified
    }

    /// The slugs of the projects that use an integration.
    pub async fn integration_users(&self, id: IntegrationId) -> Result<Vec<String>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(USERS)
                .bind(id.as_uuid())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.text("slug").map_err(StoreError::from))
                .collect::<Result<Vec<_>, _>>()
        })
    }

    /// The names of the integrations whose credential is the secret `name`.
    pub async fn integrations_using_secret(&self, name: &str) -> Result<Vec<String>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(SECRET_USERS)
                .bind(name)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.text("name").map_err(StoreError::from))
                .collect::<Result<Vec<_>, _>>()
        })
    }

    /// Deletes an integration; projects that used it are left without one.
    pub async fn delete_integration(&self, id: IntegrationId) -> Result<(), StoreError> {
        let deleted = on_pool!(self, |pool| {
            sqlx::query(DELETE).bind(id.as_uuid()).execute(pool).await.map(|r| r.rows_affected())
        })?;
        self.projects_changed().await;
        if deleted == 0 {
            return Err(StoreError::not_found(ENTITY, id));
        }
        Ok(())
    }
}
