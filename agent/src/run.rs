//! The agent's life: serve logs, register the node, then heartbeat, watch
//! the node's assignments and report on its tasks, until stopped or until
//! the cluster removes the node.
//!
//! - Registration retries through elections and restarts with backoff
//!   (0.2 s doubling to 5 s); a refusal (bad token, not admin, bad offer) is
//!   fatal and says why.
//! - Heartbeats go every third of the TTL. A missed one is retried; the
//!   servers mark the node down only when the TTL and a margin pass
//!   ([`charter_config::liveness`]). When no heartbeat has been answered
//!   for the whole TTL, the agent fences itself: its leases' processes
//!   stop before the servers can place their work elsewhere, and nothing
//!   starts until a heartbeat is answered again; then the leases the
//!   servers still hold go on and the rest are ended.
//! - The watch is a server stream of the node's assignments, sent on every
//!   change and every few seconds as a keepalive. When it breaks or goes
//!   quiet for [`WATCH_QUIET`], the agent reconnects (to the next server)
//!   with backoff; leases keep running meanwhile and still end on time.
//! - Reports go out in order, each retried until a server takes it.
//! - A heartbeat answered `NOT_FOUND` means the node was removed (retired
//!   by its pool, or `charter node remove`): the agent stops its leases and
//!   exits. A signal (SIGINT, SIGTERM) does the same: nothing may outlive
//!   its lease without an agent to end it. An agent that crashes or is
//!   killed leaves its leases' processes running; restarted, it adopts them.
//!
//! Over 500 lines: the agent's main loop: registration, heartbeats, the assignment watch, reports and usage.

use crate::conn::{Servers, retryable};
use crate::sandbox::Isolation;
use crate::serve::AgentService;
use crate::supervisor::{Host, LeaseInfo, Report, Supervisor, TaskInfo};
use crate::users::Users;
use charter_config::spec::TaskSpec;
use charter_proto as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Code;

type Running = Arc<Mutex<BTreeSet<u64>>>;
type Leases = crate::supervisor::Sandboxed;

/// How long one call keeps trying other members before the loop backs off.
const CALL_RETRY: Duration = Duration::from_secs(2);
/// A watch with no message for this long is reconnected.
pub const WATCH_QUIET: Duration = Duration::from_secs(15);

/// Everything the agent offers and where it reports.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Server addresses.
    pub servers: Vec<String>,
    /// The token (admin: agents register nodes).
    pub token: Option<String>,
    /// Node name.
    pub name: String,
    /// What it offers.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disk in bytes.
    pub disk_bytes: u64,
    /// GPUs.
    pub gpus: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Pool.
    pub pool: String,
    /// Price per hour.
    pub cost_per_hour: f64,
    /// Heartbeat TTL: the servers mark the node down after this long without one.
    pub ttl: Duration,
    /// The agent's data directory.
    pub data: PathBuf,
    /// Where to serve logs to the servers (port 0: any free port).
    pub listen: SocketAddr,
    /// Where to serve `/metrics` over HTTP (none: not served).
    pub http: Option<SocketAddr>,
    /// Where leases' sandboxes go (None: [`crate::sandbox::root`] decides).
    pub sandboxes: Option<PathBuf>,
    /// The dynamic uids leases get when the agent is root.
    pub lease_uids: (u32, u32),
    /// Principals whose leases run as a fixed system user instead.
    pub run_as: BTreeMap<String, crate::users::Identity>,
}

/// How the agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (a signal).
    Stopped,
    /// The cluster removed the node.
    Removed,
}

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct AgentError {
    /// What failed.
    pub what: String,
    /// Why, from the server.
    pub why: String,
}

fn refused(what: &str, addr: &str, s: &tonic::Status) -> AgentError {
    AgentError {
        what: what.to_string(),
        why: format!("{} (server {addr}, code {:?})", s.message(), s.code()),
    }
}

