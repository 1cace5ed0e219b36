//! Scheduled tasks end to end: the scheduler driven by a test clock shared by
//! the servers (no real minutes pass), real `viberglass worker` processes for
//! the runs, and the executions read back through the API.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;
use viberglass_server::clock::ManualClock;
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::{TestApp, TestBackend, TestDb, backend_tests};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
/// A Monday morning, half a minute past the hour: the first every-minute slot is 09:01.
const T0: OffsetDateTime = datetime!(2030-01-07 09:00:30 UTC);
const MINUTE: time::Duration = time::Duration::minutes(1);

backend_tests!(
    each_slot_runs_once_across_two_servers_on_one_database,
    an_execution_follows_its_job_and_overlap_skips_or_queues,
    downtime_is_caught_up_once_or_skipped_per_policy
);

async fn server(backend: TestBackend, db: &TestDb, clock: &ManualClock) -> TestApp {
    TestApp::builder(backend).fast_engine(BINARY).clock(clock.clone()).database(db.shared()).spawn().await
}

async fn clanker(app: &TestApp, name: &str, script: &str, start: bool) {
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": name, "agent": "command", "agent_settings": {"command": ["sh", "-c", script]},
                "max_concurrent_jobs": 10}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    if start {
        let slug = name.to_lowercase();
        let started: Value =
            app.post_json(&format!("/api/v1/clankers/{slug}/start"), &json!({})).await.json().await.unwrap();
        assert_eq!(started["status"], "active", "{started}");
    }
}

