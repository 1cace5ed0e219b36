use viberglass_domain::workflow::{ApprovalState, CommentStatus, PromptKind};
use viberglass_domain::{JobId, JobStatus, NewTicket, Phase, TicketInput, TicketStatus};
use viberglass_store::{ApprovalChange, NewJob, StoreError};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(documents_comments_approvals_and_continuing_in_one_transaction);

async fn documents_comments_approvals_and_continuing_in_one_transaction(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = store.create_project(new_project(serde_json::json!({"name": "Shop"}))).await.unwrap();
    let input: TicketInput = serde_json::from_value(serde_json::json!({"title": "t"})).unwrap();
    let t = store.create_ticket(p.id, NewTicket::parse(input).unwrap(), None).await.unwrap();

    // A person starts a document, then the agent and the person take turns.
    assert_eq!(store.save_person_document(t.id, Phase::Planning, "v1", None, 0).await.unwrap(), 1);
    assert_eq!(store.save_agent_document(t.id, Phase::Planning, "v2", JobId::new()).await.unwrap(), 2);
    assert!(matches!(
        store.save_person_document(t.id, Phase::Planning, "stale", None, 1).await,
        Err(StoreError::Contended { .. })
    ));
    let doc = store.get_document(t.id, Phase::Planning).await.unwrap().unwrap();
    // What an agent writes asks for approval at once.
    assert_eq!((doc.content.as_str(), doc.revision, doc.approval_state), ("v2", 2, ApprovalState::ApprovalRequested));
    let revisions = store.list_revisions(t.id, Phase::Planning).await.unwrap();
    assert_eq!(revisions.iter().map(|r| r.source.as_str()).collect::<Vec<_>>(), ["person", "agent"]);
    assert_eq!(store.revision_content(t.id, Phase::Planning, 1).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(store.revision_content(t.id, Phase::Planning, 9).await.unwrap(), None);

    let comment = store.add_comment(t.id, Phase::Planning, 1, "why?", Some("because"), None).await.unwrap().unwrap();
    assert!(store.add_comment(t.id, Phase::Research, 1, "no doc", None, None).await.unwrap().is_none());
    assert!(store.set_comment_status(t.id, comment, CommentStatus::Resolved, None).await.unwrap());
    let comments = store.list_comments(t.id, Phase::Planning).await.unwrap();
    assert_eq!((comments[0].status, comments[0].revision), (CommentStatus::Resolved, 2));

    let change = |expected, new_state, logged: &str| ApprovalChange {
        ticket_id: t.id,
        phase: Phase::Planning,
        expected,
        revision: 2,
        new_state,
        logged: logged.into(),
        actor: None,
        comment: String::new(),
    };
    assert!(
        store.apply_approval(&change(ApprovalState::ApprovalRequested, ApprovalState::Draft, "revoked")).await.unwrap()
    );
    assert!(
        store
            .apply_approval(&change(ApprovalState::Draft, ApprovalState::ApprovalRequested, "approval_requested"))
            .await
            .unwrap()
    );
    // A stale expectation changes nothing and logs nothing.
    assert!(!store.apply_approval(&change(ApprovalState::Draft, ApprovalState::Rejected, "rejected")).await.unwrap());
    assert_eq!(store.list_approvals(t.id).await.unwrap().len(), 2);

    let job = NewJob {
        id: JobId::new(),
        project_id: p.id,
        ticket_id: Some(t.id),
        clanker_id: None,
        spec: crate::jobs::spec(Phase::Execution),
        requested_by: None,
        request_id: None,
    };
    let queued = store
        .approve_and_continue(
            &change(ApprovalState::ApprovalRequested, ApprovalState::Approved, "approved"),
            Phase::Execution,
            job.clone(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(queued.status, JobStatus::Queued);
    let moved = store.get_ticket(t.id).await.unwrap();
    assert_eq!((moved.phase, moved.status), (Phase::Execution, TicketStatus::InProgress));
    assert_eq!(
        store.get_document(t.id, Phase::Planning).await.unwrap().unwrap().approval_state,
        ApprovalState::Approved
    );
    assert_eq!(store.latest_run(t.id).await.unwrap(), Some((Phase::Execution, JobStatus::Queued)));
    // Continuing again from a stale state queues nothing.
    let again = NewJob { id: JobId::new(), ..job };
    assert!(
        store
            .approve_and_continue(
                &change(ApprovalState::ApprovalRequested, ApprovalState::Approved, "approved"),
                Phase::Execution,
                again
            )
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.list_approvals(t.id).await.unwrap().len(), 3);

    store.set_workflow_override(t.id, Some("hotfix"), None).await.unwrap();
    let overridden = store.get_ticket(t.id).await.unwrap();
    assert_eq!(overridden.workflow_override_reason.as_deref(), Some("hotfix"));
    assert!(overridden.workflow_overridden_at.is_some());
    store.set_workflow_override(t.id, None, None).await.unwrap();
    assert!(store.get_ticket(t.id).await.unwrap().workflow_overridden_at.is_none());
    store.set_ticket_phase(t.id, Phase::Research).await.unwrap();
    store.set_ticket_status(t.id, TicketStatus::Failed).await.unwrap();
    let t2 = store.get_ticket(t.id).await.unwrap();
    assert_eq!((t2.phase, t2.status), (Phase::Research, TicketStatus::Failed));

    assert_eq!(store.prompt_template(p.id, PromptKind::Research).await.unwrap(), None);
    store.set_prompt_template(p.id, PromptKind::Research, Some("one {{ ticket_description }}")).await.unwrap();
    store.set_prompt_template(p.id, PromptKind::Research, Some("two {{ ticket_description }}")).await.unwrap();
    assert_eq!(
        store.prompt_template(p.id, PromptKind::Research).await.unwrap().as_deref(),
        Some("two {{ ticket_description }}")
    );
    store.set_prompt_template(p.id, PromptKind::Research, None).await.unwrap();
    assert_eq!(store.prompt_template(p.id, PromptKind::Research).await.unwrap(), None);
}
