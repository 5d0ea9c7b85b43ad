//! The replicated state machine. Every member applies the same committed
//! [`Proposal`]s in the same order and so holds the same [`State`].
//!
//! Invariants, at every applied index:
//! - a node's allocated resources are the sum of its granted leases' resources,
//!   and never exceed its capacity;
//! - fencing tokens strictly increase with every grant, of a lease or of a
//!   lock ([`locks`]);
//! - a lock has at most `limit` holders, and no acquisition, held or
//!   waiting, outlives its `expires_at` (or a waiter its `wait_until`);
//! - a pending request is in the queue, a granted lease in the expiry index,
//!   and an ended one in neither; placement's node indexes (`by_free`,
//!   `by_price`, `by_label`) say what the nodes say;
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
//! with very large fleets the leader should place with an overlay of its
//! in-flight grants and `apply` only re-check. The queue is first-fit in
//! priority order (a large request can be passed by smaller ones).

mod apps;
pub mod audit;
mod cron;
pub mod events;
mod leases;
pub mod locks;
mod nodes;
pub mod retention;
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

use imbl::{OrdMap, OrdSet};
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
        /// Its validated definition.
        config: Box<charter_config::app::AppConfig>,
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

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// State time: the largest `at` applied so far.
    pub time: Millis,
    /// Nodes by name.
    pub nodes: OrdMap<String, Node>,
    /// Leases by id, live and ended.
    pub leases: OrdMap<u64, Lease>,
    /// Granted leases ordered by expiry: `(expires_at, id)`.
    pub expiries: OrdSet<(Millis, u64)>,
    /// The queue: `(-priority, requested_at, id)` of pending requests.
    pub queue: OrdSet<(i64, Millis, u64)>,
    /// Pending requests ordered by when they give up: `(wait_until, id)`.
    pub timeouts: OrdSet<(Millis, u64)>,
    /// Pending deadline requests ordered by when they start taking any price.
    #[serde(default)]
    pub price_steps: OrdSet<(Millis, u64)>,
    /// Nodes with a heartbeat TTL ordered by when they are due: `(last_seen + ttl, name)`.
    #[serde(default)]
    pub heartbeats: OrdSet<(Millis, String)>,
    /// Limits by principal; `*` is the default.
    #[serde(default)]
    pub quotas: OrdMap<String, Quota>,
    /// Pools that can grow, by name.
    #[serde(default)]
    pub pools: OrdMap<String, PoolOffer>,
    /// Tasks by id, live and ended.
    #[serde(default)]
    pub tasks: OrdMap<u64, Task>,
    /// The task bound to each lease that has one.
    #[serde(default)]
    pub lease_tasks: OrdMap<u64, u64>,
    /// Applied cron jobs by name.
    #[serde(default)]
    pub cron_jobs: OrdMap<String, CronJob>,
    /// Decided cron ticks, per job by scheduled time.
    #[serde(default)]
    pub cron_runs: Runs,
    /// The deployer's apps by name.
    #[serde(default)]
    pub apps: OrdMap<String, App>,
    /// Deployments by id.
    #[serde(default)]
    pub deployments: OrdMap<u64, charter_config::deployment::Deployment>,
    /// The id the next deployment gets.
    #[serde(default)]
    pub next_deploy_id: u64,
    /// The fingerprint of the newest applied cron file.
    #[serde(default)]
    pub cron_version: String,
    /// The id the next task gets.
    #[serde(default)]
    pub next_task_id: u64,
    /// The id the next lease gets.
    pub next_lease_id: u64,
    /// The last fencing token handed out; the next grant gets a larger one.
    pub fencing_token: u64,
    /// Idempotency outcomes by [`retention::key_id`] of `principal/key`,
    /// with when they were applied.
    #[serde(default)]
    pub keys: OrdMap<u128, (Millis, KeyOutcome)>,
    /// First outcomes by `principal/key`, as states before retention kept
    /// them: read from an older snapshot into `keys`, never written.
    #[serde(default, skip_serializing)]
    pub applied_keys: OrdMap<String, Outcome>,
    /// The retention rules in force.
    #[serde(default)]
    pub retention: Retention,
    /// Locks someone holds or waits for, by name.
    #[serde(default)]
    pub locks: OrdMap<String, Lock>,
    /// Live lock acquisitions (held or waiting) by id.
    #[serde(default)]
    pub holds: OrdMap<u64, LockHold>,
    /// Live acquisitions by when they next expire or give up: `(due, id)`
    /// (derived from `holds`, rebuilt on load).
    #[serde(skip)]
    pub hold_due: OrdSet<(Millis, u64)>,
    /// The id the next lock acquisition gets.
    #[serde(default)]
    pub next_hold_id: u64,
    /// Raft members and their peer addresses, changed by conf-change entries.
    pub members: BTreeMap<u64, String>,
    /// The raft term of the newest applied entry (see [`State::observe_term`]).
    #[serde(default)]
    pub term: u64,
    /// Ready nodes by free CPU, `(free cpu_millis, name)`: derived from
    /// `nodes` (not serialised; rebuilt on load) so placement finds the
    /// tightest or loosest fit without scanning the fleet.
    #[serde(skip)]
    pub by_free: OrdSet<(u64, String)>,
    /// Ready nodes by price, then free CPU: `(price_key(cost), free, name)`
    /// (derived), so `--prefer cheapest` walks from the cheapest fit.
    #[serde(skip)]
    pub by_price: OrdSet<(u64, u64, String)>,
    /// Ready nodes with each label `(key, value)`, in both orders
    /// (derived): a constraint `key=value` met by few nodes walks those.
    #[serde(skip)]
    pub by_label: OrdMap<(String, String), LabelIndex>,
    /// Ended leases by `(ended_at, id)`: the order they leave in (derived
    /// from `leases`, rebuilt on load).
    #[serde(skip)]
    pub ended: OrdSet<(Millis, u64)>,
    /// Idempotency outcomes by `(applied at, key)` (derived from `keys`).
    #[serde(skip)]
    pub key_times: OrdSet<(Millis, u128)>,
    /// Live (pending or granted) leases per principal: how many, and their
    /// CPU in millicores, for quotas in O(1) (derived from `leases`).
    #[serde(skip)]
    pub held: OrdMap<String, (u64, u64)>,
    /// What left the live state since the member last took it
    /// ([`State::take_trimmed`]); not part of the state's identity.
    #[serde(skip)]
    pub trimmed: Outbox,
    /// Events noted since the member last took them
    /// ([`State::take_events`]); not part of the state's identity.
    #[serde(skip)]
    pub events: events::EventBox,
}

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

