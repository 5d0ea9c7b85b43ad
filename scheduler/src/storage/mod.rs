//! Raft storage: the log, hard state, conf state and the latest snapshot.
//!
//! [`LogStore`] extends raft-rs's read-only [`raft::Storage`] with the writes
//! the driver makes. Writes may be buffered; nothing is durable until
//! [`LogStore::sync`] returns, and the driver calls it before it sends any
//! message that depends on those writes and before it answers a client.
//!
//! Two implementations: [`SledStore`] on disk (sled plus an explicit fsync,
//! since sled's own `flush` is `sync_file_range` on Linux and not an fsync),
//! and [`MemStore`] for tests and simulation.

mod memory;
mod sled_store;

pub use memory::MemStore;
pub use sled_store::SledStore;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

/// Errors of a storage write. Any of them stops the member.
pub type StoreResult<T> = std::result::Result<T, crate::Error>;

/// The raft log and its metadata, writable.
pub trait LogStore: raft::Storage + Send + 'static {
    /// Appends entries, first truncating any existing entries at or after the first new index.
    fn append(&mut self, entries: &[Entry]) -> StoreResult<()>;
    /// Records the hard state (term, vote, commit).
    fn set_hard_state(&mut self, hs: &HardState) -> StoreResult<()>;
    /// Records a new commit index into the hard state.
    fn set_commit(&mut self, commit: u64) -> StoreResult<()>;
    /// Records the conf state after a conf change was applied.
    fn set_conf_state(&mut self, cs: &ConfState) -> StoreResult<()>;
    /// Replaces the log with a snapshot received from the leader.
    fn apply_snapshot(&mut self, snap: &Snapshot) -> StoreResult<()>;
    /// Stores a snapshot of the state at `index` (already applied) and drops the log before it.
    fn compact_to(&mut self, index: u64, data: Vec<u8>) -> StoreResult<()>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> StoreResult<()>;
    /// The newest snapshot, if any (its data is the state at its index).
    fn latest_snapshot(&self) -> Option<&Snapshot>;
    /// The hard state as stored.
    fn hard_state(&self) -> HardState;
    /// Whether raft asked for a snapshot the store could not give (it was
    /// made before the receiving member joined); clears the request. The
    /// driver then makes a fresh one.
    fn take_snapshot_request(&mut self) -> bool;
}

/// Whether a stored snapshot can be sent to member `to`: its conf state must
/// already include `to`, or the receiver would refuse it.
pub(crate) fn snapshot_usable(snap: &Snapshot, request_index: u64, to: u64) -> bool {
    let cs = snap.get_metadata().get_conf_state();
    snap.get_metadata().index >= request_index
        && (cs.voters.contains(&to) || cs.learners.contains(&to))
}

#[cfg(test)]
mod tests;
