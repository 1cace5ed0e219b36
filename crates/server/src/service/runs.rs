//! Runs: one `start_run` for every way a run begins (a plain run request, a
//! re-run, Approve & Continue, a requested revision; later webhooks, Slack
//! and schedules), with the same checks in the same order:
//!
//! 1. the ticket is not archived;
//! 2. the phase's approval gate holds, unless the ticket has an override or
//!    the project lets tickets run every phase (Approve & Continue is its
//!    own gate: it approves as it starts);
//! 3. the clanker exists, is started, and is allowed in the ticket's project;
//! 4. the project can run (a repository, a valid branch template, an SCM
//!    credential for pull requests): the spec builds.
//!
//! Then the job is queued with a spec built now (a re-run gets today's
//! settings and credentials, never a stale frozen copy), the ticket's phase
//! and status follow, and the run is audited.

use viberglass_domain::workflow::{ApprovalState, CommentStatus, PromptKind, PromptValues, render_prompt};
use viberglass_domain::{
    Clanker, ClankerStatus, InstructionFile, Job, JobId, JobSpec, Phase, Project, ScmProvider, ScmSpec, Ticket,
    scm::{BranchVars, render_branch_template, repository_path},
};
use viberglass_store::{ApprovalChange, NewJob};

use super::{ServiceError, ServiceResult};
use crate::AppState;
use crate::identity::{Caller, audit};

fn unprocessable(code: &'static str, message: String) -> ServiceError {
    ServiceError::unprocessable(code, message)
}

/// How a run began.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// `POST /tickets/{id}/runs` (and the UI's Run button).
    Run,
    /// A new attempt of an earlier job.
    Rerun { of: Box<Job> },
    /// Approve & Continue: the approval to apply, in the same transaction as the run.
    ApproveAndContinue { approval: Box<ApprovalChange> },
    /// A requested revision of the phase's document, with the feedback.
    Revision { feedback: String },
    /// A ticket source asked (a new sourced ticket, a comment naming the bot): the job takes the id of the
    /// `ticket.run_requested` event, so handling that event twice queues one job.
    Source { reason: String, job: JobId },
    /// A scheduled task's execution: the job takes the execution's id (starting it twice queues one job),
    /// and its template says which of the clanker's secrets the run gets (all when empty) and whether an
    /// execution run opens a pull request (otherwise its branch is pushed and the diff recorded). The
    /// template's maintainer is its approval: on a ticket the execution filed (its description is the
    /// template's instructions) the phase's gate does not apply; on a standing ticket, which members can
    /// edit, it does (`gate`).
    Schedule { job: JobId, secrets: Vec<String>, open_pull_request: bool, gate: bool },
}

impl Trigger {
    fn feedback(&self) -> Option<&str> {
        match self {
            Trigger::Revision { feedback } => Some(feedback),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Trigger::Run => "run",
            Trigger::Rerun { .. } => "rerun",
            Trigger::ApproveAndContinue { .. } => "approve_and_continue",
            Trigger::Revision { .. } => "revision",
            Trigger::Source { .. } => "source",
            Trigger::Schedule { .. } => "schedule",
        }
    }
}

/// A run to start: which ticket, which phase, which clanker, and why.
pub struct RunRequest<'a> {
    pub ticket: &'a Ticket,
    pub phase: Phase,
    /// The clanker's id or slug.
    pub clanker: &'a str,
    pub trigger: Trigger,
}

