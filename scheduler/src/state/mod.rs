//! The replicated state machine. Every member applies the same committed
//! [`Proposal`]s in the same order and so holds the same [`State`].
//!
//! The state is made of rooms, each owning its data (and what it derives
//! from it) in a module of its own:
//!
//! | room | type | owns |
//! | --- | --- | --- |
//! | nodes | [`Fleet`] (`crate::fleet`) | nodes, heartbeat deadlines, pools, placement's indexes |
//! | leases | [`leases::Leases`] | leases, expiry order, the queue, timeouts, price steps, quotas, per-principal counts |
//! | tasks | [`tasks::Tasks`] | tasks and the lease each runs in |
//! | cron | [`cron::Cron`] | applied jobs and decided ticks |
//! | apps | [`apps::Apps`] | the deployer's apps and deployments |
//! | locks | [`locks::Locks`] | locks, their acquisitions and when each is due |
//! | keys | [`retention::Keys`] | idempotency outcomes and their order |
//! | members | [`Members`] | raft members and the newest applied term |
//!
//! [`State::apply`] is the one entry: it brings the time forward, lets go
//! of what the retention rules release, applies what fell due, and routes
//! the command to the room that owns it. Commands that touch more than one
//! room (a grant takes node capacity; a lost node loses its leases and
//! their tasks; a deployment submits tasks) are written in the owning
//! room's module as `impl State` and name each room they change. A snapshot
//! stores the rooms flat ([`snapshot::Stored`]), so how rooms are arranged
//! never changes what a snapshot means.
//!
//! Invariants, at every applied index:
//! - a node's allocated resources are the sum of its granted leases' resources,
//!   and never exceed its capacity;
//! - fencing tokens strictly increase with every grant, of a lease or of a
//!   lock ([`locks`]);
//! - a lock has at most `limit` holders, and no acquisition, held or
//!   waiting, outlives its `expires_at` (or a waiter its `wait_until`);
//! - a pending request is in the queue, a granted lease in the expiry index,
//!   and an ended one in neither; placement's node indexes say what the
//!   nodes say;
//! - a proposal whose idempotency key was already applied (and is still
//!   kept) changes nothing and returns that request's outcome;
//! - nothing live (a pending or granted lease, a task not ended, a running
//!   deployment) is ever trimmed: only ended things leave, by the rules of
//!   [`retention`].
//!
//! `apply` is deterministic: no clock, no randomness, no IO. Time comes in the
//! proposal (`at`, stamped by the leader) and state time is `max(previous, at)`.
//!
//! The large collections are persistent maps (`imbl`): cloning the state for
//! a snapshot is O(1) and shares structure, so the raft thread never stalls
//! copying it.
//!
//! Limitations: placement runs inside `apply` (so it is trivially consistent);
//! the leader places with an overlay of its in-flight grants and `apply`
//! re-checks its hint. The queue is first-fit in priority order (a large
//! request can be passed by smaller ones).
//!
//! Over 500 lines: the Command, Proposal, Applied and Refusal types every room speaks, and apply.

mod apps;
pub mod audit;
mod cron;
pub mod defs;
pub mod events;
mod leases;
pub mod locks;
mod nodes;
pub mod retention;
pub mod snapshot;
mod tasks;
mod types;

pub use apps::{App, StepReport, full_commit};
pub use cron::{CronFire, CronJob, CronRun, JobChange, JobDef, RUNS_KEPT, RunState, Runs};
pub use events::{Event, EventKind, KindFilter};
pub use locks::{HoldState, Lock, LockHold, LockSpec};
pub use retention::{KeyOutcome, Retention, Trimmed};
pub use tasks::TaskReport;

pub use charter_config::constraint::{Constraint, Op, version_cmp};
pub use types::*;

pub use crate::fleet::{
    AgentEndpoint, Fleet, LabelIndex, Node, NodeIndexes, NodeKey, PoolOffer, node_indexes,
    node_key, price_key,
};

