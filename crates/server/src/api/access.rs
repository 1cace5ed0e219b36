//! Signing in and who may do what: first-run setup, sessions, API tokens,
//! users, project members, and the audit log.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use viberglass_domain::user::{UserPatchInput, parse_email};
use viberglass_domain::{
    ApiToken, AuditEntry, NewUser, Page, ProjectRole, User, UserId, UserInput, UserPatch, ValidationErrors,
};
use viberglass_store::{AuditFilter, UserChange};

use super::{parse_page, parse_param};
use crate::AppState;
use crate::auth::{
    Caller, SESSION_COOKIE, audit, hash_password, hash_secret, mint_api_token, mint_session_token, verify_password,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::service::projects::find_project;

/// Whether first-run setup is still needed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SetupStatus {
    /// True while no user exists: POST /api/v1/setup creates the first admin.
    pub needed: bool,
}

#[utoipa::path(get, path = "/api/v1/setup", tag = "access", responses((status = 200, body = SetupStatus)))]
pub async fn setup_status(State(state): State<AppState>) -> ApiResult<Json<SetupStatus>> {
    Ok(Json(SetupStatus { needed: state.store.count_users().await? == 0 }))
}

/// The client's address: the connection's, or behind a trusted proxy the
/// last `X-Forwarded-For` entry (the one the proxy itself added).
fn client_address(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> String {
    if state.config.trust_forwarded_for
        && let Some(forwarded) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
        && let Some(last) = forwarded.rsplit(',').map(str::trim).find(|a| a.parse::<std::net::IpAddr>().is_ok())
    {
        return last.to_owned();
    }
    peer.ip().to_string()
}

fn session_cookie(state: &AppState, token: &str, max_age_secs: i64) -> HeaderValue {
    let secure = state.config.public_url.as_deref().is_some_and(|u| u.starts_with("https://"));
    let value = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("vg_session=; Max-Age=0"))
}

/// Starts a session for `user` and answers with its cookie.
async fn sign_in(
    state: &AppState,
    user: User,
    address: &str,
    headers: &HeaderMap,
    status: StatusCode,
) -> ApiResult<Response> {
    let token = mint_session_token();
    let ttl = time::Duration::hours(i64::from(state.config.session_ttl_hours));
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    state
        .store
        .create_session(user.id, &hash_secret(&token), Some(address), agent, viberglass_store::now() + ttl)
        .await?;
    let cookie = session_cookie(state, &token, ttl.whole_seconds());
    Ok((status, [(header::SET_COOKIE, cookie)], Json(user)).into_response())
}

