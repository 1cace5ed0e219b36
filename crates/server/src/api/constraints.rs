//! What the validation enforces that the derived schemas cannot say: lengths, patterns, ranges, enums, and
//! the fields a create needs that a change does not. Stated here, on the document, so that a client generated
//! from it sends only what the server accepts and schemathesis (`scripts/schemathesis`) can hold the two to it.
//!
//! Every rule names a schema and a property; [`apply`] reports any it could not find, and a test keeps that
//! list empty, so a renamed field cannot silently lose its constraint.

use serde_json::{Value, json};

/// Rust's `char::is_control` (Unicode Cc), as a regex class body, but for tab, line feed and carriage return.
const CONTROL_BUT_LINES: &str = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f";
/// Every Cc character.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// `bounded_text(min, max)`: no control characters but tab and line breaks, and `min..=max` characters once trimmed
/// (so the limit is in the pattern: spaces around the text do not count). `min` is 0 or 1, `max` at least 2.
/// The lengths live in the pattern alone: a `minLength` beside it sends schemathesis 4.32's coverage phase to
/// bodies it cannot build.
fn text(min: usize, max: usize) -> Value {
    let c = CONTROL_BUT_LINES;
    let core = format!(r"[^{c}\s]([^{c}]{{0,{}}}[^{c}\s])?", max - 2);
    let pattern = if min == 0 { format!(r"^\s*({core})?\s*$") } else { format!(r"^\s*{core}\s*$") };
    json!({"type": "string", "pattern": pattern})
}

/// The id or slug of something, looked up as given: at most `max` characters (what is not found is a 404).
fn line(max: usize) -> Value {
    json!({"type": "string", "maxLength": max})
}

/// Any printable text (no control characters at all), `min..=max` characters.
fn printable(min: usize, max: usize) -> Value {
    json!({"type": "string", "pattern": format!("^[^{CONTROL}]{{{min},{max}}}$")})
}

/// A slug (`ProjectSlug::parse`): lowercase letters, digits and dashes, not at either end, never an id.
const SLUG: &str = "^(?![0-9a-f]{32}$|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// A secret or variable name (`parse_secret_name`).
const SECRET_NAME: &str = "^[A-Z_][A-Z0-9_]{0,127}$";
/// A branch name (`parse_branch_name`, what `git check-ref-format --branch` takes): parts of anything but control
/// and invisible characters, spaces and `~^:?*[\`, none starting with `.`, joined by single slashes; not starting with `-`, not
/// ending with `.` or `.lock`, without `..` or `@{`, and not `@`.
const BRANCH: &str = r"^(?!-)(?!.*\.lock$)(?!.*\.\.)(?!.*@\{)(?!@$)(?!.*\.$)[^.\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\s~^:?*\[\\/][^\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\s~^:?*\[\\/]*(/[^.\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\s~^:?*\[\\/][^\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\s~^:?*\[\\/]*)*$";
/// A branch-name template (`parse_branch_template`): a branch name in which the known placeholders may stand for
/// text (`{{ ticket }}`, …; each renders to a short name).
const BRANCH_TEMPLATE: &str = r"^(?!-)(?!.*\.lock$)(?!.*\.\.)(?!.*@\{)(?!@$)(?!.*\.$)([^.{\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\s~^:?*\[\\/]|\{\{\s*(ticket|clanker|job|date)\s*\}\})([^{\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\s~^:?*\[\\/]|\{\{\s*(ticket|clanker|job|date)\s*\}\})*(/([^.{\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\s~^:?*\[\\/]|\{\{\s*(ticket|clanker|job|date)\s*\}\})([^{\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\s~^:?*\[\\/]|\{\{\s*(ticket|clanker|job|date)\s*\}\})*)*$";
/// A clone URL (`parse_repository_url`): https, http or ssh to a host, a `file://` path, or `git@host:path`.
const REPOSITORY_URL: &str = r"^((https?|ssh)://[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)*/?|file:///[A-Za-z0-9._~%+/-]*|git@[A-Za-z0-9][A-Za-z0-9.-]*:[A-Za-z0-9._~%+-]+(/[A-Za-z0-9._~%+-]+)*)$";
/// An http(s) address with a host and no credentials, query or fragment.
/// The host is a name whose last label starts with a letter: never an address literal (`http://10` is 0.0.0.10).
const HTTP_URL: &str = r"^https?://([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z]([a-z0-9-]{0,61}[a-z0-9])?(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~-]+)*/?$";
/// An e-mail address as an account name (`parse_email`): one `@`, something either side, no spaces.
const EMAIL: &str = r"^\s*[^@\s\u0000-\u001f\u007f-\u009f]+@[^@\s\u0000-\u001f\u007f-\u009f]+\s*$";
/// A Standard Webhooks secret: `whsec_` and the padded base64 of 24 to 64 bytes.
const SIGNING_SECRET: &str = "^whsec_(([A-Za-z0-9+/]{4}){8,20}([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|([A-Za-z0-9+/]{4}){21}([A-Za-z0-9+/]{2}==)?)$";

