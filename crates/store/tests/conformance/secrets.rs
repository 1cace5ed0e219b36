use viberglass_domain::{NewSecret, ProjectPatch, SecretInput};
use viberglass_store::StoreError;
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(secrets_are_listed_by_name_and_projects_refer_to_them);

async fn secrets_are_listed_by_name_and_projects_refer_to_them(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let input = |name: &str| SecretInput { name: Some(name.into()), ..SecretInput::default() };
    let token = store.create_secret(NewSecret::parse(input("GITHUB_TOKEN")).unwrap()).await.unwrap();
    store.create_secret(NewSecret::parse(input("ANTHROPIC_API_KEY")).unwrap()).await.unwrap();
    let names: Vec<String> = store.list_secrets().await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]);
    assert_eq!(store.get_secret_by_name("GITHUB_TOKEN").await.unwrap(), token);
    let dup = store.create_secret(NewSecret::parse(input("GITHUB_TOKEN")).unwrap()).await;
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
