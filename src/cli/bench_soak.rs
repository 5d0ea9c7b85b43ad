//! `charter bench --scenario soak`: request-and-release cycles at a steady
//! rate (as fast as 32 clients go, each request and release with its own
//! idempotency key, as the CLI sends them) against a 3-member cluster for a
//! duration or a number of cycles. Every `--soak-every` it prints the
//! leader's resident memory, its data directory's size, its newest
//! snapshot's size, the live state's lease count, the grant p99 of that
//! window and the share of the machine's CPU its host stole (a window
//! with much steal is slower for reasons outside Charter); at the end, how
//! each grew from the first window to the last, and how long a member
//! takes to restart and be healthy again.
//! `CHARTER_SOAK_SERVER_FLAGS` passes extra flags to the members;
//! `CHARTER_SOAK_WRAP` runs each member under a program (a heap profiler:
//! a script that runs `heaptrack -o /tmp/ht/m$$ "$@"`); the RSS printed is
//! then the wrapper's, not the member's.

use super::bench::{Report, Steal, authed, channel, percentile_ms, rss_mib};
use super::output::fail;
use charter::harness::Cluster;
use charter_proto as pb;
use charter_proto::leases_client::LeasesClient;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long and how much.
pub struct Soak {
    /// Stop after this long…
    pub duration: Duration,
    /// …or after this many cycles (0: no limit).
    pub cycles: u64,
    /// A line of figures this often.
    pub every: Duration,
}

/// One window's figures.
struct Window {
    cycles: u64,
    rss_mib: f64,
    data_mib: f64,
    snapshot_mib: f64,
    state_leases: f64,
    p99_ms: f64,
    /// The share of the machine's CPU time its host stole in the window.
    steal_pct: f64,
    /// How long the window lasted (the last may be short).
    secs: f64,
}

/// The size of everything under `dir`, in MiB.
fn dir_mib(dir: &std::path::Path) -> f64 {
    fn walk(d: &std::path::Path) -> u64 {
        std::fs::read_dir(d)
            .map(|it| {
                it.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir) as f64 / (1 << 20) as f64
}

/// One gauge of a member's `/metrics`.
fn gauge(http: &str, name: &str) -> f64 {
    charter::harness::http(http, "GET", "/metrics", &[], b"")
        .ok()
        .and_then(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// What the load's workers share: cycles done, the stop flag, and grant
/// latencies (µs) since the last window took them.
struct Load {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    lat: Arc<Mutex<Vec<u64>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// 32 clients, each requesting and releasing one lease in a loop (each call
/// with its own idempotency key, as the CLI sends them), until stopped or
/// `limit` cycles (0: no limit) are done.
fn start_load(rt: &tokio::runtime::Runtime, ch: &tonic::transport::Channel, limit: u64) -> Load {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let lat: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..32u64 {
        let (ch, done, stop, lat) = (ch.clone(), done.clone(), stop.clone(), lat.clone());
        workers.push(rt.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed)
                && (limit == 0 || done.load(Ordering::Relaxed) < limit)
            {
                let t = Instant::now();
                let req = authed(pb::LeaseRequest {
                    idempotency_key: format!("soak-{w}-{n}"),
                    resources: Some(pb::Resources {
                        cpu_millis: 10,
                        ..Default::default()
                    }),
                    duration_ms: 3_600_000,
                    reason: "soak".into(),
                    ..Default::default()
                });
                let Ok(r) = LeasesClient::new(ch.clone()).request(req).await else {
                    continue;
                };
                let us = t.elapsed().as_micros() as u64;
                let id = r.into_inner().lease.map_or(0, |l| l.id);
                let rel = authed(pb::ReleaseLeaseRequest {
                    idempotency_key: format!("soak-{w}-{n}-release"),
                    id,
                });
                if LeasesClient::new(ch.clone()).release(rel).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut l) = lat.lock() {
                        l.push(us);
                    }
                }
                n += 1;
            }
        }));
    }
    Load {
        done,
        stop,
        lat,
        workers,
    }
}

/// Registers the one big node every lease of the soak lands on.
fn register_soak_node(
    rt: &tokio::runtime::Runtime,
    ch: &tonic::transport::Channel,
) -> anyhow::Result<()> {
    rt.block_on(async {
        let req = authed(pb::RegisterNodeRequest {
            name: "soak".into(),
            capacity: Some(pb::Resources {
                cpu_millis: 1_000_000,
                memory_bytes: 1 << 40,
                ..Default::default()
            }),
            pool: "bench".into(),
            ..Default::default()
        });
        pb::nodes_client::NodesClient::new(ch.clone())
            .register(req)
            .await
    })?;
    Ok(())
}

