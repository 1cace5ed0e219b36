//! The `viberglass` binary as people run it: startup on both databases, and
//! the one-line failures for each way startup can go wrong.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use viberglass_testkit::process::ServerProcess;
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

fn viberglass(dir: &Path) -> Command {
    viberglass_testkit::process::viberglass(env!("CARGO_BIN_EXE_viberglass"), dir)
}

const SERVER_VARIABLES: &[&str] = viberglass_testkit::process::SERVER_VARIABLES;

fn key() -> String {
    "ab".repeat(32)
}

/// Runs a command expected to fail at startup and returns its single stderr line.
fn one_line_failure(output: Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "exit code; stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "exactly one line on stderr, got: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    stderr.trim_end().to_owned()
}

struct Server;

impl Server {
    fn start(command: Command) -> ServerProcess {
        ServerProcess::start(command, 0)
    }
}

#[tokio::test]
async fn serve_with_no_settings_makes_a_data_directory_and_is_ready_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(viberglass(dir.path()));
    let (status, body) = server.readyz().await;
    assert_eq!((status, body["database"].as_str()), (200, Some("sqlite")), "{body}");
    let data = dir.path().join("viberglass-data");
    assert!(data.join("viberglass.db").exists());
    assert!(data.join("viberglass.db-wal").exists(), "SQLite runs in WAL mode");

    let key_file = data.join("secrets.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
        for file in ["viberglass.db", "viberglass.db-wal", "viberglass.db-shm"] {
            let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file} is readable by its owner only");
        }
    }
    drop(server);

    // A second start reuses the key and the database.
    let server = Server::start(viberglass(dir.path()));
    assert_eq!(server.readyz().await.0, 200);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
}

#[tokio::test]
async fn the_data_directory_can_be_moved_by_flag_and_by_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = viberglass(dir.path());
    command.env("VIBERGLASS_DATA_DIR", dir.path().join("from-env"));
    let server = Server::start(command);
    assert_eq!(server.readyz().await.0, 200);
    assert!(dir.path().join("from-env/viberglass.db").exists());
    drop(server);

    let output = viberglass(dir.path()).args(["migrate", "--data-dir", "flagged"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("flagged/viberglass.db").exists());
}

#[test]
fn postgres_without_an_encryption_key_stops_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = viberglass(dir.path())
        .arg("serve")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
        .output()
        .unwrap();
    let line = one_line_failure(output, 2);
    assert!(line.contains("SECRETS_ENCRYPTION_KEY is not set"), "{line}");
    assert!(line.contains("viberglass config gen-key"), "{line}");
}

#[test]
fn a_bad_database_url_stops_with_exit_code_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output =
        viberglass(dir.path()).arg("serve").env("DATABASE_URL", "mysql://root:hunter2@db/viberglass").output().unwrap();
    let line = one_line_failure(output, 2);
    assert!(line.contains("invalid DATABASE_URL=\"mysql://root:***@db/viberglass\""), "{line}");
    assert!(line.contains("set DATABASE_URL to postgres://"), "{line}");
    assert!(!line.contains("hunter2"));
}

#[test]
fn an_invalid_flag_value_stops_with_exit_code_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let output = viberglass(dir.path()).args(["serve", "--port", "99999"]).output().unwrap();
    let line = one_line_failure(output, 2);
    assert!(line.contains("invalid --port=\"99999\": out of range"), "{line}");
}

#[test]
fn an_unreachable_database_is_retried_then_named_with_the_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = viberglass(dir.path())
        .arg("serve")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:9/viberglass")
        .env("SECRETS_ENCRYPTION_KEY", key())
        .env("VIBERGLASS_DB_CONNECT_ATTEMPTS", "3")
        .output()
        .unwrap();
    let line = one_line_failure(output.clone(), 1);
    assert!(line.contains("cannot reach the database at 127.0.0.1:9"), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    assert!(line.contains("after 3 attempts"), "{line}");
    // The retries happened, with backoff (250 ms, then 500 ms), and were logged.
    assert!(started.elapsed() >= Duration::from_millis(700));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("database unreachable; retrying").count(), 2, "{stdout}");
}

backend_tests!(a_broken_migration_stops_startup_naming_the_migration_and_the_error);

async fn a_broken_migration_stops_startup_naming_the_migration_and_the_error(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    // Something else already made a table the first migration creates.
    db.execute("CREATE TABLE projects (id INTEGER)").await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = viberglass(dir.path());
    match backend {
        TestBackend::Sqlite => command.env("VIBERGLASS_DATA_DIR", db.data_dir().unwrap()),
        TestBackend::Postgres => command.env("DATABASE_URL", db.url()).env("SECRETS_ENCRYPTION_KEY", key()),
    };
    let serve = command.arg("serve").output().unwrap();
    let line = one_line_failure(serve, 1);
    assert!(line.contains("migration 0001_initial failed: "), "{line}");
    assert!(line.contains("already exists"), "{line}");

    // `migrate` alone fails the same way.
    let mut migrate = viberglass(dir.path());
    match backend {
        TestBackend::Sqlite => migrate.env("VIBERGLASS_DATA_DIR", db.data_dir().unwrap()),
        TestBackend::Postgres => migrate.env("DATABASE_URL", db.url()).env("SECRETS_ENCRYPTION_KEY", key()),
    };
    let line = one_line_failure(migrate.arg("migrate").output().unwrap(), 1);
    assert!(line.contains("migration 0001_initial failed"), "{line}");
}