use imbl::OrdMap;
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
        /// Heartbeat TTL (agents); `None` for records without an agent.
        #[serde(default)]
        ttl_ms: Option<u64>,
        /// Where its agent serves logs, if it has one.
        #[serde(default)]
        agent: Option<AgentEndpoint>,
    },
    /// A node's agent is alive; a down node comes back.
    Heartbeat {
        /// The node.
        name: String,
    },
    /// Sets a principal's limits (`*` is everyone's default). Admin only.
    SetQuota {
        /// The principal, or `*`.
        principal: String,
        /// Its limits.
        quota: Quota,
    },
    /// Stops (or resumes) new grants on a node; its leases stay. Admin only.
    SetDraining {
        /// The node.
        name: String,
        /// Drain (true) or undrain (false).
        draining: bool,
    },
    /// Asks for a lease: granted now, queued, or refused.
    RequestLease(LeaseSpec),
    /// Ends a granted lease early, or cancels a pending one.
    ReleaseLease {
        /// The lease id.
        id: u64,
    },
    /// Extends a granted lease to `now + duration_ms`, up to its max total.
    RenewLease {
        /// The lease id.
        id: u64,
        /// How long from now.
        duration_ms: u64,
    },
    /// Ends a lease at once, whoever holds it. Admin only.
    RevokeLease {
        /// The lease id.
        id: u64,
    },
    /// Removes a node that holds no live lease (a retired pool node, or a
    /// machine taken out of service). Admin only.
    RemoveNode {
        /// The node.
        name: String,
    },
    /// Asks for a one-node lease and binds a task to it.
    SubmitTask {
        /// The lease the task runs in.
        lease: Box<LeaseSpec>,
        /// What to run.
        task: Box<TaskSpec>,
    },
    /// An agent's word on a task it runs. Admin (agent) only.
    ReportTask(TaskReport),
    /// Ends a task and releases its lease.
    CancelTask {
        /// The task id.
        id: u64,
    },
    /// Replaces the pools that can grow (the leader's server config). Admin only.
    SetPools {
        /// Every pool with a provisioner.
        pools: Vec<PoolOffer>,
    },
    /// Applies a cron file as one version: its jobs are added or changed,
    /// and the applier's jobs the file no longer has are deleted.
    CronApply {
        /// The file's fingerprint.
        version: String,
        /// Every job of the file.
        jobs: Vec<JobDef>,
    },
    /// Fires a cron tick (or a manual run) keyed by `(job, scheduled_at)`.
    CronFire(CronFire),
    /// Records a cron tick as skipped, keyed by `(job, scheduled_at)`. Admin only.
    CronSkip {
        /// The job.
        job: String,
        /// The tick.
        scheduled_at: Millis,
        /// Why.
        reason: String,
    },
    /// Pauses or resumes a cron job.
    CronPause {
        /// The job.
        job: String,
        /// Pause (true) or resume (false).
        paused: bool,
    },
    /// Deletes a cron job; its history stays.
    CronDelete {
        /// The job.
        job: String,
    },
    /// Registers or updates an app for the deployer.
    AppApply {
        /// Its validated definition, as the log keeps it.
        config: Box<defs::AppDefinition>,
        /// The content hash of the definition.
        version: String,
    },
    /// Starts a deployment of an app's commit.
    DeployTrigger {
        /// The app.
        app: String,
        /// The commit, full, abbreviated or empty (the branch head).
        commit: String,
        /// What started it.
        trigger: charter_config::deployment::Trigger,
        /// The webhook's delivery id, deduplicated.
        delivery: String,
    },
    /// The deployer's report on a deployment's current step.
    DeployStep(StepReport),
    /// The build task or the servers' tasks of a deployment's current step.
    DeploySubmit {
        /// The deployment.
        id: u64,
        /// `build` or `lease`.
        step: charter_config::deployment::DeployStep,
        /// One lease and task each.
        tasks: Vec<(LeaseSpec, TaskSpec)>,
    },
    /// Sets the retention rules (the leader's config). Admin only.
    SetRetention(Retention),
    /// Takes a named lock (or a place in its line).
    AcquireLock(LockSpec),
    /// Keeps a lock acquisition (held or waiting) alive for another TTL.
    RenewLock {
        /// The acquisition's id.
        id: u64,
    },
    /// Lets go of a lock acquisition, or leaves its line.
    ReleaseLock {
        /// The acquisition's id.
        id: u64,
    },
    /// Applies every time-based change due at the proposal's time: leases
    /// expire, queued requests time out, nodes that missed their heartbeat go
    /// down, and the queue is granted what fits. Every command does this
    /// first; the leader proposes `Tick` when [`State::next_due`] has passed
    /// and nothing else brought the time forward.
    Tick,
    /// A call a member refused before it reached the log (a non-admin's
    /// admin call), logged only so that the audit shows it: it changes
    /// nothing and is refused again in `apply`.
    Refused {
        /// What was asked, as the CLI says it (`node drain`).
        command: String,
        /// What it was about (`node n1`).
        target: String,
        /// Why it was refused.
        reason: String,
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
    /// For lease requests: the nodes the leader placed it on. `apply` checks
    /// them in O(count) and falls back to placing itself when they no longer fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<Vec<String>>,
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
    /// What a tick changed.
    Ticked {
        /// Leases that expired.
        expired: Vec<u64>,
        /// Queued requests that gave up.
        timed_out: Vec<u64>,
        /// Queued requests granted.
        granted: Vec<u64>,
        /// Nodes that missed their heartbeat.
        #[serde(default)]
        down: Vec<String>,
        /// Leases lost with those nodes.
        #[serde(default)]
        lost: Vec<u64>,
    },
    /// A task and its lease after the change.
    Task {
        /// The task.
        task: Box<Task>,
        /// Its lease.
        lease: Box<Lease>,
    },
    /// The pools in force after the change.
    Pools {
        /// Every pool with a provisioner.
        pools: Vec<PoolOffer>,
    },
    /// What a cron apply changed.
    CronApplied {
        /// Per job.
        changes: Vec<JobChange>,
    },
    /// A cron job after the change.
    CronJob(Box<CronJob>),
    /// A cron run: new, or as it was already decided.
    CronRun(Box<CronRun>),
    /// An app after an apply, and what changed: added, changed, unchanged.
    AppApplied {
        /// The app.
        app: Box<App>,
        /// What the apply changed.
        change: charter_config::deployment::AppChange,
    },
    /// A deployment after a deployer command (none when a trigger's
    /// delivery was seen before).
    Deploy {
        /// The deployment.
        deployment: Option<Box<charter_config::deployment::Deployment>>,
        /// Whether this command started it.
        started: bool,
        /// Why nothing started.
        reason: String,
    },
    /// The retention rules in force after the change.
    Retention(Retention),
    /// A lock acquisition after the change.
    Hold(Box<LockHold>),
    /// A principal's limits after the change.
    Quota {
        /// The principal, or `*`.
        principal: String,
        /// Its limits.
        quota: Quota,
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
    /// The lease has already ended, or is not in a state that allows this.
    #[error("lease {id} is {state}")]
    Ended {
        /// The lease id.
        id: u64,
        /// Its state.
        state: LeaseState,
    },
    /// A retried request's lease or task has ended and left the live
    /// state since the first answer (its idempotency key is still kept).
    #[error(
        "{what} {id} (this request's result) has ended and left the live state; `charter {what} show {id}` reads it from history"
    )]
    Gone {
        /// `lease` or `task`.
        what: String,
        /// Its id.
        id: u64,
    },
    /// The principal may not do this, or a quota forbids it.
    #[error("{reason}")]
    Denied {
        /// Why.
        reason: String,
    },
    /// The object's own limit is reached (a lease at its max total):
    /// nobody's permission would change that.
    #[error("{reason}")]
    Limit {
        /// Why, and what to do instead.
        reason: String,
    },
}

