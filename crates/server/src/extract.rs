//! Request extractors whose rejections use the API's error shape and name
//! the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Unknown fields, wrong types and malformed JSON are 400s
/// naming the field; a body over the limit is a 413; a body that is not
/// JSON is a 415.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON: send it with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than this server accepts",
                )
                .with_hint("send less, or raise VIBERGLASS_BODY_LIMIT_BYTES on the server")
            } else {
                ApiError::bad_request(
                    "unreadable_body",
                    format!("the request body could not be read: {}", rejection.body_text()),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, turning serde's errors into field errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {inner}"));
        }
        let message = inner.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
        let field = if let Some(unknown) = message.strip_prefix("unknown field `") {
            let name = unknown.split('`').next().unwrap_or_default();
            // The path already ends with the unknown field's name.
            let field = if path == "." { name.to_owned() } else { path };
            return ApiError::invalid_field(&field, format!("is not a known field ({message})"));
        } else if path == "." {
            "body".to_owned()
        } else {
            path
        };
        ApiError::invalid_field(&field, message)
    })
}

/// Query parameters, with a 400 naming the parameter on a bad value.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|err| {
            let path = err.path().to_string();
            let message = err.into_inner().to_string();
            if let Some(unknown) = message.strip_prefix("unknown field `") {
                let name = unknown.split('`').next().unwrap_or_default();
                return ApiError::invalid_field(name, format!("is not a known query parameter ({message})"));
            }
            ApiError::invalid_field(if path == "." { "query" } else { &path }, message)
        })
    }
}

/// A job id from a path.
pub fn parse_job_id(text: &str) -> crate::error::ApiResult<viberglass_domain::JobId> {
    text.parse()
        .map_err(|e: viberglass_domain::ids::InvalidId| crate::error::ApiError::invalid_field("job_id", e.to_string()))
}

/// A ticket id from a path.
pub fn parse_ticket_id(text: &str) -> crate::error::ApiResult<viberglass_domain::TicketId> {
    text.parse().map_err(|e: viberglass_domain::ids::InvalidId| {
        crate::error::ApiError::invalid_field("ticket_id", e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        title: Option<String>,
        limit: Option<u32>,
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let err = parse_json::<Body>(br#"{"limit":"ten"}"#).unwrap_err();
        assert_eq!(err.body.fields[0].field, "limit");
        assert_eq!(err.body.code, "invalid_input");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err = parse_json::<Body>(br#"{"titel":"x"}"#).unwrap_err();
        assert_eq!(err.body.fields[0].field, "titel");
    }

    #[test]
    fn malformed_json_is_its_own_code() {
        let err = parse_json::<Body>(br#"{"title":"#).unwrap_err();
        assert_eq!(err.body.code, "invalid_json");
    }
}
