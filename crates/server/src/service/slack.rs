//! Slack: the app's settings and Test connection, the one request URL
//! (slash commands, interactivity and events), what those requests do once
//! acknowledged (file a ticket, approve, request a revision), and binding
//! threads to tickets by hand.
//!
//! A request is verified (signature, five-minute timestamp, never seen
//! before), kept in the inbox when it asks for work, and answered at once;
//! the work happens in `crate::slack::slack_loop`, so an acknowledged request
//! survives a crash. Two things cannot wait for the loop: opening a form
//! (Slack's trigger lives three seconds) happens right after the answer, and
//! a form's field errors go back in the answer itself.

use axum::http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use viberglass_domain::slack::{NewSlackSettings, escape, is_approval, mentions, parse_thread, strip_mentions};
use viberglass_domain::{
    Phase, Project, ProjectRole, SlackSettings, SlackSettingsInput, SlackThread, Ticket, TicketId, TicketInput, User,
};
use viberglass_integrations::slack::{self as wire, Client, Interaction, Request, SlackError};
use viberglass_store::{InboxItem, NewSlackPost, NewSlackThread, StoreError};

use super::runs::{RunRequest, Trigger, start_run};
use super::workflow::{Continue, approve_and_continue, request_revision, role_in};
use super::{ServiceError, ServiceResult};
use crate::AppState;
use crate::identity::{Caller, Via, audit};

/// The modal `/viberator` opens.
pub const FILE_CALLBACK: &str = "vg_file";
/// The modal Request changes opens.
pub const REVISE_CALLBACK: &str = "vg_revise";
pub const APPROVE_ACTION: &str = "vg_approve";
pub const REVISE_ACTION: &str = "vg_revise";

/// The answer to a request at the request URL.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// JSON to answer with; `None` for an empty 200 (what Slack wants for "done").
    pub body: Option<Value>,
}

fn answer(status: u16, body: Option<Value>) -> Answer {
    Answer { status, body }
}

fn refused(status: u16, message: impl Into<String>) -> Answer {
    answer(status, Some(json!({"ok": false, "error": message.into()})))
}

/// The settings, or why Slack is not usable.
async fn settings(state: &AppState) -> ServiceResult<SlackSettings> {
    state.store.get_slack_settings().await?.ok_or_else(|| {
        ServiceError::unprocessable(
            "slack_not_configured",
            "Slack is not set up: an administrator saves the app's signing secret and bot token on the Slack page",
        )
    })
}

/// A Web API client with the bot token.
pub async fn client(state: &AppState, settings: &SlackSettings) -> Result<Client, String> {
    let token =
        crate::vault::resolve(state, &settings.bot_token_secret, "the Slack bot token").await.map_err(|f| f.message)?;
    Ok(Client::new(state.slack_http.clone(), &settings.api_url, &token))
}

/// Saves the app's settings (an administrator), then runs Test connection.
pub async fn save_settings(
    state: &AppState,
    caller: &Caller,
    input: SlackSettingsInput,
) -> ServiceResult<SlackSettings> {
    let new = NewSlackSettings::parse(input)?;
    for (field, name) in [("signing_secret", &new.signing_secret), ("bot_token_secret", &new.bot_token_secret)] {
        if state.store.get_secret_by_name(name).await.is_err() {
            return Err(ServiceError::Unmet {
                code: "unknown_reference",
                errors: viberglass_domain::ValidationErrors::single(
                    field,
                    format!("there is no secret {name}: declare it on the Secrets page first"),
                ),
            });
        }
        let users = state.store.secret_users(name).await?;
        if !users.clankers.is_empty() {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "{name} is given to clanker(s) {}: the Slack app's secrets never go to a worker (an agent could \
                     forge Slack requests with them); store them under names of their own",
                    users.clankers.join(", ")
                ),
            ));
        }
    }
    state.store.put_slack_settings(&new).await?;
    audit(
        state,
        Some(caller),
        "slack_configured",
        "slack",
        None,
        None,
        json!({"signing_secret": new.signing_secret, "bot_token_secret": new.bot_token_secret, "api_url": new.api_url}),
    )
    .await;
    test_connection(state).await
}

/// Removes the settings: the request URL refuses everything until they are saved again.
pub async fn remove_settings(state: &AppState, caller: &Caller) -> ServiceResult<()> {
    if !state.store.delete_slack_settings().await? {
        return Err(ServiceError::NotFound("Slack is not set up".into()));
    }
    audit(state, Some(caller), "slack_removed", "slack", None, None, json!({})).await;
    Ok(())
}

