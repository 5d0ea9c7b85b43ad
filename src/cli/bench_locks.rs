//! `charter bench --scenario locks`: a 3-member cluster (fsync on) and,
//! when Debian's etcd is installed, a 3-member etcd 3.4 on the same
//! loopback, measured in the same run:
//!
//! - `lib_*`: the Rust client library in this process: acquire-and-release
//!   cycles per second with 1 client on one lock and 16 clients on 16
//!   locks; handover from `release()` being called to the waiter's
//!   `acquire()` returning; and from a holder's `expires_at` (it stopped
//!   renewing) to the waiter's `acquire()` returning;
//! - `cli_*`, side by side: `charter lock run L -- true` against `etcdctl
//!   lock L true`, one process per cycle (process start included on both
//!   sides), and the handover between two such commands: from the holder's
//!   command writing its end time to the waiter's command writing its
//!   start time.

use super::bench::{Report, percentile_ms};
use super::bench_etcd::Etcd;
use super::output::fail;
use charter::harness::{Cluster, TOKEN};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// Runs the scenario.
///
/// Over 80 lines: a benchmark script, read top to bottom.
pub fn locks(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    dur: Duration,
    rounds: usize,
) -> anyhow::Result<Report> {
    let c =
        Cluster::start(exe, 3, &[]).map_err(|e| fail("cannot start the bench cluster", e, ""))?;
    let leader = c
        .wait_leader(Duration::from_secs(20))
        .map_err(|e| fail("the bench cluster elected no leader", e, ""))?;
    let mut m = BTreeMap::new();
    let addrs: Vec<String> = std::iter::once(leader)
        .chain((0..3).filter(|i| *i != leader))
        .map(|i| c.members[i].grpc.clone())
        .collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    // Channels are made inside the runtime.
    let _in_runtime = rt.enter();
    let client = charter_client::Client::connect(&refs, Some(TOKEN.into()))
        .map_err(|e| fail("cannot make a client", e.message().to_string(), ""))?;
    rt.block_on(library(&client, dur, rounds.max(1), &mut m))?;
    let etcd = Etcd::start();
    let charter_cli = |name: &str, cmd: &[&str]| {
        let mut k = Command::new(exe);
        k.args(["--server", &addrs.join(","), "--token", TOKEN])
            .args(["lock", "run", name, "--ttl", "10s", "--"])
            .args(cmd)
            .env("CHARTER_HOME", c.dir.path().join("cli-home"))
            .env_remove("CHARTER_TOKEN")
            .env_remove("CHARTER_SERVER")
            .envs(c.cli_env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        k
    };
    // Alternating rounds: charter, etcd, charter, etcd.
    let mut cycles: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut handover: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let dir = tempfile::tempdir()?;
    for round in 0..2 {
        let n = cli_cycles(dur / 2, || charter_cli("cli", &["true"]));
        cycles.entry("charter").or_default().push(n);
        handover.entry("charter").or_default().extend(cli_handover(
            dir.path(),
            round,
            rounds.max(1),
            |sh| charter_cli("hand", &["sh", "-c", sh]),
        ));
        if let Some(e) = &etcd {
            let n = cli_cycles(dur / 2, || e.lock("cli", &["true"]));
            cycles.entry("etcd").or_default().push(n);
            handover.entry("etcd").or_default().extend(cli_handover(
                dir.path(),
                round,
                rounds.max(1),
                |sh| e.lock("hand", &["sh", "-c", sh]),
            ));
        }
    }
    for (who, runs) in &cycles {
        let lo = runs.iter().copied().fold(f64::MAX, f64::min);
        let hi = runs.iter().copied().fold(0.0, f64::max);
        m.insert(format!("cli_{who}_cycles_per_s_min"), lo);
        m.insert(format!("cli_{who}_cycles_per_s_max"), hi);
    }
    for (who, v) in handover {
        let v = sorted(v);
        m.insert(format!("cli_{who}_handovers"), v.len() as f64);
        if v.is_empty() {
            continue;
        }
        m.insert(format!("cli_{who}_handover_p50_ms"), percentile_ms(&v, 0.5));
        m.insert(format!("cli_{who}_handover_max_ms"), percentile_ms(&v, 1.0));
    }
    m.insert(
        "etcd_measured".into(),
        if etcd.is_some() { 1.0 } else { 0.0 },
    );
    if etcd.is_none() {
        eprintln!(
            "bench: etcd not installed (Debian's etcd-server and etcd-client): only Charter measured"
        );
    }
    Ok(Report {
        scenario: "locks".into(),
        metrics: m,
    })
}

/// Over 80 lines: a benchmark script, read top to bottom.
async fn library(
    client: &charter_client::Client,
    dur: Duration,
    rounds: usize,
    m: &mut BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(10);
    let err = |e: charter_client::Status| anyhow::anyhow!("{}", e.message());
    for clients in [1usize, 16] {
        let until = Instant::now() + dur;
        let mut tasks = Vec::new();
        for i in 0..clients {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let l = c
                        .lock(&format!("bench-{i}"))
                        .ttl(ttl)
                        .wait(Duration::ZERO)
                        .acquire()
                        .await?;
                    l.release().await?;
                    lat.push(t.elapsed().as_micros() as u64);
                }
                Ok::<_, charter_client::Status>(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?.map_err(err)?);
        }
        let all = sorted(all);
        m.insert(
            format!("lib_c{clients}_cycles_per_s"),
            all.len() as f64 / dur.as_secs_f64(),
        );
        m.insert(
            format!("lib_c{clients}_cycle_p50_ms"),
            percentile_ms(&all, 0.5),
        );
        m.insert(
            format!("lib_c{clients}_cycle_p99_ms"),
            percentile_ms(&all, 0.99),
        );
    }
    // Release → the waiter holds it.
    let mut hand = Vec::new();
    for _ in 0..4 * rounds {
        let a = client.lock("hand").ttl(ttl).acquire().await.map_err(err)?;
        let c = client.clone();
        let b = tokio::spawn(async move {
            let l = c.lock("hand").ttl(ttl).acquire().await?;
            let at = Instant::now();
            l.release().await?;
            Ok::<_, charter_client::Status>(at)
        });
        wait_waiter(client, "hand").await?;
        let t0 = Instant::now();
        a.release().await.map_err(err)?;
        let at = b.await?.map_err(err)?;
        hand.push(at.saturating_duration_since(t0).as_micros() as u64);
    }
    let hand = sorted(hand);
    m.insert(
        "lib_release_handover_p50_ms".into(),
        percentile_ms(&hand, 0.5),
    );
    m.insert(
        "lib_release_handover_p99_ms".into(),
        percentile_ms(&hand, 0.99),
    );
    // expires_at → the waiter holds it (the holder stopped renewing).
    let mut late = Vec::new();
    for _ in 0..rounds {
        let a = client
            .lock("expiry")
            .ttl(Duration::from_secs(1))
            .acquire()
            .await
            .map_err(err)?;
        let (id, _) = a.detach();
        let v = client.show("expiry").await.map_err(err)?;
        let expires = v
            .holders
            .iter()
            .find(|h| h.id == id)
            .map_or(0, |h| h.expires_at_ms);
        let l = client
            .lock("expiry")
            .ttl(ttl)
            .acquire()
            .await
            .map_err(err)?;
        late.push((wall_ms() - expires).max(0) as u64 * 1000);
        l.release().await.map_err(err)?;
    }
    let late = sorted(late);
    m.insert(
        "lib_expiry_handover_p50_ms".into(),
        percentile_ms(&late, 0.5),
    );
    m.insert(
        "lib_expiry_handover_max_ms".into(),
        percentile_ms(&late, 1.0),
    );
    Ok(())
}

