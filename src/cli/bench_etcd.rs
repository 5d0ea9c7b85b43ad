//! etcd beside Charter, measured the same way.
//!
//! [`Etcd`] starts Debian's etcd 3.4 (`/usr/bin/etcd`, three members on
//! loopback, fsync on as by default) when it is installed. `race`
//! (`charter bench --scenario race`) then measures Charter's lease grant
//! and etcd's `LeaseGrant` with one client: the same Rust tonic code, one
//! HTTP/2 connection to each leader, the same closed loops at 1, 16 and 64
//! in flight, in rounds that alternate etcd, Charter, etcd, Charter, and
//! the CPU time of each side's three members per grant from /proc.
//!
//! A Charter grant places a lease on one of a registered fleet (placement,
//! quota, fencing token); an etcd lease grant records an id and a TTL. Both
//! are one replicated, fsynced write acknowledged after it is committed.
//! etcd's messages are declared here with prost by their field numbers
//! (etcd's `rpc.proto`), so no etcd crate or generated code is needed.

use super::bench::{
    Report, Steal, channel, closed_loop, cpu_s, grant_once, percentile_ms, register_fleet,
};
use super::output::fail;
use charter::harness::Cluster;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeaseGrantRequest {
    #[prost(int64, tag = "1")]
    ttl: i64,
    #[prost(int64, tag = "2")]
    id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeaseGrantResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    id: i64,
    #[prost(int64, tag = "3")]
    ttl: i64,
    #[prost(string, tag = "4")]
    error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    version: String,
    #[prost(int64, tag = "3")]
    db_size: i64,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

/// One unary call of etcd's API on `ch`.
async fn etcd_call<Q, R>(ch: Channel, path: &'static str, req: Q) -> Result<R, tonic::Status>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Q, R>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    Ok(grpc
        .unary(tonic::Request::new(req), path, codec)
        .await?
        .into_inner())
}

