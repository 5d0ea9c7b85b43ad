//! What the log and the state keep of an applied file: cron jobs and apps,
//! in types of their own. A config file's types
//! (`charter_config::cron::JobConfig`, `charter_config::app::AppConfig`) are
//! how a file reads and is checked, and may change with the file format;
//! these are how an applied definition is kept, field for field as log
//! format version 1 wrote it, so editing a config struct cannot change the
//! meaning of entries already written. A field a file gains is added here
//! with a serde default (older entries lack it); the codec's fixture test
//! decodes entries of every command with these types. Conversions to and
//! from the config types are here, one per type.
//!
//! Over 500 lines: nine plain records, each with its two conversions; split, the pairs are harder to keep in step.

use charter_config::cron::{Concurrency, Missed};
use charter_config::spec::{Amp, CheckKind, Prefer, Restart};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One cron job as applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDefinition {
    /// Unique name.
    pub name: String,
    /// The crontab(5) expression.
    pub schedule: String,
    /// IANA zone (empty: UTC).
    pub timezone: String,
    /// Upstream jobs.
    pub depends_on: Vec<String>,
    /// Upstream window in ms (0: the same tick only).
    pub window_ms: u64,
    /// How long a run waits for its upstreams, in ms.
    pub dependency_wait_ms: u64,
    /// A tick while a run is going.
    pub concurrency: Concurrency,
    /// Ticks missed while no leader was there.
    pub missed: Missed,
    /// With missed = all.
    pub max_catch_up: u32,
    /// Further attempts of a failed run.
    pub retries: u32,
    /// Paused jobs do not fire.
    pub paused: bool,
    /// Who the runs belong to (empty: whoever applied the file).
    pub owner: String,
    /// What each run does.
    pub task: TaskDefinition,
}

impl From<&charter_config::cron::JobConfig> for JobDefinition {
    fn from(c: &charter_config::cron::JobConfig) -> JobDefinition {
        JobDefinition {
            name: c.name.clone(),
            schedule: c.schedule.clone(),
            timezone: c.timezone.clone(),
            depends_on: c.depends_on.clone(),
            window_ms: c.window_ms,
            dependency_wait_ms: c.dependency_wait_ms,
            concurrency: c.concurrency,
            missed: c.missed,
            max_catch_up: c.max_catch_up,
            retries: c.retries,
            paused: c.paused,
            owner: c.owner.clone(),
            task: (&c.task).into(),
        }
    }
}

impl From<&JobDefinition> for charter_config::cron::JobConfig {
    fn from(d: &JobDefinition) -> charter_config::cron::JobConfig {
        charter_config::cron::JobConfig {
            name: d.name.clone(),
            schedule: d.schedule.clone(),
            timezone: d.timezone.clone(),
            depends_on: d.depends_on.clone(),
            window_ms: d.window_ms,
            dependency_wait_ms: d.dependency_wait_ms,
            concurrency: d.concurrency,
            missed: d.missed,
            max_catch_up: d.max_catch_up,
            retries: d.retries,
            paused: d.paused,
            owner: d.owner.clone(),
            task: (&d.task).into(),
        }
    }
}

/// A task as a cron job runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDefinition {
    /// A name for listings.
    pub name: String,
    /// How it is run.
    pub amp: Amp,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Extra environment only its owner and admins read back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// Batch: further attempts.
    pub retries: u32,
    /// Service: when it is started again.
    pub restart: Restart,
    /// Service: most restarts (0: no limit).
    pub max_restarts: u32,
    /// Grace in ms (0: the agent's default).
    pub grace_ms: u64,
    /// Service health check.
    pub health: Option<HealthDefinition>,
    /// Named ports the agent picks.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The lease the task runs in.
    pub lease: LeaseDefinition,
}

