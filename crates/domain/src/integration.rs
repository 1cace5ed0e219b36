//! Integrations: connections to outside services. For now, SCM providers
//! (GitHub, GitLab) that open pull requests, with a credential that refers to
//! a secret. Projects link one by name.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::IntegrationId;
use crate::scm::{ScmProvider, parse_base_url};
use crate::validation::{ValidationErrors, nullable};

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Integration {
    pub id: IntegrationId,
    /// How projects refer to it: lowercase letters, digits and dashes, e.g. `github`.
    pub name: String,
    /// `github` or `gitlab`.
    pub kind: ScmProvider,
    /// The instance address: `https://github.com`, a GitHub Enterprise or self-hosted GitLab address.
    pub base_url: String,
    /// The name of the secret holding the API token (also used for git when the project has none).
    pub credential_secret: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Integration {
    /// The provider's REST API root.
    pub fn api_url(&self) -> String {
        self.kind.api_url(&self.base_url).unwrap_or_else(|| self.base_url.clone())
    }
}

/// An integration as a client sends it, to create or to change one.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntegrationInput {
    pub name: Option<String>,
    /// `github` or `gitlab`.
    pub kind: Option<String>,
    /// Defaults to `https://github.com` or `https://gitlab.com`.
    pub base_url: Option<String>,
    /// The name of the secret holding the token; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub credential_secret: Option<Option<String>>,
}

/// A validated change: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntegrationPatch {
    pub name: Option<String>,
    pub kind: Option<ScmProvider>,
    pub base_url: Option<String>,
    pub credential_secret: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewIntegration {
    pub name: String,
    pub kind: ScmProvider,
    pub base_url: String,
    pub credential_secret: Option<String>,
}

/// An integration's name: like a slug, 1 to 63 lowercase letters, digits and dashes.
pub fn parse_integration_name(value: &str) -> Result<String, String> {
    crate::ProjectSlug::parse(value).map(|slug| slug.as_str().to_owned()).map_err(|_| {
        format!("`{}` is not a valid name: use lowercase letters, digits and dashes, e.g. `github`", value.trim())
    })
}

fn parse_kind(value: &str) -> Result<ScmProvider, String> {
    match value.parse::<ScmProvider>() {
        Ok(ScmProvider::Git) | Err(_) => Err(format!(
            "`{value}` is not an integration kind: use `github` or `gitlab` (a plain git remote needs no integration)"
        )),
        Ok(kind) => Ok(kind),
    }
}

impl IntegrationPatch {
    pub fn parse(input: IntegrationInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let patch = IntegrationPatch {
            name: input.name.and_then(|v| e.check("name", parse_integration_name(&v))),
            kind: input.kind.and_then(|v| e.check("kind", parse_kind(v.trim()))),
            base_url: input.base_url.and_then(|v| e.check("base_url", parse_base_url(&v))),
            credential_secret: match input.credential_secret {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) if v.trim().is_empty() => Some(None),
                Some(Some(v)) => e.check("credential_secret", crate::secret::parse_secret_name(&v)).map(Some),
            },
        };
        e.into_result(patch)
    }

    pub fn is_empty(&self) -> bool {
        *self == IntegrationPatch::default()
    }

    pub fn apply(self, integration: &mut Integration) {
        let IntegrationPatch { name, kind, base_url, credential_secret } = self;
        if let Some(v) = name {
            integration.name = v;
        }
        if let Some(v) = kind {
            integration.kind = v;
        }
        if let Some(v) = base_url {
            integration.base_url = v;
        }
        if let Some(v) = credential_secret {
            integration.credential_secret = v;
        }
    }
}

impl NewIntegration {
    pub fn parse(input: IntegrationInput) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        if input.name.is_none() {
            errors.add("name", "is required, e.g. `github`");
        }
        if input.kind.is_none() {
            errors.add("kind", "is required: `github` or `gitlab`");
        }
        let patch = match IntegrationPatch::parse(input) {
            Ok(patch) if errors.is_empty() => patch,
            Ok(_) => return Err(errors),
            Err(more) => {
                errors.fields.extend(more.fields);
                return Err(errors);
            }
        };
        let (Some(name), Some(kind)) = (patch.name, patch.kind) else { return Err(errors) };
        let base_url = patch.base_url.unwrap_or_else(|| kind.default_base_url().unwrap_or_default().to_owned());
        Ok(NewIntegration { name, kind, base_url, credential_secret: patch.credential_secret.flatten() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> IntegrationInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_the_base_url_per_kind() {
        let new =
            NewIntegration::parse(input(r#"{"name":"gh","kind":"github","credential_secret":"GH_TOKEN"}"#)).unwrap();
        assert_eq!(new.base_url, "https://github.com");
        let new = NewIntegration::parse(input(r#"{"name":"gl","kind":"gitlab"}"#)).unwrap();
        assert_eq!(new.base_url, "https://gitlab.com");
    }

    #[test]
    fn bad_fields_are_named() {
        let errors = NewIntegration::parse(input(r#"{"name":"Bad Name","kind":"git","base_url":"ftp://x"}"#))
            .unwrap_err()
            .summary();
        for field in ["name", "kind", "base_url"] {
            assert!(errors.contains(field), "{errors}");
        }
        let errors = NewIntegration::parse(input("{}")).unwrap_err().summary();
        assert!(errors.contains("name") && errors.contains("kind"), "{errors}");
    }
}
