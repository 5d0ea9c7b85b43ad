//! Invariants the simulation checks after every step, one per file.

pub mod acknowledged;
pub mod capacity;
pub mod committed_entries;
pub mod deployments;
pub mod equal_state;
pub mod events;
pub mod exclusive;
pub mod fencing;
pub mod hydra;
pub mod locks;
pub mod one_leader_per_term;
pub mod queue;
pub mod retention;
pub mod tasks;
pub mod time_bounds;

use super::store::SimStore;
use crate::raft_driver::Role;
use crate::state::State;
use std::collections::BTreeMap;

/// What one running member looks like after a step.
pub struct MemberView<'a> {
    /// Member id.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// Its applied index.
    pub applied: u64,
    /// Its state (a cheap persistent clone).
    pub state: State,
    /// Its raft storage.
    pub store: &'a SimStore,
    /// Its event log.
    pub events: std::sync::Arc<crate::events::EventLog>,
}

/// One member's view of locks for [`locks`]: the applied index it was
/// taken at and, per lock, the greatest holder token and the holders seen.
pub type LockTokens = (
    u64,
    BTreeMap<String, (u64, std::collections::BTreeSet<u64>)>,
);

/// What the invariants remember across steps.
#[derive(Default)]
pub struct History {
    /// The leader seen in each term.
    pub leaders: BTreeMap<u64, u64>,
    /// `(term, data hash)` of every committed index seen.
    pub committed: BTreeMap<u64, (u64, u64)>,
    /// Hash of the state at each applied index.
    pub states: BTreeMap<u64, u64>,
    /// Per lock and fencing token: the acquisition that held it (an
    /// election's term has one leader).
    pub lock_terms: BTreeMap<(String, u64), u64>,
    /// Per member: the applied index last seen and, per lock, the greatest
    /// token a holder had by then.
    pub lock_tokens: BTreeMap<u64, LockTokens>,
    /// Per member: the applied index last hashed and the commit index last checked.
    pub checked: BTreeMap<u64, (u64, u64)>,
    /// What the first member to tell it said of each event `(index, seq)`.
    pub events: BTreeMap<(u64, u32), (u64, String)>,
    /// How many events the first member to tell an entry's said it had.
    pub event_counts: BTreeMap<u64, (u64, u32)>,
    /// Per member: the last event read from its log.
    pub event_cursors: BTreeMap<u64, crate::events::Cursor>,
}

/// Runs every per-step invariant.
pub fn check_all(h: &mut History, views: &[MemberView<'_>]) -> Result<(), String> {
    one_leader_per_term::check(h, views)?;
    committed_entries::check(h, views)?;
    capacity::check(views)?;
    exclusive::check(views)?;
    fencing::check(views)?;
    queue::check(views)?;
    retention::check(views)?;
    tasks::check(views)?;
    deployments::check(views)?;
    time_bounds::check(views)?;
    locks::check(h, views)?;
    equal_state::check(h, views)?;
    events::check(h, views)?;
    Ok(())
}

/// A stable hash of bytes (FNV-1a), the same in every run.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
