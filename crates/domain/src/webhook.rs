//! Inbound webhooks: ticket sources (GitHub, GitLab, Jira, Shortcut, Linear,
//! custom JSON) deliver events to `/api/webhooks/{provider}/{config id}`. A
//! configuration says which project the tickets go to, how deliveries are
//! signed, which events count, what a new ticket starts, and how the outcome
//! is told back to the source. Every delivery is recorded with its outcome.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::validation::{ValidationErrors, bounded_text, nullable};
use crate::{DeliveryId, Phase, ProjectId, Severity, TicketId, TicketSource, WebhookConfigId};

named_enum!(
    /// Who sends a webhook, which decides its signature, headers and payload.
    WebhookProvider, "webhook provider", {
        Github => "github",
        Gitlab => "gitlab",
        Jira => "jira",
        Shortcut => "shortcut",
        Linear => "linear",
        /// Any system that posts `{title, description, …}` as JSON.
        Custom => "custom",
    }
);

impl WebhookProvider {
    /// The source recorded on the tickets it files.
    pub fn ticket_source(self) -> TicketSource {
        match self {
            WebhookProvider::Github => TicketSource::Github,
            WebhookProvider::Gitlab => TicketSource::Gitlab,
            WebhookProvider::Jira => TicketSource::Jira,
            WebhookProvider::Shortcut => TicketSource::Shortcut,
            WebhookProvider::Linear => TicketSource::Linear,
            WebhookProvider::Custom => TicketSource::Webhook,
        }
    }

    /// The events it understands, as recorded on deliveries and named in `allowed_events`.
    pub fn events(self) -> &'static [&'static str] {
        match self {
            WebhookProvider::Github => {
                &["issues.opened", "issues.edited", "issues.closed", "issues.labeled", "issue_comment.created"]
            }
            WebhookProvider::Gitlab => &["issue.open", "issue.update", "issue.close", "note.issue"],
            WebhookProvider::Jira => &["jira:issue_created", "jira:issue_updated", "comment_created"],
            WebhookProvider::Shortcut => &["story.create", "story.update", "story-comment.create"],
            WebhookProvider::Linear => &["Issue.create", "Issue.update", "Comment.create"],
            WebhookProvider::Custom => &["ticket"],
        }
    }

    /// Whether a configuration may accept unsigned deliveries: custom senders may not sign, and Jira
    /// signs only when a secret is set on its side.
    pub fn signing_optional(self) -> bool {
        matches!(self, WebhookProvider::Custom | WebhookProvider::Jira)
    }

    /// Whether it can be told a run's outcome (a comment on the source issue).
    pub fn has_feedback(self) -> bool {
        !matches!(self, WebhookProvider::Custom)
    }

    /// Whether it has labels the outcome can set (`fix-submitted` / `fix-failed`).
    pub fn has_labels(self) -> bool {
        matches!(self, WebhookProvider::Github | WebhookProvider::Gitlab)
    }

    /// The API the feedback goes to when the configuration names none.
    pub fn default_api_url(self) -> Option<&'static str> {
        match self {
            WebhookProvider::Shortcut => Some("https://api.app.shortcut.com"),
            WebhookProvider::Linear => Some("https://api.linear.app"),
            _ => None,
        }
    }
}

named_enum!(
    /// What a new ticket from a source starts.
    NewTicketRun, "new-ticket run", {
        /// Nothing: people start runs from the ticket page (or a comment trigger).
        Nothing => "none",
        /// A research run.
        Research => "research",
        /// An execution run (the project's approval gates still apply).
        Execution => "execution",
    }
);

impl NewTicketRun {
    pub fn phase(self) -> Option<Phase> {
        match self {
            NewTicketRun::Nothing => None,
            NewTicketRun::Research => Some(Phase::Research),
            NewTicketRun::Execution => Some(Phase::Execution),
        }
    }
}

