//! The page handlers: read what a page shows, narrowed to the caller, and
//! render it.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use viberglass_domain::workflow::PromptKind;
use viberglass_domain::{
    AgentKind, ArchivedFilter, ClankerStatus, ComputeKind, Job, JobStatus, PageRequest, Phase, Project, ProjectId,
    SecretBackend, TicketFilter, TicketStatus,
};
use viberglass_store::{AuditFilter, JobFilter, ProjectFilter};

use super::view::{self, Ctx, JobRow, Perm, render};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// A page's failure, answered as a page.
pub struct PageError(ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.0.status.is_server_error() {
            tracing::error!(error = %self.0.body.message, cause = self.0.cause().unwrap_or_default(), "a page failed");
        }
        super::error_page(&self.0)
    }
}

type PageResult = Result<Response, PageError>;
type Params = Query<HashMap<String, String>>;

fn param(query: &HashMap<String, String>, name: &str) -> String {
    query.get(name).map(|v| v.trim().to_owned()).unwrap_or_default()
}

fn page_request(query: &HashMap<String, String>, limit: u32) -> Result<PageRequest, ApiError> {
    let cursor = query.get("cursor").map(String::as_str).filter(|c| !c.is_empty());
    PageRequest::parse(Some(limit), cursor).map_err(|(field, message)| ApiError::invalid_field(field, message))
}

