//! Every failure has the one error shape with the right status.

use serde_json::{Value, json};
use viberglass_testkit::{TestApp, TestBackend};

async fn body(response: reqwest::Response) -> Value {
    response.json().await.expect("error bodies are JSON")
}

#[tokio::test]
async fn an_empty_ticket_title_is_a_400_naming_title() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "App"})).await;
    let response = app.post_json("/api/v1/projects/app/tickets", &json!({"title": "   "})).await;
    assert_eq!(response.status(), 400);
    let body = body(response).await;
    assert_eq!(body["code"], "invalid_input");
    assert_eq!(body["fields"][0]["field"], "title");
    assert_eq!(body["fields"][0]["message"], "title must not be empty");
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_named() {
    let app = TestApp::spawn().await;
    let wrong_type =
        body(app.post_json("/api/v1/projects", &json!({"name": "A", "max_execution_secs": "long"})).await).await;
    assert_eq!(wrong_type["fields"][0]["field"], "max_execution_secs", "{wrong_type}");
    let unknown = body(app.post_json("/api/v1/projects", &json!({"name": "A", "colour": "red"})).await).await;
    assert_eq!(unknown["fields"][0]["field"], "colour", "{unknown}");
}

#[tokio::test]
async fn malformed_json_and_missing_content_type_are_refused_clearly() {
    let app = TestApp::spawn().await;
    let malformed = app
        .client
        .post(app.url("/api/v1/projects"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(body(malformed).await["code"], "invalid_json");
    let plain = app.client.post(app.url("/api/v1/projects")).body("name=x").send().await.unwrap();
    assert_eq!(plain.status(), 415);
    assert_eq!(body(plain).await["code"], "unsupported_media_type");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let app = TestApp::builder(TestBackend::Sqlite).env("VIBERGLASS_BODY_LIMIT_BYTES", "2048").spawn().await;
    let big = "x".repeat(4096);
    let response = app.post_json("/api/v1/projects", &json!({"name": "A", "description": big})).await;
    assert_eq!(response.status(), 413);
    let body = body(response).await;
    assert_eq!(body["code"], "payload_too_large");
    assert!(body["hint"].as_str().unwrap().contains("VIBERGLASS_BODY_LIMIT_BYTES"));
}

#[tokio::test]
async fn unknown_things_are_404s_that_say_what_was_missing() {
    let app = TestApp::spawn().await;
    let project = body(app.get("/api/v1/projects/nope").await).await;
    assert_eq!(project["code"], "not_found");
    assert!(project["message"].as_str().unwrap().contains("nope"));
    let ticket = app.get(&format!("/api/v1/tickets/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(ticket.status(), 404);
    let route = app.get("/api/v1/nothing-here").await;
    assert_eq!(route.status(), 404);
    assert_eq!(body(route).await["code"], "route_not_found");
}

#[tokio::test]
async fn a_malformed_ticket_id_is_a_400() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/v1/tickets/not-a-uuid").await;
    assert_eq!(response.status(), 400);
    assert_eq!(body(response).await["fields"][0]["field"], "ticket_id");
}

#[tokio::test]
async fn a_wrong_method_is_a_405_in_the_error_shape() {
    let app = TestApp::spawn().await;
    let response = app.client.delete(app.url("/api/v1/projects")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(body(response).await["code"], "method_not_allowed");
}

#[tokio::test]
async fn duplicates_are_409s_naming_the_field() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "App"})).await;
    let response = app.post_json("/api/v1/projects", &json!({"name": "App", "slug": "other"})).await;
    assert_eq!(response.status(), 409);
    let body = body(response).await;
    assert_eq!(body["code"], "conflict");
    assert_eq!(body["fields"][0]["field"], "name");
}

#[tokio::test]
async fn filing_into_an_archived_project_is_a_422_with_a_way_out() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "App"})).await;
    assert_eq!(app.post_json("/api/v1/projects/app/archive", &json!({})).await.status(), 200);
    let response = app.post_json("/api/v1/projects/app/tickets", &json!({"title": "x"})).await;
    assert_eq!(response.status(), 422);
    let body = body(response).await;
    assert_eq!(body["code"], "archived");
    assert!(body["hint"].as_str().unwrap().contains("unarchive"));
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app =
        TestApp::builder(TestBackend::Sqlite).env("VIBERGLASS_CORS_ORIGINS", "https://app.example.com").spawn().await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/projects"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example.com");
    let denied = preflight("https://evil.example.com").await.unwrap();
    assert!(denied.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_addressed_to_another_host_name_is_refused_before_routing() {
    // A fresh server with setup unclaimed: what a DNS-rebinding page would try to take over.
    let app =
        viberglass_testkit::TestApp::builder(viberglass_testkit::TestBackend::Sqlite).without_setup().spawn().await;
    let setup = serde_json::json!({"email": "evil@example.com", "password": "twelve characters!"});
    let response =
        app.client.post(app.url("/api/v1/setup")).header("host", "evil.example").json(&setup).send().await.unwrap();
    assert_eq!(response.status(), 421);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "host_not_allowed");
    assert!(body["message"].as_str().unwrap().contains("VIBERGLASS_ALLOWED_HOSTS"), "{body}");
    assert_eq!(app.store.count_users().await.unwrap(), 0, "nothing happened");
    // The same request to the server's own address works.
    let ok = app.client.post(app.url("/api/v1/setup")).json(&setup).send().await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
}
