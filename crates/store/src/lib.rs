//! Viberglass persistence: one store API over SQLite (the embedded default)
//! and PostgreSQL (production).
//!
//! Every query is written once, in SQL both engines accept (`$n`
//! placeholders, `RETURNING`, `ON CONFLICT`), and runs against whichever pool
//! the store holds. The [`on_pool!`] macro instantiates a query body once per
//! backend, so each is type-checked against its driver; dialect-only SQL is
//! kept as two named constants. No other crate sees SQL.
#![forbid(unsafe_code)]

mod attachments;
mod clankers;
mod credentials;
mod dbtime;
mod diagnostics;
mod documents;
mod error;
mod group;
mod integrations;
mod jobs;
pub mod migrate;
mod outbox;
mod projects;
mod rows;
mod schedules;
mod secrets;
mod slack;
mod sql;
mod subscriptions;
mod tickets;
mod users;
mod versioned;
mod wake;
mod webhooks;
mod workflow;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use attachments::NewAttachment;
pub use dbtime::now;
pub use diagnostics::TroubledDelivery;
pub use error::{ConnectError, StoreError};
pub use group::GroupSettings;
pub use jobs::{BootstrapClaim, JobFilter, JobLimits, NewJob, Outcome, UsageSummary};
pub use migrate::{MigrateError, SchemaStatus};
pub use outbox::{ConsumerLag, ConsumerState};
pub use projects::ProjectFilter;
pub use schedules::SlotClaim;
pub use secrets::{SealedValue, SecretUsers};
pub use slack::{ClaimedPost, InboxItem, InboxSummary, NewSlackPost, NewSlackThread, PostOutcome};
pub use subscriptions::{AfterAttempt, ClaimedDelivery, NewOutbound, StoredSubscription};
pub use users::{AuditFilter, NewAudit, UserChange};
pub use webhooks::{Applied, DeliveryChange, Feedback, NewDelivery, NewFeedback, RequestedRun, StoredWebhookConfig};
pub use workflow::ApprovalChange;

/// Which database to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// An SQLite file, created if missing, opened in WAL mode.
    Sqlite { path: PathBuf },
    /// A PostgreSQL server, as a `postgres://` URL.
    Postgres { url: String },
}