/// Test connection: `auth.test` with the bot token; records who the bot is, or why it failed.
pub async fn test_connection(state: &AppState) -> ServiceResult<SlackSettings> {
    let settings = settings(state).await?;
    let outcome = match client(state, &settings).await {
        Ok(client) => client.auth_test().await.map_err(|e| e.to_string()),
        Err(why) => Err(why),
    };
    let stored = match &outcome {
        Ok(me) => state.store.record_slack_test(Ok((&me.team_id, &me.team, &me.user_id))).await?,
        Err(why) => {
            tracing::warn!(error = %why, "Slack Test connection failed");
            state.store.record_slack_test(Err(why)).await?
        }
    };
    stored.ok_or_else(|| ServiceError::NotFound("Slack is not set up".into()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The signing secret, read from its backend at most once a minute (a flood of requests costs no SSM calls).
async fn signing_secret(state: &AppState, settings: &SlackSettings) -> Result<String, viberglass_domain::Failure> {
    let cached = state.slack_secret.lock().ok().and_then(|c| c.clone());
    if let Some((name, value, at)) = cached
        && name == settings.signing_secret
        && at.elapsed() < std::time::Duration::from_secs(60)
    {
        return Ok(value);
    }
    let value = crate::vault::resolve(state, &settings.signing_secret, "the Slack signing secret").await?;
    if let Ok(mut cache) = state.slack_secret.lock() {
        *cache = Some((settings.signing_secret.clone(), value.clone(), std::time::Instant::now()));
    }
    Ok(value)
}

/// Handles a request at the request URL: verified, kept or acted on, answered.
pub async fn receive(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Answer {
    let settings = match state.store.get_slack_settings().await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return refused(
                404,
                "Slack is not set up on this Viberglass: an administrator saves the Slack settings first",
            );
        }
        Err(e) => {
            tracing::error!(error = %crate::error::error_chain(&e), "Slack request: store error");
            return refused(503, "the database is unavailable: Slack will retry");
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (timestamp, signature) = (header(headers, wire::TIMESTAMP_HEADER), header(headers, wire::SIGNATURE_HEADER));
    // The cheap checks before the secret: a request without a fresh timestamp and a well-formed signature
    // costs no backend call.
    let mac = match wire::precheck(timestamp, signature, now) {
        Ok(mac) => mac,
        Err(why) => {
            tracing::warn!(reason = %why, "Slack request refused");
            return refused(401, why.to_string());
        }
    };
    let secret = match signing_secret(state, &settings).await {
        Ok(s) => s,
        Err(f) => {
            tracing::error!(error = %f.message, "Slack request refused: the signing secret cannot be read");
            return refused(503, "the Slack signing secret cannot be read: see the server log");
        }
    };
    if let Err(why) = wire::verify(&secret, timestamp, signature, body, now) {
        tracing::warn!(reason = %why, "Slack request refused");
        return refused(401, why.to_string());
    }
    // Over the signature's bytes, so another spelling of the same hex is the same request.
    let digest = hex::encode(Sha256::digest(&mac));
    match state.store.see_slack_signature(&digest).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("Slack request refused: its signature was seen before (a replay)");
            return refused(401, "this request was received before: a replay is refused");
        }
        Err(e) => {
            tracing::error!(error = %crate::error::error_chain(&e), "Slack request: store error");
            return refused(503, "the database is unavailable: Slack will retry");
        }
    }
    let request = match wire::parse(header(headers, "content-type").unwrap_or_default(), body) {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(reason = %why, "Slack request could not be read");
            return refused(400, why);
        }
    };
    match handle(state, &settings, request).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "Slack request failed");
            refused(503, "the request could not be kept: Slack will retry")
        }
    }
}

async fn keep(state: &AppState, dedupe: &str, kind: &str, payload: Value) -> Result<Answer, String> {
    let new = state.store.enqueue_slack(dedupe, kind, &payload).await.map_err(|e| crate::error::error_chain(&e))?;
    if new {
        state.slack_wake.notify_one();
    }
    Ok(answer(200, None))
}

