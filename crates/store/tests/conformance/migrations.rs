use viberglass_store::{MigrateError, SchemaStatus};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

backend_tests!(
    a_fresh_database_migrates_to_the_latest_version,
    migrating_twice_changes_nothing,
    concurrent_migrators_apply_each_migration_once,
    a_failing_migration_is_named_with_the_database_error,
);

async fn a_fresh_database_migrates_to_the_latest_version(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.connect().await;
    let before = store.schema_status().await.unwrap();
    assert_eq!(before.applied, 0);
    assert!(!before.is_current());
    let applied = store.migrate().await.unwrap();
    assert_eq!(applied[0], "0001_initial");
    let after = store.schema_status().await.unwrap();
    assert!(after.is_current(), "{after:?}");
}

async fn migrating_twice_changes_nothing(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    assert!(store.migrate().await.unwrap().is_empty());
}

async fn concurrent_migrators_apply_each_migration_once(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let a = db.connect().await;
    let b = db.connect().await;
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.len() + rb.len(), viberglass_store::migrate::MIGRATIONS.len(), "{ra:?} {rb:?}");
    let status = a.schema_status().await.unwrap();
    assert_eq!(status, SchemaStatus { applied: status.latest, latest: status.latest });
}

async fn a_failing_migration_is_named_with_the_database_error(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.connect().await;
    // A table left behind by something else collides with the first migration.
    db.execute("CREATE TABLE projects (x INTEGER)").await;
    let err = store.migrate().await.unwrap_err();
    assert!(matches!(err, MigrateError::Failed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("migration 0001_initial failed: "), "{text}");
    assert!(text.contains("already exists"), "{text}");
    // Nothing of the failed migration stays behind.
    assert_eq!(store.schema_status().await.unwrap().applied, 0);
}