/// First-run setup: creates the first administrator and signs them in.
/// Only while no user exists; concurrent attempts create exactly one.
#[utoipa::path(
    post, path = "/api/v1/setup", tag = "access", request_body = UserInput,
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn setup(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<UserInput>,
) -> ApiResult<Response> {
    let done = || {
        ApiError::new(StatusCode::CONFLICT, "setup_done", "setup is done: an administrator exists")
            .with_hint("sign in (POST /api/v1/auth/login); an administrator adds further users")
    };
    if state.store.count_users().await? > 0 {
        return Err(done());
    }
    let mut new = NewUser::parse(input)?;
    new.is_admin = true;
    let hash = hash_password(new.password.clone()).await?;
    let Some(user) = state.store.create_first_admin(new, &hash).await? else { return Err(done()) };
    tracing::info!(user = user.email, "first administrator created");
    let caller = Caller { user: Some(user.clone()), via: crate::auth::Via::Session };
    audit(&state, Some(&caller), "setup", "user", Some(user.id.to_string()), None, serde_json::json!({})).await;
    sign_in(&state, user, &client_address(&state, peer, &headers), &headers, StatusCode::CREATED).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginInput {
    email: String,
    password: String,
}

/// Signs in with e-mail and password; answers with the user and a session
/// cookie (HttpOnly, SameSite=Lax, Secure behind https). Failures are rate
/// limited per account and per address.
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "access", request_body = LoginInput,
    responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody))
)]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<LoginInput>,
) -> ApiResult<Response> {
    let email = parse_email(&input.email).unwrap_or_else(|_| input.email.trim().to_lowercase());
    let address = client_address(&state, peer, &headers);
    if let Err(wait) = state.limiter.attempt(&email, &address) {
        audit(
            &state,
            None,
            "login_throttled",
            "user",
            Some(email.clone()),
            None,
            serde_json::json!({"address": address}),
        )
        .await;
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!(
                "too many failed sign-ins: try again in {} minute(s), or ask an administrator to reset the password",
                wait.div_ceil(60)
            ),
        )
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    let found = state.store.user_for_login(&email).await?;
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, None),
    };
    let valid = verify_password(input.password, hash).await;
    match user {
        Some(user) if valid && user.disabled_at.is_none() => {
            state.limiter.succeeded(&email, &address);
            let caller = Caller { user: Some(user.clone()), via: crate::auth::Via::Session };
            audit(
                &state,
                Some(&caller),
                "login",
                "user",
                Some(user.id.to_string()),
                None,
                serde_json::json!({"address": address}),
            )
            .await;
            sign_in(&state, user, &address, &headers, StatusCode::OK).await
        }
        _ => {
            audit(
                &state,
                None,
                "login_failed",
                "user",
                Some(email.clone()),
                None,
                serde_json::json!({"address": address}),
            )
            .await;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "the e-mail or the password is wrong, or the account is disabled",
            ))
        }
    }
}

/// Signs out: the session ends now, everywhere it was used.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "access", responses((status = 204)))]
pub async fn logout(State(state): State<AppState>, caller: Caller, headers: HeaderMap) -> ApiResult<Response> {
    let session = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.split(';').find_map(|p| p.trim().strip_prefix(&format!("{SESSION_COOKIE}=")).map(str::to_owned))
    });
    if let Some(token) = session {
        state.store.revoke_session(&hash_secret(&token)).await?;
    }
    audit(
        &state,
        Some(&caller),
        "logout",
        "user",
        caller.user_id().map(|u| u.to_string()),
        None,
        serde_json::json!({}),
    )
    .await;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, session_cookie(&state, "", 0))]).into_response())
}

/// Who I am, and my project roles.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// None with AUTH_DISABLED.
    pub user: Option<User>,
    pub is_admin: bool,
}

#[utoipa::path(get, path = "/api/v1/me", tag = "access", responses((status = 200, body = Me)))]
pub async fn me(caller: Caller) -> Json<Me> {
    Json(Me { is_admin: caller.is_admin(), user: caller.user })
}

fn signed_in_user(caller: &Caller) -> ApiResult<UserId> {
    caller.user_id().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_user",
            "API tokens belong to a user; with AUTH_DISABLED nobody is signed in",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/me/tokens", tag = "access", responses((status = 200, body = Vec<ApiToken>)))]
pub async fn list_tokens(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<ApiToken>>> {
    Ok(Json(state.store.list_api_tokens(signed_in_user(&caller)?).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    /// What it is for, e.g. `ci`.
    name: String,
    /// Days until it stops working (1 to 3650); none: until revoked.
    expires_in_days: Option<u32>,
}

/// A new API token: `token` is shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NewToken {
    pub token: String,
    #[serde(flatten)]
    pub api_token: ApiToken,
}

/// Creates an API token for the caller, accepted as `Authorization: Bearer <token>`.
#[utoipa::path(
    post, path = "/api/v1/me/tokens", tag = "access", request_body = TokenInput,
    responses((status = 201, body = NewToken), (status = 400, body = ErrorBody))
)]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<TokenInput>,
) -> ApiResult<impl IntoResponse> {
    let user = signed_in_user(&caller)?;
    if caller.via != crate::auth::Via::Session {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "session_required",
            "API tokens are created from a signed-in session (POST /api/v1/auth/login), not with another token",
        ));
    }
    let mut errors = ValidationErrors::new();
    let name = errors.check("name", viberglass_domain::validation::bounded_text(&input.name, "name", 1, 100));
    if let Some(days) = input.expires_in_days
        && !(1..=3650).contains(&days)
    {
        errors.add("expires_in_days", format!("must be between 1 and 3650 (got {days})"));
    }
    errors.into_result(())?;
    let token = mint_api_token();
    let prefix: String = token.chars().take(12).collect();
    let expires_at = input.expires_in_days.map(|d| viberglass_store::now() + time::Duration::days(i64::from(d)));
    let api_token = state
        .store
        .create_api_token(user, name.as_deref().unwrap_or_default(), &hash_secret(&token), &prefix, expires_at)
        .await?;
    audit(
        &state,
        Some(&caller),
        "token_created",
        "api_token",
        Some(api_token.id.to_string()),
        None,
        serde_json::json!({"name": api_token.name, "prefix": api_token.prefix}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(NewToken { token, api_token })))
}

