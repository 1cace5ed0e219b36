//! Inbound webhooks: configurations (create, change, rotate the secret),
//! receiving a delivery (check, read, apply exactly once, answer fast), and
//! redelivering a stored one. Runs a delivery asks for are queued as
//! `ticket.run_requested` events in the delivery's own transaction and
//! started by the `source-runs` outbox consumer, never inline.

use axum::http::HeaderMap;
use serde_json::{Value, json};
use time::OffsetDateTime;
use viberglass_domain::{
    Delivery, DeliveryId, DeliveryStatus, NewTicket, NewWebhookConfig, Phase, Project, Severity, Ticket,
    TicketCategory, TicketInput, TicketPatch, WebhookConfig, WebhookConfigId, WebhookConfigInput, WebhookConfigPatch,
    WebhookProvider, webhook::MAX_PAYLOAD_BYTES,
};
use viberglass_integrations::inbound::{self, Action, Change, CommentEvent, Inbound, IssueEvent};
use viberglass_store::{
    Applied, DeliveryChange, NewDelivery, RequestedRun, SealedValue, StoreError, StoredWebhookConfig,
};

use super::{ServiceError, ServiceResult};
use crate::AppState;
use crate::identity::{Caller, audit};

/// What the server answers the sender.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// A configuration as created: the secret is shown this once when it was generated.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CreatedConfig {
    #[serde(flatten)]
    pub config: WebhookConfig,
    /// The generated secret, shown only in this answer: paste it into the sender's webhook settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn secret_name(id: WebhookConfigId) -> String {
    format!("webhook:{id}")
}

fn seal(state: &AppState, id: WebhookConfigId, value: &str) -> SealedValue {
    state.vault.seal(&secret_name(id), value)
}

fn generate_secret() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

pub async fn create_config(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    input: WebhookConfigInput,
) -> ServiceResult<CreatedConfig> {
    admin_for_feedback(caller, &input)?;
    let new = NewWebhookConfig::parse(project.id, input, viberglass_store::now())?;
    let (secret, shown) = match new.secret {
        Some(given) => (given, None),
        None => {
            let generated = generate_secret();
            (generated.clone(), Some(generated))
        }
    };
    let sealed = seal(state, new.config.id, &secret);
    let stored = state.store.create_webhook_config(&new.config, &sealed).await?;
    audit(
        state,
        Some(caller),
        "webhook_created",
        "webhook",
        Some(stored.config.id.to_string()),
        Some(project.id),
        json!({"provider": stored.config.provider, "name": stored.config.name}),
    )
    .await;
    Ok(CreatedConfig { config: stored.config, secret: shown })
}

/// Which secret feedback sends and where are an administrator's choice: a project maintainer could otherwise
/// send any secret in the vault to an address of theirs.
fn admin_for_feedback(caller: &Caller, input: &WebhookConfigInput) -> ServiceResult<()> {
    // Clearing them counts too: it sends the chosen secret to the fallback address, or the SCM credential to the
    // chosen one.
    let sets = |v: &Option<Option<String>>| v.is_some();
    if (sets(&input.feedback_secret) || sets(&input.feedback_api_url)) && !caller.is_admin() {
        return Err(ServiceError::forbidden(
            "admin_only",
            "only an administrator may choose the feedback secret and API URL (they decide which secret is sent \
             where): ask one to set them",
        ));
    }
    Ok(())
}

/// The configuration `id` of `project` (a configuration of another project is not found).
pub async fn find_config(state: &AppState, project: &Project, id: &str) -> ServiceResult<StoredWebhookConfig> {
    let parsed: WebhookConfigId =
        id.parse().map_err(|_| ServiceError::invalid("webhook", "is not a webhook configuration id"))?;
    let stored = state.store.get_webhook_config(parsed).await?;
    if stored.config.project_id != project.id {
        return Err(StoreError::NotFound { entity: "webhook", id: id.to_owned() }.into());
    }
    Ok(stored)
}

