//! Scheduled tasks over the API: templates checked against their clanker,
//! cadences validated (a refusal names the position and the reason) and
//! previewed, pause and resume, and Run now. The scheduler itself, with a
//! test clock and real workers, is in crates/viberglass/tests/schedules.rs.

use serde_json::{Value, json};
use viberglass_testkit::{TestApp, TestBackend, backend_tests};

backend_tests!(
    templates_are_checked_against_their_clanker,
    cadences_are_validated_with_the_position_and_previewed,
    pause_resume_and_run_now
);

async fn setup(backend: TestBackend) -> TestApp {
    let app = TestApp::spawn_on(backend).await;
    app.create_project(json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    app.create_project(json!({"name": "Other"})).await;
    assert_eq!(app.post_json("/api/v1/secrets", &json!({"name": "MODEL_KEY"})).await.status(), 201);
    assert_eq!(app.post_json("/api/v1/secrets", &json!({"name": "DEPLOY_KEY"})).await.status(), 201);
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"name": "Bot", "agent": "command", "agent_settings": {"command": ["true"]},
                "secrets": ["MODEL_KEY"], "projects": ["shop"]}),
        )
        .await;
    assert_eq!(clanker.status(), 201, "{}", clanker.text().await.unwrap());
    app
}

async fn template(app: &TestApp, project: &str, body: Value) -> (u16, Value) {
    let response = app.post_json(&format!("/api/v1/projects/{project}/task-templates"), &body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn schedule(app: &TestApp, body: Value) -> (u16, Value) {
    let response = app.post_json("/api/v1/projects/shop/schedules", &body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["field"] == name))
        .and_then(|f| f["message"].as_str())
        .unwrap_or_else(|| panic!("no error for `{name}` in {body}"))
}

async fn templates_are_checked_against_their_clanker(backend: TestBackend) {
    let app = setup(backend).await;
    let (status, body) = template(&app, "shop", json!({})).await;
    assert_eq!(status, 400);
    for name in ["name", "clanker", "instructions"] {
        assert!(field(&body, name).contains("required"), "{body}");
    }
    // Secrets only narrow the clanker's.
    let (status, body) = template(
        &app,
        "shop",
        json!({"name": "deps", "clanker": "bot", "instructions": "Bump them.", "secrets": ["DEPLOY_KEY"]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(field(&body, "secrets").contains("`DEPLOY_KEY` is not among clanker bot's secrets (MODEL_KEY)"), "{body}");
    // The clanker must be allowed in the project.
    let (status, body) =
        template(&app, "other", json!({"name": "deps", "clanker": "bot", "instructions": "Bump them."})).await;
    assert_eq!(status, 400);
    assert!(field(&body, "clanker").contains("may not run in project other"), "{body}");
    let (status, body) =
        template(&app, "shop", json!({"name": "deps", "clanker": "bot", "phase": "deploy", "instructions": "x"})).await;
    assert_eq!(status, 400);
    assert!(field(&body, "phase").contains("deploy"), "{body}");

    let (status, created) = template(
        &app,
        "shop",
        json!({"name": "deps", "clanker": "bot", "phase": "execution", "instructions": "Bump them.",
            "secrets": ["MODEL_KEY"], "open_pull_request": false}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["phase"].as_str(), created["open_pull_request"].as_bool()), (Some("execution"), Some(false)));
    let (status, body) =
        template(&app, "shop", json!({"name": "deps", "clanker": "bot", "instructions": "Again."})).await;
    assert_eq!(status, 400);
    assert!(field(&body, "name").contains("already exists"), "{body}");
    let changed: Value = app
        .patch_json("/api/v1/projects/shop/task-templates/deps", &json!({"instructions": "Bump and test."}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(changed["instructions"], "Bump and test.");
    assert_eq!(changed["secrets"], json!(["MODEL_KEY"]));
    let listed: Value = app.get("/api/v1/projects/shop/task-templates").await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/api/v1/projects/other/task-templates/deps").await.status(),
        404,
        "templates stay in their project"
    );
}

async fn cadences_are_validated_with_the_position_and_previewed(backend: TestBackend) {
    let app = setup(backend).await;
    template(&app, "shop", json!({"name": "deps", "clanker": "bot", "instructions": "Bump them."})).await;
    let base = json!({"name": "weekly", "template": "deps"});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, body) = schedule(&app, with(json!({"cron": "0 25 * * *"}))).await;
    assert_eq!(status, 400);
    let message = field(&body, "cron");
    assert!(message.starts_with("at position 3 (hour `25`)"), "{message}");
    let (_, body) = schedule(&app, with(json!({"cron": "0 9 * * MON *"}))).await;
    assert!(field(&body, "cron").contains("position 13"), "{body}");
    let (_, body) = schedule(&app, with(json!({"cron": "0 9 * *"}))).await;
    assert!(field(&body, "cron").contains("day of week field is missing"), "{body}");
    let (_, body) = schedule(&app, with(json!({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}))).await;
    assert!(field(&body, "timezone").contains("`Mars/Olympus` is not a time zone"), "{body}");
    let (_, body) = schedule(&app, with(json!({"cron": "1,".repeat(300)}))).await;
    assert!(field(&body, "cron").contains("longer than 200 characters"), "{body}");
    let (_, body) = schedule(&app, with(json!({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}))).await;
    assert!(field(&body, "timezone").contains("`Mars/Olympus` is not a time zone"), "{body}");
    let (_, body) = schedule(&app, with(json!({"interval": "30s"}))).await;
    assert!(field(&body, "interval").contains("at least a minute"), "{body}");
    let (_, body) = schedule(&app, with(json!({"interval": "1d", "cron": "0 9 * * *"}))).await;
    assert!(field(&body, "interval").contains("not both"), "{body}");
    let (_, body) = schedule(&app, with(json!({}))).await;
    assert!(field(&body, "cron").contains("needs a cron expression"), "{body}");
    let (_, body) =
        schedule(&app, json!({"name": "x", "template": "nope", "cron": "* * * * *", "overlap": "sometimes"})).await;
    assert!(field(&body, "template").contains("no task template `nope`"), "{body}");
    assert!(field(&body, "overlap").contains("sometimes"), "{body}");

    // The preview checks without saving.
    let preview = app
        .post_json(
            "/api/v1/projects/shop/schedule-preview",
            &json!({"cron": "30 2 * * *", "timezone": "Europe/Berlin"}),
        )
        .await;
    assert_eq!(preview.status(), 200);
    let preview: Value = preview.json().await.unwrap();
    let upcoming = preview["upcoming"].as_array().unwrap();
    assert_eq!(upcoming.len(), 5);
    assert!(
        upcoming.iter().all(|t| {
            let t = t.as_str().unwrap();
            t.ends_with("T01:30:00Z") || t.ends_with("T00:30:00Z")
        }),
        "02:30 in Berlin is 01:30 or 00:30 UTC: {preview}"
    );
    let bad = app.post_json("/api/v1/projects/shop/schedule-preview", &json!({"cron": "61 * * * *"})).await;
    assert_eq!(bad.status(), 400);
    assert!(field(&bad.json().await.unwrap(), "cron").starts_with("at position 1 (minute `61`)"));
    assert!(
        app.get("/api/v1/projects/shop/schedules").await.json::<Value>().await.unwrap().as_array().unwrap().is_empty()
    );

    let (status, created) = schedule(&app, with(json!({"cron": "0  9 * * mon", "timezone": "Europe/Berlin"}))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (created["expression"].as_str(), created["timezone"].as_str()),
        (Some("0 9 * * mon"), Some("Europe/Berlin"))
    );
    assert_eq!(created["cadence_text"], "cron 0 9 * * mon (Europe/Berlin)");
    assert_eq!((created["overlap"].as_str(), created["missed"].as_str()), (Some("skip"), Some("run_once")));
    let upcoming: Vec<time::OffsetDateTime> = created["upcoming"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            time::OffsetDateTime::parse(t.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
        })
        .collect();
    assert_eq!(upcoming.len(), 5);
    assert!(upcoming.iter().all(|t| t.weekday() == time::Weekday::Monday && matches!(t.hour(), 7 | 8)), "{created}");
    assert!(upcoming.windows(2).all(|w| (w[1] - w[0]).whole_days() == 7));
    assert_eq!(created["next_run_at"], created["upcoming"][0]);
    let (_, body) = schedule(&app, with(json!({"cron": "0 9 * * *"}))).await;
    assert!(field(&body, "name").contains("already exists"), "{body}");

    // A change to the cadence is validated the same way and moves the next run.
    let id = created["id"].as_str().unwrap();
    let path = format!("/api/v1/projects/shop/schedules/{id}");
    let refused = app.patch_json(&path, &json!({"cron": "0 9 31 2 *"})).await;
    assert_eq!(refused.status(), 400);
    assert!(field(&refused.json().await.unwrap(), "cron").contains("never matches"));
    let changed: Value = app.patch_json(&path, &json!({"interval": "6h"})).await.json().await.unwrap();
    assert_eq!((changed["cadence"].as_str(), changed["interval_secs"].as_u64()), (Some("interval"), Some(21_600)));
    assert_eq!(changed["cadence_text"], "every 6h");
    let by_name: Value = app.get("/api/v1/projects/shop/schedules/weekly").await.json().await.unwrap();
    assert_eq!(by_name["id"], created["id"]);
}

async fn pause_resume_and_run_now(backend: TestBackend) {
    let app = setup(backend).await;
    template(&app, "shop", json!({"name": "deps", "clanker": "bot", "instructions": "Bump them."})).await;
    let (_, created) = schedule(&app, json!({"name": "hourly", "template": "deps", "cron": "0 * * * *"})).await;
    let id = created["id"].as_str().unwrap();
    let paused: Value =
        app.post_json(&format!("/api/v1/projects/shop/schedules/{id}/pause"), &json!({})).await.json().await.unwrap();
    assert_eq!((paused["active"].as_bool(), paused["next_run_at"].as_str()), (Some(false), None));
    assert_eq!(paused["upcoming"], json!([]));
    let refused = app.post_json(&format!("/api/v1/projects/shop/schedules/{id}/run"), &json!({})).await;
    assert_eq!(refused.status(), 422, "a paused schedule runs nothing, not even by hand");
    assert!(refused.json::<Value>().await.unwrap()["message"].as_str().unwrap().contains("is paused"));
    let resumed: Value =
        app.post_json(&format!("/api/v1/projects/shop/schedules/{id}/resume"), &json!({})).await.json().await.unwrap();
    assert_eq!(resumed["active"], true);
    assert_eq!(resumed["upcoming"].as_array().unwrap().len(), 5);

    // Run now with a clanker that is not started: the execution ends failed, saying what to do.
    let run = app.post_json(&format!("/api/v1/projects/shop/schedules/{id}/run"), &json!({})).await;
    assert_eq!(run.status(), 202);
    let execution: Value = run.json().await.unwrap();
    assert_eq!((execution["trigger"].as_str(), execution["status"].as_str()), (Some("manual"), Some("queued")));
    let finished = ended(&app, &execution).await;
    assert_eq!(finished["status"], "failed", "{finished}");
    let message = finished["message"].as_str().unwrap();
    assert!(message.contains("clanker bot is") && message.contains("start it first"), "{message}");
    let ticket = finished["ticket_id"].as_str().expect("the execution filed its ticket");
    let ticket: Value = app.get(&format!("/api/v1/tickets/{ticket}")).await.json().await.unwrap();
    assert_eq!((ticket["source"].as_str(), ticket["description"].as_str()), (Some("schedule"), Some("Bump them.")));
    assert!(ticket["title"].as_str().unwrap().starts_with("hourly: "), "{ticket}");
    let listed: Value =
        app.get(&format!("/api/v1/projects/shop/schedules/{id}/executions")).await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let row: Value = app.get(&format!("/api/v1/projects/shop/schedules/{id}")).await.json().await.unwrap();
    assert_eq!(row["failures"], 1);
    assert_eq!(app.get(&format!("/api/v1/projects/other/schedules/{id}")).await.status(), 404);
    assert_eq!(app.get(&format!("/api/v1/projects/shop/schedules/{id}/executions?limit=0")).await.status(), 400);

    // An execution run on a ticket the execution filed needs no approved plan (the template is the approval);
    // on a standing ticket, which members can edit, the gate applies.
    template(&app, "shop", json!({"name": "ship", "clanker": "bot", "phase": "execution", "instructions": "Ship."}))
        .await;
    let standing = app.create_ticket("shop", json!({"title": "Standing chores"})).await;
    let (status, fresh) = schedule(&app, json!({"name": "fresh", "template": "ship", "cron": "0 * * * *"})).await;
    assert_eq!(status, 201, "{fresh}");
    let (status, on_standing) = schedule(
        &app,
        json!({"name": "standing", "template": "ship", "cron": "0 * * * *", "standing_ticket": standing["id"]}),
    )
    .await;
    assert_eq!(status, 201, "{on_standing}");
    assert_eq!(on_standing["standing_ticket_id"], standing["id"]);
    let fresh_run = run_now(&app, &fresh).await;
    let message = ended(&app, &fresh_run).await["message"].as_str().unwrap().to_owned();
    assert!(message.contains("start it first") && !message.contains("approved plan"), "{message}");
    let standing_run = run_now(&app, &on_standing).await;
    let done = ended(&app, &standing_run).await;
    assert_eq!(done["ticket_id"], standing["id"]);
    assert!(done["message"].as_str().unwrap().contains("execution waits for an approved plan"), "{done}");
    let (_, body) =
        schedule(&app, json!({"name": "x", "template": "ship", "cron": "0 * * * *", "standing_ticket": "nope"})).await;
    assert!(field(&body, "standing_ticket").contains("not a ticket id"), "{body}");
}

async fn run_now(app: &TestApp, schedule: &Value) -> Value {
    let path = format!("/api/v1/projects/shop/schedules/{}/run", schedule["id"].as_str().unwrap());
    let response = app.post_json(&path, &json!({})).await;
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

/// Waits for an execution to end.
async fn ended(app: &TestApp, execution: &Value) -> Value {
    let path = format!("/api/v1/projects/shop/executions/{}", execution["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let e: Value = app.get(&path).await.json().await.unwrap();
        if e["status"] != "queued" && e["status"] != "running" {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "the execution did not end: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
