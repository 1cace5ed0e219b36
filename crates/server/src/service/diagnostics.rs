//! The diagnostics bundle ("when all else fails" as one download): a zip of
//! everything the troubleshooting guide asks for about a job, a ticket or a
//! time window. The job and ticket rows, the jobs' logs, approvals and the
//! override, the clanker with its status message, the webhook deliveries that
//! went wrong in the window, the doctor's report, the configuration (secrets
//! redacted) and the versions. Secret values never go in: only settings the
//! server declares are listed, secret ones as set or not set, and passwords in
//! URLs are cut out.

use std::io::Write;

use serde::Serialize;
use time::OffsetDateTime;
use viberglass_domain::{Job, JobId, PageRequest, TicketId};
use viberglass_store::JobFilter;

use super::{ServiceError, ServiceResult};
use crate::AppState;

/// What a bundle is about.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Job(JobId),
    Ticket(TicketId),
    Window { since: OffsetDateTime, until: OffsetDateTime },
}

/// At most this many jobs (with their logs), deliveries and events per job.
const MAX_JOBS: u32 = 20;
const MAX_DELIVERIES: u32 = 200;
const MAX_EVENTS: u32 = 5000;
/// The most event text a bundle holds (the rest of a log is left out, and said so), and the most one event's
/// `data` may take before it is left out too: a bundle is built in memory.
const EVENT_BUDGET: usize = 32 << 20;
const MAX_EVENT_DATA: usize = 16 << 10;
/// How far around a job's or ticket's own times the deliveries are looked for.
const MARGIN: time::Duration = time::Duration::hours(1);

/// The bundle's file name and bytes.
pub async fn bundle(state: &AppState, scope: Scope) -> ServiceResult<(String, Vec<u8>)> {
    // One bundle at a time per process: each is built in memory.
    static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let Ok(_one_at_a_time) = BUILDING.try_lock() else {
        return Err(ServiceError::conflict(
            "bundle_in_progress",
            "another diagnostics bundle is being made on this server: try again in a moment",
        ));
    };
    let made_at = viberglass_store::now();
    let mut files: Vec<(String, serde_json::Value)> = Vec::new();
    let (name, jobs, window) = match scope {
        Scope::Job(id) => {
            let job = state.store.get_job(id).await?;
            if let Some(ticket) = job.ticket_id {
                add_ticket(state, ticket, &mut files).await?;
            }
            let window = (job.queued_at - MARGIN, job.finished_at.unwrap_or(made_at) + MARGIN);
            (format!("viberglass-job-{id}"), vec![job], window)
        }
        Scope::Ticket(id) => {
            let ticket = add_ticket(state, id, &mut files).await?;
            let filter = JobFilter { ticket_id: Some(id), ..JobFilter::default() };
            let jobs = state.store.list_jobs(&filter, PageRequest { limit: MAX_JOBS, after: None }).await?.items;
            let last = jobs.iter().filter_map(|j| j.finished_at).max().unwrap_or(made_at).max(ticket.updated_at);
            (format!("viberglass-ticket-{id}"), jobs, (ticket.created_at - MARGIN, last + MARGIN))
        }
        Scope::Window { since, until } => {
            if until <= since {
                return Err(ServiceError::unprocessable("empty_window", "`until` must be after `since`"));
            }
            let jobs = state.store.jobs_between(since, until, MAX_JOBS).await?;
            let stamp = |t: OffsetDateTime| t.unix_timestamp();
            (format!("viberglass-{}-{}", stamp(since), stamp(until)), jobs, (since, until))
        }
    };
    files.push(("jobs.json".into(), jobs_file(&jobs)?));
    let job_ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let mut budget = EVENT_BUDGET;
    for id in job_ids {
        let events = events_file(state, id, &mut budget).await?;
        files.push((format!("jobs/{id}/events.json"), events));
    }
    let mut ids: Vec<viberglass_domain::ClankerId> = jobs.iter().filter_map(|j| j.clanker_id).collect();
    ids.sort_by_key(|id| id.as_uuid());
    ids.dedup();
    let mut clankers = Vec::with_capacity(ids.len());
    for id in ids {
        if let Ok(found) = state.store.get_clanker(id).await {
            clankers.push(found);
        }
    }
    files.push(("clankers.json".into(), clankers_file(&clankers)?));
    let deliveries = state.store.troubled_deliveries(window.0, window.1, MAX_DELIVERIES).await?;
    files.push(("webhook-deliveries.json".into(), json(&deliveries)?));
    files.push(("doctor.json".into(), json(&super::doctor::run(state).await)?));
    files.push(("configuration.json".into(), configuration(state)));
    let schema = state.store.schema_status().await.map_err(viberglass_store::StoreError::Database)?;
    let manifest = serde_json::json!({
        "scope": describe(scope, &jobs),
        "made_at": rfc3339(made_at),
        "window": {"since": rfc3339(window.0), "until": rfc3339(window.1)},
        "versions": {
            "viberglass": env!("CARGO_PKG_VERSION"),
            "database": state.store.backend().as_str(),
            "schema_version": schema.applied,
            "schema_latest": schema.latest,
        },
        "files": files.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(),
        "not_included": "secret values (settings marked secret show only whether they are set); settings given in \
                         a configuration file or as flags (only the environment's are listed); the server's own log \
                         lines (attach them for the window: they carry the request and job ids)",
    });
    files.insert(0, ("manifest.json".into(), manifest));
    let root = name.clone();
    let bytes = tokio::task::spawn_blocking(move || write_zip(&root, &files).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|written| written)
        .map_err(|e| ServiceError::unprocessable("bundle_failed", format!("cannot write the bundle: {e}")))?;
    Ok((format!("{name}.zip"), bytes))
}

