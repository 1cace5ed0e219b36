//! Scheduled tasks: a project's task templates (what to run) and schedules
//! (when), pause and resume, Run now, and the executions with their jobs.
//! The scheduler loop (`crate::schedules`) takes due slots; this module is
//! what people do, and what starting an execution does.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use viberglass_domain::schedule::{
    Cadence, CadenceError, CadenceKind, Execution, ExecutionStatus, MissedPolicy, OverlapPolicy, Schedule,
    TaskTemplate, parse_cron, parse_interval,
};
use viberglass_domain::validation::bounded_text;
use viberglass_domain::{
    ExecutionId, Job, JobId, NewTicket, Phase, Project, ScheduleId, Severity, TaskTemplateId, TicketId, TicketSource,
    ValidationErrors,
};
use viberglass_store::StoreError;

use super::runs::{RunRequest, Trigger, start_run};
use super::{ServiceError, ServiceResult};
use crate::AppState;
use crate::identity::{Caller, audit};

/// How many upcoming runs a schedule shows.
pub const PREVIEW: usize = 5;
const MAX_INSTRUCTIONS: usize = 20_000;

/// A task template to create, or the fields to change.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    /// Unique in the project, e.g. `dependency-bump`.
    pub name: Option<String>,
    /// The clanker's id or slug: it must be allowed in the project.
    pub clanker: Option<String>,
    /// research, planning or execution (default research).
    pub phase: Option<String>,
    /// What the agent is asked to do: each execution's ticket description, rendered through the project's
    /// prompt templates.
    pub instructions: Option<String>,
    /// Whether an execution run opens a pull request (default true); otherwise its branch is pushed and the
    /// diff recorded.
    pub open_pull_request: Option<bool>,
    /// Which of the clanker's secrets its runs get; empty or left out: all of them.
    pub secrets: Option<Vec<String>>,
}

/// A schedule to create, or the fields to change.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleInput {
    /// Unique in the project.
    pub name: Option<String>,
    /// The task template's id or name.
    pub template: Option<String>,
    /// A five-field cron expression, e.g. `0 9 * * MON` (give this or `interval`).
    pub cron: Option<String>,
    /// The IANA time zone the expression is read in (default UTC).
    pub timezone: Option<String>,
    /// A fixed interval instead: `15m`, `2h`, `1d`, `1w` (at least a minute).
    pub interval: Option<String>,
    /// skip (default: a slot that comes while the previous execution runs is skipped) or queue (one waits).
    pub overlap: Option<String>,
    /// run_once (default: slots missed while no server ran make one catch-up run) or skip.
    pub missed: Option<String>,
    /// A ticket every execution runs on instead of a new ticket each time (its id; empty to clear).
    pub standing_ticket: Option<String>,
    /// Whether it runs (default true).
    pub active: Option<bool>,
}

/// A cadence to check before saving it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CadenceInput {
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval: Option<String>,
}

/// A schedule with what people need to see of it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The task template's name.
    pub template_name: String,
    /// The next runs (none while paused), in UTC.
    #[schema(value_type = Vec<String>)]
    pub upcoming: Vec<String>,
    /// The cadence in words, e.g. `cron 0 9 * * MON (Europe/Berlin)`.
    pub cadence_text: String,
}

/// The next runs of a cadence.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CadencePreview {
    #[schema(value_type = Vec<String>)]
    pub upcoming: Vec<String>,
}

/// An execution with its job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionView {
    #[serde(flatten)]
    pub execution: Execution,
    pub job: Option<Job>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn cadence_error(field: &str, e: CadenceError) -> ValidationErrors {
    ValidationErrors::single(field, e.message)
}

