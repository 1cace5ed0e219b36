//! Real git repositories for tests: a bare "remote" with an initial commit.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A bare repository in a temporary directory, with `main` holding the given files.
pub struct TestRepo {
    _dir: tempfile::TempDir,
    pub bare: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl TestRepo {
    pub fn with_files(files: &[(&str, &str)]) -> TestRepo {
        // Not under /tmp: sandboxed workers get a private /tmp and would not see it.
        let dir =
            tempfile::Builder::new().prefix("viberglass-repo-").tempdir_in("/var/tmp").expect("temporary directory");

        let bare = dir.path().join("remote.git");
        let work = dir.path().join("seed");
        std::fs::create_dir_all(&work).unwrap();
        git(dir.path(), &["init", "-q", "--bare", bare.to_str().unwrap()]);
        git(&work, &["init", "-q"]);
        for (path, content) in files {
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "initial"]);
        git(&work, &["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"]);
        TestRepo { _dir: dir, bare }
    }

    /// The clone URL.
    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Runs git against the bare repository (e.g. `["log", "--oneline", "branch"]`).
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.bare, args)
    }
}
