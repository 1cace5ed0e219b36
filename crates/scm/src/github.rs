//! GitHub and GitHub Enterprise: the REST API v3.

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::json;
use viberglass_domain::ScmProvider;

use crate::{
    ErrorKind, Identity, NewPullRequest, Provider, PullRequest, RepoAccess, ScmError, answer, provider_message,
};

pub struct GitHub {
    http: reqwest::Client,
    api_url: String,
    token: String,
}

#[derive(Deserialize)]
struct User {
    login: String,
    name: Option<String>,
}

#[derive(Deserialize, Default)]
struct Permissions {
    #[serde(default)]
    push: bool,
}

#[derive(Deserialize)]
struct Repo {
    full_name: String,
    default_branch: Option<String>,
    #[serde(default)]
    permissions: Option<Permissions>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "ref")]
    branch: String,
}

#[derive(Deserialize)]
struct Pull {
    number: u64,
    html_url: String,
    title: String,
    head: Head,
    #[serde(default)]
    body: Option<String>,
}

impl From<Pull> for PullRequest {
    fn from(p: Pull) -> Self {
        PullRequest {
            number: p.number,
            url: p.html_url,
            title: p.title,
            head: p.head.branch,
            body: p.body.unwrap_or_default(),
        }
    }
}

/// GitHub's refusals: a 403 with the rate limit used up is a rate limit,
/// not a permission problem.
fn classify(status: u16, headers: &HeaderMap, body: &str) -> ScmError {
    let message = provider_message(body);
    let remaining = headers.get("x-ratelimit-remaining").and_then(|v| v.to_str().ok());
    let lower = message.to_lowercase();
    let kind = match status {
        401 => ErrorKind::Unauthorized,
        403 | 429 if remaining == Some("0") || lower.contains("rate limit") || status == 429 => ErrorKind::RateLimited,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        422 if lower.contains("already exists") => ErrorKind::Conflict,
        400 | 422 => ErrorKind::Invalid,
        _ => ErrorKind::Server,
    };
    let mut error = ScmError::new(kind, Some(status), message);
    if kind == ErrorKind::RateLimited {
        error.reset_at = headers
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok());
    }
    error
}

fn owner(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

impl GitHub {
    pub fn new(http: reqwest::Client, api_url: &str, token: &str) -> Self {
        Self { http, api_url: api_url.trim_end_matches('/').to_owned(), token: token.to_owned() }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ScmError> {
        answer(what, &self.api_url, request.send().await, classify).await
    }
}

impl Provider for GitHub {
    fn kind(&self) -> ScmProvider {
        ScmProvider::GitHub
    }

    async fn whoami(&self) -> Result<Identity, ScmError> {
        let user: User = self.call("GET /user", self.request(reqwest::Method::GET, "/user")).await?;
        Ok(Identity { login: user.login, name: user.name })
    }

    async fn repository(&self, repository: &str) -> Result<RepoAccess, ScmError> {
        let repo: Repo =
            self.call("GET /repos", self.request(reqwest::Method::GET, &format!("/repos/{repository}"))).await?;
        Ok(RepoAccess {
            full_name: repo.full_name,
            default_branch: repo.default_branch,
            can_push: repo.permissions.unwrap_or_default().push,
        })
    }

    async fn can_open_pull_requests(&self, repository: &str) -> Result<bool, ScmError> {
        let probe = self
            .call::<serde_json::Value>(
                "POST /pulls",
                self.request(reqwest::Method::POST, &format!("/repos/{repository}/pulls")).json(&json!({})),
            )
            .await;
        match probe {
            Err(e) if e.kind == ErrorKind::Forbidden => Ok(false),
            Err(e) if matches!(e.kind, ErrorKind::Invalid | ErrorKind::Conflict) => Ok(true),
            Err(e) => Err(e),
            Ok(_) => Ok(true),
        }
    }

    async fn find_open_pull_request(
        &self,
        repository: &str,
        head_repository: &str,
        branch: &str,
    ) -> Result<Option<PullRequest>, ScmError> {
        let head = format!("{}:{branch}", owner(head_repository));
        let pulls: Vec<Pull> = self
            .call(
                "GET /pulls",
                self.request(reqwest::Method::GET, &format!("/repos/{repository}/pulls"))
                    .query(&[("head", head.as_str()), ("state", "open")]),
            )
            .await?;
        Ok(pulls.into_iter().find(|p| p.head.branch == branch).map(PullRequest::from))
    }

    async fn create_pull_request(&self, new: &NewPullRequest<'_>) -> Result<PullRequest, ScmError> {
        let head = if new.head_repository == new.repository {
            new.branch.to_owned()
        } else {
            format!("{}:{}", owner(new.head_repository), new.branch)
        };
        let pull: Pull = self
            .call(
                "POST /pulls",
                self.request(reqwest::Method::POST, &format!("/repos/{}/pulls", new.repository)).json(&json!({
                    "title": new.title, "body": new.body, "head": head, "base": new.base,
                })),
            )
            .await?;
        Ok(pull.into())
    }

    async fn update_pull_request(
        &self,
        repository: &str,
        number: u64,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ScmError> {
        let pull: Pull = self
            .call(
                "PATCH /pulls",
                self.request(reqwest::Method::PATCH, &format!("/repos/{repository}/pulls/{number}"))
                    .json(&json!({"title": title, "body": body})),
            )
            .await?;
        Ok(pull.into())
    }

    async fn comment(&self, repository: &str, number: u64, body: &str) -> Result<(), ScmError> {
        self.call::<serde_json::Value>(
            "POST /comments",
            self.request(reqwest::Method::POST, &format!("/repos/{repository}/issues/{number}/comments"))
                .json(&json!({"body": body})),
        )
        .await
        .map(|_| ())
    }

    async fn add_labels(&self, repository: &str, number: u64, labels: &[String]) -> Result<(), ScmError> {
        self.call::<serde_json::Value>(
            "POST /labels",
            self.request(reqwest::Method::POST, &format!("/repos/{repository}/issues/{number}/labels"))
                .json(&json!({"labels": labels})),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_rate_limit_is_not_a_permission_problem() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset", "1800000000".parse().unwrap());
        let e = classify(403, &headers, r#"{"message":"API rate limit exceeded for user ID 1."}"#);
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert!(e.reset_at.is_some());
        let e = classify(403, &HeaderMap::new(), r#"{"message":"Resource not accessible by personal access token"}"#);
        assert_eq!(e.kind, ErrorKind::Forbidden);
        let e = classify(
            422,
            &HeaderMap::new(),
            r#"{"message":"Validation Failed","errors":[{"message":"A pull request already exists for acme:b."}]}"#,
        );
        assert_eq!(e.kind, ErrorKind::Conflict);
    }
}
