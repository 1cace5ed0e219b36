use std::collections::HashSet;
use viberglass_domain::ComputeKind;
use viberglass_domain::protocol::{JobResult, Usage};

use viberglass_domain::{
    ClankerInput, EventKind, Failure, HarnessSpec, JobSpec, JobStatus, LogLevel, NewClanker, NewJobEvent, PageRequest,
    Phase, Project,
};
use viberglass_store::{JobFilter, NewJob, Outcome, Store, StoreError};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(
    clankers_round_trip_with_their_instruction_files,
    a_queued_job_is_claimed_once_then_heartbeats_make_it_active,
    claims_honour_project_and_clanker_limits_in_order,
    a_finished_job_cannot_be_moved_by_late_reports,
    cancelling_a_queued_job_ends_it_and_records_who,
    a_rerun_is_a_new_job_linked_to_the_one_it_repeats,
    worker_events_are_stored_once_in_order_and_progress_becomes_the_status,
    a_requeued_job_can_be_claimed_again,
    concurrent_claimers_take_each_job_exactly_once,
    concurrent_claimers_keep_project_and_clanker_limits_exact,
    agent_documents_become_revisions,
    usage_is_summed_per_project_and_ticket,
    a_ticket_remembers_its_work_branch_and_pull_request,
    job_changes_wake_the_dispatcher_and_reaper_of_every_server,
);

/// A job queued, requeued, claimed or ended on one server wakes the
/// dispatcher and reaper of every server listening (PostgreSQL), and always
/// those of the server that made the change, so they can sleep between
/// changes instead of polling.
async fn job_changes_wake_the_dispatcher_and_reaper_of_every_server(backend: TestBackend) {
    use std::time::Duration;
    let db = TestDb::new(backend).await;
    let here = db.store().await;
    let there = db.store().await;
    here.enable_credential_cache();
    there.enable_credential_cache();
    let listening = backend == TestBackend::Postgres;
    if listening {
        for store in [&here, &there] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !store.hears_job_changes() {
                assert!(std::time::Instant::now() < deadline, "the listener never started");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    } else {
        assert!(!here.hears_job_changes(), "SQLite has no listener: its loops keep polling");
    }
    let p = project(&here, "App", 5).await;
    // Starts each wait from no pending wake-up.
    let settle = |store: &Store| {
        let (d, r) = (store.dispatcher_wake(), store.reaper_wake());
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tokio::time::timeout(Duration::from_millis(10), d.notified()).await;
            let _ = tokio::time::timeout(Duration::from_millis(10), r.notified()).await;
        }
    };
    let woken = |store: &Store| {
        let (d, r) = (store.dispatcher_wake(), store.reaper_wake());
        async move {
            tokio::time::timeout(Duration::from_secs(5), d.notified()).await.is_ok()
                && tokio::time::timeout(Duration::from_secs(5), r.notified()).await.is_ok()
        }
    };
    type Step<'a> =
        (&'a str, Box<dyn Fn(&'a Store) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> + 'a>);
    let steps: Vec<Step> = vec![
        (
            "queued",
            Box::new(|s: &Store| {
                Box::pin(async {
                    s.create_job(job(&p, None)).await.unwrap();
                })
            }),
        ),
        (
            "claimed",
            Box::new(|s: &Store| {
                Box::pin(async {
                    s.claim_next_job("h").await.unwrap().unwrap();
                })
            }),
        ),
        (
            "requeued",
            Box::new(|s: &Store| {
                Box::pin(async {
                    let j = s.live_jobs(10).await.unwrap().pop().unwrap();
                    assert!(s.requeue_job(j.id, "no room", Duration::ZERO).await.unwrap());
                })
            }),
        ),
        (
            "ended",
            Box::new(|s: &Store| {
                Box::pin(async {
                    let j = s.claim_next_job("h2").await.unwrap().unwrap();
                    assert!(s.finish_job(j.id, Outcome::failed(Failure::internal("boom"))).await.unwrap());
                })
            }),
        ),
    ];
    for (what, step) in &steps {
        settle(&here).await;
        settle(&there).await;
        step(&here).await;
        assert!(woken(&here).await, "a job {what} here wakes this server's loops");
        if listening {
            assert!(woken(&there).await, "a job {what} on another server wakes this one's loops");
        }
    }
    // While nothing changes, nothing wakes them.
    settle(&there).await;
    if listening {
        assert!(
            tokio::time::timeout(Duration::from_millis(500), there.dispatcher_wake().notified()).await.is_err(),
            "a quiet database wakes nobody"
        );
    }
}

