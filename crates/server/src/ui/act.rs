//! `POST /act/{API path}`: a page's form, replayed against the JSON API.
//!
//! The form's fields become the JSON body; names say how:
//! - `name` a string; `name:opt` a string or `null` when empty; `name:int` a
//!   number; `name:bool` a checkbox (put a hidden `false` before it); `name:lines`
//!   one string per non-empty line; `name:json` JSON text; `name:list` every
//!   value given under that name; `name:skip` a string left out when empty.
//!   Dots nest: `agent_settings.model`.
//! - `_method` PUT, PATCH or DELETE instead of POST; `_next` where to go on
//!   success (`{field}` takes a top-level field of the answer); `_show` a
//!   field of the answer to show once on a page of its own (a new API
//!   token); `_result` to show the answer's `ok`, `message` and `problems`
//!   (Test, Test connection); `{name}` in the path the value of `_name`;
//!   `_attach` an API path (with `{field}`s of the answer) each `name:file` of a
//!   multipart form is then uploaded to (without it, files go to the target); `_form` the form's id, for errors shown in place.
//!
//! The request goes through the API's own router and guard with the
//! browser's cookie and origin headers, so nothing here can do more than the
//! API allows that browser. With htmx (`HX-Request`), a refusal answers
//! with the errors to show beside the fields; without JavaScript, with a page
//! listing them.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, FromRequest, Path, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Map, Value};
use tower::ServiceExt;

use viberglass_domain::FieldError;

use crate::error::ApiError;

/// The API router, callable from the UI.
#[derive(Clone)]
pub struct ApiService(pub Router);

/// Request headers the API reads for authentication, CSRF, limits and logs.
const FORWARDED: &[&str] =
    &["cookie", "authorization", "origin", "sec-fetch-site", "host", "x-forwarded-for", "user-agent", "x-request-id"];

/// A file from a multipart form, sent to the API as a raw body.
struct Upload {
    filename: String,
    content_type: String,
    bytes: axum::body::Bytes,
}

/// Reads the form: URL-encoded fields, or a multipart form's fields and files.
/// A form: its fields, its files, and whether it had a file input at all.
type Form = (Vec<(String, String)>, Vec<Upload>, bool);

async fn read_form(request: Request, limit: usize) -> Result<Form, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the form is larger than this server accepts")
            .with_hint("attach smaller files, or raise VIBERGLASS_BODY_LIMIT_BYTES on the server")
    };
    if !multipart {
        let bytes = to_bytes(request.into_body(), limit).await.map_err(|_| too_large())?;
        return Ok((form_urlencoded::parse(&bytes).into_owned().collect(), Vec::new(), false));
    }
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request("unreadable_form", format!("the form could not be read: {e}")))?;
    let (mut fields, mut uploads, mut file_input) = (Vec::new(), Vec::new(), false);
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(ApiError::bad_request("unreadable_form", format!("the form could not be read: {e}"))),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name.ends_with(":file") {
            file_input = true;
            let filename = field.file_name().unwrap_or_default().to_owned();
            let content_type = field.content_type().unwrap_or("application/octet-stream").to_owned();
            let bytes = field.bytes().await.map_err(|_| too_large())?;
            // A file input left empty still sends a nameless, empty part.
            if !filename.is_empty() || !bytes.is_empty() {
                uploads.push(Upload { filename, content_type, bytes });
            }
        } else {
            let value = field.text().await.map_err(|_| too_large())?;
            fields.push((name, value));
        }
    }
    Ok((fields, uploads, file_input))
}

