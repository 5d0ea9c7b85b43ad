//! Scoped credentials for machines, end to end: real members, real agents
//! holding node credentials, the real CLI and raw gRPC calls. A node
//! credential acts only for its own node; Hydra's and the deployer's
//! tokens reach only their controllers' calls; `charter audit` says who
//! did what, refusals included.

mod common;

use charter_proto as pb;
use common::*;
use serde_json::Value;
use std::time::Duration;
use tonic::Code;

const ELECTION: Duration = Duration::from_secs(15);

fn channel(rt: &tokio::runtime::Runtime, c: &Cluster) -> tonic::transport::Channel {
    let addr = format!("http://{}", c.servers().split(',').next().unwrap());
    rt.block_on(
        tonic::transport::Endpoint::from_shared(addr)
            .unwrap()
            .connect(),
    )
    .unwrap()
}

fn req<T>(token: &str, msg: T) -> tonic::Request<T> {
    charter_proto::conn::bearer(Some(token), msg)
}

#[test]
fn a_node_credential_acts_only_for_its_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);

    // An admin mints it over the API; a user cannot.
    let out = c.cli(&["node", "credential", "a1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cred = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(cred, node_credential("a1"));
    assert_ne!(cred, node_credential("a2"));
    refused(
        &cli(&c.servers(), USER_TOKEN, &["node", "credential", "a1"]),
        "minting a node credential needs an admin token",
    );

    // Both agents register, heartbeat and watch with their own credentials.
    let _a1 = agent(&c, dir.path(), "a1");
    let _a2 = agent_with(&c, dir.path(), "a2", &["--ttl", "3s", "--label", "box=two"]);
    let on_a2 = json_ok(&c.cli(&[
        "task", "submit", "--json", "--label", "box=two", "--amp", "service", "--", "sleep", "600",
    ]))["id"]
        .as_u64()
        .unwrap();
    let state =
        |id: u64| -> Value { json_ok(&c.cli(&["task", "show", &id.to_string(), "--json"])) };
    wait_for("the task on a2 to run", Duration::from_secs(20), || {
        (state(on_a2)["state"] == "running").then_some(())
    });

    // No user or admin call passes with it.
    let as_a1 = |args: &[&str]| cli(&c.servers(), &cred, args);
    let no = "the node credential of a1 cannot make this call";
    refused(&as_a1(&["lease", "list"]), no);
    refused(
        &as_a1(&["lease", "request", "--cpu", "1", "--for", "1h"]),
        no,
    );
    refused(&as_a1(&["node", "drain", "a2"]), no);
    refused(&as_a1(&["node", "credential", "a2"]), no);
    refused(&as_a1(&["cluster", "status"]), no);
    // Another node's calls do not pass either.
    refused(
        &as_a1(&["node", "register", "a2", "--cpu", "64", "--mem", "1TiB"]),
        "the node credential of a1 cannot register node a2",
    );
    refused(
        &as_a1(&["node", "heartbeat", "a2"]),
        "the node credential of a1 cannot heartbeat for node a2",
    );
    assert!(as_a1(&["node", "heartbeat", "a1"]).status.success());
    // A credential with another node's name and a1's MAC is not valid.
    let mac = cred.rsplit('.').next().unwrap();
    refused(
        &cli(
            &c.servers(),
            &format!("charter-node.a2.{mac}"),
            &["node", "heartbeat", "a2"],
        ),
        "this node credential is not valid here",
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ch = channel(&rt, &c);
    let mut agents = pb::agents_client::AgentsClient::new(ch.clone());
    let report = |node: &str| pb::TaskReportRequest {
        task_id: on_a2,
        node: node.into(),
        state: "failed".into(),
        message: "forged".into(),
        ..Default::default()
    };
    // Reporting a2's task, as a2 or as itself.
    let e = rt
        .block_on(agents.report(req(&cred, report("a2"))))
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("cannot report tasks of node a2"),
        "{e:?}"
    );
    let e = rt
        .block_on(agents.report(req(&cred, report("a1"))))
        .unwrap_err();
    assert!(e.message().contains("not on node a1"), "{e:?}");
    // Watching a2's assignments (its tasks' secrets and artifacts).
    let e = rt
        .block_on(agents.watch(req(&cred, pb::WatchRequest { node: "a2".into() })))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Usage of another node.
    let e = rt
        .block_on(agents.usage(req(
            &cred,
            pb::UsageReport {
                node: "a2".into(),
                ..Default::default()
            },
        )))
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Fetching an artifact none of its tasks uses: refused before the store
    // is looked at (an admin gets "not stored" for the same key).
    let mut deploy = pb::deploy_client::DeployClient::new(ch.clone());
    let sha = "ab".repeat(32);
    let get = |token: &str| {
        req(
            token,
            pb::GetArtifactRequest {
                sha256: sha.clone(),
            },
        )
    };
    let e = rt
        .block_on(deploy.get_artifact(get(&cred)))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("no task on node a1 uses artifact"),
        "{e:?}"
    );
    let e = rt
        .block_on(deploy.get_artifact(get(TOKEN)))
        .map(|_| ())
        .unwrap_err();
    assert_ne!(e.code(), Code::PermissionDenied, "{e:?}");
    // Raft peer traffic needs the peer token.
    let mut raft = pb::raft_peer_client::RaftPeerClient::new(ch);
    let e = rt
        .block_on(raft.forward(req(&cred, pb::ForwardRequest::default())))
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // And so do batches of forwarded writes: a node or a user is refused.
    for token in [cred.as_str(), USER_TOKEN] {
        let batch = pb::ForwardBatchRequest {
            proposals: vec![Vec::new()],
        };
        let e = rt
            .block_on(raft.forward_batch(req(token, batch)))
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }

    // Nothing of it changed a2 or its task.
    assert_eq!(state(on_a2)["state"], "running");
    let nodes = json_ok(&c.cli(&["node", "list", "--json"]));
    let a2 = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "a2")
        .unwrap()
        .clone();
    assert_ne!(a2["draining"], true, "{a2}");
    assert!(
        !a2.to_string().contains("1TiB") && !a2.to_string().contains("64 "),
        "{a2}"
    );
}

