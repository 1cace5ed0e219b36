//! Projects: one repository and its settings.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ProjectId;
use crate::scm::{DEFAULT_BRANCH_TEMPLATE, parse_branch_name, parse_branch_template, parse_repository_url};
use crate::validation::{ValidationErrors, bounded_text, nullable};

pub const DEFAULT_MAX_EXECUTION_SECS: u32 = 45 * 60;
pub const DEFAULT_MAX_CONCURRENT_JOBS: u32 = 2;
const MAX_EXECUTION_RANGE: std::ops::RangeInclusive<u32> = 10..=24 * 60 * 60;
const CONCURRENCY_RANGE: std::ops::RangeInclusive<u32> = 1..=100;

/// A project's short, URL-safe name: lowercase letters, digits and dashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProjectSlug(String);

impl ProjectSlug {
    pub fn parse(value: &str) -> Result<Self, String> {
        let slug = value.trim();
        if slug.is_empty() || slug.len() > 63 {
            return Err("must be 1 to 63 characters".into());
        }
        if !slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || slug.starts_with('-')
            || slug.ends_with('-')
        {
            return Err(format!(
                "`{slug}` is not a valid slug: use lowercase letters, digits and single dashes, e.g. `web-app`"
            ));
        }
        // An id in a path wins over a slug, so a slug that reads as one could never be found.
        if uuid::Uuid::parse_str(slug).is_ok() {
            return Err("must not read as an id (32 hex digits, or 8-4-4-4-12): add a letter past `f`".into());
        }
        Ok(Self(slug.to_owned()))
    }

    /// A slug read back from the database. One saved before 32 hex digits counted as an id is kept as it is
    /// (the row is still found by its id) rather than making the row unreadable.
    pub fn stored(value: &str) -> Result<Self, String> {
        match Self::parse(value) {
            Err(_) if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) => {
                Ok(Self(value.to_owned()))
            }
            other => other,
        }
    }

    /// Derives a slug from a display name: "Web App (v2)" becomes `web-app-v2`. A name with nothing
    /// to keep ("日本", "!!!") gets `<fallback>-` and eight random hex digits, so every name has a slug.
    pub fn from_name(name: &str, fallback: &str) -> Self {
        let mut slug = String::new();
        for c in name.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_alphanumeric() {
                slug.push(c);
            } else if !slug.ends_with('-') && !slug.is_empty() {
                slug.push('-');
            }
        }
        let slug: String = slug.trim_end_matches('-').chars().take(63).collect();
        Self::parse(slug.trim_end_matches('-')).unwrap_or_else(|_| {
            let random = uuid::Uuid::new_v4().simple().to_string();
            Self(format!("{fallback}-{}", &random[..8]))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl utoipa::PartialSchema for ProjectSlug {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[a-z0-9]+(-[a-z0-9]+)*$"))
            .into()
    }
}
impl utoipa::ToSchema for ProjectSlug {}

/// A project as stored.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub slug: ProjectSlug,
    pub description: String,
    /// The clone URL of the repository the agents work on.
    pub repository_url: Option<String>,
    /// The branch work starts from.
    pub base_branch: String,
    /// Where pull requests go, when not to `repository_url` (e.g. a fork flow).
    pub pr_repository_url: Option<String>,
    /// The branch pull requests target, when not `base_branch`.
    pub pr_base_branch: Option<String>,
    /// The template for work branches, e.g. `viberglass/{{ ticket }}`.
    pub branch_name_template: String,
    /// The SCM integration (by name) that opens pull requests; without one,
    /// github.com and gitlab.com are recognised by host and any other remote
    /// is plain git (push only).
    pub scm_integration: Option<String>,
    /// The name of the secret holding the token git uses to clone and push
    /// (default: the integration's credential).
    pub credential_secret: Option<String>,
    /// The user name sent with that token (GitHub: `x-access-token`, GitLab: `oauth2`).
    pub scm_username: String,
    /// How long one run may take before it is stopped, in seconds.
    pub max_execution_secs: u32,
    /// How many runs of this project may be active at once.
    pub max_concurrent_jobs: u32,
    /// Extra instructions every agent in this project receives (its AGENTS.md).
    pub agent_instructions: String,
    /// Planning waits until the research is approved.
    pub research_needs_approval: bool,
    /// Execution waits until the plan is approved (the default).
    pub planning_needs_approval: bool,
    /// Tickets may be run through every phase without the approval gates ("run all").
    pub allow_run_all: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The fields of a project as a client sends them, to create or to change one.
/// On create, `name` is required; on change, only the fields present are changed
/// and `null` clears an optional field.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub repository_url: Option<Option<String>>,
    pub base_branch: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub pr_repository_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub pr_base_branch: Option<Option<String>>,
    pub branch_name_template: Option<String>,
    /// The name of an SCM integration; `null` unlinks it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub scm_integration: Option<Option<String>>,
    /// The name of a secret holding the repository token; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub credential_secret: Option<Option<String>>,
    pub scm_username: Option<String>,
    pub max_execution_secs: Option<u32>,
    pub max_concurrent_jobs: Option<u32>,
    pub agent_instructions: Option<String>,
    pub research_needs_approval: Option<bool>,
    pub planning_needs_approval: Option<bool>,
    pub allow_run_all: Option<bool>,
}

