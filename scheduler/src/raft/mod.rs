//! The raft-rs driver: one thread per member owns the `RawNode`, its storage
//! and the state machine, and runs raft-rs's documented Ready order:
//!
//! 1. send `messages()` (leader appends may go out before its own write);
//! 2. install a received snapshot (storage, then state machine);
//! 3. note `read_states()` (ReadIndex results);
//! 4. apply `committed_entries()`;
//! 5. append `entries()`, store the hard state, then **fsync**;
//! 6. only then send `persisted_messages()` (votes, append responses);
//! 7. `advance`, record the new commit index, send and apply what the
//!    `LightReady` holds, `advance_apply`.
//!
//! Proposals that arrive while the thread is busy are batched into one entry
//! (one append, one fsync); at low load each entry holds one proposal. Each
//! entry's `context` names the proposer (member id, a per-process nonce, a
//! sequence number) so only the member that proposed it answers the clients.
//!
//! Reads are linearizable through ReadIndex: a read waits until the leader has
//! confirmed its leadership for an index and this member has applied that
//! index. Followers serve reads the same way (raft-rs forwards the ReadIndex).
//!
//! A fresh cluster bootstraps from an identical snapshot at index 1 on every
//! initial member (voters = the `--peers`); a joining member starts empty and
//! so always receives a snapshot from the leader. The log is compacted into a
//! snapshot of the state every `snapshot_entries` applied entries, or every
//! `snapshot_log_bytes` (4 MiB) of them, whichever comes first; once the
//! last snapshot is larger than 4 MiB, after that many bytes of log instead
//! (the log since a snapshot is never much larger than the snapshot).
//!
//! Invariants: nothing is answered before it is applied, nothing is applied
//! before it is committed, and no vote or append response leaves before it is
//! fsynced. A storage failure ends the thread with a fatal error.
//!
//! Storage is a [`crate::storage::LogStore`]: raft-engine on disk (one
//! write and one fdatasync per Ready), memory in tests and simulation.
//! Snapshots are encoded on a thread of their own and stream to a lagging
//! member in chunks.
//!
//! Limitations: the state machine is applied on the driver thread, so a
//! slow apply slows raft.

mod driver;

pub use driver::{Driver, Input, MemberConfig};

use crate::clock::Clock;
use crate::state::{Outcome, Proposal, State};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::oneshot;

/// A member's role as raft sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Campaigning.
    Candidate,
    /// Pre-vote campaigning.
    PreCandidate,
    /// Leads.
    Leader,
}

impl Role {
    /// snake_case name for output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre_candidate",
            Role::Leader => "leader",
        }
    }
}

/// What a member knows of the cluster right now.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// This member.
    pub id: u64,
    /// The leader, if one is known.
    pub leader_id: Option<u64>,
    /// The current term.
    pub term: u64,
    /// This member's role.
    pub role: Role,
    /// Highest committed index known here.
    pub commit: u64,
    /// Highest applied index here.
    pub applied: u64,
    /// Index of the newest snapshot in storage.
    pub snapshot_index: u64,
    /// Size of the newest snapshot this member made, in bytes (0: none yet).
    pub snapshot_bytes: u64,
    /// Members and addresses, from the replicated state.
    pub members: BTreeMap<u64, String>,
    /// Set when the driver stopped on a fatal error.
    pub fatal: Option<String>,
}

/// A cheap, cloneable handle to a running member.
#[derive(Clone)]
pub struct MemberHandle {
    id: u64,
    tx: std::sync::mpsc::Sender<Input>,
    state: Arc<RwLock<State>>,
    status: Arc<Mutex<Status>>,
    applied: Arc<tokio::sync::watch::Sender<u64>>,
    clock: Arc<dyn Clock>,
    history: Option<Arc<crate::storage::History>>,
    events: Arc<crate::events::EventLog>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl MemberHandle {
    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The member's clock (the leader's stamps proposals with it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The member's history store: what left its live state.
    pub fn history(&self) -> Option<&Arc<crate::storage::History>> {
        self.history.as_ref()
    }

    /// The member's recent events ([`crate::events`]).
    pub fn events(&self) -> &Arc<crate::events::EventLog> {
        &self.events
    }

    /// The member's metrics ([`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// A copy of the member's status.
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The applied index, changing whenever this member applies entries:
    /// `changed().await` to wait for the state to move instead of polling.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The address of the leader this member knows, if any.
    pub fn leader_addr(&self) -> Option<String> {
        let s = self.status.lock().ok()?;
        s.leader_id.and_then(|l| s.members.get(&l).cloned())
    }

    /// Whether this member is the leader now.
    pub fn is_leader(&self) -> bool {
        // Without copying the status (members and all): the tick loop asks
        // after every applied batch.
        self.status
            .lock()
            .map(|s| s.role == Role::Leader)
            .unwrap_or(false)
    }

    /// Runs `f` over the applied state. Not linearizable on its own: call
    /// [`MemberHandle::read_barrier`] first.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        match self.state.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    fn send(&self, i: Input) -> Result<()> {
        self.tx.send(i).map_err(|_| Error::Stopped)
    }

    /// Hands any input to the driver (used by simulation).
    pub fn send_input(&self, i: Input) -> Result<()> {
        self.send(i)
    }

    /// Hands a raft message from a peer to the driver.
    pub fn step(&self, m: ::raft::eraftpb::Message) -> Result<()> {
        self.send(Input::Raft(m))
    }

    /// Proposes on this member, which must be the leader; resolves once applied.
    pub async fn propose(&self, proposal: Proposal) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Propose { proposal, reply })?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Proposes every one of `proposals` before waiting for any, so that
    /// they can share one log entry; outcomes in the same order.
    pub async fn propose_all(&self, proposals: Vec<Proposal>) -> Vec<Result<Outcome>> {
        let mut waits = Vec::with_capacity(proposals.len());
        for proposal in proposals {
            let (reply, rx) = oneshot::channel();
            waits.push(self.send(Input::Propose { proposal, reply }).map(|()| rx));
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(match w {
                Ok(rx) => rx.await.map_err(|_| Error::Stopped).and_then(|r| r),
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Resolves when every write committed before the call is applied here.
    pub async fn read_barrier(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Read { reply })?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Adds (`Some(addr)`) or removes (`None`) a voter; resolves when applied.
    pub async fn change_member(
        &self,
        id: u64,
        addr: Option<String>,
    ) -> Result<BTreeMap<u64, String>> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::ConfChange { id, addr, reply })?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Asks the driver to stop after its current step.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Input::Shutdown);
    }
}

#[cfg(test)]
mod tests;