fn pattern(pattern: &str, max: usize) -> Value {
    json!({"type": "string", "maxLength": max, "pattern": pattern})
}

/// An optional text field where blank means "clear it".
fn or_blank(value: Value) -> Value {
    json!({"anyOf": [{"type": "string", "pattern": r"^\s*$"}, value]})
}

fn integer(min: i64, max: i64) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max})
}

fn one_of(names: &[&str]) -> Value {
    json!({"type": "string", "enum": names})
}

/// `null` stays allowed where the derive allowed it (an absent optional field), so the constraint is on the value.
fn nullable(value: Value) -> Value {
    json!({"anyOf": [value, {"type": "null"}]})
}

/// Field rules: (schema, property, constraint). A property the derive made nullable stays nullable.
fn fields() -> Vec<(&'static str, &'static str, Value)> {
    use viberglass_domain::{AgentKind, ComputeKind, Phase, ScmProvider, SecretBackend, Severity, SubscriptionAuth};
    vec![
        // Projects.
        ("ProjectInput", "name", text(1, 100)),
        ("ProjectInput", "slug", pattern(SLUG, 63)),
        ("ProjectInput", "description", text(0, 10_000)),
        ("ProjectInput", "repository_url", or_blank(pattern(REPOSITORY_URL, 2048))),
        ("ProjectInput", "pr_repository_url", or_blank(pattern(REPOSITORY_URL, 2048))),
        ("ProjectInput", "base_branch", pattern(BRANCH, 200)),
        ("ProjectInput", "pr_base_branch", or_blank(pattern(BRANCH, 200))),
        ("ProjectInput", "branch_name_template", pattern(BRANCH_TEMPLATE, 200)),
        ("ProjectInput", "scm_integration", or_blank(pattern(SLUG, 63))),
        ("ProjectInput", "credential_secret", or_blank(pattern(SECRET_NAME, 128))),
        ("ProjectInput", "scm_username", text(1, 100)),
        ("ProjectInput", "max_execution_secs", integer(10, 86_400)),
        ("ProjectInput", "max_concurrent_jobs", integer(1, 100)),
        ("ProjectInput", "agent_instructions", text(0, 100_000)),
        // Clankers.
        ("ClankerInput", "name", text(1, 100)),
        ("ClankerInput", "slug", pattern(SLUG, 63)),
        ("ClankerInput", "description", text(0, 2000)),
        ("ClankerInput", "agent", one_of(AgentKind::NAMES)),
        ("ClankerInput", "compute", one_of(ComputeKind::NAMES)),
        ("ClankerInput", "max_concurrent_jobs", integer(1, 100)),
        ("ClankerInput", "secrets", json!({"type": "array", "items": pattern(SECRET_NAME, 128)})),
        ("ClankerInput", "projects", json!({"type": "array", "items": line(100)})),
        (
            "InstructionFile",
            "path",
            pattern(r"^(AGENTS\.md|skills/([A-Za-z0-9_-][A-Za-z0-9._-]*/)*[A-Za-z0-9_-][A-Za-z0-9._-]*\.md)$", 200),
        ),
        ("InstructionFile", "content", json!({"type": "string", "maxLength": 262_144})),
        ("AgentSettings", "provider", one_of(&["openai", "openai-responses", "anthropic"])),
        ("AgentSettings", "api_key_secret", pattern(SECRET_NAME, 128)),
        // Tickets.
        ("TicketInput", "title", text(1, 500)),
        ("TicketInput", "description", text(0, 100_000)),
        ("TicketInput", "severity", one_of(Severity::NAMES)),
        ("TicketInput", "external_id", text(1, 200)),
        (
            "TicketInput",
            "external_url",
            json!({"type": "string", "maxLength": 2048, "pattern": r"^\s*https?://\S*\s*$"}),
        ),
        ("TicketInput", "category", one_of(viberglass_domain::TicketCategory::NAMES)),
        ("TicketInput", "source", one_of(viberglass_domain::TicketSource::NAMES)),
        // Accounts and tokens.
        ("UserInput", "email", pattern(EMAIL, 254)),
        ("UserInput", "name", text(0, 100)),
        ("UserInput", "password", password()),
        ("UserPatchInput", "name", text(0, 100)),
        ("UserPatchInput", "password", password()),
        ("TokenInput", "name", text(1, 100)),
        ("TokenInput", "expires_in_days", integer(1, 3650)),
        // SCM integrations.
        ("IntegrationInput", "name", pattern(SLUG, 63)),
        ("IntegrationInput", "kind", one_of(&[ScmProvider::GitHub.as_str(), ScmProvider::GitLab.as_str()])),
        ("IntegrationInput", "base_url", pattern(HTTP_URL, 2000)),
        ("IntegrationInput", "credential_secret", or_blank(pattern(SECRET_NAME, 128))),
        // Secrets.
        ("SecretInput", "name", pattern(SECRET_NAME, 128)),
        ("SecretInput", "backend", one_of(SecretBackend::NAMES)),
        ("SecretInput", "value", secret_value()),
        ("SecretInput", "description", text(0, 1000)),
        ("SecretPatchInput", "value", secret_value()),
        ("SecretPatchInput", "description", text(0, 1000)),
        // Slack.
        ("SlackSettingsInput", "signing_secret", pattern(SECRET_NAME, 128)),
        ("SlackSettingsInput", "bot_token_secret", pattern(SECRET_NAME, 128)),
        ("SlackSettingsInput", "api_url", or_blank(pattern(HTTP_URL, 2000))),
        // Outbound webhook subscriptions.
        ("SubscriptionInput", "url", pattern(HTTP_URL, 2000)),
        ("SubscriptionInput", "description", text(0, 500)),
        ("SubscriptionInput", "events", json!({"type": "array", "items": one_of(viberglass_domain::EventType::NAMES)})),
        ("SubscriptionInput", "secret", pattern(SIGNING_SECRET, 100)),
        (
            "SubscriptionInput",
            "headers",
            json!({
                "type": "object",
                "maxProperties": viberglass_domain::subscription::MAX_HEADERS,
                "propertyNames": {"pattern": header_name()},
                "additionalProperties": printable_header_value(),
            }),
        ),
        ("SubscriptionInput", "auth", one_of(SubscriptionAuth::NAMES)),
        // token, username and password are checked with their `auth` (subscription_auth).
        ("RedeliverFailedInput", "since", json!({"type": "string", "format": "date-time"})),
        ("RotateInput", "overlap_secs", integer(0, 604_800)),
        // Runs and the workflow.
        ("RunRequest", "phase", one_of(Phase::NAMES)),
        ("RunRequest", "clanker", line(100)),
        ("ContinueInput", "phase", one_of(&[Phase::Research.as_str(), Phase::Planning.as_str()])),
        ("ContinueInput", "clanker", line(100)),
        ("CommentInput", "line", integer(1, i64::MAX)),
        ("CommentInput", "body", text(1, 10_000)),
        ("CommentInput", "suggestion", text(0, 10_000)),
        ("DocumentEdit", "base_revision", integer(0, i64::MAX)),
        ("RoleInput", "role", one_of(viberglass_domain::ProjectRole::NAMES)),
        ("PromptInput", "template", prompt_template()),
        ("TestConnection", "project", line(100)),
        (
            "TestConnection",
            "repository",
            json!({"type": "string", "maxLength": 500, "pattern": format!(r"^\s*/*[^\s/{CONTROL}][^\s{CONTROL}]*/[^\s{CONTROL}]*[^\s/{CONTROL}]/*\s*$")}),
        ),
        ("CadenceInput", "cron", or_blank(pattern(CRON, 200))),
        ("CadenceInput", "timezone", one_of(TIMEZONES)),
        ("CadenceInput", "interval", or_blank(pattern(INTERVAL, 32))),
        ("ScheduleInput", "cron", or_blank(pattern(CRON, 200))),
        ("ScheduleInput", "timezone", one_of(TIMEZONES)),
        ("ScheduleInput", "interval", or_blank(pattern(INTERVAL, 32))),
        ("ScheduleInput", "name", text(1, 100)),
        ("ScheduleInput", "overlap", one_of(viberglass_domain::schedule::OverlapPolicy::NAMES)),
        ("ScheduleInput", "missed", one_of(viberglass_domain::schedule::MissedPolicy::NAMES)),
        ("WebhookConfigInput", "name", text(1, 100)),
        ("WebhookConfigInput", "provider", one_of(viberglass_domain::WebhookProvider::NAMES)),
        ("WebhookConfigInput", "secret", printable(viberglass_domain::webhook::MIN_SECRET_CHARS, 256)),
        ("WebhookConfigInput", "on_new_ticket", one_of(viberglass_domain::NewTicketRun::NAMES)),
        ("WebhookConfigInput", "trigger_labels", json!({"type": "array", "maxItems": 50, "items": text(1, 100)})),
        (
            "WebhookConfigInput",
            "severity_labels",
            json!({"type": "object", "maxProperties": 50, "propertyNames": text(1, 100), "additionalProperties": one_of(Severity::NAMES)}),
        ),
        ("WebhookConfigInput", "bot_name", json!({"type": "string", "pattern": r"^\s*@*[A-Za-z0-9._-]{1,64}\s*$"})),
        ("WebhookConfigInput", "clanker", or_blank(text(1, 100))),
        ("WebhookConfigInput", "feedback_api_url", or_blank(pattern(HTTP_URL, 500))),
        ("WebhookConfigInput", "feedback_secret", or_blank(pattern(SECRET_NAME, 128))),
        ("WebhookConfigInput", "success_label", text(1, 100)),
        ("WebhookConfigInput", "failure_label", text(1, 100)),
        ("DocumentEdit", "content", json!({"type": "string", "maxLength": 500_000})),
    ]
}

