//! Who is calling and what they may do.
//!
//! Every API route has exactly one [`Rule`] in [`RULES`], looked up by its
//! matched path; a route without a rule is refused (and the route matrix test
//! fails). A caller is a user signed in with a session cookie or an API token
//! (`Authorization: Bearer vgp_…`); cookie-authenticated writes must come from
//! the same origin (CSRF). Admins may do everything; otherwise project routes
//! need the caller's role in that project.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use viberglass_domain::{JobId, ProjectId, ProjectRole, TicketId};

use crate::AppState;
use crate::error::ApiError;

pub const SESSION_COOKIE: &str = "vg_session";
pub const TOKEN_PREFIX: &str = "vgp_";

/// Where a project route finds its project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `{project}`: an id or a slug.
    Project,
    /// `{ticket_id}`: the ticket's project.
    Ticket,
    /// `{job_id}`: the job's project.
    Job,
    /// `{subscription_id}`: the outbound webhook subscription's project (instance-wide ones need an administrator).
    Subscription,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone: health, first-run setup, sign-in.
    Public,
    /// A viberator with its job token (checked by the worker routes themselves).
    Worker,
    /// Any signed-in user (lists are narrowed to their projects).
    Authenticated,
    /// An instance administrator.
    Admin,
    /// At least this role in the route's project (admins always pass).
    Project(ProjectRole, Scope),
}

use ProjectRole::{Maintainer, Member, Viewer};
use Rule::{Admin, Authenticated, Project, Public, Worker};

