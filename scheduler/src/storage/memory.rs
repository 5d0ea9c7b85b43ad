//! [`LogStore`] in memory, on raft-rs's `MemStorage`. For unit tests and the
//! simulation; `sync` is a no-op.

use super::{LogStore, SnapshotWriter, StoreResult};
use crate::Error;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState};
use std::sync::atomic::{AtomicBool, Ordering};

/// Raft storage held in memory.
#[derive(Default)]
pub struct MemStore {
    inner: MemStorage,
    snapshot: Option<Snapshot>,
    snapshot_wanted: AtomicBool,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }
}

fn err(e: raft::Error) -> Error {
    Error::Storage(format!("memory store: {e}"))
}

impl raft::Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot {
            Some(s) if super::snapshot_usable(s, request_index, to) => Ok(s.clone()),
            _ => {
                self.snapshot_wanted.store(true, Ordering::SeqCst);
                Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

impl LogStore for MemStore {
    fn append(&mut self, entries: &[Entry]) -> StoreResult<()> {
        self.inner.wl().append(entries).map_err(err)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> StoreResult<()> {
        self.inner.wl().set_hardstate(hs.clone());
        Ok(())
    }
    fn set_commit(&mut self, commit: u64) -> StoreResult<()> {
        self.inner.wl().mut_hard_state().commit = commit;
        Ok(())
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> StoreResult<()> {
        self.inner.wl().set_conf_state(cs.clone());
        Ok(())
    }
    fn apply_snapshot(&mut self, snap: &Snapshot) -> StoreResult<()> {
        self.inner.wl().apply_snapshot(snap.clone()).map_err(err)?;
        self.snapshot = Some(snap.clone());
        Ok(())
    }
    fn compact_to(&mut self, index: u64, cs: &ConfState, data: Vec<u8>) -> StoreResult<bool> {
        let first = raft::Storage::first_index(&self.inner).map_err(err)?;
        let last = raft::Storage::last_index(&self.inner).map_err(err)?;
        if index < first || index > last {
            return Ok(false);
        }
        let term = raft::Storage::term(&self.inner, index).map_err(err)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let m = snap.mut_metadata();
        m.index = index;
        m.term = term;
        m.set_conf_state(cs.clone());
        self.snapshot = Some(snap);
        self.inner.wl().compact(index + 1).map_err(err)?;
        Ok(true)
    }
    fn conf_state(&self) -> ConfState {
        raft::Storage::initial_state(&self.inner)
            .map(|s| s.conf_state)
            .unwrap_or_default()
    }
    fn sync(&mut self) -> StoreResult<()> {
        Ok(())
    }
    fn latest_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
    fn hard_state(&self) -> HardState {
        self.inner.rl().hard_state().clone()
    }
    fn snapshot_writer(&self) -> SnapshotWriter {
        std::sync::Arc::new(|_, _| Ok(()))
    }
    fn take_snapshot_request(&mut self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::SeqCst)
    }
}
