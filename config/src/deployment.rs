//! The deployer's records, shared by the replicated state (which keeps them)
//! and the deployer's controller (which reads them through `Deploy.Plan`):
//! a deployment of one commit of an app, its steps, and the controller's view.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The steps of a deployment, in order.
pub const STEPS: [&str; 8] = [
    "fetch",
    "build",
    "publish",
    "lease",
    "start",
    "await_healthy",
    "promote",
    "retire",
];

/// The step after `step`, if any.
pub fn next_step(step: &str) -> Option<&'static str> {
    let i = STEPS.iter().position(|s| *s == step)?;
    STEPS.get(i + 1).copied()
}

/// Where a deployment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Walking its steps.
    Running,
    /// Promoted and the app's active version.
    Active,
    /// A step failed or the deadline passed; its servers were released and
    /// the previous version stayed active.
    RolledBack,
    /// A newer commit arrived before it was promoted.
    Superseded,
    /// It was active; a newer version replaced it and its servers were released.
    Retired,
    /// Its commit turned out to be the active one already.
    Unchanged,
}

impl DeployStatus {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Running => "running",
            DeployStatus::Active => "active",
            DeployStatus::RolledBack => "rolled_back",
            DeployStatus::Superseded => "superseded",
            DeployStatus::Retired => "retired",
            DeployStatus::Unchanged => "unchanged",
        }
    }
}

/// One step of a deployment as it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Its name (one of [`STEPS`]).
    pub step: String,
    /// When it started.
    pub started_at: Millis,
    /// When it ended.
    pub ended_at: Option<Millis>,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Why it failed, or a note.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A deployment of one commit of an app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Unique, increasing id.
    pub id: u64,
    /// The app.
    pub app: String,
    /// The commit (full once fetched; as given before).
    pub commit: String,
    /// The rendered fingerprint (empty until the commit is known in full).
    pub fingerprint: String,
    /// `webhook`, `poll`, `manual` or `rollback`.
    pub trigger: String,
    /// Who started it.
    pub by: String,
    /// When it started.
    pub created_at: Millis,
    /// Where it is.
    pub status: DeployStatus,
    /// Its steps so far; the last is the current one.
    pub steps: Vec<StepRecord>,
    /// The build task.
    pub build_task: Option<u64>,
    /// The artifact's sha256.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact: String,
    /// Its servers' tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<u64>,
    /// The version that was active when it started.
    pub previous: Option<u64>,
    /// When it became the active version.
    pub promoted_at: Option<Millis>,
    /// The step that failed, when rolled back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failed_step: String,
    /// Why it rolled back, was superseded or ended unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The tail of the build's output, kept when the build failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build_log: String,
    /// When it stopped running.
    pub ended_at: Option<Millis>,
}

impl Deployment {
    /// The current step's name.
    pub fn step(&self) -> &str {
        self.steps.last().map_or("fetch", |s| s.step.as_str())
    }

    /// The current step's record.
    pub fn current(&self) -> Option<&StepRecord> {
        self.steps.last()
    }
}

/// What the controller knows of one task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// `pending`, `running`, `succeeded`, …
    pub state: String,
    /// `starting`, `healthy`, `unhealthy` (services).
    pub health: String,
    /// Since when its health is what it is.
    pub health_since: Option<Millis>,
    /// Its lease.
    pub lease: u64,
    /// The lease's state (`pending`, `granted`, …).
    pub lease_state: String,
    /// When the lease ends.
    pub expires_at: Option<Millis>,
    /// The node it runs on.
    pub node: String,
    /// The host its ports are on (its agent's host).
    pub host: String,
    /// Its ports by name.
    pub ports: BTreeMap<String, u16>,
    /// The artifact its build produced (sha256).
    pub artifact: String,
    /// Its last exit code.
    pub exit_code: Option<i32>,
    /// The agent's last word on it.
    pub message: String,
}

/// An app as the controller sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppView {
    /// Its definition (with its secret: only admins read the plan).
    pub config: crate::app::AppConfig,
    /// Who applied it.
    pub applied_by: String,
    /// The active deployment.
    pub active: Option<u64>,
}

/// Everything the deployer's controller needs in one read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeployView {
    /// The leader's state time.
    pub time: Millis,
    /// Apps by name.
    pub apps: BTreeMap<String, AppView>,
    /// Running and active deployments.
    pub deployments: Vec<Deployment>,
    /// Every task those deployments name.
    pub tasks: BTreeMap<u64, TaskView>,
    /// Artifacts already built of the commits being deployed, by commit, per
    /// app (to reuse a build); the plan keeps those its member still stores.
    pub built: BTreeMap<String, BTreeMap<String, String>>,
}

/// A commit id as people read it: its first 12 characters.
pub fn short_commit(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