/// Waits until lock `name` has someone in line.
async fn wait_waiter(client: &charter_client::Client, name: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let v = client
            .show(name)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        if !v.waiters.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(anyhow::anyhow!("no waiter appeared on lock {name}"))
}

/// Cycles per second of `make()` commands run one after another for `dur`.
fn cli_cycles(dur: Duration, make: impl Fn() -> Command) -> f64 {
    let began = Instant::now();
    let mut n = 0u64;
    while began.elapsed() < dur {
        if make().status().is_ok_and(|s| s.success()) {
            n += 1;
        }
    }
    n as f64 / began.elapsed().as_secs_f64()
}

/// `rounds` handovers between two commands: the holder writes its end time
/// and exits; the waiter (started while it holds) writes its start time.
fn cli_handover(
    dir: &Path,
    round: usize,
    rounds: usize,
    make: impl Fn(&str) -> Command,
) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..rounds {
        let a = dir.join(format!("a{round}-{i}"));
        let b = dir.join(format!("b{round}-{i}"));
        let holder = format!("sleep 0.5; date +%s%N > {}", a.display());
        let waiter = format!("date +%s%N > {}", b.display());
        let Ok(mut h) = make(&holder).spawn() else {
            continue;
        };
        std::thread::sleep(Duration::from_millis(200));
        let w = make(&waiter).status();
        let _ = h.wait();
        let read =
            |p: &Path| -> Option<u128> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        if let (Ok(s), Some(ta), Some(tb)) = (w, read(&a), read(&b))
            && s.success()
            && tb >= ta
        {
            out.push(((tb - ta) / 1000) as u64);
        }
    }
    out
}
