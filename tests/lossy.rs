//! Progress on poor links: three members, each in a network namespace of
//! its own, with 100-300 ms of delay and 10% loss on every link between
//! them (a delay line in this process: `charter::netlab`), and clients in
//! a fourth namespace on clean links. Requests go on for
//! `CHARTER_LOSSY_SECS` (default 30) from 4 clients at once; at least 90%
//! must be answered within 5 s. Needs root (CI runs as root).

mod common;

use charter::netlab::{Lab, Link, ip};
use common::*;
use std::time::{Duration, Instant};

const CLIENT: usize = 3;

/// Between members: 100-300 ms each way, 10% of packets dropped.
const LOSSY: Link = Link {
    delay_ms: (100, 300),
    loss: 0.10,
    cut: false,
};

fn secs() -> u64 {
    std::env::var("CHARTER_LOSSY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

#[test]
fn a_cluster_on_lossy_links_answers_nine_requests_in_ten_within_five_seconds() {
    let lab = Lab::new(&format!("chl{}", std::process::id() % 10_000), 4).unwrap_or_else(|e| {
        panic!("cannot build the network lab (needs root, /dev/net/tun, iproute2): {e}")
    });
    // Extra server flags, to compare timings by hand (e.g. `--election-timeout 2s`).
    let flags = std::env::var("CHARTER_LOSSY_SERVER_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let c = Cluster(charter::harness::Cluster::in_lab(BIN.as_ref(), &lab, 3, &flags).unwrap());
    let servers = c.servers();
    let cli = |args: &[&str]| {
        lab.command(CLIENT, BIN.as_ref())
            .args(["--server", &servers, "--token", TOKEN])
            .args(args)
            .env(
                "CHARTER_HOME",
                std::env::temp_dir().join("charter-tests-no-home"),
            )
            .env("CHARTER_RETRY_FOR", "5s")
            .output()
            .unwrap()
    };
    wait_for("a leader", Duration::from_secs(30), || {
        let out = cli(&["cluster", "status", "--json"]);
        out.status.success().then_some(())
    });
    let out = cli(&[
        "node", "register", "n1", "--cpu", "1000", "--mem", "1000GiB",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let term = || {
        json_ok(&cli(&["cluster", "status", "--json"]))["term"]
            .as_u64()
            .unwrap_or(0)
    };
    let term0 = term();

    lab.set_among(&[0, 1, 2], LOSSY);
    let r = measure(|| {
        cli(&[
            "lease", "request", "--cpu", "0.01", "--for", "10m", "--json",
        ])
        .status
        .success()
    });
    lab.set_among(&[0, 1, 2], Link::CLEAN);
    let (delivered, dropped) = lab.counts();
    let terms = wait_for(
        "the cluster after the heal",
        Duration::from_secs(30),
        || {
            let t = term();
            (t > 0).then_some(t - term0)
        },
    );
    eprintln!(
        "charter on lossy links (100-300 ms, 10% loss between members, {} s, 4 clients): {}; {terms} new terms; packets delivered {delivered}, dropped {dropped}; server flags {flags:?}",
        secs(),
        r.line()
    );
    let Figures { n, within, .. } = r;
    drop(c);
    etcd_on_the_same_links(&lab);
    assert!(n >= 8, "only {n} requests finished in {} s", secs());
    assert!(
        within * 10 >= n * 9,
        "{within} of {n} requests answered within 5 s; want 90%"
    );
}

/// What one side did: requests finished, answered within 5 s, latencies.
struct Figures {
    n: usize,
    within: usize,
    lat: Vec<u128>,
}

impl Figures {
    fn pct(&self, p: f64) -> u128 {
        let i = ((self.lat.len() as f64 * p) as usize).min(self.lat.len().saturating_sub(1));
        self.lat.get(i).copied().unwrap_or(0)
    }

    fn line(&self) -> String {
        format!(
            "{}/{} answered within 5 s ({:.1}%); p50 {} ms, p99 {} ms",
            self.within,
            self.n,
            100.0 * self.within as f64 / self.n.max(1) as f64,
            self.pct(0.5),
            self.pct(0.99)
        )
    }
}

/// Runs `one` (a request from a fresh client process, true when it
/// succeeded) from 4 clients at once for [`secs`].
fn measure(one: impl Fn() -> bool + Sync) -> Figures {
    let until = Instant::now() + Duration::from_secs(secs());
    let results: Vec<(bool, Duration)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while Instant::now() < until {
                        let t = Instant::now();
                        let ok = one();
                        out.push((ok, t.elapsed()));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let within = results
        .iter()
        .filter(|(ok, d)| *ok && *d <= Duration::from_millis(5_500))
        .count();
    let mut lat: Vec<u128> = results
        .iter()
        .filter(|(ok, _)| *ok)
        .map(|(_, d)| d.as_millis())
        .collect();
    lat.sort();
    Figures {
        n: results.len(),
        within,
        lat,
    }
}

/// etcd (Debian's etcd-server, its default timing: 100 ms heartbeats,
/// 1 s elections) on the same lab and links, with `etcdctl put` from the
/// same client namespace, each a fresh process with a 5 s timeout as the
/// charter CLI's: figures only, for the README's comparison.
fn etcd_on_the_same_links(lab: &Lab) {
    let etcd = std::path::Path::new("/usr/bin/etcd");
    let etcdctl = std::path::Path::new("/usr/bin/etcdctl");
    if !etcd.exists() || !etcdctl.exists() {
        eprintln!(
            "etcd on lossy links: not measured (install Debian's etcd-server and etcd-client)"
        );
        return;
    }
    lab.set_among(&[0, 1, 2], Link::CLEAN);
    let dir = tempfile::tempdir().unwrap();
    let cluster = (0..3)
        .map(|i| format!("e{i}=http://{}:2380", ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<std::process::Child> = (0..3)
        .map(|i| {
            let log = std::fs::File::create(dir.path().join(format!("e{i}.log"))).unwrap();
            lab.command(i, etcd)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args([
                    "--listen-peer-urls",
                    &format!("http://{}:2380", ip(i)),
                    "--initial-advertise-peer-urls",
                    &format!("http://{}:2380", ip(i)),
                    "--listen-client-urls",
                    &format!("http://{}:2379", ip(i)),
                    "--advertise-client-urls",
                    &format!("http://{}:2379", ip(i)),
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                ])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect();
    let endpoints = (0..3)
        .map(|i| format!("http://{}:2379", ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    let put = |k: &str| {
        lab.command(CLIENT, etcdctl)
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &endpoints,
                "--command-timeout=5s",
                "put",
                k,
                "v",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    wait_for("etcd to answer", Duration::from_secs(30), || {
        put("warmup").then_some(())
    });
    lab.set_among(&[0, 1, 2], LOSSY);
    let seq = std::sync::atomic::AtomicU64::new(0);
    let r = measure(|| {
        let k = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        put(&format!("k{k}"))
    });
    lab.set_among(&[0, 1, 2], Link::CLEAN);
    eprintln!(
        "etcd 3.4 on the same links ({} s, 4 clients, etcdctl put): {}",
        secs(),
        r.line()
    );
    for m in &mut members {
        let _ = m.kill();
        let _ = m.wait();
    }
}
