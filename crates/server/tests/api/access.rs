//! Signing in: first-run setup, sessions (cookies, CSRF, logout), login rate
//! limits, API tokens, and administrators managing users, with the audit log.

use serde_json::{Value, json};
use viberglass_testkit::app::{ADMIN_EMAIL, client_with_token, token_for};
use viberglass_testkit::{TestApp, TestBackend, TestDb, backend_tests};

backend_tests!(first_run_setup_raced_by_ten_requests_creates_one_admin, revocations_reach_every_server_at_once,);

async fn first_run_setup_raced_by_ten_requests_creates_one_admin(backend: TestBackend) {
    let app = TestApp::builder(backend).without_setup().spawn().await;
    let status: Value = app.get("/api/v1/setup").await.json().await.unwrap();
    assert_eq!(status["needed"], true);
    let anonymous = app.get("/api/v1/projects").await;
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.text().await.unwrap().contains("sign in"));

    let mut racers = Vec::new();
    for i in 0..10 {
        let client = app.client.clone();
        let url = app.url("/api/v1/setup");
        racers.push(tokio::spawn(async move {
            let body = json!({"email": format!("admin{i}@example.com"), "password": "a long admin password"});
            client.post(url).json(&body).send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409, 409, 409], "exactly one admin");
    assert_eq!(app.store.count_users().await.unwrap(), 1);
    let status: Value = app.get("/api/v1/setup").await.json().await.unwrap();
    assert_eq!(status["needed"], false);
}

/// Signs the test administrator in on `app` and returns the session cookie.
async fn admin_session_cookie(client: &reqwest::Client, app: &TestApp) -> String {
    let login = client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": viberglass_testkit::app::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    session_cookie(&login)
}

fn session_cookie(response: &reqwest::Response) -> String {
    let header = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(header.contains("HttpOnly") && header.contains("SameSite=Lax"), "{header}");
    assert!(!header.contains("Secure"), "plain http: no Secure flag: {header}");
    header.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_carry_csrf_protection_and_end_at_logout() {
    let app = TestApp::spawn().await;
    let plain = reqwest::Client::new();
    let cookie = admin_session_cookie(&plain, &app).await;
    let me: Value =
        plain.get(app.url("/api/v1/me")).header("cookie", &cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["user"]["email"], ADMIN_EMAIL);

    // A cross-site form post with the cookie is refused; the same site's is not.
    let body = json!({"name": "From a page"});
    let cross = plain
        .post(app.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    assert!(cross.text().await.unwrap().contains("csrf_rejected"));
    let fetch_cross = plain
        .post(app.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(fetch_cross.status(), 403);
    let same = plain
        .post(app.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .header("origin", format!("http://{}", app.address))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 201);

    let logout = plain.post(app.url("/api/v1/auth/logout")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    assert!(logout.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let after = plain.get(app.url("/api/v1/me")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 401, "the session is revoked, not just forgotten by the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_limited_per_account_and_audited() {
    let app = TestApp::spawn().await;
    let (_, user) = app.user_client("dev@example.com", false).await;
    let plain = reqwest::Client::new();
    let attempt = |password: &'static str| {
        plain
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"email": "DEV@example.com", "password": password}))
            .send()
    };
    for _ in 0..5 {
        let response = attempt("wrong password!").await.unwrap();
        assert_eq!(response.status(), 401);
        let body = response.text().await.unwrap();
        assert!(body.contains("invalid_credentials") && !body.contains("dev@example.com"), "{body}");
    }
    let limited = attempt("user-password-123").await.unwrap();
    assert_eq!(limited.status(), 429, "even the right password waits once the limit is reached");
    assert!(limited.headers().get("retry-after").is_some());
    assert!(limited.text().await.unwrap().contains("too many failed sign-ins"));
    // Another account from the same address is not locked out by these five.
    let other = plain
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": viberglass_testkit::app::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let audit: Value = app.get("/api/v1/audit?action=login_failed").await.json().await.unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 5);
    assert_eq!(audit["items"][0]["target_id"], "dev@example.com");
    assert!(user["id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_shown_once_listed_by_prefix_and_revocable() {
    let app = TestApp::spawn().await;
    let from_token = app.post_json("/api/v1/me/tokens", &json!({"name": "more"})).await;
    assert_eq!(from_token.status(), 403, "a token cannot mint more tokens");
    let session =
        viberglass_testkit::app::session_client(&app.base_url, ADMIN_EMAIL, viberglass_testkit::app::ADMIN_PASSWORD)
            .await;
    let created = session
        .post(app.url("/api/v1/me/tokens"))
        .json(&json!({"name": "ci", "expires_in_days": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("vgp_") && token.len() == 44, "{token}");
    assert!(token.starts_with(created["prefix"].as_str().unwrap()));
    assert!(created["expires_at"].is_string());
    let client = client_with_token(&token);
    assert_eq!(client.get(app.url("/api/v1/me")).send().await.unwrap().status(), 200);
    let listed: Value = app.get("/api/v1/me/tokens").await.json().await.unwrap();
    assert!(!listed.to_string().contains(&token), "listing never shows a token");
    let mine = listed.as_array().unwrap().iter().find(|t| t["id"] == created["id"]).unwrap();
    assert!(mine["last_used_at"].is_string(), "{mine}");

    let revoked = app.delete(&format!("/api/v1/me/tokens/{}", created["id"].as_str().unwrap())).await;
    assert_eq!(revoked.status(), 204);
    let refused = client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("revoked"));
    let garbage = reqwest::Client::new().get(app.url("/api/v1/me")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(garbage.status(), 401);
    let bad_expiry = session
        .post(app.url("/api/v1/me/tokens"))
        .json(&json!({"name": "x", "expires_in_days": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_expiry.status(), 400);
    let audit: Value = app.get("/api/v1/audit?action=token_created").await.json().await.unwrap();
    assert!(!audit.to_string().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_reset_passwords_disable_accounts_and_change_roles() {
    let app = TestApp::spawn().await;
    let (client, user) = app.user_client("dev@example.com", false).await;
    let id = user["id"].as_str().unwrap();
    assert_eq!(client.get(app.url("/api/v1/users")).send().await.unwrap().status(), 403);
    let short = app.patch_json(&format!("/api/v1/users/{id}"), &json!({"password": "short"})).await;
    assert_eq!(short.status(), 400);

    let reset = app.patch_json(&format!("/api/v1/users/{id}"), &json!({"password": "a brand new password"})).await;
    assert_eq!(reset.status(), 200);
    assert_eq!(client.get(app.url("/api/v1/me")).send().await.unwrap().status(), 401, "a reset ends the old tokens");
    let client = client_with_token(&token_for(&app.base_url, "dev@example.com", "a brand new password").await);

    let disabled = app.patch_json(&format!("/api/v1/users/{id}"), &json!({"disabled": true})).await;
    assert_eq!(disabled.status(), 200);
    assert_eq!(client.get(app.url("/api/v1/me")).send().await.unwrap().status(), 401, "tokens stop with the account");
    let login = reqwest::Client::new()
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "dev@example.com", "password": "a brand new password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 401);

    let promoted = app.patch_json(&format!("/api/v1/users/{id}"), &json!({"disabled": false, "is_admin": true})).await;
    assert_eq!(promoted.status(), 200);
    let me: Value = app.get("/api/v1/me").await.json().await.unwrap();
    let self_demote = app
        .patch_json(&format!("/api/v1/users/{}", me["user"]["id"].as_str().unwrap()), &json!({"is_admin": false}))
        .await;
    assert_eq!(self_demote.status(), 422, "no locking yourself out");
    let audit: Value = app.get("/api/v1/audit?action=role_changed").await.json().await.unwrap();
    assert_eq!(audit["items"][0]["details"]["is_admin"], true);
    assert_eq!(audit["items"][0]["actor_email"], ADMIN_EMAIL);
    let duplicate =
        app.post_json("/api/v1/users", &json!({"email": "DEV@example.com", "password": "whatever-long"})).await;
    assert_eq!(duplicate.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_limit_applies_to_the_client_not_the_proxy() {
    let app = TestApp::builder(TestBackend::Sqlite).env("VIBERGLASS_TRUST_FORWARDED_FOR", "true").spawn().await;
    let plain = reqwest::Client::new();
    let attempt = |client_ip: &'static str, email: String| {
        plain
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", format!("203.0.113.9, {client_ip}"))
            .json(&json!({"email": email, "password": "not the password"}))
            .send()
    };
    for i in 0..20 {
        assert_eq!(attempt("198.51.100.1", format!("u{i}@example.com")).await.unwrap().status(), 401);
    }
    assert_eq!(attempt("198.51.100.1", "another@example.com".into()).await.unwrap().status(), 429);
    assert_eq!(
        attempt("198.51.100.2", "another@example.com".into()).await.unwrap().status(),
        401,
        "another client behind the same proxy is not locked out"
    );
    let audit: Value = app.get("/api/v1/audit?action=login_failed&limit=1").await.json().await.unwrap();
    assert_eq!(audit["items"][0]["details"]["address"], "198.51.100.2");
}

/// Two servers on one database, each with its credential cache warm: a
/// token revoked, a session ended or an account disabled on one is refused
/// by the other on the very next request.
async fn revocations_reach_every_server_at_once(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let a = TestApp::builder(backend).database(db.shared()).spawn().await;
    let b = TestApp::builder(backend).database(db.shared()).spawn().await;
    let postgres = matches!(backend, TestBackend::Postgres);
    if postgres {
        // The cache serves once each server listens for revocations.
        for app in [&a, &b] {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !app.store.credential_cache_state().0 {
                assert!(std::time::Instant::now() < deadline, "the credential listener never started");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    let hits = |app: &TestApp| app.store.credential_cache_state().1;
    let me = |app: &TestApp, client: &reqwest::Client, cookie: Option<&str>| {
        let mut request = client.get(app.url("/api/v1/me"));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // An API token, warm on both, revoked on A.
    let token = token_for(&a.base_url, ADMIN_EMAIL, viberglass_testkit::app::ADMIN_PASSWORD).await;
    let client = client_with_token(&token);
    let before = hits(&b);
    for app in [&a, &b, &a, &b] {
        assert_eq!(me(app, &client, None).await, 200);
    }
    if postgres {
        assert!(hits(&b) > before, "the second request on B is served from memory");
    }
    let listed: Value = client.get(a.url("/api/v1/me/tokens")).send().await.unwrap().json().await.unwrap();
    let id =
        listed.as_array().unwrap().iter().find(|t| token.starts_with(t["prefix"].as_str().unwrap())).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eq!(a.delete(&format!("/api/v1/me/tokens/{id}")).await.status(), 204);
    assert_eq!(me(&b, &client, None).await, 401, "B refuses the revoked token at once");
    assert_eq!(me(&a, &client, None).await, 401);

    // A session, warm on both, ended on A.
    let plain = reqwest::Client::new();
    let cookie = admin_session_cookie(&plain, &b).await;
    for app in [&a, &b, &a, &b] {
        assert_eq!(me(app, &plain, Some(&cookie)).await, 200);
    }
    let logout = plain.post(a.url("/api/v1/auth/logout")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    assert_eq!(me(&b, &plain, Some(&cookie)).await, 401, "B refuses the ended session at once");

    // A user's token, warm on both; the account disabled on B, then a
    // password reset on A after it is enabled again.
    let (dev, user) = a.user_client("dev@example.com", false).await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    for app in [&a, &b, &a, &b] {
        assert_eq!(me(app, &dev, None).await, 200);
    }
    assert_eq!(b.patch_json(&format!("/api/v1/users/{user_id}"), &json!({"disabled": true})).await.status(), 200);
    assert_eq!(me(&a, &dev, None).await, 401, "A refuses a disabled account's token at once");
    assert_eq!(b.patch_json(&format!("/api/v1/users/{user_id}"), &json!({"disabled": false})).await.status(), 200);
    let dev = client_with_token(&token_for(&a.base_url, "dev@example.com", "user-password-123").await);
    for app in [&a, &b, &a, &b] {
        assert_eq!(me(app, &dev, None).await, 200);
    }
    let reset = a.patch_json(&format!("/api/v1/users/{user_id}"), &json!({"password": "a brand new password"})).await;
    assert_eq!(reset.status(), 200);
    assert_eq!(me(&b, &dev, None).await, 401, "B refuses tokens a password reset ended");
}
