//! The server image (docker/server.Dockerfile) and docker-compose.yml on the
//! real Docker engine: scripts/test builds the images from this build's binary
//! (scripts/server-image, FROM a Debian base made here with debootstrap) and
//! installs Debian's docker-compose. Every container, network and volume a
//! test makes is removed when it ends, passed or not.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::app::admin_client;
use viberglass_testkit::process::free_port;

/// The images scripts/test built, when the Docker engine answers; `None` (skip) outside CI otherwise.
fn images() -> Option<(String, String)> {
    let engine = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    let server = std::env::var("VIBERGLASS_TEST_SERVER_IMAGE").ok();
    let postgres = std::env::var("VIBERGLASS_TEST_POSTGRES_IMAGE").ok();
    match (engine.is_ok_and(|o| o.status.success()), server, postgres) {
        (true, Some(server), Some(postgres)) => Some((server, postgres)),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "the Docker engine, VIBERGLASS_TEST_SERVER_IMAGE and VIBERGLASS_TEST_POSTGRES_IMAGE are needed under \
                 CI: scripts/test starts dockerd and builds both images with scripts/server-image"
            );
            eprintln!("note: no Docker engine or server image; skipping (scripts/test provides both)");
            None
        }
    }
}

fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_owned())
}

fn docker(args: &[&str]) -> String {
    let (ok, text) = run("docker", args, &[]);
    assert!(ok, "docker {args:?}: {text}");
    text
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Removes a container and its anonymous volumes, however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the container's log:\n{}", run("docker", &["logs", "--tail", "60", &self.0], &[]).1);
        }
        let _ = run("docker", &["rm", "-f", "-v", &self.0], &[]);
    }
}

