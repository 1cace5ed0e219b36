//! Slack: the app's settings and Test connection record, replayed
//! signatures, the inbox (kept once, claimed by one holder, finished only
//! under its lease), threads bound to tickets (one live each way, unlinking
//! drops what was unsent), and messages kept in Slack (a version per change,
//! sent by one holder, a thread's messages waiting for its first one).

use serde_json::json;
use viberglass_domain::slack::{NewSlackSettings, SlackSettingsInput};
use viberglass_domain::{NewTicket, SlackPostStatus, TicketInput};
use viberglass_store::{NewSlackPost, NewSlackThread, PostOutcome, StoreError};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(
    settings_signatures_and_the_inbox,
    threads_bind_one_ticket_each_and_unlinking_drops_unsent_messages,
    messages_are_sent_once_per_version_by_their_lease_holder
);

fn lease() -> time::Duration {
    time::Duration::seconds(60)
}

async fn ticket(store: &viberglass_store::Store, title: &str) -> viberglass_domain::Ticket {
    let name = format!("Shop {}", uuid::Uuid::now_v7().simple());
    let project = store.create_project(new_project(json!({"name": name}))).await.unwrap();
    let input: TicketInput = serde_json::from_value(json!({"title": title, "source": "slack"})).unwrap();
    store.create_ticket(project.id, NewTicket::parse(input).unwrap(), None).await.unwrap()
}

async fn settings_signatures_and_the_inbox(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    assert_eq!(store.get_slack_settings().await.unwrap(), None);
    let input = SlackSettingsInput {
        signing_secret: Some("SLACK_SIGNING".into()),
        bot_token_secret: Some("SLACK_BOT".into()),
        api_url: None,
    };
    let saved = store.put_slack_settings(&NewSlackSettings::parse(input).unwrap()).await.unwrap();
    assert_eq!(saved.bot_token_secret, "SLACK_BOT");
    let tested = store.record_slack_test(Ok(("T1", "Acme", "U0BOT"))).await.unwrap().unwrap();
    assert_eq!((tested.team_id.as_deref(), tested.bot_user_id.as_deref()), (Some("T1"), Some("U0BOT")));
    let failed = store.record_slack_test(Err("invalid_auth")).await.unwrap().unwrap();
    assert_eq!(failed.test_error.as_deref(), Some("invalid_auth"));
    assert_eq!(failed.team_id.as_deref(), Some("T1"), "a failed test keeps what the last good one learnt");
    assert!(store.delete_slack_settings().await.unwrap());
    assert!(!store.delete_slack_settings().await.unwrap());

    assert!(store.see_slack_signature("abc").await.unwrap());
    assert!(!store.see_slack_signature("abc").await.unwrap(), "a signature seen before is a replay");
    assert_eq!(store.prune_slack_signatures(viberglass_store::now() + time::Duration::seconds(1)).await.unwrap(), 1);
    assert!(store.see_slack_signature("abc").await.unwrap());

    assert!(store.enqueue_slack("view:V1", "file", &json!({"user": "U1"})).await.unwrap());
    assert!(!store.enqueue_slack("view:V1", "file", &json!({"user": "U1"})).await.unwrap(), "kept once");
    let items = store.claim_slack_inbox(10, lease()).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!((items[0].kind.as_str(), items[0].attempts), ("file", 1));
    assert!(store.claim_slack_inbox(10, lease()).await.unwrap().is_empty(), "held by its claimer");
    let mut stale = items[0].clone();
    stale.lease = viberglass_store::now();
    assert!(!store.finish_slack_inbox(&stale, true, "x", None).await.unwrap(), "only the lease holder finishes it");
    let retry = viberglass_store::now() - time::Duration::seconds(1);
    assert!(store.finish_slack_inbox(&items[0], false, "Slack was down", Some(retry)).await.unwrap());
    let again = store.claim_slack_inbox(10, lease()).await.unwrap();
    assert_eq!(again[0].attempts, 2);
    assert!(store.finish_slack_inbox(&again[0], true, "filed ticket x", None).await.unwrap());
    assert!(store.claim_slack_inbox(10, lease()).await.unwrap().is_empty());
    let recent = store.recent_slack_inbox(5).await.unwrap();
    assert_eq!((recent[0].status.as_str(), recent[0].outcome.as_deref()), ("done", Some("filed ticket x")));
}

