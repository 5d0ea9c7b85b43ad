//! The deployer's records, shared by the replicated state (which keeps them)
//! and the deployer's controller (which reads them through `Deploy.Plan`):
//! a deployment of one commit of an app, its steps, and the controller's view.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::Millis;
use crate::states::{HealthState, LeaseState, TaskState};

crate::named! {
    /// The steps of a deployment, in the order it walks them.
    #[derive(Default)]
    pub enum DeployStep: "deploy step" {
        /// Resolve the commit in the app's repository (where each starts).
        #[default]
        Fetch = "fetch",
        /// Build it as a batch task on the cluster (or reuse a build).
        Build = "build",
        /// The build's artifact is in the servers' store.
        Publish = "publish",
        /// Lease fresh servers for the new version.
        Lease = "lease",
        /// Its servers' processes run.
        Start = "start",
        /// Its servers are healthy for `min_healthy`.
        AwaitHealthy = "await_healthy",
        /// It becomes the active version.
        Promote = "promote",
        /// The previous version's servers drain and are released.
        Retire = "retire",
    }
}

impl DeployStep {
    /// The step after this one, if any.
    pub fn next(self) -> Option<DeployStep> {
        let i = DeployStep::ALL.iter().position(|s| *s == self)?;
        DeployStep::ALL.get(i + 1).copied()
    }

    /// Whether the old version still serves and a failure rolls back (every
    /// step before `promote`).
    pub fn before_promote(self) -> bool {
        self < DeployStep::Promote
    }
}

crate::named! {
    /// How one step of a deployment went.
    pub enum StepState: "step state" {
        /// Under way.
        Running = "running",
        /// Finished.
        Done = "done",
        /// Failed; the deployment rolls back.
        Failed = "failed",
        /// Cut short: a newer deployment superseded this one.
        Superseded = "superseded",
    }
}

crate::named! {
    /// What applying an app file changed.
    pub enum AppChange: "app change" {
        /// A new app.
        Added = "added",
        /// A new definition of an app.
        Changed = "changed",
        /// The same definition again.
        Unchanged = "unchanged",
    }
}

crate::named! {
    /// Where a deployment is.
    pub enum DeployStatus: "deployment status" {
        /// Walking its steps.
        Running = "running",
        /// Promoted and the app's active version.
        Active = "active",
        /// A step failed or the deadline passed; its servers were released and
        /// the previous version stayed active.
        RolledBack = "rolled_back",
        /// A newer commit arrived before it was promoted.
        Superseded = "superseded",
        /// It was active; a newer version replaced it and its servers were released.
        Retired = "retired",
        /// Its commit turned out to be the active one already.
        Unchanged = "unchanged",
    }
}

crate::named! {
    /// What started a deployment.
    pub enum Trigger: "trigger" {
        /// A push webhook.
        Webhook = "webhook",
        /// Polling saw a new branch head.
        Poll = "poll",
        /// `charter deploy trigger`.
        Manual = "manual",
        /// `charter deploy rollback`.
        Rollback = "rollback",
    }
}

/// One step of a deployment as it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Which step.
    pub step: DeployStep,
    /// When it started.
    pub started_at: Millis,
    /// When it ended.
    pub ended_at: Option<Millis>,
    /// How it went.
    pub state: StepState,
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
    /// What started it.
    pub trigger: Trigger,
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
    #[serde(
        default,
        with = "crate::named::or_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub failed_step: Option<DeployStep>,
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
    /// The current step.
    pub fn step(&self) -> DeployStep {
        self.steps.last().map_or(DeployStep::Fetch, |s| s.step)
    }

    /// The current step's record.
    pub fn current(&self) -> Option<&StepRecord> {
        self.steps.last()
    }
}

/// What the controller knows of one task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Where it is in its life.
    pub state: TaskState,
    /// A service's health.
    pub health: HealthState,
    /// Since when its health is what it is.
    pub health_since: Option<Millis>,
    /// Its lease.
    pub lease: u64,
    /// The lease's state.
    pub lease_state: LeaseState,
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
