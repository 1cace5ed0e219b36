//! Files attached to tickets: upload, list, download with safe headers, the
//! agent's copy, and the UI's multipart forms.

use reqwest::redirect::Policy;
use serde_json::{Value, json};
use viberglass_testkit::app::{ADMIN_EMAIL, ADMIN_PASSWORD};
use viberglass_testkit::{TestApp, TestBackend, backend_tests};

backend_tests!(attachments_are_kept_listed_and_served_safely);

async fn upload(app: &TestApp, ticket: &str, name: &str, mime: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/tickets/{ticket}/attachments")))
        .query(&[("filename", name)])
        .header("content-type", mime)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn attachments_are_kept_listed_and_served_safely(backend: TestBackend) {
    let app = TestApp::spawn_on(backend).await;
    app.create_project(json!({"name": "Shop"})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Checkout fails"})).await;
    let id = ticket["id"].as_str().unwrap();

    let log = upload(&app, id, "error.log", "text/plain; charset=utf-8", b"panic at checkout.rs:42\n".to_vec()).await;
    assert_eq!(log.status(), 201);
    let log: Value = log.json().await.unwrap();
    assert_eq!(
        (log["filename"].as_str(), log["content_type"].as_str(), log["size"].as_u64()),
        (Some("error.log"), Some("text/plain"), Some(24))
    );
    assert_eq!(log["sha256"].as_str().unwrap().len(), 64);
    let page = upload(&app, id, "evil.html", "text/html", b"<script>alert(1)</script>".to_vec()).await;
    assert_eq!(page.status(), 201);
    let page: Value = page.json().await.unwrap();
    let binary = upload(&app, id, "dump.bin", "application/octet-stream", vec![0, 159, 146, 150]).await;
    assert_eq!(binary.status(), 201);

    let list: Value = app.get(&format!("/api/v1/tickets/{id}/attachments")).await.json().await.unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|a| a["filename"].as_str().unwrap()).collect();
    assert_eq!(names, ["error.log", "evil.html", "dump.bin"]);

    let download = app.get(&format!("/api/v1/tickets/{id}/attachments/{}", log["id"].as_str().unwrap())).await;
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["x-content-type-options"], "nosniff");
    assert_eq!(download.headers()["content-disposition"], "inline; filename*=UTF-8''error.log");
    assert_eq!(download.text().await.unwrap(), "panic at checkout.rs:42\n");
    // An uploaded page is never served as a page.
    let html = app.get(&format!("/api/v1/tickets/{id}/attachments/{}", page["id"].as_str().unwrap())).await;
    assert_eq!(html.headers()["content-type"], "text/plain; charset=utf-8");
    assert!(html.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));

    // Bad input says what is wrong.
    let bad = upload(&app, id, "../etc/passwd", "text/plain", b"x".to_vec()).await;
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["fields"][0]["field"], "filename", "{bad}");
    assert_eq!(upload(&app, id, "empty.txt", "text/plain", Vec::new()).await.status(), 400);
    assert_eq!(upload(&app, id, "x.txt", "not a type", b"x".to_vec()).await.status(), 400);
    let big = upload(&app, id, "big.bin", "application/octet-stream", vec![7; 10 * 1024 * 1024 + 1]).await;
    assert_eq!(big.status(), 413);
    assert!(big.json::<Value>().await.unwrap()["message"].as_str().unwrap().contains("big.bin"));
    let other = app.create_ticket("shop", json!({"title": "Other"})).await;
    let foreign = app
        .get(&format!("/api/v1/tickets/{}/attachments/{}", other["id"].as_str().unwrap(), log["id"].as_str().unwrap()))
        .await;
    assert_eq!(foreign.status(), 404, "an attachment is reached only through its own ticket");
    let audit: Value = app.get("/api/v1/audit?action=ticket_attachment_added").await.json().await.unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 3);
    assert_eq!(app.post_json(&format!("/api/v1/tickets/{id}/archive"), &json!({})).await.status(), 200);
    let archived = upload(&app, id, "late.txt", "text/plain", b"x".to_vec()).await;
    assert_eq!(archived.status(), 422, "an archived ticket takes no files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_attachments_reach_the_agent_and_binary_ones_are_named() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Checkout fails", "description": "See the log."})).await;
    let id = ticket["id"].as_str().unwrap();
    upload(&app, id, "error.log", "text/plain", b"panic at checkout.rs:42\n".to_vec()).await;
    upload(&app, id, "screen.png", "image/png", vec![137, 80, 78, 71]).await;
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Cmd", "agent": "command", "agent_settings": {"command": ["true"]}}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    assert!(app.post_json("/api/v1/clankers/cmd/start", &json!({})).await.status().is_success());
    let run =
        app.post_json(&format!("/api/v1/tickets/{id}/runs"), &json!({"phase": "research", "clanker": "cmd"})).await;
    assert_eq!(run.status(), 202, "{}", run.text().await.unwrap());
    let run: Value = run.json().await.unwrap();
    let spec = app.store.job_spec(run["id"].as_str().unwrap().parse().unwrap()).await.expect("the job keeps its spec");
    let file = spec
        .instruction_files
        .iter()
        .find(|f| f.path.starts_with(".viberglass/attachments/") && f.path.ends_with("-error.log"))
        .expect("given, under a name of its own");
    assert_eq!(file.content, "panic at checkout.rs:42\n");
    assert!(!spec.instruction_files.iter().any(|f| f.path.ends_with("screen.png")), "binary files are not given");
    assert!(spec.prompt.contains(&file.path), "{}", spec.prompt);
    assert!(spec.prompt.contains("screen.png (image/png, 4 bytes): not available"), "{}", spec.prompt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_ticket_form_files_the_ticket_with_its_attachments() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "Shop"})).await;
    let browser = reqwest::Client::builder().cookie_store(true).redirect(Policy::none()).build().unwrap();
    let login = browser
        .post(app.url("/act/api/v1/auth/login"))
        .form(&[("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let form = reqwest::multipart::Form::new()
        .text("title", "Checkout fails")
        .text("description", "See the log")
        .text("_attach", "/api/v1/tickets/{id}/attachments")
        .text("_next", "/tickets/{id}")
        .part(
            "attachments:file",
            reqwest::multipart::Part::bytes(b"line one\n".to_vec())
                .file_name("error.log")
                .mime_str("text/plain")
                .unwrap(),
        )
        .part(
            "attachments:file",
            reqwest::multipart::Part::bytes(vec![1, 2, 3])
                .file_name("dump.bin")
                .mime_str("application/octet-stream")
                .unwrap(),
        )
        // An empty file input still sends a part; it is skipped.
        .part("attachments:file", reqwest::multipart::Part::bytes(Vec::new()).file_name(""));
    let created = browser
        .post(app.url("/act/api/v1/projects/shop/tickets"))
        .header("origin", &app.base_url)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 303, "{}", created.text().await.unwrap());
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let ticket_id = location.strip_prefix("/tickets/").expect("to the new ticket");
    let list: Value = app.get(&format!("/api/v1/tickets/{ticket_id}/attachments")).await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let page = browser.get(app.url(&location)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("error.log") && page.contains("dump.bin"), "the ticket page lists them");

    // A file the API refuses after the ticket was filed: the browser lands on the
    // ticket (not back on the form, where a second submit would file it twice).
    let form = reqwest::multipart::Form::new()
        .text("title", "Second")
        .text("_attach", "/api/v1/tickets/{id}/attachments")
        .text("_next", "/tickets/{id}")
        .part(
            "attachments:file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name(".env").mime_str("text/plain").unwrap(),
        );
    let partly = browser
        .post(app.url("/act/api/v1/projects/shop/tickets"))
        .header("origin", &app.base_url)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(partly.status(), 303);
    let location = partly.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/tickets/") && location.contains("attach_error="), "{location}");
    let page = browser.get(app.url(&location)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"attach-error\"") && page.contains(".env was not attached"), "the page says so");

    // An attach form sent without a file says so.
    let empty = reqwest::multipart::Form::new()
        .text("_form", "attach")
        .part("file:file", reqwest::multipart::Part::bytes(Vec::new()).file_name(""));
    let empty = browser
        .post(app.url(&format!("/act/api/v1/tickets/{ticket_id}/attachments")))
        .header("origin", &app.base_url)
        .header("hx-request", "true")
        .multipart(empty)
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 422);
    assert!(empty.text().await.unwrap().contains("choose a file"));

    // Files alone go to the form's target; a bad one is named in place.
    let bad = reqwest::multipart::Form::new().text("_form", "attach").part(
        "file:file",
        reqwest::multipart::Part::bytes(b"x".to_vec()).file_name(".env").mime_str("text/plain").unwrap(),
    );
    let refused = browser
        .post(app.url(&format!("/act/api/v1/tickets/{ticket_id}/attachments")))
        .header("origin", &app.base_url)
        .header("hx-request", "true")
        .multipart(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("not a plain file name"));
}