named_enum!(
    /// How a delivery ended.
    DeliveryStatus, "delivery status", {
        /// It filed or changed a ticket, or requested a run.
        Processed => "processed",
        /// Valid, but nothing to do (an event not allowed, a comment without the bot's name…): the reason says why.
        Ignored => "ignored",
        /// The same delivery id was seen before: nothing changed.
        Duplicate => "duplicate",
        /// Refused before reading it: unknown configuration, bad signature, wrong content type.
        Rejected => "rejected",
        /// Signed and read, but it could not be applied (an unparseable payload, a run that could not start).
        Failed => "failed",
    }
);

/// The most a stored payload keeps (larger bodies are refused with 413).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// An inbound webhook configuration as the API shows it (the secret is never shown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookConfig {
    pub id: WebhookConfigId,
    pub project_id: ProjectId,
    pub name: String,
    pub provider: WebhookProvider,
    /// Whether deliveries must be signed with the shared secret (always, except for custom and Jira).
    pub require_signature: bool,
    /// Events that count; empty means every event the provider has ([`WebhookProvider::events`]).
    pub allowed_events: Vec<String>,
    /// What a new ticket starts.
    pub on_new_ticket: NewTicketRun,
    /// When not empty, a new ticket starts its run only if it carries one of these labels (or gains one later).
    pub trigger_labels: Vec<String>,
    /// Label (lowercase) → severity. Unlisted labels fall back to the usual names (critical, high, p0…).
    pub severity_labels: BTreeMap<String, Severity>,
    /// The name a comment must mention (`@name`) to start a run.
    pub bot_name: String,
    /// The clanker runs started from this source use (id or slug).
    pub clanker: Option<String>,
    /// Whether runs' outcomes are told back to the source issue.
    pub feedback: bool,
    /// The source's API for feedback (Jira's site, a self-hosted GitLab…); GitHub and GitLab default to the
    /// project's SCM integration.
    pub feedback_api_url: Option<String>,
    /// The secret holding the token feedback uses (Jira: `email:api-token`); GitHub and GitLab default to the
    /// project's SCM credential.
    pub feedback_secret: Option<String>,
    pub success_label: String,
    pub failure_label: String,
    pub enabled: bool,
    /// Where the provider delivers: `/api/webhooks/{provider}/{id}` (relative to the server's public URL).
    pub path: String,
    #[serde(with = "time::serde::rfc3339")]
    pub secret_rotated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl WebhookConfig {
    pub fn path_for(provider: WebhookProvider, id: WebhookConfigId) -> String {
        format!("/api/webhooks/{provider}/{id}")
    }

    /// Whether `event` counts for this configuration.
    pub fn allows(&self, event: &str) -> bool {
        self.allowed_events.is_empty() || self.allowed_events.iter().any(|e| e == event)
    }

    /// The severity a set of labels gives, if any: this configuration's map first, then the usual names.
    pub fn severity_for(&self, labels: &[String]) -> Option<Severity> {
        let mut best: Option<Severity> = None;
        for label in labels {
            let key = label.trim().to_lowercase();
            let found = self.severity_labels.get(&key).copied().or_else(|| default_severity(&key));
            if let Some(s) = found
                && best.is_none_or(|b| rank(s) > rank(b))
            {
                best = Some(s);
            }
        }
        best
    }

    /// The label → severity map as JSON (for forms).
    pub fn severity_json(&self) -> String {
        serde_json::to_string(&self.severity_labels).unwrap_or_default()
    }

    /// Whether labels let a new ticket's run start.
    pub fn labels_trigger(&self, labels: &[String]) -> bool {
        self.trigger_labels.is_empty()
            || labels.iter().any(|l| self.trigger_labels.iter().any(|t| t.eq_ignore_ascii_case(l.trim())))
    }
}