/// A validated change to a project: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectPatch {
    pub name: Option<String>,
    pub slug: Option<ProjectSlug>,
    pub description: Option<String>,
    pub repository_url: Option<Option<String>>,
    pub base_branch: Option<String>,
    pub pr_repository_url: Option<Option<String>>,
    pub pr_base_branch: Option<Option<String>>,
    pub branch_name_template: Option<String>,
    pub scm_integration: Option<Option<String>>,
    pub credential_secret: Option<Option<String>>,
    pub scm_username: Option<String>,
    pub max_execution_secs: Option<u32>,
    pub max_concurrent_jobs: Option<u32>,
    pub agent_instructions: Option<String>,
    pub research_needs_approval: Option<bool>,
    pub planning_needs_approval: Option<bool>,
    pub allow_run_all: Option<bool>,
}

/// A validated new project.
#[derive(Debug, Clone, PartialEq)]
pub struct NewProject(pub ProjectPatch);

fn optional(
    errors: &mut ValidationErrors,
    field: &str,
    value: Option<Option<String>>,
    parse: fn(&str) -> Result<String, String>,
) -> Option<Option<String>> {
    match value {
        None => None,
        Some(None) => Some(None),
        Some(Some(text)) if text.trim().is_empty() => Some(None),
        Some(Some(text)) => errors.check(field, parse(&text)).map(Some),
    }
}

impl ProjectPatch {
    pub fn parse(input: ProjectInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let patch = ProjectPatch {
            name: input.name.and_then(|v| e.check("name", bounded_text(&v, "name", 1, 100))),
            slug: input.slug.and_then(|v| e.check("slug", ProjectSlug::parse(&v))),
            description: input
                .description
                .and_then(|v| e.check("description", bounded_text(&v, "description", 0, 10_000))),
            repository_url: optional(&mut e, "repository_url", input.repository_url, parse_repository_url),
            base_branch: input.base_branch.and_then(|v| e.check("base_branch", parse_branch_name(&v))),
            pr_repository_url: optional(&mut e, "pr_repository_url", input.pr_repository_url, parse_repository_url),
            pr_base_branch: optional(&mut e, "pr_base_branch", input.pr_base_branch, parse_branch_name),
            branch_name_template: input
                .branch_name_template
                .and_then(|v| e.check("branch_name_template", parse_branch_template(&v))),
            scm_integration: optional(
                &mut e,
                "scm_integration",
                input.scm_integration,
                crate::integration::parse_integration_name,
            ),
            credential_secret: optional(
                &mut e,
                "credential_secret",
                input.credential_secret,
                crate::secret::parse_secret_name,
            ),
            scm_username: input
                .scm_username
                .and_then(|v| e.check("scm_username", bounded_text(&v, "scm_username", 1, 100))),
            max_execution_secs: input.max_execution_secs.and_then(|v| {
                e.check(
                    "max_execution_secs",
                    if MAX_EXECUTION_RANGE.contains(&v) {
                        Ok(v)
                    } else {
                        Err(format!("must be between 10 and 86400 seconds (got {v})"))
                    },
                )
            }),
            max_concurrent_jobs: input.max_concurrent_jobs.and_then(|v| {
                e.check(
                    "max_concurrent_jobs",
                    if CONCURRENCY_RANGE.contains(&v) {
                        Ok(v)
                    } else {
                        Err(format!("must be between 1 and 100 (got {v})"))
                    },
                )
            }),
            agent_instructions: input
                .agent_instructions
                .and_then(|v| e.check("agent_instructions", bounded_text(&v, "agent_instructions", 0, 100_000))),
            research_needs_approval: input.research_needs_approval,
            planning_needs_approval: input.planning_needs_approval,
            allow_run_all: input.allow_run_all,
        };
        e.into_result(patch)
    }

    pub fn is_empty(&self) -> bool {
        *self == ProjectPatch::default()
    }

