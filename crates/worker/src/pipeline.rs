//! One job, step by step: fresh checkout → instruction files → agent →
//! document (research, planning) or commit (execution). Each step reports
//! progress; each failure names its layer, cause and fix.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;
use viberglass_domain::protocol::{Bootstrap, WorkerResult};
use viberglass_domain::{Failure, FailureLayer, Phase};

use crate::client::Client;
use crate::events::EventSink;
use crate::git::{Git, clone_failure};
use crate::harness::{AgentEnd, run_agent};

/// Files the agent writes for us that never go into a commit.
const PR_FILES: &[&str] = &["PR_TITLE.md", "PR_DESCRIPTION.md"];

pub struct Context<'a> {
    pub boot: &'a Bootstrap,
    pub workspace: &'a Path,
    pub sink: &'a EventSink,
    pub client: &'a Client,
    pub cancel: &'a CancellationToken,
}

/// How the pipeline ended: a result to report, or a cancellation (the job
/// has already ended on the server; nothing to report).
pub enum End {
    Report(WorkerResult),
    Cancelled,
}

fn failed(failure: Failure) -> End {
    End::Report(WorkerResult::Failed { failure })
}

pub async fn run(cx: Context<'_>) -> End {
    match steps(&cx).await {
        Ok(end) => end,
        Err(failure) => failed(failure),
    }
}

fn io_failure(what: &str, err: std::io::Error) -> Failure {
    Failure::internal(format!("{what}: {err}"))
}

async fn steps(cx: &Context<'_>) -> Result<End, Failure> {
    let spec = &cx.boot.spec;
    cx.sink.progress("preparing the workspace");
    let repo: PathBuf = cx.workspace.join("repo");
    let home = cx.workspace.join("home");
    if repo.exists() {
        std::fs::remove_dir_all(&repo).map_err(|e| io_failure("clearing the old checkout", e))?;
    }
    std::fs::create_dir_all(&home).map_err(|e| io_failure("creating the agent's home", e))?;
    let git = Git::new(cx.workspace, cx.boot.git_credential.clone()).map_err(|e| io_failure("writing askpass", e))?;

    cx.sink.progress(&format!("cloning {} ({})", spec.repository_url, spec.base_branch));
    let clone = git
        .run(
            cx.workspace,
            &["clone", "--depth", "1", "--single-branch", "--branch", &spec.base_branch, &spec.repository_url, "repo"],
        )
        .await
        .map_err(|e| io_failure("running git", e))?;
    if !clone.success {
        let failure =
            clone_failure(&spec.repository_url, &spec.base_branch, &clone.stderr, cx.boot.git_credential.is_some());
        cx.sink.log(viberglass_domain::LogLevel::Error, clone.stderr.trim());
        return Err(failure);
    }

    if spec.phase == Phase::Execution {
        start_branch(cx, &git, &repo).await?;
    }

    cx.sink.progress("writing instruction files");
    let mut excluded: Vec<String> = PR_FILES.iter().map(|s| (*s).to_owned()).collect();
    for file in &spec.instruction_files {
        let path = repo.join(&file.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_failure("writing instruction files", e))?;
        }
        std::fs::write(&path, &file.content).map_err(|e| io_failure("writing instruction files", e))?;
        excluded.push(file.path.clone());
    }
    let exclude_file = repo.join(".git/info/exclude");
    let mut exclude = std::fs::read_to_string(&exclude_file).unwrap_or_default();
    for path in &excluded {
        exclude.push_str(&format!("/{path}\n"));
    }
    std::fs::write(&exclude_file, exclude).map_err(|e| io_failure("excluding instruction files", e))?;

    cx.sink.progress("running the agent");
    let usage = match run_agent(spec, &cx.boot.secrets, &repo, &home, cx.sink, cx.cancel).await? {
        AgentEnd::Cancelled => return Ok(End::Cancelled),
        AgentEnd::Finished(usage) => usage,
    };
    let usage = usage.map(|u| serde_json::to_value(u).unwrap_or_default());

    match spec.phase {
        Phase::Research | Phase::Planning => {
            let name = spec.phase.document_name().expect("research and planning write documents");
            cx.sink.progress(&format!("uploading {name}"));
            let content = std::fs::read_to_string(repo.join(name)).map_err(|_| {
                Failure::new(
                    FailureLayer::Agent,
                    "document_missing",
                    format!("the agent finished without writing {name}: read its log, adjust the prompt or the clanker, then re-run"),
                    true,
                )
            })?;
            let reply = cx.client.document(content).await.map_err(|e| Failure::internal(e.to_string()))?;
            let mut result = serde_json::json!({"document": name, "revision": reply.revision});
            if let Some(usage) = usage {
                result["usage"] = usage;
            }
            Ok(End::Report(WorkerResult::Completed {
                result,
                summary: format!("wrote {name} (revision {})", reply.revision),
            }))
        }
        Phase::Execution => match commit(cx, &git, &repo).await? {
            End::Report(WorkerResult::Completed { mut result, summary }) => {
                if let Some(usage) = usage {
                    result["usage"] = usage;
                }
                Ok(End::Report(WorkerResult::Completed { result, summary }))
            }
            other => Ok(other),
        },
    }
}

