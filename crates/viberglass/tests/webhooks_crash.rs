//! Deliveries survive a crash: a load generator sends 300 signed deliveries a
//! second for 20 seconds while the server is killed with SIGKILL and
//! restarted. Every delivery that got a 2xx has exactly one ticket, and none
//! has two.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_domain::{PageRequest, TicketFilter};
use viberglass_testkit::process::{ServerProcess, free_port, viberglass};
use viberglass_testkit::webhooks as hooks;
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
const SECRET: &str = "whsec-crash-0123456789";
const RATE: u64 = 300;
const SECONDS: u64 = 20;

backend_tests!(deliveries_acknowledged_before_a_sigkill_each_have_one_ticket);

async fn deliveries_acknowledged_before_a_sigkill_each_have_one_ticket(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let start = || {
        let mut command: Command = viberglass(BINARY, dir.path());
        command.env("SECRETS_ENCRYPTION_KEY", "cd".repeat(32)).env("VIBERGLASS_DATA_DIR", dir.path().join("data"));
        if backend == TestBackend::Postgres {
            command.env("DATABASE_URL", db.url());
        }
        ServerProcess::start(command, port)
    };
    let mut server = start();
    let client = viberglass_testkit::app::admin_client(&server.url("")).await.0;
    let project = client.post(server.url("/api/v1/projects")).json(&json!({"name": "Shop"})).send().await.unwrap();
    assert_eq!(project.status(), 201);
    let config: Value = client
        .post(server.url("/api/v1/projects/shop/webhooks"))
        .json(&json!({"provider": "custom", "secret": SECRET}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = server.url(config["path"].as_str().unwrap());

    let sender = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let sent = Arc::new(Mutex::new(0u64));
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut tasks = Vec::new();
    let mut killed = false;
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(SECONDS) {
        interval.tick().await;
        if !killed && started.elapsed() > Duration::from_secs(SECONDS / 2) {
            server.kill();
            killed = true;
            // Back after a moment on the same port; deliveries meanwhile fail to connect (no 2xx: not counted).
            tokio::time::sleep(Duration::from_millis(500)).await;
            server = start();
        }
        n += 1;
        let delivery = hooks::custom(
            Some(SECRET),
            &json!({"title": format!("Load {n}"), "external_id": format!("L-{n}"), "description": "under load"}),
        );
        let (sender, url, acknowledged, sent) = (sender.clone(), url.clone(), acknowledged.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            *sent.lock().unwrap() += 1;
            let mut request = sender.post(&url).body(delivery.body.clone());
            for (k, v) in &delivery.headers {
                request = request.header(k, v);
            }
            if let Ok(response) = request.send().await
                && response.status().is_success()
            {
                acknowledged.lock().unwrap().insert(format!("L-{n}"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(killed);
    let acknowledged = acknowledged.lock().unwrap().clone();
    // A debug build on two loaded cores acknowledges a few hundred (the rest time out unanswered, which is
    // allowed): a hundred, some on each side of the kill, are enough to mean something.
    assert!(acknowledged.len() > 100, "too few deliveries got through to mean anything: {}", acknowledged.len());

    // Count every ticket by its external id, straight from the database.
    let store = match backend {
        TestBackend::Sqlite => {
            let target = viberglass_store::DatabaseTarget::Sqlite { path: dir.path().join("data/viberglass.db") };
            viberglass_store::Store::connect(&target, Default::default()).await.unwrap()
        }
        TestBackend::Postgres => db.store().await,
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut page = PageRequest { limit: 200, after: None };
    loop {
        let tickets = store.list_tickets(&TicketFilter::default(), page).await.unwrap();
        for t in &tickets.items {
            *counts.entry(t.external_id.clone().unwrap_or_default()).or_default() += 1;
        }
        match tickets.next_cursor {
            Some(c) => page = PageRequest::parse(Some(200), Some(&c)).unwrap(),
            None => break,
        }
    }
    let missing: Vec<_> = acknowledged.iter().filter(|id| !counts.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged deliveries without a ticket: {missing:?}");
    let doubled: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(doubled.is_empty(), "deliveries with two tickets: {doubled:?}");
    println!(
        "{backend:?}: sent {}, acknowledged {}, tickets {} (unacknowledged but filed: {})",
        sent.lock().unwrap(),
        acknowledged.len(),
        counts.len(),
        counts.len() - acknowledged.len()
    );
}