/// One request through the API router, as the browser's own.
async fn call(
    api: &Router,
    method: Method,
    uri: &str,
    headers: &HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
    content_type: Option<&str>,
    body: Body,
) -> (StatusCode, Vec<HeaderValue>, Value) {
    let mut inner = axum::http::Request::builder().method(method).uri(uri);
    for name in FORWARDED {
        for value in headers.get_all(*name) {
            inner = inner.header(*name, value);
        }
    }
    if let Some(content_type) = content_type {
        inner = inner.header(header::CONTENT_TYPE, content_type);
    }
    let Ok(mut inner) = inner.body(body) else {
        return (
            StatusCode::BAD_REQUEST,
            Vec::new(),
            serde_json::json!({"message": "the form could not be forwarded"}),
        );
    };
    if let Some(peer) = peer {
        inner.extensions_mut().insert(peer);
    }
    let Ok(answer) = api.clone().oneshot(inner).await;
    let status = answer.status();
    let cookies: Vec<HeaderValue> = answer.headers().get_all(header::SET_COOKIE).iter().cloned().collect();
    let bytes = to_bytes(answer.into_body(), 16 * 1024 * 1024).await.unwrap_or_default();
    (status, cookies, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub async fn act(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    axum::Extension(ApiService(api)): axum::Extension<ApiService>,
    Path(api_path): Path<String>,
    request: Request,
) -> Response {
    let htmx = request.headers().contains_key("hx-request");
    // Every form, signing in and setup included (the API's JSON-only body
    // keeps other sites from those; a form here would not), comes from this site.
    if !crate::auth::same_origin(request.headers(), &state.config) {
        let error = ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_rejected",
            "a form must be sent from this site's own pages; API clients call /api/v1 with an API token",
        );
        return refused(htmx, None, &error);
    }
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().copied();
    let headers = request.headers().clone();
    let query = request.uri().query().map(str::to_owned);
    let (fields, uploads, file_input) = match read_form(request, state.config.body_limit_bytes).await {
        Ok(form) => form,
        Err(error) => return refused(htmx, None, &error),
    };
    let control = |name: &str| fields.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let form_id = control("_form");
    let mut target = format!("/{}", api_path.trim_start_matches('/'));
    // `{name}` in the path takes the value of the control `_name` (a choice in the form).
    for (key, value) in &fields {
        if let Some(name) = key.strip_prefix('_') {
            target = target.replace(&format!("{{{name}}}"), &super::view::encode(value));
        }
    }
    if !target.starts_with("/api/v1/") {
        let error = ApiError::not_found(format!("{target} is not an API route a form can post to"));
        return refused(htmx, form_id.as_deref(), &error);
    }
    let method = match control("_method").as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        Some(other) => {
            let error = ApiError::invalid_field("_method", format!("`{other}` is not POST, PUT, PATCH or DELETE"));
            return refused(htmx, form_id.as_deref(), &error);
        }
    };
    let attach = control("_attach");
    if file_input && uploads.is_empty() && attach.is_none() {
        let error = ApiError::invalid_field("file", "choose a file to attach first");
        return refused(htmx, form_id.as_deref(), &error);
    }
    let mut json = Value::Null;
    let mut cookies = Vec::new();
    // Files alone go straight to the target; with `_attach` they follow the main request.
    if uploads.is_empty() || attach.is_some() {
        let body = match json_body(&fields) {
            Ok(body) => body,
            Err(error) => return refused(htmx, form_id.as_deref(), &error),
        };
        let uri = match &query {
            Some(q) => format!("{target}?{q}"),
            None => target.clone(),
        };
        let send_body = method != Method::DELETE;
        let (content_type, body) =
            if send_body { (Some("application/json"), Body::from(body.to_string())) } else { (None, Body::empty()) };
        let (status, set, answer) = call(&api, method, &uri, &headers, peer, content_type, body).await;
        if !status.is_success() {
            if status == StatusCode::UNAUTHORIZED && !target.ends_with("/auth/login") {
                return go(htmx, "/login", set);
            }
            return refused(htmx, form_id.as_deref(), &api_error(status, &answer));
        }
        (json, cookies) = (answer, set);
    }
    if !uploads.is_empty() {
        let upload_path = match attach.as_deref() {
            Some(path) => safe_next(Some(path), &json).filter(|p| p.starts_with("/api/v1/")),
            None => Some(target.clone()),
        };
        let Some(upload_path) = upload_path else {
            let error =
                ApiError::invalid_field("_attach", "must name an API path, e.g. /api/v1/tickets/{id}/attachments");
            return refused(htmx, form_id.as_deref(), &error);
        };
        for upload in uploads {
            let uri = format!("{upload_path}?filename={}", super::view::encode(&upload.filename));
            let (status, _, answer) =
                call(&api, Method::POST, &uri, &headers, peer, Some(&upload.content_type), Body::from(upload.bytes))
                    .await;
            if !status.is_success() {
                let error = api_error(status, &answer);
                // What the form made exists: go there, saying what was not attached, so
                // submitting again does not make it twice.
                if attach.is_some()
                    && let Some(next) = safe_next(control("_next").as_deref(), &json)
                {
                    let message = format!("{} was not attached: {}", upload.filename, error.body.message);
                    let separator = if next.contains('?') { '&' } else { '?' };
                    return go(
                        htmx,
                        &format!("{next}{separator}attach_error={}", super::view::encode(&message)),
                        cookies,
                    );
                }
                return refused(htmx, form_id.as_deref(), &error);
            }
            if json.is_null() {
                json = answer;
            }
        }
    }
    if control("_result").is_some() {
        return super::view::render(&super::view::TestResult::from_answer(&json, htmx));
    }
    // `_show` shows a field of the answer once (a new token, a generated secret); an answer without it (a
    // secret the person chose) goes on as usual.
    if let Some(field) = control("_show")
        && let Some(shown) = json.get(&field).and_then(Value::as_str).map(str::to_owned)
    {
        let back = safe_next(control("_next").as_deref(), &json).unwrap_or_else(|| "/".into());
        let mut response = super::view::render(&super::view::ShowOnce { value: shown, back });
        response.headers_mut().extend(cookies.into_iter().map(|c| (header::SET_COOKIE, c)));
        return response;
    }
    let next = safe_next(control("_next").as_deref(), &json)
        .or_else(|| safe_next(referer_path(&headers).as_deref(), &json))
        .unwrap_or_else(|| "/".into());
    go(htmx, &next, cookies)
}

