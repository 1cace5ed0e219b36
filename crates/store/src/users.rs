//! Users, sessions, API tokens, project members and the audit log. Session
//! and token secrets are never stored: only their sha256, chosen by the caller.

use time::OffsetDateTime;
use viberglass_domain::{ApiToken, AuditEntry, NewUser, Page, PageRequest, ProjectId, ProjectRole, User, UserId};

use crate::credentials::{CHANNEL, Change, Kind};
use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored};
use crate::{Store, StoreError, on_pool};

const ENTITY: &str = "user";
const TABLE: &str = "users";

macro_rules! user_columns {
    () => {
        "id, email, name, is_admin, disabled_at, created_at, updated_at"
    };
    (u) => {
        "u.id, u.email, u.name, u.is_admin, u.disabled_at, u.created_at, u.updated_at"
    };
}

fn user_from_row(r: &impl RowExt) -> Result<User, StoreError> {
    Ok(User {
        id: UserId::from_uuid(r.uuid("id")?),
        email: r.text("email")?,
        name: r.text("name")?,
        is_admin: r.flag("is_admin")?,
        disabled_at: r.opt_time("disabled_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn token_from_row(r: &impl RowExt) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        id: r.uuid("id")?,
        name: r.text("name")?,
        prefix: r.text("token_prefix")?,
        expires_at: r.opt_time("expires_at")?,
        last_used_at: r.opt_time("last_used_at")?,
        revoked_at: r.opt_time("revoked_at")?,
        created_at: r.time("created_at")?,
    })
}

/// A change to an account, as stored.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub name: Option<String>,
    pub is_admin: Option<bool>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
}

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (id, actor_id, channel, action, target_kind, target_id, \
     project_id, details, request_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Inserts one audit entry, timed `$now`, through `$executor`.
macro_rules! insert_audit {
    ($executor:expr, $entry:expr, $now:expr) => {{
        let entry: &$crate::users::NewAudit = $entry;
        sqlx::query($crate::users::INSERT_AUDIT)
            .bind(uuid::Uuid::now_v7())
            .bind(entry.actor_id.map(|a| a.as_uuid()))
            .bind(&entry.channel)
            .bind(&entry.action)
            .bind(&entry.target_kind)
            .bind(&entry.target_id)
            .bind(entry.project_id.map(|p| p.as_uuid()))
            .bind(sqlx::types::Json(entry.details.clone()))
            .bind(&entry.request_id)
            .bind($crate::dbtime::DbTime($now))
            .execute($executor)
            .await
            .map(|_| ())
    }};
}
pub(crate) use insert_audit;

/// One line for the audit log.
#[derive(Debug, Clone)]
pub struct NewAudit {
    pub actor_id: Option<UserId>,
    pub channel: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<String>,
    pub project_id: Option<ProjectId>,
    pub details: serde_json::Value,
    pub request_id: Option<String>,
}

/// Which audit entries a list returns.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub project_id: Option<ProjectId>,
    pub actor_id: Option<UserId>,
    pub action: Option<String>,
}

const INSERT_USER: &str = "INSERT INTO users (id, email, name, password_hash, is_admin, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6)";
/// Inserts only while the table is empty: the first-run admin.
const INSERT_FIRST: &str = "INSERT INTO users (id, email, name, password_hash, is_admin, created_at, updated_at) \
     SELECT $1, $2, $3, $4, TRUE, $5, $5 WHERE NOT EXISTS (SELECT 1 FROM users)";
const FIRST_LOCK: &str = "SELECT pg_advisory_xact_lock(7263510001)";

