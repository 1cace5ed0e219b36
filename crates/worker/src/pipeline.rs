//! One job, step by step: fresh checkout → instruction files → agent →
//! document (research, planning) or commit (execution). Each step reports
//! progress; each failure names its layer, cause and fix.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;
use viberglass_domain::protocol::{Bootstrap, ChangedFile, JobResult, PullRequestRef, WorkerResult};
use viberglass_domain::{Failure, FailureLayer, Phase, ScmProvider};

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
    Report(Box<WorkerResult>),
    Cancelled,
}

/// A failure, with what the run had done before it (a pushed branch).
pub struct Failed {
    failure: Failure,
    result: Option<JobResult>,
}

impl From<Failure> for Failed {
    fn from(failure: Failure) -> Self {
        Failed { failure, result: None }
    }
}

pub async fn run(cx: Context<'_>) -> End {
    match steps(&cx).await {
        Ok(end) => end,
        Err(Failed { failure, result }) => End::Report(Box::new(WorkerResult::Failed { failure, result })),
    }
}

fn io_failure(what: &str, err: std::io::Error) -> Failure {
    Failure::internal(format!("{what}: {err}"))
}

async fn steps(cx: &Context<'_>) -> Result<End, Failed> {
    let spec = &cx.boot.spec;
    cx.sink.progress("preparing the workspace");
    let repo: PathBuf = cx.workspace.join("repo");
    let home = cx.workspace.join("home");
    if repo.exists() {
        std::fs::remove_dir_all(&repo).map_err(|e| io_failure("clearing the old checkout", e))?;
    }
    std::fs::create_dir_all(&home).map_err(|e| io_failure("creating the agent's home", e))?;
    let git = Git::new(cx.workspace, cx.boot.git_credential.clone()).map_err(|e| io_failure("preparing git", e))?;

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
        return Err(failure.into());
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

    git.seal(&repo).map_err(|e| io_failure("reading the checkout's git configuration", e))?;
    // Where the agent starts: whatever it commits itself is folded into the worker's one commit on top of it.
    let base = git
        .run(&repo, &["rev-parse", "--verify", "-q", "HEAD"])
        .await
        .ok()
        .filter(|out| out.success)
        .map(|out| out.stdout.trim().to_owned());
    cx.sink.progress("running the agent");
    let usage = match run_agent(spec, &cx.boot.secrets, &repo, &home, cx.sink, cx.cancel).await? {
        AgentEnd::Cancelled => return Ok(End::Cancelled),
        AgentEnd::Finished(usage) => usage,
    };
    // From here on the checkout is what the agent left: outside input.
    ensure_checkout(&repo)?;
    git.restore(&repo).map_err(|e| {
        Failure::new(
            FailureLayer::Agent,
            "checkout_tampered",
            format!("the agent left the checkout's git directory unusable ({e}): read its log, then re-run"),
            false,
        )
    })?;

    match spec.phase {
        Phase::Research | Phase::Planning => {
            let name = spec.phase.document_name().expect("research and planning write documents");
            cx.sink.progress(&format!("uploading {name}"));
            let content = match read_agent_file(&repo, name, MAX_DOCUMENT) {
                AgentFile::Text(text) => text,
                AgentFile::Missing => {
                    return Err(Failure::new(
                        FailureLayer::Agent,
                        "document_missing",
                        format!("the agent finished without writing {name}: read its log, adjust the prompt or the clanker, then re-run"),
                        true,
                    )
                    .into());
                }
                AgentFile::Refused(why) => {
                    return Err(Failure::new(
                        FailureLayer::Agent,
                        "document_refused",
                        format!("{name} cannot be used: {why}; the agent must write it as a plain text file in the checkout, then re-run"),
                        false,
                    )
                    .into());
                }
            };
            let reply = cx.client.document(content).await.map_err(|e| Failure::internal(e.to_string()))?;
            let result = JobResult {
                document: Some(name.to_owned()),
                revision: Some(reply.revision),
                usage,
                ..JobResult::default()
            };
            Ok(End::Report(Box::new(WorkerResult::Completed {
                result,
                summary: format!("wrote {name} (revision {})", reply.revision),
            })))
        }
        Phase::Execution => match commit(cx, &git, &repo, base.as_deref()).await {
            Ok((mut result, summary)) => {
                result.usage = usage;
                Ok(End::Report(Box::new(WorkerResult::Completed { result, summary })))
            }
            Err(mut failed) => {
                if let Some(result) = &mut failed.result {
                    result.usage = usage;
                }
                Err(failed)
            }
        },
    }
}

