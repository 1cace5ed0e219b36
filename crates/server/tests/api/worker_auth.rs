//! The worker protocol refuses every token but the job's own, and the job's
//! own once the job has ended.

use serde_json::json;
use viberglass_domain::{ClankerInput, HarnessSpec, JobId, JobSpec, NewClanker, Phase};
use viberglass_server::identity::hash_token;
use viberglass_store::{NewJob, Outcome};
use viberglass_testkit::{TestApp, TestBackend};

pub fn spec() -> JobSpec {
    JobSpec {
        phase: Phase::Execution,
        repository_url: "file:///srv/repo.git".into(),
        base_branch: "main".into(),
        branch: "viberglass/x".into(),
        prompt: "p".into(),
        harness: HarnessSpec::Command { command: vec!["true".into()] },
        instruction_files: Vec::new(),
        max_execution_secs: 600,
        heartbeat_interval_secs: 5,
        heartbeat_grace_secs: 600,
        keep_workspace_on_failure: false,
        ticket_title: "t".into(),
        secret_names: Vec::new(),
        clanker_name: "c".into(),
        scm: None,
        commit_author: Default::default(),
        agent_silence_secs: 300,
        traceparent: None,
    }
}

/// Every worker route, with a body it accepts.
fn routes(job: JobId) -> Vec<(reqwest::Method, String, Option<serde_json::Value>)> {
    let base = format!("/api/worker/v1/jobs/{job}");
    vec![
        (reqwest::Method::GET, format!("{base}/bootstrap"), None),
        (reqwest::Method::POST, format!("{base}/heartbeat"), None),
        (
            reqwest::Method::POST,
            format!("{base}/events"),
            Some(json!({"events": [{"seq": 1, "kind": "log", "message": "hello"}]})),
        ),
        (reqwest::Method::POST, format!("{base}/document"), Some(json!({"content": "# Doc"}))),
        (
            reqwest::Method::POST,
            format!("{base}/result"),
            Some(json!({"outcome": "completed", "result": {}, "summary": "done"})),
        ),
    ]
}

async fn status(
    app: &TestApp,
    method: &reqwest::Method,
    path: &str,
    body: &Option<serde_json::Value>,
    token: Option<&str>,
) -> u16 {
    as_instance(app, method, path, body, token, "the-jobs-own-worker-0001").await
}

/// A call from the worker process named `instance`.
async fn as_instance(
    app: &TestApp,
    method: &reqwest::Method,
    path: &str,
    body: &Option<serde_json::Value>,
    token: Option<&str>,
    instance: &str,
) -> u16 {
    let mut request = app
        .client
        .request(method.clone(), app.url(path))
        .header(viberglass_domain::protocol::INSTANCE_HEADER, instance);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_and_expired_tokens_are_refused_on_every_worker_route() {
    // No dispatcher: these jobs are claimed by hand.
    let app = TestApp::builder(TestBackend::Sqlite).without_dispatcher().spawn().await;
    let project = app.create_project(json!({"name": "App"})).await;
    let project_id = project["id"].as_str().unwrap().parse().unwrap();
    let input: ClankerInput =
        serde_json::from_value(json!({"name": "c", "agent": "command", "agent_settings": {"command": ["true"]}}))
            .unwrap();
    let clanker = app.store.create_clanker(NewClanker::parse(input).unwrap()).await.unwrap();
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let new = NewJob {
            id: JobId::new(),
            project_id,
            ticket_id: None,
            clanker_id: Some(clanker.id),
            spec: spec(),
            requested_by: None,
            request_id: None,
        };
        jobs.push(app.store.create_job(new).await.unwrap().id);
    }
    let (token_a, token_b) = ("a".repeat(64), "b".repeat(64));
    assert_eq!(app.store.claim_next_job(&hash_token(&token_a)).await.unwrap().unwrap().id, jobs[0]);
    assert_eq!(app.store.claim_next_job(&hash_token(&token_b)).await.unwrap().unwrap().id, jobs[1]);

    for (method, path, body) in routes(jobs[0]) {
        for (token, why) in [
            (None, "no token"),
            (Some("f".repeat(64)), "a forged token"),
            (Some(token_b.clone()), "another job's token"),
        ] {
            let got = status(&app, &method, &path, &body, token.as_deref()).await;
            assert_eq!(got, 401, "{method} {path} with {why}");
        }
    }
    let unknown = routes(JobId::new());
    let got = status(&app, &unknown[0].0, &unknown[0].1, &None, Some(&token_a)).await;
    assert_eq!(got, 401, "a job that does not exist");

    // The right token works while the job runs...
    for (method, path, body) in routes(jobs[0]).into_iter().take(3) {
        let got = status(&app, &method, &path, &body, Some(&token_a)).await;
        assert_eq!(got, 200, "{method} {path} with the job's own token");
    }
    // ...and is dead once the job has ended.
    app.store.finish_job(jobs[0], Outcome::Cancelled { by: "test".into() }).await.unwrap();
    for (method, path, body) in routes(jobs[0]) {
        let got = status(&app, &method, &path, &body, Some(&token_a)).await;
        assert_eq!(got, 410, "{method} {path} after the job ended");
    }
}

