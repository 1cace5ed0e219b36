//! `viberglass serve` as a separate process, for tests that kill or restart it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Every environment variable the server reads, cleared so the developer's
/// own settings cannot leak into a test.
pub const SERVER_VARIABLES: &[&str] = &[
    "VIBERGLASS_CONFIG",
    "VIBERGLASS_DATA_DIR",
    "DATABASE_URL",
    "VIBERGLASS_HOST",
    "VIBERGLASS_PORT",
    "VIBERGLASS_PUBLIC_URL",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "VIBERGLASS_CORS_ORIGINS",
    "VIBERGLASS_BODY_LIMIT_BYTES",
    "SECRETS_ENCRYPTION_KEY",
    "VIBERGLASS_DB_CONNECT_ATTEMPTS",
    "VIBERGLASS_DB_MAX_CONNECTIONS",
    "VIBERGLASS_SHUTDOWN_TIMEOUT_SECS",
    "VIBERGLASS_WORKER_BINARY",
    "VIBERGLASS_HEARTBEAT_INTERVAL_SECS",
    "VIBERGLASS_HEARTBEAT_GRACE_SECS",
    "VIBERGLASS_REAPER_INTERVAL_MS",
    "VIBERGLASS_DISPATCH_INTERVAL_MS",
    "VIBERGLASS_WEBHOOK_PAYLOAD_DAYS",
    "VIBERGLASS_WEBHOOK_ALLOW_PRIVATE",
    "VIBERGLASS_WEBHOOK_MAX_AGE_SECS",
    "VIBERGLASS_WEBHOOK_RETRY_MIN_MS",
    "VIBERGLASS_WEBHOOK_RETRY_MAX_SECS",
    "VIBERGLASS_WEBHOOK_TIMEOUT_MS",
    "VIBERGLASS_WEBHOOK_DELIVERY_DAYS",
    "VIBERGLASS_KEEP_FAILED_WORKSPACES",
    "VIBERGLASS_SANDBOX",
    "VIBERGLASS_HOST_ID",
    "VIBERGLASS_AGENT_SILENCE_SECS",
    "VIBERGLASS_ALLOW_LOCAL_REPOSITORIES",
    "VIBERGLASS_DOCKER_ALLOW_HOST_NETWORK",
    "VIBERGLASS_KUBERNETES_NAMESPACES",
    "VIBERGLASS_KUBECONFIG",
    "VIBERGLASS_KUBERNETES_CONTEXT",
    "VIBERGLASS_KUBERNETES_UNSCHEDULABLE_GRACE_SECS",
    "VIBERGLASS_ALLOWED_HOSTS",
    "VIBERGLASS_BWRAP",
    "VIBERGLASS_SANDBOX_PATHS",
    "VIBERGLASS_COMMIT_AUTHOR",
    "SECRETS_PREVIOUS_KEYS",
    "VIBERGLASS_SSM_PREFIX",
    "AUTH_DISABLED",
    "AUTH_DISABLED_ALLOW_POSTGRES",
    "VIBERGLASS_SESSION_TTL_HOURS",
    "VIBERGLASS_TRUST_FORWARDED_FOR",
    "VIBERGLASS_TRUST_TRACEPARENT",
    "SECRETS_ENCRYPTION_KEY_FILE",
    "SECRETS_PREVIOUS_KEYS_FILE",
    "DATABASE_URL_FILE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
];

/// A `viberglass` command with a clean environment, run in `dir`.
pub fn viberglass(binary: &str, dir: &Path) -> Command {
    let mut command = Command::new(binary);
    command.current_dir(dir).stdin(Stdio::null());
    for name in SERVER_VARIABLES {
        command.env_remove(name);
    }
    command
}

/// A running `viberglass serve`, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Starts `command` (a [`viberglass`] command) as `serve` on `port` (0: any) and
    /// waits until it reports its address.
    pub fn start(mut command: Command, port: u16) -> ServerProcess {
        command
            .args(["serve", "--port", &port.to_string()])
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start viberglass serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut kept) = kept.lock() {
                    kept.push_str(&line);
                    kept.push('\n');
                }
                if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                    let address: String =
                        rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
                    let _ = tx.send(address.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()));
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(port)) => ServerProcess { child, port, log },
            _ => {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!("the server did not start: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the server has logged so far (its standard output).
    pub fn output(&self) -> String {
        std::thread::sleep(Duration::from_millis(100));
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let response = reqwest::get(self.url("/readyz")).await.expect("readyz answers");
        (response.status().as_u16(), response.json().await.unwrap_or_default())
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago (for a server that must come back on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