/// Where a list page's "next" link keeps the filters.
fn query_without_cursor(query: &HashMap<String, String>, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| query.get(*k).filter(|v| !v.is_empty()).map(|v| format!("{k}={}", view::encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}

async fn role_in(state: &AppState, caller: &Caller, project: ProjectId) -> Result<Perm, ApiError> {
    let role = match caller.user_id() {
        Some(user) if !caller.is_admin() => state.store.member_role(project, user).await?,
        _ => None,
    };
    Ok(Perm::of(caller, role))
}

/// The caller's projects (all of them for admins), by id.
async fn project_names(state: &AppState, caller: &Caller) -> Result<HashMap<ProjectId, Project>, ApiError> {
    let filter = ProjectFilter { archived: ArchivedFilter::Include, search: None, member_of: caller.member_filter() };
    let page = state.store.list_projects(&filter, PageRequest { limit: 200, after: None }).await?;
    Ok(page.items.into_iter().map(|p| (p.id, p)).collect())
}

async fn job_rows(state: &AppState, jobs: Vec<Job>) -> Result<Vec<JobRow>, ApiError> {
    let mut rows = Vec::with_capacity(jobs.len());
    let mut projects: HashMap<ProjectId, String> = HashMap::new();
    for job in jobs {
        let project = match projects.get(&job.project_id) {
            Some(name) => name.clone(),
            None => {
                let name = state.store.get_project(job.project_id).await.map(|p| p.name).unwrap_or_default();
                projects.insert(job.project_id, name.clone());
                name
            }
        };
        let ticket_title = match job.ticket_id {
            Some(id) => state.store.get_ticket(id).await.map(|t| t.title).unwrap_or_default(),
            None => String::new(),
        };
        rows.push(JobRow { job, project, ticket_title });
    }
    Ok(rows)
}

pub async fn setup(State(state): State<AppState>) -> PageResult {
    if state.store.count_users().await? > 0 {
        return Ok(Redirect::to("/login").into_response());
    }
    Ok(render(&view::AuthPage { mode: "setup", next: "/".into() }))
}

pub async fn login(State(state): State<AppState>, Query(query): Params) -> PageResult {
    if !state.config.auth_disabled && state.store.count_users().await? == 0 {
        return Ok(Redirect::to("/setup").into_response());
    }
    let next = query.get("next").and_then(|n| view::local_path(n));
    Ok(render(&view::AuthPage { mode: "login", next: next.unwrap_or_else(|| "/".into()) }))
}

pub async fn dashboard(State(state): State<AppState>, caller: Caller) -> PageResult {
    let member_of = caller.member_filter();
    let filter = ProjectFilter { archived: ArchivedFilter::Exclude, search: None, member_of };
    let projects = state.store.list_projects(&filter, PageRequest { limit: 50, after: None }).await?.items;
    let mut running = Vec::new();
    for status in [JobStatus::Active, JobStatus::Dispatching, JobStatus::Queued] {
        let filter = JobFilter { status: Some(status), member_of, ..JobFilter::default() };
        running.extend(state.store.list_jobs(&filter, PageRequest { limit: 20, after: None }).await?.items);
    }
    let failed =
        JobFilter { status: Some(JobStatus::Failed), member_of, unresolved_only: true, ..JobFilter::default() };
    let failures = state.store.list_jobs(&failed, PageRequest { limit: 5, after: None }).await?.items;
    let waiting = TicketFilter { status: Some(TicketStatus::AwaitingApproval), member_of, ..TicketFilter::default() };
    let names = project_names(&state, &caller).await?;
    let awaiting = state
        .store
        .list_tickets(&waiting, PageRequest { limit: 20, after: None })
        .await?
        .items
        .into_iter()
        .map(|t| {
            let project = names.get(&t.project_id).map(|p| p.name.clone()).unwrap_or_default();
            (t, project)
        })
        .collect();
    let (has_secret, has_integration, has_clanker, has_active_clanker) = if caller.is_admin() {
        let clankers = state.store.list_clankers(PageRequest { limit: 200, after: None }).await?.items;
        (
            !state.store.list_secrets().await?.is_empty(),
            !state.store.list_integrations().await?.is_empty(),
            !clankers.is_empty(),
            clankers.iter().any(|c| c.status == ClankerStatus::Active),
        )
    } else {
        (true, true, true, true)
    };
    Ok(render(&view::Dashboard {
        ctx: Ctx::new(&caller, "dashboard"),
        projects,
        running: job_rows(&state, running).await?,
        awaiting,
        failures: job_rows(&state, failures).await?,
        has_secret,
        has_integration,
        has_active_clanker,
        has_clanker,
    }))
}

pub async fn projects(State(state): State<AppState>, caller: Caller, Query(query): Params) -> PageResult {
    let archived = match param(&query, "archived").as_str() {
        "include" => ArchivedFilter::Include,
        "only" => ArchivedFilter::Only,
        _ => ArchivedFilter::Exclude,
    };
    let q = param(&query, "q");
    let filter = ProjectFilter {
        archived,
        search: viberglass_domain::validation::search_text_lenient(&q),
        member_of: caller.member_filter(),
    };
    let page = state.store.list_projects(&filter, page_request(&query, 50)?).await?;
    Ok(render(&view::Projects {
        ctx: Ctx::new(&caller, "projects"),
        projects: page.items,
        q,
        archived: match archived {
            ArchivedFilter::Include => "include",
            ArchivedFilter::Only => "only",
            ArchivedFilter::Exclude => "exclude",
        }
        .to_owned(),
        next_cursor: page.next_cursor,
    }))
}

async fn project_form(state: &AppState, caller: &Caller, project: Option<Project>) -> PageResult {
    let (members, prompts) = match &project {
        Some(p) => {
            let mut prompts = Vec::new();
            for kind in PromptKind::ALL {
                let custom = state.store.prompt_template(p.id, *kind).await?;
                prompts.push(view::PromptRow {
                    kind: kind.as_str().to_owned(),
                    overridden: custom.is_some(),
                    template: custom.unwrap_or_else(|| kind.default_template().to_owned()),
                });
            }
            (state.store.list_members(p.id).await?, prompts)
        }
        None => (Vec::new(), Vec::new()),
    };
    let (integrations, secrets, users) = if caller.is_admin() {
        (state.store.list_integrations().await?, state.store.list_secrets().await?, state.store.list_users().await?)
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    Ok(render(&view::ProjectForm {
        ctx: Ctx::new(caller, "projects"),
        project,
        integrations,
        secrets,
        members,
        users,
        prompts,
    }))
}

pub async fn new_project(State(state): State<AppState>, caller: Caller) -> PageResult {
    project_form(&state, &caller, None).await
}

pub async fn project_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> PageResult {
    let project = crate::service::projects::find_project(&state.store, &project).await?;
    project_form(&state, &caller, Some(project)).await
}

pub async fn webhooks(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Query(query): Params,
) -> PageResult {
    let project = crate::service::projects::find_project(&state.store, &project).await?;
    let status = param(&query, "status");
    let webhook = param(&query, "webhook");
    let cursor = param(&query, "cursor");
    let filter = viberglass_domain::DeliveryFilter {
        project_id: Some(project.id),
        config_id: webhook.parse().ok(),
        status: status.parse().ok(),
    };
    let page = PageRequest::parse(Some(50), Some(cursor.as_str()).filter(|c| !c.is_empty())).unwrap_or_default();
    let deliveries = state.store.list_deliveries(&filter, page).await?;
    let clankers = allowed_clankers(&state, &project).await?;
    Ok(render(&view::WebhooksPage {
        ctx: Ctx::new(&caller, "projects"),
        configs: state.store.list_webhook_configs(project.id).await?,
        deliveries: deliveries.items,
        next_cursor: deliveries.next_cursor,
        status,
        webhook,
        clankers,
        secrets: state.store.list_secrets().await?.into_iter().map(|s| s.name).collect(),
        base_url: state.engine.server_url.trim_end_matches('/').to_owned(),
        project,
    }))
}

/// The slugs of the clankers that may run in `project` (for the forms that name one).
async fn allowed_clankers(state: &AppState, project: &Project) -> Result<Vec<String>, ApiError> {
    let clankers = state.store.list_clankers(PageRequest { limit: 200, after: None }).await?.items;
    Ok(clankers.into_iter().filter(|c| c.allowed_in(project.id)).map(|c| c.slug.as_str().to_owned()).collect())
}

fn catalogue() -> Vec<(String, String)> {
    viberglass_domain::EventType::ALL.iter().map(|t| (t.as_str().to_owned(), t.description().to_owned())).collect()
}

async fn subscriptions_page(state: &AppState, caller: &Caller, project: Option<Project>) -> PageResult {
    let subscriptions = state.store.list_subscriptions(project.as_ref().map(|p| p.id)).await?;
    let collection = match &project {
        Some(p) => format!("/api/v1/projects/{}/webhook-subscriptions", p.slug.as_str()),
        None => "/api/v1/webhook-subscriptions".to_owned(),
    };
    Ok(render(&view::SubscriptionsPage {
        ctx: Ctx::new(caller, if project.is_some() { "projects" } else { "webhooks" }),
        project,
        subscriptions,
        collection,
        catalogue: catalogue(),
        max_age: crate::service::subscriptions::human_secs(state.config.webhook_max_age_secs),
        timeout: format!("{} s", state.config.webhook_timeout_ms as f64 / 1000.0),
        allow_private_everywhere: state.config.webhook_allow_private,
    }))
}

pub async fn instance_subscriptions(State(state): State<AppState>, caller: Caller) -> PageResult {
    subscriptions_page(&state, &caller, None).await
}

pub async fn project_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> PageResult {
    let project = crate::service::projects::find_project(&state.store, &project).await?;
    subscriptions_page(&state, &caller, Some(project)).await
}

pub async fn subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Params,
) -> PageResult {
    let stored = crate::service::subscriptions::find(&state, &id).await?;
    let s = stored.subscription;
    let project = match s.project_id {
        Some(p) => Some(state.store.get_project(p).await?),
        None => None,
    };
    let cursor = param(&query, "cursor");
    let failing = state.store.list_outbound(s.id, None, true, PageRequest { limit: 20, after: None }).await?.items;
    let page = PageRequest::parse(Some(30), Some(cursor.as_str()).filter(|c| !c.is_empty())).unwrap_or_default();
    let recent = state.store.list_outbound(s.id, None, false, page).await?;
    let mut attempts = HashMap::new();
    for d in failing.iter().chain(recent.items.iter().take(10)) {
        if let std::collections::hash_map::Entry::Vacant(slot) = attempts.entry(d.id.to_string()) {
            slot.insert(state.store.get_outbound(d.id).await?.attempt_log);
        }
    }
    let week = time::OffsetDateTime::now_utc() - time::Duration::days(7);
    let week_ago = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}",
        week.year(),
        u8::from(week.month()),
        week.day(),
        week.hour(),
        week.minute()
    );
    Ok(render(&view::SubscriptionPage {
        ctx: Ctx::new(&caller, if project.is_some() { "projects" } else { "webhooks" }),
        counts: state.store.subscription_counts(s.id).await?,
        act_base: format!("/act/api/v1/webhook-subscriptions/{}", s.id),
        here: format!("/webhook-subscriptions/{}", s.id),
        s,
        project,
        catalogue: catalogue(),
        failing,
        recent: recent.items,
        next_cursor: recent.next_cursor,
        attempts,
        max_age: crate::service::subscriptions::human_secs(state.config.webhook_max_age_secs),
        allow_private_everywhere: state.config.webhook_allow_private,
        week_ago,
    }))
}

