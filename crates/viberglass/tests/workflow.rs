//! A ticket through research, planning and execution with people in the
//! loop: the real Claude Code CLI against the mock model server, a fake
//! GitHub, and three users with their roles.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::fake_forge::{ALL, FakeForge};
use viberglass_testkit::model::{MockModel, Step};
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

fn claude() -> Option<String> {
    let dir = std::env::var("VIBERGLASS_TEST_CLI_DIR")
        .unwrap_or_else(|_| "/var/tmp/viberglass-tools/node_modules/.bin".into());
    let path = std::path::Path::new(&dir).join("claude");
    if path.exists() {
        return Some(path.display().to_string());
    }
    assert!(std::env::var("CI").is_err(), "{} is not installed under CI: scripts/test installs it", path.display());
    eprintln!("note: {} is not installed; skipping", path.display());
    None
}

async fn wait(client: &reqwest::Client, app: &TestApp, job: &Value) -> Value {
    let id = job["id"].as_str().unwrap_or_else(|| panic!("not a job: {job}")).to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job: Value = client.get(app.url(&format!("/api/v1/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
        if matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            assert_eq!(job["status"], "completed", "{job}");
            return job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn post(client: &reqwest::Client, app: &TestApp, path: &str, body: Value) -> Value {
    let response = client.post(app.url(path)).json(&body).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "POST {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_goes_from_research_to_a_pull_request_with_approvals_and_a_revision() {
    let Some(binary) = claude() else { return };
    let model = MockModel::start(vec![
        Step::Run("printf '# Findings\\n\\nThe readme has no title.\\n' > RESEARCH.md".into()),
        Step::Text("Wrote RESEARCH.md.".into()),
        Step::Run("printf '# Plan\\n1. Edit\\n' > PLAN.md".into()),
        Step::Text("Wrote PLAN.md.".into()),
        Step::Run("printf '# Plan\\n1. Add a title to README.md\\n2. Keep the rest\\n' > PLAN.md".into()),
        Step::Text("Revised PLAN.md.".into()),
        Step::Run(
            "printf '# Shop\\nFixed.\\n' > README.md && printf 'Give the readme a title\\n' > PR_TITLE.md".into(),
        ),
        Step::Text("Changed README.md.".into()),
    ])
    .await;
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "Shop\n")]);
    forge.add_token("forge-token-e2e-123", "shop-bot", ALL);
    let app = TestApp::builder(TestBackend::Sqlite)
        .env("VIBERGLASS_WORKER_BINARY", BINARY)
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
        .env("VG_MODEL_KEY", "sk-mock-key-0123456789")
        .env("VG_FORGE_TOKEN", "forge-token-e2e-123")
        .spawn()
        .await;
    // The administrator sets up the project, its integration and the clanker.
    app.shop_on_forge(&forge).await;
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Claude", "agent": "claude-code", "secrets": ["ANTHROPIC_API_KEY"],
                    "agent_settings": {"base_url": model.anthropic_url(), "binary": binary, "model": "claude-test-model"}}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    app.post_json("/api/v1/clankers/claude/start", &json!({})).await;
    let (dev, dev_user) = app.user_client("dev@example.com", false).await;
    let (lead, lead_user) = app.user_client("lead@example.com", false).await;
    app.grant("shop", &dev_user, "member").await;
    app.grant("shop", &lead_user, "maintainer").await;

    // The maintainer's prompt override reaches the model.
    let put = lead
        .put(app.url("/api/v1/projects/shop/prompts/research"))
        .json(&json!({"template": "HOUSE RULES apply. Research and write RESEARCH.md: {{ ticket_title }}\n{{ ticket_description }}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);

    let ticket =
        post(&dev, &app, "/api/v1/projects/shop/tickets", json!({"title": "Readme title", "description": "Add one"}))
            .await;
    let id = ticket["id"].as_str().unwrap().to_owned();
    let research =
        post(&dev, &app, &format!("/api/v1/tickets/{id}/runs"), json!({"phase": "research", "clanker": "claude"}))
            .await;
    wait(&dev, &app, &research).await;
    assert!(model.requests().iter().any(|r| r.body.to_string().contains("HOUSE RULES apply")), "the override was sent");

    // Execution before an approved plan is refused.
    let early = dev
        .post(app.url(&format!("/api/v1/tickets/{id}/runs")))
        .json(&json!({"phase": "execution", "clanker": "claude"}))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 422);

    let planning = post(
        &lead,
        &app,
        &format!("/api/v1/tickets/{id}/approve-and-continue"),
        json!({"phase": "research", "clanker": "claude", "comment": "good findings"}),
    )
    .await;
    assert_eq!(planning["phase"], "planning");
    wait(&lead, &app, &planning).await;
    let plan: Value = dev
        .get(app.url(&format!("/api/v1/tickets/{id}/documents/planning")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["document"]["revision"], 1);

    // A comment and a request for revision: the next run gets both.
    post(
        &dev,
        &app,
        &format!("/api/v1/tickets/{id}/documents/planning/comments"),
        json!({"line": 2, "body": "Edit what?"}),
    )
    .await;
    let revision = post(
        &dev,
        &app,
        &format!("/api/v1/tickets/{id}/documents/planning/revise"),
        json!({"clanker": "claude", "feedback": "Name the file and the change"}),
    )
    .await;
    wait(&dev, &app, &revision).await;
    let asked = model.requests().iter().any(|r| {
        let body = r.body.to_string();
        body.contains("Name the file and the change") && body.contains("line 2: Edit what?")
    });
    assert!(asked, "the revision prompt carries the feedback and the open comment");
    let plan: Value = dev
        .get(app.url(&format!("/api/v1/tickets/{id}/documents/planning")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["document"]["revision"], 2);
    assert!(plan["document"]["content"].as_str().unwrap().contains("Add a title to README.md"));

    // A member cannot approve; the maintainer approves and continues to execution.
    let refused = dev
        .post(app.url(&format!("/api/v1/tickets/{id}/approve-and-continue")))
        .json(&json!({"phase": "planning", "clanker": "claude"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let execution = post(
        &lead,
        &app,
        &format!("/api/v1/tickets/{id}/approve-and-continue"),
        json!({"phase": "planning", "clanker": "claude"}),
    )
    .await;
    assert_eq!(execution["phase"], "execution");
    let done = wait(&lead, &app, &execution).await;
    let url = done["result"]["pull_request"]["url"].as_str().unwrap().to_owned();
    let pulls = forge.pulls("acme/shop");
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].title, "Give the readme a title");
    let shown: Value = dev.get(app.url(&format!("/api/v1/tickets/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!((shown["pull_request_url"].as_str(), shown["status"].as_str()), (Some(url.as_str()), Some("in_review")));

    // The approvals log and the audit log tell who did each step.
    let approvals: Value =
        dev.get(app.url(&format!("/api/v1/tickets/{id}/approvals"))).send().await.unwrap().json().await.unwrap();
    let approvals: Vec<(&str, &str, &str)> = approvals
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["phase"].as_str().unwrap(), a["action"].as_str().unwrap(), a["actor_email"].as_str().unwrap()))
        .collect();
    assert_eq!(approvals, [("research", "approved", "lead@example.com"), ("planning", "approved", "lead@example.com")]);
    let audit: Value = app.get("/api/v1/audit?project=shop&limit=100").await.json().await.unwrap();
    let mut steps: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap().to_owned(), a["actor_email"].as_str().unwrap_or("-").to_owned()))
        .collect();
    steps.reverse();
    let expected = [
        ("project_created", "admin@example.com"),
        ("role_changed", "admin@example.com"),
        ("role_changed", "admin@example.com"),
        ("prompt_changed", "lead@example.com"),
        // Filed by a person: the ticket records who, and so does the log.
        ("ticket_filed", "dev@example.com"),
        ("run_started", "dev@example.com"),
        // Approve & Continue: the run starts (start_run logs it) in the approval's transaction.
        ("run_started", "lead@example.com"),
        ("approved", "lead@example.com"),
        ("phase_changed", "lead@example.com"),
        ("comment_added", "dev@example.com"),
        // A requested revision is a run like any other.
        ("run_started", "dev@example.com"),
        ("revision_requested", "dev@example.com"),
        ("run_started", "lead@example.com"),
        ("approved", "lead@example.com"),
        ("phase_changed", "lead@example.com"),
    ];
    let got: Vec<(&str, &str)> = steps.iter().map(|(a, u)| (a.as_str(), u.as_str())).collect();
    assert_eq!(got, expected, "the audit log, oldest first");
}
