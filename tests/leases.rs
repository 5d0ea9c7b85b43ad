//! Leases end to end on a 3-member cluster: concurrency never over-commits,
//! the queue hands out freed capacity promptly, and leases keep their
//! absolute times across a leader failover.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(15);

fn fleet(c: &Cluster, n: usize, cpu: &str) {
    for i in 0..n {
        let name = format!("n{i}");
        let out = c.cli(&[
            "node",
            "register",
            &name,
            "--cpu",
            cpu,
            "--mem",
            "8GiB",
            "--label",
            &format!("zone=z{}", i % 2),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// Per node: the capacity, and the sum of what granted leases hold.
fn sums(c: &Cluster, member: usize) -> BTreeMap<String, (u64, u64)> {
    let nodes = json_ok(&c.cli_on(member, &["node", "list", "--json"]));
    let leases = json_ok(&c.cli_on(member, &["lease", "list", "--json"]));
    let mut out: BTreeMap<String, (u64, u64)> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                (n["cpu_millis"].as_u64().unwrap(), 0),
            )
        })
        .collect();
    for l in leases["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "granted")
    {
        for n in l["nodes"].as_array().unwrap() {
            out.get_mut(n.as_str().unwrap()).unwrap().1 += l["cpu_millis"].as_u64().unwrap();
        }
    }
    out
}

#[test]
fn concurrent_requests_from_many_clients_never_overcommit() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    fleet(&c, 3, "4");
    for burst in 0..2 {
        // 24 clients through all three members at once, 36 cores asked of 12.
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let servers = c.members[i % 3].grpc.clone();
                let count = if i % 5 == 0 { "2" } else { "1" };
                std::thread::spawn(move || {
                    cli(
                        &servers,
                        TOKEN,
                        &[
                            "lease", "request", "--cpu", "1.5", "--count", count, "--for", "1h",
                            "--json",
                        ],
                    )
                })
            })
            .collect();
        let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let granted = outs.iter().filter(|o| o.status.success()).count();
        assert!(granted > 0, "burst {burst}: nothing granted");
        for o in outs.iter().filter(|o| !o.status.success()) {
            assert!(
                stderr(o).contains("no node can hold the lease"),
                "refusals say why: {}",
                stderr(o)
            );
        }
        for m in 0..3 {
            for (node, (cap, held)) in sums(&c, m) {
                assert!(
                    held <= cap,
                    "burst {burst}, member {}: node {node} holds {held} of {cap}",
                    m + 1
                );
            }
        }
        // Free everything for the next burst.
        let all = json_ok(&c.cli(&["lease", "list", "--json"]));
        for l in all["leases"].as_array().unwrap() {
            json_ok(&c.cli(&["lease", "release", &l["id"].to_string(), "--json"]));
        }
    }
}

