//! Git, through the `git` program: the head of a branch (what polling
//! compares, one `git ls-remote` per app and interval) and a checkout of one
//! commit for a build. Prompts are off, so a repository that wants
//! credentials fails instead of waiting.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A git command that failed, with what git said.
#[derive(Debug, thiserror::Error)]
#[error("git {what} failed for {repo}: {message}")]
pub struct GitError {
    /// What was attempted (`ls-remote`, `clone`, `checkout`).
    pub what: &'static str,
    /// The repository.
    pub repo: String,
    /// git's own words, or why it did not run.
    pub message: String,
}

fn git(args: &[&str], cwd: Option<&Path>) -> std::io::Result<Output> {
    let mut c = Command::new("git");
    c.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(Stdio::null());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output()
}

fn run(
    what: &'static str,
    repo: &str,
    args: &[&str],
    cwd: Option<&Path>,
) -> Result<String, GitError> {
    let err = |message: String| GitError {
        what,
        repo: repo.to_string(),
        message,
    };
    let out = git(args, cwd).map_err(|e| err(format!("cannot run git: {e}; install git")))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(err(if text.is_empty() {
            format!("exit {}", out.status)
        } else {
            text
        }));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `branch` points at in `repo` (a URL or a local path).
pub fn head(repo: &str, branch: &str) -> Result<String, GitError> {
    let want = format!("refs/heads/{branch}");
    let out = run("ls-remote", repo, &["ls-remote", "--", repo, &want], None)?;
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, r)| *r == want)
        .map(|(sha, _)| sha.to_string())
        .ok_or_else(|| GitError {
            what: "ls-remote",
            repo: repo.to_string(),
            message: format!("no branch {branch}"),
        })
}

/// Checks out `commit` of `repo` into the new directory `dir`.
pub fn checkout(repo: &str, commit: &str, dir: &Path) -> Result<(), GitError> {
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(GitError {
            what: "checkout",
            repo: repo.to_string(),
            message: format!("`{commit}` is not a commit id"),
        });
    }
    let d = dir.display().to_string();
    run(
        "clone",
        repo,
        &["clone", "--quiet", "--no-checkout", "--", repo, &d],
        None,
    )?;
    run(
        "checkout",
        repo,
        &["checkout", "--quiet", "--detach", commit],
        Some(dir),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn head_follows_the_branch_and_checkout_gets_that_commit() {
        let repo = tempfile::tempdir().unwrap();
        let r = repo.path();
        sh(r, &["init", "--quiet", "--initial-branch", "main"]);
        std::fs::write(r.join("v"), "one\n").unwrap();
        sh(r, &["add", "v"]);
        sh(r, &["commit", "--quiet", "-m", "one"]);
        let first = sh(r, &["rev-parse", "HEAD"]);
        let path = r.display().to_string();
        assert_eq!(head(&path, "main").unwrap(), first);
        std::fs::write(r.join("v"), "two\n").unwrap();
        sh(r, &["commit", "--quiet", "-am", "two"]);
        let second = sh(r, &["rev-parse", "HEAD"]);
        assert_eq!(head(&path, "main").unwrap(), second);

        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("co");
        checkout(&path, &first, &dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("v")).unwrap(), "one\n");

        let e = head(&path, "nope").unwrap_err().to_string();
        assert!(e.contains("no branch nope"), "{e}");
        let e = head("/no/such/repo", "main").unwrap_err().to_string();
        assert!(e.contains("git ls-remote failed for /no/such/repo"), "{e}");
        let e = checkout(&path, "not-a-sha", &work.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a commit id"), "{e}");
    }
}
