//! Execution ends in a pull request: real server, real `viberglass worker`
//! processes, real git over smart HTTP, and the fake forge's GitHub and
//! GitLab APIs with their state (pull requests, comments, tokens, protection).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::fake_forge::{ALL, FakeForge, Permission};
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::{TestApp, TestBackend, backend_tests};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
const TOKEN: &str = "forge-token-5f1c2a9e7d";

/// What the scripted agent does: print the checkout's `.git/config` (so the
/// test sees what git stored), change a file, and write the PR files.
const AGENT: &str = "cat .git/config && echo \"run $(date +%s%N)\" >> CHANGES.md \
                     && printf 'Add a changelog\\n' > PR_TITLE.md \
                     && printf 'Adds CHANGES.md so releases are explained.\\n' > PR_DESCRIPTION.md";

async fn app(backend: TestBackend) -> TestApp {
    TestApp::builder(backend)
        .env("VIBERGLASS_WORKER_BINARY", BINARY)
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_REAPER_INTERVAL_MS", "200")
        .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
        .env("VIBERGLASS_COMMIT_AUTHOR", "Shop Bot <bot@shop.example>")
        .env("VG_FORGE_TOKEN", TOKEN)
        .spawn()
        .await
}

/// A `kind` integration on the forge holding `VG_FORGE_TOKEN`, a project on
/// `acme/shop` using it, a started command clanker and a ticket. Returns the ticket id.
async fn setup(app: &TestApp, forge: &FakeForge, kind: &str, project: Value) -> String {
    let secret = app.post_json("/api/v1/secrets", &json!({"name": "FORGE_TOKEN", "reference": "VG_FORGE_TOKEN"})).await;
    assert_eq!(secret.status(), 201);
    let integration = app
        .post_json(
            "/api/v1/integrations",
            &json!({"name": "forge", "kind": kind, "base_url": forge.base_url(), "credential_secret": "FORGE_TOKEN"}),
        )
        .await;
    assert_eq!(integration.status(), 201, "{}", integration.text().await.unwrap());
    let mut body = json!({"name": "Shop", "repository_url": forge.clone_url("acme/shop"), "scm_integration": "forge", "planning_needs_approval": false});
    body.as_object_mut().unwrap().extend(project.as_object().unwrap().clone());
    app.create_project(body).await;
    clanker_and_ticket(app, AGENT).await
}

async fn clanker_and_ticket(app: &TestApp, script: &str) -> String {
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["sh", "-c", script]}}),
        )
        .await;
    assert_eq!(clanker.status(), 201, "{}", clanker.text().await.unwrap());
    app.post_json("/api/v1/clankers/scripted/start", &json!({})).await;
    let ticket =
        app.create_ticket("shop", json!({"title": "Explain releases", "description": "We need a changelog."})).await;
    ticket["id"].as_str().unwrap().to_owned()
}

