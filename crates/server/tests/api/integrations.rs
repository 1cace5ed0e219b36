//! SCM integrations: CRUD with validation, links from projects, refusal to
//! delete one in use, and Test connection against the fake forge.

use serde_json::{Value, json};
use viberglass_testkit::fake_forge::{ALL, FakeForge, Permission};
use viberglass_testkit::{TestApp, TestBackend, backend_tests};

backend_tests!(integrations_crud_and_links);

async fn integrations_crud_and_links(backend: TestBackend) {
    let app = TestApp::spawn_on(backend).await;
    let bad = app
        .post_json("/api/v1/integrations", &json!({"name": "Git Hub", "kind": "bitbucket", "base_url": "ftp://x"}))
        .await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    let fields: Vec<&str> = body["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["name", "kind", "base_url"], "{body}");

    let unknown_secret = app
        .post_json("/api/v1/integrations", &json!({"name": "gh", "kind": "github", "credential_secret": "NOPE"}))
        .await;
    // Well formed, naming a secret that does not exist yet: a 422 naming the field.
    assert_eq!(unknown_secret.status(), 422);
    let body: Value = unknown_secret.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["fields"][0]["field"].as_str()),
        (Some("unknown_reference"), Some("credential_secret"))
    );
    assert!(body["message"].as_str().unwrap().contains("there is no secret named NOPE"), "{body}");

    app.post_json("/api/v1/secrets", &json!({"name": "GH_TOKEN"})).await;
    let created = app
        .post_json("/api/v1/integrations", &json!({"name": "gh", "kind": "github", "credential_secret": "GH_TOKEN"}))
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["base_url"], "https://github.com");
    assert_eq!(created["credential_secret"], "GH_TOKEN");
    let duplicate = app.post_json("/api/v1/integrations", &json!({"name": "gh", "kind": "gitlab"})).await;
    assert_eq!(duplicate.status(), 409);

    let patched = app
        .patch_json(
            "/api/v1/integrations/gh",
            &json!({"base_url": "https://ghe.example.com/", "credential_secret": null}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["base_url"], "https://ghe.example.com");
    assert!(patched["credential_secret"].is_null());
    let by_id: Value =
        app.get(&format!("/api/v1/integrations/{}", created["id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(by_id, patched);

    // Projects link it by name; only existing ones.
    let refused = app.post_json("/api/v1/projects", &json!({"name": "Shop", "scm_integration": "nope"})).await;
    assert_eq!(refused.status(), 422);
    let project = app.create_project(json!({"name": "Shop", "scm_integration": "gh"})).await;
    assert_eq!(project["scm_integration"], "gh");

    let in_use = app.delete("/api/v1/integrations/gh").await;
    assert_eq!(in_use.status(), 409);
    assert!(in_use.text().await.unwrap().contains("used by project(s) shop"));
    let unlinked = app.patch_json("/api/v1/projects/shop", &json!({"scm_integration": null})).await;
    assert_eq!(unlinked.status(), 200);
    assert_eq!(app.delete("/api/v1/integrations/gh").await.status(), 204);
    assert_eq!(app.get("/api/v1/integrations/gh").await.status(), 404);
    let list: Value = app.get("/api/v1/integrations").await.json().await.unwrap();
    assert_eq!(list, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_reports_who_the_token_is_and_what_it_may_do() {
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "x")]);
    forge.add_token("tok-full-1234", "shop-bot", ALL);
    forge.add_token("tok-read-1234", "reader", &[Permission::ContentsRead]);
    let app = TestApp::builder(TestBackend::Sqlite)
        .env("VG_FULL", "tok-full-1234")
        .env("VG_READ", "tok-read-1234")
        .spawn()
        .await;
    app.post_json("/api/v1/secrets", &json!({"name": "FULL", "reference": "VG_FULL"})).await;
    app.post_json("/api/v1/secrets", &json!({"name": "READ", "reference": "VG_READ"})).await;
    app.post_json("/api/v1/secrets", &json!({"name": "UNSET", "reference": "VG_UNSET_VARIABLE"})).await;
    for (name, kind, secret) in [("full", "gitlab", "FULL"), ("read", "github", "READ"), ("unset", "github", "UNSET")] {
        let created = app
            .post_json(
                "/api/v1/integrations",
                &json!({"name": name, "kind": kind, "base_url": forge.base_url(), "credential_secret": secret}),
            )
            .await;
        assert_eq!(created.status(), 201);
    }
    app.create_project(
        json!({"name": "Shop", "repository_url": forge.clone_url("acme/shop"), "scm_integration": "full"}),
    )
    .await;

    let full: Value =
        app.post_json("/api/v1/integrations/full/test", &json!({"project": "shop"})).await.json().await.unwrap();
    assert_eq!(full["ok"], true, "{full}");
    assert_eq!(full["identity"]["login"], "shop-bot");
    assert_eq!(full["repository"], "acme/shop");
    assert_eq!(
        (full["can_read"].clone(), full["can_push"].clone(), full["can_open_pull_requests"].clone()),
        (json!(true), json!(true), json!(true))
    );

    let read: Value = app
        .post_json("/api/v1/integrations/read/test", &json!({"repository": "acme/shop"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["ok"], false, "{read}");
    assert_eq!(read["can_open_pull_requests"], false);
    let problems = read["problems"].to_string();
    assert!(problems.contains("not push") && problems.contains("pull_request: write"), "{problems}");

    let unset = app.post_json("/api/v1/integrations/unset/test", &json!({})).await;
    assert_eq!(unset.status(), 422);
    assert!(unset.text().await.unwrap().contains("VG_UNSET_VARIABLE"));

    let bad = app.post_json("/api/v1/integrations/full/test", &json!({"repository": "no-slash"})).await;
    assert_eq!(bad.status(), 400);
    assert!(forge.pulls("acme/shop").is_empty(), "Test connection opens nothing");
}