async fn a_ticket_remembers_its_work_branch_and_pull_request(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 5).await;
    let input: viberglass_domain::TicketInput = serde_json::from_value(serde_json::json!({"title": "t"})).unwrap();
    let t = store.create_ticket(p.id, viberglass_domain::NewTicket::parse(input).unwrap(), None).await.unwrap();
    assert_eq!(store.ticket_work_branch(t.id).await.unwrap(), None);
    let with_ticket = |branch: &str| {
        let mut new = job(&p, None);
        new.ticket_id = Some(t.id);
        new.spec.branch = branch.into();
        new
    };
    // Only executions that pushed their branch count; the latest wins.
    for (branch, outcome) in [("vg/first", true), ("vg/second", true), ("vg/failed", false)] {
        let j = store.create_job(with_ticket(branch)).await.unwrap();
        let pushed = JobResult { branch: Some(branch.into()), pushed: true, ..JobResult::default() };
        let outcome = if outcome {
            Outcome::Completed { result: pushed, summary: "ok".into() }
        } else {
            Outcome::failed(Failure::internal("boom"))
        };
        store.finish_job(j.id, outcome).await.unwrap();
    }
    assert_eq!(store.ticket_work_branch(t.id).await.unwrap().as_deref(), Some("vg/second"));
    store.set_ticket_pull_request(t.id, "https://forge.example/acme/app/pull/1").await.unwrap();
    let stored = store.get_ticket(t.id).await.unwrap();
    assert_eq!(stored.pull_request_url.as_deref(), Some("https://forge.example/acme/app/pull/1"));
    assert!(stored.updated_at > t.updated_at);
}

async fn usage_is_summed_per_project_and_ticket(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 5).await;
    let other = project(&store, "Other", 5).await;
    for (proj, tokens) in [(&p, 100u64), (&p, 50), (&other, 7)] {
        let j = store.create_job(job(proj, None)).await.unwrap();
        let usage = Usage { input_tokens: tokens, output_tokens: tokens / 2, cost_usd: Some(0.0125) };
        let result = JobResult { usage: Some(usage), ..JobResult::default() };
        store.finish_job(j.id, Outcome::Completed { result, summary: "ok".into() }).await.unwrap();
    }
    let summary = store.usage_summary(Some(p.id), None).await.unwrap();
    assert_eq!((summary.jobs, summary.input_tokens, summary.output_tokens), (2, 150, 75));
    assert!((summary.cost_usd - 0.025).abs() < 1e-9, "{summary:?}");
    assert_eq!(store.usage_summary(None, None).await.unwrap().jobs, 3);
    assert_eq!(store.job_counts().await.unwrap(), [("completed".to_owned(), 3)]);
}

pub fn spec(phase: Phase) -> JobSpec {
    JobSpec {
        phase,
        repository_url: "file:///srv/repo.git".into(),
        base_branch: "main".into(),
        branch: "viberglass/t1".into(),
        prompt: "Fix it".into(),
        harness: HarnessSpec::Command { command: vec!["true".into()] },
        instruction_files: Vec::new(),
        max_execution_secs: 60,
        heartbeat_interval_secs: 2,
        heartbeat_grace_secs: 60,
        keep_workspace_on_failure: false,
        ticket_title: "Fix it".into(),
        secret_names: Vec::new(),
        clanker_name: "runner".into(),
        scm: None,
        commit_author: Default::default(),
        agent_silence_secs: 300,
        traceparent: None,
    }
}

async fn project(store: &Store, name: &str, limit: u32) -> Project {
    store.create_project(new_project(serde_json::json!({"name": name, "max_concurrent_jobs": limit}))).await.unwrap()
}