/// Changes a configuration; a `secret` in the input rotates it (`"rotate"` semantics: give the new value, or
/// ask for a generated one with [`rotate_secret`]).
pub async fn update_config(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    id: &str,
    input: WebhookConfigInput,
) -> ServiceResult<WebhookConfig> {
    let stored = find_config(state, project, id).await?;
    admin_for_feedback(caller, &input)?;
    // What the provider allows (its events, optional signing, feedback) depends on the configuration as it is: a
    // change that asks for something it does not offer is a 422 naming the fields, not a malformed request.
    let patch = WebhookConfigPatch::parse(input, stored.config.provider).map_err(|errors| {
        ServiceError::unless_state(errors, |f| matches!(f, "allowed_events" | "require_signature" | "feedback"))
    })?;
    let sealed = patch.secret.as_deref().map(|s| seal(state, stored.config.id, s));
    let config = state.store.update_webhook_config(stored.config.id, |c| patch.apply(c), sealed.as_ref()).await?;
    audit(
        state,
        Some(caller),
        if sealed.is_some() { "webhook_secret_rotated" } else { "webhook_changed" },
        "webhook",
        Some(config.id.to_string()),
        Some(project.id),
        json!({"provider": config.provider}),
    )
    .await;
    Ok(config)
}

/// Replaces a configuration's secret with a generated one, shown once.
pub async fn rotate_secret(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    id: &str,
) -> ServiceResult<CreatedConfig> {
    let stored = find_config(state, project, id).await?;
    let secret = generate_secret();
    let sealed = seal(state, stored.config.id, &secret);
    let config = state.store.update_webhook_config(stored.config.id, |_| {}, Some(&sealed)).await?;
    audit(
        state,
        Some(caller),
        "webhook_secret_rotated",
        "webhook",
        Some(config.id.to_string()),
        Some(project.id),
        json!({"provider": config.provider}),
    )
    .await;
    Ok(CreatedConfig { config, secret: Some(secret) })
}

fn headers_json(headers: &HeaderMap) -> Value {
    Value::Object(inbound::kept_headers(headers).into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

fn headers_from_json(value: &Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in value.as_object().into_iter().flatten() {
        if let (Ok(name), Some(Ok(value))) =
            (axum::http::HeaderName::from_bytes(k.as_bytes()), v.as_str().map(axum::http::HeaderValue::from_str))
        {
            map.insert(name, value);
        }
    }
    map
}

fn answer(status: u16, delivery: &Delivery) -> Answer {
    let mut body = json!({"status": delivery.status, "delivery_id": delivery.id});
    if let Some(ticket) = delivery.ticket_id {
        body["ticket_id"] = json!(ticket);
    }
    if let Some(message) = &delivery.error_message {
        body[if delivery.status == DeliveryStatus::Processed { "note" } else { "message" }] = json!(message);
    }
    Answer { status, body }
}

/// Receives a delivery at `/api/webhooks/{provider}/{config}`: records it, whatever its outcome, and applies it
/// at most once. The answer comes after the commit.
pub async fn receive(state: &AppState, provider: &str, config: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
    let received_at = viberglass_store::now();
    // Recorded as sent, but only letters, digits, `-` and `_`: anyone can post to any address.
    let provider_name: String =
        provider.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).take(32).collect();
    let refuse = |status: u16, message: String, config: Option<&WebhookConfig>, keep: bool| NewDelivery {
        id: DeliveryId::new(),
        config_id: config.map(|c| c.id),
        project_id: config.map(|c| c.project_id),
        provider: provider_name.clone(),
        delivery_key: config
            .map(|c| inbound::delivery_key(c.provider, headers, body))
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)))),
        event: String::new(),
        status: DeliveryStatus::Rejected,
        error_message: Some(message),
        response_status: status,
        ticket_id: None,
        headers: headers_json(headers),
        payload: keep.then(|| body.to_vec()),
        body_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)),
        received_at,
    };
    let found = match (provider.parse::<WebhookProvider>(), config.parse::<WebhookConfigId>()) {
        (Ok(p), Ok(id)) => match state.store.get_webhook_config(id).await {
            Ok(stored) if stored.config.provider == p => Some(stored),
            Ok(_) | Err(StoreError::NotFound { .. }) => None,
            Err(e) => return store_failure(&e),
        },
        _ => None,
    };
    let Some(stored) = found else {
        if !unknown_address_recordable() {
            return Answer {
                status: 404,
                body: json!({"status": "rejected", "message": "no webhook configuration has this address"}),
            };
        }
        let message = format!(
            "no {provider_name} webhook configuration has this address: copy the URL from the project's Webhooks page \
             (it names the provider and the configuration's id)"
        );
        return record(state, &refuse(404, message, None, false)).await;
    };
    let config = &stored.config;
    if !config.enabled {
        let message = "this webhook configuration is turned off: turn it on on the project's Webhooks page, then \
                       redeliver"
            .to_owned();
        return record(state, &refuse(403, message, Some(config), false)).await;
    }
    if body.len() > MAX_PAYLOAD_BYTES {
        let message = format!(
            "the payload is {} bytes; at most {MAX_PAYLOAD_BYTES} are accepted: send less (GitHub and GitLab stay \
             well under)",
            body.len()
        );
        return record(state, &refuse(413, message, Some(config), false)).await;
    }
    let delivery = NewDelivery {
        status: DeliveryStatus::Processed,
        error_message: None,
        response_status: 200,
        ..refuse(200, String::new(), Some(config), true)
    };
    process(state, &stored, headers, body, delivery, None).await
}

