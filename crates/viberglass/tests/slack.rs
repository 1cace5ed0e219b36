//! Slack, end to end on the fake workspace: `/viberator` opens the form, a
//! submission files a ticket and starts its research run, the thread mirrors
//! the runs (one message per job, edited in place), "lgtm" and the Approve &
//! Continue button move the ticket on, and the pull request's link lands in
//! the thread; the audit log names the mapped user with channel `slack`.
//! Refusals: bad signatures, stale timestamps and replays (401), people
//! without access (an ephemeral answer that says who can grant it). Slack's
//! 429 is waited out; a thread linked by hand takes the mirroring over; a
//! server killed mid-run still tells the thread how the run ended, once.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::fake_forge::{ALL, FakeForge};
use viberglass_testkit::fake_slack::{BOT_USER, FakeSlack, Message, SlackSender, sign, typed};
use viberglass_testkit::process::{ServerProcess, free_port, viberglass};
use viberglass_testkit::{TestApp, TestBackend, TestDb, backend_tests};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
const SIGNING: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const BOT_TOKEN: &str = "xoxb-fake-bot-token-1";
const FORGE_TOKEN: &str = "forge-token-slack-1";
const CHANNEL: &str = "C0GENERAL";
const ALICE: &str = "U0ALICE";
const BOB: &str = "U0BOB";
const EVE: &str = "U0EVE";

/// The scripted agent: the phase's document (a long plan, uploaded as a file too), or a change. Each run takes
/// two seconds, so a loaded server's mirror posts the run's message while it runs and then edits it in place
/// (the server's environment never reaches the agent: only the clanker's secrets do).
const AGENT: &str = r#"sleep 2; case "$VIBERGLASS_PHASE" in
  research) printf '# Findings\n\nThe cart forgets items after a refresh.\n' > RESEARCH.md ;;
  planning) { printf '# Plan\n\n'; for i in $(seq 1 120); do echo "$i. Keep the cart in local storage, step $i."; done; } > PLAN.md ;;
  *) echo "fixed $(date +%s%N)" >> CHANGES.md && printf 'Keep the cart\n' > PR_TITLE.md ;;
esac"#;

backend_tests!(
    a_ticket_goes_from_viberator_to_a_pull_request_in_its_thread,
    slack_requests_are_refused_unless_signed_fresh_and_new,
    a_thread_linked_by_hand_takes_over_the_mirroring_and_slacks_rate_limit_is_waited_out
);

