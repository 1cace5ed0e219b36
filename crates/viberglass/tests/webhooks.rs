//! Ticket sources: signed deliveries from GitHub, GitLab, Jira, Shortcut,
//! Linear and custom senders (the testkit's sender signs as each provider
//! does, over the recorded sample payloads) file tickets exactly once; a
//! comment naming the bot starts a run through the outbox; the run's outcome
//! comes back as a comment (and labels on GitHub and GitLab) on the fakes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::fake_forge::{ALL, FakeForge};
use viberglass_testkit::fake_tracker::{FakeTracker, Tracker};
use viberglass_testkit::webhooks::{self as hooks, sample, set};
use viberglass_testkit::{TestApp, TestBackend, backend_tests};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
const TOKEN: &str = "forge-token-5f1c2a9e7d";
const SECRET: &str = "whsec-0123456789abcdef";

/// The scripted agent: the phase's document, or a change with a pull request title.
const AGENT: &str = r#"case "$VIBERGLASS_PHASE" in
  research) printf '# Findings\n\nThe cart forgets items.\n' > RESEARCH.md ;;
  planning) printf '# Plan\n\nKeep the cart.\n' > PLAN.md ;;
  *) echo "fixed $(date +%s%N)" >> CHANGES.md && printf 'Keep the cart\n' > PR_TITLE.md ;;
esac"#;

async fn app(backend: TestBackend) -> TestApp {
    TestApp::builder(backend)
        .env("VIBERGLASS_WORKER_BINARY", BINARY)
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_REAPER_INTERVAL_MS", "200")
        .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
        .env("VG_FORGE_TOKEN", TOKEN)
        .env("VG_TRACKER_TOKEN", "tracker-key-77")
        .env("VG_JIRA_TOKEN", "bot@acme.example:jira-key-77")
        .spawn()
        .await
}

/// A project on `acme/shop` of a `kind` forge (planning needs no approval), and a started command clanker.
async fn project_on(app: &TestApp, forge: &FakeForge, kind: &str) {
    forge.add_token(TOKEN, "shop-bot", ALL);
    forge.add_repo("acme/shop", &[("README.md", "# Shop\n")]);
    app.post_json("/api/v1/secrets", &json!({"name": "FORGE_TOKEN", "reference": "VG_FORGE_TOKEN"})).await;
    let integration =
        json!({"name": "forge", "kind": kind, "base_url": forge.base_url(), "credential_secret": "FORGE_TOKEN"});
    assert_eq!(app.post_json("/api/v1/integrations", &integration).await.status(), 201);
    app.create_project(
        json!({"name": "Shop", "repository_url": forge.clone_url("acme/shop"), "scm_integration": "forge",
        "planning_needs_approval": false, "research_needs_approval": false}),
    )
    .await;
    clanker(app).await;
}

