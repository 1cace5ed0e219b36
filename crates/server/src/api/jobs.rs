use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use viberglass_domain::{
    Clanker, ClankerStatus, InstructionFile, Job, JobEvent, JobId, JobSpec, JobStatus, Page, Phase, Project,
    ScmProvider, ScmSpec, Ticket, TicketId, ValidationErrors,
    scm::{BranchVars, render_branch_template, repository_path},
    workflow::{ApprovalState, CommentStatus, PromptKind, PromptValues, render_prompt},
};
use viberglass_store::{JobFilter, NewJob, Outcome};

use super::clankers::find_clanker;
use super::projects::find_project;
use super::{parse_page, parse_param};
use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};

pub(crate) fn parse_job_id(text: &str) -> ApiResult<JobId> {
    text.parse().map_err(|e: viberglass_domain::ids::InvalidId| ApiError::invalid_field("job_id", e.to_string()))
}

/// A run request: which phase, with which clanker.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// `research`, `planning` or `execution`.
    phase: String,
    /// The clanker's id or slug.
    clanker: String,
}

pub(crate) fn unprocessable(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// Renders the project's branch-name template into a valid branch name.
fn branch_name(template: &str, ticket: &Ticket, clanker: &Clanker, job: JobId) -> Result<String, String> {
    let date = viberglass_store::now().date();
    let date = format!("{:04}{:02}{:02}", date.year(), u8::from(date.month()), date.day());
    let ticket = ticket.id.as_uuid().simple().to_string();
    let job = job.as_uuid().simple().to_string();
    let vars = BranchVars { ticket: &ticket[..12], clanker: clanker.slug.as_str(), job: &job[..12], date: &date };
    render_branch_template(template, &vars)
}

/// The longest ticket description a generated pull-request body quotes.
const PR_DESCRIPTION_EXCERPT: usize = 2000;

/// Where an execution's change goes: the provider (from the project's
/// integration, else recognised by host, else plain git), its API, the
/// repositories and the base the pull request targets.
async fn scm_spec(state: &AppState, project: &Project, ticket: &Ticket, repository_url: &str) -> ApiResult<ScmSpec> {
    let integration = match &project.scm_integration {
        None => None,
        Some(name) => Some(state.store.get_integration_by_name(name).await.map_err(|_| {
            unprocessable(
                "integration_missing",
                format!(
                    "project {} names the SCM integration {name}, which does not exist: create it or unlink it, then run again",
                    project.slug.as_str()
                ),
            )
        })?),
    };
    let located = repository_path(repository_url);
    let provider = match (&integration, &located) {
        (_, None) => ScmProvider::Git,
        (Some(integration), Some(_)) => integration.kind,
        (None, Some((host, _))) => ScmProvider::for_host(host),
    };
    let api_url = match &integration {
        Some(integration) if provider != ScmProvider::Git => Some(integration.api_url()),
        _ => provider.default_base_url().and_then(|base| provider.api_url(base)),
    };
    let has_credential =
        project.credential_secret.is_some() || integration.as_ref().is_some_and(|i| i.credential_secret.is_some());
    if provider != ScmProvider::Git && !has_credential {
        return Err(unprocessable(
            "no_scm_credential",
            format!(
                "project {} opens {}s on {provider} but has no SCM credential: set the project's credential_secret or its integration's, then run again",
                project.slug.as_str(),
                provider.pull_request_noun()
            ),
        ));
    }
    let repository = located.map(|(_, path)| path).unwrap_or_default();
    let pr_repository = match &project.pr_repository_url {
        None => repository.clone(),
        Some(url) => repository_path(url).map(|(_, path)| path).ok_or_else(|| {
            unprocessable(
                "invalid_pr_repository",
                format!("the project's PR repository {url} has no owner/name path: give its https clone URL"),
            )
        })?,
    };
    Ok(ScmSpec {
        provider,
        api_url,
        repository,
        pr_repository,
        pr_base_branch: project.pr_base_branch.clone().unwrap_or_else(|| project.base_branch.clone()),
        ticket_id: Some(ticket.id),
        ticket_url: Some(format!("{}/api/v1/tickets/{}", state.engine.server_url, ticket.id)),
        ticket_description: ticket.description.chars().take(PR_DESCRIPTION_EXCERPT).collect(),
        labels: Vec::new(),
    })
}

/// The prompt a run of `phase` gets: the project's template for the kind of
/// run (or the system default), rendered with the ticket, its documents and,
/// for a revision, the feedback and the document's open comments.
pub(crate) async fn run_prompt(
    state: &AppState,
    project: &Project,
    ticket: &Ticket,
    phase: Phase,
    feedback: Option<&str>,
    attachments: &AgentAttachments,
) -> ApiResult<String> {
    let document = |phase: Phase| async move {
        state.store.get_document(ticket.id, phase).await.map(|d| d.map(|d| d.content).filter(|c| !c.trim().is_empty()))
    };
    let research = document(Phase::Research).await?;
    let plan = document(Phase::Planning).await?;
    let kind = PromptKind::for_run(phase, feedback.is_some(), research.is_some());
    let template =
        state.store.prompt_template(project.id, kind).await?.unwrap_or_else(|| kind.default_template().to_owned());
    let open_comments = match feedback {
        Some(_) if phase != Phase::Execution => {
            let comments = state.store.list_comments(ticket.id, phase).await?;
            let open: Vec<String> = comments
                .iter()
                .filter(|c| c.status == CommentStatus::Open)
                .map(|c| match &c.suggestion {
                    Some(s) => format!("- line {}: {} (suggested text: {s})", c.line, c.body),
                    None => format!("- line {}: {}", c.line, c.body),
                })
                .collect();
            Some(if open.is_empty() { "(none)".to_owned() } else { open.join("\n") })
        }
        _ => None,
    };
    let values = PromptValues {
        ticket_title: ticket.title.clone(),
        ticket_description: with_attachments(&ticket.description, &attachments.lines),
        external_link: ticket.external_url.clone(),
        research,
        plan,
        feedback: feedback.map(str::to_owned),
        open_comments,
    };
    Ok(render_prompt(&template, &values))
}

/// Renders the run's prompt (with `feedback` for a revision), freezes its
/// spec and queues it; the dispatcher is woken.
pub(crate) async fn queue_run(
    state: &AppState,
    caller: &crate::auth::Caller,
    project: &Project,
    ticket: &Ticket,
    clanker: &Clanker,
    phase: Phase,
    feedback: Option<&str>,
) -> ApiResult<Job> {
    let id = JobId::new();
    let spec = run_spec(state, project, ticket, clanker, phase, id, feedback).await?;
    let job = state
        .store
        .create_job(NewJob {
            id,
            project_id: project.id,
            ticket_id: Some(ticket.id),
            clanker_id: Some(clanker.id),
            spec,
            requested_by: caller.user_id(),
        })
        .await?;
    state.engine.wake.notify_one();
    Ok(job)
}

/// The clanker a run names, which must be started.
pub(crate) async fn started_clanker(state: &AppState, key: &str) -> ApiResult<Clanker> {
    let clanker = find_clanker(&state.store, key).await?;
    if clanker.status != ClankerStatus::Active {
        return Err(unprocessable(
            "clanker_not_started",
            format!(
                "clanker {} is {}: start it first (POST /api/v1/clankers/{}/start)",
                clanker.slug.as_str(),
                clanker.status,
                clanker.slug.as_str()
            ),
        ));
    }
    Ok(clanker)
}

/// The approval gates: planning waits for approved research and execution
/// for an approved plan when the project says so, unless the ticket has a
/// workflow override or the project lets tickets run all phases.
pub(crate) async fn check_gate(state: &AppState, project: &Project, ticket: &Ticket, phase: Phase) -> ApiResult<()> {
    if ticket.workflow_override_reason.is_some() || project.allow_run_all {
        return Ok(());
    }
    let needed = match phase {
        Phase::Planning if project.research_needs_approval => Phase::Research,
        Phase::Execution if project.planning_needs_approval => Phase::Planning,
        _ => return Ok(()),
    };
    let state_now = state.store.get_document(ticket.id, needed).await?.map(|d| d.approval_state);
    if state_now == Some(ApprovalState::Approved) {
        return Ok(());
    }
    let what = if needed == Phase::Planning { "plan" } else { "research" };
    let stands = state_now.map_or_else(|| "not written yet".to_owned(), |s| s.to_string().replace('_', " "));
    Err(unprocessable(
        if needed == Phase::Planning { "plan_not_approved" } else { "research_not_approved" },
        format!(
            "{phase} waits for an approved {what}, and the {what} is {stands}: approve it \
             (POST /api/v1/tickets/{}/documents/{needed}/approval with {{\"action\": \"approve\"}}), \
             or set a workflow override with a reason (PUT /api/v1/tickets/{}/override)",
            ticket.id, ticket.id
        ),
    ))
}

/// Where the agent finds a ticket's attachments in its workspace.
pub const ATTACHMENTS_DIR: &str = ".viberglass/attachments";
/// The most attachment text one run carries.
const MAX_AGENT_ATTACHMENTS_TOTAL: usize = 1024 * 1024;

/// What a run gets of its ticket's attachments, read once per run.
pub(crate) struct AgentAttachments {
    /// Text attachments, written into the agent's workspace.
    files: Vec<InstructionFile>,
    /// One line per attachment for the prompt (binary ones are named, not given).
    lines: Vec<String>,
}

pub(crate) async fn agent_attachments(state: &AppState, ticket: &Ticket) -> ApiResult<AgentAttachments> {
    let mut files = Vec::new();
    let mut lines = Vec::new();
    let mut total = 0;
    for attachment in state.store.list_attachments(ticket.id).await? {
        let size = attachment.size as usize;
        let texty = attachment.content_type.starts_with("text/")
            || matches!(
                attachment.content_type.as_str(),
                "application/json" | "application/x-yaml" | "application/xml"
            );
        let fits = size <= viberglass_domain::ticket::MAX_AGENT_ATTACHMENT_BYTES
            && total + size <= MAX_AGENT_ATTACHMENTS_TOTAL;
        let text = if texty && fits {
            let (_, content) = state.store.attachment_content(ticket.id, attachment.id).await?;
            String::from_utf8(content).ok()
        } else {
            None
        };
        match text {
            Some(content) => {
                total += size;
                let path = format!("{ATTACHMENTS_DIR}/{}", workspace_name(&attachment));
                lines.push(format!("- {path} ({}, {} bytes)", attachment.content_type, attachment.size));
                files.push(InstructionFile { path, content });
            }
            None => lines.push(format!(
                "- {} ({}, {} bytes): not available to you; ask in the document if you need it",
                attachment.filename, attachment.content_type, attachment.size
            )),
        }
    }
    Ok(AgentAttachments { files, lines })
}

/// An attachment's name in the workspace: unique (two `error.log`s stay
/// apart) and literal (no glob characters for git's exclude file).
fn workspace_name(attachment: &viberglass_domain::Attachment) -> String {
    let id = attachment.id.simple().to_string();
    let safe: String = attachment
        .filename
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    format!("{}-{safe}", &id[id.len() - 8..])
}

fn with_attachments(description: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return description.to_owned();
    }
    format!("{description}\n\nAttached files:\n{}", lines.join("\n"))
}

