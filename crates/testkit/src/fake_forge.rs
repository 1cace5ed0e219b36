//! A fake forge: real git repositories over smart HTTP plus the subset of the
//! GitHub (`/api/v3`) and GitLab (`/api/v4`) REST APIs Viberglass uses, with
//! state: repositories, branches (read from git), pull/merge requests,
//! comments, labels, protected branches and tokens with permissions.
//!
//! It refuses what the real services refuse, in their words: a missing or
//! unknown token (401), a token without the permission (403, checked before
//! the request's content, as GitHub and GitLab do), a missing repository
//! (404), a second open pull request for the same head (422 / 409), a push to
//! a protected branch (GH006 from a pre-receive hook), a spent rate limit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

/// What a token may do. Fine-grained GitHub permissions; on GitLab the same
/// three stand for `read_repository`, `write_repository` and `api` with the
/// Developer role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    ContentsRead,
    ContentsWrite,
    PullRequestsWrite,
    /// Comment on and label issues (GitHub's `issues: write`; GitLab's Reporter role).
    IssuesWrite,
}

/// Every permission: a token that may do everything.
pub const ALL: &[Permission] =
    &[Permission::ContentsRead, Permission::ContentsWrite, Permission::PullRequestsWrite, Permission::IssuesWrite];

/// An issue as the forge holds it (GitHub issue, GitLab issue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeIssue {
    pub repository: String,
    pub number: u64,
    pub title: String,
    pub labels: Vec<String>,
    pub comments: Vec<String>,
}

#[derive(Debug, Clone)]
struct Token {
    user: String,
    permissions: BTreeSet<Permission>,
}

#[derive(Debug, Clone)]
struct Repo {
    id: u64,
    protected: BTreeSet<String>,
}

/// A pull (merge) request as the forge holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePull {
    pub repository: String,
    pub number: u64,
    pub title: String,
    pub body: String,
    /// `owner/name` the branch lives in.
    pub head_repository: String,
    pub head: String,
    pub base: String,
    pub open: bool,
    pub author: String,
    pub labels: Vec<String>,
    pub comments: Vec<String>,
}

/// One API or git request as the forge saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The user the request authenticated as.
    pub user: Option<String>,
}

#[derive(Default)]
struct Forge {
    tokens: BTreeMap<String, Token>,
    repos: BTreeMap<String, Repo>,
    pulls: Vec<FakePull>,
    issues: Vec<FakeIssue>,
    /// Answers to give the next issue calls (status codes), e.g. 502 for a flaky forge.
    issue_failures: Vec<u16>,
    /// GitLab members: (repository, user id) → access level.
    members: BTreeMap<(String, u64), u64>,
    rate_limited: bool,
    requests: Vec<Recorded>,
    next_id: u64,
}

struct Shared {
    root: PathBuf,
    base_url: String,
    forge: Mutex<Forge>,
}

/// A running fake forge. Stops when dropped.
pub struct FakeForge {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
    stop: tokio_util::sync::CancellationToken,
}

