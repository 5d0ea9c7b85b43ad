//! The supervisor: turns the node's assignments into running leases and
//! makes sure nothing of a lease outlives it.
//!
//! Each assigned lease gets a runner (one tokio task) that owns its
//! sandbox and its task's processes. The runner ends the lease on its own
//! clock: SIGTERM at `expires_at − grace`, SIGKILL at `expires_at` (grace
//! is the task's, default 10 s, capped at a quarter of the lease), so the
//! lease ends on time even when the agent is cut off from the servers. A
//! lease that disappears from the assignments (released, revoked, its task
//! cancelled) is stopped the same way, starting now.
//!
//! Each runner gives its lease an identity ([`crate::users`]) and a
//! sandbox made for it, and starts the task's processes as that user with
//! stdout and stderr going straight to the task's log files.
//!
//! Exactly once: a runner is started once per lease for the agent's life
//! (a lease whose runner finished is remembered). A task's command runs
//! under a small `sh` wrapper that writes its exit code to
//! `SANDBOX/.charter-exit-TASK`, in the process's own session, so it survives
//! an agent restart. A restarted agent, on its first assignments:
//! - adopts a lease whose processes still run (waits for them, then reads
//!   the exit file) instead of starting the task again, with the uid its
//!   sandbox belongs to, and resumes its health checks;
//! - reports a task whose exit file is there but was never reported;
//! - kills the processes and removes the sandboxes of leases no longer
//!   assigned.
//!
//! Over 500 lines: a lease's life on the agent (sandbox, start, wait, fence, end) and its task's work, which call each other.

use crate::amp::{Amp, Next};
use crate::logs;
use crate::sandbox::{self, Isolation, Launch, Scope};
use crate::users::{self, Identity, Users};
use charter_config::spec::TaskSpec;
use charter_config::states::{HealthState, TaskState};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// How often a running task's resource usage is sampled and reported.
pub const USAGE_EVERY: Duration = Duration::from_secs(5);

/// How often a running task's log files are checked for rotation.
pub const LOGS_EVERY: Duration = Duration::from_secs(1);

/// The default grace between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);

/// A lease as the agent needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseInfo {
    /// Id.
    pub id: u64,
    /// Who holds it (decides the user its processes run as).
    pub principal: String,
    /// When it was granted (ms since the epoch).
    pub granted_at: i64,
    /// When it ends (ms since the epoch).
    pub expires_at: i64,
    /// How long one grant or renewal lasts, in ms (0: unknown).
    pub duration_ms: u64,
    /// Its fencing token.
    pub fencing_token: u64,
    /// CPU per node, in millicores.
    pub cpu_millis: u64,
    /// Memory per node, in bytes.
    pub memory_bytes: u64,
    /// The GPU indices it holds on this node.
    pub gpus: Vec<u32>,
}

/// A task as the agent needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskInfo {
    /// Id.
    pub id: u64,
    /// What to run.
    pub spec: TaskSpec,
    /// The servers' view of its state.
    pub state: TaskState,
    /// Processes started so far, per the servers.
    pub starts: u32,
    /// The ports picked for it earlier, per the servers (kept across restarts).
    pub picked: BTreeMap<String, u16>,
}

/// A report for the servers.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The task.
    pub task: u64,
    /// Its state: running, restarting, succeeded, failed.
    pub state: TaskState,
    /// The last exit code.
    pub exit_code: Option<i32>,
    /// Processes started so far.
    pub starts: u32,
    /// A service's health.
    pub health: HealthState,
    /// A note.
    pub message: String,
    /// The ports picked for it, by name.
    pub ports: BTreeMap<String, u16>,
    /// The sha256 of the artifact stored.
    pub artifact: String,
}

/// The leases with a live sandbox here, and who their processes run as.
pub type Sandboxed = Arc<Mutex<BTreeMap<u64, (LeaseInfo, Option<Identity>)>>>;

