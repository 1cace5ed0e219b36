//! The web UI's pages and forms over HTTP: every page with every kind of
//! caller (the page half of the route matrix), forms replayed against the
//! API with their errors, CSRF, sign-in and escaping. The browser journeys
//! are in crates/viberglass/tests/ui.rs.

use reqwest::redirect::Policy;
use serde_json::json;
use viberglass_testkit::app::{ADMIN_EMAIL, ADMIN_PASSWORD};
use viberglass_testkit::{TestApp, TestBackend};

use crate::route_matrix::Who::{self, *};
use crate::route_matrix::{callers, fixture};

/// Every page and the least privileged caller it admits; kept apart from
/// the server's `ui::PAGES` so that a changed rule fails here.
const PAGES: &[(&str, Who)] = &[
    ("/setup", Anonymous),
    ("/login", Anonymous),
    ("/assets/{file}", Anonymous),
    ("/", Outsider),
    ("/projects", Outsider),
    ("/projects/new", Admin),
    ("/projects/{project}", Viewer),
    ("/projects/{project}/settings", Maintainer),
    ("/projects/{project}/webhooks", Maintainer),
    ("/projects/{project}/webhook-subscriptions", Maintainer),
    ("/projects/{project}/schedules", Viewer),
    ("/projects/{project}/schedules/{schedule_id}", Viewer),
    ("/webhook-subscriptions", Admin),
    ("/webhook-subscriptions/{subscription_id}", Maintainer),
    ("/projects/{project}/tickets/new", Member),
    ("/tickets", Outsider),
    ("/tickets/{ticket_id}", Viewer),
    ("/jobs", Outsider),
    ("/jobs/{job_id}", Viewer),
    ("/clankers", Outsider),
    ("/clankers/new", Admin),
    ("/clankers/{clanker}", Outsider),
    ("/clankers/{clanker}/edit", Admin),
    ("/secrets", Outsider),
    ("/integrations", Outsider),
    ("/users", Admin),
    ("/slack", Admin),
    ("/tokens", Outsider),
    ("/audit", Admin),
    ("/doctor", Admin),
];

