//! The OpenAPI document is generated from the routes; these tests keep the
//! two in step.

use serde_json::Value;
use viberglass_testkit::TestApp;

/// Every route the server serves: the access rules list each one (a route
/// without a rule is refused), so they double as the route list here.
fn routes() -> Vec<(String, &'static str)> {
    viberglass_server::auth::RULES.iter().map(|(method, path, _)| (method.to_lowercase(), *path)).collect()
}

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

async fn spec(app: &TestApp) -> Value {
    let response = app.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn concrete(path: &str) -> String {
    path.replace("{project}", "some-project")
        .replace("{clanker}", "some-clanker")
        .replace("{ticket_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{job_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{user_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{token_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{integration}", "some-integration")
        .replace("{name}", "SOME_SECRET")
        .replace("{phase}", "planning")
        .replace("{revision}", "1")
        .replace("{comment_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{kind}", "research")
        .replace("{attachment_id}", &uuid::Uuid::now_v7().to_string())
}

#[tokio::test]
async fn the_document_is_openapi_3_1_with_a_docs_page_beside_it() {
    let app = TestApp::spawn().await;
    let spec = spec(&app).await;
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(spec["info"]["title"], "Viberglass API");
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let docs = app.get("/api/docs/").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"), "the docs page is Swagger UI");
}

#[tokio::test]
async fn every_served_route_is_in_the_openapi_document() {
    let app = TestApp::spawn().await;
    let spec = spec(&app).await;
    for (method, path) in routes() {
        assert!(
            spec["paths"][path][method.as_str()].is_object(),
            "{} {path} is served but missing from the OpenAPI document",
            method.to_uppercase()
        );
    }
}

/// Probes every path in the document with every method: each documented
/// operation must be routed, and each undocumented one must be a 405, so a
/// handler added to a documented path without documentation is caught.
#[tokio::test]
async fn the_document_and_the_router_agree_method_by_method() {
    let app = TestApp::spawn().await;
    let spec = spec(&app).await;
    let paths = spec["paths"].as_object().unwrap();
    assert_eq!(
        paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>(),
        routes().len(),
        "auth::RULES lists every documented operation"
    );
    for (path, operations) in paths {
        for method in METHODS {
            let request = app.client.request(method.to_uppercase().parse().unwrap(), app.url(&concrete(path)));
            let request = if *method == "get" { request } else { request.json(&serde_json::json!({})) };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let documented = operations.get(*method).is_some();
            if documented {
                assert!(
                    status != 405 && body["code"] != "route_not_found",
                    "{method} {path} is documented but not routed ({status} {body})"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is served ({status}) but not documented");
            }
        }
    }
}

/// The answers every route shares are in the document, each with the error body; the public routes need no
/// authentication there, and every other route declares the guard's 401 and 403.
#[tokio::test]
async fn shared_error_answers_and_public_routes_are_declared() {
    let app = TestApp::spawn().await;
    let spec = spec(&app).await;
    let operation = |method: &str, path: &str| spec["paths"][path][method].clone();
    let error_ref = "#/components/schemas/ErrorBody";
    let create = operation("post", "/api/v1/projects/{project}/tickets");
    for status in ["400", "401", "403", "404", "413", "415"] {
        let schema = &create["responses"][status]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(schema, error_ref, "POST tickets declares {status}: {create}");
    }
    let list = operation("get", "/api/v1/projects");
    assert!(list["responses"]["415"].is_null() && list["responses"]["404"].is_null(), "no body, no id: {list}");
    assert!(list["responses"]["401"].is_object(), "{list}");
    for (method, path) in
        [("get", "/healthz"), ("get", "/metrics"), ("post", "/api/v1/setup"), ("post", "/api/v1/auth/login")]
    {
        let public = operation(method, path);
        assert_eq!(public["security"], serde_json::json!([{}]), "{method} {path} needs no authentication: {public}");
    }
    // The names the API sends and takes, not the Rust variants'; ids in paths are UUIDs.
    assert_eq!(
        spec["components"]["schemas"]["Phase"]["enum"],
        serde_json::json!(["research", "planning", "execution"])
    );
    assert_eq!(spec["components"]["schemas"]["EventType"]["enum"][0], "ticket.filed");
    let id = &operation("get", "/api/v1/tickets/{ticket_id}")["parameters"][0]["schema"];
    assert_eq!((id["type"].as_str(), id["format"].as_str()), (Some("string"), Some("uuid")), "{id}");
    // Sign-in answers 401 for a wrong password by itself; health and metrics never do.
    assert!(operation("get", "/healthz")["responses"]["401"].is_null());
    assert!(operation("get", "/metrics")["responses"]["403"].is_null());
}

/// The document states what the validation enforces (`api::constraints`), so schemathesis (scripts/schemathesis,
/// run by scripts/test) can hold the server to it; here, a few of those rules and the answers they rely on.
#[tokio::test]
async fn the_document_states_the_constraints_and_the_server_keeps_them() {
    let app = TestApp::spawn().await;
    let spec = spec(&app).await;
    let project = &spec["components"]["schemas"]["ProjectInput"]["properties"];
    assert!(project["name"]["anyOf"][0]["pattern"].is_string(), "{}", project["name"]);
    assert_eq!(project["max_concurrent_jobs"]["anyOf"][0]["maximum"], 100);
    let create = &spec["paths"]["/api/v1/projects"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(create["allOf"][1]["required"], serde_json::json!(["name"]), "{create}");
    let limit = spec["paths"]["/api/v1/tickets"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .cloned()
        .unwrap();
    assert_eq!((limit["schema"]["minimum"].as_i64(), limit["schema"]["maximum"].as_i64()), (Some(1), Some(200)));
    assert!(spec["paths"]["/api/v1/projects"]["post"]["responses"]["422"].is_object());

    // A whole number written as a float is an integer (JSON Schema's `integer` admits both).
    let created =
        app.post_json("/api/v1/projects", &serde_json::json!({"name": "Web", "max_concurrent_jobs": 3.0})).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["max_concurrent_jobs"], 3);
    // A name with nothing to make a slug from still gets one.
    let unicode = app.post_json("/api/v1/projects", &serde_json::json!({"name": "日本"})).await;
    assert_eq!(unicode.status(), 201);
    let unicode: Value = unicode.json().await.unwrap();
    assert!(unicode["slug"].as_str().unwrap().starts_with("project-"), "{unicode}");
    // A change of nothing changes nothing.
    let same = app.patch_json("/api/v1/projects/web", &serde_json::json!({})).await;
    assert_eq!(same.status(), 200);
    assert_eq!(same.json::<Value>().await.unwrap()["updated_at"], created["updated_at"]);
    // An array is not a body, though serde would read a struct from one.
    let array = app.patch_json("/api/v1/projects/web", &serde_json::json!([null, null])).await;
    assert_eq!(array.status(), 400);
    // Naming a secret that does not exist yet is well formed: a 422 naming the field, as the document says.
    let missing = app.patch_json("/api/v1/projects/web", &serde_json::json!({"credential_secret": "NOPE"})).await;
    assert_eq!(missing.status(), 422);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(
        (missing["code"].as_str(), missing["fields"][0]["field"].as_str()),
        (Some("unknown_reference"), Some("credential_secret"))
    );

    // Half of a pair that does not fit what the clanker already is: a 422, not a 400.
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &serde_json::json!({"name": "Runner", "agent": "command", "agent_settings": {"command": ["true"]}}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    let unfit = app.patch_json("/api/v1/clankers/runner", &serde_json::json!({"agent": "codex"})).await;
    assert_eq!(unfit.status(), 422, "{}", unfit.text().await.unwrap());
    let both = app
        .patch_json("/api/v1/clankers/runner", &serde_json::json!({"agent": "codex", "agent_settings": {"nope": 1}}))
        .await;
    assert_eq!(both.status(), 400, "both halves sent: the body itself is wrong");

    // `null` is no body for an optional one.
    let sub = app
        .post_json("/api/v1/webhook-subscriptions", &serde_json::json!({"url": "https://hooks.example.com/viberglass"}))
        .await;
    assert_eq!(sub.status(), 201);
    let id = sub.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let rotated = app
        .client
        .post(app.url(&format!("/api/v1/webhook-subscriptions/{id}/rotate-secret")))
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200, "{}", rotated.text().await.unwrap());
}