/// The agent's host as every lease's runner sees it: its data directory,
/// node, servers, isolation, users, and the channels reports go out on.
#[derive(Clone)]
pub struct Host {
    /// The agent's data directory.
    pub data: PathBuf,
    /// Where the leases' sandboxes are ([`sandbox::root`]).
    pub sandboxes: PathBuf,
    /// Who leases run as.
    pub users: Arc<Users>,
    /// The node's name.
    pub node: String,
    /// How processes are limited.
    pub iso: Isolation,
    /// Where reports go.
    pub reports: mpsc::UnboundedSender<Report>,
    /// Where resource samples go: `(task, (rss bytes, cpu ms))`, sent to the
    /// members apart from reports (telemetry is not replicated).
    pub usage: mpsc::UnboundedSender<(u64, (u64, u64))>,
    /// Tasks whose processes run now (for `logs --follow`).
    pub running: Arc<Mutex<BTreeSet<u64>>>,
    /// Leases with a live sandbox here, and who their processes run as
    /// (for `lease exec`).
    pub leases: Sandboxed,
    /// Assigned leases whose processes an earlier life of the agent left
    /// running (found once, at the first assignments).
    pub leftovers: Arc<Mutex<BTreeSet<u64>>>,
    /// The servers, for artifacts (none in unit tests).
    pub servers: Option<Arc<charter_proto::conn::Servers>>,
    /// How long a fencing agent lets processes stop after SIGTERM
    /// ([`charter_config::liveness::fence_grace_ms`]).
    pub fence_grace: Duration,
}

struct Runner {
    expires: watch::Sender<i64>,
    stop: watch::Sender<bool>,
    fence: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// Runs the node's leases.
pub struct Supervisor {
    ctx: Host,
    runners: BTreeMap<u64, Runner>,
    /// Leases whose runner has finished: never started again.
    finished: BTreeSet<u64>,
    first: bool,
    /// Set while the agent has fenced itself: nothing new starts.
    fenced: bool,
}

/// Milliseconds since the epoch on this machine's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn until(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms - now_ms()).unwrap_or(0))
}

impl Supervisor {
    /// A supervisor with nothing running yet.
    pub fn new(ctx: Host) -> Supervisor {
        Supervisor {
            ctx,
            runners: BTreeMap::new(),
            finished: BTreeSet::new(),
            first: true,
            fenced: false,
        }
    }

    /// Brings the running leases in line with `assigned`.
    pub fn apply(&mut self, assigned: Vec<(LeaseInfo, Option<TaskInfo>)>) {
        let wanted: BTreeSet<u64> = assigned.iter().map(|(l, _)| l.id).collect();
        if std::mem::take(&mut self.first) {
            self.clean_leftovers(&wanted);
        }
        for (lease, task) in assigned {
            if let Some(r) = self.runners.get(&lease.id) {
                r.expires.send_if_modified(|e| {
                    let changed = *e != lease.expires_at;
                    *e = lease.expires_at;
                    changed
                });
                continue;
            }
            // A fenced agent starts nothing: the servers may already have
            // placed the work elsewhere (a list from a lagging member).
            if self.fenced || self.finished.contains(&lease.id) || lease.expires_at <= now_ms() {
                continue;
            }
            let (expires, expires_rx) = watch::channel(lease.expires_at);
            let (stop, stop_rx) = watch::channel(false);
            let (fence, fence_rx) = watch::channel(false);
            let ctx = self.ctx.clone();
            let handle = tokio::spawn(run_lease(
                ctx,
                lease.clone(),
                task,
                expires_rx,
                (stop_rx, fence_rx),
            ));
            self.runners.insert(
                lease.id,
                Runner {
                    expires,
                    stop,
                    fence,
                    handle,
                },
            );
        }
        for (id, r) in &self.runners {
            if !wanted.contains(id) {
                let _ = r.stop.send(true);
            }
        }
        // Forget finished runners; leases gone from the assignments are
        // forgotten entirely.
        let done: Vec<u64> = self
            .runners
            .iter()
            .filter(|(_, r)| r.handle.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.runners.remove(&id);
            self.finished.insert(id);
        }
        self.finished.retain(|id| wanted.contains(id));
    }

