//! `TestApp::spawn()`: the real server on a real socket (port 0, bound
//! before serving), over an isolated database, with a client to call it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use viberglass_server::config::{Config, EncryptionKey};
use viberglass_server::serve;
use viberglass_store::Store;

use crate::db::{TestBackend, TestDb};

/// A running server for one test. Stopped when dropped.
pub struct TestApp {
    pub address: SocketAddr,
    pub base_url: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub db: TestDb,
    /// The server's data directory (workspaces live under it).
    pub data_dir: std::path::PathBuf,
    shutdown: CancellationToken,
}

/// Settings for a [`TestApp`] beyond the defaults, as environment variables
/// the server's configuration loader reads.
pub struct TestAppBuilder {
    backend: TestBackend,
    env: HashMap<String, String>,
    setup: bool,
    db: Option<TestDb>,
    clock: Option<viberglass_server::clock::SharedClock>,
    dispatcher: bool,
}

/// The first administrator every [`TestApp`] creates (unless told not to).
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// Signs in to a server as the test administrator (creating it by first-run
/// setup when no user exists) and returns a client that sends an API token.
pub async fn admin_client(base_url: &str) -> (reqwest::Client, String) {
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client");
    let setup = plain
        .post(format!("{base_url}/api/v1/setup"))
        .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "name": "Admin"}))
        .send()
        .await
        .expect("setup reaches the server");
    assert!(
        matches!(setup.status().as_u16(), 201 | 409),
        "first-run setup: {}",
        setup.text().await.unwrap_or_default()
    );
    let token = token_for(base_url, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    (client_with_token(&token), token)
}

/// A client signed in as `email` with a session cookie (as a browser would be).
pub async fn session_client(base_url: &str, email: &str, password: &str) -> reqwest::Client {
    let jar = reqwest::Client::builder().cookie_store(true).timeout(Duration::from_secs(30)).build().expect("client");
    let login = jar
        .post(format!("{base_url}/api/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login reaches the server");
    assert_eq!(login.status(), 200, "signing in as {email}: {}", login.text().await.unwrap_or_default());
    jar
}

/// Signs in as `email` and creates an API token for them.
pub async fn token_for(base_url: &str, email: &str, password: &str) -> String {
    let jar = reqwest::Client::builder().cookie_store(true).timeout(Duration::from_secs(30)).build().expect("client");
    let login = jar
        .post(format!("{base_url}/api/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login reaches the server");
    assert_eq!(login.status(), 200, "signing in as {email}: {}", login.text().await.unwrap_or_default());
    let created: serde_json::Value = jar
        .post(format!("{base_url}/api/v1/me/tokens"))
        .json(&serde_json::json!({"name": "tests"}))
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    created["token"].as_str().expect("a token").to_owned()
}

/// A client that authenticates every request with `token`.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"),
    );
    reqwest::Client::builder().default_headers(headers).timeout(Duration::from_secs(30)).build().expect("HTTP client")
}

impl TestAppBuilder {
    /// Runs jobs with `worker_binary`, the engine's loops quick (dispatch
    /// every 50 ms, reaper every 200 ms, heartbeats every second).
    pub fn fast_engine(self, worker_binary: &str) -> Self {
        self.env("VIBERGLASS_WORKER_BINARY", worker_binary)
            .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
            .env("VIBERGLASS_REAPER_INTERVAL_MS", "200")
            .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
    }

    /// Points the server's AWS clients at `moto` (region, endpoint, test credentials).
    pub fn aws(mut self, moto: &crate::moto::Moto) -> Self {
        for (name, value) in moto.env() {
            self = self.env(name, &value);
        }
        self
    }

    /// Leaves first-run setup undone: the client is anonymous.
    pub fn without_setup(mut self) -> Self {
        self.setup = false;
        self
    }

    /// Serves from this database instead of a new one (e.g. `other.db.shared()`: two servers, one database).
    pub fn database(mut self, db: TestDb) -> Self {
        self.db = Some(db);
        self
    }

    /// Reads "now" from this clock (e.g. a [`viberglass_server::clock::ManualClock`] shared by two servers).
    pub fn clock(mut self, clock: impl viberglass_server::clock::Clock + 'static) -> Self {
        self.clock = Some(std::sync::Arc::new(clock));
        self
    }

