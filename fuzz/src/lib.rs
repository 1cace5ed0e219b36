//! What the fuzz targets run: the code paths the worker and the server take
//! on input that an agent (its output stream, the files it leaves in the
//! checkout) or a worker (its report bodies) controls. None of them may
//! panic on any input; the assertions are the guarantees that code
//! documents, so a failing one is a bug too.

use std::sync::LazyLock;

use viberglass_agents::AgentEvent;
use viberglass_domain::job::{MAX_EVENT_MESSAGE_BYTES, bound_message};
use viberglass_domain::protocol::{
    DocumentUpload, EventBatch, JobResult, MAX_RESULT_DIFF, MAX_RESULT_FILES, WorkerResult,
};
use viberglass_domain::{AgentKind, JobSpec, Phase};
use viberglass_server::extract::parse_json;
use viberglass_server::service::jobs::accept_report;
use viberglass_store::Outcome;

/// An agent CLI's run: the first byte is the exit code (255: killed by a
/// signal, no code), the rest its standard output. Each line (lossy UTF-8,
/// without its `\r\n`) goes through the adapter's parser, each event through
/// what the worker's event sink does with it, and the run is classified from
/// every event and from the ones the worker keeps.
pub fn agent_stream(kind: AgentKind, data: &[u8]) {
    let Some((&code, stdout)) = data.split_first() else { return };
    let exit_code = (code != 0xFF).then_some(i32::from(code));
    let adapter = viberglass_agents::adapter(kind).expect("every agent CLI has an adapter");
    let mut parser = adapter.parser();
    let mut events = Vec::new();
    let mut kept = Vec::new();
    let stdout = stdout.strip_suffix(b"\n").unwrap_or(stdout);
    for line in stdout.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        for event in parser.line(&String::from_utf8_lossy(line)) {
            let _ = event.summary();
            let _ = serde_json::to_value(&event);
            if matches!(event, AgentEvent::Error { .. } | AgentEvent::ToolFinished { .. } | AgentEvent::Usage { .. }) {
                kept.push(event.clone());
            }
            events.push(event);
        }
    }
    let _ = viberglass_agents::classify(kind, exit_code, &events);
    let _ = viberglass_agents::classify(kind, exit_code, &kept);
}

/// A body a worker posts: the first byte picks the endpoint (0: events,
/// 1: document, 2: result, modulo 3; the seeds use `0`, `1`, `2`), the rest
/// is the body, parsed as the server parses it.
pub fn worker_protocol(data: &[u8]) {
    let Some((&endpoint, body)) = data.split_first() else { return };
    match endpoint % 3 {
        0 => {
            let Ok(batch) = parse_json::<EventBatch>(body) else { return };
            // What the store does with each event.
            for event in &batch.events {
                let message = bound_message(&event.message);
                assert!(message.len() <= MAX_EVENT_MESSAGE_BYTES + 64, "an event message is bounded");
                let _ = (event.kind.as_str(), event.level.as_str(), i64::try_from(event.seq));
                let _ = event.data.as_ref().map(serde_json::to_string);
            }
        }
        1 => {
            let _ = parse_json::<DocumentUpload>(body);
        }
        _ => {
            let Ok(report) = parse_json::<WorkerResult>(body) else { return };
            let claimed = match &report {
                WorkerResult::Completed { result, .. } => Some(result.clone()),
                WorkerResult::Failed { result, .. } => result.clone(),
            };
            if let Some(result) = claimed {
                let bounded = result.bounded();
                check_bounded(&bounded);
                assert_eq!(bounded.clone().bounded(), bounded, "bounding twice changes nothing");
            }
            for spec in [&*EXECUTION, &*RESEARCH, &*PLAIN_GIT] {
                check_outcome(spec, &accept_report(spec, report.clone()));
            }
        }
    }
}

/// The files an agent leaves in the checkout: the first byte lays them out
/// (see `viberglass_worker::pipeline::fuzzing::read_back`), the rest is
/// their content.
pub fn readback(data: &[u8]) {
    let Some((&layout, content)) = data.split_first() else { return };
    let back = viberglass_worker::pipeline::fuzzing::read_back(layout, content, &EXECUTION);
    assert!(back.title.chars().count() <= 200, "a pull request title is bounded");
    assert!(!back.title.is_empty(), "a pull request always has a title");
    let _ = (back.research, back.plan, back.body);
}

/// What `accept_report` promises about any report.
fn check_outcome(spec: &JobSpec, outcome: &Outcome) {
    let result = match outcome {
        Outcome::Completed { result, summary } => {
            assert!(summary.chars().count() <= 2000, "the summary is bounded");
            Some(result)
        }
        Outcome::Failed { failure, result } => {
            assert!(
                !failure.layer.server_only(),
                "a worker cannot claim a layer only the server decides: {}",
                failure.layer
            );
            assert!(failure.code.chars().count() <= 100, "the failure code is bounded");
            assert!(failure.message.chars().count() <= 4000, "the failure message is bounded");
            assert!(failure.detail.chars().count() <= 16_000, "the failure detail is bounded");
            result.as_ref()
        }
        Outcome::Cancelled { .. } => panic!("a worker's report cannot cancel its job"),
    };
    let Some(result) = result else { return };
    check_bounded(result);
    if spec.phase != Phase::Execution {
        assert!(
            !result.pushed
                && result.branch.is_none()
                && result.commit.is_none()
                && result.pull_request.is_none()
                && result.changed_files.is_empty(),
            "research and planning push nothing and open nothing"
        );
    }
    if result.pushed || result.branch.is_some() {
        assert_eq!(result.branch.as_deref(), Some(spec.branch.as_str()), "the branch is the spec's");
    }
    if spec.scm.is_none() {
        assert!(result.pull_request.is_none(), "a plain git remote has no pull requests");
    }
}

