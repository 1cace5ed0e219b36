//! Feedback to a ticket's source: a comment on the source issue (GitHub,
//! GitLab, Jira, Shortcut, Linear) and, on GitHub and GitLab, a label. One
//! call each; the caller retries what [`FeedbackError::retryable`] says may
//! pass later (429, 5xx, network) and records every attempt.

use base64::Engine;
use serde_json::{Value, json};
use viberglass_domain::WebhookProvider;

/// Where feedback goes: the provider's API, the token, and the issue's locator (from the delivery that filed
/// the ticket).
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: WebhookProvider,
    /// The API root: GitHub's `https://api.github.com` (or `…/api/v3`), GitLab's `…/api/v4`, Jira's site,
    /// Shortcut's and Linear's API hosts.
    pub api_url: String,
    pub token: String,
    pub locator: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FeedbackError {
    /// The HTTP status, when the provider answered.
    pub status: Option<u16>,
    /// Whether trying again later may help (rate limits, server errors, an unreachable host).
    pub retryable: bool,
    pub message: String,
}

fn failed(status: Option<u16>, retryable: bool, message: impl Into<String>) -> FeedbackError {
    FeedbackError { status, retryable, message: message.into() }
}

fn locator<'a>(target: &'a Target, field: &str) -> Result<&'a Value, FeedbackError> {
    target.locator.get(field).filter(|v| !v.is_null()).ok_or_else(|| {
        failed(None, false, format!("the ticket's source record has no `{field}`: it was not filed by this provider"))
    })
}

fn locator_text(target: &Target, field: &str) -> Result<String, FeedbackError> {
    let v = locator(target, field)?;
    Ok(v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn request(http: &reqwest::Client, target: &Target, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", target.api_url.trim_end_matches('/'));
    let builder = http.request(method, url).header("user-agent", "viberglass");
    match target.provider {
        WebhookProvider::Github => builder
            .bearer_auth(&target.token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28"),
        WebhookProvider::Gitlab => builder.header("private-token", &target.token),
        WebhookProvider::Jira => {
            // Jira Cloud takes `email:api-token` as Basic; Data Center takes a personal access token as Bearer.
            if target.token.contains(':') {
                let basic = base64::engine::general_purpose::STANDARD.encode(&target.token);
                builder.header("authorization", format!("Basic {basic}"))
            } else {
                builder.bearer_auth(&target.token)
            }
        }
        WebhookProvider::Shortcut => builder.header("shortcut-token", &target.token),
        WebhookProvider::Linear => builder.header("authorization", &target.token),
        WebhookProvider::Custom => builder,
    }
}

/// Sends a request and reads its answer: success, or an error saying what the provider refused.
async fn send(provider: WebhookProvider, what: &str, request: reqwest::RequestBuilder) -> Result<Value, FeedbackError> {
    let answer = request.timeout(std::time::Duration::from_secs(10)).send().await.map_err(|e| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        failed(None, true, format!("{provider} could not be reached for {what}: {cause}"))
    })?;
    let status = answer.status().as_u16();
    let body = answer.text().await.unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(serde_json::from_str(&body).unwrap_or(Value::Null));
    }
    let said: String = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("errorMessages").and_then(|m| m.get(0)))
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let said = if said.is_empty() { String::new() } else { format!(" ({said})") };
    let (retryable, fix) = match status {
        401 => (false, "the feedback token is not accepted: replace the configuration's feedback secret"),
        403 => (false, "the feedback token may not comment there: give it write access to issues"),
        404 => (false, "the issue is not there, or the token cannot see it"),
        429 => (true, "rate limited: retrying later"),
        500..=599 => (true, "the provider is failing: retrying later"),
        _ => (false, "the provider refused the request"),
    };
    Err(failed(Some(status), retryable, format!("{provider} answered {status} to {what}{said}: {fix}")))
}

