//! Secrets: named values kept outside the code. A secret's value is never
//! returned by the API; only its name, backend and reference are.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::SecretId;
use crate::validation::{ValidationErrors, bounded_text};

named_enum!(
    /// Where a secret's value lives.
    SecretBackend, "secret backend", {
        /// An environment variable of the server, read at use time.
        Env => "env",
        /// Encrypted in the database.
        Database => "database",
        /// AWS SSM Parameter Store.
        Ssm => "ssm",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Secret {
    pub id: SecretId,
    /// How jobs and integrations refer to it, e.g. `GITHUB_TOKEN`.
    pub name: String,
    pub backend: SecretBackend,
    /// `env`: the variable's name; `ssm`: the parameter path.
    pub reference: Option<String>,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretInput {
    pub name: Option<String>,
    /// `env` (the default).
    pub backend: Option<String>,
    /// For `env`: the server's environment variable (default: the secret's name).
    pub reference: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewSecret {
    pub name: String,
    pub backend: SecretBackend,
    pub reference: Option<String>,
    pub description: String,
}

/// A secret or variable name: an uppercase letter or `_`, then uppercase letters, digits and `_`.
pub fn parse_secret_name(value: &str) -> Result<String, String> {
    let name = value.trim();
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') || name.len() > 128 {
        return Err(format!("`{name}` is not a valid name: use uppercase letters, digits and `_`, e.g. GITHUB_TOKEN"));
    }
    Ok(name.to_owned())
}

impl NewSecret {
    pub fn parse(input: SecretInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let name = match input.name.as_deref() {
            None => {
                e.add("name", "is required, e.g. GITHUB_TOKEN");
                None
            }
            Some(v) => e.check("name", parse_secret_name(v)),
        };
        let backend = e.check("backend", input.backend.as_deref().unwrap_or("env").parse::<SecretBackend>());
        if let Some(b) = backend
            && b != SecretBackend::Env
        {
            e.add("backend", format!("the {b} backend is not available yet: use `env`"));
        }
        let reference = match (input.reference.as_deref(), name.as_deref()) {
            (Some(r), _) => e.check("reference", parse_secret_name(r)),
            (None, Some(n)) => Some(n.to_owned()),
            (None, None) => None,
        };
        let description =
            e.check("description", bounded_text(input.description.as_deref().unwrap_or(""), "description", 0, 1000));
        match (name, backend, reference, description) {
            (Some(name), Some(backend), reference, Some(description)) if e.is_empty() => {
                Ok(NewSecret { name, backend, reference, description })
            }
            _ => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_secret_reads_the_variable_of_its_own_name_by_default() {
        let s = NewSecret::parse(SecretInput { name: Some("GITHUB_TOKEN".into()), ..Default::default() }).unwrap();
        assert_eq!((s.backend, s.reference.as_deref()), (SecretBackend::Env, Some("GITHUB_TOKEN")));
    }

    #[test]
    fn names_are_variable_names() {
        assert!(parse_secret_name("github-token").is_err());
        assert!(parse_secret_name("1TOKEN").is_err());
        assert!(parse_secret_name("_TOKEN_2").is_ok());
    }
}