/// What `JobResult::bounded` promises.
fn check_bounded(result: &JobResult) {
    assert!(result.diff.as_ref().is_none_or(|d| d.len() <= MAX_RESULT_DIFF));
    assert!(result.diff_stat.as_ref().is_none_or(|d| d.len() <= 64 * 1024));
    assert!(result.changed_files.len() <= MAX_RESULT_FILES);
    assert!(result.changed_files.iter().all(|f| f.path.len() <= 4096 && f.status.len() <= 16));
    for text in [&result.document, &result.branch, &result.commit].into_iter().flatten() {
        assert!(text.len() <= 512);
    }
    if let Some(pr) = &result.pull_request {
        assert!(pr.url.len() <= 2048 && pr.title.len() <= 512 && pr.head.len() <= 512);
    }
    if let Some(usage) = &result.usage {
        assert!(usage.input_tokens <= 1_000_000_000_000 && usage.output_tokens <= 1_000_000_000_000);
        assert!(usage.cost_usd.is_none_or(|c| c.is_finite() && (0.0..=1_000_000.0).contains(&c)));
    }
}

/// An execution job on GitHub (as the server's own tests build one).
pub static EXECUTION: LazyLock<JobSpec> = LazyLock::new(|| {
    serde_json::from_value(serde_json::json!({
        "phase": "execution", "repository_url": "https://github.com/acme/shop.git", "base_branch": "main",
        "branch": "viberglass/t1", "prompt": "", "harness": {"kind": "command", "command": ["true"]},
        "instruction_files": [], "max_execution_secs": 60, "heartbeat_interval_secs": 5,
        "heartbeat_grace_secs": 60, "keep_workspace_on_failure": false, "ticket_title": "Fix the [cart] total",
        "scm": {"provider": "github", "api_url": "https://api.github.com", "repository": "acme/shop",
            "pr_repository": "acme/shop", "pr_base_branch": "main", "ticket_id": null,
            "ticket_url": "https://viberglass.example/tickets/1", "ticket_description": "The total is wrong."}
    }))
    .expect("a valid job spec")
});

/// The same job's research run.
pub static RESEARCH: LazyLock<JobSpec> = LazyLock::new(|| JobSpec { phase: Phase::Research, ..EXECUTION.clone() });

/// An execution job pushing to a plain git remote.
pub static PLAIN_GIT: LazyLock<JobSpec> =
    LazyLock::new(|| JobSpec { repository_url: "file:///srv/repo.git".into(), scm: None, ..EXECUTION.clone() });

/// An inbound webhook delivery for `provider`: the first byte picks the headers' shape (event name, a
/// signature of the body or a wrong one, form encoding), the rest is the body. The signature check, the
/// delivery id and the parser must never panic; a correctly signed body must verify, any other must not,
/// and a delivery id is always bounded.
pub fn webhook(provider: viberglass_domain::WebhookProvider, data: &[u8]) {
    use viberglass_domain::WebhookProvider;
    use viberglass_integrations::inbound;
    let Some((&shape, body)) = data.split_first() else { return };
    const SECRET: &str = "fuzz-secret-0123456789";
    let mut headers = http::HeaderMap::new();
    let event = match (provider, shape % 4) {
        (WebhookProvider::Github, 0) => "issues",
        (WebhookProvider::Github, 1) => "issue_comment",
        (WebhookProvider::Github, _) => "ping",
        (WebhookProvider::Gitlab, 0) => "Issue Hook",
        (_, _) => "Note Hook",
    };
    headers.insert("x-github-event", http::HeaderValue::from_static(event));
    headers.insert("x-gitlab-event", http::HeaderValue::from_static(event));
    if shape & 0x10 != 0 {
        headers.insert("content-type", http::HeaderValue::from_static("application/x-www-form-urlencoded"));
    }
    let signed = shape & 0x20 == 0;
    let signature = if signed { inbound::sign(SECRET, body) } else { inbound::sign("another secret", body) };
    let header = inbound::signature_header(provider);
    let value = match provider {
        WebhookProvider::Gitlab => if signed { SECRET.to_owned() } else { "wrong".to_owned() },
        WebhookProvider::Github | WebhookProvider::Jira | WebhookProvider::Custom => format!("sha256={signature}"),
        _ => signature,
    };
    headers.insert(header, http::HeaderValue::from_str(&value).unwrap());
    let now = time::OffsetDateTime::now_utc();
    let verdict = inbound::verify(provider, SECRET, true, &headers, body, now);
    let form = provider == WebhookProvider::Custom && inbound::is_form(&headers);
    if !signed {
        assert!(verdict.is_err(), "a wrong signature verified");
    } else if provider != WebhookProvider::Linear && !form {
        assert!(verdict.is_ok(), "a right signature was refused: {verdict:?}");
    }
    let key = inbound::delivery_key(provider, &headers, body);
    assert!(key.len() <= 210, "an unbounded delivery id");
    let _ = inbound::kept_headers(&headers);
    if let Ok(read) = inbound::parse(provider, &headers, body)
        && let inbound::Action::Comment(c) = &read.action
    {
        let _ = inbound::mention(&c.body, "viberglass");
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = inbound::mention(text, "viberglass");
    }
}