#[test]
fn controller_tokens_reach_only_their_controllers_calls() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    json_ok(&c.cli(&[
        "node", "register", "n1", "--cpu", "4", "--mem", "4GiB", "--json",
    ]));
    let lease = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--cpu", "1", "--for", "1h", "--json"],
    ))["id"]
        .as_u64()
        .unwrap()
        .to_string();
    // Hydra's token cannot touch leases it did not create, nor make any.
    let hydra = |args: &[&str]| cli(&c.servers(), HYDRA_TOKEN, args);
    let no = "a Hydra token cannot make this call";
    refused(&hydra(&["lease", "release", &lease]), no);
    refused(&hydra(&["lease", "revoke", &lease]), no);
    refused(&hydra(&["lease", "renew", &lease, "--for", "2h"]), no);
    refused(&hydra(&["lease", "list"]), no);
    refused(
        &hydra(&["lease", "request", "--cpu", "1", "--for", "1h"]),
        no,
    );
    refused(&hydra(&["node", "drain", "n1"]), no);
    // The deployer's token renews only deployments' leases.
    let deployer = |args: &[&str]| cli(&c.servers(), DEPLOYER_TOKEN, args);
    refused(
        &deployer(&["lease", "renew", &lease, "--for", "2h"]),
        &format!("lease {lease}: a deployer token renews only deployments' leases"),
    );
    refused(
        &deployer(&["lease", "release", &lease]),
        "a deployer token cannot make this call",
    );
    // The lease is as ann left it.
    let l = json_ok(&c.cli(&["lease", "show", &lease, "--json"]));
    assert_eq!(l["state"], "granted", "{l}");
}

#[test]
fn the_audit_log_says_who_did_what_and_what_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    json_ok(&c.cli(&[
        "node", "register", "n1", "--cpu", "4", "--mem", "4GiB", "--json",
    ]));
    let ann = |args: &[&str]| cli(&c.servers(), USER_TOKEN, args);
    let lease = json_ok(&ann(&[
        "lease", "request", "--cpu", "1", "--for", "1h", "--json",
    ]))["id"]
        .as_u64()
        .unwrap();
    // Refused admin calls: one refused in the state machine's rules, one
    // before the log.
    refused(
        &ann(&["lease", "revoke", &lease.to_string()]),
        "revoking a lease needs an admin token",
    );
    refused(&ann(&["node", "drain", "n1"]), "needs an admin token");
    let crontab = dir.path().join("cron.toml");
    std::fs::write(
        &crontab,
        "[[job]]\nname = \"nightly\"\nschedule = \"0 3 * * *\"\n[job.task]\ncommand = [\"true\"]\nfor = \"1m\"\n",
    )
    .unwrap();
    let out = c.cli(&["cron", "apply", crontab.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let entries = |out: std::process::Output| -> Vec<Value> {
        json_ok(&out)["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let all = entries(c.cli(&["audit", "--json"]));
    let find = |principal: &str, command: &str| -> Value {
        all.iter()
            .find(|e| e["principal"] == principal && e["command"] == command)
            .cloned()
            .unwrap_or_else(|| panic!("no {principal} {command} in {all:?}"))
    };
    let req = find("ann", "lease request");
    assert_eq!(
        (req["target"].as_str(), req["outcome"].as_str()),
        (Some(format!("lease {lease}").as_str()), Some("ok")),
        "{req}"
    );
    assert!(req["at"].as_str().unwrap().ends_with('Z') && req["index"].as_u64().unwrap() > 0);
    for command in ["lease revoke", "node drain"] {
        let e = find("ann", command);
        let outcome = e["outcome"].as_str().unwrap();
        assert!(
            outcome.starts_with("refused: ") && outcome.contains("needs an admin token"),
            "{e}"
        );
    }
    assert_eq!(find("ann", "node drain")["target"], "node n1");
    let apply = find("root", "cron apply");
    assert_eq!(
        (apply["target"].as_str(), apply["outcome"].as_str()),
        (Some("jobs nightly"), Some("ok")),
        "{apply}"
    );
    assert_eq!(find("root", "node register")["target"], "node n1");
    // The drain was refused: n1 is not draining.
    let n = json_ok(&c.cli(&["node", "show", "n1", "--json"]));
    assert_ne!(n["draining"], true, "{n}");

    // Filters: by principal, and by time.
    let only_ann = entries(c.cli(&["audit", "--principal", "ann", "--json"]));
    assert_eq!(only_ann.len(), 3, "{only_ann:?}");
    assert!(only_ann.iter().all(|e| e["principal"] == "ann"));
    let later = entries(c.cli(&["audit", "--since", "2999-01-01T00:00:00Z", "--json"]));
    assert!(later.is_empty(), "{later:?}");
    // A user reads only their own.
    assert_eq!(entries(ann(&["audit", "--json"])), only_ann);
    refused(
        &ann(&["audit", "--principal", "root"]),
        "reading root's audit records needs an admin token",
    );
}
