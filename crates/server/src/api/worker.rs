//! The worker protocol, `/api/worker/v1`: what a viberator calls. Every
//! route takes `Authorization: Bearer <job token>`; the token is compared
//! (as its hash) in constant time, is valid only for its own job, and is
//! dead once the job has ended (410 `job_ended`, which tells the worker to stop).

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;
use viberglass_domain::protocol::{
    Bootstrap, DocumentReply, DocumentUpload, EventBatch, EventsReply, GitCredential, HeartbeatReply, ResultReply,
    WorkerResult,
};
use viberglass_domain::{EventKind, Failure, FailureLayer, JobId, LogLevel};
use viberglass_store::{BootstrapClaim, Outcome};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;
use crate::identity::hash_token;

/// The most events one batch may carry.
pub const MAX_BATCH: usize = 1000;

/// A request authenticated as the worker of the job in its path.
pub struct WorkerAuth(pub JobId);

fn refused() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_worker_token",
        "the worker token is missing or not valid for this job",
    )
}

impl FromRequestParts<AppState> for WorkerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Path(job) = Path::<String>::from_request_parts(parts, state).await.map_err(|_| refused())?;
        let job_id: JobId = job.parse().map_err(|_| refused())?;
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(refused)?;
        let Some((status, Some(stored))) = state.store.job_token(job_id).await? else { return Err(refused()) };
        let presented = hash_token(token.trim());
        if !bool::from(presented.as_bytes().ct_eq(stored.as_bytes())) {
            return Err(refused());
        }
        if status.is_terminal() {
            return Err(ApiError::new(
                StatusCode::GONE,
                "job_ended",
                format!("the job has ended ({status}); stop working on it"),
            ));
        }
        Ok(WorkerAuth(job_id))
    }
}

/// The job's spec and the secrets it may use. Marks the job active.
#[utoipa::path(
    get, path = "/api/worker/v1/jobs/{job_id}/bootstrap", tag = "worker",
    params(("job_id" = String, Path)), security(("worker_token" = [])),
    responses((status = 200, body = Bootstrap), (status = 401, body = ErrorBody), (status = 410, body = ErrorBody))
)]
pub async fn bootstrap(
    State(state): State<AppState>,
    WorkerAuth(id): WorkerAuth,
    headers: axum::http::HeaderMap,
) -> ApiResult<Json<Bootstrap>> {
    // One worker per job: the first to ask (its retries are answered again);
    // anyone else holding the token gets nothing, and the job stops.
    let instance = headers
        .get(viberglass_domain::protocol::INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (16..=128).contains(&v.len()))
        .ok_or_else(|| {
            ApiError::invalid_field(
                viberglass_domain::protocol::INSTANCE_HEADER,
                "a worker names itself with a random value in this header: upgrade the worker to this server's version",
            )
        })?;
    let claim = state.store.claim_bootstrap(id, &hash_token(instance)).await?;
    match claim {
        BootstrapClaim::First | BootstrapClaim::Again => {}
        BootstrapClaim::Taken => {
            tracing::warn!(job_id = %id, "a second worker asked for the job's bootstrap; the job was stopped");
            state
                .store
                .append_event(
                    id,
                    EventKind::Status,
                    LogLevel::Warn,
                    "a second bootstrap call came from another process than the job's worker: its token leaked \
                     (an agent may have read it), so the job was stopped",
                    None,
                )
                .await?;
            let job = state.store.get_job(id).await?;
            let failure = Failure::new(
                FailureLayer::Bootstrap,
                "token_reused",
                "another process used this job's worker token to ask for its secrets: the job was stopped so they \
                 are handed out once. Read the job's log, rotate the clanker's secrets if the agent may have been \
                 steered, then re-run",
                false,
            );
            crate::service::jobs::end_job(&state.engine, &job, Outcome::failed(failure)).await?;
            state.engine.stop_compute(&job).await;
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_bootstrapped",
                "this job's worker has already bootstrapped; a job bootstraps once",
            ));
        }
    }
    state.store.heartbeat_job(id).await?;
    let job = state.store.get_job(id).await?;
    if matches!(claim, BootstrapClaim::First) {
        // The token has reached its worker: whatever carried it there can go.
        let engine = state.engine.clone();
        let started = job.clone();
        tokio::spawn(async move { engine.worker_started(&started).await });
    }
    let spec = state.store.job_spec(id).await?;
    let project = state.store.read_project(job.project_id).await?;
    let resolved = async {
        // The project's own credential, else its integration's.
        let integration_secret = match &project.scm_integration {
            Some(name) => state.store.get_integration_by_name(name).await.ok().and_then(|i| i.credential_secret),
            None => None,
        };
        let git_credential = match project.credential_secret.as_ref().or(integration_secret.as_ref()) {
            None => None,
            Some(name) => {
                let whose = format!("project {}'s SCM credential", project.slug.as_str());
                let password = crate::vault::resolve(&state, name, &whose).await?;
                Some(GitCredential { username: project.scm_username.clone(), password })
            }
        };
        let mut secrets = std::collections::BTreeMap::new();
        for name in &spec.secret_names {
            let whose = format!("clanker {}", spec.clanker_name);
            secrets.insert(name.clone(), crate::vault::resolve(&state, name, &whose).await?);
        }
        Ok::<_, Failure>((git_credential, secrets))
    }
    .await;
    let (git_credential, secrets) = match resolved {
        Ok(found) => found,
        Err(failure) => {
            crate::service::jobs::end_job(&state.engine, &job, Outcome::failed(failure)).await?;
            return Err(ApiError::new(
                StatusCode::GONE,
                "job_ended",
                "the job failed: a secret it needs cannot be read",
            ));
        }
    };
    state.store.append_event(id, EventKind::Status, LogLevel::Info, "worker running", None).await?;
    Ok(Json(Bootstrap { job_id: id, spec, secrets, git_credential }))
}

