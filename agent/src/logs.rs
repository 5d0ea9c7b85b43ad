//! Task output: each stream goes to `DATA/logs/task-ID/{stdout,stderr}.log`,
//! outside the sandbox so it outlives the lease and its user cannot reach
//! it (the directory is 0700, the agent's). The task's processes write the
//! files directly, through descriptors the agent opens for them, so a
//! crashed or restarted agent never breaks their output (a pipe to a dead
//! agent would kill them with SIGPIPE).
//!
//! Rotation without a pipe in between: while the task runs, the agent
//! looks at each file every second; one that reached [`LIMIT`] is copied to
//! `.1` (replacing the older one) and truncated, and since the task appends
//! (`O_APPEND`), it goes on writing at the new end. A stream thus never
//! takes much more than twice the limit; output written between the copy
//! and the truncation (a few ms) is lost.

use std::path::{Path, PathBuf};

/// The size at which a log file is rotated.
pub const LIMIT: u64 = 8 << 20;

/// The log directory of a task.
pub fn task_dir(agent: &Path, task: u64) -> PathBuf {
    agent.join("logs").join(format!("task-{task}"))
}

/// Opens `dir/NAME.log` for a task's process to append to (0600, in a
/// 0700 directory of the agent's).
pub fn open(dir: &Path, name: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join(format!("{name}.log")))
}

/// Rotates `dir/NAME.log` when it reached `limit` bytes: copied to `.1`,
/// then truncated in place (the writer appends, so it carries on at 0).
pub fn trim(dir: &Path, name: &str, limit: u64) -> std::io::Result<bool> {
    let path = dir.join(format!("{name}.log"));
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len < limit {
        return Ok(false);
    }
    let old = dir.join(format!("{name}.log.1"));
    let part = dir.join(format!("{name}.log.1.part"));
    std::fs::copy(&path, &part)?;
    std::fs::rename(&part, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(0)?;
    Ok(true)
}

/// What a stream holds now: the rotated part, then the current file; and
/// the current file's length (where [`read_since`] goes on from).
pub fn read_all(dir: &Path, name: &str) -> (Vec<u8>, u64) {
    let mut out = std::fs::read(dir.join(format!("{name}.log.1"))).unwrap_or_default();
    let cur = std::fs::read(dir.join(format!("{name}.log"))).unwrap_or_default();
    let len = cur.len() as u64;
    out.extend(cur);
    (out, len)
}

/// What the current file gained past `offset`, and the new offset. A file
/// shorter than `offset` was rotated: it is read from its start.
pub fn read_since(dir: &Path, name: &str, offset: u64) -> (Vec<u8>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(dir.join(format!("{name}.log"))) else {
        return (Vec::new(), offset);
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = if len < offset { 0 } else { offset };
    let mut out = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut out).is_err() {
        return (Vec::new(), offset);
    }
    let next = from + out.len() as u64;
    (out, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotates_at_the_limit_and_the_writer_goes_on_at_the_new_end() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("task-1");
        let mut w = open(&d, "stdout").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("stdout.log")), 0o600);
        for i in 0..100u32 {
            writeln!(w, "{i:03}").unwrap();
        }
        assert!(!trim(&d, "stdout", 1000).unwrap(), "400 bytes: not yet");
        assert!(trim(&d, "stdout", 400).unwrap());
        assert_eq!(std::fs::metadata(d.join("stdout.log")).unwrap().len(), 0);
        writeln!(w, "new").unwrap();
        let (all, at) = read_all(&d, "stdout");
        let all = String::from_utf8(all).unwrap();
        assert!(
            all.starts_with("000\n") && all.ends_with("099\nnew\n"),
            "{all}"
        );
        assert_eq!(at, 4, "the writer appends at the truncated end, no hole");
        // Following: only what was added, and a rotated file from its start.
        assert_eq!(read_since(&d, "stdout", at), (Vec::new(), at));
        writeln!(w, "251").unwrap();
        assert_eq!(read_since(&d, "stdout", at).0, b"251\n");
        std::fs::write(d.join("stdout.log"), b"x\n").unwrap();
        assert_eq!(read_since(&d, "stdout", at), (b"x\n".to_vec(), 2));
        assert!(!trim(&d, "stderr", 1).unwrap(), "no file, nothing to do");
    }
}