/// Deliveries to unknown addresses are recorded (so a mistyped URL shows up), but at most this many a minute:
/// anyone can send them.
const UNKNOWN_PER_MINUTE: u32 = 60;

fn unknown_address_recordable() -> bool {
    static WINDOW: std::sync::Mutex<Option<(std::time::Instant, u32)>> = std::sync::Mutex::new(None);
    let Ok(mut window) = WINDOW.lock() else { return false };
    let now = std::time::Instant::now();
    match &mut *window {
        Some((start, count)) if now.duration_since(*start) < std::time::Duration::from_secs(60) => {
            *count += 1;
            *count <= UNKNOWN_PER_MINUTE
        }
        other => {
            *other = Some((now, 1));
            true
        }
    }
}

async fn record(state: &AppState, delivery: &NewDelivery) -> Answer {
    match state.store.record_delivery(delivery).await {
        Ok(d) => answer(delivery.response_status, &d),
        Err(e) => store_failure(&e),
    }
}

fn store_failure(e: &StoreError) -> Answer {
    tracing::error!(error = %crate::error::error_chain(e), "webhook: store error");
    Answer {
        status: 503,
        body: json!({"status": "failed", "message": "the delivery could not be recorded: the server's database is \
            unavailable; the sender should retry"}),
    }
}

/// Checks, reads and applies one delivery (`delivery` holds what was received; `redelivery_of` is the stored
/// row a redelivery takes over).
async fn process(
    state: &AppState,
    stored: &StoredWebhookConfig,
    headers: &HeaderMap,
    body: &[u8],
    mut delivery: NewDelivery,
    redelivery_of: Option<DeliveryId>,
) -> Answer {
    let config = &stored.config;
    let mut headers = headers.clone();
    let fail = |mut d: NewDelivery, status: DeliveryStatus, code: u16, message: String| {
        d.status = status;
        d.response_status = code;
        d.error_message = Some(message);
        d
    };
    let secret = match state.vault.keyring().open(
        &secret_name(config.id),
        &viberglass_secrets::Sealed {
            ciphertext: stored.secret.ciphertext.clone(),
            nonce: stored.secret.nonce.clone(),
            key_id: stored.secret.key_id.clone(),
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            let message = format!(
                "this configuration's secret cannot be opened ({e}): the server's encryption key changed; rotate the \
                 secret on both ends, then redeliver"
            );
            return finish_refused(state, fail(delivery, DeliveryStatus::Failed, 500, message), redelivery_of).await;
        }
    };
    if redelivery_of.is_some() && config.provider == WebhookProvider::Gitlab {
        inbound::restore_gitlab_token(&mut headers, &secret);
    }
    let headers = &headers;
    if let Err(r) =
        inbound::verify(config.provider, &secret, config.require_signature, headers, body, delivery.received_at)
    {
        return finish_refused(state, fail(delivery, DeliveryStatus::Rejected, r.status, r.message), redelivery_of)
            .await;
    }
    let read = match inbound::parse(config.provider, headers, body) {
        Ok(read) => read,
        Err(e) => {
            let status =
                if config.provider == WebhookProvider::Custom && inbound::is_form(headers) { 415 } else { 422 };
            let message = format!("the payload cannot be read: {e}");
            return finish_refused(state, fail(delivery, DeliveryStatus::Failed, status, message), redelivery_of).await;
        }
    };
    delivery.event = read.event.chars().take(100).collect();
    for _ in 0..2 {
        let (change, note) = match plan(state, config, &read).await {
            Ok(Plan::Apply(change, note)) => (change, note),
            Ok(Plan::Ignore(why)) => (DeliveryChange::Nothing, Some(why)),
            Ok(Plan::Fail(code, message)) => {
                return finish_refused(state, fail(delivery, DeliveryStatus::Failed, code, message), redelivery_of)
                    .await;
            }
            Err(message) => {
                return finish_refused(state, fail(delivery, DeliveryStatus::Failed, 422, message), redelivery_of)
                    .await;
            }
        };
        let mut d = delivery.clone();
        if matches!(change, DeliveryChange::Nothing) {
            d.status = DeliveryStatus::Ignored;
        }
        d.error_message = note;
        match state.store.apply_delivery(&d, &change, redelivery_of).await {
            Ok(Applied::Done(done)) => {
                if let DeliveryChange::File { ticket, .. } = &change {
                    tracing::info!(ticket_id = %ticket.id, delivery = %done.id, provider = %config.provider, "ticket filed from a webhook");
                }
                if matches!(
                    change,
                    DeliveryChange::File { .. } | DeliveryChange::Update { .. } | DeliveryChange::Run { .. }
                ) {
                    state.engine.wake.notify_one();
                }
                return answer(200, &done);
            }
            Ok(Applied::Duplicate(dup)) => {
                let mut a = answer(200, &dup);
                a.body["status"] = json!("duplicate");
                return a;
            }
            Ok(Applied::TicketExists) => continue,
            Err(e) => return store_failure(&e),
        }
    }
    store_failure(&StoreError::Contended { entity: "ticket" })
}

