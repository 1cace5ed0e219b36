//! The providers against the fake forge: the same behaviour on GitHub and
//! GitLab, through real HTTP and real git branches.

use viberglass_domain::{FailureLayer, ScmProvider};
use viberglass_scm::{ErrorKind, NewPullRequest, Provider, Publication, check_access, connect, publish};
use viberglass_testkit::fake_forge::{ALL, FakeForge, Permission};

const TOKEN: &str = "tok-full-0123456789";

/// A forge with `acme/app`, a full-access token and a pushed branch `feature`.
async fn forge_with_branch() -> FakeForge {
    let forge = FakeForge::start().await;
    forge.add_repo("acme/app", &[("README.md", "hello\n")]);
    forge.add_token(TOKEN, "octo", ALL);
    push_branch(&forge, "acme/app", "feature", "change\n");
    forge
}

/// Pushes a commit on `branch` through the forge's git endpoint with the full token.
fn push_branch(forge: &FakeForge, repo: &str, branch: &str, content: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = forge.clone_url(repo).replace("http://", &format!("http://x:{TOKEN}@"));
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["clone", "-q", &url, "w"]);
    let work = dir.path().join("w");
    std::fs::write(work.join("change.txt"), content).unwrap();
    let git_in = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).current_dir(&work).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git_in(&["add", "-A"]);
    git_in(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "change"]);
    git_in(&["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")]);
}

fn api(forge: &FakeForge, kind: ScmProvider) -> String {
    kind.api_url(&forge.base_url()).unwrap()
}

fn publication<'a>(title: &'a str, labels: &'a [String]) -> Publication<'a> {
    Publication {
        new: NewPullRequest {
            repository: "acme/app",
            head_repository: "acme/app",
            branch: "feature",
            base: "main",
            title,
            body: "The body",
        },
        labels,
        update_comment: "Updated by a follow-up run.",
    }
}

async fn opens_then_reuses(kind: ScmProvider) {
    let forge = forge_with_branch().await;
    let provider = connect(kind, &api(&forge, kind), TOKEN).unwrap();
    let labels = vec!["viberglass".to_owned()];
    let first = publish(&provider, &publication("First title", &labels)).await.unwrap();
    assert!(first.created);
    assert_eq!(first.pull_request.number, 1);
    let second = publish(&provider, &publication("Second title", &labels)).await.unwrap();
    assert!(!second.created, "the open pull request with the same head is reused");
    assert_eq!(second.pull_request.url, first.pull_request.url);
    let pulls = forge.pulls("acme/app");
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0].title, "Second title");
    assert_eq!(pulls[0].comments, ["Updated by a follow-up run."]);
    assert_eq!(pulls[0].labels, ["viberglass"]);
    assert_eq!(pulls[0].author, "octo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_opens_then_reuses_the_pull_request() {
    opens_then_reuses(ScmProvider::GitHub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_opens_then_reuses_the_merge_request() {
    opens_then_reuses(ScmProvider::GitLab).await;
}

async fn refusals(kind: ScmProvider) {
    let forge = forge_with_branch().await;
    forge.add_token("tok-no-pr", "reader", &[Permission::ContentsRead, Permission::ContentsWrite]);
    let no_pr = connect(kind, &api(&forge, kind), "tok-no-pr").unwrap();
    let failure = publish(&no_pr, &publication("t", &[])).await.unwrap_err();
    assert_eq!((failure.layer, failure.code.as_str()), (FailureLayer::PullRequest, "pull_request_not_permitted"));
    assert!(failure.message.contains("pull-request write permission"), "{}", failure.message);

    let bad = connect(kind, &api(&forge, kind), "tok-unknown").unwrap();
    let failure = publish(&bad, &publication("t", &[])).await.unwrap_err();
    assert_eq!(failure.code, "scm_token_invalid", "{failure:?}");

    let full = connect(kind, &api(&forge, kind), TOKEN).unwrap();
    let mut missing = publication("t", &[]);
    missing.new.repository = "acme/nope";
    missing.new.head_repository = "acme/nope";
    let failure = publish(&full, &missing).await.unwrap_err();
    assert_eq!(failure.code, "pull_request_repository_not_found", "{failure:?}");

    forge.set_rate_limited(true);
    let failure = publish(&full, &publication("t", &[])).await.unwrap_err();
    assert_eq!(failure.code, "scm_rate_limited", "{failure:?}");
    assert!(failure.retryable && failure.message.contains("resets at"), "{}", failure.message);
    forge.set_rate_limited(false);

    let mut base = publication("t", &[]);
    base.new.base = "no-such-base";
    let failure = publish(&full, &base).await.unwrap_err();
    assert_eq!(failure.code, "pull_request_base_invalid", "{failure:?}");
    assert!(forge.pulls("acme/app").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_refusals_are_classified() {
    refusals(ScmProvider::GitHub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_refusals_are_classified() {
    refusals(ScmProvider::GitLab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_told_apart() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let provider = connect(ScmProvider::GitHub, &format!("http://127.0.0.1:{port}/api/v3"), TOKEN).unwrap();
    let failure = publish(&provider, &publication("t", &[])).await.unwrap_err();
    assert_eq!(failure.code, "scm_unreachable");
    assert!(failure.retryable);
    let err = provider.whoami().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unreachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_fork_flow_opens_the_pull_request_upstream() {
    let forge = forge_with_branch().await;
    forge.add_repo("fork/app", &[("README.md", "hello\n")]);
    push_branch(&forge, "fork/app", "feature", "from the fork\n");
    let provider = connect(ScmProvider::GitHub, &api(&forge, ScmProvider::GitHub), TOKEN).unwrap();
    let mut fork = publication("From a fork", &[]);
    fork.new.head_repository = "fork/app";
    let published = publish(&provider, &fork).await.unwrap();
    assert!(published.created);
    let pulls = forge.pulls("acme/app");
    assert_eq!((pulls[0].head_repository.as_str(), pulls[0].head.as_str()), ("fork/app", "feature"));
}

async fn test_connection(kind: ScmProvider) {
    let forge = forge_with_branch().await;
    forge.add_token("tok-read", "reader", &[Permission::ContentsRead]);
    let api_url = api(&forge, kind);
    let full = check_access(&connect(kind, &api_url, TOKEN).unwrap(), &api_url, Some("acme/app")).await;
    assert!(full.ok, "{full:?}");
    assert_eq!(full.identity.as_ref().unwrap().login, "octo");
    assert_eq!((full.can_read, full.can_push, full.can_open_pull_requests), (Some(true), Some(true), Some(true)));

    let read = check_access(&connect(kind, &api_url, "tok-read").unwrap(), &api_url, Some("acme/app")).await;
    assert!(!read.ok);
    assert_eq!((read.can_push, read.can_open_pull_requests), (Some(false), Some(false)));
    assert_eq!(read.problems.len(), 2, "{:?}", read.problems);

    let missing = check_access(&connect(kind, &api_url, TOKEN).unwrap(), &api_url, Some("acme/nope")).await;
    assert_eq!(missing.can_read, Some(false));
    assert!(missing.problems[0].contains("not found"), "{:?}", missing.problems);

    let refused = check_access(&connect(kind, &api_url, "tok-bogus").unwrap(), &api_url, None).await;
    assert!(refused.identity.is_none() && refused.problems[0].contains("invalid, expired or revoked"));
    assert!(forge.pulls("acme/app").is_empty(), "Test connection must not open anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_test_connection_reports_identity_and_permissions() {
    test_connection(ScmProvider::GitHub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_test_connection_reports_identity_and_permissions() {
    test_connection(ScmProvider::GitLab).await;
}