/// The whole replicated state: its rooms, each owning its data, and what
/// they share (the time, the fencing sequence, the retention rules).
/// Stored in snapshots as [`snapshot::Stored`], whose shape is the format's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "snapshot::Stored", into = "snapshot::Stored")]
pub struct State {
    /// State time: the largest `at` applied so far.
    pub time: Millis,
    /// Nodes, their heartbeats, the pools and placement's indexes.
    pub nodes: Fleet,
    /// Leases, the queue, quotas and what each principal holds.
    pub leases: leases::Leases,
    /// Tasks and the lease each runs in.
    pub tasks: tasks::Tasks,
    /// Cron jobs and their decided ticks.
    pub cron: cron::Cron,
    /// The deployer's apps and their deployments.
    pub apps: apps::Apps,
    /// Locks and their acquisitions.
    pub locks: locks::Locks,
    /// Idempotency outcomes.
    pub keys: retention::Keys,
    /// Raft members and the term of the newest applied entry.
    pub members: Members,
    /// The last fencing token handed out (to a lease or a lock); the next
    /// grant gets a larger one.
    pub fencing_token: u64,
    /// The retention rules in force.
    pub retention: Retention,
    /// What left the live state since the member last took it
    /// ([`State::take_trimmed`]); not part of the state's identity.
    pub trimmed: Outbox,
    /// Events noted since the member last took them
    /// ([`State::take_events`]); not part of the state's identity.
    pub events: events::EventBox,
}

