//! Schema migrations: append-only, embedded in the binary, one SQL file per
//! backend with the same version and name.
//!
//! On PostgreSQL the migrator holds a session advisory lock on a dedicated
//! connection while it works, so several servers starting at once against
//! one database apply each migration exactly once; the others wait and then
//! find nothing to do. On SQLite each migration runs in a `BEGIN IMMEDIATE`
//! transaction, which takes the write lock up front.

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, Row};
use std::str::FromStr;

use crate::{DatabaseTarget, Pool, Store, dbtime::DbTime, on_pool};

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

impl Migration {
    /// `0001_initial`: how migrations are named in messages and file names.
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }

    fn checksum(sql: &str) -> String {
        hex::encode(Sha256::digest(sql.as_bytes()))
    }
}

macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: include_str!(concat!("../migrations/sqlite/", $file)),
            postgres: include_str!(concat!("../migrations/postgres/", $file)),
        }
    };
}

/// Every migration, in order. Append only: never edit or remove one that has shipped.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "initial", "0001_initial.sql"),
    migration!(2, "secret_values_and_access", "0002_secret_values_and_access.sql"),
    migration!(3, "ticket_attachments", "0003_ticket_attachments.sql"),
    migration!(4, "outbox_and_seams", "0004_outbox_and_seams.sql"),
    migration!(5, "ticket_category_and_metadata", "0005_ticket_category_and_metadata.sql"),
    migration!(6, "inbound_webhooks", "0006_inbound_webhooks.sql"),
    migration!(7, "outbound_webhooks", "0007_outbound_webhooks.sql"),
    migration!(8, "slack", "0008_slack.sql"),
    migration!(9, "schedules", "0009_schedules.sql"),
    migration!(10, "performance", "0010_performance.sql"),
    migration!(11, "job_request_id", "0011_job_request_id.sql"),
];

/// A key no other application is likely to use for `pg_advisory_lock`: "VIBERGLA".
const ADVISORY_LOCK_KEY: i64 = 0x5649_4245_5247_4c41;

const CREATE_TABLE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS viberglass_migrations (
    version BIGINT PRIMARY KEY NOT NULL, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)";
const CREATE_TABLE_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS viberglass_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)";
const SELECT_APPLIED: &str = "SELECT version, name, checksum FROM viberglass_migrations ORDER BY version";
const INSERT_APPLIED: &str =
    "INSERT INTO viberglass_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {migration} failed: {reason}")]
    Failed { migration: String, reason: String },
    #[error(
        "migration {migration} was changed after it was applied (checksum differs): \
         restore the shipped file and put the change in a new migration"
    )]
    Modified { migration: String },
    #[error(
        "the database has migration {migration}, which this viberglass does not know: \
         it was migrated by a newer version; upgrade viberglass"
    )]
    Unknown { migration: String },
    #[error("cannot prepare migrations: {0}")]
    Database(#[from] sqlx::Error),
}

/// Where a database's schema stands relative to this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The highest version applied, 0 for none.
    pub applied: i64,
    /// The highest version this binary knows.
    pub latest: i64,
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        self.applied == self.latest
    }
}

struct Applied {
    version: i64,
    name: String,
    checksum: String,
}

/// Compares what the database has with what the binary ships, and returns
/// the migrations still to apply.
fn pending<'a>(
    applied: &[Applied],
    backend_sql: impl Fn(&Migration) -> &'static str,
) -> Result<Vec<&'a Migration>, MigrateError> {
    for row in applied {
        match MIGRATIONS.iter().find(|m| m.version == row.version) {
            None => {
                return Err(MigrateError::Unknown { migration: format!("{:04}_{}", row.version, row.name) });
            }
            Some(m) if Migration::checksum(backend_sql(m)) != row.checksum => {
                return Err(MigrateError::Modified { migration: m.label() });
            }
            Some(_) => {}
        }
    }
    Ok(MIGRATIONS.iter().filter(|m| !applied.iter().any(|a| a.version == m.version)).collect())
}

fn applied_from_rows<R: Row>(rows: Vec<R>) -> Result<Vec<Applied>, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|r| {
            Ok(Applied { version: r.try_get("version")?, name: r.try_get("name")?, checksum: r.try_get("checksum")? })
        })
        .collect()
}

impl Store {
    /// Applies every pending migration. Returns the labels of those applied.
    pub async fn migrate(&self) -> Result<Vec<String>, MigrateError> {
        match (&self.pool, self.target()) {
            (Pool::Sqlite(pool), _) => migrate_sqlite(pool).await,
            (Pool::Postgres(_), DatabaseTarget::Postgres { url }) => migrate_postgres(url, self.take_spare()).await,
            (Pool::Postgres(_), DatabaseTarget::Sqlite { .. }) => {
                unreachable!("a PostgreSQL pool always has a PostgreSQL target")
            }
        }
    }