/// Waits for `check` over `read`, up to 60 s.
async fn eventually<T: std::fmt::Debug>(what: &str, mut read: impl AsyncFnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = read().await;
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: still {value:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn workspace(slack: &FakeSlack) {
    slack.add_channel(CHANNEL, true);
    slack.add_channel("C0PRIVATE", false);
    slack.add_user(ALICE, Some("alice@example.com"));
    slack.add_user(BOB, Some("bob@example.com"));
    slack.add_user(EVE, Some("eve@elsewhere.example"));
}

async fn app(backend: TestBackend) -> TestApp {
    TestApp::builder(backend)
        .fast_engine(BINARY)
        .env("VG_FORGE_TOKEN", FORGE_TOKEN)
        .env("VG_SLACK_SIGNING", SIGNING)
        .env("VG_SLACK_BOT", BOT_TOKEN)
        .spawn()
        .await
}

/// Secrets, the Slack settings, the project `shop` on the fake forge, the started clanker `scripted`, and
/// Alice (maintainer) and Bob (viewer).
async fn setup(app: &TestApp, slack: &FakeSlack, forge: &FakeForge) {
    for (name, reference) in
        [("SLACK_SIGNING", "VG_SLACK_SIGNING"), ("SLACK_BOT", "VG_SLACK_BOT"), ("FORGE_TOKEN", "VG_FORGE_TOKEN")]
    {
        let r = app.post_json("/api/v1/secrets", &json!({"name": name, "reference": reference})).await;
        assert_eq!(r.status(), 201);
    }
    let saved = app
        .client
        .put(app.url("/api/v1/slack"))
        .json(&json!({"signing_secret": "SLACK_SIGNING", "bot_token_secret": "SLACK_BOT", "api_url": slack.api_url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 200);
    let saved: Value = saved.json().await.unwrap();
    assert_eq!(saved["bot_user_id"], BOT_USER, "Test connection ran on save: {saved}");
    forge.add_token(FORGE_TOKEN, "shop-bot", ALL);
    forge.add_repo("acme/shop", &[("README.md", "# Shop\n")]);
    let integration =
        json!({"name": "forge", "kind": "github", "base_url": forge.base_url(), "credential_secret": "FORGE_TOKEN"});
    assert_eq!(app.post_json("/api/v1/integrations", &integration).await.status(), 201);
    app.create_project(
        json!({"name": "Shop", "repository_url": forge.clone_url("acme/shop"), "scm_integration": "forge"}),
    )
    .await;
    let clanker = json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["sh", "-c", AGENT]}});
    assert_eq!(app.post_json("/api/v1/clankers", &clanker).await.status(), 201);
    app.post_json("/api/v1/clankers/scripted/start", &json!({})).await;
    eventually(
        "the clanker starts",
        async || app.get("/api/v1/clankers/scripted").await.json::<Value>().await.unwrap()["status"].clone(),
        |s| s == "active",
    )
    .await;
    let (_, alice) = app.user_client("alice@example.com", false).await;
    app.grant("shop", &alice, "maintainer").await;
    let (_, bob) = app.user_client("bob@example.com", false).await;
    app.grant("shop", &bob, "viewer").await;
}

async fn jobs_of(app: &TestApp, ticket: &str) -> Vec<Value> {
    let page: Value = app.get(&format!("/api/v1/jobs?ticket={ticket}")).await.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

/// Waits for the ticket's `n`th job to end; returns it.
async fn nth_job_done(app: &TestApp, ticket: &str, n: usize) -> Value {
    let jobs = eventually("the next job", async || jobs_of(app, ticket).await, |j| j.len() >= n).await;
    let id = jobs[jobs.len() - n]["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&id, &["completed", "failed", "cancelled"], Duration::from_secs(60)).await
}

/// The bot's messages in the thread mentioning `needle`.
fn in_thread(slack: &FakeSlack, thread: &str, needle: &str) -> Vec<Message> {
    slack.thread(CHANNEL, thread).into_iter().filter(|m| m.user == BOT_USER && m.all_text().contains(needle)).collect()
}

async fn a_ticket_goes_from_viberator_to_a_pull_request_in_its_thread(backend: TestBackend) {
    let slack = FakeSlack::start(BOT_TOKEN).await;
    workspace(&slack);
    let forge = FakeForge::start().await;
    let app = app(backend).await;
    setup(&app, &slack, &forge).await;
    let sender = SlackSender::new(&app.url("/api/slack/events"), SIGNING, &slack);

    // Someone Viberglass does not know is told who to ask; nobody can file without a membership.
    assert_eq!(sender.slash(EVE, CHANNEL, "Cart").await.status(), 200);
    let told = eventually("Eve is told", async || slack.ephemerals(), |e| e.iter().any(|m| m.user == EVE)).await;
    assert!(told[0].text.contains("no user with your Slack e-mail"), "{told:?}");
    assert!(!told[0].text.contains("@example.com"), "a stranger learns no addresses: {told:?}");
    slack.add_guest("U0GUEST", "alice@example.com");
    assert_eq!(sender.slash("U0GUEST", CHANNEL, "Cart").await.status(), 200);
    let told =
        eventually("the guest is told", async || slack.ephemerals(), |e| e.iter().any(|m| m.user == "U0GUEST")).await;
    assert!(
        told.iter().any(|m| m.user == "U0GUEST" && m.text.contains("guests")),
        "a guest never acts as Alice: {told:?}"
    );
    assert_eq!(sender.slash(BOB, CHANNEL, "Cart").await.status(), 200);
    let told = eventually("Bob is told", async || slack.ephemerals(), |e| e.iter().any(|m| m.user == BOB)).await;
    assert!(told.iter().any(|m| m.user == BOB && m.text.contains("not a member")), "{told:?}");
    assert!(slack.views().is_empty());

    // /viberator → the form, answered at once.
    let asked = Instant::now();
    let answer = sender.slash(ALICE, CHANNEL, "Cart empties after refresh").await;
    assert_eq!(answer.status(), 200);
    assert!(asked.elapsed() < Duration::from_secs(3), "Slack wants its answer within 3 s");
    let views = eventually("the form opens", async || slack.views(), |v| !v.is_empty()).await;
    let view = views[0].clone();
    let blocks: Vec<&str> = view["blocks"].as_array().unwrap().iter().filter_map(|b| b["block_id"].as_str()).collect();
    assert_eq!(blocks, ["project", "clanker", "phase", "title", "message"]);
    assert_eq!(view["blocks"][3]["element"]["initial_value"], "Cart empties after refresh");

    // A form with a missing title gets its error back in place; a good one files the ticket.
    let bad = sender
        .submit(
            ALICE,
            &view,
            &[typed("project", "shop"), typed("clanker", "scripted"), typed("phase", "research"), typed("title", " ")],
        )
        .await;
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["response_action"], "errors");
    assert!(bad["errors"]["title"].as_str().unwrap().contains("title"), "{bad}");
    let values = [
        typed("project", "shop"),
        typed("clanker", "scripted"),
        typed("phase", "research"),
        typed("title", "Cart empties after refresh"),
        typed("message", "Items vanish from the cart when the page reloads."),
    ];
    let submitted = sender.submit(ALICE, &view, &values).await;
    assert_eq!(submitted.status(), 200);
    assert!(submitted.text().await.unwrap().is_empty(), "an empty answer closes the form");

    let tickets = eventually(
        "the ticket is filed",
        async || {
            app.get("/api/v1/tickets?project=shop").await.json::<Value>().await.unwrap()["items"]
                .as_array()
                .unwrap()
                .clone()
        },
        |t| !t.is_empty(),
    )
    .await;
    let ticket = tickets[0].clone();
    assert_eq!(ticket["source"], "slack");
    let id = ticket["id"].as_str().unwrap().to_owned();
    let bound: Value = eventually(
        "the thread is bound",
        async || app.get(&format!("/api/v1/tickets/{id}/slack")).await.json::<Value>().await.unwrap(),
        |b| b["thread"]["thread_ts"].is_string(),
    )
    .await;
    let thread = bound["thread"]["thread_ts"].as_str().unwrap().to_owned();
    let root = slack.messages().into_iter().find(|m| m.ts == thread).unwrap();
    assert!(root.thread_ts.is_none() && root.all_text().contains(&format!("/tickets/{id}")), "{root:?}");

    // Research runs; its message is edited to the end, and RESEARCH.md arrives with its buttons.
    let research = nth_job_done(&app, &id, 1).await;
    assert_eq!(research["status"], "completed", "{research}");
    let doc = eventually(
        "RESEARCH.md reaches the thread",
        async || in_thread(&slack, &thread, "*RESEARCH.md* (revision"),
        |m| !m.is_empty(),
    )
    .await;
    assert!(doc[0].all_text().contains("The cart forgets items") && doc[0].button("vg_approve").is_some(), "{doc:?}");
    let research_id = research["id"].as_str().unwrap();
    let job_message = eventually(
        "the run's message ends",
        async || in_thread(&slack, &thread, research_id),
        |m| m.len() == 1 && m[0].text.contains("finished"),
    )
    .await;
    assert!(job_message[0].edits >= 1, "one message, edited in place: {job_message:?}");

    // Bob may read but not approve: he is told who can. Alice's "lgtm" approves and continues.
    assert_eq!(sender.reply(BOB, CHANNEL, &thread, "lgtm").await.status(), 200);
    let told =
        eventually("Bob is refused", async || slack.ephemerals(), |e| e.iter().filter(|m| m.user == BOB).count() == 2)
            .await;
    let refusal = told.iter().rfind(|m| m.user == BOB).unwrap();
    assert!(refusal.text.contains("maintainer") && refusal.text.contains("alice@example.com"), "{refusal:?}");
    assert_eq!(jobs_of(&app, &id).await.len(), 1);
    assert_eq!(sender.reply(ALICE, CHANNEL, &thread, "just chatting here").await.status(), 200);
    assert_eq!(sender.reply(ALICE, CHANNEL, &thread, &format!("<@{BOT_USER}> lgtm")).await.status(), 200);
    let planning = nth_job_done(&app, &id, 2).await;
    assert_eq!((planning["phase"].as_str(), planning["status"].as_str()), (Some("planning"), Some("completed")));
    assert_eq!(jobs_of(&app, &id).await.len(), 2, "the mention and its message event made one approval");
    let approved = eventually(
        "RESEARCH.md shows approved",
        async || in_thread(&slack, &thread, "*RESEARCH.md* (revision"),
        |m| m.len() == 1 && m[0].text.contains("approved") && m[0].button("vg_approve").is_none(),
    )
    .await;
    assert!(approved[0].edits >= 1);

    // The long PLAN.md comes as a snippet with buttons and as a file; the button approves and continues.
    let plan = eventually(
        "PLAN.md reaches the thread",
        async || in_thread(&slack, &thread, "*PLAN.md* (revision"),
        |m| !m.is_empty(),
    )
    .await;
    let files = eventually("the whole plan is uploaded", async || slack.files(), |f| !f.is_empty()).await;
    assert_eq!(files[0].thread_ts.as_deref(), Some(thread.as_str()));
    assert!(String::from_utf8_lossy(&files[0].content).contains("step 120"));
    assert_eq!(sender.click(ALICE, &plan[0], "vg_approve").await.status(), 200);
    let execution = nth_job_done(&app, &id, 3).await;
    assert_eq!(
        (execution["phase"].as_str(), execution["status"].as_str()),
        (Some("execution"), Some("completed")),
        "{execution}"
    );
    let pr = execution["pull_request_url"].as_str().unwrap().to_owned();
    eventually(
        "the pull request's link reaches the thread",
        async || in_thread(&slack, &thread, &pr),
        |m| !m.is_empty(),
    )
    .await;

    // The audit log names Alice, through Slack.
    let audit: Value = app.get("/api/v1/audit?limit=200").await.json().await.unwrap();
    let by_slack: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["channel"] == "slack")
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["actor_email"].as_str().unwrap_or_default().to_owned()))
        .collect();
    for action in ["ticket_filed", "run_started", "approved", "phase_changed"] {
        assert!(by_slack.iter().any(|(a, who)| a == action && who == "alice@example.com"), "{action}: {by_slack:?}");
    }
    assert_eq!(by_slack.iter().filter(|(a, _)| a == "approved").count(), 2, "{by_slack:?}");

    // The ticket page shows the thread.
    let page = app.get(&format!("/tickets/{id}")).await.text().await.unwrap();
    assert!(page.contains("id=\"slack-binding\"") && page.contains(&thread), "the ticket page shows its thread");
}

