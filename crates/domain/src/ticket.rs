//! Tickets: requested changes that move through research, planning and execution.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::states::UnknownValue;
use crate::validation::{ValidationErrors, bounded_text, nullable};
use crate::{Phase, ProjectId, Severity, TicketId, TicketStatus, UserId};

/// Where a ticket was filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketSource {
    Ui,
    Api,
    Github,
    Gitlab,
    Jira,
    Shortcut,
    Linear,
    Slack,
    Webhook,
    /// Filed by a schedule's execution.
    Schedule,
}

impl TicketSource {
    pub const NAMES: &'static [&'static str] =
        &["ui", "api", "github", "gitlab", "jira", "shortcut", "linear", "slack", "webhook", "schedule"];

    pub fn as_str(self) -> &'static str {
        match self {
            TicketSource::Ui => "ui",
            TicketSource::Api => "api",
            TicketSource::Github => "github",
            TicketSource::Gitlab => "gitlab",
            TicketSource::Jira => "jira",
            TicketSource::Shortcut => "shortcut",
            TicketSource::Linear => "linear",
            TicketSource::Slack => "slack",
            TicketSource::Webhook => "webhook",
            TicketSource::Schedule => "schedule",
        }
    }
}

impl std::str::FromStr for TicketSource {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ui" => TicketSource::Ui,
            "api" => TicketSource::Api,
            "github" => TicketSource::Github,
            "gitlab" => TicketSource::Gitlab,
            "jira" => TicketSource::Jira,
            "shortcut" => TicketSource::Shortcut,
            "linear" => TicketSource::Linear,
            "slack" => TicketSource::Slack,
            "webhook" => TicketSource::Webhook,
            "schedule" => TicketSource::Schedule,
            other => {
                return Err(UnknownValue {
                    what: "ticket source",
                    value: other.chars().take(64).collect(),
                    allowed: Self::NAMES,
                });
            }
        })
    }
}

named_enum!(
    /// What kind of change a ticket asks for.
    TicketCategory, "ticket category", {
        Bug => "bug",
        Feature => "feature",
        Improvement => "improvement",
        Question => "question",
        Chore => "chore",
        Docs => "docs",
    }
);

/// Characters that break or hide lines without being control characters: line and paragraph separators,
/// zero-width and text-direction marks. Metadata keys refuse them; values have them flattened.
pub fn is_invisible_or_separator(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// The most a ticket's metadata may hold, serialized.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Checks a ticket's metadata (context from its source: page URL, browser,
/// reporter): a JSON object of at most 50 keys, each at most 100 characters,
/// whose values are strings, numbers, booleans or null (nesting is refused so
/// the page and the agent see it as a flat list), 16 KiB in all.
pub fn parse_metadata(value: &serde_json::Value) -> Result<serde_json::Value, String> {
    let Some(object) = value.as_object() else {
        return Err("must be a JSON object, e.g. {\"page_url\": \"https://…\", \"browser\": \"Firefox 140\"}".into());
    };
    if object.len() > 50 {
        return Err(format!("may hold at most 50 keys (got {})", object.len()));
    }
    for (key, value) in object {
        if key.is_empty() || key.chars().count() > 100 || key.chars().any(is_invisible_or_separator) {
            return Err(format!(
                "the key `{}` must be 1 to 100 printable characters",
                key.chars().take(100).collect::<String>()
            ));
        }
        if value.is_object() || value.is_array() {
            return Err(format!("`{key}` must be a string, number, boolean or null, not nested JSON"));
        }
    }
    let size = value.to_string().len();
    if size > MAX_METADATA_BYTES {
        return Err(format!("is {size} bytes; it may be at most {MAX_METADATA_BYTES}"));
    }
    Ok(value.clone())
}

/// A ticket as stored.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Ticket {
    pub id: TicketId,
    pub project_id: ProjectId,
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub phase: Phase,
    pub status: TicketStatus,
    pub source: TicketSource,
    /// The ticket's id in the system it came from (e.g. a GitHub issue number).
    pub external_id: Option<String>,
    pub external_url: Option<String>,
    /// What kind of change it is, when said.
    pub category: Option<TicketCategory>,
    /// Context from its source (page URL, browser, OS, reporter…): a flat JSON object.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub pull_request_url: Option<String>,
    /// Why the approval gate was skipped for this ticket, when it was.
    pub workflow_override_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub workflow_overridden_at: Option<OffsetDateTime>,
    pub workflow_overridden_by: Option<UserId>,
    pub created_by: Option<UserId>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Ticket {
    /// The metadata as key/value text pairs, in key order, for display.
    pub fn metadata_pairs(&self) -> Vec<(String, String)> {
        self.metadata
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect()
    }
}

/// The fields of a ticket as a client sends them. On create `title` is
/// required; on change only the fields present are changed.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketInput {
    pub title: Option<String>,
    pub description: Option<String>,
    pub severity: Option<String>,
    /// Only on create: where the ticket comes from (default `api`).
    pub source: Option<String>,
    /// Only on create: the ticket's id in its source system.
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub external_url: Option<Option<String>>,
    /// bug, feature, improvement, question, chore or docs; null clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub category: Option<Option<String>>,
    /// Context from the ticket's source, a flat JSON object (replaced whole on change; null clears it).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<serde_json::Value>>,
}

