//! The records the state holds: nodes, leases, tasks. What a lease asks
//! for, what a task runs and their states are the typed model's
//! (`charter_config::spec`, `charter_config::states`), re-exported here.

use super::Millis;
pub use charter_config::spec::{
    Amp, Check, CheckKind, Health, LeaseSpec, Prefer, Resources, Restart, TaskSpec, Usage,
    valid_port_name,
};
pub use charter_config::states::{HealthState, LeaseState, NodeState, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How the servers reach a node's agent (for logs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEndpoint {
    /// Its gRPC address.
    pub addr: String,
    /// The bearer token it accepts (made by the agent at start).
    pub secret: String,
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
    /// Where its agent serves logs, and the secret the servers call it with.
    #[serde(default)]
    pub agent: Option<AgentEndpoint>,
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
            agent: None,
            last_seen: 0,
            leases: BTreeSet::new(),
        }
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The GPUs it holds on each node, by index (`0..gpus` of the node):
    /// exclusive, so no two live leases hold the same one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_ids: BTreeMap<String, Vec<u32>>,
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

/// A task: work bound to a lease, run by the lease's node's agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique, increasing id.
    pub id: u64,
    /// Who submitted it.
    pub principal: String,
    /// The lease it runs in (made for it by `task submit`).
    pub lease: u64,
    /// What to run.
    pub spec: TaskSpec,
    /// Its state.
    pub state: TaskState,
    /// The last exit code, once it exited.
    pub exit_code: Option<i32>,
    /// Processes started so far (attempts and restarts).
    pub starts: u32,
    /// A service's health (unchecked for batch).
    pub health: HealthState,
    /// When it was submitted.
    pub submitted_at: Millis,
    /// When its first process started.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub ended_at: Option<Millis>,
    /// The agent's last word on it (an error, a signal).
    pub message: String,
    /// The last resource-usage sample of its processes.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The ports its agent picked, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    /// The cron run it is, `(job, scheduled_at)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<(String, Millis)>,
    /// Since when its health is what it is (state time of the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_since: Option<Millis>,
    /// The sha256 of the artifact it stored (`artifact_out`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact: String,
}
