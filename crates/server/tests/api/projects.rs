use serde_json::{Value, json};
use viberglass_testkit::{TestApp, TestBackend, backend_tests};

backend_tests!(projects_through_every_layer);

async fn projects_through_every_layer(backend: TestBackend) {
    let app = TestApp::spawn_on(backend).await;
    let response = app
        .post_json(
            "/api/v1/projects",
            &json!({"name": "Web Shop", "repository_url": "https://github.com/acme/shop.git"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["slug"], "web-shop");
    assert_eq!(created["base_branch"], "main");
    assert_eq!(location, format!("/api/v1/projects/{}", created["id"].as_str().unwrap()));

    let by_id: Value = app.get(&location).await.json().await.unwrap();
    let by_slug: Value = app.get("/api/v1/projects/web-shop").await.json().await.unwrap();
    assert_eq!(by_id, created);
    assert_eq!(by_slug, created);

    let patched = app
        .patch_json("/api/v1/projects/web-shop", &json!({"description": "Sells things", "max_concurrent_jobs": 4}))
        .await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(
        (patched["description"].as_str(), patched["max_concurrent_jobs"].as_u64()),
        (Some("Sells things"), Some(4))
    );

    let invalid = app.patch_json("/api/v1/projects/web-shop", &json!({"branch_name_template": "x/{{ user }}"})).await;
    assert_eq!(invalid.status(), 400);
    let invalid: Value = invalid.json().await.unwrap();
    assert_eq!(invalid["fields"][0]["field"], "branch_name_template");

    app.create_project(json!({"name": "Backoffice"})).await;
    let listed: Value = app.get("/api/v1/projects?limit=1").await.json().await.unwrap();
    assert_eq!(listed["items"][0]["name"], "Backoffice");
    let cursor = listed["next_cursor"].as_str().expect("a second page");
    let second: Value = app.get(&format!("/api/v1/projects?limit=1&cursor={cursor}")).await.json().await.unwrap();
    assert_eq!(second["items"][0]["name"], "Web Shop");
    assert!(second["next_cursor"].is_null());

    let searched: Value = app.get("/api/v1/projects?q=sells").await.json().await.unwrap();
    assert_eq!(searched["items"].as_array().unwrap().len(), 1);

    let archived: Value = app.post_json("/api/v1/projects/web-shop/archive", &json!({})).await.json().await.unwrap();
    assert!(archived["archived_at"].is_string());
    let live: Value = app.get("/api/v1/projects").await.json().await.unwrap();
    assert_eq!(live["items"].as_array().unwrap().len(), 1);
    let only: Value = app.get("/api/v1/projects?archived=only").await.json().await.unwrap();
    assert_eq!(only["items"][0]["slug"], "web-shop");
    let restored: Value = app.post_json("/api/v1/projects/web-shop/unarchive", &json!({})).await.json().await.unwrap();
    assert!(restored["archived_at"].is_null());

    let bad_filter = app.get("/api/v1/projects?archived=maybe").await;
    assert_eq!(bad_filter.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_urls_that_run_commands_or_read_the_servers_disk_are_refused() {
    let app = TestApp::spawn().await;
    for (url, says) in [
        ("ssh://-oProxyCommand=touch%20/tmp/pwned/repo.git", "starting with `-`"),
        ("file:///etc", "server's own disk"),
        ("file:///var/lib/viberglass/other.git", "VIBERGLASS_ALLOW_LOCAL_REPOSITORIES"),
    ] {
        let response = app.post_json("/api/v1/projects", &json!({"name": "Evil", "repository_url": url})).await;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["fields"][0]["field"], "repository_url", "{body}");
        assert!(body["fields"][0]["message"].as_str().unwrap().contains(says), "{url}: {body}");
    }
    let fine = app
        .post_json("/api/v1/projects", &json!({"name": "Fine", "repository_url": "ssh://git@example.com/a/b.git"}))
        .await;
    assert_eq!(fine.status(), 201);
    // An audit entry records who created it.
    let audit: Value = app.get("/api/v1/audit?limit=20").await.json().await.unwrap();
    assert!(audit["items"].as_array().unwrap().iter().any(|a| a["action"] == "project_created"), "{audit}");
}