/// A cron expression (a subset of what `parse_cron` takes): five fields of `*` or one value in range, the day of
/// the month at most 28 so every month has it.
const CRON: &str = r"^(\*|[0-5]?[0-9]) (\*|[01]?[0-9]|2[0-3]) (\*|[1-9]|1[0-9]|2[0-8]) (\*|[1-9]|1[0-2]) (\*|[0-6])$";
/// An interval (`parse_interval`, a minute to a year) in minutes, hours, days or weeks.
const INTERVAL: &str =
    r"^([1-9][0-9]{0,4}m|[1-9][0-9]{0,2}h|([1-9][0-9]?|[12][0-9]{2}|3[0-5][0-9]|36[0-5])d|([1-9]|[1-4][0-9]|5[0-2])w)$";
/// Time zones a cron schedule may name (any IANA name is taken; these are the ones the document promises).
const TIMEZONES: &[&str] =
    &["UTC", "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Asia/Tokyo"];

/// A prompt template (`validate_template`): it uses every variable some kind of prompt needs, so it suits each.
fn prompt_template() -> Value {
    let mut required: Vec<&str> = Vec::new();
    for kind in viberglass_domain::workflow::PromptKind::NAMES {
        let kind: viberglass_domain::workflow::PromptKind = kind.parse().expect("a named kind");
        for variable in kind.required() {
            if !required.contains(variable) {
                required.push(variable);
            }
        }
    }
    let mut pattern = String::from(r"^[^{]*");
    for variable in required {
        pattern.push_str(&format!(r"\{{\{{ {variable} \}}\}}[^{{]*"));
    }
    pattern.push('$');
    // At most 50000 characters too; not a `maxLength`, which sends schemathesis 4.32's coverage phase from this
    // pattern to a body it cannot build.
    json!({"type": "string", "pattern": pattern, "description": "1 to 50000 characters, using every variable the kind needs"})
}

