//! Raft storage: the log, hard state, conf state and the latest snapshot.
//!
//! [`LogStore`] extends raft-rs's read-only [`raft::Storage`] with the writes
//! the driver makes. Writes may be buffered; nothing is durable until
//! [`LogStore::sync`] returns, and the driver calls it before it sends any
//! message that depends on those writes and before it answers a client.
//!
//! Implementations: [`EngineStore`] on disk (raft-engine, TiKV's store for
//! raft logs; what members use), [`SledStore`] (the log in sled with an
//! explicit fsync, as before; kept to move such a log over and as the
//! reference the store tests hold both to), and [`MemStore`] for tests and
//! simulation.

pub mod audit_log;
mod engine_store;
pub mod history;
mod memory;
mod sled_move;
mod sled_store;
mod snapshot_files;
pub mod v0;

pub use engine_store::EngineStore;
pub use history::History;
pub use memory::MemStore;
pub use sled_store::SledStore;
pub use snapshot_files::SnapshotData;

/// Writes the data of the snapshot at an index durably (from any thread)
/// before the driver records it with [`LogStore::compact_to`]: the data is
/// what [`Encode`] writes, streamed to its file by a store that keeps
/// snapshots on disk (so a large state is never whole in memory).
pub type SnapshotWriter =
    std::sync::Arc<dyn Fn(u64, &mut Encode<'_>) -> StoreResult<Written> + Send + Sync>;

/// Writes a snapshot's data into the writer it is given.
pub type Encode<'a> = dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()> + 'a;

/// What a [`SnapshotWriter`] wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// How many bytes the data holds.
    pub bytes: u64,
    /// The data, for a store that keeps it in memory; empty for one that
    /// keeps it on disk.
    pub data: Vec<u8>,
}

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
    /// Records a snapshot of the state at `index` (already applied), whose
    /// conf state was `cs`, and drops the log up to it. `data` must already
    /// have gone through [`LogStore::snapshot_writer`]. Returns false (and
    /// changes nothing) when `index` is no longer in the log.
    fn compact_to(&mut self, index: u64, cs: &ConfState, data: Vec<u8>) -> StoreResult<bool>;
    /// The conf state as stored (that of the last applied conf change).
    fn conf_state(&self) -> ConfState;
    /// A handle that writes snapshot data durably from another thread.
    fn snapshot_writer(&self) -> SnapshotWriter;
    /// Makes every write so far durable.
    fn sync(&mut self) -> StoreResult<()>;
    /// The newest snapshot, if any, with its data (the state at its index),
    /// which a store may read from disk for the call.
    fn latest_snapshot(&self) -> Option<Snapshot>;
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
