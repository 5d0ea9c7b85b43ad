//! `charter bench`: starts what it measures on 127.0.0.1 in temporary
//! directories (a 3-member cluster with fsync on, a registered fleet), prints
//! the figures, and stops everything it started. Benchmarks, not tests:
//! nothing here asserts a speed.
//!
//! Scenarios:
//! - `grant`: lease grants/s and p50/p99/p999 latency at 1, 16 and 64
//!   concurrent clients, through the leader and through a follower (each
//!   on a fresh cluster);
//! - `placement`: placement decisions/s and ns per decision at 1k/10k/50k
//!   nodes with a label constraint (in process; placement is a pure function);
//! - `failover`: time from `kill -9` of the leader process to the first
//!   acknowledged write, over several rounds;
//! - `memory`: each member's resident memory with N leases held;
//! - `expiry`, `tasks`: with agents, see `bench_agent`;
//! - `locks`: lock cycles/s and handover latency, beside `etcdctl lock`
//!   when etcd is installed, see `bench_locks`;
//! - `soak`: request-and-release cycles for a long while, see `bench_soak`
//!   (not part of `all`);
//! - `race`: Charter's grants beside etcd's lease grants, one Rust client,
//!   alternating rounds, see `bench_etcd` (not part of `all`; needs etcd).
//!
//! Over 500 lines: the bench command: its flags, its scenarios' table and the shared measuring helpers.

use super::output::{self, fail};
use charter::harness::{Cluster, TOKEN};
use charter_config::units;
use charter_proto as pb;
use charter_proto::leases_client::LeasesClient;
use charter_proto::nodes_client::NodesClient;
use charter_scheduler::placement;
use charter_scheduler::state::{Constraint, LeaseSpec, Node, NodeState, Resources, State};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// `charter bench`.
#[derive(ClapArgs, Debug)]
pub struct BenchArgs {
    /// grant, placement, failover, memory, expiry, tasks, cron, deploy, locks, or
    /// all of these; or soak or race (never part of all).
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// How long each measured run lasts, e.g. 5s.
    #[arg(long, default_value = "5s")]
    pub duration: String,
    /// Nodes registered for `grant`.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Rounds of `failover` (and of the handovers `locks` measures).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Leases held for `memory`.
    #[arg(long, default_value_t = 100_000)]
    pub leases: usize,
    /// Node counts for `placement`, comma-separated.
    #[arg(long, default_value = "1000,10000,50000")]
    pub placement_nodes: String,
    /// Leases measured by `expiry`.
    #[arg(long, default_value_t = 50)]
    pub expiry_leases: usize,
    /// Running tasks for the agent's RSS in `expiry`.
    #[arg(long, default_value_t = 100)]
    pub agent_tasks: usize,
    /// Leader kills after the steady part of `cron`.
    #[arg(long, default_value_t = 3)]
    pub cron_kills: usize,
    /// Deployments measured by `deploy`.
    #[arg(long, default_value_t = 3)]
    pub deploy_rounds: usize,
    /// Registered apps for `deploy`'s polling figures.
    #[arg(long, default_value_t = 500)]
    pub deploy_apps: usize,
    /// `soak`: stop after this many request-and-release cycles (0: after --duration).
    #[arg(long, default_value_t = 0)]
    pub cycles: u64,
    /// `soak`: a line of figures this often.
    #[arg(long, default_value = "1m")]
    pub soak_every: String,
}

/// One scenario's figures.
#[derive(Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Its figures by name.
    pub metrics: BTreeMap<String, f64>,
}

const SCENARIOS: &[&str] = &[
    "grant",
    "placement",
    "failover",
    "memory",
    "expiry",
    "tasks",
    "cron",
    "deploy",
    "locks",
];