/// Runs an execution and waits for its end.
async fn execute(app: &TestApp, ticket: &str) -> Value {
    let response = app
        .post_json(&format!("/api/v1/tickets/{ticket}/runs"), &json!({"phase": "execution", "clanker": "scripted"}))
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job: Value = app.get(&format!("/api/v1/jobs/{id}")).await.json().await.unwrap();
        if ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn events(app: &TestApp, job: &Value) -> Vec<String> {
    let page: Value =
        app.get(&format!("/api/v1/jobs/{}/events?limit=1000", job["id"].as_str().unwrap())).await.json().await.unwrap();
    page["items"].as_array().unwrap().iter().map(|e| e.to_string()).collect()
}

/// The token must not be in the job's events, its worker log, or anything git stored.
async fn assert_token_nowhere(app: &TestApp, job: &Value) {
    let events = events(app, job).await;
    assert!(events.iter().any(|e| e.contains("[remote \\\"origin\\\"]")), "the agent printed .git/config: {events:#?}");
    for event in &events {
        assert!(!event.contains(TOKEN), "the token leaked into an event: {event}");
        assert!(!event.contains("forge-token"), "{event}");
    }
    let workspace = app.data_dir.join("workspaces").join(job["id"].as_str().unwrap());
    let log = std::fs::read_to_string(workspace.join("worker.log")).unwrap();
    assert!(!log.contains(TOKEN), "the token leaked into the worker log");
}

async fn end_to_end(backend: TestBackend, kind: &str) {
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "# Shop\n")]);
    forge.add_token(TOKEN, "shop-bot", ALL);
    let app = app(backend).await;
    let ticket = setup(&app, &forge, kind, json!({})).await;

    let first = execute(&app, &ticket).await;
    assert_eq!(first["status"], "completed", "{first}");
    let pr = &first["result"]["pull_request"];
    assert_eq!(pr["created"], true, "{first}");
    let url = pr["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&forge.base_url()), "{url}");
    let pulls = forge.pulls("acme/shop");
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].title, "Add a changelog");
    assert!(
        pulls[0].body.starts_with(&format!("{}\nAdds CHANGES.md so releases are explained.", "<!-- viberglass -->")),
        "{}",
        pulls[0].body
    );
    assert!(pulls[0].body.contains(&format!("/tickets/{ticket})")), "the body links back: {}", pulls[0].body);
    assert!(!pulls[0].body.contains("/api/v1/tickets"), "to the ticket's page, not the JSON API: {}", pulls[0].body);
    assert_eq!(pulls[0].base, "main");
    let branch = first["result"]["branch"].as_str().unwrap();
    assert_eq!(pulls[0].head, branch);
    assert!(first["status_message"].as_str().unwrap().contains(&url), "{first}");

    // The ticket shows the pull request.
    let shown: Value = app.get(&format!("/api/v1/tickets/{ticket}")).await.json().await.unwrap();
    assert_eq!(shown["pull_request_url"], url.as_str());

    // The commit: titled from PR_TITLE.md, by the configured author, with trailers.
    let log = forge.git("acme/shop", &["log", "-1", "--format=%an <%ae>%n%s%n%b", branch]);
    assert!(log.starts_with("Shop Bot <bot@shop.example>\nAdd a changelog\n"), "{log}");
    assert!(log.contains(&format!("Viberglass-Ticket: {ticket}")), "{log}");
    assert!(log.contains(&format!("Viberglass-Job: {}", first["id"].as_str().unwrap())), "{log}");
    assert_token_nowhere(&app, &first).await;

    // A follow-up execution adds a commit to the same branch and updates the same PR.
    let second = execute(&app, &ticket).await;
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(second["result"]["pull_request"]["created"], false, "{second}");
    assert_eq!(second["result"]["pull_request"]["url"], url.as_str());
    assert_eq!(second["result"]["branch"], branch);
    let pulls = forge.pulls("acme/shop");
    assert_eq!(pulls.len(), 1, "no second pull request: {pulls:?}");
    assert_eq!(pulls[0].comments.len(), 1, "{pulls:?}");
    assert!(pulls[0].comments[0].contains(second["id"].as_str().unwrap()), "{pulls:?}");
    let commits = forge.git("acme/shop", &["rev-list", "--count", branch]);
    assert_eq!(commits.trim(), "3", "the base commit and one per run");
    assert_token_nowhere(&app, &second).await;
}

async fn github_end_to_end(backend: TestBackend) {
    end_to_end(backend, "github").await;
}

