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

/// Fetches `repo` into the bare mirror `mirror` (cloned on first use) and
/// resolves `rev` (a full or abbreviated commit; empty: the head of
/// `branch`) to a full commit that the mirror has.
pub fn resolve(repo: &str, mirror: &Path, rev: &str, branch: &str) -> Result<String, GitError> {
    if mirror.join("HEAD").is_file() {
        run(
            "fetch",
            repo,
            &["fetch", "--quiet", "--prune", "origin"],
            Some(mirror),
        )?;
    } else {
        let m = mirror.display().to_string();
        run(
            "clone",
            repo,
            &["clone", "--quiet", "--mirror", "--", repo, &m],
            None,
        )?;
    }
    let want = if rev.is_empty() {
        format!("refs/heads/{branch}^{{commit}}")
    } else if rev.chars().all(|c| c.is_ascii_hexdigit()) {
        format!("{rev}^{{commit}}")
    } else {
        return Err(GitError {
            what: "rev-parse",
            repo: repo.to_string(),
            message: format!("`{rev}` is not a commit id"),
        });
    };
    let out = run(
        "rev-parse",
        repo,
        &["rev-parse", "--verify", "--quiet", &want],
        Some(mirror),
    )
    .map_err(|mut e| {
        e.message = if rev.is_empty() {
            format!("no branch {branch}")
        } else {
            format!("no commit {rev}")
        };
        e
    })?;
    Ok(out.trim().to_string())
}

/// Whether commit `a` is an ancestor of commit `b` in the mirror (a commit
/// is its own ancestor).
pub fn is_ancestor(mirror: &Path, a: &str, b: &str) -> Result<bool, GitError> {
    let out = git(&["merge-base", "--is-ancestor", a, b], Some(mirror)).map_err(|e| GitError {
        what: "merge-base",
        repo: mirror.display().to_string(),
        message: format!("cannot run git: {e}; install git"),
    })?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(GitError {
            what: "merge-base",
            repo: mirror.display().to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// The head of `branch` read straight from a local repository's files (a
/// loose ref, then `packed-refs`), without running git: what polling
/// hundreds of local apps needs. `None` when `repo` is not a local
/// repository or the ref is not there in those forms.
pub fn local_head(repo: &str, branch: &str) -> Option<String> {
    let root = Path::new(repo);
    if !root.is_absolute() {
        return None;
    }
    let git_dir = if root.join(".git").is_dir() {
        root.join(".git")
    } else {
        root.to_path_buf()
    };
    let name = format!("refs/heads/{branch}");
    if let Ok(s) = std::fs::read_to_string(git_dir.join(&name)) {
        let s = s.trim();
        return (s.len() >= 40 && s.chars().all(|c| c.is_ascii_hexdigit())).then(|| s.to_string());
    }
    let packed = std::fs::read_to_string(git_dir.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, r)| *r == name)
        .map(|(sha, _)| sha.to_string())
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

        assert_eq!(local_head(&path, "main").as_deref(), Some(second.as_str()));
        sh(r, &["pack-refs", "--all"]);
        assert_eq!(local_head(&path, "main").as_deref(), Some(second.as_str()));
        assert_eq!(local_head(&path, "nope"), None);
        let mirror = work.path().join("mirror.git");
        assert_eq!(resolve(&path, &mirror, "", "main").unwrap(), second);
        assert_eq!(
            resolve(&path, &mirror, &first[..10], "main").unwrap(),
            first
        );
        std::fs::write(r.join("v"), "three\n").unwrap();
        sh(r, &["commit", "--quiet", "-am", "three"]);
        let third = sh(r, &["rev-parse", "HEAD"]);
        assert_eq!(
            resolve(&path, &mirror, &third, "main").unwrap(),
            third,
            "fetched again"
        );
        let e = resolve(&path, &mirror, "deadbeef", "main")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no commit deadbeef"), "{e}");

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