async fn clanker(store: &Store, name: &str, limit: u32) -> viberglass_domain::Clanker {
    let input: ClankerInput = serde_json::from_value(serde_json::json!({
        "name": name, "agent": "command", "agent_settings": {"command": ["true"]}, "max_concurrent_jobs": limit,
        "instruction_files": [{"path": "AGENTS.md", "content": "Be brief."}, {"path": "skills/test.md", "content": "Run tests."}]
    }))
    .unwrap();
    store.create_clanker(NewClanker::parse(input).unwrap()).await.unwrap()
}

fn job(project: &Project, clanker: Option<&viberglass_domain::Clanker>) -> NewJob {
    NewJob {
        id: viberglass_domain::JobId::new(),
        project_id: project.id,

        ticket_id: None,
        clanker_id: clanker.map(|c| c.id),
        spec: spec(Phase::Execution),
        requested_by: None,
        request_id: None,
    }
}

async fn clankers_round_trip_with_their_instruction_files(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let created = clanker(&store, "Runner", 2).await;
    let read = store.get_clanker(created.id).await.unwrap();
    assert_eq!(read, created);
    assert_eq!(read.instruction_files.len(), 2);
    let by_slug = store.get_clanker_by_slug(&created.slug).await.unwrap();
    assert_eq!(by_slug.id, created.id);
    store
        .set_clanker_status(created.id, viberglass_domain::ClankerStatus::Active, Some("running unsandboxed".into()))
        .await
        .unwrap();
    let listed = store.list_clankers(PageRequest::default()).await.unwrap();
    assert_eq!(listed.items[0].status_message.as_deref(), Some("running unsandboxed"));
    // A Start a stopped server cut off: failed at the next boot, saying so; others are left alone.
    assert_eq!(store.fail_interrupted_deploys("interrupted").await.unwrap(), 0);
    store.set_clanker_status(created.id, viberglass_domain::ClankerStatus::Deploying, None).await.unwrap();
    assert_eq!(store.fail_interrupted_deploys("interrupted: Start it again").await.unwrap(), 1);
    let reset = store.get_clanker(created.id).await.unwrap();
    assert_eq!(reset.status, viberglass_domain::ClankerStatus::Failed);
    assert_eq!(reset.status_message.as_deref(), Some("interrupted: Start it again"));
    store
        .set_clanker_status(created.id, viberglass_domain::ClankerStatus::Active, Some("running unsandboxed".into()))
        .await
        .unwrap();
    let input: ClankerInput = serde_json::from_value(
        serde_json::json!({"name": "Runner", "agent": "command", "agent_settings": {"command": ["x"]}}),
    )
    .unwrap();
    let dup = store.create_clanker(NewClanker::parse(input).unwrap()).await;
    assert!(matches!(&dup, Err(StoreError::Conflict { field, .. }) if field == "slug"), "{dup:?}");

    // A change replaces the configuration, files and secrets, and keeps the status.
    let secret = viberglass_domain::SecretInput { name: Some("API_KEY".into()), ..Default::default() };
    store.create_secret(viberglass_domain::NewSecret::parse(secret).unwrap(), None, false).await.unwrap();
    let change: ClankerInput = serde_json::from_value(serde_json::json!({
        "description": "now with a key", "secrets": ["API_KEY"], "instruction_files": [{"path": "AGENTS.md", "content": "v2"}]
    }))
    .unwrap();
    let read = store.get_clanker(created.id).await.unwrap();
    let updated = store
        .update_clanker(created.id, read.updated_at, NewClanker::parse(change.clone().over(&read)).unwrap())
        .await
        .unwrap();
    let stale = store.update_clanker(created.id, read.updated_at, NewClanker::parse(change.over(&read)).unwrap()).await;
    assert!(matches!(stale, Err(StoreError::Contended { .. })), "an update from a stale read is refused: {stale:?}");
    assert_eq!(updated.description, "now with a key");
    assert_eq!(updated.secrets, ["API_KEY"]);
    assert_eq!(updated.instruction_files.len(), 1);
    assert_eq!(updated.status, viberglass_domain::ClankerStatus::Active);
    assert_eq!(updated.name, "Runner");
}

