//! mTLS end to end, with real processes: `charter tls init` makes the
//! files; members serve only TLS and talk to each other over it; a member
//! whose certificate another CA signed cannot join; a plaintext client or a
//! client trusting another CA is refused while the CLI with the cluster's
//! CA works; an agent's node credential comes with its own certificate.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn tls_init(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(BIN)
        .args(["tls", "init"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

fn flags(dir: &Path, party: &str) -> Vec<String> {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    vec![
        "--tls-ca".into(),
        p("ca.pem"),
        "--tls-cert".into(),
        p(&format!("{party}.pem")),
        "--tls-key".into(),
        p(&format!("{party}-key.pem")),
    ]
}

#[test]
fn members_speak_only_tls_and_trust_only_their_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ours, theirs) = (certs.path().join("ours"), certs.path().join("theirs"));
    tls_init(
        &ours,
        &["--members", "1,2,3", "--agents", "n1", "--clients", "ann"],
    );
    tls_init(&theirs, &["--members", "3", "--clients", "eve"]);

    let mut c = charter::harness::Cluster::prepare(BIN.as_ref(), 3, &[]).unwrap();
    for i in 0..3 {
        let dir = if i == 2 { &theirs } else { &ours };
        c.members[i].extra = flags(dir, &format!("member-{}", i + 1));
    }
    c.cli_env = vec![(
        "CHARTER_TLS_CA".into(),
        ours.join("ca.pem").to_str().unwrap().into(),
    )];
    for i in 0..3 {
        c.spawn(i, false).unwrap();
    }
    let c = Cluster(c);
    // Members 1 and 2 elect a leader over TLS; member 3 never hears them.
    let t = Instant::now();
    let leader = loop {
        let l: Vec<Option<u64>> = (0..2)
            .map(|i| c.0.status(i).and_then(|s| s["leader_id"].as_u64()))
            .collect();
        if let [Some(a), Some(b)] = l[..]
            && a == b
            && a != 0
        {
            break a;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no leader: {}",
            c.0.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(leader <= 2, "member {leader} leads");
    // The cluster works for the CLI with the CA (no client certificate).
    let m1 = c.0.members[0].grpc.clone();
    let st = c.0.status(0).unwrap();
    assert!(st["commit_index"].as_u64().unwrap() > 0, "{st}");
    // Member 3 (another CA) is no part of it: it sees no leader, and its
    // log has nothing from the others.
    std::thread::sleep(Duration::from_secs(3));
    let third = std::process::Command::new(BIN)
        .args(["--server", &c.0.members[2].grpc, "--token", TOKEN])
        .args(flags(&theirs, "client-eve"))
        .args(["cluster", "status", "--stale", "--json"])
        .env("CHARTER_HOME", certs.path().join("home"))
        .output()
        .unwrap();
    let third = json_ok(&third);
    // (Index 1 is the bootstrap configuration every member writes itself.)
    assert!(third["leader_id"].is_null(), "{third}");
    assert!(third["commit_index"].as_u64().unwrap() <= 1, "{third}");
    assert!(st["commit_index"].as_u64().unwrap() > 1, "{st}");
    let log = std::fs::read_to_string(&c.0.members[2].log).unwrap_or_default();
    assert!(!log.contains("became leader"), "{log}");

    // A plaintext client is refused; so is one that trusts another CA.
    let plain = std::process::Command::new(BIN)
        .args(["--server", &m1, "--token", TOKEN, "cluster", "status"])
        .env("CHARTER_HOME", certs.path().join("home"))
        .env("CHARTER_RETRY_FOR", "1s")
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plaintext accepted");
    let foreign = std::process::Command::new(BIN)
        .args(["--server", &m1, "--token", TOKEN])
        .args(["--tls-ca", theirs.join("ca.pem").to_str().unwrap()])
        .args(["cluster", "status"])
        .env("CHARTER_HOME", certs.path().join("home"))
        .env("CHARTER_RETRY_FOR", "1s")
        .output()
        .unwrap();
    assert!(!foreign.status.success(), "a foreign CA was trusted");
    // A client certificate of another CA is refused too.
    let eve = std::process::Command::new(BIN)
        .args(["--server", &m1, "--token", TOKEN])
        .args(["--tls-ca", ours.join("ca.pem").to_str().unwrap()])
        .args([
            "--tls-cert",
            theirs.join("client-eve.pem").to_str().unwrap(),
        ])
        .args([
            "--tls-key",
            theirs.join("client-eve-key.pem").to_str().unwrap(),
        ])
        .args(["cluster", "status"])
        .env("CHARTER_HOME", certs.path().join("home"))
        .env("CHARTER_RETRY_FOR", "1s")
        .output()
        .unwrap();
    assert!(
        !eve.status.success(),
        "another CA's client certificate passed"
    );

    // An agent's node credential comes with its own certificate.
    let as_node = |token: &str, party: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["--server", &m1, "--token", token]);
        match party {
            Some(p) => cmd.args(flags(&ours, p)),
            None => cmd.args(["--tls-ca", ours.join("ca.pem").to_str().unwrap()]),
        };
        cmd.args(args)
            .env("CHARTER_HOME", certs.path().join("home"))
            .output()
            .unwrap()
    };
    let register = ["node", "register", "n1", "--cpu", "1", "--mem", "1GiB"];
    refused(
        &as_node(&node_credential("n1"), None, &register),
        "needs its agent's certificate (agent:n1)",
    );
    refused(
        &as_node(&node_credential("n1"), Some("client-ann"), &register),
        "came with the certificate of client:ann",
    );
    let ok = as_node(&node_credential("n1"), Some("agent-n1"), &register);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // A real agent over TLS registers and runs a task whose output the
    // member reads back from the agent's own TLS port.
    let data = certs.path().join("agents");
    std::fs::create_dir_all(&data).unwrap();
    let agent_flags: Vec<String> = flags(&ours, "agent-n1");
    let agent_flags: Vec<&str> = agent_flags.iter().map(String::as_str).collect();
    let mut all = vec!["--ttl", "3s"];
    all.extend(agent_flags);
    let a = Agent::start_with(&m1, "n1", &data.join("n1"), &all);
    wait_for("the agent to register", Duration::from_secs(20), || {
        a.log().contains("registered node=n1").then_some(())
    });
    let id = json_ok(&c.cli_on(
        0,
        &[
            "task",
            "submit",
            "--json",
            "--",
            "sh",
            "-c",
            "echo over-tls",
        ],
    ))["id"]
        .as_u64()
        .unwrap();
    wait_for("the task's output", Duration::from_secs(20), || {
        let out = c.cli_on(0, &["task", "logs", &id.to_string()]);
        String::from_utf8_lossy(&out.stdout)
            .contains("over-tls")
            .then_some(())
    });
}