async fn finish_refused(state: &AppState, delivery: NewDelivery, redelivery_of: Option<DeliveryId>) -> Answer {
    let message = delivery.error_message.clone().unwrap_or_default();
    if delivery.status == DeliveryStatus::Rejected {
        tracing::warn!(provider = %delivery.provider, status = delivery.response_status, reason = %message, "webhook delivery rejected");
    }
    match redelivery_of {
        None => record(state, &delivery).await,
        Some(old) => match state
            .store
            .redelivery_failed(old, delivery.status, &delivery.event, &message, delivery.response_status)
            .await
        {
            Ok(d) => answer(delivery.response_status, &d),
            Err(e) => store_failure(&e),
        },
    }
}

enum Plan {
    Apply(DeliveryChange, Option<String>),
    Ignore(String),
    /// Recorded as failed with the reason (redeliverable), answered with this status.
    Fail(u16, String),
}

/// Decides what a read delivery changes. An `Err` is a delivery that cannot be applied, with the reason.
async fn plan(state: &AppState, config: &WebhookConfig, read: &Inbound) -> Result<Plan, String> {
    if !config.allows(&read.event) {
        return Ok(Plan::Ignore(format!(
            "`{}` is not among this configuration's allowed events ({}): add it on the Webhooks page to act on it",
            read.event,
            config.allowed_events.join(", ")
        )));
    }
    let source = config.provider.ticket_source();
    // The ticket this source issue filed through this configuration. One filed by hand or through another
    // configuration is not this sender's to change or run.
    let existing = |external_id: String| async move {
        if external_id.is_empty() {
            return Ok::<Result<Ticket, Option<String>>, String>(Err(None));
        }
        let Some(ticket) =
            state.store.find_sourced_ticket(config.project_id, source, &external_id).await.map_err(unavailable_text)?
        else {
            return Ok(Err(None));
        };
        match state.store.ticket_source(ticket.id).await.map_err(unavailable_text)? {
            Some((owner, _)) if owner == config.id => Ok(Ok(ticket)),
            _ => Ok(Err(Some(format!(
                "the ticket for {external_id} was filed by hand or through another webhook configuration: this one \
                 does not change it"
            )))),
        }
    };
    let found = |result: Result<Ticket, Option<String>>| -> Result<Option<Ticket>, String> {
        match result {
            Ok(ticket) => Ok(Some(ticket)),
            Err(None) => Ok(None),
            Err(Some(why)) => Err(why),
        }
    };
    match &read.action {
        Action::Ignore(why) => Ok(Plan::Ignore(why.clone())),
        Action::Issue(issue) => {
            let found = match found(existing(issue.source.external_id.clone()).await?) {
                Ok(found) => found,
                Err(why) => return Ok(Plan::Ignore(why)),
            };
            match (&issue.change, found) {
                (Change::Closed, None) => Ok(Plan::Ignore("closed, but no ticket was filed for this issue".into())),
                (Change::Closed, Some(ticket)) if ticket.archived_at.is_some() => {
                    Ok(Plan::Ignore("closed: its ticket is archived already".into()))
                }
                (Change::Closed, Some(mut ticket)) => {
                    ticket.archived_at = Some(viberglass_store::now());
                    Ok(Plan::Apply(DeliveryChange::Update { ticket: Box::new(ticket), archive: true, run: None }, None))
                }
                (Change::Edited, None) => Ok(Plan::Ignore(
                    "edited, but no ticket was filed for this issue (it was opened before this webhook, or its opening \
                     was not allowed): label it with a trigger label, or file it by hand"
                        .into(),
                )),
                (Change::Opened | Change::Labeled(_), None) => file(state, config, issue).await,
                (change, Some(ticket)) => update(state, config, issue, change, ticket).await,
            }
        }
        Action::Comment(comment) => match found(existing(comment.source.external_id.clone()).await?) {
            Ok(ticket) => {
                let mut comment = comment.clone();
                if !comment.trusted
                    && config.provider == WebhookProvider::Gitlab
                    && inbound::mention(&comment.body, &config.bot_name).is_some()
                {
                    // A check that cannot be made fails closed, answered 200 so GitLab keeps the hook enabled;
                    // the delivery can be redelivered once the check works.
                    match gitlab_member(state, config, &comment).await {
                        Ok(member) => comment.trusted = member,
                        Err(why) => return Ok(Plan::Fail(200, why)),
                    }
                }
                comment_run(config, &comment, ticket)
            }
            Err(why) => Ok(Plan::Ignore(why)),
        },
    }
}