async fn handle(state: &AppState, settings: &SlackSettings, request: Request) -> Result<Answer, String> {
    match request {
        Request::UrlVerification { challenge } => Ok(answer(200, Some(json!({"challenge": challenge})))),
        Request::Ignored(why) => {
            tracing::debug!(reason = %why, "Slack request ignored");
            Ok(answer(200, None))
        }
        Request::Command(command)
            if settings.team_id.as_deref().is_some_and(|t| !command.team_id.is_empty() && t != command.team_id) =>
        {
            tracing::warn!(team = %command.team_id, "a slash command from another Slack workspace refused");
            Ok(refused(403, "this Viberglass serves another Slack workspace"))
        }
        Request::Command(command) => {
            // The form must open within Slack's three seconds: right after the answer, not through the loop.
            let (state, settings) = (state.clone(), settings.clone());
            tokio::spawn(async move { open_file_form(&state, &settings, command).await });
            Ok(answer(200, None))
        }
        Request::Interaction(Interaction::ViewSubmission {
            user_id,
            view_id,
            callback_id,
            private_metadata,
            values,
        }) => {
            let meta: Value = serde_json::from_str(&private_metadata).unwrap_or(Value::Null);
            match callback_id.as_str() {
                FILE_CALLBACK => match check_file_form(state, &values).await {
                    Err(errors) => Ok(answer(200, Some(json!({"response_action": "errors", "errors": errors})))),
                    Ok(()) => {
                        let payload = json!({"user": user_id, "channel": meta["channel"], "values": values});
                        keep(state, &format!("view:{view_id}"), "file", payload).await
                    }
                },
                REVISE_CALLBACK => {
                    let feedback = values.get("feedback").map(|f| f.trim()).unwrap_or_default();
                    if feedback.is_empty() {
                        let errors = json!({"feedback": "Say what to change."});
                        return Ok(answer(200, Some(json!({"response_action": "errors", "errors": errors}))));
                    }
                    let payload = json!({"user": user_id, "channel": meta["channel"], "thread_ts": meta["thread_ts"],
                        "ticket": meta["ticket"], "phase": meta["phase"], "feedback": feedback});
                    keep(state, &format!("view:{view_id}"), "revise", payload).await
                }
                other => {
                    tracing::debug!(callback = other, "Slack view of another app ignored");
                    Ok(answer(200, None))
                }
            }
        }
        Request::Interaction(Interaction::BlockAction {
            user_id,
            trigger_id,
            action_id,
            value,
            channel_id,
            message_ts,
            thread_ts,
        }) => match action_id.as_str() {
            APPROVE_ACTION => {
                let payload = json!({"user": user_id, "channel": channel_id, "thread_ts": thread_ts.or(message_ts),
                    "button": value});
                keep(state, &format!("action:{trigger_id}"), "approve", payload).await
            }
            REVISE_ACTION => {
                let (state, settings) = (state.clone(), settings.clone());
                let thread = thread_ts.or(message_ts);
                tokio::spawn(async move {
                    open_revise_form(&state, &settings, &trigger_id, &user_id, channel_id, thread, &value).await
                });
                Ok(answer(200, None))
            }
            _ => Ok(answer(200, None)),
        },
        Request::Interaction(Interaction::Other(kind)) => {
            tracing::debug!(kind, "Slack interaction ignored");
            Ok(answer(200, None))
        }
        Request::Message(m) => {
            let own = m.bot_id.is_some() || m.user.is_none() || m.user == settings.bot_user_id;
            let (Some(thread_ts), None, false) = (&m.thread_ts, &m.subtype, own) else { return Ok(answer(200, None)) };
            if thread_ts == &m.ts {
                return Ok(answer(200, None));
            }
            // Only an approval or a mention of the app acts: other talk in the thread is left alone, unread.
            let mention = settings.bot_user_id.as_deref().is_some_and(|bot| mentions(&m.text, bot));
            if !is_approval(&m.text) && !mention {
                return Ok(answer(200, None));
            }
            let bound = state.store.slack_thread_at(&m.channel, thread_ts).await.map_err(|e| e.to_string())?;
            let Some(bound) = bound else { return Ok(answer(200, None)) };
            // The document a reply answers is the one current when it arrived: a reply handled late never
            // approves a revision nobody had seen.
            let ticket = state.store.get_ticket(bound.ticket_id).await.map_err(|e| e.to_string())?;
            let document = match ticket.phase.document_name() {
                Some(_) => state.store.get_document(ticket.id, ticket.phase).await.map_err(|e| e.to_string())?,
                None => None,
            };
            // `message` and `app_mention` both arrive for a mention: the message's own ts keeps it once.
            let payload = json!({"user": m.user, "channel": m.channel, "thread_ts": thread_ts, "ts": m.ts,
                "text": m.text, "phase": document.as_ref().map(|d| d.phase),
                "revision": document.as_ref().map(|d| d.revision)});
            keep(state, &format!("msg:{}:{}", m.channel, m.ts), "reply", payload).await
        }
    }
}

/// The Viberglass user a Slack user is, by e-mail; `Err` is the refusal to show them.
async fn slack_user(state: &AppState, client: &Client, slack_user: &str) -> Result<Result<User, String>, SlackError> {
    let person = client.user_info(slack_user).await?;
    let team = state.store.get_slack_settings().await.ok().flatten().and_then(|s| s.team_id);
    if let Some(why) = person.refusal(team.as_deref()) {
        return Ok(Err(format!("Viberglass acts only for full members of its Slack workspace: {why}.")));
    }
    let Some(email) = person.email else {
        return Ok(Err("Slack does not share your e-mail address with Viberglass, so it cannot tell who you are \
             (the app needs the users:read.email scope, and your profile an e-mail)."
            .into()));
    };
    let email = email.trim().to_lowercase();
    let found = state.store.user_for_login(&email).await.ok().flatten().map(|(u, _)| u);
    match found {
        Some(user) if user.disabled_at.is_none() => Ok(Ok(user)),
        // Someone Viberglass does not know (or whose account is off) learns nothing about its accounts.
        _ => Ok(Err("Viberglass has no user with your Slack e-mail: ask your Viberglass administrator to add you \
             with the address your Slack profile shows."
            .into())),
    }
}