fn rank(s: Severity) -> u8 {
    match s {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

/// The usual names of severities and priorities on labels: `critical`, `severity: high`, `priority/p1`, `P2`….
pub fn default_severity(label: &str) -> Option<Severity> {
    let label = label.trim().to_lowercase();
    let last = label.rsplit([':', '/', '=', ' ']).next().unwrap_or(&label).trim();
    match last {
        "critical" | "blocker" | "urgent" | "p0" | "sev1" | "highest" => Some(Severity::Critical),
        "high" | "p1" | "sev2" | "major" => Some(Severity::High),
        "medium" | "p2" | "sev3" | "normal" => Some(Severity::Medium),
        "low" | "p3" | "p4" | "sev4" | "minor" | "lowest" | "trivial" => Some(Severity::Low),
        _ => None,
    }
}

/// A configuration as a client sends it, to create or change one. `secret` is write-only: on create it is
/// generated when left out (and shown once in the answer), on change it rotates the secret.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfigInput {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub secret: Option<String>,
    pub require_signature: Option<bool>,
    pub allowed_events: Option<Vec<String>>,
    pub on_new_ticket: Option<String>,
    pub trigger_labels: Option<Vec<String>>,
    pub severity_labels: Option<BTreeMap<String, String>>,
    pub bot_name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub clanker: Option<Option<String>>,
    pub feedback: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub feedback_api_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub feedback_secret: Option<Option<String>>,
    pub success_label: Option<String>,
    pub failure_label: Option<String>,
    pub enabled: Option<bool>,
}

/// A validated change to a configuration: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookConfigPatch {
    pub name: Option<String>,
    pub secret: Option<String>,
    pub require_signature: Option<bool>,
    pub allowed_events: Option<Vec<String>>,
    pub on_new_ticket: Option<NewTicketRun>,
    pub trigger_labels: Option<Vec<String>>,
    pub severity_labels: Option<BTreeMap<String, Severity>>,
    pub bot_name: Option<String>,
    pub clanker: Option<Option<String>>,
    pub feedback: Option<bool>,
    pub feedback_api_url: Option<Option<String>>,
    pub feedback_secret: Option<Option<String>>,
    pub success_label: Option<String>,
    pub failure_label: Option<String>,
    pub enabled: Option<bool>,
}

/// The shortest secret a configuration accepts.
pub const MIN_SECRET_CHARS: usize = 16;

fn parse_secret(value: &str) -> Result<String, String> {
    let len = value.chars().count();
    if !(MIN_SECRET_CHARS..=256).contains(&len) || value.chars().any(char::is_control) {
        return Err(format!(
            "must be {MIN_SECRET_CHARS} to 256 printable characters (leave it out to have one generated)"
        ));
    }
    Ok(value.to_owned())
}

fn parse_label(value: &str) -> Result<String, String> {
    let v = bounded_text(value, "a label", 1, 100)?;
    if v.chars().any(char::is_control) {
        return Err("labels must be printable".into());
    }
    Ok(v)
}

fn parse_labels(field: &str, values: Vec<String>, e: &mut ValidationErrors) -> Option<Vec<String>> {
    if values.len() > 50 {
        e.add(field, "may hold at most 50 labels");
        return None;
    }
    let mut out = Vec::new();
    for v in values {
        out.push(e.check(field, parse_label(&v))?);
    }
    Some(out)
}

fn parse_bot_name(value: &str) -> Result<String, String> {
    let v = value.trim().trim_start_matches('@');
    if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(
            "must be 1 to 64 letters, digits, `-`, `_` or `.`, e.g. `viberglass` (comments mention @viberglass)".into(),
        );
    }
    Ok(v.to_owned())
}

fn parse_api_url(value: &str) -> Result<String, String> {
    let v = value.trim().trim_end_matches('/');
    if !(v.starts_with("https://") || v.starts_with("http://")) || v.len() > 500 || v.contains(char::is_whitespace) {
        return Err("must be an http(s) address, e.g. `https://acme.atlassian.net`".into());
    }
    Ok(v.to_owned())
}

