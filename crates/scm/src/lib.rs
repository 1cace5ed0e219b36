//! SCM providers behind one trait. GitHub (pull requests) and GitLab (merge
//! requests) over their REST APIs; a plain git remote has no provider: its
//! branch is pushed and the change recorded in Viberglass.
//!
//! [`publish`] is what an execution run calls after its push: it reuses the
//! open pull request with the same head (updating it and leaving a comment)
//! or opens one, and turns every refusal into a [`Failure`] that names the
//! cause and the fix. [`check_access`] is the integrations' Test connection.
#![forbid(unsafe_code)]

mod github;
mod gitlab;

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use viberglass_domain::{Failure, FailureLayer, ScmProvider};

pub use github::GitHub;
pub use gitlab::GitLab;

/// What went wrong talking to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401: the token is missing, invalid or expired.
    Unauthorized,
    /// 403: the token is valid but lacks a permission.
    Forbidden,
    /// 404: no such repository (or the token cannot see it).
    NotFound,
    /// 409, or a 422 saying the same: it already exists.
    Conflict,
    /// 400 / 422: the provider refused the request's content.
    Invalid,
    /// 429, or a 403 with the rate limit used up.
    RateLimited,
    /// No answer: DNS, connection refused, TLS, timeout.
    Unreachable,
    /// 5xx or an answer we cannot read.
    Server,
}

/// A provider's refusal: the kind, the HTTP status, and the provider's own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ScmError {
    pub kind: ErrorKind,
    pub status: Option<u16>,
    pub message: String,
    /// When a rate limit resets, if the provider said.
    pub reset_at: Option<time::OffsetDateTime>,
}

impl ScmError {
    fn new(kind: ErrorKind, status: Option<u16>, message: impl Into<String>) -> Self {
        Self { kind, status, message: message.into(), reset_at: None }
    }

    fn unreachable(api_url: &str, err: &reqwest::Error) -> Self {
        let why = if err.is_timeout() { "timed out".to_owned() } else { root_cause(err) };
        Self::new(ErrorKind::Unreachable, None, format!("cannot reach {api_url}: {why}"))
    }

    fn unreadable(what: &str, err: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Server, None, format!("the provider's answer to {what} could not be read: {err}"))
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Identity {
    pub login: String,
    pub name: Option<String>,
}

/// What a token may do with one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoAccess {
    /// `owner/name` as the provider spells it.
    pub full_name: String,
    pub default_branch: Option<String>,
    pub can_push: bool,
}

/// A pull (or merge) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// GitHub's number, GitLab's iid.
    pub number: u64,
    /// The page people open.
    pub url: String,
    pub title: String,
    pub head: String,
    /// The description as it stands (to keep a person's text when reusing it).
    #[serde(default)]
    pub body: String,
}

/// What [`Provider::create_pull_request`] sends.
#[derive(Debug, Clone)]
pub struct NewPullRequest<'a> {
    /// `owner/name` the pull request is opened on.
    pub repository: &'a str,
    /// `owner/name` the branch lives in (another one in a fork flow).
    pub head_repository: &'a str,
    pub branch: &'a str,
    pub base: &'a str,
    pub title: &'a str,
    pub body: &'a str,
}

/// The operations Viberglass needs from a provider.
pub trait Provider: Sync {
    fn kind(&self) -> ScmProvider;
    /// Who the token is.
    fn whoami(&self) -> impl Future<Output = Result<Identity, ScmError>> + Send;
    /// Whether the token can read the repository, and push to it.
    fn repository(&self, repository: &str) -> impl Future<Output = Result<RepoAccess, ScmError>> + Send;
    /// Whether the token may open pull requests on the repository, found out
    /// without opening one: an empty create request is refused for lack of
    /// permission (403) before it is refused for lack of content (400/422).
    fn can_open_pull_requests(&self, repository: &str) -> impl Future<Output = Result<bool, ScmError>> + Send;
    /// The open pull request whose head is `head_repository`'s `branch`.
    fn find_open_pull_request(
        &self,
        repository: &str,
        head_repository: &str,
        branch: &str,
    ) -> impl Future<Output = Result<Option<PullRequest>, ScmError>> + Send;
    fn create_pull_request(
        &self,
        new: &NewPullRequest<'_>,
    ) -> impl Future<Output = Result<PullRequest, ScmError>> + Send;
    fn update_pull_request(
        &self,
        repository: &str,
        number: u64,
        title: &str,
        body: &str,
    ) -> impl Future<Output = Result<PullRequest, ScmError>> + Send;
    fn comment(&self, repository: &str, number: u64, body: &str) -> impl Future<Output = Result<(), ScmError>> + Send;
    fn add_labels(
        &self,
        repository: &str,
        number: u64,
        labels: &[String],
    ) -> impl Future<Output = Result<(), ScmError>> + Send;
}