async fn a_queued_job_is_claimed_once_then_heartbeats_make_it_active(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 2).await;
    let queued = store.create_job(job(&p, None)).await.unwrap();
    assert_eq!(queued.status, JobStatus::Queued);
    assert!(queued.spec.is_none(), "the light view leaves the spec out");
    assert_eq!(store.job_spec(queued.id).await.unwrap().phase, Phase::Execution);
    let claimed = store.claim_next_job("hash-1").await.unwrap().expect("one job to claim");
    assert_eq!((claimed.id, claimed.status), (queued.id, JobStatus::Dispatching));
    assert!(store.claim_next_job("hash-2").await.unwrap().is_none(), "nothing else is queued");
    assert_eq!(store.job_token(queued.id).await.unwrap(), Some((JobStatus::Dispatching, Some("hash-1".into()))));
    assert!(store.set_job_compute_ref(queued.id, ComputeKind::Local, "local:42").await.unwrap());
    assert_eq!(store.heartbeat_job(queued.id).await.unwrap(), JobStatus::Active);
    let active = store.get_job(queued.id).await.unwrap();
    assert!(active.started_at.is_some() && active.last_heartbeat_at.is_some());
    assert_eq!(active.compute_ref.as_deref(), Some("local:42"));
    assert_eq!(store.live_jobs(10).await.unwrap().len(), 1);
}

async fn claims_honour_project_and_clanker_limits_in_order(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let narrow = project(&store, "Narrow", 1).await;
    let wide = project(&store, "Wide", 5).await;
    let single = clanker(&store, "Single", 1).await;
    let n1 = store.create_job(job(&narrow, None)).await.unwrap();
    let n2 = store.create_job(job(&narrow, None)).await.unwrap();
    let w1 = store.create_job(job(&wide, Some(&single))).await.unwrap();
    let w2 = store.create_job(job(&wide, Some(&single))).await.unwrap();
    let w3 = store.create_job(job(&wide, None)).await.unwrap();

    let mut order = Vec::new();
    while let Some(j) = store.claim_next_job("h").await.unwrap() {
        order.push(j.id);
    }
    // n2 waits for n1 (project limit 1); w2 waits for w1 (clanker limit 1).
    assert_eq!(order, vec![n1.id, w1.id, w3.id]);
    store.finish_job(n1.id, Outcome::Completed { result: JobResult::default(), summary: "done".into() }).await.unwrap();
    assert_eq!(store.claim_next_job("h").await.unwrap().map(|j| j.id), Some(n2.id));
    store.finish_job(w1.id, Outcome::failed(Failure::internal("boom"))).await.unwrap();
    assert_eq!(store.claim_next_job("h").await.unwrap().map(|j| j.id), Some(w2.id));
}

async fn a_finished_job_cannot_be_moved_by_late_reports(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 2).await;
    let j = store.create_job(job(&p, None)).await.unwrap();
    store.claim_next_job("h").await.unwrap();
    store.heartbeat_job(j.id).await.unwrap();
    let result = JobResult { commit: Some("abc".into()), ..JobResult::default() };
    let done = Outcome::Completed { result: result.clone(), summary: "completed".into() };
    assert!(store.finish_job(j.id, done.clone()).await.unwrap());
    assert!(!store.finish_job(j.id, done).await.unwrap(), "a repeated result changes nothing");
    assert!(!store.finish_job(j.id, Outcome::failed(Failure::heartbeat_lost(60))).await.unwrap());
    assert!(!store.finish_job(j.id, Outcome::Cancelled { by: "someone".into() }).await.unwrap());
    assert_eq!(store.heartbeat_job(j.id).await.unwrap(), JobStatus::Completed, "a late heartbeat sees the end");
    let end = store.get_job(j.id).await.unwrap();
    assert_eq!(end.status, JobStatus::Completed);
    assert_eq!(end.result, Some(result));
    assert_eq!(end.commit_sha.as_deref(), Some("abc"));
    assert!(end.failure.is_none());
    assert!(store.live_jobs(10).await.unwrap().is_empty());
}

async fn cancelling_a_queued_job_ends_it_and_records_who(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 2).await;
    let j = store.create_job(job(&p, None)).await.unwrap();
    assert!(store.finish_job(j.id, Outcome::Cancelled { by: "ada@example.com".into() }).await.unwrap());
    let end = store.get_job(j.id).await.unwrap();
    assert_eq!(end.status, JobStatus::Cancelled);
    assert_eq!(end.cancelled_by.as_deref(), Some("ada@example.com"));
    assert_eq!(end.status_message.as_deref(), Some("cancelled by ada@example.com"));
    assert!(store.claim_next_job("h").await.unwrap().is_none(), "a cancelled job is never dispatched");
}

