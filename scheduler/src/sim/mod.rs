//! Deterministic simulation of a whole cluster in one thread: raft drivers,
//! storage that loses unsynced writes, the state machine and the expiry
//! controller's logic, over a faulty in-memory network, with virtual time
//! and one seeded RNG. After every step the invariants in [`invariants`] are
//! checked; a run ends with a liveness phase that heals everything and
//! requires the cluster to converge and serve.
//!
//! A failing seed reproduces exactly: the driver's own randomness is pinned
//! (`election_spread = 1`, per-member election timeouts instead), snapshots
//! are taken inline, and nothing reads the wall clock.
//!
//! Hydra's side runs the real planner (`charter_hydra::plan::due` over the
//! leader's `Cron.Plan` reply) for job `j0`.
//!
//! Limitations: a step is one raft tick (10 virtual ms) for every member at
//! once.
//!
//! Over 500 lines: the simulation (a test-only feature): the cluster, its workload and its fault menu; invariants, network, store and membership are files of their own.

pub mod invariants;
mod membership;
pub mod net;
pub mod store;

use crate::clock::{Clock, ManualClock};
use crate::raft_driver::{Driver, Input, MemberConfig, MemberHandle, Role};
use crate::state::{
    Amp, Applied, Command, Constraint, CronFire, JobDef, LeaseSpec, Outcome, PoolOffer, Prefer,
    Proposal, Resources, TaskReport, TaskSpec, TaskState,
};
use crate::transport::Report;
use crate::{Error, Result};
use charter_config::deployment::DeployStep;
use invariants::{History, MemberView};
use net::{Envelope, Net, SimTransport};
use raft::eraftpb::MessageType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use store::{Durable, SimStore};
use tokio::sync::oneshot;

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed; the same seed gives the same run.
    pub seed: u64,
    /// Cluster size (3 or 5).
    pub members: usize,
    /// Steps of the fault phase.
    pub steps: u64,
    /// Most steps the liveness phase may take.
    pub liveness_steps: u64,
}

impl SimConfig {
    /// Defaults for `seed`.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            members: if seed.is_multiple_of(4) { 5 } else { 3 },
            steps: 600,
            liveness_steps: 3000,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Faults injected (drops, duplicates, delays, partitions, crashes, clock steps).
    pub faults: u64,
    /// Requests acknowledged to clients.
    pub acknowledged: usize,
    /// Highest term reached.
    pub max_term: u64,
    /// Steps the liveness phase needed.
    pub liveness_steps: u64,
    /// Members that joined while the run went on (conf changes applied).
    pub joined: u64,
    /// Members removed while the run went on.
    pub removed: u64,
}

type Reply = oneshot::Receiver<Result<Outcome>>;

struct Member {
    id: u64,
    cfg: MemberConfig,
    durable: Arc<Mutex<Durable>>,
    clock: Arc<ManualClock>,
    node: Option<(Driver<SimStore, SimTransport>, MemberHandle)>,
    /// Seen in the state's membership at least once.
    joined: bool,
    /// Its removal was applied: stopped for good.
    removed: bool,
}

struct Request {
    key: String,
    cmd: Command,
    reply: Option<Reply>,
    retry_at: u64,
}

/// A simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    net: Arc<Mutex<Net>>,
    members: Vec<Member>,
    step: u64,
    history: History,
    requests: Vec<Request>,
    acked: BTreeMap<String, Outcome>,
    /// Acknowledged cron decisions: `(job, tick) -> (task, fired_at)`.
    acked_runs: invariants::hydra::Acked,
    /// A tick acknowledged twice with different outcomes.
    cron_violation: Option<String>,
    /// The jobs cron applies use.
    cron_jobs: Vec<JobDef>,
    /// The simulated Hydra found nothing left to propose at its last look.
    cron_caught_up: bool,
    next_key: u64,
    report: SimReport,
    /// The members as of the highest applied index seen: `(index, ids)`.
    known_members: (u64, std::collections::BTreeSet<u64>),
    /// Message fault rates for this run (per mille).
    drop_pm: u32,
    dup_pm: u32,
    delay_pm: u32,
}

const EPOCH: i64 = 1_800_000_000_000;

