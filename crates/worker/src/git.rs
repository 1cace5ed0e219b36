//! Git through the `git` CLI. Credentials reach git only through an askpass
//! helper reading environment variables of the git process: never in the
//! remote URL, `.git/config`, the command line or the logs.
//!
//! The checkout is the agent's to shape, so git never trusts it: the askpass
//! helper exists only while a git command runs (written fresh, in a
//! directory of its own, removed after), system and global configuration are
//! off, hooks and fsmonitor are disabled on every command, and after the
//! agent the repository's own `.git/config` is put back as the clone left it
//! (see [`Git::seal`] and [`Git::restore`]).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use viberglass_domain::protocol::GitCredential;
use viberglass_domain::{Failure, FailureLayer};

/// Runs git in `dir` with credentials (if any) offered through askpass.
pub struct Git {
    /// Where a fresh askpass helper is written for each command.
    helpers: PathBuf,
    credential: Option<GitCredential>,
    /// `.git/config` as the clone wrote it, before the agent ran.
    sealed: std::sync::Mutex<Option<(PathBuf, Vec<u8>)>>,
}

const ASKPASS: &str = "#!/bin/sh\ncase \"$1\" in\n  Username*) printf '%s\\n' \"$VIBERGLASS_GIT_USERNAME\" ;;\n  *) printf '%s\\n' \"$VIBERGLASS_GIT_PASSWORD\" ;;\nesac\n";

/// Settings every git command gets, whatever the checkout says: no hooks, no
/// fsmonitor command, no credential helpers, no askpass but ours.
const HARDENED: &[&str] = &[
    "-c",
    "credential.helper=",
    "-c",
    "core.askPass=",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=",
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "protocol.file.allow=user",
];

pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Git {
    /// Git with askpass helpers written under `helpers` (outside the checkout), one per command.
    pub fn new(helpers: &Path, credential: Option<GitCredential>) -> std::io::Result<Self> {
        std::fs::create_dir_all(helpers)?;
        Ok(Self { helpers: helpers.to_owned(), credential, sealed: std::sync::Mutex::new(None) })
    }

    pub async fn run(&self, dir: &Path, args: &[&str]) -> std::io::Result<Output> {
        // A helper of its own for this command only, in a fresh 0700
        // directory: nothing the agent left (or replaced) is ever executed.
        let helper_dir = self.helpers.join(format!(".askpass-{:016x}", rand::random::<u64>()));
        std::fs::DirBuilder::new().mode(0o700).create(&helper_dir)?;
        let askpass = helper_dir.join("askpass");
        std::fs::write(&askpass, ASKPASS)?;
        std::fs::set_permissions(&askpass, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut command = tokio::process::Command::new("git");
        command
            .args(HARDENED)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", &askpass)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            // `refs/replace` (packed or not) the agent wrote must not change what git shows or pushes.
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            // A fresh, empty home: no attributes or ignore files the agent planted in its own.
            .env("HOME", &helper_dir)
            .env("XDG_CONFIG_HOME", &helper_dir)
            .env_remove("GIT_CONFIG_PARAMETERS")
            .env_remove("VIBERGLASS_JOB_TOKEN");
        // In a checkout, name its git directory outright: git never goes looking
        // (a repository the agent built around or above it is never used).
        if dir.join(".git").exists() {
            command
                .env("GIT_DIR", dir.join(".git"))
                .env("GIT_WORK_TREE", dir)
                .env("GIT_CEILING_DIRECTORIES", dir.parent().unwrap_or(dir));
        } else {
            command.env_remove("GIT_DIR").env_remove("GIT_WORK_TREE");
        }
        // The credential only where git talks to the remote.
        let remote = matches!(args.first(), Some(&("clone" | "ls-remote" | "fetch" | "push")));
        if let Some(credential) = self.credential.as_ref().filter(|_| remote) {
            command
                .env("VIBERGLASS_GIT_USERNAME", &credential.username)
                .env("VIBERGLASS_GIT_PASSWORD", &credential.password);
        }
        let output = command.output().await;
        let _ = std::fs::remove_dir_all(&helper_dir);
        let output = output?;
        Ok(Output {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: self.redact(&String::from_utf8_lossy(&output.stderr)),
        })
    }

    /// Remembers the repository's configuration as the clone wrote it,
    /// before the agent runs.
    pub fn seal(&self, repo: &Path) -> std::io::Result<()> {
        let path = repo.join(".git").join("config");
        let config = std::fs::read(&path)?;
        *self.sealed.lock().unwrap_or_else(|e| e.into_inner()) = Some((path, config));
        Ok(())
    }

    /// After the agent: puts the configuration back as the clone left it
    /// (an agent's `url.*.insteadOf`, `core.fsmonitor`, filters or aliases
    /// are gone) and removes what could run code or redirect objects.
    pub fn restore(&self, repo: &Path) -> std::io::Result<()> {
        let git_dir = repo.join(".git");
        let meta = std::fs::symlink_metadata(&git_dir)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other("the checkout's .git is no longer a directory"));
        }
        if let Some((path, config)) = self.sealed.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = std::fs::remove_file(path);
            std::fs::write(path, config)?;
        }
        for planted in
            ["hooks", "objects/info/alternates", "info/attributes", "info/grafts", "commondir", "refs/replace"]
        {
            let path = git_dir.join(planted);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)?,
                Ok(_) => std::fs::remove_file(&path)?,
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Removes the credential's secret from text git printed.
    pub fn redact(&self, text: &str) -> String {
        match &self.credential {
            Some(c) if !c.password.is_empty() => text.replace(&c.password, "***"),
            _ => text.to_owned(),
        }
    }
}