async fn a_rerun_is_a_new_job_linked_to_the_one_it_repeats(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 2).await;
    let first = store.create_job(job(&p, None)).await.unwrap();
    store.finish_job(first.id, Outcome::failed(Failure::heartbeat_lost(60))).await.unwrap();
    let second = store.create_rerun(&first, job(&p, None)).await.unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!((second.attempt, second.retry_of, second.status), (2, Some(first.id), JobStatus::Queued));
    let third = store.create_rerun(&second, job(&p, None)).await.unwrap();
    assert_eq!(third.attempt, 3);
    assert_eq!(store.get_job(first.id).await.unwrap().status, JobStatus::Failed, "the original is untouched");
    let all =
        store.list_jobs(&JobFilter { project_id: Some(p.id), ..JobFilter::default() }, PageRequest::default()).await;
    assert_eq!(all.unwrap().items.len(), 3);
}

async fn worker_events_are_stored_once_in_order_and_progress_becomes_the_status(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 2).await;
    let j = store.create_job(job(&p, None)).await.unwrap();
    store.claim_next_job("h").await.unwrap();
    let event = |seq: u64, kind: EventKind, message: &str| NewJobEvent {
        seq,
        kind,
        level: LogLevel::Info,
        message: message.into(),
        data: None,
    };
    let batch = vec![event(1, EventKind::Progress, "cloning"), event(2, EventKind::Log, "Cloning into 'repo'...")];
    assert_eq!(store.append_worker_events(j.id, &batch).await.unwrap(), 2);
    assert_eq!(store.append_worker_events(j.id, &batch).await.unwrap(), 0, "a batch sent twice is stored once");
    let more = vec![event(3, EventKind::Progress, "running the agent"), event(4, EventKind::Log, &"x".repeat(20_000))];
    assert_eq!(store.append_worker_events(j.id, &more).await.unwrap(), 2);
    assert_eq!(store.get_job(j.id).await.unwrap().status_message.as_deref(), Some("running the agent"));

    let events = store.list_job_events(j.id, 0, 100).await.unwrap();
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages[..4], ["queued", "dispatching: starting the worker", "cloning", "Cloning into 'repo'..."]);
    assert!(events[5].message.ends_with("bytes]"), "long lines are cut and say so");
    let after = store.list_job_events(j.id, events[2].id, 2).await.unwrap();
    assert_eq!(after.iter().map(|e| e.id).collect::<Vec<_>>(), vec![events[3].id, events[4].id]);

    // A batch overlapping one stored before, with a seq twice and data: the
    // new rows keep the batch's order, the first of a repeated seq wins, and
    // the last new milestone becomes the status message.
    let mut with_data = event(8, EventKind::Log, "eight");
    with_data.data = Some(serde_json::json!({"tool": "bash", "n": 8}));
    let overlap = vec![
        event(4, EventKind::Log, "four again"),
        event(7, EventKind::Progress, "pushing"),
        event(5, EventKind::Log, "five"),
        event(5, EventKind::Log, "five twice"),
        event(6, EventKind::Progress, "opening the pull request"),
        with_data,
        event(3, EventKind::Progress, "running the agent again"),
    ];
    assert_eq!(store.append_worker_events(j.id, &overlap).await.unwrap(), 4);
    assert_eq!(store.get_job(j.id).await.unwrap().status_message.as_deref(), Some("opening the pull request"));
    let tail = store.list_job_events(j.id, events.last().unwrap().id, 100).await.unwrap();
    let tail: Vec<(&str, Option<&serde_json::Value>)> =
        tail.iter().map(|e| (e.message.as_str(), e.data.as_ref())).collect();
    let data = serde_json::json!({"tool": "bash", "n": 8});
    assert_eq!(
        tail,
        [("pushing", None), ("five", None), ("opening the pull request", None), ("eight", Some(&data))],
        "worker events in the batch's order (server events such as job.progress are not job events)"
    );
    assert_eq!(store.append_worker_events(j.id, &[]).await.unwrap(), 0, "an empty batch stores nothing");
}

