//! The replicated control plane end to end: real member processes, real sled
//! directories, gRPC on 127.0.0.1, `kill -9` where a test says so.

mod common;

use charter_proto as pb;
use charter_proto::nodes_client::NodesClient;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

const ELECTION: Duration = Duration::from_secs(15);

fn register(c: &Cluster, member: usize, name: &str) {
    let out = c.cli_on(
        member,
        &["node", "register", name, "--cpu", "4", "--mem", "8GiB"],
    );
    assert!(
        out.status.success(),
        "register {name} via member {}: {}",
        member + 1,
        stderr(&out)
    );
}

fn nodes_on(c: &Cluster, member: usize) -> Vec<String> {
    node_names(&json_ok(&c.cli_on(member, &["node", "list", "--json"])))
}

#[test]
fn three_members_elect_and_replicate_writes_from_any_member() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    // A write through every member, leader and followers alike.
    for i in 0..3 {
        register(&c, i, &format!("via-{}", i + 1));
    }
    let want = vec!["via-1".to_string(), "via-2".into(), "via-3".into()];
    // Linearizable reads: each member sees all three writes at once.
    for i in 0..3 {
        assert_eq!(nodes_on(&c, i), want, "member {}", i + 1);
    }
    let s = c.status(leader).unwrap();
    assert_eq!(s["role"], "leader");
    assert_eq!(s["members"].as_array().unwrap().len(), 3);
    // A lease granted through a follower carries a fencing token and absolute times.
    let follower = (leader + 1) % 3;
    let l = json_ok(&c.cli_on(
        follower,
        &["lease", "request", "--cpu", "1", "--for", "1h", "--json"],
    ));
    assert_eq!(l["fencing_token"], 1);
    assert_eq!(l["state"], "granted");
}

