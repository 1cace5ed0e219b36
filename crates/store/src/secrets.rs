//! Secrets: their metadata, and for the `database` backend the sealed value
//! (ciphertext, nonce and the id of the key that sealed it). Sealing and
//! opening happen in the server: this module never sees a plaintext value.

use viberglass_domain::{NewSecret, Secret, SecretId};

use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored};
use crate::{Store, StoreError, on_pool};

const TABLE: &str = "secrets";
const ENTITY: &str = "secret";

/// A sealed value as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
}

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Who refers to a secret, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretUsers {
    pub clankers: Vec<String>,
    pub projects: Vec<String>,
    pub integrations: Vec<String>,
}

impl SecretUsers {
    pub fn is_empty(&self) -> bool {
        self.clankers.is_empty() && self.projects.is_empty() && self.integrations.is_empty()
    }

    /// "clanker claude, project shop" for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (kind, names) in
            [("clanker", &self.clankers), ("project", &self.projects), ("integration", &self.integrations)]
        {
            parts.extend(names.iter().map(|n| format!("{kind} {n}")));
        }
        parts.join(", ")
    }
}

const INSERT: &str = "INSERT INTO secrets (id, name, backend, reference, ciphertext, nonce, key_id, managed, \
     description, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)";
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, backend, reference, managed, description, created_at, updated_at FROM secrets ",
            $rest
        )
    };
}
const SELECT_ALL: &str = select!("ORDER BY name LIMIT 1000");
const SELECT_BY_NAME: &str = select!("WHERE name = $1");