/// The severity an issue gives: an explicit one (a custom sender's, Jira's or Linear's priority), else its labels.
fn severity_of(config: &WebhookConfig, issue: &IssueEvent) -> Option<String> {
    let from_labels = issue.labels.as_deref().and_then(|l| config.severity_for(l));
    match &issue.severity {
        Some(word) if config.provider == WebhookProvider::Custom => Some(word.clone()),
        Some(word) => viberglass_domain::webhook::default_severity(word).or(from_labels).map(|s| s.to_string()),
        None => from_labels.map(|s| s.to_string()),
    }
}

fn metadata_of(issue: &IssueEvent) -> Value {
    let mut map = issue.metadata.clone();
    if let Some(labels) = &issue.labels
        && !labels.is_empty()
        && !map.contains_key("labels")
    {
        map.insert("labels".into(), Value::String(labels.join(", ").chars().take(1000).collect()));
    }
    Value::Object(map)
}

fn unavailable_text(e: StoreError) -> String {
    tracing::error!(error = %crate::error::error_chain(&e), "webhook: store error");
    "the server's database is unavailable: the sender should retry".to_owned()
}

fn requested_run(config: &WebhookConfig, phase: Phase, reason: String) -> Result<RequestedRun, String> {
    match &config.clanker {
        Some(clanker) => Ok(RequestedRun { phase, clanker: clanker.clone(), reason }),
        None => {
            Err("this configuration names no clanker to run with: choose one on the project's Webhooks page, then \
             redeliver"
                .into())
        }
    }
}

async fn file(state: &AppState, config: &WebhookConfig, issue: &IssueEvent) -> Result<Plan, String> {
    let input = TicketInput {
        title: issue.title.clone(),
        description: issue.description.clone(),
        severity: severity_of(config, issue),
        source: Some(config.provider.ticket_source().as_str().to_owned()),
        external_id: Some(issue.source.external_id.clone()).filter(|e| !e.is_empty()),
        external_url: issue.url.clone().map(Some),
        category: issue.category.clone().map(Some),
        metadata: Some(Some(metadata_of(issue))),
    };
    let new = NewTicket::parse(input).map_err(|e| {
        format!(
            "the ticket it describes is invalid: {}",
            e.fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ")
        )
    })?;
    let ticket = new.into_ticket(config.project_id, None, viberglass_store::now());
    let labels = issue.labels.clone().unwrap_or_default();
    let (run, note) = match config.on_new_ticket.phase() {
        Some(phase) if config.labels_trigger(&labels) => match requested_run(config, phase, "new ticket".into()) {
            Ok(run) => (Some(run), None),
            Err(why) => (None, Some(format!("filed, but no run started: {why}"))),
        },
        Some(_) => {
            (None, Some(format!("filed; its run waits for one of the labels {}", config.trigger_labels.join(", "))))
        }
        None => (None, None),
    };
    let _ = state;
    Ok(Plan::Apply(
        DeliveryChange::File {
            ticket: Box::new(ticket),
            config_id: config.id,
            locator: issue.source.locator.clone(),
            run,
        },
        note,
    ))
}

