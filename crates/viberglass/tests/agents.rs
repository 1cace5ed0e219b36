//! The real Claude Code and Codex CLIs, driven by the mock model server,
//! running research and execution jobs end to end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::model::{MockModel, Step};
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

/// Where scripts/test installs the agent CLIs; `None` (skip) outside CI when they are missing.
fn cli(name: &str) -> Option<String> {
    let dir = std::env::var("VIBERGLASS_TEST_CLI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| "/var/tmp/viberglass-tools/node_modules/.bin".into());
    let path = dir.join(name);
    if path.exists() {
        return Some(path.display().to_string());
    }
    assert!(std::env::var("CI").is_err(), "{} is not installed under CI: scripts/test installs it", path.display());
    eprintln!("note: {} is not installed; skipping (scripts/test installs it)", path.display());
    None
}

struct Agent {
    kind: &'static str,
    key: &'static str,
    binary: String,
    /// Which model API the CLI speaks to the mock: `anthropic` or `openai-responses`.
    api: &'static str,
}

fn claude() -> Option<Agent> {
    cli("claude").map(|binary| Agent { kind: "claude-code", key: "ANTHROPIC_API_KEY", binary, api: "anthropic" })
}

fn codex() -> Option<Agent> {
    cli("codex").map(|binary| Agent { kind: "codex", key: "OPENAI_API_KEY", binary, api: "openai-responses" })
}

fn gemini() -> Option<Agent> {
    cli("gemini").map(|binary| Agent { kind: "gemini-cli", key: "GEMINI_API_KEY", binary, api: "gemini" })
}

fn opencode() -> Option<Agent> {
    cli("opencode").map(|binary| Agent { kind: "opencode", key: "ANTHROPIC_API_KEY", binary, api: "anthropic" })
}

/// A Python agent CLI, from the virtual environment scripts/test installs it in (`VIBERGLASS_TEST_<NAME>`).
fn python_cli(variable: &str, venv: &str, name: &str) -> Option<String> {
    let path = std::env::var(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(format!("/var/tmp/viberglass-tools/{venv}/bin/{name}")));
    if path.exists() {
        return Some(path.display().to_string());
    }
    assert!(std::env::var("CI").is_err(), "{} is not installed under CI: scripts/test installs it", path.display());
    eprintln!("note: {} is not installed; skipping (scripts/test installs it)", path.display());
    None
}

fn kimi() -> Option<Agent> {
    python_cli("VIBERGLASS_TEST_KIMI", "kimi-venv", "kimi").map(|binary| Agent {
        kind: "kimi-code",
        key: "KIMI_API_KEY",
        binary,
        api: "openai-chat",
    })
}

fn vibe() -> Option<Agent> {
    python_cli("VIBERGLASS_TEST_VIBE", "vibe-venv", "vibe").map(|binary| Agent {
        kind: "mistral-vibe",
        key: "MISTRAL_API_KEY",
        binary,
        api: "openai-chat",
    })
}

fn qwen() -> Option<Agent> {
    cli("qwen").map(|binary| Agent { kind: "qwen-cli", key: "ANTHROPIC_API_KEY", binary, api: "anthropic" })
}

/// A server, a project on a real repository, a started clanker for `agent`
/// talking to `model`, and a ticket. `with_key: false` leaves the key secret off the clanker.
async fn setup(agent: &Agent, model: &MockModel, with_key: bool) -> (TestApp, String, ServedRepo) {
    setup_with(agent, model, with_key, &[]).await
}

async fn setup_with(
    agent: &Agent,
    model: &MockModel,
    with_key: bool,
    env: &[(&str, &str)],
) -> (TestApp, String, ServedRepo) {
    let mut builder = TestApp::builder(TestBackend::Sqlite);
    for (name, value) in env {
        builder = builder.env(name, value);
    }
    let app = builder
        .env("VIBERGLASS_WORKER_BINARY", BINARY)
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
        .env("VG_TEST_MODEL_KEY", "sk-mock-key-0123456789")
        .spawn()
        .await;
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    app.post_json("/api/v1/secrets", &json!({"name": agent.key, "reference": "VG_TEST_MODEL_KEY"})).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false})).await;
    let base_url = match (agent.api, agent.kind) {
        ("openai-responses" | "openai-chat", _) => model.openai_url(),
        // OpenCode's Anthropic provider wants the `/v1` prefix in its base URL.
        (_, "opencode") => format!("{}/v1", model.anthropic_url()),
        _ => model.anthropic_url(),
    };
    let model_name = match agent.kind {
        "codex" => "gpt-5.5",
        "gemini-cli" => "gemini-test",
        "kimi-code" => "kimi-test",
        "mistral-vibe" => "mistral-test",
        _ => "claude-test-model",
    };
    let mut settings = json!({"base_url": base_url, "binary": agent.binary, "model": model_name});
    if agent.kind == "qwen-cli" || agent.kind == "opencode" {
        settings["provider"] = json!(agent.api);
        settings["api_key_secret"] = json!(agent.key);
    }
    let response = app
        .post_json(
            "/api/v1/clankers",
            &json!({
                "shared": true, "name": "Agent",
                "agent": agent.kind,
                "agent_settings": settings,
                "secrets": if with_key { vec![agent.key] } else { Vec::new() },
            }),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    app.post_json("/api/v1/clankers/agent/start", &json!({})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    (app, ticket["id"].as_str().unwrap().to_owned(), repo)
}

async fn run(app: &TestApp, ticket: &str, phase: &str) -> (Value, Duration) {
    let started = Instant::now();
    let job: Value = app
        .post_json(&format!("/api/v1/tickets/{ticket}/runs"), &json!({"phase": phase, "clanker": "agent"}))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let job: Value = app.get(&format!("/api/v1/jobs/{id}")).await.json().await.unwrap();
        if matches!(job["status"].as_str(), Some("completed" | "failed")) {
            return (job, started.elapsed());
        }
        assert!(Instant::now() < deadline, "job did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent events of a job, as `type` names in order.
async fn agent_events(app: &TestApp, job: &Value) -> Vec<Value> {
    let events: Value =
        app.get(&format!("/api/v1/jobs/{}/events?limit=1000", job["id"].as_str().unwrap())).await.json().await.unwrap();
    events["items"].as_array().unwrap().iter().filter(|e| e["kind"] == "agent").map(|e| e["data"].clone()).collect()
}

async fn research_and_execution(agent: Agent) {
    let model = MockModel::start(vec![
        Step::Run("printf '# Findings\\n\\nThe readme lacks a title.\\n' > RESEARCH.md".into()),
        Step::Text("Wrote RESEARCH.md.".into()),
        Step::Run("printf 'Fixed.\\n' >> README.md && printf 'Fix the readme\\n' > PR_TITLE.md".into()),
        Step::Text("Changed README.md.".into()),
    ])
    .await;
    let (app, ticket, _repo) = setup(&agent, &model, true).await;

    let (research, _) = run(&app, &ticket, "research").await;
    if research["status"] != "completed" {
        let events = app
            .get(&format!("/api/v1/jobs/{}/events?limit=1000", research["id"].as_str().unwrap()))
            .await
            .text()
            .await
            .unwrap();
        panic!(
            "research failed: {research}\nevents: {events}\nrequests: {:#?}",
            model
                .requests()
                .iter()
                .map(|r| (&r.path, r.body.get("tools").map(|t| t.as_array().map(|a| a.len()))))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(research["result"]["document"], "RESEARCH.md");
    // Kimi Code's print mode reports no token usage (it keeps it in its session files only).
    let reports_usage = !matches!(agent.kind, "kimi-code" | "mistral-vibe");
    if reports_usage {
        assert!(research["result"]["usage"]["input_tokens"].as_u64().unwrap() > 0, "usage is recorded: {research}");
    }
    let (content, _) =
        app.store.phase_document(ticket.parse().unwrap(), viberglass_domain::Phase::Research).await.unwrap().unwrap();
    assert!(content.starts_with("# Findings"), "{content}");
    let kinds: Vec<String> =
        agent_events(&app, &research).await.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    // Some CLIs report usage once per step, others once per run.
    let steps: Vec<&str> = kinds.iter().map(String::as_str).filter(|k| *k != "usage").collect();
    assert_eq!(steps, ["tool_started", "tool_finished", "text"], "the tool calls in order: {kinds:?}");
    assert!(!reports_usage || kinds.iter().any(|k| k == "usage"), "{kinds:?}");

    let (execution, _) = run(&app, &ticket, "execution").await;
    assert_eq!(execution["status"], "completed", "{execution}");
    let files = execution["result"]["changed_files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "only README.md; PR_TITLE.md is read, not committed: {files:?}");
    assert_eq!(files[0]["path"], "README.md");

    // What the CLI sent: our prompt, with the ticket text delimited, and the key from the secret.
    let requests = model.requests();
    let main =
        requests.iter().find(|r| r.body.to_string().contains("Fix the readme")).expect("a request with the prompt");
    assert!(main.body.to_string().contains("<<<UNTRUSTED ticket_description"), "untrusted ticket text is delimited");
    let key =
        main.header("x-api-key").or(main.header("authorization")).or(main.header("x-goog-api-key")).unwrap_or_default();
    assert!(key.contains("sk-mock-key-0123456789"), "the key comes from the clanker's secret: {key}");
    let events = app
        .get(&format!("/api/v1/jobs/{}/events?limit=1000", execution["id"].as_str().unwrap()))
        .await
        .text()
        .await
        .unwrap();
    assert!(!events.contains("sk-mock-key-0123456789"), "the key never reaches the logs");

    // The tokens the agent reported are counted by phase.
    if reports_usage {
        let text = app.get("/metrics").await.text().await.unwrap();
        let samples = viberglass_testkit::metrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let counted = viberglass_testkit::metrics::value(
            &samples,
            "viberglass_agent_tokens_total",
            &[("phase", "research"), ("target", "local"), ("direction", "input")],
        );
        assert_eq!(counted, research["result"]["usage"]["input_tokens"].as_f64(), "{text}");
    }
}

async fn model_errors_are_classified(agent: Agent, statuses: &[u16]) {
    let cases = [
        (401, "agent_auth", "agent_authentication_failed"),
        (429, "agent", "agent_rate_limited"),
        (529, "agent", "provider_overloaded"),
    ];
    for (status, layer, code) in cases.into_iter().filter(|c| statuses.contains(&c.0)) {
        let model = MockModel::start(vec![Step::Fail { status, no_retry_header: true }; 3]).await;
        let (app, ticket, _repo) = setup(&agent, &model, true).await;
        let (job, took) = run(&app, &ticket, "research").await;
        assert_eq!(
            (job["failure"]["layer"].as_str(), job["failure"]["code"].as_str()),
            (Some(layer), Some(code)),
            "{status}: {job}"
        );
        eprintln!("{}: a {status} from the model failed the job in {took:?}", agent.kind);
        if status == 401 {
            // Not a speed target: a CLI that retried a bad key with backoff would take minutes.
            // (10 s was too tight for a loaded 2-core CI machine running the CLIs in parallel.)
            assert!(took < Duration::from_secs(60), "an auth failure is not retried: the job took {took:?}");
            assert!(job["status_message"].as_str().unwrap().contains("API key secret is missing or stale"), "{job}");
            if matches!(agent.kind, "kimi-code" | "mistral-vibe") {
                assert!(job["status_message"].as_str().unwrap().contains(agent.key), "the key secret is named: {job}");
            }
        }
    }
}

async fn a_missing_key_secret_fails_before_the_cli_starts(agent: Agent) {
    let model = MockModel::start(Vec::new()).await;
    let (app, ticket, _repo) = setup(&agent, &model, false).await;
    let (job, _) = run(&app, &ticket, "research").await;
    assert_eq!(job["failure"]["layer"], "secrets", "{job}");
    let message = job["status_message"].as_str().unwrap();
    assert!(message.contains(agent.key) && message.contains("clanker agent"), "{message}");
    assert!(model.requests().is_empty(), "the CLI never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_researches_and_executes() {
    if let Some(agent) = claude() {
        research_and_execution(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_model_errors_are_classified() {
    if let Some(agent) = claude() {
        model_errors_are_classified(agent, &[401, 429, 529]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_on_a_model_api_that_stalls_mid_answer_fails_in_the_agent_timeout_layer() {
    let Some(agent) = claude() else { return };
    let model = MockModel::start(vec![Step::Stall { secs: 120 }]).await;
    let (app, ticket, _repo) = setup_with(&agent, &model, true, &[("VIBERGLASS_AGENT_SILENCE_SECS", "5")]).await;
    let started = std::time::Instant::now();
    let (job, _) = run(&app, &ticket, "research").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(90), "stopped after its silence, not the CLI's timeout");
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        (job["failure"]["layer"].as_str(), job["failure"]["code"].as_str()),
        (Some("agent_timeout"), Some("agent_silent"))
    );
    let message = job["status_message"].as_str().unwrap();
    assert!(message.contains("5 s") && message.contains(&model.anthropic_url()), "names the provider's URL: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_without_its_key_secret_never_starts() {
    if let Some(agent) = claude() {
        a_missing_key_secret_fails_before_the_cli_starts(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_researches_and_executes() {
    if let Some(agent) = codex() {
        research_and_execution(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_model_errors_are_classified() {
    if let Some(agent) = codex() {
        model_errors_are_classified(agent, &[401, 429, 529]).await;
    }
}

async fn file_tools_write_and_edit(agent: Agent) {
    let model = MockModel::start(vec![
        Step::Write { path: "RESEARCH.md".into(), content: "# Findings\nThe title is wrong.\n".into() },
        Step::Text("Wrote RESEARCH.md.".into()),
        Step::Edit { path: "README.md".into(), old: "# Shop".into(), new: "# The Shop".into() },
        Step::Write { path: "CHANGELOG.md".into(), content: "- Fixed the title\n".into() },
        Step::Slow { delay_ms: 1500, step: Box::new(Step::Text("Edited README.md and added CHANGELOG.md.".into())) },
    ])
    .await;
    let (app, ticket, _repo) = setup(&agent, &model, true).await;
    let (research, _) = run(&app, &ticket, "research").await;
    assert_eq!(research["status"], "completed", "{research}");
    let events = agent_events(&app, &research).await;
    assert!(
        events.iter().any(|e| e["type"] == "file_changed"
            || (e["type"] == "tool_started" && e["summary"].as_str().unwrap_or_default().contains("RESEARCH.md"))),
        "{events:#?}"
    );

    let (execution, _) = run(&app, &ticket, "execution").await;
    assert_eq!(execution["status"], "completed", "{execution}");
    let mut files: Vec<(String, String)> = execution["result"]["changed_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["status"].as_str().unwrap().to_owned(), f["path"].as_str().unwrap().to_owned()))
        .collect();
    files.sort();
    assert_eq!(files, [("A".to_owned(), "CHANGELOG.md".to_owned()), ("M".to_owned(), "README.md".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_writes_and_edits_files_through_a_slow_stream() {
    if let Some(agent) = claude() {
        file_tools_write_and_edit(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_writes_and_edits_files_through_a_slow_stream() {
    if let Some(agent) = codex() {
        file_tools_write_and_edit(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_model_api_is_named_as_such() {
    let Some(agent) = claude() else { return };
    let model = MockModel::start(Vec::new()).await;
    let (app, ticket, _repo) = setup(&agent, &model, true).await;
    // Point the clanker at a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let patched = app
        .patch_json(
            "/api/v1/clankers/agent",
            &json!({"agent_settings": {"base_url": format!("http://{closed}"), "binary": agent.binary}}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let (job, _) = run(&app, &ticket, "research").await;
    assert_eq!(job["failure"]["code"], "provider_unreachable", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_code_researches_and_executes() {
    if let Some(agent) = qwen() {
        research_and_execution(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_code_model_errors_are_classified() {
    // Qwen Code retries 429 and 529 itself, with no switch to turn that off; its bad-key case is tested.
    if let Some(agent) = qwen() {
        model_errors_are_classified(agent, &[401]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_researches_and_executes() {
    if let Some(agent) = gemini() {
        research_and_execution(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_bad_key_is_classified() {
    if let Some(agent) = gemini() {
        model_errors_are_classified(agent, &[401]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_researches_and_executes() {
    if let Some(agent) = opencode() {
        research_and_execution(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_bad_key_is_classified() {
    if let Some(agent) = opencode() {
        model_errors_are_classified(agent, &[401]).await;
    }
}

/// A planning run whose prompt is a mebibyte (a research document of almost
/// that, plus the template): it reaches the model whole (the prompt goes on
/// standard input, never the command line). Codex refuses prompts over
/// 1,048,576 characters itself, so the prompt stays just under.
async fn a_one_mebibyte_prompt_reaches_the_model(agent: Agent) {
    let model = MockModel::start(vec![
        Step::Run("printf '# Plan\\n1. Do it\\n' > PLAN.md".into()),
        Step::Text("Wrote PLAN.md.".into()),
    ])
    .await;
    let (app, ticket, _repo) = setup(&agent, &model, true).await;
    let line = "The research found this line worth keeping in the plan, word for word.\n";
    let mut research = String::from("# Findings\n");
    while research.len() < 1024 * 1024 - 4096 {
        research.push_str(line);
    }
    research.push_str("END-OF-THE-LONG-RESEARCH\n");
    let ticket_id = ticket.parse().unwrap();
    app.store
        .save_agent_document(ticket_id, viberglass_domain::Phase::Research, &research, viberglass_domain::JobId::new())
        .await
        .unwrap();
    let (planning, _) = run(&app, &ticket, "planning").await;
    if planning["status"] != "completed" {
        let id = planning["id"].as_str().unwrap();
        let events = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.text().await.unwrap();
        panic!("planning failed: {planning}\nevents: {}", &events[events.len().saturating_sub(3000)..]);
    }
    let requests = model.requests();
    let carried = requests.iter().find(|r| r.body.to_string().contains("END-OF-THE-LONG-RESEARCH"));
    let carried =
        carried.unwrap_or_else(|| panic!("no request carried the whole prompt ({} requests)", requests.len()));
    assert!(carried.body.to_string().len() > 1024 * 1024 - 4096, "the whole prompt reached the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_takes_a_one_mebibyte_prompt() {
    if let Some(agent) = claude() {
        a_one_mebibyte_prompt_reaches_the_model(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_takes_a_one_mebibyte_prompt() {
    if let Some(agent) = codex() {
        a_one_mebibyte_prompt_reaches_the_model(agent).await;
    }
}

/// The agent's model key stays in the worker: the CLI gets a loopback proxy
/// and a placeholder. An agent that dumps every environment it can see and
/// its home directory finds only the placeholder, while the model API
/// receives the real key.
async fn the_agent_holds_only_a_placeholder_key(agent: Agent) {
    let dump = "{ for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done 2>/dev/null | sort -u; \
                ls -la ~; find ~ -type f -size -1M -exec cat {} + 2>/dev/null | head -c 200000; } > dump.txt; \
                grep -c viberglass-placeholder dump.txt; grep -o 'viberglass-placeholder-[0-9a-f]*' dump.txt | head -n 1; \
                grep -c 'sk-mock-key-[0-9]' dump.txt; printf '# Findings\\n' > RESEARCH.md";
    let model = MockModel::start(vec![Step::Run(dump.into()), Step::Text("Looked around.".into())]).await;
    let (app, ticket, _repo) = setup(&agent, &model, true).await;
    let (research, _) = run(&app, &ticket, "research").await;
    assert_eq!(research["status"], "completed", "{research}");
    let requests = model.requests();
    let key_of = |r: &viberglass_testkit::model::Recorded| {
        r.header("x-api-key").or(r.header("authorization")).unwrap_or_default().to_owned()
    };
    assert!(!requests.is_empty());
    for request in &requests {
        assert!(key_of(request).contains("sk-mock-key-0123456789"), "the model API gets the real key: {request:?}");
        assert!(
            !request.body.to_string().contains("sk-mock-key-0123456789"),
            "nothing the agent saw held the real key: {}",
            request.body
        );
    }
    let answered =
        requests.iter().find(|r| r.body.to_string().contains("viberglass-placeholder-")).unwrap_or_else(|| {
            panic!("the dump reached the model: {:?}", requests.iter().map(|r| &r.path).collect::<Vec<_>>())
        });
    // The dump's counts: the placeholder found, the real key not (`grep -c` prints 0).
    let body = answered.body.to_string();
    assert!(body.contains("viberglass-placeholder-"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_holds_only_a_placeholder_key() {
    if let Some(agent) = claude() {
        the_agent_holds_only_a_placeholder_key(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_holds_only_a_placeholder_key() {
    if let Some(agent) = codex() {
        the_agent_holds_only_a_placeholder_key(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kimi_code_researches_and_executes() {
    if let Some(agent) = kimi() {
        research_and_execution(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kimi_code_model_errors_are_classified() {
    // Kimi Code retries 429 itself (three attempts of three requests each); its bad key is not retried.
    if let Some(agent) = kimi() {
        model_errors_are_classified(agent, &[401]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kimi_code_without_its_key_secret_never_starts() {
    if let Some(agent) = kimi() {
        a_missing_key_secret_fails_before_the_cli_starts(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistral_vibe_researches_and_executes() {
    if let Some(agent) = vibe() {
        research_and_execution(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistral_vibe_model_errors_are_classified() {
    // Mistral Vibe retries 429 and 5xx for minutes; its bad key is not retried.
    if let Some(agent) = vibe() {
        model_errors_are_classified(agent, &[401]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistral_vibe_without_its_key_secret_never_starts() {
    if let Some(agent) = vibe() {
        a_missing_key_secret_fails_before_the_cli_starts(agent).await;
    }
}

/// An execution run on a project on the fake forge: the CLI changes a file and the worker opens the pull
/// request.
async fn execution_opens_a_pull_request(agent: Agent) {
    use viberglass_testkit::fake_forge::{ALL, FakeForge};
    let model = MockModel::start(vec![
        Step::Run("printf 'Fixed.\\n' >> README.md && printf 'Fix the readme\\n' > PR_TITLE.md".into()),
        Step::Text("Changed README.md.".into()),
    ])
    .await;
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "Shop\n")]);
    forge.add_token("forge-token-agents-1", "shop-bot", ALL);
    let app = TestApp::builder(TestBackend::Sqlite)
        .env("VIBERGLASS_WORKER_BINARY", BINARY)
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
        .env("VG_MODEL_KEY", "sk-mock-key-0123456789")
        .env("VG_FORGE_TOKEN", "forge-token-agents-1")
        .spawn()
        .await;
    app.shop_on_forge(&forge).await;
    app.patch_json("/api/v1/projects/shop", &json!({"planning_needs_approval": false})).await;
    app.post_json("/api/v1/secrets", &json!({"name": agent.key, "reference": "VG_MODEL_KEY"})).await;
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Agent", "agent": agent.kind, "secrets": [agent.key],
                "agent_settings": {"base_url": model.openai_url(), "binary": agent.binary, "model": "test-model"}}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    app.post_json("/api/v1/clankers/agent/start", &json!({})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    let (job, _) = run(&app, ticket["id"].as_str().unwrap(), "execution").await;
    assert_eq!(job["status"], "completed", "{job}\n{}", app.job_events(job["id"].as_str().unwrap()).await);
    let pulls = forge.pulls("acme/shop");
    assert_eq!(pulls.len(), 1, "one pull request: {job}");
    assert_eq!(pulls[0].title, "Fix the readme");
    assert_eq!(job["result"]["pull_request"]["number"], pulls[0].number);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kimi_code_execution_opens_a_pull_request() {
    if let Some(agent) = kimi() {
        execution_opens_a_pull_request(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistral_vibe_execution_opens_a_pull_request() {
    if let Some(agent) = vibe() {
        execution_opens_a_pull_request(agent).await;
    }
}
