//! The worker protocol refuses every token but the job's own, and the job's
//! own once the job has ended.

use serde_json::json;
use viberglass_domain::{ClankerInput, HarnessSpec, JobId, JobSpec, NewClanker, Phase};
use viberglass_server::engine::hash_token;
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
    let mut request = app.client.request(method.clone(), app.url(path));
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
    // A dispatcher that never wakes on its own: these jobs are claimed by hand.
    let app = TestApp::builder(TestBackend::Sqlite).env("VIBERGLASS_DISPATCH_INTERVAL_MS", "600000").spawn().await;
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