const PRE_RECEIVE: &str = r#"#!/bin/sh
# Refuses pushes to protected branches, in GitHub's words.
while read old new ref; do
  branch=${ref#refs/heads/}
  if [ -f protected-branches ] && grep -qxF "$branch" protected-branches; then
    echo "error: GH006: Protected branch update failed for $ref." >&2
    echo "error: Changes must be made through a pull request." >&2
    exit 1
  fi
done
"#;

impl FakeForge {
    pub async fn start() -> FakeForge {
        // Not under /tmp: nothing here is read by sandboxed workers, but keep
        // it beside the other test repositories.
        let dir = tempfile::Builder::new().prefix("viberglass-forge-").tempdir_in("/var/tmp").expect("temporary dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shared = Arc::new(Shared {
            root: dir.path().to_owned(),
            base_url: format!("http://{address}"),
            forge: Mutex::new(Forge { next_id: 1000, ..Forge::default() }),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        FakeForge { address, shared, _dir: dir, stop }
    }

    /// The instance address an integration's `base_url` takes.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Adds `owner/name` whose `main` holds `files`; returns its clone URL.
    pub fn add_repo(&self, repository: &str, files: &[(&str, &str)]) -> String {
        let seed = crate::git::TestRepo::with_files(files);
        let target = self.repo_path(repository);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        crate::forge::copy_dir(&seed.bare, &target);
        let hook = target.join("hooks/pre-receive");
        std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
        std::fs::write(&hook, PRE_RECEIVE).unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut forge = self.shared.forge.lock().unwrap();
        forge.next_id += 1;
        let id = forge.next_id;
        forge.repos.insert(repository.to_owned(), Repo { id, protected: BTreeSet::new() });
        self.clone_url(repository)
    }

    /// The clone URL of `owner/name` (which may not exist).
    pub fn clone_url(&self, repository: &str) -> String {
        format!("{}/{repository}.git", self.shared.base_url)
    }

    fn repo_path(&self, repository: &str) -> PathBuf {
        self.shared.root.join(format!("{repository}.git"))
    }

    /// Issues a token for `user` with `permissions`.
    pub fn add_token(&self, token: &str, user: &str, permissions: &[Permission]) {
        self.shared.forge.lock().unwrap().tokens.insert(
            token.to_owned(),
            Token { user: user.to_owned(), permissions: permissions.iter().copied().collect() },
        );
    }

    /// Protects a branch: pushes to it are refused.
    pub fn protect(&self, repository: &str, branch: &str) {
        let mut forge = self.shared.forge.lock().unwrap();
        let repo = forge.repos.get_mut(repository).expect("a known repository");
        repo.protected.insert(branch.to_owned());
        let list: String = repo.protected.iter().map(|b| format!("{b}\n")).collect();
        std::fs::write(self.repo_path(repository).join("protected-branches"), list).unwrap();
    }

    /// From now on, every API call answers that the rate limit is spent.
    pub fn set_rate_limited(&self, limited: bool) {
        self.shared.forge.lock().unwrap().rate_limited = limited;
    }

    /// The pull requests opened on `repository`, oldest first.
    pub fn pulls(&self, repository: &str) -> Vec<FakePull> {
        self.shared.forge.lock().unwrap().pulls.iter().filter(|p| p.repository == repository).cloned().collect()
    }

    /// Every request so far.
    /// Opens an issue and returns its number.
    pub fn add_issue(&self, repository: &str, title: &str, labels: &[&str]) -> u64 {
        let mut forge = self.shared.forge.lock().unwrap();
        // GitHub numbers issues and pull requests from one sequence per repository.
        let number = 1
            + forge.issues.iter().filter(|i| i.repository == repository).count() as u64
            + forge.pulls.iter().filter(|p| p.repository == repository).count() as u64;
        forge.issues.push(FakeIssue {
            repository: repository.to_owned(),
            number,
            title: title.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            comments: Vec::new(),
        });
        number
    }

    pub fn issue(&self, repository: &str, number: u64) -> Option<FakeIssue> {
        self.shared
            .forge
            .lock()
            .unwrap()
            .issues
            .iter()
            .find(|i| i.repository == repository && i.number == number)
            .cloned()
    }

    /// Makes user `user_id` a GitLab member of `repository` with `access_level` (30: Developer).
    pub fn add_member(&self, repository: &str, user_id: u64, access_level: u64) {
        self.shared.forge.lock().unwrap().members.insert((repository.to_owned(), user_id), access_level);
    }

    /// The next issue comment or label calls answer these statuses, in order (then work again).
    pub fn fail_issue_calls(&self, statuses: &[u16]) {
        self.shared.forge.lock().unwrap().issue_failures.extend_from_slice(statuses);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.forge.lock().unwrap().requests.clone()
    }

    /// Runs git in the bare repository (e.g. `["log", "--format=%s", "branch"]`).
    pub fn git(&self, repository: &str, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .args(args)
            .current_dir(self.repo_path(repository))
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a JSON response")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(&v.replace('+', " ")))
    })
}

fn branch_exists(shared: &Shared, repository: &str, branch: &str) -> bool {
    std::process::Command::new("git")
        .args(["show-ref", "--verify", "--quiet", &format!("refs/heads/{branch}")])
        .current_dir(shared.root.join(format!("{repository}.git")))
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `head` (in `head_repository`) has commits `base` (in `repository`) lacks.
fn has_commits(shared: &Shared, repository: &str, base: &str, head_repository: &str, head: &str) -> bool {
    let head_dir = shared.root.join(format!("{head_repository}.git"));
    let base_dir = shared.root.join(format!("{repository}.git"));
    let rev = |dir: &PathBuf, branch: &str| {
        std::process::Command::new("git")
            .args(["rev-parse", &format!("refs/heads/{branch}")])
            .current_dir(dir)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let (Some(head_sha), Some(base_sha)) = (rev(&head_dir, head), rev(&base_dir, base)) else { return false };
    if head_sha == base_sha {
        return false;
    }
    // Nothing to merge when head is already contained in base.
    let contained = std::process::Command::new("git")
        .args(["merge-base", "--is-ancestor", &head_sha, &base_sha])
        .current_dir(&base_dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    !contained
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if let Some(rest) = path.strip_prefix("/api/v3/") {
        return github(&shared, &method, rest, &uri, &headers, &body);
    }
    if let Some(rest) = path.strip_prefix("/api/v4/") {
        return gitlab(&shared, &method, rest, &uri, &headers, &body);
    }
    git_http(&shared, method, uri, headers, body).await
}

/// The token a request presents: Basic (git), Bearer/token (GitHub), PRIVATE-TOKEN (GitLab).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = headers.get("private-token").and_then(|v| v.to_str().ok()) {
        return Some(token.to_owned());
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    if let Some(basic) = auth.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(basic.trim()).ok()?;
        let text = String::from_utf8_lossy(&decoded).into_owned();
        return text.split_once(':').map(|(_, password)| password.to_owned());
    }
    auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("token ")).map(|t| t.trim().to_owned())
}

fn authenticate(shared: &Shared, method: &Method, path: &str, headers: &HeaderMap) -> Result<Token, Option<String>> {
    let presented = presented_token(headers);
    let mut forge = shared.forge.lock().unwrap();
    let token = presented.as_ref().and_then(|t| forge.tokens.get(t).cloned());
    forge.requests.push(Recorded {
        method: method.to_string(),
        path: path.to_owned(),
        user: token.as_ref().map(|t| t.user.clone()),
    });
    token.ok_or(presented)
}

async fn git_http(shared: &Shared, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path();
    let Some((repository, _)) = path.trim_start_matches('/').split_once(".git/") else {
        return reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
    };
    let repository = repository.to_owned();
    let pushing = path.ends_with("/git-receive-pack") || uri.query().is_some_and(|q| q.contains("git-receive-pack"));
    let token = match authenticate(shared, &method, path, &headers) {
        Ok(token) => token,
        Err(_) => {
            let mut response = Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Basic realm=\"fake forge\"")
                .body(Body::from("authentication required"))
                .unwrap();
            response.headers_mut().insert("content-type", "text/plain".parse().unwrap());
            return response;
        }
    };
    if !shared.forge.lock().unwrap().repos.contains_key(&repository) {
        return Response::builder().status(StatusCode::NOT_FOUND).body(Body::from("Repository not found.")).unwrap();
    }
    let needed = if pushing { Permission::ContentsWrite } else { Permission::ContentsRead };
    if !token.permissions.contains(&needed) {
        return Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Body::from(format!("Permission to {repository}.git denied to {}.", token.user)))
            .unwrap();
    }
    crate::forge::git_backend(&shared.root, &method, &uri, &headers, body, &[("REMOTE_USER", token.user.as_str())])
        .await
}