/// A run's spec: its prompt, and its ticket's attachments read once for
/// both the prompt and the workspace.
pub(crate) async fn run_spec(
    state: &AppState,
    project: &Project,
    ticket: &Ticket,
    clanker: &Clanker,
    phase: Phase,
    job: JobId,
    feedback: Option<&str>,
) -> ApiResult<JobSpec> {
    let attachments = agent_attachments(state, ticket).await?;
    let prompt = run_prompt(state, project, ticket, phase, feedback, &attachments).await?;
    let mut spec = build_spec(state, project, ticket, clanker, phase, job, prompt).await?;
    spec.instruction_files.extend(attachments.files);
    Ok(spec)
}

async fn build_spec(
    state: &AppState,
    project: &Project,
    ticket: &Ticket,
    clanker: &Clanker,
    phase: Phase,
    job: JobId,
    prompt: String,
) -> ApiResult<JobSpec> {
    let repository_url = project.repository_url.clone().ok_or_else(|| {
        unprocessable(
            "project_has_no_repository",
            format!("project {} has no repository yet: set its repository_url, then run again", project.slug.as_str()),
        )
    })?;
    let harness = clanker.harness().map_err(|reason| unprocessable("clanker_misconfigured", reason))?;
    let mut branch = branch_name(&project.branch_name_template, ticket, clanker, job).map_err(|reason| {
        unprocessable(
            "invalid_branch_template",
            format!("the project's branch-name template renders to an invalid branch: {reason}"),
        )
    })?;
    let scm = if phase == Phase::Execution {
        // A follow-up execution continues the branch (and pull request) the
        // last one pushed, even if the template would name a new branch.
        if let Some(previous) = state.store.ticket_work_branch(ticket.id).await? {
            branch = previous;
        }
        Some(scm_spec(state, project, ticket, &repository_url).await?)
    } else {
        None
    };
    let mut instruction_files = clanker.instruction_files.clone();
    if !project.agent_instructions.trim().is_empty() {
        match instruction_files.iter_mut().find(|f| f.path == "AGENTS.md") {
            Some(agents) => agents.content = format!("{}\n\n{}", project.agent_instructions, agents.content),
            None => instruction_files
                .push(InstructionFile { path: "AGENTS.md".into(), content: project.agent_instructions.clone() }),
        }
    }
    Ok(JobSpec {
        phase,
        repository_url,
        base_branch: project.base_branch.clone(),
        branch,
        prompt,
        harness,
        instruction_files,
        max_execution_secs: u64::from(project.max_execution_secs),
        heartbeat_interval_secs: state.config.heartbeat_interval_secs,
        heartbeat_grace_secs: state.config.heartbeat_grace_secs,
        keep_workspace_on_failure: state.config.keep_failed_workspaces,
        ticket_title: ticket.title.clone(),
        secret_names: clanker.secrets.clone(),
        clanker_name: clanker.slug.as_str().to_owned(),
        scm,
        commit_author: state.config.commit_author.clone(),
    })
}

