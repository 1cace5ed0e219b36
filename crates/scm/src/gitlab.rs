//! GitLab (gitlab.com and self-hosted): the REST API v4. Projects are
//! addressed by their URL-encoded path, so no id lookup is needed.

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::json;
use viberglass_domain::ScmProvider;

use crate::{
    ErrorKind, Identity, NewPullRequest, Provider, PullRequest, RepoAccess, ScmError, answer, provider_message,
};

/// The lowest access level that may push and open merge requests (Developer).
const DEVELOPER: u64 = 30;

pub struct GitLab {
    http: reqwest::Client,
    api_url: String,
    token: String,
}

#[derive(Deserialize)]
struct User {
    username: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Access {
    access_level: u64,
}

#[derive(Deserialize, Default)]
struct Permissions {
    project_access: Option<Access>,
    group_access: Option<Access>,
}

#[derive(Deserialize)]
struct Project {
    id: u64,
    path_with_namespace: String,
    default_branch: Option<String>,
    #[serde(default)]
    permissions: Option<Permissions>,
}

#[derive(Deserialize)]
struct MergeRequest {
    iid: u64,
    web_url: String,
    title: String,
    source_branch: String,
    #[serde(default)]
    source_project_id: Option<u64>,
    #[serde(default)]
    description: Option<String>,
}

impl From<MergeRequest> for PullRequest {
    fn from(m: MergeRequest) -> Self {
        PullRequest {
            number: m.iid,
            url: m.web_url,
            title: m.title,
            head: m.source_branch,
            body: m.description.unwrap_or_default(),
        }
    }
}

fn classify(status: u16, headers: &HeaderMap, body: &str) -> ScmError {
    let message = provider_message(body);
    let kind = match status {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        429 => ErrorKind::RateLimited,
        400 | 422 => ErrorKind::Invalid,
        _ => ErrorKind::Server,
    };
    let mut error = ScmError::new(kind, Some(status), message);
    if kind == ErrorKind::RateLimited {
        error.reset_at = headers
            .get("ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok());
    }
    error
}

/// `group/sub/app` as GitLab wants it in a path: `group%2Fsub%2Fapp`.
fn encode(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl GitLab {
    pub fn new(http: reqwest::Client, api_url: &str, token: &str) -> Self {
        Self { http, api_url: api_url.trim_end_matches('/').to_owned(), token: token.to_owned() }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.api_url)).header("private-token", &self.token)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ScmError> {
        answer(what, &self.api_url, request.send().await, classify).await
    }

    async fn project(&self, repository: &str) -> Result<Project, ScmError> {
        self.call("GET /projects/:id", self.request(reqwest::Method::GET, &format!("/projects/{}", encode(repository))))
            .await
    }
}

impl Provider for GitLab {
    fn kind(&self) -> ScmProvider {
        ScmProvider::GitLab
    }

    async fn whoami(&self) -> Result<Identity, ScmError> {
        let user: User = self.call("GET /user", self.request(reqwest::Method::GET, "/user")).await?;
        Ok(Identity { login: user.username, name: user.name })
    }

    async fn repository(&self, repository: &str) -> Result<RepoAccess, ScmError> {
        let project = self.project(repository).await?;
        let permissions = project.permissions.unwrap_or_default();
        let level = [permissions.project_access, permissions.group_access]
            .into_iter()
            .flatten()
            .map(|a| a.access_level)
            .max()
            .unwrap_or(0);
        Ok(RepoAccess {
            full_name: project.path_with_namespace,
            default_branch: project.default_branch,
            can_push: level >= DEVELOPER,
        })
    }

    async fn can_open_pull_requests(&self, repository: &str) -> Result<bool, ScmError> {
        // GitLab checks a request's content before the caller's role, so an
        // empty create proves nothing: the Developer role is what opens merge requests.
        Ok(self.repository(repository).await?.can_push)
    }

    async fn find_open_pull_request(
        &self,
        repository: &str,
        head_repository: &str,
        branch: &str,
    ) -> Result<Option<PullRequest>, ScmError> {
        let source_id =
            if head_repository == repository { None } else { Some(self.project(head_repository).await?.id) };
        let requests: Vec<MergeRequest> = self
            .call(
                "GET /merge_requests",
                self.request(reqwest::Method::GET, &format!("/projects/{}/merge_requests", encode(repository)))
                    .query(&[("source_branch", branch), ("state", "opened")]),
            )
            .await?;
        Ok(requests
            .into_iter()
            .find(|m| m.source_branch == branch && (source_id.is_none() || m.source_project_id == source_id))
            .map(PullRequest::from))
    }

    async fn create_pull_request(&self, new: &NewPullRequest<'_>) -> Result<PullRequest, ScmError> {
        // GitLab opens a fork's merge request on the fork, naming the target project.
        let mut body = json!({
            "source_branch": new.branch, "target_branch": new.base, "title": new.title, "description": new.body,
        });
        let on = if new.head_repository == new.repository {
            new.repository
        } else {
            body["target_project_id"] = json!(self.project(new.repository).await?.id);
            new.head_repository
        };
        let request: MergeRequest = self
            .call(
                "POST /merge_requests",
                self.request(reqwest::Method::POST, &format!("/projects/{}/merge_requests", encode(on))).json(&body),
            )
            .await?;
        Ok(request.into())
    }

    async fn update_pull_request(
        &self,
        repository: &str,
        number: u64,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ScmError> {
        let request: MergeRequest = self
            .call(
                "PUT /merge_requests/:iid",
                self.request(
                    reqwest::Method::PUT,
                    &format!("/projects/{}/merge_requests/{number}", encode(repository)),
                )
                .json(&json!({"title": title, "description": body})),
            )
            .await?;
        Ok(request.into())
    }

    async fn comment(&self, repository: &str, number: u64, body: &str) -> Result<(), ScmError> {
        self.call::<serde_json::Value>(
            "POST /notes",
            self.request(
                reqwest::Method::POST,
                &format!("/projects/{}/merge_requests/{number}/notes", encode(repository)),
            )
            .json(&json!({"body": body})),
        )
        .await
        .map(|_| ())
    }

    async fn add_labels(&self, repository: &str, number: u64, labels: &[String]) -> Result<(), ScmError> {
        self.call::<serde_json::Value>(
            "PUT /merge_requests/:iid",
            self.request(reqwest::Method::PUT, &format!("/projects/{}/merge_requests/{number}", encode(repository)))
                .json(&json!({"add_labels": labels.join(",")})),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths_are_encoded() {
        assert_eq!(encode("group/sub/my.app"), "group%2Fsub%2Fmy.app");
    }

    #[test]
    fn refusals_are_classified() {
        assert_eq!(
            classify(409, &HeaderMap::new(), r#"{"message":["Another open merge request"]}"#).kind,
            ErrorKind::Conflict
        );
        assert_eq!(classify(403, &HeaderMap::new(), r#"{"message":"403 Forbidden"}"#).kind, ErrorKind::Forbidden);
        assert_eq!(classify(429, &HeaderMap::new(), "Retry later").kind, ErrorKind::RateLimited);
    }
}