/// The members room: raft members and their peer addresses, changed by
/// conf-change entries (what it dereferences to), and the term of the
/// newest applied entry (see [`State::observe_term`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Members {
    /// Members by id.
    pub ids: BTreeMap<u64, String>,
    /// The raft term of the newest applied entry.
    pub term: u64,
}

room_map!(Members, ids: BTreeMap<u64, String>);

/// Objects on their way from the live state to a member's history store.
/// Two states are equal whatever their outboxes hold.
#[derive(Clone, Debug, Default)]
pub struct Outbox(pub Vec<Trimmed>);

impl PartialEq for Outbox {
    fn eq(&self, _: &Outbox) -> bool {
        true
    }
}

impl Outbox {
    /// Adds one object.
    pub fn push(&mut self, t: Trimmed) {
        self.0.push(t);
    }
}

impl State {
    /// A fresh state with the bootstrap members.
    pub fn new(members: BTreeMap<u64, String>) -> State {
        let mut s = State::default();
        s.leases.next_id = 1;
        s.tasks.next_id = 1;
        s.members.ids = members;
        s
    }

    /// Applies one proposal. Deterministic: the same state and proposal give
    /// the same result on every member.
    ///
    /// Over 80 lines: the router: one arm per command.
    pub fn apply(&mut self, p: &Proposal) -> Outcome {
        self.time = self.time.max(p.at);
        // What the retention rules let go leaves first, then whatever fell
        // due by now happens, whichever command brought the time: no lease
        // is ever granted past its expiry in any state.
        self.trim();
        let due = match self.next_due() {
            Some(at) if at <= self.time => Some(self.tick()),
            _ => None,
        };
        let key = p
            .key
            .as_ref()
            .map(|k| retention::principal_key_id(&p.principal, k));
        if let Some(k) = key
            && let Some(first) = self.replay(k)
        {
            return first;
        }
        let out = match &p.cmd {
            Command::RegisterNode {
                name,
                capacity,
                labels,
                pool,
                cost_per_hour,
                ttl_ms,
                agent,
            } => self.register_node(
                name,
                capacity,
                labels,
                pool,
                *cost_per_hour,
                (*ttl_ms, agent.as_ref()),
            ),
            Command::Heartbeat { name } => self.heartbeat(name),
            Command::SetQuota { principal, quota } => self.set_quota(principal, quota, p.admin),
            Command::SetDraining { name, draining } => self.set_draining(name, *draining, p.admin),
            Command::RequestLease(spec) => {
                self.request_lease(&p.principal, spec, p.hint.as_deref())
            }
            Command::ReleaseLease { id } => self.release_lease(*id, &p.principal, p.admin),
            Command::RenewLease { id, duration_ms } => {
                self.renew_lease(*id, &p.principal, p.admin, *duration_ms)
            }
            Command::RevokeLease { id } => self.revoke_lease(*id, p.admin),
            Command::RemoveNode { name } => self.remove_node(name, p.admin),
            Command::SubmitTask { lease, task } => self.submit_task(&p.principal, lease, task),
            Command::ReportTask(r) => self.task_report(r, p.admin),
            Command::CancelTask { id } => self.cancel_task(*id, &p.principal, p.admin),
            Command::SetPools { pools } => self.set_pools(pools, p.admin),
            Command::CronApply { version, jobs } => {
                self.cron_apply(&p.principal, p.admin, version, jobs)
            }
            Command::CronFire(f) => self.cron_fire(&p.principal, p.admin, f),
            Command::CronSkip {
                job,
                scheduled_at,
                reason,
            } => self.cron_skip(job, *scheduled_at, reason, p.admin),
            Command::CronPause { job, paused } => {
                self.cron_set_paused(job, *paused, &p.principal, p.admin)
            }
            Command::CronDelete { job } => self.cron_delete(job, &p.principal, p.admin),
            Command::AppApply { config, version } => {
                self.app_apply(&p.principal, p.admin, config, version)
            }
            Command::DeployTrigger {
                app,
                commit,
                trigger,
                delivery,
            } => self.deploy_trigger(&p.principal, p.admin, (app, commit, *trigger, delivery)),
            Command::DeployStep(step) => self.deploy_step(p.admin, step),
            Command::DeploySubmit { id, step, tasks } => {
                self.deploy_submit(p.admin, *id, *step, tasks)
            }
            Command::SetRetention(r) => self.set_retention(*r, p.admin),
            Command::AcquireLock(spec) => self.acquire_lock(&p.principal, spec),
            Command::RenewLock { id } => self.renew_lock(*id, &p.principal, p.admin),
            Command::ReleaseLock { id } => self.release_lock(*id, &p.principal, p.admin),
            Command::Tick => Ok(due.unwrap_or_else(|| self.tick())),
            Command::Refused { reason, .. } => Err(Refusal::Denied {
                reason: reason.clone(),
            }),
        };
        if let Some(k) = key {
            self.remember(k, &out);
        }
        // And again after: the counts hold after every apply.
        self.trim();
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

    /// Serialises the state for a snapshot ([`crate::codec`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::encode(crate::codec::Kind::Snapshot, self)
    }

