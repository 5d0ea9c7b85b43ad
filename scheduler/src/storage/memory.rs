//! [`LogStore`] in memory, for unit tests and the simulation; `sync` is a
//! no-op. Layout mirrors the sled store: a snapshot, then the entries after
//! it, so `first_index = snapshot index + 1` always holds.

use super::{LogStore, SnapshotWriter, StoreResult};
use crate::Error;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::sync::atomic::{AtomicBool, Ordering};

/// Raft storage held in memory.
#[derive(Default)]
pub struct MemStore {
    /// Entries after the snapshot, in index order.
    entries: Vec<Entry>,
    /// The latest snapshot; index 0 means none.
    snapshot: Snapshot,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_wanted: AtomicBool,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn first(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot.get_metadata().index + self.entries.len() as u64
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl raft::Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(unavailable());
        }
        let off = self.first();
        let mut out = self.entries[(low - off) as usize..(high - off) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let m = self.snapshot.get_metadata();
        if idx == m.index {
            return Ok(m.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(unavailable());
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index > 0
            && super::snapshot_usable(&self.snapshot, request_index, to)
        {
            return Ok(self.snapshot.clone());
        }
        self.snapshot_wanted.store(true, Ordering::SeqCst);
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

impl LogStore for MemStore {
    fn append(&mut self, entries: &[Entry]) -> StoreResult<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first() || first_new > self.last() + 1 {
            return Err(Error::Storage(format!(
                "memory store: append at {first_new} outside [{}, {}]",
                self.first(),
                self.last() + 1
            )));
        }
        self.entries.truncate((first_new - self.first()) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }
    fn set_hard_state(&mut self, hs: &HardState) -> StoreResult<()> {
        self.hard_state = hs.clone();
        Ok(())
    }
    fn set_commit(&mut self, commit: u64) -> StoreResult<()> {
        self.hard_state.commit = commit;
        Ok(())
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> StoreResult<()> {
        self.conf_state = cs.clone();
        Ok(())
    }
    fn apply_snapshot(&mut self, snap: &Snapshot) -> StoreResult<()> {
        let m = snap.get_metadata();
        self.entries.clear();
        self.hard_state.term = self.hard_state.term.max(m.term);
        self.hard_state.commit = self.hard_state.commit.max(m.index);
        self.conf_state = m.get_conf_state().clone();
        self.snapshot = snap.clone();
        Ok(())
    }
    fn compact_to(&mut self, index: u64, cs: &ConfState, data: Vec<u8>) -> StoreResult<bool> {
        if index < self.first() || index > self.last() {
            return Ok(false);
        }
        let term = raft::Storage::term(self, index)
            .map_err(|e| Error::Storage(format!("memory store: {e}")))?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let m = snap.mut_metadata();
        m.index = index;
        m.term = term;
        m.set_conf_state(cs.clone());
        let keep_from = (index + 1 - self.first()) as usize;
        self.entries.drain(..keep_from);
        self.snapshot = snap;
        Ok(true)
    }
    fn sync(&mut self) -> StoreResult<()> {
        Ok(())
    }
    fn latest_snapshot(&self) -> Option<Snapshot> {
        (self.snapshot.get_metadata().index > 0).then(|| self.snapshot.clone())
    }
    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }
    fn conf_state(&self) -> ConfState {
        self.conf_state.clone()
    }
    fn snapshot_writer(&self) -> SnapshotWriter {
        std::sync::Arc::new(|index, encode| {
            let mut data = Vec::new();
            encode(&mut data).map_err(|e| {
                Error::Storage(format!("memory store: cannot encode snapshot {index}: {e}"))
            })?;
            Ok(super::Written {
                bytes: data.len() as u64,
                data,
            })
        })
    }
    fn take_snapshot_request(&mut self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::SeqCst)
    }
}
