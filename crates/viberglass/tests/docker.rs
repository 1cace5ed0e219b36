//! Docker clankers on the real Docker engine (Debian's docker.io, which
//! scripts/test installs and starts) with the worker image built from
//! docker/worker.Dockerfile (scripts/worker-image, from a root filesystem
//! made here): one container per job, on the host network so the worker
//! reaches the test server, the fake forge and the mock model on loopback.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::fake_forge::{ALL, FakeForge};
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::model::{MockModel, Step};
use viberglass_testkit::process::{ServerProcess, free_port, viberglass};
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

/// The worker image scripts/test built, when the Docker engine answers; `None` (skip) outside CI otherwise.
fn image() -> Option<String> {
    let engine = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    let image = std::env::var("VIBERGLASS_TEST_WORKER_IMAGE").ok();
    let ready = engine.is_ok_and(|o| o.status.success()) && image.is_some();
    if !ready {
        assert!(
            std::env::var("CI").is_err(),
            "the Docker engine and VIBERGLASS_TEST_WORKER_IMAGE are needed under CI: scripts/test starts dockerd and builds the image"
        );
        eprintln!("note: no Docker engine or worker image; skipping (scripts/test provides both)");
        return None;
    }
    image
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The containers (any state) of `job`.
fn containers_of(job: &str) -> Vec<String> {
    let found = docker(&["ps", "-aq", "--filter", &format!("label=io.viberglass.job={job}")]);
    found.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
}

async fn until_no_container(job: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !containers_of(job).is_empty() {
        assert!(Instant::now() < deadline, "the container of job {job} is still there after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fast(backend: TestBackend) -> viberglass_testkit::app::TestAppBuilder {
    TestApp::builder(backend)
        .fast_engine(BINARY)
        .env("VIBERGLASS_HEARTBEAT_GRACE_SECS", "30")
        // The test server, forge and model listen on loopback only.
        .env("VIBERGLASS_DOCKER_ALLOW_HOST_NETWORK", "true")
}

fn compute(image: &str, extra: Value) -> Value {
    let mut config = json!({"image": image, "network": "host"});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// A project on `repo_url`, a started Docker command clanker running `script`, and a ticket id.
async fn setup(app: &TestApp, repo_url: &str, image: &str, script: &str, extra: Value) -> String {
    app.create_project(json!({"name": "Shop", "repository_url": repo_url, "planning_needs_approval": false})).await;
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Boxed", "agent": "command", "compute": "docker",
                    "compute_config": compute(image, extra), "agent_settings": {"command": ["sh", "-c", script]}}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let started: Value = app.post_json("/api/v1/clankers/boxed/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    ticket["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_naming_a_missing_image_and_the_docker_host() {
    let Some(_) = image() else { return };
    let app = fast(TestBackend::Sqlite).spawn().await;
    app.post_json(
        "/api/v1/clankers",
        &json!({"shared": true, "name": "Boxed", "agent": "command", "compute": "docker",
                "compute_config": {"image": "viberglass-no-such-image:1"}, "agent_settings": {"command": ["true"]}}),
    )
    .await;
    let started: Value = app.post_json("/api/v1/clankers/boxed/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "failed", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(
        message.contains("image `viberglass-no-such-image:1` is not on the Docker host")
            && message.contains("scripts/worker-image"),
        "{message}"
    );
    // The host network only where the server allows it.
    let strict = TestApp::builder(TestBackend::Sqlite).spawn().await;
    strict
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Hosted", "agent": "command", "compute": "docker",
                    "compute_config": {"network": "host"}, "agent_settings": {"command": ["true"]}}),
        )
        .await;
    let refused: Value = strict.post_json("/api/v1/clankers/hosted/start", &json!({})).await.json().await.unwrap();
    assert_eq!(refused["status"], "failed", "{refused}");
    assert!(refused["status_message"].as_str().unwrap().contains("VIBERGLASS_DOCKER_ALLOW_HOST_NETWORK"), "{refused}");
    // Twice gives the same answer.
    let again: Value = app.post_json("/api/v1/clankers/boxed/start", &json!({})).await.json().await.unwrap();
    assert_eq!(again["status_message"], started["status_message"]);
    let bad = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Bad", "agent": "command", "compute": "docker",
                    "compute_config": {"memory_mb": 1}, "agent_settings": {"command": ["true"]}}),
        )
        .await;
    assert_eq!(bad.status(), 400, "settings are checked when saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_its_own_container_as_an_unprivileged_user_and_leaves_nothing_behind() {
    let Some(image) = image() else { return };
    let app = fast(TestBackend::Sqlite).spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let script = "echo uid=$(id -u); echo env=$(env | grep -c VIBERGLASS_JOB_TOKEN); \
                  echo file=$(ls -a .. | grep -c token); echo changed >> README.md";
    let ticket = setup(&app, &repo.url(), &image, script, json!({"memory_mb": 1024, "cpus": 1.5})).await;
    let clanker: Value = app.get("/api/v1/clankers/boxed").await.json().await.unwrap();
    assert!(clanker["status_message"].as_str().unwrap().contains("passed its self-check"), "{clanker}");
    let id = app.run_phase(&ticket, "boxed", "execution").await;
    let done = app.wait_for_job(&id, &["completed", "failed"], Duration::from_secs(90)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["compute_kind"], "docker", "{done}");
    assert!(done["compute_ref"].as_str().unwrap().starts_with("docker:"), "{done}");
    let log = app.job_events(&id).await;
    assert!(log.contains("uid=10001"), "the worker runs as the image's user: {log}");
    assert!(
        log.contains("env=0") && log.contains("file=0"),
        "the token is neither in the environment nor left as a file: {log}"
    );
    let branch = done["branch"].as_str().unwrap();
    assert!(repo.git(&["branch", "--list", branch]).contains(branch), "pushed from the container");
    until_no_container(&id, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_removes_the_container_within_five_seconds() {
    let Some(image) = image() else { return };
    let app = fast(TestBackend::Sqlite).spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let ticket = setup(&app, &repo.url(), &image, "sleep 120", json!({})).await;
    let id = app.run_phase(&ticket, "boxed", "execution").await;
    app.wait_for_agent(&id).await;
    assert_eq!(containers_of(&id).len(), 1, "one container per job");
    let cancelled = Instant::now();
    let response = app.post_json(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    until_no_container(&id, Duration::from_secs(5)).await;
    assert!(cancelled.elapsed() < Duration::from_secs(5));
    let done = app.wait_for_job(&id, &["cancelled", "failed"], Duration::from_secs(10)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_mid_run_fails_its_job_naming_the_cause() {
    let Some(image) = image() else { return };
    let app = fast(TestBackend::Sqlite).spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    let ticket = setup(&app, &repo.url(), &image, "echo working; sleep 120", json!({})).await;
    let id = app.run_phase(&ticket, "boxed", "execution").await;
    app.wait_for_agent(&id).await;
    let killed = Instant::now();
    docker(&["kill", &format!("viberglass-{id}")]);
    let done = app.wait_for_job(&id, &["failed", "completed"], Duration::from_secs(30)).await;
    assert!(killed.elapsed() < Duration::from_secs(30), "well within the heartbeat grace");
    assert_eq!(done["status"], "failed", "{done}");
    let message = done["status_message"].as_str().unwrap();
    assert!(message.contains("the container was killed"), "{message}");
    until_no_container(&id, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_the_memory_limit_fails_with_out_of_memory() {
    let Some(image) = image() else { return };
    let app = fast(TestBackend::Sqlite).spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    // `tail` keeps its whole (newline-free) last line in memory.
    let ticket = setup(
        &app,
        &repo.url(),
        &image,
        "head -c 800000000 /dev/zero | tail -n 1 >/dev/null",
        json!({"memory_mb": 160}),
    )
    .await;
    let id = app.run_phase(&ticket, "boxed", "execution").await;
    let done = app.wait_for_job(&id, &["failed", "completed"], Duration::from_secs(90)).await;
    assert_eq!(done["status"], "failed", "{done}");
    let message = done["status_message"].as_str().unwrap();
    assert!(message.contains("out of memory") && message.contains("memory_mb"), "{message}");
    until_no_container(&id, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_in_a_container_goes_from_research_to_a_pull_request() {
    let Some(image) = image() else { return };
    let model = MockModel::start(vec![
        Step::Run("printf '# Findings\\n\\nThe readme has no title.\\n' > RESEARCH.md".into()),
        Step::Text("Wrote RESEARCH.md.".into()),
        Step::Run("printf '# Plan\\n1. Add a title to README.md\\n' > PLAN.md".into()),
        Step::Text("Wrote PLAN.md.".into()),
        Step::Run(
            "printf '# Shop\\nFixed.\\n' > README.md && printf 'Give the readme a title\\n' > PR_TITLE.md".into(),
        ),
        Step::Text("Changed README.md.".into()),
    ])
    .await;
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "Shop\n")]);
    forge.add_token("forge-token-docker-1", "shop-bot", ALL);
    let app = fast(TestBackend::Sqlite)
        .env("VG_MODEL_KEY", "sk-mock-key-0123456789")
        .env("VG_FORGE_TOKEN", "forge-token-docker-1")
        .spawn()
        .await;
    app.shop_on_forge(&forge).await;
    // Claude Code as the image installs it (on its PATH), not the host's copy.
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Claude", "agent": "claude-code", "secrets": ["ANTHROPIC_API_KEY"],
                    "compute": "docker", "compute_config": compute(&image, json!({})),
                    "agent_settings": {"base_url": model.anthropic_url(), "model": "claude-test-model"}}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let started: Value = app.post_json("/api/v1/clankers/claude/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    let ticket = app.create_ticket("shop", json!({"title": "Readme title", "description": "Add one"})).await;
    let ticket = ticket["id"].as_str().unwrap().to_owned();

    let research = app.run_phase(&ticket, "claude", "research").await;
    let done = app.wait_for_job(&research, &["completed", "failed"], Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", app.job_events(&research).await);
    let planning = app.approve_and_continue(&ticket, "research", "claude").await;
    let done = app.wait_for_job(&planning, &["completed", "failed"], Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let execution = app.approve_and_continue(&ticket, "planning", "claude").await;
    let done = app.wait_for_job(&execution, &["completed", "failed"], Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", app.job_events(&execution).await);
    let pulls = forge.pulls("acme/shop");
    assert_eq!(pulls.len(), 1, "one pull request");
    assert_eq!(pulls[0].title, "Give the readme a title");
    let url = done["result"]["pull_request"]["url"].as_str().unwrap();
    assert!(url.ends_with(&format!("/pull/{}", pulls[0].number)), "{url}");
    // The key reached the model from the worker's proxy; the agent had only a placeholder.
    assert!(model.requests().iter().all(|r| r.header("x-api-key") == Some("sk-mock-key-0123456789")));
    for job in [&research, &planning, &execution] {
        until_no_container(job, Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_adopts_its_container_after_the_restart() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    let port = free_port();
    let start = || {
        let mut command = viberglass(BINARY, dir.path());
        command
            .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
            .env("VIBERGLASS_REAPER_INTERVAL_MS", "200")
            .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
            .env("VIBERGLASS_HEARTBEAT_GRACE_SECS", "30")
            .env("VIBERGLASS_DOCKER_ALLOW_HOST_NETWORK", "true");
        ServerProcess::start(command, port)
    };
    let mut server = start();
    let client = viberglass_testkit::app::admin_client(&server.url("")).await.0;
    let post = |path: String, body: Value| {
        let client = client.clone();
        async move {
            let response = client.post(&path).json(&body).send().await.unwrap();
            assert!(response.status().is_success(), "POST {path}: {}", response.text().await.unwrap());
            response.json::<Value>().await.unwrap()
        }
    };
    post(
        server.url("/api/v1/projects"),
        json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false}),
    )
    .await;
    post(
        server.url("/api/v1/clankers"),
        json!({"shared": true, "name": "Boxed", "agent": "command", "compute": "docker",
               "compute_config": compute(&image, json!({})),
               "agent_settings": {"command": ["sh", "-c", "echo started; sleep 6; echo fixed >> README.md; echo finished"]}}),
    )
    .await;
    let started = post(server.url("/api/v1/clankers/boxed/start"), json!({})).await;
    assert_eq!(started["status"], "active", "{started}");
    let ticket = post(server.url("/api/v1/projects/shop/tickets"), json!({"title": "Fix the readme"})).await;
    let job = post(
        server.url(&format!("/api/v1/tickets/{}/runs", ticket["id"].as_str().unwrap())),
        json!({"phase": "execution", "clanker": "boxed"}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let get = |path: String| {
        let client = client.clone();
        async move { client.get(&path).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(server.url(&format!("/api/v1/jobs/{id}"))).await["progress_step"] != "running the agent" {
        assert!(Instant::now() < deadline, "the agent never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let job = get(server.url(&format!("/api/v1/jobs/{id}"))).await;
        if job["status"] != "active" && job["status"] != "dispatching" {
            break job;
        }
        assert!(Instant::now() < deadline, "the job did not finish after the restart: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "completed", "the restarted server adopted the container: {done}");
    until_no_container(&id, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_clanker_from_local_to_docker_keeps_its_id_secrets_and_history() {
    let Some(image) = image() else { return };
    let app = fast(TestBackend::Sqlite).env("VG_SOME_SECRET", "value-123").spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    app.post_json("/api/v1/secrets", &json!({"name": "SOME_SECRET", "reference": "VG_SOME_SECRET"})).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false})).await;
    let created: Value = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Mover", "agent": "command", "secrets": ["SOME_SECRET"],
                    "agent_settings": {"command": ["sh", "-c", "echo where=$(id -u); echo changed >> README.md"]}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let started: Value = app.post_json("/api/v1/clankers/mover/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    let ticket = ticket["id"].as_str().unwrap().to_owned();
    let local = app.run_phase(&ticket, "mover", "execution").await;
    assert_eq!(
        app.wait_for_job(&local, &["completed", "failed"], Duration::from_secs(60)).await["status"],
        "completed"
    );

    let moved: Value = app
        .patch_json(
            "/api/v1/clankers/mover",
            &json!({"compute": "docker", "compute_config": compute(&image, json!({}))}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["id"], created["id"]);
    assert_eq!(moved["secrets"], json!(["SOME_SECRET"]));
    assert_eq!(moved["compute"], "docker");
    assert_eq!(moved["status"], "active", "re-checked on the new target: {moved}");
    assert!(moved["status_message"].as_str().unwrap().contains("Docker host"), "{moved}");
    let boxed = app.run_phase(&ticket, "mover", "execution").await;
    let done = app.wait_for_job(&boxed, &["completed", "failed"], Duration::from_secs(90)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(app.job_events(&boxed).await.contains("where=10001"));
    let old: Value = app.get(&format!("/api/v1/jobs/{local}")).await.json().await.unwrap();
    assert_eq!(old["compute_kind"], "local", "the earlier run's history stays as it ran: {old}");
    until_no_container(&boxed, Duration::from_secs(30)).await;

    // And a switch to a target that cannot run it says so at once.
    let broken: Value = app
        .patch_json("/api/v1/clankers/mover", &json!({"compute_config": {"image": "viberglass-no-such-image:2"}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(broken["status"], "failed", "{broken}");
}