/// `parse_password`: 12 to 1024 characters.
fn password() -> Value {
    json!({"type": "string", "minLength": viberglass_domain::user::MIN_PASSWORD, "maxLength": 1024})
}

/// `parse_secret_value`: not empty, at most 64 KiB, no NUL.
fn secret_value() -> Value {
    json!({"type": "string", "maxLength": viberglass_domain::secret::MAX_SECRET_VALUE, "pattern": r"^[^\u0000]+$"})
}

/// A header name (`parse_header`): a token of at most 64 characters, none the server sets itself, in any case.
fn header_name() -> String {
    let any_case = |name: &str| -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let reserved: Vec<String> = viberglass_domain::subscription::RESERVED_HEADERS.iter().map(|n| any_case(n)).collect();
    format!(
        "^(?!({})$|{}|{})[A-Za-z0-9!#$%&'*+.^_`|~-]{{1,64}}$",
        reserved.join("|"),
        any_case("webhook-"),
        any_case("x-forwarded-")
    )
}

/// A header value: at most 1000 characters, no control characters but tab.
fn printable_header_value() -> Value {
    json!({"type": "string", "maxLength": 1000, "pattern": r"^[^\u0000-\u0008\u000a-\u001f\u007f-\u009f]*$"})
}

/// Operations whose body is a create: the component's schema with the fields it needs made required and non-null,
/// and the combinations it refuses ruled out.
fn creates() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let agents: Vec<&str> = viberglass_domain::AgentKind::NAMES.iter().copied().filter(|a| *a != "command").collect();
    let secret_backends = json!({"allOf": [required(&["name"]), {"oneOf": [
        // `env` (the default): read from the server's environment, so no value, and never the server's own.
        {
            "properties": {
                "backend": {"enum": ["env", null]},
                "value": {"type": "null"},
                "name": {"pattern": "^(?!AWS_|VIBERGLASS_|(DATABASE_URL|SECRETS_ENCRYPTION_KEY|SECRETS_PREVIOUS_KEYS|AUTH_DISABLED)$)"},
                "reference": {"anyOf": [
                    {"type": "null"},
                    {"type": "string", "pattern": "^(?!AWS_|VIBERGLASS_|(DATABASE_URL|SECRETS_ENCRYPTION_KEY|SECRETS_PREVIOUS_KEYS|AUTH_DISABLED)$)[A-Z_][A-Z0-9_]{0,127}$"},
                ]},
            },
            "required": ["name"],
        },
        // `database`: the value, encrypted; no reference.
        {
            "properties": {"backend": {"const": "database"}, "reference": {"type": "null"}, "value": {"type": "string"}},
            "required": ["name", "backend", "value"],
        },
    ]}]});
    vec![
        ("post", "/api/v1/projects", "ProjectInput", required(&["name"])),
        (
            "post",
            "/api/v1/clankers",
            "ClankerInput",
            json!({"allOf": [required(&["name", "agent"]), {"oneOf": [
                {
                    "properties": {
                        "agent": {"const": "command"},
                        "agent_settings": {
                            "type": "object",
                            "properties": {"command": {
                                "type": "array",
                                "minItems": 1,
                                "prefixItems": [{"type": "string", "pattern": r"\S"}],
                                "items": {"type": "string"},
                            }},
                            "required": ["command"],
                        },
                    },
                    "required": ["agent_settings"],
                },
                {
                    "properties": {
                        "agent": {"enum": agents},
                        "agent_settings": {"anyOf": [{"type": "null"}, {"$ref": "#/components/schemas/AgentSettings"}]},
                    },
                },
            ]}, compute_configs()]}),
        ),
        ("post", "/api/v1/projects/{project}/tickets", "TicketInput", required(&["title"])),
        ("post", "/api/v1/users", "UserInput", required(&["email", "password"])),
        ("post", "/api/v1/setup", "UserInput", required(&["email", "password"])),
        ("post", "/api/v1/integrations", "IntegrationInput", required(&["name", "kind"])),
        ("post", "/api/v1/secrets", "SecretInput", secret_backends),
        ("put", "/api/v1/slack", "SlackSettingsInput", required(&["signing_secret", "bot_token_secret"])),
        ("post", "/api/v1/webhook-subscriptions", "SubscriptionInput", subscription_create()),
        ("post", "/api/v1/projects/{project}/webhook-subscriptions", "SubscriptionInput", subscription_create()),
        // A ticket's source and external id are set when it is filed, never changed.
        (
            "patch",
            "/api/v1/tickets/{ticket_id}",
            "TicketInput",
            json!({"properties": {"source": {"type": "null"}, "external_id": {"type": "null"}}}),
        ),
        // Either a project or a repository, or neither (only who the token is).
        (
            "post",
            "/api/v1/integrations/{integration}/test",
            "TestConnection",
            json!({"not": {"properties": {"project": {"type": "string"}, "repository": {"type": "string"}}, "required": ["project", "repository"]}}),
        ),
        ("post", "/api/v1/projects/{project}/schedule-preview", "CadenceInput", cadence()),
        ("post", "/api/v1/projects/{project}/schedules", "ScheduleInput", cadence()),
        ("post", "/api/v1/projects/{project}/webhooks", "WebhookConfigInput", webhook_config_create()),
        // The provider is fixed at create.
        (
            "patch",
            "/api/v1/projects/{project}/webhooks/{webhook_id}",
            "WebhookConfigInput",
            json!({"properties": {"provider": {"type": "null"}}}),
        ),
    ]
}