/// The administrators, for "ask …".
async fn admins(state: &AppState) -> String {
    let users = state.store.list_users().await.unwrap_or_default();
    let names: Vec<String> =
        users.into_iter().filter(|u| u.is_admin && u.disabled_at.is_none()).map(|u| u.email).take(5).collect();
    if names.is_empty() { "an administrator".into() } else { names.join(", ") }
}

/// Who can grant a role in the project: its maintainers, else the administrators.
async fn granters(state: &AppState, project: &Project) -> String {
    let members = state.store.list_members(project.id).await.unwrap_or_default();
    let maintainers: Vec<String> = members
        .into_iter()
        .filter(|(u, r)| *r == ProjectRole::Maintainer && u.disabled_at.is_none())
        .map(|(u, _)| u.email)
        .take(5)
        .collect();
    if maintainers.is_empty() {
        format!("an administrator ({})", admins(state).await)
    } else {
        format!("a maintainer of {} ({}) or an administrator", project.name, maintainers.join(", "))
    }
}

fn caller(user: User) -> Caller {
    Caller { user: Some(user), via: Via::Slack }
}

/// Queues an ephemeral answer to `user` (seen only by them), under `key` (once).
pub async fn tell(state: &AppState, key: &str, channel: &str, user: &str, thread_ts: Option<&str>, text: &str) {
    if channel.is_empty() || user.is_empty() {
        return;
    }
    let post = NewSlackPost {
        key: format!("ephemeral:{key}"),
        thread_id: None,
        is_root: false,
        channel: channel.to_owned(),
        method: "ephemeral",
        body: json!({"user": user, "thread_ts": thread_ts, "text": text}),
    };
    match state.store.upsert_slack_post(&post).await {
        Ok(_) => state.slack_wake.notify_one(),
        Err(e) => tracing::error!(error = %crate::error::error_chain(&e), "could not queue a Slack answer"),
    }
}

/// Projects a user may file in (a member or more; every project for an administrator).
async fn fileable_projects(state: &AppState, user: &User) -> Vec<Project> {
    let filter =
        viberglass_store::ProjectFilter { member_of: (!user.is_admin).then_some(user.id), ..Default::default() };
    let page = viberglass_domain::PageRequest { limit: 100, after: None };
    let projects = state.store.list_projects(&filter, page).await.map(|p| p.items).unwrap_or_default();
    let mut out = Vec::new();
    for p in projects {
        let role = if user.is_admin {
            Some(ProjectRole::Maintainer)
        } else {
            state.store.member_role(p.id, user.id).await.ok().flatten()
        };
        if role.is_some_and(|r| r.includes(ProjectRole::Member)) {
            out.push(p);
        }
    }
    out
}

async fn open_file_form(state: &AppState, settings: &SlackSettings, command: wire::Command) {
    let key = format!("command:{}", command.trigger_id);
    let client = match client(state, settings).await {
        Ok(c) => c,
        Err(why) => {
            tracing::error!(error = %why, "/viberator: no bot token");
            return;
        }
    };
    let user = match slack_user(state, &client, &command.user_id).await {
        Ok(Ok(user)) => user,
        Ok(Err(refusal)) => {
            tell(state, &key, &command.channel_id, &command.user_id, None, &refusal).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "/viberator: users.info failed");
            tell(
                state,
                &key,
                &command.channel_id,
                &command.user_id,
                None,
                &format!("Viberglass could not look you up in Slack: {e}"),
            )
            .await;
            return;
        }
    };
    let projects = fileable_projects(state, &user).await;
    if projects.is_empty() {
        let text = format!(
            "You ({}) are not a member of any Viberglass project, so you cannot file tickets: ask an administrator ({}) or a project's maintainer to add you.",
            user.email,
            admins(state).await
        );
        tell(state, &key, &command.channel_id, &command.user_id, None, &text).await;
        return;
    }
    let clankers = state
        .store
        .list_clankers(viberglass_domain::PageRequest { limit: 100, after: None })
        .await
        .map(|p| p.items)
        .unwrap_or_default();
    let clankers: Vec<(String, String)> = clankers
        .into_iter()
        .filter(|c| c.status == viberglass_domain::ClankerStatus::Active)
        .map(|c| (c.slug.as_str().to_owned(), format!("{} ({})", c.name, c.agent)))
        .collect();
    let project_options: Vec<(String, String)> =
        projects.iter().map(|p| (p.slug.as_str().to_owned(), p.name.clone())).collect();
    let phases: Vec<(String, String)> =
        [("research", "Research"), ("planning", "Planning"), ("execution", "Execution")]
            .iter()
            .map(|(v, l)| ((*v).to_owned(), (*l).to_owned()))
            .collect();
    let single = (project_options.len() == 1).then(|| project_options[0].0.clone());
    let single_clanker = (clankers.len() == 1).then(|| clankers[0].0.clone());
    let mut blocks = vec![wire::select_input("project", "Project", &project_options, single.as_deref())];
    if clankers.is_empty() {
        blocks.push(wire::section(
            "No clanker is started yet: an administrator starts one on the Clankers page before runs can begin.",
        ));
    } else {
        blocks.push(wire::select_input("clanker", "Clanker", &clankers, single_clanker.as_deref()));
    }
    blocks.push(wire::select_input("phase", "Start with", &phases, Some("research")));
    blocks.push(wire::text_input("title", "Title", command.text.trim(), false, false));
    blocks.push(wire::text_input("message", "What should change, and why?", "", true, true));
    let meta = json!({"channel": command.channel_id}).to_string();
    let view = wire::modal(FILE_CALLBACK, "New ticket", "File ticket", &meta, blocks);
    if let Err(e) = client.open_view(&command.trigger_id, &view).await {
        tracing::warn!(error = %e, "/viberator: views.open failed");
        tell(state, &key, &command.channel_id, &command.user_id, None, &format!("The form could not be opened: {e}"))
            .await;
    }
}

