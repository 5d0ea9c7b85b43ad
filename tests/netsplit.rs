//! Partitions on real processes in network namespaces (`charter::netlab`):
//! three members, each in a namespace of its own, and clients in a fourth.
//! A follower is cut off from the others (a minority), then the leader
//! (its clients can still reach it), then a one-way partition separates
//! the new leader from a follower; meanwhile 4 clients request leases.
//! Then every acknowledged lease must be in every member's state with the
//! same fencing token and node, no token may repeat, no node may be
//! over-committed, and all members must agree. Needs root (CI runs as root).

mod common;

use charter::netlab::{Lab, Link};
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CLIENT: usize = 3;
const CUT: Link = Link {
    delay_ms: (0, 0),
    loss: 0.0,
    cut: true,
};

#[test]
fn no_acknowledged_lease_is_lost_across_minority_and_leader_isolation_and_a_one_way_partition() {
    let lab = Lab::new(&format!("chs{}", std::process::id() % 10_000), 4).unwrap_or_else(|e| {
        panic!("cannot build the network lab (needs root, /dev/net/tun, iproute2): {e}")
    });
    let c = Cluster(charter::harness::Cluster::in_lab(BIN.as_ref(), &lab, 3, &[]).unwrap());
    let run = |servers: &str, args: &[&str], retry: &str| {
        lab.command(CLIENT, BIN.as_ref())
            .args(["--server", servers, "--token", TOKEN])
            .args(args)
            .env(
                "CHARTER_HOME",
                std::env::temp_dir().join("charter-tests-no-home"),
            )
            .env("CHARTER_RETRY_FOR", retry)
            .output()
            .unwrap()
    };
    let all = c.servers();
    let leader = || -> Option<usize> {
        let out = run(&all, &["cluster", "status", "--json"], "3s");
        out.status
            .success()
            .then(|| json_ok(&out)["leader_id"].as_u64())
            .flatten()
            .map(|id| id as usize - 1)
    };
    let first = wait_for("a leader", Duration::from_secs(30), leader);
    let out = run(
        &all,
        &["node", "register", "n1", "--cpu", "64", "--mem", "64GiB"],
        "5s",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let acked: Mutex<Vec<Value>> = Mutex::default();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut phases = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = run(
                        &all,
                        &[
                            "lease", "request", "--cpu", "0.01", "--for", "10m", "--json",
                        ],
                        "3s",
                    );
                    if out.status.success() {
                        acked.lock().unwrap().push(json_ok(&out));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        // A follower alone (a minority): the other two go on.
        let lonely = (0..3).find(|i| *i != first).unwrap();
        for o in (0..3).filter(|i| *i != lonely) {
            lab.set(lonely, o, CUT);
            lab.set(o, lonely, CUT);
        }
        phases.push(format!("follower {lonely} isolated"));
        std::thread::sleep(Duration::from_secs(5));
        lab.set_among(&[0, 1, 2], Link::CLEAN);
        std::thread::sleep(Duration::from_secs(2));
        let first = wait_for("a leader after the heal", Duration::from_secs(20), leader);
        // The leader alone: no member reaches it, it reaches none; its
        // clients still reach it.
        let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();
        for &o in &others {
            lab.set(first, o, CUT);
            lab.set(o, first, CUT);
        }
        let t = Instant::now();
        let second = wait_for(
            "a new leader among the others",
            Duration::from_secs(20),
            || {
                let out = run(
                    &c.members[others[0]].grpc,
                    &["cluster", "status", "--json"],
                    "2s",
                );
                let l = out
                    .status
                    .success()
                    .then(|| json_ok(&out)["leader_id"].as_u64())
                    .flatten()?;
                (l as usize - 1 != first).then_some(l as usize - 1)
            },
        );
        phases.push(format!(
            "leader {first} isolated; {second} elected after {:?}",
            t.elapsed()
        ));
        std::thread::sleep(Duration::from_secs(5));
        lab.set_among(&[0, 1, 2], Link::CLEAN);
        std::thread::sleep(Duration::from_secs(3));
        // One way: the leader's packets to one follower are lost, the
        // follower's to the leader arrive.
        let now = wait_for("a leader after the heal", Duration::from_secs(20), leader);
        let follower = (0..3).find(|i| *i != now).unwrap();
        lab.set(now, follower, CUT);
        phases.push(format!("one way: {now} -> {follower} cut"));
        std::thread::sleep(Duration::from_secs(8));
        lab.set_among(&[0, 1, 2], Link::CLEAN);
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() >= 20,
        "only {} leases acknowledged; {phases:?}",
        acked.len()
    );

    // Every member's own state (stale reads), once all have applied alike.
    let states: Vec<BTreeMap<u64, Value>> =
        wait_for("every member to agree", Duration::from_secs(30), || {
            let mut states = Vec::new();
            for m in &c.members {
                let out = run(
                    &m.grpc,
                    &["lease", "list", "--all", "--stale", "--json"],
                    "2s",
                );
                if !out.status.success() {
                    return None;
                }
                let v = json_ok(&out);
                let by: BTreeMap<u64, Value> = v["leases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| (l["id"].as_u64().unwrap(), l.clone()))
                    .collect();
                states.push(by);
            }
            states.windows(2).all(|w| w[0] == w[1]).then_some(states)
        });
    let state = &states[0];
    for a in &acked {
        let id = a["id"].as_u64().unwrap();
        let l = state.get(&id).unwrap_or_else(|| {
            panic!("acknowledged lease {id} is in no member's state; {phases:?}")
        });
        for k in ["fencing_token", "nodes", "granted_at", "expires_at"] {
            assert_eq!(
                l[k], a[k],
                "lease {id}: {k} differs from what was acknowledged"
            );
        }
    }
    let tokens: Vec<u64> = state
        .values()
        .filter_map(|l| l["fencing_token"].as_u64())
        .filter(|t| *t > 0)
        .collect();
    let distinct: BTreeSet<u64> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), tokens.len(), "a fencing token repeats");
    let held: f64 = state
        .values()
        .filter(|l| l["state"] == "granted")
        .map(|l| l["cpu_millis"].as_f64().unwrap_or(0.0))
        .sum();
    assert!(
        held <= 64_000.0,
        "node n1 over-committed: {held} millicores"
    );
    eprintln!(
        "netsplit: {} leases acknowledged, all kept; {phases:?}",
        acked.len()
    );
}
