//! Inbound webhooks: configurations with their sealed secret, deliveries
//! applied exactly once with their ticket change and events, redelivery,
//! payload retention, ticket sources and the feedback queue.

use serde_json::json;
use viberglass_domain::{
    DeliveryFilter, DeliveryId, DeliveryStatus, NewTicket, NewWebhookConfig, PageRequest, Phase, TicketInput,
    TicketSource, WebhookConfigInput,
};
use viberglass_store::{Applied, DeliveryChange, NewDelivery, NewFeedback, RequestedRun, SealedValue, Store};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(
    configurations_keep_their_sealed_secret,
    deliveries_apply_once_with_their_ticket,
    feedback_is_queued_once_and_claimed
);

fn sealed(tag: u8) -> SealedValue {
    SealedValue { ciphertext: vec![tag; 24], nonce: vec![tag; 12], key_id: format!("k{tag}") }
}

async fn config(store: &Store, project: viberglass_domain::ProjectId) -> viberglass_domain::WebhookConfig {
    let input: WebhookConfigInput = serde_json::from_value(json!({"provider": "github", "clanker": "c"})).unwrap();
    let new = NewWebhookConfig::parse(project, input, viberglass_store::now()).unwrap();
    store.create_webhook_config(&new.config, &sealed(1)).await.unwrap().config
}

fn delivery(config: &viberglass_domain::WebhookConfig, key: &str) -> NewDelivery {
    NewDelivery {
        id: DeliveryId::new(),
        config_id: Some(config.id),
        project_id: Some(config.project_id),
        provider: "github".into(),
        delivery_key: key.into(),
        event: "issues.opened".into(),
        status: DeliveryStatus::Processed,
        error_message: None,
        response_status: 200,
        ticket_id: None,
        headers: json!({"x-github-event": "issues", "x-gitlab-token": "the-secret"}),
        payload: Some(b"{\"title\": \"x\"}".to_vec()),
        body_sha256: format!("body-of-{key}"),
        received_at: viberglass_store::now(),
    }
}

fn ticket(project: viberglass_domain::ProjectId, external: &str) -> viberglass_domain::Ticket {
    let input = TicketInput {
        title: Some("Cart forgets items".into()),
        source: Some("github".into()),
        external_id: Some(external.into()),
        ..TicketInput::default()
    };
    NewTicket::parse(input).unwrap().into_ticket(project, None, viberglass_store::now())
}

async fn configurations_keep_their_sealed_secret(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(json!({"name": "Shop"}))).await.unwrap();
    let created = config(&store, project.id).await;
    let stored = store.get_webhook_config(created.id).await.unwrap();
    assert_eq!(stored.config, created);
    assert_eq!(stored.secret, sealed(1));
    assert_eq!(store.list_webhook_configs(project.id).await.unwrap(), vec![created.clone()]);
    let changed = store.update_webhook_config(created.id, |c| c.bot_name = "shopbot".into(), None).await.unwrap();
    assert_eq!(changed.bot_name, "shopbot");
    assert_eq!(changed.secret_rotated_at, created.secret_rotated_at, "no new secret, no rotation");
    let rotated = store.update_webhook_config(created.id, |_| {}, Some(&sealed(2))).await.unwrap();
    assert!(rotated.secret_rotated_at > created.secret_rotated_at);
    assert_eq!(store.get_webhook_config(created.id).await.unwrap().secret, sealed(2));
    assert_eq!(store.webhook_secrets().await.unwrap(), vec![(created.id, sealed(2))]);
    store.reseal_webhook_secret(created.id, &sealed(3)).await.unwrap();
    let resealed = store.get_webhook_config(created.id).await.unwrap();
    assert_eq!((resealed.secret, resealed.config.secret_rotated_at), (sealed(3), rotated.secret_rotated_at));
}

