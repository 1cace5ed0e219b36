//! Files attached to tickets: upload (the raw body), list, download.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use viberglass_domain::Attachment;
use viberglass_domain::ticket::{MAX_ATTACHMENT_BYTES, parse_attachment_filename, parse_content_type};
use viberglass_store::NewAttachment;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiQuery;
use crate::extract::parse_ticket_id;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name, e.g. `error.log` (no directories).
    filename: Option<String>,
}

/// Attaches a file to a ticket (a member). The body is the file itself, its
/// `Content-Type` the file's type; at most 10 MiB (or the server's body limit, if lower). Text files up to 256 KiB
/// are given to the agent in `.viberglass/attachments/`.
#[utoipa::path(
    post, path = "/api/v1/tickets/{ticket_id}/attachments", tag = "tickets",
    params(("ticket_id" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses((status = 201, body = Attachment), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody))
)]
pub async fn upload_attachment(
    State(state): State<AppState>,
    caller: Caller,
    Path(ticket_id): Path<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    let ticket = state.store.get_ticket(parse_ticket_id(&ticket_id)?).await?;
    if ticket.archived_at.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "archived",
            "the ticket is archived: unarchive it to attach files",
        ));
    }
    let filename = parse_attachment_filename(query.filename.as_deref().unwrap_or_default())
        .map_err(|message| ApiError::invalid_field("filename", message))?;
    let content_type = parse_content_type(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()))
        .map_err(|message| ApiError::invalid_field("content_type", message))?;
    let limit = MAX_ATTACHMENT_BYTES.min(state.config.body_limit_bytes);
    let content = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "attachment_too_large",
            format!("{filename} is larger than {limit} bytes: attach a smaller file, or a link to it"),
        )
    })?;
    if content.is_empty() {
        return Err(ApiError::invalid_field("content", format!("{filename} is empty: send the file as the body")));
    }
    let attachment = state
        .store
        .add_attachment(NewAttachment {
            ticket_id: ticket.id,
            filename,
            content_type,
            content: content.to_vec(),
            uploaded_by: caller.user_id(),
        })
        .await?;
    tracing::info!(ticket_id = %ticket.id, attachment_id = %attachment.id, size = attachment.size, "file attached");
    crate::auth::audit(
        &state,
        Some(&caller),
        "ticket_attachment_added",
        "ticket",
        Some(ticket.id.to_string()),
        Some(ticket.project_id),
        serde_json::json!({"filename": attachment.filename, "size": attachment.size, "sha256": attachment.sha256}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(attachment)))
}

/// A ticket's attachments, oldest first.
#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/attachments", tag = "tickets", params(("ticket_id" = String, Path)),
    responses((status = 200, body = Vec<Attachment>), (status = 404, body = ErrorBody))
)]
pub async fn list_attachments(
    State(state): State<AppState>,
    Path(ticket_id): Path<String>,
) -> ApiResult<Json<Vec<Attachment>>> {
    let ticket = state.store.get_ticket(parse_ticket_id(&ticket_id)?).await?;
    Ok(Json(state.store.list_attachments(ticket.id).await?))
}

/// Downloads an attachment. Images and text are shown inline; everything is
/// sent with `nosniff` and a sandboxing CSP, so an uploaded page cannot run.
#[utoipa::path(
    get, path = "/api/v1/tickets/{ticket_id}/attachments/{attachment_id}", tag = "tickets",
    params(("ticket_id" = String, Path), ("attachment_id" = String, Path)),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
              (status = 404, body = ErrorBody))
)]
pub async fn download_attachment(
    State(state): State<AppState>,
    Path((ticket_id, attachment_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let ticket = parse_ticket_id(&ticket_id)?;
    let id = attachment_id
        .parse::<uuid::Uuid>()
        .map_err(|_| ApiError::not_found(format!("there is no attachment `{attachment_id}`")))?;
    let (attachment, content) = state.store.attachment_content(ticket, id).await?;
    let (mime, disposition) = if attachment.is_image() {
        (attachment.content_type.clone(), "inline")
    } else if attachment.content_type.starts_with("text/") {
        ("text/plain; charset=utf-8".to_owned(), "inline")
    } else {
        ("application/octet-stream".to_owned(), "attachment")
    };
    let encoded: String = form_urlencoded::byte_serialize(attachment.filename.as_bytes()).collect();
    let mut response = content.into_response();
    let headers = response.headers_mut();
    let value = |text: &str| HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    headers.insert(header::CONTENT_TYPE, value(&mime));
    headers.insert(
        header::CONTENT_DISPOSITION,
        value(&format!("{disposition}; filename*=UTF-8''{}", encoded.replace('+', "%20"))),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    Ok(response)
}