/// A node's key in [`State::by_free`]: only ready nodes take grants.
pub fn free_key(n: &Node) -> Option<(u64, String)> {
    (n.state == NodeState::Ready).then(|| (n.free().cpu_millis, n.name.clone()))
}

/// `cost` as a key that sorts as [`f64::total_cmp`] does.
pub fn price_key(cost: f64) -> u64 {
    let b = cost.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

/// The ready nodes that carry one label value, in the two orders placement
/// walks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelIndex {
    /// `(free cpu_millis, name)`.
    pub by_free: OrdSet<(u64, String)>,
    /// `(price_key(cost), free cpu_millis, name)`.
    pub by_price: OrdSet<(u64, u64, String)>,
}

/// A ready node's entries in the placement indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKey {
    free: u64,
    name: String,
    price: u64,
    labels: Vec<(String, String)>,
}

/// A node's [`NodeKey`]: only ready nodes take grants.
pub fn node_key(n: &Node) -> Option<NodeKey> {
    (n.state == NodeState::Ready).then(|| NodeKey {
        free: n.free().cpu_millis,
        name: n.name.clone(),
        price: price_key(n.cost_per_hour),
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// Placement's indexes of a fleet, as [`State`] keeps them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeIndexes {
    /// See [`State::by_free`].
    pub by_free: OrdSet<(u64, String)>,
    /// See [`State::by_price`].
    pub by_price: OrdSet<(u64, u64, String)>,
    /// See [`State::by_label`].
    pub by_label: OrdMap<(String, String), LabelIndex>,
}

/// The placement indexes of `nodes`, built from scratch.
pub fn node_indexes<'a>(nodes: impl Iterator<Item = &'a Node>) -> NodeIndexes {
    let mut ix = NodeIndexes::default();
    for k in nodes.filter_map(node_key) {
        ix.index(k, true);
    }
    ix
}

impl NodeIndexes {
    /// Adds (or removes) a node's entries.
    fn index(&mut self, k: NodeKey, add: bool) {
        let by_free = (k.free, k.name.clone());
        let by_price = (k.price, k.free, k.name.clone());
        if add {
            self.by_free.insert(by_free.clone());
            self.by_price.insert(by_price.clone());
        } else {
            self.by_free.remove(&by_free);
            self.by_price.remove(&by_price);
        }
        for label in k.labels {
            if add {
                let ix = self.by_label.entry(label).or_default();
                ix.by_free.insert(by_free.clone());
                ix.by_price.insert(by_price.clone());
            } else if let Some(ix) = self.by_label.get_mut(&label) {
                ix.by_free.remove(&by_free);
                ix.by_price.remove(&by_price);
                if ix.by_free.is_empty() {
                    self.by_label.remove(&label);
                }
            }
        }
    }
}

impl State {
    /// A fresh state with the bootstrap members.
    pub fn new(members: BTreeMap<u64, String>) -> State {
        State {
            next_lease_id: 1,
            next_task_id: 1,
            members,
            ..State::default()
        }
    }

    /// Applies one proposal. Deterministic: the same state and proposal give
    /// the same result on every member.
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
        let ix = node_indexes(self.nodes.values());
        (self.by_free, self.by_price, self.by_label) = (ix.by_free, ix.by_price, ix.by_label);
        for (k, out) in std::mem::take(&mut self.applied_keys) {
            self.keys
                .insert(retention::key_id(&k), (self.time, KeyOutcome::of(&out)));
        }
        self.key_times = self.keys.iter().map(|(k, (at, _))| (*at, *k)).collect();
        self.ended = self
            .leases
            .values()
            .filter_map(|l| Some((l.ended_at?, l.id)))
            .filter(|(_, id)| !self.pinned(*id))
            .collect();
        self.held = OrdMap::new();
        let live: Vec<(String, LeaseSpec)> = self
            .leases
            .values()
            .filter(|l| !l.state.is_ended())
            .map(|l| (l.principal.clone(), l.spec.clone()))
            .collect();
        for (principal, spec) in live {
            self.hold(&principal, &spec, true);
        }
        self.hold_due = self.holds.values().map(|h| (h.due(), h.id)).collect();
        let holders: Vec<String> = self.holds.values().map(|h| h.principal.clone()).collect();
        for principal in holders {
            self.count_lock(&principal, true);
        }
    }

    /// Counts a lease in (or out of) its principal's live leases.
    pub(super) fn hold(&mut self, principal: &str, spec: &LeaseSpec, add: bool) {
        let cpu = spec.resources.cpu_millis * u64::from(spec.count.max(1));
        let e = self.held.entry(principal.to_string()).or_default();
        if add {
            *e = (e.0 + 1, e.1 + cpu);
        } else {
            *e = (e.0.saturating_sub(1), e.1.saturating_sub(cpu));
        }
        if *e == (0, 0) {
            self.held.remove(principal);
        }
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

    /// Moves a node's entries in the placement indexes ([`State::by_free`],
    /// [`State::by_price`], [`State::by_label`]) from `old` to `new`.
    fn reindex(&mut self, old: Option<NodeKey>, new: Option<NodeKey>) {
        if old != new {
            if let Some(o) = old {
                self.index_node(o, false);
            }
            if let Some(n) = new {
                self.index_node(n, true);
            }
        }
    }

    /// Adds (or removes) a node's entries in the placement indexes.
    fn index_node(&mut self, k: NodeKey, add: bool) {
        let mut ix = NodeIndexes {
            by_free: std::mem::take(&mut self.by_free),
            by_price: std::mem::take(&mut self.by_price),
            by_label: std::mem::take(&mut self.by_label),
        };
        ix.index(k, add);
        (self.by_free, self.by_price, self.by_label) = (ix.by_free, ix.by_price, ix.by_label);
    }

    /// A node's current placement key, if it takes grants.
    fn key_of(&self, name: &str) -> Option<NodeKey> {
        self.nodes.get(name).and_then(node_key)
    }
}

#[cfg(test)]
mod tests;