/// One of the providers, chosen at run time.
pub enum Forge {
    GitHub(GitHub),
    GitLab(GitLab),
}

/// Builds the provider for `kind` at `api_url` with `token`; `None` for plain git.
pub fn connect(kind: ScmProvider, api_url: &str, token: &str) -> Option<Forge> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("viberglass/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()?;
    match kind {
        ScmProvider::GitHub => Some(Forge::GitHub(GitHub::new(http, api_url, token))),
        ScmProvider::GitLab => Some(Forge::GitLab(GitLab::new(http, api_url, token))),
        ScmProvider::Git => None,
    }
}

macro_rules! dispatch {
    ($self:ident, |$p:ident| $body:expr) => {
        match $self {
            Forge::GitHub($p) => $body,
            Forge::GitLab($p) => $body,
        }
    };
}

impl Provider for Forge {
    fn kind(&self) -> ScmProvider {
        dispatch!(self, |p| p.kind())
    }
    async fn whoami(&self) -> Result<Identity, ScmError> {
        dispatch!(self, |p| p.whoami().await)
    }
    async fn repository(&self, repository: &str) -> Result<RepoAccess, ScmError> {
        dispatch!(self, |p| p.repository(repository).await)
    }
    async fn can_open_pull_requests(&self, repository: &str) -> Result<bool, ScmError> {
        dispatch!(self, |p| p.can_open_pull_requests(repository).await)
    }
    async fn find_open_pull_request(
        &self,
        repository: &str,
        head_repository: &str,
        branch: &str,
    ) -> Result<Option<PullRequest>, ScmError> {
        dispatch!(self, |p| p.find_open_pull_request(repository, head_repository, branch).await)
    }
    async fn create_pull_request(&self, new: &NewPullRequest<'_>) -> Result<PullRequest, ScmError> {
        dispatch!(self, |p| p.create_pull_request(new).await)
    }
    async fn update_pull_request(
        &self,
        repository: &str,
        number: u64,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ScmError> {
        dispatch!(self, |p| p.update_pull_request(repository, number, title, body).await)
    }
    async fn comment(&self, repository: &str, number: u64, body: &str) -> Result<(), ScmError> {
        dispatch!(self, |p| p.comment(repository, number, body).await)
    }
    async fn add_labels(&self, repository: &str, number: u64, labels: &[String]) -> Result<(), ScmError> {
        dispatch!(self, |p| p.add_labels(repository, number, labels).await)
    }
}

/// What an execution asks [`publish`] to do.
#[derive(Debug, Clone)]
pub struct Publication<'a> {
    pub new: NewPullRequest<'a>,
    pub labels: &'a [String],
    /// Left on a reused pull request, e.g. "Updated by job … (commit …)".
    pub update_comment: &'a str,
}

/// The pull request an execution ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    #[serde(flatten)]
    pub pull_request: PullRequest,
    /// `false` when an open pull request with the same head was updated.
    pub created: bool,
}

/// Opens the pull request, or updates the open one with the same head.
pub async fn publish(provider: &impl Provider, publication: &Publication<'_>) -> Result<Published, Failure> {
    let kind = provider.kind();
    let new = &publication.new;
    let fail = |e: ScmError| pull_request_failure(kind, new.repository, new.base, &e);
    let existing =
        provider.find_open_pull_request(new.repository, new.head_repository, new.branch).await.map_err(fail)?;
    let (pull_request, created) = match existing {
        Some(open) => (reuse(provider, new, &open, publication.update_comment).await.map_err(fail)?, false),
        None => match provider.create_pull_request(&NewPullRequest { body: &marked(new.body), ..new.clone() }).await {
            Ok(pr) => (pr, true),
            // Opened by someone else between our look and our create: reuse it.
            Err(e) if e.kind == ErrorKind::Conflict => {
                let open = provider
                    .find_open_pull_request(new.repository, new.head_repository, new.branch)
                    .await
                    .map_err(fail)?
                    .ok_or_else(|| fail(e))?;
                (reuse(provider, new, &open, publication.update_comment).await.map_err(fail)?, false)
            }
            Err(e) => return Err(fail(e)),
        },
    };
    if !publication.labels.is_empty() {
        provider.add_labels(new.repository, pull_request.number, publication.labels).await.map_err(fail)?;
    }
    Ok(Published { pull_request, created })
}