    /// Writes what [`State::to_bytes`] makes into `out` as it goes, so a
    /// snapshot is never whole in memory.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        charter_config::codec::encode_to(crate::codec::Kind::Snapshot, self, out)
            .map_err(std::io::Error::other)
    }

    /// Reads a snapshot's state, in any format version this member knows.
    pub fn from_bytes(b: &[u8]) -> Result<State, crate::codec::CodecError> {
        let mut s: State = crate::codec::decode_stored(crate::codec::Kind::Snapshot, b)?;
        s.rebuild_index();
        Ok(s)
    }

    /// Recomputes the derived indexes ([`State::by_free`], `by_price`,
    /// `by_label`, `ended`,
    /// `key_times`, `held`) after loading, or after a test or benchmark
    /// filled the maps directly. Outcomes of an older snapshot's
    /// `applied_keys` are kept as applied now.
    pub fn rebuild_index(&mut self) {
        self.nodes.rebuild_index();
        for (k, out) in std::mem::take(&mut self.keys.legacy) {
            self.keys
                .all
                .insert(retention::key_id(&k), (self.time, KeyOutcome::of(&out)));
        }
        self.keys.times = self.keys.all.iter().map(|(k, (at, _))| (*at, *k)).collect();
        self.leases.ended = self
            .leases
            .all
            .values()
            .filter_map(|l| Some((l.ended_at?, l.id)))
            .filter(|(_, id)| !self.pinned(*id))
            .collect();
        self.leases.held = OrdMap::new();
        let live: Vec<(String, LeaseSpec)> = self
            .leases
            .all
            .values()
            .filter(|l| !l.state.is_ended())
            .map(|l| (l.principal.clone(), l.spec.clone()))
            .collect();
        for (principal, spec) in live {
            self.hold(&principal, &spec, true);
        }
        self.locks.hold_due = self.locks.holds.values().map(|h| (h.due(), h.id)).collect();
        let holders: Vec<String> = self
            .locks
            .holds
            .values()
            .map(|h| h.principal.clone())
            .collect();
        for principal in holders {
            self.count_lock(&principal, true);
        }
    }

    /// Counts a lease in (or out of) its principal's live leases.
    pub(super) fn hold(&mut self, principal: &str, spec: &LeaseSpec, add: bool) {
        let cpu = spec.resources.cpu_millis * u64::from(spec.count.max(1));
        self.leases.count(principal, cpu, add);
    }

    /// Puts `r` in force. Admin only.
    fn set_retention(&mut self, r: Retention, admin: bool) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: "retention rules are the servers' config (an admin token)".into(),
            });
        }
        self.retention = r;
        self.trim();
        Ok(Applied::Retention(r))
    }
}

#[cfg(test)]
mod tests;
