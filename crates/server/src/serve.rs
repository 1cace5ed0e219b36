//! Startup and shutdown of `viberglass serve`.
//!
//! Order: data directory → encryption key → database (retried with backoff
//! while unreachable) → migrations → listen → serve until SIGTERM/SIGINT,
//! then let in-flight requests finish within the shutdown timeout. Every
//! failure before serving is one line naming what broke and what to do.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use viberglass_store::{ConnectError, MigrateError, PoolSettings, Store};

use crate::app::{AppState, build_router};
use crate::config::{Config, ConfigError, EncryptionKey, KeySource};
use crate::engine::Engine;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the data directory {}: {source}; set VIBERGLASS_DATA_DIR to a writable directory", path.display())]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot use the encryption key file {}: {reason}; restore it, or set SECRETS_ENCRYPTION_KEY", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error(
        "{source} (gave up after {attempts} attempt{}); check that the database is running and that DATABASE_URL points at it", if *attempts == 1 { "" } else { "s" }
    )]
    Database { source: ConnectError, attempts: u32 },
    #[error("{0}")]
    Migrate(#[from] MigrateError),
    #[error("cannot listen on {address}: {source}; set VIBERGLASS_PORT to a free port or stop what holds this one")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("cannot find this server's own binary to run local workers ({0}); set VIBERGLASS_WORKER_BINARY")]
    WorkerBinary(std::io::Error),
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
    #[error("key rotation failed: {0}")]
    Rotate(String),
}

impl StartupError {
    /// 2 for configuration problems, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_)
            | StartupError::DataDir { .. }
            | StartupError::KeyFile { .. }
            | StartupError::WorkerBinary(_) => 2,

            _ => 1,
        }
    }
}

/// Creates the data directory if needed.
pub fn prepare_data_dir(config: &Config) -> Result<(), StartupError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| StartupError::DataDir { path: config.data_dir.clone(), source })
}

/// The configured key, or the embedded mode's key file: read if it exists,
/// generated (mode 0600) if it does not.
pub fn resolve_key(config: &Config) -> Result<EncryptionKey, StartupError> {
    match &config.encryption_key {
        KeySource::Configured(key) => Ok(key.clone()),
        KeySource::DataDirFile(path) => load_or_create_key_file(path),
    }
}

fn load_or_create_key_file(path: &Path) -> Result<EncryptionKey, StartupError> {
    let fail = |reason: String| StartupError::KeyFile { path: path.to_owned(), reason };
    let read = |path: &Path| -> Result<EncryptionKey, StartupError> {
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        EncryptionKey::parse(&text).map_err(|reason| fail(format!("it does not hold a key ({reason})")))
    };
    if path.exists() {
        warn_if_readable_by_others(path);
        return read(path);
    }
    let key = EncryptionKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{}\n", key.to_hex()).as_bytes()).map_err(|e| fail(e.to_string()))?;
            tracing::info!(path = %path.display(), "generated the secrets encryption key; back this file up with the database");
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// After a key rotation in embedded mode: the key file gets the new key, and
/// the old one is kept beside it (`<file>.previous`, mode 0600).
pub fn replace_key_file(path: &Path, old: &EncryptionKey, new: &EncryptionKey) -> Result<(), StartupError> {
    let fail = |reason: String| StartupError::KeyFile { path: path.to_owned(), reason };
    let write = |target: &Path, key: &EncryptionKey| -> Result<(), StartupError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(target).map_err(|e| fail(e.to_string()))?;
        file.write_all(format!("{}\n", key.to_hex()).as_bytes()).map_err(|e| fail(e.to_string()))
    };
    write(&path.with_extension("key.previous"), old)?;
    write(path, new)
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the encryption key file is readable by other users; run chmod 600 on it");
        }
    }
}