/// Parses a cadence from input: `cron` (with `timezone`) or `interval`, exactly one.
fn parse_cadence(
    cron: Option<&str>,
    timezone: Option<&str>,
    interval: Option<&str>,
    anchor: OffsetDateTime,
) -> Result<Cadence, ValidationErrors> {
    let cron = cron.filter(|c| !c.trim().is_empty());
    let interval = interval.filter(|i| !i.trim().is_empty());
    let mut errors = ValidationErrors::new();
    for (field, value, max) in [("cron", cron, 200), ("timezone", timezone, 64), ("interval", interval, 32)] {
        if value.is_some_and(|v| v.chars().count() > max) {
            errors.add(field, format!("{field} is longer than {max} characters"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    match (cron, interval) {
        (Some(expression), None) => parse_cron(expression, timezone.unwrap_or("UTC")).map_err(|e| {
            if e.position.is_none() && timezone.is_some() {
                cadence_error("timezone", e)
            } else {
                cadence_error("cron", e)
            }
        }),
        (None, Some(interval)) => parse_interval(interval, anchor).map_err(|e| cadence_error("interval", e)),
        (Some(_), Some(_)) => {
            Err(ValidationErrors::single("interval", "give either cron (with timezone) or interval, not both"))
        }
        (None, None) => Err(ValidationErrors::single(
            "cron",
            "a schedule needs a cron expression (e.g. `0 9 * * MON-FRI`, with a timezone) or an interval (e.g. `1d`)",
        )),
    }
}

/// The next runs of a cadence, checked (the form's live preview).
pub fn preview(state: &AppState, input: &CadenceInput) -> ServiceResult<CadencePreview> {
    let now = state.clock.now();
    let cadence = parse_cadence(input.cron.as_deref(), input.timezone.as_deref(), input.interval.as_deref(), now)?;
    Ok(CadencePreview { upcoming: cadence.preview(now, PREVIEW).into_iter().map(rfc3339).collect() })
}

fn cadence_text(s: &Schedule) -> String {
    match s.cadence {
        CadenceKind::Cron => format!("cron {} ({})", s.expression, s.timezone),
        CadenceKind::Interval => format!("every {}", interval_text(s.interval_secs)),
    }
}

fn interval_text(secs: u64) -> String {
    for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// A schedule as shown: its template's name and its next runs.
pub async fn view(state: &AppState, schedule: Schedule) -> ServiceResult<ScheduleView> {
    let template_name = state.store.get_task_template(schedule.template_id).await?.name;
    let upcoming = match (schedule.active, schedule.next_run_at, schedule.parsed()) {
        (true, Some(next), Ok(cadence)) => {
            let mut runs = vec![next];
            runs.extend(cadence.preview(next, PREVIEW - 1));
            runs.into_iter().map(rfc3339).collect()
        }
        _ => Vec::new(),
    };
    let cadence_text = cadence_text(&schedule);
    Ok(ScheduleView { schedule, template_name, upcoming, cadence_text })
}

/// Nothing is scheduled in an archived project.
fn ensure_open(project: &Project) -> ServiceResult<()> {
    match project.archived_at {
        Some(_) => Err(ServiceError::unprocessable(
            "project_archived",
            format!("project {} is archived: unarchive it to schedule work in it", project.slug.as_str()),
        )),
        None => Ok(()),
    }
}

/// A project's schedules as shown.
pub async fn views(state: &AppState, project: &Project) -> ServiceResult<Vec<ScheduleView>> {
    let mut out = Vec::new();
    for s in state.store.list_schedules(project.id).await? {
        out.push(view(state, s).await?);
    }
    Ok(out)
}

/// The template an id or name names in the project.
pub async fn find_template(state: &AppState, project: &Project, key: &str) -> ServiceResult<TaskTemplate> {
    let missing = || ServiceError::NotFound(format!("there is no task template `{key}` in this project"));
    if let Ok(id) = key.parse::<TaskTemplateId>() {
        return match state.store.get_task_template(id).await {
            Ok(t) if t.project_id == project.id => Ok(t),
            Ok(_) | Err(StoreError::NotFound { .. }) => Err(missing()),
            Err(e) => Err(e.into()),
        };
    }
    let all = state.store.list_task_templates(project.id).await?;
    all.into_iter().find(|t| t.name == key.trim()).ok_or_else(missing)
}

/// The schedule an id names in the project.
pub async fn find_schedule(state: &AppState, project: &Project, key: &str) -> ServiceResult<Schedule> {
    let missing = || ServiceError::NotFound(format!("there is no schedule `{key}` in this project"));
    let Ok(id) = key.parse::<ScheduleId>() else {
        let all = state.store.list_schedules(project.id).await?;
        return all.into_iter().find(|s| s.name == key.trim()).ok_or_else(missing);
    };
    match state.store.get_schedule(id).await {
        Ok(s) if s.project_id == project.id => Ok(s),
        Ok(_) | Err(StoreError::NotFound { .. }) => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

fn name_of(errors: &mut ValidationErrors, value: &str) -> Option<String> {
    let name = errors.check("name", bounded_text(value, "name", 1, 100))?;
    if name.chars().any(char::is_control) {
        errors.add("name", "name must be one line without control characters");
        return None;
    }
    Some(name)
}

/// Checks a template against the project: the clanker exists and may run there, the secrets are the
/// clanker's. Collects every problem.
async fn check_template(state: &AppState, project: &Project, t: &mut TaskTemplate) -> ServiceResult<()> {
    let mut errors = ValidationErrors::new();
    match super::clankers::find_clanker(&state.store, &t.clanker).await {
        Ok(clanker) if !clanker.allowed_in(project.id) => errors.add(
            "clanker",
            format!(
                "clanker {} may not run in project {}: an admin adds the project to the clanker's projects, or \
                 marks it shared",
                clanker.slug.as_str(),
                project.slug.as_str()
            ),
        ),
        Ok(clanker) => {
            t.clanker = clanker.slug.as_str().to_owned();
            let foreign: Vec<&String> = t.secrets.iter().filter(|s| !clanker.secrets.contains(s)).collect();
            if !foreign.is_empty() {
                errors.add(
                    "secrets",
                    format!(
                        "{} {} not among clanker {}'s secrets ({}): a template can only narrow the clanker's secrets",
                        foreign.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
                        if foreign.len() == 1 { "is" } else { "are" },
                        clanker.slug.as_str(),
                        if clanker.secrets.is_empty() { "none".to_owned() } else { clanker.secrets.join(", ") }
                    ),
                );
            }
        }
        Err(ServiceError::NotFound(message)) => errors.add("clanker", message),
        Err(e) => return Err(e),
    }
    errors.into_result(()).map_err(ServiceError::Invalid)
}

/// Applies template input onto `t` (all fields for a new one).
fn apply_template(t: &mut TaskTemplate, input: TemplateInput, creating: bool) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::new();
    match input.name {
        Some(name) => {
            if let Some(name) = name_of(&mut errors, &name) {
                t.name = name;
            }
        }
        None if creating => errors.add("name", "name is required, e.g. `dependency-bump`"),
        None => {}
    }
    match input.clanker.map(|c| c.trim().to_owned()) {
        Some(clanker) if !clanker.is_empty() => t.clanker = clanker,
        Some(_) => errors.add("clanker", "clanker must not be empty: the id or slug of the clanker that runs it"),
        None if creating => errors.add("clanker", "clanker is required: the id or slug of the clanker that runs it"),
        None => {}
    }
    if let Some(phase) = input.phase.filter(|v| !v.trim().is_empty())
        && let Some(phase) = errors.check("phase", phase.trim().parse::<Phase>())
    {
        t.phase = phase;
    }
    match input.instructions {
        Some(text) => {
            if let Some(text) = errors.check("instructions", bounded_text(&text, "instructions", 1, MAX_INSTRUCTIONS)) {
                t.instructions = text;
            }
        }
        None if creating => errors.add("instructions", "instructions are required: what the agent is asked to do"),
        None => {}
    }
    if let Some(open) = input.open_pull_request {
        t.open_pull_request = open;
    }
    if let Some(secrets) = input.secrets {
        let mut names: Vec<String> = secrets.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        names.sort();
        names.dedup();
        t.secrets = names;
    }
    errors.into_result(())
}

pub async fn create_template(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    input: TemplateInput,
) -> ServiceResult<TaskTemplate> {
    ensure_open(project)?;
    let now = viberglass_store::now();
    let mut t = TaskTemplate {
        id: TaskTemplateId::new(),
        project_id: project.id,
        name: String::new(),
        clanker: String::new(),
        phase: Phase::Research,
        instructions: String::new(),
        open_pull_request: true,
        secrets: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    apply_template(&mut t, input, true)?;
    check_template(state, project, &mut t).await?;
    let t = state.store.create_task_template(&t).await.map_err(|e| taken(e, "task template", &t.name))?;
    audit_template(state, caller, project, &t, "task_template_created").await;
    Ok(t)
}

pub async fn update_template(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    key: &str,
    input: TemplateInput,
) -> ServiceResult<TaskTemplate> {
    ensure_open(project)?;
    let mut t = find_template(state, project, key).await?;
    apply_template(&mut t, input, false)?;
    check_template(state, project, &mut t).await?;
    let t = state.store.update_task_template(&t).await.map_err(|e| taken(e, "task template", &t.name))?;
    audit_template(state, caller, project, &t, "task_template_updated").await;
    Ok(t)
}

async fn audit_template(state: &AppState, caller: &Caller, project: &Project, t: &TaskTemplate, action: &str) {
    let details = serde_json::json!({"name": t.name, "clanker": t.clanker, "phase": t.phase});
    audit(state, Some(caller), action, "task_template", Some(t.id.to_string()), Some(project.id), details).await;
}

/// A unique-name collision, said plainly.
fn taken(e: StoreError, what: &str, name: &str) -> ServiceError {
    match e {
        StoreError::Conflict { .. } => ServiceError::Invalid(ValidationErrors::single(
            "name",
            format!("a {what} named `{name}` already exists in this project: choose another name"),
        )),
        other => other.into(),
    }
}

/// Applies schedule input onto `s`; true when the cadence changed (the next run is computed again).
async fn apply_schedule(
    state: &AppState,
    project: &Project,
    s: &mut Schedule,
    input: ScheduleInput,
    creating: bool,
) -> ServiceResult<bool> {
    let mut errors = ValidationErrors::new();
    let now = state.clock.now();
    match input.name {
        Some(name) => {
            if let Some(name) = name_of(&mut errors, &name) {
                s.name = name;
            }
        }
        None if creating => errors.add("name", "name is required, e.g. `weekly dependency bump`"),
        None => {}
    }
    match input.template.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(key) => match find_template(state, project, key).await {
            Ok(t) => s.template_id = t.id,
            Err(ServiceError::NotFound(message)) => errors.add("template", message),
            Err(e) => return Err(e),
        },
        None if creating => errors.add("template", "template is required: the task template's id or name"),
        None => {}
    }
    let cadence_given = input.cron.is_some() || input.interval.is_some() || input.timezone.is_some();
    if creating || cadence_given {
        // A timezone alone changes the zone of the expression there is.
        let (cron, interval) = match (&input.cron, &input.interval) {
            (None, None) if s.cadence == CadenceKind::Cron && !creating => (Some(s.expression.clone()), None),
            _ => (input.cron.clone(), input.interval.clone()),
        };
        let zone = input.timezone.clone().or_else(|| (!creating).then(|| s.timezone.clone()));
        match parse_cadence(cron.as_deref(), zone.as_deref(), interval.as_deref(), now) {
            Ok(Cadence::Cron { expression, zone, .. }) => {
                s.cadence = CadenceKind::Cron;
                s.expression = expression;
                s.timezone = zone.name().to_owned();
                s.interval_secs = 0;
            }
            Ok(Cadence::Interval { secs, anchor }) => {
                s.cadence = CadenceKind::Interval;
                s.expression = String::new();
                s.timezone = "UTC".into();
                s.interval_secs = secs;
                s.anchor_at = anchor;
            }
            Err(e) => errors.fields.extend(e.fields),
        }
    }
    if let Some(overlap) = input.overlap.filter(|v| !v.trim().is_empty())
        && let Some(overlap) = errors.check("overlap", overlap.trim().parse::<OverlapPolicy>())
    {
        s.overlap = overlap;
    }
    if let Some(missed) = input.missed.filter(|v| !v.trim().is_empty())
        && let Some(missed) = errors.check("missed", missed.trim().parse::<MissedPolicy>())
    {
        s.missed = missed;
    }
    match input.standing_ticket.as_deref().map(str::trim) {
        Some("") => s.standing_ticket_id = None,
        Some(key) => match key.parse::<TicketId>() {
            Ok(id) => match state.store.get_ticket(id).await {
                Ok(t) if t.project_id == project.id && t.archived_at.is_none() => s.standing_ticket_id = Some(id),
                Ok(t) if t.project_id == project.id => {
                    errors.add("standing_ticket", "that ticket is archived: unarchive it or choose another")
                }
                Ok(_) | Err(StoreError::NotFound { .. }) => {
                    errors.add("standing_ticket", format!("there is no ticket {key} in this project"))
                }
                Err(e) => return Err(e.into()),
            },
            Err(_) => errors.add("standing_ticket", "is not a ticket id"),
        },
        None => {}
    }
    if let Some(active) = input.active {
        s.active = active;
    }
    errors.into_result(creating || cadence_given).map_err(ServiceError::Invalid)
}

pub async fn create_schedule(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    input: ScheduleInput,
) -> ServiceResult<ScheduleView> {
    ensure_open(project)?;
    let now = viberglass_store::now();
    let mut s = Schedule {
        id: ScheduleId::new(),
        project_id: project.id,
        template_id: TaskTemplateId::new(),
        name: String::new(),
        cadence: CadenceKind::Cron,
        expression: String::new(),
        timezone: "UTC".into(),
        interval_secs: 0,
        anchor_at: state.clock.now(),
        active: true,
        overlap: OverlapPolicy::Skip,
        missed: MissedPolicy::RunOnce,
        standing_ticket_id: None,
        next_run_at: None,
        last_run_at: None,
        runs: 0,
        failures: 0,
        skipped: 0,
        created_by: caller.user_id(),
        created_at: now,
        updated_at: now,
    };
    apply_schedule(state, project, &mut s, input, true).await?;
    s.next_run_at = next_slot(state, &s);
    let s = state.store.create_schedule(&s).await.map_err(|e| taken(e, "schedule", &s.name))?;
    saved(state, caller, project, s, "schedule_created").await
}

/// A saved schedule: audited, the scheduler woken, shown.
async fn saved(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    s: Schedule,
    action: &str,
) -> ServiceResult<ScheduleView> {
    let details = serde_json::json!({"name": s.name, "cadence": cadence_text(&s), "active": s.active});
    audit(state, Some(caller), action, "schedule", Some(s.id.to_string()), Some(project.id), details).await;
    state.schedule_wake.notify_one();
    view(state, s).await
}

/// The first slot after now, for an active schedule.
fn next_slot(state: &AppState, s: &Schedule) -> Option<OffsetDateTime> {
    if !s.active {
        return None;
    }
    s.parsed().ok().and_then(|c| c.next_after(state.clock.now()))
}

pub async fn update_schedule(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    key: &str,
    input: ScheduleInput,
) -> ServiceResult<ScheduleView> {
    ensure_open(project)?;
    let mut s = find_schedule(state, project, key).await?;
    let was_active = s.active;
    let recompute = apply_schedule(state, project, &mut s, input, false).await?;
    let moved = recompute || s.active != was_active;
    if moved {
        s.next_run_at = next_slot(state, &s);
    }
    let s = state.store.update_schedule(&s, moved).await.map_err(|e| taken(e, "schedule", &s.name))?;
    saved(state, caller, project, s, "schedule_updated").await
}

/// Pauses (no more slots until resumed) or resumes (from the next slot after now: slots passed while
/// paused are not caught up) a schedule.
pub async fn set_active(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    key: &str,
    active: bool,
) -> ServiceResult<ScheduleView> {
    let s = find_schedule(state, project, key).await?;
    let next = if active {
        let cadence = s.parsed().map_err(|e| ServiceError::unprocessable("invalid_cadence", e.message))?;
        cadence.next_after(state.clock.now())
    } else {
        None
    };
    if state.store.set_schedule_active(s.id, active, next).await? {
        audit(
            state,
            Some(caller),
            if active { "schedule_resumed" } else { "schedule_paused" },
            "schedule",
            Some(s.id.to_string()),
            Some(project.id),
            serde_json::json!({"name": s.name}),
        )
        .await;
        state.schedule_wake.notify_one();
    }
    view(state, state.store.get_schedule(s.id).await?).await
}

/// Run now: an execution outside the cadence (the cadence is unchanged). With overlap `skip`, refused while
/// an execution runs.
pub async fn run_now(state: &AppState, caller: &Caller, project: &Project, key: &str) -> ServiceResult<Execution> {
    ensure_open(project)?;
    let s = find_schedule(state, project, key).await?;
    if !s.active {
        return Err(ServiceError::unprocessable(
            "schedule_paused",
            format!("schedule `{}` is paused: a maintainer resumes it first", s.name),
        ));
    }
    let live = state.store.live_executions(s.id).await?;
    if let Some(busy) = live.first() {
        let waiting = live.iter().any(|e| e.status == ExecutionStatus::Queued);
        if s.overlap == OverlapPolicy::Skip || waiting {
            return Err(ServiceError::conflict(
                "execution_in_progress",
                format!(
                    "execution {} of schedule `{}` is still {}: wait for it to end (or cancel its job), then run \
                     again{}",
                    busy.id,
                    s.name,
                    busy.status,
                    if waiting { "" } else { "; or set the schedule's overlap to queue" }
                ),
            ));
        }
    }
    let execution = match state.store.manual_execution(s.id, viberglass_store::now()).await {
        Ok(e) => e,
        Err(StoreError::Conflict { .. }) => {
            return Err(ServiceError::conflict(
                "execution_waiting",
                format!("an execution of schedule `{}` already waits to run: wait for it to start", s.name),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    audit(
        state,
        Some(caller),
        "schedule_run_now",
        "schedule",
        Some(s.id.to_string()),
        Some(project.id),
        serde_json::json!({"name": s.name, "execution_id": execution.id}),
    )
    .await;
    state.schedule_wake.notify_one();
    Ok(execution)
}

/// A schedule's executions, newest first, each with its job.
pub async fn executions(state: &AppState, schedule: &Schedule, limit: i64) -> ServiceResult<Vec<ExecutionView>> {
    let mut out = Vec::new();
    for execution in state.store.list_executions(schedule.id, limit).await? {
        let job = match execution.job_id {
            Some(id) => match state.store.get_job(id).await {
                Ok(job) => Some(job),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        out.push(ExecutionView { execution, job });
    }
    Ok(out)
}

/// An execution of the project, by id.
pub async fn find_execution(state: &AppState, project: &Project, key: &str) -> ServiceResult<ExecutionView> {
    let missing = || ServiceError::NotFound(format!("there is no execution `{key}` in this project"));
    let id = key.parse::<ExecutionId>().map_err(|_| missing())?;
    let execution = match state.store.get_execution(id).await {
        Ok(e) => e,
        Err(StoreError::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    let schedule = state.store.get_schedule(execution.schedule_id).await?;
    if schedule.project_id != project.id {
        return Err(missing());
    }
    let job = match execution.job_id {
        Some(id) => state.store.get_job(id).await.ok(),
        None => None,
    };
    Ok(ExecutionView { execution, job })
}

/// The ticket an execution files: the template's instructions as its description, its slot in the title.
fn execution_ticket(schedule: &Schedule, template: &TaskTemplate, execution: &Execution) -> NewTicket {
    let zone = if schedule.cadence == CadenceKind::Cron { schedule.timezone.as_str() } else { "UTC" };
    let slot = viberglass_domain::schedule::local_time(execution.slot, zone);
    NewTicket {
        title: format!("{}: {slot}", schedule.name).chars().take(200).collect(),
        description: template.instructions.clone(),
        severity: Severity::Low,
        source: TicketSource::Schedule,
        external_id: Some(format!("execution:{}", execution.id)),
        external_url: None,
        category: None,
        metadata: serde_json::json!({"schedule": schedule.name, "task_template": template.name,
            "trigger": execution.trigger}),
    }
}

/// Starts a queued execution: takes it (exactly one server does), files its ticket (or uses the standing
/// one) and starts its run with the execution's id as the job's. A run that cannot start ends the
/// execution `failed` with the refusal's reason. Returns whether this server took it.
pub async fn start_execution(state: &AppState, execution: &Execution) -> ServiceResult<bool> {
    let schedule = state.store.get_schedule(execution.schedule_id).await?;
    let template = state.store.get_task_template(schedule.template_id).await?;
    let job = JobId::from_uuid(execution.id.as_uuid());
    let ticket = match schedule.standing_ticket_id {
        Some(id) => Ok(id),
        None => Err(execution_ticket(&schedule, &template, execution)),
    };
    let Some(ticket) =
        state.store.begin_execution(execution, schedule.project_id, ticket, schedule.created_by, job).await?
    else {
        return Ok(false);
    };
    run_execution(state, execution, &template, ticket, job).await?;
    Ok(true)
}

/// Whether `ticket` is the one `execution` filed and nobody changed since: its description is the template's
/// instructions, so the template (a maintainer's) is its approval. A standing ticket, or a filed one a member
/// edited, goes through the phase's gate.
fn filed_unchanged(ticket: &viberglass_domain::Ticket, execution: &Execution) -> bool {
    ticket.source == TicketSource::Schedule
        && ticket.external_id.as_deref() == Some(format!("execution:{}", execution.id).as_str())
        && ticket.updated_at == ticket.created_at
}

/// Starts (or, for a stranded execution, starts again) an execution's run on `ticket` as `job`.
pub async fn run_execution(
    state: &AppState,
    execution: &Execution,
    template: &TaskTemplate,
    ticket: TicketId,
    job: JobId,
) -> ServiceResult<()> {
    let refused = match state.store.get_ticket(ticket).await {
        Ok(ticket) => {
            let gate = !filed_unchanged(&ticket, execution);
            let request = RunRequest {
                ticket: &ticket,
                phase: template.phase,
                clanker: &template.clanker,
                trigger: Trigger::Schedule {
                    job,
                    secrets: template.secrets.clone(),
                    open_pull_request: template.open_pull_request,
                    gate,
                },
            };
            match start_run(state, None, request).await {
                Ok(job) => {
                    tracing::info!(execution_id = %execution.id, job_id = %job.id, ticket_id = %ticket.id,
                        "scheduled execution started");
                    return Ok(());
                }
                // Started before (this is a second try): the job is there.
                Err(ServiceError::Store(StoreError::Conflict { .. })) => return Ok(()),
                Err(ServiceError::Store(e)) if !matches!(e, StoreError::NotFound { .. }) => return Err(e.into()),
                Err(refused) => refused.to_string(),
            }
        }
        Err(StoreError::NotFound { .. }) => format!("its ticket {ticket} does not exist any more"),
        Err(e) => return Err(e.into()),
    };
    let message = format!("the {} run could not start: {refused}", template.phase);
    tracing::warn!(execution_id = %execution.id, reason = %refused, "a scheduled execution could not start");
    state.store.finish_execution(execution, ExecutionStatus::Failed, &message).await?;
    Ok(())
}
