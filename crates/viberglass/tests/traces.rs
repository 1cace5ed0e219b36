//! OpenTelemetry traces: a real server process and its real local worker export
//! over OTLP/HTTP to the testkit's receiver, and one run is one trace from the
//! HTTP request to the worker's agent step.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use viberglass_testkit::process::{ServerProcess, viberglass};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_from_the_request_to_the_workers_agent_step() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = viberglass(BINARY, dir.path());
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_SERVICE_NAME", "viberglass-test")
        // A collector's key: the exporter sends it, and no agent may ever see it.
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=collector-key-0123456789")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("VIBERGLASS_DISPATCH_INTERVAL_MS", "50")
        .env("VIBERGLASS_HEARTBEAT_INTERVAL_SECS", "1")
        .env("VIBERGLASS_WORKER_BINARY", BINARY);
    let server = ServerProcess::start(command, 0);
    assert!(server.output().contains("exporting traces over OTLP/HTTP"), "{}", server.output());
    let url = server.url("");
    let (client, _) = viberglass_testkit::app::admin_client(&url).await;
    let post = |path: &str, body: Value| {
        let request = client.post(format!("{url}{path}")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            assert!(status.is_success(), "{status}: {body}");
            body
        }
    };
    let repo = ServedRepo::with_files(&[("README.md", "# Shop\n")]).await;
    post("/api/v1/projects", json!({"name": "Shop", "repository_url": repo.url()})).await;
    let clanker = post(
        "/api/v1/clankers",
        json!({"shared": true, "name": "Scripted", "agent": "command",
               "agent_settings": {"command": ["sh", "-c", "{ printf '# Findings\\n'; env; } > RESEARCH.md"]}}),
    )
    .await;
    post("/api/v1/clankers/scripted/start", json!({})).await;
    let ticket = post("/api/v1/projects/shop/tickets", json!({"title": "Fix the readme"})).await;
    let ticket_id = ticket["id"].as_str().unwrap().to_owned();
    // A caller's traceparent is not trusted by default: the request starts a trace of its own (else anyone could
    // turn sampling off for their runs, or join another trace).
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let queued = client
        .post(format!("{url}/api/v1/tickets/{ticket_id}/runs"))
        .header("traceparent", format!("00-{caller_trace}-b7ad6b7169203331-01"))
        .json(&json!({"phase": "research", "clanker": "scripted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);
    let job: Value = queued.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: Value = client.get(format!("{url}/api/v1/jobs/{job_id}")).send().await.unwrap().json().await.unwrap();
        if now["status"] == "completed" {
            break;
        }
        assert!(now["status"] != "failed" && Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let spans = receiver
        .wait_for(Duration::from_secs(30), |spans| {
            ["report", "agent", "dispatch"].iter().all(|name| spans.iter().any(|s| s.name == *name))
        })
        .await;
    assert!(spans.iter().all(|s| s.trace_id != caller_trace), "the caller's trace is not joined");
    let request = one(&spans, "POST /api/v1/tickets/{ticket_id}/runs");
    assert_eq!(request.parent_span_id, "", "a root span, not a child of the caller's");
    let in_trace: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == request.trace_id).cloned().collect();
    assert_eq!(request.kind, 2, "a server span");
    assert_eq!(request.attribute("http.route"), Some("/api/v1/tickets/{ticket_id}/runs"));
    assert_eq!(request.attribute("http.response.status_code"), Some("202"));
    assert_eq!(request.service, "viberglass-test");

    let dispatch = one(&in_trace, "dispatch");
    assert_eq!(dispatch.parent_span_id, request.span_id, "dispatched in the request's trace");
    assert_eq!(dispatch.attribute("job.id"), Some(job_id.as_str()));
    assert_eq!(dispatch.attribute("ticket.id"), Some(ticket_id.as_str()));
    assert_eq!(dispatch.attribute("project.id"), job["project_id"].as_str());
    assert_eq!(dispatch.attribute("clanker.id"), clanker["id"].as_str());

    let worker = one(&in_trace, "worker");
    assert_eq!(worker.parent_span_id, request.span_id, "the worker continues the request's trace");
    assert_eq!(worker.attribute("job.id"), Some(job_id.as_str()));
    assert_eq!(worker.service, "viberglass-test", "the worker was handed the server's trace settings");
    let steps: Vec<&str> =
        in_trace.iter().filter(|s| s.parent_span_id == worker.span_id).map(|s| s.name.as_str()).collect();
    for step in ["prepare", "clone", "instructions", "agent", "upload", "report"] {
        assert!(steps.contains(&step), "the worker's `{step}` step is a child of its span: {steps:?}");
    }
    // Nothing of the job's text or repository anywhere at the collector: not in names, attributes or events (the
    // progress lines that name the repository stay in the logs).
    let repo_url = repo.url();
    assert!(spans.iter().all(|s| s.events.is_empty()), "{spans:#?}");
    assert!(spans.iter().all(|s| !format!("{s:?}").contains(&repo_url)), "{spans:#?}");
    // The agent saw none of the exporter's settings.
    let research: Value = client
        .get(format!("{url}/api/v1/tickets/{ticket_id}/documents/research"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let document = research["document"]["content"].as_str().unwrap_or_default();
    assert!(document.starts_with("# Findings") && document.contains("PATH="), "the agent's env: {document}");
    assert!(!document.contains("OTEL_") && !document.contains("collector-key"), "{document}");
}
