//! The client commands against a real server: login → ticket create → run →
//! logs --follow → approve, in both output formats, and the API's message and
//! fix when something is refused.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

/// The CLI with its settings file in `dir` and nothing of the caller's environment that would point it elsewhere.
async fn cli(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(BINARY);
    command
        .args(args)
        .env_remove("VIBERGLASS_URL")
        .env_remove("VIBERGLASS_TOKEN")
        .env_remove("VIBERGLASS_PASSWORD")
        .env("VIBERGLASS_CLI_CONFIG", dir.join("cli.toml"))
        .env("HOME", dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("the viberglass binary runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    tokio::time::timeout(std::time::Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("viberglass {args:?} did not finish"))
        .unwrap()
}

fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn json_of(output: &Output) -> Value {
    let stdout = ok(output);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A refusal: exit 1, nothing on stdout, the API's message and a fix on stderr.
fn refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.starts_with("viberglass: error: "), "{stderr}");
    assert!(stderr.contains("\n  fix: "), "a fix is printed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_file_run_follow_and_approve_from_the_terminal() {
    let app = TestApp::builder(TestBackend::Sqlite).fast_engine(BINARY).spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "Shop\n")]).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url()})).await;
    let script = "echo 'reading the readme'; printf 'in \\033[31mred\\033[0m\\n'; printf '# Findings\\n\\nThe readme has no title.\\n' > RESEARCH.md; echo 'wrote the findings'";
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Scripted", "agent": "command", "agent_settings": {"command": ["sh", "-c", script]}}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    app.post_json("/api/v1/clankers/scripted/start", &json!({})).await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let server = app.base_url.trim_end_matches('/').to_owned();

    // Nothing saved yet: the CLI says how to sign in.
    let unsigned = refused(&cli(dir, &["projects"], None).await);
    assert!(unsigned.contains("no server given") && unsigned.contains("viberglass login --server"), "{unsigned}");
    // A wrong password is the API's own answer.
    let wrong =
        cli(dir, &["login", "--server", &server, "--email", viberglass_testkit::app::ADMIN_EMAIL], Some("not-it\n"))
            .await;
    let wrong = String::from_utf8_lossy(&wrong.stderr).into_owned();
    assert!(wrong.contains("401"), "{wrong}");

    // Sign in with the password on standard input; the token is kept readable by its owner only.
    let login = ok(&cli(
        dir,
        &["login", "--server", &server, "--email", viberglass_testkit::app::ADMIN_EMAIL],
        Some(&format!("{}\n", viberglass_testkit::app::ADMIN_PASSWORD)),
    )
    .await);
    assert!(login.contains("Signed in to") && login.contains(viberglass_testkit::app::ADMIN_EMAIL), "{login}");
    let saved = std::fs::read_to_string(dir.join("cli.toml")).unwrap();
    assert!(saved.contains("token = \"vgp_"), "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("cli.toml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the settings file holds a token");
    }
    // A settings file others can read is refused, not used; a broken one is named without quoting its token.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join("cli.toml");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = refused(&cli(dir, &["projects"], None).await);
        assert!(open.contains("can be read or changed by other users") && open.contains("chmod 600"), "{open}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The error is on the token's own line (its closing quote lost): its text must still not be quoted.
        let token_line = saved.lines().find(|l| l.starts_with("token")).unwrap().trim_end_matches('"').to_owned();
        std::fs::write(&file, format!("{token_line}\nserver = \"x\"\n")).unwrap();
        let broken = refused(&cli(dir, &["projects"], None).await);
        assert!(broken.contains("is not a valid CLI settings file (line 1)"), "{broken}");
        assert!(!broken.contains("vgp_"), "the token is not printed: {broken}");
        std::fs::write(&file, &saved).unwrap();
    }
    // The saved token goes to its own server only.
    let elsewhere = refused(&cli(dir, &["projects", "--server", "http://127.0.0.1:9"], None).await);
    assert!(elsewhere.contains("not signed in to http://127.0.0.1:9"), "{elsewhere}");

    let projects = ok(&cli(dir, &["projects"], None).await);
    assert!(projects.starts_with("SLUG") && projects.contains("shop") && projects.contains(&repo.url()), "{projects}");
    let clankers = ok(&cli(dir, &["clankers"], None).await);
    assert!(clankers.contains("scripted") && clankers.contains("command") && clankers.contains("active"), "{clankers}");
    let secrets = ok(&cli(dir, &["secrets", "list"], None).await);
    assert!(secrets.contains("No secrets yet"), "the empty state says what to do: {secrets}");

    // File a ticket (JSON: the read model), then find it in both formats.
    let ticket = json_of(
        &cli(
            dir,
            &[
                "tickets",
                "create",
                "--project",
                "shop",
                "--title",
                "Readme title",
                "--description",
                "Add one",
                "-o",
                "json",
            ],
            None,
        )
        .await,
    );
    let id = ticket["id"].as_str().unwrap().to_owned();
    assert_eq!((ticket["title"].as_str(), ticket["status"].as_str()), (Some("Readme title"), Some("open")), "{ticket}");
    let listed = ok(&cli(dir, &["tickets", "list", "--project", "shop"], None).await);
    assert!(listed.starts_with("ID") && listed.contains(&id) && listed.contains("Readme title"), "{listed}");
    let page = json_of(&cli(dir, &["tickets", "list", "--search", "readme", "--output", "json"], None).await);
    assert_eq!(page["items"][0]["id"], id.as_str(), "{page}");
    let none = ok(&cli(dir, &["tickets", "list", "--search", "nothing like it"], None).await);
    assert!(none.contains("No tickets match"), "{none}");
    let shown = ok(&cli(dir, &["tickets", "show", &id], None).await);
    assert!(shown.contains("Readme title") && shown.contains("Add one"), "{shown}");

    // What the server sends cannot drive the terminal: a title's escape sequences and overrides are not printed.
    let hostile = json_of(
        &cli(
            dir,
            &["tickets", "create", "--project", "shop", "--title", "Evil\r\u{202e}owned title", "-o", "json"],
            None,
        )
        .await,
    );
    assert_eq!(hostile["title"], "Evil\r\u{202e}owned title", "the JSON holds the value: {hostile}");
    for format in ["table", "json"] {
        let out = ok(&cli(dir, &["tickets", "list", "--project", "shop", "-o", format], None).await);
        assert!(out.contains("owned") && !out.contains(['\r', '\u{202e}']), "{format}: {out:?}");
    }
    // `..` would be resolved away by the URL and reach another route: it is refused before anything is sent.
    let dots = refused(&cli(dir, &["tickets", "show", ".."], None).await);
    assert!(dots.contains("`..` is not a ticket"), "{dots}");

    // Refusals print the API's message and its fix.
    let bad = refused(&cli(dir, &["tickets", "show", "not-a-ticket"], None).await);
    assert!(bad.contains("400"), "{bad}");
    let invalid = refused(
        &cli(dir, &["tickets", "create", "--project", "shop", "--title", "x", "--severity", "urgent"], None).await,
    );
    assert!(invalid.contains("severity"), "the invalid field is named: {invalid}");
    let early = refused(&cli(dir, &["run", &id, "execution", "--clanker", "scripted"], None).await);
    assert!(early.contains("422"), "execution before an approved plan: {early}");

    // Run research and follow its log to the end.
    let job = json_of(&cli(dir, &["run", &id, "research", "--clanker", "scripted", "-o", "json"], None).await);
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["phase"], "research");
    let followed = ok(&cli(dir, &["jobs", "logs", &job_id, "--follow"], None).await);
    assert!(followed.contains("reading the readme") && followed.contains("wrote the findings"), "{followed}");
    assert_eq!(followed.trim_end().lines().last(), Some("-- the job completed"), "the end is said: {followed}");
    assert!(!followed.contains('\u{1b}'), "an agent's escape sequences do not reach the terminal: {followed:?}");
    let shown = json_of(&cli(dir, &["jobs", "show", &job_id, "-o", "json"], None).await);
    assert_eq!(shown["status"], "completed", "{shown}");
    // The same log as JSON lines, and the whole log without --follow.
    let lines = ok(&cli(dir, &["jobs", "logs", &job_id, "--follow", "-o", "json"], None).await);
    let mut events: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.pop(), Some(json!({"end": {"status": "completed"}})), "the last line says how the job ended");
    assert!(events.iter().any(|e| e["message"] == "wrote the findings"), "{lines}");
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no repeats: {ids:?}");
    let all = json_of(&cli(dir, &["jobs", "logs", &job_id, "-o", "json"], None).await);
    assert_eq!(all.as_array().unwrap().len(), events.len(), "the followed log is the whole log");
    let jobs = ok(&cli(dir, &["jobs", "list", "--ticket", &id], None).await);
    assert!(jobs.contains(&job_id) && jobs.contains("completed"), "{jobs}");

    // Approve the findings; approving again is the API's refusal.
    let approved = ok(&cli(dir, &["approve", &id, "research", "--comment", "good findings"], None).await);
    assert!(approved.contains("Approved the research document"), "{approved}");
    let again = refused(&cli(dir, &["approve", &id, "research"], None).await);
    assert!(again.contains("already approved"), "{again}");
    let approvals: Value = app.get(&format!("/api/v1/tickets/{id}/approvals")).await.json().await.unwrap();
    let actions: Vec<(&str, &str)> = approvals
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["comment"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("approved", "good findings")), "{approvals}");

    // A revoked token is refused with the API's message, and the fix is to sign in again.
    let tokens: Value = app.get("/api/v1/me/tokens").await.json().await.unwrap();
    let cli_token = tokens
        .as_array()
        .or_else(|| tokens["items"].as_array())
        .unwrap()
        .iter()
        .find(|t| t["name"].as_str().is_some_and(|n| n.starts_with("viberglass CLI")))
        .unwrap_or_else(|| panic!("the CLI's token is listed: {tokens}"))
        .clone();
    let revoked = app
        .client
        .delete(app.url(&format!("/api/v1/me/tokens/{}", cli_token["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    let after = refused(&cli(dir, &["tickets", "list"], None).await);
    assert!(after.contains("401"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_exits_zero_when_healthy_and_one_with_each_finding_and_fix_when_not() {
    let app = TestApp::spawn_on(TestBackend::Sqlite).await;
    let (_, token) = viberglass_testkit::app::admin_client(&app.base_url).await;
    let home = tempfile::tempdir().unwrap();
    let server = app.base_url.trim_end_matches('/').to_owned();
    let args = |extra: &[&'static str]| {
        let mut args =
            vec!["doctor".to_owned(), "--server".to_owned(), server.clone(), "--token".to_owned(), token.clone()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let run = |args: Vec<String>| {
        let dir = home.path().to_owned();
        async move { cli(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>(), None).await }
    };

    let healthy = ok(&run(args(&[])).await);
    assert!(healthy.contains("0 error(s), 0 warning(s)"), "{healthy}");

    app.post_json("/api/v1/secrets", &json!({"name": "DOCTOR_CLI_UNSET"})).await;
    let broken = run(args(&[])).await;
    let stdout = String::from_utf8_lossy(&broken.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&broken.stderr).into_owned();
    assert_eq!(broken.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("ERROR [secrets] secret DOCTOR_CLI_UNSET"), "{stdout}");
    assert!(stdout.contains("  fix: set the variable in the server's environment"), "{stdout}");
    assert!(stderr.contains("the doctor found something broken") && stderr.contains("fix:"), "{stderr}");

    let json = run(args(&["--output", "json"])).await;
    assert_eq!(json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["healthy"], false);
    assert_eq!(report["findings"][0]["layer"], "secrets", "{report}");

    // The diagnostics bundle, for a window; nothing to say what it is about is refused with the fix.
    let out = home.path().join("bundle.zip");
    let mut bundle =
        vec!["diagnose".to_owned(), "--server".to_owned(), server.clone(), "--token".to_owned(), token.clone()];
    bundle.extend(["--since", "2020-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z", "--out"].map(str::to_owned));
    bundle.push(out.display().to_string());
    let wrote = ok(&run(bundle).await);
    assert!(wrote.contains("Wrote") && wrote.contains("review it before you share it"), "{wrote}");
    assert!(std::fs::read(&out).unwrap().starts_with(b"PK"), "a zip");
    let mut again =
        vec!["diagnose".to_owned(), "--server".to_owned(), server.clone(), "--token".to_owned(), token.clone()];
    again.extend(["--since", "2020-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z", "--out"].map(str::to_owned));
    again.push(out.display().to_string());
    let kept = refused(&run(again).await);
    assert!(kept.contains("not overwritten"), "{kept}");
    let nothing =
        run(vec!["diagnose".to_owned(), "--server".to_owned(), server.clone(), "--token".to_owned(), token.clone()])
            .await;
    let refusal = refused(&nothing);
    assert!(refusal.contains("--job ID, --ticket ID, or --since TIME --until TIME"), "{refusal}");
}