impl DatabaseTarget {
    pub fn backend(&self) -> Backend {
        match self {
            DatabaseTarget::Sqlite { .. } => Backend::Sqlite,
            DatabaseTarget::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Where the database is, for messages: the file path, or `host:port/db`.
    /// Never includes a password.
    pub fn describe(&self) -> String {
        match self {
            DatabaseTarget::Sqlite { path } => path.display().to_string(),
            DatabaseTarget::Postgres { url } => match PgConnectOptions::from_str(url) {
                Ok(opts) => format!(
                    "{}:{}/{}",
                    opts.get_host(),
                    opts.get_port(),
                    opts.get_database().unwrap_or(opts.get_username())
                ),
                Err(_) => "an unparseable PostgreSQL URL".to_owned(),
            },
        }
    }

    /// The `host:port` of a PostgreSQL target, for connection errors.
    pub fn host_port(&self) -> Option<String> {
        match self {
            DatabaseTarget::Sqlite { .. } => None,
            DatabaseTarget::Postgres { url } => {
                PgConnectOptions::from_str(url).ok().map(|o| format!("{}:{}", o.get_host(), o.get_port()))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// How many connections to keep; SQLite serialises writers anyway.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// How concurrent writes share transactions; `None` for the backend's default.
    pub group: Option<GroupSettings>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        // Short enough that an unreachable database answers 503 in seconds, not after a long hang.
        Self { max_connections: 10, acquire_timeout: Duration::from_secs(3), group: None }
    }
}

impl PoolSettings {
    /// The group commit's settings: up to 64 writes per transaction, no
    /// added wait; SQLite has one writer, so one batch at a time, while
    /// PostgreSQL writes a few batches at once (a quarter of the pool).
    fn group_commit(&self, backend: Backend) -> GroupSettings {
        self.group.unwrap_or(GroupSettings {
            max_batch: 64,
            flushers: match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => (self.max_connections as usize / 4).max(1),
            },
            window: Duration::ZERO,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The store: a handle to the database, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    target: DatabaseTarget,
    /// Set by a test to make the next outbox write fail (see `inject_outbox_failure`).
    outbox_fault: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Sessions and API tokens recently looked up (see [`credentials`]).
    credentials: std::sync::Arc<credentials::CredentialCache>,
    listener_stop: std::sync::Arc<credentials::ListenerStop>,
    /// Wake-ups for the dispatcher and the reaper (see [`wake`]).
    wakes: std::sync::Arc<wake::Wakes>,
    /// Concurrent ticket filings, written a batch per transaction.
    ticket_filings: std::sync::Arc<group::GroupCommit<tickets::Filing, Result<(), StoreError>>>,
    /// PostgreSQL: the connection `connect` opened to see the database
    /// answer, kept for `migrate` (which needs a connection of its own for
    /// its lock): a start costs one connection fewer.
    spare: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, sqlx::PgConnection)>>>,
}

/// Creates `path` readable by its owner only (mode 0600) if it does not
/// exist, and narrows it to that if it does.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => restrict(path),
        Err(e) => Err(e),
    }
}

fn restrict(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Opens a transaction that will write. On SQLite it takes the write lock
/// at once (`BEGIN IMMEDIATE`): a deferred transaction that reads and then
/// writes fails with "database is locked" (a stale snapshot) when another
/// connection wrote in between, and waiting does not help it. PostgreSQL
/// needs no such thing.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>> + Send {
        self.begin()
    }
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend.
/// The body is compiled once per backend.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($pool) => $body,
            $crate::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Connections idle longer than this are pinged before they are handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(2);

/// Whether a connection from the idle queue may be used: one that was in use
/// a moment ago is (pinging it would double every query's round trips, the
/// largest cost of a request on a busy server); one idle for longer is pinged
/// first, so a connection the database dropped meanwhile (a restart, an idle
/// timeout) is replaced rather than failing the request that gets it.
async fn check_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    if meta.idle_for >= PING_IF_IDLE_FOR {
        conn.ping().await?;
    }
    Ok(true)
}

impl Store {
    /// Opens the database. Makes exactly one connection attempt: callers
    /// decide whether and how to retry.
    pub async fn connect(target: &DatabaseTarget, settings: PoolSettings) -> Result<Store, ConnectError> {
        let mut spare = None;
        let pool = match target {
            DatabaseTarget::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|source| ConnectError::DataDir { path: dir.to_owned(), source })?;
                }
                // The database holds sealed secrets, sessions and token hashes: only its owner reads it.
                create_private(path).map_err(|source| ConnectError::DataDir { path: path.clone(), source })?;
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| Box::pin(check_if_idle(conn, meta)))
                    .max_connections(settings.max_connections.max(1))
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(|source| ConnectError::classify(target, source))?;
                // SQLite makes its WAL and shared-memory files with the process's umask.
                for suffix in ["-wal", "-shm"] {
                    let mut side = path.clone().into_os_string();
                    side.push(suffix);
                    let _ = restrict(std::path::Path::new(&side));
                }
                Pool::Sqlite(pool)
            }
            DatabaseTarget::Postgres { url } => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|source| ConnectError::InvalidUrl { reason: source.to_string() })?;
                let options = options.application_name("viberglass");
                // One direct attempt first: the pool retries failed connects
                // internally until its timeout and then reports only that it
                // timed out, which hides the OS error people need to see.
                let probe = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
                    .await
                    .map_err(|source| ConnectError::classify(target, source))?;
                spare = Some((std::time::Instant::now(), probe));
                // The database answered just now: the pool connects on first use.
                let pool = PgPoolOptions::new()
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| Box::pin(check_if_idle(conn, meta)))
                    .max_connections(settings.max_connections.max(1))
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_lazy_with(options);
                Pool::Postgres(pool)
            }
        };
        Ok(Store {
            pool,
            target: target.clone(),
            outbox_fault: Default::default(),
            credentials: Default::default(),
            listener_stop: Default::default(),
            wakes: Default::default(),
            ticket_filings: std::sync::Arc::new(group::GroupCommit::new(settings.group_commit(target.backend()))),
            spare: std::sync::Arc::new(std::sync::Mutex::new(spare)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.target.backend()
    }

    pub fn target(&self) -> &DatabaseTarget {
        &self.target
    }

    /// Caches the users of sessions and API tokens (PostgreSQL only; see
    /// [`credentials`]): a server calls this once at start. The cache serves
    /// only while this store listens for revocations from every server.
    ///
    /// The same listener hears other servers' job changes (see [`wake`]), so
    /// the dispatcher and reaper can sleep until one.
    pub fn enable_credential_cache(&self) {
        if let Pool::Postgres(pool) = &self.pool {
            let stop = &self.listener_stop;
            tokio::spawn(credentials::listen(
                pool.clone(),
                self.credentials.clone(),
                self.wakes.clone(),
                stop.listener.clone(),
            ));
            tokio::spawn(wake::send(pool.clone(), self.wakes.clone(), stop.sender.clone()));
        }
    }

    /// Whether job changes on every server reach this one at once (its
    /// listener hears them): only then may the dispatcher and the reaper
    /// sleep long between rounds.
    pub fn hears_job_changes(&self) -> bool {
        self.wakes.live()
    }

    /// Notified when a job may have become dispatchable (queued, requeued,
    /// or a slot freed), here or, while [`Store::hears_job_changes`], on any server.
    pub fn dispatcher_wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wakes.dispatcher()
    }

    /// Notified when the set of live jobs may have changed.
    pub fn reaper_wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wakes.reaper()
    }

    /// Called after a write that changed a job's status.
    pub(crate) fn jobs_changed(&self) {
        self.wakes.jobs_changed();
    }

    /// Whether the credential cache is serving, and its hits and misses.
    pub fn credential_cache_state(&self) -> (bool, u64, u64) {
        let (hits, misses) = self.credentials.counts();
        (self.credentials.live(), hits, misses)
    }

    /// Projects served from the cache of projects since start.
    pub fn project_cache_hits(&self) -> u64 {
        self.credentials.project_hits()
    }

    /// Ticket filings written so far: (transactions, tickets).
    pub fn filing_batches(&self) -> (u64, u64) {
        self.ticket_filings.counts()
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// The plan of a built statement, one plan line per line.
    pub(crate) async fn explain(&self, statement: sql::Sql) -> Result<String, StoreError> {
        use sqlx::Row;
        // SQLite's plan line is the fourth column (`detail`), PostgreSQL's the only one.
        let (prefix, column) = match self.backend() {
            Backend::Sqlite => ("EXPLAIN QUERY PLAN", 3),
            Backend::Postgres => ("EXPLAIN", 0),
        };
        let mut explain = statement.clone();
        explain.text = format!("{prefix} {}", statement.text);
        let lines: Vec<String> = on_pool!(self, |pool| {
            sql::bound!(explain)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(column))
                .collect::<Result<_, _>>()?
        });
        Ok(lines.join("\n"))
    }

    /// Closes every connection; used at shutdown.
    pub async fn close(&self) {
        let spare = self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((_, spare)) = spare {
            let _ = sqlx::Connection::close(spare).await;
        }
        on_pool!(self, |pool| pool.close().await)
    }

    /// The connection `connect` opened, once, if it was opened a moment ago
    /// (an older one may have been dropped by the database meanwhile).
    pub(crate) fn take_spare(&self) -> Option<sqlx::PgConnection> {
        let (opened, conn) = self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()?;
        (opened.elapsed() < PING_IF_IDLE_FOR).then_some(conn)
    }
}