async fn deliveries_apply_once_with_their_ticket(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(json!({"name": "Shop"}))).await.unwrap();
    let config = config(&store, project.id).await;
    let head = store.outbox_head().await.unwrap();

    let first = delivery(&config, "d-1");
    let filed = ticket(project.id, "acme/shop#1");
    let run = RequestedRun { phase: Phase::Research, clanker: "c".into(), reason: "new ticket".into() };
    let change = DeliveryChange::File {
        ticket: Box::new(filed.clone()),
        config_id: config.id,
        locator: json!({"repository": "acme/shop", "number": 1}),
        run: Some(run.clone()),
    };
    let Applied::Done(done) = store.apply_delivery(&first, &change, None).await.unwrap() else { panic!("not applied") };
    assert_eq!((done.status, done.ticket_id), (DeliveryStatus::Processed, Some(filed.id)));
    let events = store.list_outbox(head, 10).await.unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["ticket.filed", "ticket.run_requested"]);
    assert_eq!(events[1].data["delivery_id"], json!(first.id));
    let found = store.find_sourced_ticket(project.id, TicketSource::Github, "acme/shop#1").await.unwrap().unwrap();
    assert_eq!(found.id, filed.id);
    let (source_config, locator) = store.ticket_source(filed.id).await.unwrap().unwrap();
    assert_eq!((source_config, locator["number"].as_u64()), (config.id, Some(1)));

    // The same id again changes nothing and is recorded as a duplicate.
    let again = delivery(&config, "d-1");
    let Applied::Duplicate(dup) = store.apply_delivery(&again, &change, None).await.unwrap() else {
        panic!("applied twice")
    };
    assert_eq!(dup.status, DeliveryStatus::Duplicate);
    assert_eq!(store.list_outbox(head, 10).await.unwrap().len(), 2);
    // Another delivery filing the same source issue is told to update instead.
    let other = DeliveryChange::File {
        ticket: Box::new(ticket(project.id, "acme/shop#1")),
        config_id: config.id,
        locator: json!({}),
        run: None,
    };
    assert_eq!(store.apply_delivery(&delivery(&config, "d-2"), &other, None).await.unwrap(), Applied::TicketExists);

    // An update, a close and a comment's run.
    let mut edited = found.clone();
    edited.title = "Cart forgets every item".into();
    let update = DeliveryChange::Update { ticket: Box::new(edited), archive: true, run: None };
    let Applied::Done(_) = store.apply_delivery(&delivery(&config, "d-3"), &update, None).await.unwrap() else {
        panic!()
    };
    let now = store.get_ticket(filed.id).await.unwrap();
    assert_eq!(now.title, "Cart forgets every item");
    assert!(now.archived_at.is_some());
    let comment = DeliveryChange::Run { ticket: Box::new(now), run };
    let Applied::Done(ran) = store.apply_delivery(&delivery(&config, "d-4"), &comment, None).await.unwrap() else {
        panic!()
    };
    assert_eq!(ran.ticket_id, Some(filed.id));
    assert!(store.list_outbox(head, 10).await.unwrap().iter().any(|e| e.event_type.as_str() == "ticket.archived"));

    // A refused delivery keeps its payload; its redelivery takes over its row; notes change its status.
    let mut refused = delivery(&config, "d-5");
    refused.status = DeliveryStatus::Rejected;
    refused.response_status = 401;
    refused.error_message = Some("bad signature".into());
    let row = store.record_delivery(&refused).await.unwrap();
    assert_eq!((row.status, row.response_status), (DeliveryStatus::Rejected, 401));
    let again =
        store.redelivery_failed(row.id, DeliveryStatus::Rejected, "issues.opened", "still bad", 401).await.unwrap();
    assert_eq!((again.redeliveries, again.error_message.as_deref()), (1, Some("still bad")));
    let ignored = delivery(&config, "d-5");
    let Applied::Done(fixed) = store
        .apply_delivery(
            &NewDelivery { status: DeliveryStatus::Ignored, ..ignored },
            &DeliveryChange::Nothing,
            Some(row.id),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((fixed.id, fixed.status, fixed.redeliveries), (row.id, DeliveryStatus::Ignored, 2));
    store.note_delivery(fixed.id, DeliveryStatus::Failed, "the run could not start").await.unwrap();
    assert_eq!(store.get_delivery(fixed.id).await.unwrap().status, DeliveryStatus::Failed);

    let view = store.delivery_payload_view(row.id).await.unwrap();
    assert_eq!(view.headers["x-gitlab-token"], "(hidden)");
    assert_eq!(view.body.as_deref(), Some("{\"title\": \"x\"}"));
    let page = store
        .list_deliveries(
            &DeliveryFilter { project_id: Some(project.id), ..DeliveryFilter::default() },
            PageRequest { limit: 3, after: None },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    assert!(page.next_cursor.is_some());
    let duplicates = store
        .list_deliveries(
            &DeliveryFilter {
                config_id: Some(config.id),
                status: Some(DeliveryStatus::Duplicate),
                ..DeliveryFilter::default()
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(duplicates.items.len(), 1);
    let (counts, _) = store.webhook_counts().await.unwrap();
    assert!(counts.contains(&("github".to_owned(), "duplicate".to_owned(), 1)), "{counts:?}");
    let pruned = store.prune_delivery_payloads(viberglass_store::now() + time::Duration::seconds(1)).await.unwrap();
    assert!(pruned >= 4, "{pruned}");
    assert_eq!(store.delivery_payload(row.id).await.unwrap().1, None);
}

async fn feedback_is_queued_once_and_claimed(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(json!({"name": "Shop"}))).await.unwrap();
    let config = config(&store, project.id).await;
    let filed = ticket(project.id, "acme/shop#2");
    let change =
        DeliveryChange::File { ticket: Box::new(filed.clone()), config_id: config.id, locator: json!({}), run: None };
    store.apply_delivery(&delivery(&config, "f-1"), &change, None).await.unwrap();
    let event = uuid::Uuid::now_v7();
    let new = NewFeedback {
        event_id: event,
        ticket_id: filed.id,
        job_id: None,
        config_id: config.id,
        body: "started".into(),
        label: Some("fix-submitted".into()),
    };
    assert!(store.enqueue_feedback(&new).await.unwrap());
    assert!(!store.enqueue_feedback(&new).await.unwrap(), "one row per event");
    let claimed = store.claim_due_feedback(10, time::Duration::seconds(60)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(store.claim_due_feedback(10, time::Duration::seconds(60)).await.unwrap().is_empty(), "leased");
    store.record_feedback_attempt(claimed[0].id, Some("502"), Some(viberglass_store::now()), true).await.unwrap();
    let retry = store.claim_due_feedback(10, time::Duration::seconds(60)).await.unwrap();
    assert_eq!((retry.len(), retry[0].attempts), (1, 1));
    assert_eq!(retry[0].attempt_log[0]["commented"], true);
    store.record_feedback_attempt(retry[0].id, None, None, false).await.unwrap();
    let rows = store.list_feedback(filed.id).await.unwrap();
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("delivered", 2));
    assert!(store.claim_due_feedback(10, time::Duration::seconds(60)).await.unwrap().is_empty());
    assert_eq!(store.webhook_counts().await.unwrap().1, vec![("delivered".to_owned(), 1)]);
}
