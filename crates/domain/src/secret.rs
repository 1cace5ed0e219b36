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

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Secret {
    pub id: SecretId,
    /// How jobs and integrations refer to it, e.g. `GITHUB_TOKEN`.
    pub name: String,
    pub backend: SecretBackend,
    /// `env`: the variable's name; `ssm`: the parameter path.
    pub reference: Option<String>,
    /// Viberglass wrote the value (database, or an SSM parameter it created):
    /// deleting the secret deletes the value.
    pub managed: bool,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A secret as a client sends it. `value` is write-only: it is never returned.
#[derive(Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretInput {
    pub name: Option<String>,
    /// `env` (the default), `database` or `ssm`.
    pub backend: Option<String>,
    /// `env`: the server's environment variable (default: the secret's name).
    /// `ssm`: the parameter path (default: the configured prefix + the name).
    pub reference: Option<String>,
    /// `database`: required. `ssm`: writes the parameter (else an existing one is read).
    pub value: Option<String>,
    pub description: Option<String>,
}

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretInput")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("reference", &self.reference)
            .field("value", &self.value.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A change to a secret: a new value (database, ssm) or description.
#[derive(Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretPatchInput {
    pub value: Option<String>,
    pub description: Option<String>,
}

#[derive(Clone, PartialEq)]
pub struct NewSecret {
    pub name: String,
    pub backend: SecretBackend,
    pub reference: Option<String>,
    pub value: Option<String>,
    pub description: String,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// The largest value a secret may hold.
pub const MAX_SECRET_VALUE: usize = 64 * 1024;

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

/// Environment variables that hold the server's own credentials: an `env`
/// secret may not read them, or a clanker could hand them to an agent.
pub fn is_server_variable(name: &str) -> bool {
    matches!(name, "DATABASE_URL" | "SECRETS_ENCRYPTION_KEY" | "SECRETS_PREVIOUS_KEYS" | "AUTH_DISABLED")
        || name.starts_with("AWS_")
        || name.starts_with("VIBERGLASS_")
}

/// A secret's value: not empty, bounded, no NUL.
pub fn parse_secret_value(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_SECRET_VALUE {
        return Err(format!("must be at most {MAX_SECRET_VALUE} bytes"));
    }
    if value.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    Ok(value.to_owned())
}

/// An SSM parameter path: `/a/b/c`, letters, digits and `_.-/`.
pub fn parse_ssm_path(value: &str) -> Result<String, String> {
    let path = value.trim();
    let ok = path.starts_with('/')
        && path.len() <= 1011
        && !path.ends_with('/')
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '-'));
    if !ok {
        return Err(format!("`{path}` is not an SSM parameter path: use e.g. /viberglass/prod/GITHUB_TOKEN"));
    }
    Ok(path.to_owned())
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
        let value = input.value.as_deref().and_then(|v| e.check("value", parse_secret_value(v)));
        let reference = match backend {
            Some(SecretBackend::Env) => {
                if input.value.is_some() {
                    e.add("value", "an env secret is read from the server's environment: set the variable there, or use the `database` backend to store the value");
                }
                let reference = match (input.reference.as_deref(), name.as_deref()) {
                    (Some(r), _) => e.check("reference", parse_secret_name(r)),
                    (None, n) => n.map(str::to_owned),
                };
                if let Some(variable) = reference.as_deref().filter(|v| is_server_variable(v)) {
                    e.add(
                        "reference",
                        format!("{variable} holds the server's own configuration and cannot be a secret: use another variable"),
                    );
                }
                reference
            }
            Some(SecretBackend::Database) => {
                if input.reference.is_some() {
                    e.add("reference", "a database secret has no reference: send its `value`");
                }
                if input.value.is_none() {
                    e.add("value", "is required for a database secret: the value to encrypt and store");
                }
                None
            }
            Some(SecretBackend::Ssm) => {
                input.reference.as_deref().and_then(|r| e.check("reference", parse_ssm_path(r)))
            }
            None => None,
        };
        let description =
            e.check("description", bounded_text(input.description.as_deref().unwrap_or(""), "description", 0, 1000));
        match (name, backend, description) {
            (Some(name), Some(backend), Some(description)) if e.is_empty() => {
                Ok(NewSecret { name, backend, reference, value, description })
            }
            _ => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_variables_cannot_be_read_as_secrets() {
        for variable in ["DATABASE_URL", "SECRETS_ENCRYPTION_KEY", "AWS_SECRET_ACCESS_KEY", "VIBERGLASS_DATA_DIR"] {
            let input = SecretInput { name: Some(variable.into()), ..Default::default() };
            assert!(NewSecret::parse(input).is_err(), "{variable}");
        }
    }

    #[test]
    fn each_backend_takes_what_it_needs() {
        let parse = |json: &str| NewSecret::parse(serde_json::from_str(json).unwrap());
        let db = parse(r#"{"name":"A","backend":"database","value":"v1"}"#).unwrap();
        assert_eq!(
            (db.backend, db.value.as_deref(), db.reference.as_deref()),
            (SecretBackend::Database, Some("v1"), None)
        );
        let errors = parse(r#"{"name":"A","backend":"database"}"#).unwrap_err().summary();
        assert!(errors.contains("required for a database secret"), "{errors}");
        let errors = parse(r#"{"name":"A","value":"v"}"#).unwrap_err().summary();
        assert!(errors.contains("server's environment"), "{errors}");
        let ssm = parse(r#"{"name":"A","backend":"ssm","reference":"/vg/A"}"#).unwrap();
        assert_eq!(ssm.reference.as_deref(), Some("/vg/A"));
        assert!(parse(r#"{"name":"A","backend":"ssm","reference":"vg A"}"#).is_err());
        // The value never shows in debug output.
        assert!(!format!("{db:?}").contains("v1"));
    }

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