/// A clanker's `compute_config` for each `compute` (the compute crate's configs and their `validate`).
fn compute_configs() -> Value {
    let image = json!({"type": "string", "maxLength": 1000, "pattern": r"^\S+$"});
    let dns_label = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
    let dns_subdomain = json!({"anyOf": [{"type": "null"}, {
        "type": "string",
        "maxLength": 253,
        "pattern": r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
    }]});
    let role = json!({"type": "string", "maxLength": 2048, "pattern": "^arn:aws.*:iam::.*:role/"});
    let ids = |prefix: &str, min: usize| json!({"type": "array", "minItems": min, "items": {"type": "string", "pattern": format!("^{prefix}[A-Za-z0-9_-]{{0,{}}}$", 64 - prefix.len())}});
    let config = |properties: Value, required: &[&str]| json!({"anyOf": [{"type": "null"}, {"type": "object", "additionalProperties": false, "properties": properties, "required": required}]});
    // ECS and Lambda have settings without defaults: an object, never null.
    let object = |config: Value| config["anyOf"][1].clone();
    let fargate: Vec<Value> = [256u32, 512, 1024, 2048, 4096, 8192, 16384]
        .iter()
        .map(|cpu| {
            json!({"properties": {"cpu": {"const": cpu}, "memory": {"enum": viberglass_compute::fargate_memory(*cpu)}}, "required": ["cpu", "memory"]})
        })
        .chain([json!({"not": {"anyOf": [{"required": ["cpu"]}, {"required": ["memory"]}]}})])
        .collect();
    let mut ecs = config(
        json!({
            "cluster": {"type": "string", "maxLength": 255, "pattern": "^[A-Za-z0-9_-]+$"},
            "image": image,
            "cpu": {"type": "integer"},
            "memory": {"type": "integer"},
            "subnets": ids("subnet-", 1),
            "security_groups": ids("sg-", 1),
            "assign_public_ip": {"type": "boolean"},
            "execution_role_arn": {"anyOf": [{"type": "null"}, role]},
            "task_role_arn": {"anyOf": [{"type": "null"}, role]},
            "log_group": {"type": "string", "maxLength": 512, "pattern": "^[A-Za-z0-9_/.#-]+$"},
        }),
        &["cluster", "image", "subnets", "security_groups"],
    );
    ecs["anyOf"][1]["oneOf"] = json!(fargate);
    let ecs = object(ecs);
    let mut lambda = config(
        json!({
            "function_name": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
            "image": image,
            "role_arn": role,
            "memory_mb": integer(128, 10_240),
            "timeout_secs": integer(1, i64::from(viberglass_compute::LAMBDA_MAX_SECS)),
            "ephemeral_storage_mb": integer(512, 10_240),
            "subnets": ids("subnet-", 0),
            "security_groups": ids("sg-", 0),
        }),
        &["function_name", "image", "role_arn"],
    );
    // Subnets and security groups go together: both, or neither.
    lambda["anyOf"][1]["oneOf"] = json!([
        {"properties": {"subnets": {"maxItems": 0}, "security_groups": {"maxItems": 0}}},
        {"properties": {"subnets": {"minItems": 1}, "security_groups": {"minItems": 1}}, "required": ["subnets", "security_groups"]},
    ]);
    // Only the local branch may leave `compute` out (it is the default), so the branches never overlap.
    let branch = |compute: Value, config: Value| {
        let required = if compute["const"].is_null() { json!([]) } else { json!(["compute"]) };
        json!({"properties": {"compute": compute, "compute_config": config}, "required": required})
    };
    json!({"oneOf": [
        branch(json!({"enum": ["local", null]}), config(json!({}), &[])),
        branch(json!({"const": "docker"}), config(json!({
            "image": image,
            "cpus": {"type": "number", "exclusiveMinimum": 0, "maximum": 512},
            "memory_mb": integer(64, 1024 * 1024),
            "network": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": r"^(?!none$|host$|container:)\S+$"}]},
        }), &[])),
        branch(json!({"const": "kubernetes"}), config(json!({
            "namespace": {"type": "string", "pattern": dns_label},
            "image": image,
            "service_account": dns_subdomain,
            "image_pull_secret": dns_subdomain,
            "cpus": {"type": "number", "minimum": 0.01, "maximum": 512},
            "memory_mb": integer(64, 1024 * 1024),
            "disk_mb": integer(100, 16 * 1024 * 1024),
        }), &[])),
        {"properties": {"compute": {"const": "ecs"}, "compute_config": ecs}, "required": ["compute", "compute_config"]},
        {"properties": {"compute": {"const": "lambda"}, "compute_config": object(lambda)}, "required": ["compute", "compute_config"]},
    ]})
}

