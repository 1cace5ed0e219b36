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
