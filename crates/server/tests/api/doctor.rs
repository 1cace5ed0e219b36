//! The doctor (`GET /api/v1/doctor`, the Doctor page): a healthy server has
//! no finding; each broken thing is one finding naming its layer, cause and
//! fix, and only administrators may ask.

use serde_json::{Value, json};
use viberglass_testkit::{TestApp, TestBackend, backend_tests};

backend_tests!(the_doctor_names_each_broken_thing_with_its_layer_cause_and_fix);

fn findings_of<'a>(report: &'a Value, layer: &str) -> Vec<&'a Value> {
    report["findings"].as_array().unwrap().iter().filter(|f| f["layer"] == layer).collect()
}

async fn the_doctor_names_each_broken_thing_with_its_layer_cause_and_fix(backend: TestBackend) {
    // The reaper would end the stuck job this test makes; a long interval
    // keeps it asleep (nothing wakes it: the job is changed behind its back).
    let app =
        TestApp::builder(backend).without_dispatcher().env("VIBERGLASS_REAPER_INTERVAL_MS", "600000").spawn().await;

    let healthy: Value = app.get("/api/v1/doctor").await.json().await.unwrap();
    assert_eq!(healthy["healthy"], true, "{healthy}");
    assert_eq!(healthy["findings"], json!([]), "{healthy}");
    let layers: Vec<&str> =
        healthy["checks"].as_array().unwrap().iter().map(|c| c["layer"].as_str().unwrap()).collect();
    for layer in [
        "configuration",
        "database",
        "encryption",
        "secrets",
        "scm",
        "compute",
        "webhooks",
        "slack",
        "workflow",
        "jobs",
    ] {
        assert!(layers.contains(&layer), "the {layer} check runs: {healthy}");
    }
    let page = app.get("/doctor").await.text().await.unwrap();
    assert!(page.contains("Nothing is broken."), "{page}");

    // One broken thing of each kind.
    let created = app.post_json("/api/v1/secrets", &json!({"name": "DOCTOR_UNSET_VARIABLE"})).await;
    assert_eq!(created.status(), 201);
    let created = app
        .post_json("/api/v1/secrets", &json!({"name": "SEALED", "backend": "database", "value": "doctor-canary-value"}))
        .await;
    assert_eq!(created.status(), 201);
    app.db.execute("UPDATE secrets SET key_id = 'kgone' WHERE name = 'SEALED'").await;
    let created = app
        .post_json(
            "/api/v1/integrations",
            &json!({"name": "forge", "kind": "github", "credential_secret": "DOCTOR_UNSET_VARIABLE"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Broken", "agent": "command", "agent_settings": {"command": ["true"]}}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created =
        app.post_json("/api/v1/webhook-subscriptions", &json!({"url": "https://hooks.example.com/viberglass"})).await;
    assert_eq!(created.status(), 201);
    app.db
        .execute(
            "UPDATE webhook_subscriptions SET active = false, disabled_reason = 'the destination answered 410 Gone'",
        )
        .await;
    let project =
        app.create_project(json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    let ticket = app.create_ticket(project["slug"].as_str().unwrap(), json!({"title": "Fix the checkout"})).await;
    let ticket_id = ticket["id"].as_str().unwrap();
    let set = app
        .client
        .put(app.url(&format!("/api/v1/tickets/{ticket_id}/override")))
        .json(&json!({"reason": "hotfix, no time for review"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200, "{}", set.text().await.unwrap());
    let started = app.post_json("/api/v1/clankers/broken/start", &json!({})).await;
    assert_eq!(started.status(), 200, "{}", started.text().await.unwrap());
    let job = app.run_phase(ticket_id, "broken", "research").await;
    app.db
        .execute("UPDATE clankers SET status = 'failed', status_message = 'the image acme/worker:1 was not found' WHERE name = 'Broken'")
        .await;
    app.db
        .execute(
            "UPDATE jobs SET status = 'dispatching', dispatched_at = '2020-01-02T03:04:05.000000Z', \
             compute_ref = 'local:gone-host:1:1' WHERE status = 'queued'",
        )
        .await;

    let report: Value = app.get("/api/v1/doctor").await.json().await.unwrap();
    assert_eq!(report["healthy"], false, "{report}");
    let text = report.to_string();
    assert!(!text.contains("doctor-canary-value"), "no secret value in the report: {text}");
    for finding in report["findings"].as_array().unwrap() {
        for field in ["severity", "layer", "subject", "cause", "fix"] {
            assert!(finding[field].as_str().is_some_and(|v| !v.is_empty()), "{field} of {finding}");
        }
    }
    let secrets = findings_of(&report, "secrets");
    assert!(
        secrets.iter().any(|f| f["subject"] == "secret DOCTOR_UNSET_VARIABLE"
            && f["cause"].as_str().unwrap().contains("environment variable DOCTOR_UNSET_VARIABLE is not set")
            && f["fix"].as_str().unwrap().contains("restart the server")),
        "{report}"
    );
    assert!(
        secrets.iter().any(|f| f["subject"] == "integration forge"),
        "the integration's token cannot be read: {report}"
    );
    let sealed = findings_of(&report, "encryption");
    assert_eq!(sealed.len(), 1, "{report}");
    assert_eq!(sealed[0]["subject"], "secret SEALED");
    assert!(sealed[0]["fix"].as_str().unwrap().contains("SECRETS_PREVIOUS_KEYS"), "{report}");
    let compute = findings_of(&report, "compute");
    assert!(
        compute.iter().any(|f| f["subject"] == "clanker Broken"
            && f["cause"].as_str().unwrap().contains("acme/worker:1 was not found")
            && f["fix"].as_str().unwrap().contains("Start")),
        "{report}"
    );
    let webhooks = findings_of(&report, "webhooks");
    assert!(
        webhooks.iter().any(|f| f["severity"] == "error" && f["cause"].as_str().unwrap().contains("410 Gone")),
        "{report}"
    );
    let overrides = findings_of(&report, "workflow");
    assert_eq!(overrides.len(), 1, "{report}");
    assert!(overrides[0]["cause"].as_str().unwrap().contains("hotfix, no time for review"), "{report}");
    assert_eq!(overrides[0]["severity"], "warning");
    let stuck = findings_of(&report, "jobs");
    assert_eq!(stuck.len(), 1, "{report}");
    assert_eq!(stuck[0]["subject"], format!("job {job}"));
    assert!(stuck[0]["cause"].as_str().unwrap().contains("local:gone-host:1:1"), "{report}");
    // Errors come first.
    let severities: Vec<&str> =
        report["findings"].as_array().unwrap().iter().map(|f| f["severity"].as_str().unwrap()).collect();
    let first_warning = severities.iter().position(|s| *s == "warning").unwrap_or(severities.len());
    assert!(severities[first_warning..].iter().all(|s| *s == "warning"), "{severities:?}");

    // The page shows the same findings.
    let page = app.get("/doctor").await.text().await.unwrap();
    assert!(
        page.contains("Something is broken.") && page.contains("clanker Broken") && page.contains("410 Gone"),
        "{page}"
    );
    assert!(!page.contains("doctor-canary-value"));

    // Only administrators ask.
    let (member, _) = app.user_client("member@example.com", false).await;
    let refused = member.get(app.url("/api/v1/doctor")).send().await.unwrap();
    assert_eq!(refused.status(), 403);
}

/// Every job failure code the code base can produce, found where failures are made: `FailureLayer::X, "code"`
/// anywhere, the compute targets' exit reasons (`code: "worker_…"`), and the forge refusals of
/// `pull_request_failure`.
fn failure_codes() -> std::collections::BTreeSet<String> {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    /// The code a string literal at the start of `text` (after blanks) holds, if it reads as one.
    fn leading_code(text: &str) -> Option<String> {
        let rest = text.trim_start().strip_prefix('"')?;
        let code = &rest[..rest.find('"')?];
        let ok = code.contains('_') || code.len() > 3;
        (ok && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then(|| code.to_owned())
    }
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut codes = std::collections::BTreeSet::new();
    for krate in ["agents", "compute", "domain", "scm", "server", "worker"] {
        let mut files = Vec::new();
        rust_files(&crates.join(krate).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for layer in text.match_indices("FailureLayer::").map(|(at, _)| &text[at + "FailureLayer::".len()..]) {
                let name_len = layer.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(0);
                if let Some(rest) = layer[name_len..].trim_start().strip_prefix(',') {
                    codes.extend(leading_code(rest));
                }
            }
            if krate == "compute" {
                let found = text.match_indices("code:").filter_map(|(at, _)| leading_code(&text[at + 5..]));
                codes.extend(found.filter(|c| c.starts_with("worker_")));
            }
            if krate == "scm" {
                let Some(start) = text.find("pub fn pull_request_failure") else { continue };
                let body = &text[start..start + text[start..].find("\n}\n").unwrap()];
                // Each refusal is a `("code", message, retryable)` tuple.
                for (at, _) in body.match_indices('(') {
                    let rest = body[at + 1..].trim_start();
                    let Some(code) = leading_code(rest) else { continue };
                    if rest[code.len() + 2..].starts_with(',') && code.contains('_') {
                        codes.insert(code);
                    }
                }
            }
        }
    }
    codes
}

#[test]
fn every_failure_code_is_in_the_troubleshooting_guide() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/troubleshooting.md")).unwrap();
    let codes = failure_codes();
    for known in
        ["worker_start_failed", "clone_authentication_failed", "pull_request_exists", "worker_image_pull_failed"]
    {
        assert!(codes.contains(known), "the scan finds {known}: {codes:?}");
    }
    assert!(codes.len() > 60, "{codes:?}");
    let missing: Vec<_> = codes.iter().filter(|c| !guide.contains(&format!("`{c}`"))).collect();
    assert!(missing.is_empty(), "docs/troubleshooting.md does not document {missing:?}");
}

backend_tests!(a_bundle_for_a_failed_job_holds_what_the_guide_asks_for_and_no_secret_value);

fn settings_value(files: &std::collections::BTreeMap<String, Value>, env: &str) -> String {
    let settings = files["configuration.json"]["settings"].as_array().unwrap();
    settings.iter().find(|s| s["env"] == env).unwrap()["value"].to_string()
}

/// The files of a zip answer, by name below its root folder.
async fn unzip(response: reqwest::Response) -> std::collections::BTreeMap<String, Value> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    let bytes = response.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        let name = file.name().unwrap().split_once('/').unwrap().1.to_owned();
        files.insert(name, serde_json::from_str(&text).unwrap());
    }
    files
}

async fn a_bundle_for_a_failed_job_holds_what_the_guide_asks_for_and_no_secret_value(backend: TestBackend) {
    let key = "ab".repeat(32);
    let app = TestApp::builder(backend)
        .without_dispatcher()
        .env("SECRETS_ENCRYPTION_KEY", &key)
        .env("BUNDLE_CANARY_ENV", "canary-env-value-7d1f")
        .spawn()
        .await;
    let created = app
        .post_json(
            "/api/v1/secrets",
            &json!({"name": "BUNDLE_DB", "backend": "database", "value": "canary-db-value-93ab"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    assert_eq!(app.post_json("/api/v1/secrets", &json!({"name": "BUNDLE_CANARY_ENV"})).await.status(), 201);
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Cmd", "agent": "command", "agent_settings": {"command": ["true"]},
                    "secrets": ["BUNDLE_DB", "BUNDLE_CANARY_ENV"]}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    assert!(app.post_json("/api/v1/clankers/cmd/start", &json!({})).await.status().is_success());
    let project =
        app.create_project(json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    let ticket = app.create_ticket(project["slug"].as_str().unwrap(), json!({"title": "Fix the checkout"})).await;
    let ticket_id = ticket["id"].as_str().unwrap().to_owned();
    let job = app.run_phase(&ticket_id, "cmd", "research").await;
    let failure = viberglass_domain::Failure::new(
        viberglass_domain::FailureLayer::Clone,
        "clone_authentication_failed",
        "cloning https://github.com/acme/shop.git failed: authentication failed; fix it in the project's SCM settings, then re-run",
        false,
    );
    assert!(app.store.finish_job(job.parse().unwrap(), viberglass_store::Outcome::failed(failure)).await.unwrap());
    // An inbound delivery refused in the window.
    let hook = app
        .post_json("/api/v1/projects/shop/webhooks", &json!({"provider": "custom", "secret": "bundle-secret-0000"}))
        .await;
    assert_eq!(hook.status(), 201, "{}", hook.text().await.unwrap());
    let hook: Value = hook.json().await.unwrap();
    let refused = reqwest::Client::new()
        .post(app.url(hook["path"].as_str().unwrap()))
        .json(&json!({"title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let files = unzip(app.get(&format!("/api/v1/jobs/{job}/diagnostics")).await).await;
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    for name in [
        "manifest.json",
        "ticket.json",
        "approvals.json",
        "jobs.json",
        "clankers.json",
        "webhook-deliveries.json",
        "doctor.json",
        "configuration.json",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(names.contains(&format!("jobs/{job}/events.json").as_str()), "{names:?}");
    assert_eq!(files["manifest.json"]["versions"]["viberglass"], env!("CARGO_PKG_VERSION"));
    assert_eq!(files["jobs.json"][0]["failure"]["code"], "clone_authentication_failed");
    assert_eq!(files["ticket.json"]["id"], ticket_id.as_str());
    assert_eq!(files["clankers.json"][0]["name"], "Cmd");
    assert_eq!(files["clankers.json"][0]["agent_settings"], json!({"set": ["command"], "values": "left out"}));
    let database = settings_value(&files, "DATABASE_URL");
    assert!(!database.contains("://"), "where the database is, not its URL: {database}");
    let events = files[&format!("jobs/{job}/events.json")].to_string();
    assert!(events.contains("failed: cloning"), "the job's log: {events}");
    let deliveries = files["webhook-deliveries.json"].as_array().unwrap();
    assert!(
        deliveries.iter().any(|d| d["direction"] == "inbound" && d["status"] == "rejected" && d["error"].is_string()),
        "{deliveries:?}"
    );
    let settings = files["configuration.json"]["settings"].as_array().unwrap();
    let key_setting = settings.iter().find(|s| s["env"] == "SECRETS_ENCRYPTION_KEY").unwrap();
    assert_eq!(key_setting["value"], "(set, not shown)");
    let everything = serde_json::to_string(&files).unwrap();
    for canary in [key.as_str(), "canary-db-value-93ab", "canary-env-value-7d1f", "bundle-secret-0000"] {
        assert!(!everything.contains(canary), "the bundle holds {canary}");
    }

    // A ticket's bundle and a window's; a bad request says what to give.
    let files = unzip(app.get(&format!("/api/v1/tickets/{ticket_id}/diagnostics")).await).await;
    assert_eq!(files["jobs.json"].as_array().unwrap().len(), 1);
    let since = "2020-01-01T00:00:00Z";
    let files = unzip(app.get(&format!("/api/v1/diagnostics?since={since}&until=2100-01-01T00:00:00Z")).await).await;
    assert_eq!(files["manifest.json"]["scope"]["jobs"], 1, "{}", files["manifest.json"]);
    let neither = app.get("/api/v1/diagnostics").await;
    assert_eq!(neither.status(), 400);
    let backwards = app.get("/api/v1/diagnostics?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z").await;
    assert_eq!(backwards.status(), 422);
    assert!(backwards.text().await.unwrap().contains("`until` must be after `since`"));
    // Another site may not make an administrator's browser ask for it.
    let cross = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{job}/diagnostics")))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let cross = app.client.get(app.url("/api/v1/doctor")).header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(cross.status(), 403);
    let missing = app.get(&format!("/api/v1/jobs/{}/diagnostics", viberglass_domain::JobId::new())).await;
    assert_eq!(missing.status(), 404);
    // The job's page offers it to administrators.
    let page = app.get(&format!("/jobs/{job}")).await.text().await.unwrap();
    assert!(page.contains(&format!("/api/v1/jobs/{job}/diagnostics")), "{page}");
    let (member, _) = app.user_client("member@example.com", false).await;
    assert_eq!(member.get(app.url(&format!("/api/v1/jobs/{job}/diagnostics"))).send().await.unwrap().status(), 403);
}