async fn open_revise_form(
    state: &AppState,
    settings: &SlackSettings,
    trigger: &str,
    user: &str,
    channel: Option<String>,
    thread_ts: Option<String>,
    button: &str,
) {
    let Some((ticket, phase, _)) = parse_button(button) else { return };
    let Ok(client) = client(state, settings).await else { return };
    let meta = json!({"channel": channel, "thread_ts": thread_ts, "ticket": ticket, "phase": phase}).to_string();
    let blocks = vec![wire::text_input("feedback", "What should change?", "", true, false)];
    let view = wire::modal(REVISE_CALLBACK, "Request changes", "Request changes", &meta, blocks);
    if let Err(e) = client.open_view(trigger, &view).await {
        tracing::warn!(error = %e, "Request changes: views.open failed");
        tell(
            state,
            &format!("revise:{trigger}"),
            channel.as_deref().unwrap_or_default(),
            user,
            thread_ts.as_deref(),
            &format!("The form could not be opened: {e}"),
        )
        .await;
    }
}

/// A document button's value: `ticket:phase:revision`.
pub fn button_value(ticket: TicketId, phase: Phase, revision: i64) -> String {
    format!("{ticket}:{phase}:{revision}")
}

fn parse_button(value: &str) -> Option<(TicketId, Phase, i64)> {
    let mut parts = value.split(':');
    let ticket = parts.next()?.parse().ok()?;
    let phase = parts.next()?.parse().ok()?;
    let revision = parts.next()?.parse().ok()?;
    Some((ticket, phase, revision))
}

