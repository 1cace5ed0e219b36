//! The job engine across server processes: a server killed mid-run, and two
//! servers sharing one PostgreSQL.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::process::{ServerProcess, free_port, viberglass};
use viberglass_testkit::{TestBackend, TestDb};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

fn fast(command: &mut Command) {
    command
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_REAPER_INTERVAL_MS", "200")
        .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
        .env("VIBERGLASS_HEARTBEAT_GRACE_SECS", "30");
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let response = client.post(&url).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "POST {url}: {}", response.text().await.unwrap());
    response.json().await.unwrap()
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(&url).send().await.unwrap().json().await.unwrap()
}

/// A project on `repo`, a started clanker running `script`, and a ticket; returns the ticket id.
async fn setup(
    client: &reqwest::Client,
    server: &ServerProcess,
    repo: &ServedRepo,
    script: &str,
    limit: u32,
) -> String {
    post(
        client,
        server.url("/api/v1/projects"),
        json!({"name": "Shop", "repository_url": repo.url(), "max_concurrent_jobs": limit, "planning_needs_approval": false}),
    )
    .await;
    post(
        client,
        server.url("/api/v1/clankers"),
        json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["sh", "-c", script]}, "max_concurrent_jobs": limit}),
    )
    .await;
    post(client, server.url("/api/v1/clankers/scripted/start"), json!({})).await;
    let ticket = post(client, server.url("/api/v1/projects/shop/tickets"), json!({"title": "Fix the readme"})).await;
    ticket["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_and_restarted_sees_the_job_complete_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    let port = free_port();
    let start = || {
        let mut command = viberglass(BINARY, dir.path());
        fast(&mut command);
        ServerProcess::start(command, port)
    };
    let mut server = start();
    let client = viberglass_testkit::app::admin_client(&server.url("")).await.0;
    let ticket =
        setup(&client, &server, &repo, "echo started && sleep 6 && echo fixed >> README.md && echo finished", 2).await;
    let job = post(
        &client,
        server.url(&format!("/api/v1/tickets/{ticket}/runs")),
        json!({"phase": "execution", "clanker": "scripted"}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = get(&client, server.url(&format!("/api/v1/jobs/{id}"))).await;
        if job["progress_step"] == "running the agent" {
            break;
        }
        assert!(Instant::now() < deadline, "the agent never started: {job}");

        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let job = get(&client, server.url(&format!("/api/v1/jobs/{id}"))).await;
        if job["status"] != "active" && job["status"] != "dispatching" {
            break job;
        }
        assert!(Instant::now() < deadline, "the job did not finish after the restart: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 1);

    let events = get(&client, server.url(&format!("/api/v1/jobs/{id}/events?limit=1000"))).await;
    let messages: Vec<&str> =
        events["items"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    let count = |needle: &str| messages.iter().filter(|m| m.contains(needle)).count();
    assert_eq!(count("worker started"), 1, "dispatched once: {messages:#?}");
    assert_eq!(count("started"), 2, "`worker started` and the agent's `started`, each once: {messages:#?}");
    assert_eq!(count("finished"), 1, "{messages:#?}");
    assert_eq!(count("completed:"), 1, "{messages:#?}");
    let jobs = get(&client, server.url("/api/v1/jobs")).await;
    assert_eq!(jobs["items"].as_array().unwrap().len(), 1, "no duplicate job");

    // The outbox consumer the killed server held resumes in the restarted one
    // (once the dead server's lease lapses) and reads everything written.
    let target = viberglass_store::DatabaseTarget::Sqlite { path: dir.path().join("viberglass-data/viberglass.db") };
    let store = viberglass_store::Store::connect(&target, Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let states = store.consumer_states().await.unwrap();
        let status = states.iter().find(|c| c.name == "ticket-status");
        if status.is_some_and(|c| c.pending == 0 && c.handled > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the ticket-status consumer did not resume: {states:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_dispatch_each_of_200_jobs_exactly_once() {
    if !TestBackend::postgres_available() {
        return;
    }
    let db = TestDb::new(TestBackend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    let start = |data: &str| {
        let mut command = viberglass(BINARY, dir.path());
        fast(&mut command);
        command
            .env("DATABASE_URL", db.url())
            .env("SECRETS_ENCRYPTION_KEY", "ab".repeat(32))
            .env("VIBERGLASS_DATA_DIR", dir.path().join(data));
        ServerProcess::start(command, 0)
    };
    let a = start("a");
    let client = viberglass_testkit::app::admin_client(&a.url("")).await.0;
    let ticket = setup(&client, &a, &repo, "printf '# R\\n' > RESEARCH.md", 8).await;
    // Queue 200 runs before the second server starts, then let both dispatch.
    let mut ids = Vec::new();
    for _ in 0..200 {
        let job = post(
            &client,
            a.url(&format!("/api/v1/tickets/{ticket}/runs")),
            json!({"phase": "research", "clanker": "scripted"}),
        )
        .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let b = start("b");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let active = get(&client, b.url("/api/v1/jobs?status=queued&limit=1")).await["items"].as_array().unwrap().len()
            + get(&client, b.url("/api/v1/jobs?status=dispatching&limit=1")).await["items"].as_array().unwrap().len()
            + get(&client, b.url("/api/v1/jobs?status=active&limit=1")).await["items"].as_array().unwrap().len();
        if active == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs still running after 300 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut dispatched_by: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let job = get(&client, a.url(&format!("/api/v1/jobs/{id}"))).await;
        assert_eq!(job["status"], "completed", "{job}");
        let events = get(&client, a.url(&format!("/api/v1/jobs/{id}/events?limit=1000"))).await;
        let starts = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["message"].as_str().unwrap().starts_with("worker started"))
            .count();
        assert_eq!(starts, 1, "job {id} was started {starts} times");
        let workspace_a = dir.path().join("a/workspaces").join(id).exists();
        *dispatched_by.entry(if workspace_a { "a".into() } else { "b".into() }).or_default() += 1;
    }
    eprintln!("dispatched by server: {dispatched_by:?}");
}