/// Success: a redirect (a plain form) or `HX-Redirect` (htmx), carrying any
/// cookie the API set (sign-in, sign-out).
fn go(htmx: bool, next: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut response = if htmx {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if let Ok(value) = HeaderValue::from_str(next) {
            r.headers_mut().insert("hx-redirect", value);
        }
        r
    } else {
        Redirect::to(next).into_response()
    };
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// A refusal: errors beside the fields (htmx) or a page listing them.
fn refused(htmx: bool, form: Option<&str>, error: &ApiError) -> Response {
    if !htmx {
        return super::error_page(error);
    }
    let form = form.unwrap_or("form");
    let fragment = super::view::FormErrors {
        form: form.to_owned(),
        message: error.body.message.clone(),
        hint: error.body.hint.clone(),
        // Element ids: `agent_settings.model` → `agent_settings-model`.
        fields: error
            .body
            .fields
            .iter()
            .map(|f| (f.field.replace(['.', '[', ']', ' '], "-"), f.message.clone()))
            .collect(),
    };
    let mut response = super::view::render(&fragment);
    // htmx swaps this answer (see the htmx-config meta tag); the status still tells.
    *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    response
}

/// The API's refusal (`{message, hint?, fields?}`), to show on the page.
fn api_error(status: StatusCode, json: &Value) -> ApiError {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let message = text(json, "message").unwrap_or_else(|| format!("the server answered {status}"));
    let mut error = ApiError::new(status, "refused", message);
    error.body.hint = text(json, "hint");
    error.body.fields = json["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| FieldError {
            field: text(f, "field").unwrap_or_default(),
            message: text(f, "message").unwrap_or_default(),
        })
        .collect();
    error
}

fn referer_path(headers: &HeaderMap) -> Option<String> {
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let after_scheme = referer.split_once("://").map_or(referer, |(_, rest)| rest);
    let path = &after_scheme[after_scheme.find('/')?..];
    Some(path.to_owned())
}

/// A local path to go to, with `{field}` filled from the answer; anything
/// that could leave this site is dropped.
fn safe_next(next: Option<&str>, answer: &Value) -> Option<String> {
    let mut next = super::view::local_path(next?)?;
    if let Some(object) = answer.as_object() {
        for (key, value) in object {
            let pattern = format!("{{{key}}}");
            if next.contains(&pattern) {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                next = next.replace(&pattern, &super::view::encode(&text));
            }
        }
    }
    super::view::local_path(&next)
}