async fn slack_requests_are_refused_unless_signed_fresh_and_new(backend: TestBackend) {
    let slack = FakeSlack::start(BOT_TOKEN).await;
    workspace(&slack);
    let app = app(backend).await;
    let sender = SlackSender::new(&app.url("/api/slack/events"), SIGNING, &slack);
    let form = "application/x-www-form-urlencoded";

    // Before Slack is set up, nothing is accepted.
    let early = sender.slash(ALICE, CHANNEL, "x").await;
    assert_eq!(early.status(), 404);
    assert!(early.text().await.unwrap().contains("not set up"));

    let forge = FakeForge::start().await;
    setup(&app, &slack, &forge).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = sender.command_body(ALICE, CHANNEL, "x");

    let wrong = sender.raw(form, body.clone(), now, Some(sign("not-the-secret", now, &body))).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("signing secret"));
    let stale = sender.raw(form, body.clone(), now - 400, Some(sign(SIGNING, now - 400, &body))).await;
    assert_eq!(stale.status(), 401);
    assert!(stale.text().await.unwrap().contains("300 s"));
    let unsigned = sender.raw(form, body.clone(), now, None).await;
    assert_eq!(unsigned.status(), 401);
    let signature = sign(SIGNING, now, &body);
    assert_eq!(sender.raw(form, body.clone(), now, Some(signature.clone())).await.status(), 200);
    let replay = sender.raw(form, body.clone(), now, Some(signature.clone())).await;
    assert_eq!(replay.status(), 401);
    assert!(replay.text().await.unwrap().contains("replay"));
    let respelt = sender.raw(form, body.clone(), now, Some(signature.to_uppercase().replace("V0=", "v0="))).await;
    assert_eq!(respelt.status(), 401, "the same signature spelt in capitals is the same request");
    // A signed JSON body presented as a form is not read as one.
    let event = br#"{"type":"event_callback","event":{"type":"message","text":"&payload={}"}}"#.to_vec();
    let sig = sign(SIGNING, now, &event);
    assert_eq!(sender.raw(form, event, now, Some(sig)).await.status(), 400);

    // The Slack app's secrets never go to a worker.
    let clanker = json!({"name": "Leaky", "agent": "command", "agent_settings": {"command": ["true"]},
        "secrets": ["SLACK_SIGNING"]});
    let leaky = app.post_json("/api/v1/clankers", &clanker).await;
    assert_eq!(leaky.status(), 400);
    assert!(leaky.text().await.unwrap().contains("Slack"));

    // The Events API's handshake, and what cannot be read.
    let hello =
        json!({"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"});
    let answer: Value = sender.signed("application/json", hello.to_string().into_bytes()).await.json().await.unwrap();
    assert_eq!(answer["challenge"], hello["challenge"]);
    let garbage = sender.signed("application/json", b"{not json".to_vec()).await;
    assert_eq!(garbage.status(), 400);
    let other = sender.event(json!({"type": "reaction_added", "user": ALICE})).await;
    assert_eq!(other.status(), 200);

    // The Slack page shows the request URL and the manifest with this server's address.
    let page = app.get("/slack").await.text().await.unwrap();
    assert!(page.contains(&app.url("/api/slack/events")) && page.contains("users:read.email"), "the Slack page");
}

