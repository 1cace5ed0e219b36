//! Outbound webhooks: subscriptions with sealed credentials, deliveries owed
//! once per event and subscription, claimed under a lease by one owner at a
//! time, attempts recorded with their effect on the subscription, listing,
//! redelivery and counts.

use serde_json::json;
use viberglass_domain::subscription::NewSubscription;
use viberglass_domain::{
    AttemptError, OutboundAttempt, OutboundStatus, PageRequest, SubscriptionInput, SubscriptionScope,
};
use viberglass_store::{AfterAttempt, NewOutbound, SealedValue, Store, StoreError};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(
    subscriptions_keep_their_scope_and_sealed_credentials,
    deliveries_are_owed_once_and_claimed_by_one_owner,
    attempts_move_deliveries_and_the_failing_streak
);

fn sealed(tag: u8) -> SealedValue {
    SealedValue { ciphertext: vec![tag; 24], nonce: vec![tag; 12], key_id: format!("k{tag}") }
}

fn new_sub(scope: SubscriptionScope, json: serde_json::Value) -> viberglass_domain::Subscription {
    let input: SubscriptionInput = serde_json::from_value(json).unwrap();
    NewSubscription::parse(scope, input, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(), viberglass_store::now())
        .unwrap()
        .subscription
}

fn owed(sub: viberglass_domain::SubscriptionId, event: uuid::Uuid) -> NewOutbound {
    NewOutbound { subscription_id: sub, event_id: event, event_type: "ticket.filed".into(), body: "{}".into() }
}

fn attempt(n: i64, error: Option<&str>) -> OutboundAttempt {
    OutboundAttempt {
        attempt: n,
        started_at: viberglass_store::now(),
        duration_ms: 12,
        status_code: if error.is_some() { Some(500) } else { Some(200) },
        response: Some("ok".into()),
        error_kind: error.map(|_| AttemptError::Status),
        error: error.map(str::to_owned),
        server: "host-a/1".into(),
    }
}

