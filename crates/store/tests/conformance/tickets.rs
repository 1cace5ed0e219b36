use viberglass_domain::ticket::ArchivedFilter;
use viberglass_domain::{
    NewTicket, PageRequest, Phase, Severity, TicketFilter, TicketInput, TicketPatch, TicketStatus,
};
use viberglass_store::{AuditFilter, NewAudit, StoreError};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(
    a_filed_ticket_reads_back_whole,
    a_ticket_needs_a_live_project,
    external_ids_are_unique_per_project_and_source,
    ticket_edits_and_archiving,
    ticket_lists_filter_search_and_page,
    search_finds_the_same_tickets_as_a_substring_match,
    concurrent_filings_share_transactions_and_keep_their_own_answers,
);

fn new_ticket(json: serde_json::Value) -> NewTicket {
    let input: TicketInput = serde_json::from_value(json).unwrap();
    NewTicket::parse(input).unwrap()
}

async fn a_filed_ticket_reads_back_whole(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    let ticket = store
        .create_ticket(
            project.id,
            new_ticket(serde_json::json!({
                "title": "Checkout fails for guests",
                "description": "Steps:\n1. …",
                "severity": "high",
                "source": "github",
                "external_id": "42",
                "external_url": "https://github.com/acme/web/issues/42",
                "category": "bug",
                "metadata": {"page_url": "https://shop.example/checkout", "browser": "Firefox 140", "screen": 1440},
            })),
            None,
        )
        .await
        .unwrap();
    assert_eq!((ticket.phase, ticket.status), (Phase::Research, TicketStatus::Open));
    assert_eq!(ticket.category, Some(viberglass_domain::TicketCategory::Bug));
    assert_eq!(ticket.metadata["screen"], 1440);
    assert_eq!(store.get_ticket(ticket.id).await.unwrap(), ticket);
}

async fn a_ticket_needs_a_live_project(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let missing = store
        .create_ticket(viberglass_domain::ProjectId::new(), new_ticket(serde_json::json!({"title": "x"})), None)
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound { entity: "project", .. })), "{missing:?}");
    let project = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    store.archive_project(project.id).await.unwrap();
    let archived = store.create_ticket(project.id, new_ticket(serde_json::json!({"title": "x"})), None).await;
    assert!(matches!(archived, Err(StoreError::ParentArchived { .. })), "{archived:?}");
}

async fn external_ids_are_unique_per_project_and_source(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = store.create_project(new_project(serde_json::json!({"name": "A"}))).await.unwrap();
    let b = store.create_project(new_project(serde_json::json!({"name": "B"}))).await.unwrap();
    let gh = serde_json::json!({"title": "x", "source": "github", "external_id": "7"});
    store.create_ticket(a.id, new_ticket(gh.clone()), None).await.unwrap();
    let dup = store.create_ticket(a.id, new_ticket(gh.clone()), None).await;
    assert!(matches!(&dup, Err(StoreError::Conflict { field, .. }) if field == "external_id"), "{dup:?}");
    store.create_ticket(b.id, new_ticket(gh), None).await.expect("another project may reuse the id");
    let jira = serde_json::json!({"title": "x", "source": "jira", "external_id": "7"});
    store.create_ticket(a.id, new_ticket(jira), None).await.expect("another source may reuse the id");
    // Tickets without an external id never collide.
    store.create_ticket(a.id, new_ticket(serde_json::json!({"title": "y"})), None).await.unwrap();
    store.create_ticket(a.id, new_ticket(serde_json::json!({"title": "y"})), None).await.unwrap();
}

