//! Partitions and silent members, on real processes: a frozen member
//! (SIGSTOP), an agent cut off from the servers (a TCP relay the test
//! cuts), and a step of the leader's wall clock (libfaketime). Each checks
//! what a user would see: nodes that stay ready, no copy of a task running
//! beside another, no lease ended early.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(20);

/// A TCP relay on loopback in front of one address, which the test can
/// cut (every connection closed, new ones closed at once) and heal.
struct Relay {
    addr: String,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn to(target: &str) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, c2, k2) = (target.to_string(), cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(down) = s else { continue };
                if c2.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(up) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                {
                    let mut k = k2.lock().unwrap();
                    k.push(down.try_clone().unwrap());
                    k.push(up.try_clone().unwrap());
                }
                for (mut a, mut b) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let cut = c2.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if cut.load(Ordering::SeqCst) || b.write_all(&buf[..n]).is_err()
                                    {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = a.shutdown(Shutdown::Both);
                        let _ = b.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn node_state(c: &Cluster, on: usize, name: &str) -> String {
    let v = json_ok(&c.cli_on(on, &["node", "list", "--json"]));
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| n["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn task(c: &Cluster, on: usize, id: &str) -> Value {
    json_ok(&c.cli_on(on, &["task", "show", id, "--json"]))
}

fn pid_of(c: &Cluster, i: usize) -> i32 {
    c.members[i].child.as_ref().unwrap().id() as i32
}

/// The CLI against every member but `but`, as the admin.
fn cli_but(c: &Cluster, but: usize, args: &[&str]) -> std::process::Output {
    let others: Vec<String> = (0..c.members.len())
        .filter(|i| *i != but)
        .map(|i| c.members[i].grpc.clone())
        .collect();
    c.0.cli_as(&others.join(","), TOKEN, args).unwrap()
}

/// A member that is frozen (it holds its connections open and answers
/// nothing) must not cost a node its liveness: the agent's heartbeats go
/// through the other members, which still form a majority. `leader`:
/// freeze the leader (a new one is elected) rather than a follower.
fn frozen_member_leaves_the_node_ready(leader: bool) {
    let dir = tempfile::tempdir().unwrap();
    open_like_tmp(dir.path());
    let c = Cluster::start(3, &[]);
    let l = c.wait_leader(ELECTION);
    let frozen = if leader {
        l
    } else {
        (0..3).find(|i| *i != l).unwrap()
    };
    // The frozen one first: the agent registers through it.
    let mut order = vec![c.members[frozen].grpc.clone()];
    order.extend(
        (0..3)
            .filter(|i| *i != frozen)
            .map(|i| c.members[i].grpc.clone()),
    );
    let _a = Agent::start_with(
        &order.join(","),
        "n1",
        &dir.path().join("n1"),
        &["--ttl", "3s"],
    );
    let node = |c: &Cluster| -> String {
        let v = json_ok(&cli_but(c, frozen, &["node", "list", "--json"]));
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "n1")
            .map_or(String::new(), |n| {
                n["state"].as_str().unwrap_or("").to_string()
            })
    };
    wait_for("n1 to register", Duration::from_secs(20), || {
        (node(&c) == "ready").then_some(())
    });
    let out = cli_but(
        &c,
        frozen,
        &[
            "task", "submit", "--json", "--amp", "service", "--", "sleep", "600",
        ],
    );
    let id = json_ok(&out)["id"].as_u64().unwrap().to_string();
    let show = |c: &Cluster| json_ok(&cli_but(c, frozen, &["task", "show", &id, "--json"]));
    wait_for("the service to run", Duration::from_secs(20), || {
        (show(&c)["state"] == "running").then_some(())
    });
    let lease = show(&c)["lease"].as_u64().unwrap().to_string();

    unsafe { libc::kill(pid_of(&c, frozen), libc::SIGSTOP) };
    let t = Instant::now();
    let mut seen = Vec::new();
    // Longer than TTL + margin (3 s + 2 s) twice over.
    while t.elapsed() < Duration::from_secs(12) {
        let state = node(&c);
        let l = json_ok(&cli_but(&c, frozen, &["lease", "show", &lease, "--json"]));
        seen.push((t.elapsed().as_millis(), state.clone(), l["state"].clone()));
        if state != "ready" || l["state"] != "granted" {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    unsafe { libc::kill(pid_of(&c, frozen), libc::SIGCONT) };
    assert!(
        seen.iter().all(|(_, n, l)| n == "ready" && l == "granted"),
        "with one member frozen the node must stay ready and its lease held; seen {seen:?}"
    );
    assert_eq!(show(&c)["state"], "running");
}

#[test]
fn a_frozen_follower_first_in_the_agents_list_leaves_the_node_ready() {
    frozen_member_leaves_the_node_ready(false);
}

#[test]
fn a_frozen_leader_leaves_the_node_ready_through_the_election() {
    frozen_member_leaves_the_node_ready(true);
}

/// Lines `NODE NANOS` that copies of a task appended to `file`, by node.
fn runs(file: &std::path::Path) -> std::collections::BTreeMap<String, (u128, u128)> {
    let mut by = std::collections::BTreeMap::<String, (u128, u128)>::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let mut it = line.split_whitespace();
        let (Some(n), Some(t)) = (it.next(), it.next().and_then(|t| t.parse::<u128>().ok())) else {
            continue;
        };
        let e = by.entry(n.to_string()).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
    }
    by
}

/// An agent cut off from every server stops its work (it fences itself
/// after its TTL) before the servers mark its node down and start a copy
/// elsewhere: by the timestamps both copies wrote, they never overlap.
#[test]
fn a_cut_off_agent_stops_its_service_before_a_copy_starts_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    open_like_tmp(dir.path());
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    let relay = Relay::to(&c.members[0].grpc);
    let mut a1 = Agent::start_with(&relay.addr, "n1", &dir.path().join("n1"), &["--ttl", "3s"]);
    wait_for("n1 to register", Duration::from_secs(20), || {
        (node_state(&c, 0, "n1") == "ready").then_some(())
    });
    let ran = shared_file(&dir.path().join("ran.txt"));
    let script = format!(
        "while :; do echo \"$CHARTER_NODE $(date +%s%N)\" >> {}; sleep 0.05; done",
        ran.display()
    );
    let out = c.cli_on(
        0,
        &[
            "task", "submit", "--json", "--amp", "service", "--cpu", "1", "--", "sh", "-c", &script,
        ],
    );
    let id = json_ok(&out)["id"].as_u64().unwrap().to_string();
    wait_for("the service to run on n1", Duration::from_secs(20), || {
        runs(&ran).contains_key("n1").then_some(())
    });
    // A second node, where the work can go once n1 is down.
    let _a2 = agent_with(&c, dir.path(), "n2", &["--ttl", "3s"]);

    relay.cut();
    let t = wait_for(
        "the service to start again on n2",
        Duration::from_secs(40),
        || runs(&ran).contains_key("n2").then_some(task(&c, 0, &id)),
    );
    let by = runs(&ran);
    let (n1, n2) = (by["n1"], by["n2"]);
    assert!(
        n1.1 < n2.0,
        "the copy on n2 started ({} ns) before n1's stopped ({} ns); task {t}\nn1's log:\n{}",
        n2.0,
        n1.1,
        a1.log()
    );
    assert!(a1.log().contains("fencing"), "{}", a1.log());
    // Healed, n1 comes back and starts nothing of what moved away.
    relay.heal();
    wait_for("n1 to be ready again", Duration::from_secs(20), || {
        (node_state(&c, 0, "n1") == "ready").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        runs(&ran)["n1"],
        n1,
        "n1 ran the service again after the heal"
    );
    a1.kill9();
}

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn rfc(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

fn wall() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The leader's wall clock steps 40 s ahead, then 40 s behind (libfaketime
/// on the member only). Seen by the holders, on their own clock: no lease
/// ends before its `expires_at` or well after it, and its capacity goes to
/// the next request only once it ended; the node stays ready throughout.
#[test]
fn a_clock_step_on_the_leader_ends_no_lease_early_or_late() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: install Debian's faketime package (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    open_like_tmp(dir.path());
    let step = dir.path().join("faketime.rc");
    std::fs::write(&step, "+0\n").unwrap();
    let mut c = Cluster(charter::harness::Cluster::prepare(BIN.as_ref(), 1, &[]).unwrap());
    c.members[0].env = vec![
        ("LD_PRELOAD".into(), FAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), step.display().to_string()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    c.spawn(0, false);
    c.wait_leader(ELECTION);
    let _a = agent_with(&c, dir.path(), "n1", &["--ttl", "3s"]);
    let ann = |args: &[&str]| c.0.cli_as(&c.servers(), USER_TOKEN, args).unwrap();
    let bob = |args: &[&str]| c.0.cli_as(&c.servers(), OTHER_TOKEN, args).unwrap();
    let first = json_ok(&ann(&[
        "lease", "request", "--cpu", "4", "--for", "20s", "--json",
    ]));
    let id1 = first["id"].to_string();
    let expires1 = rfc(&first["expires_at"]);
    // Bob waits in the queue (the CLI blocks until granted).
    let servers = c.servers();
    let waiting = std::thread::spawn(move || {
        cli(
            &servers,
            OTHER_TOKEN,
            &[
                "lease", "request", "--cpu", "4", "--for", "6s", "--wait", "2m", "--json",
            ],
        )
    });
    let id2 = wait_for("bob's request to queue", Duration::from_secs(10), || {
        let v = json_ok(&bob(&["lease", "list", "--state", "pending", "--json"]));
        v["leases"]
            .as_array()
            .and_then(|l| l.first())
            .map(|l| l["id"].to_string())
    });

    std::fs::write(&step, "+40\n").unwrap();
    let stepped = Instant::now();
    let mut back = false;
    let (mut ended1, mut granted2, mut ended2) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended2.is_none() {
        assert!(Instant::now() < deadline, "lease {id2} never ended");
        if !back && stepped.elapsed() > Duration::from_secs(8) {
            // 80 s back: now 40 s behind.
            std::fs::write(&step, "-40\n").unwrap();
            back = true;
        }
        let l1 = json_ok(&ann(&["lease", "show", &id1, "--json"]));
        let l2 = json_ok(&bob(&["lease", "show", &id2, "--json"]));
        let now = wall();
        if ended1.is_none() && l1["state"] != "granted" {
            ended1 = Some((now, l1.clone()));
        }
        if granted2.is_none() && l2["state"] != "pending" {
            granted2 = Some((now, l2.clone()));
        }
        if ended2.is_none() && matches!(l2["state"].as_str(), Some("expired" | "lost")) {
            ended2 = Some((now, l2.clone()));
        }
        let n = node_state(&c, 0, "n1");
        assert_eq!(n, "ready", "the node went {n} after the step");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (seen1, l1) = ended1.unwrap();
    assert_eq!(l1["state"], "expired", "{l1}");
    assert!(
        seen1 >= expires1,
        "lease {id1} ended {} ms before its expires_at, by the holder's clock",
        expires1 - seen1
    );
    assert!(
        seen1 - expires1 < 3_000,
        "lease {id1} ended {} ms after its expires_at",
        seen1 - expires1
    );
    let (seen2, l2) = granted2.unwrap();
    assert!(
        seen2 >= expires1,
        "the capacity of {id1} went to {id2} {} ms before {id1} ended: over-committed; {l2}",
        expires1 - seen2
    );
    let (end2, l2) = ended2.unwrap();
    let expires2 = rfc(&l2["expires_at"]);
    assert!(
        (expires2..expires2 + 3_000).contains(&end2),
        "lease {id2} ended {} ms from its expires_at: {l2}",
        end2 - expires2
    );
    assert!(waiting.join().unwrap().status.success());
    let log = std::fs::read_to_string(&c.members[0].log).unwrap();
    assert!(log.contains("the wall clock disagrees"), "{log}");
}

/// A request that no member could answer may still be applied later: the
/// CLI's error gives its idempotency key and a retry command that reuses
/// it, and `lease list --key` finds what it made; retried twice, it is
/// granted once.
#[test]
fn an_unavailable_request_prints_its_key_and_a_retry_that_never_doubles() {
    let mut c = Cluster(charter::harness::Cluster::prepare(BIN.as_ref(), 3, &[]).unwrap());
    c.spawn(0, false); // one of three: no majority, no leader
    let ask = ["lease", "request", "--cpu", "1", "--for", "10m", "--json"];
    let out = cli_command(&c.servers(), USER_TOKEN, &ask)
        .env("CHARTER_RETRY_FOR", "2s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let key = printed_key(&err);
    assert!(
        err.contains(&format!(
            "lease request --cpu 1 --for 10m --json --key {key}"
        )),
        "no retry command reusing the key in: {err}"
    );
    assert!(
        err.contains(&format!("charter lease list --key {key}")),
        "{err}"
    );
    c.spawn(1, false);
    c.spawn(2, false);
    c.wait_leader(ELECTION);
    let out = c.cli(&["node", "register", "n1", "--cpu", "4", "--mem", "4GiB"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut again = ask.to_vec();
    again.extend(["--key", &key]);
    let ann = |args: &[&str]| c.0.cli_as(&c.servers(), USER_TOKEN, args).unwrap();
    let first = json_ok(&ann(&again));
    let second = json_ok(&ann(&again));
    assert_eq!(first["id"], second["id"], "the same key granted twice");
    let found = json_ok(&ann(&["lease", "list", "--key", &key, "--json"]));
    let ids: Vec<&Value> = found["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["id"])
        .collect();
    assert_eq!(ids, vec![&first["id"]], "{found}");
    // Another principal's key is not found under the same name.
    let bob =
        c.0.cli_as(
            &c.servers(),
            OTHER_TOKEN,
            &["lease", "list", "--key", &key, "--json"],
        )
        .unwrap();
    assert_eq!(json_ok(&bob)["leases"], serde_json::json!([]));
    let live = json_ok(&ann(&["lease", "list", "--json"]));
    assert_eq!(live["leases"].as_array().unwrap().len(), 1, "{live}");
}

/// The same for `task submit`: its key, a retry that reuses it (before
/// the `--` that starts the command), and `task list --key`.
#[test]
fn an_unavailable_task_submit_prints_its_key_and_task_list_finds_it() {
    let mut c = Cluster(charter::harness::Cluster::prepare(BIN.as_ref(), 3, &[]).unwrap());
    c.spawn(0, false); // no majority, no leader
    let ask = ["task", "submit", "--cpu", "1", "--", "sleep", "60"];
    let out = cli_command(&c.servers(), USER_TOKEN, &ask)
        .env("CHARTER_RETRY_FOR", "2s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let key = printed_key(&err);
    assert!(
        err.contains(&format!("task submit --cpu 1 --key {key} -- sleep 60")),
        "no retry command reusing the key in: {err}"
    );
    assert!(
        err.contains(&format!("charter task list --key {key}")),
        "{err}"
    );
    c.spawn(1, false);
    c.spawn(2, false);
    c.wait_leader(ELECTION);
    let out = c.cli(&["node", "register", "n1", "--cpu", "4", "--mem", "4GiB"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ann = |args: &[&str]| c.0.cli_as(&c.servers(), USER_TOKEN, args).unwrap();
    let again = [
        "task", "submit", "--json", "--cpu", "1", "--key", &key, "--", "sleep", "60",
    ];
    let first = json_ok(&ann(&again));
    let second = json_ok(&ann(&again));
    assert_eq!(first["id"], second["id"], "the same key submitted twice");
    let found = json_ok(&ann(&["task", "list", "--key", &key, "--json"]));
    let ids: Vec<&Value> = found["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(ids, vec![&first["id"]], "{found}");
    // Another principal's key is not found under the same name.
    let bob =
        c.0.cli_as(
            &c.servers(),
            OTHER_TOKEN,
            &["task", "list", "--key", &key, "--json"],
        )
        .unwrap();
    assert_eq!(json_ok(&bob)["tasks"], serde_json::json!([]));
    let all = json_ok(&ann(&["task", "list", "--json"]));
    assert_eq!(all["tasks"].as_array().unwrap().len(), 1, "{all}");
}