/// Every API route and what it needs (the UI's pages are in `ui::PAGES`).
pub const RULES: &[(&str, &str, Rule)] = &[
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    ("GET", "/metrics", Public),
    ("GET", "/api/v1/setup", Public),
    ("POST", "/api/v1/setup", Public),
    ("POST", "/api/v1/auth/login", Public),
    ("POST", "/api/v1/auth/logout", Authenticated),
    ("GET", "/api/v1/me", Authenticated),
    ("GET", "/api/v1/me/tokens", Authenticated),
    ("POST", "/api/v1/me/tokens", Authenticated),
    ("DELETE", "/api/v1/me/tokens/{token_id}", Authenticated),
    ("GET", "/api/v1/users", Admin),
    ("POST", "/api/v1/users", Admin),
    ("PATCH", "/api/v1/users/{user_id}", Admin),
    ("GET", "/api/v1/audit", Admin),
    ("GET", "/api/v1/doctor", Admin),
    ("GET", "/api/v1/diagnostics", Admin),
    ("GET", "/api/v1/jobs/{job_id}/diagnostics", Admin),
    ("GET", "/api/v1/tickets/{ticket_id}/diagnostics", Admin),
    ("GET", "/api/v1/projects", Authenticated),
    ("POST", "/api/v1/projects", Admin),
    ("GET", "/api/v1/projects/{project}", Project(Viewer, Scope::Project)),
    ("PATCH", "/api/v1/projects/{project}", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/archive", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/unarchive", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/members", Project(Viewer, Scope::Project)),
    ("PUT", "/api/v1/projects/{project}/members/{user_id}", Project(Maintainer, Scope::Project)),
    ("DELETE", "/api/v1/projects/{project}/members/{user_id}", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/tickets", Project(Member, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/usage", Project(Viewer, Scope::Project)),
    // Ticket sources sign their deliveries: the signature is checked by the receiver itself.
    ("POST", "/api/webhooks/{provider}/{config}", Public),
    ("POST", "/api/slack/events", Public),
    ("GET", "/api/v1/slack", Admin),
    ("PUT", "/api/v1/slack", Admin),
    ("DELETE", "/api/v1/slack", Admin),
    ("POST", "/api/v1/slack/test", Admin),
    ("GET", "/api/v1/tickets/{ticket_id}/slack", Project(Viewer, Scope::Ticket)),
    ("PUT", "/api/v1/tickets/{ticket_id}/slack", Project(Maintainer, Scope::Ticket)),
    ("DELETE", "/api/v1/tickets/{ticket_id}/slack", Project(Maintainer, Scope::Ticket)),
    ("GET", "/api/v1/projects/{project}/webhooks", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/webhooks", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/webhooks/{webhook_id}", Project(Maintainer, Scope::Project)),
    ("PATCH", "/api/v1/projects/{project}/webhooks/{webhook_id}", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/webhooks/{webhook_id}/rotate-secret", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/webhook-deliveries", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}/payload", Project(Maintainer, Scope::Project)),
    (
        "POST",
        "/api/v1/projects/{project}/webhook-deliveries/{delivery_id}/redeliver",
        Project(Maintainer, Scope::Project),
    ),
    ("GET", "/api/v1/tickets/{ticket_id}/feedback", Project(Viewer, Scope::Ticket)),
    ("GET", "/api/v1/webhook-events", Authenticated),
    ("GET", "/api/v1/webhook-subscriptions", Admin),
    ("POST", "/api/v1/webhook-subscriptions", Admin),
    ("GET", "/api/v1/projects/{project}/webhook-subscriptions", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/webhook-subscriptions", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/webhook-subscriptions/{subscription_id}", Project(Maintainer, Scope::Subscription)),
    ("PATCH", "/api/v1/webhook-subscriptions/{subscription_id}", Project(Maintainer, Scope::Subscription)),
    ("POST", "/api/v1/webhook-subscriptions/{subscription_id}/rotate-secret", Project(Maintainer, Scope::Subscription)),
    ("POST", "/api/v1/webhook-subscriptions/{subscription_id}/test", Project(Maintainer, Scope::Subscription)),
    ("GET", "/api/v1/webhook-subscriptions/{subscription_id}/deliveries", Project(Maintainer, Scope::Subscription)),
    (
        "GET",
        "/api/v1/webhook-subscriptions/{subscription_id}/deliveries/{delivery_id}",
        Project(Maintainer, Scope::Subscription),
    ),
    (
        "POST",
        "/api/v1/webhook-subscriptions/{subscription_id}/deliveries/{delivery_id}/redeliver",
        Project(Maintainer, Scope::Subscription),
    ),
    (
        "POST",
        "/api/v1/webhook-subscriptions/{subscription_id}/redeliver-failed",
        Project(Maintainer, Scope::Subscription),
    ),
    ("GET", "/api/v1/tickets", Authenticated),
    ("GET", "/api/v1/tickets/{ticket_id}", Project(Viewer, Scope::Ticket)),
    ("PATCH", "/api/v1/tickets/{ticket_id}", Project(Member, Scope::Ticket)),
    ("POST", "/api/v1/tickets/{ticket_id}/archive", Project(Member, Scope::Ticket)),
    ("POST", "/api/v1/tickets/{ticket_id}/unarchive", Project(Member, Scope::Ticket)),
    ("POST", "/api/v1/tickets/{ticket_id}/runs", Project(Member, Scope::Ticket)),
    ("GET", "/api/v1/tickets/{ticket_id}/attachments", Project(Viewer, Scope::Ticket)),
    ("POST", "/api/v1/tickets/{ticket_id}/attachments", Project(Member, Scope::Ticket)),
    ("GET", "/api/v1/tickets/{ticket_id}/attachments/{attachment_id}", Project(Viewer, Scope::Ticket)),
    ("GET", "/api/v1/tickets/{ticket_id}/usage", Project(Viewer, Scope::Ticket)),
    ("GET", "/api/v1/tickets/{ticket_id}/documents/{phase}", Project(Viewer, Scope::Ticket)),
    ("PUT", "/api/v1/tickets/{ticket_id}/documents/{phase}", Project(Member, Scope::Ticket)),
    ("GET", "/api/v1/tickets/{ticket_id}/documents/{phase}/revisions", Project(Viewer, Scope::Ticket)),
    ("GET", "/api/v1/tickets/{ticket_id}/documents/{phase}/revisions/{revision}", Project(Viewer, Scope::Ticket)),
    ("POST", "/api/v1/tickets/{ticket_id}/documents/{phase}/comments", Project(Member, Scope::Ticket)),
    ("GET", "/api/v1/projects/{project}/task-templates", Project(Viewer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/task-templates", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/task-templates/{template_id}", Project(Viewer, Scope::Project)),
    ("PATCH", "/api/v1/projects/{project}/task-templates/{template_id}", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/schedules", Project(Viewer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/schedules", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/schedule-preview", Project(Viewer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/schedules/{schedule_id}", Project(Viewer, Scope::Project)),
    ("PATCH", "/api/v1/projects/{project}/schedules/{schedule_id}", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/schedules/{schedule_id}/pause", Project(Maintainer, Scope::Project)),
    ("POST", "/api/v1/projects/{project}/schedules/{schedule_id}/resume", Project(Maintainer, Scope::Project)),
    // Run now starts agent work as a run does: a member may.
    ("POST", "/api/v1/projects/{project}/schedules/{schedule_id}/run", Project(Member, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/schedules/{schedule_id}/executions", Project(Viewer, Scope::Project)),
    ("GET", "/api/v1/projects/{project}/executions/{execution_id}", Project(Viewer, Scope::Project)),
    ("PATCH", "/api/v1/tickets/{ticket_id}/comments/{comment_id}", Project(Member, Scope::Ticket)),
    // Requesting approval needs a member; the handler asks a maintainer for the other actions.
    ("POST", "/api/v1/tickets/{ticket_id}/documents/{phase}/approval", Project(Member, Scope::Ticket)),
    ("GET", "/api/v1/tickets/{ticket_id}/approvals", Project(Viewer, Scope::Ticket)),
    ("POST", "/api/v1/tickets/{ticket_id}/approve-and-continue", Project(Maintainer, Scope::Ticket)),
    ("POST", "/api/v1/tickets/{ticket_id}/documents/{phase}/revise", Project(Member, Scope::Ticket)),
    ("PUT", "/api/v1/tickets/{ticket_id}/override", Project(Maintainer, Scope::Ticket)),
    ("DELETE", "/api/v1/tickets/{ticket_id}/override", Project(Maintainer, Scope::Ticket)),
    ("POST", "/api/v1/tickets/{ticket_id}/prompt-preview", Project(Member, Scope::Ticket)),
    ("GET", "/api/v1/projects/{project}/prompts", Project(Viewer, Scope::Project)),
    ("PUT", "/api/v1/projects/{project}/prompts/{kind}", Project(Maintainer, Scope::Project)),
    ("DELETE", "/api/v1/projects/{project}/prompts/{kind}", Project(Maintainer, Scope::Project)),
    ("GET", "/api/v1/secrets", Authenticated),
    ("POST", "/api/v1/secrets", Admin),
    ("GET", "/api/v1/secrets/{name}", Authenticated),
    ("PATCH", "/api/v1/secrets/{name}", Admin),
    ("DELETE", "/api/v1/secrets/{name}", Admin),
    ("POST", "/api/v1/secrets/{name}/test", Admin),
    ("GET", "/api/v1/integrations", Authenticated),
    ("POST", "/api/v1/integrations", Admin),
    ("GET", "/api/v1/integrations/{integration}", Authenticated),
    ("PATCH", "/api/v1/integrations/{integration}", Admin),
    ("DELETE", "/api/v1/integrations/{integration}", Admin),
    ("POST", "/api/v1/integrations/{integration}/test", Admin),
    ("GET", "/api/v1/clankers", Authenticated),
    ("POST", "/api/v1/clankers", Admin),
    ("GET", "/api/v1/clankers/{clanker}", Authenticated),
    ("PATCH", "/api/v1/clankers/{clanker}", Admin),
    ("POST", "/api/v1/clankers/{clanker}/start", Admin),
    ("POST", "/api/v1/clankers/{clanker}/stop", Admin),
    ("GET", "/api/v1/jobs", Authenticated),
    ("GET", "/api/v1/jobs/{job_id}", Project(Viewer, Scope::Job)),
    ("POST", "/api/v1/jobs/{job_id}/cancel", Project(Member, Scope::Job)),
    ("POST", "/api/v1/jobs/{job_id}/rerun", Project(Member, Scope::Job)),
    ("GET", "/api/v1/jobs/{job_id}/events", Project(Viewer, Scope::Job)),
    ("GET", "/api/v1/jobs/{job_id}/events/stream", Project(Viewer, Scope::Job)),
    ("GET", "/api/worker/v1/jobs/{job_id}/bootstrap", Worker),
    ("POST", "/api/worker/v1/jobs/{job_id}/heartbeat", Worker),
    ("POST", "/api/worker/v1/jobs/{job_id}/events", Worker),
    ("POST", "/api/worker/v1/jobs/{job_id}/document", Worker),
    ("POST", "/api/worker/v1/jobs/{job_id}/result", Worker),
];

pub fn rule_for(method: &Method, path: &str) -> Option<Rule> {
    // HEAD is a GET without the body.
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    RULES.iter().chain(crate::ui::PAGES).find(|(m, p, _)| *m == method && *p == path).map(|(_, _, rule)| *rule)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(unauthenticated)
    }
}

pub fn unauthenticated() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "sign in first")
        .with_hint("POST /api/v1/auth/login for a session, or send an API token as `Authorization: Bearer vgp_…`")
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

pub use crate::identity::{Caller, Via, audit, hash_token as hash_secret};

/// A fresh random token with a prefix: `vgp_` + 40 hex characters.
pub fn mint_api_token() -> String {
    let bytes: [u8; 20] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

pub fn mint_session_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Hashes a password with argon2id (off the async threads).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::PasswordHasher;
        argon2::Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string())
    })
    .await
    .map_err(|_| ApiError::internal("password hashing stopped"))?
    .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))
}