impl Store {
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(pool).await?;
            Ok(row.int("n")?)
        })
    }

    /// Creates the first user, an admin, only while no user exists; `None`
    /// when someone already did. Safe under concurrent calls on both backends.
    pub async fn create_first_admin(&self, new: NewUser, password_hash: &str) -> Result<Option<User>, StoreError> {
        let id = UserId::new();
        let now = DbTime(crate::now());
        let inserted = match &self.pool {
            crate::Pool::Sqlite(pool) => sqlx::query(INSERT_FIRST)
                .bind(id.as_uuid())
                .bind(&new.email)
                .bind(&new.name)
                .bind(password_hash)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            crate::Pool::Postgres(pool) => {
                let mut tx = crate::BeginWrite::begin_write(pool).await?;
                sqlx::query(FIRST_LOCK).execute(&mut *tx).await?;
                let n = sqlx::query(INSERT_FIRST)
                    .bind(id.as_uuid())
                    .bind(&new.email)
                    .bind(&new.name)
                    .bind(password_hash)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map(|r| r.rows_affected());
                tx.commit().await?;
                n
            }
        }
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        if inserted == 0 {
            return Ok(None);
        }
        self.get_user(id).await.map(Some)
    }

    pub async fn create_user(&self, new: NewUser, password_hash: &str) -> Result<User, StoreError> {
        let id = UserId::new();
        let now = DbTime(crate::now());
        on_pool!(self, |pool| {
            sqlx::query(INSERT_USER)
                .bind(id.as_uuid())
                .bind(&new.email)
                .bind(&new.name)
                .bind(password_hash)
                .bind(new.is_admin)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::from_write(ENTITY, TABLE, e))?;
        self.get_user(id).await
    }

    pub async fn get_user(&self, id: UserId) -> Result<User, StoreError> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
        let row = on_pool!(self, |pool| {
            sqlx::query(sql).bind(id.as_uuid()).fetch_optional(pool).await?.map(|r| user_from_row(&r)).transpose()
        })?;
        row.ok_or_else(|| StoreError::not_found(ENTITY, id))
    }

    /// The account and its password hash, by e-mail.
    pub async fn user_for_login(&self, email: &str) -> Result<Option<(User, Option<String>)>, StoreError> {
        let sql = concat!("SELECT ", user_columns!(), ", password_hash FROM users WHERE email = $1");
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(email)
                .fetch_optional(pool)
                .await?
                .map(|r| Ok((user_from_row(&r)?, r.opt_text("password_hash")?)))
                .transpose()
        })
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users ORDER BY email LIMIT 10000");
        on_pool!(self, |pool| {
            sqlx::query(sql).fetch_all(pool).await?.iter().map(user_from_row).collect::<Result<Vec<_>, _>>()
        })
    }

    /// Changes an account. Disabling it or changing its password ends its
    /// sessions. Read-modify-write guarded by the `updated_at` it read (and
    /// retried), so two admins changing different fields at once lose neither.
    pub async fn update_user(&self, id: UserId, change: UserChange) -> Result<User, StoreError> {
        let mut written = false;
        for _ in 0..5 {
            let current = self.get_user(id).await?;
            let disabled_at = match change.disabled {
                Some(true) => Some(current.disabled_at.unwrap_or_else(crate::now)),
                Some(false) => None,
                None => current.disabled_at,
            };
            let now = DbTime(crate::now().max(current.updated_at + time::Duration::microseconds(1)));
            let changed = on_pool!(self, |pool| {
                sqlx::query(
                    "UPDATE users SET name = $2, is_admin = $3, disabled_at = $4, \
                     password_hash = COALESCE($5, password_hash), updated_at = $6 WHERE id = $1 AND updated_at = $7",
                )
                .bind(id.as_uuid())
                .bind(change.name.clone().unwrap_or(current.name.clone()))
                .bind(change.is_admin.unwrap_or(current.is_admin))
                .bind(DbTime::opt(disabled_at))
                .bind(change.password_hash.clone())
                .bind(now)
                .bind(DbTime(current.updated_at))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
            })?;
            if changed == 1 {
                written = true;
                break;
            }
        }
        if !written {
            return Err(StoreError::Contended { entity: "user" });
        }
        // At once: a disable or demotion must not wait for the revocations below.
        self.credentials_changed(Change::User(id)).await;
        if change.disabled == Some(true) || change.password_hash.is_some() {
            self.revoke_user_sessions(id).await?;
        }
        if change.password_hash.is_some() {
            // A reset means the account may be in the wrong hands: its tokens end too.
            let now = DbTime(crate::now());
            on_pool!(self, |pool| {
                sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
                    .bind(id.as_uuid())
                    .bind(now)
                    .execute(pool)
                    .await
                    .map(|_| ())
            })?;
        }
        if change.password_hash.is_some() {
            self.credentials_changed(Change::User(id)).await;
        }
        self.get_user(id).await
    }

    // Sessions.

    pub async fn create_session(
        &self,
        user: UserId,
        token_hash: &str,
        ip: Option<&str>,
        user_agent: Option<&str>,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let now = DbTime(crate::now());
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO sessions (id, user_id, token_hash, ip, user_agent, created_at, last_seen_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(user.as_uuid())
            .bind(token_hash)
            .bind(ip)
            .bind(user_agent.map(|u| u.chars().take(300).collect::<String>()))
            .bind(now)
            .bind(DbTime(expires_at))
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// The enabled user of a live session (not revoked, not expired), and marks it seen.
    pub async fn session_user(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        self.credential_user(
            Kind::Session,
            token_hash,
            concat!(
                "SELECT ",
                user_columns!(u),
                ", s.expires_at AS credential_expires_at FROM users u JOIN sessions s ON s.user_id = u.id WHERE s.token_hash = $1 \
                 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.disabled_at IS NULL"
            ),
            "UPDATE sessions SET last_seen_at = $2 WHERE token_hash = $1 AND last_seen_at < $3",
        )
        .await
    }

    /// The user a session or token hash stands for (`select`, given the hash
    /// and now), recording its use with `touch` at most once a minute: a write
    /// on every request would cost each request a transaction.
    async fn credential_user(
        &self,
        kind: Kind,
        token_hash: &str,
        select: &'static str,
        touch: &'static str,
    ) -> Result<Option<User>, StoreError> {
        let now = DbTime(crate::now());
        if let Some(user) = self.credentials.get(kind, token_hash, now.0) {
            return Ok(Some(user));
        }
        let generation = self.credentials.generation();
        let found = on_pool!(self, |pool| {
            sqlx::query(select)
                .bind(token_hash)
                .bind(now)
                .fetch_optional(pool)
                .await?
                .map(|r| Ok::<_, StoreError>((user_from_row(&r)?, r.opt_time("credential_expires_at")?)))
                .transpose()
        })?;
        let Some((user, expires_at)) = found else { return Ok(None) };
        on_pool!(self, |pool| {
            sqlx::query(touch)
                .bind(token_hash)
                .bind(now)
                .bind(DbTime(now.0 - time::Duration::minutes(1)))
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        self.credentials.put(kind, token_hash, &user, expires_at, generation);
        Ok(Some(user))
    }

    /// Tells this server's cache and every other server's that credentials
    /// changed. Called after the change is written; a failed notification is
    /// logged (other servers then trust their entries for at most
    /// `credentials::TTL`).
    pub(crate) async fn credentials_changed(&self, change: Change) {
        self.credentials.invalidate(&change);
        if let crate::Pool::Postgres(pool) = &self.pool
            && let Err(err) =
                sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(change.payload()).execute(pool).await
        {
            tracing::warn!(error = %err, "cannot announce a credential change to the other servers");
        }
    }

    pub async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let now = DbTime(crate::now());
        let changed = on_pool!(self, |pool| {
            sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(token_hash)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if changed > 0 {
            self.credentials_changed(Change::Credential(token_hash.to_owned())).await;
        }
        Ok(())
    }

    pub async fn revoke_user_sessions(&self, user: UserId) -> Result<(), StoreError> {
        let now = DbTime(crate::now());
        let changed = on_pool!(self, |pool| {
            sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
                .bind(user.as_uuid())
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if changed > 0 {
            self.credentials_changed(Change::User(user)).await;
        }
        Ok(())
    }

    // API tokens.

    pub async fn create_api_token(
        &self,
        user: UserId,
        name: &str,
        token_hash: &str,
        prefix: &str,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiToken, StoreError> {
        let token = ApiToken {
            id: uuid::Uuid::now_v7(),
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            expires_at,
            last_used_at: None,
            revoked_at: None,
            created_at: crate::now(),
        };
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO api_tokens (id, user_id, name, token_hash, token_prefix, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(token.id)
            .bind(user.as_uuid())
            .bind(name)
            .bind(token_hash)
            .bind(prefix)
            .bind(DbTime::opt(expires_at))
            .bind(DbTime(token.created_at))
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(token)
    }

    pub async fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "SELECT id, name, token_prefix, expires_at, last_used_at, revoked_at, created_at FROM api_tokens \
                 WHERE user_id = $1 ORDER BY id DESC LIMIT 1000",
            )
            .bind(user.as_uuid())
            .fetch_all(pool)
            .await?
            .iter()
            .map(token_from_row)
            .collect::<Result<Vec<_>, _>>()
        })
    }

    /// Revokes one of a user's tokens; `false` when it is not theirs or already revoked.
    pub async fn revoke_api_token(&self, user: UserId, id: uuid::Uuid) -> Result<bool, StoreError> {
        let now = DbTime(crate::now());
        let changed = on_pool!(self, |pool| {
            sqlx::query("UPDATE api_tokens SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL")
                .bind(id)
                .bind(user.as_uuid())
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if changed == 1 {
            self.credentials_changed(Change::User(user)).await;
        }
        Ok(changed == 1)
    }

    /// The enabled user of a live token (not revoked, not expired); records its use.
    pub async fn token_user(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        self.credential_user(
            Kind::Token,
            token_hash,
            concat!(
                "SELECT ",
                user_columns!(u),
                ", t.expires_at AS credential_expires_at FROM users u JOIN api_tokens t ON t.user_id = u.id WHERE t.token_hash = $1 \
                 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2) AND u.disabled_at IS NULL"
            ),
            "UPDATE api_tokens SET last_used_at = $2 WHERE token_hash = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .await
    }

    // Project members.

    /// Gives a user a role in a project (replacing any role they had).
    pub async fn set_member(&self, project: ProjectId, user: UserId, role: ProjectRole) -> Result<(), StoreError> {
        let now = DbTime(crate::now());
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO project_members (project_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
            )
            .bind(project.as_uuid())
            .bind(user.as_uuid())
            .bind(role.as_str())
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    pub async fn remove_member(&self, project: ProjectId, user: UserId) -> Result<bool, StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2")
                .bind(project.as_uuid())
                .bind(user.as_uuid())
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(changed == 1)
    }

    pub async fn member_role(&self, project: ProjectId, user: UserId) -> Result<Option<ProjectRole>, StoreError> {
        let role = on_pool!(self, |pool| {
            sqlx::query("SELECT role FROM project_members WHERE project_id = $1 AND user_id = $2")
                .bind(project.as_uuid())
                .bind(user.as_uuid())
                .fetch_optional(pool)
                .await?
                .map(|r| r.text("role"))
                .transpose()
        })?;
        role.map(|r| parse_stored("project member", r)).transpose()
    }

    pub async fn list_members(&self, project: ProjectId) -> Result<Vec<(User, ProjectRole)>, StoreError> {
        let sql = concat!(
            "SELECT ",
            user_columns!(u),
            ", m.role FROM users u JOIN project_members m ON m.user_id = u.id WHERE m.project_id = $1 \
             ORDER BY u.email"
        );
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(project.as_uuid())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((user_from_row(r)?, parse_stored("project member", r.text("role")?)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    // Audit log.

    pub async fn append_audit(&self, entry: NewAudit) -> Result<(), StoreError> {
        let now = crate::now();
        on_pool!(self, |pool| insert_audit!(pool, &entry, now))?;
        Ok(())
    }

    /// Audit entries, newest first.
    pub async fn list_audit(&self, filter: &AuditFilter, page: PageRequest) -> Result<Page<AuditEntry>, StoreError> {
        let after = page.after.map(|c| c.id());
        let rows = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT a.id, a.actor_id, u.email AS actor_email, a.channel, a.action, a.target_kind, a.target_id, \
                 a.project_id, a.details, a.request_id, a.created_at FROM audit_log a \
                 LEFT JOIN users u ON u.id = a.actor_id \
                 WHERE ($1 IS NULL OR a.id < $1) AND ($2 IS NULL OR a.project_id = $2) \
                 AND ($3 IS NULL OR a.actor_id = $3) AND ($4 IS NULL OR a.action = $4) \
                 ORDER BY a.id DESC LIMIT $5",
            )
            .bind(after)
            .bind(filter.project_id.map(|p| p.as_uuid()))
            .bind(filter.actor_id.map(|a| a.as_uuid()))
            .bind(filter.action.clone())
            .bind(i64::from(page.limit) + 1)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.uuid("id")?,
                    actor_id: r.opt_uuid("actor_id")?.map(UserId::from_uuid),
                    actor_email: r.opt_text("actor_email")?,
                    channel: r.text("channel")?,
                    action: r.text("action")?,
                    target_kind: r.text("target_kind")?,
                    target_id: r.opt_text("target_id")?,
                    project_id: r.opt_uuid("project_id")?.map(ProjectId::from_uuid),
                    details: r.json("details")?,
                    request_id: r.opt_text("request_id")?,
                    created_at: r.time("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
        })?;
        Ok(Page::from_rows(rows, page.limit, |a| a.id))
    }
}
