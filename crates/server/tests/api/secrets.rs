//! Secrets through the API: the three backends, write-only values, Test,
//! refusal to delete one in use, and the audit log.

use serde_json::{Value, json};
use viberglass_testkit::moto::Moto;
use viberglass_testkit::{TestApp, TestBackend, backend_tests};

backend_tests!(database_secrets_are_encrypted_write_only_and_testable);

async fn database_secrets_are_encrypted_write_only_and_testable(backend: TestBackend) {
    let app = TestApp::spawn_on(backend).await;
    let created = app
        .post_json("/api/v1/secrets", &json!({"name": "DB_TOKEN", "backend": "database", "value": "s3cret-value-1"}))
        .await;
    assert_eq!(created.status(), 201);
    let text = created.text().await.unwrap();
    assert!(!text.contains("s3cret-value-1"), "a value is never returned: {text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((created["backend"].as_str(), created["managed"].as_bool()), (Some("database"), Some(true)));

    // Stored encrypted: the plaintext is nowhere in the row.
    let (ciphertext, key_id): (Vec<u8>, String) = match &app.db {
        db if backend == TestBackend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url()).await.unwrap();
            sqlx::query_as("SELECT ciphertext, key_id FROM secrets WHERE name = 'DB_TOKEN'")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
        db => {
            let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
            sqlx::query_as("SELECT ciphertext, key_id FROM secrets WHERE name = 'DB_TOKEN'")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(!ciphertext.windows(6).any(|w| w == b"s3cret"), "stored encrypted");
    assert!(key_id.starts_with('k'), "{key_id}");

    let tested: Value = app.post_json("/api/v1/secrets/DB_TOKEN/test", &json!({})).await.json().await.unwrap();
    assert_eq!(tested["ok"], true, "{tested}");
    assert!(tested["message"].as_str().unwrap().contains("14 characters"), "{tested}");
    assert!(!tested.to_string().contains("s3cret"));

    let updated = app.patch_json("/api/v1/secrets/DB_TOKEN", &json!({"value": "another-value"})).await;
    assert_eq!(updated.status(), 200);
    let tested: Value = app.post_json("/api/v1/secrets/DB_TOKEN/test", &json!({})).await.json().await.unwrap();
    assert!(tested["message"].as_str().unwrap().contains("13 characters"), "{tested}");

    // Bad input says what to do.
    let env_value = app.post_json("/api/v1/secrets", &json!({"name": "E", "value": "x"})).await;
    assert_eq!(env_value.status(), 400);
    assert!(env_value.text().await.unwrap().contains("server's environment"));
    let missing = app.post_json("/api/v1/secrets", &json!({"name": "D", "backend": "database"})).await;
    assert_eq!(missing.status(), 400);
    let unset = app.post_json("/api/v1/secrets", &json!({"name": "UNSET_VAR_FOR_TEST"})).await;
    assert_eq!(unset.status(), 201);
    let tested: Value =
        app.post_json("/api/v1/secrets/UNSET_VAR_FOR_TEST/test", &json!({})).await.json().await.unwrap();
    assert_eq!(tested["ok"], false);
    assert!(
        tested["message"].as_str().unwrap().contains("environment variable UNSET_VAR_FOR_TEST is not set"),
        "{tested}"
    );

    // In use: refused, naming the users.
    app.create_project(json!({"name": "Shop", "credential_secret": "DB_TOKEN"})).await;
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Bot", "agent": "command", "agent_settings": {"command": ["true"]}, "secrets": ["DB_TOKEN"]}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    let refused = app.delete("/api/v1/secrets/DB_TOKEN").await;
    assert_eq!(refused.status(), 409);
    let message = refused.text().await.unwrap();
    assert!(message.contains("clanker bot") && message.contains("project shop"), "{message}");
    assert_eq!(app.delete("/api/v1/secrets/UNSET_VAR_FOR_TEST").await.status(), 204);
    assert_eq!(app.get("/api/v1/secrets/UNSET_VAR_FOR_TEST").await.status(), 404);

    let audit: Value = app.get("/api/v1/audit?limit=50").await.json().await.unwrap();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    for action in ["secret_created", "secret_updated", "secret_tested", "secret_deleted"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    assert!(!audit.to_string().contains("another-value"), "the audit log never holds a value");
    assert_eq!(audit["items"][0]["actor_email"], viberglass_testkit::app::ADMIN_EMAIL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_secrets_are_created_resolved_tested_rotated_and_deleted() {
    let Some(moto) = Moto::start() else { return };
    let app = TestApp::builder(TestBackend::Sqlite).env("VIBERGLASS_SSM_PREFIX", "/vg-test").aws(&moto).spawn().await;

    // Written by Viberglass at <prefix>/<NAME>.
    let created =
        app.post_json("/api/v1/secrets", &json!({"name": "SSM_TOKEN", "backend": "ssm", "value": "from-ssm-1"})).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let created: Value = created.json().await.unwrap();
    assert_eq!((created["reference"].as_str(), created["managed"].as_bool()), (Some("/vg-test/SSM_TOKEN"), Some(true)));
    let tested: Value = app.post_json("/api/v1/secrets/SSM_TOKEN/test", &json!({})).await.json().await.unwrap();
    assert_eq!(tested["ok"], true, "{tested}");
    assert!(tested["message"].as_str().unwrap().contains("10 characters"), "{tested}");

    // Rotating the value overwrites the parameter.
    let rotated = app.patch_json("/api/v1/secrets/SSM_TOKEN", &json!({"value": "from-ssm-rotated"})).await;
    assert_eq!(rotated.status(), 200);
    let tested: Value = app.post_json("/api/v1/secrets/SSM_TOKEN/test", &json!({})).await.json().await.unwrap();
    assert!(tested["message"].as_str().unwrap().contains("16 characters"), "{tested}");

    // An explicit path that does not exist says so.
    let missing = app
        .post_json("/api/v1/secrets", &json!({"name": "ELSEWHERE", "backend": "ssm", "reference": "/other/missing"}))
        .await;
    assert_eq!(missing.status(), 201);
    let tested: Value = app.post_json("/api/v1/secrets/ELSEWHERE/test", &json!({})).await.json().await.unwrap();
    assert_eq!(tested["ok"], false);
    assert!(tested["message"].as_str().unwrap().contains("/other/missing does not exist"), "{tested}");

    // A parameter Viberglass did not create is neither overwritten nor changed through it.
    let taken = app
        .post_json(
            "/api/v1/secrets",
            &json!({"name": "TAKEN", "backend": "ssm", "reference": "/vg-test/SSM_TOKEN", "value": "x"}),
        )
        .await;
    assert_eq!(taken.status(), 422);
    assert!(taken.text().await.unwrap().contains("already exists"));
    let external = app.patch_json("/api/v1/secrets/ELSEWHERE", &json!({"value": "x"})).await;
    assert_eq!(external.status(), 422);

    // Deleting removes the parameter Viberglass created.
    assert_eq!(app.delete("/api/v1/secrets/SSM_TOKEN").await.status(), 204);
    let recreated = app.post_json("/api/v1/secrets", &json!({"name": "SSM_TOKEN", "backend": "ssm"})).await;
    assert_eq!(recreated.status(), 201);
    let tested: Value = app.post_json("/api/v1/secrets/SSM_TOKEN/test", &json!({})).await.json().await.unwrap();
    assert_eq!(tested["ok"], false, "the parameter went with the secret: {tested}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ssm_is_named() {
    let port = viberglass_testkit::process::free_port();
    let app = TestApp::builder(TestBackend::Sqlite)
        .env("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .spawn()
        .await;
    app.post_json("/api/v1/secrets", &json!({"name": "GONE", "backend": "ssm"})).await;
    let tested: Value = app.post_json("/api/v1/secrets/GONE/test", &json!({})).await.json().await.unwrap();
    assert_eq!(tested["ok"], false);
    assert!(tested["message"].as_str().unwrap().contains("cannot reach SSM"), "{tested}");
}