/// Puts the checkout on the work branch: the remote's copy when an earlier
/// run pushed one (so a follow-up run adds to it), else a new branch from the base.
async fn start_branch(cx: &Context<'_>, git: &Git, repo: &Path) -> Result<(), Failure> {
    let branch = &cx.boot.spec.branch;
    if *branch == cx.boot.spec.base_branch {
        // Work goes straight to the base branch: the clone is already on it.
        return Ok(());
    }
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

async fn commit(cx: &Context<'_>, git: &Git, repo: &Path, base: Option<&str>) -> Result<(JobResult, String), Failed> {
    let spec = &cx.boot.spec;
    cx.sink.progress(&format!("committing to {}", spec.branch));
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        git.run(repo, &refs).await.map_err(|e| io_failure("running git", e))
    };
    // Commits the agent made itself become changes again, so that the one
    // commit pushed (and the diff recorded) holds everything since the clone.
    if let Some(base) = base {
        let reset = run(vec!["reset".into(), "-q".into(), "--soft".into(), base.to_owned()]).await?;
        if !reset.success {
            return Err(Failure::new(
                FailureLayer::Agent,
                "checkout_tampered",
                "the agent left the checkout where git cannot go back to the commit it started from: read its log, then re-run",
                false,
            )
            .with_detail(reset.stderr)
            .into());
        }
    }
    // `add -A` takes new files too; instruction files are excluded above.
    let add = run(vec!["add".into(), "-A".into()]).await?;
    if !add.success {
        return Err(Failure::new(FailureLayer::Commit, "add_failed", "git could not stage the changes", true)
            .with_detail(add.stderr)
            .into());
    }
    let changed = run(vec!["diff".into(), "--cached".into(), "--name-status".into()]).await?;
    let files: Vec<ChangedFile> = changed
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(status, path)| ChangedFile { status: status.to_owned(), path: path.to_owned() })
        .collect();
    if files.is_empty() {
        return Err(Failure::new(
            FailureLayer::NoChanges,
            "no_changes",
            "the agent finished without changing any file: read its log; refine the ticket or the plan, then re-run",
            false,
        )
        .into());
    }
    let content = PrContent::read(repo, spec, &files);
    let mut message = format!("{}\n\n", content.title);
    if let Some(ticket) = spec.scm.as_ref().and_then(|scm| scm.ticket_id) {
        message.push_str(&format!("Viberglass-Ticket: {ticket}\n"));
    }
    message.push_str(&format!("Viberglass-Job: {}\n", cx.boot.job_id));
    let author = &spec.commit_author;
    let commit = run(vec![
        "-c".into(),
        format!("user.name={}", author.name),
        "-c".into(),
        format!("user.email={}", author.email),
        "commit".into(),
        "-q".into(),
        "-m".into(),
        message,
    ])
    .await?;
    if !commit.success {
        return Err(Failure::new(FailureLayer::Commit, "commit_failed", "git could not commit the changes", true)
            .with_detail(commit.stderr)
            .into());
    }
    let sha = run(vec!["rev-parse".into(), "HEAD".into()]).await?.stdout.trim().to_owned();
    cx.sink.progress(&format!("pushing {}", spec.branch));
    // To the spec's URL, never to whatever `origin` the agent may have pointed elsewhere.
    let push =
        run(vec!["push".into(), spec.repository_url.clone(), format!("HEAD:refs/heads/{}", spec.branch)]).await?;
    if !push.success {
        cx.sink.log(viberglass_domain::LogLevel::Error, push.stderr.trim());
        return Err(crate::git::push_failure(&spec.repository_url, &spec.branch, &push.stderr).into());
    }
    let short = &sha[..sha.len().min(12)];
    let mut summary = format!("committed {} changed file(s) to {} ({short}) and pushed it", files.len(), spec.branch);
    let mut result = JobResult {
        branch: Some(spec.branch.clone()),
        commit: Some(sha.clone()),
        pushed: true,
        changed_files: files,
        ..JobResult::default()
    };
    match spec.scm.as_ref().filter(|scm| scm.provider != ScmProvider::Git) {
        Some(scm) => {
            // The branch is pushed whatever happens to the pull request: a
            // failure here still reports the branch and the commit.
            let published = match open_pull_request(cx, scm, &content, short).await {
                Ok(published) => published,
                Err(failure) => return Err(Failed { failure, result: Some(result) }),
            };
            let noun = scm.provider.pull_request_noun();
            let verb = if published.created { "opened" } else { "updated" };
            summary.push_str(&format!("; {verb} {noun} {}", published.pull_request.url));
            result.pull_request = Some(PullRequestRef {
                number: published.pull_request.number,
                url: published.pull_request.url,
                title: published.pull_request.title,
                head: published.pull_request.head,
                created: published.created,
            });
        }
        None => {
            // A plain git remote: record the change itself in Viberglass.
            let stat = run(vec!["show".into(), "--stat".into(), "--format=".into(), "HEAD".into()]).await?;
            let diff = run(vec!["show".into(), "--format=".into(), "HEAD".into()]).await?;
            result.diff_stat = Some(stat.stdout.trim().to_owned());
            result.diff = Some(bounded(&diff.stdout, MAX_RECORDED_DIFF));
            result.diff_truncated = diff.stdout.len() > MAX_RECORDED_DIFF;
        }
    }
    Ok((result, summary))
}