/// Starts a run of one phase of a ticket with a clanker. Returns at once with the queued job.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/runs", tag = "jobs", request_body = RunRequest,
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses(
        (status = 202, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "The project, clanker or ticket cannot run yet; the message says why")
    )
)]
pub async fn create_run(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(ticket_id): Path<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> ApiResult<impl IntoResponse> {
    let ticket_id: TicketId = ticket_id
        .parse()
        .map_err(|e: viberglass_domain::ids::InvalidId| ApiError::invalid_field("ticket_id", e.to_string()))?;
    let phase: Phase = request
        .phase
        .parse()
        .map_err(|e: viberglass_domain::states::UnknownValue| ApiError::invalid_field("phase", e.to_string()))?;
    let ticket = state.store.get_ticket(ticket_id).await?;
    if ticket.archived_at.is_some() {
        return Err(unprocessable("archived", "the ticket is archived: unarchive it to run it".into()));
    }
    let project = state.store.get_project(ticket.project_id).await?;
    let clanker = started_clanker(&state, &request.clanker).await?;
    check_gate(&state, &project, &ticket, phase).await?;
    let job = queue_run(&state, &caller, &project, &ticket, &clanker, phase, None).await?;
    if ticket.phase != phase {
        state.store.set_ticket_phase(ticket.id, phase).await?;
    }
    crate::api::workflow::refresh_status(&state, ticket.id).await;
    tracing::info!(job_id = %job.id, ticket_id = %ticket.id, phase = %phase, by = caller.label(), "run requested");
    crate::auth::audit(
        &state,
        Some(&caller),
        "run_started",
        "job",
        Some(job.id.to_string()),
        Some(project.id),
        serde_json::json!({"phase": phase, "ticket": ticket.id, "clanker": clanker.slug.as_str()}),
    )
    .await;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/jobs/{}", job.id))], Json(job)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Only this project's jobs (id or slug).
    project: Option<String>,
    /// Only this ticket's jobs.
    ticket: Option<String>,
    /// Only this clanker's jobs (id or slug).
    clanker: Option<String>,
    /// `queued`, `dispatching`, `active`, `completed`, `failed` or `cancelled`.
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Lists jobs, newest first.
#[utoipa::path(
    get, path = "/api/v1/jobs", tag = "jobs", params(ListJobsQuery),
    responses((status = 200, body = Page<Job>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    ApiQuery(query): ApiQuery<ListJobsQuery>,
) -> ApiResult<Json<Page<Job>>> {
    let mut errors = ValidationErrors::new();
    let status = parse_param::<JobStatus>(&mut errors, "status", query.status.as_deref());
    let ticket_id = parse_param::<TicketId>(&mut errors, "ticket", query.ticket.as_deref());
    let page = parse_page(&mut errors, query.limit, query.cursor.as_deref());
    errors.into_result(())?;
    let mut filter = JobFilter { status, ticket_id, member_of: caller.member_filter(), ..JobFilter::default() };
    if let Some(key) = query.project.as_deref().filter(|k| !k.is_empty()) {
        filter.project_id = Some(find_project(&state.store, key).await?.id);
    }
    if let Some(key) = query.clanker.as_deref().filter(|k| !k.is_empty()) {
        filter.clanker_id = Some(find_clanker(&state.store, key).await?.id);
    }
    Ok(Json(state.store.list_jobs(&filter, page).await?))
}

/// Reads a job: its status, status message (the failure's cause and fix when it failed) and result.
#[utoipa::path(
    get, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(state.store.get_job(parse_job_id(&id)?).await?))
}

/// Cancels a job and stops its worker. Cancelling a finished job is a 409.
#[utoipa::path(
    post, path = "/api/v1/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let id = parse_job_id(&id)?;
    let by = caller.label();
    if !state.store.finish_job(id, Outcome::Cancelled { by }).await? {
        let job = state.store.get_job(id).await?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("the job already ended ({})", job.status),
        )
        .with_hint("re-run it to start a new job"));
    }
    let job = state.store.get_job(id).await?;
    state.engine.stop_compute(&job).await;
    tracing::info!(job_id = %id, by = caller.label(), "job cancelled");
    crate::auth::audit(
        &state,
        Some(&caller),
        "run_cancelled",
        "job",
        Some(id.to_string()),
        Some(job.project_id),
        serde_json::json!({}),
    )
    .await;
    Ok(Json(job))
}