/// Runs the chosen scenarios and prints their figures.
pub fn run(rt: &tokio::runtime::Runtime, json: bool, a: BenchArgs) -> anyhow::Result<i32> {
    let dur = units::parse_duration(&a.duration).map_err(|e| {
        fail(
            format!("bad --duration `{}`", a.duration),
            e,
            "e.g. --duration 5s",
        )
    })?;
    let dur = Duration::from_millis(dur.max(1));
    let chosen: Vec<&str> = if a.scenario == "all" {
        SCENARIOS.to_vec()
    } else {
        a.scenario.split(',').map(str::trim).collect()
    };
    for s in &chosen {
        if !SCENARIOS.contains(s) && *s != "soak" && *s != "race" {
            return Err(fail(
                format!("unknown scenario `{s}`"),
                format!("known: {}, soak, race", SCENARIOS.join(", ")),
                "pass --scenario NAME or all",
            ));
        }
    }
    let sizes = a
        .placement_nodes
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            fail(
                "bad --placement-nodes",
                e.to_string(),
                "e.g. --placement-nodes 1000,10000",
            )
        })?;
    let exe = std::env::current_exe()?;
    let mut reports = Vec::new();
    for s in chosen {
        eprintln!("bench: running {s}…");
        let r = match s {
            "grant" => grant(rt, &exe, dur, a.nodes)?,
            "memory" => memory(rt, &exe, a.leases)?,
            "placement" => placement_bench(&sizes, dur),
            "failover" => failover(rt, &exe, a.rounds)?,
            "expiry" => super::bench_agent::expiry(rt, &exe, a.expiry_leases, a.agent_tasks)?,
            "tasks" => super::bench_agent::tasks(rt, &exe, dur)?,
            "cron" => super::bench_agent::cron(rt, &exe, dur, a.cron_kills)?,
            "deploy" => super::bench_deploy::deploy(rt, &exe, a.deploy_rounds, a.deploy_apps)?,
            "locks" => super::bench_locks::locks(rt, &exe, dur, a.rounds)?,
            "race" => super::bench_etcd::race(rt, &exe, dur, a.rounds, a.nodes)?,
            "soak" => {
                let every = units::parse_duration(&a.soak_every).map_err(|e| {
                    fail(format!("bad --soak-every `{}`", a.soak_every), e, "e.g. 1m")
                })?;
                let soak = super::bench_soak::Soak {
                    duration: if a.cycles > 0 { Duration::MAX } else { dur },
                    cycles: a.cycles,
                    every: Duration::from_millis(every.max(100)),
                };
                super::bench_soak::soak(rt, &exe, soak)?
            }
            _ => unreachable!("checked above"),
        };
        reports.push(r);
    }
    if json {
        output::json(&reports)?;
    } else {
        let mut rows = Vec::new();
        for r in &reports {
            for (k, v) in &r.metrics {
                rows.push(vec![r.scenario.clone(), k.clone(), format!("{v:.3}")]);
            }
        }
        output::table(&["SCENARIO", "METRIC", "VALUE"], rows);
    }
    Ok(0)
}

