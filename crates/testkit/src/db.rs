//! Isolated test databases: a fresh SQLite file in a temporary directory, or
//! a fresh PostgreSQL database created on the server `TEST_DATABASE_URL`
//! names and dropped afterwards.

use std::time::Duration;

use sqlx::Connection;
use viberglass_store::{DatabaseTarget, PoolSettings, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

impl TestBackend {
    /// Whether PostgreSQL tests can run. Without `TEST_DATABASE_URL` they are
    /// skipped with a note, except under CI, where that is a failure.
    pub fn postgres_available() -> bool {
        if std::env::var("TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) {
            return true;
        }
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("TEST_DATABASE_URL is not set under CI: the PostgreSQL half of the suite must run there");
        }
        eprintln!("note: TEST_DATABASE_URL is not set; skipping the PostgreSQL variant");
        false
    }
}

/// One isolated database, removed when dropped.
pub struct TestDb {
    pub target: DatabaseTarget,
    dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL must be set for PostgreSQL tests")
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{database}?{q}"),
        None => format!("{host_part}/{database}"),
    }
}

impl TestDb {
    pub async fn new(backend: TestBackend) -> TestDb {
        match backend {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let target = DatabaseTarget::Sqlite { path: dir.path().join("viberglass.db") };
                TestDb { target, dir: Some(dir), postgres: None }
            }
            TestBackend::Postgres => {
                let admin = admin_url();
                let name = format!("vgtest_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to TEST_DATABASE_URL: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                let target = DatabaseTarget::Postgres { url: with_database(&admin, &name) };
                TestDb { target, dir: None, postgres: Some((admin, name)) }
            }
        }
    }

    /// The same database, not owned: dropping it removes nothing (a second server on this database).
    pub fn shared(&self) -> TestDb {
        TestDb { target: self.target.clone(), dir: None, postgres: None }
    }

    /// The database URL a `viberglass` process would be given.
    pub fn url(&self) -> String {
        match &self.target {
            DatabaseTarget::Sqlite { path } => format!("sqlite://{}", path.display()),
            DatabaseTarget::Postgres { url } => url.clone(),
        }
    }

    /// A directory that lives as long as this database (for SQLite, the data directory).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Runs SQL directly on the database, bypassing the store (to set up
    /// states the store would never produce).
    pub async fn execute(&self, sql: &str) {
        match &self.target {
            DatabaseTarget::Sqlite { path } => {
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the SQLite test database");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect("execute SQL");
                let _ = conn.close().await;
            }
            DatabaseTarget::Postgres { url } => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("open the PostgreSQL test database");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect("execute SQL");
                let _ = conn.close().await;
            }
        }
    }

    /// A connected store with no migrations applied.
    pub async fn connect(&self) -> Store {
        Store::connect(
            &self.target,
            PoolSettings { max_connections: 5, acquire_timeout: Duration::from_secs(10), group: None },
        )
        .await
        .expect("connect to the test database")
    }

    /// A connected, migrated store.
    pub async fn store(&self) -> Store {
        let store = self.connect().await;
        store.migrate().await.expect("migrations apply to a fresh database");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.postgres.take() {
            // Drop runs outside async context; use a short-lived runtime on its own thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&mut conn)
                        .await
                        .ok()?;
                    conn.close().await.ok()
                })
            })
            .join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced_and_options_kept() {
        assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
    }
}