pub async fn project(State(state): State<AppState>, caller: Caller, Path(project): Path<String>) -> PageResult {
    let project = crate::service::projects::find_project(&state.store, &project).await?;
    let perm = role_in(&state, &caller, project.id).await?;
    let filter = TicketFilter { project_id: Some(project.id), ..TicketFilter::default() };
    let tickets = state.store.list_tickets(&filter, PageRequest { limit: 20, after: None }).await?.items;
    let jobs = JobFilter { project_id: Some(project.id), ..JobFilter::default() };
    let jobs = state.store.list_jobs(&jobs, PageRequest { limit: 10, after: None }).await?.items;
    let members = state.store.list_members(project.id).await?;
    Ok(render(&view::ProjectPage { ctx: Ctx::new(&caller, "projects"), project, perm, tickets, jobs, members }))
}

pub async fn new_ticket(State(state): State<AppState>, caller: Caller, Path(project): Path<String>) -> PageResult {
    let project = crate::service::projects::find_project(&state.store, &project).await?;
    Ok(render(&view::NewTicket { ctx: Ctx::new(&caller, "tickets"), project }))
}

pub async fn tickets(State(state): State<AppState>, caller: Caller, Query(query): Params) -> PageResult {
    let names = project_names(&state, &caller).await?;
    let project = param(&query, "project");
    let phase = param(&query, "phase");
    let status = param(&query, "status");
    let q = param(&query, "q");
    let mut filter = TicketFilter {
        search: viberglass_domain::validation::search_text_lenient(&q),
        member_of: caller.member_filter(),
        ..TicketFilter::default()
    };
    if !project.is_empty() {
        let found = names.values().find(|p| p.slug.as_str() == project).map(|p| p.id);
        // A project the caller cannot see lists nothing.
        filter.project_id = Some(found.unwrap_or_else(ProjectId::new));
    }
    if !phase.is_empty() {
        filter.phase = Some(phase.parse::<Phase>().map_err(|e| ApiError::invalid_field("phase", e.to_string()))?);
    }
    if !status.is_empty() {
        filter.status =
            Some(status.parse::<TicketStatus>().map_err(|e| ApiError::invalid_field("status", e.to_string()))?);
    }
    let page = state.store.list_tickets(&filter, page_request(&query, 50)?).await?;
    let mut projects: Vec<Project> = names.values().filter(|p| p.archived_at.is_none()).cloned().collect();
    projects.sort_by(|a, b| a.name.cmp(&b.name));
    let tickets = page
        .items
        .into_iter()
        .map(|t| {
            let name = names.get(&t.project_id).map(|p| p.name.clone()).unwrap_or_default();
            (t, name)
        })
        .collect();
    Ok(render(&view::Tickets {
        ctx: Ctx::new(&caller, "tickets"),
        tickets,
        projects,
        project,
        phase,
        status,
        q,
        next_cursor: page.next_cursor,
        query_without_cursor: query_without_cursor(&query, &["q", "project", "phase", "status"]),
    }))
}