    /// Kills what an earlier life of this agent left of leases that are no
    /// longer assigned, and removes their sandboxes.
    fn clean_leftovers(&self, wanted: &BTreeSet<u64>) {
        let scope = |lease: u64, uid: Option<u32>| Scope {
            agent: self.ctx.data.clone(),
            lease,
            uid: uid.filter(|u| self.ctx.users.dynamic_uid(*u)),
        };
        for id in sandbox::leases_with_processes(&self.ctx.data) {
            if wanted.contains(&id) {
                if let Ok(mut l) = self.ctx.leftovers.lock() {
                    l.insert(id);
                }
            } else {
                let n = sandbox::kill_all(&scope(id, None), &self.ctx.iso);
                tracing::info!(
                    lease = id,
                    processes = n,
                    "killed the leftovers of an ended lease"
                );
            }
        }
        if let Ok(dir) = std::fs::read_dir(&self.ctx.sandboxes) {
            for e in dir.flatten() {
                let id = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok());
                if let Some(id) = id.filter(|id| !wanted.contains(id)) {
                    // A process of its uid that scrubbed its environment.
                    sandbox::kill_all(&scope(id, users::owner(&e.path())), &self.ctx.iso);
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Fences the node: no heartbeat was answered for the TTL, so the
    /// servers may soon place its work elsewhere. Every lease's processes
    /// stop (SIGTERM, the fence grace, SIGKILL); the leases' sandboxes
    /// stay, and nothing starts until [`Supervisor::unfence`].
    pub fn fence(&mut self) {
        self.fenced = true;
        for r in self.runners.values() {
            let _ = r.fence.send(true);
        }
    }

    /// Whether the node is fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Ends a fence once a heartbeat was answered: the leases the servers
    /// still hold on the node (`live`, from that answer) go on, and their
    /// tasks are treated as exited (a service starts again, a batch task
    /// is retried or reported failed); every other lease is stopped.
    pub fn unfence(&mut self, live: &BTreeSet<u64>) {
        self.fenced = false;
        for (id, r) in &self.runners {
            if live.contains(id) {
                let _ = r.fence.send(false);
            } else {
                let _ = r.stop.send(true);
            }
        }
    }

    /// Stops every lease now: SIGTERM, its grace, SIGKILL (the agent is stopping).
    pub async fn stop_all(&mut self) {
        for r in self.runners.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in std::mem::take(&mut self.runners) {
            let _ = r.handle.await;
        }
    }
}

/// How a runner's wait ended.
enum Wake {
    Exited(Option<i32>),
    Fence(bool),
    Term,
    Kill,
    Stop,
}

/// Over 80 lines: one select loop over every event of a lease; its arms call out to functions.
async fn run_lease(
    ctx: Host,
    lease: LeaseInfo,
    task: Option<TaskInfo>,
    mut expires: watch::Receiver<i64>,
    (mut stop, mut fence): (watch::Receiver<bool>, watch::Receiver<bool>),
) {
    let dir = sandbox::lease_dir(&ctx.sandboxes, lease.id);
    let Some(user) = sandbox_for(&ctx, &lease, task.as_ref(), &dir) else {
        return;
    };
    let env = task
        .as_ref()
        .map(|t| t.spec.env.clone())
        .unwrap_or_default();
    let launch = launch_for((&ctx.data, &ctx.sandboxes, &ctx.node), &lease, user, env);
    let scope = &launch.scope;
    if let Ok(mut l) = ctx.leases.lock() {
        l.insert(lease.id, (lease.clone(), user));
    }
    let mut work = task.clone().map(|t| Work::new(&ctx, lease.id, t));
    let mut termed = false;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + LOGS_EVERY, LOGS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled = tokio::time::Instant::now();
    loop {
        let exp = *expires.borrow();
        let grace = grace_of(&lease, task.as_ref());
        let term_at = exp - grace.as_millis() as i64;
        // What to wait for now.
        let wake = tokio::select! {
            code = async {
                match work.as_mut() {
                    Some(w) => w.step(&launch).await,
                    None => std::future::pending().await,
                }
            } => Wake::Exited(code),
            _ = ticks.tick() => {
                if let Some(w) = work.as_mut().filter(|w| w.child.is_some() || w.adopted) {
                    w.trim_logs();
                    if sampled.elapsed() >= USAGE_EVERY {
                        sampled = tokio::time::Instant::now();
                        w.sample(scope);
                    }
                }
                continue;
            },
            _ = tokio::time::sleep(until(term_at)), if !termed => Wake::Term,
            _ = tokio::time::sleep(until(exp)) => Wake::Kill,
            r = stop.changed() => if r.is_err() || *stop.borrow() { Wake::Stop } else { continue },
            r = fence.changed() => match r {
                Ok(()) => Wake::Fence(*fence.borrow_and_update()),
                Err(_) => Wake::Stop,
            },
            r = expires.changed() => {
                if r.is_err() {
                    Wake::Stop
                } else {
                    termed = false;
                    let e = *expires.borrow();
                    if let Ok(mut l) = ctx.leases.lock() && let Some(x) = l.get_mut(&lease.id) {
                        x.0.expires_at = e;
                    }
                    continue;
                }
            },
        };
        match wake {
            Wake::Exited(code) => {
                if let Some(w) = work.as_mut() {
                    w.exited(code, &launch).await;
                }
            }
            Wake::Fence(true) => fenced(&ctx, work.as_mut(), scope, grace).await,
            Wake::Fence(false) => {
                tracing::info!(
                    lease = lease.id,
                    "the servers answer again and still hold the lease: it goes on"
                );
                if let Some(w) = work.as_mut() {
                    w.stopping = false;
                    if w.fenced {
                        w.exited(None, &launch).await;
                    }
                }
            }
            Wake::Term => {
                termed = true;
                tracing::info!(lease = lease.id, "lease ends soon: SIGTERM");
                if let Some(w) = work.as_mut() {
                    w.stopping = true;
                }
                sandbox::term_all(scope);
            }
            Wake::Kill => {
                if let Some(w) = work.as_mut() {
                    w.stopping = true;
                }
                let n = sandbox::kill_all(scope, &ctx.iso);
                crate::metrics::METRICS
                    .kill_lateness
                    .observe((now_ms() - exp).max(0) as f64 / 1000.0);
                tracing::info!(lease = lease.id, killed = n, "lease expired");
                break;
            }
            Wake::Stop => {
                if let Some(w) = work.as_mut() {
                    w.stopping = true;
                }
                let until = (now_ms() + grace.as_millis() as i64).min(exp);
                match stop_processes(scope, &ctx.iso, until).await {
                    None => sandbox::release_cgroup(lease.id, &ctx.iso),
                    Some(n) => tracing::info!(lease = lease.id, killed = n, "lease ended"),
                }
                break;
            }
        }
    }
    if let Ok(mut l) = ctx.leases.lock() {
        l.remove(&lease.id);
    }
    if let Some(w) = work.as_mut() {
        w.reap().await;
        ctx.running.lock().map(|mut r| r.remove(&w.task.id)).ok();
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Nothing of the lease runs any more: its uid may serve another.
    ctx.users.release(lease.id);
}

/// Between SIGTERM and SIGKILL at the lease's end: the task's grace (or the
/// default), at most a quarter of one grant. Renewals move the end, not the
/// grace, so a lease renewed at half its time is never signalled (also when
/// a restarted agent adopts it long after it was first granted).
fn grace_of(lease: &LeaseInfo, task: Option<&TaskInfo>) -> Duration {
    let g = task
        .map(|t| t.spec.grace_ms)
        .filter(|g| *g > 0)
        .map_or(GRACE, Duration::from_millis);
    let granted = match lease.duration_ms {
        0 => u64::try_from(lease.expires_at - lease.granted_at).unwrap_or(0),
        d => d,
    };
    g.min(Duration::from_millis(granted / 4))
}

/// How a process of `lease` starts on this node (`data`, `sandboxes`,
/// `node`): in its sandbox, as its user, within its resources, with `env`
/// beside the lease's own variables. A task and `lease exec` both start so.
pub(crate) fn launch_for(
    (data, sandboxes, node): (&Path, &Path, &str),
    lease: &LeaseInfo,
    user: Option<Identity>,
    env: BTreeMap<String, String>,
) -> Launch {
    Launch {
        scope: Scope {
            agent: data.to_path_buf(),
            lease: lease.id,
            uid: user.filter(|u| u.dynamic).map(|u| u.uid),
        },
        node: node.to_string(),
        expires_at: lease.expires_at,
        fencing_token: lease.fencing_token,
        dir: sandbox::lease_dir(sandboxes, lease.id),
        user,
        cpu_millis: lease.cpu_millis,
        memory_bytes: lease.memory_bytes,
        gpus: lease.gpus.clone(),
        env,
    }
}

/// No heartbeat was answered for the node's TTL: the lease's processes are
/// stopped (SIGTERM, SIGKILL after the fence grace) and nothing starts until
/// the servers answer; the task's next exit says it was fenced.
async fn fenced(ctx: &Host, mut work: Option<&mut Work>, scope: &Scope, grace: Duration) {
    if let Some(w) = work.as_deref_mut() {
        w.stopping = true;
        w.next_start = None;
    }
    let until = now_ms() + grace.min(ctx.fence_grace).as_millis() as i64;
    let killed = stop_processes(scope, &ctx.iso, until).await.unwrap_or(0);
    if let Some(w) = work {
        let had = w.child.is_some() || w.adopted;
        w.reap().await;
        w.adopted = false;
        if had {
            w.fenced = true;
            ctx.running.lock().map(|mut r| r.remove(&w.task.id)).ok();
        }
    }
    tracing::warn!(
        lease = scope.lease,
        killed,
        "fenced: no heartbeat was answered for the node's TTL, so the lease's processes are stopped until the servers answer"
    );
}

/// Stops a lease's processes: SIGTERM, then SIGKILL to whatever is left at
/// `until` (ms since the epoch); how many were killed. `None` when nothing
/// was running (one look at /proc: the common end of a finished task).
async fn stop_processes(scope: &Scope, iso: &Isolation, until: i64) -> Option<usize> {
    if sandbox::term_all(scope) == 0 {
        return None;
    }
    while now_ms() < until && !sandbox::lease_pids(scope).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(sandbox::kill_all(scope, iso))
}

/// The lease's identity and its sandbox, made for it. `None` (reported on
/// its task) when either cannot be had; `Some(None)` means "as the agent".
fn sandbox_for(
    ctx: &Host,
    lease: &LeaseInfo,
    task: Option<&TaskInfo>,
    dir: &std::path::Path,
) -> Option<Option<Identity>> {
    let made = ctx
        .users
        .assign(
            lease.id,
            &lease.principal,
            users::owner(dir),
            users::uid_busy,
        )
        .and_then(|user| {
            sandbox::prepare(dir, user)
                .map(|()| user)
                .map_err(|e| format!("cannot make the sandbox {}: {e}", dir.display()))
        });
    match made {
        Ok(user) => Some(user),
        Err(e) => {
            tracing::warn!(lease = lease.id, error = %e, "the lease cannot run here");
            if let Some(t) = task {
                let _ = ctx.reports.send(Report {
                    task: t.id,
                    state: TaskState::Failed,
                    exit_code: None,
                    starts: t.starts,
                    health: HealthState::Unchecked,
                    message: e,
                    ports: BTreeMap::new(),
                    artifact: String::new(),
                });
            }
            ctx.users.release(lease.id);
            None
        }
    }
}

/// A task's processes within its lease.
struct Work {
    ctx: Host,
    task: TaskInfo,
    lease: u64,
    child: Option<tokio::process::Child>,
    /// Processes from an earlier life of the agent: waited for by marker.
    adopted: bool,
    starts: u32,
    /// When the next start is due (ms); `None`: nothing to start.
    next_start: Option<i64>,
    stopping: bool,
    health: Option<crate::health::Monitor>,
    amp: Box<dyn Amp>,
    /// Its named ports: the servers' record, or picked here.
    ports: BTreeMap<String, u16>,
    /// Its process was stopped by a fence: the next exit says so.
    fenced: bool,
}

impl Work {
    fn new(ctx: &Host, lease: u64, task: TaskInfo) -> Work {
        let amp = crate::amp::for_task(&task);
        let mut w = Work {
            ctx: ctx.clone(),
            lease,
            starts: task.starts,
            task,
            child: None,
            adopted: false,
            next_start: None,
            stopping: false,
            health: None,
            amp,
            ports: BTreeMap::new(),
            fenced: false,
        };
        if w.task.state.is_ended() {
            return w;
        }
        let exit_file = w.exit_file();
        let left = ctx.leftovers.lock().is_ok_and(|l| l.contains(&lease));
        let started = matches!(w.task.state, TaskState::Running | TaskState::Restarting);
        let earlier = started || exit_file.exists() || left;
        if earlier {
            // An earlier life of this agent started it: never start it twice.
            w.adopted = true;
            if let Ok(mut r) = ctx.running.lock() {
                r.insert(w.task.id);
            }
            tracing::info!(
                task = w.task.id,
                lease,
                "adopting a task started before this agent restarted"
            );
        } else {
            w.next_start = Some(now_ms());
        }
        w.ports = if w.task.picked.is_empty() && !w.adopted {
            pick_ports(&w.task.spec.ports)
        } else {
            w.task.picked.clone()
        };
        w
    }

    fn logs(&self) -> PathBuf {
        logs::task_dir(&self.ctx.data, self.task.id)
    }

    fn report(&self, state: TaskState, exit_code: Option<i32>, message: String) {
        self.send(state, exit_code, message, String::new());
    }

    /// Reports what the task's processes use now.
    fn sample(&mut self, scope: &Scope) {
        let _ = self.ctx.usage.send((self.task.id, sandbox::usage(scope)));
    }

    /// Rotates the task's log files that reached their limit.
    fn trim_logs(&self) {
        let dir = self.logs();
        for name in ["stdout", "stderr"] {
            if let Err(e) = logs::trim(&dir, name, logs::LIMIT) {
                tracing::warn!(task = self.task.id, error = %e, "cannot rotate a log file");
            }
        }
    }

    fn send(&self, state: TaskState, exit_code: Option<i32>, message: String, artifact: String) {
        let health = self.health.as_ref().map(|h| h.state()).unwrap_or_default();
        let _ = self.ctx.reports.send(Report {
            task: self.task.id,
            state,
            exit_code,
            starts: self.starts,
            health,
            message,
            ports: self.ports.clone(),
            artifact,
        });
    }

    /// Starts the process when a start is due, then waits for it to exit;
    /// returns its exit code.
    async fn step(&mut self, l: &Launch) -> Option<i32> {
        loop {
            if self.adopted && self.health.is_none() {
                // Checks go on where the earlier life of the agent left them.
                self.start_health(l);
            }
            if self.child.is_some() || self.adopted {
                return self.wait(&l.scope).await;
            }
            let Some(at) = self.next_start.filter(|_| !self.stopping) else {
                return std::future::pending().await;
            };
            // Cancellation-safe: this future is dropped whenever the runner
            // wakes for something else, so the start stays due until it
            // happened (a fetch cut short is done again; it checks first).
            tokio::time::sleep(until(at)).await;
            if let Err(e) = self.fetch_artifact(l).await {
                self.next_start = None;
                self.report(TaskState::Failed, None, e);
                return std::future::pending().await;
            }
            self.next_start = None;
            self.start(l);
        }
    }

    fn start(&mut self, l: &Launch) {
        crate::metrics::METRICS.starts.inc();
        let dir = self.logs();
        let exit_file = self.exit_file();
        let _ = std::fs::remove_file(&exit_file);
        let mut argv = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "\"$@\"; c=$?; echo $c > \"$CHARTER_EXIT_FILE\"; exit $c".to_string(),
            "charter-task".to_string(),
        ];
        let mut l = l.clone();
        l.env
            .insert("CHARTER_EXIT_FILE".into(), exit_file.display().to_string());
        l.env
            .insert("CHARTER_TASK_ID".into(), self.task.id.to_string());
        for (i, name) in self.task.spec.ports.iter().enumerate() {
            if let Some(p) = self.ports.get(name) {
                if i == 0 {
                    l.env.insert("PORT".into(), p.to_string());
                }
                l.env
                    .insert(format!("PORT_{}", name.to_ascii_uppercase()), p.to_string());
            }
        }
        // `${PORT}`, `${PORT_<NAME>}`, `${CHARTER_*}` in the argv itself.
        let mut vars = l.env.clone();
        vars.insert("CHARTER_LEASE_ID".into(), l.scope.lease.to_string());
        vars.insert("CHARTER_NODE".into(), l.node.clone());
        vars.insert("CHARTER_FENCING_TOKEN".into(), l.fencing_token.to_string());
        argv.extend(
            self.task
                .spec
                .command
                .iter()
                .map(|a| crate::interpolate::expand(a, &vars)),
        );
        let spawned = logs::open(&dir, "stdout")
            .and_then(|out| Ok((out, logs::open(&dir, "stderr")?)))
            .and_then(|(out, err)| {
                sandbox::spawn(&l, &self.ctx.iso, &argv, out.into(), err.into())
            });
        match spawned {
            Ok(child) => {
                self.starts += 1;
                if let Ok(mut r) = self.ctx.running.lock() {
                    r.insert(self.task.id);
                }
                self.child = Some(child);
                self.start_health(&l);
                self.report(TaskState::Running, None, String::new());
            }
            Err(e) => {
                self.report(
                    TaskState::Failed,
                    None,
                    format!("cannot start {:?}: {e}", self.task.spec.command),
                );
            }
        }
    }

    /// Starts the amp's health check, if it has one, on the task's ports.
    fn start_health(&mut self, l: &Launch) {
        let first = self
            .task
            .spec
            .ports
            .first()
            .and_then(|n| self.ports.get(n))
            .copied();
        self.health = self.amp.health().map(|mut c| {
            // Port 0: the task's first named port.
            if let (
                Some(p),
                crate::health::Probe::Http { port, .. } | crate::health::Probe::Tcp { port },
            ) = (first, &mut c.check)
                && *port == 0
            {
                *port = p;
            }
            crate::health::Monitor::start(c, l.clone(), self.ctx.iso.clone())
        });
    }

    /// Waits for the process to exit (or, when adopted, for the lease's
    /// processes to go), reporting health changes meanwhile.
    async fn wait(&mut self, scope: &Scope) -> Option<i32> {
        loop {
            let adopted = self.adopted;
            let child = &mut self.child;
            let exit = async move {
                if adopted {
                    while !sandbox::lease_pids(scope).is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    None
                } else {
                    wait_child(child.as_mut()).await
                }
            };
            let health = match self.health.as_mut() {
                None => Err(exit.await),
                Some(h) => tokio::select! {
                    st = h.changed() => Ok(st),
                    code = exit => Err(code),
                },
            };
            match health {
                Ok(st) => self.report(TaskState::Running, None, format!("health: {st}")),
                Err(_) if std::mem::take(&mut self.adopted) => {
                    return self.exit_file_code().or(Some(-1));
                }
                Err(code) => return code,
            }
        }
    }

    /// Where the wrapper writes the exit code: in the lease's sandbox, so a
    /// task placed again on this node never reads an older run's code.
    fn exit_file(&self) -> PathBuf {
        sandbox::lease_dir(&self.ctx.sandboxes, self.lease)
            .join(format!(".charter-exit-{}", self.task.id))
    }

    /// The code the wrapper wrote (its file is the sandbox user's: read
    /// without following a link).
    fn exit_file_code(&self) -> Option<i32> {
        use std::io::Read;
        let mut text = String::new();
        sandbox::open_own(&self.exit_file(), None)
            .ok()?
            .take(32)
            .read_to_string(&mut text)
            .ok()?;
        text.trim().parse().ok()
    }

    /// Puts the task's artifact in the sandbox before its first start.
    async fn fetch_artifact(&self, l: &Launch) -> Result<(), String> {
        let t = &self.task.spec;
        if t.artifact_in.is_empty() {
            return Ok(());
        }
        if !charter_config::limits::file_name(&t.artifact_name) {
            return Err(format!(
                "the artifact's file name {:?} is not a plain file name",
                t.artifact_name
            ));
        }
        let dest = l.dir.join(&t.artifact_name);
        if sandbox::open_own(&dest, l.user).is_ok() {
            return Ok(());
        }
        let servers = self
            .ctx
            .servers
            .as_ref()
            .ok_or("this agent has no servers to fetch from")?;
        crate::artifact::fetch(servers, &t.artifact_in, &dest, l.user).await
    }

    /// Stores a finished build's artifact; the task succeeds only then.
    async fn store_artifact(&self, l: &Launch) -> Result<String, String> {
        let t = &self.task.spec;
        if !charter_config::limits::relative_path(&t.artifact_out) {
            return Err(format!(
                "the artifact path {:?} is not a relative path inside the sandbox",
                t.artifact_out
            ));
        }
        let app = t.env.get("CHARTER_APP").map_or("default", String::as_str);
        if !charter_config::limits::name(app) {
            return Err(format!("CHARTER_APP {app:?} is not an app name"));
        }
        let file = l.dir.join(&t.artifact_out);
        if sandbox::open_own(&file, l.user).is_err() {
            return Err(format!(
                "the build exited 0 but left no artifact at {} (a regular file of the build's own)",
                t.artifact_out
            ));
        }
        let servers = self
            .ctx
            .servers
            .as_ref()
            .ok_or("this agent has no servers to store in")?;
        let id = self.task.id;
        let (sha, copies) = crate::artifact::upload(servers, (app, id), &file, l.user).await?;
        tracing::info!(task = id, sha256 = %sha, copies, "artifact stored");
        Ok(sha)
    }

    /// Decides what follows an exit: done, or another start after a backoff.
    async fn exited(&mut self, status: Option<i32>, l: &Launch) {
        self.child = None;
        if let Some(h) = self.health.take() {
            h.stop();
        }
        if let Ok(mut r) = self.ctx.running.lock() {
            r.remove(&self.task.id);
        }
        let code = self.exit_file_code().or(status);
        if self.stopping {
            return;
        }
        let fenced = std::mem::take(&mut self.fenced);
        let code = if fenced { None } else { code };
        let why = |w: String| {
            if fenced {
                format!("stopped while the agent was out of contact with the servers (fenced); {w}")
            } else {
                w
            }
        };
        let next = self.amp.after_exit(code, self.starts);
        if let Next::Done { state, .. } = &next {
            crate::metrics::METRICS.exited(state.as_str());
        }
        match next {
            Next::Again { backoff_ms, why: w } => {
                crate::metrics::METRICS.restarts.inc();
                self.next_start = Some(now_ms() + backoff_ms);
                let again = format!("{w} in {:.1} s", backoff_ms as f64 / 1000.0);
                self.report(TaskState::Restarting, code, why(again));
            }
            Next::Done { state, why }
                if state == TaskState::Succeeded && !self.task.spec.artifact_out.is_empty() =>
            {
                match self.store_artifact(l).await {
                    Ok(sha) => self.send(state, code, why, sha),
                    Err(e) => self.report(TaskState::Failed, code, e),
                }
            }
            Next::Done { state, why: w } => self.report(state, code, why(w)),
        }
    }

    /// Waits for a killed child so it leaves no zombie.
    async fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.wait()).await;
        }
        if let Some(h) = self.health.take() {
            h.stop();
        }
    }
}

/// Picks a free port for each name: the kernel's choice for a listener on
/// 0.0.0.0, held until all are picked (so two names never get the same
/// one), then closed for the service to bind moments later.
fn pick_ports(names: &[String]) -> BTreeMap<String, u16> {
    let mut held = Vec::new();
    let mut out = BTreeMap::new();
    for n in names {
        if let Ok(l) = std::net::TcpListener::bind(("0.0.0.0", 0))
            && let Ok(a) = l.local_addr()
        {
            out.insert(n.clone(), a.port());
            held.push(l);
        }
    }
    out
}

async fn wait_child(child: Option<&mut tokio::process::Child>) -> Option<i32> {
    match child {
        Some(c) => match c.wait().await {
            Ok(s) => s.code().or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                s.signal().map(|sig| 128 + sig)
            }),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}
