//! Task output: each stream goes to `DATA/logs/task-ID/{stdout,stderr}.log`,
//! outside the sandbox so it outlives the lease. A file that reaches
//! [`LIMIT`] is moved to `.1` (replacing the older one) and started afresh,
//! so a task's logs never take more than twice the limit per stream.

use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The size at which a log file is rotated.
pub const LIMIT: u64 = 8 << 20;

/// The log directory of a task.
pub fn task_dir(agent: &Path, task: u64) -> PathBuf {
    agent.join("logs").join(format!("task-{task}"))
}

/// Copies `from` into `dir/NAME.log`, rotating at `limit` bytes, until EOF.
pub async fn capture(
    mut from: impl AsyncRead + Unpin,
    dir: PathBuf,
    name: &'static str,
    limit: u64,
) -> std::io::Result<()> {
    let path = dir.join(format!("{name}.log"));
    let mut buf = vec![0u8; 16 << 10];
    // The file is made on the first output: a quiet task costs no files.
    let n = from.read(&mut buf).await?;
    if n == 0 {
        return Ok(());
    }
    tokio::fs::create_dir_all(&dir).await?;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await?;
    let mut size = file.metadata().await?.len();
    let mut n = n;
    loop {
        if n == 0 {
            file.flush().await?;
            return Ok(());
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if size >= limit {
                file.flush().await?;
                tokio::fs::rename(&path, dir.join(format!("{name}.log.1"))).await?;
                file = tokio::fs::File::create(&path).await?;
                size = 0;
            }
            let room = usize::try_from(limit - size).unwrap_or(usize::MAX).max(1);
            let (now, later) = rest.split_at(rest.len().min(room));
            file.write_all(now).await?;
            size += now.len() as u64;
            rest = later;
        }
        n = from.read(&mut buf).await?;
    }
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

    #[tokio::test]
    async fn rotates_at_the_limit_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..250u32)
            .flat_map(|i| format!("{i:03}\n").into_bytes())
            .collect();
        capture(&data[..], dir.path().to_path_buf(), "stdout", 400)
            .await
            .unwrap();
        let cur = std::fs::metadata(dir.path().join("stdout.log"))
            .unwrap()
            .len();
        let old = std::fs::metadata(dir.path().join("stdout.log.1"))
            .unwrap()
            .len();
        assert!(cur <= 400 && old <= 400, "{cur} {old}");
        let all = String::from_utf8(read_all(dir.path(), "stdout").0).unwrap();
        assert!(all.ends_with("249\n"), "the newest output is kept");
        assert!(!all.contains("000\n"), "the oldest is dropped");
        // Following: only what was added, and a rotated file from its start.
        let (_, at) = read_all(dir.path(), "stdout");
        assert_eq!(read_since(dir.path(), "stdout", at), (Vec::new(), at));
        capture(&b"251\n"[..], dir.path().to_path_buf(), "stdout", 400)
            .await
            .unwrap();
        assert_eq!(read_since(dir.path(), "stdout", at).0, b"251\n");
        std::fs::write(dir.path().join("stdout.log"), b"new\n").unwrap();
        assert_eq!(read_since(dir.path(), "stdout", at), (b"new\n".to_vec(), 4));
    }
}