/// Runs the agent until `stop` resolves or the node is removed.
///
/// Over 80 lines: the agent's main loop: register, then one select over heartbeats, watch, reports, usage and stop.
pub async fn run(opts: AgentOptions, stop: impl Future<Output = ()>) -> Result<Exit, AgentError> {
    let servers = Arc::new(
        Servers::new(&opts.servers, opts.token.clone()).map_err(|e| AgentError {
            what: "cannot reach the servers".into(),
            why: e,
        })?,
    );
    let iso = Isolation::detect();
    match &iso {
        Isolation::Cgroup(dir) => {
            tracing::info!(cgroup = %dir.display(), "leases get cgroup v2 limits (cpu.max, memory.max)")
        }
        Isolation::Rlimits(why) => tracing::warn!(
            "no cgroup v2 limits on this machine ({why}); leases get rlimits (address space, open files) instead"
        ),
    }
    let users = Arc::new(Users::detect(opts.lease_uids, opts.run_as.clone()));
    let sandboxes = prepare_dirs(&opts, users.isolating())?;
    if users.isolating() {
        tracing::info!(
            uids = %format!("{}-{}", opts.lease_uids.0, opts.lease_uids.1),
            sandboxes = %sandboxes.display(),
            "each lease runs as a user of its own"
        );
    } else {
        tracing::warn!(
            sandboxes = %sandboxes.display(),
            "this agent is not root: leases run as the agent's own user and are not isolated from each other or from the agent"
        );
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| AgentError {
            what: format!("cannot listen on {}", opts.listen),
            why: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| AgentError {
        what: "cannot read the bound address".into(),
        why: e.to_string(),
    })?;
    let secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let running = Arc::new(Mutex::new(BTreeSet::new()));
    let leases = Arc::new(Mutex::new(BTreeMap::new()));
    let service = AgentService {
        data: opts.data.clone(),
        sandboxes: sandboxes.clone(),
        secret: secret.clone(),
        running: running.clone(),
        leases: leases.clone(),
        node: opts.name.clone(),
        iso: iso.clone(),
    };
    let (stop_serving, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = charter_proto::tls::installed() {
        let cfg = t.server().map_err(|e| AgentError {
            what: "cannot serve TLS".into(),
            why: format!("{e} (from `charter tls init`)"),
        })?;
        builder = builder.tls_config(cfg).map_err(|e| AgentError {
            what: "cannot serve TLS".into(),
            why: format!("{e}; check --tls-cert, --tls-key and --tls-ca"),
        })?;
    }
    let server = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = builder
            .add_service(pb::agent_server::AgentServer::new(service))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = serving_stopped.await;
            })
            .await;
    });
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match opts.http {
        None => None,
        Some(at) => {
            let l = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| AgentError {
                    what: format!("cannot listen on --http {at}"),
                    why: e.to_string(),
                })?;
            tracing::info!(http = %l.local_addr().unwrap_or(at), "metrics at /metrics");
            let (r, ls) = (running.clone(), leases.clone());
            let app = crate::metrics::router(move || {
                let n = |len: Option<usize>| len.map_or(0, |v| v as i64);
                (
                    n(ls.lock().ok().map(|l| l.len())),
                    n(r.lock().ok().map(|r| r.len())),
                )
            });
            Some(tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async {
                        let _ = http_stopped.await;
                    })
                    .await;
            }))
        }
    };
    let shared = Shared {
        running,
        leases,
        users,
        sandboxes,
    };
    let out = life(&opts, servers, iso, shared, addr, secret, stop).await;
    let _ = stop_serving.send(());
    let _ = stop_http.send(());
    let _ = server.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    out
}

/// What the agent's parts share.
struct Shared {
    running: Running,
    leases: Leases,
    users: Arc<Users>,
    sandboxes: PathBuf,
}

/// Makes the agent's directories: its data directory and logs only the
/// agent may read (0700; 0711 when isolating, so a lease's user may pass
/// through to a sandbox below it), and the sandbox root. Returns the root.
fn prepare_dirs(opts: &AgentOptions, isolating: bool) -> Result<PathBuf, AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: String, e: std::io::Error| AgentError {
        what,
        why: e.to_string(),
    };
    let data = &opts.data;
    std::fs::create_dir_all(data.join("logs"))
        .map_err(|e| fail(format!("cannot create {}", data.display()), e))?;
    let mode = if isolating { 0o711 } else { 0o700 };
    for (d, m) in [(data.clone(), mode), (data.join("logs"), 0o700)] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m))
            .map_err(|e| fail(format!("cannot set the mode of {}", d.display()), e))?;
    }
    let root = crate::sandbox::root(data, isolating, opts.sandboxes.as_deref());
    crate::sandbox::make_root(&root, isolating).map_err(|e| {
        fail(
            format!("cannot make the sandbox root {}", root.display()),
            e,
        )
    })?;
    Ok(root)
}