/// The JSON body a form's fields describe.
fn json_body(fields: &[(String, String)]) -> Result<Value, ApiError> {
    let mut root = Map::new();
    let mut lists: Vec<(String, Vec<Value>)> = Vec::new();
    for (name, raw) in fields {
        if name.starts_with('_') {
            continue;
        }
        let (path, kind) = name.split_once(':').unwrap_or((name.as_str(), "str"));
        let value = match kind {
            "str" => Value::String(raw.clone()),
            "opt" if raw.trim().is_empty() => Value::Null,
            "opt" => Value::String(raw.clone()),
            "skip" if raw.is_empty() => continue,
            "skip" => Value::String(raw.clone()),
            "int" if raw.trim().is_empty() => continue,
            "int" => match raw.trim().parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => return Err(ApiError::invalid_field(path, format!("`{raw}` is not a whole number"))),
            },
            "bool" => Value::Bool(matches!(raw.as_str(), "true" | "on" | "1" | "yes")),
            "lines" => Value::Array(
                raw.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| Value::String(l.to_owned())).collect(),
            ),
            "json" if raw.trim().is_empty() => continue,
            "json" => serde_json::from_str(raw)
                .map_err(|e| ApiError::invalid_field(path, format!("is not valid JSON: {e}")))?,
            "list" => {
                match lists.iter_mut().find(|(p, _)| p == path) {
                    Some((_, values)) => values.push(Value::String(raw.clone())),
                    None => lists.push((path.to_owned(), vec![Value::String(raw.clone())])),
                }
                continue;
            }
            other => {
                return Err(ApiError::invalid_field(name, format!("the form field kind `{other}` is unknown")));
            }
        };
        insert(&mut root, path, value);
    }
    for (path, values) in lists {
        // An empty choice is the hidden "none" marker that keeps the key present.
        let values = values.into_iter().filter(|v| v.as_str().is_some_and(|s| !s.is_empty())).collect();
        insert(&mut root, &path, Value::Array(values));
    }
    Ok(Value::Object(root))
}

fn insert(root: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut map = root;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        let entry = map.entry(part.to_owned()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(inner) = entry else { return };
        map = inner;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn form_fields_become_typed_nested_json() {
        let body = json_body(&form(&[
            ("name", "Shop"),
            ("repository_url:opt", ""),
            ("max_execution_secs:int", "600"),
            ("allow_run_all:bool", "false"),
            ("allow_run_all:bool", "on"),
            ("research_needs_approval:bool", "false"),
            ("agent_settings.model", "m"),
            ("agent_settings.command:lines", "a\n\n b \n"),
            ("secrets:list", ""),
            ("secrets:list", "A"),
            ("secrets:list", "B"),
            ("password:skip", ""),
            ("compute_config:json", "{\"x\": 1}"),
            ("_next", "/projects/{slug}"),
        ]))
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "name": "Shop", "repository_url": null, "max_execution_secs": 600, "allow_run_all": true,
                "research_needs_approval": false, "agent_settings": {"model": "m", "command": ["a", "b"]},
                "secrets": ["A", "B"], "compute_config": {"x": 1}
            })
        );
    }

    #[test]
    fn bad_numbers_and_json_name_their_field() {
        let error = json_body(&form(&[("max_execution_secs:int", "ten")])).unwrap_err();
        assert_eq!(error.body.fields[0].field, "max_execution_secs");
        let error = json_body(&form(&[("agent_settings:json", "{")])).unwrap_err();
        assert_eq!(error.body.fields[0].field, "agent_settings");
        assert!(json_body(&form(&[("x:weird", "1")])).is_err());
    }

    #[test]
    fn next_stays_on_this_site_and_fills_fields() {
        let answer = serde_json::json!({"slug": "shop", "id": "a b"});
        assert_eq!(safe_next(Some("/projects/{slug}"), &answer).as_deref(), Some("/projects/shop"));
        assert_eq!(safe_next(Some("/x/{id}"), &answer).as_deref(), Some("/x/a%20b"));
        assert_eq!(safe_next(Some("//evil.example/"), &answer), None);
        assert_eq!(safe_next(Some("https://evil.example/"), &answer), None);
        assert_eq!(safe_next(Some("/\\evil.example"), &answer), None);
        assert_eq!(safe_next(Some("/\t/evil.example"), &answer), None, "browsers drop the tab");
        assert_eq!(safe_next(Some("/\n/evil.example"), &answer), None);
        assert_eq!(safe_next(Some("/a b"), &answer), None);
    }

    #[test]
    fn the_referer_gives_its_path() {
        let mut headers = HeaderMap::new();
        headers.insert(header::REFERER, HeaderValue::from_static("http://vg.local:8888/tickets/1?x=2"));
        assert_eq!(referer_path(&headers).as_deref(), Some("/tickets/1?x=2"));
    }
}
