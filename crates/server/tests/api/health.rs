use viberglass_testkit::{TestApp, TestBackend, backend_tests};

backend_tests!(
    ready_when_the_database_answers_and_is_migrated,
    not_ready_when_the_schema_is_newer_than_the_server,
    a_database_outage_answers_503_quickly_and_metrics_are_still_served,
);

async fn a_database_outage_answers_503_quickly_and_metrics_are_still_served(backend: TestBackend) {
    let app = TestApp::spawn_on(backend).await;
    assert_eq!(app.get("/api/v1/projects").await.status(), 200);
    // The database goes away under the running server (its pool closes).
    app.store.close().await;
    let started = std::time::Instant::now();
    let response = app.get("/api/v1/projects").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "database_unavailable", "{body}");
    assert!(body["message"].as_str().unwrap().contains("database is unavailable"), "{body}");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "answered in {:?}", started.elapsed());
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("viberglass_database_up 0"), "{text}");
    assert!(text.contains("viberglass_http_requests_total"), "request metrics still counted: {text}");
}

#[tokio::test]
async fn healthz_answers_without_touching_the_database() {
    let app = TestApp::spawn().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

async fn ready_when_the_database_answers_and_is_migrated(backend: TestBackend) {
    let app = TestApp::spawn_on(backend).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let expected = match backend {
        TestBackend::Sqlite => "sqlite",
        TestBackend::Postgres => "postgres",
    };
    assert_eq!(body["database"], expected);
    assert_eq!(body["schema_version"], viberglass_store::migrate::MIGRATIONS.len());
}

async fn not_ready_when_the_schema_is_newer_than_the_server(backend: TestBackend) {
    let app = TestApp::spawn_on(backend).await;
    let now = "2026-01-01T00:00:00.000000Z";
    app.db
        .execute(&format!(
            "INSERT INTO viberglass_migrations (version, name, checksum, applied_at) VALUES (999, 'future', 'x', '{now}')"
        ))
        .await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_ready");
    assert!(body["message"].as_str().unwrap().contains("upgrade this server"), "{body}");
}

/// When PostgreSQL goes away under a running server, readiness says so and
/// API calls fail with an opaque 500 that leaks no database text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_means_not_ready_and_opaque_errors() {
    if !TestBackend::postgres_available() {
        return;
    }
    let app = TestApp::spawn_on(TestBackend::Postgres).await;
    let name = app.db.url().rsplit('/').next().unwrap().to_owned();
    let admin = std::env::var("TEST_DATABASE_URL").unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).execute(&mut conn).await.unwrap();

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("does not answer"), "{body}");

    let list = app.get("/api/v1/projects").await;
    assert_eq!(list.status(), 500);
    let request_id = list.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = list.json().await.unwrap();
    assert_eq!(body["code"], "internal");
    let text = body.to_string().to_lowercase();
    assert!(!text.contains("database \"") && !text.contains("sqlx") && !text.contains("terminat"), "{body}");
    // The cause is in the server log, under the request's id.
    let logged = viberglass_testkit::logs::lines_containing(&request_id);
    assert!(logged.iter().any(|l| l["cause"].as_str().is_some_and(|c| !c.is_empty())), "{logged:?}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_jobs_by_status() {
    let app = TestApp::spawn().await;
    app.get("/healthz").await;
    app.get("/api/v1/projects/nope").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(text.contains(r#"viberglass_http_requests_total{method="GET",route="/healthz",status="200"} 1"#), "{text}");
    assert!(text.contains(r#"route="/api/v1/projects/{project}",status="404"} 1"#), "{text}");
    assert!(text.contains("viberglass_build_info{version="), "{text}");
    assert!(text.contains("# TYPE viberglass_jobs gauge"), "{text}");
}
