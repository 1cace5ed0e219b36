//! A git server over smart HTTP (`git http-backend` behind a small axum
//! server), with optional Basic authentication, so tests clone and push for
//! real and see credentials accepted or refused as a forge would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use tokio::io::AsyncWriteExt;

struct Inner {
    root: PathBuf,
    /// `user:password` that requests must present, when set.
    credential: Option<String>,
}

/// A running git HTTP server. Stops when dropped.
pub struct GitHttpServer {
    pub address: SocketAddr,
    _dir: tempfile::TempDir,
    root: PathBuf,
    stop: tokio_util::sync::CancellationToken,
}

impl GitHttpServer {
    /// Serves bare repositories under a fresh directory; with `credential`
    /// (`(user, password)`), every request must authenticate with it.
    pub async fn start(credential: Option<(&str, &str)>) -> GitHttpServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().to_owned();
        let inner = Arc::new(Inner { root: root.clone(), credential: credential.map(|(u, p)| format!("{u}:{p}")) });
        let app = axum::Router::new().fallback(handle).with_state(inner);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        GitHttpServer { address, _dir: dir, root, stop }
    }

    /// Adds a bare repository `name.git` whose `main` holds `files`, and returns its clone URL.
    pub fn add_repo(&self, name: &str, files: &[(&str, &str)]) -> String {
        let seed = crate::git::TestRepo::with_files(files);
        let target = self.root.join(format!("{name}.git"));
        copy_dir(&seed.bare, &target);
        self.url(name)
    }

    /// The clone URL of `name.git` (which may not exist).
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.address)
    }

    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.git"))
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn status(code: StatusCode, text: &str) -> Response {
    Response::builder().status(code).body(Body::from(text.to_owned())).expect("a plain response")
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(expected) = &inner.credential {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        if presented.as_deref() != Some(expected.as_str()) {
            let mut response = status(StatusCode::UNAUTHORIZED, "authentication required");
            response.headers_mut().insert("www-authenticate", "Basic realm=\"git\"".parse().unwrap());
            return response;
        }
    }
    git_backend(&inner.root, &method, &uri, &headers, body, &[]).await
}

/// Runs `git http-backend` (CGI) for one request against the bare
/// repositories under `root`, with extra environment (e.g. the pushing user).
pub(crate) async fn git_backend(
    root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    env: &[(&str, &str)],
) -> Response {
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .envs(env.iter().copied());
    if let Some(value) = headers.get("content-type").and_then(|v| v.to_str().ok()) {
        command.env("CONTENT_TYPE", value);
    }
    if let Some(value) = headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
        command.env("HTTP_CONTENT_ENCODING", value);
    }
    if let Some(value) = headers.get("git-protocol").and_then(|v| v.to_str().ok()) {
        command.env("GIT_PROTOCOL", value);
    }
    let Ok(mut child) = command.spawn() else {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "git http-backend did not start");
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let Ok(output) = child.wait_with_output().await else {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "git http-backend failed");
    };
    // CGI output: headers, a blank line, the body.
    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else { return status(StatusCode::BAD_GATEWAY, "no CGI headers") };
    let mut response = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&raw[..end]).lines() {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("status") {
                let code = value.trim().split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
                response = response.status(code);
            } else {
                response = response.header(name.trim(), value.trim());
            }
        }
    }
    response
        .body(Body::from(raw[end + sep..].to_vec()))
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY, "bad CGI output"))
}

/// One repository served over smart HTTP without authentication: what most
/// end-to-end tests clone from and push to. (A `file://` remote is read-only
/// inside the workers' sandbox, as a real host path would be.)
pub struct ServedRepo {
    server: GitHttpServer,
}

impl ServedRepo {
    pub async fn with_files(files: &[(&str, &str)]) -> ServedRepo {
        let server = GitHttpServer::start(None).await;
        server.add_repo("repo", files);
        ServedRepo { server }
    }

    pub fn url(&self) -> String {
        self.server.url("repo")
    }

    /// Runs git against the served bare repository (e.g. `["log", "--oneline", "branch"]`).
    pub fn git(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .args(args)
            .current_dir(self.server.repo_path("repo"))
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