async fn active_clankers(state: &AppState) -> Result<Vec<viberglass_domain::Clanker>, ApiError> {
    let clankers = state.store.list_clankers(PageRequest { limit: 200, after: None }).await?.items;
    Ok(clankers.into_iter().filter(|c| c.status == ClankerStatus::Active).collect())
}

pub async fn ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path(ticket_id): Path<String>,
    Query(query): Params,
) -> PageResult {
    let id = crate::extract::parse_ticket_id(&ticket_id)?;
    // The status a person sees is the derived one, as the API answers it.
    let mut ticket = state.store.get_ticket(id).await?;
    ticket.status = crate::service::tickets::derived_status(&state.store, &ticket).await?;
    let project = state.store.get_project(ticket.project_id).await?;
    let perm = role_in(&state, &caller, project.id).await?;
    let default_tab = match ticket.phase {
        Phase::Research => "research",
        _ => "planning",
    };
    let tab = match param(&query, "tab").as_str() {
        t @ ("research" | "planning" | "runs" | "history") => t.to_owned(),
        _ => default_tab.to_owned(),
    };
    let doc = match tab.as_str() {
        "research" => Some(document(&state, id, Phase::Research, &query).await?),
        "planning" => Some(document(&state, id, Phase::Planning, &query).await?),
        _ => None,
    };
    let jobs = JobFilter { ticket_id: Some(id), ..JobFilter::default() };
    let jobs = state.store.list_jobs(&jobs, PageRequest { limit: 100, after: None }).await?.items;
    let live = jobs.iter().find(|j| !j.status.is_terminal()).cloned();
    let last_failure = jobs.first().filter(|j| j.status == JobStatus::Failed).cloned();
    let current = ticket.phase;
    let order = [Phase::Research, Phase::Planning, Phase::Execution];
    let steps = order
        .iter()
        .map(|p| {
            let name = match p {
                Phase::Research => "Research",
                Phase::Planning => "Planning",
                Phase::Execution => "Execution",
            };
            let index = |x: &Phase| order.iter().position(|o| o == x).unwrap_or(0);
            let done = index(p) < index(&current) || (*p == current && ticket.pull_request_url.is_some());
            (
                name,
                if done {
                    "done"
                } else if *p == current {
                    "current"
                } else {
                    "next"
                },
            )
        })
        .collect();
    let next_phase = match current {
        Phase::Research => Some("planning"),
        Phase::Planning => Some("execution"),
        Phase::Execution => None,
    };
    let overridden_by = match ticket.workflow_overridden_by {
        Some(user) => state.store.get_user(user).await.map(|u| u.email).unwrap_or_else(|_| "a former user".into()),
        None => "a maintainer".into(),
    };
    Ok(render(&view::TicketPage {
        ctx: Ctx::new(&caller, "tickets"),
        approvals: state.store.list_approvals(id).await?,
        attachments: state.store.list_attachments(id).await?,
        clankers: active_clankers(&state).await?,
        ticket,
        project,
        perm,
        steps,
        tab,
        attach_error: query.get("attach_error").filter(|e| !e.is_empty()).cloned(),
        doc,
        jobs,
        live,
        last_failure,
        next_phase,
        overridden_by,
        feedback: state.store.list_feedback(id).await?,
        slack: view::TicketSlackSection {
            configured: state.store.get_slack_settings().await?.is_some(),
            view: crate::api::slack::ticket_slack(&state, id).await?,
        },
    }))
}