#[test]
fn concurrent_writes_through_a_follower_reach_the_leader_in_batches() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    let follower = (leader + 1) % 3;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = channels(std::slice::from_ref(&c.members[follower].grpc)).remove(0);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let ch = ch.clone();
            tasks.push(tokio::spawn(async move {
                let mut req = tonic::Request::new(pb::RegisterNodeRequest {
                    idempotency_key: format!("b{i}"),
                    name: format!("b{i}"),
                    capacity: Some(pb::Resources {
                        cpu_millis: 1000,
                        memory_bytes: 1 << 30,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
                NodesClient::new(ch).register(req).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    assert_eq!(nodes_on(&c, leader).len(), 64);
    let metrics = |m: usize| {
        let (code, text) =
            charter::harness::http(&c.members[m].http, "GET", "/metrics", &[], b"").unwrap();
        assert_eq!(code, 200);
        text
    };
    assert_eq!(value(&metrics(follower), "charter_forwards_total"), 64.0);
    let on_leader = metrics(leader);
    assert_eq!(
        value(&on_leader, "charter_forwarded_writes_served_total"),
        64.0
    );
    // What arrived while a call was out went in the next one.
    let calls = value(&on_leader, "charter_forward_batches_served_total");
    assert!(calls <= 32.0, "64 concurrent writes took {calls} calls");
}

fn channels(addrs: &[String]) -> Vec<Channel> {
    addrs
        .iter()
        .map(|a| {
            Endpoint::from_shared(format!("http://{a}"))
                .unwrap()
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(3))
                .connect_lazy()
        })
        .collect()
}

/// Registers nodes `w0, w1, …` one at a time, failing over between members,
/// and records each acknowledged name with the time of its acknowledgement.
async fn write_stream(
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
) {
    let chans = channels(&addrs);
    let mut cur = 0;
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        let name = format!("w{seq}");
        loop {
            let mut req = tonic::Request::new(pb::RegisterNodeRequest {
                idempotency_key: name.clone(),
                name: name.clone(),
                capacity: Some(pb::Resources {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                    ..Default::default()
                }),
                ..Default::default()
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            match NodesClient::new(chans[cur].clone()).register(req).await {
                Ok(_) => {
                    acked.lock().unwrap().push((name.clone(), Instant::now()));
                    break;
                }
                Err(_) => {
                    cur = (cur + 1) % chans.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }
        seq += 1;
    }
}

/// A background stream of node registrations through every member.
struct Writer {
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(c: &Cluster) -> Writer {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let addrs: Vec<String> = c.members.iter().map(|m| m.grpc.clone()).collect();
        let task = rt.spawn(write_stream(addrs, stop.clone(), acked.clone()));
        Writer {
            rt,
            stop,
            acked,
            task,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` writes in all were acknowledged.
    fn wait_for(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "writes stalled at {}",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops writing; returns every acknowledged write.
    fn finish(self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::SeqCst);
        self.rt.block_on(self.task).unwrap();
        self.acked.lock().unwrap().clone()
    }
}

#[test]
fn kill_9_of_the_leader_under_writes_loses_nothing_acknowledged() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    let w = Writer::start(&c);
    w.wait_for(30, Duration::from_secs(30));
    let killed_at = Instant::now();
    c.kill9(leader);
    w.wait_for(w.count() + 30, Duration::from_secs(30));
    let acks = w.finish();
    let first_after = acks
        .iter()
        .find(|(_, t)| *t > killed_at)
        .map(|(_, t)| t.duration_since(killed_at))
        .unwrap();
    // Generous bound: elections take 0.5-1 s here; CI machines are busy.
    assert!(
        first_after < Duration::from_secs(5),
        "first write after the kill took {first_after:?}"
    );
    eprintln!("first acknowledged write {first_after:?} after kill -9 of the leader");
    let new_leader = c.wait_leader(ELECTION);
    assert_ne!(new_leader, leader);
    let have = nodes_on(&c, new_leader);
    for (name, _) in &acks {
        assert!(
            have.contains(name),
            "acknowledged write {name} is missing after failover"
        );
    }
    // The killed member comes back from its data and catches up.
    c.spawn(leader, false);
    let commit = c.status(new_leader).unwrap()["commit_index"]
        .as_u64()
        .unwrap();
    c.wait_applied(leader, commit, ELECTION);
    let back = node_names(&json_ok(
        &c.cli_on(leader, &["node", "list", "--json", "--stale"]),
    ));
    for (name, _) in &acks {
        assert!(back.contains(name), "restarted member lacks {name}");
    }
}

#[test]
fn all_members_restarted_from_their_data_have_the_same_state() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    for i in 0..10 {
        register(&c, i % 3, &format!("n{i}"));
    }
    let lease = json_ok(&c.cli(&["lease", "request", "--cpu", "2", "--for", "1h", "--json"]));
    let nodes_before = json_ok(&c.cli(&["node", "list", "--json"]));
    let leases_before = json_ok(&c.cli(&["lease", "list", "--all", "--json"]));
    // The leader first, while both followers hold raft streams open to it:
    // its graceful stop ends them instead of waiting out its 5 s limit.
    for i in [leader, (leader + 1) % 3, (leader + 2) % 3] {
        let t = Instant::now();
        assert_eq!(
            c.stop(i),
            Some(0),
            "member {} exits cleanly on SIGTERM",
            i + 1
        );
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "member {} took {:?} to stop",
            i + 1,
            t.elapsed()
        );
    }
    for i in 0..3 {
        c.spawn(i, false);
    }
    c.wait_leader(ELECTION);
    for i in 0..3 {
        assert_eq!(
            json_ok(&c.cli_on(i, &["node", "list", "--json"])),
            nodes_before,
            "member {}",
            i + 1
        );
        assert_eq!(
            json_ok(&c.cli_on(i, &["lease", "list", "--all", "--json"])),
            leases_before,
            "member {}",
            i + 1
        );
    }
    // The fencing token keeps growing across the restart.
    let next = json_ok(&c.cli(&["lease", "request", "--cpu", "1", "--for", "1h", "--json"]));
    assert!(next["fencing_token"].as_u64() > lease["fencing_token"].as_u64());
}

#[test]
fn a_frozen_follower_is_cut_off_and_catches_up_when_it_resumes() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    let frozen = (leader + 1) % 3;
    register(&c, leader, "before");
    let pid = c.members[frozen].child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) with a pid this test started and valid signal numbers.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    // Writes go on with two of three; the raft stream to the frozen member
    // is ended by HTTP/2 keep-alive, not left to fill up.
    for i in 0..20 {
        register(&c, leader, &format!("n{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let cut = loop {
        let log = std::fs::read_to_string(&c.members[leader].log).unwrap();
        let cut = log
            .lines()
            .any(|l| l.contains("peer unreachable") && l.contains(&c.members[frozen].grpc));
        if cut || Instant::now() > deadline {
            break cut;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    assert!(
        cut,
        "the leader never gave up its stream to the frozen member:\n{}",
        c.logs()
    );
    register(&c, leader, "after");
    let s = c.status(leader).unwrap();
    c.wait_applied(frozen, s["commit_index"].as_u64().unwrap(), ELECTION);
    assert_eq!(nodes_on(&c, frozen).len(), 22);
}

#[test]
fn a_member_down_during_compaction_catches_up_through_a_snapshot() {
    let mut c = Cluster::start(3, &["--snapshot-entries", "20"]);
    let leader = c.wait_leader(ELECTION);
    let lagger = (leader + 1) % 3;
    register(&c, leader, "before");
    c.kill9(lagger);
    let live = (0..3).find(|i| *i != lagger).unwrap();
    for i in 0..60 {
        register(&c, live, &format!("n{i}"));
    }
    let leader = c.wait_leader(ELECTION);
    let s = c.status(leader).unwrap();
    assert!(
        s["snapshot_index"].as_u64().unwrap() > 20,
        "leader compacted: {s}"
    );
    c.spawn(lagger, false);
    c.wait_applied(lagger, s["commit_index"].as_u64().unwrap(), ELECTION);
    let names = node_names(&json_ok(&c.cli_on(lagger, &["node", "list", "--json"])));
    assert_eq!(names.len(), 61, "lagger has every node: {names:?}");
    let log = std::fs::read_to_string(&c.members[lagger].log).unwrap();
    assert!(
        log.contains("installed a snapshot from the leader"),
        "the lagger caught up by snapshot:\n{log}"
    );
}

#[test]
fn members_are_added_and_removed_while_writes_continue() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    let w = Writer::start(&c);

    let four = c.add_joiner(&[]);
    let addr4 = c.members[four].grpc.clone();
    let out = c.cli(&["cluster", "add", "4", &addr4, "--json"]);
    let members = json_ok(&out);
    assert_eq!(members["members"].as_array().unwrap().len(), 4, "{members}");
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(four, commit, ELECTION);

    // Remove a follower that is not the new member.
    let gone = (0..3).find(|i| *i != leader).unwrap();
    let out = c.cli(&[
        "cluster",
        "remove",
        &(gone as u64 + 1).to_string(),
        "--json",
    ]);
    let members = json_ok(&out);
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");
    c.stop(gone);

    // Writes go on after both membership changes.
    w.wait_for(w.count() + 20, Duration::from_secs(20));
    let acks = w.finish();
    // The new member serves linearizable reads with every acknowledged write.
    let names = node_names(&json_ok(&c.cli_on(four, &["node", "list", "--json"])));
    for (name, _) in &acks {
        assert!(names.contains(name), "member 4 lacks acknowledged {name}");
    }
    let s = c.status(four).unwrap();
    let ids: Vec<u64> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(
        !ids.contains(&(gone as u64 + 1)) && ids.contains(&4),
        "{ids:?}"
    );
}

#[test]
fn a_leader_removed_from_the_cluster_steps_down_and_the_rest_go_on() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    // Writes keep arriving at every member, the leader included, while it
    // removes itself: the ready that applies its removal also persists new
    // entries, and raft-rs keeps no progress for a leader outside the
    // configuration (one that did not step down at once panicked there).
    let w = Writer::start(&c);
    w.wait_for(20, Duration::from_secs(20));
    let out = c.cli_on(
        leader,
        &[
            "cluster",
            "remove",
            &(leader as u64 + 1).to_string(),
            "--json",
        ],
    );
    let members = json_ok(&out);
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    // The two left elect one of themselves and keep taking writes.
    w.wait_for(w.count() + 50, Duration::from_secs(30));
    let acks = w.finish();
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for i in &rest {
        let names = nodes_on(&c, *i);
        for (name, _) in &acks {
            assert!(
                names.contains(name),
                "member {} lacks acknowledged {name}",
                i + 1
            );
        }
    }
    // The removed member is alive, knows it is out, and leads nobody.
    assert!(
        c.is_running(leader),
        "the removed member crashed:\n{}",
        c.logs()
    );
    let s = c.status(leader).expect("the removed member answers");
    assert_ne!(s["role"], "leader", "{s}");
    assert!(
        c.logs()
            .contains("this member was removed from the cluster"),
        "{}",
        c.logs()
    );
}

#[test]
fn without_a_quorum_writes_and_reads_fail_with_a_retryable_error() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    register(&c, leader, "before");
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            c.kill9(i);
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _ctx = rt.enter();
    let ch = Endpoint::from_shared(format!("http://{}", c.members[survivor].grpc))
        .unwrap()
        .connect_lazy();
    let started = Instant::now();
    let err = rt.block_on(async {
        let mut req = tonic::Request::new(pb::RegisterNodeRequest {
            idempotency_key: "nq".into(),
            name: "no-quorum".into(),
            capacity: Some(pb::Resources {
                cpu_millis: 1000,
                ..Default::default()
            }),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        req.set_timeout(Duration::from_secs(20));
        NodesClient::new(ch.clone())
            .register(req)
            .await
            .unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("retry"),
        "the error says to retry: {}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered in bounded time"
    );
    // A linearizable read cannot be served either; a stale one can.
    let out = std::process::Command::new(BIN)
        .args([
            "--server",
            &c.members[survivor].grpc,
            "--token",
            TOKEN,
            "node",
            "list",
            "--json",
        ])
        .env("CHARTER_RETRY_FOR", "1s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("code Unavailable"),
        "{}",
        stderr(&out)
    );
    let stale = json_ok(&c.cli_on(survivor, &["node", "list", "--json", "--stale"]));
    assert_eq!(node_names(&stale), vec!["before".to_string()]);
}