/// A lazily connected channel to `addr`.
pub fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(
        charter_proto::tls::endpoint(addr, charter_proto::tls::Role::Member)
            .map_err(|e| anyhow::anyhow!("bad address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect_lazy(),
    )
}

/// `m` with the harness's admin token.
pub fn authed<M>(m: M) -> tonic::Request<M> {
    charter_proto::conn::bearer(Some(TOKEN), m)
}

fn start_cluster(exe: &std::path::Path) -> anyhow::Result<(Cluster, usize)> {
    let c =
        Cluster::start(exe, 3, &[]).map_err(|e| fail("cannot start the bench cluster", e, ""))?;
    let leader = c
        .wait_leader(Duration::from_secs(20))
        .map_err(|e| fail("the bench cluster elected no leader", e, ""))?;
    Ok((c, leader))
}

/// The `p` percentile of sorted µs values, in ms.
pub fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Grants through the leader, then through a follower, each on a cluster
/// of its own started fresh: the leases granted (an hour each) pile up in
/// the state, so on one cluster the target measured second would run
/// against a larger state than the first.
fn grant(
    rt: &tokio::runtime::Runtime,
    exe: &std::path::Path,
    dur: Duration,
    nodes: usize,
) -> anyhow::Result<Report> {
    let mut metrics = BTreeMap::new();
    for target in ["leader", "follower"] {
        let (c, leader) = start_cluster(exe)?;
        let idx = match target {
            "leader" => leader,
            _ => (leader + 1) % 3,
        };
        rt.block_on(async {
            let ch = channel(&c.members[leader].grpc)?;
            register_fleet(&ch, nodes).await?;
            if target == "leader" {
                // What the members burn with no load (raft ticks, heartbeats,
                // controllers), to read the per-grant figures against.
                let idle0 = members_cpu_s(&c);
                tokio::time::sleep(Duration::from_secs(2)).await;
                metrics.insert(
                    "idle_server_cpu_pct".into(),
                    (members_cpu_s(&c) - idle0) / 2.0 * 100.0,
                );
            }
            let ch = channel(&c.members[idx].grpc)?;
            for clients in [1usize, 16, 64] {
                let (cpu0, steal0) = (members_cpu_s(&c), Steal::now());
                let (count, lat) = load(ch.clone(), clients, dur).await;
                let cpu = members_cpu_s(&c) - cpu0;
                metrics.insert(
                    format!("{target}_c{clients}_steal_pct"),
                    Steal::now().pct_since(steal0),
                );
                let secs = dur.as_secs_f64();
                // What a grant costs the servers, whatever the client does.
                metrics.insert(
                    format!("{target}_c{clients}_server_cpu_us_per_grant"),
                    if count == 0 {
                        0.0
                    } else {
                        cpu * 1e6 / count as f64
                    },
                );
                metrics.insert(
                    format!("{target}_c{clients}_grants_per_s"),
                    count as f64 / secs,
                );
                metrics.insert(
                    format!("{target}_c{clients}_p50_ms"),
                    percentile_ms(&lat, 0.50),
                );
                metrics.insert(
                    format!("{target}_c{clients}_p99_ms"),
                    percentile_ms(&lat, 0.99),
                );
                metrics.insert(
                    format!("{target}_c{clients}_p999_ms"),
                    percentile_ms(&lat, 0.999),
                );
            }
            Ok::<(), anyhow::Error>(())
        })?;
    }
    metrics.insert("nodes".into(), nodes as f64);
    Ok(Report {
        scenario: "grant".into(),
        metrics,
    })
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 11 and 12 counted from
    // the state field (field 3).
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A reading of the machine's CPU time and how much of it the host stole
/// (`steal` in `/proc/stat`): on a shared VM a window with much steal is
/// not comparable with a quiet one, so the benches print it beside their
/// figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Steal {
    steal: u64,
    total: u64,
}

impl Steal {
    /// The reading now (zeros where `/proc/stat` cannot be read).
    pub fn now() -> Steal {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().and_then(Steal::parse))
            .unwrap_or_default()
    }

    /// The `cpu` line of `/proc/stat`: user, nice, system, idle, iowait,
    /// irq, softirq, steal, ... in ticks (guest time is already in user).
    fn parse(line: &str) -> Option<Steal> {
        let mut f = line.split_whitespace();
        if f.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = f.take(8).map(|v| v.parse().ok()).collect::<Option<_>>()?;
        Some(Steal {
            steal: *ticks.get(7)?,
            total: ticks.iter().sum(),
        })
    }

    /// The per cent of all CPU time since `earlier` that was stolen.
    pub fn pct_since(self, earlier: Steal) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(earlier.steal) as f64 * 100.0 / total as f64
    }
}

/// CPU seconds all running members of `c` have used.
fn members_cpu_s(c: &Cluster) -> f64 {
    c.members
        .iter()
        .filter_map(|m| m.child.as_ref())
        .map(|ch| cpu_s(ch.id()))
        .sum()
}