    /// Where the schema stands; `applied` is 0 when nothing was migrated yet.
    pub async fn schema_status(&self) -> Result<SchemaStatus, sqlx::Error> {
        let latest = MIGRATIONS.last().map_or(0, |m| m.version);
        let exists: bool = on_pool!(self, |pool| {
            let sql = match self.backend() {
                crate::Backend::Sqlite => {
                    "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'viberglass_migrations'"
                }
                crate::Backend::Postgres => "SELECT to_regclass('viberglass_migrations') IS NOT NULL",
            };
            sqlx::query_scalar(sql).fetch_one(pool).await?
        });
        if !exists {
            return Ok(SchemaStatus { applied: 0, latest });
        }
        let applied: Option<i64> = on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT MAX(version) FROM viberglass_migrations").fetch_one(pool).await?
        });
        Ok(SchemaStatus { applied: applied.unwrap_or(0), latest })
    }
}

async fn migrate_sqlite(pool: &sqlx::SqlitePool) -> Result<Vec<String>, MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql(CREATE_TABLE_SQLITE).execute(&mut *conn).await?;
    let mut done = Vec::new();
    loop {
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let step = async {
            let rows = sqlx::query(SELECT_APPLIED).fetch_all(&mut *conn).await?;
            let applied = applied_from_rows(rows)?;
            let Some(next) = pending(&applied, |m| m.sqlite)?.first().copied() else {
                return Ok::<_, MigrateError>(None);
            };
            sqlx::raw_sql(next.sqlite)
                .execute(&mut *conn)
                .await
                .map_err(|e| MigrateError::Failed { migration: next.label(), reason: db_reason(&e) })?;
            sqlx::query(INSERT_APPLIED)
                .bind(next.version)
                .bind(next.name)
                .bind(Migration::checksum(next.sqlite))
                .bind(DbTime(crate::now()))
                .execute(&mut *conn)
                .await?;
            Ok(Some(next.label()))
        }
        .await;
        match step {
            Ok(Some(label)) => {
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
                tracing::info!(migration = %label, "applied migration");
                done.push(label);
            }
            Ok(None) => {
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
                return Ok(done);
            }
            Err(err) => {
                // The failed statement may already have ended the transaction.
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                return Err(err);
            }
        }
    }
}

async fn migrate_postgres(url: &str, spare: Option<PgConnection>) -> Result<Vec<String>, MigrateError> {
    // A dedicated connection (the one `connect` opened, when it is still
    // there): the advisory lock belongs to it, and closing it releases the
    // lock even if we fail halfway.
    let mut conn = match spare {
        Some(mut conn) => {
            // As a connection of its own would be named, so the lock's holder reads as the migration.
            sqlx::query("SET application_name = 'viberglass-migrate'").execute(&mut conn).await?;
            conn
        }
        None => {
            let options = sqlx::postgres::PgConnectOptions::from_str(url)?.application_name("viberglass-migrate");
            PgConnection::connect_with(&options).await?
        }
    };
    let result = async {
        sqlx::query("SELECT pg_advisory_lock($1)").bind(ADVISORY_LOCK_KEY).execute(&mut conn).await?;
        sqlx::raw_sql(CREATE_TABLE_POSTGRES).execute(&mut conn).await?;
        let rows = sqlx::query(SELECT_APPLIED).fetch_all(&mut conn).await?;
        let applied = applied_from_rows(rows)?;
        let mut done = Vec::new();
        for next in pending(&applied, |m| m.postgres)? {
            let mut tx = conn.begin().await?;
            sqlx::raw_sql(next.postgres)
                .execute(&mut *tx)
                .await
                .map_err(|e| MigrateError::Failed { migration: next.label(), reason: db_reason(&e) })?;
            sqlx::query(INSERT_APPLIED)
                .bind(next.version)
                .bind(next.name)
                .bind(Migration::checksum(next.postgres))
                .bind(DbTime(crate::now()))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(migration = %next.label(), "applied migration");
            done.push(next.label());
        }
        Ok::<_, MigrateError>(done)
    }
    .await;
    let _ = conn.close().await;
    result
}

/// The database's own words for a failed statement, without driver noise.
fn db_reason(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_and_ascending_and_files_agree_on_names() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version);
        }
        assert_eq!(MIGRATIONS[0].label(), "0001_initial");
    }

    #[test]
    fn both_backends_create_the_same_tables() {
        fn tables(sql: &str) -> Vec<String> {
            sql.lines()
                .filter_map(|l| l.strip_prefix("CREATE TABLE "))
                .map(|l| l.split_whitespace().next().unwrap().to_owned())
                .collect()
        }
        // SQLite's search index needs a table of stable row numbers
        // (0010_performance); PostgreSQL's trigram indexes need none.
        const SQLITE_ONLY: &[&str] = &["ticket_search"];
        for m in MIGRATIONS {
            let sqlite: Vec<_> = tables(m.sqlite).into_iter().filter(|t| !SQLITE_ONLY.contains(&t.as_str())).collect();
            assert_eq!(sqlite, tables(m.postgres), "{}", m.label());
        }
    }
}
