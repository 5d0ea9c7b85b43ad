//! The records the state holds: resources, nodes, leases.

use super::Millis;
use charter_config::constraint::Constraint;
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
    /// Heartbeat time-to-live: missing it marks the node down and its leases
    /// lost. `None` for records without an agent (`node register`).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// The last registration or heartbeat.
    #[serde(default)]
    pub last_seen: Millis,
    /// Ids of the granted leases on it.
    pub leases: BTreeSet<u64>,
}

impl Node {
    /// Capacity not held by any lease.
    pub fn free(&self) -> Resources {
        self.capacity.minus(&self.allocated)
    }
}

/// What a pool that can grow would add: the shape of each new node and how
/// many nodes the pool may hold. Replicated, so every member agrees whether a
/// request could ever be met (by a node that exists or one a pool could add).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolOffer {
    /// The pool's name.
    pub name: String,
    /// The most nodes the pool may hold.
    pub max_nodes: u32,
    /// What each new node offers.
    pub capacity: Resources,
    /// Labels of each new node.
    pub labels: BTreeMap<String, String>,
    /// Price per node per hour.
    pub cost_per_hour: f64,
    /// A node of the pool with no lease for this long is retired, in ms.
    pub idle_ms: u64,
}

impl PoolOffer {
    /// A fresh, empty node of this pool, as placement sees it.
    pub fn new_node(&self, name: &str) -> Node {
        Node {
            name: name.to_string(),
            capacity: self.capacity,
            allocated: Resources::default(),
            labels: self.labels.clone(),
            pool: self.name.clone(),
            cost_per_hour: self.cost_per_hour,
            state: NodeState::Ready,
            registered_at: 0,
            ttl_ms: None,
            last_seen: 0,
            leases: BTreeSet::new(),
        }
    }
}

/// How feasible nodes are ranked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefer {
    /// Fill nodes up: the node left with the least free CPU first.
    #[default]
    Binpack,
    /// Spread out: the node left with the most free CPU first.
    Spread,
    /// The lowest cost per hour first, then binpack.
    Cheapest,
}

impl Prefer {
    /// Parses `binpack`, `spread` or `cheapest`.
    pub fn parse(s: &str) -> Result<Prefer, String> {
        match s {
            "binpack" | "" => Ok(Prefer::Binpack),
            "spread" => Ok(Prefer::Spread),
            "cheapest" => Ok(Prefer::Cheapest),
            other => Err(format!(
                "unknown preference `{other}`; expected binpack, spread or cheapest"
            )),
        }
    }

    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Prefer::Binpack => "binpack",
            Prefer::Spread => "spread",
            Prefer::Cheapest => "cheapest",
        }
    }
}

/// What a lease request asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseSpec {
    /// Resources on each node.
    pub resources: Resources,
    /// Label constraints, all of which must hold on each node.
    pub constraints: Vec<Constraint>,
    /// How many nodes: all are granted together, or none.
    pub count: u32,
    /// How long the lease lasts from its grant (or a renewal), in ms.
    pub duration_ms: u64,
    /// Renewals may extend the lease up to this long after its grant, in ms.
    pub max_total_ms: u64,
    /// Higher goes first in the queue.
    pub priority: i32,
    /// How long the request may wait in the queue, in ms; 0 = now or never.
    pub wait_ms: u64,
    /// Only nodes at or under this price per hour.
    pub max_cost_per_hour: Option<f64>,
    /// How feasible nodes are ranked.
    pub prefer: Prefer,
    /// Finish by this time: the request waits for the cheapest capacity while
    /// the deadline allows, takes any price after that, and gives up when it
    /// could no longer finish in time.
    #[serde(default)]
    pub deadline: Option<Millis>,
    /// Why it is wanted (shown in listings).
    pub reason: String,
}

impl LeaseSpec {
    /// A one-node request for `resources` over `duration_ms`, granted now or refused.
    pub fn simple(resources: Resources, duration_ms: u64) -> LeaseSpec {
        LeaseSpec {
            resources,
            constraints: Vec::new(),
            count: 1,
            duration_ms,
            max_total_ms: duration_ms,
            priority: 0,
            wait_ms: 0,
            max_cost_per_hour: None,
            prefer: Prefer::Binpack,
            deadline: None,
            reason: String::new(),
        }
    }
}

/// Where a lease is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Waiting in the queue for capacity.
    Pending,
    /// Holds its resources until `expires_at`.
    Granted,
    /// Ended early by its holder (or cancelled while pending).
    Released,
    /// Ended at `expires_at`.
    Expired,
    /// Ended early by an admin.
    Revoked,
    /// Its node went down.
    Lost,
    /// Waited in the queue longer than it was willing to.
    TimedOut,
}

impl LeaseState {
    /// The snake_case name used in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Granted => "granted",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
            LeaseState::Revoked => "revoked",
            LeaseState::Lost => "lost",
            LeaseState::TimedOut => "timed_out",
        }
    }

    /// Whether the lease has ended (holds nothing and never will).
    pub fn is_ended(&self) -> bool {
        !matches!(self, LeaseState::Pending | LeaseState::Granted)
    }
}

impl std::fmt::Display for LeaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-principal limits. `None` is no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Most CPU held by pending and granted leases together, in millicores.
    pub max_cpu_millis: Option<u64>,
    /// Most pending and granted leases at once.
    pub max_leases: Option<u32>,
    /// Longest lease, renewals included, in ms.
    pub max_duration_ms: Option<u64>,
}

/// A principal's claim on resources of some nodes until `expires_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Unique, increasing id.
    pub id: u64,
    /// Who holds it.
    pub principal: String,
    /// What was asked for.
    pub spec: LeaseSpec,
    /// The nodes it holds (empty while pending).
    pub nodes: Vec<String>,
    /// Pending, granted, or how it ended.
    pub state: LeaseState,
    /// When it was requested.
    pub requested_at: Millis,
    /// When a pending request gives up.
    pub wait_until: Millis,
    /// Until when a pending request with a deadline takes only the cheapest capacity.
    #[serde(default)]
    pub cheap_until: Millis,
    /// When it was granted (absolute; never reset by a leader change); 0 while pending.
    pub granted_at: Millis,
    /// When it ends by itself (absolute); 0 while pending.
    pub expires_at: Millis,
    /// Strictly increasing with every grant, so a resource can refuse a
    /// superseded holder; 0 while pending.
    pub fencing_token: u64,
    /// The summed price per hour of its nodes at grant.
    pub cost_per_hour: f64,
    /// When it ended, once it has.
    pub ended_at: Option<Millis>,
}

impl Lease {
    /// The cost of the lease so far or in all: price per hour × granted hours.
    pub fn cost(&self) -> f64 {
        if self.fencing_token == 0 {
            return 0.0; // never granted
        }
        let end = self.ended_at.unwrap_or(self.expires_at);
        self.cost_per_hour * (end - self.granted_at).max(0) as f64 / 3_600_000.0
    }
}
