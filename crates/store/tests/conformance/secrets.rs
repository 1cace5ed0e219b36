use viberglass_domain::{NewSecret, ProjectPatch, SecretInput};
use viberglass_store::StoreError;
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(secrets_are_listed_by_name_and_projects_refer_to_them);

async fn secrets_are_listed_by_name_and_projects_refer_to_them(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let input = |name: &str| SecretInput { name: Some(name.into()), ..SecretInput::default() };
    let token = store.create_secret(NewSecret::parse(input("GITHUB_TOKEN")).unwrap(), None, false).await.unwrap();
    store.create_secret(NewSecret::parse(input("ANTHROPIC_API_KEY")).unwrap(), None, false).await.unwrap();
    let names: Vec<String> = store.list_secrets().await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]);
    assert_eq!(store.get_secret_by_name("GITHUB_TOKEN").await.unwrap(), token);
    let dup = store.create_secret(NewSecret::parse(input("GITHUB_TOKEN")).unwrap(), None, false).await;
    assert!(matches!(&dup, Err(StoreError::Conflict { field, .. }) if field == "name"), "{dup:?}");

    let project = store
        .create_project(new_project(
            serde_json::json!({"name": "App", "credential_secret": "GITHUB_TOKEN", "scm_username": "oauth2"}),
        ))
        .await
        .unwrap();
    let read = store.get_project(project.id).await.unwrap();
    assert_eq!((read.credential_secret.as_deref(), read.scm_username.as_str()), (Some("GITHUB_TOKEN"), "oauth2"));
    let patch =
        ProjectPatch::parse(serde_json::from_value(serde_json::json!({"credential_secret": null})).unwrap()).unwrap();
    assert_eq!(store.update_project(project.id, patch).await.unwrap().credential_secret, None);
}

backend_tests!(sealed_values_are_stored_replaced_resealed_and_users_named);

async fn sealed_values_are_stored_replaced_resealed_and_users_named(backend: TestBackend) {
    use viberglass_store::SealedValue;
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let sealed =
        |byte: u8, key: &str| SealedValue { ciphertext: vec![byte; 20], nonce: vec![byte; 12], key_id: key.into() };
    let input: SecretInput =
        serde_json::from_value(serde_json::json!({"name": "DB_TOKEN", "backend": "database", "value": "v"})).unwrap();
    let created = store.create_secret(NewSecret::parse(input).unwrap(), Some(sealed(1, "k1")), true).await.unwrap();
    assert!(created.managed);
    assert_eq!(store.sealed_secret_value("DB_TOKEN").await.unwrap(), Some(sealed(1, "k1")));
    let env = SecretInput { name: Some("ENV_TOKEN".into()), ..SecretInput::default() };
    store.create_secret(NewSecret::parse(env).unwrap(), None, false).await.unwrap();
    assert_eq!(store.sealed_secret_value("ENV_TOKEN").await.unwrap(), None);
    assert!(matches!(store.sealed_secret_value("NOPE").await, Err(StoreError::NotFound { .. })));

    let updated = store.update_secret("DB_TOKEN", Some(sealed(2, "k1")), None, Some("rotated".into())).await.unwrap();
    assert_eq!(updated.description, "rotated");
    assert!(updated.updated_at > created.updated_at);
    assert_eq!(store.sealed_secret_value("DB_TOKEN").await.unwrap(), Some(sealed(2, "k1")));
    let described = store.update_secret("DB_TOKEN", None, None, Some("kept".into())).await.unwrap();
    assert_eq!(described.description, "kept");
    assert_eq!(store.sealed_secret_value("DB_TOKEN").await.unwrap(), Some(sealed(2, "k1")), "value kept");

    let all = store.sealed_secrets().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(
        !store.reseal_secret(created.id, &sealed(2, "k0"), sealed(3, "k2")).await.unwrap(),
        "guarded by the old key id"
    );
    assert!(
        !store.reseal_secret(created.id, &sealed(9, "k1"), sealed(3, "k2")).await.unwrap(),
        "and by the value read"
    );
    assert!(store.reseal_secret(created.id, &sealed(2, "k1"), sealed(3, "k2")).await.unwrap());
    assert_eq!(store.sealed_secret_value("DB_TOKEN").await.unwrap(), Some(sealed(3, "k2")));

    assert!(store.secret_users("DB_TOKEN").await.unwrap().is_empty());
    store
        .create_project(new_project(serde_json::json!({"name": "Shop", "credential_secret": "DB_TOKEN"})))
        .await
        .unwrap();
    let users = store.secret_users("DB_TOKEN").await.unwrap();
    assert_eq!(users.projects, ["shop"]);
    assert_eq!(users.describe(), "project shop");
    store.delete_secret("ENV_TOKEN").await.unwrap();
    assert!(matches!(store.delete_secret("ENV_TOKEN").await, Err(StoreError::NotFound { .. })));
    assert!(store.delete_secret("DB_TOKEN").await.is_err(), "a project's credential cannot vanish");
}
