//! The records the state holds: resources, nodes, leases.

use super::Millis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An amount of each resource kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disk in bytes.
    pub disk_bytes: u64,
    /// Whole GPUs.
    pub gpus: u32,
}

impl Resources {
    /// Whether `self` fits into `free`, kind by kind.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis
            && self.memory_bytes <= free.memory_bytes
            && self.disk_bytes <= free.disk_bytes
            && self.gpus <= free.gpus
    }

    /// `self - other`, saturating at zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(other.disk_bytes),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    /// `self + other`, saturating.
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_add(other.disk_bytes),
            gpus: self.gpus.saturating_add(other.gpus),
        }
    }
}

/// Whether a node takes new grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes new grants.
    Ready,
    /// Keeps its leases, takes no new ones.
    Draining,
    /// Missed its heartbeat TTL.
    Down,
}

impl NodeState {
    /// The snake_case name used in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        }
    }
}

/// A server that offers capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// What it offers in all.
    pub capacity: Resources,
    /// What granted leases hold now.
    pub allocated: Resources,
    /// Labels such as `zone=a`, `gpu=a100`.
    pub labels: BTreeMap<String, String>,
    /// Its pool.
    pub pool: String,
    /// Price per hour.
    pub cost_per_hour: f64,
    /// Ready, draining or down.
    pub state: NodeState,
    /// When it first registered.
    pub registered_at: Millis,
    /// Ids of the granted leases on it.
    pub leases: BTreeSet<u64>,
}

impl Node {
    /// Capacity not held by any lease.
    pub fn free(&self) -> Resources {
        self.capacity.minus(&self.allocated)
    }
}

/// A label constraint of a lease request. Issue-2 scope: equality only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// The label key.
    pub key: String,
    /// The value it must have.
    pub value: String,
}

/// What a lease request asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseSpec {
    /// Resources on one node.
    pub resources: Resources,
    /// Label constraints, all of which must hold.
    pub constraints: Vec<Constraint>,
    /// How long the lease lasts from its grant, in ms.
    pub duration_ms: u64,
    /// Why it is wanted (shown in listings).
    pub reason: String,
}

/// Where a lease is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Holds its resources until `expires_at`.
    Granted,
    /// Ended early by its holder.
    Released,
    /// Ended at `expires_at`.
    Expired,
}

impl LeaseState {
    /// The snake_case name used in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Granted => "granted",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
        }
    }
}

impl std::fmt::Display for LeaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A principal's claim on resources of one node until `expires_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Unique, increasing id.
    pub id: u64,
    /// Who holds it.
    pub principal: String,
    /// The node it is on.
    pub node: String,
    /// What it holds there.
    pub resources: Resources,
    /// Granted, released or expired.
    pub state: LeaseState,
    /// When it was granted (absolute; never reset by a leader change).
    pub granted_at: Millis,
    /// When it ends by itself (absolute).
    pub expires_at: Millis,
    /// Strictly increasing with every grant, so a resource can refuse a superseded holder.
    pub fencing_token: u64,
    /// The holder's reason.
    pub reason: String,
    /// When it ended, once it has.
    pub ended_at: Option<Millis>,
}