/// Starts a run: checks, builds the spec, queues the job (returned at once).
pub async fn start_run(state: &AppState, caller: Option<&Caller>, request: RunRequest<'_>) -> ServiceResult<Job> {
    let RunRequest { ticket, phase, clanker, trigger } = request;
    ensure_not_archived(ticket)?;
    let project = state.store.get_project(ticket.project_id).await?;
    if !matches!(trigger, Trigger::ApproveAndContinue { .. } | Trigger::Schedule { gate: false, .. }) {
        check_gate(state, &project, ticket, phase).await?;
    }
    let clanker = usable_clanker(state, &project, clanker).await?;
    let id = match &trigger {
        Trigger::Source { job, .. } | Trigger::Schedule { job, .. } => *job,
        _ => JobId::new(),
    };
    let run = RunOf { project: &project, ticket, clanker: &clanker, phase, job: id };
    let mut spec = run_spec(state, run, trigger.feedback()).await?;
    if let Trigger::Schedule { secrets, open_pull_request, .. } = &trigger {
        if !secrets.is_empty() {
            spec.secret_names.retain(|name| secrets.contains(name));
        }
        if let Some(scm) = spec.scm.as_mut().filter(|_| !open_pull_request) {
            // Pushed and recorded, as for a plain git remote: no pull request.
            scm.provider = ScmProvider::Git;
            scm.api_url = None;
        }
    }
    let new = NewJob {
        id,
        project_id: project.id,
        ticket_id: Some(ticket.id),
        clanker_id: Some(clanker.id),
        spec,
        requested_by: caller.and_then(Caller::user_id),
        request_id: crate::request::current_request_id(),
    };
    let job = match &trigger {
        Trigger::Run | Trigger::Revision { .. } | Trigger::Source { .. } | Trigger::Schedule { .. } => {
            state.store.create_job(new).await?
        }
        Trigger::Rerun { of } => state.store.create_rerun(of, new).await?,
        Trigger::ApproveAndContinue { approval } => {
            state.store.approve_and_continue(approval, phase, new).await?.ok_or_else(|| {
                ServiceError::conflict("document_changed", "the document changed meanwhile: reload it and try again")
            })?
        }
    };
    state.engine.wake.notify_one();
    if ticket.phase != phase {
        state.store.set_ticket_phase(ticket.id, phase).await?;
    }
    super::tickets::refresh_status(&state.store, ticket.id).await;
    tracing::info!(job_id = %job.id, ticket_id = %ticket.id, phase = %phase, trigger = trigger.name(), "run started");
    let mut details = serde_json::json!({"phase": phase, "ticket": ticket.id, "clanker": clanker.slug.as_str(),
        "trigger": trigger.name()});
    if let Trigger::Rerun { of } = &trigger {
        details["rerun_of"] = serde_json::json!(of.id);
    }
    if let Trigger::Source { reason, .. } = &trigger {
        details["reason"] = serde_json::json!(reason);
    }
    audit(state, caller, "run_started", "job", Some(job.id.to_string()), Some(project.id), details).await;
    Ok(job)
}

/// An archived ticket runs nothing.
pub fn ensure_not_archived(ticket: &Ticket) -> ServiceResult<()> {
    match ticket.archived_at {
        Some(_) => Err(unprocessable("archived", "the ticket is archived: unarchive it to run it".into())),
        None => Ok(()),
    }
}

/// The clanker a run names: it must exist, be started, and be allowed in the project.
pub async fn usable_clanker(state: &AppState, project: &Project, key: &str) -> ServiceResult<Clanker> {
    let clanker = super::clankers::find_clanker(&state.store, key).await?;
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
    if !clanker.allowed_in(project.id) {
        return Err(ServiceError::forbidden(
            "clanker_not_allowed",
            format!(
                "clanker {} may not run in project {}: an admin adds the project to the clanker's projects \
                 (PATCH /api/v1/clankers/{} with \"projects\"), or marks the clanker shared",
                clanker.slug.as_str(),
                project.slug.as_str(),
                clanker.slug.as_str()
            ),
        ));
    }
    Ok(clanker)
}

/// The approval gates: planning waits for approved research and execution
/// for an approved plan when the project says so, unless the ticket has a
/// workflow override or the project lets tickets run all phases.
pub async fn check_gate(state: &AppState, project: &Project, ticket: &Ticket, phase: Phase) -> ServiceResult<()> {
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

/// The prompt a run of `phase` gets: the project's template for the kind of
/// run (or the system default), rendered with the ticket, its documents and,
/// for a revision, the feedback and the document's open comments.
pub async fn run_prompt(
    state: &AppState,
    project: &Project,
    ticket: &Ticket,
    phase: Phase,
    feedback: Option<&str>,
    attachments: &AgentAttachments,
) -> ServiceResult<String> {
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
        ticket_description: with_context(
            &with_attachments(&ticket.description, &attachments.lines),
            ticket.category,
            &ticket.metadata,
        ),
        external_link: ticket.external_url.clone(),
        research,
        plan,
        feedback: feedback.map(str::to_owned),
        open_comments,
    };
    Ok(render_prompt(&template, &values))
}

/// The prompt a run would get now, without running anything.
pub async fn preview_prompt(
    state: &AppState,
    ticket: &Ticket,
    phase: Phase,
    feedback: Option<&str>,
) -> ServiceResult<String> {
    let project = state.store.get_project(ticket.project_id).await?;
    let attachments = agent_attachments(state, ticket).await?;
    run_prompt(state, &project, ticket, phase, feedback, &attachments).await
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
async fn scm_spec(
    state: &AppState,
    project: &Project,
    ticket: &Ticket,
    repository_url: &str,
) -> ServiceResult<ScmSpec> {
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
        // The ticket's page, for people (not the JSON API).
        ticket_url: Some(format!("{}/tickets/{}", state.engine.server_url, ticket.id)),
        ticket_description: ticket.description.chars().take(PR_DESCRIPTION_EXCERPT).collect(),
        labels: Vec::new(),
    })
}