async fn update(
    state: &AppState,
    config: &WebhookConfig,
    issue: &IssueEvent,
    change: &Change,
    mut ticket: Ticket,
) -> Result<Plan, String> {
    let merged = {
        let mut merged = ticket.metadata.as_object().cloned().unwrap_or_default();
        if let Value::Object(new) = metadata_of(issue) {
            merged.extend(new);
        }
        Value::Object(merged)
    };
    let input = TicketInput {
        title: issue.title.clone(),
        description: issue.description.clone(),
        severity: severity_of(config, issue).filter(|s| s.parse::<Severity>().is_ok()),
        external_url: issue.url.clone().map(Some),
        category: issue.category.clone().filter(|c| c.parse::<TicketCategory>().is_ok()).map(Some),
        metadata: Some(Some(merged)),
        ..TicketInput::default()
    };
    // Once research or the plan is approved, the source's new title and description wait for a person: an
    // execution must not run on text nobody reviewed.
    let mut approved = None;
    for phase in [Phase::Research, Phase::Planning] {
        let document = state.store.get_document(ticket.id, phase).await.map_err(unavailable_text)?;
        if document.is_some_and(|d| d.approval_state == viberglass_domain::workflow::ApprovalState::Approved) {
            approved = Some(phase);
        }
    }
    let mut input = input;
    let mut held = None;
    if let Some(phase) = approved {
        // Nothing the source sends reaches a reviewed ticket (title, description, metadata, links and category
        // all go into the agent's prompt).
        input = TicketInput::default();
        held = Some(format!(
            "the ticket's {} is approved, so the source's changes were not applied: edit the ticket to take them",
            if phase == Phase::Research { "research" } else { "plan" }
        ));
    }
    let patch = TicketPatch::parse(input).map_err(|e| {
        format!(
            "the change it describes is invalid: {}",
            e.fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ")
        )
    })?;
    // A label the ticket already had when it was filed (GitHub sends `labeled` after `opened` for those)
    // starts nothing.
    let had_label = |label: &str| {
        ticket.metadata["labels"].as_str().is_some_and(|l| l.split(", ").any(|x| x.eq_ignore_ascii_case(label)))
    };
    let new_label = matches!(change, Change::Labeled(l) if !had_label(l));
    patch.apply(&mut ticket);
    // A trigger label added to a ticket that never ran starts its run.
    let mut run = None;
    let mut note = None;
    if let (Change::Labeled(label), Some(phase)) = (change, config.on_new_ticket.phase())
        && new_label
        && !config.trigger_labels.is_empty()
        && config.labels_trigger(std::slice::from_ref(label))
    {
        let filter = viberglass_store::JobFilter { ticket_id: Some(ticket.id), ..Default::default() };
        let page = viberglass_domain::PageRequest { limit: 1, after: None };
        let ran = state.store.list_jobs(&filter, page).await.map_err(unavailable_text)?;
        if ran.items.is_empty() {
            match requested_run(config, phase, format!("label {label}")) {
                Ok(r) => run = Some(r),
                Err(why) => note = Some(format!("updated, but no run started: {why}")),
            }
        }
    }
    Ok(Plan::Apply(DeliveryChange::Update { ticket: Box::new(ticket), archive: false, run }, note.or(held)))
}