/// Runs a job again as a new job linked to it (the next attempt). Always safe.
#[utoipa::path(
    post, path = "/api/v1/jobs/{job_id}/rerun", tag = "jobs",
    params(("job_id" = String, Path, description = "The job to repeat")),
    responses((status = 202, body = Job), (status = 404, body = ErrorBody))
)]
pub async fn rerun_job(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let old = state.store.get_job(parse_job_id(&id)?).await?;
    // A re-run is a new run: the ticket's gates and state hold for it too.
    if let Some(ticket_id) = old.ticket_id {
        let ticket = state.store.get_ticket(ticket_id).await?;
        if ticket.archived_at.is_some() {
            return Err(unprocessable("archived", "the ticket is archived: unarchive it to run it".into()));
        }
        let project = state.store.get_project(ticket.project_id).await?;
        check_gate(&state, &project, &ticket, old.phase).await?;
    }
    let job = state.store.rerun_job(old.id, caller.user_id()).await?;
    state.engine.wake.notify_one();
    crate::auth::audit(
        &state,
        Some(&caller),
        "run_started",
        "job",
        Some(job.id.to_string()),
        Some(job.project_id),
        serde_json::json!({"phase": job.phase, "rerun_of": old.id}),
    )
    .await;
    if let Some(ticket) = job.ticket_id {
        crate::api::workflow::refresh_status(&state, ticket).await;
    }
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/jobs/{}", job.id))], Json(job)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this event id (0 or absent: from the start).
    after: Option<i64>,
    /// At most this many events, 1 to 1000 (default 500).
    limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub items: Vec<JobEvent>,
    /// Pass as `after` for the next page; absent when this page was not full.
    pub next_after: Option<i64>,
}

