//! The pages' templates (under `crates/server/templates`) and what they show.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use time::OffsetDateTime;
use viberglass_domain::workflow::{ApprovalRecord, DocumentComment, DocumentRevision, PhaseDocument};
use viberglass_domain::{
    ApiToken, AuditEntry, Clanker, Integration, Job, JobEvent, Phase, Project, ProjectRole, Secret, Ticket, User,
};

use crate::auth::Caller;

/// Renders a template as an HTML answer; a template that fails is a 500
/// page that says so (it never half-renders).
pub fn render<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => {
            let mut response = html.into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            response
        }
        Err(error) => {
            tracing::error!(%error, "a page template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; the server log says why")
                .into_response()
        }
    }
}

/// Percent-encodes a value for a URL's path segment or query.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A path on this site to send a browser to, or `None` for anything that
/// could leave it: only `/…` that is not `//…` or `/\…`, with no control or
/// whitespace characters (browsers drop tabs and newlines, so `/\t/evil`
/// would become `//evil`), and a valid path and query.
pub fn local_path(value: &str) -> Option<String> {
    let ok = value.starts_with('/')
        && !value.starts_with("//")
        && !value.starts_with("/\\")
        && !value.contains('\\')
        && !value.chars().any(|c| c.is_control() || c.is_whitespace())
        && value.parse::<axum::http::uri::PathAndQuery>().is_ok();
    ok.then(|| value.to_owned())
}

/// What every page's frame needs: who is signed in and where they are.
pub struct Ctx {
    pub email: String,
    pub is_admin: bool,
    pub nav: &'static str,
    pub auth_disabled: bool,
}

impl Ctx {
    pub fn new(caller: &Caller, nav: &'static str) -> Self {
        Self {
            email: caller.label(),
            is_admin: caller.is_admin(),
            nav,
            auth_disabled: caller.via == crate::auth::Via::Nobody,
        }
    }

    /// `2026-11-28 12:01 UTC`.
    pub fn when(&self, t: &OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
    }

    /// `12:01:07`, for log lines.
    pub fn clock(&self, t: &OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    }

    pub fn when_opt(&self, t: &Option<OffsetDateTime>) -> String {
        t.as_ref().map_or_else(|| "—".to_owned(), |t| self.when(t))
    }

    /// How long between two moments, e.g. `1m 12s`.
    pub fn took(&self, from: &Option<OffsetDateTime>, to: &Option<OffsetDateTime>) -> String {
        match (from, to) {
            (Some(a), Some(b)) => {
                let secs = (*b - *a).whole_seconds().max(0);
                if secs >= 60 { format!("{}m {}s", secs / 60, secs % 60) } else { format!("{secs}s") }
            }
            (Some(_), None) => "running".into(),
            _ => "—".into(),
        }
    }

    /// `1.2 MiB`, `340 B`.
    pub fn size(&self, bytes: &u64) -> String {
        let bytes = *bytes as f64;
        if bytes >= 1024.0 * 1024.0 {
            format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
        } else if bytes >= 1024.0 {
            format!("{:.1} KiB", bytes / 1024.0)
        } else {
            format!("{bytes} B")
        }
    }

    pub fn encode(&self, value: &str) -> String {
        encode(value)
    }

    pub fn short<'a>(&self, id: &'a str) -> &'a str {
        id.get(..8).unwrap_or(id)
    }
}

/// What the caller may do in one project.
#[derive(Clone, Copy)]
pub struct Perm {
    pub member: bool,
    pub maintainer: bool,
}

impl Perm {
    pub fn of(caller: &Caller, role: Option<ProjectRole>) -> Self {
        let admin = caller.is_admin();
        Self {
            member: admin || role.is_some_and(|r| r.includes(ProjectRole::Member)),
            maintainer: admin || role.is_some_and(|r| r.includes(ProjectRole::Maintainer)),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub title: String,
    pub message: String,
    pub hint: Option<String>,
    pub fields: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "form_errors.html")]
pub struct FormErrors {
    pub form: String,
    pub message: String,
    pub hint: Option<String>,
    pub fields: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "show_once.html")]
pub struct ShowOnce {
    pub value: String,
    pub back: String,
}