/// Revokes one of the caller's API tokens.
#[utoipa::path(
    delete, path = "/api/v1/me/tokens/{token_id}", tag = "access",
    params(("token_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody))
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(token_id): Path<String>,
) -> ApiResult<StatusCode> {
    let user = signed_in_user(&caller)?;
    let id: uuid::Uuid = token_id.parse().map_err(|_| ApiError::invalid_field("token_id", "is not a token id"))?;
    if !state.store.revoke_api_token(user, id).await? {
        return Err(ApiError::not_found(format!("you have no live API token {id}")));
    }
    audit(&state, Some(&caller), "token_revoked", "api_token", Some(id.to_string()), None, serde_json::json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/users", tag = "access", responses((status = 200, body = Vec<User>)))]
pub async fn list_users(State(state): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(state.store.list_users().await?))
}

/// Adds a user (administrators only).
#[utoipa::path(
    post, path = "/api/v1/users", tag = "access", request_body = UserInput,
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<UserInput>,
) -> ApiResult<impl IntoResponse> {
    let new = NewUser::parse(input)?;
    let hash = hash_password(new.password.clone()).await?;
    let user = state.store.create_user(new, &hash).await?;
    audit(
        &state,
        Some(&caller),
        "user_created",
        "user",
        Some(user.id.to_string()),
        None,
        serde_json::json!({"email": user.email, "is_admin": user.is_admin}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(user)))
}

fn parse_user_id(text: &str) -> ApiResult<UserId> {
    text.parse().map_err(|e: viberglass_domain::ids::InvalidId| ApiError::invalid_field("user_id", e.to_string()))
}

/// Changes a user: name, admin, disabled, or a password reset (which ends their sessions).
#[utoipa::path(
    patch, path = "/api/v1/users/{user_id}", tag = "access", request_body = UserPatchInput,
    params(("user_id" = String, Path)),
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
    ApiJson(input): ApiJson<UserPatchInput>,
) -> ApiResult<Json<User>> {
    let id = parse_user_id(&user_id)?;
    let patch = UserPatch::parse(input)?;
    let before = state.store.get_user(id).await?;
    if caller.user_id() == Some(id) && (patch.is_admin == Some(false) || patch.disabled == Some(true)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "self_lockout",
            "you cannot remove your own admin role or disable yourself: ask another administrator",
        ));
    }
    let password_hash = match &patch.password {
        Some(password) => Some(hash_password(password.clone()).await?),
        None => None,
    };
    let after = state
        .store
        .update_user(
            id,
            UserChange { name: patch.name, is_admin: patch.is_admin, disabled: patch.disabled, password_hash },
        )
        .await?;
    let mut details = serde_json::Map::new();
    if before.is_admin != after.is_admin {
        details.insert("is_admin".into(), after.is_admin.into());
    }
    if before.disabled_at.is_some() != after.disabled_at.is_some() {
        details.insert("disabled".into(), after.disabled_at.is_some().into());
    }
    if patch.password.is_some() {
        details.insert("password_reset".into(), true.into());
    }
    let action = if details.contains_key("is_admin") { "role_changed" } else { "user_updated" };
    audit(&state, Some(&caller), action, "user", Some(id.to_string()), None, details.into()).await;
    Ok(Json(after))
}

