use viberglass_testkit::{TestApp, logs};

#[tokio::test]
async fn a_valid_request_id_round_trips_and_tags_every_log_line_of_the_request() {
    let app = TestApp::spawn().await;
    let id = format!("test-{}", uuid::Uuid::new_v4());
    let response = app
        .client
        .post(app.url("/api/v1/projects"))
        .header("X-Request-Id", &id)
        .json(&serde_json::json!({"name": "Logged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], id.as_str());

    let lines = logs::lines_containing(&id);
    let handler_line = lines.iter().find(|l| l["message"] == "project created").expect("the handler's own line");
    assert_eq!(logs::field(handler_line, "request_id"), id.as_str(), "{handler_line}");
    let closing = lines.iter().find(|l| l["message"] == "request finished").expect("one line per request");
    assert_eq!(logs::field(closing, "request_id"), id.as_str());
    assert_eq!(logs::field(closing, "method"), "POST");
    assert_eq!(logs::field(closing, "route"), "/api/v1/projects");
    assert_eq!(closing["status"], 201);
    assert!(closing["latency_ms"].as_f64().is_some(), "{closing}");
}

#[tokio::test]
async fn a_request_without_an_id_gets_a_fresh_one() {
    let app = TestApp::spawn().await;
    let a = app.get("/healthz").await.headers()["x-request-id"].to_str().unwrap().to_owned();
    let b = app.get("/healthz").await.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(a, b);
    assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
}

#[tokio::test]
async fn an_invalid_request_id_is_replaced() {
    let app = TestApp::spawn().await;
    let response =
        app.client.get(app.url("/healthz")).header("X-Request-Id", "bad id with spaces").send().await.unwrap();
    let returned = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(returned, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(returned).is_ok());
}

#[tokio::test]
async fn the_route_is_logged_as_the_template_not_the_raw_path() {
    let app = TestApp::spawn().await;
    let id = format!("route-{}", uuid::Uuid::new_v4());
    app.client.get(app.url("/api/v1/projects/does-not-exist")).header("X-Request-Id", &id).send().await.unwrap();
    let closing = logs::lines_containing(&id).into_iter().find(|l| l["message"] == "request finished").unwrap();
    assert_eq!(logs::field(&closing, "route"), "/api/v1/projects/{project}");
    assert_eq!(closing["status"], 404);
}

#[tokio::test]
async fn a_job_records_the_request_that_queued_it_and_shows_it() {
    let app = TestApp::builder(viberglass_testkit::TestBackend::Sqlite).without_dispatcher().spawn().await;
    app.create_project(serde_json::json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    let ticket = app.create_ticket("shop", serde_json::json!({"title": "Fix the checkout"})).await;
    app.post_json(
        "/api/v1/clankers",
        &serde_json::json!({"shared": true, "name": "Cmd", "agent": "command", "agent_settings": {"command": ["true"]}}),
    )
    .await;
    assert!(app.post_json("/api/v1/clankers/cmd/start", &serde_json::json!({})).await.status().is_success());
    let id = format!("run-{}", uuid::Uuid::new_v4());
    let run = app
        .client
        .post(app.url(&format!("/api/v1/tickets/{}/runs", ticket["id"].as_str().unwrap())))
        .header("X-Request-Id", &id)
        .json(&serde_json::json!({"phase": "research", "clanker": "cmd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 202);
    let job: serde_json::Value = run.json().await.unwrap();
    assert_eq!(job["request_id"], id.as_str(), "{job}");
    let read: serde_json::Value =
        app.get(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(read["request_id"], id.as_str());
    // The log line of that request names the job; the job's page names the request.
    let lines = logs::lines_containing(&id);
    assert!(lines.iter().any(|l| l.to_string().contains(job["id"].as_str().unwrap())), "{lines:?}");
    let page = app.get(&format!("/jobs/{}", job["id"].as_str().unwrap())).await.text().await.unwrap();
    assert!(page.contains("by request") && page.contains(&format!(">{id}</span>")), "{page}");
}
