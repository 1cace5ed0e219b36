//! The API's one error type. Every failure a client sees has an HTTP status,
//! a stable `code` to branch on, and a `message` that says what to do; 400s
//! name the invalid fields. Internal error text never reaches a client: 5xx
//! are logged with their cause chain, and the response points at the
//! request id instead.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use viberglass_domain::{FieldError, ValidationErrors};
use viberglass_store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: `invalid_input`, `not_found`, `conflict`, ...
    pub code: &'static str,
    /// What went wrong and what to do about it, for people.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For `invalid_input`: every invalid field and what is wrong with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// The internal cause, logged for 5xx and never sent.
    cause: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, body: ErrorBody { code, message: message.into(), hint: None, fields: Vec::new() }, cause: None }
    }

    /// The internal cause of a 5xx, for the log (never sent).
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.body.hint = Some(hint.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A 422 for a body that names something (a secret, an integration, a project) that does not exist: the
    /// request is well formed and would succeed once that thing is created (422 is this API's "not in the
    /// current state"; 400 is a malformed request). The fields say which.
    pub fn unknown_reference(errors: ValidationErrors) -> Self {
        Self::unmet("unknown_reference", errors)
    }

    /// A 422 naming the fields a well-formed request cannot have in the current state.
    pub fn unmet(code: &'static str, errors: ValidationErrors) -> Self {
        let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, errors.summary());
        err.body.fields = errors.fields;
        err
    }

    /// A 400 naming one invalid field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        ValidationErrors::single(field, message).into()
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut err = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on the server; the request id in the X-Request-Id header identifies it in the server log",
        );
        err.cause = Some(cause.to_string());
        err
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", errors.summary());
        err.body.fields = errors.fields;
        err
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { entity, id } => ApiError::not_found(format!("there is no {entity} {id}")),
            StoreError::Conflict { entity, field } => {
                let mut api = ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("another {entity} already has this {field}: choose a different one"),
                );
                api.body.fields.push(FieldError { field, message: format!("is already used by another {entity}") });
                api
            }
            StoreError::ParentArchived { entity, id } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "archived",
                format!("{entity} {id} is archived, so nothing new can be added to it"),
            )
            .with_hint(format!("unarchive the {entity} first")),
            StoreError::Contended { entity } => ApiError::new(
                StatusCode::CONFLICT,
                "busy",
                format!("the {entity} is being changed by someone else right now; try again"),
            ),
            other if let Some(reason) = other.unavailable_reason() => {
                let mut api = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    format!("the database is unavailable ({reason}); try again shortly"),
                )
                .with_hint(
                    "an operator should check that the database is running and reachable (GET /readyz says why)",
                );
                api.cause = Some(error_chain(&other));
                api
            }
            other @ (StoreError::Database(_) | StoreError::Corrupt { .. }) => ApiError::internal(error_chain(&other)),
        }
    }
}

impl From<crate::service::ServiceError> for ApiError {
    fn from(err: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as E;
        match err {
            E::Invalid(errors) => errors.into(),
            E::NotFound(message) => ApiError::not_found(message),
            E::Unmet { code, errors } => ApiError::unmet(code, errors),
            E::Unprocessable { code, message } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
            E::Forbidden { code, message } => ApiError::new(StatusCode::FORBIDDEN, code, message),
            E::Conflict { code, message, hint } => {
                let api = ApiError::new(StatusCode::CONFLICT, code, message);
                match hint {
                    Some(hint) => api.with_hint(hint),
                    None => api,
                }
            }
            E::Store(store) => store.into(),
        }
    }
}

/// An error and its sources, on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.body.code,
                cause = self.cause.as_deref().unwrap_or(""),
                "request failed"
            );
        }
        (self.status, Json(self.body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