backend_tests!(github_end_to_end);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_end_to_end() {
    end_to_end(TestBackend::Sqlite, "gitlab").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_pull_request_write_fails_naming_the_permission() {
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "# Shop\n")]);
    forge.add_token(TOKEN, "shop-bot", &[Permission::ContentsRead, Permission::ContentsWrite]);
    let app = app(TestBackend::Sqlite).await;
    let ticket = setup(&app, &forge, "github", json!({})).await;
    let job = execute(&app, &ticket).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["failure"]["layer"], "pull_request", "{job}");
    assert_eq!(job["failure"]["code"], "pull_request_not_permitted", "{job}");
    let message = job["failure"]["message"].as_str().unwrap();
    assert!(message.contains("pull_request: write") && message.contains("pushed"), "{message}");
    // The branch made it; only the pull request did not.
    assert!(!forge.git("acme/shop", &["branch", "--list", "viberglass/*"]).trim().is_empty());
    assert!(forge.pulls("acme/shop").is_empty());
    // ...and the failed job still says which branch and commit it pushed.
    let branch = job["branch"].as_str().expect("the pushed branch is kept");
    assert!(branch.starts_with("viberglass/"), "{job}");
    assert_eq!(job["result"]["branch"], branch, "{job}");
    assert!(job["commit_sha"].as_str().is_some_and(|c| c.len() >= 40), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_branch_refuses_the_push_and_says_so() {
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "# Shop\n")]);
    forge.add_token(TOKEN, "shop-bot", ALL);
    forge.protect("acme/shop", "main");
    let app = app(TestBackend::Sqlite).await;
    // A template that sends work straight to the protected base branch.
    let ticket = setup(&app, &forge, "github", json!({"branch_name_template": "main"})).await;
    let job = execute(&app, &ticket).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["failure"]["layer"], "push", "{job}");
    assert_eq!(job["failure"]["code"], "push_protected_branch", "{job}");
    assert!(job["failure"]["message"].as_str().unwrap().contains("protected"), "{job}");
    assert!(job["failure"]["detail"].as_str().unwrap().contains("GH006"), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_repository_says_so() {
    let forge = FakeForge::start().await;
    forge.add_token(TOKEN, "shop-bot", ALL);
    let app = app(TestBackend::Sqlite).await;
    let ticket = setup(&app, &forge, "gitlab", json!({})).await;
    let job = execute(&app, &ticket).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["failure"]["code"], "repository_not_found", "{job}");
    assert!(job["failure"]["message"].as_str().unwrap().contains("does not exist"), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_git_remote_gets_the_branch_and_the_change_is_recorded() {
    let app = app(TestBackend::Sqlite).await;
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false})).await;
    let ticket = clanker_and_ticket(&app, "echo 'Fixed.' >> README.md").await;
    let job = execute(&app, &ticket).await;
    assert_eq!(job["status"], "completed", "{job}");
    let result = &job["result"];
    assert!(result["pull_request"].is_null(), "plain git opens no pull request: {result}");
    assert!(result["diff_stat"].as_str().unwrap().contains("README.md"), "{result}");
    assert!(result["diff"].as_str().unwrap().contains("+Fixed."), "{result}");
    let branch = result["branch"].as_str().unwrap();
    assert!(repo.git(&["log", "-1", "--format=%s", branch]).trim() == "Explain releases", "the ticket title");
    let shown: Value = app.get(&format!("/api/v1/tickets/{ticket}")).await.json().await.unwrap();
    assert!(shown["pull_request_url"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_on_a_forge_without_a_credential_is_refused_up_front() {
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "# Shop\n")]);
    let app = app(TestBackend::Sqlite).await;
    let integration = app
        .post_json("/api/v1/integrations", &json!({"name": "forge", "kind": "github", "base_url": forge.base_url()}))
        .await;
    assert_eq!(integration.status(), 201);
    app.create_project(
        json!({"name": "Shop", "repository_url": forge.clone_url("acme/shop"), "scm_integration": "forge", "planning_needs_approval": false}),
    )
    .await;
    let ticket = clanker_and_ticket(&app, "true").await;
    let response = app
        .post_json(&format!("/api/v1/tickets/{ticket}/runs"), &json!({"phase": "execution", "clanker": "scripted"}))
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "no_scm_credential", "{body}");
}

/// The job's secrets never reach its stored or streamed logs: an agent that
/// prints its API key and a git that prints the token show `***`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_printed_by_the_agent_or_git_are_redacted() {
    let app = app(TestBackend::Sqlite).await;
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    for (name, value) in [("API_KEY", "sk-live-4f9a8b7c6d5e"), ("GIT_TOKEN", "ghp_redact_me_0123456789")] {
        let created =
            app.post_json("/api/v1/secrets", &json!({"name": name, "backend": "database", "value": value})).await;
        assert_eq!(created.status(), 201);
    }
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "credential_secret": "GIT_TOKEN", "planning_needs_approval": false})).await;
    let script = "echo \"my key is $API_KEY\" && git -c user.name=\"$GIT_TOKEN\" -c user.email=x@y var GIT_COMMITTER_IDENT \
                  && echo fixed >> README.md";
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["sh", "-c", script]},
                    "secrets": ["API_KEY", "GIT_TOKEN"]}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    app.post_json("/api/v1/clankers/scripted/start", &json!({})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Leak nothing"})).await;
    let job = execute(&app, ticket["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed", "{job}");

    let stored = events(&app, &job).await.join("\n");
    assert!(stored.contains("my key is ***"), "{stored}");
    assert!(stored.contains("*** <x@y>"), "git's output is redacted too: {stored}");
    let streamed = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{}/events/stream", job["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [&stored, &streamed, &job.to_string()] {
        assert!(!text.contains("sk-live-4f9a8b7c6d5e") && !text.contains("ghp_redact_me"), "a secret leaked: {text}");
    }
    assert!(streamed.contains("my key is ***"));
}
