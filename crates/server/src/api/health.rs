use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ErrorBody, error_chain};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
    version: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    status: &'static str,
    /// `sqlite` or `postgres`.
    database: &'static str,
    schema_version: i64,
}

/// The process is up. Says nothing about its dependencies: see `/readyz`.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

/// Ready to serve: the database answers and its schema is current.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = ErrorBody, description = "Not ready; the message says why"))
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let not_ready = |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message);
    // Within a second, whatever the pool's own wait: a load balancer asks often.
    let status = match tokio::time::timeout(std::time::Duration::from_secs(1), state.store.schema_status()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "readiness check: database unreachable");
            return Err(not_ready(format!("the database at {} does not answer", state.store.target().describe())));
        }
        Err(_) => {
            tracing::warn!("readiness check: the database did not answer within a second");
            return Err(not_ready(format!(
                "the database at {} did not answer within a second",
                state.store.target().describe()
            )));
        }
    };
    if status.applied > status.latest {
        return Err(not_ready(format!(
            "the database was migrated by a newer viberglass (schema version {}, this server knows {}): upgrade this server",
            status.applied, status.latest
        )));
    }
    if !status.is_current() {
        return Err(not_ready(format!(
            "the database schema is at version {} but this server needs {}: run `viberglass migrate`",
            status.applied, status.latest
        )));
    }
    Ok(Json(Readiness { status: "ready", database: state.store.backend().as_str(), schema_version: status.applied }))
}

/// **Doctor**: checks the configuration, the database, the encryption key,
/// every secret, SCM integration, clanker and webhook subscription, Slack,
/// workflow overrides left in place and jobs stuck in `dispatching`. Each
/// broken thing is a finding with its layer, cause and fix; `healthy` is
/// false when any finding is an error. Administrators only.
#[utoipa::path(
    get,
    path = "/api/v1/doctor",
    tag = "health",
    responses((status = 200, body = viberglass_domain::doctor::DoctorReport))
)]
pub async fn doctor(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<viberglass_domain::doctor::DoctorReport>, ApiError> {
    not_from_another_site(&headers)?;
    Ok(Json(crate::service::doctor::run(&state).await))
}

/// A browser says where a request comes from (`Sec-Fetch-Site`): the doctor and the bundle call out and build in
/// memory, so another site may not make an administrator's browser ask for them (a GET carries the session cookie
/// on a top-level navigation). Clients that are not browsers send no such header.
fn not_from_another_site(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("cross-site" | "same-site") => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            "this is asked for from another site: open it from Viberglass itself",
        )),
        _ => Ok(()),
    }
}

/// A diagnostics bundle's window.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WindowQuery {
    /// The window's start (RFC 3339, e.g. 2026-12-04T10:00:00Z).
    since: String,
    /// The window's end (RFC 3339), after `since`.
    until: String,
}

/// **Diagnostics bundle** of a job: one zip of everything the troubleshooting guide asks for: the job and its
/// ticket, its log, approvals and override, the clanker and its status message, the webhook deliveries that went
/// wrong around it, the doctor's report, the configuration (secret values never) and the versions. Administrators
/// only.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}/diagnostics",
    tag = "health",
    params(("job_id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The bundle", content_type = "application/zip", body = Vec<u8>),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Another bundle is being made: try again in a moment")
    )
)]
pub async fn job_diagnostics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(job): axum::extract::Path<String>,
) -> Result<axum::response::Response, ApiError> {
    not_from_another_site(&headers)?;
    let scope = crate::service::diagnostics::Scope::Job(crate::extract::parse_job_id(&job)?);
    zip_answer(crate::service::diagnostics::bundle(&state, scope).await?)
}

/// **Diagnostics bundle** of a ticket: the ticket, its approvals and override, its latest jobs with their logs and
/// clankers, and the rest as for a job. Administrators only.
#[utoipa::path(
    get,
    path = "/api/v1/tickets/{ticket_id}/diagnostics",
    tag = "health",
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses(
        (status = 200, description = "The bundle", content_type = "application/zip", body = Vec<u8>),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Another bundle is being made: try again in a moment")
    )
)]
pub async fn ticket_diagnostics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(ticket): axum::extract::Path<String>,
) -> Result<axum::response::Response, ApiError> {
    not_from_another_site(&headers)?;
    let scope = crate::service::diagnostics::Scope::Ticket(crate::extract::parse_ticket_id(&ticket)?);
    zip_answer(crate::service::diagnostics::bundle(&state, scope).await?)
}

/// **Diagnostics bundle** of a time window: the jobs live in it (up to 20) with their logs and clankers, the
/// webhook deliveries that went wrong in it, and the rest as for a job. Administrators only.
#[utoipa::path(
    get,
    path = "/api/v1/diagnostics",
    tag = "health",
    params(WindowQuery),
    responses(
        (status = 200, description = "The bundle", content_type = "application/zip", body = Vec<u8>),
        (status = 409, body = ErrorBody, description = "Another bundle is being made: try again in a moment"),
        (status = 422, body = ErrorBody, description = "`until` is not after `since`")
    )
)]
pub async fn window_diagnostics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    crate::extract::ApiQuery(query): crate::extract::ApiQuery<WindowQuery>,
) -> Result<axum::response::Response, ApiError> {
    not_from_another_site(&headers)?;
    let time = |field: &str, value: &str| {
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|_| ApiError::invalid_field(field, "must be an RFC 3339 time, e.g. 2026-12-04T10:00:00Z"))
    };
    let scope = crate::service::diagnostics::Scope::Window {
        since: time("since", &query.since)?,
        until: time("until", &query.until)?,
    };
    zip_answer(crate::service::diagnostics::bundle(&state, scope).await?)
}

fn zip_answer((name, bytes): (String, Vec<u8>)) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/zip".to_owned()),
            (axum::http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        bytes,
    )
        .into_response())
}