/// Whether a GitLab note's author is a Developer (or more) of the issue's project, asked of GitLab with the
/// project's SCM credential (note hooks carry no role).
async fn gitlab_member(state: &AppState, config: &WebhookConfig, comment: &CommentEvent) -> Result<bool, String> {
    let Some(user) = comment.author_id else { return Ok(false) };
    let target = crate::sources::target_for(state, config, comment.source.locator.clone())
        .await
        .map_err(|why| format!("the comment's author could not be checked: {why}"))?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    match viberglass_integrations::feedback::gitlab_access_level(&http, &target, user).await {
        Ok(level) => Ok(level.is_some_and(|l| l >= 30)),
        Err(e) => {
            Err(format!("the comment's author could not be checked with GitLab: {e}; redeliver once GitLab answers"))
        }
    }
}

fn comment_run(config: &WebhookConfig, comment: &CommentEvent, ticket: Option<Ticket>) -> Result<Plan, String> {
    if comment.by_bot {
        return Ok(Plan::Ignore("a comment by a bot or an app: never a trigger".into()));
    }
    if !comment.trusted {
        return Ok(Plan::Ignore(format!(
            "@{} was mentioned by someone who is not a member or collaborator of the repository (GitLab: Developer \
             or above): only they can start runs",
            config.bot_name
        )));
    }
    let Some(word) = inbound::mention(&comment.body, &config.bot_name) else {
        return Ok(Plan::Ignore(format!("the comment does not mention @{}", config.bot_name)));
    };
    let Some(ticket) = ticket else {
        return Ok(Plan::Ignore(format!(
            "@{} was mentioned on an issue no ticket was filed for: open a new issue, or label this one",
            config.bot_name
        )));
    };
    let phase = match word.to_lowercase().as_str() {
        "research" => Phase::Research,
        "plan" | "planning" => Phase::Planning,
        "execute" | "execution" | "implement" | "fix" => Phase::Execution,
        _ => ticket.phase,
    };
    let who = comment.author.as_deref().map(|a| format!("comment by {a}")).unwrap_or_else(|| "comment".into());
    let run = requested_run(config, phase, who)?;
    Ok(Plan::Apply(DeliveryChange::Run { ticket: Box::new(ticket), run }, None))
}

/// Processes a stored delivery again (after its secret or configuration was fixed). Applied ones answer
/// "duplicate" and change nothing.
pub async fn redeliver(state: &AppState, caller: &Caller, project: &Project, id: &str) -> ServiceResult<Delivery> {
    let parsed: DeliveryId = id.parse().map_err(|_| ServiceError::invalid("delivery", "is not a delivery id"))?;
    let delivery = state.store.get_delivery(parsed).await?;
    if delivery.project_id != Some(project.id) {
        return Err(StoreError::NotFound { entity: "delivery", id: id.to_owned() }.into());
    }
    if matches!(delivery.status, DeliveryStatus::Processed | DeliveryStatus::Ignored | DeliveryStatus::Duplicate) {
        return Err(ServiceError::conflict(
            "already_applied",
            format!("this delivery is {}: it was applied once and is not applied again", delivery.status),
        ));
    }
    let Some(config_id) = delivery.config_id else {
        return Err(ServiceError::unprocessable("no_configuration", "this delivery reached no configuration"));
    };
    let stored = state.store.get_webhook_config(config_id).await?;
    let (headers, body) = state.store.delivery_payload(parsed).await?;
    let Some(body) = body else {
        return Err(ServiceError::unprocessable(
            "payload_gone",
            "this delivery's payload is no longer kept (past the retention period, or too large to keep): redeliver \
             it from the sender",
        ));
    };
    let headers = headers_from_json(&headers);
    let new = NewDelivery {
        id: parsed,
        config_id: Some(config_id),
        project_id: Some(project.id),
        provider: delivery.provider.clone(),
        delivery_key: delivery.delivery_key.clone(),
        event: delivery.event.clone(),
        status: DeliveryStatus::Processed,
        error_message: None,
        response_status: 200,
        ticket_id: None,
        headers: Value::Null,
        payload: None,
        body_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
        received_at: delivery.received_at,
    };
    let answer = process(state, &stored, &headers, &body, new, Some(parsed)).await;
    audit(
        state,
        Some(caller),
        "webhook_redelivered",
        "delivery",
        Some(parsed.to_string()),
        Some(project.id),
        json!({"status": answer.body["status"]}),
    )
    .await;
    Ok(state.store.get_delivery(parsed).await?)
}

/// How long a delivery's payload is kept.
pub fn payload_cutoff(days: u32) -> OffsetDateTime {
    viberglass_store::now() - time::Duration::days(i64::from(days))
}
