//! What a lease asks for and what a task runs: the typed request every
//! crate speaks about. A file ([`crate::lease::LeaseConfig`],
//! [`crate::task::TaskConfig`]) becomes one of these with `spec()`; the
//! wire form converts to and from them in `charter-proto`, once; the
//! servers keep them in the replicated state and the agent runs them.

use crate::Millis;
use crate::constraint::Constraint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

crate::named! {
    /// How feasible nodes are ranked.
    #[derive(Default)]
    pub enum Prefer: "preference" {
        /// Fill nodes up: the node left with the least free CPU first.
        #[default]
        Binpack = "binpack",
        /// Spread out: the node left with the most free CPU first.
        Spread = "spread",
        /// The lowest cost per hour first, then binpack.
        Cheapest = "cheapest",
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

crate::named! {
    /// How an agent runs a task.
    #[derive(Default)]
    pub enum Amp: "amp" {
        /// Runs to completion; retried with backoff on failure.
        #[default]
        Batch = "batch",
        /// Long-running; restarted per its policy; health-checked.
        Service = "service",
    }
}

crate::named! {
    /// When a service is started again after it exits.
    #[derive(Default)]
    pub enum Restart: "restart policy" {
        /// After any exit.
        Always = "always",
        /// After a non-zero exit.
        #[default]
        OnFailure = "on_failure",
        /// Never; and the task is not placed again when its node is lost.
        Never = "never",
    }
}

crate::named! {
    /// What kind of health check: the name a file or the wire gives it.
    pub enum CheckKind: "health check" {
        /// An HTTP GET.
        Http = "http",
        /// A TCP connect.
        Tcp = "tcp",
        /// A command run in the sandbox.
        Command = "command",
    }
}

/// A health check of a service task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
    /// `GET http://127.0.0.1:{port}{path}` must answer `status`.
    Http {
        /// Port on the node (0: the task's first named port).
        port: u16,
        /// Path, like `/healthz`.
        path: String,
        /// Expected status.
        status: u16,
    },
    /// A TCP connect to `127.0.0.1:{port}` must succeed.
    Tcp {
        /// Port on the node (0: the task's first named port).
        port: u16,
    },
    /// A command run in the sandbox must exit 0.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

impl Check {
    /// Its kind.
    pub fn kind(&self) -> CheckKind {
        match self {
            Check::Http { .. } => CheckKind::Http,
            Check::Tcp { .. } => CheckKind::Tcp,
            Check::Command { .. } => CheckKind::Command,
        }
    }
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