    /// Runs no dispatcher: the test claims its jobs by hand (the store's
    /// job changes would wake a dispatcher at once, whatever its interval).
    pub fn without_dispatcher(mut self) -> Self {
        self.dispatcher = false;
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    pub async fn spawn(self) -> TestApp {
        crate::logs::capture();
        let db = match self.db {
            Some(db) => db,
            None => TestDb::new(self.backend).await,
        };
        let data_dir = match db.data_dir() {
            Some(dir) => dir.to_owned(),
            None => std::env::temp_dir().join(format!("viberglass-test-{}", uuid::Uuid::new_v4().simple())),
        };
        let mut env = HashMap::from([
            ("VIBERGLASS_DATA_DIR".to_owned(), data_dir.display().to_string()),
            ("DATABASE_URL".to_owned(), db.url()),
            ("VIBERGLASS_PORT".to_owned(), "0".to_owned()),
            ("SECRETS_ENCRYPTION_KEY".to_owned(), EncryptionKey::generate().to_hex()),
        ]);
        env.extend(self.env);
        if !env.contains_key("VIBERGLASS_SANDBOX_PATHS") {
            // Where scripts/test installs the agent CLIs, outside /usr: sandboxed workers must see them.
            let tools = std::env::var("VIBERGLASS_TEST_NODE_MODULES")
                .ok()
                .and_then(|m| std::path::Path::new(&m).parent().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "/var/tmp/viberglass-tools".to_owned());
            // The Python agent CLIs' interpreter, when it lives outside /usr (pyenv's).
            let tools = match std::env::var("VIBERGLASS_TEST_PYTHON_HOME") {
                Ok(python) if !python.is_empty() && !python.starts_with("/usr") => format!("{tools}:{python}"),
                _ => tools,
            };
            env.insert("VIBERGLASS_SANDBOX_PATHS".to_owned(), tools);
        }
        if !env.contains_key("VIBERGLASS_WORKER_BINARY") {
            // In-process servers have no viberglass binary of their own (the current
            // executable is the test binary): a stand-in that passes Start's
            // self-check and fails any job it is given, as a missing worker would.
            std::fs::create_dir_all(&data_dir).expect("the test data directory");
            let stub = data_dir.join("worker-stub");
            std::fs::write(&stub, "#!/bin/sh\nif [ \"$2\" = --self-check ]; then echo 'viberglass worker ok'; exit 0; fi\necho 'worker stub: no worker binary in this test' >&2\nexit 1\n")
                .expect("the worker stand-in");
            std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("executable");
            env.insert("VIBERGLASS_WORKER_BINARY".to_owned(), stub.display().to_string());
        }
        let config = Config::load(None, |name| env.get(name).cloned(), &[]).expect("test configuration is valid");
        let store = db.store().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let address = listener.local_addr().expect("bound address");
        let key = match &config.encryption_key {
            viberglass_server::config::KeySource::Configured(key) => key.clone(),
            viberglass_server::config::KeySource::DataDirFile(_) => EncryptionKey::generate(),
        };
        let mut state =
            viberglass_server::serve::app_state(config, store.clone(), key, address).expect("application state");
        if let Some(clock) = self.clock {
            state.clock = clock;
        }
        state.engine.dispatcher = self.dispatcher;
        // The builder's variables are this server's environment, e.g. for `env` secrets.
        state.env = std::sync::Arc::new(move |name: &str| env.get(name).cloned().or_else(|| std::env::var(name).ok()));

        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, state, shutdown.clone(), Duration::from_secs(5)));
        let base_url = format!("http://{address}");
        let client = if self.setup {
            admin_client(&base_url).await.0
        } else {
            reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client")
        };
        TestApp { address, base_url, client, store, db, data_dir, shutdown }
    }
}

impl TestApp {
    /// A server on SQLite.
    pub async fn spawn() -> TestApp {
        Self::builder(TestBackend::Sqlite).spawn().await
    }

    pub async fn spawn_on(backend: TestBackend) -> TestApp {
        Self::builder(backend).spawn().await
    }

    pub fn builder(backend: TestBackend) -> TestAppBuilder {
        TestAppBuilder { backend, env: HashMap::new(), setup: true, db: None, clock: None, dispatcher: true }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET reaches the server")
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("POST reaches the server")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.expect("request")
    }