/// A validated change to a ticket's own fields. Phase and status change only
/// through the workflow, never by a plain edit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TicketPatch {
    pub title: Option<String>,
    pub description: Option<String>,
    pub severity: Option<Severity>,
    pub external_url: Option<Option<String>>,
    pub category: Option<Option<TicketCategory>>,
    pub metadata: Option<serde_json::Value>,
}

/// A validated new ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTicket {
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub source: TicketSource,
    pub external_id: Option<String>,
    pub external_url: Option<String>,
    pub category: Option<TicketCategory>,
    pub metadata: serde_json::Value,
}

fn parse_external_url(value: &str) -> Result<String, String> {
    let url = value.trim();
    if !(url.starts_with("https://") || url.starts_with("http://"))
        || url.chars().count() > 2048
        || url.contains(char::is_whitespace)
    {
        return Err("must be an http(s) URL".into());
    }
    Ok(url.to_owned())
}

impl TicketPatch {
    pub fn parse(input: TicketInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        if input.source.is_some() {
            e.add("source", "cannot be changed after the ticket is filed");
        }
        if input.external_id.is_some() {
            e.add("external_id", "cannot be changed after the ticket is filed");
        }
        let patch = TicketPatch {
            title: input.title.and_then(|v| e.check("title", bounded_text(&v, "title", 1, 500))),
            description: input
                .description
                .and_then(|v| e.check("description", bounded_text(&v, "description", 0, 100_000))),
            severity: input.severity.and_then(|v| e.check("severity", v.parse::<Severity>())),
            external_url: match input.external_url {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) => e.check("external_url", parse_external_url(&v)).map(Some),
            },
            category: match input.category {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) => e.check("category", v.parse::<TicketCategory>()).map(Some),
            },
            metadata: match input.metadata {
                None => None,
                Some(None) => Some(serde_json::json!({})),
                Some(Some(v)) => e.check("metadata", parse_metadata(&v)),
            },
        };
        e.into_result(patch)
    }

    pub fn is_empty(&self) -> bool {
        *self == TicketPatch::default()
    }

    pub fn apply(self, ticket: &mut Ticket) {
        if let Some(title) = self.title {
            ticket.title = title;
        }
        if let Some(description) = self.description {
            ticket.description = description;
        }
        if let Some(severity) = self.severity {
            ticket.severity = severity;
        }
        if let Some(url) = self.external_url {
            ticket.external_url = url;
        }
        if let Some(category) = self.category {
            ticket.category = category;
        }
        if let Some(metadata) = self.metadata {
            ticket.metadata = metadata;
        }
    }
}