#[test]
fn every_page_has_an_expectation_here() {
    let missing: Vec<&str> = viberglass_server::ui::PAGES
        .iter()
        .filter(|(method, path, _)| *method == "GET" && !PAGES.iter().any(|(p, _)| p == path))
        .map(|(_, path, _)| *path)
        .collect();
    assert!(missing.is_empty(), "these pages have no expectation in pages.rs: {missing:?}");
    for (path, _) in PAGES {
        assert!(
            viberglass_server::ui::PAGES.iter().any(|(m, p, _)| *m == "GET" && p == path),
            "{path} is expected here but the server has no such page"
        );
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

/// Signs in through the login form, as a browser does, keeping the cookie.
async fn browser(app: &TestApp, email: &str, password: &str) -> reqwest::Client {
    let client = reqwest::Client::builder().cookie_store(true).redirect(Policy::none()).build().unwrap();
    let response = client
        .post(app.url("/act/api/v1/auth/login"))
        .header("origin", &app.base_url)
        .form(&[("email", email), ("password", password), ("_next", "/tickets")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
    assert_eq!(response.headers()["location"], "/tickets");
    assert!(response.headers()["set-cookie"].to_str().unwrap().starts_with("vg_session="));
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_admits_exactly_the_callers_its_rule_names() {
    let app = TestApp::spawn_on(TestBackend::Sqlite).await;
    let f = fixture(&app).await;
    let clients = callers(&app).await;
    let concrete = |path: &str| {
        path.replace("{project}", &f.project)
            .replace("{ticket_id}", &f.ticket)
            .replace("{job_id}", &f.job)
            .replace("{clanker}", "some-clanker")
            .replace("{subscription_id}", &f.subscription)
            .replace("{schedule_id}", &f.schedule)
            .replace("{file}", "app.css")
    };
    let mut wrong = Vec::new();
    for (who, client) in &clients {
        for (path, least) in PAGES {
            let response = client.get(app.url(&concrete(path))).send().await.unwrap();
            let status = response.status().as_u16();
            let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
            let body = response.text().await.unwrap();
            let expected = if who >= least {
                // /setup sends everyone to sign in once an administrator exists
                // (the signed-in clients follow redirects; the anonymous one does not).
                if *path == "/setup" && *who == Anonymous { 303 } else { 200 }
            } else if *who == Anonymous {
                303
            } else {
                403
            };
            if status != expected {
                wrong.push(format!("{who:?} GET {path}: got {status}, expected {expected}"));
            }
            if expected == 303
                && *path != "/setup"
                && !location.as_deref().unwrap_or_default().starts_with("/login?next=")
            {
                wrong.push(format!("{who:?} GET {path}: redirected to {location:?}, not to the sign-in page"));
            }
            if expected == 403 && !body.contains("role") && !body.contains("administrator") {
                wrong.push(format!("{who:?} GET {path}: the refusal does not say what is needed"));
            }
        }
    }
    assert!(wrong.is_empty(), "the page matrix disagrees:\n{}", wrong.join("\n"));

    // Pages hide what a role may not do (the server refuses it anyway).
    let ticket_page = |client: &reqwest::Client| {
        let url = app.url(&format!("/tickets/{}", f.ticket));
        let request = client.get(url);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let viewer = ticket_page(&clients[2].1).await;
    assert!(!viewer.contains("id=\"run-panel\"") && !viewer.contains("Override workflow"), "a viewer sees no actions");
    let member = ticket_page(&clients[3].1).await;
    assert!(member.contains("id=\"run-panel\"") && !member.contains("Override workflow"));
    let maintainer = ticket_page(&clients[4].1).await;
    assert!(maintainer.contains("Override workflow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_and_out_through_the_forms_and_landing_where_asked() {
    let app = TestApp::spawn().await;
    let anonymous = no_redirects();
    let response = anonymous.get(app.url("/tickets?project=shop")).send().await.unwrap();
    assert_eq!(response.headers()["location"], "/login?next=%2Ftickets%3Fproject%3Dshop");
    let login = anonymous.get(app.url("/login?next=%2Ftickets")).send().await.unwrap().text().await.unwrap();
    assert!(login.contains("name=\"_next\" value=\"/tickets\""), "the sign-in form keeps where to go");
    for next in ["//evil.example", "/%09/evil.example", "/%5Cevil.example", "https://evil.example"] {
        let evil = anonymous.get(app.url(&format!("/login?next={next}"))).send().await.unwrap().text().await.unwrap();
        assert!(!evil.contains("evil.example"), "only local paths are kept: {next}");
    }
    // Another site cannot sign a browser in to an account of its choosing.
    let forced = anonymous
        .post(app.url("/act/api/v1/auth/login"))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .form(&[("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 403);
    assert!(forced.headers().get("set-cookie").is_none());

    // A wrong password: in place with htmx, as a page without.
    let wrong = anonymous
        .post(app.url("/act/api/v1/auth/login"))
        .header("hx-request", "true")
        .form(&[("_form", "login"), ("email", ADMIN_EMAIL), ("password", "nope-nope-nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 422);
    assert!(wrong.text().await.unwrap().contains("callout bad"));
    let wrong = anonymous
        .post(app.url("/act/api/v1/auth/login"))
        .form(&[("email", ADMIN_EMAIL), ("password", "nope-nope-nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("id=\"error-message\""));

    let browser = browser(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let page = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(ADMIN_EMAIL));
    let out = browser
        .post(app.url("/act/api/v1/auth/logout"))
        .header("origin", &app.base_url)
        .form(&[("_next", "/login")])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let after = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(after.status(), 303, "the session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_setup_goes_through_the_setup_page() {
    let app = TestApp::builder(TestBackend::Sqlite).without_setup().spawn().await;
    let client = reqwest::Client::builder().cookie_store(true).redirect(Policy::none()).build().unwrap();
    let login = client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(login.headers()["location"], "/setup", "nobody can sign in yet: set up first");
    let setup = client.get(app.url("/setup")).send().await.unwrap();
    assert_eq!(setup.status(), 200);
    let short = client
        .post(app.url("/act/api/v1/setup"))
        .header("hx-request", "true")
        .form(&[("_form", "setup"), ("email", "boss@example.com"), ("password", "short")])
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 422);
    let fragment = short.text().await.unwrap();
    assert!(fragment.contains("id=\"fe-setup-password\" hx-swap-oob=\"true\""), "{fragment}");
    let done = client
        .post(app.url("/act/api/v1/setup"))
        .form(&[("email", "boss@example.com"), ("password", "a-long-enough-password"), ("_next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    let home = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    let home = home.text().await.unwrap();
    assert!(
        home.contains("boss@example.com") && home.contains("id=\"getting-started\""),
        "the dashboard guides a new admin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_go_through_the_api_with_its_validation_csrf_and_audit() {
    let app = TestApp::spawn().await;
    let browser = browser(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let submit = |path: &str, form: &[(&str, &str)], htmx: bool| {
        let mut request = browser.post(app.url(&format!("/act{path}"))).header("origin", &app.base_url).form(form);
        if htmx {
            request = request.header("hx-request", "true");
        }
        async move { request.send().await.unwrap() }
    };
    // A project: typed fields, the new slug in the next page's address.
    let created = submit(
        "/api/v1/projects",
        &[
            ("name", "Shop Front"),
            ("repository_url:opt", "https://github.com/acme/shop.git"),
            ("max_execution_secs:int", "900"),
            ("planning_needs_approval:bool", "false"),
            ("_next", "/projects/{slug}"),
        ],
        true,
    )
    .await;
    assert_eq!(created.status(), 204);
    assert_eq!(created.headers()["hx-redirect"], "/projects/shop-front");
    let project: serde_json::Value = app.get("/api/v1/projects/shop-front").await.json().await.unwrap();
    assert_eq!(
        (project["max_execution_secs"].as_u64(), project["planning_needs_approval"].as_bool()),
        (Some(900), Some(false))
    );

    // Field errors come back beside the fields.
    let invalid = submit("/api/v1/projects", &[("_form", "project"), ("name", "Shop Front")], true).await;
    assert_eq!(invalid.status(), 422);
    let fragment = invalid.text().await.unwrap();
    assert!(fragment.contains("id=\"fe-project-slug\""), "{fragment}");
    let invalid =
        submit("/api/v1/projects", &[("_form", "project"), ("name", "X"), ("max_execution_secs:int", "ten")], true)
            .await;
    assert!(invalid.text().await.unwrap().contains("fe-project-max_execution_secs"));

    // A cross-site form is refused by the API's own CSRF check.
    let forged = browser
        .post(app.url("/act/api/v1/projects"))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .form(&[("name", "Evil")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("this site"));
    assert_eq!(app.get("/api/v1/projects/evil").await.status(), 404);

    // Only API routes, and only local redirects.
    let outside = submit("/api/worker/v1/jobs/x/result", &[], false).await;
    assert_eq!(outside.status(), 404);
    let away = submit("/api/v1/projects/shop-front/archive", &[("_next", "https://evil.example/")], false).await;
    assert_eq!(away.status(), 303);
    assert_ne!(away.headers()["location"], "https://evil.example/");

    // A token is shown once, on its own page.
    let token = submit("/api/v1/me/tokens", &[("name", "ci"), ("_show", "token"), ("_next", "/tokens")], false).await;
    assert_eq!(token.status(), 200);
    let shown = token.text().await.unwrap();
    assert!(shown.contains("id=\"shown-once\">vgp_"), "{shown}");

    // The audit log names the person and the UI channel.
    let changed =
        submit("/api/v1/projects/shop-front", &[("_method", "PATCH"), ("description", "The shop")], false).await;
    assert_eq!(changed.status(), 303);
    let audit: serde_json::Value = app.get("/api/v1/audit?action=project_updated").await.json().await.unwrap();
    let entry = &audit["items"][0];
    assert_eq!((entry["actor_email"].as_str(), entry["channel"].as_str()), (Some(ADMIN_EMAIL), Some("ui")), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_escape_what_people_typed_and_serve_their_assets() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "Shop"})).await;
    let ticket = app.create_ticket("shop", json!({"title": "<script>alert(1)</script>", "description": "a & b"})).await;
    let page = app.get(&format!("/tickets/{}", ticket["id"].as_str().unwrap())).await.text().await.unwrap();
    assert!(!page.contains("<script>alert(1)</script>"));
    assert!(page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"), "escaped as askama does");
    for (file, mime) in
        [("app.css", "text/css"), ("app.js", "text/javascript"), ("htmx-2.0.11.min.js", "text/javascript")]
    {
        let response = reqwest::get(app.url(&format!("/assets/{file}"))).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with(mime));
    }
    assert_eq!(reqwest::get(app.url("/assets/nope.js")).await.unwrap().status(), 404);
    let missing =
        reqwest::Client::new().get(app.url("/no/such/page")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("there is no page /no/such/page"));
    let api_missing: serde_json::Value = reqwest::get(app.url("/api/v1/nope")).await.unwrap().json().await.unwrap();
    assert_eq!(api_missing["code"], "route_not_found", "the API still answers JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_page_says_what_uses_each_secret_and_admins_reset_passwords() {
    let app = TestApp::spawn().await;
    app.post_json("/api/v1/secrets", &json!({"name": "MODEL_KEY"})).await;
    app.post_json("/api/v1/secrets", &json!({"name": "SPARE"})).await;
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Claude", "agent": "claude-code", "secrets": ["MODEL_KEY"]}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    let page = app.get("/secrets").await.text().await.unwrap();
    let row = |name: &str| {
        let start = page.find(&format!("id=\"secret-{name}\"")).unwrap();
        page[start..start + page[start..].find("</tr>").unwrap()].to_owned()
    };
    assert!(row("MODEL_KEY").contains("clanker claude"));
    assert!(row("SPARE").contains("nothing yet"));
    let (outsider, _) = app.user_client("outsider@example.com", false).await;
    let theirs = outsider.get(app.url("/secrets")).send().await.unwrap().text().await.unwrap();
    assert!(theirs.contains("MODEL_KEY") && !theirs.contains("clanker claude"), "what uses a secret is for admins");

    let (_, user) = app.user_client("dev@example.com", false).await;
    let browser = browser(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let reset = browser
        .post(app.url(&format!("/act/api/v1/users/{}", user["id"].as_str().unwrap())))
        .header("origin", &app.base_url)
        .form(&[("_method", "PATCH"), ("password", "a-brand-new-password"), ("_next", "/users")])
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 303);
    let signed_in = viberglass_testkit::app::token_for(&app.base_url, "dev@example.com", "a-brand-new-password").await;
    assert!(signed_in.starts_with("vgp_"), "the new password works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_shows_what_each_revision_changed() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "Shop"})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Fix it"})).await;
    let id = ticket["id"].as_str().unwrap();
    let save = |content: &'static str, base: i64| {
        let url = app.url(&format!("/api/v1/tickets/{id}/documents/research"));
        let request = app.client.put(url).json(&json!({"content": content, "base_revision": base}));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(save("# Findings\nold line\n", 0).await, 200);
    assert_eq!(save("# Findings\nnew line\n", 1).await, 200);
    let current = app.get(&format!("/tickets/{id}?tab=research")).await.text().await.unwrap();
    assert!(current.contains("What revision 2 changed from revision 1"), "{current}");
    assert!(
        current.contains("<span class=\"del\">-old line</span>")
            && current.contains("<span class=\"add\">+new line</span>")
    );
    let first = app.get(&format!("/tickets/{id}?tab=research&rev=1")).await.text().await.unwrap();
    assert!(first.contains("viewing revision 1") && first.contains("old line"));
    assert!(!first.contains("id=\"changes\""), "the first revision changed nothing before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_whose_rerun_succeeded_leaves_the_dashboard_and_links_its_rerun() {
    use viberglass_store::{NewJob, Outcome};
    let app = TestApp::builder(viberglass_testkit::TestBackend::Sqlite).without_dispatcher().spawn().await;
    let project = app.create_project(json!({"name": "Shop"})).await;
    let ticket = app.create_ticket("shop", json!({"title": "Checkout"})).await;
    let new = || NewJob {
        id: viberglass_domain::JobId::new(),
        project_id: project["id"].as_str().unwrap().parse().unwrap(),
        ticket_id: Some(ticket["id"].as_str().unwrap().parse().unwrap()),
        clanker_id: None,
        spec: crate::worker_auth::spec(),
        requested_by: None,
        request_id: None,
    };
    let first = app.store.create_job(new()).await.unwrap();
    let failure = viberglass_domain::Failure::new(
        viberglass_domain::FailureLayer::Clone,
        "repository_not_found",
        "the repository does not exist",
        false,
    );
    app.store.finish_job(first.id, Outcome::failed(failure)).await.unwrap();
    let dashboard = app.get("/").await.text().await.unwrap();
    assert!(dashboard.contains("repository does not exist"), "the failure needs attention");

    let second = app.store.create_rerun(&first, new()).await.unwrap();
    app.store
        .finish_job(second.id, Outcome::Completed { result: Default::default(), summary: "ok".into() })
        .await
        .unwrap();
    let dashboard = app.get("/").await.text().await.unwrap();
    assert!(!dashboard.contains("repository does not exist"), "its re-run made it good: {dashboard}");
    let page = app.get(&format!("/jobs/{}", first.id)).await.text().await.unwrap();
    assert!(
        page.contains(&format!("/jobs/{}", second.id)) && page.contains("rerun-link"),
        "the failed run links its re-run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_pages_add_templates_and_schedules_and_show_the_next_runs() {
    let app = TestApp::spawn().await;
    app.create_project(json!({"name": "Shop", "repository_url": "https://github.com/acme/shop.git"})).await;
    let empty = app.client.get(app.url("/projects/shop/schedules")).send().await.unwrap().text().await.unwrap();
    assert!(empty.contains("No schedule yet") && empty.contains("No clanker may run here"), "{empty}");
    let clanker = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Bot", "agent": "command", "agent_settings": {"command": ["true"]}}),
        )
        .await;
    assert_eq!(clanker.status(), 201);
    let browser = browser(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let submit = |path: &str, form: &[(&str, &str)]| {
        let request = browser
            .post(app.url(&format!("/act{path}")))
            .header("origin", &app.base_url)
            .header("hx-request", "true")
            .form(form);
        async move { request.send().await.unwrap() }
    };
    let created = submit(
        "/api/v1/projects/shop/task-templates",
        &[
            ("_form", "template"),
            ("name", "deps"),
            ("clanker", "bot"),
            ("phase", "execution"),
            ("instructions", "Bump <the> dependencies."),
            ("secrets:lines", ""),
            ("open_pull_request:bool", "false"),
            ("_next", "/projects/shop/schedules"),
        ],
    )
    .await;
    assert_eq!(created.status(), 204, "{}", created.text().await.unwrap());
    let template: serde_json::Value = app.get("/api/v1/projects/shop/task-templates/deps").await.json().await.unwrap();
    assert_eq!(template["open_pull_request"], false);
    // A bad expression comes back beside the field, with where and why.
    let invalid = submit(
        "/api/v1/projects/shop/schedules",
        &[
            ("_form", "schedule"),
            ("name", "weekly"),
            ("template", template["id"].as_str().unwrap()),
            ("cron:skip", "0 25 * * *"),
        ],
    )
    .await;
    assert_eq!(invalid.status(), 422);
    let fragment = invalid.text().await.unwrap();
    assert!(fragment.contains("fe-schedule-cron") && fragment.contains("at position 3"), "{fragment}");
    let created = submit(
        "/api/v1/projects/shop/schedules",
        &[
            ("_form", "schedule"),
            ("name", "weekly"),
            ("template", template["id"].as_str().unwrap()),
            ("cron:skip", "0 9 * * MON"),
            ("timezone:skip", "Europe/Berlin"),
            ("interval:skip", ""),
            ("overlap", "queue"),
            ("missed", "skip"),
            ("standing_ticket:skip", ""),
            ("_next", "/projects/shop/schedules"),
        ],
    )
    .await;
    assert_eq!(created.status(), 204, "{}", created.text().await.unwrap());
    let list = app.client.get(app.url("/projects/shop/schedules")).send().await.unwrap().text().await.unwrap();
    assert!(list.contains("cron 0 9 * * MON (Europe/Berlin)"), "{list}");
    assert!(list.contains("Bump &#60;the&#62; dependencies."), "{list}");
    assert!(list.contains("branch only"), "a template without pull requests says so");
    let schedule: serde_json::Value = app.get("/api/v1/projects/shop/schedules/weekly").await.json().await.unwrap();
    assert_eq!((schedule["overlap"].as_str(), schedule["missed"].as_str()), (Some("queue"), Some("skip")));
    let page = app
        .client
        .get(app.url(&format!("/projects/shop/schedules/{}", schedule["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"upcoming\"") && page.matches("<li>").count() >= 5, "{page}");
    assert!(page.contains("No execution yet") && page.contains("Run now"));
}