/// Checks a password against a stored hash (constant-time inside argon2).
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    // Without a hash, still spend the time, so timing does not tell which accounts exist.
    let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::PasswordVerifier;
        argon2::Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// An argon2id hash of a random password, verified against when an account does not exist.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Wc0W5gF0s2XG7h4Gm1KrVZ0iW8rM2z6W1Tq3pQm6X5E";

/// Failed sign-ins, per account and per address, in a sliding window.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const MAX_FAILURES_PER_ACCOUNT: usize = 5;
pub const MAX_FAILURES_PER_ADDRESS: usize = 20;

impl LoginLimiter {
    fn prune(list: &mut VecDeque<Instant>, now: Instant) {
        while list.front().is_some_and(|t| now.duration_since(*t) > LOGIN_WINDOW) {
            list.pop_front();
        }
    }

    /// Counts a sign-in attempt for the account and the address, or answers
    /// `Err(seconds to wait)` when either has failed too often. Counting at
    /// the check (not after the slow password check) means parallel guesses
    /// cannot all slip in before the first failure is counted.
    pub fn attempt(&self, email: &str, address: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let keys = [
            (format!("account:{email}"), MAX_FAILURES_PER_ACCOUNT),
            (format!("address:{address}"), MAX_FAILURES_PER_ADDRESS),
        ];
        for (key, max) in &keys {
            if let Some(list) = failures.get_mut(key) {
                Self::prune(list, now);
                if list.len() >= *max {
                    let oldest = list.front().copied().unwrap_or(now);
                    return Err(LOGIN_WINDOW.saturating_sub(now.duration_since(oldest)).as_secs().max(1));
                }
            }
        }
        for (key, _) in keys {
            failures.entry(key).or_default().push_back(now);
        }
        // Keep the map bounded: forget keys whose window has passed.
        if failures.len() > 100_000 {
            failures.retain(|_, list| list.back().is_some_and(|t| now.duration_since(*t) <= LOGIN_WINDOW));
        }
        Ok(())
    }

