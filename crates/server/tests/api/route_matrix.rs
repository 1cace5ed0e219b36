//! Every route, called by every kind of caller: anonymous, a user of no
//! project, a project viewer, member and maintainer, and an administrator.
//! The expectations live here, apart from the server's own rules, and a
//! route the server serves without an expectation here fails the test.

use serde_json::{Value, json};
use viberglass_testkit::{TestApp, TestBackend};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Who {
    Anonymous,
    Outsider,
    Viewer,
    Member,
    Maintainer,
    Admin,
}

use Who::*;

/// The least privileged caller each route admits. `None`: the worker
/// protocol, authenticated by job tokens (see worker_auth.rs).
const EXPECTED: &[(&str, &str, Option<Who>)] = &[
    ("get", "/healthz", Some(Anonymous)),
    ("get", "/readyz", Some(Anonymous)),
    ("get", "/metrics", Some(Anonymous)),
    ("get", "/api/v1/setup", Some(Anonymous)),
    ("post", "/api/v1/setup", Some(Anonymous)),
    ("post", "/api/v1/auth/login", Some(Anonymous)),
    ("post", "/api/v1/auth/logout", Some(Outsider)),
    ("get", "/api/v1/me", Some(Outsider)),
    ("get", "/api/v1/me/tokens", Some(Outsider)),
    ("post", "/api/v1/me/tokens", Some(Outsider)),
    ("delete", "/api/v1/me/tokens/{token_id}", Some(Outsider)),
    ("get", "/api/v1/users", Some(Admin)),
    ("post", "/api/v1/users", Some(Admin)),
    ("patch", "/api/v1/users/{user_id}", Some(Admin)),
    ("get", "/api/v1/audit", Some(Admin)),
    ("get", "/api/v1/doctor", Some(Admin)),
    ("get", "/api/v1/diagnostics", Some(Admin)),
    ("get", "/api/v1/jobs/{job_id}/diagnostics", Some(Admin)),
    ("get", "/api/v1/tickets/{ticket_id}/diagnostics", Some(Admin)),
    ("get", "/api/v1/projects", Some(Outsider)),
    ("post", "/api/v1/projects", Some(Admin)),
    ("get", "/api/v1/projects/{project}", Some(Viewer)),
    ("patch", "/api/v1/projects/{project}", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/archive", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/unarchive", Some(Maintainer)),
    ("get", "/api/v1/projects/{project}/members", Some(Viewer)),
    ("put", "/api/v1/projects/{project}/members/{user_id}", Some(Maintainer)),
    ("delete", "/api/v1/projects/{project}/members/{user_id}", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/tickets", Some(Member)),
    ("get", "/api/v1/projects/{project}/usage", Some(Viewer)),
    ("post", "/api/webhooks/{provider}/{config}", Some(Anonymous)),
    ("post", "/api/slack/events", Some(Anonymous)),
    ("get", "/api/v1/projects/{project}/task-templates", Some(Viewer)),
    ("post", "/api/v1/projects/{project}/task-templates", Some(Maintainer)),
    ("get", "/api/v1/projects/{project}/task-templates/{template_id}", Some(Viewer)),
    ("patch", "/api/v1/projects/{project}/task-templates/{template_id}", Some(Maintainer)),
    ("get", "/api/v1/projects/{project}/schedules", Some(Viewer)),
    ("post", "/api/v1/projects/{project}/schedules", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/schedule-preview", Some(Viewer)),
    ("get", "/api/v1/projects/{project}/schedules/{schedule_id}", Some(Viewer)),
    ("patch", "/api/v1/projects/{project}/schedules/{schedule_id}", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/schedules/{schedule_id}/pause", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/schedules/{schedule_id}/resume", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/schedules/{schedule_id}/run", Some(Member)),
    ("get", "/api/v1/projects/{project}/schedules/{schedule_id}/executions", Some(Viewer)),
    ("get", "/api/v1/projects/{project}/executions/{execution_id}", Some(Viewer)),
    ("get", "/api/v1/slack", Some(Admin)),
    ("put", "/api/v1/slack", Some(Admin)),
    ("delete", "/api/v1/slack", Some(Admin)),
    ("post", "/api/v1/slack/test", Some(Admin)),
    ("get", "/api/v1/tickets/{ticket_id}/slack", Some(Viewer)),
    ("put", "/api/v1/tickets/{ticket_id}/slack", Some(Maintainer)),
    ("delete", "/api/v1/tickets/{ticket_id}/slack", Some(Maintainer)),
    ("get", "/api/v1/projects/{project}/webhooks", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/webhooks", Some(Maintainer)),
    ("get", "/api/v1/projects/{project}/webhooks/{webhook_id}", Some(Maintainer)),
    ("patch", "/api/v1/projects/{project}/webhooks/{webhook_id}", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/webhooks/{webhook_id}/rotate-secret", Some(Maintainer)),
    ("get", "/api/v1/projects/{project}/webhook-deliveries", Some(Maintainer)),
    ("get", "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}", Some(Maintainer)),
    ("get", "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}/payload", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}/redeliver", Some(Maintainer)),
    ("get", "/api/v1/tickets/{ticket_id}/feedback", Some(Viewer)),
    ("get", "/api/v1/webhook-events", Some(Outsider)),
    ("get", "/api/v1/webhook-subscriptions", Some(Admin)),
    ("post", "/api/v1/webhook-subscriptions", Some(Admin)),
    ("get", "/api/v1/projects/{project}/webhook-subscriptions", Some(Maintainer)),
    ("post", "/api/v1/projects/{project}/webhook-subscriptions", Some(Maintainer)),
    ("get", "/api/v1/webhook-subscriptions/{subscription_id}", Some(Maintainer)),
    ("patch", "/api/v1/webhook-subscriptions/{subscription_id}", Some(Maintainer)),
    ("post", "/api/v1/webhook-subscriptions/{subscription_id}/rotate-secret", Some(Maintainer)),
    ("post", "/api/v1/webhook-subscriptions/{subscription_id}/test", Some(Maintainer)),
    ("get", "/api/v1/webhook-subscriptions/{subscription_id}/deliveries", Some(Maintainer)),
    ("get", "/api/v1/webhook-subscriptions/{subscription_id}/deliveries/{delivery_id}", Some(Maintainer)),
    ("post", "/api/v1/webhook-subscriptions/{subscription_id}/deliveries/{delivery_id}/redeliver", Some(Maintainer)),
    ("post", "/api/v1/webhook-subscriptions/{subscription_id}/redeliver-failed", Some(Maintainer)),
    ("get", "/api/v1/tickets", Some(Outsider)),
    ("get", "/api/v1/tickets/{ticket_id}", Some(Viewer)),
    ("patch", "/api/v1/tickets/{ticket_id}", Some(Member)),
    ("post", "/api/v1/tickets/{ticket_id}/archive", Some(Member)),
    ("post", "/api/v1/tickets/{ticket_id}/unarchive", Some(Member)),
    ("post", "/api/v1/tickets/{ticket_id}/runs", Some(Member)),
    ("get", "/api/v1/tickets/{ticket_id}/attachments", Some(Viewer)),
    ("post", "/api/v1/tickets/{ticket_id}/attachments", Some(Member)),
    ("get", "/api/v1/tickets/{ticket_id}/attachments/{attachment_id}", Some(Viewer)),
    ("get", "/api/v1/tickets/{ticket_id}/usage", Some(Viewer)),
    ("get", "/api/v1/tickets/{ticket_id}/documents/{phase}", Some(Viewer)),
    ("put", "/api/v1/tickets/{ticket_id}/documents/{phase}", Some(Member)),
    ("get", "/api/v1/tickets/{ticket_id}/documents/{phase}/revisions", Some(Viewer)),
    ("get", "/api/v1/tickets/{ticket_id}/documents/{phase}/revisions/{revision}", Some(Viewer)),
    ("post", "/api/v1/tickets/{ticket_id}/documents/{phase}/comments", Some(Member)),
    ("patch", "/api/v1/tickets/{ticket_id}/comments/{comment_id}", Some(Member)),
    ("post", "/api/v1/tickets/{ticket_id}/documents/{phase}/approval", Some(Member)),
    ("get", "/api/v1/tickets/{ticket_id}/approvals", Some(Viewer)),
    ("post", "/api/v1/tickets/{ticket_id}/approve-and-continue", Some(Maintainer)),
    ("post", "/api/v1/tickets/{ticket_id}/documents/{phase}/revise", Some(Member)),
    ("put", "/api/v1/tickets/{ticket_id}/override", Some(Maintainer)),
    ("delete", "/api/v1/tickets/{ticket_id}/override", Some(Maintainer)),
    ("post", "/api/v1/tickets/{ticket_id}/prompt-preview", Some(Member)),
    ("get", "/api/v1/projects/{project}/prompts", Some(Viewer)),
    ("put", "/api/v1/projects/{project}/prompts/{kind}", Some(Maintainer)),
    ("delete", "/api/v1/projects/{project}/prompts/{kind}", Some(Maintainer)),
    ("get", "/api/v1/secrets", Some(Outsider)),
    ("post", "/api/v1/secrets", Some(Admin)),
    ("get", "/api/v1/secrets/{name}", Some(Outsider)),
    ("patch", "/api/v1/secrets/{name}", Some(Admin)),
    ("delete", "/api/v1/secrets/{name}", Some(Admin)),
    ("post", "/api/v1/secrets/{name}/test", Some(Admin)),
    ("get", "/api/v1/integrations", Some(Outsider)),
    ("post", "/api/v1/integrations", Some(Admin)),
    ("get", "/api/v1/integrations/{integration}", Some(Outsider)),
    ("patch", "/api/v1/integrations/{integration}", Some(Admin)),
    ("delete", "/api/v1/integrations/{integration}", Some(Admin)),
    ("post", "/api/v1/integrations/{integration}/test", Some(Admin)),
    ("get", "/api/v1/clankers", Some(Outsider)),
    ("post", "/api/v1/clankers", Some(Admin)),
    ("get", "/api/v1/clankers/{clanker}", Some(Outsider)),
    ("patch", "/api/v1/clankers/{clanker}", Some(Admin)),
    ("post", "/api/v1/clankers/{clanker}/start", Some(Admin)),
    ("post", "/api/v1/clankers/{clanker}/stop", Some(Admin)),
    ("get", "/api/v1/jobs", Some(Outsider)),
    ("get", "/api/v1/jobs/{job_id}", Some(Viewer)),
    ("post", "/api/v1/jobs/{job_id}/cancel", Some(Member)),
    ("post", "/api/v1/jobs/{job_id}/rerun", Some(Member)),
    ("get", "/api/v1/jobs/{job_id}/events", Some(Viewer)),
    ("get", "/api/v1/jobs/{job_id}/events/stream", Some(Viewer)),
    ("get", "/api/worker/v1/jobs/{job_id}/bootstrap", None),
    ("post", "/api/worker/v1/jobs/{job_id}/heartbeat", None),
    ("post", "/api/worker/v1/jobs/{job_id}/events", None),
    ("post", "/api/worker/v1/jobs/{job_id}/document", None),
    ("post", "/api/worker/v1/jobs/{job_id}/result", None),
];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_has_an_expectation_here() {
    let app = TestApp::spawn().await;
    let spec: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    let mut missing = Vec::new();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for method in METHODS.iter().filter(|m| operations.get(**m).is_some()) {
            if !EXPECTED.iter().any(|(m, p, _)| m == method && p == path) {
                missing.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these routes have no access expectation in route_matrix.rs (add one, and a rule in auth::RULES): {missing:#?}"
    );
}

pub(crate) struct Fixture {
    pub project: String,
    pub ticket: String,
    pub job: String,
    pub other_user: String,
    pub token_id: String,
    /// The project's outbound webhook subscription.
    pub subscription: String,
    /// The project's task template and a schedule running it.
    pub template: String,
    pub schedule: String,
}

/// A project with a ticket and a job, a started clanker, an integration and a secret.
pub(crate) async fn fixture(app: &TestApp) -> Fixture {
    let project =
        app.create_project(json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Fix it"})).await;
    app.post_json("/api/v1/secrets", &json!({"name": "SOME_SECRET"})).await;
    app.post_json("/api/v1/integrations", &json!({"name": "some-integration", "kind": "github"})).await;
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Some Clanker", "agent": "command", "agent_settings": {"command": ["true"]}}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    let job = app
        .store
        .create_job(viberglass_store::NewJob {
            id: viberglass_domain::JobId::new(),
            project_id: project["id"].as_str().unwrap().parse().unwrap(),
            ticket_id: Some(ticket["id"].as_str().unwrap().parse().unwrap()),
            clanker_id: None,
            spec: crate::worker_auth::spec(),
            requested_by: None,
            request_id: None,
        })
        .await
        .unwrap();
    let (_, other) = app.user_client("other@example.com", false).await;
    let session = viberglass_testkit::app::session_client(
        &app.base_url,
        viberglass_testkit::app::ADMIN_EMAIL,
        viberglass_testkit::app::ADMIN_PASSWORD,
    )
    .await;
    let token: Value = session
        .post(app.url("/api/v1/me/tokens"))
        .json(&json!({"name": "spare"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let subscription: Value = app
        .post_json(
            "/api/v1/projects/shop/webhook-subscriptions",
            &json!({"url": "https://hooks.example.com/viberglass", "events": ["job.failed"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let template: Value = app
        .post_json(
            "/api/v1/projects/shop/task-templates",
            &json!({"name": "chores", "clanker": "some-clanker", "instructions": "Tidy up."}),
        )
        .await
        .json()
        .await
        .unwrap();
    let schedule: Value = app
        .post_json(
            "/api/v1/projects/shop/schedules",
            &json!({"name": "nightly", "template": "chores", "cron": "0 3 * * *", "timezone": "Europe/Berlin"}),
        )
        .await
        .json()
        .await
        .unwrap();
    Fixture {
        template: template["id"].as_str().expect("the fixture's task template").to_owned(),
        schedule: schedule["id"].as_str().expect("the fixture's schedule").to_owned(),
        subscription: subscription["id"].as_str().expect("the fixture's subscription").to_owned(),
        project: "shop".into(),
        ticket: ticket["id"].as_str().unwrap().to_owned(),
        job: job.id.to_string(),
        other_user: other["id"].as_str().unwrap().to_owned(),
        token_id: token["id"].as_str().unwrap().to_owned(),
    }
}

/// A client for each kind of caller, least privileged first; the roles are in
/// the fixture's project. The anonymous client follows no redirects.
pub(crate) async fn callers(app: &TestApp) -> Vec<(Who, reqwest::Client)> {
    let anonymous = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (outsider, _) = app.user_client("outsider@example.com", false).await;
    let mut clients = vec![(Anonymous, anonymous), (Outsider, outsider)];
    for (who, role) in [(Viewer, "viewer"), (Member, "member"), (Maintainer, "maintainer")] {
        let (client, user) = app.user_client(&format!("{role}@example.com"), false).await;
        app.grant("shop", &user, role).await;
        clients.push((who, client));
    }
    clients.push((Admin, app.client.clone()));
    clients
}

fn concrete(path: &str, f: &Fixture) -> String {
    path.replace("{project}", &f.project)
        .replace("{ticket_id}", &f.ticket)
        .replace("{job_id}", &f.job)
        .replace("{user_id}", &f.other_user)
        .replace("{token_id}", &f.token_id)
        .replace("{clanker}", "some-clanker")
        .replace("{integration}", "some-integration")
        .replace("{name}", "SOME_SECRET")
        .replace("{phase}", "planning")
        .replace("{revision}", "1")
        .replace("{comment_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{kind}", "research")
        .replace("{attachment_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{provider}", "github")
        .replace("{config}", &uuid::Uuid::now_v7().to_string())
        .replace("{webhook_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{delivery_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{subscription_id}", &f.subscription)
        .replace("{template_id}", &f.template)
        .replace("{schedule_id}", &f.schedule)
        .replace("{execution_id}", &uuid::Uuid::now_v7().to_string())
}

/// Every route with every caller: admitted callers never get 401 or 403;
/// the others get 401 (anonymous) or 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_admits_exactly_the_callers_its_rule_names() {
    let app = TestApp::spawn_on(TestBackend::Sqlite).await;
    let f = fixture(&app).await;
    let clients = callers(&app).await;

    let mut wrong = Vec::new();
    // Least privileged first, so that what the privileged callers change
    // (archive, delete) does not hide a refusal.
    for (who, client) in &clients {
        for (method, path, least) in EXPECTED {
            let Some(least) = least else { continue };
            if *path == "/api/v1/setup"
                || *path == "/api/v1/auth/logout"
                || path.ends_with("/stream")
                || (*method == "post" && *path == "/api/v1/me/tokens")
            {
                continue; // Covered elsewhere: they change or hold the session, or need one.
            }
            let url = app.url(&concrete(path, &f));
            let request = client.request(method.to_uppercase().parse().unwrap(), url);
            let request = if *method == "get" || *method == "delete" { request } else { request.json(&json!({})) };
            let status = request.send().await.unwrap().status().as_u16();
            let admitted = who >= least;
            let refused = matches!(status, 401 | 403);
            if admitted == refused {
                wrong.push(format!(
                    "{:?} {} {path}: got {status}, expected {}",
                    who,
                    method.to_uppercase(),
                    if admitted { "admission" } else { "401/403" }
                ));
            }
            if !admitted {
                let expected = if *who == Anonymous { 401 } else { 403 };
                if status != expected {
                    wrong.push(format!("{who:?} {} {path}: got {status}, expected {expected}", method.to_uppercase()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the route matrix disagrees:\n{}", wrong.join("\n"));

    // The live stream: a viewer may follow it, an outsider may not.
    let stream = |client: &reqwest::Client| {
        client.get(app.url(&format!("/api/v1/jobs/{}/events/stream", f.job))).timeout(std::time::Duration::from_secs(2))
    };
    let outsider = &clients[1].1;
    assert_eq!(stream(outsider).send().await.unwrap().status(), 403);
    let viewer = &clients[2].1;
    assert_eq!(stream(viewer).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_only_the_callers_projects() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "Mine"})).await;
    app.create_project(json!({"name": "Theirs"})).await;
    app.create_ticket("mine", json!({"title": "a"})).await;
    app.create_ticket("theirs", json!({"title": "b"})).await;
    let (client, user) = app.user_client("dev@example.com", false).await;
    app.grant("mine", &user, "viewer").await;
    let projects: Value = client.get(app.url("/api/v1/projects")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = projects["items"].as_array().unwrap().iter().map(|p| p["slug"].as_str().unwrap()).collect();
    assert_eq!(names, ["mine"]);
    let tickets: Value = client.get(app.url("/api/v1/tickets")).send().await.unwrap().json().await.unwrap();
    let titles: Vec<&str> = tickets["items"].as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["a"]);
    let all: Value = app.get("/api/v1/projects").await.json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "an administrator sees everything");
}