async fn until_ready(url: &str, within: Duration) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let deadline = Instant::now() + within;
    loop {
        match client.get(format!("{url}/readyz")).send().await {
            Ok(r) if r.status() == 200 => return,
            other => {
                assert!(Instant::now() < deadline, "{url}/readyz is not ready after {within:?}: {other:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_image_runs_unprivileged_and_becomes_healthy() {
    let Some((image, _)) = images() else { return };
    // Small: the stripped binary, git and the CA roots on the slim base. The figure is printed for the notes.
    let size: u64 = docker(&["image", "inspect", "--format", "{{.Size}}", &image]).parse().unwrap();
    eprintln!("{image}: {} MiB", size / 1024 / 1024);
    // The tests build it from the debug binary (about 100 MiB stripped); the release build makes it smaller.
    assert!(size < 500 << 20, "the image is {} MiB", size / 1024 / 1024);
    let config: Value =
        serde_json::from_str(&docker(&["image", "inspect", "--format", "{{json .Config}}", &image])).unwrap();
    assert_eq!(config["User"], "10001:10001", "{config}");
    assert_eq!(config["Healthcheck"]["Test"], json!(["CMD", "/usr/local/bin/viberglass", "health", "--ready"]));

    // No settings: the embedded database and a generated key in the image's volume.
    let port = free_port();
    let id = docker(&["run", "-d", "-p", &format!("127.0.0.1:{port}:8888"), &image]);
    let container = Container(id);
    let url = format!("http://127.0.0.1:{port}");
    until_ready(&url, Duration::from_secs(60)).await;
    let ready: Value = reqwest::get(format!("{url}/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["database"], "sqlite", "{ready}");

    let whoami = docker(&["exec", &container.0, "sh", "-c", "id -u; stat -c '%a %u' /var/lib/viberglass/secrets.key"]);
    assert_eq!(whoami, "10001\n600 10001", "the server runs as 10001 and its key is private");
    // The HEALTHCHECK runs `viberglass health --ready` inside the container.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = docker(&["inspect", "--format", "{{.State.Health.Status}}", &container.0]);
        if health == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "the container is `{health}` after 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, probe) =
        run("docker", &["exec", &container.0, "viberglass", "health", "--url", "http://127.0.0.1:9"], &[]);
    assert!(!ok && probe.contains("did not answer") && probe.contains("fix:"), "{probe}");
}

/// A compose project, taken down with its volumes however the test ends.
struct Compose {
    envs: Vec<(String, String)>,
    project: String,
}

impl Compose {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let file = repo_root().join("docker-compose.yml");
        let mut all = vec!["-f", file.to_str().unwrap(), "-p", &self.project];
        all.extend_from_slice(args);
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run("docker-compose", &all, &envs)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the services' logs:\n{}", self.run(&["logs", "--no-color", "--tail", "60"]).1);
        }
        let _ = self.run(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_runs_the_server_on_postgres_and_keeps_a_filed_ticket() {
    let Some((server, postgres)) = images() else { return };
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let (ok, out) = run(root.join("scripts/compose-secrets").to_str().unwrap(), &[secrets.to_str().unwrap()], &[]);
    assert!(ok, "{out}");
    let port = free_port();
    let compose = Compose {
        envs: vec![
            ("VIBERGLASS_SECRETS".into(), secrets.display().to_string()),
            ("VIBERGLASS_HTTP_PORT".into(), port.to_string()),
            ("VIBERGLASS_IMAGE".into(), server),
            ("VIBERGLASS_POSTGRES_IMAGE".into(), postgres),
            ("VIBERGLASS_PUBLIC_URL".into(), format!("http://127.0.0.1:{port}")),
        ],
        project: format!("vgtest{port}"),
    };
    let (ok, config) = compose.run(&["config", "-q"]);
    assert!(ok, "docker-compose.yml is valid: {config}");
    let (ok, up) = compose.run(&["up", "-d"]);
    assert!(ok, "docker-compose up: {up}");

    let url = format!("http://127.0.0.1:{port}");
    until_ready(&url, Duration::from_secs(120)).await;
    let ready: Value = reqwest::get(format!("{url}/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["database"], "postgres", "compose runs the server on PostgreSQL: {ready}");

    // The first administrator, a project and a ticket, through the published port.
    let (client, _) = admin_client(&url).await;
    let project = client
        .post(format!("{url}/api/v1/projects"))
        .json(&json!({"name": "Web Shop", "repository_url": "https://github.com/acme/shop.git"}))
        .send()
        .await
        .unwrap();
    assert_eq!(project.status(), 201, "{}", project.text().await.unwrap());
    let ticket = client
        .post(format!("{url}/api/v1/projects/web-shop/tickets"))
        .json(&json!({"title": "Guest checkout fails", "severity": "high"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ticket.status(), 201, "{}", ticket.text().await.unwrap());
    let ticket: Value = ticket.json().await.unwrap();

    // The database takes only its password, and its user owns the database without being a superuser.
    let psql = |password: &str, sql: &str| {
        compose.run(&[
            "exec",
            "-T",
            "-e",
            &format!("PGPASSWORD={password}"),
            "postgres",
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "viberglass",
            "-d",
            "viberglass",
            "-tAc",
            sql,
        ])
    };
    let (ok, wrong) = psql("not-the-password", "SELECT 1");
    assert!(!ok && wrong.contains("password authentication failed"), "{wrong}");
    let password = std::fs::read_to_string(secrets.join("postgres_password")).unwrap();
    let (ok, superuser) = psql(password.trim(), "SELECT rolsuper FROM pg_roles WHERE rolname = current_user");
    assert!(ok && superuser.ends_with('f'), "{superuser}");
    // The secrets reach the server as files, not in its environment.
    let (_, container) = compose.run(&["ps", "-q", "viberglass"]);
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", container.trim()]);
    let key = std::fs::read_to_string(secrets.join("encryption_key")).unwrap();
    assert!(!env.contains(key.trim()) && !env.contains(password.trim()), "{env}");
    assert!(env.contains("SECRETS_ENCRYPTION_KEY_FILE=/run/secrets/encryption_key"), "{env}");

    // Restarted, the server finds the ticket in PostgreSQL.
    let (ok, restarted) = compose.run(&["restart", "viberglass"]);
    assert!(ok, "{restarted}");
    until_ready(&url, Duration::from_secs(60)).await;
    let (client, _) = admin_client(&url).await;
    let again: Value = client
        .get(format!("{url}/api/v1/tickets/{}", ticket["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["title"], "Guest checkout fails", "{again}");
}
