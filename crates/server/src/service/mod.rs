//! The product's operations: what a person, a webhook, a Slack command, a
//! schedule or the engine can make happen, as functions over the
//! application state. HTTP handlers, UI pages and the engine call these;
//! nothing here knows HTTP. Each returns a [`ServiceError`] in product terms,
//! which the server maps to an HTTP answer once (`crate::error`).
//!
//! Only services change state: a handler parses its input, calls one
//! service, and shapes the answer.

pub mod clankers;
pub mod diagnostics;
pub mod doctor;
pub mod jobs;
pub mod projects;
pub mod runs;
pub mod schedules;
pub mod slack;
pub mod subscriptions;
pub mod tickets;
pub mod webhooks;
pub mod workflow;

use viberglass_domain::ValidationErrors;
use viberglass_store::StoreError;

/// Why an operation was refused or failed, in product terms.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is malformed: every invalid field, named.
    #[error("{}", .0.summary())]
    Invalid(ValidationErrors),
    /// Something it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Well formed, but the current state does not allow these fields (each says why): a 422. `unknown_reference`:
    /// they name something that does not exist; `does_not_fit`: they do not fit what the thing already is.
    #[error("{}", .errors.summary())]
    Unmet { code: &'static str, errors: ValidationErrors },
    /// It cannot be done in the current state; the message says why and how.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// The caller may not do this; the message names what is needed.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// It collides with the current state (someone changed it, it already ended).
    #[error("{message}")]
    Conflict { code: &'static str, message: String, hint: Option<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Unprocessable { code, message: message.into() }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Forbidden { code, message: message.into() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Conflict { code, message: message.into(), hint: None }
    }

    /// `errors` as a 422 `does_not_fit` when every field they name is one whose fault comes from what the thing
    /// already is (`depends_on_state`), else as the 400 they are.
    pub fn unless_state(errors: ValidationErrors, depends_on_state: impl Fn(&str) -> bool) -> Self {
        if errors.fields.iter().all(|f| depends_on_state(&f.field)) {
            ServiceError::Unmet { code: "does_not_fit", errors }
        } else {
            ServiceError::Invalid(errors)
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ServiceError::Invalid(ValidationErrors::single(field, message))
    }

    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Invalid(_) => "invalid_input",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Unmet { code, .. } => code,
            ServiceError::Unprocessable { code, .. }
            | ServiceError::Forbidden { code, .. }
            | ServiceError::Conflict { code, .. } => code,
            ServiceError::Store(_) => "store",
        }
    }
}

impl From<ValidationErrors> for ServiceError {
    fn from(errors: ValidationErrors) -> Self {
        ServiceError::Invalid(errors)
    }
}