/// Checks the token and the rate limit; `Err` is the refusal to send.
#[allow(clippy::result_large_err)]
fn api_auth(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    unauthorized: Value,
    limited: Response,
) -> Result<Token, Response> {
    let token = match authenticate(shared, method, path, headers) {
        Ok(token) => token,
        Err(_) => return Err(reply(StatusCode::UNAUTHORIZED, unauthorized)),
    };
    if shared.forge.lock().unwrap().rate_limited {
        return Err(limited);
    }
    Ok(token)
}

fn github_pull(shared: &Shared, p: &FakePull) -> Value {
    json!({
        "number": p.number,
        "html_url": format!("{}/{}/pull/{}", shared.base_url, p.repository, p.number),
        "state": if p.open { "open" } else { "closed" },
        "title": p.title,
        "body": p.body,
        "user": {"login": p.author},
        "head": {"ref": p.head, "label": format!("{}:{}", p.head_repository.split('/').next().unwrap_or(""), p.head), "repo": {"full_name": p.head_repository}},
        "base": {"ref": p.base},
        "labels": p.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
    })
}

fn github(shared: &Shared, method: &Method, rest: &str, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let limited = Response::builder()
        .status(StatusCode::FORBIDDEN)
        .header("content-type", "application/json")
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", "1800000000")
        .body(Body::from(
            json!({"message": "API rate limit exceeded for user ID 1.", "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}).to_string(),
        ))
        .unwrap();
    let token = match api_auth(shared, method, uri.path(), headers, json!({"message": "Bad credentials"}), limited) {
        Ok(token) => token,
        Err(refusal) => return refusal,
    };
    let not_found = || reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if segments == ["user"] && method == Method::GET {
        return reply(StatusCode::OK, json!({"login": token.user, "id": 1, "name": token.user.to_uppercase()}));
    }
    let ["repos", owner, name, tail @ ..] = segments.as_slice() else { return not_found() };
    let repository = format!("{owner}/{name}");
    let repo = shared.forge.lock().unwrap().repos.get(&repository).cloned();
    let Some(repo) = repo else { return not_found() };
    if !token.permissions.contains(&Permission::ContentsRead) {
        return not_found();
    }
    let can_pull = token.permissions.contains(&Permission::PullRequestsWrite);
    let forbidden = || {
        reply(
            StatusCode::FORBIDDEN,
            json!({"message": "Resource not accessible by personal access token", "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"}),
        )
    };
    match (method.clone(), tail) {
        (Method::GET, []) => reply(
            StatusCode::OK,
            json!({
                "id": repo.id, "full_name": repository, "private": true, "default_branch": "main",
                "permissions": {"admin": false, "push": token.permissions.contains(&Permission::ContentsWrite), "pull": true},
            }),
        ),
        (Method::GET, ["pulls"]) => {
            let head = query_param(uri, "head");
            let state = query_param(uri, "state").unwrap_or_else(|| "open".into());
            let forge = shared.forge.lock().unwrap();
            let pulls: Vec<Value> = forge
                .pulls
                .iter()
                .filter(|p| p.repository == repository)
                .filter(|p| state == "all" || (state == "open") == p.open)
                .filter(|p| {
                    head.as_ref().is_none_or(|h| {
                        *h == format!("{}:{}", p.head_repository.split('/').next().unwrap_or(""), p.head)
                    })
                })
                .map(|p| github_pull(shared, p))
                .collect();
            reply(StatusCode::OK, Value::Array(pulls))
        }
        (Method::POST, ["pulls"]) => {
            if !can_pull {
                return forbidden();
            }
            let field = |k: &str| input[k].as_str().map(str::to_owned);
            let missing: Vec<Value> = ["title", "head", "base"]
                .iter()
                .filter(|k| field(k).is_none())
                .map(|k| json!({"resource": "PullRequest", "code": "missing_field", "field": k}))
                .collect();
            if !missing.is_empty() {
                return reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": "Validation Failed", "errors": missing}),
                );
            }
            let (title, head, base) = (field("title").unwrap(), field("head").unwrap(), field("base").unwrap());
            let (head_owner, head_branch) = match head.split_once(':') {
                Some((o, b)) => (o.to_owned(), b.to_owned()),
                None => (owner.to_string(), head.clone()),
            };
            let head_repository = format!("{head_owner}/{name}");
            let invalid = |field: &str| {
                reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": field, "code": "invalid"}]}),
                )
            };
            if !branch_exists(shared, &repository, &base) {
                return invalid("base");
            }
            if !shared.forge.lock().unwrap().repos.contains_key(&head_repository)
                || !branch_exists(shared, &head_repository, &head_branch)
            {
                return invalid("head");
            }
            if !has_commits(shared, &repository, &base, &head_repository, &head_branch) {
                return reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("No commits between {base} and {head_branch}")}]}),
                );
            }
            let mut forge = shared.forge.lock().unwrap();
            if forge.pulls.iter().any(|p| {
                p.repository == repository && p.open && p.head == head_branch && p.head_repository == head_repository
            }) {
                return reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for {head_owner}:{head_branch}.")}]}),
                );
            }
            let number = forge.pulls.iter().filter(|p| p.repository == repository).count() as u64
                + forge.issues.iter().filter(|i| i.repository == repository).count() as u64
                + 1;
            let pull = FakePull {
                repository: repository.clone(),
                number,
                title,
                body: field("body").unwrap_or_default(),
                head_repository,
                head: head_branch,
                base,
                open: true,
                author: token.user.clone(),
                labels: Vec::new(),
                comments: Vec::new(),
            };
            let answer = github_pull(shared, &pull);
            forge.pulls.push(pull);
            reply(StatusCode::CREATED, answer)
        }
        (Method::PATCH, ["pulls", number]) => {
            if !can_pull {
                return forbidden();
            }
            let mut forge = shared.forge.lock().unwrap();
            let Some(pull) =
                forge.pulls.iter_mut().find(|p| p.repository == repository && p.number.to_string() == *number)
            else {
                return not_found();
            };
            if let Some(title) = input["title"].as_str() {
                pull.title = title.to_owned();
            }
            if let Some(body) = input["body"].as_str() {
                pull.body = body.to_owned();
            }
            let answer = github_pull(shared, pull);
            reply(StatusCode::OK, answer)
        }
        (Method::POST, ["issues", number, what]) if *what == "comments" || *what == "labels" => {
            let mut forge = shared.forge.lock().unwrap();
            let is_pull = forge.pulls.iter().any(|p| p.repository == repository && p.number.to_string() == *number);
            if !is_pull {
                if !token.permissions.contains(&Permission::IssuesWrite) {
                    return reply(
                        StatusCode::FORBIDDEN,
                        json!({"message": "Resource not accessible by personal access token"}),
                    );
                }
                if !forge.issue_failures.is_empty() {
                    let status = forge.issue_failures.remove(0);
                    return reply(StatusCode::from_u16(status).unwrap(), json!({"message": "Server Error"}));
                }
                let Some(issue) =
                    forge.issues.iter_mut().find(|i| i.repository == repository && i.number.to_string() == *number)
                else {
                    return not_found();
                };
                if *what == "comments" {
                    let Some(text) = input["body"].as_str() else {
                        return reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": "Validation Failed"}));
                    };
                    issue.comments.push(text.to_owned());
                    return reply(StatusCode::CREATED, json!({"id": issue.comments.len(), "body": text}));
                }
                for label in input["labels"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if !issue.labels.iter().any(|l| l == label) {
                        issue.labels.push(label.to_owned());
                    }
                }
                return reply(
                    StatusCode::OK,
                    json!(issue.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>()),
                );
            }
            if !can_pull {
                return forbidden();
            }
            let Some(pull) =
                forge.pulls.iter_mut().find(|p| p.repository == repository && p.number.to_string() == *number)
            else {
                return not_found();
            };
            if *what == "comments" {
                let Some(text) = input["body"].as_str() else {
                    return reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": "Validation Failed"}));
                };
                pull.comments.push(text.to_owned());
                reply(StatusCode::CREATED, json!({"id": pull.comments.len(), "body": text}))
            } else {
                for label in input["labels"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if !pull.labels.iter().any(|l| l == label) {
                        pull.labels.push(label.to_owned());
                    }
                }
                reply(StatusCode::OK, json!(pull.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>()))
            }
        }
        _ => not_found(),
    }
}