async fn life(
    opts: &AgentOptions,
    servers: Arc<Servers>,
    iso: Isolation,
    shared: Shared,
    addr: SocketAddr,
    secret: String,
    stop: impl Future<Output = ()>,
) -> Result<Exit, AgentError> {
    tokio::pin!(stop);
    tokio::select! {
        _ = &mut stop => return Ok(Exit::Stopped),
        r = register(opts, &servers, addr, &secret) => r?,
    }
    tracing::info!(node = %opts.name, pool = %opts.pool, agent = %addr, "registered");
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let (usage_tx, usage_rx) = mpsc::unbounded_channel();
    let ctx = Host {
        usage: usage_tx,
        data: opts.data.clone(),
        sandboxes: shared.sandboxes,
        users: shared.users,
        node: opts.name.clone(),
        iso,
        reports: reports_tx,
        running: shared.running,
        leases: shared.leases,
        leftovers: Arc::default(),
        servers: Some(servers.clone()),
        fence_grace: Duration::from_millis(charter_config::liveness::fence_grace_ms(
            opts.ttl.as_millis() as u64,
        )),
    };
    let mut sup = Supervisor::new(ctx);
    let (assign_tx, mut assign_rx) = mpsc::channel::<Vec<(LeaseInfo, Option<TaskInfo>)>>(4);
    let reporter = tokio::spawn(report_loop(servers.clone(), opts.name.clone(), reports_rx));
    let sampler = tokio::spawn(usage_loop(servers.clone(), opts.name.clone(), usage_rx));
    let watcher = tokio::spawn(watch_loop(servers.clone(), opts.name.clone(), assign_tx));
    let (beats_tx, mut beats) = mpsc::channel::<Beat>(4);
    // Registration was answered: it counts as the first heartbeat.
    let mut answered = tokio::time::Instant::now();
    let heart = heartbeat_loop(opts, &servers, beats_tx);
    tokio::pin!(heart);
    let out = loop {
        let fence_at = answered + opts.ttl;
        tokio::select! {
            _ = &mut stop => break Ok(Exit::Stopped),
            r = &mut heart => break r,
            Some(b) = beats.recv() => {
                answered = answered.max(b.sent);
                if sup.is_fenced() && b.sent + opts.ttl > tokio::time::Instant::now() {
                    tracing::info!(leases = b.leases.len(), "a heartbeat was answered: the fence ends");
                    sup.unfence(&b.leases);
                }
            }
            _ = tokio::time::sleep_until(fence_at), if !sup.is_fenced() => {
                tracing::warn!(
                    ttl = ?opts.ttl,
                    "no heartbeat was answered for the node's TTL: fencing (the leases' processes stop; the servers place their work elsewhere after the TTL and a margin)"
                );
                sup.fence();
            }
            a = assign_rx.recv() => match a {
                Some(a) => sup.apply(a),
                None => break Err(AgentError { what: "the watch loop ended".into(), why: String::new() }),
            },
        }
    };
    watcher.abort();
    sampler.abort();
    // Nothing may outlive its lease without an agent to end it: a stopped
    // agent ends its leases' processes (a crashed one cannot; a restarted
    // agent adopts what it left).
    sup.stop_all().await;
    // Let the last reports go out.
    drop(sup);
    let _ = tokio::time::timeout(Duration::from_secs(2), reporter).await;
    out
}