/// A job with a claimed token, on a server without a dispatcher.
async fn claimed_job(app: &TestApp, spec: JobSpec, ticket: Option<viberglass_domain::TicketId>) -> (JobId, String) {
    let project = app.create_project(json!({"name": format!("App {}", JobId::new())})).await;
    let project_id = project["id"].as_str().unwrap().parse().unwrap();
    let new = NewJob {
        id: JobId::new(),
        project_id,
        ticket_id: ticket,
        clanker_id: None,
        spec,
        requested_by: None,
        request_id: None,
    };
    let id = app.store.create_job(new).await.unwrap().id;
    let token = hex_token();
    assert_eq!(app.store.claim_next_job(&hash_token(&token)).await.unwrap().unwrap().id, id);
    (id, token)
}

fn hex_token() -> String {
    JobId::new().as_uuid().simple().to_string().repeat(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_answers_its_worker_only_and_a_second_caller_stops_the_job() {
    let app = TestApp::builder(TestBackend::Sqlite).without_dispatcher().spawn().await;
    let (job, token) = claimed_job(&app, spec(), None).await;
    let path = format!("/api/worker/v1/jobs/{job}/bootstrap");
    let get = reqwest::Method::GET;
    assert_eq!(as_instance(&app, &get, &path, &None, Some(&token), "worker-aaaaaaaaaaaaaaaa").await, 200);
    // The worker's own retry (its answer was lost) is answered again.
    assert_eq!(as_instance(&app, &get, &path, &None, Some(&token), "worker-aaaaaaaaaaaaaaaa").await, 200);
    // Without naming itself, nobody is answered.
    let bare = app.client.get(app.url(&path)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(bare.status(), 400);
    // Someone who found the token (an agent reading its parent's memory) asks: nothing, and the job stops.
    assert_eq!(as_instance(&app, &get, &path, &None, Some(&token), "agent-bbbbbbbbbbbbbbbbb").await, 409);
    let events = app.store.list_job_events(job, 0, 100).await.unwrap();
    assert!(
        events.iter().any(|e| e.level == viberglass_domain::LogLevel::Warn && e.message.contains("second bootstrap")),
        "{events:?}"
    );
    let ended = app.store.get_job(job).await.unwrap();
    assert_eq!(ended.status, viberglass_domain::JobStatus::Failed);
    assert_eq!(ended.failure.unwrap().code, "token_reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_claiming_a_foreign_branch_or_pull_request_is_refused() {
    let app = TestApp::builder(TestBackend::Sqlite).without_dispatcher().spawn().await;
    let result = |token: &str, job: JobId, report: serde_json::Value| {
        let request =
            app.client.post(app.url(&format!("/api/worker/v1/jobs/{job}/result"))).bearer_auth(token).json(&report);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Pushed to the base branch instead of the job's.
    let (job, token) = claimed_job(&app, spec(), None).await;
    let foreign = json!({"outcome": "completed", "summary": "done",
        "result": {"branch": "main", "commit": "abc", "pushed": true}});
    assert_eq!(result(&token, job, foreign).await, 200);
    let ended = app.store.get_job(job).await.unwrap();
    assert_eq!(ended.status, viberglass_domain::JobStatus::Failed);
    assert_eq!(ended.failure.unwrap().code, "foreign_branch");
    assert_eq!(ended.branch, None, "the next run does not continue a branch it never chose");

    // A pull request somewhere else than the project's forge.
    let input: viberglass_domain::TicketInput = serde_json::from_value(json!({"title": "t"})).unwrap();
    let project = app.create_project(json!({"name": "Forge"})).await;
    let ticket = app
        .store
        .create_ticket(
            project["id"].as_str().unwrap().parse().unwrap(),
            viberglass_domain::NewTicket::parse(input).unwrap(),
            None,
        )
        .await
        .unwrap();
    let mut on_forge = spec();
    on_forge.repository_url = "https://forge.example/acme/app.git".into();
    let (job, token) = claimed_job(&app, on_forge, Some(ticket.id)).await;
    let phished = json!({"outcome": "completed", "summary": "done", "result": {"branch": "viberglass/x", "commit": "abc",
        "pushed": true, "pull_request": {"number": 1, "url": "https://evil.example/login", "created": true}}});
    assert_eq!(result(&token, job, phished).await, 200);
    let ended = app.store.get_job(job).await.unwrap();
    assert_eq!(ended.failure.unwrap().code, "foreign_pull_request");
    assert_eq!(app.store.get_ticket(ticket.id).await.unwrap().pull_request_url, None, "no link to elsewhere");

    // A worker may not claim the layers only the server decides.
    let (job, token) = claimed_job(&app, spec(), None).await;
    let claimed = json!({"outcome": "failed", "failure": {"layer": "cancelled", "code": "x", "message": "m",
        "detail": "", "retryable": false}});
    assert_eq!(result(&token, job, claimed).await, 200);
    assert_eq!(app.store.get_job(job).await.unwrap().failure.unwrap().layer, viberglass_domain::FailureLayer::Internal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_polls_a_job_and_its_new_log_lines() {
    let app = TestApp::builder(TestBackend::Sqlite).without_dispatcher().spawn().await;
    let (job, _) = claimed_job(&app, spec(), None).await;
    let lines: Vec<_> = (1..=5)
        .map(|seq| viberglass_domain::NewJobEvent {
            seq,
            kind: viberglass_domain::EventKind::Log,
            level: viberglass_domain::LogLevel::Info,
            message: format!("line {seq}"),
            data: None,
        })
        .collect();
    assert_eq!(app.store.append_worker_events(job, &lines).await.unwrap(), 5);
    let page: serde_json::Value =
        app.get(&format!("/api/v1/jobs/{job}/events?limit=3&include_job=true")).await.json().await.unwrap();
    assert_eq!(page["job"]["id"], job.to_string(), "{page}");
    assert_eq!(page["job"]["status"], "dispatching", "{page}");
    let messages: Vec<_> = page["items"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["queued", "dispatching: starting the worker", "line 1"]);
    // The next polls ask for what came after; without `include_job` a page is the events alone.
    let app = &app;
    let page_after = |after: i64| {
        let path = format!("/api/v1/jobs/{job}/events?after={after}&limit=3");
        async move {
            let page: serde_json::Value = app.get(&path).await.json().await.unwrap();
            assert!(page.get("job").is_none(), "{page}");
            let messages: Vec<String> =
                page["items"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap().to_owned()).collect();
            (messages, page["next_after"].as_i64())
        }
    };
    let (messages, next) = page_after(page["next_after"].as_i64().unwrap()).await;
    assert_eq!(messages, ["line 2", "line 3", "line 4"]);
    let (messages, next) = page_after(next.unwrap()).await;
    assert_eq!(messages, ["line 5"]);
    assert_eq!(next, None, "a page that is not full has no next page");
    let refused = app.get(&format!("/api/v1/jobs/{job}/events?include_job=perhaps")).await;
    assert_eq!(refused.status(), 400);
}
