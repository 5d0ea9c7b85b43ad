//! Moving a raft log kept in sled (what members wrote before raft-engine)
//! into an [`EngineStore`](super::EngineStore) directory, once, at open.

use super::LogStore as _;
use super::SledStore;
use super::StoreResult;
use super::engine_store::{CONF_STATE, Entries, GROUP, HARD_STATE, SNAPSHOT, open_engine, st};
use raft::GetEntriesContext;
use raft_engine::LogBatch;
use std::path::Path;

/// Entries moved per batch.
const MOVE_CHUNK: u64 = 1024;

/// Moves a log kept in sled (`dir/db`) to a new engine at `engine_dir`:
/// built in `engine.tmp`, synced, then renamed, so a crash midway leaves
/// the sled log as it was and the move starts again.
pub(super) fn move_from_sled(dir: &Path, engine_dir: &Path) -> StoreResult<()> {
    let old = SledStore::open(dir)?;
    let tmp = dir.join("engine.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| st(&tmp, "cannot remove a half-made log", e))?;
    }
    {
        let engine = open_engine(&tmp)?;
        let (first, last) = (
            raft::Storage::first_index(&old),
            raft::Storage::last_index(&old),
        );
        let (first, last) = (
            first.map_err(|e| st(dir, "cannot read the log", e))?,
            last.map_err(|e| st(dir, "cannot read the log", e))?,
        );
        let mut low = first;
        while low <= last {
            let high = (low + MOVE_CHUNK).min(last + 1);
            let es = raft::Storage::entries(&old, low, high, None, GetEntriesContext::empty(false))
                .map_err(|e| st(dir, "cannot read the log", e))?;
            let mut batch = LogBatch::default();
            batch
                .add_entries::<Entries>(GROUP, &es)
                .map_err(|e| st(&tmp, "cannot write the log", e))?;
            engine
                .write(&mut batch, false)
                .map_err(|e| st(&tmp, "cannot write the log", e))?;
            low = high;
        }
        let mut batch = LogBatch::default();
        let meta = |b: &mut LogBatch, key: &[u8], m: &dyn protobuf::Message| -> StoreResult<()> {
            let bytes = m
                .write_to_bytes()
                .map_err(|e| st(&tmp, "cannot encode raft metadata", e))?;
            b.put(GROUP, key.to_vec(), bytes)
                .map_err(|e| st(&tmp, "cannot write raft metadata", e))
        };
        meta(&mut batch, HARD_STATE, &old.hard_state())?;
        meta(&mut batch, CONF_STATE, &old.conf_state())?;
        if let Some(mut snap) = old.latest_snapshot() {
            snap.set_data(Default::default());
            meta(&mut batch, SNAPSHOT, &snap)?;
        }
        engine
            .write(&mut batch, true)
            .map_err(|e| st(&tmp, "cannot write the log", e))?;
    }
    drop(old);
    std::fs::rename(&tmp, engine_dir)
        .map_err(|e| st(dir, "cannot move the new log into place", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| st(dir, "cannot fsync the raft directory", e))?;
    tracing::info!(dir = %dir.display(), "moved the raft log from sled to raft-engine");
    Ok(())
}

/// Removes what sled kept in `dir` (its log and metadata, now in the engine).
pub(super) fn remove_sled_files(dir: &Path) -> StoreResult<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| st(dir, "cannot list the raft directory", e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let r = match name.as_str() {
            "db" | "conf" => std::fs::remove_file(&path),
            "blobs" => std::fs::remove_dir_all(&path),
            n if n.starts_with("snap.") => std::fs::remove_file(&path),
            _ => Ok(()),
        };
        r.map_err(|e| st(&path, "cannot remove the old sled log", e))?;
    }
    Ok(())
}