async fn clanker(app: &TestApp) {
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["sh", "-c", AGENT]}}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    app.post_json("/api/v1/clankers/scripted/start", &json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c: Value = app.get("/api/v1/clankers/scripted").await.json().await.unwrap();
        if c["status"] == "active" {
            return;
        }
        assert!(Instant::now() < deadline, "the clanker did not start: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a configuration; returns its URL on the server and the configuration.
async fn configure(app: &TestApp, body: Value) -> (String, Value) {
    let response = app.post_json("/api/v1/projects/shop/webhooks", &body).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let config: Value = response.json().await.unwrap();
    (app.url(config["path"].as_str().unwrap()), config)
}

async fn deliveries(app: &TestApp) -> Vec<Value> {
    let page: Value = app.get("/api/v1/projects/shop/webhook-deliveries?limit=200").await.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

async fn tickets(app: &TestApp) -> Vec<Value> {
    let page: Value = app.get("/api/v1/tickets?project=shop&limit=200").await.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

/// Waits until the ticket has `count` jobs, the newest one ended; returns it.
async fn newest_job(app: &TestApp, ticket: &str, count: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = app.get(&format!("/api/v1/jobs?ticket={ticket}")).await.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        if items.len() >= count {
            let id = items[0]["id"].as_str().unwrap();
            return app.wait_for_job(id, &["completed", "failed", "cancelled"], Duration::from_secs(60)).await;
        }
        assert!(Instant::now() < deadline, "no job {count} for ticket {ticket}: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `check` to hold, reading with `read`.
async fn eventually<T: std::fmt::Debug>(what: &str, mut read: impl FnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = read();
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: still {value:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn github_issue(number: u64, title: &str, labels: &[&str]) -> Value {
    let mut payload = sample("github-issues-opened");
    set(&mut payload, "repository/full_name", json!("acme/shop"));
    set(&mut payload, "issue/number", json!(number));
    set(&mut payload, "issue/title", json!(title));
    set(&mut payload, "issue/body", json!("Items vanish from the cart after a refresh."));
    set(&mut payload, "issue/html_url", json!(format!("https://github.example/acme/shop/issues/{number}")));
    set(&mut payload, "issue/labels", json!(labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>()));
    payload
}

fn github_comment(number: u64, body: &str) -> Value {
    let mut payload = sample("github-issue_comment-created");
    set(&mut payload, "repository/full_name", json!("acme/shop"));
    set(&mut payload, "issue/number", json!(number));
    set(&mut payload, "issue/pull_request", Value::Null);
    set(&mut payload, "comment/body", json!(body));
    set(&mut payload, "comment/user/type", json!("User"));
    set(&mut payload, "comment/performed_via_github_app", Value::Null);
    payload
}

/// GitHub: a signed `issues.opened` files a ticket (severity from its label) and starts research; the
/// research run's start and end come back as comments; `@viberglass execute` starts execution, whose pull
/// request link comes back with the `fix-submitted` label.
async fn a_github_issue_becomes_a_ticket_and_hears_back(backend: TestBackend) {
    let app = app(backend).await;
    let forge = FakeForge::start().await;
    project_on(&app, &forge, "github").await;
    let number = forge.add_issue("acme/shop", "Cart forgets items", &[]);
    let (url, _) = configure(
        &app,
        json!({"provider": "github", "secret": SECRET, "on_new_ticket": "research", "clanker": "scripted"}),
    )
    .await;
    let client = reqwest::Client::new();
    let response = hooks::github(SECRET, "issues", &github_issue(number, "Cart forgets items", &["bug", "P1"]))
        .send(&client, &url)
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    let ticket: Value =
        app.get(&format!("/api/v1/tickets/{}", answer["ticket_id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(ticket["source"], "github");
    assert_eq!(ticket["external_id"], format!("acme/shop#{number}"));
    assert_eq!(ticket["severity"], "high");
    assert_eq!(ticket["category"], "bug");
    assert_eq!(ticket["metadata"]["github_issue"], format!("acme/shop#{number}"));
    let id = ticket["id"].as_str().unwrap().to_owned();

    let research = newest_job(&app, &id, 1).await;
    assert_eq!(research["status"], "completed", "{research}");
    assert_eq!(research["phase"], "research");
    let issue =
        eventually("research feedback", || forge.issue("acme/shop", number).unwrap(), |i| i.comments.len() >= 2).await;
    assert!(issue.comments[0].contains("started the research run"), "{:?}", issue.comments);
    assert!(issue.comments[1].contains("RESEARCH.md is ready"), "{:?}", issue.comments);
    assert!(issue.comments[1].contains(&format!("/tickets/{id}")), "{:?}", issue.comments);

    let response = hooks::github(SECRET, "issue_comment", &github_comment(number, "@viberglass execute please"))
        .send(&client, &url)
        .await;
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    let execution = newest_job(&app, &id, 2).await;
    assert_eq!(execution["status"], "completed", "{execution}");
    assert_eq!(execution["phase"], "execution");
    let pr = execution["pull_request_url"].as_str().unwrap().to_owned();
    let issue = eventually(
        "execution feedback",
        || forge.issue("acme/shop", number).unwrap(),
        |i| i.labels.contains(&"fix-submitted".to_owned()),
    )
    .await;
    assert!(issue.comments.iter().any(|c| c.contains(&pr)), "{:?}", issue.comments);
    // Our own comments never mention anyone, so they cannot trigger a run.
    assert!(issue.comments.iter().all(|c| !c.contains("@viberglass")));

    // A comment without the bot's name, and one by a bot, are recorded as ignored with the reason.
    let plain = hooks::github(SECRET, "issue_comment", &github_comment(number, "thanks!")).send(&client, &url).await;
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["status"], "ignored");
    assert!(plain["message"].as_str().unwrap().contains("does not mention @viberglass"), "{plain}");
    let mut by_bot = github_comment(number, "@viberglass execute");
    set(&mut by_bot, "comment/user/type", json!("Bot"));
    let answer: Value = hooks::github(SECRET, "issue_comment", &by_bot).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "ignored", "{answer}");
    // Nor can someone who is not a member or collaborator of the repository start a run.
    let mut outsider = github_comment(number, "@viberglass execute");
    set(&mut outsider, "comment/author_association", json!("NONE"));
    let answer: Value =
        hooks::github(SECRET, "issue_comment", &outsider).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("not a member or collaborator"), "{answer}");
}

/// GitLab: an Issue Hook files the ticket, a Note Hook naming the bot starts execution, and the merge request
/// comes back as a note with the `fix-submitted` label.
async fn a_gitlab_issue_hears_back_with_a_label(backend: TestBackend) {
    let app = app(backend).await;
    let forge = FakeForge::start().await;
    project_on(&app, &forge, "gitlab").await;
    let iid = forge.add_issue("acme/shop", "Cart forgets items", &[]);
    let (url, _) = configure(&app, json!({"provider": "gitlab", "secret": SECRET, "clanker": "scripted"})).await;
    let client = reqwest::Client::new();
    let mut issue = sample("gitlab-issue-hook");
    set(&mut issue, "project/path_with_namespace", json!("acme/shop"));
    set(&mut issue, "project/id", Value::Null);
    set(&mut issue, "object_attributes/iid", json!(iid));
    set(&mut issue, "object_attributes/action", json!("open"));
    set(&mut issue, "labels", json!([{"title": "critical"}]));
    let answer: Value = hooks::gitlab(SECRET, "Issue Hook", &issue).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    let ticket: Value =
        app.get(&format!("/api/v1/tickets/{}", answer["ticket_id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!((ticket["source"].as_str(), ticket["severity"].as_str()), (Some("gitlab"), Some("critical")));
    let id = ticket["id"].as_str().unwrap().to_owned();

    let mut note = sample("gitlab-note-hook-issue");
    set(&mut note, "project/path_with_namespace", json!("acme/shop"));
    set(&mut note, "project/id", Value::Null);
    set(&mut note, "issue/iid", json!(iid));
    set(&mut note, "object_attributes/note", json!("@viberglass execute"));
    // Note hooks carry no role: GitLab is asked whether the author is a Developer of the project.
    set(&mut note, "user/id", json!(99));
    let answer: Value = hooks::gitlab(SECRET, "Note Hook", &note).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("Developer"), "{answer}");
    forge.add_member("acme/shop", 7, 30);
    set(&mut note, "user/id", json!(7));
    let answer: Value = hooks::gitlab(SECRET, "Note Hook", &note).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    let job = newest_job(&app, &id, 1).await;
    assert_eq!(job["status"], "completed", "{job}");
    let pr = job["pull_request_url"].as_str().unwrap().to_owned();
    let issue = eventually(
        "gitlab feedback",
        || forge.issue("acme/shop", iid).unwrap(),
        |i| i.labels.contains(&"fix-submitted".to_owned()) && i.comments.len() >= 2,
    )
    .await;
    assert!(issue.comments.iter().any(|c| c.contains(&pr)), "{:?}", issue.comments);
}

/// Jira, Shortcut and Linear: a signed created event files the ticket, a comment naming the bot starts
/// research, and the run's outcome comes back as comments on the fake tracker.
async fn trackers_file_tickets_and_hear_back(backend: TestBackend) {
    let app = app(backend).await;
    let forge = FakeForge::start().await;
    project_on(&app, &forge, "github").await;
    let tracker = FakeTracker::start().await;
    tracker.set_token(Tracker::Shortcut, "tracker-key-77");
    tracker.set_token(Tracker::Linear, "tracker-key-77");
    tracker.set_token(Tracker::Jira, "bot@acme.example:jira-key-77");
    app.post_json("/api/v1/secrets", &json!({"name": "TRACKER_TOKEN", "reference": "VG_TRACKER_TOKEN"})).await;
    app.post_json("/api/v1/secrets", &json!({"name": "JIRA_TOKEN", "reference": "VG_JIRA_TOKEN"})).await;
    let client = reqwest::Client::new();
    let feedback = |provider: &str| {
        json!({"provider": provider, "secret": SECRET, "clanker": "scripted", "feedback_api_url": tracker.url(),
            "feedback_secret": if provider == "jira" { "JIRA_TOKEN" } else { "TRACKER_TOKEN" }})
    };

    // Jira.
    let (url, _) = configure(&app, feedback("jira")).await;
    tracker.add_issue(Tracker::Jira, "SHOP-7");
    let mut created = sample("jira-issue-created");
    set(&mut created, "issue/key", json!("SHOP-7"));
    set(&mut created, "issue/fields/priority", json!({"name": "Highest"}));
    let answer: Value = hooks::jira(Some(SECRET), &created).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    let ticket = answer["ticket_id"].as_str().unwrap().to_owned();
    let stored: Value = app.get(&format!("/api/v1/tickets/{ticket}")).await.json().await.unwrap();
    assert_eq!(
        (stored["source"].as_str(), stored["external_id"].as_str(), stored["severity"].as_str()),
        (Some("jira"), Some("SHOP-7"), Some("critical"))
    );
    let mut comment = sample("jira-comment-created");
    set(&mut comment, "issue/key", json!("SHOP-7"));
    set(&mut comment, "comment/body", json!("[~bot] @viberglass research this"));
    let answer: Value = hooks::jira(Some(SECRET), &comment).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(newest_job(&app, &ticket, 1).await["status"], "completed");
    eventually("jira comments", || tracker.comments(Tracker::Jira, "SHOP-7"), |c| c.len() >= 2).await;

    // Shortcut.
    let (url, _) = configure(&app, feedback("shortcut")).await;
    let story = sample("shortcut-story-create");
    let story_id = story["actions"][0]["id"].to_string();
    tracker.add_issue(Tracker::Shortcut, &story_id);
    let answer: Value = hooks::shortcut(SECRET, &story).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    let ticket = answer["ticket_id"].as_str().unwrap().to_owned();
    let mut comment = sample("shortcut-comment-create");
    set(&mut comment, "actions/0/text", json!("@viberglass research"));
    let answer: Value = hooks::shortcut(SECRET, &comment).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(newest_job(&app, &ticket, 1).await["status"], "completed");
    eventually("shortcut comments", || tracker.comments(Tracker::Shortcut, &story_id), |c| c.len() >= 2).await;

    // Linear.
    let (url, _) = configure(&app, feedback("linear")).await;
    let issue = sample("linear-issue-create");
    let issue_id = issue["data"]["id"].as_str().unwrap().to_owned();
    tracker.add_issue(Tracker::Linear, &issue_id);
    let answer: Value = hooks::linear(SECRET, &issue).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    let ticket = answer["ticket_id"].as_str().unwrap().to_owned();
    let stored: Value = app.get(&format!("/api/v1/tickets/{ticket}")).await.json().await.unwrap();
    assert_eq!(stored["severity"], "critical", "Linear's priority 1 is urgent");
    let mut comment = sample("linear-comment-create");
    set(&mut comment, "data/issueId", json!(issue_id));
    set(&mut comment, "data/issue/id", json!(issue_id));
    set(&mut comment, "data/body", json!("@viberglass research"));
    let answer: Value = hooks::linear(SECRET, &comment).send(&client, &url).await.json().await.unwrap();
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(newest_job(&app, &ticket, 1).await["status"], "completed");
    eventually("linear comments", || tracker.comments(Tracker::Linear, &issue_id), |c| c.len() >= 2).await;

    // A stale Linear delivery is refused, whatever its signature.
    let mut stale = sample("linear-issue-create");
    set(&mut stale, "data/id", json!("00000000-0000-4000-8000-000000000001"));
    let mut delivery = hooks::linear(SECRET, &stale);
    let mut body: Value = serde_json::from_slice(&delivery.body).unwrap();
    body["webhookTimestamp"] = json!(body["webhookTimestamp"].as_i64().unwrap() - 120_000);
    delivery.body = body.to_string().into_bytes();
    let delivery = delivery.clone().with_header("linear-signature", &hooks::sign(SECRET, &delivery.body));
    let response = delivery.send(&client, &url).await;
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("stale delivery"));
}

/// Bad signatures are refused (401) and recorded as `rejected` with the fix; a form-encoded body to a signed
/// custom configuration is 415 with its message; after the secret is fixed, redelivery files the ticket once.
async fn refused_deliveries_say_why_and_redeliver_once(backend: TestBackend) {
    let app = app(backend).await;
    app.create_project(json!({"name": "Shop"})).await;
    let (url, config) = configure(&app, json!({"provider": "custom", "secret": "the-old-secret-0000"})).await;
    let client = reqwest::Client::new();
    let payload = json!({"title": "Checkout button is grey", "description": "It never turns blue.", "severity": "high",
        "category": "bug", "external_id": "CS-1", "url": "https://support.example/CS-1", "metadata": {"browser": "Firefox 140"}});
    let response = hooks::custom(Some(SECRET), &payload).send(&client, &url).await;
    assert_eq!(response.status(), 401);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "rejected");
    assert_eq!(
        answer["message"],
        "the shared secret differs from the sender's: rotate it on both ends, then redeliver"
    );
    let form = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("title=Checkout")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    let unknown = client
        .post(app.url(&format!("/api/webhooks/github/{}", config["id"].as_str().unwrap())))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404, "a configuration answers only under its own provider");
    let log = deliveries(&app).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["status"], "rejected");
    assert_eq!(log[0]["response_status"], 415);
    assert_eq!(
        log[0]["error_message"],
        "expected signed JSON: enable signing upstream, or turn signing off for this integration"
    );
    assert!(tickets(&app).await.is_empty());

    // The secret is fixed on our side; the stored delivery is processed again.
    let id = config["id"].as_str().unwrap();
    assert_eq!(
        app.patch_json(&format!("/api/v1/projects/shop/webhooks/{id}"), &json!({"secret": SECRET})).await.status(),
        200
    );
    let bad = log[1]["id"].as_str().unwrap();
    let redelivered =
        app.post_json(&format!("/api/v1/projects/shop/webhook-deliveries/{bad}/redeliver"), &json!({})).await;
    assert_eq!(redelivered.status(), 200);
    let redelivered: Value = redelivered.json().await.unwrap();
    assert_eq!(redelivered["status"], "processed", "{redelivered}");
    assert_eq!(redelivered["redeliveries"], 1);
    let again = app.post_json(&format!("/api/v1/projects/shop/webhook-deliveries/{bad}/redeliver"), &json!({})).await;
    assert_eq!(again.status(), 409);
    // The sender's own retry of the same body is a duplicate.
    let retry: Value = hooks::custom(Some(SECRET), &payload).send(&client, &url).await.json().await.unwrap();
    assert_eq!(retry["status"], "duplicate", "{retry}");
    let filed = tickets(&app).await;
    assert_eq!(filed.len(), 1);
    assert_eq!((filed[0]["severity"].as_str(), filed[0]["category"].as_str()), (Some("high"), Some("bug")));
    assert_eq!(filed[0]["metadata"]["browser"], "Firefox 140");

    // The payload is for maintainers only: never a viewer's.
    let (viewer, user) = app.user_client("viewer@shop.example", false).await;
    app.grant("shop", &user, "viewer").await;
    let read =
        viewer.get(app.url(&format!("/api/v1/projects/shop/webhook-deliveries/{bad}/payload"))).send().await.unwrap();
    assert_eq!(read.status(), 403);
    let read: Value =
        app.get(&format!("/api/v1/projects/shop/webhook-deliveries/{bad}/payload")).await.json().await.unwrap();
    assert!(read["body"].as_str().unwrap().contains("Checkout button is grey"));

    // Which secret feedback sends, and where, is an administrator's choice.
    let (maintainer, user) = app.user_client("maintainer@shop.example", false).await;
    app.grant("shop", &user, "maintainer").await;
    let steal = maintainer
        .patch(app.url(&format!("/api/v1/projects/shop/webhooks/{id}")))
        .json(&json!({"feedback_secret": "ANY_SECRET", "feedback_api_url": "https://attacker.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(steal.status(), 403);

    // An unparseable payload names the field.
    let bad_body = hooks::custom(Some(SECRET), &json!({"title": 12})).send(&client, &url).await;
    assert_eq!(bad_body.status(), 422);
    let text = bad_body.text().await.unwrap();
    assert!(text.contains("title: must be a string"), "{text}");
}

/// The same delivery twice, and fifty concurrent copies of another, each file one ticket.
async fn repeated_deliveries_file_one_ticket(backend: TestBackend) {
    let app = app(backend).await;
    app.create_project(json!({"name": "Shop"})).await;
    let (url, _) = configure(&app, json!({"provider": "github", "secret": SECRET})).await;
    let client = reqwest::Client::new();
    let once = hooks::github(SECRET, "issues", &github_issue(1, "Cart forgets items", &[]));
    let first: Value = once.send(&client, &url).await.json().await.unwrap();
    let second: Value = once.send(&client, &url).await.json().await.unwrap();
    assert_eq!((first["status"].as_str(), second["status"].as_str()), (Some("processed"), Some("duplicate")));
    // A replay of the signed body under a fresh delivery id is a duplicate too.
    let replay = once.clone().with_header("x-github-delivery", "00000000-0000-4000-8000-00000000beef");
    let replayed: Value = replay.send(&client, &url).await.json().await.unwrap();
    assert_eq!(replayed["status"], "duplicate", "{replayed}");

    let burst = hooks::github(SECRET, "issues", &github_issue(2, "Prices are wrong", &[]));
    let sends = (0..50).map(|_| {
        let (client, url, burst) = (client.clone(), url.clone(), burst.clone());
        tokio::spawn(async move {
            let response = burst.send(&client, &url).await;
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["status"].as_str().unwrap().to_owned()
        })
    });
    let handles: Vec<_> = sends.collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.unwrap());
    }
    assert_eq!(answers.iter().filter(|a| *a == "processed").count(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| *a == "duplicate").count(), 49, "{answers:?}");
    let filed = tickets(&app).await;
    assert_eq!(filed.len(), 2, "{filed:?}");
    let log = deliveries(&app).await;
    assert_eq!(log.iter().filter(|d| d["status"] == "duplicate").count(), 51);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("viberglass_webhook_deliveries{provider=\"github\",status=\"duplicate\"} 51"),
        "{metrics}"
    );
}

backend_tests!(
    a_github_issue_becomes_a_ticket_and_hears_back,
    refused_deliveries_say_why_and_redeliver_once,
    repeated_deliveries_file_one_ticket,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_issue_hears_back_with_a_label_on_sqlite() {
    a_gitlab_issue_hears_back_with_a_label(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_file_tickets_and_hear_back_on_sqlite() {
    trackers_file_tickets_and_hear_back(TestBackend::Sqlite).await;
}

/// Feedback a flaky forge refuses (502, then 429) is retried with backoff, every attempt recorded, and the
/// job is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_retried_and_never_fails_the_job() {
    let app = app(TestBackend::Sqlite).await;
    let forge = FakeForge::start().await;
    project_on(&app, &forge, "github").await;
    let number = forge.add_issue("acme/shop", "Cart forgets items", &[]);
    let (url, _) = configure(
        &app,
        json!({"provider": "github", "secret": SECRET, "on_new_ticket": "research", "clanker": "scripted"}),
    )
    .await;
    forge.fail_issue_calls(&[502, 429]);
    let answer: Value = hooks::github(SECRET, "issues", &github_issue(number, "Cart forgets items", &[]))
        .send(&reqwest::Client::new(), &url)
        .await
        .json()
        .await
        .unwrap();
    let ticket = answer["ticket_id"].as_str().unwrap().to_owned();
    assert_eq!(newest_job(&app, &ticket, 1).await["status"], "completed");
    eventually("comments after retries", || forge.issue("acme/shop", number).unwrap(), |i| i.comments.len() >= 2).await;
    let rows: Value = app.get(&format!("/api/v1/tickets/{ticket}/feedback")).await.json().await.unwrap();
    let rows = rows.as_array().unwrap();
    assert!(rows.iter().all(|r| r["status"] == "delivered"), "{rows:?}");
    let retried: i64 = rows.iter().map(|r| r["attempts"].as_i64().unwrap()).sum();
    assert_eq!(retried, 4, "two refusals and two deliveries: {rows:?}");
    assert!(rows.iter().any(|r| r["attempt_log"][0]["error"].as_str().is_some_and(|e| e.contains("502"))), "{rows:?}");
    let page = app.get(&format!("/tickets/{ticket}")).await.text().await.unwrap();
    assert!(page.contains("Told to the source (2)"), "the ticket page shows the feedback");
}