/// Opens the database, retrying with backoff while it is unreachable.
pub async fn connect_with_retry(config: &Config) -> Result<Store, StartupError> {
    let settings = PoolSettings { max_connections: config.db_max_connections, ..PoolSettings::default() };
    let attempts = config.db_connect_attempts.max(1);
    let mut delay = Duration::from_millis(250);
    for attempt in 1..=attempts {
        match Store::connect(&config.database, settings).await {
            Ok(store) => return Ok(store),
            Err(err) if err.is_transient() && attempt < attempts => {
                tracing::warn!(attempt, attempts, retry_in_ms = delay.as_millis() as u64, error = %err, "database unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            Err(source) => {
                return Err(StartupError::Database { source, attempts: attempt });
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Opens and migrates the database: what both `serve` and `migrate` do first.
pub async fn open_database(config: &Config) -> Result<Store, StartupError> {
    prepare_data_dir(config)?;
    let store = connect_with_retry(config).await?;
    let applied = store.migrate().await?;
    let status = store.schema_status().await.map_err(|e| StartupError::Migrate(MigrateError::Database(e)))?;
    tracing::info!(
        database = store.backend().as_str(),
        location = %store.target().describe(),
        schema_version = status.applied,
        newly_applied = applied.len(),
        "database ready"
    );
    Ok(store)
}

/// Runs `viberglass serve` until a shutdown signal.
pub async fn run(config: Config) -> Result<(), StartupError> {
    prepare_data_dir(&config)?;
    crate::telemetry::set_trust_traceparent(config.trust_traceparent);
    let key = resolve_key(&config)?;
    let store = open_database(&config).await?;
    let address = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(address).await.map_err(|source| StartupError::Bind { address, source })?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let timeout = Duration::from_secs(config.shutdown_timeout_secs);
    let local = listener.local_addr().map_err(|source| StartupError::Bind { address, source })?;
    let state = app_state(config, store.clone(), key, local)?;
    let result = serve(listener, state, shutdown, timeout).await;
    store.close().await;
    result.map_err(StartupError::Serve)
}

/// Builds the application state for a server listening on `local`.
pub fn app_state(
    config: Config,
    store: Store,
    key: EncryptionKey,
    local: SocketAddr,
) -> Result<AppState, StartupError> {
    let server_url: Arc<str> = match &config.public_url {
        Some(url) => url.as_str().into(),
        // Local workers reach an all-interfaces listener on loopback.
        None if local.ip().is_unspecified() => format!("http://127.0.0.1:{}", local.port()).into(),
        None => format!("http://{local}").into(),
    };
    let worker_binary = match &config.worker_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(StartupError::WorkerBinary)?,
    };
    let local_target = viberglass_compute::LocalTarget::new(viberglass_compute::LocalSettings {
        host_id: config.host_id.clone(),
        worker_binary,
        // Absolute: workers start in it, and the sandbox binds it by path.
        workspace_root: std::path::absolute(config.data_dir.join("workspaces"))
            .map_err(|source| StartupError::DataDir { path: config.data_dir.clone(), source })?,

        env: vec![("LOG_FORMAT".into(), "json".into())],
        sandbox: config.sandbox,
        bwrap: config.bwrap.clone(),
        read_only_paths: config.sandbox_paths.clone(),
    });
    let mut compute = viberglass_compute::ComputeRegistry::new();
    compute.register(Arc::new(local_target));
    // Docker clankers use the engine at DOCKER_HOST (or the local socket); Start says when there is none.
    compute.register(Arc::new(viberglass_compute::DockerTarget::new(viberglass_compute::DockerSettings {
        host_id: config.host_id.clone(),
        allow_host_network: config.docker_allow_host_network,
    })));
    // Kubernetes clankers use VIBERGLASS_KUBECONFIG, KUBECONFIG or the in-cluster account; Start says when none works.
    compute.register(Arc::new(viberglass_compute::KubernetesTarget::new(viberglass_compute::KubernetesSettings {
        host_id: config.host_id.clone(),
        kubeconfig: config.kubeconfig.clone(),
        context: config.kubernetes_context.clone(),
        unschedulable_grace: Duration::from_secs(config.kubernetes_unschedulable_grace_secs),
        namespaces: config.kubernetes_namespaces.clone(),
    })));
    // ECS clankers use the standard AWS settings (AWS_REGION, credentials, AWS_ENDPOINT_URL_ECS or AWS_ENDPOINT_URL).
    let aws = |endpoint: &Option<String>| viberglass_compute::AwsComputeSettings {
        host_id: config.host_id.clone(),
        endpoint_url: endpoint.clone().or(config.aws_endpoint_url.clone()),
        region: config.aws.region.clone(),
        server_url: Some(server_url.to_string()),
        access_key_id: config.aws.access_key_id.clone(),
        secret_access_key: config.aws.secret_access_key.clone(),
        session_token: config.aws.session_token.clone(),
    };
    compute.register(Arc::new(viberglass_compute::EcsTarget::new(aws(&config.aws_ecs_endpoint_url))));
    compute.register(Arc::new(viberglass_compute::LambdaTarget::new(aws(&config.aws_lambda_endpoint_url))));
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let engine = Engine {
        store: store.clone(),
        compute,
        server_url,
        wake: Arc::new(tokio::sync::Notify::new()),
        dispatch_interval: Duration::from_millis(config.dispatch_interval_ms),
        reaper_interval: Duration::from_millis(config.reaper_interval_ms),
        heartbeat_interval: Duration::from_secs(config.heartbeat_interval_secs),
        dispatcher: true,
        metrics: metrics.clone(),
    };
    let env: crate::app::EnvLookup = Arc::new(|name: &str| std::env::var(name).ok());
    let vault = Arc::new(crate::vault::Vault::new(&config, &key));
    Ok(AppState {
        store,
        vault,
        limiter: Arc::new(crate::auth::LoginLimiter::default()),
        config: Arc::new(config),
        encryption_key: Arc::new(key),
        engine,
        env,
        metrics,
        outbound_wake: Arc::new(tokio::sync::Notify::new()),
        slack_wake: Arc::new(tokio::sync::Notify::new()),
        slack_http: viberglass_integrations::slack::http_client(),
        slack_secret: Default::default(),
        clock: Arc::new(crate::clock::SystemClock),
        schedule_wake: Arc::new(tokio::sync::Notify::new()),
    })
}

/// Serves on a bound listener until `shutdown` is cancelled, then waits up
/// to `grace` for in-flight requests. The dispatcher and the reaper run
/// alongside and stop with it.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let public = state.config.public_url.clone().unwrap_or_else(|| format!("http://{local}"));
    tracing::info!(address = %local, "viberglass listening on http://{local} (public URL {public})");
    if state.config.auth_disabled {
        tracing::warn!(
            "AUTH_DISABLED is set: every request acts as an administrator without signing in. For local development only"
        );
    } else if state.store.count_users().await.unwrap_or(1) == 0 {
        tracing::info!("no user yet: open {public}/api/docs/ and POST /api/v1/setup to create the first administrator");
    }
    warn_about_shared_clankers(&state).await;
    // Authenticated requests skip the database while revocations can reach
    // this server (PostgreSQL's LISTEN); see the store's credential cache.
    state.store.enable_credential_cache();
    match state
        .store
        .fail_interrupted_deploys(
            "provisioning was interrupted: the server stopped while starting this clanker; Start it again",
        )
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(clankers = n, "clankers left deploying by a stopped server are now failed"),
        Err(err) => tracing::error!(error = %err, "could not check for clankers left deploying"),
    }
    let mut loops = state.engine.clone().spawn(shutdown.clone());
    loops.push(spawn_outbox(&state, shutdown.clone()));
    loops.push(spawn_feedback(&state, shutdown.clone()));
    loops.push(spawn_outbound(&state, shutdown.clone()));
    loops.push(spawn_slack(&state, shutdown.clone()));
    loops.push(spawn_scheduler(&state, shutdown.clone()));
    let app = build_router(state).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tracing::info!(grace_secs = grace.as_secs(), "shutting down; letting in-flight requests finish");
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = server => { tracing::info!("server stopped"); result }
        () = deadline => { tracing::warn!("in-flight requests did not finish within the shutdown timeout; stopping anyway"); Ok(()) }
    };
    // The loops stop at the cancellation; wait for them (a loop in a store
    // call finishes it), so nothing is cut off mid-transition.
    shutdown.cancel();
    let _ = tokio::time::timeout(grace.max(Duration::from_secs(1)), futures::future::join_all(loops)).await;
    result
}

/// Clankers any project may run (every clanker from before project scoping
/// migrated to shared, so nothing broke): say which, and how to narrow them.
async fn warn_about_shared_clankers(state: &AppState) {
    let page = viberglass_domain::PageRequest { limit: 200, after: None };
    let Ok(clankers) = state.store.list_clankers(page).await else { return };
    let shared: Vec<&str> = clankers.items.iter().filter(|c| c.shared).map(|c| c.slug.as_str()).collect();
    if !shared.is_empty() {
        tracing::warn!(
            clankers = shared.join(", "),
            "these clankers are shared: any project's members can run them and so receive their secrets; list the \
             projects that may use each (PATCH /api/v1/clankers/<clanker> with \"projects\" and \"shared\": false)"
        );
    }
}

/// The outbox's consumers, supervised like the engine's loops. The lease
/// owner names this server process, so two servers never read one consumer at once.
fn spawn_outbox(state: &AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let owner = format!("{}/{}", state.config.host_id, hex::encode(rand::random::<[u8; 6]>()));
    let poll = Duration::from_millis(state.config.dispatch_interval_ms.clamp(200, 1000));
    let state = state.clone();
    let stop = shutdown.clone();
    crate::engine::supervise("outbox", shutdown, move || {
        crate::outbox::deliver_loop(state.clone(), crate::outbox::consumers(), owner.clone(), poll, stop.clone())
    })
}

/// Outbound webhook deliveries, supervised. The owner names this server process: a delivery it holds is
/// attempted by nobody else until its lease lapses.
fn spawn_outbound(state: &AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let owner = format!("{}/{}", state.config.host_id, hex::encode(rand::random::<[u8; 6]>()));
    let poll = Duration::from_millis(state.config.dispatch_interval_ms.clamp(100, 1000));
    let state = state.clone();
    let stop = shutdown.clone();
    crate::engine::supervise("outbound-webhooks", shutdown, move || {
        crate::outbound::delivery_loop(state.clone(), owner.clone(), poll, stop.clone())
    })
}

/// Slack: acting on what Slack sent and keeping the threads' messages, supervised.
fn spawn_slack(state: &AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let poll = Duration::from_millis(state.config.dispatch_interval_ms.clamp(100, 1000));
    let state = state.clone();
    let stop = shutdown.clone();
    crate::engine::supervise("slack", shutdown, move || crate::slack::slack_loop(state.clone(), poll, stop.clone()))
}

/// The scheduler: due slots taken and executions started, supervised.
fn spawn_scheduler(state: &AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let poll = Duration::from_millis(state.config.dispatch_interval_ms.clamp(200, 1000));
    let state = state.clone();
    let stop = shutdown.clone();
    crate::engine::supervise("scheduler", shutdown, move || {
        crate::schedules::scheduler_loop(state.clone(), poll, stop.clone())
    })
}

/// Feedback to ticket sources (and the pruning of old webhook payloads), supervised.
fn spawn_feedback(state: &AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let poll = Duration::from_millis(state.config.dispatch_interval_ms.clamp(200, 1000));
    let state = state.clone();
    let stop = shutdown.clone();
    crate::engine::supervise("feedback", shutdown, move || {
        crate::sources::feedback_loop(state.clone(), poll, stop.clone())
    })
}

async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the server gracefully");
                let _ = ctrl_c.await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    token.cancel();
}
