//! Artifacts between sandboxes and the servers' stores: a build's artifact
//! is stored on every member that answers (so a new leader has it too), and
//! a server's artifact is fetched from whichever member has it and checked
//! against its sha256 before it is used.

use charter_proto as pb;
use charter_proto::conn::Servers;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Bytes per chunk on the wire.
const CHUNK: usize = 1 << 20;

/// Stores the file at `file` as a version of `app` on every member that
/// answers. Returns its sha256 and on how many members it is stored.
pub async fn upload(servers: &Servers, app: &str, file: &Path) -> Result<(String, usize), String> {
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|e| format!("cannot read the artifact {}: {e}", file.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let mut stored = 0;
    let mut last = String::from("no member answered");
    for (addr, ch) in servers.each() {
        let chunks: Vec<pb::ArtifactChunk> = bytes
            .chunks(CHUNK)
            .map(|c| pb::ArtifactChunk {
                app: app.to_string(),
                sha256: sha.clone(),
                data: c.to_vec(),
            })
            .collect();
        let chunks = if chunks.is_empty() {
            vec![pb::ArtifactChunk {
                app: app.to_string(),
                sha256: sha.clone(),
                data: Vec::new(),
            }]
        } else {
            chunks
        };
        let req = servers.req(tokio_stream::iter(chunks));
        match pb::deploy_client::DeployClient::new(ch)
            .put_artifact(req)
            .await
        {
            Ok(_) => stored += 1,
            Err(s) => last = format!("{addr}: {}", s.message()),
        }
    }
    if stored == 0 {
        return Err(format!("cannot store the artifact on any member ({last})"));
    }
    Ok((sha, stored))
}

/// Fetches the artifact `sha` into `dest` (executable), from the first
/// member that has it with the right bytes.
pub async fn fetch(servers: &Servers, sha: &str, dest: &Path) -> Result<(), String> {
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
        let mut bytes = Vec::new();
        let mut broke = None;
        while let Some(c) = stream.next().await {
            match c {
                Ok(c) => bytes.extend_from_slice(&c.data),
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
        let got = hex::encode(Sha256::digest(&bytes));
        if got != sha {
            last = format!("{addr} sent bytes with sha256 {got}");
            continue;
        }
        write_exec(&tmp, &bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, dest).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        return Ok(());
    }
    Err(format!("cannot fetch artifact {sha} ({last})"))
}

fn write_exec(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o755)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
