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
use std::collections::BTreeMap;

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
    /// Its place in the queue while pending: higher priority first, then
    /// the older request, then the lower id.
    pub fn queue_key(&self) -> (i64, Millis, u64) {
        (-(self.spec.priority as i64), self.requested_at, self.id)
    }

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