/// Puts the checkout on the work branch: the remote's copy when an earlier
/// run pushed one (so a follow-up run adds to it), else a new branch from the base.
async fn start_branch(cx: &Context<'_>, git: &Git, repo: &Path) -> Result<(), Failure> {
    let branch = &cx.boot.spec.branch;
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        git.run(repo, &refs).await.map_err(|e| io_failure("running git", e))
    };
    let exists = run(vec![
        "ls-remote".into(),
        "--exit-code".into(),
        "--heads".into(),
        "origin".into(),
        format!("refs/heads/{branch}"),
    ])
    .await?
    .success;
    let checkout = if exists {
        cx.sink.progress(&format!("continuing branch {branch} from the remote"));
        let fetch = run(vec![
            "fetch".into(),
            "-q".into(),
            "--depth".into(),
            "1".into(),
            "origin".into(),
            format!("+refs/heads/{branch}:refs/remotes/origin/{branch}"),
        ])
        .await?;
        if !fetch.success {
            return Err(Failure::new(
                FailureLayer::Clone,
                "branch_fetch_failed",
                format!("cannot fetch the existing branch {branch}"),
                true,
            )
            .with_detail(fetch.stderr));
        }
        run(vec!["checkout".into(), "-q".into(), "-b".into(), branch.clone(), format!("origin/{branch}")]).await?
    } else {
        run(vec!["checkout".into(), "-q".into(), "-b".into(), branch.clone()]).await?
    };
    if !checkout.success {
        return Err(Failure::new(
            FailureLayer::Commit,
            "branch_failed",
            format!("cannot create the branch {branch}"),
            false,
        )
        .with_detail(checkout.stderr));
    }
    Ok(())
}

async fn commit(cx: &Context<'_>, git: &Git, repo: &Path) -> Result<End, Failure> {
    let spec = &cx.boot.spec;
    cx.sink.progress(&format!("committing to {}", spec.branch));
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        git.run(repo, &refs).await.map_err(|e| io_failure("running git", e))
    };
    // `add -A` takes new files too; instruction files are excluded above.
    let add = run(vec!["add".into(), "-A".into()]).await?;
    if !add.success {
        return Err(Failure::new(FailureLayer::Commit, "add_failed", "git could not stage the changes", true)
            .with_detail(add.stderr));
    }
    let changed = run(vec!["diff".into(), "--cached".into(), "--name-status".into()]).await?;
    let files: Vec<serde_json::Value> = changed
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(status, path)| serde_json::json!({"status": status, "path": path}))
        .collect();
    if files.is_empty() {
        return Err(Failure::new(
            FailureLayer::NoChanges,
            "no_changes",
            "the agent finished without changing any file: read its log; refine the ticket or the plan, then re-run",
            false,
        ));
    }
    let title = std::fs::read_to_string(repo.join("PR_TITLE.md"))
        .ok()
        .and_then(|t| t.lines().next().map(str::trim).map(str::to_owned))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| spec.ticket_title.clone());
    let message = format!("{title}\n\nViberglass-Job: {}\n", cx.boot.job_id);
    let commit = run(vec![
        "-c".into(),
        "user.name=Viberglass".into(),
        "-c".into(),
        "user.email=viberglass@localhost".into(),
        "commit".into(),
        "-q".into(),
        "-m".into(),
        message,
    ])
    .await?;
    if !commit.success {
        return Err(Failure::new(FailureLayer::Commit, "commit_failed", "git could not commit the changes", true)
            .with_detail(commit.stderr));
    }
    let sha = run(vec!["rev-parse".into(), "HEAD".into()]).await?.stdout.trim().to_owned();
    cx.sink.progress(&format!("pushing {}", spec.branch));
    let push = run(vec!["push".into(), "origin".into(), format!("HEAD:refs/heads/{}", spec.branch)]).await?;
    if !push.success {
        cx.sink.log(viberglass_domain::LogLevel::Error, push.stderr.trim());
        return Err(crate::git::push_failure(&spec.repository_url, &spec.branch, &push.stderr));
    }
    Ok(End::Report(WorkerResult::Completed {
        summary: format!(
            "committed {} changed file(s) to {} ({}) and pushed it",
            files.len(),
            spec.branch,
            &sha[..sha.len().min(12)]
        ),
        result: serde_json::json!({"branch": spec.branch, "commit": sha, "changed_files": files, "pushed": true}),
    }))
}
