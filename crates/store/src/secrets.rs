//! Secrets' metadata. Values never pass through here for the `env` backend:
//! they are read from the server's environment at use time.

use viberglass_domain::{NewSecret, Secret, SecretId};

use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored};
use crate::{Store, StoreError, on_pool};

const TABLE: &str = "secrets";
const ENTITY: &str = "secret";

const INSERT: &str = "INSERT INTO secrets (id, name, backend, reference, description, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6)";
const SELECT_ALL: &str =
    "SELECT id, name, backend, reference, description, created_at, updated_at FROM secrets ORDER BY name LIMIT 1000";
const SELECT_BY_NAME: &str =
    "SELECT id, name, backend, reference, description, created_at, updated_at FROM secrets WHERE name = $1";

fn from_row(r: &impl RowExt) -> Result<Secret, StoreError> {
    Ok(Secret {
        id: SecretId::from_uuid(r.uuid("id")?),
        name: r.text("name")?,
        backend: parse_stored(ENTITY, r.text("backend")?)?,
        reference: r.opt_text("reference")?,
        description: r.text("description")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

impl Store {
    pub async fn create_secret(&self, new: NewSecret) -> Result<Secret, StoreError> {
        let now = crate::now();
        let secret = Secret {
            id: SecretId::new(),
            name: new.name,
            backend: new.backend,
            reference: new.reference,
            description: new.description,
            created_at: now,
            updated_at: now,
        };
        on_pool!(self, |pool| {
            sqlx::query(INSERT)
                .bind(secret.id.as_uuid())
                .bind(secret.name.clone())
                .bind(secret.backend.as_str())
                .bind(secret.reference.clone())
                .bind(secret.description.clone())
                .bind(DbTime(now))
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        Ok(secret)
    }

    /// Every secret's metadata, by name.
    pub async fn list_secrets(&self) -> Result<Vec<Secret>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(SELECT_ALL).fetch_all(pool).await?.iter().map(from_row).collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    pub async fn get_secret_by_name(&self, name: &str) -> Result<Secret, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_NAME).bind(name).fetch_optional(pool).await?.map(|r| from_row(&r)).transpose()
        })?;
        row.ok_or_else(|| StoreError::not_found(ENTITY, name))
    }
}
