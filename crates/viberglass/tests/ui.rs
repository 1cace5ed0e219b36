//! The web UI's main journeys in a real browser: Debian's Chromium driven by
//! playwright-core (tests/ui/journey.mjs) against the real server, the real
//! Claude Code CLI on the mock model server, and the fake forge. The
//! journey saves screenshots of the main pages under docs/screenshots/.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use viberglass_testkit::fake_forge::{ALL, FakeForge};
use viberglass_testkit::model::{MockModel, Step};
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

/// What the journey needs, or `None` (a note) outside CI when something is missing.
struct Tools {
    claude: PathBuf,
    node_modules: PathBuf,
    chromium: PathBuf,
}

fn tools() -> Option<Tools> {
    let cli_dir = PathBuf::from(
        std::env::var("VIBERGLASS_TEST_CLI_DIR")
            .unwrap_or_else(|_| "/var/tmp/viberglass-tools/node_modules/.bin".into()),
    );
    let node_modules = std::env::var("VIBERGLASS_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cli_dir.parent().map(Path::to_path_buf).unwrap_or_default());
    let chromium =
        PathBuf::from(std::env::var("VIBERGLASS_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let tools = Tools { claude: cli_dir.join("claude"), node_modules, chromium };
    let missing: Vec<String> = [&tools.claude, &tools.node_modules.join("playwright-core"), &tools.chromium]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(tools);
    }
    assert!(std::env::var("CI").is_err(), "{missing:?} not installed under CI: scripts/test installs them");
    eprintln!("note: {missing:?} not installed; skipping the browser journey (scripts/test installs them)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_journeys_work_in_a_real_browser() {
    let Some(tools) = tools() else { return };
    let model = MockModel::start(vec![
        // Research is slow on purpose: the journey watches its log live.
        Step::Run("printf '# Findings\\n\\nThe readme has no title.\\n' > RESEARCH.md && sleep 4".into()),
        Step::Text("Wrote RESEARCH.md.".into()),
        Step::Run("printf '# Plan\\n1. Add a title to README.md\\n2. Keep the rest\\n' > PLAN.md".into()),
        Step::Text("Wrote PLAN.md.".into()),
        Step::Run(
            "printf '# Shop\\nFixed.\\n' > README.md && printf 'Give the readme a title\\n' > PR_TITLE.md".into(),
        ),
        Step::Text("Changed README.md.".into()),
    ])
    .await;
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "Shop\n")]);
    forge.add_token("forge-token-ui-123", "shop-bot", ALL);
    let app = TestApp::builder(TestBackend::Sqlite)
        .without_setup()
        .env("VIBERGLASS_WORKER_BINARY", BINARY)
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
        .env("VG_MODEL_KEY", "sk-mock-key-0123456789")
        .env("VG_FORGE_TOKEN", "forge-token-ui-123")
        .spawn()
        .await;
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/journey.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .env("BASE_URL", &app.base_url)
        .env("FORGE_URL", forge.base_url())
        .env("CLONE_URL", forge.clone_url("acme/shop"))
        .env("MISSING_CLONE_URL", forge.clone_url("acme/missing"))
        .env("MODEL_URL", model.anthropic_url())
        .env("CLAUDE_BIN", &tools.claude)
        .env("NODE_MODULES", &tools.node_modules)
        .env("CHROMIUM", &tools.chromium)
        .env("SCREENSHOT_DIR", &screenshots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let read = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text).await;
            text
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = tokio::time::timeout(Duration::from_secs(600), child.wait()).await;
    let (out, err) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    print!("{out}");
    eprint!("{err}");
    let status = status.expect("the journey finished within ten minutes").expect("node ran");
    assert!(status.success(), "the browser journey failed (screenshot: docs/screenshots/failure.png):\n{err}");
    assert!(out.contains("journey: done"));

    // What the browser did, seen from the server.
    assert!(
        model.requests().iter().any(|r| {
            let body = r.body.to_string();
            body.contains(".viberglass/attachments/") && body.contains("-error.log")
        }),
        "the agent was told about the attached log"
    );
    let pulls = forge.pulls("acme/shop");
    assert_eq!(pulls.len(), 1, "one pull request");
    assert!(out.contains(&format!("/pull/{}", pulls[0].number)), "the page linked the PR the forge has");
    let audit = app
        .store
        .list_audit(
            &viberglass_store::AuditFilter::default(),
            viberglass_domain::PageRequest { limit: 200, after: None },
        )
        .await
        .unwrap();
    let by_ui: Vec<&str> = audit
        .items
        .iter()
        .filter(|e| e.channel == "ui" && e.actor_email.as_deref() == Some("ada@example.com"))
        .map(|e| e.action.as_str())
        .collect();
    assert!(
        by_ui.iter().filter(|a| a.contains("approve")).count() >= 2,
        "both approvals were made in the UI: {by_ui:?}"
    );
    for name in ["dashboard", "ticket-pr", "live-log", "job-failed", "clanker", "integrations"] {
        assert!(screenshots.join(format!("{name}.png")).exists(), "the {name} screenshot was saved");
    }
}