impl From<&charter_config::task::TaskConfig> for TaskDefinition {
    fn from(c: &charter_config::task::TaskConfig) -> TaskDefinition {
        TaskDefinition {
            name: c.name.clone(),
            amp: c.amp,
            command: c.command.clone(),
            env: c.env.clone(),
            secret_env: c.secret_env.clone(),
            retries: c.retries,
            restart: c.restart,
            max_restarts: c.max_restarts,
            grace_ms: c.grace_ms,
            health: c.health.as_ref().map(Into::into),
            ports: c.ports.clone(),
            lease: (&c.lease).into(),
        }
    }
}

impl From<&TaskDefinition> for charter_config::task::TaskConfig {
    fn from(d: &TaskDefinition) -> charter_config::task::TaskConfig {
        charter_config::task::TaskConfig {
            name: d.name.clone(),
            amp: d.amp,
            command: d.command.clone(),
            env: d.env.clone(),
            secret_env: d.secret_env.clone(),
            retries: d.retries,
            restart: d.restart,
            max_restarts: d.max_restarts,
            grace_ms: d.grace_ms,
            health: d.health.as_ref().map(Into::into),
            ports: d.ports.clone(),
            lease: (&d.lease).into(),
        }
    }
}

/// A task's health check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthDefinition {
    /// What kind of check.
    pub kind: CheckKind,
    /// Port (http, tcp).
    pub port: u16,
    /// Path (http).
    pub path: String,
    /// Expected status (http).
    pub status: u16,
    /// Command (command).
    pub argv: Vec<String>,
    /// Between checks, in ms.
    pub interval_ms: u64,
    /// Per check, in ms.
    pub timeout_ms: u64,
    /// Passes in a row to become healthy.
    pub healthy_after: u32,
    /// Failures in a row to become unhealthy.
    pub unhealthy_after: u32,
}

impl From<&charter_config::task::HealthConfig> for HealthDefinition {
    fn from(c: &charter_config::task::HealthConfig) -> HealthDefinition {
        HealthDefinition {
            kind: c.kind,
            port: c.port,
            path: c.path.clone(),
            status: c.status,
            argv: c.argv.clone(),
            interval_ms: c.interval_ms,
            timeout_ms: c.timeout_ms,
            healthy_after: c.healthy_after,
            unhealthy_after: c.unhealthy_after,
        }
    }
}

impl From<&HealthDefinition> for charter_config::task::HealthConfig {
    fn from(d: &HealthDefinition) -> charter_config::task::HealthConfig {
        charter_config::task::HealthConfig {
            kind: d.kind,
            port: d.port,
            path: d.path.clone(),
            status: d.status,
            argv: d.argv.clone(),
            interval_ms: d.interval_ms,
            timeout_ms: d.timeout_ms,
            healthy_after: d.healthy_after,
            unhealthy_after: d.unhealthy_after,
        }
    }
}

/// The lease a cron job's task runs in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseDefinition {
    /// CPU in millicores, per node.
    pub cpu_millis: u64,
    /// Memory in bytes, per node.
    pub memory_bytes: u64,
    /// Disk in bytes, per node.
    pub disk_bytes: u64,
    /// Whole GPUs, per node.
    pub gpus: u32,
    /// Labels the nodes must have, exactly.
    pub labels: BTreeMap<String, String>,
    /// Further constraints, as written.
    pub constraints: Vec<String>,
    /// Nodes, all or none (0 = 1).
    pub count: u32,
    /// How long, in ms.
    pub duration_ms: u64,
    /// Renewals up to this long after the grant, in ms.
    pub max_total_ms: u64,
    /// How long it may wait in the queue, in ms.
    pub wait_ms: u64,
    /// Queue priority; higher first.
    pub priority: i32,
    /// Price limit per node per hour.
    pub max_cost: Option<f64>,
    /// How nodes are ranked (none: binpack).
    #[serde(with = "charter_config::named::or_empty")]
    pub prefer: Option<Prefer>,
    /// Why.
    pub reason: String,
}