/// A template running `clanker` and a schedule on it; the schedule's id.
async fn schedule(app: &TestApp, name: &str, clanker: &str, extra: Value) -> String {
    let template = app
        .post_json(
            "/api/v1/projects/shop/task-templates",
            &json!({"name": format!("{name}-task"), "clanker": clanker, "phase": "research",
                "instructions": "Survey the repository and write what you find."}),
        )
        .await;
    assert_eq!(template.status(), 201, "{}", template.text().await.unwrap());
    let mut body = json!({"name": name, "template": format!("{name}-task"), "cron": "* * * * *"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let created = app.post_json("/api/v1/projects/shop/schedules", &body).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let created: Value = created.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

async fn executions(app: &TestApp, schedule: &str) -> Vec<Value> {
    let listed: Value = app
        .get(&format!("/api/v1/projects/shop/schedules/{schedule}/executions?limit=200"))
        .await
        .json()
        .await
        .unwrap();
    let mut all = listed.as_array().unwrap().clone();
    all.reverse(); // Oldest first.
    all
}

/// Waits until the schedule's executions (oldest first) satisfy `done`.
async fn wait_for(app: &TestApp, schedule: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = executions(app, schedule).await;
        if done(&all) {
            return all;
        }
        assert!(Instant::now() < deadline, "{what}: not within a minute; executions: {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ended(e: &Value) -> bool {
    !matches!(e["status"].as_str(), Some("queued" | "running"))
}

fn slot(e: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(e["slot"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
}

async fn schedule_row(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/projects/shop/schedules/{id}")).await.json().await.unwrap()
}

async fn each_slot_runs_once_across_two_servers_on_one_database(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let clock = ManualClock::at(T0);
    let first = server(backend, &db, &clock).await;
    let second = server(backend, &db, &clock).await;
    first.create_project(json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    // Never started: each execution files its ticket and fails at once, saying so (no worker needed).
    clanker(&first, "Bot", "true", false).await;
    let id = schedule(&first, "every-minute", "bot", json!({})).await;
    assert_eq!(schedule_row(&second, &id).await["next_run_at"], "2030-01-07T09:01:00Z");

    const SLOTS: usize = 50;
    for n in 1..=SLOTS {
        clock.advance(MINUTE);
        // Each server's scheduler sees the slot; exactly one takes it.
        let reader = if n % 2 == 0 { &first } else { &second };
        wait_for(reader, &id, &format!("slot {n}"), |all| all.len() >= n && all.iter().all(ended)).await;
    }
    let all = executions(&first, &id).await;
    assert_eq!(all.len(), SLOTS, "one execution per slot, none twice");
    let slots: Vec<OffsetDateTime> = all.iter().map(slot).collect();
    let expected: Vec<OffsetDateTime> =
        (1..=SLOTS as i32).map(|m| datetime!(2030-01-07 09:00 UTC) + MINUTE * m).collect();
    assert_eq!(slots, expected);
    for e in &all {
        assert_eq!((e["trigger"].as_str(), e["status"].as_str()), (Some("schedule"), Some("failed")), "{e}");
        assert!(e["message"].as_str().unwrap().contains("start it first"), "{e}");
    }
    let row = schedule_row(&first, &id).await;
    assert_eq!(
        (row["runs"].as_i64(), row["failures"].as_i64(), row["skipped"].as_i64()),
        (Some(50), Some(50), Some(0))
    );
    assert_eq!(row["next_run_at"], "2030-01-07T09:51:00Z");
    // One ticket per execution, each filed once.
    let tickets: std::collections::HashSet<&str> = all.iter().map(|e| e["ticket_id"].as_str().unwrap()).collect();
    assert_eq!(tickets.len(), SLOTS);
}

async fn wait_job(app: &TestApp, id: &str, statuses: &[&str]) -> Value {
    app.wait_for_job(id, statuses, Duration::from_secs(60)).await
}

async fn an_execution_follows_its_job_and_overlap_skips_or_queues(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let clock = ManualClock::at(T0);
    let app = server(backend, &db, &clock).await;
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url()})).await;
    clanker(&app, "Quick", "printf '# Findings\\n\\nAll good.\\n' > RESEARCH.md", true).await;
    clanker(&app, "Slow", "sleep 120", true).await;
    let id = schedule(&app, "survey", "quick", json!({})).await;

    // A slot on time: a ticket filed from the schedule, a research run, the execution completed with it.
    clock.advance(MINUTE);
    let all = wait_for(&app, &id, "the first execution", |all| all.len() == 1 && ended(&all[0])).await;
    let first = &all[0];
    assert_eq!((first["status"].as_str(), first["trigger"].as_str()), (Some("completed"), Some("schedule")), "{first}");
    assert_eq!(first["job"]["status"], "completed");
    assert_eq!(first["job_id"], first["id"], "the job takes the execution's id: starting it twice queues one job");
    let ticket: Value =
        app.get(&format!("/api/v1/tickets/{}", first["ticket_id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(ticket["source"], "schedule");
    assert_eq!(ticket["title"], "survey: 2030-01-07 09:01 UTC");
    let document: Value = app
        .get(&format!("/api/v1/tickets/{}/documents/research", ticket["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert!(document["document"]["content"].as_str().unwrap().contains("All good."), "{document}");
    // Its outcome is an outbox event, deliverable to outbound webhooks.
    let events = app.store.list_outbox(0, 500).await.unwrap();
    let finished: Vec<_> =
        events.iter().filter(|e| e.event_type == viberglass_domain::EventType::ScheduleExecutionFinished).collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].data["status"], "completed");
    assert_eq!(finished[0].data["schedule"], "survey");
    assert_eq!(finished[0].webhook_body()["type"], "schedule.execution_finished");

    // Overlap skip: while a run is still active, the next slot is skipped, and Run now is refused.
    let patched = app.patch_json("/api/v1/projects/shop/task-templates/survey-task", &json!({"clanker": "slow"})).await;
    assert_eq!(patched.status(), 200);
    clock.advance(MINUTE);
    let all = wait_for(&app, &id, "the slow execution", |all| all.len() == 2 && all[1]["status"] == "running").await;
    let slow = all[1]["id"].as_str().unwrap().to_owned();
    wait_job(&app, &slow, &["active"]).await;
    clock.advance(MINUTE);
    let all = wait_for(&app, &id, "the skipped slot", |all| all.len() == 3).await;
    assert_eq!(all[2]["status"], "skipped", "{:#?}", all[2]);
    let message = all[2]["message"].as_str().unwrap();
    assert!(message.contains(&format!("execution {slow} was still running (overlap policy skip)")), "{message}");
    assert_eq!(all[2]["job_id"], Value::Null);
    let refused = app.post_json(&format!("/api/v1/projects/shop/schedules/{id}/run"), &json!({})).await;
    assert_eq!(refused.status(), 409);
    let refused: Value = refused.json().await.unwrap();
    assert!(refused["message"].as_str().unwrap().contains("is still running"), "{refused}");

    // Overlap queue: one waits while the run goes on (a further slot is skipped), and starts when it ends.
    let patched = app.patch_json(&format!("/api/v1/projects/shop/schedules/{id}"), &json!({"overlap": "queue"})).await;
    assert_eq!(patched.status(), 200);
    clock.advance(MINUTE);
    let all = wait_for(&app, &id, "the queued slot", |all| all.len() == 4).await;
    assert_eq!(all[3]["status"], "queued");
    let waiting = all[3]["id"].as_str().unwrap().to_owned();
    clock.advance(MINUTE);
    let all = wait_for(&app, &id, "the slot after the queued one", |all| all.len() == 5).await;
    assert_eq!(all[4]["status"], "skipped");
    assert!(all[4]["message"].as_str().unwrap().contains("one already waited"), "{:#?}", all[4]);
    assert_eq!(app.post_json(&format!("/api/v1/jobs/{slow}/cancel"), &json!({})).await.status(), 200);
    let all = wait_for(&app, &id, "the waiting execution to start", |all| {
        all[1]["status"] == "cancelled" && all[3]["status"] == "running"
    })
    .await;
    assert_eq!(all[3]["id"], waiting.as_str());
    wait_job(&app, &waiting, &["active"]).await;
    assert_eq!(app.post_json(&format!("/api/v1/jobs/{waiting}/cancel"), &json!({})).await.status(), 200);
    wait_for(&app, &id, "the second slow execution to end", |all| all[3]["status"] == "cancelled").await;

    let row = schedule_row(&app, &id).await;
    assert_eq!((row["runs"].as_i64(), row["skipped"].as_i64(), row["failures"].as_i64()), (Some(3), Some(2), Some(0)));
    let statuses: Vec<String> = app
        .store
        .list_outbox(0, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type == viberglass_domain::EventType::ScheduleExecutionFinished)
        .map(|e| e.data["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["completed", "skipped", "skipped", "cancelled", "cancelled"]);
}

async fn downtime_is_caught_up_once_or_skipped_per_policy(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let clock = ManualClock::at(T0);
    let app = server(backend, &db, &clock).await;
    app.create_project(json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    clanker(&app, "Bot", "true", false).await;
    let once = schedule(&app, "catch-up", "bot", json!({"missed": "run_once"})).await;
    let skip = schedule(&app, "no-catch-up", "bot", json!({"missed": "skip"})).await;
    clock.advance(MINUTE);
    for id in [&once, &skip] {
        wait_for(&app, id, "the slot before the downtime", |all| all.len() == 1 && ended(&all[0])).await;
    }

    // No server runs across three slots (09:02, 09:03, 09:04).
    drop(app);
    tokio::time::sleep(Duration::from_secs(2)).await;
    clock.advance(MINUTE * 3);
    let app = server(backend, &db, &clock).await;

    let all = wait_for(&app, &once, "the catch-up run", |all| all.len() == 2 && ended(&all[1])).await;
    assert_eq!((all[1]["trigger"].as_str(), all[1]["status"].as_str()), (Some("catch_up"), Some("failed")));
    assert_eq!(slot(&all[1]), datetime!(2030-01-07 09:04 UTC), "one run, for the latest missed slot");
    let row = schedule_row(&app, &once).await;
    assert_eq!((row["runs"].as_i64(), row["skipped"].as_i64()), (Some(2), Some(2)));
    assert_eq!(row["next_run_at"], "2030-01-07T09:05:00Z");

    let all = wait_for(&app, &skip, "the missed slots recorded", |all| all.len() == 2).await;
    assert_eq!((all[1]["trigger"].as_str(), all[1]["status"].as_str()), (Some("catch_up"), Some("skipped")));
    assert_eq!(all[1]["ticket_id"], Value::Null, "nothing ran");
    assert!(
        all[1]["message"].as_str().unwrap().contains("3 slot(s) from 2030-01-07 09:02 UTC were missed"),
        "{:#?}",
        all[1]
    );
    let row = schedule_row(&app, &skip).await;
    assert_eq!((row["runs"].as_i64(), row["skipped"].as_i64()), (Some(1), Some(3)));
    assert_eq!(row["next_run_at"], "2030-01-07T09:05:00Z");

    // Back on time: the next slot runs as usual for both.
    clock.advance(MINUTE);
    for id in [&once, &skip] {
        let all = wait_for(&app, id, "the slot after the downtime", |all| all.len() == 3 && ended(&all[2])).await;
        assert_eq!((all[2]["trigger"].as_str(), slot(&all[2])), (Some("schedule"), datetime!(2030-01-07 09:05 UTC)));
    }
}