/// Registers nodes `b0..bN` (64 cores, 256 GiB, zone labels), 32 at a time.
pub async fn register_fleet(ch: &Channel, nodes: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let ch = ch.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                if i >= nodes {
                    return Ok::<(), tonic::Status>(());
                }
                let req = authed(pb::RegisterNodeRequest {
                    idempotency_key: format!("bench-node-{i}"),
                    name: format!("b{i}"),
                    capacity: Some(pb::Resources {
                        cpu_millis: 64_000,
                        memory_bytes: 256 << 30,
                        ..Default::default()
                    }),
                    labels: [("zone".to_string(), format!("z{}", i % 4))].into(),
                    pool: "bench".into(),
                    // Five price levels, for `--prefer cheapest`.
                    cost_per_hour: 1.0 + (i % 5) as f64 * 0.25,
                    ttl_ms: 0,
                    agent_addr: String::new(),
                    agent_secret: String::new(),
                });
                NodesClient::new(ch.clone()).register(req).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `clients` concurrent loops of lease requests for `dur`; returns the
/// number granted and every latency in µs, sorted.
async fn load(ch: Channel, clients: usize, dur: Duration) -> (u64, Vec<u64>) {
    closed_loop(clients, dur, move |w, n| {
        let key = format!("bench-{w}-{n}-{}", rand::random::<u32>());
        grant_once(ch.clone(), key)
    })
    .await
}

/// One hour-long lease of 10 millicores, as the grant benches ask for;
/// whether it was granted.
pub async fn grant_once(ch: Channel, key: String) -> bool {
    let req = authed(pb::LeaseRequest {
        idempotency_key: key,
        resources: Some(pb::Resources {
            cpu_millis: 10,
            ..Default::default()
        }),
        duration_ms: 3_600_000,
        reason: "bench".into(),
        ..Default::default()
    });
    LeasesClient::new(ch).request(req).await.is_ok()
}

/// `clients` concurrent loops, each calling `call(worker, n)` again as soon
/// as the last call returned, for `dur`; returns how many calls succeeded
/// and their latencies in µs, sorted.
pub async fn closed_loop<F, Fut>(clients: usize, dur: Duration, call: F) -> (u64, Vec<u64>)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + dur;
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..clients {
        let call = call.clone();
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if call(w, n).await {
                    mine.push(t.elapsed().as_micros() as u64);
                }
                n += 1;
            }
            if let Ok(mut l) = lat.lock() {
                l.extend(mine);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = lat.lock().map(|l| l.clone()).unwrap_or_default();
    v.sort_unstable();
    (v.len() as u64, v)
}

/// Over 80 lines: a benchmark script, read top to bottom.
fn placement_bench(sizes: &[usize], dur: Duration) -> Report {
    let mut metrics = BTreeMap::new();
    for &n in sizes {
        let mut s = State::new(BTreeMap::new());
        for i in 0..n {
            let name = format!("n{i:06}");
            s.nodes.insert(
                name.clone(),
                Node {
                    name,
                    capacity: Resources {
                        cpu_millis: 64_000,
                        memory_bytes: 256 << 30,
                        disk_bytes: 0,
                        gpus: (i % 8 == 0) as u32 * 4,
                    },
                    allocated: Resources {
                        cpu_millis: (i as u64 * 7919) % 64_000,
                        ..Resources::default()
                    },
                    labels: [
                        ("zone".to_string(), format!("z{}", i % 4)),
                        (
                            "gpu".to_string(),
                            if i % 8 == 0 { "a100" } else { "none" }.to_string(),
                        ),
                        (
                            "rack".to_string(),
                            if i % 1000 == 999 { "r0" } else { "r1" }.to_string(),
                        ),
                    ]
                    .into(),
                    pool: "bench".into(),
                    // Five price levels, for `--prefer cheapest`.
                    cost_per_hour: 1.0 + (i % 5) as f64 * 0.25,
                    state: NodeState::Ready,
                    registered_at: 0,
                    ttl_ms: None,
                    agent: None,
                    last_seen: 0,
                    leases: Default::default(),
                },
            );
        }
        let mut spec = LeaseSpec::simple(
            Resources {
                cpu_millis: 2000,
                memory_bytes: 4 << 30,
                disk_bytes: 0,
                gpus: 1,
            },
            1,
        );
        s.rebuild_index();
        // `common`: 1 node in 8 meets the constraints; `rare`: 1 in 1,000
        // (walked through the label index); `cheapest`: any node, by price;
        // `rare_cheapest`: both.
        spec.constraints = vec![Constraint::eq("gpu", "a100"), Constraint::eq("zone", "z0")];
        let mut rare = spec.clone();
        rare.resources.gpus = 0;
        rare.constraints = vec![Constraint::eq("rack", "r0")];
        let mut cheapest = spec.clone();
        cheapest.prefer = charter_scheduler::state::Prefer::Cheapest;
        cheapest.constraints.clear();
        let mut rare_cheapest = rare.clone();
        rare_cheapest.prefer = charter_scheduler::state::Prefer::Cheapest;
        for (label, spec) in [
            ("", &spec),
            ("rare_", &rare),
            ("cheapest_", &cheapest),
            ("rare_cheapest_", &rare_cheapest),
        ] {
            let start = Instant::now();
            let mut decisions = 0u64;
            while start.elapsed() < dur || decisions == 0 {
                std::hint::black_box(placement::place(std::hint::black_box(&s.nodes), spec).ok());
                decisions += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            metrics.insert(
                format!("n{n}_{label}decisions_per_s"),
                decisions as f64 / secs,
            );
            metrics.insert(
                format!("n{n}_{label}us_per_decision"),
                secs * 1e6 / decisions as f64,
            );
        }
    }
    Report {
        scenario: "placement".into(),
        metrics,
    }
}

/// Resident memory of a process in MiB, from /proc.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn memory(
    rt: &tokio::runtime::Runtime,
    exe: &std::path::Path,
    leases: usize,
) -> anyhow::Result<Report> {
    let (c, leader) = start_cluster(exe)?;
    let pids: Vec<u32> = c
        .members
        .iter()
        .filter_map(|m| m.child.as_ref().map(|ch| ch.id()))
        .collect();
    let mut metrics = BTreeMap::new();
    metrics.insert("idle_member_rss_mib".into(), rss_mib(pids[0]));
    rt.block_on(async {
        let ch = channel(&c.members[leader].grpc)?;
        // Enough nodes that every lease fits: 64 cores each, 10 millicores a lease.
        register_fleet(&ch, leases / 6000 + 1).await?;
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let ch = ch.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    if i >= leases {
                        return Ok::<(), tonic::Status>(());
                    }
                    let req = authed(pb::LeaseRequest {
                        idempotency_key: format!("mem-{i}"),
                        resources: Some(pb::Resources {
                            cpu_millis: 10,
                            ..Default::default()
                        }),
                        duration_ms: 24 * 3_600_000,
                        reason: "memory bench".into(),
                        ..Default::default()
                    });
                    LeasesClient::new(ch.clone()).request(req).await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    std::thread::sleep(Duration::from_secs(1));
    for (i, pid) in pids.iter().enumerate() {
        metrics.insert(format!("member{}_rss_mib", i + 1), rss_mib(*pid));
    }
    metrics.insert("leases".into(), leases as f64);
    Ok(Report {
        scenario: "memory".into(),
        metrics,
    })
}

fn failover(
    rt: &tokio::runtime::Runtime,
    exe: &std::path::Path,
    rounds: usize,
) -> anyhow::Result<Report> {
    let _ctx = rt.enter();
    let (mut c, mut leader) = start_cluster(exe)?;
    let mut times = Vec::new();
    for round in 0..rounds.max(1) {
        let chans: Vec<Channel> = c
            .members
            .iter()
            .map(|m| channel(&m.grpc))
            .collect::<Result<_, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        // (sent, acknowledged) of each write.
        let acks = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
        let writer = rt.spawn(write_loop(chans, stop.clone(), acks.clone(), round));
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        c.kill9(leader);
        let deadline = killed + Duration::from_secs(30);
        let first = loop {
            // A write sent before the kill may be acknowledged just after
            // it (the old leader had committed it): only a write sent after
            // the kill shows the cluster writing again.
            let after = acks.lock().ok().and_then(|a| {
                a.iter()
                    .filter(|(sent, _)| *sent > killed)
                    .map(|(_, acked)| *acked)
                    .min()
            });
            if let Some(t) = after {
                break t.duration_since(killed);
            }
            if Instant::now() > deadline {
                return Err(fail(
                    "no write was acknowledged within 30 s of the kill",
                    c.logs(),
                    "",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        stop.store(true, Ordering::SeqCst);
        let _ = rt.block_on(writer);
        times.push(first.as_secs_f64() * 1000.0);
        c.spawn(leader, false)
            .map_err(|e| fail("cannot restart the killed member", e, ""))?;
        leader = c
            .wait_leader(Duration::from_secs(20))
            .map_err(|e| fail("no leader after restart", e, ""))?;
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mut metrics = BTreeMap::new();
    for (i, t) in times.iter().enumerate() {
        metrics.insert(format!("round{}_ms", i + 1), *t);
    }
    metrics.insert("median_ms".into(), sorted[sorted.len() / 2]);
    metrics.insert("max_ms".into(), sorted[sorted.len() - 1]);
    Ok(Report {
        scenario: "failover".into(),
        metrics,
    })
}

async fn write_loop(
    chans: Vec<Channel>,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<(Instant, Instant)>>>,
    round: usize,
) {
    let mut cur = 0;
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut req = authed(pb::RegisterNodeRequest {
            idempotency_key: format!("failover-{round}-{seq}"),
            name: format!("f{round}-{seq}"),
            capacity: Some(pb::Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                ..Default::default()
            }),
            ..Default::default()
        });
        req.set_timeout(Duration::from_millis(1500));
        let sent = Instant::now();
        match NodesClient::new(chans[cur].clone()).register(req).await {
            Ok(_) => {
                if let Ok(mut a) = acks.lock() {
                    a.push((sent, Instant::now()));
                }
                seq += 1;
            }
            Err(_) => {
                cur = (cur + 1) % chans.len();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Steal;

    #[test]
    fn steal_is_the_stolen_share_of_all_ticks_between_readings() {
        let a = Steal::parse("cpu  100 0 50 800 40 0 2 8 0 0").unwrap();
        let b = Steal::parse("cpu  160 0 70 880 60 0 2 28 0 0").unwrap();
        // 200 ticks passed, 20 of them stolen.
        assert_eq!(b.pct_since(a), 10.0);
        assert_eq!(a.pct_since(a), 0.0);
        // A per-CPU line or a short one is not the machine's reading.
        assert!(Steal::parse("cpu0 1 2 3 4 5 6 7 8").is_none());
        assert!(Steal::parse("cpu 1 2 3").is_none());
    }
}