/// A schedule's cadence: a cron expression (with a time zone) or an interval, exactly one.
fn cadence() -> Value {
    let unset = json!({"anyOf": [{"type": "null"}, {"type": "string", "pattern": r"^\s*$"}]});
    json!({"oneOf": [
        {"properties": {"cron": {"type": "string", "pattern": r"\S"}, "interval": unset}, "required": ["cron"]},
        {"properties": {"interval": {"type": "string", "pattern": r"\S"}, "cron": unset}, "required": ["interval"]},
    ]})
}

/// A webhook configuration: its provider, and per provider the events it sends, whether signing may be off and
/// whether it has an issue to comment on.
fn webhook_config_create() -> Value {
    let branches: Vec<Value> = viberglass_domain::WebhookProvider::NAMES
        .iter()
        .map(|name| {
            let provider: viberglass_domain::WebhookProvider = name.parse().expect("a named provider");
            let mut properties = json!({
                "provider": {"const": name},
                "allowed_events": {"anyOf": [{"type": "null"}, {"type": "array", "items": {"enum": provider.events()}}]},
            });
            if !provider.signing_optional() {
                properties["require_signature"] = json!({"enum": [true, null]});
            }
            if !provider.has_feedback() {
                properties["feedback"] = json!({"enum": [false, null]});
            }
            json!({"properties": properties, "required": ["provider"]})
        })
        .collect();
    json!({"oneOf": branches})
}

/// `properties` that must be present and not null.
fn required(fields: &[&str]) -> Value {
    let properties: serde_json::Map<String, Value> =
        fields.iter().map(|f| ((*f).to_owned(), json!({"not": {"type": "null"}}))).collect();
    json!({"required": fields, "properties": properties})
}

/// A subscription needs its URL, and its credentials go with the matching `auth`.
fn subscription_create() -> Value {
    json!({"allOf": [required(&["url"]), subscription_auth()]})
}