#[derive(Template)]
#[template(path = "test_result.html")]
pub struct TestResult {
    pub fragment: bool,
    pub ok: bool,
    pub message: String,
    pub identity: Option<String>,
    pub checks: Vec<(String, bool)>,
    pub problems: Vec<String>,
}

impl TestResult {
    pub fn from_answer(answer: &Value, fragment: bool) -> Self {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let mut checks = Vec::new();
        for (key, label) in [
            ("can_read", "read the repository"),
            ("can_push", "push branches"),
            ("can_open_pull_requests", "open pull requests"),
        ] {
            if let Some(b) = answer.get(key).and_then(Value::as_bool) {
                checks.push((label.to_owned(), b));
            }
        }
        Self {
            fragment,
            ok: answer.get("ok").and_then(Value::as_bool).unwrap_or(false),
            message: answer.get("message").and_then(text).unwrap_or_default(),
            identity: answer.get("identity").and_then(|i| i.get("login")).and_then(text),
            checks,
            problems: answer
                .get("problems")
                .and_then(Value::as_array)
                .map(|p| p.iter().filter_map(text).collect())
                .unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "auth.html")]
pub struct AuthPage {
    /// `setup` or `login`.
    pub mode: &'static str,
    pub next: String,
}

/// A job with where it belongs, for lists.
pub struct JobRow {
    pub job: Job,
    pub project: String,
    pub ticket_title: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct Dashboard {
    pub ctx: Ctx,
    pub projects: Vec<Project>,
    pub running: Vec<JobRow>,
    pub awaiting: Vec<(Ticket, String)>,
    pub failures: Vec<JobRow>,
    pub has_secret: bool,
    pub has_integration: bool,
    pub has_active_clanker: bool,
    pub has_clanker: bool,
}

#[derive(Template)]
#[template(path = "projects.html")]
pub struct Projects {
    pub ctx: Ctx,
    pub projects: Vec<Project>,
    pub q: String,
    pub archived: String,
    pub next_cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "project_form.html")]
pub struct ProjectForm {
    pub ctx: Ctx,
    /// `None`: a new project.
    pub project: Option<Project>,
    pub integrations: Vec<Integration>,
    pub secrets: Vec<Secret>,
    pub members: Vec<(User, ProjectRole)>,
    pub users: Vec<User>,
    pub prompts: Vec<PromptRow>,
}

pub struct PromptRow {
    pub kind: String,
    pub template: String,
    pub overridden: bool,
}

#[derive(Template)]
#[template(path = "project.html")]
pub struct ProjectPage {
    pub ctx: Ctx,
    pub project: Project,
    pub perm: Perm,
    pub tickets: Vec<Ticket>,
    pub jobs: Vec<Job>,
    pub members: Vec<(User, ProjectRole)>,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
pub struct WebhooksPage {
    pub ctx: Ctx,
    pub project: Project,
    pub configs: Vec<viberglass_domain::WebhookConfig>,
    pub deliveries: Vec<viberglass_domain::Delivery>,
    pub next_cursor: Option<String>,
    pub status: String,
    /// The source the list is narrowed to (a configuration id), or empty.
    pub webhook: String,
    pub clankers: Vec<String>,
    pub secrets: Vec<String>,
    /// The server's public address, to show each configuration's full URL.
    pub base_url: String,
}

#[derive(Template)]
#[template(path = "ticket_new.html")]
pub struct NewTicket {
    pub ctx: Ctx,
    pub project: Project,
}

#[derive(Template)]
#[template(path = "tickets.html")]
pub struct Tickets {
    pub ctx: Ctx,
    pub tickets: Vec<(Ticket, String)>,
    pub projects: Vec<Project>,
    pub project: String,
    pub phase: String,
    pub status: String,
    pub q: String,
    pub next_cursor: Option<String>,
    pub query_without_cursor: String,
}

/// One phase's document with its comments and history.
pub struct DocView {
    pub phase: Phase,
    pub file: &'static str,
    pub document: Option<PhaseDocument>,
    pub lines: Vec<(i64, String, bool)>,
    pub comments: Vec<DocumentComment>,
    pub revisions: Vec<DocumentRevision>,
    /// Showing an older revision instead of the current one.
    pub viewing_revision: Option<i64>,
    /// The revision shown (current or older).
    pub shown_revision: i64,
    /// Its line diff from the revision before: (`add`, `del` or `same`, line).
    pub changes: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "ticket.html")]
pub struct TicketPage {
    pub ctx: Ctx,
    pub ticket: Ticket,
    pub project: Project,
    pub perm: Perm,
    pub steps: Vec<(&'static str, &'static str)>,
    pub tab: String,
    /// Files the new-ticket form could not attach, and why.
    pub attach_error: Option<String>,
    pub doc: Option<DocView>,
    pub approvals: Vec<ApprovalRecord>,
    pub attachments: Vec<viberglass_domain::Attachment>,
    pub jobs: Vec<Job>,
    pub live: Option<Job>,
    pub last_failure: Option<Job>,
    pub clankers: Vec<Clanker>,
    pub next_phase: Option<&'static str>,
    pub overridden_by: String,
    /// What was told to the ticket's source (comments, labels) and how it went.
    pub feedback: Vec<viberglass_store::Feedback>,
    pub slack: TicketSlackSection,
}

/// The ticket page's Slack section.
pub struct TicketSlackSection {
    /// Whether Slack is set up (the section shows only then, or when the ticket had a thread).
    pub configured: bool,
    pub view: crate::api::slack::TicketSlack,
}

impl TicketPage {
    /// A message's key without its thread's id: `job:…`, `doc:research:2`.
    pub fn post_label(&self, key: &str) -> String {
        key.split_once(':').map_or(key, |(_, rest)| rest).to_owned()
    }
}

#[derive(Template)]
#[template(path = "slack.html")]
pub struct SlackPage {
    pub ctx: Ctx,
    pub slack: crate::api::slack::SlackView,
    pub secrets: Vec<String>,
}

impl SlackPage {
    pub fn is_signing(&self, name: &str) -> bool {
        match &self.slack.settings {
            Some(s) => s.signing_secret == name,
            None => name.contains("SIGNING"),
        }
    }