/// Runs the soak.
pub fn soak(
    rt: &tokio::runtime::Runtime,
    exe: &std::path::Path,
    s: Soak,
) -> anyhow::Result<Report> {
    let _in = rt.enter();
    // Extra member flags, to compare settings (e.g. `--idempotency-max 10000`).
    let flags = std::env::var("CHARTER_SOAK_SERVER_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let mut c = Cluster::prepare(exe, 3, &flags)
        .map_err(|e| fail("cannot start the bench cluster", e, ""))?;
    // A profiler to run the members under (e.g. `heaptrack -o /tmp/soak`).
    let wrap = std::env::var("CHARTER_SOAK_WRAP").unwrap_or_default();
    for i in 0..3 {
        c.members[i].wrap = wrap.split_whitespace().map(str::to_string).collect();
        c.spawn(i, false)
            .map_err(|e| fail("cannot start the bench cluster", e, ""))?;
    }
    let leader = c
        .wait_leader(Duration::from_secs(20))
        .map_err(|e| fail("the bench cluster elected no leader", e, ""))?;
    let ch = channel(&c.members[leader].grpc)?;
    register_soak_node(rt, &ch)?;
    let load = start_load(rt, &ch, s.cycles);
    let pid = c.members[leader]
        .child
        .as_ref()
        .map(|ch| ch.id())
        .unwrap_or(0);
    let (http, data) = (
        c.members[leader].http.clone(),
        c.members[leader].data.clone(),
    );
    let start = Instant::now();
    let windows = sample(&s, &load, (pid, &http, &data));
    load.stop.store(true, Ordering::Relaxed);
    for w in load.workers {
        let _ = rt.block_on(w);
    }
    let mut m = summary(&windows, start.elapsed().as_secs_f64(), s.every);
    m.insert(
        "restart_healthy_ms".into(),
        restart_follower(&mut c, leader, &http)?,
    );
    Ok(Report {
        scenario: "soak".into(),
        metrics: m,
    })
}

/// Every `s.every`, a window of what the leader holds and how grants went,
/// printed as it is taken, until the duration or the cycle count is done.
fn sample(s: &Soak, load: &Load, (pid, http, data): (u32, &str, &std::path::Path)) -> Vec<Window> {
    let start = Instant::now();
    let mut windows: Vec<Window> = Vec::new();
    eprintln!(
        "soak: MINUTE  CYCLES  CYCLES/S  RSS_MIB  DATA_MIB  SNAPSHOT_MIB  STATE_LEASES  GRANT_P99_MS  STEAL_PCT"
    );
    let (mut last, mut last_at, mut last_steal) = (0u64, 0.0f64, Steal::now());
    let over = |n: u64| start.elapsed() >= s.duration || (s.cycles > 0 && n >= s.cycles);
    loop {
        let next = s.every * (windows.len() as u32 + 1);
        while start.elapsed() < next && !over(load.done.load(Ordering::Relaxed)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let n = load.done.load(Ordering::Relaxed);
        let mut l = load
            .lat
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        l.sort_unstable();
        let steal = Steal::now();
        let w = Window {
            cycles: n,
            rss_mib: rss_mib(pid),
            data_mib: dir_mib(data),
            snapshot_mib: gauge(http, "charter_raft_snapshot_bytes") / (1 << 20) as f64,
            state_leases: gauge(http, "charter_state_leases"),
            p99_ms: percentile_ms(&l, 0.99),
            steal_pct: steal.pct_since(last_steal),
            secs: (start.elapsed().as_secs_f64() - last_at).max(1e-3),
        };
        last_at = start.elapsed().as_secs_f64();
        last_steal = steal;
        eprintln!(
            "soak: {:>6.1}  {:>6}  {:>8.0}  {:>7.1}  {:>8.1}  {:>12.1}  {:>12}  {:>12.2}  {:>9.1}",
            start.elapsed().as_secs_f64() / 60.0,
            n,
            (n - last) as f64 / w.secs,
            w.rss_mib,
            w.data_mib,
            w.snapshot_mib,
            w.state_leases,
            w.p99_ms,
            w.steal_pct
        );
        last = n;
        windows.push(w);
        if over(n) {
            return windows;
        }
    }
}

/// The figures of the first and the last window. A short trailing window
/// (the cycle count ran out) has too few samples for a p99: the last full
/// one stands for the end.
fn summary(windows: &[Window], secs: f64, every: Duration) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let (first, end) = (&windows[0], &windows[windows.len() - 1]);
    m.insert("cycles".into(), end.cycles as f64);
    m.insert("cycles_per_s".into(), end.cycles as f64 / secs);
    m.insert("rss_first_mib".into(), first.rss_mib);
    m.insert("rss_last_mib".into(), end.rss_mib);
    m.insert("data_first_mib".into(), first.data_mib);
    m.insert("data_last_mib".into(), end.data_mib);
    m.insert("snapshot_last_mib".into(), end.snapshot_mib);
    m.insert("state_leases_last".into(), end.state_leases);
    m.insert("grant_p99_first_ms".into(), first.p99_ms);
    let tail = windows
        .iter()
        .rev()
        .find(|w| w.secs >= every.as_secs_f64() / 2.0)
        .unwrap_or(end);
    m.insert("grant_p99_last_ms".into(), tail.p99_ms);
    let busiest = windows.iter().map(|w| w.steal_pct).fold(0.0, f64::max);
    m.insert("steal_max_pct".into(), busiest);
    m
}

/// Restarts a follower and times it from start to healthy (serving and
/// caught up with the leader's commit index), in ms.
fn restart_follower(c: &mut Cluster, leader: usize, http: &str) -> anyhow::Result<f64> {
    let f = (leader + 1) % 3;
    let commit = gauge(http, "charter_raft_commit_index") as u64;
    c.stop(f).map_err(|e| fail("cannot stop a member", e, ""))?;
    let t = Instant::now();
    c.spawn(f, false)
        .map_err(|e| fail("cannot restart a member", e, ""))?;
    let fhttp = c.members[f].http.clone();
    while t.elapsed() < Duration::from_secs(60) {
        if gauge(&fhttp, "charter_raft_applied_index") as u64 >= commit {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}
