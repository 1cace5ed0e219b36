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
///
/// JSON does not tell `3` from `3.0`, and JSON Schema's `integer` admits
/// both, so a whole number written with a fraction is taken where an integer
/// is expected (`3.5` still is not). Only a body that fails as sent pays for
/// the second look.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object, but serde reads a struct from an array too (`[null, null]`): refuse that here.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid_field("body", "must be a JSON object, e.g. {\"name\": \"…\"}, not an array"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let err = match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => {
            return de.end().map(|()| value).map_err(|inner| {
                ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {inner}"))
            });
        }
        Err(err) => err,
    };
    // Only for the error a whole float causes, and only for a small body: the second look builds the whole
    // document in memory, which a large body sent to fail on purpose must not get for free.
    if err.inner().is_data()
        && err.inner().to_string().starts_with("invalid type: floating point")
        && bytes.len() <= RETRY_LIMIT_BYTES
        && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && whole_floats_to_integers(&mut value)
    {
        // A `Value` keeps the last of two equal keys, where the typed parse refuses them: refuse them here too.
        serde_json::from_slice::<NoDuplicateKeys>(bytes).map_err(|e| ApiError::invalid_field("body", e.to_string()))?;
        return serde_path_to_error::deserialize(value).map_err(field_error);
    }
    Err(field_error(err))
}

/// The largest body [`parse_json`] takes a second look at.
const RETRY_LIMIT_BYTES: usize = 64 * 1024;

/// Any JSON in which no object names a key twice.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoDuplicateKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
                Ok(NoDuplicateKeys)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    map.next_value::<NoDuplicateKeys>()?;
                }
                Ok(NoDuplicateKeys)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Rewrites every whole-number float (`3.0`, `-2e2`) as an integer; says whether it changed any.
fn whole_floats_to_integers(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(number) if number.is_f64() => {
            let Some(float) = number.as_f64() else { return false };
            // Within ±2^53 every integer is exact in a float, so nothing is rounded.
            if float.fract() != 0.0 || float.abs() > 9_007_199_254_740_992.0 {
                return false;
            }
            *number = serde_json::Number::from(float as i64);
            true
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().fold(false, |changed, v| whole_floats_to_integers(v) | changed)
        }
        serde_json::Value::Object(map) => {
            map.values_mut().fold(false, |changed, v| whole_floats_to_integers(v) | changed)
        }
        _ => false,
    }
}

fn field_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
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

    #[test]
    fn a_whole_number_written_as_a_float_is_an_integer() {
        let body = parse_json::<Body>(br#"{"limit":25.0}"#).unwrap();
        assert_eq!(body.limit, Some(25));
        let err = parse_json::<Body>(br#"{"limit":2.5}"#).unwrap_err();
        assert_eq!(err.body.fields[0].field, "limit");
        // Past 2^53 a float no longer says which integer it meant.
        assert!(parse_json::<Body>(br#"{"limit":1e300}"#).is_err());
        // The second look still reports what else is wrong.
        let err = parse_json::<Body>(br#"{"limit":3.0,"titel":"x"}"#).unwrap_err();
        assert_eq!(err.body.fields[0].field, "titel");
        // Two equal keys are refused on the second look as on the first.
        assert!(parse_json::<Body>(br#"{"title":"a","title":"b","limit":1.0}"#).is_err());
        assert!(parse_json::<Body>(br#"{"title":"a","title":"b"}"#).is_err());
        // Another error than a float's is reported as it is, without a second look.
        let err = parse_json::<Body>(br#"{"titel":"x","limit":3.0}"#).unwrap_err();
        assert_eq!(err.body.fields[0].field, "titel");
    }

    #[test]
    fn an_array_is_not_a_body() {
        let err = parse_json::<Body>(br#" [null, null]"#).unwrap_err();
        assert_eq!((err.body.code, err.body.fields[0].field.as_str()), ("invalid_input", "body"));
    }

    #[test]
    fn text_after_the_body_is_refused() {
        let err = parse_json::<Body>(br#"{"title":"a"} {"title":"b"}"#).unwrap_err();
        assert_eq!(err.body.code, "invalid_json");
    }
}