async fn a_requeued_job_can_be_claimed_again(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 1).await;
    let j = store.create_job(job(&p, None)).await.unwrap();
    store.claim_next_job("h1").await.unwrap();
    assert!(
        store
            .requeue_job(j.id, "the Docker daemon did not answer", std::time::Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(store.claim_next_job("h2").await.unwrap().is_none(), "not before its backoff has passed");
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let again = store.claim_next_job("h2").await.unwrap().unwrap();
    assert_eq!(again.dispatch_attempts, 2);

    assert_eq!(again.id, j.id);
    assert_eq!(store.job_token(j.id).await.unwrap().unwrap().1.as_deref(), Some("h2"));
}

async fn concurrent_claimers_take_each_job_exactly_once(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "Busy", 100).await;
    let mut ids = HashSet::new();
    for _ in 0..60 {
        ids.insert(store.create_job(job(&p, None)).await.unwrap().id);
    }
    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(j) = store.claim_next_job("h").await.unwrap() {
                    mine.push(j.id);
                    store
                        .finish_job(j.id, Outcome::Completed { result: JobResult::default(), summary: "ok".into() })
                        .await
                        .unwrap();
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    assert_eq!(claimed.len(), 60, "every job claimed once");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), ids);
}

/// Claimers racing over many projects and one shared clanker never run more
/// than a limit allows, and together they fill every limit.
async fn concurrent_claimers_keep_project_and_clanker_limits_exact(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let shared = clanker(&store, "Shared", 3).await;
    let mut projects = Vec::new();
    for i in 0..4 {
        let p = project(&store, &format!("P{i}"), 2).await;
        for _ in 0..6 {
            store.create_job(job(&p, None)).await.unwrap();
        }
        projects.push(p);
    }
    // A fifth project, wide open, whose jobs all need the shared clanker.
    let wide = project(&store, "Wide", 50).await;
    for _ in 0..10 {
        store.create_job(job(&wide, Some(&shared))).await.unwrap();
    }
    for round in 0..3 {
        let claimers: Vec<_> = (0..6)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while let Some(j) = store.claim_next_job("h").await.unwrap() {
                        mine.push(j);
                    }
                    mine
                })
            })
            .collect();
        let mut claimed = Vec::new();
        for c in claimers {
            claimed.extend(c.await.unwrap());
        }
        let running = store
            .list_jobs(
                &JobFilter { status: Some(JobStatus::Dispatching), ..JobFilter::default() },
                PageRequest { limit: 100, after: None },
            )
            .await
            .unwrap()
            .items;
        for p in &projects {
            let n = running.iter().filter(|j| j.project_id == p.id).count();
            assert_eq!(n, 2, "round {round}: project {} runs {n} jobs; its limit is 2", p.name);
        }
        let n = running.iter().filter(|j| j.clanker_id == Some(shared.id)).count();
        assert_eq!(n, 3, "round {round}: the shared clanker runs {n} jobs; its limit is 3");
        assert_eq!(claimed.len(), 11, "round {round}: each round fills every limit");
        // Finish what this round claimed, so the next round claims again.
        for j in claimed {
            store
                .finish_job(j.id, Outcome::Completed { result: JobResult::default(), summary: "ok".into() })
                .await
                .unwrap();
        }
    }
}

async fn agent_documents_become_revisions(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = project(&store, "App", 2).await;
    let input: viberglass_domain::TicketInput = serde_json::from_value(serde_json::json!({"title": "t"})).unwrap();
    let t = store.create_ticket(p.id, viberglass_domain::NewTicket::parse(input).unwrap(), None).await.unwrap();
    let j = store.create_job(job(&p, None)).await.unwrap();
    assert_eq!(store.save_agent_document(t.id, Phase::Research, "# Findings\n", j.id).await.unwrap(), 1);
    assert_eq!(store.save_agent_document(t.id, Phase::Research, "# Findings v2\n", j.id).await.unwrap(), 2);
    assert_eq!(store.phase_document(t.id, Phase::Research).await.unwrap(), Some(("# Findings v2\n".into(), 2)));
    assert_eq!(store.phase_document(t.id, Phase::Planning).await.unwrap(), None);
}