impl From<&charter_config::lease::LeaseConfig> for LeaseDefinition {
    fn from(c: &charter_config::lease::LeaseConfig) -> LeaseDefinition {
        LeaseDefinition {
            cpu_millis: c.cpu_millis,
            memory_bytes: c.memory_bytes,
            disk_bytes: c.disk_bytes,
            gpus: c.gpus,
            labels: c.labels.clone(),
            constraints: c.constraints.clone(),
            count: c.count,
            duration_ms: c.duration_ms,
            max_total_ms: c.max_total_ms,
            wait_ms: c.wait_ms,
            priority: c.priority,
            max_cost: c.max_cost,
            prefer: c.prefer,
            reason: c.reason.clone(),
        }
    }
}

impl From<&LeaseDefinition> for charter_config::lease::LeaseConfig {
    fn from(d: &LeaseDefinition) -> charter_config::lease::LeaseConfig {
        charter_config::lease::LeaseConfig {
            cpu_millis: d.cpu_millis,
            memory_bytes: d.memory_bytes,
            disk_bytes: d.disk_bytes,
            gpus: d.gpus,
            labels: d.labels.clone(),
            constraints: d.constraints.clone(),
            count: d.count,
            duration_ms: d.duration_ms,
            max_total_ms: d.max_total_ms,
            wait_ms: d.wait_ms,
            priority: d.priority,
            max_cost: d.max_cost,
            prefer: d.prefer,
            reason: d.reason.clone(),
        }
    }
}

/// An app as applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppDefinition {
    /// Unique name.
    pub name: String,
    /// Git URL or local path.
    pub repo: String,
    /// The branch deployed.
    pub branch: String,
    /// Fresh servers per version.
    pub servers: u32,
    /// A deployment not active this long after it started rolls back, in ms.
    pub progress_deadline_ms: u64,
    /// Branch polling interval in ms (0: off).
    pub poll_ms: u64,
    /// Webhook secret (empty: webhooks refused).
    pub secret: String,
    /// Fingerprint template.
    pub fingerprint: String,
    /// Artifact versions kept.
    pub keep: u32,
    /// How it is built.
    pub build: BuildDefinition,
    /// How it runs.
    pub run: RunDefinition,
    /// How health is judged.
    pub health: AppHealthDefinition,
    /// What each server needs.
    pub requirements: RequirementsDefinition,
}

impl From<&charter_config::app::AppConfig> for AppDefinition {
    fn from(c: &charter_config::app::AppConfig) -> AppDefinition {
        AppDefinition {
            name: c.name.clone(),
            repo: c.repo.clone(),
            branch: c.branch.clone(),
            servers: c.servers,
            progress_deadline_ms: c.progress_deadline_ms,
            poll_ms: c.poll_ms,
            secret: c.secret.clone(),
            fingerprint: c.fingerprint.clone(),
            keep: c.keep,
            build: (&c.build).into(),
            run: (&c.run).into(),
            health: (&c.health).into(),
            requirements: (&c.requirements).into(),
        }
    }
}

impl From<&AppDefinition> for charter_config::app::AppConfig {
    fn from(d: &AppDefinition) -> charter_config::app::AppConfig {
        charter_config::app::AppConfig {
            name: d.name.clone(),
            repo: d.repo.clone(),
            branch: d.branch.clone(),
            servers: d.servers,
            progress_deadline_ms: d.progress_deadline_ms,
            poll_ms: d.poll_ms,
            secret: d.secret.clone(),
            fingerprint: d.fingerprint.clone(),
            keep: d.keep,
            build: (&d.build).into(),
            run: (&d.run).into(),
            health: (&d.health).into(),
            requirements: (&d.requirements).into(),
        }
    }
}

/// An app's build step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildDefinition {
    /// Run in the checkout.
    pub command: Vec<String>,
    /// The file it produces, relative to the checkout.
    pub artifact: String,
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Time limit in ms.
    pub timeout_ms: u64,
}

