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
pub async fn doctor(State(state): State<AppState>) -> Json<viberglass_domain::doctor::DoctorReport> {
    Json(crate::service::doctor::run(&state).await)
}

/// What a diagnostics bundle is about: one of `job`, `ticket`, or the window `since`..`until`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiagnosticsQuery {
    /// A job's id: the job, its ticket, log, clanker and the deliveries around it.
    job: Option<String>,
    /// A ticket's id: the ticket, its approvals and override, its latest jobs and their logs.
    ticket: Option<String>,
    /// The start of a window (RFC 3339), with `until`.
    since: Option<String>,
    /// The end of a window (RFC 3339), with `since`.
    until: Option<String>,
}

/// **Diagnostics bundle**: one zip of everything the troubleshooting guide asks for about a job, a ticket or a
/// time window: the rows, the logs, approvals and override, the clanker and its status message, the webhook
/// deliveries that went wrong around it, the doctor's report, the configuration (secret values never) and the
/// versions. Administrators only.
#[utoipa::path(
    get,
    path = "/api/v1/diagnostics",
    tag = "health",
    params(DiagnosticsQuery),
    responses(
        (status = 200, description = "The bundle", content_type = "application/zip", body = Vec<u8>),
        (status = 404, body = ErrorBody)
    )
)]
pub async fn diagnostics(
    State(state): State<AppState>,
    crate::extract::ApiQuery(query): crate::extract::ApiQuery<DiagnosticsQuery>,
) -> Result<axum::response::Response, ApiError> {
    use crate::service::diagnostics::Scope;
    let time = |field: &str, value: &str| {
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|_| ApiError::invalid_field(field, "must be an RFC 3339 time, e.g. 2026-12-04T10:00:00Z"))
    };
    let scope = match (&query.job, &query.ticket, &query.since, &query.until) {
        (Some(job), None, None, None) => Scope::Job(crate::extract::parse_job_id(job)?),
        (None, Some(ticket), None, None) => Scope::Ticket(crate::extract::parse_ticket_id(ticket)?),
        (None, None, Some(since), Some(until)) => {
            Scope::Window { since: time("since", since)?, until: time("until", until)? }
        }
        _ => {
            return Err(ApiError::invalid_field("job", "give exactly one of `job`, `ticket`, or `since` with `until`"));
        }
    };
    let (name, bytes) = crate::service::diagnostics::bundle(&state, scope).await?;
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