    pub fn is_bot(&self, name: &str) -> bool {
        match &self.slack.settings {
            Some(s) => s.bot_token_secret == name,
            None => name.contains("BOT"),
        }
    }

    pub fn api_url(&self) -> String {
        match &self.slack.settings {
            Some(s) if s.api_url != viberglass_domain::slack::DEFAULT_API_URL => s.api_url.clone(),
            _ => String::new(),
        }
    }
}

#[derive(Template)]
#[template(path = "jobs.html")]
pub struct Jobs {
    pub ctx: Ctx,
    pub jobs: Vec<JobRow>,
    pub status: String,
    pub next_cursor: Option<String>,
    pub query_without_cursor: String,
}

#[derive(Template)]
#[template(path = "job.html")]
pub struct JobPage {
    pub ctx: Ctx,
    pub row: JobRow,
    pub perm: Perm,
    pub events: Vec<JobEvent>,
    pub clanker: Option<Clanker>,
    pub live: bool,
    pub pull_request: Option<String>,
    /// The newest run that repeats this one.
    pub rerun: Option<viberglass_domain::JobId>,
}

#[derive(Template)]
#[template(path = "clankers.html")]
pub struct Clankers {
    pub ctx: Ctx,
    pub clankers: Vec<Clanker>,
}

#[derive(Template)]
#[template(path = "clanker.html")]
pub struct ClankerPage {
    pub ctx: Ctx,
    pub clanker: Clanker,
    pub jobs: Vec<Job>,
    pub agent_settings: String,
    pub compute_config: String,
}

#[derive(Template)]
#[template(path = "clanker_form.html")]
pub struct ClankerForm {
    pub ctx: Ctx,
    pub clanker: Option<Clanker>,
    pub agents: &'static [&'static str],
    pub computes: &'static [&'static str],
    pub secrets: Vec<Secret>,
    /// Every project, with whether the clanker may run in it.
    pub projects: Vec<(String, String, bool)>,
    pub shared: bool,
    pub agent_settings: String,
    pub compute_config: String,
    pub instruction_files: String,
}