fn gitlab_request(shared: &Shared, p: &FakePull, source_id: u64) -> Value {
    json!({
        "iid": p.number,
        "web_url": format!("{}/{}/-/merge_requests/{}", shared.base_url, p.repository, p.number),
        "state": if p.open { "opened" } else { "closed" },
        "title": p.title,
        "description": p.body,
        "source_branch": p.head,
        "target_branch": p.base,
        "source_project_id": source_id,
        "author": {"username": p.author},
        "labels": p.labels,
    })
}

fn gitlab(shared: &Shared, method: &Method, rest: &str, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let limited = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("ratelimit-reset", "1800000000")
        .body(Body::from("Retry later"))
        .unwrap();
    let token = match api_auth(shared, method, uri.path(), headers, json!({"message": "401 Unauthorized"}), limited) {
        Ok(token) => token,
        Err(refusal) => return refusal,
    };
    let not_found = || reply(StatusCode::NOT_FOUND, json!({"message": "404 Project Not Found"}));
    let forbidden = || reply(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"}));
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if segments == ["user"] && method == Method::GET {
        return reply(StatusCode::OK, json!({"id": 1, "username": token.user, "name": token.user.to_uppercase()}));
    }
    let ["projects", id, tail @ ..] = segments.as_slice() else { return not_found() };
    let key = percent_decode(id);
    let found = {
        let forge = shared.forge.lock().unwrap();
        forge
            .repos
            .iter()
            .find(|(path, repo)| **path == key || repo.id.to_string() == key)
            .map(|(p, r)| (p.clone(), r.clone()))
    };
    let Some((repository, repo)) = found else { return not_found() };
    if !token.permissions.contains(&Permission::ContentsRead) {
        return not_found();
    }
    let can_mr = token.permissions.contains(&Permission::PullRequestsWrite);
    let level = if token.permissions.contains(&Permission::ContentsWrite) { 30 } else { 20 };
    let repo_id_of = |path: &str| shared.forge.lock().unwrap().repos.get(path).map(|r| r.id).unwrap_or(0);
    match (method.clone(), tail) {
        (Method::GET, []) => reply(
            StatusCode::OK,
            json!({
                "id": repo.id, "path_with_namespace": repository, "default_branch": "main",
                "web_url": format!("{}/{repository}", shared.base_url),
                "permissions": {"project_access": {"access_level": level}, "group_access": null},
            }),
        ),
        (Method::GET, ["merge_requests"]) => {
            let source = query_param(uri, "source_branch");
            let state = query_param(uri, "state").unwrap_or_else(|| "all".into());
            let forge = shared.forge.lock().unwrap();
            let list: Vec<Value> = forge
                .pulls
                .iter()
                .filter(|p| p.repository == repository)
                .filter(|p| state == "all" || (state == "opened") == p.open)
                .filter(|p| source.as_ref().is_none_or(|s| *s == p.head))
                .map(|p| {
                    let source_id = forge.repos.get(&p.head_repository).map(|r| r.id).unwrap_or(0);
                    gitlab_request(shared, p, source_id)
                })
                .collect();
            reply(StatusCode::OK, Value::Array(list))
        }
        (Method::POST, ["merge_requests"]) => {
            if !can_mr {
                return forbidden();
            }
            let field = |k: &str| input[k].as_str().map(str::to_owned);
            let missing: Vec<&str> =
                ["source_branch", "target_branch", "title"].into_iter().filter(|k| field(k).is_none()).collect();
            if !missing.is_empty() {
                let error = missing.iter().map(|k| format!("{k} is missing")).collect::<Vec<_>>().join(", ");
                return reply(StatusCode::BAD_REQUEST, json!({"error": error}));
            }
            let (source, target, title) =
                (field("source_branch").unwrap(), field("target_branch").unwrap(), field("title").unwrap());
            // A fork's merge request is created on the fork and names its target.
            let target_repository = match input["target_project_id"].as_u64() {
                Some(target_id) => {
                    let forge = shared.forge.lock().unwrap();
                    match forge.repos.iter().find(|(_, r)| r.id == target_id) {
                        Some((path, _)) => path.clone(),
                        None => return not_found(),
                    }
                }
                None => repository.clone(),
            };
            if !branch_exists(shared, &repository, &source) {
                return reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": [format!("Source branch \"{source}\" does not exist")]}),
                );
            }
            if !branch_exists(shared, &target_repository, &target) {
                return reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": [format!("Target branch \"{target}\" does not exist")]}),
                );
            }
            let mut forge = shared.forge.lock().unwrap();
            if let Some(open) = forge.pulls.iter().find(|p| {
                p.repository == target_repository && p.open && p.head == source && p.head_repository == repository
            }) {
                return reply(
                    StatusCode::CONFLICT,
                    json!({"message": [format!("Another open merge request already exists for this source branch: !{}", open.number)]}),
                );
            }
            let number = forge.pulls.iter().filter(|p| p.repository == target_repository).count() as u64 + 1;
            let pull = FakePull {
                repository: target_repository,
                number,
                title,
                body: field("description").unwrap_or_default(),
                head_repository: repository.clone(),
                head: source,
                base: target,
                open: true,
                author: token.user.clone(),
                labels: Vec::new(),
                comments: Vec::new(),
            };
            let answer = gitlab_request(shared, &pull, repo.id);
            forge.pulls.push(pull);
            reply(StatusCode::CREATED, answer)
        }
        (Method::PUT, ["merge_requests", iid]) => {
            if !can_mr {
                return forbidden();
            }
            let mut forge = shared.forge.lock().unwrap();
            let Some(pull) =
                forge.pulls.iter_mut().find(|p| p.repository == repository && p.number.to_string() == *iid)
            else {
                return reply(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
            };
            if let Some(title) = input["title"].as_str() {
                pull.title = title.to_owned();
            }
            if let Some(description) = input["description"].as_str() {
                pull.body = description.to_owned();
            }
            for label in input["add_labels"].as_str().unwrap_or_default().split(',').filter(|l| !l.is_empty()) {
                if !pull.labels.iter().any(|l| l == label) {
                    pull.labels.push(label.to_owned());
                }
            }
            let pull = pull.clone();
            drop(forge);
            reply(StatusCode::OK, gitlab_request(shared, &pull, repo_id_of(&pull.head_repository)))
        }
        (Method::GET, ["members", "all", user]) => {
            let level = user
                .parse::<u64>()
                .ok()
                .and_then(|u| shared.forge.lock().unwrap().members.get(&(repository.clone(), u)).copied());
            match level {
                Some(level) => {
                    reply(StatusCode::OK, json!({"id": user.parse::<u64>().unwrap_or(0), "access_level": level}))
                }
                None => reply(StatusCode::NOT_FOUND, json!({"message": "404 Not found"})),
            }
        }
        (Method::POST, ["issues", iid, "notes"]) | (Method::PUT, ["issues", iid]) => {
            if !token.permissions.contains(&Permission::IssuesWrite) {
                return forbidden();
            }
            let mut forge = shared.forge.lock().unwrap();
            if !forge.issue_failures.is_empty() {
                let status = forge.issue_failures.remove(0);
                return reply(StatusCode::from_u16(status).unwrap(), json!({"message": "500 Internal Server Error"}));
            }
            let Some(issue) =
                forge.issues.iter_mut().find(|i| i.repository == repository && i.number.to_string() == *iid)
            else {
                return reply(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
            };
            if method == Method::PUT {
                for label in input["add_labels"].as_str().unwrap_or_default().split(',').filter(|l| !l.is_empty()) {
                    if !issue.labels.iter().any(|l| l == label) {
                        issue.labels.push(label.to_owned());
                    }
                }
                return reply(
                    StatusCode::OK,
                    json!({"iid": issue.number, "title": issue.title, "labels": issue.labels}),
                );
            }
            let Some(text) = input["body"].as_str() else {
                return reply(StatusCode::BAD_REQUEST, json!({"error": "body is missing"}));
            };
            issue.comments.push(text.to_owned());
            reply(StatusCode::CREATED, json!({"id": issue.comments.len(), "body": text}))
        }
        (Method::POST, ["merge_requests", iid, "notes"]) => {
            if !can_mr {
                return forbidden();
            }
            let mut forge = shared.forge.lock().unwrap();
            let Some(pull) =
                forge.pulls.iter_mut().find(|p| p.repository == repository && p.number.to_string() == *iid)
            else {
                return reply(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
            };
            let Some(text) = input["body"].as_str() else {
                return reply(StatusCode::BAD_REQUEST, json!({"error": "body is missing"}));
            };
            pull.comments.push(text.to_owned());
            reply(StatusCode::CREATED, json!({"id": pull.comments.len(), "body": text}))
        }
        _ => not_found(),
    }
}
