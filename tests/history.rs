//! Bounded state on real processes: with retention set low, ended leases
//! leave every member's live state, are still found in each member's
//! history store, and every member holds the same after a restart; and a
//! state larger than one gRPC message reaches a new member as a snapshot
//! in chunks.

mod common;

use charter_proto as pb;
use common::*;
use serde_json::Value;
use std::time::Duration;

/// `n` request-and-release cycles of one-core leases, `c` at a time, over
/// gRPC against `servers`, each request with an idempotency key as the CLI
/// sends one. Returns the lease ids.
fn cycles(servers: &str, n: u64, c: u64, reason: &str) -> Vec<u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addrs: Vec<String> = servers.split(',').map(String::from).collect();
    rt.block_on(async {
        let conn = std::sync::Arc::new(
            charter_proto::conn::Servers::new(&addrs, Some(TOKEN.to_string())).unwrap(),
        );
        let mut set = tokio::task::JoinSet::new();
        for w in 0..c {
            let (conn, reason) = (conn.clone(), reason.to_string());
            set.spawn(async move {
                let mut ids = Vec::new();
                for i in (w..n).step_by(c as usize) {
                    let req = pb::LeaseRequest {
                        idempotency_key: format!("cycle-{i}"),
                        resources: Some(pb::Resources {
                            cpu_millis: 1,
                            ..Default::default()
                        }),
                        duration_ms: 3_600_000,
                        reason: reason.clone(),
                        ..Default::default()
                    };
                    let l = conn
                        .call(Duration::from_secs(20), |ch| {
                            let r = conn.req(req.clone());
                            async move { pb::leases_client::LeasesClient::new(ch).request(r).await }
                        })
                        .await
                        .unwrap_or_else(|f| panic!("request {i}: {}", f.status.message()))
                        .lease
                        .unwrap();
                    ids.push(l.id);
                }
                ids
            });
        }
        let mut ids = Vec::new();
        while let Some(r) = set.join_next().await {
            ids.extend(r.unwrap());
        }
        ids.sort_unstable();
        ids
    })
}

/// Releases `ids` over the CLI-equivalent gRPC call, `c` at a time.
fn release(servers: &str, ids: &[u64], c: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addrs: Vec<String> = servers.split(',').map(String::from).collect();
    rt.block_on(async {
        let conn = std::sync::Arc::new(
            charter_proto::conn::Servers::new(&addrs, Some(TOKEN.to_string())).unwrap(),
        );
        let mut set = tokio::task::JoinSet::new();
        for chunk in ids.chunks(ids.len().div_ceil(c).max(1)) {
            let (conn, chunk) = (conn.clone(), chunk.to_vec());
            set.spawn(async move {
                for id in chunk {
                    conn.call(Duration::from_secs(20), |ch| {
                        let r = conn.req(pb::ReleaseLeaseRequest {
                            idempotency_key: format!("release-{id}"),
                            id,
                        });
                        async move { pb::leases_client::LeasesClient::new(ch).release(r).await }
                    })
                    .await
                    .unwrap_or_else(|f| panic!("release {id}: {}", f.status.message()));
                }
            });
        }
        while set.join_next().await.is_some() {}
    })
}

