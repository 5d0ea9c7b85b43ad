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

impl Default for LeaseSpec {
    fn default() -> LeaseSpec {
        LeaseSpec::simple(Resources::default(), 0)
    }
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Waiting in the queue for capacity.
    #[default]
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
    /// Every state, in lifecycle order.
    pub const ALL: [LeaseState; 7] = [
        LeaseState::Pending,
        LeaseState::Granted,
        LeaseState::Released,
        LeaseState::Expired,
        LeaseState::Revoked,
        LeaseState::Lost,
        LeaseState::TimedOut,
    ];

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

/// How an agent runs a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amp {
    /// Runs to completion; retried with backoff on failure.
    #[default]
    Batch,
    /// Long-running; restarted per its policy; health-checked.
    Service,
}

impl Amp {
    /// Parses `batch` or `service`.
    pub fn parse(s: &str) -> Result<Amp, String> {
        match s {
            "batch" | "" => Ok(Amp::Batch),
            "service" => Ok(Amp::Service),
            other => Err(format!("unknown amp `{other}`; expected batch or service")),
        }
    }

    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Amp::Batch => "batch",
            Amp::Service => "service",
        }
    }
}

/// When a service is started again after it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// After any exit.
    Always,
    /// After a non-zero exit.
    #[default]
    OnFailure,
    /// Never; and the task is not placed again when its node is lost.
    Never,
}

impl Restart {
    /// Parses `always`, `on_failure` (or empty) or `never`.
    pub fn parse(s: &str) -> Result<Restart, String> {
        match s {
            "always" => Ok(Restart::Always),
            "on_failure" | "" => Ok(Restart::OnFailure),
            "never" => Ok(Restart::Never),
            other => Err(format!(
                "unknown restart policy `{other}`; expected always, on_failure or never"
            )),
        }
    }

    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on_failure",
            Restart::Never => "never",
        }
    }
}

/// A health check of a service task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
    /// `GET http://127.0.0.1:{port}{path}` must answer `status`.
    Http {
        /// Port on the node.
        port: u16,
        /// Path, like `/healthz`.
        path: String,
        /// Expected status.
        status: u16,
    },
    /// A TCP connect to `127.0.0.1:{port}` must succeed.
    Tcp {
        /// Port on the node.
        port: u16,
    },
    /// A command run in the sandbox must exit 0.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// A task's health check with its timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// What to check.
    pub check: Check,
    /// Between checks, in ms.
    pub interval_ms: u64,
    /// One check's time limit, in ms.
    pub timeout_ms: u64,
    /// Consecutive passes to become healthy.
    pub healthy_after: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_after: u32,
}

/// What to run inside a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// A name for listings (need not be unique).
    pub name: String,
    /// How it is run.
    pub amp: Amp,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment (the sandbox starts from an empty one).
    pub env: BTreeMap<String, String>,
    /// Batch: further attempts after a failure.
    pub retries: u32,
    /// Service: when it is restarted after it exits.
    pub restart: Restart,
    /// Service: the most restarts (0 = no limit).
    pub max_restarts: u32,
    /// Service: its health check, if any.
    pub health: Option<Health>,
    /// Between SIGTERM and SIGKILL at the lease's end, in ms (0 = 10 s).
    pub grace_ms: u64,
    /// Named ports its agent picks (`PORT`, `PORT_<NAME>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Batch: the sandbox file its agent stores as an artifact after exit 0.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact_out: String,
    /// Service: the artifact (sha256) its agent fetches and checks before
    /// the first start, placed in the sandbox as `artifact_name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact_in: String,
    /// Where `artifact_in` goes in the sandbox.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact_name: String,
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its lease or its agent.
    #[default]
    Pending,
    /// Its process runs.
    Running,
    /// Its process exited and the agent starts it again after a backoff
    /// (a service's restart, a batch task's retry); `exit_code` is the
    /// last exit.
    Restarting,
    /// Exited 0 (batch).
    Succeeded,
    /// Exited non-zero after every retry, or could not start.
    Failed,
    /// Cancelled, or its lease was released or revoked before it finished.
    Cancelled,
    /// Its lease expired before it finished; its processes were killed.
    Expired,
    /// Its node went down.
    Lost,
}

impl TaskState {
    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Restarting => "restarting",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
            TaskState::Lost => "lost",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<TaskState> {
        [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Restarting,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Cancelled,
            TaskState::Expired,
            TaskState::Lost,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    /// Whether the task is over.
    pub fn is_ended(&self) -> bool {
        !matches!(
            self,
            TaskState::Pending | TaskState::Running | TaskState::Restarting
        )
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
    /// Service health: `starting`, `healthy`, `unhealthy` (empty for batch).
    pub health: String,
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

/// A sample of what a task's processes use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Resident memory of all its processes, in bytes.
    pub rss_bytes: u64,
    /// CPU time its live processes used so far, in ms.
    pub cpu_ms: u64,
    /// When the agent sampled it (the agent's clock).
    pub sampled_at: Millis,
}

/// Whether `name` may name a task's port (it becomes `PORT_<NAME>`).
pub fn valid_port_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
