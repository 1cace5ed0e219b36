use viberglass_domain::{NewUser, PageRequest, ProjectRole, UserInput};
use viberglass_store::{AuditFilter, NewAudit, Store, StoreError, UserChange};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(
    the_first_admin_is_created_once_even_when_raced,
    sessions_and_tokens_end_when_revoked_expired_or_the_user_is_disabled,
    members_have_one_role_per_project_and_filter_lists,
    the_audit_log_pages_newest_first_with_its_actor,
);

fn new_user(email: &str) -> NewUser {
    let input: UserInput =
        serde_json::from_value(serde_json::json!({"email": email, "password": "a long enough password"})).unwrap();
    NewUser::parse(input).unwrap()
}

async fn the_first_admin_is_created_once_even_when_raced(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let mut racers = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            store.create_first_admin(new_user(&format!("admin{i}@example.com")), "hash").await.unwrap()
        }));
    }
    let mut created = Vec::new();
    for racer in racers {
        created.extend(racer.await.unwrap());
    }
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(created[0].is_admin);
    assert_eq!(store.count_users().await.unwrap(), 1);
    // Afterwards, accounts come from admins; e-mails are unique.
    let second = store.create_user(new_user("dev@example.com"), "h2").await.unwrap();
    assert!(!second.is_admin);
    assert!(matches!(store.create_user(new_user("dev@example.com"), "h").await, Err(StoreError::Conflict { .. })));
    let (found, hash) = store.user_for_login("dev@example.com").await.unwrap().unwrap();
    assert_eq!((found.id, hash.as_deref()), (second.id, Some("h2")));
    assert!(store.user_for_login("nobody@example.com").await.unwrap().is_none());
    assert_eq!(store.list_users().await.unwrap().len(), 2);
}