/// One gauge from a member's `/metrics`.
fn gauge(http_addr: &str, name: &str) -> u64 {
    let (_, body) = charter::harness::http(http_addr, "GET", "/metrics", &[], b"").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn ended_leases_leave_the_live_state_for_the_history_and_members_agree_after_a_restart() {
    let mut c = Cluster::start(3, &["--history-retention", "2s", "--history-max", "100"]);
    c.wait_leader(Duration::from_secs(15));
    json_ok(&c.cli(&[
        "node", "register", "n1", "--cpu", "2000", "--mem", "64GiB", "--json",
    ]));
    let ids = cycles(&c.servers(), 1_000, 16, "");
    assert_eq!(ids.len(), 1_000);
    release(&c.servers(), &ids, 16);
    // Within the 2 s retention every ended lease leaves every member's state.
    for m in &c.members {
        wait_for(
            "the ended leases to leave the live state",
            Duration::from_secs(20),
            || (gauge(&m.http, "charter_state_leases") == 0).then_some(()),
        );
        assert!(gauge(&m.http, "charter_history_bytes") > 0);
    }
    // Still found: from each member's history store.
    for (i, id) in [ids[0], ids[499], ids[999]].iter().enumerate() {
        let l = json_ok(&c.cli_on(i, &["lease", "show", &id.to_string(), "--json"]));
        assert_eq!(
            (l["id"].as_u64(), l["state"].as_str()),
            (Some(*id), Some("released")),
            "{l}"
        );
    }
    let unknown = c.cli(&["lease", "show", "5000"]);
    assert!(
        stderr(&unknown).contains("not found"),
        "{}",
        stderr(&unknown)
    );
    // A retry with a kept key is not a new request: it names its lease,
    // which has left the live state.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let addrs: Vec<String> = c.servers().split(',').map(String::from).collect();
    let conn = charter_proto::conn::Servers::new(&addrs, Some(TOKEN.to_string())).unwrap();
    let retried = rt.block_on(conn.call(Duration::from_secs(20), |ch| {
        let r = conn.req(pb::LeaseRequest {
            idempotency_key: "cycle-0".into(),
            duration_ms: 3_600_000,
            ..Default::default()
        });
        async move { pb::leases_client::LeasesClient::new(ch).request(r).await }
    }));
    let e = retried.unwrap_err().status;
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("left the live state"),
        "{}",
        e.message()
    );

    // Restart every member: the state (and what each lists) is the same on all.
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        c.spawn(i, false);
    }
    c.wait_leader(Duration::from_secs(20));
    let listed: Vec<Value> = (0..3)
        .map(|i| {
            let commit = json_ok(&c.cli(&["cluster", "status", "--json"]))["commit_index"]
                .as_u64()
                .unwrap();
            c.wait_applied(i, commit, Duration::from_secs(20));
            json_ok(&c.cli_on(i, &["lease", "list", "--all", "--stale", "--json"]))
        })
        .collect();
    assert_eq!(listed[0], listed[1]);
    assert_eq!(listed[0], listed[2]);
    let all = listed[0]["leases"].as_array().unwrap();
    assert_eq!(all.len(), 1_000, "every ended lease listed from history");
    for m in &c.members {
        assert_eq!(gauge(&m.http, "charter_state_leases"), 0);
    }
}

#[test]
fn a_state_larger_than_a_message_reaches_a_new_member_in_chunks() {
    // 20,000 live leases with 1 KiB reasons: a snapshot over 20 MiB, more
    // than a peer message may be (16 MiB). CHARTER_BIG_SNAPSHOT=100000 runs
    // the issue's 100,000 by hand.
    let n: u64 = std::env::var("CHARTER_BIG_SNAPSHOT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut c = Cluster::start(1, &["--snapshot-entries", "1000"]);
    c.wait_leader(Duration::from_secs(15));
    json_ok(&c.cli(&[
        "node", "register", "n1", "--cpu", "100000", "--mem", "64GiB", "--json",
    ]));
    let ids = cycles(&c.servers(), n, 32, &"r".repeat(1_000));
    assert_eq!(ids.len() as u64, n);
    let j = c.add_joiner(&[]);
    let addr = c.members[j].grpc.clone();
    let out = c.cli_on(
        0,
        &["cluster", "add", &(j + 1).to_string(), &addr, "--json"],
    );
    json_ok(&out);
    let commit = json_ok(&c.cli_on(0, &["cluster", "status", "--json"]))["commit_index"]
        .as_u64()
        .unwrap();
    c.wait_applied(j, commit, Duration::from_secs(120));
    let leases = gauge(&c.members[j].http, "charter_state_leases");
    assert_eq!(leases, n, "the new member holds every live lease");
    assert_eq!(
        gauge(&c.members[j].http, "charter_leases{kind=\"granted\"}"),
        n
    );
}

#[test]
fn resource_samples_are_served_without_a_replicated_write() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every 10 s: the only writes while the tasks just run.
    let _a = agent_with(&c, dir.path(), "a1", &["--ttl", "30s"]);
    let ids: Vec<String> = (0..5)
        .map(|_| {
            let t = json_ok(&c.cli(&[
                "task", "submit", "--cpu", "0.1", "--json", "--", "sleep", "600",
            ]));
            t["id"].as_u64().unwrap().to_string()
        })
        .collect();
    for id in &ids {
        wait_for("a resource sample", Duration::from_secs(30), || {
            let t = json_ok(&c.cli(&["task", "show", id, "--json"]));
            t["rss_bytes"].as_u64().filter(|r| *r > 0).map(|_| ())
        });
    }
    let applied = || {
        json_ok(&c.cli(&["cluster", "status", "--json"]))["applied_index"]
            .as_u64()
            .unwrap()
    };
    let before = applied();
    std::thread::sleep(Duration::from_secs(11));
    let grown = applied() - before;
    // Five tasks sampled every 5 s were ten replicated writes here.
    assert!(
        grown <= 3,
        "{grown} writes in 11 s while five tasks only ran"
    );
}
