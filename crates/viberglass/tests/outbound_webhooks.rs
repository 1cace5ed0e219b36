//! Outbound webhooks: subscriptions get every event they want, signed in the
//! Standard Webhooks format (the testkit's receiver verifies with the
//! reference library), retried with backoff while the destination is down,
//! with every attempt recorded; 410 and failing past the maximum age turn a
//! subscription off; private destinations are refused unless allowed; and
//! nothing is lost across a SIGKILL, nor delivered concurrently by two
//! servers on one PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use viberglass_testkit::process::{ServerProcess, free_port, viberglass};
use viberglass_testkit::receiver::Receiver;
use viberglass_testkit::{TestApp, TestBackend, TestDb, backend_tests};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(30);

async fn app(backend: TestBackend, extra: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder(backend)
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_WEBHOOK_RETRY_MIN_MS", "50")
        .env("VIBERGLASS_WEBHOOK_RETRY_MAX_SECS", "1")
        .env("VIBERGLASS_WEBHOOK_TIMEOUT_MS", "2000");
    for (k, v) in extra {
        builder = builder.env(k, v);
    }
    builder.spawn().await
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// A subscription created by the admin client at `path` (instance or project collection).
async fn subscribe(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, created) = json_of(app.post_json(path, &body).await).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn deliveries(app: &TestApp, sub: &str, query: &str) -> Vec<Value> {
    let (status, page) =
        json_of(app.get(&format!("/api/v1/webhook-subscriptions/{sub}/deliveries{query}")).await).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

backend_tests!(events_arrive_signed_filtered_and_recorded);

async fn events_arrive_signed_filtered_and_recorded(backend: TestBackend) {
    let app = app(backend, &[]).await;
    let all = Receiver::start(SECRET).await;
    let edits = Receiver::start(SECRET).await;
    app.create_project(json!({"name": "Shop"})).await;
    // Instance-wide, every type, with extra headers and bearer authentication.
    let everything = subscribe(
        &app,
        "/api/v1/webhook-subscriptions",
        json!({"url": all.url(), "secret": SECRET, "allow_private": true, "description": "the ops bot",
            "headers": {"X-Team": "core"}, "auth": "bearer", "token": "recv-token-1"}),
    )
    .await;
    assert!(everything.get("secret").is_none(), "a given secret is never echoed: {everything}");
    assert_eq!(everything["headers"], json!(["x-team"]));
    assert!(!everything.to_string().contains("recv-token-1") && !everything.to_string().contains("core"));
    // The project's, only ticket.edited; its secret generated and shown once.
    let generated = subscribe(
        &app,
        "/api/v1/projects/shop/webhook-subscriptions",
        json!({"url": edits.url(), "events": ["ticket.edited"], "allow_private": true}),
    )
    .await;
    let secret = generated["secret"].as_str().expect("a generated secret is shown once").to_owned();
    assert!(secret.starts_with("whsec_"));
    edits.set_secret(&secret);
    let (_, shown) =
        json_of(app.get(&format!("/api/v1/webhook-subscriptions/{}", generated["id"].as_str().unwrap())).await).await;
    assert!(shown.get("secret").is_none());

    let ticket = app.create_ticket("shop", json!({"title": "Checkout is slow", "description": "It takes 9 s."})).await;
    let id = ticket["id"].as_str().unwrap();
    let patched = app.patch_json(&format!("/api/v1/tickets/{id}"), &json!({"severity": "high"})).await;
    assert_eq!(patched.status(), 200);

    let got = all
        .wait_for(WAIT, "ticket.filed and ticket.edited", |r| {
            ["ticket.filed", "ticket.edited"].iter().all(|t| r.iter().any(|d| d.body["type"] == *t))
        })
        .await;
    for d in &got {
        assert_eq!(d.verified_by, vec![0], "verified with the Standard Webhooks library: {:?}", d.body);
        assert_eq!(d.headers["x-team"], "core");
        assert_eq!(d.headers["authorization"], "Bearer recv-token-1");
        assert_eq!(d.headers["content-type"], "application/json");
        assert!(d.headers["user-agent"].to_str().unwrap().starts_with("Viberglass-Webhooks/"));
        assert!(d.body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(d.body["data"].is_object());
    }
    let filed = got.iter().find(|d| d.body["type"] == "ticket.filed").unwrap();
    assert_eq!(filed.body["data"]["ticket_id"], id);
    assert_eq!(filed.body["data"]["title"], "Checkout is slow");
    assert!(filed.body["data"]["project_id"].is_string());
    let edited = edits.wait_for(WAIT, "ticket.edited", |r| !r.is_empty()).await;
    assert!(edited.iter().all(|d| d.body["type"] == "ticket.edited" && d.verified_by == vec![0]), "{edited:?}");
    // The same event reached both subscribers with the same webhook-id.
    let edited_all = got.iter().find(|d| d.body["type"] == "ticket.edited").unwrap();
    assert_eq!(edited_all.id, edited[0].id);

    // Recorded: the delivery, its event id as webhook-id, one successful attempt.
    let sub = everything["id"].as_str().unwrap();
    let list = deliveries(&app, sub, "").await;
    let row = list.iter().find(|d| d["event_id"] == filed.id.as_str()).expect("the filed event's delivery");
    assert_eq!(row["status"], "succeeded");
    let (status, detail) = json_of(
        app.get(&format!("/api/v1/webhook-subscriptions/{sub}/deliveries/{}", row["id"].as_str().unwrap())).await,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["attempt_log"][0]["status_code"], 200);
    assert!(detail["attempt_log"][0]["duration_ms"].is_number());
    let body: Value = serde_json::from_str(detail["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, filed.body, "the recorded body is what was sent");

    // The catalogue and the OpenAPI document describe every type with an example.
    let (_, catalogue) = json_of(app.get("/api/v1/webhook-events").await).await;
    let types: Vec<&str> = catalogue.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"job.failed") && types.contains(&"ticket.filed"), "{types:?}");
    let (_, spec) = json_of(app.get("/api/v1/openapi.json").await).await;
    for t in &types {
        assert!(
            spec["webhooks"][t]["post"]["requestBody"]["content"]["application/json"]["example"]["data"].is_object(),
            "{t}"
        );
    }
    // The example of ticket.filed has the keys the real event has.
    let example = &catalogue.as_array().unwrap().iter().find(|e| e["type"] == "ticket.filed").unwrap()["example"];
    for key in filed.body["data"].as_object().unwrap().keys() {
        assert!(example["data"].get(key).is_some(), "the catalogue's ticket.filed example lacks {key}");
    }

    // Validation names every bad field at once.
    let (status, err) = json_of(
        app.post_json("/api/v1/webhook-subscriptions", &json!({"url": "ftp://x", "events": ["nope"], "auth": "basic"}))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let fields: Vec<&str> = err["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    for f in ["url", "events", "username", "password"] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
}

backend_tests!(a_destination_down_gets_every_event_once_it_is_back);

async fn a_destination_down_gets_every_event_once_it_is_back(backend: TestBackend) {
    let app = app(backend, &[("VIBERGLASS_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let receiver = Receiver::start(SECRET).await;
    app.create_project(json!({"name": "Shop"})).await;
    let sub = subscribe(
        &app,
        "/api/v1/projects/shop/webhook-subscriptions",
        json!({"url": receiver.url(), "secret": SECRET, "events": ["ticket.filed"]}),
    )
    .await;
    let sub = sub["id"].as_str().unwrap().to_owned();
    receiver.down();
    let mut tickets = HashSet::new();
    for i in 0..20 {
        let t = app.create_ticket("shop", json!({"title": format!("Outage {i}"), "description": "d"})).await;
        tickets.insert(t["id"].as_str().unwrap().to_owned());
    }
    // Attempts fail and are recorded with the error, retrying with backoff.
    wait_until("failed attempts", || async {
        deliveries(&app, &sub, "?failing=true").await.iter().filter(|d| d["attempts"].as_i64() >= Some(2)).count() >= 20
    })
    .await;
    let failing = deliveries(&app, &sub, "?failing=true").await;
    let one = &failing[0];
    assert_eq!(one["status"], "pending");
    assert!(one["last_error"].as_str().unwrap().contains("could not connect"), "{one}");
    let (_, detail) = json_of(
        app.get(&format!("/api/v1/webhook-subscriptions/{sub}/deliveries/{}", one["id"].as_str().unwrap())).await,
    )
    .await;
    let attempts = detail["attempt_log"].as_array().unwrap();
    assert!(attempts.len() >= 2);
    assert!(attempts.iter().all(|a| a["error_kind"] == "refused" && a["status_code"].is_null()), "{attempts:?}");
    let (_, shown) = json_of(app.get(&format!("/api/v1/webhook-subscriptions/{sub}")).await).await;
    assert!(shown["failing_since"].is_string(), "{shown}");

    receiver.up().await;
    let got = receiver
        .wait_for(WAIT, "every ticket's event", |r| {
            let seen: HashSet<&str> =
                r.iter().filter(|d| d.answered == 200).filter_map(|d| d.body["data"]["ticket_id"].as_str()).collect();
            tickets.iter().all(|t| seen.contains(t.as_str()))
        })
        .await;
    // Every ticket's event came under one webhook-id, whatever the retries.
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    for d in &got {
        ids.entry(d.body["data"]["ticket_id"].as_str().unwrap().to_owned()).or_default().insert(d.id.clone());
        assert_eq!(d.verified_by, vec![0]);
    }
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
    wait_until("all succeeded", || async { deliveries(&app, &sub, "?status=succeeded").await.len() == 20 }).await;
    let (_, shown) = json_of(app.get(&format!("/api/v1/webhook-subscriptions/{sub}")).await).await;
    assert!(shown["failing_since"].is_null(), "a success ends the failing streak: {shown}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("viberglass_outbound_webhook_deliveries{status=\"succeeded\"} 20"), "{metrics}");
}

backend_tests!(private_destinations_are_refused_unless_an_administrator_allows_them);

async fn private_destinations_are_refused_unless_an_administrator_allows_them(backend: TestBackend) {
    let app = app(backend, &[]).await;
    let receiver = Receiver::start(SECRET).await;
    app.create_project(json!({"name": "Shop"})).await;
    // An address literal is refused when saved, naming the setting.
    let (status, err) = json_of(
        app.post_json("/api/v1/projects/shop/webhook-subscriptions", &json!({"url": receiver.url(), "secret": SECRET}))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let message = err.to_string();
    assert!(message.contains("VIBERGLASS_WEBHOOK_ALLOW_PRIVATE") && message.contains("loopback"), "{message}");
    // A name is judged when it resolves, at every attempt: localhost resolves to loopback.
    let url = receiver.url().replace("127.0.0.1", "localhost");
    let sub =
        subscribe(&app, "/api/v1/projects/shop/webhook-subscriptions", json!({"url": url, "secret": SECRET})).await;
    let sub = sub["id"].as_str().unwrap().to_owned();
    let (status, test) =
        json_of(app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/test"), &json!({})).await).await;
    assert_eq!(status, 202, "{test}");
    assert_eq!(test["event_type"], "webhook.test");
    wait_until("the refused attempt", || async {
        deliveries(&app, &sub, "").await.iter().any(|d| d["attempts"].as_i64() >= Some(1))
    })
    .await;
    let row = &deliveries(&app, &sub, "").await[0];
    let (_, detail) = json_of(
        app.get(&format!("/api/v1/webhook-subscriptions/{sub}/deliveries/{}", row["id"].as_str().unwrap())).await,
    )
    .await;
    let attempt = &detail["attempt_log"][0];
    assert_eq!(attempt["error_kind"], "private_address", "{detail}");
    let error = attempt["error"].as_str().unwrap();
    assert!(error.contains("localhost resolves to") && error.contains("allow_private"), "{error}");
    assert!(error.contains("VIBERGLASS_WEBHOOK_ALLOW_PRIVATE"), "{error}");
    assert!(receiver.received().is_empty(), "nothing reached the private address");

    // A maintainer may not allow it; an administrator may.
    let (maintainer, user) = app.user_client("maint@example.com", false).await;
    app.grant("shop", &user, "maintainer").await;
    let denied = maintainer
        .patch(app.url(&format!("/api/v1/webhook-subscriptions/{sub}")))
        .json(&json!({"allow_private": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    // The maintainer sees the project's subscription but not instance-wide ones.
    assert_eq!(
        maintainer.get(app.url(&format!("/api/v1/webhook-subscriptions/{sub}"))).send().await.unwrap().status(),
        200
    );
    let instance =
        subscribe(&app, "/api/v1/webhook-subscriptions", json!({"url": "https://hooks.example.com/x"})).await;
    let forbidden = maintainer
        .get(app.url(&format!("/api/v1/webhook-subscriptions/{}", instance["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    assert!(forbidden.text().await.unwrap().contains("administrator"));

    let allowed =
        app.patch_json(&format!("/api/v1/webhook-subscriptions/{sub}"), &json!({"allow_private": true})).await;
    assert_eq!(allowed.status(), 200);
    // The refused delivery is still being retried: while an attempt holds it, redelivery says so (409).
    let path = format!("/api/v1/webhook-subscriptions/{sub}/deliveries/{}/redeliver", row["id"].as_str().unwrap());
    let mut redo = app.post_json(&path, &json!({})).await.status().as_u16();
    for _ in 0..50 {
        if redo != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        redo = app.post_json(&path, &json!({})).await.status().as_u16();
    }
    assert_eq!(redo, 200);
    let got = receiver.wait_for(WAIT, "the test event", |r| !r.is_empty()).await;
    assert_eq!(got[0].body["type"], "webhook.test");
    assert_eq!(got[0].id, test["event_id"].as_str().unwrap());

    // A maintainer who moves an allowed subscription elsewhere loses the allowance (and its credentials):
    // metadata addresses stay out of reach.
    let moved = maintainer
        .patch(app.url(&format!("/api/v1/webhook-subscriptions/{sub}")))
        .json(&json!({"url": "http://169.254.169.254/latest/meta-data/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 400, "a link-local literal is refused once the allowance is gone");
    assert!(moved.text().await.unwrap().contains("link-local"));
    let moved = maintainer
        .patch(app.url(&format!("/api/v1/webhook-subscriptions/{sub}")))
        .json(&json!({"url": "http://metadata.localhost/"}))
        .send()
        .await
        .unwrap();
    let (status, shown) = json_of(moved).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["allow_private"], false, "{shown}");
    // One test event waits at a time.
    receiver.down();
    let first = app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/test"), &json!({})).await.status();
    let again = app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/test"), &json!({})).await.status();
    assert!(first == 202 && (again == 409 || again == 202), "{first} {again}");
}

async fn send_test(app: &TestApp, sub: &str) -> u16 {
    app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/test"), &json!({})).await.status().as_u16()
}

backend_tests!(gone_and_failing_past_the_maximum_age_turn_a_subscription_off);

async fn gone_and_failing_past_the_maximum_age_turn_a_subscription_off(backend: TestBackend) {
    let app =
        app(backend, &[("VIBERGLASS_WEBHOOK_ALLOW_PRIVATE", "true"), ("VIBERGLASS_WEBHOOK_MAX_AGE_SECS", "1")]).await;
    let receiver = Receiver::start(SECRET).await;
    let sub = subscribe(&app, "/api/v1/webhook-subscriptions", json!({"url": receiver.url(), "secret": SECRET})).await;
    let sub = sub["id"].as_str().unwrap().to_owned();

    // 410 Gone: off at once, with the reason on the subscription and in the audit log.
    receiver.answer(410);
    assert_eq!(send_test(&app, &sub).await, 202);
    wait_until("the subscription turned off", || async {
        json_of(app.get(&format!("/api/v1/webhook-subscriptions/{sub}")).await).await.1["active"] == false
    })
    .await;
    let (_, shown) = json_of(app.get(&format!("/api/v1/webhook-subscriptions/{sub}")).await).await;
    assert!(shown["disabled_reason"].as_str().unwrap().contains("410 Gone"), "{shown}");
    assert_eq!(deliveries(&app, &sub, "").await[0]["status"], "failed");
    let (_, audit) = json_of(app.get("/api/v1/audit?action=webhook_subscription_disabled").await).await;
    assert!(audit.to_string().contains("410 Gone"), "{audit}");
    assert_eq!(send_test(&app, &sub).await, 409, "a turned-off subscription sends no test");

    // Failing (500) past the maximum age: the delivery is given up and the subscription turned off.
    receiver.answer(500);
    let on = app.patch_json(&format!("/api/v1/webhook-subscriptions/{sub}"), &json!({"active": true})).await;
    assert_eq!(on.status(), 200);
    let (_, shown) = json_of(on).await;
    assert!(shown["disabled_reason"].is_null());
    assert_eq!(send_test(&app, &sub).await, 202);
    wait_until("failing past the maximum age", || async {
        json_of(app.get(&format!("/api/v1/webhook-subscriptions/{sub}")).await).await.1["active"] == false
    })
    .await;
    let (_, shown) = json_of(app.get(&format!("/api/v1/webhook-subscriptions/{sub}")).await).await;
    let reason = shown["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("maximum age") && reason.contains("500"), "{reason}");
    let failed = deliveries(&app, &sub, "?status=failed").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let (_, audit) = json_of(app.get("/api/v1/audit?action=webhook_subscription_disabled").await).await;
    assert!(audit.to_string().contains("maximum age"), "{audit}");

    // The receiver is fixed: turn it on and redeliver every failed delivery since an hour ago.
    receiver.answer(200);
    let before = receiver.received().len();
    app.patch_json(&format!("/api/v1/webhook-subscriptions/{sub}"), &json!({"active": true})).await;
    let since = (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, count) = json_of(
        app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/redeliver-failed"), &json!({"since": since})).await,
    )
    .await;
    assert_eq!(status, 200, "{count}");
    assert_eq!(count["redelivered"], 2);
    receiver
        .wait_for(WAIT, "both redelivered", |r| r[before..].iter().filter(|d| d.answered == 200).count() == 2)
        .await;
    let (status, _) = json_of(
        app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/redeliver-failed"), &json!({"since": "yesterday"}))
            .await,
    )
    .await;
    assert_eq!(status, 400);
}

backend_tests!(a_rotated_secret_signs_beside_the_old_one_during_the_overlap);

async fn a_rotated_secret_signs_beside_the_old_one_during_the_overlap(backend: TestBackend) {
    let app = app(backend, &[("VIBERGLASS_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let receiver = Receiver::start(SECRET).await;
    let sub = subscribe(&app, "/api/v1/webhook-subscriptions", json!({"url": receiver.url(), "secret": SECRET})).await;
    let sub = sub["id"].as_str().unwrap().to_owned();
    let (status, rotated) = json_of(
        app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/rotate-secret"), &json!({"overlap_secs": 3600}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, SECRET);
    assert!(rotated["previous_secret_until"].is_string());
    let second = receiver.add_secret(&new);
    app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/test"), &json!({})).await;
    let got = receiver.wait_for(WAIT, "the test event", |r| !r.is_empty()).await;
    assert_eq!(got[0].verified_by, vec![0, second], "both signatures during the overlap");
    assert_eq!(got[0].headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);

    // Without an overlap only the new secret signs; redelivery keeps the webhook-id.
    let (_, rotated) = json_of(
        app.post_json(&format!("/api/v1/webhook-subscriptions/{sub}/rotate-secret"), &json!({"overlap_secs": 0})).await,
    )
    .await;
    let newest = rotated["secret"].as_str().unwrap().to_owned();
    let third = receiver.add_secret(&newest);
    let delivery = &deliveries(&app, &sub, "").await[0];
    app.post_json(
        &format!("/api/v1/webhook-subscriptions/{sub}/deliveries/{}/redeliver", delivery["id"].as_str().unwrap()),
        &json!({}),
    )
    .await;
    let got = receiver.wait_for(WAIT, "the redelivery", |r| r.len() == 2).await;
    assert_eq!(got[1].verified_by, vec![third]);
    assert_eq!(got[1].id, got[0].id, "a redelivery has the same webhook-id");
    let (status, _) = json_of(
        app.post_json(
            &format!("/api/v1/webhook-subscriptions/{sub}/rotate-secret"),
            &json!({"overlap_secs": 999_999_999}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
}

/// A `viberglass serve` process on `db` (SQLite in `dir` when not PostgreSQL) delivering to private addresses.
fn server(backend: TestBackend, db: &TestDb, dir: &std::path::Path, port: u16) -> ServerProcess {
    let mut command: Command = viberglass(BINARY, dir);
    command
        .env("SECRETS_ENCRYPTION_KEY", "cd".repeat(32))
        .env("VIBERGLASS_DATA_DIR", dir.join("data"))
        .env("VIBERGLASS_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("VIBERGLASS_WEBHOOK_RETRY_MIN_MS", "100")
        .env("VIBERGLASS_WEBHOOK_RETRY_MAX_SECS", "1")
        .env("VIBERGLASS_WEBHOOK_TIMEOUT_MS", "2000")
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "100");
    if backend == TestBackend::Postgres {
        command.env("DATABASE_URL", db.url());
    }
    ServerProcess::start(command, port)
}

/// Files `n` tickets through `base`, a few at a time; returns their ids.
async fn file_tickets(client: &reqwest::Client, base: &str, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for i in 0..n {
        let (client, url) = (client.clone(), format!("{base}/api/v1/projects/shop/tickets"));
        pending.push(async move {
            let response = client
                .post(url)
                .json(&json!({"title": format!("Event {i}"), "description": "d"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        });
        if pending.len() >= 8
            && let Some(id) = pending.next().await
        {
            ids.insert(id);
        }
    }
    while let Some(id) = pending.next().await {
        ids.insert(id);
    }
    ids
}

fn delivered_tickets(receiver: &Receiver) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for d in receiver.received().iter().filter(|d| d.answered == 200) {
        if let Some(t) = d.body["data"]["ticket_id"].as_str() {
            out.entry(t.to_owned()).or_default().insert(d.id.clone());
        }
    }
    out
}

backend_tests!(a_sigkill_mid_delivery_loses_nothing);

async fn a_sigkill_mid_delivery_loses_nothing(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = server(backend, &db, dir.path(), port);
    let client = viberglass_testkit::app::admin_client(&server.url("")).await.0;
    assert_eq!(
        client.post(server.url("/api/v1/projects")).json(&json!({"name": "Shop"})).send().await.unwrap().status(),
        201
    );
    let receiver = Receiver::start(SECRET).await;
    // Slow answers keep deliveries in flight when the server dies.
    receiver.delay(Duration::from_millis(300));
    let created = client
        .post(server.url("/api/v1/webhook-subscriptions"))
        .json(&json!({"url": receiver.url(), "secret": SECRET, "events": ["ticket.filed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tickets = file_tickets(&client, &server.url(""), 100).await;
    receiver.wait_for(WAIT, "the first deliveries", |r| r.len() >= 10).await;
    server.kill();
    let before = delivered_tickets(&receiver).len();
    assert!(before < tickets.len(), "killed mid-delivery ({before} of {} delivered)", tickets.len());
    let _server = self::server(backend, &db, dir.path(), port);
    // A delivery the dead server held is attempted again once its lease lapses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let delivered = delivered_tickets(&receiver);
        if tickets.iter().all(|t| delivered.contains_key(t)) {
            assert!(delivered.values().all(|ids| ids.len() == 1), "one webhook-id per event");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} events delivered after the restart",
            delivered.len(),
            tickets.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(receiver.received().iter().all(|d| d.verified_by == vec![0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_deliver_a_thousand_events_never_both_at_once() {
    if !TestBackend::postgres_available() {
        return;
    }
    let backend = TestBackend::Postgres;
    let db = TestDb::new(backend).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = server(backend, &db, dir_a.path(), 0);
    let client = viberglass_testkit::app::admin_client(&a.url("")).await.0;
    let b = server(backend, &db, dir_b.path(), 0);
    assert_eq!(
        client.post(a.url("/api/v1/projects")).json(&json!({"name": "Shop"})).send().await.unwrap().status(),
        201
    );
    let receiver = Receiver::start(SECRET).await;
    receiver.delay(Duration::from_millis(5));
    let created = client
        .post(a.url("/api/v1/webhook-subscriptions"))
        .json(&json!({"url": receiver.url(), "secret": SECRET, "events": ["ticket.filed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // Half the tickets through each server.
    let (url_a, url_b) = (a.url(""), b.url(""));
    let (left, right) = tokio::join!(file_tickets(&client, &url_a, 500), file_tickets(&client, &url_b, 500));
    let tickets: HashSet<String> = left.union(&right).cloned().collect();
    assert_eq!(tickets.len(), 1000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = delivered_tickets(&receiver);
        if tickets.iter().all(|t| delivered.contains_key(t)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of 1000 delivered", delivered.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(receiver.overlaps().is_empty(), "delivered concurrently: {:?}", receiver.overlaps());
    let twice: Vec<_> = receiver.accepted().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "delivered twice without a crash: {twice:?}");
    // Both servers delivered.
    let store = db.store().await;
    let mut servers = HashSet::new();
    let sub = store.list_subscriptions(None).await.unwrap()[0].id;
    let mut page = viberglass_domain::PageRequest { limit: 200, after: None };
    loop {
        let rows = store.list_outbound(sub, None, false, page).await.unwrap();
        // Every delivery's attempts (a sample of the first ones could all be one server's early lead).
        for d in &rows.items {
            for attempt in store.get_outbound(d.id).await.unwrap().attempt_log {
                servers.insert(attempt.server);
            }
        }
        match rows.next_cursor {
            Some(c) => page = viberglass_domain::PageRequest::parse(Some(200), Some(&c)).unwrap(),
            None => break,
        }
    }
    assert_eq!(servers.len(), 2, "both servers delivered: {servers:?}");
    drop((a, b));
    viberglass_testkit::record_ran(concat!(module_path!(), "::two_servers_on_one_postgres"));
}