impl WebhookConfigPatch {
    /// Validates a change for a configuration of `provider`.
    pub fn parse(input: WebhookConfigInput, provider: WebhookProvider) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        if input.provider.is_some() {
            e.add("provider", "cannot be changed: create a new configuration for another provider");
        }
        let patch = WebhookConfigPatch {
            name: input.name.and_then(|v| e.check("name", bounded_text(&v, "name", 1, 100))),
            secret: input.secret.and_then(|v| e.check("secret", parse_secret(&v))),
            require_signature: match input.require_signature {
                Some(false) if !provider.signing_optional() => {
                    e.add(
                        "require_signature",
                        format!("{provider} always signs its deliveries: signing cannot be turned off"),
                    );
                    None
                }
                other => other,
            },
            allowed_events: input.allowed_events.and_then(|events| {
                let mut out = Vec::new();
                for event in events {
                    if !provider.events().contains(&event.as_str()) {
                        e.add(
                            "allowed_events",
                            format!(
                                "`{}` is not a {provider} event: use {}",
                                event.chars().take(64).collect::<String>(),
                                provider.events().join(", ")
                            ),
                        );
                        return None;
                    }
                    if !out.contains(&event) {
                        out.push(event);
                    }
                }
                Some(out)
            }),
            on_new_ticket: input.on_new_ticket.and_then(|v| e.check("on_new_ticket", v.parse())),
            trigger_labels: input.trigger_labels.and_then(|v| parse_labels("trigger_labels", v, &mut e)),
            severity_labels: input.severity_labels.and_then(|map| {
                if map.len() > 50 {
                    e.add("severity_labels", "may map at most 50 labels");
                    return None;
                }
                let mut out = BTreeMap::new();
                for (label, severity) in map {
                    let label = e.check("severity_labels", parse_label(&label))?.to_lowercase();
                    let severity = e.check("severity_labels", severity.parse::<Severity>())?;
                    out.insert(label, severity);
                }
                Some(out)
            }),
            bot_name: input.bot_name.and_then(|v| e.check("bot_name", parse_bot_name(&v))),
            clanker: match input.clanker {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) if v.trim().is_empty() => Some(None),
                Some(Some(v)) => e.check("clanker", bounded_text(&v, "clanker", 1, 100)).map(Some),
            },
            feedback: match input.feedback {
                Some(true) if !provider.has_feedback() => {
                    e.add("feedback", "a custom sender has no issue to comment on: leave feedback off");
                    None
                }
                other => other,
            },
            feedback_api_url: match input.feedback_api_url {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) if v.trim().is_empty() => Some(None),
                Some(Some(v)) => e.check("feedback_api_url", parse_api_url(&v)).map(Some),
            },
            feedback_secret: match input.feedback_secret {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) if v.trim().is_empty() => Some(None),
                Some(Some(v)) => e.check("feedback_secret", crate::secret::parse_secret_name(&v)).map(Some),
            },
            success_label: input.success_label.and_then(|v| e.check("success_label", parse_label(&v))),
            failure_label: input.failure_label.and_then(|v| e.check("failure_label", parse_label(&v))),
            enabled: input.enabled,
        };
        e.into_result(patch)
    }

    /// Applies the change (but not the secret, which the store seals).
    pub fn apply(&self, config: &mut WebhookConfig) {
        let p = self.clone();
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = p.$field { config.$field = v; })* };
        }
        set!(
            name,
            require_signature,
            allowed_events,
            on_new_ticket,
            trigger_labels,
            severity_labels,
            bot_name,
            clanker,
            feedback,
            feedback_api_url,
            feedback_secret,
            success_label,
            failure_label,
            enabled
        );
    }
}

/// A new configuration, validated: its fields with their defaults, and the secret (given or to generate).
#[derive(Debug, Clone, PartialEq)]
pub struct NewWebhookConfig {
    pub config: WebhookConfig,
    pub secret: Option<String>,
}