/// The worker is alive. The answer says whether to go on.
#[utoipa::path(
    post, path = "/api/worker/v1/jobs/{job_id}/heartbeat", tag = "worker",
    params(("job_id" = String, Path)), security(("worker_token" = [])),
    responses((status = 200, body = HeartbeatReply), (status = 401, body = ErrorBody), (status = 410, body = ErrorBody))
)]
pub async fn heartbeat(State(state): State<AppState>, WorkerAuth(id): WorkerAuth) -> ApiResult<Json<HeartbeatReply>> {
    let status = state.store.heartbeat_job(id).await?;
    Ok(Json(HeartbeatReply { status, cancel: status.is_terminal() }))
}

/// Progress steps, log lines and agent events, numbered by the worker; a batch sent twice is stored once.
#[utoipa::path(
    post, path = "/api/worker/v1/jobs/{job_id}/events", tag = "worker", request_body = EventBatch,
    params(("job_id" = String, Path)), security(("worker_token" = [])),
    responses((status = 200, body = EventsReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 410, body = ErrorBody))
)]
pub async fn events(
    State(state): State<AppState>,
    WorkerAuth(id): WorkerAuth,
    ApiJson(batch): ApiJson<EventBatch>,
) -> ApiResult<Json<EventsReply>> {
    if batch.events.len() > MAX_BATCH {
        return Err(ApiError::invalid_field(
            "events",
            format!("at most {MAX_BATCH} events per batch (got {})", batch.events.len()),
        ));
    }
    let stored = state.store.append_worker_events(id, &batch.events).await?;
    Ok(Json(EventsReply { stored }))
}

/// The research or planning document the agent wrote; saved as a new revision.
#[utoipa::path(
    post, path = "/api/worker/v1/jobs/{job_id}/document", tag = "worker", request_body = DocumentUpload,
    params(("job_id" = String, Path)), security(("worker_token" = [])),
    responses((status = 200, body = DocumentReply), (status = 401, body = ErrorBody), (status = 410, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn document(
    State(state): State<AppState>,
    WorkerAuth(id): WorkerAuth,
    ApiJson(upload): ApiJson<DocumentUpload>,
) -> ApiResult<Json<DocumentReply>> {
    let job = state.store.get_job(id).await?;
    let Some(ticket_id) = job.ticket_id else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_ticket",
            "this job has no ticket to attach a document to",
        ));
    };
    if job.phase.document_name().is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_document_phase",
            "execution runs produce no document",
        ));
    }
    let revision = state.store.save_agent_document(ticket_id, job.phase, &upload.content, id).await?;
    Ok(Json(DocumentReply { revision }))
}

/// How the run ended. Reporting twice changes nothing.
#[utoipa::path(
    post, path = "/api/worker/v1/jobs/{job_id}/result", tag = "worker", request_body = WorkerResult,
    params(("job_id" = String, Path)), security(("worker_token" = [])),
    responses((status = 200, body = ResultReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 410, body = ErrorBody))
)]
pub async fn result(
    State(state): State<AppState>,
    WorkerAuth(id): WorkerAuth,
    ApiJson(result): ApiJson<WorkerResult>,
) -> ApiResult<Json<ResultReply>> {
    let job = state.store.get_job(id).await?;
    let spec = state.store.job_spec(id).await?;
    let outcome = crate::service::jobs::accept_report(&spec, result);
    crate::service::jobs::end_job(&state.engine, &job, outcome).await?;
    let job = state.store.get_job(id).await?;
    let status = job.status;
    Ok(Json(ResultReply { status }))
}
