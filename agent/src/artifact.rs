//! Artifacts between sandboxes and the servers' stores: a build's artifact
//! is stored on every member that answers (so a new leader has it too), and
//! a server's artifact is fetched from whichever member has it and checked
//! against its sha256 before it is used.

use crate::sandbox;
use crate::users::Identity;
use charter_proto as pb;
use charter_proto::conn::Servers;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Bytes per chunk on the wire.
const CHUNK: usize = 1 << 20;

/// Stores the file at `file` (in a sandbox: opened only as
/// [`sandbox::open_own`] allows, for `user`) as the artifact of build task
/// `task` of `app` on every member that answers, read from disk a chunk at
/// a time (an artifact is never held whole in memory). Returns its sha256
/// and on how many members it is stored.
pub async fn upload(
    servers: &Servers,
    (app, task): (&str, u64),
    file: &Path,
    user: Option<Identity>,
) -> Result<(String, usize), String> {
    let sha = file_sha256(file, user)
        .await
        .map_err(|e| format!("cannot read the artifact {}: {e}", file.display()))?;
    let mut stored = 0;
    let mut last = String::from("no member answered");
    for (addr, ch) in servers.each() {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let reader = tokio::spawn(send_chunks(
            file.to_path_buf(),
            user,
            (app.to_string(), task),
            sha.clone(),
            tx,
        ));
        let req = servers.req(tokio_stream::wrappers::ReceiverStream::new(rx));
        let sent = pb::deploy_client::DeployClient::new(ch)
            .put_artifact(req)
            .await;
        let read = reader.await.map_err(|e| e.to_string()).and_then(|r| r);
        match (sent, read) {
            (_, Err(e)) => {
                return Err(format!("cannot read the artifact {}: {e}", file.display()));
            }
            (Ok(_), Ok(())) => stored += 1,
            (Err(s), Ok(())) => last = format!("{addr}: {}", s.message()),
        }
    }
    if stored == 0 {
        return Err(format!("cannot store the artifact on any member ({last})"));
    }
    Ok((sha, stored))
}

/// The sha256 of a file, read a chunk at a time.
async fn file_sha256(file: &Path, user: Option<Identity>) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::from_std(sandbox::open_own(file, user)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Reads `file` into chunks for one upload; at least one chunk, so an
/// empty artifact still names its app and sha256. Stops quietly when the
/// upload ended early (the receiver is gone).
async fn send_chunks(
    file: std::path::PathBuf,
    user: Option<Identity>,
    (app, task): (String, u64),
    sha256: String,
    tx: tokio::sync::mpsc::Sender<pb::ArtifactChunk>,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut f =
        tokio::fs::File::from_std(sandbox::open_own(&file, user).map_err(|e| e.to_string())?);
    let mut first = true;
    loop {
        let mut data = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            let n = f
                .read(&mut data[filled..])
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        data.truncate(filled);
        if filled == 0 && !first {
            return Ok(());
        }
        first = false;
        let chunk = pb::ArtifactChunk {
            app: app.clone(),
            sha256: sha256.clone(),
            data,
            task_id: task,
        };
        if tx.send(chunk).await.is_err() || filled < CHUNK {
            return Ok(());
        }
    }
}

/// Fetches the artifact `sha` into `dest` (executable), from the first
/// member that has it with the right bytes, written to disk as it arrives.
/// `dest` is in a sandbox whose user may have put anything there: the
/// bytes go to a fresh file (never through a link) that is renamed over
/// `dest` and then handed to `user`.
pub async fn fetch(
    servers: &Servers,
    sha: &str,
    dest: &Path,
    user: Option<Identity>,
) -> Result<(), String> {
    use tokio_stream::StreamExt;
    let tmp = dest.with_extension("charter-part");
    let mut last = String::from("no member answered");
    for (addr, ch) in servers.each() {
        let req = servers.req(pb::GetArtifactRequest {
            sha256: sha.to_string(),
        });
        let mut stream = match pb::deploy_client::DeployClient::new(ch)
            .get_artifact(req)
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => {
                last = format!("{addr}: {}", s.message());
                continue;
            }
        };
        let mut out =
            create_exec(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut broke = None;
        while let Some(c) = stream.next().await {
            match c {
                Ok(c) => {
                    hasher.update(&c.data);
                    std::io::Write::write_all(&mut out, &c.data)
                        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
                }
                Err(s) => {
                    broke = Some(s.message().to_string());
                    break;
                }
            }
        }
        if let Some(b) = broke {
            last = format!("{addr}: {b}");
            continue;
        }
        let got = hex::encode(hasher.finalize());
        if got != sha {
            last = format!("{addr} sent bytes with sha256 {got}");
            continue;
        }
        out.sync_all()
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        drop(out);
        std::fs::rename(&tmp, dest).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        sandbox::give(dest, user)
            .map_err(|e| format!("cannot hand over {}: {e}", dest.display()))?;
        return Ok(());
    }
    let _ = std::fs::remove_file(&tmp);
    Err(format!("cannot fetch artifact {sha} ({last})"))
}

/// A fresh executable file at `path`: whatever was there (a link the
/// sandbox's user made, say) is removed, and the new file is created
/// exclusively without following links.
fn create_exec(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o755)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn chunks_of(len: usize) -> (Vec<usize>, Vec<u8>, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        let sha = file_sha256(&file, None).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let reader = tokio::spawn(send_chunks(file, None, ("app".into(), 7), sha.clone(), tx));
        let (mut sizes, mut joined) = (Vec::new(), Vec::new());
        while let Some(c) = rx.recv().await {
            assert_eq!((c.app.as_str(), c.sha256.as_str()), ("app", sha.as_str()));
            sizes.push(c.data.len());
            joined.extend_from_slice(&c.data);
        }
        reader.await.unwrap().unwrap();
        assert_eq!(joined, bytes);
        (sizes, joined, sha)
    }

    #[tokio::test]
    async fn an_artifact_goes_out_in_chunks_read_from_disk_and_hashes_as_a_whole() {
        assert_eq!(
            chunks_of(0).await.0,
            vec![0],
            "an empty one still names itself"
        );
        assert_eq!(chunks_of(CHUNK).await.0, vec![CHUNK]);
        assert_eq!(chunks_of(2 * CHUNK + 5).await.0, vec![CHUNK, CHUNK, 5]);
        let (_, bytes, sha) = chunks_of(CHUNK + 1).await;
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
    }
}