async fn add_ticket(
    state: &AppState,
    id: TicketId,
    files: &mut Vec<(String, serde_json::Value)>,
) -> ServiceResult<viberglass_domain::Ticket> {
    let ticket = state.store.get_ticket(id).await?;
    files.push(("ticket.json".into(), json(&ticket)?));
    files.push(("approvals.json".into(), json(&state.store.list_approvals(id).await?)?));
    Ok(ticket)
}

/// The jobs, each without its diff (private source code people do not send with an issue by accident; its size
/// says whether there was one).
fn jobs_file(jobs: &[Job]) -> ServiceResult<serde_json::Value> {
    let mut value = json(&jobs)?;
    for job in value.as_array_mut().into_iter().flatten() {
        if let Some(diff) = job.pointer_mut("/result/diff").filter(|d| d.is_string()) {
            let bytes = diff.as_str().map_or(0, str::len);
            *diff = serde_json::Value::String(format!("(left out: {bytes} bytes)"));
        }
    }
    Ok(value)
}

/// A job's log, within what is left of `budget`; an event's large `data` is left out, and so is the log's rest
/// once the budget is spent (each said so in place).
async fn events_file(state: &AppState, id: JobId, budget: &mut usize) -> ServiceResult<serde_json::Value> {
    let mut out = Vec::new();
    let mut after = 0;
    while out.len() < MAX_EVENTS as usize {
        let page = state.store.list_job_events(id, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let full = page.len() == 1000;
        for event in page {
            let mut value = json(&event)?;
            if let Some(data) = value.get_mut("data").filter(|d| !d.is_null()) {
                let size = data.to_string().len();
                if size > MAX_EVENT_DATA {
                    *data = serde_json::json!({"left_out": format!("{size} bytes")});
                }
            }
            let size = value.to_string().len();
            if size > *budget {
                out.push(serde_json::json!({"left_out": "the rest of this log: the bundle's size limit was reached"}));
                return Ok(serde_json::Value::Array(out));
            }
            *budget -= size;
            out.push(value);
        }
        if !full {
            break;
        }
    }
    Ok(serde_json::Value::Array(out))
}

/// The clankers, with their agent settings reduced to the names of what is set: a command or an address may carry
/// a token.
fn clankers_file(clankers: &[viberglass_domain::Clanker]) -> ServiceResult<serde_json::Value> {
    let mut value = json(&clankers)?;
    for clanker in value.as_array_mut().into_iter().flatten() {
        if let Some(settings) = clanker.get_mut("agent_settings") {
            let names: Vec<String> = settings.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
            *settings = serde_json::json!({"set": names, "values": "left out"});
        }
    }
    Ok(value)
}

fn describe(scope: Scope, jobs: &[Job]) -> serde_json::Value {
    match scope {
        Scope::Job(id) => serde_json::json!({"job": id}),
        Scope::Ticket(id) => serde_json::json!({"ticket": id, "jobs": jobs.len()}),
        Scope::Window { since, until } => {
            serde_json::json!({"since": rfc3339(since), "until": rfc3339(until), "jobs": jobs.len()})
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn json(value: &impl Serialize) -> ServiceResult<serde_json::Value> {
    serde_json::to_value(value)
        .map_err(|e| ServiceError::unprocessable("bundle_failed", format!("cannot write the bundle: {e}")))
}

/// Every declared setting as this server's environment gives it: secret ones as set or not, URLs without their
/// password, anything whose name says key, token, password or secret likewise.
fn configuration(state: &AppState) -> serde_json::Value {
    let settings: Vec<serde_json::Value> = crate::config::SETTINGS
        .iter()
        .map(|setting| {
            let value = (state.env)(setting.env);
            let name = setting.env.to_ascii_lowercase();
            let sensitive = setting.secret || ["key", "token", "password", "secret"].iter().any(|w| name.contains(w));
            let shown = match &value {
                None => serde_json::Value::Null,
                Some(_) if sensitive => serde_json::Value::String("(set, not shown)".into()),
                // Where the database is, never how to sign in to it (a password can sit in the query, too).
                Some(_) if setting.key == "database_url" => serde_json::Value::String(state.store.target().describe()),
                // Any other address without its user, password or query.
                Some(value) if value.contains("://") => {
                    let bare = crate::config::redact_url_password(value);
                    serde_json::Value::String(bare.split(['?', '#']).next().unwrap_or_default().to_owned())
                }
                Some(value) => serde_json::Value::String(value.clone()),
            };
            serde_json::json!({"key": setting.key, "env": setting.env, "value": shown, "default": setting.default})
        })
        .collect();
    serde_json::json!({"settings": settings})
}

fn write_zip(
    root: &str,
    files: &[(String, serde_json::Value)],
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let mut writer = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = ::zip::write::SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Deflated);
    for (name, value) in files {
        writer.start_file(format!("{root}/{name}"), options)?;
        writer.write_all(&serde_json::to_vec_pretty(value)?)?;
    }
    Ok(writer.finish()?.into_inner())
}