async fn register(
    opts: &AgentOptions,
    servers: &Servers,
    addr: SocketAddr,
    secret: &str,
) -> Result<(), AgentError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let req = pb::RegisterNodeRequest {
            idempotency_key: String::new(),
            name: opts.name.clone(),
            capacity: Some(pb::Resources {
                cpu_millis: opts.cpu_millis,
                memory_bytes: opts.memory_bytes,
                disk_bytes: opts.disk_bytes,
                gpus: opts.gpus,
            }),
            labels: opts.labels.clone().into_iter().collect(),
            pool: opts.pool.clone(),
            cost_per_hour: opts.cost_per_hour,
            ttl_ms: opts.ttl.as_millis() as u64,
            agent_addr: addr.to_string(),
            agent_secret: secret.to_string(),
        };
        let res = servers
            .call(CALL_RETRY, |ch| {
                let r = servers.req(req.clone());
                async move { pb::nodes_client::NodesClient::new(ch).register(r).await }
            })
            .await;
        match res {
            Ok(_) => return Ok(()),
            Err(f) if retryable(&f.status) => {
                tracing::warn!(error = %f.status.message(), "no server answered the registration; retrying");
            }
            Err(f) => {
                return Err(refused(
                    "registering the node was refused",
                    &f.addr,
                    &f.status,
                ));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A heartbeat the servers answered: when it was sent, and the leases they
/// hold on the node.
struct Beat {
    sent: tokio::time::Instant,
    leases: BTreeSet<u64>,
}

async fn heartbeat_loop(
    opts: &AgentOptions,
    servers: &Servers,
    beats: mpsc::Sender<Beat>,
) -> Result<Exit, AgentError> {
    let every = (opts.ttl / 3).max(Duration::from_millis(50));
    // One period per heartbeat (at least 1 s, at most CALL_RETRY): a
    // member that does not answer costs a share of it and the next one is
    // tried, so heartbeats flow while any member of a majority answers.
    let budget = every.max(Duration::from_secs(1)).min(CALL_RETRY);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        ticks.tick().await;
        let name = opts.name.clone();
        let sent = tokio::time::Instant::now();
        let res = servers
            .call(budget, |ch| {
                let r = servers.req(pb::HeartbeatRequest { name: name.clone() });
                async move { pb::nodes_client::NodesClient::new(ch).heartbeat(r).await }
            })
            .await;
        match res {
            Ok(reply) => {
                let leases = reply
                    .node
                    .map(|n| n.lease_ids.into_iter().collect())
                    .unwrap_or_default();
                let _ = beats.send(Beat { sent, leases }).await;
                if let Some(t) = down_since.take() {
                    tracing::info!(after = ?t.elapsed(), "servers reachable again");
                }
            }
            Err(f) if f.status.code() == Code::NotFound => {
                tracing::info!(node = %opts.name, "the node was removed from the cluster; the agent exits");
                return Ok(Exit::Removed);
            }
            Err(f) if retryable(&f.status) => {
                if down_since.is_none() {
                    tracing::warn!(error = %f.status.message(), "heartbeat failed; retrying");
                    down_since = Some(std::time::Instant::now());
                }
            }
            Err(f) => return Err(refused("the heartbeat was refused", &f.addr, &f.status)),
        }
    }
}

async fn watch_loop(
    servers: Arc<Servers>,
    node: String,
    out: mpsc::Sender<Vec<(LeaseInfo, Option<TaskInfo>)>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let stream = servers
            .call(CALL_RETRY, |ch| {
                let r = servers.req(pb::WatchRequest { node: node.clone() });
                async move { pb::agents_client::AgentsClient::new(ch).watch(r).await }
            })
            .await;
        match stream {
            Ok(mut s) => {
                backoff = Duration::from_millis(100);
                // A long list comes in pages: acted on once it is whole.
                let mut whole = Vec::new();
                loop {
                    match tokio::time::timeout(WATCH_QUIET, s.message()).await {
                        Ok(Ok(Some(a))) => {
                            let more = a.more;
                            whole.extend(assignments(a, &node));
                            if !more && out.send(std::mem::take(&mut whole)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e.message(), "the assignment watch broke; reconnecting");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("the assignment watch went quiet; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(f) => {
                tracing::warn!(error = %f.status.message(), "cannot watch assignments; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Sends reports in order per task. Whatever queued up meanwhile goes out
/// together: only each task's newest report (it carries everything the
/// older ones said), all tasks' at once, each retried until a server takes
/// it. A busy agent thus sends one write per task per round, not one per
/// change, and many tasks' reports share the servers' batches.
async fn report_loop(servers: Arc<Servers>, node: String, mut rx: mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = rx.recv().await {
        let mut latest: BTreeMap<u64, Report> = BTreeMap::new();
        latest.insert(first.task, first);
        while let Ok(r) = rx.try_recv() {
            latest.insert(r.task, r);
        }
        let mut set = tokio::task::JoinSet::new();
        for r in latest.into_values() {
            let (servers, node) = (servers.clone(), node.clone());
            set.spawn(async move { send_report(&servers, &node, r).await });
        }
        while set.join_next().await.is_some() {}
    }
}

/// Sends the newest resource sample of each running task to every member,
/// once per [`crate::supervisor::USAGE_EVERY`]: telemetry each member keeps
/// in memory for `task show/list`, never a replicated write. A member that
/// does not answer misses a round.
async fn usage_loop(
    servers: Arc<Servers>,
    node: String,
    mut rx: mpsc::UnboundedReceiver<(u64, (u64, u64))>,
) {
    let mut every = tokio::time::interval(crate::supervisor::USAGE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latest: BTreeMap<u64, pb::Usage> = BTreeMap::new();
    loop {
        tokio::select! {
            s = rx.recv() => match s {
                Some((task, (rss, cpu))) => {
                    latest.insert(task, pb::Usage {
                        rss_bytes: rss,
                        cpu_ms: cpu,
                        sampled_at_ms: crate::supervisor::now_ms(),
                    });
                }
                None => return,
            },
            _ = every.tick(), if !latest.is_empty() => {
                let report = pb::UsageReport {
                    node: node.clone(),
                    tasks: std::mem::take(&mut latest)
                        .into_iter()
                        .map(|(task_id, u)| pb::TaskUsage { task_id, usage: Some(u) })
                        .collect(),
                };
                let mut set = tokio::task::JoinSet::new();
                for (_, ch) in servers.each() {
                    let q = servers.req(report.clone());
                    set.spawn(async move {
                        let mut client = pb::agents_client::AgentsClient::new(ch);
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.usage(q)).await;
                    });
                }
                while set.join_next().await.is_some() {}
            }
        }
    }
}

async fn send_report(servers: &Servers, node: &str, r: Report) {
    let req = pb::TaskReportRequest {
        task_id: r.task,
        node: node.to_string(),
        state: r.state.to_string(),
        exit_code: r.exit_code,
        starts: r.starts,
        health: r.health.to_string(),
        message: r.message.clone(),
        usage: None,
        ports: r
            .ports
            .iter()
            .map(|(k, v)| (k.clone(), u32::from(*v)))
            .collect(),
        artifact: r.artifact.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let res = servers
            .call(CALL_RETRY, |ch| {
                let q = servers.req(req.clone());
                async move { pb::agents_client::AgentsClient::new(ch).report(q).await }
            })
            .await;
        match res {
            Ok(_) => return,
            Err(f) if retryable(&f.status) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(f) => {
                tracing::warn!(task = r.task, error = %f.status.message(), "a task report was refused");
                return;
            }
        }
    }
}

/// The watch's message in the supervisor's terms.
pub fn assignments(a: pb::Assignments, node: &str) -> Vec<(LeaseInfo, Option<TaskInfo>)> {
    a.items
        .into_iter()
        .filter_map(|it| {
            let l = it.lease?;
            let r = l.resources.unwrap_or_default();
            let lease = LeaseInfo {
                id: l.id,
                principal: l.principal,
                granted_at: l.granted_at_ms,
                expires_at: l.expires_at_ms,
                duration_ms: l.duration_ms,
                fencing_token: l.fencing_token,
                cpu_millis: r.cpu_millis,
                memory_bytes: r.memory_bytes,
                gpus: l
                    .gpu_ids
                    .iter()
                    .filter_map(|g| g.strip_prefix(node)?.strip_prefix(':')?.parse().ok())
                    .collect(),
            };
            let task = it.task.and_then(|t| {
                let spec = match TaskSpec::try_from(t.spec.unwrap_or_default()) {
                    Ok(spec) => spec,
                    Err(e) => {
                        tracing::warn!(task = t.id, error = %e.message(), "a task this agent cannot read");
                        return None;
                    }
                };
                Some(TaskInfo {
                    id: t.id,
                    spec,
                    state: t.state.parse().unwrap_or_default(),
                    starts: t.starts,
                    picked: t
                        .ports
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, u16::try_from(v).ok()?)))
                        .collect(),
                })
            });
            Some((lease, task))
        })
        .collect()
}
