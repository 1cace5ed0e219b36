use viberglass_domain::{IntegrationInput, IntegrationPatch, NewIntegration, NewSecret, ScmProvider, SecretInput};
use viberglass_store::StoreError;
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(integrations_round_trip_and_know_their_users);

fn input(json: serde_json::Value) -> IntegrationInput {
    serde_json::from_value(json).unwrap()
}

async fn integrations_round_trip_and_know_their_users(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let secret: SecretInput = serde_json::from_value(serde_json::json!({"name": "GH_TOKEN"})).unwrap();
    store.create_secret(NewSecret::parse(secret).unwrap(), None, false).await.unwrap();
    let new = NewIntegration::parse(input(
        serde_json::json!({"name": "gh", "kind": "github", "credential_secret": "GH_TOKEN"}),
    ))
    .unwrap();
    let created = store.create_integration(new.clone()).await.unwrap();
    assert_eq!(created.kind, ScmProvider::GitHub);
    assert_eq!(store.get_integration(created.id).await.unwrap(), created);
    assert_eq!(store.get_integration_by_name("gh").await.unwrap(), created);
    assert!(matches!(store.create_integration(new).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.integrations_using_secret("GH_TOKEN").await.unwrap(), ["gh"]);

    let patch =
        IntegrationPatch::parse(input(serde_json::json!({"base_url": "https://ghe.corp", "credential_secret": null})))
            .unwrap();
    let updated = store.update_integration(created.id, patch).await.unwrap();
    assert_eq!((updated.base_url.as_str(), updated.credential_secret.as_deref()), ("https://ghe.corp", None));
    assert!(updated.updated_at > created.updated_at);
    assert!(store.integrations_using_secret("GH_TOKEN").await.unwrap().is_empty());

    let project =
        store.create_project(new_project(serde_json::json!({"name": "Shop", "scm_integration": "gh"}))).await.unwrap();
    assert_eq!(project.scm_integration.as_deref(), Some("gh"));
    assert_eq!(store.get_project(project.id).await.unwrap().scm_integration.as_deref(), Some("gh"));
    assert_eq!(store.integration_users(created.id).await.unwrap(), ["shop"]);
    assert_eq!(store.list_integrations().await.unwrap(), [updated]);

    // Deleting leaves the project without an integration.
    store.delete_integration(created.id).await.unwrap();
    assert!(matches!(store.delete_integration(created.id).await, Err(StoreError::NotFound { .. })));
    assert_eq!(store.get_project(project.id).await.unwrap().scm_integration, None);
}