    pub async fn patch_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.patch(self.url(path)).json(body).send().await.expect("PATCH reaches the server")
    }

    /// Adds a user (as the administrator) and returns an API client signed in as them.
    pub async fn user_client(&self, email: &str, is_admin: bool) -> (reqwest::Client, serde_json::Value) {
        let password = "user-password-123";
        let response = self
            .post_json(
                "/api/v1/users",
                &serde_json::json!({"email": email, "password": password, "is_admin": is_admin}),
            )
            .await;
        assert_eq!(response.status(), 201, "adding {email}: {}", response.text().await.unwrap_or_default());
        let user: serde_json::Value = response.json().await.expect("user JSON");
        (client_with_token(&token_for(&self.base_url, email, password).await), user)
    }

    /// Gives a user a role in a project.
    pub async fn grant(&self, project: &str, user: &serde_json::Value, role: &str) {
        let response = self
            .client
            .put(self.url(&format!("/api/v1/projects/{project}/members/{}", user["id"].as_str().unwrap())))
            .json(&serde_json::json!({"role": role}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "granting {role}: {}", response.text().await.unwrap_or_default());
    }

    /// Creates a project through the API and returns its JSON.
    pub async fn create_project(&self, body: serde_json::Value) -> serde_json::Value {
        let response = self.post_json("/api/v1/projects", &body).await;
        assert_eq!(response.status(), 201, "creating a project: {}", response.text().await.unwrap_or_default());
        response.json().await.expect("project JSON")
    }

    /// Files a ticket through the API and returns its JSON.
    pub async fn create_ticket(&self, project: &str, body: serde_json::Value) -> serde_json::Value {
        let response = self.post_json(&format!("/api/v1/projects/{project}/tickets"), &body).await;
        assert_eq!(response.status(), 201, "filing a ticket: {}", response.text().await.unwrap_or_default());
        response.json().await.expect("ticket JSON")
    }

    /// Runs `phase` of `ticket` with `clanker`; returns the job's id.
    pub async fn run_phase(&self, ticket: &str, clanker: &str, phase: &str) -> String {
        let body = serde_json::json!({"phase": phase, "clanker": clanker});
        let job: serde_json::Value =
            self.post_json(&format!("/api/v1/tickets/{ticket}/runs"), &body).await.json().await.expect("job JSON");
        job["id"].as_str().unwrap_or_else(|| panic!("no job: {job}")).to_owned()
    }

    /// Waits until job `id` has one of `statuses`; returns its JSON.
    pub async fn wait_for_job(&self, id: &str, statuses: &[&str], within: std::time::Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let job: serde_json::Value = self.get(&format!("/api/v1/jobs/{id}")).await.json().await.expect("job JSON");
            if statuses.contains(&job["status"].as_str().unwrap_or_default()) {
                return job;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} did not reach {statuses:?}: {job}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Waits until job `id`'s worker is running its agent.
    pub async fn wait_for_agent(&self, id: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let job: serde_json::Value = self.get(&format!("/api/v1/jobs/{id}")).await.json().await.expect("job JSON");
            if job["progress_step"] == "running the agent" {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the agent never started: {job}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The forge journeys' setup: the secrets ANTHROPIC_API_KEY and FORGE_TOKEN (read from the server's
    /// `VG_MODEL_KEY` and `VG_FORGE_TOKEN`), the GitHub integration `forge` on `forge`, and the project `shop` on
    /// its `acme/shop` through that integration.
    pub async fn shop_on_forge(&self, forge: &crate::fake_forge::FakeForge) {
        self.post_json(
            "/api/v1/secrets",
            &serde_json::json!({"name": "ANTHROPIC_API_KEY", "reference": "VG_MODEL_KEY"}),
        )
        .await;
        self.post_json("/api/v1/secrets", &serde_json::json!({"name": "FORGE_TOKEN", "reference": "VG_FORGE_TOKEN"}))
            .await;
        let integration = serde_json::json!({"name": "forge", "kind": "github", "base_url": forge.base_url(),
                                             "credential_secret": "FORGE_TOKEN"});
        self.post_json("/api/v1/integrations", &integration).await;
        self.create_project(serde_json::json!({"name": "Shop", "repository_url": forge.clone_url("acme/shop"),
                                               "scm_integration": "forge"}))
            .await;
    }

    /// Approves `phase` of `ticket` and runs the next phase with `clanker`; returns the new job's id.
    pub async fn approve_and_continue(&self, ticket: &str, phase: &str, clanker: &str) -> String {
        let body = serde_json::json!({"phase": phase, "clanker": clanker});
        let continued: serde_json::Value = self
            .post_json(&format!("/api/v1/tickets/{ticket}/approve-and-continue"), &body)
            .await
            .json()
            .await
            .expect("job JSON");
        continued["id"].as_str().unwrap_or_else(|| panic!("no job: {continued}")).to_owned()
    }

    /// Job `id`'s events (the first thousand), as the API returns them.
    pub async fn job_events(&self, id: &str) -> String {
        self.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap_or_default()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