impl NewWebhookConfig {
    pub fn parse(
        project_id: ProjectId,
        mut input: WebhookConfigInput,
        now: OffsetDateTime,
    ) -> Result<Self, ValidationErrors> {
        let provider = match input.provider.take().as_deref().map(str::trim) {
            None | Some("") => {
                return Err(ValidationErrors::single(
                    "provider",
                    format!("is required: one of {}", WebhookProvider::NAMES.join(", ")),
                ));
            }
            Some(v) => {
                v.parse::<WebhookProvider>().map_err(|err| ValidationErrors::single("provider", err.to_string()))?
            }
        };
        let patch = WebhookConfigPatch::parse(input, provider)?;
        let id = WebhookConfigId::new();
        let mut config = WebhookConfig {
            id,
            project_id,
            name: provider.to_string(),
            provider,
            require_signature: true,
            allowed_events: Vec::new(),
            on_new_ticket: NewTicketRun::Nothing,
            trigger_labels: Vec::new(),
            severity_labels: BTreeMap::new(),
            bot_name: "viberglass".into(),
            clanker: None,
            feedback: provider.has_feedback(),
            feedback_api_url: None,
            feedback_secret: None,
            success_label: "fix-submitted".into(),
            failure_label: "fix-failed".into(),
            enabled: true,
            path: WebhookConfig::path_for(provider, id),
            secret_rotated_at: now,
            created_at: now,
            updated_at: now,
        };
        patch.apply(&mut config);
        Ok(NewWebhookConfig { config, secret: patch.secret })
    }
}

/// One delivery as recorded (the payload is read separately, by maintainers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: DeliveryId,
    pub config_id: Option<WebhookConfigId>,
    pub project_id: Option<ProjectId>,
    pub provider: String,
    /// The provider's delivery id (its header), else `sha256:<hash of the body>`.
    pub delivery_key: String,
    /// The event, e.g. `issues.opened` (empty when it was refused before reading).
    pub event: String,
    pub status: DeliveryStatus,
    /// What went wrong or why it was ignored, and what to do.
    pub error_message: Option<String>,
    /// The HTTP status answered.
    pub response_status: u16,
    pub ticket_id: Option<TicketId>,
    /// How many times it was processed again from its stored payload.
    pub redeliveries: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A delivery's stored request: headers that matter and the body, while kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryPayload {
    pub headers: BTreeMap<String, String>,
    /// The body as text (lossy for non-UTF-8), `null` once the retention period removed it.
    pub body: Option<String>,
}

/// Which deliveries a list shows.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub project_id: Option<ProjectId>,
    pub config_id: Option<WebhookConfigId>,
    pub status: Option<DeliveryStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> WebhookConfigInput {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_new_configuration_gets_defaults_and_its_path() {
        let project = ProjectId::new();
        let new = NewWebhookConfig::parse(
            project,
            input(serde_json::json!({"provider": "github"})),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(new.config.path, format!("/api/webhooks/github/{}", new.config.id));
        assert!(new.config.require_signature && new.config.feedback);
        assert_eq!(new.config.bot_name, "viberglass");
        assert!(new.secret.is_none());
    }

    #[test]
    fn bad_fields_are_all_named() {
        let err = NewWebhookConfig::parse(
            ProjectId::new(),
            input(serde_json::json!({"provider": "github", "require_signature": false, "secret": "short",
                "allowed_events": ["push"], "on_new_ticket": "deploy", "bot_name": "a b"})),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        let fields: Vec<_> = err.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["secret", "require_signature", "allowed_events", "on_new_ticket", "bot_name"]);
        assert!(err.fields[2].message.contains("issues.opened"), "{err:?}");
    }

    #[test]
    fn custom_senders_may_go_unsigned_and_have_no_feedback() {
        let new = NewWebhookConfig::parse(
            ProjectId::new(),
            input(serde_json::json!({"provider": "custom", "require_signature": false})),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert!(!new.config.require_signature && !new.config.feedback);
    }

    #[test]
    fn severities_come_from_the_map_then_the_usual_names() {
        let mut config = NewWebhookConfig::parse(
            ProjectId::new(),
            input(serde_json::json!({"provider": "gitlab", "severity_labels": {"Prod-Down": "critical"}})),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap()
        .config;
        assert_eq!(config.severity_for(&["prod-down".into(), "low".into()]), Some(Severity::Critical));
        assert_eq!(config.severity_for(&["priority: P1".into()]), Some(Severity::High));
        assert_eq!(config.severity_for(&["bug".into()]), None);
        config.trigger_labels = vec!["viberglass".into()];
        assert!(config.labels_trigger(&["Viberglass".into()]));
        assert!(!config.labels_trigger(&["bug".into()]));
    }
}