/// The client URL of etcd's leader, asked of each member.
async fn etcd_leader(e: &Etcd) -> anyhow::Result<String> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        for url in e.endpoints.split(',') {
            let ch = channel(url)?;
            let st: Result<StatusResponse, _> =
                etcd_call(ch, "/etcdserverpb.Maintenance/Status", StatusRequest {}).await;
            if let Ok(st) = st
                && st.leader != 0
                && st.header.as_ref().is_some_and(|h| h.member_id == st.leader)
            {
                return Ok(url.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(fail("etcd elected no leader within 20 s", "", ""))
}

/// What one side did in one run.
struct Run {
    grants_per_s: f64,
    p50: f64,
    p99: f64,
    cpu_us_per_grant: f64,
}

fn run_of(count: u64, lat: &[u64], cpu_s: f64, dur: Duration) -> Run {
    Run {
        grants_per_s: count as f64 / dur.as_secs_f64(),
        p50: percentile_ms(lat, 0.50),
        p99: percentile_ms(lat, 0.99),
        cpu_us_per_grant: if count == 0 {
            0.0
        } else {
            cpu_s * 1e6 / count as f64
        },
    }
}

/// `charter bench --scenario race`.
///
/// Over 80 lines: a benchmark script: alternating rounds of both sides.
pub fn race(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    dur: Duration,
    rounds: usize,
    nodes: usize,
) -> anyhow::Result<Report> {
    let Some(etcd) = Etcd::start() else {
        return Err(fail(
            "etcd is not installed",
            "the race needs /usr/bin/etcd and /usr/bin/etcdctl",
            "apt-get install etcd-server etcd-client (.ci/run does)",
        ));
    };
    let c =
        Cluster::start(exe, 3, &[]).map_err(|e| fail("cannot start the bench cluster", e, ""))?;
    let leader = c
        .wait_leader(Duration::from_secs(20))
        .map_err(|e| fail("the bench cluster elected no leader", e, ""))?;
    let charter_pids: Vec<u32> = c
        .members
        .iter()
        .filter_map(|m| m.child.as_ref().map(|ch| ch.id()))
        .collect();
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_s(p)).sum::<f64>();
    let mut runs: BTreeMap<(&str, usize), Vec<Run>> = BTreeMap::new();
    rt.block_on(async {
        let charter_ch = channel(&c.members[leader].grpc)?;
        register_fleet(&charter_ch, nodes).await?;
        let etcd_ch = channel(&etcd_leader(&etcd).await?)?;
        for round in 0..rounds {
            for clients in [1usize, 16, 64] {
                for side in ["etcd", "charter"] {
                    let (ch, pids) = if side == "etcd" {
                        (etcd_ch.clone(), etcd.pids())
                    } else {
                        (charter_ch.clone(), charter_pids.clone())
                    };
                    let (cpu0, steal0) = (cpu(&pids), Steal::now());
                    let (count, lat) = closed_loop(clients, dur, move |w, n| {
                        let ch = ch.clone();
                        async move {
                            if side == "etcd" {
                                let req = LeaseGrantRequest { ttl: 3600, id: 0 };
                                let r: Result<LeaseGrantResponse, _> =
                                    etcd_call(ch, "/etcdserverpb.Lease/LeaseGrant", req).await;
                                r.is_ok_and(|r| r.error.is_empty() && r.id != 0)
                            } else {
                                grant_once(ch, format!("race-{round}-{w}-{n}")).await
                            }
                        }
                    })
                    .await;
                    let run = run_of(count, &lat, cpu(&pids) - cpu0, dur);
                    eprintln!(
                        "bench: round {round} c{clients} {side}: {:.0} grants/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} µs CPU/grant, {:.0}% steal",
                        run.grants_per_s,
                        run.p50,
                        run.p99,
                        run.cpu_us_per_grant,
                        Steal::now().pct_since(steal0)
                    );
                    runs.entry((side, clients)).or_default().push(run);
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let mut metrics = BTreeMap::new();
    for ((side, clients), rs) in &runs {
        let figures = [
            (
                "grants_per_s",
                rs.iter().map(|r| r.grants_per_s).collect::<Vec<_>>(),
            ),
            ("p50_ms", rs.iter().map(|r| r.p50).collect()),
            ("p99_ms", rs.iter().map(|r| r.p99).collect()),
            (
                "server_cpu_us_per_grant",
                rs.iter().map(|r| r.cpu_us_per_grant).collect(),
            ),
        ];
        for (name, mut v) in figures {
            v.sort_by(f64::total_cmp);
            let key = format!("{side}_c{clients}_{name}");
            metrics.insert(format!("{key}_min"), v[0]);
            metrics.insert(format!("{key}_median"), v[v.len() / 2]);
            metrics.insert(format!("{key}_max"), v[v.len() - 1]);
        }
    }
    metrics.insert("rounds".into(), rounds as f64);
    Ok(Report {
        scenario: "race".into(),
        metrics,
    })
}

/// A 3-member etcd on loopback, stopped on drop.
pub(super) struct Etcd {
    children: Vec<std::process::Child>,
    /// The client URLs, comma-separated, as etcdctl takes them.
    pub(super) endpoints: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub(super) fn start() -> Option<Etcd> {
        let (etcd, etcdctl) = (Path::new("/usr/bin/etcd"), Path::new("/usr/bin/etcdctl"));
        if !etcd.exists() || !etcdctl.exists() {
            return None;
        }
        let ports = charter::harness::free_ports(6).ok()?;
        let dir = tempfile::tempdir().ok()?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
        let client = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let cluster = (0..3)
            .map(|i| format!("e{i}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        for i in 0..3 {
            let log = std::fs::File::create(dir.path().join(format!("e{i}.log"))).ok()?;
            let child = Command::new(etcd)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--listen-client-urls", &client(i)])
                .args(["--advertise-client-urls", &client(i)])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .stdout(log.try_clone().ok()?)
                .stderr(log)
                .spawn()
                .ok()?;
            children.push(child);
        }
        let e = Etcd {
            children,
            endpoints: (0..3).map(client).collect::<Vec<_>>().join(","),
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if e.lock("warmup", &["true"])
                .status()
                .is_ok_and(|s| s.success())
            {
                return Some(e);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("bench: etcd did not answer within 30 s; not measured");
        None
    }

    /// `etcdctl lock NAME CMD…`, not yet run.
    pub(super) fn lock(&self, name: &str, cmd: &[&str]) -> Command {
        let mut k = Command::new("/usr/bin/etcdctl");
        k.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints, "lock", name, "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        k
    }
}

impl Etcd {
    /// Process ids of the members, for their CPU time.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