/// Comments `body` on the source issue.
pub async fn comment(http: &reqwest::Client, target: &Target, body: &str) -> Result<(), FeedbackError> {
    use reqwest::Method;
    let p = target.provider;
    match p {
        WebhookProvider::Github => {
            let repo = github_repository(target)?;
            let number = encode(&locator_text(target, "number")?);
            let path = format!("/repos/{repo}/issues/{number}/comments");
            send(p, "a comment", request(http, target, Method::POST, &path).json(&json!({"body": body}))).await?;
        }
        WebhookProvider::Gitlab => {
            let project = gitlab_project(target)?;
            let iid = encode(&locator_text(target, "iid")?);
            let path = format!("/projects/{project}/issues/{iid}/notes");
            send(p, "a note", request(http, target, Method::POST, &path).json(&json!({"body": body}))).await?;
        }
        WebhookProvider::Jira => {
            let key = locator_text(target, "key")?;
            let path = format!("/rest/api/2/issue/{}/comment", encode(&key));
            send(p, "a comment", request(http, target, Method::POST, &path).json(&json!({"body": body}))).await?;
        }
        WebhookProvider::Shortcut => {
            let story = locator_text(target, "story_id")?;
            let path = format!("/api/v3/stories/{}/comments", encode(&story));
            send(p, "a comment", request(http, target, Method::POST, &path).json(&json!({"text": body}))).await?;
        }
        WebhookProvider::Linear => {
            let issue = locator_text(target, "issue_id")?;
            let query =
                "mutation CommentCreate($input: CommentCreateInput!) { commentCreate(input: $input) { success } }";
            let answer = send(
                p,
                "a comment",
                request(http, target, Method::POST, "/graphql")
                    .json(&json!({"query": query, "variables": {"input": {"issueId": issue, "body": body}}})),
            )
            .await?;
            // GraphQL answers 200 with its errors in the body.
            if let Some(message) = answer.pointer("/errors/0/message").and_then(Value::as_str) {
                let auth = answer
                    .pointer("/errors/0/extensions/type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.contains("authentication"));
                let fix = if auth {
                    "the feedback key is not accepted: replace the configuration's feedback secret"
                } else {
                    "Linear refused the comment"
                };
                return Err(failed(
                    Some(200),
                    false,
                    format!("linear answered an error to a comment ({message}): {fix}"),
                ));
            }
            if answer.pointer("/data/commentCreate/success").and_then(Value::as_bool) != Some(true) {
                return Err(failed(Some(200), true, "linear did not confirm the comment: retrying later"));
            }
        }
        WebhookProvider::Custom => return Err(failed(None, false, "a custom sender has no issue to comment on")),
    }
    Ok(())
}

/// A GitHub `owner/name` from the locator, refused unless it is exactly that (no `..`, no other path).
fn github_repository(target: &Target) -> Result<String, FeedbackError> {
    let repo = locator_text(target, "repository")?;
    let ok_part = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match repo.split_once('/') {
        Some((owner, name)) if ok_part(owner) && ok_part(name) => Ok(format!("{owner}/{name}")),
        _ => Err(failed(
            None,
            false,
            format!("`{}` is not a GitHub owner/name", repo.chars().take(100).collect::<String>()),
        )),
    }
}

fn gitlab_project(target: &Target) -> Result<String, FeedbackError> {
    match target.locator.get("project_id").and_then(Value::as_u64) {
        Some(id) => Ok(id.to_string()),
        None => Ok(encode(&locator_text(target, "project")?)),
    }
}

/// Adds `label` to the source issue (GitHub and GitLab; others have nothing to do).
pub async fn add_label(http: &reqwest::Client, target: &Target, label: &str) -> Result<(), FeedbackError> {
    use reqwest::Method;
    let p = target.provider;
    match p {
        WebhookProvider::Github => {
            let repo = github_repository(target)?;
            let number = encode(&locator_text(target, "number")?);
            let path = format!("/repos/{repo}/issues/{number}/labels");
            send(p, "a label", request(http, target, Method::POST, &path).json(&json!({"labels": [label]}))).await?;
        }
        WebhookProvider::Gitlab => {
            let project = gitlab_project(target)?;
            let iid = encode(&locator_text(target, "iid")?);
            let path = format!("/projects/{project}/issues/{iid}");
            send(p, "a label", request(http, target, Method::PUT, &path).json(&json!({"add_labels": label}))).await?;
        }
        _ => {}
    }
    Ok(())
}

/// A GitLab user's access level in the issue's project (10 guest, 20 reporter, 30 developer, 40 maintainer, 50
/// owner), including inherited membership; `None` when they are not a member.
pub async fn gitlab_access_level(
    http: &reqwest::Client,
    target: &Target,
    user_id: u64,
) -> Result<Option<u64>, FeedbackError> {
    let project = gitlab_project(target)?;
    let path = format!("/projects/{project}/members/all/{user_id}");
    match send(target.provider, "a membership check", request(http, target, reqwest::Method::GET, &path)).await {
        Ok(member) => Ok(member.get("access_level").and_then(Value::as_u64)),
        Err(e) if e.status == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}