fn subscription_auth() -> Value {
    json!({"oneOf": [
        {"properties": {
            "auth": {"type": "null"},
            "token": {"type": "null"},
            "username": {"type": "null"},
            "password": {"type": "null"},
        }},
        {"properties": {"auth": {"const": "none"}}, "required": ["auth"]},
        {"properties": {"auth": {"const": "bearer"}, "token": printable(1, 4096)}, "required": ["auth", "token"]},
        {
            "properties": {
                "auth": {"const": "basic"},
                "username": {"type": "string", "maxLength": 200, "pattern": format!(r"^[^:{CONTROL}]*[^:{CONTROL}\s][^:{CONTROL}]*$")},
                "password": printable(1, 4096),
            },
            "required": ["auth", "username", "password"],
        },
    ]})
}

/// Path parameters with a closed set of values, by name.
fn path_parameters() -> Vec<(&'static str, Value)> {
    vec![
        ("kind", one_of(viberglass_domain::workflow::PromptKind::NAMES)),
        ("phase", one_of(&[viberglass_domain::Phase::Research.as_str(), viberglass_domain::Phase::Planning.as_str()])),
        ("provider", one_of(viberglass_domain::WebhookProvider::NAMES)),
    ]
}

/// A UTC time as RFC 3339 writes it (days up to 28, so every month has them; no leap second).
const RFC3339_UTC: &str =
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z$";

/// Query parameters: (the path, or `*` for every path; the name; the rule). An empty value is no filter.
fn query_parameters() -> Vec<(&'static str, &'static str, Value)> {
    use viberglass_domain::{DeliveryStatus, JobStatus, OutboundStatus, Phase, TicketStatus};
    let filter = |names: &[&str]| {
        let mut names: Vec<&str> = names.to_vec();
        names.push("");
        one_of(&names)
    };
    let uuid = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
    vec![
        // A page's cursor is the `next_cursor` of the page before (a row's id).
        ("*", "cursor", json!({"type": "string", "pattern": format!(r"^(|\s*([0-9a-fA-F]{{32}}|{uuid})\s*)$")})),
        ("*", "archived", filter(&["exclude", "include", "only"])),
        (
            "*",
            "q",
            json!({"type": "string", "maxLength": viberglass_domain::validation::MAX_SEARCH_CHARS, "pattern": format!("^[^{CONTROL}]*$")}),
        ),
        ("/api/v1/tickets", "status", filter(TicketStatus::NAMES)),
        ("/api/v1/tickets", "phase", filter(Phase::NAMES)),
        ("/api/v1/jobs", "status", filter(JobStatus::NAMES)),
        ("/api/v1/jobs", "ticket", json!({"type": "string", "pattern": format!("^(|{uuid})$")})),
        ("/api/v1/projects/{project}/webhook-deliveries", "status", filter(DeliveryStatus::NAMES)),
        ("/api/v1/diagnostics", "since", json!({"type": "string", "pattern": RFC3339_UTC})),
        ("/api/v1/diagnostics", "until", json!({"type": "string", "pattern": RFC3339_UTC})),
        ("/api/v1/webhook-subscriptions/{subscription_id}/deliveries", "status", filter(OutboundStatus::NAMES)),
    ]
}

/// Query parameters naming a project, clanker or configuration by id or slug: one that does not exist is a 404.
const REFERENCE_QUERIES: &[&str] = &["project", "clanker", "webhook"];