async fn subscriptions_keep_their_scope_and_sealed_credentials(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(json!({"name": "Shop"}))).await.unwrap();
    let instance =
        new_sub(SubscriptionScope::Instance, json!({"url": "https://a.example/h", "events": ["job.failed"]}));
    let mine = new_sub(SubscriptionScope::Project(project.id), json!({"url": "https://b.example/h"}));
    store.create_subscription(&instance, &sealed(1)).await.unwrap();
    let created = store.create_subscription(&mine, &sealed(2)).await.unwrap();
    assert_eq!(store.list_subscriptions(None).await.unwrap().len(), 1);
    let listed = store.list_subscriptions(Some(project.id)).await.unwrap();
    assert_eq!(listed, vec![created.clone()]);
    let stored = store.get_subscription(mine.id).await.unwrap();
    assert_eq!(stored.credentials, sealed(2));
    assert_eq!(stored.subscription.events, Vec::new());

    // Guarded saves: a stale read changes nothing.
    let mut changed = stored.subscription.clone();
    changed.description = "ops".into();
    changed.active = false;
    changed.disabled_reason = Some("by hand".into());
    let saved = store.save_subscription(&changed, &sealed(3), stored.subscription.updated_at).await.unwrap().unwrap();
    assert_eq!(saved.description, "ops");
    assert!(store.save_subscription(&changed, &sealed(4), stored.subscription.updated_at).await.unwrap().is_none());
    let again = store.get_subscription(mine.id).await.unwrap();
    assert_eq!(again.credentials, sealed(3));
    assert!(!again.subscription.active);
    assert_eq!(again.subscription.disabled_reason.as_deref(), Some("by hand"));

    // An event of the project at a time: active instance-wide ones and the project's, created by then.
    let at = viberglass_store::now();
    let targets = store.subscriptions_for_event(Some(project.id), at).await.unwrap();
    assert_eq!(targets.iter().map(|s| s.id).collect::<Vec<_>>(), vec![instance.id], "the project's one is off");
    let earlier = at - time::Duration::hours(1);
    assert!(store.subscriptions_for_event(Some(project.id), earlier).await.unwrap().is_empty());
    // What the outbox consumer reads once per batch: every active one, whatever its scope.
    let active = store.active_subscriptions(10).await.unwrap();
    assert_eq!(active.iter().map(|s| s.id).collect::<Vec<_>>(), vec![instance.id], "the inactive one is left out");
    assert!(store.active_subscriptions(0).await.unwrap().is_empty(), "the limit holds");

    assert!(store.reseal_subscription(instance.id, &sealed(1), &sealed(9)).await.unwrap());
    assert!(!store.reseal_subscription(instance.id, &sealed(1), &sealed(8)).await.unwrap(), "a concurrent change wins");
    let all = store.subscription_credentials().await.unwrap();
    assert!(all.contains(&(instance.id, sealed(9))));
    assert_eq!(store.count_subscriptions(None).await.unwrap(), 1);
    assert_eq!(store.count_subscriptions(Some(project.id)).await.unwrap(), 1);
    assert!(matches!(
        store.get_subscription(viberglass_domain::SubscriptionId::new()).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn deliveries_are_owed_once_and_claimed_by_one_owner(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let sub = new_sub(SubscriptionScope::Instance, json!({"url": "https://a.example/h"}));
    store.create_subscription(&sub, &sealed(1)).await.unwrap();
    let events: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
    let rows: Vec<NewOutbound> = events.iter().map(|e| owed(sub.id, *e)).collect();
    assert_eq!(store.enqueue_outbound(&rows).await.unwrap(), 5);
    assert_eq!(store.enqueue_outbound(&rows).await.unwrap(), 0, "an event handled twice is owed once");

    let lease = time::Duration::seconds(30);
    let a = store.claim_outbound("a", 3, 100, lease).await.unwrap();
    let b = store.claim_outbound("b", 10, 100, lease).await.unwrap();
    assert_eq!((a.len(), b.len()), (3, 2));
    assert!(a.iter().all(|d| !b.iter().any(|e| e.id == d.id)), "no delivery held by two owners");
    assert!(store.claim_outbound("c", 10, 100, lease).await.unwrap().is_empty(), "all leased");
    // A lapsed lease passes to the next owner.
    store.enqueue_outbound(&[owed(sub.id, uuid::Uuid::now_v7())]).await.unwrap();
    let x = store.claim_outbound("x", 10, 100, time::Duration::ZERO).await.unwrap();
    let y = store.claim_outbound("y", 10, 100, lease).await.unwrap();
    assert_eq!(x.len(), 1);
    assert_eq!(y.iter().map(|d| d.id).collect::<Vec<_>>(), vec![x[0].id]);
    let d = &a[0];
    assert_eq!(d.body, "{}");
    assert_eq!(d.attempts, 0);
    assert!(store.has_pending(sub.id, "ticket.filed").await.unwrap());
    assert!(!store.has_pending(sub.id, "webhook.test").await.unwrap());
    // A held delivery is not redelivered under its holder; a released one is claimable again.
    assert!(!store.redeliver_outbound(sub.id, d.id).await.unwrap(), "an attempt holds it");
    store.release_outbound("someone-else", &[d.id], viberglass_store::now()).await.unwrap();
    assert!(store.claim_outbound("c", 10, 100, lease).await.unwrap().is_empty(), "only the holder releases");
    store.release_outbound("a", &[d.id], viberglass_store::now()).await.unwrap();
    let taken = store.claim_outbound("c", 10, 100, lease).await.unwrap();
    assert_eq!(taken.iter().map(|t| t.id).collect::<Vec<_>>(), vec![d.id]);

    // An owner holding its share of a subscription is passed over for it; others are not.
    let busy = new_sub(SubscriptionScope::Instance, json!({"url": "https://busy.example/h"}));
    store.create_subscription(&busy, &sealed(1)).await.unwrap();
    let three: Vec<NewOutbound> = (0..3).map(|_| owed(busy.id, uuid::Uuid::now_v7())).collect();
    store.enqueue_outbound(&three).await.unwrap();
    assert_eq!(store.claim_outbound("p", 10, 2, lease).await.unwrap().len(), 3, "a claim takes what is due");
    let more: Vec<NewOutbound> = (0..2).map(|_| owed(busy.id, uuid::Uuid::now_v7())).collect();
    store.enqueue_outbound(&more).await.unwrap();
    assert!(store.claim_outbound("p", 10, 2, lease).await.unwrap().is_empty(), "p holds its share");
    assert_eq!(store.claim_outbound("q", 10, 2, lease).await.unwrap().len(), 2, "q does not");

    // A disabled subscription's deliveries are not claimed.
    let other = new_sub(SubscriptionScope::Instance, json!({"url": "https://c.example/h"}));
    store.create_subscription(&other, &sealed(1)).await.unwrap();
    store.enqueue_outbound(&[owed(other.id, uuid::Uuid::now_v7())]).await.unwrap();
    assert!(store.disable_subscription(other.id, "gone").await.unwrap());
    assert!(!store.disable_subscription(other.id, "gone").await.unwrap(), "once");
    assert!(store.claim_outbound("d", 10, 100, lease).await.unwrap().is_empty());
}

async fn attempts_move_deliveries_and_the_failing_streak(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store: Store = db.store().await;
    let sub = new_sub(SubscriptionScope::Instance, json!({"url": "https://a.example/h"}));
    store.create_subscription(&sub, &sealed(1)).await.unwrap();
    let (e1, e2) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    store.enqueue_outbound(&[owed(sub.id, e1), owed(sub.id, e2)]).await.unwrap();
    let claimed = store.claim_outbound("a", 10, 100, time::Duration::seconds(30)).await.unwrap();
    let (first, second) = (&claimed[0], &claimed[1]);

    // A failure retries later and starts the subscription's failing streak.
    let retry_at = viberglass_store::now() + time::Duration::milliseconds(50);
    let (moved, failing) = store
        .record_outbound_attempt(first, "a", &attempt(1, Some("500")), &AfterAttempt::Retry(retry_at))
        .await
        .unwrap();
    assert!(moved && failing.is_some());
    // Someone who does not hold the lease records the attempt but moves nothing.
    let (moved, _) =
        store.record_outbound_attempt(second, "intruder", &attempt(1, None), &AfterAttempt::Succeeded).await.unwrap();
    assert!(!moved, "not the holder");
    let untouched = store.get_outbound(second.id).await.unwrap();
    assert_eq!((untouched.status, untouched.attempts), (OutboundStatus::Pending, 0));
    let (moved, failing) =
        store.record_outbound_attempt(second, "a", &attempt(2, None), &AfterAttempt::Succeeded).await.unwrap();
    assert!(moved && failing.is_none(), "a success ends the streak");
    let done = store.get_outbound(second.id).await.unwrap();
    assert_eq!(done.status, OutboundStatus::Succeeded);
    assert!(done.delivered_at.is_some());
    assert_eq!(done.last_status_code, Some(200));

    let pending = store.get_outbound(first.id).await.unwrap();
    assert_eq!((pending.status, pending.attempts), (OutboundStatus::Pending, 1));
    assert_eq!(pending.attempt_log.len(), 1);
    assert_eq!(pending.attempt_log[0].error_kind, Some(AttemptError::Status));
    assert_eq!(pending.last_error.as_deref(), Some("500"));
    let failing_list = store.list_outbound(sub.id, None, true, PageRequest { limit: 10, after: None }).await.unwrap();
    assert_eq!(failing_list.items.iter().map(|d| d.id).collect::<Vec<_>>(), vec![first.id]);

    // Due again after its wait; 410 gives up and turns the subscription off.
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    let again = store.claim_outbound("b", 10, 100, time::Duration::seconds(30)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    let gone = AfterAttempt::GiveUp { gone: Some("410 Gone".into()) };
    store.record_outbound_attempt(&again[0], "b", &attempt(2, Some("410")), &gone).await.unwrap();
    let off = store.get_subscription(sub.id).await.unwrap().subscription;
    assert!(!off.active);
    assert_eq!(off.disabled_reason.as_deref(), Some("410 Gone"));
    let failed = store.get_outbound(first.id).await.unwrap();
    assert_eq!(failed.status, OutboundStatus::Failed);
    assert_eq!(failed.attempt_log.len(), 2);

    let counts = store.subscription_counts(sub.id).await.unwrap();
    assert_eq!(counts, (0, 0, 1, 1));
    let by_status = store.outbound_counts().await.unwrap();
    assert!(by_status.contains(&("failed".to_owned(), 1)) && by_status.contains(&("succeeded".to_owned(), 1)));
    let only_failed = store
        .list_outbound(sub.id, Some(OutboundStatus::Failed), false, PageRequest { limit: 10, after: None })
        .await
        .unwrap();
    assert_eq!(only_failed.items.len(), 1);

    // Redelivery: every failed one since a time, or one whatever its state.
    let since = viberglass_store::now() - time::Duration::hours(1);
    assert_eq!(store.redeliver_failed_outbound(sub.id, since).await.unwrap(), 1);
    assert_eq!(store.get_outbound(first.id).await.unwrap().status, OutboundStatus::Pending);
    assert!(store.redeliver_outbound(sub.id, second.id).await.unwrap());
    assert!(!store.redeliver_outbound(viberglass_domain::SubscriptionId::new(), second.id).await.unwrap());
    assert_eq!(store.outbound_body(second.id).await.unwrap(), "{}");
    // Retention: a succeeded delivery's body goes after a while (its row and attempts stay), and it can no
    // longer be redelivered.
    let kept = new_sub(SubscriptionScope::Instance, json!({"url": "https://kept.example/h"}));
    store.create_subscription(&kept, &sealed(1)).await.unwrap();
    store.enqueue_outbound(&[owed(kept.id, uuid::Uuid::now_v7())]).await.unwrap();
    let held = store.claim_outbound("r", 10, 100, time::Duration::seconds(30)).await.unwrap();
    let (moved, _) =
        store.record_outbound_attempt(&held[0], "r", &attempt(1, None), &AfterAttempt::Succeeded).await.unwrap();
    assert!(moved);
    assert_eq!(store.prune_outbound_bodies(viberglass_store::now() - time::Duration::hours(1)).await.unwrap(), 0);
    assert_eq!(store.prune_outbound_bodies(viberglass_store::now() + time::Duration::seconds(1)).await.unwrap(), 1);
    assert_eq!(store.outbound_body(held[0].id).await.unwrap(), "");
    assert!(!store.redeliver_outbound(kept.id, held[0].id).await.unwrap(), "nothing left to send");
    let row = store.get_outbound(held[0].id).await.unwrap();
    assert_eq!((row.status, row.attempt_log.len()), (OutboundStatus::Succeeded, 1));

    // Paging: newest first, one at a time.
    let page = store.list_outbound(sub.id, None, false, PageRequest { limit: 1, after: None }).await.unwrap();
    assert_eq!(page.items[0].id, second.id);
    let next = PageRequest::parse(Some(1), page.next_cursor.as_deref()).unwrap();
    let page = store.list_outbound(sub.id, None, false, next).await.unwrap();
    assert_eq!(page.items[0].id, first.id);
}
