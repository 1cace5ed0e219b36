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
    a_project_changed_on_one_server_is_read_fresh_on_every_other,
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

/// Two stores on one database with their caches warm: a project renamed,
/// archived, or whose integration is renamed on one is read as it now is on
/// the other at once (on PostgreSQL through the change listener; SQLite has
/// no cache and always reads the database).
async fn a_project_changed_on_one_server_is_read_fresh_on_every_other(backend: TestBackend) {
    use std::time::{Duration, Instant};
    let db = TestDb::new(backend).await;
    let here = db.store().await;
    let there = db.store().await;
    here.enable_credential_cache();
    there.enable_credential_cache();
    let postgres = backend == TestBackend::Postgres;
    if postgres {
        for store in [&here, &there] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !store.credential_cache_state().0 {
                assert!(Instant::now() < deadline, "the change listener never started");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let integration: viberglass_domain::IntegrationInput =
        serde_json::from_value(serde_json::json!({"name": "gh", "kind": "github"})).unwrap();
    let integration =
        here.create_integration(viberglass_domain::NewIntegration::parse(integration).unwrap()).await.unwrap();
    let created =
        here.create_project(new_project(serde_json::json!({"name": "Shop", "scm_integration": "gh"}))).await.unwrap();
    let slug = ProjectSlug::parse("shop").unwrap();
    // Warm on the other server, by id and by slug.
    let hits = there.project_cache_hits();
    for _ in 0..2 {
        assert_eq!(there.get_project(created.id).await.unwrap().name, "Shop");
        assert_eq!(there.get_project_by_slug(&slug).await.unwrap().name, "Shop");
    }
    if postgres {
        assert!(there.project_cache_hits() >= hits + 2, "the second reads are served from memory");
    } else {
        assert_eq!(there.project_cache_hits(), hits, "SQLite reads the database every time");
    }

    // The other server hears of each change within moments (its listener
    // handles the notification), far inside the cache's 30 s bound.
    macro_rules! soon {
        ($read:expr, $check:expr, $what:literal) => {{
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let read = $read;
                if $check(&read) {
                    break read;
                }
                assert!(Instant::now() < deadline, "{}: still {:?}", $what, read);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }};
    }
    here.update_project(created.id, patch(serde_json::json!({"name": "Web Shop", "max_concurrent_jobs": 7})))
        .await
        .unwrap();
    soon!(
        there.get_project(created.id).await.unwrap(),
        |p: &viberglass_domain::Project| p.name == "Web Shop" && p.max_concurrent_jobs == 7,
        "the rename by id"
    );
    assert_eq!(there.get_project_by_slug(&slug).await.unwrap().name, "Web Shop");

    here.archive_project(created.id).await.unwrap();
    soon!(
        there.get_project(created.id).await.unwrap(),
        |p: &viberglass_domain::Project| p.archived_at.is_some(),
        "the archive"
    );

    let rename: viberglass_domain::IntegrationPatch = viberglass_domain::IntegrationPatch::parse(
        serde_json::from_value(serde_json::json!({"name": "github-main"})).unwrap(),
    )
    .unwrap();
    here.update_integration(integration.id, rename).await.unwrap();
    soon!(
        there.get_project(created.id).await.unwrap(),
        |p: &viberglass_domain::Project| p.scm_integration.as_deref() == Some("github-main"),
        "the integration's new name"
    );
    here.delete_integration(integration.id).await.unwrap();
    soon!(
        there.get_project_by_slug(&slug).await.unwrap(),
        |p: &viberglass_domain::Project| p.scm_integration.is_none(),
        "the integration's deletion"
    );

    // Edits through the cached server itself still write against the row as stored.
    there.unarchive_project(created.id).await.unwrap();
    let edited = there.update_project(created.id, patch(serde_json::json!({"description": "d"}))).await.unwrap();
    assert_eq!((edited.name.as_str(), edited.archived_at, edited.description.as_str()), ("Web Shop", None, "d"));
    assert_eq!(here.get_project(created.id).await.unwrap(), edited);
}