/// Where Viberglass's part of a pull request's description begins.
pub const BODY_MARKER: &str = "<!-- viberglass -->";

/// A description as Viberglass opens it: all of it is Viberglass's.
fn marked(body: &str) -> String {
    format!("{BODY_MARKER}\n{}", body.trim_start_matches(BODY_MARKER).trim_start())
}

/// What an update of an open pull request sets: ours (opened by Viberglass:
/// the description starts with the marker) gets the new title and body; a
/// person's keeps its title and text, and Viberglass's part goes in its own
/// section after it, replaced on each update.
pub fn merged_description(open: &PullRequest, title: &str, body: &str) -> (String, String) {
    let ours = marked(body);
    match open.body.find(BODY_MARKER) {
        Some(0) => (title.to_owned(), ours),
        Some(at) => (open.title.clone(), format!("{}{ours}", &open.body[..at])),
        None if open.body.trim().is_empty() => (open.title.clone(), ours),
        None => (open.title.clone(), format!("{}\n\n---\n### From Viberglass\n{ours}", open.body.trim_end())),
    }
}

async fn reuse(
    provider: &impl Provider,
    new: &NewPullRequest<'_>,
    open: &PullRequest,
    comment: &str,
) -> Result<PullRequest, ScmError> {
    let number = open.number;
    let (title, body) = merged_description(open, new.title, new.body);
    let updated = provider.update_pull_request(new.repository, number, &title, &body).await?;
    if !comment.is_empty() {
        provider.comment(new.repository, number, comment).await?;
    }
    Ok(updated)
}

/// Turns a provider's refusal of a pull request into the job's failure,
/// worded after the troubleshooting guide.
pub fn pull_request_failure(kind: ScmProvider, repository: &str, base: &str, err: &ScmError) -> Failure {
    let noun = kind.pull_request_noun();
    let provider = match kind {
        ScmProvider::GitHub => "GitHub",
        ScmProvider::GitLab => "GitLab",
        ScmProvider::Git => "the git host",
    };
    let permission = match kind {
        ScmProvider::GitLab => "the `api` scope and at least the Developer role on the project",
        _ => "`pull_request: write` (fine-grained token or app installation) or the `repo` scope (classic token)",
    };
    let lower = err.message.to_lowercase();
    let (code, message, retryable) = match err.kind {
        ErrorKind::Unauthorized => (
            "scm_token_invalid",
            format!(
                "{provider} refused the SCM token while opening the {noun} on {repository}: it is invalid, expired or revoked. Put a valid token in the project's SCM credential secret, then re-run"
            ),
            false,
        ),
        ErrorKind::Forbidden => (
            "pull_request_not_permitted",
            format!(
                "the commits were pushed but {provider} refused to open the {noun} on {repository}: the SCM token lacks pull-request write permission. Give it {permission}, then re-run"
            ),
            false,
        ),
        ErrorKind::NotFound => (
            "pull_request_repository_not_found",
            format!(
                "{provider} has no repository {repository}, or the SCM token cannot see it: check the project's repository (and PR repository, in a fork flow) and the token's repository access, then re-run"
            ),
            false,
        ),
        ErrorKind::RateLimited => {
            let when = err
                .reset_at
                .map(|t| format!(" (it resets at {:02}:{:02} UTC)", t.hour(), t.minute()))
                .unwrap_or_default();
            (
                "scm_rate_limited",
                format!(
                    "{provider}'s API rate limit for the SCM token is used up{when}: the branch is pushed; re-run later to open the {noun}"
                ),
                true,
            )
        }
        ErrorKind::Unreachable => (
            "scm_unreachable",
            format!(
                "{provider}'s API could not be reached ({}): the branch is pushed; check the integration's address and the network, then re-run",
                err.message
            ),
            true,
        ),
        ErrorKind::Server => (
            "scm_server_error",
            format!("{provider} failed while opening the {noun} on {repository}; re-run when it has recovered"),
            true,
        ),
        ErrorKind::Invalid | ErrorKind::Conflict if lower.contains("protected") => (
            "pull_request_base_protected",
            format!(
                "{provider} refused the {noun} into `{base}`: branch protection forbids it. Pick another PR base branch in the project's SCM settings, then re-run"
            ),
            false,
        ),
        ErrorKind::Invalid | ErrorKind::Conflict if lower.contains("no commits between") => (
            "pull_request_no_diff",
            format!("the branch has no commits that `{base}` lacks, so there is nothing to open a {noun} for"),
            false,
        ),
        ErrorKind::Invalid | ErrorKind::Conflict if lower.contains("base") || lower.contains("target_branch") => (
            "pull_request_base_invalid",
            format!(
                "{provider} refused `{base}` as the {noun}'s base: check the project's PR base branch exists on {repository}"
            ),
            false,
        ),
        ErrorKind::Conflict => (
            "pull_request_exists",
            format!(
                "the branch already has an open {noun} that Viberglass could not take over: close it, or change the project's branch-name template to include a unique part (e.g. {{{{ ticket }}}}-{{{{ clanker }}}}), then re-run"
            ),
            false,
        ),
        ErrorKind::Invalid => {
            ("pull_request_refused", format!("{provider} refused the {noun}; the detail has its words"), false)
        }
    };
    let status = err.status.map(|s| format!("HTTP {s}: ")).unwrap_or_default();
    Failure::new(FailureLayer::PullRequest, code, message, retryable).with_detail(format!("{status}{}", err.message))
}