async fn document(
    state: &AppState,
    ticket: viberglass_domain::TicketId,
    phase: Phase,
    query: &HashMap<String, String>,
) -> Result<view::DocView, ApiError> {
    let document = state.store.get_document(ticket, phase).await?;
    let comments = state.store.list_comments(ticket, phase).await?;
    let revisions = state.store.list_revisions(ticket, phase).await?;
    let viewing = query.get("rev").and_then(|r| r.parse::<i64>().ok());
    let content = match (viewing, &document) {
        (Some(rev), Some(d)) if rev != d.revision => state.store.revision_content(ticket, phase, rev).await?,
        (_, Some(d)) => Some(d.content.clone()),
        (_, None) => None,
    };
    let viewing_revision = viewing.filter(|rev| document.as_ref().is_some_and(|d| d.revision != *rev));
    let content = content.unwrap_or_default();
    // What the shown revision changed from the one before it.
    let shown = viewing_revision.or(document.as_ref().map(|d| d.revision)).unwrap_or(0);
    let changes = if shown > 1 {
        let previous = state.store.revision_content(ticket, phase, shown - 1).await?.unwrap_or_default();
        viberglass_domain::workflow::line_diff(&previous, &content)
            .lines()
            .map(|line| {
                let kind = match line.chars().next() {
                    Some('+') => "add",
                    Some('-') => "del",
                    _ => "same",
                };
                (kind, line.to_owned())
            })
            .collect()
    } else {
        Vec::new()
    };
    let lines = content
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let n = i as i64 + 1;
            let commented = comments.iter().any(|c| c.line == n && c.status.as_str() == "open");
            (n, line.to_owned(), commented)
        })
        .collect();
    Ok(view::DocView {
        phase,
        file: if phase == Phase::Research { "RESEARCH.md" } else { "PLAN.md" },
        document,
        lines,
        comments,
        revisions,
        viewing_revision,
        shown_revision: shown,
        changes,
    })
}

