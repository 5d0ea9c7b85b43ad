//! A raft store for simulation that loses what was not synced: writes go to
//! a live [`MemStore`]; `sync` copies the live store into a durable image;
//! a crash rebuilds the store from that image.

use crate::storage::{LogStore, MemStore, SnapshotWriter, StoreResult};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use std::sync::{Arc, Mutex};

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
}

/// The simulated store: a live image and a durable one.
pub struct SimStore {
    live: MemStore,
    durable: Arc<Mutex<Durable>>,
}

impl SimStore {
    /// A store rebuilt from `durable` (empty at first).
    pub fn recover(durable: Arc<Mutex<Durable>>) -> StoreResult<SimStore> {
        let d = durable.lock().map(|d| d.clone()).unwrap_or_default();
        let mut live = MemStore::new();
        if let Some(s) = &d.snapshot {
            live.apply_snapshot(s)?;
        }
        live.append(&d.entries)?;
        live.set_hard_state(&d.hard_state)?;
        live.set_conf_state(&d.conf_state)?;
        Ok(SimStore { live, durable })
    }
}

impl Storage for SimStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.live.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.live.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.live.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.live.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.live.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.live.snapshot(request_index, to)
    }
}

impl LogStore for SimStore {
    fn append(&mut self, entries: &[Entry]) -> StoreResult<()> {
        self.live.append(entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> StoreResult<()> {
        self.live.set_hard_state(hs)
    }
    fn set_commit(&mut self, commit: u64) -> StoreResult<()> {
        self.live.set_commit(commit)
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> StoreResult<()> {
        self.live.set_conf_state(cs)
    }
    fn apply_snapshot(&mut self, snap: &Snapshot) -> StoreResult<()> {
        self.live.apply_snapshot(snap)
    }
    fn compact_to(&mut self, index: u64, cs: &ConfState, data: Vec<u8>) -> StoreResult<bool> {
        self.live.compact_to(index, cs, data)
    }
    fn sync(&mut self) -> StoreResult<()> {
        let first = self.live.first_index().unwrap_or(1);
        let last = self.live.last_index().unwrap_or(0);
        let entries = if last >= first {
            self.live
                .entries(first, last + 1, None, GetEntriesContext::empty(false))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let image = Durable {
            snapshot: self.live.latest_snapshot(),
            entries,
            hard_state: self.live.hard_state(),
            conf_state: self.live.conf_state(),
        };
        if let Ok(mut d) = self.durable.lock() {
            *d = image;
        }
        Ok(())
    }
    fn latest_snapshot(&self) -> Option<Snapshot> {
        self.live.latest_snapshot()
    }
    fn hard_state(&self) -> HardState {
        self.live.hard_state()
    }
    fn take_snapshot_request(&mut self) -> bool {
        self.live.take_snapshot_request()
    }
    fn conf_state(&self) -> ConfState {
        self.live.conf_state()
    }
    fn snapshot_writer(&self) -> SnapshotWriter {
        self.live.snapshot_writer()
    }
}
