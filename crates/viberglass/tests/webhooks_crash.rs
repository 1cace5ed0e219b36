//! Deliveries survive a crash: 16 senders keep signed deliveries in flight
//! for 20 seconds while the server is killed with SIGKILL and
//! restarted. Every delivery that got a 2xx has exactly one ticket, and none
//! has two.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_domain::{PageRequest, TicketFilter};
use viberglass_testkit::process::{ServerProcess, free_port, viberglass};
use viberglass_testkit::webhooks as hooks;
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
const SECRET: &str = "whsec-crash-0123456789";
const SENDERS: usize = 16;
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
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // A closed loop: SENDERS deliveries in flight at any moment, each sender sending its next as soon as the
    // last is answered (or refused while the server is down). An open loop at a fixed rate floods a debug
    // build on two loaded cores until everything times out; this keeps the server busy but answering.
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let (sender, url, acknowledged, sent) = (sender.clone(), url.clone(), acknowledged.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < Duration::from_secs(SECONDS) {
                let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
                let delivery = hooks::custom(
                    Some(SECRET),
                    &json!({"title": format!("Load {n}"), "external_id": format!("L-{n}"), "description": "under load"}),
                );
                let mut request = sender.post(&url).body(delivery.body.clone());
                for (k, v) in &delivery.headers {
                    request = request.header(k, v);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        acknowledged.lock().unwrap().insert(format!("L-{n}"));
                    }
                    // Down (connection refused) or refused: not counted; wait a moment rather than spin.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(SECONDS / 2)).await;
    server.kill();
    let acknowledged_before_kill = acknowledged.lock().unwrap().len();
    // Back after a moment on the same port; deliveries meanwhile fail to connect (no 2xx: not counted).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _restarted = start();
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    // Some on each side of the kill are enough to mean something; a debug build on two loaded cores
    // acknowledges hundreds.
    assert!(
        acknowledged_before_kill >= 20 && acknowledged.len() >= acknowledged_before_kill + 20,
        "too few deliveries got through on each side of the kill to mean anything: {acknowledged_before_kill} before, {} in all",
        acknowledged.len()
    );

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
        sent.load(Ordering::SeqCst),
        acknowledged.len(),
        counts.len(),
        counts.len() - acknowledged.len()
    );
}