/// The answer to Test connection.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccessReport {
    pub ok: bool,
    pub provider: ScmProvider,
    pub api_url: String,
    /// Who the token is; none when it was refused.
    pub identity: Option<Identity>,
    pub repository: Option<String>,
    pub can_read: Option<bool>,
    pub can_push: Option<bool>,
    pub can_open_pull_requests: Option<bool>,
    /// What is wrong and how to fix it, one line each.
    pub problems: Vec<String>,
}

/// Calls the provider as Test connection: who is the token, can it read the
/// repository, push to it and open pull requests on it.
pub async fn check_access(provider: &impl Provider, api_url: &str, repository: Option<&str>) -> AccessReport {
    let mut report = AccessReport {
        ok: false,
        provider: provider.kind(),
        api_url: api_url.to_owned(),
        identity: None,
        repository: repository.map(str::to_owned),
        can_read: None,
        can_push: None,
        can_open_pull_requests: None,
        problems: Vec::new(),
    };
    match provider.whoami().await {
        Ok(identity) => report.identity = Some(identity),
        Err(e) => {
            report.problems.push(match e.kind {
                ErrorKind::Unauthorized => {
                    format!(
                        "the token was refused ({}): it is invalid, expired or revoked; replace the secret's value",
                        e.message
                    )
                }
                ErrorKind::Unreachable => format!("{}: check the integration's base URL and the network", e.message),
                _ => format!("asking who the token is failed: {}", e.message),
            });
            return report;
        }
    }
    if let Some(repository) = repository {
        match provider.repository(repository).await {
            Ok(access) => {
                report.can_read = Some(true);
                report.can_push = Some(access.can_push);
                if !access.can_push {
                    report.problems.push(format!(
                        "the token can read {repository} but not push to it: give it write access to the repository's contents"
                    ));
                }
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                report.can_read = Some(false);
                report.problems.push(format!(
                    "{repository} was not found or the token cannot see it: check the project's repository URL and the token's repository access"
                ));
            }
            Err(e) => report.problems.push(format!("reading {repository} failed: {}", e.message)),
        }
        if report.can_read == Some(true) {
            match provider.can_open_pull_requests(repository).await {
                Ok(can) => {
                    report.can_open_pull_requests = Some(can);
                    if !can {
                        let permission = match provider.kind() {
                            ScmProvider::GitLab => "the `api` scope and the Developer role",
                            _ => "`pull_request: write` (or the `repo` scope)",
                        };
                        report.problems.push(format!(
                            "the token cannot open {}s on {repository}: give it {permission}",
                            provider.kind().pull_request_noun()
                        ));
                    }
                }
                Err(e) => report.problems.push(format!("checking pull-request permission failed: {}", e.message)),
            }
        }
    }
    report.ok = report.problems.is_empty();
    report
}

