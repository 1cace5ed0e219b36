//! The outbox: events commit with their changes, and consumers read them
//! in order, one lease holder at a time.

use std::time::Duration;

use viberglass_domain::protocol::{JobResult, PullRequestRef};
use viberglass_domain::{EventType, NewTicket, Phase, TicketInput};
use viberglass_store::Outcome;
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::jobs::spec;
use crate::projects::new_project;

backend_tests!(
    a_change_and_its_event_commit_together_or_not_at_all,
    a_jobs_life_is_told_in_order_in_the_outbox,
    only_the_lease_holder_reads_a_consumer_and_an_expired_lease_passes_on,
);

/// A queued job of `phase` for `ticket`.
async fn queued(
    store: &viberglass_store::Store,
    ticket: &viberglass_domain::Ticket,
    phase: Phase,
) -> viberglass_domain::Job {
    let new = viberglass_store::NewJob {
        id: viberglass_domain::JobId::new(),
        project_id: ticket.project_id,
        ticket_id: Some(ticket.id),
        clanker_id: None,
        spec: spec(phase),
        requested_by: None,
        request_id: None,
    };
    store.create_job(new).await.unwrap()
}

fn ticket_input(title: &str) -> NewTicket {
    let input: TicketInput = serde_json::from_value(serde_json::json!({"title": title})).unwrap();
    NewTicket::parse(input).unwrap()
}

async fn a_change_and_its_event_commit_together_or_not_at_all(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    let before = store.list_outbox(0, 1000).await.unwrap().len();

    // The event write fails between the change and the commit: neither lands.
    store.inject_outbox_failure();
    assert!(store.create_ticket(project.id, ticket_input("Lost"), None).await.is_err());
    let tickets = store.list_tickets(&Default::default(), viberglass_domain::PageRequest::default()).await.unwrap();
    assert!(tickets.items.is_empty(), "the ticket rolled back with its event");
    assert_eq!(store.list_outbox(0, 1000).await.unwrap().len(), before, "and no event was written");

    // The same for a job's end: it stays live, with no event.
    let ticket = store.create_ticket(project.id, ticket_input("Kept"), None).await.unwrap();
    let job = queued(&store, &ticket, Phase::Research).await;
    store.inject_outbox_failure();
    let done = Outcome::Completed { result: JobResult::default(), summary: "ok".into() };
    assert!(store.finish_job(job.id, done.clone()).await.is_err());
    assert!(!store.get_job(job.id).await.unwrap().status.is_terminal(), "the job did not end");
    let types: Vec<EventType> = store.list_outbox(0, 1000).await.unwrap().iter().map(|e| e.event_type).collect();
    assert!(!types.contains(&EventType::JobCompleted), "{types:?}");
    // Without the fault it ends, and says so.
    assert!(store.finish_job(job.id, done).await.unwrap());
    let types: Vec<EventType> = store.list_outbox(0, 1000).await.unwrap().iter().map(|e| e.event_type).collect();
    assert_eq!(types.iter().filter(|t| **t == EventType::JobCompleted).count(), 1, "{types:?}");
}

async fn a_jobs_life_is_told_in_order_in_the_outbox(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    let ticket = store.create_ticket(project.id, ticket_input("Fix it"), None).await.unwrap();
    let job = queued(&store, &ticket, Phase::Execution).await;
    store.claim_next_job("h").await.unwrap();
    store.heartbeat_job(job.id).await.unwrap();
    store.heartbeat_job(job.id).await.unwrap();
    let pr = PullRequestRef {
        number: 7,
        url: "https://forge.example/acme/app/pull/7".into(),
        title: "Fix it".into(),
        head: "viberglass/t1".into(),
        created: true,
    };
    let result = JobResult {
        branch: Some("viberglass/t1".into()),
        commit: Some("abc123".into()),
        pushed: true,
        pull_request: Some(pr.clone()),
        ..JobResult::default()
    };
    assert!(store.finish_job(job.id, Outcome::Completed { result, summary: "done".into() }).await.unwrap());

    let events = store.list_outbox(0, 1000).await.unwrap();
    let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [
            EventType::TicketFiled,
            EventType::JobQueued,
            EventType::JobStarted,
            EventType::PullRequestOpened,
            EventType::JobCompleted
        ],
        "one start however many heartbeats"
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.iter().skip(1).all(|e| e.ticket_id == Some(ticket.id) && e.project_id == Some(project.id)));
    assert_eq!(events[3].data["url"], pr.url);
    // The ticket links the pull request in the same transaction, and the job keeps its typed result.
    assert_eq!(store.get_ticket(ticket.id).await.unwrap().pull_request_url.as_deref(), Some(pr.url.as_str()));
    let ended = store.get_job(job.id).await.unwrap();
    assert_eq!(ended.pull_request_url.as_deref(), Some(pr.url.as_str()));
    assert_eq!((ended.branch.as_deref(), ended.commit_sha.as_deref()), (Some("viberglass/t1"), Some("abc123")));
    assert_eq!(ended.result.unwrap().pull_request, Some(pr));
}

async fn only_the_lease_holder_reads_a_consumer_and_an_expired_lease_passes_on(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    for n in 0..3 {
        store.create_ticket(project.id, ticket_input(&format!("t{n}")), None).await.unwrap();
    }
    let long = Duration::from_secs(60);
    let cursor = store.lease_consumer("test", "server-a", long).await.unwrap();
    assert_eq!(cursor, Some(0));
    assert_eq!(store.lease_consumer("test", "server-b", long).await.unwrap(), None, "a runs it");
    let events = store.list_outbox(0, 2).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(!store.advance_consumer("test", "server-b", events[1].seq, 2, None, long).await.unwrap());
    assert!(store.advance_consumer("test", "server-a", events[1].seq, 2, None, long).await.unwrap());
    assert_eq!(store.lease_consumer("test", "server-a", long).await.unwrap(), Some(events[1].seq), "it resumes");
    // server-a dies: its lease lapses, and server-b resumes where a stopped.
    assert!(store.advance_consumer("test", "server-a", events[1].seq, 0, None, Duration::ZERO).await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.lease_consumer("test", "server-b", long).await.unwrap(), Some(events[1].seq));
    let rest = store.list_outbox(events[1].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 1);
    let states = store.consumer_states().await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!((states[0].owner.as_deref(), states[0].handled, states[0].pending), (Some("server-b"), 2, 1));
    // The metrics' view: one event behind, as old as that event.
    let lag = store.consumer_lag().await.unwrap();
    assert_eq!((lag[0].name.as_str(), lag[0].pending), ("test", 1));
    let age = (time::OffsetDateTime::now_utc() - rest[0].created_at).as_seconds_f64();
    assert!(lag[0].lag_seconds > 0.0 && lag[0].lag_seconds <= age + 1.0, "{lag:?}, the event is {age} s old");
    assert!(store.advance_consumer("test", "server-b", rest[0].seq, 1, None, long).await.unwrap());
    let caught_up = store.consumer_lag().await.unwrap();
    assert_eq!((caught_up[0].pending, caught_up[0].lag_seconds), (0, 0.0), "caught up: no lag");
    store.release_consumer("test", "server-b").await.unwrap();
    assert!(store.lease_consumer("test", "server-c", long).await.unwrap().is_some(), "released: anyone may take it");
}