pub async fn jobs(State(state): State<AppState>, caller: Caller, Query(query): Params) -> PageResult {
    let status = param(&query, "status");
    let mut filter = JobFilter { member_of: caller.member_filter(), ..JobFilter::default() };
    if !status.is_empty() {
        filter.status =
            Some(status.parse::<JobStatus>().map_err(|e| ApiError::invalid_field("status", e.to_string()))?);
    }
    let page = state.store.list_jobs(&filter, page_request(&query, 50)?).await?;
    Ok(render(&view::Jobs {
        ctx: Ctx::new(&caller, "jobs"),
        jobs: job_rows(&state, page.items).await?,
        status,
        next_cursor: page.next_cursor,
        query_without_cursor: query_without_cursor(&query, &["status"]),
    }))
}

pub async fn job(State(state): State<AppState>, caller: Caller, Path(job_id): Path<String>) -> PageResult {
    let id = crate::extract::parse_job_id(&job_id)?;
    let job = state.store.get_job(id).await?;
    let perm = role_in(&state, &caller, job.project_id).await?;
    let live = !job.status.is_terminal();
    let events = state.store.list_job_events(id, 0, 2000).await?;
    let clanker = match job.clanker_id {
        Some(c) => state.store.get_clanker(c).await.ok(),
        None => None,
    };
    // Checked against the project's forge when the worker reported it.
    let pull_request = job.pull_request_url.clone().filter(|u| u.starts_with("https://") || u.starts_with("http://"));
    let rerun = state.store.rerun_of(job.id).await?;
    let row = job_rows(&state, vec![job]).await?.pop().ok_or_else(|| ApiError::internal("the job vanished"))?;
    Ok(render(&view::JobPage { ctx: Ctx::new(&caller, "jobs"), row, perm, events, clanker, live, pull_request, rerun }))
}