/// Reads a provider's JSON answer, or its refusal.
async fn answer<T: serde::de::DeserializeOwned>(
    what: &str,
    api_url: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
    classify: fn(u16, &reqwest::header::HeaderMap, &str) -> ScmError,
) -> Result<T, ScmError> {
    let response = sent.map_err(|e| ScmError::unreachable(api_url, &e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| ScmError::unreachable(api_url, &e))?;
    if !status.is_success() {
        return Err(classify(status.as_u16(), &headers, &text));
    }
    let body = if text.trim().is_empty() { "null" } else { text.as_str() };
    serde_json::from_str(body).map_err(|e| ScmError::unreadable(what, e))
}

/// A provider's error message from its JSON body (`message`, `error`,
/// `errors[].message`), or the start of the body.
fn provider_message(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.chars().take(300).collect();
    };
    let mut parts = Vec::new();
    for key in ["message", "error"] {
        match &json[key] {
            serde_json::Value::String(s) => parts.push(s.clone()),
            serde_json::Value::Array(items) => parts.extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned))),
            _ => {}
        }
    }
    if let Some(errors) = json["errors"].as_array() {
        for e in errors {
            if let Some(m) = e["message"].as_str() {
                parts.push(m.to_owned());
            } else if let (Some(field), Some(code)) = (e["field"].as_str(), e["code"].as_str()) {
                parts.push(format!("{field}: {code}"));
            }
        }
    }
    if parts.is_empty() { body.chars().take(300).collect() } else { parts.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(title: &str, body: &str) -> PullRequest {
        PullRequest { number: 1, url: "u".into(), title: title.into(), head: "h".into(), body: body.into() }
    }

    #[test]
    fn reusing_a_persons_pull_request_keeps_their_title_and_text() {
        let (title, body) = merged_description(&open("Fix the form", "I started this.\n"), "Agent title", "New text");
        assert_eq!(title, "Fix the form");
        assert!(body.starts_with("I started this.\n\n---\n### From Viberglass\n"), "{body}");
        assert!(body.ends_with(&format!("{BODY_MARKER}\nNew text")), "{body}");
        // The next update replaces only Viberglass's section.
        let (_, again) = merged_description(&open("Fix the form", &body), "Agent title", "Newer text");
        assert!(
            again.starts_with("I started this.") && again.ends_with("Newer text") && !again.contains("New text\n"),
            "{again}"
        );
        assert_eq!(again.matches(BODY_MARKER).count(), 1);
        // Ours is replaced whole.
        let ours = format!("{BODY_MARKER}\nOld");
        assert_eq!(
            merged_description(&open("Old title", &ours), "New title", "New"),
            ("New title".into(), format!("{BODY_MARKER}\nNew"))
        );
    }

    fn err(kind: ErrorKind, message: &str) -> ScmError {
        ScmError::new(kind, Some(422), message)
    }

    #[test]
    fn refusals_read_as_the_guide_words_them() {
        let f = pull_request_failure(ScmProvider::GitHub, "acme/app", "main", &err(ErrorKind::Forbidden, "x"));
        assert_eq!((f.layer, f.code.as_str()), (FailureLayer::PullRequest, "pull_request_not_permitted"));
        assert!(f.message.contains("pull_request: write"), "{}", f.message);
        let f = pull_request_failure(
            ScmProvider::GitHub,
            "acme/app",
            "main",
            &err(ErrorKind::Invalid, "Base branch is protected"),
        );
        assert_eq!(f.code, "pull_request_base_protected");
        assert!(f.message.contains("PR base branch"), "{}", f.message);
        let f = pull_request_failure(ScmProvider::GitLab, "g/app", "main", &err(ErrorKind::Conflict, "exists"));
        assert!(f.message.contains("merge request") && f.message.contains("{{ ticket }}"), "{}", f.message);
        let f = pull_request_failure(ScmProvider::GitLab, "g/app", "main", &err(ErrorKind::RateLimited, "slow down"));
        assert!(f.retryable && f.code == "scm_rate_limited");
        assert!(f.detail.contains("HTTP 422: slow down"), "{}", f.detail);
    }

    #[test]
    fn provider_messages_are_collected() {
        assert_eq!(
            provider_message(
                r#"{"message":"Validation Failed","errors":[{"message":"A pull request already exists"}]}"#
            ),
            "Validation Failed; A pull request already exists"
        );
        assert_eq!(provider_message(r#"{"message":["Another open merge request"]}"#), "Another open merge request");
        assert_eq!(provider_message(r#"{"errors":[{"field":"head","code":"invalid"}]}"#), "head: invalid");
        assert_eq!(provider_message("<html>bad gateway</html>"), "<html>bad gateway</html>");
    }
}