fn ms_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Sim {
    /// A fresh cluster for `cfg`.
    pub fn new(cfg: SimConfig) -> Result<Sim> {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let net = Arc::new(Mutex::new(Net::default()));
        let peers: BTreeMap<u64, String> = (1..=cfg.members as u64)
            .map(|id| (id, format!("sim-{id}")))
            .collect();
        let mut members = Vec::new();
        for id in 1..=cfg.members as u64 {
            let mut mc = MemberConfig::new(id, peers.clone());
            // Distinct, fixed election timeouts stand in for raft-rs's RNG.
            mc.election_tick = 10 + 4 * (id as usize - 1);
            mc.election_spread = 1;
            mc.heartbeat_tick = 2;
            mc.snapshot_entries = rng.random_range(20..80);
            mc.background_snapshots = false;
            members.push(Member {
                id,
                cfg: mc,
                durable: Arc::new(Mutex::new(Durable::default())),
                clock: Arc::new(ManualClock::new(EPOCH)),
                node: None,
                joined: true,
                removed: false,
            });
        }
        let cfg_members = cfg.members as u64;
        let mut sim = Sim {
            drop_pm: rng.random_range(0..100),
            dup_pm: rng.random_range(0..50),
            delay_pm: rng.random_range(0..200),
            cfg,
            rng,
            net,
            members,
            step: 0,
            history: History::default(),
            requests: Vec::new(),
            acked: BTreeMap::new(),
            acked_runs: BTreeMap::new(),
            cron_violation: None,
            cron_jobs: sim_cron_jobs(),
            cron_caught_up: false,
            next_key: 0,
            report: SimReport::default(),
            known_members: (0, (1..=cfg_members).collect()),
        };
        for i in 0..sim.members.len() {
            sim.start(i)?;
        }
        Ok(sim)
    }

    fn start(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let store = SimStore::recover(m.durable.clone())?;
        let transport = SimTransport {
            from: m.id,
            net: self.net.clone(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let clock: Arc<dyn Clock> = m.clock.clone();
        let (driver, handle) = Driver::new(
            m.cfg.clone(),
            store,
            transport,
            clock,
            tx,
            rx,
            self.cfg.seed ^ m.id,
        )?;
        m.node = Some((driver, handle));
        Ok(())
    }

    fn up(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].node.is_some())
            .collect()
    }

    fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    fn leader(&self) -> Option<usize> {
        self.up().into_iter().find(|i| {
            self.members[*i]
                .node
                .as_ref()
                .is_some_and(|(_, h)| h.status().role == Role::Leader)
        })
    }

    fn inject_fault(&mut self) {
        let n = self.members.len();
        match self.rng.random_range(0..100) {
            0..=2 => {
                let i = self.rng.random_range(0..n);
                let id = self.members[i].id;
                let ids = self.ids();
                if let Ok(mut net) = self.net.lock() {
                    net.isolate(id, &ids);
                }
                self.report.faults += 1;
            }
            3..=4 => {
                // A one-way cut: `a` can no longer reach `b`.
                let a = self.rng.random_range(1..=n as u64);
                let b = self.rng.random_range(1..=n as u64);
                if a != b
                    && let Ok(mut net) = self.net.lock()
                {
                    net.blocked.insert((a, b));
                    self.report.faults += 1;
                }
            }
            5..=8 => {
                if let Ok(mut net) = self.net.lock() {
                    net.blocked.clear();
                }
            }
            9..=10 => {
                // Crash: whatever was not synced is lost with the process.
                let up = self.up();
                if up.len() > 1 {
                    let i = up[self.rng.random_range(0..up.len())];
                    self.members[i].node = None;
                    self.report.faults += 1;
                }
            }
            11..=14 => {
                let down: Vec<usize> = (0..n)
                    .filter(|i| self.members[*i].node.is_none() && !self.members[*i].removed)
                    .collect();
                if let Some(&i) = down.first() {
                    // Restart failures surface as a failed run below.
                    let _ = self.start(i);
                }
            }
            15 => {
                let i = self.rng.random_range(0..n);
                let jump = self.rng.random_range(-5_000..5_000);
                self.members[i].clock.advance(jump);
                self.report.faults += 1;
            }
            16 if self.rng.random_ratio(1, 3) && self.add_member() => self.report.faults += 1,
            17 if self.rng.random_ratio(1, 3) && self.remove_member() => self.report.faults += 1,
            _ => {}
        }
    }

    /// A deployer command: the app applied, triggers with repeated
    /// deliveries and commits, step reports for any deployment and step
    /// (stale, repeated, failed), and task submissions, as controllers on
    /// old and new leaders would send them.
    fn deploy_command(&mut self) -> Command {
        let commits = ["a", "b", "c"].map(|c| c.repeat(40));
        // Mostly about a running deployment and its current step, as the
        // leader's deployer sends them; otherwise any id and any step.
        let running: Vec<(u64, DeployStep)> = self
            .leader()
            .and_then(|l| self.members[l].node.as_ref())
            .map(|(_, h)| {
                h.read(|s| {
                    s.apps
                        .deployments
                        .values()
                        .filter(|d| d.status == charter_config::deployment::DeployStatus::Running)
                        .map(|d| (d.id, d.step()))
                        .collect()
                })
            })
            .unwrap_or_default();
        let (some_deployment, step) = if !running.is_empty() && self.rng.random_ratio(3, 4) {
            running[self.rng.random_range(0..running.len())]
        } else {
            (self.rng.random_range(1..(self.next_key / 40).max(2)), {
                let steps = DeployStep::ALL;
                steps[self.rng.random_range(0..steps.len())]
            })
        };
        match self.rng.random_range(0..10) {
            0 => Command::AppApply {
                config: Box::new((&sim_app()).into()),
                version: "v1".into(),
            },
            1..=3 => Command::DeployTrigger {
                app: "app0".into(),
                commit: commits[self.rng.random_range(0..3)].clone(),
                trigger: charter_config::deployment::Trigger::Webhook,
                delivery: format!("d{}", self.rng.random_range(0..30)),
            },
            4..=7 => Command::DeployStep(crate::state::StepReport {
                id: some_deployment,
                step,
                failed: self.rng.random_ratio(1, 8),
                message: "sim".into(),
                commit: commits[self.rng.random_range(0..3)].clone(),
                artifact: "f".repeat(64),
                build_log: String::new(),
                behind: self.rng.random_ratio(1, 16),
            }),
            _ => Command::DeploySubmit {
                id: some_deployment,
                step: if matches!(step, DeployStep::Build | DeployStep::Lease) {
                    step
                } else {
                    [DeployStep::Build, DeployStep::Lease][self.rng.random_range(0..2)]
                },
                tasks: (0..self.rng.random_range(1..3))
                    .map(|_| {
                        (
                            LeaseSpec::simple(
                                Resources {
                                    cpu_millis: 500,
                                    ..Resources::default()
                                },
                                self.rng.random_range(500..3000),
                            ),
                            TaskSpec {
                                amp: Amp::Service,
                                command: vec!["./app".into()],
                                ..TaskSpec::default()
                            },
                        )
                    })
                    .collect(),
            },
        }
    }

    /// A lock command: mutexes `l0`, `l1` and a semaphore `l2` of 3,
    /// acquired with short TTLs and waits, renewed and released by id.
    fn lock_command(&mut self) -> Command {
        let id = self.rng.random_range(1..(self.next_key / 8).max(2));
        match self.rng.random_range(0..6) {
            0..=2 => {
                let n = self.rng.random_range(0..3);
                Command::AcquireLock(crate::state::LockSpec {
                    name: format!("l{n}"),
                    ttl_ms: self.rng.random_range(1_000..3_000),
                    limit: if n == 2 { 3 } else { 1 },
                    wait_ms: [0, 500, 5_000, crate::state::locks::WAIT_FOREVER_MS]
                        [self.rng.random_range(0..4)],
                    holder: "sim".into(),
                    value: format!("v{id}"),
                })
            }
            3..=4 => Command::RenewLock { id },
            _ => Command::ReleaseLock { id },
        }
    }

    fn new_request(&mut self) {
        let key = format!("k{}", self.next_key);
        self.next_key += 1;
        let some_lease = self.rng.random_range(1..(self.next_key / 2).max(2));
        let cmd = match self.rng.random_range(0..25) {
            20..=21 => self.deploy_command(),
            22..=24 => self.lock_command(),
            0..=4 => Command::RegisterNode {
                name: format!("n{}", self.rng.random_range(0..4)),
                capacity: Resources {
                    cpu_millis: self.rng.random_range(1..5) * 1000,
                    memory_bytes: 8 << 30,
                    gpus: self.rng.random_range(0..4),
                    ..Resources::default()
                },
                labels: [(
                    "zone".to_string(),
                    format!("z{}", self.rng.random_range(0..2)),
                )]
                .into(),
                pool: "sim".into(),
                cost_per_hour: f64::from(self.rng.random_range(1..4u32)),
                ttl_ms: [None, Some(2_000), Some(5_000)][self.rng.random_range(0..3)],
                agent: None,
            },
            5..=13 => {
                let duration_ms = self.rng.random_range(50..3000);
                let mut spec = LeaseSpec::simple(
                    Resources {
                        cpu_millis: self.rng.random_range(1..8) * 250,
                        gpus: [0, 0, 1, 2][self.rng.random_range(0..4)],
                        ..Resources::default()
                    },
                    duration_ms,
                );
                spec.count = self.rng.random_range(1..3);
                spec.max_total_ms = duration_ms * self.rng.random_range(1..4);
                spec.priority = self.rng.random_range(-1..2);
                spec.wait_ms = [0, 0, 500, 5000][self.rng.random_range(0..4)];
                spec.prefer = [Prefer::Binpack, Prefer::Spread, Prefer::Cheapest]
                    [self.rng.random_range(0..3)];
                if self.rng.random_range(0..4) == 0 {
                    spec.constraints.push(Constraint::eq("zone", "z0"));
                }
                if self.rng.random_range(0..4) == 0 {
                    spec.max_cost_per_hour = Some(2.0);
                }
                if self.rng.random_range(0..6) == 0 {
                    let now = self.members[0].clock.now();
                    spec.deadline =
                        Some(now + ms_i64(duration_ms) + self.rng.random_range(0..4000));
                }
                Command::RequestLease(spec)
            }
            14..=15 => Command::ReleaseLease { id: some_lease },
            16..=17 => Command::RenewLease {
                id: some_lease,
                duration_ms: self.rng.random_range(100..3000),
            },
            18 => {
                if self.rng.random_bool(0.7) {
                    Command::Heartbeat {
                        name: format!("n{}", self.rng.random_range(0..4)),
                    }
                } else {
                    Command::RevokeLease { id: some_lease }
                }
            }
            _ => match self.rng.random_range(0..10) {
                7 => {
                    let mut jobs = self.cron_jobs.clone();
                    jobs.truncate(self.rng.random_range(1..=jobs.len()));
                    Command::CronApply {
                        version: format!("v{}", jobs.len()),
                        jobs,
                    }
                }
                8 => {
                    // Two controllers, a retry, a new leader: the same few
                    // ticks are proposed again and again, with no client key.
                    let now = self.members[0].clock.now();
                    let tick = (now / 1000 - self.rng.random_range(0..4)) * 1000;
                    // j1 only: j0 is the simulated Hydra's (see `propose_cron`).
                    sim_fire("j1", tick, self.rng.random_range(100..2000))
                }
                9 => {
                    let now = self.members[0].clock.now();
                    Command::CronSkip {
                        job: "j1".into(),
                        scheduled_at: (now / 1000 - self.rng.random_range(0..4)) * 1000,
                        reason: "sim".into(),
                    }
                }
                4 => Command::SubmitTask {
                    lease: Box::new({
                        let mut spec = LeaseSpec::simple(
                            Resources {
                                cpu_millis: self.rng.random_range(1..4) * 500,
                                ..Resources::default()
                            },
                            self.rng.random_range(100..3000),
                        );
                        spec.wait_ms = [0, 2000][self.rng.random_range(0..2)];
                        spec
                    }),
                    task: Box::new(TaskSpec {
                        amp: [Amp::Batch, Amp::Service][self.rng.random_range(0..2)],
                        command: vec!["true".into()],
                        retries: self.rng.random_range(0..2),
                        ..TaskSpec::default()
                    }),
                },
                5 => Command::ReportTask(TaskReport {
                    id: self.rng.random_range(1..(self.next_key / 8).max(2)),
                    node: format!("n{}", self.rng.random_range(0..4)),
                    state: [TaskState::Running, TaskState::Succeeded, TaskState::Failed]
                        [self.rng.random_range(0..3)],
                    exit_code: Some(self.rng.random_range(0..2)),
                    starts: 1,
                    health: crate::state::HealthState::Unchecked,
                    message: String::new(),
                    usage: None,
                    ports: Default::default(),
                    artifact: String::new(),
                }),
                6 => Command::CancelTask {
                    id: self.rng.random_range(1..(self.next_key / 8).max(2)),
                },
                0 => Command::RemoveNode {
                    name: format!("n{}", self.rng.random_range(0..4)),
                },
                1 => Command::SetPools {
                    pools: (0..self.rng.random_range(0..3))
                        .map(|i| PoolOffer {
                            name: format!("p{i}"),
                            max_nodes: self.rng.random_range(1..3),
                            capacity: Resources {
                                cpu_millis: self.rng.random_range(1..5) * 1000,
                                ..Resources::default()
                            },
                            labels: Default::default(),
                            cost_per_hour: f64::from(self.rng.random_range(0..4u32)),
                            idle_ms: 1_000,
                        })
                        .collect(),
                },
                // Ended leases leave within seconds, or after a handful:
                // retention rules fire all through a run. (Idempotency
                // keys keep their long default: acknowledged ones are
                // checked at the end.)
                2 => Command::SetRetention(crate::state::Retention {
                    history_ms: self.rng.random_range(0..5_000),
                    history_max: self.rng.random_range(1..20),
                    ..crate::state::Retention::default()
                }),
                _ => Command::SetDraining {
                    name: format!("n{}", self.rng.random_range(0..4)),
                    draining: self.rng.random_bool(0.5),
                },
            },
        };
        self.requests.push(Request {
            key,
            cmd,
            reply: None,
            retry_at: self.step,
        });
    }

    fn send_requests(&mut self) {
        let leader = self.leader();
        for r in &mut self.requests {
            if r.reply.is_some() || r.retry_at > self.step {
                continue;
            }
            // Mostly to the leader, sometimes to whoever (and get NotLeader).
            let target = match leader {
                Some(l) if self.rng.random_range(0..10) < 9 => Some(l),
                _ => {
                    let up: Vec<usize> = (0..self.members.len())
                        .filter(|i| self.members[*i].node.is_some())
                        .collect();
                    (!up.is_empty()).then(|| up[self.rng.random_range(0..up.len())])
                }
            };
            let Some(t) = target else { continue };
            let Some((_, h)) = &self.members[t].node else {
                continue;
            };
            let (reply, rx) = oneshot::channel();
            // Like the leader's placer, but sometimes stale or wrong on
            // purpose: apply must re-check and never over-commit.
            let hint = match (&r.cmd, self.rng.random_range(0..4)) {
                (Command::RequestLease(spec), 0 | 1) => {
                    h.read(|s| crate::placement::place(&s.nodes, spec).ok())
                }
                (Command::RequestLease(spec), 2) => Some(
                    (0..spec.count)
                        .map(|_| format!("n{}", self.rng.random_range(0..5)))
                        .collect(),
                ),
                _ => None,
            };
            // Hydra's decisions carry their key in the command, not as a client key.
            let unkeyed = matches!(r.cmd, Command::CronFire(_) | Command::CronSkip { .. });
            let p = Proposal {
                at: 0,
                principal: "sim".into(),
                admin: true,
                key: (!unkeyed).then(|| r.key.clone()),
                hint,
                cmd: r.cmd.clone(),
            };
            if h.send_input(Input::Propose { proposal: p, reply }).is_ok() {
                r.reply = Some(rx);
            }
        }
    }

    fn collect_replies(&mut self) {
        let step = self.step;
        let mut done = Vec::new();
        for (i, r) in self.requests.iter_mut().enumerate() {
            let Some(rx) = &mut r.reply else { continue };
            match rx.try_recv() {
                Ok(Ok(outcome)) => {
                    match (&r.cmd, &outcome) {
                        (
                            Command::CronFire(_) | Command::CronSkip { .. },
                            Ok(Applied::CronRun(run)),
                        ) => {
                            let k = (run.job.clone(), run.scheduled_at);
                            let v = (run.task, run.fired_at);
                            match self.acked_runs.get(&k) {
                                Some(first) if *first != v => {
                                    self.cron_violation = Some(format!(
                                        "tick {k:?} acknowledged as {first:?} and later as {v:?}"
                                    ));
                                }
                                Some(_) => {}
                                None => {
                                    self.acked_runs.insert(k, v);
                                }
                            }
                        }
                        (Command::CronFire(_) | Command::CronSkip { .. }, _) => {}
                        _ => {
                            self.acked.insert(r.key.clone(), outcome);
                        }
                    }
                    done.push(i);
                }
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                    // Retryable (not leader, leader changed, crashed): same key later.
                    r.reply = None;
                    r.retry_at = step + 5;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        for i in done.into_iter().rev() {
            self.requests.swap_remove(i);
        }
    }

    /// Hydra for job `j0`, as its controller does it: the leader's
    /// `Cron.Plan` reply, read by `charter_hydra::controller::view`, planned
    /// by `charter_hydra::plan::due` at the leader's clock; each decision
    /// (five per step at most) proposed as `Cron.Fire`/`Cron.Skip` would
    /// propose it, keyed only by `(job, scheduled_at)`. Returns whether
    /// nothing was left to decide.
    fn propose_cron(&mut self) -> bool {
        use charter_hydra::plan::Decision;
        let Some(l) = self.leader() else { return false };
        let now = self.members[l].clock.now();
        let Some((_, h)) = &self.members[l].node else {
            return false;
        };
        let hydra = crate::service::auth::Principal {
            name: "hydra".into(),
            admin: true,
            scope: crate::service::auth::Scope::Hydra,
        };
        let Ok(reply) = h.read(|s| crate::service::cron::plan_reply(s, &hydra, true)) else {
            return false;
        };
        let (jobs, history, _) = charter_hydra::controller::view(&reply);
        let Some(j0) = jobs.iter().find(|l| l.config.name == "j0") else {
            return true;
        };
        let at = charter_hydra::controller::millis(now);
        let due = charter_hydra::plan::due(std::slice::from_ref(&j0.job), &history, at);
        for d in due.iter().take(5) {
            let cmd = match d {
                Decision::Fire {
                    scheduled_at,
                    replaces,
                    ..
                } => {
                    let r =
                        charter_hydra::controller::fire_request(j0, *scheduled_at, false, replaces);
                    match crate::service::cron::fire_command(r) {
                        Ok(f) => Command::CronFire(f),
                        Err(e) => {
                            self.cron_violation = Some(format!("Hydra's fire does not read: {e}"));
                            return false;
                        }
                    }
                }
                Decision::Skip {
                    job,
                    scheduled_at,
                    reason,
                } => Command::CronSkip {
                    job: job.clone(),
                    scheduled_at: scheduled_at.timestamp_millis(),
                    reason: reason.clone(),
                },
            };
            let proposal = Proposal {
                at: 0,
                principal: "hydra".into(),
                admin: true,
                key: None,
                hint: None,
                cmd,
            };
            let (reply, _rx) = oneshot::channel();
            let _ = h.send_input(Input::Propose { proposal, reply });
        }
        due.is_empty()
    }

    fn propose_expiries(&mut self) {
        let Some(l) = self.leader() else { return };
        let now = self.members[l].clock.now();
        let Some((_, h)) = &self.members[l].node else {
            return;
        };
        let Some(proposal) = h.read(|s| crate::controller::tick_proposal(s, now)) else {
            return;
        };
        let (reply, _rx) = oneshot::channel();
        let _ = h.send_input(Input::Propose { proposal, reply });
    }

    fn deliver(&mut self, faults: bool) {
        let mut net = match self.net.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        net.now = self.step;
        let now = self.step;
        let mut due = Vec::new();
        let mut later = Vec::new();
        for e in net.in_flight.drain(..) {
            if e.at <= now {
                due.push(e);
            } else {
                later.push(e);
            }
        }
        net.in_flight = later;
        // Reorder what is due, then drop, delay or duplicate some of it.
        for i in (1..due.len()).rev() {
            if faults {
                let j = self.rng.random_range(0..=i);
                due.swap(i, j);
            }
        }
        let mut deliver = Vec::new();
        let mut lost = Vec::new();
        for e in due {
            if net.is_blocked(e.from, e.to) {
                lost.push(e);
                continue;
            }
            if faults {
                let r = self.rng.random_range(0..1000);
                if r < self.drop_pm {
                    self.report.faults += 1;
                    lost.push(e);
                    continue;
                }
                if r < self.drop_pm + self.delay_pm {
                    let mut e = e;
                    e.at = now + self.rng.random_range(1..20);
                    net.in_flight.push(e);
                    self.report.faults += 1;
                    continue;
                }
                if r < self.drop_pm + self.delay_pm + self.dup_pm {
                    let mut d = e.clone();
                    d.at = now + self.rng.random_range(1..10);
                    net.in_flight.push(d);
                    self.report.faults += 1;
                }
            }
            deliver.push(e);
        }
        drop(net);
        // Like the gRPC transport, tell the sender how a snapshot fared.
        let report = |members: &[Member], e: &Envelope, ok: bool| {
            if e.msg.get_msg_type() == MessageType::MsgSnapshot
                && let Some((_, h)) = members
                    .iter()
                    .find(|m| m.id == e.from)
                    .and_then(|m| m.node.as_ref())
            {
                let _ = h.send_input(Input::Report(Report::Snapshot(e.to, ok)));
            }
        };
        for e in &lost {
            report(&self.members, e, false);
        }
        for e in deliver {
            let target = self
                .members
                .iter()
                .find(|m| m.id == e.to)
                .and_then(|m| m.node.as_ref());
            match target {
                Some((_, h)) => {
                    report(&self.members, &e, true);
                    let _ = h.step(e.msg);
                }
                None => report(&self.members, &e, false),
            }
        }
    }

    /// One step: time passes, faults, client traffic, delivery, ticks, Ready.
    fn run_step(&mut self, faults: bool) -> std::result::Result<(), String> {
        self.step += 1;
        for m in &self.members {
            m.clock.advance(10);
        }
        if faults {
            self.inject_fault();
        }
        if self.rng.random_range(0..3) == 0 {
            self.new_request();
        }
        self.send_requests();
        if self.step.is_multiple_of(5) {
            self.propose_expiries();
        }
        if self.step.is_multiple_of(3) {
            self.cron_caught_up = self.propose_cron();
        }
        self.deliver(faults);
        for m in &mut self.members {
            if let Some((d, _)) = &mut m.node {
                d.tick();
                d.turn()
                    .map_err(|e| format!("member {} failed: {e}", m.id))?;
            }
        }
        self.collect_replies();
        self.retire_removed();
        let views = views(&self.members);
        for v in &views {
            self.report.max_term = self.report.max_term.max(v.term);
        }
        let step = self.step;
        if let Some(v) = &self.cron_violation {
            return Err(format!("step {step}: {v}"));
        }
        invariants::check_all(&mut self.history, &views)
            .and_then(|()| invariants::hydra::check(&views))
            .map_err(|e| format!("step {step}: {e}"))
    }

    /// Views of the members the state names (joiners whose addition
    /// never committed left out).
    fn member_views(&self) -> Vec<MemberView<'_>> {
        let members = self.membership();
        views(&self.members)
            .into_iter()
            .filter(|v| members.contains(&v.id))
            .collect()
    }

    /// Runs the fault phase, then heals and requires liveness.
    pub fn run(mut self) -> std::result::Result<SimReport, String> {
        for _ in 0..self.cfg.steps {
            self.run_step(true)?;
        }
        // Liveness: heal the network, restart everyone, let requests finish.
        if let Ok(mut net) = self.net.lock() {
            net.blocked.clear();
        }
        for i in 0..self.members.len() {
            if self.members[i].node.is_none() && !self.members[i].removed {
                self.start(i)
                    .map_err(|e| format!("restart of member {} failed: {e}", i + 1))?;
            }
        }
        let healed_at = self.step;
        loop {
            self.run_step(false)?;
            let quiet = self.requests.is_empty();
            let views = self.member_views();
            let converged = !views.is_empty()
                && views.len() == self.membership().len()
                && views
                    .iter()
                    .all(|v| v.applied == views[0].applied && v.applied == v.commit)
                && views.iter().any(|v| v.role == Role::Leader);
            if quiet && converged && self.cron_caught_up && self.step - healed_at > 20 {
                break;
            }
            if self.step - healed_at > self.cfg.liveness_steps {
                return Err(format!(
                    "no convergence {} steps after healing: {} requests pending {:?}, members {:?} of {:?}, applied {:?}",
                    self.cfg.liveness_steps,
                    self.requests.len(),
                    self.requests
                        .iter()
                        .map(|r| format!("{:?}", r.cmd).chars().take(80).collect::<String>())
                        .collect::<Vec<_>>(),
                    self.members
                        .iter()
                        .map(|m| (m.id, m.node.is_some(), m.joined, m.removed))
                        .collect::<Vec<_>>(),
                    self.membership(),
                    views
                        .iter()
                        .map(|v| (v.id, v.role.as_str(), v.applied, v.commit))
                        .collect::<Vec<_>>()
                ));
            }
        }
        self.report.liveness_steps = self.step - healed_at;
        let views = self.member_views();
        invariants::acknowledged::check(&self.acked, &views)?;
        invariants::hydra::check_acked(&self.acked_runs, &views)?;
        invariants::hydra::check_every_tick(&views)?;
        self.report.acknowledged = self.acked.len();
        Ok(self.report)
    }
}

/// A scheduled fire of `job`'s tick whose task runs `true` for `ms`.
fn sim_fire(job: &str, tick: i64, ms: u64) -> Command {
    let mut lease = LeaseSpec::simple(
        Resources {
            cpu_millis: 250,
            ..Resources::default()
        },
        ms,
    );
    lease.wait_ms = 1000;
    Command::CronFire(CronFire {
        job: job.into(),
        scheduled_at: tick,
        manual: false,
        replaces: Vec::new(),
        lease: Box::new(lease),
        task: Box::new(TaskSpec {
            command: vec!["true".into()],
            ..TaskSpec::default()
        }),
    })
}

/// The app the simulation deploys.
fn sim_app() -> charter_config::app::AppConfig {
    charter_config::app::AppConfig {
        name: "app0".into(),
        repo: "/srv/git/app0".into(),
        branch: "main".into(),
        servers: 2,
        progress_deadline_ms: 60_000,
        poll_ms: 0,
        secret: "s".into(),
        fingerprint: charter_config::app::DEFAULT_FINGERPRINT.into(),
        keep: 2,
        build: charter_config::app::BuildConfig {
            command: vec!["make".into()],
            artifact: "app".into(),
            cpu_millis: 500,
            memory_bytes: 1 << 20,
            timeout_ms: 60_000,
        },
        run: charter_config::app::RunConfig {
            command: vec!["./app".into()],
            ports: vec!["http".into()],
            env: Default::default(),
            secret_env: Default::default(),
        },
        health: charter_config::app::AppHealth {
            kind: charter_config::spec::CheckKind::Tcp,
            path: String::new(),
            status: 200,
            interval_ms: 500,
            timeout_ms: 500,
            min_healthy_ms: 0,
        },
        requirements: Default::default(),
    }
}

/// Two per-second jobs for the cron commands the simulation proposes.
fn sim_cron_jobs() -> Vec<JobDef> {
    let text = "[[job]]\nname = \"j0\"\nschedule = \"* * * * * *\"\n[job.task]\ncommand = [\"true\"]\nfor = \"1s\"\n\n\
                [[job]]\nname = \"j1\"\nschedule = \"* * * * * *\"\n[job.task]\ncommand = [\"true\"]\nfor = \"1s\"\n";
    match charter_config::load_with("sim.toml", text, &|_, _| Ok(())) {
        Ok(charter_config::AnyConfig::Cron(c)) => c
            .jobs
            .into_iter()
            .map(|config| JobDef {
                config: (&config).into(),
                owner: "sim".into(),
            })
            .collect(),
        // A fixed text that reads: nothing else can happen.
        other => panic!("the simulation's crontab does not read: {other:?}"),
    }
}

fn views(members: &[Member]) -> Vec<MemberView<'_>> {
    members
        .iter()
        .filter_map(|m| {
            let (d, h) = m.node.as_ref()?;
            let st = h.status();
            Some(MemberView {
                id: m.id,
                role: st.role,
                term: st.term,
                commit: st.commit,
                applied: d.applied(),
                state: h.read(|s| s.clone()),
                store: d.store(),
                events: h.events().clone(),
            })
        })
        .collect()
}

/// Runs one seed; on failure the error names the command that replays it.
pub fn run_seed(seed: u64) -> std::result::Result<SimReport, String> {
    let sim = Sim::new(SimConfig::new(seed)).map_err(|e: Error| e.to_string())?;
    sim.run().map_err(|e| {
        format!("seed {seed} failed: {e}\nreplay: CHARTER_SIM_SEED={seed} cargo test -p charter-scheduler --test sim -- --nocapture")
    })
}