    /// Applies this change to a project.
    pub fn apply(self, project: &mut Project) {
        // Destructured, so that a field added to the patch cannot be forgotten here.
        let ProjectPatch {
            name,
            slug,
            description,
            repository_url,
            base_branch,
            pr_repository_url,
            pr_base_branch,
            branch_name_template,
            scm_integration,
            credential_secret,
            scm_username,
            max_execution_secs,
            max_concurrent_jobs,
            agent_instructions,
            research_needs_approval,
            planning_needs_approval,
            allow_run_all,
        } = self;
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = $field { project.$field = v; })* };
        }
        set!(
            name,
            slug,
            description,
            repository_url,
            base_branch,
            pr_repository_url,
            pr_base_branch,
            branch_name_template,
            scm_integration,
            credential_secret,
            scm_username,
            max_execution_secs,
            max_concurrent_jobs,
            agent_instructions,
            research_needs_approval,
            planning_needs_approval,
            allow_run_all
        );
    }
}

impl NewProject {
    pub fn parse(input: ProjectInput) -> Result<Self, ValidationErrors> {
        let name_missing = input.name.is_none();
        let mut patch = match ProjectPatch::parse(input) {
            Ok(patch) => patch,
            Err(mut errors) => {
                if name_missing {
                    errors.add("name", "is required: give the project a name");
                }
                return Err(errors);
            }
        };
        let Some(name) = patch.name.clone() else {
            return Err(ValidationErrors::single("name", "is required: give the project a name"));
        };
        if patch.slug.is_none() {
            patch.slug = Some(ProjectSlug::from_name(&name, "project"));
        }
        Ok(NewProject(patch))
    }

    /// The project this creates, with defaults for every field not given.
    pub fn into_project(self, now: OffsetDateTime) -> Project {
        let mut project = Project {
            id: ProjectId::new(),
            name: String::new(),
            slug: ProjectSlug(String::new()),
            description: String::new(),
            repository_url: None,
            base_branch: "main".into(),
            pr_repository_url: None,
            pr_base_branch: None,
            branch_name_template: DEFAULT_BRANCH_TEMPLATE.into(),
            scm_integration: None,
            credential_secret: None,
            scm_username: "x-access-token".into(),
            max_execution_secs: DEFAULT_MAX_EXECUTION_SECS,
            max_concurrent_jobs: DEFAULT_MAX_CONCURRENT_JOBS,
            agent_instructions: String::new(),
            research_needs_approval: false,
            planning_needs_approval: true,
            allow_run_all: false,
            archived_at: None,
            created_at: now,
            updated_at: now,
        };
        self.0.apply(&mut project);
        project
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> ProjectInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_new_project_gets_a_slug_and_defaults() {
        let project =
            NewProject::parse(input(r#"{"name":"Web App (v2)"}"#)).unwrap().into_project(OffsetDateTime::now_utc());
        assert_eq!(project.slug.as_str(), "web-app-v2");
        assert_eq!(project.base_branch, "main");
        assert_eq!(project.branch_name_template, DEFAULT_BRANCH_TEMPLATE);
        assert_eq!(project.max_execution_secs, 2700);
    }

    #[test]
    fn a_new_project_without_a_name_names_the_field() {
        let err = NewProject::parse(input("{}")).unwrap_err();
        assert_eq!(err.fields[0].field, "name");
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let err = NewProject::parse(input(
            r#"{"name":"","base_branch":"a b","max_execution_secs":5,"repository_url":"nope"}"#,
        ))
        .unwrap_err();
        let fields: Vec<_> = err.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "repository_url", "base_branch", "max_execution_secs"]);
    }

    #[test]
    fn null_clears_an_optional_field_and_absence_keeps_it() {
        let patch = ProjectPatch::parse(input(r#"{"pr_base_branch":null}"#)).unwrap();
        assert_eq!(patch.pr_base_branch, Some(None));
        assert_eq!(patch.repository_url, None);
    }

    #[test]
    fn slugs_that_look_like_ids_are_refused() {
        assert!(ProjectSlug::parse("01920000-0000-7000-8000-000000000000").is_err());
        // The simple form is an id too: before, such a slug was saved and then never found.
        assert!(ProjectSlug::parse("0192000000007000800000000000abcd").is_err());
        assert!(ProjectSlug::parse("a192000000007000800000000000abcg").is_ok());
        assert!(ProjectSlug::parse("Web").is_err());
    }

    #[test]
    fn a_slug_saved_before_the_id_rule_still_reads() {
        assert!(ProjectSlug::stored("0192000000007000800000000000abcd").is_ok());
        assert!(ProjectSlug::stored("Not A Slug").is_err());
    }

    #[test]
    fn every_name_has_a_slug() {
        assert_eq!(ProjectSlug::from_name("Web App (v2)", "project").as_str(), "web-app-v2");
        for name in ["!!!", "日本", "01920000-0000-7000-8000-000000000000"] {
            let slug = ProjectSlug::from_name(name, "project");
            assert!(slug.as_str().starts_with("project-") && slug.as_str().len() == 16, "{name}: {}", slug.as_str());
            assert!(ProjectSlug::parse(slug.as_str()).is_ok());
        }
    }
}