/// Turns a failed clone into a failure that tells "no such repository"
/// apart from "no access", with the fix for each.
pub fn clone_failure(url: &str, branch: &str, stderr: &str, had_credential: bool) -> Failure {
    let lower = stderr.to_lowercase();
    let auth = [
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "the requested url returned error: 401",
        "the requested url returned error: 403",
        "permission denied",
        "invalid username or password",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let missing = [
        "repository not found",
        "does not appear to be a git repository",
        "does not exist",
        "the requested url returned error: 404",
        "not found",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let failure = if lower.contains("remote branch") && lower.contains("not found") {
        Failure::new(
            FailureLayer::Clone,
            "base_branch_not_found",
            format!(
                "the repository has no branch `{branch}`: set the project's base branch to an existing branch, then re-run"
            ),
            false,
        )
    } else if auth {
        let why = if had_credential {
            "the project's SCM credential was refused: it may be expired, revoked or scoped too narrowly (for an organisation's repository the token needs access to that repository, not only public ones)"
        } else {
            "the repository needs credentials and the project has none: link an SCM credential to the project"
        };
        Failure::new(
            FailureLayer::Clone,
            "clone_authentication_failed",
            format!("cloning {url} failed: {why}; fix it in the project's SCM settings, then re-run"),
            false,
        )
    } else if missing {
        Failure::new(
            FailureLayer::Clone,
            "repository_not_found",
            format!(
                "cloning {url} failed: the repository does not exist at that address; check the project's repository URL, then re-run"
            ),
            false,
        )
    } else {
        Failure::new(
            FailureLayer::Clone,
            "clone_failed",
            format!("cloning {url} failed; the detail has git's own words. Network trouble clears on a re-run"),
            true,
        )
    };
    failure.with_detail(stderr.trim())
}

/// Turns a refused push into a failure that says why and what to change.
pub fn push_failure(url: &str, branch: &str, stderr: &str) -> Failure {
    let lower = stderr.to_lowercase();
    let failure = if lower.contains("protected branch")
        || lower.contains("pre-receive hook declined")
        || lower.contains("protected")
    {
        Failure::new(
            FailureLayer::Push,
            "push_protected_branch",
            format!(
                "the remote refused the push to {branch}: the branch is protected. Change the project's branch-name template so work goes to an unprotected branch, then re-run"
            ),
            false,
        )
    } else if lower.contains("non-fast-forward") || lower.contains("fetch first") || lower.contains("[rejected]") {
        Failure::new(
            FailureLayer::Push,
            "push_rejected",
            format!(
                "the remote refused the push to {branch}: it has commits this run did not start from (someone pushed meanwhile). Re-run to build on them"
            ),
            true,
        )
    } else if [
        "authentication failed",
        "could not read username",
        "returned error: 401",
        "returned error: 403",
        "permission denied",
        "terminal prompts disabled",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
        Failure::new(
            FailureLayer::Push,
            "push_not_permitted",
            format!(
                "pushing to {url} was refused: the project's SCM credential cannot write to the repository (it may be read-only, expired or scoped too narrowly); give it write access, then re-run"
            ),
            false,
        )
    } else {
        Failure::new(
            FailureLayer::Push,
            "push_failed",
            format!(
                "pushing {branch} to {url} failed; the detail has git's own words. Network trouble clears on a re-run"
            ),
            true,
        )
    };
    failure.with_detail(stderr.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_refusals_are_told_apart() {
        let rejected =
            push_failure("u", "b", " ! [rejected]        HEAD -> b (fetch first)\nerror: failed to push some refs");
        assert_eq!(rejected.code, "push_rejected");
        let protected =
            push_failure("u", "main", "remote: error: GH006: Protected branch update failed for refs/heads/main.");
        assert_eq!(protected.code, "push_protected_branch");
        let denied = push_failure("u", "b", "fatal: Authentication failed for 'http://x/a.git/'");
        assert_eq!(denied.code, "push_not_permitted");
        assert_eq!(denied.layer, FailureLayer::Push);
    }

    #[test]
    fn a_missing_repository_and_a_refused_credential_read_differently() {
        let missing = clone_failure("u", "main", "fatal: repository 'http://x/a.git/' not found", true);
        let refused = clone_failure("u", "main", "fatal: Authentication failed for 'http://x/a.git/'", true);
        assert_eq!(missing.code, "repository_not_found");
        assert_eq!(refused.code, "clone_authentication_failed");
        assert!(refused.message.contains("expired"), "{}", refused.message);
        let branch = clone_failure(
            "u",
            "dev",
            "warning: Could not find remote branch dev to clone.\nfatal: Remote branch dev not found in upstream origin",
            false,
        );
        assert_eq!(branch.code, "base_branch_not_found");
    }
}