async fn ticket_edits_and_archiving(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    let t = store.create_ticket(project.id, new_ticket(serde_json::json!({"title": "Old"})), None).await.unwrap();
    assert_eq!((t.category, &t.metadata), (None, &serde_json::json!({})));
    let patch = TicketPatch::parse(
        serde_json::from_value(serde_json::json!({"title": "New", "severity": "critical", "category": "feature",
                                                  "metadata": {"reporter": "ana@example.com"}}))
        .unwrap(),
    )
    .unwrap();
    let edited = store.update_ticket(t.id, patch).await.unwrap();
    assert_eq!((edited.title.as_str(), edited.severity), ("New", Severity::Critical));
    assert_eq!(edited.category, Some(viberglass_domain::TicketCategory::Feature));
    assert_eq!(edited.metadata, serde_json::json!({"reporter": "ana@example.com"}));
    assert_eq!(store.get_ticket(t.id).await.unwrap(), edited);
    let cleared = store
        .update_ticket(
            t.id,
            TicketPatch::parse(serde_json::from_value(serde_json::json!({"category": null})).unwrap()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(cleared.category, None);
    assert_eq!(edited.description, t.description);
    let archived = store.archive_ticket(t.id).await.unwrap();
    assert!(archived.archived_at.is_some());
    assert_eq!(store.get_ticket(t.id).await.unwrap(), archived);
    assert_eq!(store.unarchive_ticket(t.id).await.unwrap().archived_at, None);
}

async fn ticket_lists_filter_search_and_page(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = store.create_project(new_project(serde_json::json!({"name": "A"}))).await.unwrap();
    let b = store.create_project(new_project(serde_json::json!({"name": "B"}))).await.unwrap();
    let mut in_a = Vec::new();
    for i in 0..7 {
        let severity = if i % 2 == 0 { "high" } else { "low" };
        let t = store
            .create_ticket(
                a.id,
                new_ticket(
                    serde_json::json!({"title": format!("Ticket {i}"), "severity": severity, "description": "body"}),
                ),
                None,
            )
            .await
            .unwrap();
        in_a.push(t.id);
    }
    let percent = store
        .create_ticket(b.id, new_ticket(serde_json::json!({"title": "Give 50% OFF", "description": "Sale"})), None)
        .await
        .unwrap();
    store.archive_ticket(in_a[6]).await.unwrap();

    // Paging through project A visits every live ticket once, newest first.
    let filter = TicketFilter { project_id: Some(a.id), ..TicketFilter::default() };
    let mut seen = Vec::new();
    let mut page_request = PageRequest { limit: 4, after: None };
    loop {
        let page = store.list_tickets(&filter, page_request).await.unwrap();
        seen.extend(page.items.iter().map(|t| t.id));
        match page.next_cursor {
            Some(c) => page_request.after = Some(viberglass_domain::Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    let expected: Vec<_> = in_a[..6].iter().rev().copied().collect();
    assert_eq!(seen, expected);

    let high = TicketFilter { project_id: Some(a.id), severity: Some(Severity::High), ..TicketFilter::default() };
    let page = store.list_tickets(&high, PageRequest::default()).await.unwrap();
    assert_eq!(page.items.iter().map(|t| t.id).collect::<Vec<_>>(), vec![in_a[4], in_a[2], in_a[0]]);

    let archived = TicketFilter { archived: ArchivedFilter::Only, ..TicketFilter::default() };
    let page = store.list_tickets(&archived, PageRequest::default()).await.unwrap();
    assert_eq!(page.items.iter().map(|t| t.id).collect::<Vec<_>>(), vec![in_a[6]]);

    let planning = TicketFilter { phase: Some(Phase::Planning), ..TicketFilter::default() };
    assert!(store.list_tickets(&planning, PageRequest::default()).await.unwrap().items.is_empty());
    let open = TicketFilter { status: Some(TicketStatus::Open), ..TicketFilter::default() };
    assert_eq!(store.list_tickets(&open, PageRequest::default()).await.unwrap().items.len(), 7);

    // Search is case-insensitive and treats % and _ literally.
    let search = TicketFilter { search: Some("50% off".into()), ..TicketFilter::default() };
    let page = store.list_tickets(&search, PageRequest::default()).await.unwrap();
    assert_eq!(page.items.iter().map(|t| t.id).collect::<Vec<_>>(), vec![percent.id]);
    let literal = TicketFilter { search: Some("5_%".into()), ..TicketFilter::default() };
    assert!(store.list_tickets(&literal, PageRequest::default()).await.unwrap().items.is_empty());
    let by_description = TicketFilter { search: Some("SALE".into()), ..TicketFilter::default() };
    assert_eq!(store.list_tickets(&by_description, PageRequest::default()).await.unwrap().items.len(), 1);
}

/// Search is a case-insensitive substring match of title or description,
/// whatever index serves it (pg_trgm on PostgreSQL, FTS5 on SQLite): every
/// term here, short or long, with quotes, wildcards or FTS syntax, finds
/// exactly the tickets a plain substring test finds, edits and archiving
/// included.
async fn search_finds_the_same_tickets_as_a_substring_match(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let p = store.create_project(new_project(serde_json::json!({"name": "Search"}))).await.unwrap();
    let corpus = [
        ("Checkout fails for guests", "The pay button spins"),
        ("checkout: coupon field", "Coupons like 50%_OFF are refused"),
        ("Guest CHECKOUT slow", ""),
        ("Dark mode", "The checkout page ignores it"),
        ("Quotes \"double\" and 'single'", "NEAR AND OR NOT * ^ ( ) are FTS words"),
        ("Café menu", "accents: déjà vu"),
        ("ab", "a"),
        ("Login", "Sign-in with SSO fails: check out the logs"),
    ];
    let mut tickets = Vec::new();
    for (title, description) in corpus {
        let t = store
            .create_ticket(p.id, new_ticket(serde_json::json!({"title": title, "description": description})), None)
            .await
            .unwrap();
        tickets.push(t);
    }
    // An edit moves a ticket in and out of the index.
    let edited = store
        .update_ticket(
            tickets[7].id,
            TicketPatch::parse(serde_json::from_value(serde_json::json!({"description": "Sign-in loops"})).unwrap())
                .unwrap(),
        )
        .await
        .unwrap();
    tickets[7] = edited;
    store.archive_ticket(tickets[2].id).await.unwrap();

    let terms = [
        "checkout",
        "CHECKOUT",
        " checkout ",
        "check",
        "out",
        "ch",
        "c",
        "a",
        "ab",
        "50%_off",
        "50%",
        "%",
        "_",
        "\"double\"",
        "\"",
        "'single'",
        "near and",
        "*",
        "^",
        "( )",
        "déjà",
        "café",
        "spins",
        "sign-in",
        "check out",
        "no such text",
        "ut f",
    ];
    for term in terms {
        for archived in [ArchivedFilter::Exclude, ArchivedFilter::Include] {
            let needle = term.trim().to_lowercase();
            let mut expected: Vec<_> = tickets
                .iter()
                .filter(|t| archived == ArchivedFilter::Include || t.id != tickets[2].id)
                .filter(|t| t.title.to_lowercase().contains(&needle) || t.description.to_lowercase().contains(&needle))
                .map(|t| t.id)
                .collect();
            expected.reverse();
            let filter = TicketFilter { search: Some(term.into()), archived, ..TicketFilter::default() };
            let found: Vec<_> = store
                .list_tickets(&filter, PageRequest { limit: 100, after: None })
                .await
                .unwrap()
                .items
                .iter()
                .map(|t| t.id)
                .collect();
            assert_eq!(found, expected, "search {term:?} ({archived:?})");
        }
    }
}

/// Filings that arrive together are written a batch per transaction, and a
/// batch holding a taken external id, an archived project and a missing one
/// still answers every caller with its own result: the good tickets are
/// written with their events and audit entries, the bad ones are not.
async fn concurrent_filings_share_transactions_and_keep_their_own_answers(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let live = store.create_project(new_project(serde_json::json!({"name": "Live"}))).await.unwrap();
    let archived = store.create_project(new_project(serde_json::json!({"name": "Old"}))).await.unwrap();
    store.archive_project(archived.id).await.unwrap();
    let missing = viberglass_domain::ProjectId::new();
    let head = store.outbox_head().await.unwrap();
    let (batches_before, items_before) = store.filing_batches();

    let mut filings = tokio::task::JoinSet::new();
    for i in 0..150u32 {
        let store = store.clone();
        let (project, body) = match i {
            _ if i % 10 == 3 => {
                (live.id, serde_json::json!({"title": format!("dup {i}"), "source": "github", "external_id": "taken"}))
            }
            _ if i % 15 == 7 => (archived.id, serde_json::json!({"title": format!("archived {i}")})),
            _ if i % 17 == 11 => (missing, serde_json::json!({"title": format!("missing {i}")})),
            _ => (live.id, serde_json::json!({"title": format!("ticket {i}")})),
        };
        filings.spawn(async move {
            let audit = |t: &viberglass_domain::Ticket| {
                Some(NewAudit {
                    actor_id: None,
                    channel: "api".into(),
                    action: "ticket_filed".into(),
                    target_kind: "ticket".into(),
                    target_id: Some(t.id.to_string()),
                    project_id: Some(t.project_id),
                    details: serde_json::json!({"title": t.title}),
                    request_id: Some(format!("req-{i}")),
                })
            };
            (i, store.file_ticket(project, new_ticket(body), None, audit).await)
        });
    }
    let mut filed = Vec::new();
    let mut taken = 0;
    while let Some(joined) = filings.join_next().await {
        let (i, result) = joined.unwrap();
        match result {
            Ok(t) if i % 10 == 3 => {
                assert_eq!(t.external_id.as_deref(), Some("taken"));
                taken += 1;
                filed.push(t);
            }
            Err(StoreError::Conflict { field, .. }) if i % 10 == 3 => assert_eq!(field, "external_id"),
            Err(StoreError::ParentArchived { .. }) if i % 15 == 7 && i % 10 != 3 => {}
            Err(StoreError::NotFound { entity: "project", .. }) if i % 17 == 11 && i % 10 != 3 && i % 15 != 7 => {}
            Ok(t) if i % 10 != 3 && i % 15 != 7 && i % 17 != 11 => {
                assert_eq!(t.title, format!("ticket {i}"));
                filed.push(t);
            }
            other => panic!("filing {i} was answered {other:?}"),
        }
    }
    assert_eq!(taken, 1, "exactly one filing gets the external id");
    let (batches, items) = store.filing_batches();
    let (batches, items) = (batches - batches_before, items - items_before);
    assert!(items >= 150, "every filing went through the group commit ({items})");
    assert!(batches < 150, "150 concurrent filings were written in {batches} transactions: none shared one");

    // Every ticket written reads back, with exactly one ticket.filed event and one audit entry.
    for t in &filed {
        assert_eq!(&store.get_ticket(t.id).await.unwrap(), t);
    }
    let events = store.list_outbox(head, 1000).await.unwrap();
    let filed_events: Vec<_> =
        events.iter().filter(|e| e.event_type == viberglass_domain::EventType::TicketFiled).collect();
    assert_eq!(filed_events.len(), filed.len(), "one ticket.filed per ticket written, none for a refused one");
    for t in &filed {
        assert_eq!(filed_events.iter().filter(|e| e.ticket_id == Some(t.id)).count(), 1, "ticket {}", t.title);
    }
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    let audit = store.list_audit(&AuditFilter::default(), PageRequest { after: None, limit: 500 }).await.unwrap().items;
    let audited: Vec<_> = audit.iter().filter(|a| a.action == "ticket_filed").collect();
    assert_eq!(audited.len(), filed.len(), "one audit entry per ticket written");
    for t in &filed {
        assert_eq!(audited.iter().filter(|a| a.target_id.as_deref() == Some(t.id.to_string().as_str())).count(), 1);
    }
}