/// A page of a job's events (progress, log lines, agent events, status changes), in order.
#[utoipa::path(
    get, path = "/api/v1/jobs/{job_id}/events", tag = "jobs", params(("job_id" = String, Path), EventsQuery),
    responses((status = 200, body = EventPage), (status = 404, body = ErrorBody))
)]
pub async fn list_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventPage>> {
    let id = parse_job_id(&id)?;
    state.store.get_job(id).await?;
    let limit = query.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", format!("must be between 1 and 1000 (got {limit})")));
    }
    let items = state.store.list_job_events(id, query.after.unwrap_or(0).max(0), limit).await?;
    let next_after = (items.len() == limit as usize).then(|| items.last().map(|e| e.id)).flatten();
    Ok(Json(EventPage { items, next_after }))
}

/// Streams a job's events live (Server-Sent Events). Each event's `id` is
/// the event id: reconnect with `Last-Event-ID` to resume without gaps or
/// repeats. The stream ends with an `end` event once the job has finished.
#[utoipa::path(
    get, path = "/api/v1/jobs/{job_id}/events/stream", tag = "jobs",
    params(("job_id" = String, Path), ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event")),
    responses((status = 200, description = "text/event-stream of job events", content_type = "text/event-stream"), (status = 404, body = ErrorBody))
)]
pub async fn stream_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = parse_job_id(&id)?;
    state.store.get_job(id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    struct Cursor {
        after: i64,
        done: bool,
    }
    let store = state.store.clone();
    let stream = futures::stream::unfold(Cursor { after, done: false }, move |mut cursor| {
        let store = store.clone();
        async move {
            if cursor.done {
                return None;
            }
            loop {
                match store.list_job_events(id, cursor.after, 500).await {
                    Ok(events) if !events.is_empty() => {
                        cursor.after = events.last().map_or(cursor.after, |e| e.id);
                        let frames: Vec<Result<Event, Infallible>> = events
                            .iter()
                            .map(|e| {
                                Ok(Event::default()
                                    .id(e.id.to_string())
                                    .event(e.kind.as_str())
                                    .data(serde_json::to_string(e).unwrap_or_default()))
                            })
                            .collect();
                        return Some((futures::stream::iter(frames), cursor));
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "event stream: store error"),
                }
                // Nothing new: end once the job has finished (its last events are already sent).
                if let Ok(job) = store.get_job(id).await
                    && job.status.is_terminal()
                {
                    cursor.done = true;
                    let end = Event::default().event("end").data(serde_json::json!({"status": job.status}).to_string());
                    return Some((futures::stream::iter(vec![Ok(end)]), cursor));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok(Sse::new(futures::StreamExt::flatten(stream)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Tokens and cost the agents reported over a project's jobs.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/usage", tag = "jobs",
    params(("project" = String, Path, description = "The project's id or slug")),
    responses((status = 200, body = viberglass_store::UsageSummary), (status = 404, body = ErrorBody))
)]
pub async fn project_usage(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<viberglass_store::UsageSummary>> {
    let project = find_project(&state.store, &key).await?;
    Ok(Json(state.store.usage_summary(Some(project.id), None).await?))
}

/// Tokens and cost the agents reported over a ticket's jobs.
#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/usage", tag = "jobs",
    params(("ticket_id" = String, Path, description = "The ticket's id")),
    responses((status = 200, body = viberglass_store::UsageSummary), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn ticket_usage(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<viberglass_store::UsageSummary>> {
    let id: TicketId = id
        .parse()
        .map_err(|e: viberglass_domain::ids::InvalidId| ApiError::invalid_field("ticket_id", e.to_string()))?;
    let ticket = state.store.get_ticket(id).await?;
    Ok(Json(state.store.usage_summary(None, Some(ticket.id)).await?))
}