async fn threads_bind_one_ticket_each_and_unlinking_drops_unsent_messages(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = ticket(&store, "Cart empties").await;
    let b = ticket(&store, "Search is slow").await;
    let origin = uuid::Uuid::now_v7();
    let filed = NewSlackThread {
        ticket_id: a.id,
        channel: "C1".into(),
        thread_ts: None,
        clanker: Some("scripted".into()),
        origin: Some(origin),
        linked_by: None,
        linked_via: "slack".into(),
    };
    let thread = store.bind_slack_thread(&filed, Some(json!({"text": "New ticket"}))).await.unwrap();
    assert_eq!(thread.thread_ts, None);
    assert_eq!(store.slack_thread_by_origin(origin).await.unwrap().unwrap().id, thread.id);
    let dup = store.bind_slack_thread(&NewSlackThread { ticket_id: b.id, ..filed.clone() }, None).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "one thread per /viberator request: {dup:?}");

    // The root message posted: its ts is the thread's.
    let root = store.claim_slack_posts(10, lease()).await.unwrap();
    assert_eq!(root.len(), 1);
    assert!(root[0].is_root);
    let sent = PostOutcome::Sent { ts: "1700000000.000001".into(), edit: false };
    assert!(store.record_slack_post(&root[0], &sent).await.unwrap());
    let live = store.live_slack_thread(a.id).await.unwrap().unwrap();
    assert_eq!(live.thread_ts.as_deref(), Some("1700000000.000001"));
    assert_eq!(store.slack_thread_at("C1", "1700000000.000001").await.unwrap().unwrap().ticket_id, a.id);

    // Another ticket cannot take a live thread.
    let by_hand = NewSlackThread {
        ticket_id: b.id,
        channel: "C1".into(),
        thread_ts: Some("1700000000.000001".into()),
        clanker: None,
        origin: None,
        linked_by: None,
        linked_via: "ui".into(),
    };
    match store.bind_slack_thread(&by_hand, None).await {
        Err(StoreError::Conflict { field, .. }) => assert_eq!(field, "thread"),
        other => panic!("expected a conflict on the thread, got {other:?}"),
    }

    // A pending message, then the ticket moves to another thread: the old one's unsent message is dropped.
    let pending = NewSlackPost {
        key: format!("{}:job:1", live.id),
        thread_id: Some(live.id),
        is_root: false,
        channel: "C1".into(),
        method: "message",
        body: json!({"text": "queued"}),
    };
    assert!(store.upsert_slack_post(&pending).await.unwrap());
    let moved = NewSlackThread {
        ticket_id: a.id,
        thread_ts: Some("1700000099.000001".into()),
        channel: "C2".into(),
        ..by_hand
    };
    let new = store.bind_slack_thread(&moved, None).await.unwrap();
    assert_eq!(store.live_slack_thread(a.id).await.unwrap().unwrap().id, new.id);
    let old_posts = store.slack_posts_of(live.id).await.unwrap();
    let dropped = old_posts.iter().find(|p| p.key.ends_with(":job:1")).unwrap();
    assert_eq!(dropped.status, SlackPostStatus::Failed);
    assert!(dropped.last_error.as_deref().unwrap().contains("unlinked"));
    assert!(store.claim_slack_posts(10, lease()).await.unwrap().is_empty());
    assert_eq!(store.slack_thread_at("C1", "1700000000.000001").await.unwrap(), None, "the old thread is free");

    let unlinked = store.unlink_slack_thread(a.id, None).await.unwrap().unwrap();
    assert_eq!(unlinked.id, new.id);
    assert!(unlinked.unlinked_at.is_some());
    assert_eq!(store.unlink_slack_thread(a.id, None).await.unwrap(), None);
    assert_eq!(store.slack_threads_of(a.id).await.unwrap().len(), 2);
}