#[tokio::test]
async fn two_servers_started_at_once_on_one_empty_postgres_both_come_up() {
    if !TestBackend::postgres_available() {
        return;
    }
    let db = TestDb::new(TestBackend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut command = viberglass(dir.path());
        command.env("DATABASE_URL", db.url()).env("SECRETS_ENCRYPTION_KEY", key());
        std::thread::spawn(move || Server::start(command))
    };
    let (a, b) = (start(), start());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    for server in [&a, &b] {
        let (status, body) = server.readyz().await;
        assert_eq!((status, body["database"].as_str()), (200, Some("postgres")), "{body}");
    }
}

#[test]
fn migrate_applies_once_and_then_has_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let output = viberglass(dir.path()).arg("migrate").output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert!(dir.path().join("viberglass-data/viberglass.db").exists());
}

#[test]
fn config_default_prints_every_setting_with_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let output = viberglass(dir.path()).args(["config", "default"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for variable in SERVER_VARIABLES.iter().filter(|v| **v != "VIBERGLASS_CONFIG" && !v.starts_with("OTEL_")) {
        let named = match variable.strip_suffix("_FILE") {
            Some(setting) => format!("# Environment: {setting}\n# Or a file holding it: {variable}\n"),
            None => format!("# Environment: {variable}\n"),
        };
        assert!(text.contains(&named), "{variable} missing from:\n{text}");
    }
    // And it is a valid configuration file.
    let file = dir.path().join("viberglass.toml");
    std::fs::write(&file, &text).unwrap();
    let migrate = viberglass(dir.path()).args(["migrate", "--config"]).arg(&file).output().unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
}

#[test]
fn gen_key_prints_a_usable_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = viberglass(dir.path()).args(["config", "gen-key"]).output().unwrap();
    let key = String::from_utf8(output.stdout).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(key.trim().chars().all(|c| c.is_ascii_hexdigit()));
}

#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(viberglass(dir.path()));
    assert_eq!(server.readyz().await.0, 200);
    let killed = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a graceful stop exits 0, got {status}");
}

#[test]
fn the_test_environment_clears_every_server_setting() {
    for setting in viberglass_server::config::SETTINGS {
        assert!(SERVER_VARIABLES.contains(&setting.env), "add {} to testkit's SERVER_VARIABLES", setting.env);
    }
}

#[test]
fn auth_disabled_is_refused_with_postgres_unless_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let output = viberglass(dir.path())
        .arg("serve")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
        .env("SECRETS_ENCRYPTION_KEY", key())
        .env("AUTH_DISABLED", "true")
        .output()
        .unwrap();
    let line = one_line_failure(output, 2);
    assert!(line.contains("AUTH_DISABLED") && line.contains("AUTH_DISABLED_ALLOW_POSTGRES=true"), "{line}");
}

#[tokio::test]
async fn auth_disabled_warns_at_startup_and_acts_as_an_administrator() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = viberglass(dir.path());
    command.env("AUTH_DISABLED", "true").env("LOG_FORMAT", "json");
    let server = Server::start(command);
    let client = reqwest::Client::new();
    let created =
        client.post(server.url("/api/v1/projects")).json(&serde_json::json!({"name": "Local"})).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let me: serde_json::Value = client.get(server.url("/api/v1/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["is_admin"], true);
    assert!(server.output().contains("AUTH_DISABLED is set"), "the warning is logged");
}

#[tokio::test]
async fn rotate_key_re_encrypts_every_secret_and_the_server_reads_them_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(viberglass(dir.path()));
    let client = viberglass_testkit::app::admin_client(&server.url("")).await.0;
    for (name, value) in [("ONE", "first-value"), ("TWO", "second-value")] {
        let created = client
            .post(server.url("/api/v1/secrets"))
            .json(&serde_json::json!({"name": name, "backend": "database", "value": value}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    drop(server);

    let key_file = dir.path().join("viberglass-data/secrets.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let new_key = "cd".repeat(32);
    let rotate =
        viberglass(dir.path()).args(["secrets", "rotate-key"]).env("VIBERGLASS_NEW_KEY", &new_key).output().unwrap();
    let stdout = String::from_utf8_lossy(&rotate.stdout);
    assert!(rotate.status.success(), "{stdout}{}", String::from_utf8_lossy(&rotate.stderr));
    assert!(stdout.contains("re-encrypted 2 secret(s)"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), new_key);
    assert_eq!(std::fs::read_to_string(dir.path().join("viberglass-data/secrets.key.previous")).unwrap(), old_key);
    // Nothing left to do on a second run.
    let again =
        viberglass(dir.path()).args(["secrets", "rotate-key"]).env("VIBERGLASS_NEW_KEY", &new_key).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("re-encrypted 0 secret(s)"));

    let server = Server::start(viberglass(dir.path()));
    let client = viberglass_testkit::app::admin_client(&server.url("")).await.0;
    for name in ["ONE", "TWO"] {
        let tested: serde_json::Value = client
            .post(server.url(&format!("/api/v1/secrets/{name}/test")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(tested["ok"], true, "{tested}");
    }
    let bad =
        viberglass(dir.path()).args(["secrets", "rotate-key"]).env("VIBERGLASS_NEW_KEY", "short").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