/// The form's field errors, by block id (what Slack shows under each field).
async fn check_file_form(
    state: &AppState,
    values: &std::collections::BTreeMap<String, String>,
) -> Result<(), serde_json::Map<String, Value>> {
    let mut errors = serde_json::Map::new();
    let get = |k: &str| values.get(k).map(|v| v.trim()).unwrap_or_default();
    let title = get("title");
    if title.is_empty() {
        errors.insert("title".into(), json!("Give the ticket a title."));
    } else if title.chars().count() > 200 {
        errors.insert("title".into(), json!("Keep the title under 200 characters."));
    }
    if get("phase").parse::<Phase>().is_err() {
        errors.insert("phase".into(), json!("Choose research, planning or execution."));
    }
    match super::projects::find_project(&state.store, get("project")).await {
        Ok(project) => {
            if project.archived_at.is_some() {
                errors.insert("project".into(), json!("The project is archived."));
            } else if !values.contains_key("clanker") {
                errors.insert("project".into(), json!("No clanker is started: start one on the Clankers page."));
            } else if let Err(e) = super::runs::usable_clanker(state, &project, get("clanker")).await {
                errors.insert("clanker".into(), json!(wire::cut(&e.to_string(), 150)));
            }
        }
        Err(_) => {
            errors.insert("project".into(), json!("Choose a project."));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// What came of an inbox item.
pub enum Outcome {
    /// Done; what it did.
    Done(String),
    /// Refused or impossible; the person was told why.
    Refused(String),
    /// Try again later (Slack or the database was unavailable).
    Retry(String),
}

fn text(payload: &Value, key: &str) -> String {
    payload[key].as_str().unwrap_or_default().to_owned()
}

/// Acts on something Slack sent.
pub async fn process(state: &AppState, item: &InboxItem) -> Outcome {
    let settings = match settings(state).await {
        Ok(s) => s,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let client = match client(state, &settings).await {
        Ok(c) => c,
        Err(why) => return Outcome::Retry(why),
    };
    let p = &item.payload;
    let (slack_id, channel) = (text(p, "user"), text(p, "channel"));
    let thread_ts = p["thread_ts"].as_str().map(str::to_owned);
    let key = item.id.to_string();
    let user = match slack_user(state, &client, &slack_id).await {
        Ok(Ok(user)) => user,
        Ok(Err(refusal)) => {
            tell(state, &key, &channel, &slack_id, thread_ts.as_deref(), &refusal).await;
            return Outcome::Refused(refusal);
        }
        Err(e) if e.retryable() => return Outcome::Retry(format!("users.info: {e}")),
        Err(e) => return Outcome::Refused(format!("users.info: {e}")),
    };
    let caller = caller(user);
    let result = match item.kind.as_str() {
        "file" => file(state, &caller, item).await,
        "approve" => match parse_button(&text(p, "button")) {
            Some((ticket, phase, revision)) => match live_here(state, ticket, p).await {
                Ok(()) => approve(state, &caller, ticket, phase, Some(revision)).await,
                Err(e) => Err(e),
            },
            None => Err(ServiceError::invalid("button", "not a document button")),
        },
        "revise" => match (text(p, "ticket").parse::<TicketId>(), text(p, "phase").parse::<Phase>()) {
            (Ok(ticket), Ok(phase)) => match live_here(state, ticket, p).await {
                Ok(()) => revise(state, &caller, ticket, phase, &text(p, "feedback")).await,
                Err(e) => Err(e),
            },
            _ => Err(ServiceError::invalid("ticket", "the form names no ticket")),
        },
        "reply" => reply(state, &caller, &settings, p).await,
        other => Err(ServiceError::invalid("kind", format!("unknown Slack request kind {other}"))),
    };
    match result {
        Ok(done) => Outcome::Done(done),
        Err(ServiceError::Store(e)) if !matches!(e, StoreError::NotFound { .. }) => {
            Outcome::Retry(crate::error::error_chain(&e))
        }
        Err(refusal) => {
            let message = refusal_text(state, &caller, &refusal, p).await;
            tell(state, &key, &channel, &slack_id, thread_ts.as_deref(), &message).await;
            Outcome::Refused(message)
        }
    }
}

/// A refusal in words for Slack: a missing role names who can grant it.
async fn refusal_text(state: &AppState, caller: &Caller, refusal: &ServiceError, payload: &Value) -> String {
    if let ServiceError::Forbidden { message, .. } = refusal {
        let project = match payload["values"]["project"].as_str() {
            Some(key) => super::projects::find_project(&state.store, key).await.ok(),
            None => match thread_ticket(state, payload).await {
                Some(t) => state.store.get_project(t.project_id).await.ok(),
                None => None,
            },
        };
        if let Some(project) = project {
            return format!(
                "You ({}) cannot do that in {}: {message}. Who can grant it: {}.",
                caller.label(),
                project.name,
                granters(state, &project).await
            );
        }
    }
    format!("Viberglass could not do that: {refusal}")
}

async fn thread_ticket(state: &AppState, payload: &Value) -> Option<Ticket> {
    if let Some(id) = payload["ticket"].as_str().and_then(|t| t.parse::<TicketId>().ok()) {
        return state.store.get_ticket(id).await.ok();
    }
    if let Some((ticket, _, _)) = payload["button"].as_str().and_then(parse_button) {
        return state.store.get_ticket(ticket).await.ok();
    }
    let (channel, ts) = (payload["channel"].as_str()?, payload["thread_ts"].as_str()?);
    let thread = state.store.slack_thread_at(channel, ts).await.ok().flatten()?;
    state.store.get_ticket(thread.ticket_id).await.ok()
}

/// A button or form acts only from the thread that follows its ticket now (an unlinked thread's old buttons
/// do nothing).
async fn live_here(state: &AppState, ticket: TicketId, payload: &Value) -> ServiceResult<()> {
    let live = state.store.live_slack_thread(ticket).await?;
    let here = (payload["channel"].as_str(), payload["thread_ts"].as_str());
    match live {
        Some(t) if Some(t.channel.as_str()) == here.0 && t.thread_ts.as_deref() == here.1 => Ok(()),
        _ => Err(ServiceError::conflict(
            "thread_unlinked",
            "this thread no longer follows the ticket: act from the ticket's current thread or its page",
        )),
    }
}

fn forbidden(what: &str, role: &str) -> ServiceError {
    ServiceError::forbidden("forbidden", format!("{what} needs the {role} role in the project"))
}

async fn file(state: &AppState, caller: &Caller, item: &InboxItem) -> ServiceResult<String> {
    let p = &item.payload;
    let values = &p["values"];
    let get = |k: &str| values[k].as_str().unwrap_or_default().trim().to_owned();
    let project = super::projects::find_project(&state.store, &get("project")).await?;
    if !role_in(state, caller, project.id).await?.is_some_and(|r| r.includes(ProjectRole::Member)) {
        return Err(forbidden("Filing a ticket", "member"));
    }
    let phase: Phase = get("phase").parse().map_err(|_| ServiceError::invalid("phase", "not a phase"))?;
    let clanker = get("clanker");
    // Handled before (a crash after filing): the ticket exists, only its run may be missing.
    let (ticket, thread) = match state.store.slack_thread_by_origin(item.id).await? {
        Some(thread) => (state.store.get_ticket(thread.ticket_id).await?, thread),
        None => {
            let input = TicketInput {
                title: Some(get("title")),
                description: Some(get("message")),
                source: Some("slack".into()),
                ..Default::default()
            };
            let ticket = super::tickets::file_ticket(state, Some(caller), &project, input).await?;
            let link = ticket_link(state, ticket.id);
            let who = format!("<@{}>", text(p, "user"));
            let root = json!({"text": format!("New ticket: {}", escape(&ticket.title)), "blocks": [
                wire::section(&format!("🎫 *<{link}|{}>*\nFiled by {who} in *{}*, starting with {phase}.",
                    escape(&ticket.title), escape(&project.name))),
                wire::context("Reply `lgtm`, `approve`, `looks good` or `ship it` to approve the current document and \
                    continue; mention @Viberglass with what to change to ask for a revision."),
            ]});
            let new = NewSlackThread {
                ticket_id: ticket.id,
                channel: text(p, "channel"),
                thread_ts: None,
                clanker: Some(clanker.clone()),
                origin: Some(item.id),
                linked_by: caller.user_id(),
                linked_via: "slack".into(),
            };
            let thread = state.store.bind_slack_thread(&new, Some(root)).await?;
            state.slack_wake.notify_one();
            (ticket, thread)
        }
    };
    if crate::service::workflow::last_clanker(state, ticket.id).await?.is_none() {
        let run = RunRequest { ticket: &ticket, phase, clanker: &clanker, trigger: Trigger::Run };
        if let Err(refusal) = start_run(state, Some(caller), run).await {
            if let ServiceError::Store(e) = &refusal
                && !matches!(e, StoreError::NotFound { .. })
            {
                return Err(refusal);
            }
            let post = NewSlackPost {
                key: format!("{}:refused:{}", thread.id, item.id),
                thread_id: Some(thread.id),
                is_root: false,
                channel: thread.channel.clone(),
                method: "message",
                body: json!({"text": format!("⚠️ The ticket was filed, but its {phase} run could not start: {}", escape(&refusal.to_string()))}),
            };
            state.store.upsert_slack_post(&post).await?;
            return Ok(format!("filed ticket {}; its run could not start: {refusal}", ticket.id));
        }
    }
    Ok(format!("filed ticket {} and started its {phase} run", ticket.id))
}

async fn clanker_for(state: &AppState, ticket: &Ticket) -> ServiceResult<String> {
    if let Some(thread) = state.store.live_slack_thread(ticket.id).await?
        && let Some(c) = thread.clanker
    {
        return Ok(c);
    }
    crate::service::workflow::last_clanker(state, ticket.id).await?.ok_or_else(|| {
        ServiceError::unprocessable("no_clanker", "the ticket has never run: start its first run from the ticket page")
    })
}

async fn approve(
    state: &AppState,
    caller: &Caller,
    ticket: TicketId,
    phase: Phase,
    revision: Option<i64>,
) -> ServiceResult<String> {
    let ticket = state.store.get_ticket(ticket).await?;
    let clanker = clanker_for(state, &ticket).await?;
    let request = Continue { phase, clanker: &clanker, comment: "approved from Slack".into(), revision };
    let job = approve_and_continue(state, caller, &ticket, request).await?;
    Ok(format!("approved the {phase} document of ticket {} and queued job {}", ticket.id, job.id))
}

async fn revise(
    state: &AppState,
    caller: &Caller,
    ticket: TicketId,
    phase: Phase,
    feedback: &str,
) -> ServiceResult<String> {
    let ticket = state.store.get_ticket(ticket).await?;
    if !role_in(state, caller, ticket.project_id).await?.is_some_and(|r| r.includes(ProjectRole::Member)) {
        return Err(forbidden("Requesting a revision", "member"));
    }
    let clanker = clanker_for(state, &ticket).await?;
    let job = request_revision(state, caller, &ticket, phase, &clanker, feedback).await?;
    Ok(format!("requested a revision of the {phase} document of ticket {} (job {})", ticket.id, job.id))
}

/// A reply in a bound thread: an approval phrase approves the current document; a mention of the bot asks
/// for a revision with the reply as feedback; anything else is conversation.
async fn reply(state: &AppState, caller: &Caller, settings: &SlackSettings, p: &Value) -> ServiceResult<String> {
    let (channel, thread_ts, said) = (text(p, "channel"), text(p, "thread_ts"), text(p, "text"));
    let Some(thread) = state.store.slack_thread_at(&channel, &thread_ts).await? else {
        return Ok("the thread is no longer bound to a ticket".into());
    };
    let ticket = state.store.get_ticket(thread.ticket_id).await?;
    // The document current when the reply arrived.
    let seen = p["phase"].as_str().and_then(|ph| ph.parse::<Phase>().ok()).zip(p["revision"].as_i64());
    let document_phase = seen.map(|(phase, _)| phase);
    if is_approval(&said) {
        let Some((phase, revision)) = seen else {
            return Err(ServiceError::unprocessable(
                "no_document",
                format!("the ticket is in {}: there is no document to approve (review the pull request)", ticket.phase),
            ));
        };
        return approve(state, caller, ticket.id, phase, Some(revision)).await;
    }
    if settings.bot_user_id.as_deref().is_some_and(|bot| mentions(&said, bot)) {
        let feedback = strip_mentions(&said);
        let Some(phase) = document_phase else {
            return Err(ServiceError::unprocessable(
                "no_document",
                format!("the ticket is in {}: ask for changes on the pull request", ticket.phase),
            ));
        };
        if feedback.is_empty() {
            return Err(ServiceError::invalid("feedback", "say what to change after the mention"));
        }
        return revise(state, caller, ticket.id, phase, &feedback).await;
    }
    Ok("conversation: nothing to do".into())
}

/// The ticket's page.
pub fn ticket_link(state: &AppState, ticket: TicketId) -> String {
    format!("{}/tickets/{ticket}", state.engine.server_url.trim_end_matches('/'))
}

/// Binds a Slack thread to a ticket by hand (the thread's link, or CHANNEL/TS), replacing its thread: the
/// mirroring moves there, announced by a message in the new thread.
pub async fn link_thread(
    state: &AppState,
    caller: &Caller,
    ticket: &Ticket,
    thread: &str,
) -> ServiceResult<SlackThread> {
    settings(state).await?;
    let (channel, ts) = parse_thread(thread).map_err(|m| ServiceError::invalid("thread", m))?;
    let clanker = match state.store.live_slack_thread(ticket.id).await? {
        Some(t) => t.clanker,
        None => crate::service::workflow::last_clanker(state, ticket.id).await?,
    };
    let new = NewSlackThread {
        ticket_id: ticket.id,
        channel: channel.clone(),
        thread_ts: Some(ts.clone()),
        clanker,
        origin: None,
        linked_by: caller.user_id(),
        linked_via: caller.channel().into(),
    };
    let bound = state.store.bind_slack_thread(&new, None).await.map_err(|e| match e {
        StoreError::Conflict { field, .. } if field == "thread" => ServiceError::conflict(
            "thread_taken",
            "that thread already follows another ticket: unlink it there first, or start a new thread",
        ),
        other => other.into(),
    })?;
    let link = ticket_link(state, ticket.id);
    let post = NewSlackPost {
        key: format!("{}:linked", bound.id),
        thread_id: Some(bound.id),
        is_root: false,
        channel,
        method: "message",
        body: json!({"text": format!("🔗 This thread now follows the ticket <{link}|{}> (linked by {}). Its runs \
            show here; reply `lgtm` to approve its current document, or mention @Viberglass to ask for changes.",
            escape(&ticket.title), escape(&caller.label()))}),
    };
    state.store.upsert_slack_post(&post).await?;
    state.slack_wake.notify_one();
    audit(
        state,
        Some(caller),
        "slack_thread_linked",
        "ticket",
        Some(ticket.id.to_string()),
        Some(ticket.project_id),
        json!({"channel": bound.channel, "thread_ts": bound.thread_ts}),
    )
    .await;
    Ok(bound)
}

/// Unlinks the ticket's thread: nothing more is mirrored there, and its replies no longer act.
pub async fn unlink_thread(state: &AppState, caller: &Caller, ticket: &Ticket) -> ServiceResult<SlackThread> {
    let Some(old) = state.store.unlink_slack_thread(ticket.id, caller.user_id()).await? else {
        return Err(ServiceError::NotFound("the ticket has no Slack thread".into()));
    };
    audit(
        state,
        Some(caller),
        "slack_thread_unlinked",
        "ticket",
        Some(ticket.id.to_string()),
        Some(ticket.project_id),
        json!({"channel": old.channel, "thread_ts": old.thread_ts}),
    )
    .await;
    Ok(old)
}