async fn messages_are_sent_once_per_version_by_their_lease_holder(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = ticket(&store, "Cart empties").await;
    let thread = NewSlackThread {
        ticket_id: a.id,
        channel: "C1".into(),
        thread_ts: None,
        clanker: None,
        origin: None,
        linked_by: None,
        linked_via: "slack".into(),
    };
    let thread = store.bind_slack_thread(&thread, Some(json!({"text": "root"}))).await.unwrap();
    let job = NewSlackPost {
        key: format!("{}:job:1", thread.id),
        thread_id: Some(thread.id),
        is_root: false,
        channel: "C1".into(),
        method: "message",
        body: json!({"text": "queued"}),
    };
    assert!(store.upsert_slack_post(&job).await.unwrap());
    assert!(!store.upsert_slack_post(&job).await.unwrap(), "the same body again changes nothing");

    // Only the root is due until it is posted.
    let first = store.claim_slack_posts(10, lease()).await.unwrap();
    assert_eq!(first.iter().map(|p| p.is_root).collect::<Vec<_>>(), vec![true]);
    store.record_slack_post(&first[0], &PostOutcome::Sent { ts: "1.000001".into(), edit: false }).await.unwrap();
    let claimed = store.claim_slack_posts(10, lease()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].thread_ts.as_deref(), claimed[0].version), (Some("1.000001"), 1));
    assert!(store.claim_slack_posts(10, lease()).await.unwrap().is_empty(), "held: nobody else sends it");

    // A change while it is being sent: the send records version 1, and version 2 is due next as an edit.
    let started = NewSlackPost { body: json!({"text": "running"}), ..job.clone() };
    assert!(store.upsert_slack_post(&started).await.unwrap());
    let mut lost = claimed[0].clone();
    lost.lease = viberglass_store::now();
    assert!(!store.record_slack_post(&lost, &PostOutcome::Sent { ts: "2.000001".into(), edit: false }).await.unwrap());
    assert!(
        store.record_slack_post(&claimed[0], &PostOutcome::Sent { ts: "2.000001".into(), edit: false }).await.unwrap()
    );
    let edit = store.claim_slack_posts(10, lease()).await.unwrap();
    assert_eq!(
        (edit[0].version, edit[0].ts.as_deref(), edit[0].body["text"].as_str()),
        (2, Some("2.000001"), Some("running"))
    );

    // A rate limit: retried at its time, not before.
    let later = viberglass_store::now() + time::Duration::seconds(30);
    store.record_slack_post(&edit[0], &PostOutcome::Retry { at: later, error: "rate limited".into() }).await.unwrap();
    assert!(store.claim_slack_posts(10, lease()).await.unwrap().is_empty());
    let post = store.slack_post(&job.key).await.unwrap().unwrap();
    assert_eq!((post.status, post.last_error.as_deref()), (SlackPostStatus::Pending, Some("rate limited")));

    // Failed for good, then a new version tries again; a message gone from Slack is posted anew.
    let other = NewSlackPost { key: format!("{}:pr:x", thread.id), body: json!({"text": "pr"}), ..job.clone() };
    store.upsert_slack_post(&other).await.unwrap();
    let pr = store.claim_slack_posts(10, lease()).await.unwrap();
    store.record_slack_post(&pr[0], &PostOutcome::Failed { error: "not_in_channel".into() }).await.unwrap();
    assert_eq!(store.slack_post(&other.key).await.unwrap().unwrap().status, SlackPostStatus::Failed);
    store.upsert_slack_post(&NewSlackPost { body: json!({"text": "pr updated"}), ..other.clone() }).await.unwrap();
    let retried = store.claim_slack_posts(10, lease()).await.unwrap();
    assert_eq!(retried[0].attempts, 1, "a new version starts its attempts over");
    store.record_slack_post(&retried[0], &PostOutcome::Sent { ts: "3.000001".into(), edit: false }).await.unwrap();
    store.upsert_slack_post(&NewSlackPost { body: json!({"text": "pr merged"}), ..other.clone() }).await.unwrap();
    let gone = store.claim_slack_posts(10, lease()).await.unwrap();
    store.record_slack_post(&gone[0], &PostOutcome::Lost { error: "message_not_found".into() }).await.unwrap();
    let anew = store.claim_slack_posts(10, lease()).await.unwrap();
    assert_eq!(anew[0].ts, None, "posted anew");
    store.record_slack_post(&anew[0], &PostOutcome::Sent { ts: "4.000001".into(), edit: false }).await.unwrap();
    let done = store.slack_post(&other.key).await.unwrap().unwrap();
    assert_eq!((done.status, done.ts.as_deref()), (SlackPostStatus::Sent, Some("4.000001")));
    assert_eq!(store.slack_posts_of(thread.id).await.unwrap().len(), 3);
}