async fn sessions_and_tokens_end_when_revoked_expired_or_the_user_is_disabled(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let user = store.create_user(new_user("dev@example.com"), "h").await.unwrap();
    let later = viberglass_store::now() + time::Duration::hours(1);
    let earlier = viberglass_store::now() - time::Duration::seconds(1);
    store.create_session(user.id, "s-live", Some("127.0.0.1"), Some("test"), later).await.unwrap();
    store.create_session(user.id, "s-expired", None, None, earlier).await.unwrap();
    assert_eq!(store.session_user("s-live").await.unwrap().map(|u| u.id), Some(user.id));
    assert!(store.session_user("s-expired").await.unwrap().is_none());
    assert!(store.session_user("s-unknown").await.unwrap().is_none());
    store.revoke_session("s-live").await.unwrap();
    assert!(store.session_user("s-live").await.unwrap().is_none());

    let token = store.create_api_token(user.id, "ci", "t-hash", "vgp_abcd", None).await.unwrap();
    store.create_api_token(user.id, "old", "t-old", "vgp_old0", Some(earlier)).await.unwrap();
    assert_eq!(store.token_user("t-hash").await.unwrap().map(|u| u.id), Some(user.id));
    assert!(store.token_user("t-old").await.unwrap().is_none(), "expired");
    let listed = store.list_api_tokens(user.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().find(|t| t.id == token.id).unwrap().last_used_at.is_some());

    store.create_session(user.id, "s-two", None, None, later).await.unwrap();
    let disabled = store.update_user(user.id, UserChange { disabled: Some(true), ..Default::default() }).await.unwrap();
    assert!(disabled.disabled_at.is_some());
    assert!(store.token_user("t-hash").await.unwrap().is_none(), "a disabled user's tokens stop working");
    store.update_user(user.id, UserChange { disabled: Some(false), ..Default::default() }).await.unwrap();
    assert!(store.session_user("s-two").await.unwrap().is_none(), "disabling ended the session for good");
    assert!(store.token_user("t-hash").await.unwrap().is_some());
    let other = store.create_user(new_user("other@example.com"), "h").await.unwrap();
    assert!(!store.revoke_api_token(other.id, token.id).await.unwrap(), "only its owner revokes a token");
    assert!(store.revoke_api_token(user.id, token.id).await.unwrap());
    assert!(store.token_user("t-hash").await.unwrap().is_none());

    let changed = store
        .update_user(user.id, UserChange { password_hash: Some("new".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(store.user_for_login("dev@example.com").await.unwrap().unwrap().1.as_deref(), Some("new"));
    assert!(changed.updated_at >= user.updated_at);
}

async fn project(store: &Store, name: &str) -> viberglass_domain::Project {
    store.create_project(new_project(serde_json::json!({"name": name}))).await.unwrap()
}

async fn members_have_one_role_per_project_and_filter_lists(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let user = store.create_user(new_user("dev@example.com"), "h").await.unwrap();
    let mine = project(&store, "Mine").await;
    let theirs = project(&store, "Theirs").await;
    store.set_member(mine.id, user.id, ProjectRole::Viewer).await.unwrap();
    store.set_member(mine.id, user.id, ProjectRole::Maintainer).await.unwrap();
    assert_eq!(store.member_role(mine.id, user.id).await.unwrap(), Some(ProjectRole::Maintainer));
    assert_eq!(store.member_role(theirs.id, user.id).await.unwrap(), None);
    let members = store.list_members(mine.id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].1, ProjectRole::Maintainer);

    let filter = viberglass_store::ProjectFilter { member_of: Some(user.id), ..Default::default() };
    let listed = store.list_projects(&filter, PageRequest::default()).await.unwrap();
    assert_eq!(listed.items.iter().map(|p| p.id).collect::<Vec<_>>(), [mine.id]);
    for p in [&mine, &theirs] {
        let input: viberglass_domain::TicketInput = serde_json::from_value(serde_json::json!({"title": "t"})).unwrap();
        store.create_ticket(p.id, viberglass_domain::NewTicket::parse(input).unwrap(), None).await.unwrap();
    }
    let tickets = viberglass_domain::TicketFilter { member_of: Some(user.id), ..Default::default() };
    let listed = store.list_tickets(&tickets, PageRequest::default()).await.unwrap();
    assert_eq!(listed.items.iter().map(|t| t.project_id).collect::<Vec<_>>(), [mine.id]);

    assert!(store.remove_member(mine.id, user.id).await.unwrap());
    assert!(!store.remove_member(mine.id, user.id).await.unwrap());
    assert!(store.list_projects(&filter, PageRequest::default()).await.unwrap().items.is_empty());
}

async fn the_audit_log_pages_newest_first_with_its_actor(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let user = store.create_user(new_user("dev@example.com"), "h").await.unwrap();
    let p = project(&store, "Shop").await;
    for (i, action) in ["login", "login_failed", "secret_created"].iter().enumerate() {
        store
            .append_audit(NewAudit {
                actor_id: (i != 1).then_some(user.id),
                channel: "api".into(),
                action: (*action).into(),
                target_kind: "user".into(),
                target_id: Some(format!("t{i}")),
                project_id: (i == 2).then_some(p.id),
                details: serde_json::json!({"n": i}),
                request_id: Some(format!("r{i}")),
            })
            .await
            .unwrap();
    }
    let page = store.list_audit(&AuditFilter::default(), PageRequest { limit: 2, after: None }).await.unwrap();
    let actions: Vec<&str> = page.items.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["secret_created", "login_failed"]);
    assert_eq!(page.items[0].actor_email.as_deref(), Some("dev@example.com"));
    assert_eq!(page.items[0].details["n"], 2);
    assert!(page.next_cursor.is_some());
    let by_project = AuditFilter { project_id: Some(p.id), ..Default::default() };
    assert_eq!(store.list_audit(&by_project, PageRequest::default()).await.unwrap().items.len(), 1);
    let by_action = AuditFilter { action: Some("login".into()), ..Default::default() };
    assert_eq!(store.list_audit(&by_action, PageRequest::default()).await.unwrap().items.len(), 1);
}
