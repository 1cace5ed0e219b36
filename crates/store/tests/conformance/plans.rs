//! The list, search and claim statements use their indexes: over 10,000
//! tickets and jobs, no plan reads the whole of `tickets` or `jobs`.

use viberglass_domain::ticket::ArchivedFilter;
use viberglass_domain::{JobStatus, PageRequest, Phase, Severity, TicketFilter, TicketStatus, UserId};
use viberglass_store::{Backend, JobFilter};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(list_search_and_claim_plans_use_indexes_over_ten_thousand_rows);

fn hex(id: uuid::Uuid) -> String {
    id.simple().to_string()
}

async fn list_search_and_claim_plans_use_indexes_over_ten_thousand_rows(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    // Twenty projects; the user is a member of two of them.
    let mut projects = Vec::new();
    for i in 0..20 {
        projects.push(store.create_project(new_project(serde_json::json!({"name": format!("P{i}")}))).await.unwrap());
    }
    let (a, b) = (projects[0].clone(), projects[1].clone());
    let user = UserId::new();
    let postgres = store.backend() == Backend::Postgres;
    let literal = |id: uuid::Uuid| if postgres { format!("'{id}'::uuid") } else { format!("X'{}'", hex(id)) };
    let project_rows: Vec<String> =
        projects.iter().enumerate().map(|(i, p)| format!("({i}, {})", literal(p.id.as_uuid()))).collect();
    let now = if postgres { "now()" } else { "'2026-01-01T00:00:00Z'" };
    let (random_id, series) = if postgres {
        ("gen_random_uuid()", "generate_series(1, 10000) AS g(n)")
    } else {
        (
            "randomblob(16)",
            "(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 10000) SELECT n FROM s) AS g",
        )
    };
    db.execute(&format!(
        "CREATE TEMP TABLE ps (n INTEGER PRIMARY KEY, id {uuid}); INSERT INTO ps VALUES {projects}; \
         INSERT INTO users (id, email, name, created_at, updated_at) VALUES ({user}, 'member@example.com', 'M', {now}, {now}); \
         INSERT INTO project_members (project_id, user_id, role, created_at) \
         SELECT id, {user}, 'member', {now} FROM ps WHERE n < 2; \
         INSERT INTO tickets (id, project_id, title, description, severity, phase, status, source, created_at, updated_at) \
         SELECT {random_id}, (SELECT id FROM ps WHERE ps.n = g.n % 20), \
         'Ticket ' || g.n || CASE WHEN g.n % 100 = 0 THEN ' checkout fails' ELSE ' layout tweak' END, \
         'Body of ticket ' || g.n, CASE g.n % 4 WHEN 0 THEN 'low' WHEN 1 THEN 'medium' WHEN 2 THEN 'high' \
         ELSE 'critical' END, 'research', 'open', 'api', {now}, {now} FROM {series}; \
         INSERT INTO jobs (id, project_id, ticket_id, phase, status, spec, queued_at, updated_at) \
         SELECT {random_id}, project_id, id, 'research', CASE WHEN severity = 'low' THEN 'queued' \
         WHEN severity = 'medium' THEN 'failed' ELSE 'completed' END, '{{}}', {now}, {now} FROM tickets; ANALYZE;",
        uuid = if postgres { "UUID" } else { "BLOB" },
        projects = project_rows.join(", "),
        user = literal(user.as_uuid()),
    ))
    .await;
    if postgres {
        // As autovacuum would: folds the GIN indexes' pending lists in,
        // whose size the planner otherwise counts against them.
        db.execute("VACUUM ANALYZE").await;
    }

    let page = PageRequest::default();
    let user = Some(user);
    let ticket_filters = [
        TicketFilter::default(),
        TicketFilter { archived: ArchivedFilter::Include, ..TicketFilter::default() },
        TicketFilter { archived: ArchivedFilter::Only, ..TicketFilter::default() },
        TicketFilter { project_id: Some(a.id), ..TicketFilter::default() },
        TicketFilter { project_id: Some(a.id), severity: Some(Severity::High), ..TicketFilter::default() },
        TicketFilter { phase: Some(Phase::Planning), status: Some(TicketStatus::Open), ..TicketFilter::default() },
        TicketFilter { member_of: user, ..TicketFilter::default() },
        TicketFilter { search: Some("checkout".into()), ..TicketFilter::default() },
        TicketFilter { search: Some("checkout".into()), project_id: Some(b.id), ..TicketFilter::default() },
        TicketFilter { search: Some("no such words".into()), member_of: user, ..TicketFilter::default() },
    ];
    let mut plans = Vec::new();
    for filter in &ticket_filters {
        plans.push((format!("tickets {filter:?}"), store.explain_list_tickets(filter, page).await.unwrap()));
    }
    let job_filters = [
        JobFilter::default(),
        JobFilter { project_id: Some(a.id), ..JobFilter::default() },
        JobFilter { status: Some(JobStatus::Failed), ..JobFilter::default() },
        JobFilter { status: Some(JobStatus::Failed), unresolved_only: true, ..JobFilter::default() },
        JobFilter { member_of: user, unresolved_only: true, ..JobFilter::default() },
    ];
    for filter in &job_filters {
        plans.push((format!("jobs {filter:?}"), store.explain_list_jobs(filter, page).await.unwrap()));
    }
    plans.push(("claim".into(), store.explain_claim().await.unwrap()));

    for (what, plan) in &plans {
        for line in plan.lines() {
            let line = line.trim().trim_start_matches("-> ").trim();
            let full_scan = match store.backend() {
                Backend::Postgres => line.contains("Seq Scan on tickets") || line.contains("Seq Scan on jobs"),
                // SQLite names a scan without an index as plain `SCAN t`.
                Backend::Sqlite => line == "SCAN tickets" || line == "SCAN jobs",
            };
            assert!(!full_scan, "{what} reads the whole table:\n{plan}");
        }
    }
    // Search goes through the trigram indexes.
    let search = &plans[7].1;
    match store.backend() {
        Backend::Postgres => assert!(search.contains("tickets_title_trgm"), "search plan:\n{search}"),
        Backend::Sqlite => assert!(search.contains("tickets_fts"), "search plan:\n{search}"),
    }
    // And finds the 100 tickets it should.
    let mut found = 0;
    let mut request = PageRequest { limit: 100, after: None };
    let filter = TicketFilter { search: Some("CHECKOUT".into()), ..TicketFilter::default() };
    loop {
        let page = store.list_tickets(&filter, request).await.unwrap();
        found += page.items.len();
        match page.next_cursor {
            Some(c) => request.after = Some(viberglass_domain::Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(found, 100);
}