fn from_row(r: &impl RowExt) -> Result<Secret, StoreError> {
    Ok(Secret {
        id: SecretId::from_uuid(r.uuid("id")?),
        name: r.text("name")?,
        backend: parse_stored(ENTITY, r.text("backend")?)?,
        reference: r.opt_text("reference")?,
        managed: r.flag("managed")?,
        description: r.text("description")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn sealed_from_row(r: &impl RowExt) -> Result<Option<SealedValue>, StoreError> {
    match (r.opt_bytes("ciphertext")?, r.opt_bytes("nonce")?, r.opt_text("key_id")?) {
        (Some(ciphertext), Some(nonce), Some(key_id)) => Ok(Some(SealedValue { ciphertext, nonce, key_id })),
        _ => Ok(None),
    }
}

impl Store {
    /// Stores a secret's metadata, with its sealed value for the `database` backend.
    pub async fn create_secret(
        &self,
        new: NewSecret,
        sealed: Option<SealedValue>,
        managed: bool,
    ) -> Result<Secret, StoreError> {
        let now = crate::now();
        let secret = Secret {
            id: SecretId::new(),
            name: new.name,
            backend: new.backend,
            reference: new.reference,
            managed,
            description: new.description,
            created_at: now,
            updated_at: now,
        };
        let (ciphertext, nonce, key_id) = match sealed {
            Some(s) => (Some(s.ciphertext), Some(s.nonce), Some(s.key_id)),
            None => (None, None, None),
        };
        on_pool!(self, |pool| {
            sqlx::query(INSERT)
                .bind(secret.id.as_uuid())
                .bind(secret.name.clone())
                .bind(secret.backend.as_str())
                .bind(secret.reference.clone())
                .bind(ciphertext.clone())
                .bind(nonce.clone())
                .bind(key_id.clone())
                .bind(managed)
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
        on_pool!(self, |pool| {
            sqlx::query(SELECT_ALL).fetch_all(pool).await?.iter().map(from_row).collect::<Result<Vec<_>, _>>()
        })
    }

    pub async fn get_secret_by_name(&self, name: &str) -> Result<Secret, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query(SELECT_BY_NAME).bind(name).fetch_optional(pool).await?.map(|r| from_row(&r)).transpose()
        })?;
        row.ok_or_else(|| StoreError::not_found(ENTITY, name))
    }

    /// The sealed value of a `database` secret (none for the other backends).
    pub async fn sealed_secret_value(&self, name: &str) -> Result<Option<SealedValue>, StoreError> {
        let row = on_pool!(self, |pool| {
            sqlx::query("SELECT ciphertext, nonce, key_id FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
                .map(|r| sealed_from_row(&r))
                .transpose()
        })?;
        match row {
            None => Err(StoreError::not_found(ENTITY, name)),
            Some(sealed) => Ok(sealed),
        }
    }

    /// Replaces a secret's sealed value and/or description, and marks it managed when it got a value.
    pub async fn update_secret(
        &self,
        name: &str,
        sealed: Option<SealedValue>,
        managed: Option<bool>,
        description: Option<String>,
    ) -> Result<Secret, StoreError> {
        let now = DbTime(crate::now());
        let has_value = sealed.is_some();
        let (ciphertext, nonce, key_id) = match sealed {
            Some(s) => (Some(s.ciphertext), Some(s.nonce), Some(s.key_id)),
            None => (None, None, None),
        };
        let changed = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE secrets SET ciphertext = CASE WHEN $2 THEN $3 ELSE ciphertext END, \
                 nonce = CASE WHEN $2 THEN $4 ELSE nonce END, key_id = CASE WHEN $2 THEN $5 ELSE key_id END, \
                 managed = COALESCE($6, managed), description = COALESCE($7, description), updated_at = $8 \
                 WHERE name = $1",
            )
            .bind(name)
            .bind(has_value)
            .bind(ciphertext.clone())
            .bind(nonce.clone())
            .bind(key_id.clone())
            .bind(managed)
            .bind(description.clone())
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        if changed == 0 {
            return Err(StoreError::not_found(ENTITY, name));
        }
        self.get_secret_by_name(name).await
    }

    /// Re-seals a value, only if it is still exactly the sealed value that
    /// was read (same key and nonce: a value set meanwhile wins). Returns
    /// whether it changed.
    pub async fn reseal_secret(
        &self,
        id: SecretId,
        old: &SealedValue,
        sealed: SealedValue,
    ) -> Result<bool, StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE secrets SET ciphertext = $3, nonce = $4, key_id = $5 WHERE id = $1 AND key_id = $2 AND nonce = $6",
            )
                .bind(id.as_uuid())
                .bind(old.key_id.clone())
                .bind(sealed.ciphertext.clone())
                .bind(sealed.nonce.clone())
                .bind(sealed.key_id.clone())
                .bind(old.nonce.clone())
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(changed == 1)
    }

    /// Every sealed value with its secret, for key rotation.
    pub async fn sealed_secrets(&self) -> Result<Vec<(SecretId, String, SealedValue)>, StoreError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT id, name, ciphertext, nonce, key_id FROM secrets WHERE ciphertext IS NOT NULL ORDER BY name",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((SecretId::from_uuid(r.uuid("id")?), r.text("name")?, sealed_from_row(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()
        })?;
        Ok(rows.into_iter().filter_map(|(id, name, sealed)| sealed.map(|s| (id, name, s))).collect())
    }

    /// The clankers, projects and integrations that refer to a secret.
    pub async fn secret_users(&self, name: &str) -> Result<SecretUsers, StoreError> {
        let names = |sql: &'static str| async move {
            on_pool!(self, |pool| {
                sqlx::query(sql)
                    .bind(name)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| r.text("n").map_err(StoreError::from))
                    .collect::<Result<Vec<_>, _>>()
            })
        };
        Ok(SecretUsers {
            clankers: names(
                "SELECT DISTINCT c.slug AS n FROM clankers c JOIN clanker_secrets cs ON cs.clanker_id = c.id \
                 JOIN secrets s ON s.id = cs.secret_id WHERE s.name = $1 ORDER BY n",
            )
            .await?,
            projects: names(
                "SELECT DISTINCT p.slug AS n FROM projects p JOIN secrets s ON s.id = p.credential_secret_id \
                 WHERE s.name = $1 UNION SELECT p.slug AS n FROM projects p JOIN project_secrets ps \
                 ON ps.project_id = p.id JOIN secrets s ON s.id = ps.secret_id WHERE s.name = $1 ORDER BY n",
            )
            .await?,
            integrations: self.integrations_using_secret(name).await?,
        })
    }

    pub async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        let deleted = on_pool!(self, |pool| {
            sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::Conflict { entity: ENTITY, field: "in use".into() }
            }
            _ => StoreError::Database(e),
        })?;
        if deleted == 0 {
            return Err(StoreError::not_found(ENTITY, name));
        }
        Ok(())
    }
}