async fn a_thread_linked_by_hand_takes_over_the_mirroring_and_slacks_rate_limit_is_waited_out(backend: TestBackend) {
    let slack = FakeSlack::start(BOT_TOKEN).await;
    workspace(&slack);
    let forge = FakeForge::start().await;
    let app = app(backend).await;
    setup(&app, &slack, &forge).await;
    let ticket = app.create_ticket("shop", json!({"title": "Search is slow"})).await;
    let id = ticket["id"].as_str().unwrap().to_owned();
    let first = slack.person_says(CHANNEL, ALICE, None, "search is slow, can someone look?");
    let second = slack.person_says(CHANNEL, ALICE, None, "let's follow the search ticket here instead");

    // A bad link says how to name a thread; a channel the app is not in fails the message with what to do.
    let put = |thread: String| {
        let (client, url) = (app.client.clone(), app.url(&format!("/api/v1/tickets/{id}/slack")));
        async move { client.put(url).json(&json!({"thread": thread})).send().await.unwrap() }
    };
    let bad = put("general".into()).await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("Copy link"));

    // Slack answers the first call with 429 and Retry-After: 2; the message comes after that, once.
    slack.rate_limit(1, 2);
    let linked = put(format!("https://acme.slack.com/archives/{CHANNEL}/p{}", first.replace('.', ""))).await;
    assert_eq!(linked.status(), 200, "{}", linked.text().await.unwrap());
    let announced =
        eventually("the link is announced", async || in_thread(&slack, &first, "now follows"), |m| !m.is_empty()).await;
    assert_eq!(announced.len(), 1);
    let calls = slack.calls();
    let limited = calls.iter().find(|c| c.status == 429).expect("the fake rate-limited a call");
    let posted = calls.iter().rfind(|c| c.method == "chat.postMessage" && c.status == 200).unwrap();
    assert!(posted.at.duration_since(limited.at) >= Duration::from_millis(1900), "Retry-After was not waited out");

    let job = app.run_phase(&id, "scripted", "research").await;
    app.wait_for_job(&job, &["completed"], Duration::from_secs(60)).await;
    eventually(
        "the run shows in the first thread",
        async || in_thread(&slack, &first, &job),
        |m| m.len() == 1 && m[0].text.contains("finished"),
    )
    .await;

    let old_doc = eventually(
        "RESEARCH.md in the first thread",
        async || in_thread(&slack, &first, "*RESEARCH.md* (revision"),
        |m| !m.is_empty(),
    )
    .await;

    // Unlink, link the second thread: the next run shows there only.
    let unlinked = app.delete(&format!("/api/v1/tickets/{id}/slack")).await;
    assert_eq!(unlinked.status(), 200);
    let none: Value = app.get(&format!("/api/v1/tickets/{id}/slack")).await.json().await.unwrap();
    assert!(none["thread"].is_null() && none["history"].as_array().unwrap().len() == 1);
    assert_eq!(put(format!("{CHANNEL}/{second}")).await.status(), 200);
    let rerun: Value = app.post_json(&format!("/api/v1/jobs/{job}/rerun"), &json!({})).await.json().await.unwrap();
    let rerun = rerun["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&rerun, &["completed"], Duration::from_secs(60)).await;
    eventually(
        "the re-run shows in the second thread",
        async || in_thread(&slack, &second, &rerun),
        |m| m.len() == 1 && m[0].text.contains("finished"),
    )
    .await;
    assert!(in_thread(&slack, &first, &rerun).is_empty(), "nothing more in the unlinked thread");

    // The unlinked thread's old button does nothing but say so.
    let jobs = app.get(&format!("/api/v1/jobs?ticket={id}")).await.json::<Value>().await.unwrap()["items"]
        .as_array()
        .unwrap()
        .len();
    let sender = SlackSender::new(&app.url("/api/slack/events"), SIGNING, &slack);
    assert_eq!(sender.click(ALICE, &old_doc[0], "vg_approve").await.status(), 200);
    let told = eventually("Alice is told", async || slack.ephemerals(), |e| e.iter().any(|m| m.user == ALICE)).await;
    assert!(told.iter().any(|m| m.text.contains("no longer follows")), "{told:?}");
    let after = app.get(&format!("/api/v1/jobs?ticket={id}")).await.json::<Value>().await.unwrap()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, jobs, "nothing was approved");

    // A thread that follows another ticket is refused; a channel without the app fails visibly.
    let other = app.create_ticket("shop", json!({"title": "Another"})).await;
    let taken = app
        .client
        .put(app.url(&format!("/api/v1/tickets/{}/slack", other["id"].as_str().unwrap())))
        .json(&json!({"thread": format!("{CHANNEL}/{second}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 409);
    let private = slack.person_says("C0PRIVATE", ALICE, None, "here?");
    assert_eq!(put(format!("C0PRIVATE/{private}")).await.status(), 200);
    let failed: Value = eventually(
        "the message into a channel without the app fails",
        async || app.get(&format!("/api/v1/tickets/{id}/slack")).await.json::<Value>().await.unwrap(),
        |b| b["posts"][0]["status"] == "failed",
    )
    .await;
    assert!(failed["posts"][0]["last_error"].as_str().unwrap().contains("/invite"), "{failed}");
    let page = app.get(&format!("/tickets/{id}")).await.text().await.unwrap();
    assert!(page.contains("/invite"), "the ticket page shows why");
}

backend_tests!(a_run_that_ends_while_the_server_is_down_still_reaches_its_thread_once);

/// The server is killed with SIGKILL while a run is active and started again: the run's end reaches the
/// thread from the outbox, in its one message, and RESEARCH.md once.
async fn a_run_that_ends_while_the_server_is_down_still_reaches_its_thread_once(backend: TestBackend) {
    let slack = FakeSlack::start(BOT_TOKEN).await;
    workspace(&slack);
    let forge = FakeForge::start().await;
    forge.add_token(FORGE_TOKEN, "shop-bot", ALL);
    forge.add_repo("acme/shop", &[("README.md", "# Shop\n")]);
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let start = || {
        let mut command: Command = viberglass(BINARY, dir.path());
        command
            .env("SECRETS_ENCRYPTION_KEY", "ef".repeat(32))
            .env("VIBERGLASS_DATA_DIR", dir.path().join("data"))
            .env("VIBERGLASS_WORKER_BINARY", BINARY)
            .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
            .env("VIBERGLASS_REAPER_INTERVAL_MS", "200")
            .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
            .env("VG_SLACK_SIGNING", SIGNING)
            .env("VG_SLACK_BOT", BOT_TOKEN)
            .env("VG_FORGE_TOKEN", FORGE_TOKEN);
        if backend == TestBackend::Postgres {
            command.env("DATABASE_URL", db.url());
        }
        ServerProcess::start(command, port)
    };
    let mut server = start();
    let client = viberglass_testkit::app::admin_client(&server.url("")).await.0;
    let post = async |path: &str, body: Value| {
        let r = client.post(server.url(path)).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json::<Value>().await.unwrap()
    };
    post("/api/v1/secrets", json!({"name": "SLACK_SIGNING", "reference": "VG_SLACK_SIGNING"})).await;
    post("/api/v1/secrets", json!({"name": "SLACK_BOT", "reference": "VG_SLACK_BOT"})).await;
    let saved = client
        .put(server.url("/api/v1/slack"))
        .json(&json!({"signing_secret": "SLACK_SIGNING", "bot_token_secret": "SLACK_BOT", "api_url": slack.api_url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 200);
    post("/api/v1/secrets", json!({"name": "FORGE_TOKEN", "reference": "VG_FORGE_TOKEN"})).await;
    post(
        "/api/v1/projects",
        json!({"name": "Shop", "repository_url": forge.clone_url("acme/shop"), "credential_secret": "FORGE_TOKEN"}),
    )
    .await;
    post("/api/v1/clankers", json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["sh", "-c", AGENT]}})).await;
    post("/api/v1/clankers/scripted/start", json!({})).await;
    let ticket = post("/api/v1/projects/shop/tickets", json!({"title": "Cart empties"})).await;
    let id = ticket["id"].as_str().unwrap().to_owned();
    let thread = slack.person_says(CHANNEL, ALICE, None, "the cart empties");
    let linked = client
        .put(server.url(&format!("/api/v1/tickets/{id}/slack")))
        .json(&json!({"thread": format!("{CHANNEL}/{thread}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(linked.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let r = client
            .post(server.url(&format!("/api/v1/tickets/{id}/runs")))
            .json(&json!({"phase": "research", "clanker": "scripted"}))
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            break r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the run never started: {}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eventually(
        "the run is in progress in the thread",
        async || in_thread(&slack, &thread, &job),
        |m| m.len() == 1 && m[0].text.contains("in progress"),
    )
    .await;

    // Killed once the run's message is posted and recorded (between Slack's answer and the record, a kill
    // would post it twice: see the closing note's known window).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bound: Value =
            client.get(server.url(&format!("/api/v1/tickets/{id}/slack"))).send().await.unwrap().json().await.unwrap();
        let recorded = bound["posts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["key"].as_str().is_some_and(|k| k.ends_with(&format!(":job:{job}"))) && p["ts"].is_string());
        if recorded {
            break;
        }
        assert!(Instant::now() < deadline, "the run's message was never recorded: {bound}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    server = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j: Value =
            client.get(server.url(&format!("/api/v1/jobs/{job}"))).send().await.unwrap().json().await.unwrap();
        if j["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not complete after the restart: {j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ended = eventually(
        "the thread hears the end",
        async || in_thread(&slack, &thread, &job),
        |m| m.iter().any(|m| m.text.contains("finished")),
    )
    .await;
    assert_eq!(ended.len(), 1, "one message for the run, edited: {ended:?}");
    eventually(
        "RESEARCH.md reaches the thread",
        async || in_thread(&slack, &thread, "*RESEARCH.md* (revision"),
        |m| !m.is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(in_thread(&slack, &thread, "*RESEARCH.md* (revision").len(), 1, "posted once");
    let posts = slack.messages().into_iter().filter(|m| m.user == BOT_USER).count();
    assert_eq!(posts, 3, "the link notice, the run, RESEARCH.md: {:?}", slack.messages());
}