    /// A successful sign-in: the account starts afresh, and the attempt no
    /// longer counts against the address.
    pub fn succeeded(&self, email: &str, address: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&format!("account:{email}"));
        if let Some(list) = failures.get_mut(&format!("address:{address}")) {
            list.pop_back();
        }
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookies| {
        cookies.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    })
}

/// The caller a request's credentials name; `None` when it carries none.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        let token = auth.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).unwrap_or_default();
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the Authorization header must be `Bearer vgp_…`, an API token from POST /api/v1/me/tokens",
            ));
        }
        return match state.store.token_user(&hash_secret(token)).await? {
            Some(user) => Ok(Some(Caller { user: Some(user), via: Via::Token })),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the API token is unknown, revoked or expired, or its user is disabled: create a new one",
            )),
        };
    }
    if let Some(session) = cookie_value(headers, SESSION_COOKIE)
        && let Some(user) = state.store.session_user(&hash_secret(&session)).await?
    {
        return Ok(Some(Caller { user: Some(user), via: Via::Session }));
    }
    if state.config.auth_disabled {
        return Ok(Some(Caller { user: None, via: Via::Nobody }));
    }
    Ok(None)
}

/// A cookie-authenticated write must come from this site: browsers say so in
/// `Sec-Fetch-Site`, or in `Origin` (compared with `Host`).
pub(crate) fn same_origin(headers: &HeaderMap, config: &crate::config::Config) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = get("origin");
    // The server's public address and the configured UI origins are this site too.
    if let Some(origin) = origin
        && (config.public_url.as_deref().is_some_and(|p| p.eq_ignore_ascii_case(origin))
            || config.cors_allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)))
    {
        return true;
    }
    if let Some(site) = get("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (origin, get("host")) {
        (Some(origin), Some(host)) => origin.split("://").nth(1).is_some_and(|o| o.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        // Not a browser's cross-site request.
        (None, _) => true,
    }
}