/// The largest RESEARCH.md or PLAN.md the server takes.
const MAX_DOCUMENT: usize = 500_000;

/// A file the agent wrote for the worker to read back.
enum AgentFile {
    Text(String),
    Missing,
    /// There, but not something to trust: a link, not a file, too large, not text.
    Refused(String),
}

impl AgentFile {
    fn text(self) -> Option<String> {
        match self {
            AgentFile::Text(text) => Some(text),
            _ => None,
        }
    }
}

/// Reads `name` from the checkout's top level as outside input: a regular
/// file (never a symlink out of the checkout), at most `max` bytes, UTF-8.
fn read_agent_file(repo: &Path, name: &str, max: usize) -> AgentFile {
    let path = repo.join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(_) => return AgentFile::Missing,
    };
    if !meta.file_type().is_file() {
        return AgentFile::Refused("it is a link or a directory, not a file".into());
    }
    if meta.len() > max as u64 {
        return AgentFile::Refused(format!("it is {} bytes, more than the {max} allowed", meta.len()));
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(&path).and_then(|file| {
        use std::io::Read;
        file.take(max as u64 + 1).read_to_end(&mut bytes)
    });
    match (read, String::from_utf8(bytes)) {
        (Ok(n), Ok(text)) if n <= max => AgentFile::Text(text),
        (Ok(_), Ok(_)) => AgentFile::Refused(format!("it grew past the {max} bytes allowed while being read")),
        (Err(e), _) => AgentFile::Refused(format!("it cannot be read: {e}")),
        (Ok(_), Err(_)) => AgentFile::Refused("it is not UTF-8 text".into()),
    }
}

/// The checkout must still be a directory of its own (not a link the agent
/// swapped in to point the worker at files outside it).
fn ensure_checkout(repo: &Path) -> Result<(), Failure> {
    match std::fs::symlink_metadata(repo) {
        Ok(meta) if meta.file_type().is_dir() => Ok(()),
        _ => Err(Failure::new(
            FailureLayer::Agent,
            "checkout_tampered",
            "the agent replaced or removed the checkout directory itself: read its log, then re-run",
            false,
        )),
    }
}

/// The most diff a plain-git run records.
const MAX_RECORDED_DIFF: usize = 256 * 1024;
/// GitHub refuses bodies over 65536 characters; stay below.
const MAX_PR_BODY: usize = 60_000;

fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The pull request's title and body: the agent's PR_TITLE.md and
/// PR_DESCRIPTION.md when it wrote them, else made from the ticket and the
/// changed files; the body always links back to the ticket.
struct PrContent {
    title: String,
    body: String,
}

impl PrContent {
    fn read(repo: &Path, spec: &viberglass_domain::JobSpec, files: &[ChangedFile]) -> PrContent {
        let title = read_agent_file(repo, "PR_TITLE.md", 16 * 1024)
            .text()
            .and_then(|t| t.lines().map(|l| l.trim().trim_start_matches('#').trim().to_owned()).find(|l| !l.is_empty()))
            .unwrap_or_else(|| spec.ticket_title.clone());
        let title: String = title.chars().take(200).collect();
        let written = read_agent_file(repo, "PR_DESCRIPTION.md", MAX_PR_BODY * 2)
            .text()
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty());
        let mut body = match written {
            Some(description) => bounded(&description, MAX_PR_BODY),
            None => {
                let mut body = String::new();
                if let Some(scm) = &spec.scm
                    && !scm.ticket_description.trim().is_empty()
                {
                    body.push_str(scm.ticket_description.trim());
                    body.push_str("\n\n");
                }
                body.push_str("### Changed files\n");
                for file in files.iter().take(200) {
                    body.push_str(&format!("- `{}` ({})\n", file.path, file.status));
                }
                // The ticket's text and the file names are unbounded: the forge's limit is not.
                bounded(&body, MAX_PR_BODY)
            }
        };
        if let Some(scm) = &spec.scm {
            let link = match &scm.ticket_url {
                Some(url) => format!("[{}]({url})", spec.ticket_title.replace(['[', ']'], "")),
                None => format!("\"{}\"", spec.ticket_title),
            };
            body.push_str(&format!("\n\n---\nOpened by Viberglass for the ticket {link}."));
        }
        PrContent { title, body }
    }
}