#[derive(Template)]
#[template(path = "secrets.html")]
pub struct Secrets {
    pub ctx: Ctx,
    /// Each secret with what uses it ("clanker claude, project shop").
    pub secrets: Vec<(Secret, String)>,
    pub backends: &'static [&'static str],
}

#[derive(Template)]
#[template(path = "integrations.html")]
pub struct Integrations {
    pub ctx: Ctx,
    pub integrations: Vec<Integration>,
    pub secrets: Vec<Secret>,
}

#[derive(Template)]
#[template(path = "users.html")]
pub struct Users {
    pub ctx: Ctx,
    pub users: Vec<User>,
}

#[derive(Template)]
#[template(path = "tokens.html")]
pub struct Tokens {
    pub ctx: Ctx,
    pub tokens: Vec<ApiToken>,
    pub via_session: bool,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct Audit {
    pub ctx: Ctx,
    pub entries: Vec<AuditEntry>,
    pub action: String,
    pub next_cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "doctor.html")]
pub struct Doctor {
    pub ctx: Ctx,
    pub report: viberglass_domain::doctor::DoctorReport,
}

#[derive(Template)]
#[template(path = "subscriptions.html")]
pub struct SubscriptionsPage {
    pub ctx: Ctx,
    /// The project whose subscriptions these are; `None`: the instance-wide ones.
    pub project: Option<Project>,
    pub subscriptions: Vec<viberglass_domain::Subscription>,
    /// The API collection the form posts to.
    pub collection: String,
    /// Event types with their descriptions.
    pub catalogue: Vec<(String, String)>,
    pub max_age: String,
    pub timeout: String,
    pub allow_private_everywhere: bool,
}

#[derive(Template)]
#[template(path = "subscription.html")]
pub struct SubscriptionPage {
    pub ctx: Ctx,
    pub s: viberglass_domain::Subscription,
    pub project: Option<Project>,
    pub catalogue: Vec<(String, String)>,
    pub failing: Vec<viberglass_domain::OutboundDelivery>,
    pub recent: Vec<viberglass_domain::OutboundDelivery>,
    pub next_cursor: Option<String>,
    /// Each shown delivery's attempts, by delivery id.
    pub attempts: std::collections::HashMap<String, Vec<viberglass_domain::OutboundAttempt>>,
    /// Pending, retrying, succeeded, failed.
    pub counts: (i64, i64, i64, i64),
    pub max_age: String,
    pub allow_private_everywhere: bool,
    /// A week ago, for the redeliver-failed form (`datetime-local`).
    pub week_ago: String,
    /// `/act/api/v1/webhook-subscriptions/{id}`.
    pub act_base: String,
    /// `/webhook-subscriptions/{id}`.
    pub here: String,
}

impl SubscriptionPage {
    /// Whether the subscription names this event type.
    pub fn wants(&self, event_type: &str) -> bool {
        self.s.events.iter().any(|e| e.as_str() == event_type)
    }
}

/// A project's scheduled tasks: schedules, templates and the forms to add them.
#[derive(Template)]
#[template(path = "schedules.html")]
pub struct SchedulesPage {
    pub ctx: Ctx,
    pub perm: Perm,
    pub project: Project,
    pub schedules: Vec<crate::service::schedules::ScheduleView>,
    pub templates: Vec<viberglass_domain::schedule::TaskTemplate>,
    /// Clankers allowed in the project (slugs), for the template form.
    pub clankers: Vec<String>,
}

impl SchedulesPage {
    pub fn next_run(&self, s: &crate::service::schedules::ScheduleView) -> String {
        s.upcoming.first().cloned().unwrap_or_else(|| "paused".to_owned())
    }
}

/// One schedule: its settings, next runs and executions.
#[derive(Template)]
#[template(path = "schedule.html")]
pub struct SchedulePage {
    pub ctx: Ctx,
    pub perm: Perm,
    pub project: Project,
    pub view: crate::service::schedules::ScheduleView,
    pub templates: Vec<viberglass_domain::schedule::TaskTemplate>,
    pub executions: Vec<crate::service::schedules::ExecutionView>,
}

impl SchedulePage {
    pub fn job_status(&self, e: &crate::service::schedules::ExecutionView) -> String {
        e.job.as_ref().map_or_else(String::new, |j| j.status.to_string())
    }
}