/// The project a path names: `None` when it names none (a malformed or
/// unknown id: the handler answers 400 or 404); a store failure is an error,
/// never a pass.
async fn project_of(state: &AppState, scope: Scope, value: &str) -> Result<Option<ProjectId>, ApiError> {
    let found = match scope {
        Scope::Project => return Ok(crate::service::projects::find_project_id(&state.store, value).await?),
        Scope::Ticket => match value.parse::<TicketId>() {
            Ok(id) => state.store.get_ticket(id).await.map(|t| t.project_id),
            Err(_) => return Ok(None),
        },
        Scope::Job => match value.parse::<JobId>() {
            Ok(id) => state.store.get_job(id).await.map(|j| j.project_id),
            Err(_) => return Ok(None),
        },
        Scope::Subscription => match value.parse::<viberglass_domain::SubscriptionId>() {
            Ok(id) => match state.store.get_subscription(id).await.map(|s| s.subscription.project_id) {
                Ok(Some(project)) => Ok(project),
                // Administrators passed before this is asked.
                Ok(None) => {
                    return Err(forbidden(
                        "this subscription is instance-wide: it needs an instance administrator".into(),
                    ));
                }
                Err(e) => Err(e),
            },
            Err(_) => return Ok(None),
        },
    };
    match found {
        Ok(project) => Ok(Some(project)),
        Err(viberglass_store::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn scope_param(scope: Scope) -> &'static str {
    match scope {
        Scope::Project => "project",
        Scope::Ticket => "ticket_id",
        Scope::Job => "job_id",
        Scope::Subscription => "subscription_id",
    }
}

/// The guard in front of every API route: finds the route's rule,
/// authenticates, checks CSRF and the role, and hands the caller on.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

pub(crate) async fn check(state: &AppState, request: Request) -> Result<Request, ApiError> {
    let method = request.method().clone();
    let path = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let Some(rule) = rule_for(&method, &path) else {
        tracing::error!(%method, path, "a route without an access rule was refused; add it to auth::RULES");
        return Err(forbidden(format!("{method} {path} has no access rule, so it is refused")));
    };
    if matches!(rule, Public | Worker) {
        return Ok(request);
    }
    let (mut parts, body) = request.into_parts();
    let caller = authenticate(state, &parts.headers).await?.ok_or_else(unauthenticated)?;
    // Browsers send cookies (and, with AUTH_DISABLED, nothing at all) along
    // with cross-site requests: such writes must come from this site.
    if matches!(caller.via, Via::Session | Via::Nobody)
        && !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        && !same_origin(&parts.headers, &state.config)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_rejected",
            "a cookie-authenticated change must come from this site's own pages; API clients send an API token instead",
        ));
    }
    match rule {
        Public | Worker | Authenticated => {}
        Admin if caller.is_admin() => {}
        Admin => return Err(forbidden("this needs an instance administrator".into())),
        Project(_, _) if caller.is_admin() => {}
        Project(needed, scope) => {
            let params = RawPathParams::from_request_parts(&mut parts, state).await.map_err(|_| unauthenticated())?;
            let value = params.iter().find(|(k, _)| *k == scope_param(scope)).map(|(_, v)| v.to_owned());
            // An unknown project, ticket or job: the handler answers 400 or 404.
            if let Some(project) = match value {
                Some(value) => project_of(state, scope, &value).await?,
                None => None,
            } {
                let role = match caller.user_id() {
                    Some(user) => state.store.member_role(project, user).await?,
                    None => None,
                };
                if !role.is_some_and(|r| r.includes(needed)) {
                    let have = role.map_or_else(|| "no role".to_owned(), |r| format!("the {r} role"));
                    // Some routes need more for some actions: say so, so nobody asks for too little.
                    let more = if path.ends_with("/approval") || path.ends_with("/approve-and-continue") {
                        " (requesting approval needs member; approving, rejecting and revoking need maintainer)"
                    } else {
                        ""
                    };
                    return Err(forbidden(format!(
                        "this needs the {needed} role in the project{more}; you have {have}: ask one of its maintainers or an administrator"
                    )));
                }
            }
        }
    }
    parts.extensions.insert(caller);
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_stops_an_account_after_five_failures_and_an_address_after_twenty() {
        let limiter = LoginLimiter::default();
        for _ in 0..MAX_FAILURES_PER_ACCOUNT {
            assert!(limiter.attempt("a@x", "1.1.1.1").is_ok());
        }
        assert!(limiter.attempt("a@x", "2.2.2.2").is_err(), "per account, from any address");
        assert!(limiter.attempt("b@x", "1.1.1.1").is_ok());
        for i in 0..MAX_FAILURES_PER_ADDRESS {
            let _ = limiter.attempt(&format!("u{i}@x"), "3.3.3.3");
        }
        assert!(limiter.attempt("new@x", "3.3.3.3").is_err(), "per address, for any account");
        limiter.succeeded("a@x", "4.4.4.4");
        assert!(limiter.attempt("a@x", "2.2.2.2").is_ok());
        // Successes do not use up an address's allowance.
        for _ in 0..(MAX_FAILURES_PER_ADDRESS * 2) {
            assert!(limiter.attempt("ok@x", "5.5.5.5").is_ok());
            limiter.succeeded("ok@x", "5.5.5.5");
        }
    }

    #[test]
    fn csrf_needs_the_same_origin_for_browser_requests() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            h
        };
        let mut config =
            crate::config::Config::load(None, |_| None, &[]).expect("the defaults are a valid configuration");
        config.cors_allowed_origins = vec!["https://ui.example".into()];
        let same_origin = |h: &HeaderMap| same_origin(h, &config);
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[("origin", "http://vg.local:8888"), ("host", "vg.local:8888")])));
        assert!(!same_origin(&headers(&[("origin", "https://evil.example"), ("host", "vg.local:8888")])));
        assert!(same_origin(&headers(&[("origin", "https://ui.example"), ("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[])));
    }

    #[test]
    fn the_dummy_hash_is_a_valid_argon2_hash() {
        use argon2::password_hash::PasswordVerifier;
        assert!(argon2::Argon2::default().verify_password(b"x", DUMMY_HASH).is_err());
        assert!(argon2::password_hash::phc::PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
