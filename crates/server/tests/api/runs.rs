//! Every way a run starts goes through one `start_run`, with the same
//! checks in the same order: a plain run, a re-run, Approve & Continue and
//! a requested revision all refuse an archived ticket, a stopped clanker and
//! a clanker not allowed in the project, with the same error.

use serde_json::{Value, json};
use viberglass_domain::{JobId, Phase};
use viberglass_testkit::TestApp;

struct Fixture {
    app: TestApp,
    ticket: String,
}

async fn fixture() -> Fixture {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "Shop", "repository_url": "https://example.com/acme/shop.git",
        "allow_run_all": true}))
        .await;
    app.create_project(json!({"name": "Other", "repository_url": "https://example.com/acme/other.git"})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Guest checkout"})).await;
    let ticket = ticket["id"].as_str().unwrap().to_owned();
    for (name, scope) in [
        ("Allowed", json!({"projects": ["shop"]})),
        ("Elsewhere", json!({"projects": ["other"]})),
        ("Stopped", json!({"shared": true})),
    ] {
        let mut body = json!({"name": name, "agent": "command", "agent_settings": {"command": ["true"]}});
        body.as_object_mut().unwrap().extend(scope.as_object().unwrap().clone());
        assert_eq!(app.post_json("/api/v1/clankers", &body).await.status(), 201);
    }
    for clanker in ["allowed", "elsewhere"] {
        let started: Value =
            app.post_json(&format!("/api/v1/clankers/{clanker}/start"), &json!({})).await.json().await.unwrap();
        assert_eq!(started["status"], "active", "{started}");
    }
    // Documents to approve and revise.
    let tid = ticket.parse().unwrap();
    app.store.save_agent_document(tid, Phase::Research, "# Research\n", JobId::new()).await.unwrap();
    Fixture { app, ticket }
}

/// The answer to a research run request with `clanker`.
async fn research(f: &Fixture, clanker: &str) -> Value {
    let path = format!("/api/v1/tickets/{}/runs", f.ticket);
    f.app.post_json(&path, &json!({"phase": "research", "clanker": clanker})).await.json().await.unwrap()
}

/// Starts a run each way with `clanker`; returns each answer's status and code.
async fn every_way(f: &Fixture, clanker: &str) -> Vec<(&'static str, u16, String)> {
    let t = &f.ticket;
    let earlier = research(f, "allowed").await["id"].as_str().map(str::to_owned);
    let attempts: Vec<(&'static str, String, Value)> = vec![
        ("run", format!("/api/v1/tickets/{t}/runs"), json!({"phase": "research", "clanker": clanker})),
        (
            "revision",
            format!("/api/v1/tickets/{t}/documents/research/revise"),
            json!({"clanker": clanker, "feedback": "More detail"}),
        ),
        (
            "approve_and_continue",
            format!("/api/v1/tickets/{t}/approve-and-continue"),
            json!({"phase": "research", "clanker": clanker}),
        ),
    ];
    let mut answers = Vec::new();
    for (way, path, body) in attempts {
        let response = f.app.post_json(&path, &body).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        answers.push((way, status, body["code"].as_str().unwrap_or_default().to_owned()));
    }
    // A re-run of an earlier job of that clanker: patch the job's clanker by re-running it
    // after the clanker's state changed (the re-run rebuilds everything through start_run).
    if let Some(earlier) = earlier {
        let response = f.app.post_json(&format!("/api/v1/jobs/{earlier}/rerun"), &json!({})).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        answers.push(("rerun", status, body["code"].as_str().unwrap_or_default().to_owned()));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_run_starts_refuses_a_clanker_outside_its_projects_and_a_stopped_one_alike() {
    let f = fixture().await;
    for (way, status, code) in every_way(&f, "elsewhere").await {
        if way == "rerun" {
            continue; // the earlier job ran with `allowed`
        }
        assert_eq!((way, status, code.as_str()), (way, 403, "clanker_not_allowed"));
    }
    for (way, status, code) in every_way(&f, "stopped").await {
        if way == "rerun" {
            continue;
        }
        assert_eq!((way, status, code.as_str()), (way, 422, "clanker_not_started"));
    }
    // The refusal names the clanker and the fix.
    let refused = research(&f, "elsewhere").await;
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("elsewhere") && message.contains("shop") && message.contains("shared"), "{message}");

    // A re-run checks the clanker as it is now: stopped since the first run, it is refused.
    let first = research(&f, "allowed").await;
    f.app.post_json("/api/v1/clankers/allowed/stop", &json!({})).await;
    let rerun = f.app.post_json(&format!("/api/v1/jobs/{}/rerun", first["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(rerun.status(), 422);
    let body: Value = rerun.json().await.unwrap();
    assert_eq!(body["code"], "clanker_not_started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_run_starts_refuses_an_archived_ticket_alike() {
    let f = fixture().await;
    let t = &f.ticket;
    let earlier = research(&f, "allowed").await;
    assert!(f.app.post_json(&format!("/api/v1/tickets/{t}/archive"), &json!({})).await.status().is_success());
    let mut seen = Vec::new();
    for (way, path, body) in [
        ("run", format!("/api/v1/tickets/{t}/runs"), json!({"phase": "research", "clanker": "allowed"})),
        (
            "revision",
            format!("/api/v1/tickets/{t}/documents/research/revise"),
            json!({"clanker": "allowed", "feedback": "More"}),
        ),
        (
            "approve_and_continue",
            format!("/api/v1/tickets/{t}/approve-and-continue"),
            json!({"phase": "research", "clanker": "allowed"}),
        ),
        ("rerun", format!("/api/v1/jobs/{}/rerun", earlier["id"].as_str().unwrap()), json!({})),
    ] {
        let response = f.app.post_json(&path, &body).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        seen.push((
            way,
            status,
            body["code"].as_str().unwrap().to_owned(),
            body["message"].as_str().unwrap().to_owned(),
        ));
    }
    for (way, status, code, message) in &seen {
        assert_eq!((*status, code.as_str()), (422, "archived"), "{way}: {message}");
        assert_eq!(message, &seen[0].3, "{way} says the same as a plain run");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_filed_a_ticket_is_recorded_and_a_viewer_refused_an_approval_is_told_what_approving_needs() {
    let f = fixture().await;
    let (viewer, viewer_user) = f.app.user_client("viewer@example.com", false).await;
    f.app.grant("shop", &viewer_user, "viewer").await;
    let (member, member_user) = f.app.user_client("member@example.com", false).await;
    f.app.grant("shop", &member_user, "member").await;
    let filed: Value = member
        .post(f.app.url("/api/v1/projects/shop/tickets"))
        .json(&json!({"title": "Filed by a member"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(filed["created_by"], member_user["id"], "{filed}");
    let refused = viewer
        .post(f.app.url(&format!("/api/v1/tickets/{}/documents/research/approval", f.ticket)))
        .json(&json!({"action": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("approving, rejecting and revoking need maintainer"), "{body}");
    // Creating and starting clankers is in the audit log.
    let audit: Value = f.app.get("/api/v1/audit?limit=100").await.json().await.unwrap();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    for action in ["clanker_created", "clanker_started", "ticket_filed", "project_created"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}
