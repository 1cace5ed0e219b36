//! Scheduled tasks: templates and schedules (unique names in a project),
//! pause and resume, a due slot taken by exactly one of several claimers
//! with its execution row, and executions followed from queued to their end.

use serde_json::json;
use viberglass_domain::schedule::{
    CadenceKind, Execution, ExecutionStatus, ExecutionTrigger, MissedPolicy, OverlapPolicy, Schedule, TaskTemplate,
};
use viberglass_domain::{JobId, NewTicket, Phase, ScheduleId, TaskTemplateId, TicketInput};
use viberglass_store::{SlotClaim, Store, StoreError};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(
    templates_and_schedules_keep_unique_names_and_pause,
    each_due_slot_is_taken_by_exactly_one_claimer,
    executions_are_followed_to_their_end
);

fn template(project: viberglass_domain::ProjectId, name: &str) -> TaskTemplate {
    let now = viberglass_store::now();
    TaskTemplate {
        id: TaskTemplateId::new(),
        project_id: project,
        name: name.into(),
        clanker: "scripted".into(),
        phase: Phase::Execution,
        instructions: "Bump the dependencies.".into(),
        open_pull_request: true,
        secrets: vec!["ANTHROPIC_API_KEY".into()],
        created_at: now,
        updated_at: now,
    }
}

fn schedule(t: &TaskTemplate, name: &str, next: Option<time::OffsetDateTime>) -> Schedule {
    let now = viberglass_store::now();
    Schedule {
        id: ScheduleId::new(),
        project_id: t.project_id,
        template_id: t.id,
        name: name.into(),
        cadence: CadenceKind::Cron,
        expression: "* * * * *".into(),
        timezone: "UTC".into(),
        interval_secs: 0,
        anchor_at: now,
        active: true,
        overlap: OverlapPolicy::Skip,
        missed: MissedPolicy::RunOnce,
        standing_ticket_id: None,
        next_run_at: next,
        last_run_at: None,
        runs: 0,
        failures: 0,
        skipped: 0,
        created_by: None,
        created_at: now,
        updated_at: now,
    }
}

async fn setup(store: &Store) -> (TaskTemplate, Schedule) {
    let project = store.create_project(new_project(json!({"name": "Shop"}))).await.unwrap();
    let t = store.create_task_template(&template(project.id, "deps")).await.unwrap();
    let first = time::macros::datetime!(2026-12-01 10:00 UTC);
    let s = store.create_schedule(&schedule(&t, "weekly deps", Some(first))).await.unwrap();
    (t, s)
}

fn run(
    slot: time::OffsetDateTime,
) -> Option<(time::OffsetDateTime, ExecutionTrigger, ExecutionStatus, Option<String>)> {
    Some((slot, ExecutionTrigger::Schedule, ExecutionStatus::Queued, None))
}