/// Adds the rules to the document; returns the ones that name a schema, property or operation it lacks.
pub fn apply(doc: &mut Value) -> Vec<String> {
    let mut missing = Vec::new();
    let in_path = path_parameters();
    let in_query = query_parameters();
    let mut unused: Vec<String> = in_path
        .iter()
        .map(|(name, _)| format!("path parameter {{{name}}}"))
        .chain(in_query.iter().map(|(path, name, _)| format!("query parameter {name} of {path}")))
        .collect();
    for (path, item) in doc["paths"].as_object_mut().into_iter().flat_map(|paths| paths.iter_mut()) {
        for operation in item.as_object_mut().into_iter().flat_map(|ops| ops.values_mut()) {
            let mut names_a_reference = false;
            for parameter in operation.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                if parameter["in"] == "path" {
                    if let Some((_, rule)) = in_path.iter().find(|(n, _)| *n == name) {
                        parameter["schema"] = rule.clone();
                        unused.retain(|u| *u != format!("path parameter {{{name}}}"));
                    }
                } else if parameter["in"] == "query" {
                    names_a_reference |= REFERENCE_QUERIES.contains(&name.as_str());
                    if let Some((p, _, rule)) = in_query.iter().find(|(p, n, _)| *n == name && (*p == "*" || p == path))
                    {
                        parameter["schema"] = rule.clone();
                        unused.retain(|u| *u != format!("query parameter {name} of {p}"));
                    }
                }
            }
            if names_a_reference && let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut)
            {
                responses.entry("404").or_insert_with(|| {
                    json!({
                        "description": "A project, clanker or configuration the query names does not exist",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                    })
                });
            }
        }
    }
    missing.extend(unused);
    for (schema, property, rule) in fields() {
        let Some(slot) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/{property}")) else {
            missing.push(format!("{schema}.{property}"));
            continue;
        };
        let was_nullable = slot.get("type").and_then(Value::as_array).is_some_and(|t| t.iter().any(|t| t == "null"))
            || slot.get("oneOf").and_then(Value::as_array).is_some_and(|o| o.iter().any(|t| t["type"] == "null"));
        let description = slot.get("description").cloned();
        let mut rule = if was_nullable { nullable(rule) } else { rule };
        if let (Some(description), Some(rule)) = (description, rule.as_object_mut()) {
            rule.insert("description".into(), description);
        }
        *slot = rule;
    }
    // The subscription's change refuses what its create refuses, on whichever fields it is sent.
    if let Some(schema) = doc.pointer_mut("/components/schemas/SubscriptionInput")
        && let Some(schema) = schema.as_object_mut()
    {
        schema.insert("allOf".into(), json!([subscription_auth()]));
    }
    for (method, path, component, extra) in creates() {
        let pointer =
            format!("/paths/{}/{method}/requestBody/content/application~1json/schema", path.replace('/', "~1"));
        let Some(slot) = doc.pointer_mut(&pointer) else {
            missing.push(format!("{} {path}", method.to_uppercase()));
            continue;
        };
        *slot = json!({"allOf": [{"$ref": format!("#/components/schemas/{component}")}, extra]});
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_finds_its_field() {
        let mut doc = serde_json::to_value(crate::api::router().into_openapi()).unwrap();
        assert_eq!(apply(&mut doc), Vec::<String>::new());
    }

    /// A parameter declared in the path must be in the path (a query struct without `parameter_in = Query` is not).
    #[test]
    fn path_parameters_are_in_their_path() {
        let doc = crate::app::openapi();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["in"] == "path" {
                        let name = parameter["name"].as_str().unwrap();
                        assert!(path.contains(&format!("{{{name}}}")), "{method} {path}: `{name}` is not in the path");
                    }
                }
            }
        }
    }

    /// The patterns say what the parsers say, on the values either side of each rule.
    #[test]
    fn the_patterns_agree_with_the_parsers() {
        use viberglass_domain::{ProjectSlug, scm, secret};
        let matches = |pattern: &str, value: &str| fancy_regex::Regex::new(pattern).unwrap().is_match(value).unwrap();
        for slug in ["web", "a-b", "0192000000007000800000000000abcg", "x".repeat(63).as_str()] {
            assert!(matches(SLUG, slug) && ProjectSlug::parse(slug).is_ok(), "{slug}");
        }
        for slug in ["-a", "a-", "Web", "0192000000007000800000000000abcd", "01920000-0000-7000-8000-000000000000"] {
            assert!(ProjectSlug::parse(slug).is_err(), "{slug}");
        }
        for name in ["GITHUB_TOKEN", "_X", "A1"] {
            assert!(matches(SECRET_NAME, name) && secret::parse_secret_name(name).is_ok(), "{name}");
        }
        for branch in ["main", "feature/x-1", "release/1.2", "a_b+c"] {
            assert!(matches(BRANCH, branch) && scm::parse_branch_name(branch).is_ok(), "{branch}");
        }
        for branch in ["a.lock", "a..b", "a.", "/a", "-a", "a//b", ".a", "main\u{200b}", "a\u{202e}b", "a\u{84}b"] {
            assert!(!matches(BRANCH, branch) && scm::parse_branch_name(branch).is_err(), "{branch}");
        }
        for template in ["viberglass/{{ ticket }}", "{{job}}-x", "a/{{ date }}/{{clanker}}"] {
            assert!(matches(BRANCH_TEMPLATE, template) && scm::parse_branch_template(template).is_ok(), "{template}");
        }
        for url in
            ["https://github.com/acme/app.git", "git@github.com:acme/app.git", "ssh://host:22/a", "file:///srv/a"]
        {
            assert!(matches(REPOSITORY_URL, url) && scm::parse_repository_url(url).is_ok(), "{url}");
        }
        for secret in ["whsec_".to_owned() + &"A".repeat(32), "whsec_".to_owned() + &"A".repeat(84) + "AA=="] {
            assert!(
                matches(SIGNING_SECRET, &secret)
                    && viberglass_domain::subscription::parse_signing_secret(&secret).is_ok(),
                "{secret}"
            );
        }
        for secret in ["whsec_".to_owned() + &"A".repeat(28), "whsec_".to_owned() + &"A".repeat(88)] {
            assert!(!matches(SIGNING_SECRET, &secret), "{secret}");
            assert!(viberglass_domain::subscription::parse_signing_secret(&secret).is_err(), "{secret}");
        }
    }
}
