use viberglass_domain::ticket::ArchivedFilter;
use viberglass_domain::{NewProject, PageRequest, ProjectInput, ProjectPatch, ProjectSlug};
use viberglass_store::{ProjectFilter, StoreError};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

backend_tests!(
    a_created_project_reads_back_by_id_and_by_slug,
    names_and_slugs_are_unique,
    a_patch_changes_only_the_fields_it_names,
    archiving_is_idempotent_and_reversible,
    project_lists_page_newest_first_and_filter,
    concurrent_edits_to_different_fields_are_all_kept,
);

pub fn new_project(json: serde_json::Value) -> NewProject {
    let input: ProjectInput = serde_json::from_value(json).unwrap();
    NewProject::parse(input).unwrap()
}

fn patch(json: serde_json::Value) -> ProjectPatch {
    ProjectPatch::parse(serde_json::from_value(json).unwrap()).unwrap()
}

async fn a_created_project_reads_back_by_id_and_by_slug(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let created = store
        .create_project(new_project(serde_json::json!({
            "name": "Web App",
            "repository_url": "https://github.com/acme/web.git",
            "base_branch": "develop",
            "pr_base_branch": "main",
            "branch_name_template": "vg/{{ ticket }}-{{ clanker }}",
            "max_execution_secs": 600,
            "max_concurrent_jobs": 3,
            "agent_instructions": "Run `make test` before finishing.",
        })))
        .await
        .unwrap();
    let by_id = store.get_project(created.id).await.unwrap();
    assert_eq!(by_id, created, "every field round-trips, timestamps to the microsecond");
    let by_slug = store.get_project_by_slug(&ProjectSlug::parse("web-app").unwrap()).await.unwrap();
    assert_eq!(by_slug, created);
    let missing = store.get_project(viberglass_domain::ProjectId::new()).await.unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { entity: "project", .. }), "{missing:?}");
}

async fn names_and_slugs_are_unique(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    store.create_project(new_project(serde_json::json!({"name": "App", "slug": "app"}))).await.unwrap();
    let same_name = store.create_project(new_project(serde_json::json!({"name": "App", "slug": "other"}))).await;
    assert!(matches!(&same_name, Err(StoreError::Conflict { field, .. }) if field == "name"), "{same_name:?}");
    let same_slug = store.create_project(new_project(serde_json::json!({"name": "Other", "slug": "app"}))).await;
    assert!(matches!(&same_slug, Err(StoreError::Conflict { field, .. }) if field == "slug"), "{same_slug:?}");
}

async fn a_patch_changes_only_the_fields_it_names(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let created = store
        .create_project(new_project(serde_json::json!({"name": "App", "pr_base_branch": "release"})))
        .await
        .unwrap();
    let updated = store
        .update_project(created.id, patch(serde_json::json!({"description": "The shop", "pr_base_branch": null})))
        .await
        .unwrap();
    assert_eq!(updated.description, "The shop");
    assert_eq!(updated.pr_base_branch, None);
    assert_eq!(updated.name, "App");
    assert!(updated.updated_at > created.updated_at);
    assert_eq!(store.get_project(created.id).await.unwrap(), updated);

    let other = store.create_project(new_project(serde_json::json!({"name": "Other"}))).await.unwrap();
    let clash = store.update_project(other.id, patch(serde_json::json!({"name": "App"}))).await;
    assert!(matches!(&clash, Err(StoreError::Conflict { field, .. }) if field == "name"), "{clash:?}");
}

async fn archiving_is_idempotent_and_reversible(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    let archived = store.archive_project(p.id).await.unwrap();
    let archived_at = archived.archived_at.expect("archived");
    let again = store.archive_project(p.id).await.unwrap();
    assert_eq!(again.archived_at, Some(archived_at), "archiving twice keeps the first time");
    let restored = store.unarchive_project(p.id).await.unwrap();
    assert_eq!(restored.archived_at, None);
}

async fn project_lists_page_newest_first_and_filter(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let p = store
            .create_project(new_project(serde_json::json!({"name": format!("Project {i}"), "description": "x"})))
            .await
            .unwrap();
        ids.push(p.id);
    }
    store.archive_project(ids[0]).await.unwrap();
    let first = store.list_projects(&ProjectFilter::default(), PageRequest { limit: 2, after: None }).await.unwrap();
    assert_eq!(first.items.iter().map(|p| p.id).collect::<Vec<_>>(), vec![ids[4], ids[3]]);
    let cursor = viberglass_domain::Cursor::decode(first.next_cursor.as_deref().unwrap()).unwrap();
    let second =
        store.list_projects(&ProjectFilter::default(), PageRequest { limit: 2, after: Some(cursor) }).await.unwrap();
    assert_eq!(second.items.iter().map(|p| p.id).collect::<Vec<_>>(), vec![ids[2], ids[1]]);
    assert_eq!(second.next_cursor, None, "the archived project is not in the default list");

    let only_archived = ProjectFilter { archived: ArchivedFilter::Only, search: None, member_of: None };
    let page = store.list_projects(&only_archived, PageRequest::default()).await.unwrap();
    assert_eq!(page.items.iter().map(|p| p.id).collect::<Vec<_>>(), vec![ids[0]]);

    let search = ProjectFilter { archived: ArchivedFilter::Include, search: Some("PROJECT 3".into()), member_of: None };
    let page = store.list_projects(&search, PageRequest::default()).await.unwrap();
    assert_eq!(page.items.iter().map(|p| p.id).collect::<Vec<_>>(), vec![ids[3]]);
}

async fn concurrent_edits_to_different_fields_are_all_kept(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    let edits = [
        serde_json::json!({"description": "d"}),
        serde_json::json!({"base_branch": "develop"}),
        serde_json::json!({"max_concurrent_jobs": 7}),
        serde_json::json!({"agent_instructions": "be careful"}),
    ];
    let tasks: Vec<_> = edits
        .into_iter()
        .map(|edit| {
            let store = store.clone();
            tokio::spawn(async move { store.update_project(p.id, patch(edit)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let end = store.get_project(p.id).await.unwrap();
    assert_eq!(
        (end.description.as_str(), end.base_branch.as_str(), end.max_concurrent_jobs, end.agent_instructions.as_str()),
        ("d", "develop", 7, "be careful")
    );
}