async fn templates_and_schedules_keep_unique_names_and_pause(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (t, s) = setup(&store).await;
    assert_eq!(store.list_task_templates(t.project_id).await.unwrap(), vec![t.clone()]);
    assert!(matches!(
        store.create_task_template(&template(t.project_id, "deps")).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.create_schedule(&schedule(&t, "weekly deps", None)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.list_schedules(t.project_id).await.unwrap().len(), 1);
    assert_eq!(s.next_run_at, Some(time::macros::datetime!(2026-12-01 10:00 UTC)));

    assert!(store.set_schedule_active(s.id, false, None).await.unwrap());
    assert!(!store.set_schedule_active(s.id, false, None).await.unwrap(), "already paused");
    let far = time::macros::datetime!(2030-01-01 0:00 UTC);
    assert!(store.due_schedules(far, 10).await.unwrap().is_empty(), "a paused schedule is never due");
    let resumed = time::macros::datetime!(2026-12-02 9:00 UTC);
    assert!(store.set_schedule_active(s.id, true, Some(resumed)).await.unwrap());
    let due = store.due_schedules(far, 10).await.unwrap();
    assert_eq!((due.len(), due[0].next_run_at), (1, Some(resumed)));
}

async fn each_due_slot_is_taken_by_exactly_one_claimer(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (_, s) = setup(&store).await;
    let mut due = s.next_run_at.unwrap();
    for _ in 0..50 {
        let claim = SlotClaim {
            schedule_id: s.id,
            due,
            next: Some(due + time::Duration::minutes(1)),
            execution: run(due),
            skipped: 0,
        };
        // Two servers see the same due slot at once.
        let (a, b) = (store.clone(), store.clone());
        let (c1, c2) = (claim.clone(), claim.clone());
        let (x, y) = tokio::join!(
            tokio::spawn(async move { a.claim_slot(&c1).await.unwrap() }),
            tokio::spawn(async move { b.claim_slot(&c2).await.unwrap() })
        );
        let won: Vec<Execution> = [x.unwrap(), y.unwrap()].into_iter().flatten().flatten().collect();
        assert_eq!(won.len(), 1, "slot {due}: exactly one claimer wins");
        assert_eq!(won[0].slot, due);
        // It ends before the next slot (at most one execution of a schedule waits).
        assert!(store.finish_execution(&won[0], ExecutionStatus::Cancelled, "done").await.unwrap());
        due += time::Duration::minutes(1);
    }
    let after = store.get_schedule(s.id).await.unwrap();
    assert_eq!((after.runs, after.next_run_at), (50, Some(due)));
    assert_eq!(store.list_executions(s.id, 100).await.unwrap().len(), 50);

    // A stale claim (the slot already moved on) changes nothing.
    let stale =
        SlotClaim { schedule_id: s.id, due: s.next_run_at.unwrap(), next: None, execution: run(due), skipped: 0 };
    assert_eq!(store.claim_slot(&stale).await.unwrap(), None);
    // A skipped slot is recorded, finished, and counted; missed slots without a row are counted too.
    let skip = SlotClaim {
        schedule_id: s.id,
        due,
        next: Some(due + time::Duration::minutes(5)),
        execution: Some((
            due,
            ExecutionTrigger::Schedule,
            ExecutionStatus::Skipped,
            Some("the previous run is still going".into()),
        )),
        skipped: 3,
    };
    let skipped = store.claim_slot(&skip).await.unwrap().unwrap().unwrap();
    assert_eq!(skipped.status, ExecutionStatus::Skipped);
    assert!(skipped.finished_at.is_some());
    let after = store.get_schedule(s.id).await.unwrap();
    assert_eq!((after.runs, after.skipped), (50, 4));

    // A slot already recorded (an edit put a taken slot back) moves on without a second row.
    let again = SlotClaim {
        schedule_id: s.id,
        due: skipped.slot + time::Duration::minutes(5),
        next: Some(skipped.slot + time::Duration::minutes(6)),
        execution: None,
        skipped: 0,
    };
    assert_eq!(store.claim_slot(&again).await.unwrap(), Some(None));
    let first = s.next_run_at.unwrap();
    let mut replayed = after.clone();
    replayed.next_run_at = Some(first);
    store.update_schedule(&replayed, true).await.unwrap();
    let repeat = SlotClaim { schedule_id: s.id, due: first, next: Some(due), execution: run(first), skipped: 0 };
    assert_eq!(store.claim_slot(&repeat).await.unwrap(), Some(None), "no second row for slot {first}");
    assert_eq!(store.get_schedule(s.id).await.unwrap().next_run_at, Some(due));
    assert_eq!(store.list_executions(s.id, 100).await.unwrap().len(), 51);
    // Only one execution of a schedule waits at a time.
    store.manual_execution(s.id, viberglass_store::now()).await.unwrap();
    assert!(matches!(store.manual_execution(s.id, viberglass_store::now()).await, Err(StoreError::Conflict { .. })));
}

async fn executions_are_followed_to_their_end(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (t, s) = setup(&store).await;
    let input: TicketInput = serde_json::from_value(json!({"title": "Bump deps", "source": "schedule"})).unwrap();
    let new_ticket = || NewTicket::parse(input.clone()).unwrap();
    let due = s.next_run_at.unwrap();
    let claim = SlotClaim {
        schedule_id: s.id,
        due,
        next: Some(due + time::Duration::minutes(1)),
        execution: run(due),
        skipped: 0,
    };
    let e = store.claim_slot(&claim).await.unwrap().unwrap().unwrap();
    assert_eq!(store.live_executions(s.id).await.unwrap().len(), 1);
    assert_eq!(store.ready_executions(10).await.unwrap().len(), 1);
    let job = JobId::new();
    let ticket = store.begin_execution(&e, t.project_id, Err(new_ticket()), None, job).await.unwrap().unwrap();
    assert_eq!(store.get_ticket(ticket).await.unwrap().title, "Bump deps", "the ticket is filed with it");
    assert!(
        store.begin_execution(&e, t.project_id, Err(new_ticket()), None, job).await.unwrap().is_none(),
        "started once"
    );
    let running = store.execution_of_job(job).await.unwrap().unwrap();
    assert_eq!((running.status, running.ticket_id), (ExecutionStatus::Running, Some(ticket)));
    // Its job was never queued: once it is old enough, it is found to be started again.
    assert!(
        store.stranded_executions(viberglass_store::now() - time::Duration::minutes(1), 10).await.unwrap().is_empty()
    );
    let stranded = store.stranded_executions(viberglass_store::now() + time::Duration::seconds(1), 10).await.unwrap();
    assert_eq!(stranded.iter().map(|x| x.id).collect::<Vec<_>>(), vec![e.id]);
    // A second execution of the schedule waits while this one runs.
    let waiting = store.manual_execution(s.id, viberglass_store::now()).await.unwrap();
    assert!(store.ready_executions(10).await.unwrap().is_empty(), "one execution of a schedule runs at a time");
    assert!(store.begin_execution(&waiting, t.project_id, Ok(ticket), None, JobId::new()).await.unwrap().is_none());
    let done =
        store.finish_execution_of_job(job, ExecutionStatus::Failed, Some("push refused")).await.unwrap().unwrap();
    assert_eq!((done.status, done.message.as_deref()), (ExecutionStatus::Failed, Some("push refused")));
    assert!(
        store.finish_execution_of_job(job, ExecutionStatus::Completed, None).await.unwrap().is_none(),
        "ended once"
    );
    assert_eq!(store.get_schedule(s.id).await.unwrap().failures, 1);

    // Run now: a manual execution, ready once nothing runs; one that cannot start fails with why.
    assert_eq!((waiting.trigger, waiting.status), (ExecutionTrigger::Manual, ExecutionStatus::Queued));
    assert_eq!(store.ready_executions(10).await.unwrap().iter().map(|x| x.id).collect::<Vec<_>>(), vec![waiting.id]);
    assert!(store.finish_execution(&waiting, ExecutionStatus::Failed, "the clanker is not started").await.unwrap());
    assert!(!store.finish_execution(&waiting, ExecutionStatus::Cancelled, "again").await.unwrap(), "ended once");
    let failed = store.get_execution(waiting.id).await.unwrap();
    assert_eq!(failed.status, ExecutionStatus::Failed);
    assert_eq!(store.get_schedule(s.id).await.unwrap().failures, 2);
    assert!(store.live_executions(s.id).await.unwrap().is_empty());

    // Each end is an outbox event, with the schedule, the execution and its ticket and job.
    let ended: Vec<_> = store
        .list_outbox(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == viberglass_domain::EventType::ScheduleExecutionFinished)
        .collect();
    assert_eq!(ended.len(), 2);
    assert_eq!(ended[0].data["status"], "failed");
    assert_eq!(ended[0].data["message"], "push refused");
    assert_eq!(ended[0].data["schedule"], "weekly deps");
    assert_eq!((ended[0].ticket_id, ended[0].job_id), (Some(ticket), Some(job)));
    assert_eq!(ended[0].project_id, Some(t.project_id));
    assert_eq!(ended[1].data["message"], "the clanker is not started");
}