/// Opens the pull request for the pushed branch, or updates the open one.
async fn open_pull_request(
    cx: &Context<'_>,
    scm: &viberglass_domain::ScmSpec,
    content: &PrContent,
    commit: &str,
) -> Result<viberglass_scm::Published, Failure> {
    let spec = &cx.boot.spec;
    let noun = scm.provider.pull_request_noun();
    let Some(token) = cx.boot.git_credential.as_ref().map(|c| c.password.clone()) else {
        return Err(Failure::new(
            FailureLayer::PullRequest,
            "no_scm_credential",
            format!(
                "the branch is pushed, but the project has no SCM credential to open the {noun} with: link one to the project or its integration, then re-run"
            ),
            false,
        ));
    };
    let api_url = scm.api_url.clone().unwrap_or_default();
    let Some(forge) = viberglass_scm::connect(scm.provider, &api_url, &token) else {
        return Err(Failure::internal(format!("no API client for {}", scm.provider)));
    };
    cx.sink.progress(&format!(
        "opening the {noun} on {} ({} into {})",
        scm.pr_repository, spec.branch, scm.pr_base_branch
    ));
    let update_comment = format!("Updated by Viberglass job {} with commit {commit}.", cx.boot.job_id);
    let publication = viberglass_scm::Publication {
        new: viberglass_scm::NewPullRequest {
            repository: &scm.pr_repository,
            head_repository: &scm.repository,
            branch: &spec.branch,
            base: &scm.pr_base_branch,
            title: &content.title,
            body: &content.body,
        },
        labels: &scm.labels,
        update_comment: &update_comment,
    };
    match viberglass_scm::publish(&forge, &publication).await {
        Ok(published) => {
            let verb = if published.created { "opened" } else { "updated the open" };
            cx.sink.progress(&format!("{verb} {noun} {}", published.pull_request.url));
            Ok(published)
        }
        Err(failure) => {
            cx.sink.log(viberglass_domain::LogLevel::Error, &format!("{}: {}", failure.message, failure.detail));
            Err(failure)
        }
    }
}

/// For the fuzz targets in `fuzz/` only, not an API: the read-back of the
/// files an agent leaves in the checkout, run on given bytes.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use viberglass_domain::JobSpec;
    use viberglass_domain::protocol::ChangedFile;

    use super::{MAX_DOCUMENT, MAX_PR_BODY, PrContent, read_agent_file};

    /// What the agent's files read back as.
    pub struct ReadBack {
        pub research: Option<String>,
        pub plan: Option<String>,
        pub title: String,
        pub body: String,
    }

    /// Writes `content` as the agent's RESEARCH.md, PLAN.md, PR_TITLE.md and
    /// PR_DESCRIPTION.md in a directory of this process's own (under the
    /// temporary directory), then reads them back as the pipeline does:
    /// `read_agent_file` for the documents, `PrContent::read` (with `spec`,
    /// and the `status<TAB>path` lines of `content` as the changed files) for
    /// the pull request. Two bits of `layout` (bits 0-1: the title, 2-3: the
    /// description, 4-5: the documents) make a file a regular file (0, 1),
    /// missing (2) or a symlink to a readable file (3); with bits 6-7 set the
    /// content is repeated past MAX_PR_BODY, so the size limits are reached.
    pub fn read_back(layout: u8, content: &[u8], spec: &JobSpec) -> ReadBack {
        let dir = checkout();
        let mut content = content.to_vec();
        if layout >> 6 == 3 && !content.is_empty() {
            let once = content.clone();
            while content.len() <= MAX_PR_BODY + MAX_PR_BODY / 2 {
                content.extend_from_slice(&once);
            }
        }
        let target = dir.join("outside.txt");
        std::fs::write(&target, &content).expect("writing the fuzz input");
        for (name, shift) in [("PR_TITLE.md", 0), ("PR_DESCRIPTION.md", 2), ("RESEARCH.md", 4), ("PLAN.md", 4)] {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            match (layout >> shift) & 3 {
                2 => {}
                3 => std::os::unix::fs::symlink(&target, &path).expect("linking the fuzz input"),
                _ => std::fs::write(&path, &content).expect("writing the fuzz input"),
            }
        }
        let text = String::from_utf8_lossy(&content);
        // As `commit` reads `git diff --cached --name-status`.
        let files: Vec<ChangedFile> = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(status, path)| ChangedFile { status: status.to_owned(), path: path.to_owned() })
            .collect();
        let pr = PrContent::read(dir, spec, &files);
        ReadBack {
            research: read_agent_file(dir, "RESEARCH.md", MAX_DOCUMENT).text(),
            plan: read_agent_file(dir, "PLAN.md", MAX_DOCUMENT).text(),
            title: pr.title,
            body: pr.body,
        }
    }

    /// The per-process directory, created once.
    fn checkout() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("viberglass-fuzz-readback-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("creating the fuzz checkout");
            dir
        })
    }
}
