//! The replicated state machine. Every member applies the same committed
//! [`Proposal`]s in the same order and so holds the same [`State`].
//!
//! Invariants, at every applied index:
//! - a node's allocated resources are the sum of its granted leases' resources,
//!   and never exceed its capacity;
//! - fencing tokens strictly increase with every grant;
//! - a proposal whose idempotency key was already applied changes nothing and
//!   returns the first outcome.
//!
//! `apply` is deterministic: no clock, no randomness, no IO. Time comes in the
//! proposal (`at`, stamped by the leader) and state time is `max(previous, at)`.
//!
//! The large collections are persistent maps (`imbl`): cloning the state for
//! a snapshot is O(1) and shares structure, so the raft thread never stalls
//! copying it.
//!
//! Limitations: placement runs inside `apply` (so it is trivially consistent);
//! with very large fleets the leader should place with an overlay of its
//! in-flight grants and `apply` only re-check. Ended leases and idempotency
//! keys are kept forever.

mod leases;
mod nodes;
mod types;

pub use types::*;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Milliseconds since the Unix epoch, UTC. All state time is in this unit.
pub type Millis = i64;

/// One replicated change. Each variant is a request a client (or a controller) made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Adds a node, or updates its offer when the name exists.
    RegisterNode {
        /// The node's unique name.
        name: String,
        /// What it offers.
        capacity: Resources,
        /// Its labels, e.g. `gpu=a100`.
        labels: BTreeMap<String, String>,
        /// The pool it belongs to.
        pool: String,
        /// Its price per hour.
        cost_per_hour: f64,
    },
    /// Asks for a lease; placed at apply time.
    RequestLease(LeaseSpec),
    /// Ends a granted lease early.
    ReleaseLease {
        /// The lease id.
        id: u64,
    },
    /// Ends leases whose `expires_at` has passed (proposed by the leader's expiry controller).
    ExpireLeases {
        /// The lease ids.
        ids: Vec<u64>,
    },
}

/// A command with the context it was proposed in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// When the leader accepted it (ms since the epoch).
    pub at: Millis,
    /// Who asked.
    pub principal: String,
    /// Whether the principal is an admin.
    pub admin: bool,
    /// The client's idempotency key; the same key applied twice is a no-op.
    pub key: Option<String>,
    /// What to do.
    pub cmd: Command,
}

/// The result of applying one proposal.
pub type Outcome = Result<Applied, Refusal>;

/// What an applied proposal produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "applied", rename_all = "snake_case")]
pub enum Applied {
    /// A node record after the change.
    Node(Node),
    /// A lease after the change.
    Lease(Lease),
    /// Leases that were expired.
    Expired {
        /// Their ids.
        ids: Vec<u64>,
    },
}

/// A deterministic refusal: told to the client, never fatal for the member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// The request is malformed.
    #[error("invalid request: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// No node can hold the request now.
    #[error("no node can hold the lease: {reason}")]
    NoCapacity {
        /// Per-node reasons, summarised.
        reason: String,
    },
    /// The thing asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The principal may not touch it.
    #[error("lease {id} belongs to {owner}, not to {principal}")]
    NotYours {
        /// The lease id.
        id: u64,
        /// Its owner.
        owner: String,
        /// Who asked.
        principal: String,
    },
    /// The lease has already ended.
    #[error("lease {id} is already {state}")]
    Ended {
        /// The lease id.
        id: u64,
        /// Its final state.
        state: LeaseState,
    },
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// State time: the largest `at` applied so far.
    pub time: Millis,
    /// Nodes by name.
    pub nodes: OrdMap<String, Node>,
    /// Leases by id, live and ended.
    pub leases: OrdMap<u64, Lease>,
    /// Granted leases ordered by expiry: `(expires_at, id)`.
    pub expiries: OrdSet<(Millis, u64)>,
    /// The id the next lease gets.
    pub next_lease_id: u64,
    /// The last fencing token handed out; the next grant gets a larger one.
    pub fencing_token: u64,
    /// First outcomes by `principal/key`.
    pub applied_keys: OrdMap<String, Outcome>,
    /// Raft members and their peer addresses, changed by conf-change entries.
    pub members: BTreeMap<u64, String>,
}

impl State {
    /// A fresh state with the bootstrap members.
    pub fn new(members: BTreeMap<u64, String>) -> State {
        State {
            next_lease_id: 1,
            members,
            ..State::default()
        }
    }

    /// Applies one proposal. Deterministic: the same state and proposal give
    /// the same result on every member.
    pub fn apply(&mut self, p: &Proposal) -> Outcome {
        self.time = self.time.max(p.at);
        let key = p.key.as_ref().map(|k| format!("{}/{}", p.principal, k));
        if let Some(k) = &key
            && let Some(first) = self.applied_keys.get(k)
        {
            return first.clone();
        }
        let out = match &p.cmd {
            Command::RegisterNode {
                name,
                capacity,
                labels,
                pool,
                cost_per_hour,
            } => self.register_node(name, capacity, labels, pool, *cost_per_hour),
            Command::RequestLease(spec) => self.request_lease(&p.principal, spec),
            Command::ReleaseLease { id } => self.release_lease(*id, &p.principal, p.admin),
            Command::ExpireLeases { ids } => Ok(self.expire_leases(ids)),
        };
        if let Some(k) = key {
            self.applied_keys.insert(k, out.clone());
        }
        out
    }

    /// Records a membership change from a Raft conf-change entry.
    pub fn set_member(&mut self, id: u64, addr: Option<String>) {
        match addr {
            Some(a) => {
                self.members.insert(id, a);
            }
            None => {
                self.members.remove(&id);
            }
        }
    }

    /// Serialises the state for a snapshot.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).expect("state serialises")
    }

    /// Reads a snapshot's state.
    pub fn from_bytes(b: &[u8]) -> Result<State, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

#[cfg(test)]
mod tests;