/// A project member and their role.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub user: User,
    pub role: ProjectRole,
}

#[utoipa::path(
    get, path = "/api/v1/projects/{project}/members", tag = "access",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = Vec<Member>), (status = 404, body = ErrorBody))
)]
pub async fn list_members(State(state): State<AppState>, Path(project): Path<String>) -> ApiResult<Json<Vec<Member>>> {
    let project = find_project(&state.store, &project).await?;
    let members = state.store.list_members(project.id).await?;
    Ok(Json(members.into_iter().map(|(user, role)| Member { user, role }).collect()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    /// `viewer`, `member` or `maintainer`.
    role: String,
}

/// Gives a user a role in the project (replacing their role, if any).
#[utoipa::path(
    put, path = "/api/v1/projects/{project}/members/{user_id}", tag = "access", request_body = RoleInput,
    params(("project" = String, Path, description = "The project's id or slug"), ("user_id" = String, Path)),
    responses((status = 200, body = Member), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn set_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user_id)): Path<(String, String)>,
    ApiJson(input): ApiJson<RoleInput>,
) -> ApiResult<Json<Member>> {
    let project = find_project(&state.store, &project).await?;
    let user = state.store.get_user(parse_user_id(&user_id)?).await?;
    let mut errors = ValidationErrors::new();
    let role = parse_param::<ProjectRole>(&mut errors, "role", Some(input.role.as_str()));
    errors.into_result(())?;
    let role = role.ok_or_else(|| ApiError::invalid_field("role", "is required: viewer, member or maintainer"))?;
    let before = state.store.member_role(project.id, user.id).await?;
    state.store.set_member(project.id, user.id, role).await?;
    audit(
        &state,
        Some(&caller),
        "role_changed",
        "member",
        Some(user.id.to_string()),
        Some(project.id),
        serde_json::json!({"email": user.email, "from": before, "to": role}),
    )
    .await;
    Ok(Json(Member { user, role }))
}

#[utoipa::path(
    delete, path = "/api/v1/projects/{project}/members/{user_id}", tag = "access",
    params(("project" = String, Path, description = "The project's id or slug"), ("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody))
)]
pub async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = find_project(&state.store, &project).await?;
    let user = parse_user_id(&user_id)?;
    if !state.store.remove_member(project.id, user).await? {
        return Err(ApiError::not_found("that user is not a member of the project"));
    }
    audit(
        &state,
        Some(&caller),
        "role_changed",
        "member",
        Some(user.to_string()),
        Some(project.id),
        serde_json::json!({"to": null}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this project's entries (id or slug).
    project: Option<String>,
    /// Only this action, e.g. `login_failed`.
    action: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    cursor: Option<String>,
}

/// The audit log, newest first: who did what, when, through which channel.
#[utoipa::path(
    get, path = "/api/v1/audit", tag = "access", params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = ErrorBody))
)]
pub async fn list_audit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    let mut errors = ValidationErrors::new();
    let page = parse_page(&mut errors, query.limit, query.cursor.as_deref());
    errors.into_result(())?;
    let mut filter = AuditFilter { action: query.action.filter(|a| !a.is_empty()), ..AuditFilter::default() };
    if let Some(key) = query.project.as_deref().filter(|k| !k.is_empty()) {
        filter.project_id = Some(find_project(&state.store, key).await?.id);
    }
    Ok(Json(state.store.list_audit(&filter, page).await?))
}