impl NewTicket {
    pub fn parse(input: TicketInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let title = match &input.title {
            None => {
                e.add("title", "is required: say in one line what should change");
                None
            }
            Some(v) => e.check("title", bounded_text(v, "title", 1, 500)),
        };
        let description = input
            .description
            .as_deref()
            .map_or(Some(String::new()), |v| e.check("description", bounded_text(v, "description", 0, 100_000)));
        let severity = input.severity.as_deref().map_or(Some(Severity::Medium), |v| e.check("severity", v.parse()));
        let source = input.source.as_deref().map_or(Some(TicketSource::Api), |v| e.check("source", v.parse()));
        let external_id = match input.external_id.as_deref() {
            None => Some(None),
            Some(v) => e.check("external_id", bounded_text(v, "external_id", 1, 200)).map(Some),
        };
        let external_url = match input.external_url.flatten() {
            None => Some(None),
            Some(v) => e.check("external_url", parse_external_url(&v)).map(Some),
        };
        let category = match input.category.flatten() {
            None => Some(None),
            Some(v) => e.check("category", v.parse::<TicketCategory>()).map(Some),
        };
        let metadata = match &input.metadata {
            None | Some(None) => Some(serde_json::json!({})),
            Some(Some(v)) => e.check("metadata", parse_metadata(v)),
        };
        match (title, description, severity, source, external_id, external_url, category, metadata) {
            (
                Some(title),
                Some(description),
                Some(severity),
                Some(source),
                Some(external_id),
                Some(external_url),
                Some(category),
                Some(metadata),
            ) if e.is_empty() => {
                Ok(NewTicket { title, description, severity, source, external_id, external_url, category, metadata })
            }
            _ => Err(e),
        }
    }