impl From<&charter_config::app::BuildConfig> for BuildDefinition {
    fn from(c: &charter_config::app::BuildConfig) -> BuildDefinition {
        BuildDefinition {
            command: c.command.clone(),
            artifact: c.artifact.clone(),
            cpu_millis: c.cpu_millis,
            memory_bytes: c.memory_bytes,
            timeout_ms: c.timeout_ms,
        }
    }
}

impl From<&BuildDefinition> for charter_config::app::BuildConfig {
    fn from(d: &BuildDefinition) -> charter_config::app::BuildConfig {
        charter_config::app::BuildConfig {
            command: d.command.clone(),
            artifact: d.artifact.clone(),
            cpu_millis: d.cpu_millis,
            memory_bytes: d.memory_bytes,
            timeout_ms: d.timeout_ms,
        }
    }
}

/// How an app runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunDefinition {
    /// Run next to the artifact.
    pub command: Vec<String>,
    /// Named ports, the first also as `PORT`.
    pub ports: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Extra environment only the app's owner and admins read back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
}

impl From<&charter_config::app::RunConfig> for RunDefinition {
    fn from(c: &charter_config::app::RunConfig) -> RunDefinition {
        RunDefinition {
            command: c.command.clone(),
            ports: c.ports.clone(),
            env: c.env.clone(),
            secret_env: c.secret_env.clone(),
        }
    }
}

impl From<&RunDefinition> for charter_config::app::RunConfig {
    fn from(d: &RunDefinition) -> charter_config::app::RunConfig {
        charter_config::app::RunConfig {
            command: d.command.clone(),
            ports: d.ports.clone(),
            env: d.env.clone(),
            secret_env: d.secret_env.clone(),
        }
    }
}

/// How an app's health is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppHealthDefinition {
    /// `http` or `tcp`, on the first port.
    pub kind: CheckKind,
    /// HTTP path.
    pub path: String,
    /// Expected HTTP status.
    pub status: u16,
    /// Between checks, in ms.
    pub interval_ms: u64,
    /// Per check, in ms.
    pub timeout_ms: u64,
    /// Healthy this long before promotion, in ms.
    pub min_healthy_ms: u64,
}

impl From<&charter_config::app::AppHealth> for AppHealthDefinition {
    fn from(c: &charter_config::app::AppHealth) -> AppHealthDefinition {
        AppHealthDefinition {
            kind: c.kind,
            path: c.path.clone(),
            status: c.status,
            interval_ms: c.interval_ms,
            timeout_ms: c.timeout_ms,
            min_healthy_ms: c.min_healthy_ms,
        }
    }
}

impl From<&AppHealthDefinition> for charter_config::app::AppHealth {
    fn from(d: &AppHealthDefinition) -> charter_config::app::AppHealth {
        charter_config::app::AppHealth {
            kind: d.kind,
            path: d.path.clone(),
            status: d.status,
            interval_ms: d.interval_ms,
            timeout_ms: d.timeout_ms,
            min_healthy_ms: d.min_healthy_ms,
        }
    }
}

/// What each of an app's servers needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequirementsDefinition {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Labels the node must have.
    pub labels: BTreeMap<String, String>,
    /// Further constraints, as written.
    pub constraints: Vec<String>,
}

impl From<&charter_config::app::Requirements> for RequirementsDefinition {
    fn from(c: &charter_config::app::Requirements) -> RequirementsDefinition {
        RequirementsDefinition {
            cpu_millis: c.cpu_millis,
            memory_bytes: c.memory_bytes,
            labels: c.labels.clone(),
            constraints: c.constraints.clone(),
        }
    }
}

impl From<&RequirementsDefinition> for charter_config::app::Requirements {
    fn from(d: &RequirementsDefinition) -> charter_config::app::Requirements {
        charter_config::app::Requirements {
            cpu_millis: d.cpu_millis,
            memory_bytes: d.memory_bytes,
            labels: d.labels.clone(),
            constraints: d.constraints.clone(),
        }
    }
}