#[test]
fn a_queued_request_is_granted_promptly_once_capacity_frees() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    fleet(&c, 1, "2");
    let held = json_ok(&c.cli(&["lease", "request", "--cpu", "2", "--for", "1h", "--json"]));
    // Without --wait a request that does not fit is refused at once, with the reason.
    let out = c.cli(&["lease", "request", "--cpu", "1", "--for", "1h"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("n0: needs 1 cores, 0 free"),
        "{}",
        stderr(&out)
    );
    // One no node could ever hold is refused at once even with --wait.
    let out = c.cli(&[
        "lease", "request", "--cpu", "1", "--label", "gpu=a100", "--for", "1h", "--wait", "1m",
    ]);
    assert!(
        stderr(&out).contains("no node could ever hold it: n0: needs gpu=a100, has no gpu"),
        "{}",
        stderr(&out)
    );
    // ... and its hint fits: waiting would not help.
    assert!(
        stderr(&out).contains("add one that fits") && !stderr(&out).contains("wait"),
        "{}",
        stderr(&out)
    );
    // A waiting request: `lease request --wait` blocks until granted.
    let servers = c.servers();
    let waiter = std::thread::spawn(move || {
        cli(
            &servers,
            TOKEN,
            &[
                "lease", "request", "--cpu", "1", "--for", "1h", "--wait", "30s", "--json",
            ],
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let ls = json_ok(&c.cli(&["lease", "list", "--state", "pending", "--json"]));
        if let Some(l) = ls["leases"].as_array().unwrap().first() {
            break l["id"].to_string();
        }
        assert!(Instant::now() < deadline, "the request never queued");
        std::thread::sleep(Duration::from_millis(50));
    };
    let why = json_ok(&c.cli(&["lease", "why", &pending, "--json"]));
    assert_eq!(why["state"], "pending");
    assert_eq!(why["reasons"][0], "n0: needs 1 cores, 0 free");
    let released = Instant::now();
    json_ok(&c.cli(&["lease", "release", &held["id"].to_string(), "--json"]));
    let out = waiter.join().unwrap();
    let granted = json_ok(&out);
    assert_eq!(granted["state"], "granted");
    assert_eq!(granted["id"].to_string(), pending);
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "granted {:?} after the release",
        released.elapsed()
    );
    assert!(granted["fencing_token"].as_u64() > held["fencing_token"].as_u64());
}

#[test]
fn leases_survive_a_failover_and_expire_on_time_across_it() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    fleet(&c, 2, "4");
    let long = json_ok(&c.cli(&["lease", "request", "--cpu", "1", "--for", "1h", "--json"]));
    let short = json_ok(&c.cli(&["lease", "request", "--cpu", "1", "--for", "3s", "--json"]));
    c.kill9(leader);
    let new_leader = c.wait_leader(ELECTION);
    // The long lease is intact: same node, same absolute times, same token.
    let again = json_ok(&c.cli_on(
        new_leader,
        &["lease", "show", &long["id"].to_string(), "--json"],
    ));
    for k in [
        "nodes",
        "granted_at",
        "expires_at",
        "fencing_token",
        "state",
    ] {
        assert_eq!(again[k], long[k], "{k} changed across the failover");
    }
    // The short one expires at its expires_at, not later, though the leader changed.
    let expires =
        chrono::DateTime::parse_from_rfc3339(short["expires_at"].as_str().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = json_ok(&c.cli_on(
            new_leader,
            &["lease", "show", &short["id"].to_string(), "--json"],
        ));
        if s["state"] == "expired" {
            let ended =
                chrono::DateTime::parse_from_rfc3339(s["ended_at"].as_str().unwrap()).unwrap();
            let late = (ended - expires).num_milliseconds();
            assert!(
                (0..2_000).contains(&late),
                "expired {late} ms after expires_at"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the short lease never expired: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn renew_drain_and_revoke_from_the_cli() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    fleet(&c, 2, "2");
    let l = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &[
            "lease",
            "request",
            "--cpu",
            "1",
            "--for",
            "10m",
            "--max-total",
            "30m",
            "--json",
        ],
    ));
    let r = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &[
            "lease",
            "renew",
            &l["id"].to_string(),
            "--for",
            "20m",
            "--json",
        ],
    ));
    assert!(r["expires_at"].as_str() > l["expires_at"].as_str());
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "renew", &l["id"].to_string(), "--for", "2h"],
    );
    assert!(
        out.status.success(),
        "capped at the max total: {}",
        stderr(&out)
    );
    // It says it got less than asked, and why.
    assert!(
        stderr(&out).contains("its max total is 30m from its grant"),
        "{}",
        stderr(&out)
    );
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "renew", &l["id"].to_string(), "--for", "2h"],
    );
    let err = stderr(&out);
    assert!(err.contains("reached its max total"), "{err}");
    assert!(
        err.contains("FailedPrecondition")
            && err.contains("--max-total")
            && !err.contains("ask an admin"),
        "the limit is the lease's own, not a permission: {err}"
    );
    // Without --max-total a lease renews for up to 7 days from its grant.
    let d = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--cpu", "1", "--for", "10m", "--json"],
    ));
    assert_eq!(d["max_total_ms"], 7 * 24 * 3_600_000u64, "{d}");
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &[
            "lease",
            "renew",
            &d["id"].to_string(),
            "--for",
            "1h",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json_ok(&out)["expires_at"].as_str() > d["expires_at"].as_str());
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    // Draining a node keeps its lease but sends new grants elsewhere.
    let node = l["nodes"][0].as_str().unwrap().to_string();
    let d = json_ok(&c.cli(&["node", "drain", &node, "--json"]));
    assert_eq!(d["state"], "draining");
    let other = json_ok(&c.cli(&["lease", "request", "--cpu", "1", "--for", "1h", "--json"]));
    assert_ne!(other["nodes"][0], node);
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "revoke", &other["id"].to_string()],
    );
    assert!(
        stderr(&out).contains("needs an admin token"),
        "{}",
        stderr(&out)
    );
    let rv = json_ok(&c.cli(&["lease", "revoke", &l["id"].to_string(), "--json"]));
    assert_eq!(rv["state"], "revoked");
    json_ok(&c.cli(&["node", "undrain", &node, "--json"]));
}