pub async fn clankers(State(state): State<AppState>, caller: Caller) -> PageResult {
    let clankers = state.store.list_clankers(PageRequest { limit: 200, after: None }).await?.items;
    Ok(render(&view::Clankers { ctx: Ctx::new(&caller, "clankers"), clankers }))
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub async fn clanker(State(state): State<AppState>, caller: Caller, Path(key): Path<String>) -> PageResult {
    let clanker = crate::service::clankers::find_clanker(&state.store, &key).await?;
    let filter = JobFilter { clanker_id: Some(clanker.id), member_of: caller.member_filter(), ..JobFilter::default() };
    let jobs = state.store.list_jobs(&filter, PageRequest { limit: 20, after: None }).await?.items;
    Ok(render(&view::ClankerPage {
        ctx: Ctx::new(&caller, "clankers"),
        agent_settings: pretty(&clanker.agent_settings),
        compute_config: pretty(&clanker.compute_config),
        clanker,
        jobs,
    }))
}

async fn clanker_form(state: &AppState, caller: &Caller, clanker: Option<viberglass_domain::Clanker>) -> PageResult {
    let (agent_settings, compute_config, instruction_files) = match &clanker {
        Some(c) => (
            pretty(&c.agent_settings),
            pretty(&c.compute_config),
            serde_json::to_string_pretty(&c.instruction_files).unwrap_or_default(),
        ),
        None => ("{}".into(), "{}".into(), "[]".into()),
    };
    let all = state
        .store
        .list_projects(&viberglass_store::ProjectFilter::default(), PageRequest { limit: 200, after: None })
        .await?
        .items;
    let projects = all
        .iter()
        .map(|p| {
            let allowed = clanker.as_ref().is_some_and(|c| c.projects.contains(&p.id));
            (p.slug.as_str().to_owned(), p.name.clone(), allowed)
        })
        .collect();
    Ok(render(&view::ClankerForm {
        ctx: Ctx::new(caller, "clankers"),
        shared: clanker.as_ref().is_some_and(|c| c.shared),
        projects,
        clanker,
        agents: AgentKind::NAMES,
        computes: ComputeKind::NAMES,
        secrets: state.store.list_secrets().await?,
        agent_settings,
        compute_config,
        instruction_files,
    }))
}

pub async fn new_clanker(State(state): State<AppState>, caller: Caller) -> PageResult {
    clanker_form(&state, &caller, None).await
}

pub async fn edit_clanker(State(state): State<AppState>, caller: Caller, Path(key): Path<String>) -> PageResult {
    let clanker = crate::service::clankers::find_clanker(&state.store, &key).await?;
    clanker_form(&state, &caller, Some(clanker)).await
}

pub async fn secrets(State(state): State<AppState>, caller: Caller) -> PageResult {
    let mut secrets = Vec::new();
    for secret in state.store.list_secrets().await? {
        // Which projects use a secret is for administrators (others may not know those projects).
        let used_by =
            if caller.is_admin() { state.store.secret_users(&secret.name).await?.describe() } else { String::new() };
        secrets.push((secret, used_by));
    }
    Ok(render(&view::Secrets { ctx: Ctx::new(&caller, "secrets"), secrets, backends: SecretBackend::NAMES }))
}

pub async fn integrations(State(state): State<AppState>, caller: Caller) -> PageResult {
    Ok(render(&view::Integrations {
        ctx: Ctx::new(&caller, "integrations"),
        integrations: state.store.list_integrations().await?,
        secrets: state.store.list_secrets().await?,
    }))
}

pub async fn slack(State(state): State<AppState>, caller: Caller) -> PageResult {
    Ok(render(&view::SlackPage {
        ctx: Ctx::new(&caller, "slack"),
        slack: crate::api::slack::view(&state).await?,
        secrets: state.store.list_secrets().await?.into_iter().map(|s| s.name).collect(),
    }))
}

pub async fn users(State(state): State<AppState>, caller: Caller) -> PageResult {
    Ok(render(&view::Users { ctx: Ctx::new(&caller, "users"), users: state.store.list_users().await? }))
}

pub async fn tokens(State(state): State<AppState>, caller: Caller) -> PageResult {
    let tokens = match caller.user_id() {
        Some(user) => state.store.list_api_tokens(user).await?,
        None => Vec::new(),
    };
    let via_session = caller.via == crate::auth::Via::Session;
    Ok(render(&view::Tokens { ctx: Ctx::new(&caller, "tokens"), tokens, via_session }))
}

pub async fn audit(State(state): State<AppState>, caller: Caller, Query(query): Params) -> PageResult {
    let action = param(&query, "action");
    let filter = AuditFilter { action: Some(action.clone()).filter(|a| !a.is_empty()), ..AuditFilter::default() };
    let page = state.store.list_audit(&filter, page_request(&query, 100)?).await?;
    Ok(render(&view::Audit {
        ctx: Ctx::new(&caller, "audit"),
        entries: page.items,
        action,
        next_cursor: page.next_cursor,
    }))
}

/// The doctor's report: what is broken, where, and what to do.
pub async fn doctor(State(state): State<AppState>, caller: Caller) -> PageResult {
    let report = crate::service::doctor::run(&state).await;
    Ok(render(&view::Doctor { ctx: Ctx::new(&caller, "doctor"), report }))
}

pub async fn schedules(State(state): State<AppState>, caller: Caller, Path(project): Path<String>) -> PageResult {
    let project = crate::service::projects::find_project(&state.store, &project).await?;
    let schedules = crate::service::schedules::views(&state, &project).await?;
    let clankers = allowed_clankers(&state, &project).await?;
    Ok(render(&view::SchedulesPage {
        ctx: Ctx::new(&caller, "projects"),
        perm: role_in(&state, &caller, project.id).await?,
        schedules,
        templates: state.store.list_task_templates(project.id).await?,
        clankers,
        project,
    }))
}

pub async fn schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> PageResult {
    let project = crate::service::projects::find_project(&state.store, &project).await?;
    let schedule = crate::service::schedules::find_schedule(&state, &project, &id).await?;
    let executions = crate::service::schedules::executions(&state, &schedule, 50).await?;
    Ok(render(&view::SchedulePage {
        ctx: Ctx::new(&caller, "projects"),
        perm: role_in(&state, &caller, project.id).await?,
        view: crate::service::schedules::view(&state, schedule).await?,
        templates: state.store.list_task_templates(project.id).await?,
        executions,
        project,
    }))
}