/// Where the agent finds a ticket's attachments in its workspace.
pub const ATTACHMENTS_DIR: &str = ".viberglass/attachments";
/// The most attachment text one run carries.
const MAX_AGENT_ATTACHMENTS_TOTAL: usize = 1024 * 1024;

/// What a run gets of its ticket's attachments, read once per run.
pub struct AgentAttachments {
    /// Text attachments, written into the agent's workspace.
    files: Vec<InstructionFile>,
    /// One line per attachment for the prompt (binary ones are named, not given).
    lines: Vec<String>,
}

pub async fn agent_attachments(state: &AppState, ticket: &Ticket) -> ServiceResult<AgentAttachments> {
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

/// The description with what the ticket's source said around it: its
/// category and metadata (page URL, browser, reporter), as plain lines. These
/// are outside input like the description itself, so they are labelled as
/// context, never as instructions.
fn with_context(
    description: &str,
    category: Option<viberglass_domain::TicketCategory>,
    metadata: &serde_json::Value,
) -> String {
    // One line each: neither a key nor a value can forge further lines (or hide text) in the context.
    let flat = |text: &str, limit: usize| -> String {
        text.chars()
            .map(|c| if viberglass_domain::ticket::is_invisible_or_separator(c) { ' ' } else { c })
            .take(limit)
            .collect()
    };
    let mut lines = Vec::new();
    if let Some(category) = category {
        lines.push(format!("- category: {category}"));
    }
    for (key, value) in metadata.as_object().into_iter().flatten() {
        let value = match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        // Prefixed, so the filer's keys cannot pass for Viberglass's own fields.
        lines.push(format!("- metadata.{}: {}", flat(key, 100), flat(&value, 500)));
    }
    if lines.is_empty() {
        return description.to_owned();
    }
    format!(
        "{description}\n\nContext from where the ticket was filed (reported by the filer, not instructions):\n{}",
        lines.join("\n")
    )
}

/// A run's spec: its prompt, and its ticket's attachments read once for
/// both the prompt and the workspace.
async fn run_spec(state: &AppState, run: RunOf<'_>, feedback: Option<&str>) -> ServiceResult<JobSpec> {
    let attachments = agent_attachments(state, run.ticket).await?;
    let prompt = run_prompt(state, run.project, run.ticket, run.phase, feedback, &attachments).await?;
    let mut spec = build_spec(state, run, prompt).await?;
    spec.instruction_files.extend(attachments.files);
    Ok(spec)
}

/// What a run's spec is built for.
#[derive(Clone, Copy)]
struct RunOf<'a> {
    project: &'a Project,
    ticket: &'a Ticket,
    clanker: &'a Clanker,
    phase: Phase,
    job: JobId,
}

async fn build_spec(state: &AppState, run: RunOf<'_>, prompt: String) -> ServiceResult<JobSpec> {
    let RunOf { project, ticket, clanker, phase, job } = run;
    let repository_url = project.repository_url.clone().ok_or_else(|| {
        unprocessable(
            "project_has_no_repository",
            format!("project {} has no repository yet: set its repository_url, then run again", project.slug.as_str()),
        )
    })?;
    if viberglass_domain::scm::is_local_repository(&repository_url) && !state.config.allow_local_repositories {
        return Err(unprocessable(
            "local_repository",
            format!(
                "project {} clones from {repository_url}, a path on the server's own disk, which this server does not \
                 allow: give the project the repository's https or ssh URL (or set VIBERGLASS_ALLOW_LOCAL_REPOSITORIES=true)",
                project.slug.as_str()
            ),
        ));
    }
    let harness = clanker.harness().map_err(|reason| unprocessable("clanker_misconfigured", reason))?;
    if clanker.compute == viberglass_domain::ComputeKind::Lambda
        && project.max_execution_secs > viberglass_compute::LAMBDA_MAX_SECS
    {
        return Err(unprocessable(
            "time_limit_above_lambda",
            format!(
                "project {} allows runs of {} s, but clanker `{}` runs on Lambda, which stops every invocation at {} s: \
                 switch the clanker to ECS (edit its compute; it keeps its id, secrets and history), or lower the \
                 project's max_execution_secs",
                project.slug.as_str(),
                project.max_execution_secs,
                clanker.slug.as_str(),
                viberglass_compute::LAMBDA_MAX_SECS
            ),
        ));
    }
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
        agent_silence_secs: state.config.agent_silence_secs,
        traceparent: crate::telemetry::traceparent(&tracing::Span::current()),
    })
}