    /// The ticket this creates: new tickets start in research, open.
    pub fn into_ticket(self, project_id: ProjectId, created_by: Option<UserId>, now: OffsetDateTime) -> Ticket {
        Ticket {
            id: TicketId::new(),
            project_id,
            title: self.title,
            description: self.description,
            severity: self.severity,
            phase: Phase::Research,
            status: TicketStatus::Open,
            source: self.source,
            external_id: self.external_id,
            external_url: self.external_url,
            category: self.category,
            metadata: self.metadata,
            pull_request_url: None,
            workflow_override_reason: None,
            workflow_overridden_at: None,
            workflow_overridden_by: None,
            created_by,
            archived_at: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Whether a list includes archived tickets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArchivedFilter {
    /// Only tickets that are not archived (the default).
    #[default]
    Exclude,
    /// Archived and not archived alike.
    Include,
    /// Only archived tickets.
    Only,
}

/// Which tickets a list returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TicketFilter {
    pub project_id: Option<ProjectId>,
    pub phase: Option<Phase>,
    pub status: Option<TicketStatus>,
    pub severity: Option<Severity>,
    pub archived: ArchivedFilter,
    /// Matches title and description, case-insensitively.
    pub search: Option<String>,
    /// Only the projects this user is a member of.
    pub member_of: Option<crate::UserId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_a_bounded_flat_object() {
        assert!(parse_metadata(&serde_json::json!({"page_url": "https://x", "screen": 1440, "ok": true})).is_ok());
        assert!(parse_metadata(&serde_json::json!(["a"])).unwrap_err().contains("JSON object"));
        assert!(parse_metadata(&serde_json::json!({"nested": {"a": 1}})).unwrap_err().contains("not nested"));
        let many: serde_json::Map<String, serde_json::Value> = (0..51).map(|i| (format!("k{i}"), 1.into())).collect();
        assert!(parse_metadata(&serde_json::Value::Object(many)).unwrap_err().contains("at most 50 keys"));
        let big = serde_json::json!({"note": "x".repeat(MAX_METADATA_BYTES)});
        assert!(parse_metadata(&big).unwrap_err().contains("at most"));
        let bad_category: TicketInput =
            serde_json::from_value(serde_json::json!({"title": "t", "category": "rant"})).unwrap();
        let errors = NewTicket::parse(bad_category).unwrap_err();
        assert!(errors.summary().contains("category"), "{}", errors.summary());
    }

    fn input(json: &str) -> TicketInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_empty_title_is_refused_naming_title() {
        let err = NewTicket::parse(input(r#"{"title":"  "}"#)).unwrap_err();
        assert_eq!(err.fields.len(), 1);
        assert_eq!(err.fields[0].field, "title");
        assert_eq!(err.fields[0].message, "title must not be empty");
    }

    #[test]
    fn a_new_ticket_defaults_to_medium_from_the_api_in_research() {
        let ticket = NewTicket::parse(input(r#"{"title":"Fix login"}"#)).unwrap().into_ticket(
            ProjectId::new(),
            None,
            OffsetDateTime::now_utc(),
        );
        assert_eq!(
            (ticket.severity, ticket.source, ticket.phase, ticket.status),
            (Severity::Medium, TicketSource::Api, Phase::Research, TicketStatus::Open)
        );
    }

    #[test]
    fn unknown_severity_lists_the_valid_ones() {
        let err = NewTicket::parse(input(r#"{"title":"x","severity":"urgent"}"#)).unwrap_err();
        assert_eq!(err.fields[0].field, "severity");
        assert!(err.fields[0].message.contains("low, medium, high, critical"));
    }

    #[test]
    fn the_source_cannot_be_edited() {
        let err = TicketPatch::parse(input(r#"{"source":"ui"}"#)).unwrap_err();
        assert_eq!(err.fields[0].field, "source");
    }
}

/// The most a single attachment may hold.
pub const MAX_ATTACHMENT_BYTES: usize = 10 * 1024 * 1024;

/// A file attached to a ticket (a screenshot, a log). Text files up to
/// [`MAX_AGENT_ATTACHMENT_BYTES`] are given to the agent in its workspace.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Attachment {
    pub id: uuid::Uuid,
    pub ticket_id: TicketId,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
    pub uploaded_by: Option<UserId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Text attachments up to this size are written into the agent's workspace.
pub const MAX_AGENT_ATTACHMENT_BYTES: usize = 256 * 1024;

impl Attachment {
    /// Shown in the browser (images) rather than downloaded.
    pub fn is_image(&self) -> bool {
        matches!(self.content_type.as_str(), "image/png" | "image/jpeg" | "image/gif" | "image/webp")
    }
}

/// An attachment's file name as given: a plain name, no directories, no
/// control characters, 1 to 200 characters.
pub fn parse_attachment_filename(value: &str) -> Result<String, String> {
    let name = value.trim();
    if name.is_empty() {
        return Err("is required: give the file's name, e.g. `?filename=error.log`".into());
    }
    if name.chars().count() > 200 {
        return Err("must be at most 200 characters".into());
    }
    if name.contains(['/', '\\']) || name == "." || name == ".." || name.starts_with('.') {
        return Err(format!("`{name}` is not a plain file name: no directories and no leading dot"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_owned())
}

/// A content type as sent (`type/subtype`, parameters dropped), or
/// `application/octet-stream`.
pub fn parse_content_type(value: Option<&str>) -> Result<String, String> {
    let Some(value) = value.map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()) else {
        return Ok("application/octet-stream".into());
    };
    if value.is_empty() {
        return Ok("application/octet-stream".into());
    }
    let valid =
        |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c));
    match value.split_once('/') {
        Some((kind, sub)) if valid(kind) && valid(sub) && value.len() <= 100 => Ok(value),
        _ => Err(format!("`{value}` is not a content type like `text/plain` or `image/png`")),
    }
}

#[cfg(test)]
mod attachment_tests {
    use super::*;

    #[test]
    fn attachment_names_are_plain_file_names() {
        assert_eq!(parse_attachment_filename(" error.log ").unwrap(), "error.log");
        assert_eq!(
            parse_attachment_filename("Screenshot 2026-11-28 at 10.00.png").unwrap(),
            "Screenshot 2026-11-28 at 10.00.png"
        );
        for bad in ["", "../etc/passwd", "a/b", "a\\b", ".env", "..", "a\nb"] {
            assert!(parse_attachment_filename(bad).is_err(), "{bad:?}");
        }
        assert!(parse_attachment_filename(&"x".repeat(201)).is_err());
    }

    #[test]
    fn content_types_are_checked_and_parameters_dropped() {
        assert_eq!(parse_content_type(Some("text/plain; charset=utf-8")).unwrap(), "text/plain");
        assert_eq!(parse_content_type(Some("IMAGE/PNG")).unwrap(), "image/png");
        assert_eq!(parse_content_type(None).unwrap(), "application/octet-stream");
        assert!(parse_content_type(Some("nonsense")).is_err());
        assert!(parse_content_type(Some("text/<script>")).is_err());
    }
}