#[test]
fn quotas_and_heartbeats_from_the_cli() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    fleet(&c, 1, "8");
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["quota", "set", "ann", "--max-cores", "2"],
    );
    assert!(
        stderr(&out).contains("needs an admin token"),
        "{}",
        stderr(&out)
    );
    json_ok(&c.cli(&[
        "quota",
        "set",
        "ann",
        "--max-cores",
        "2",
        "--max-leases",
        "5",
        "--max-duration",
        "2h",
        "--json",
    ]));
    let qs = json_ok(&c.cli(&["quota", "list", "--json"]));
    assert_eq!(qs["quotas"][0]["max_cpu_millis"], 2000);
    json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--cpu", "1.5", "--for", "1h", "--json"],
    ));
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--cpu", "1", "--for", "1h"],
    );
    assert!(
        stderr(&out).contains("quota: ann may hold at most 2 cores; holds 1.5, asked for 1 more"),
        "{}",
        stderr(&out)
    );
    // A quota is ann's own limit: the hint says where to look, not "use a
    // token of the principal that owns it".
    assert!(
        stderr(&out).contains("hint: see your limits with `charter quota list`"),
        "{}",
        stderr(&out)
    );
    // A request that names no resources holds the documented default.
    let l = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--for", "1m", "--json"],
    ));
    assert_eq!(
        (l["cpu_millis"].as_u64(), l["memory_bytes"].as_u64()),
        (Some(100), Some(256 << 20)),
        "{l}"
    );
    json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "release", &l["id"].to_string(), "--json"],
    ));
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--cpu", "0.1", "--for", "3h"],
    );
    assert!(stderr(&out).contains("at most 7200 s"), "{}", stderr(&out));

    // A node with a heartbeat TTL that stops beating goes down; its lease is lost.
    let out = c.cli(&[
        "node", "register", "beating", "--cpu", "4", "--mem", "1GiB", "--ttl", "1s", "--label",
        "hb=1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let l = json_ok(&c.cli(&[
        "lease", "request", "--cpu", "1", "--label", "hb=1", "--for", "1h", "--json",
    ]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = json_ok(&c.cli(&["lease", "show", &l["id"].to_string(), "--json"]));
        if s["state"] == "lost" {
            break;
        }
        assert!(Instant::now() < deadline, "lease never lost: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = json_ok(&c.cli(&["node", "show", "beating", "--json"]));
    assert_eq!(n["state"], "down");
    let n = json_ok(&c.cli(&["node", "heartbeat", "beating", "--json"]));
    assert_eq!(n["state"], "ready", "a heartbeat brings it back");
}

/// Ctrl-C (or SIGTERM) on `lease request --wait` gives the pending
/// request back, as `salloc` does, instead of leaving it to hold capacity
/// later; its status line never goes into a pipe.
#[test]
fn interrupting_a_waiting_request_gives_it_back() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    fleet(&c, 1, "1");
    let held = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--cpu", "1", "--for", "10m", "--json"],
    ));
    assert_eq!(held["state"], "granted");
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let child = cli_command(
            &c.servers(),
            OTHER_TOKEN,
            &[
                "lease", "request", "--cpu", "1", "--for", "10m", "--wait", "5m",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        let id = wait_for("the request to queue", Duration::from_secs(10), || {
            let v = json_ok(&cli(
                &c.servers(),
                OTHER_TOKEN,
                &["lease", "list", "--state", "pending", "--json"],
            ));
            v["leases"].as_array()?.first().map(|l| l["id"].to_string())
        });
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(
            err.contains(&format!("lease request {id} given back")),
            "{err}"
        );
        assert!(
            !err.contains('\x1b'),
            "terminal codes written into a pipe: {err:?}"
        );
        let l = json_ok(&cli(
            &c.servers(),
            OTHER_TOKEN,
            &["lease", "show", &id, "--json"],
        ));
        assert_eq!(l["state"], "released", "{l}");
    }
}

/// `charter lease show 1 | head -0`: a reader that closed the pipe ends
/// the command quietly (141, as SIGPIPE ends `cat`), never with a panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    fleet(&c, 1, "1");
    let l = json_ok(&c.cli(&["lease", "request", "--cpu", "1", "--for", "10m", "--json"]));
    for json in [false, true] {
        let mut args = vec!["lease", "show"];
        let id = l["id"].to_string();
        args.push(&id);
        if json {
            args.push("--json");
        }
        let mut child = cli_command(&c.servers(), TOKEN, &args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(out.status.code(), Some(141), "json {json}: {err}");
        assert!(err.is_empty(), "json {json}: {err}");
    }
}
