//! People: users, their project roles, API tokens, and the audit log.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::validation::{ValidationErrors, bounded_text};
use crate::{ProjectId, UserId};

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    /// Instance administrators may do everything.
    pub is_admin: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

named_enum!(
    /// What a user may do in one project. Each role includes the ones before it.
    ProjectRole, "project role", {
        /// Reads the project, its tickets, documents and runs.
        Viewer => "viewer",
        /// Also files tickets, runs phases, comments, cancels and re-runs.
        Member => "member",
        /// Also approves, changes the project's settings, members and integration.
        Maintainer => "maintainer",
    }
);

impl ProjectRole {
    fn rank(self) -> u8 {
        match self {
            ProjectRole::Viewer => 1,
            ProjectRole::Member => 2,
            ProjectRole::Maintainer => 3,
        }
    }

    /// Whether this role includes `needed`.
    pub fn includes(self, needed: ProjectRole) -> bool {
        self.rank() >= needed.rank()
    }
}

/// An e-mail address as an account name: trimmed, lowercased, one `@`, no spaces.
pub fn parse_email(value: &str) -> Result<String, String> {
    let email = value.trim().to_lowercase();
    let valid = email.chars().count() <= 254
        && email.split('@').count() == 2
        && email.split('@').all(|part| !part.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(format!("`{}` is not an e-mail address", value.trim()));
    }
    Ok(email)
}

pub const MIN_PASSWORD: usize = 12;

/// A password: 12 to 1024 characters.
pub fn parse_password(value: &str) -> Result<String, String> {
    if value.chars().count() < MIN_PASSWORD {
        return Err(format!("must be at least {MIN_PASSWORD} characters"));
    }
    if value.chars().count() > 1024 {
        return Err("must be at most 1024 characters".into());
    }
    Ok(value.to_owned())
}

/// A new account as a client sends it (first-run setup, or an admin adding someone).
#[derive(Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub email: Option<String>,
    pub name: Option<String>,
    pub password: Option<String>,
    /// Only an admin may set it; ignored at first-run setup (the first user is an admin).
    pub is_admin: Option<bool>,
}

#[derive(Clone, PartialEq)]
pub struct NewUser {
    pub email: String,
    pub name: String,
    pub password: String,
    pub is_admin: bool,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser").field("email", &self.email).field("is_admin", &self.is_admin).finish_non_exhaustive()
    }
}

impl NewUser {
    pub fn parse(input: UserInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let email = match input.email.as_deref() {
            None => {
                e.add("email", "is required");
                None
            }
            Some(v) => e.check("email", parse_email(v)),
        };
        let name = e.check("name", bounded_text(input.name.as_deref().unwrap_or(""), "name", 0, 100));
        let password = match input.password.as_deref() {
            None => {
                e.add("password", format!("is required: at least {MIN_PASSWORD} characters"));
                None
            }
            Some(v) => e.check("password", parse_password(v)),
        };
        match (email, name, password) {
            (Some(email), Some(name), Some(password)) if e.is_empty() => {
                Ok(NewUser { email, name, password, is_admin: input.is_admin.unwrap_or(false) })
            }
            _ => Err(e),
        }
    }
}

/// An admin's change to an account.
#[derive(Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatchInput {
    pub name: Option<String>,
    pub is_admin: Option<bool>,
    /// `true` disables the account and ends its sessions; `false` enables it.
    pub disabled: Option<bool>,
    /// A new password (reset by an admin); ends the account's sessions.
    pub password: Option<String>,
}

#[derive(Clone, Default, PartialEq)]
pub struct UserPatch {
    pub name: Option<String>,
    pub is_admin: Option<bool>,
    pub disabled: Option<bool>,
    pub password: Option<String>,
}

impl UserPatch {
    pub fn parse(input: UserPatchInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let patch = UserPatch {
            name: input.name.and_then(|v| e.check("name", bounded_text(&v, "name", 0, 100))),
            is_admin: input.is_admin,
            disabled: input.disabled,
            password: input.password.and_then(|v| e.check("password", parse_password(&v))),
        };
        e.into_result(patch)
    }
}

/// A user's API token as listed: the secret part is shown once, at creation.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: uuid::Uuid,
    pub name: String,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One audit-log line: who did what, to what, when, through which channel.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: uuid::Uuid,
    pub actor_id: Option<UserId>,
    /// The actor's e-mail when the entry was read (none for the system or a deleted user).
    pub actor_email: Option<String>,
    /// `api`, `ui`, `cli`, `slack`, `webhook` or `system`.
    pub channel: String,
    /// E.g. `login`, `login_failed`, `secret_created`, `role_changed`.
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<String>,
    pub project_id: Option<ProjectId>,
    pub details: serde_json::Value,
    pub request_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below() {
        assert!(ProjectRole::Maintainer.includes(ProjectRole::Member));
        assert!(ProjectRole::Member.includes(ProjectRole::Viewer));
        assert!(!ProjectRole::Viewer.includes(ProjectRole::Member));
    }

    #[test]
    fn accounts_are_validated_and_passwords_hidden() {
        let input: UserInput =
            serde_json::from_str(r#"{"email":" Ada@Example.COM ","password":"correct horse battery"}"#).unwrap();
        let user = NewUser::parse(input).unwrap();
        assert_eq!(user.email, "ada@example.com");
        assert!(!format!("{user:?}").contains("horse"));
        let input: UserInput = serde_json::from_str(r#"{"email":"nope","password":"short"}"#).unwrap();
        let errors = NewUser::parse(input).unwrap_err();
        assert_eq!(errors.fields.len(), 2, "{errors:?}");
    }
}
