//! Pools that grow: on a 3-member cluster, queued demand no node can meet
//! makes the leader grow the cheapest pool that can meet it, and nodes left
//! idle are retired. One test per provisioner.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(15);

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

/// Waits until the leader has put the config's pools in force.
fn wait_pools(c: &Cluster, n: usize) {
    wait_until("the pools to be in force", Duration::from_secs(15), || {
        let v = json_ok(&c.cli(&["node", "pools", "--json"]));
        v["pools"].as_array().is_some_and(|p| p.len() == n)
    });
}

fn nodes(c: &Cluster) -> Vec<String> {
    node_names(&json_ok(&c.cli(&["node", "list", "--json"])))
}

fn config(dir: &Path, body: &str) -> String {
    let p = dir.join("server.toml");
    std::fs::write(&p, format!("kind = \"server\"\n{body}")).unwrap();
    p.display().to_string()
}

#[test]
fn local_provisioner_adds_a_node_for_unmet_demand_and_retires_it_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    // A dear pool and a cheap one that both could hold the demand, and a
    // GPU pool that could not: the cheap one must be asked.
    let cfg = config(
        tmp.path(),
        "[[pool]]\nname = \"dear\"\nmax_nodes = 2\ncpu = 2\nmem = \"1GiB\"\ncost = 5\nprovisioner = \"local\"\n\n\
         [[pool]]\nname = \"burst\"\nmax_nodes = 2\nidle = \"2s\"\ncpu = 2\nmem = \"1GiB\"\nlabels = { tier = \"burst\" }\ncost = 0.5\nprovisioner = \"local\"\n",
    );
    let c = Cluster::start(3, &["--config", &cfg]);
    c.wait_leader(ELECTION);
    wait_pools(&c, 2);
    let out = c.cli(&["node", "register", "base", "--cpu", "1", "--mem", "1GiB"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing and no pool could hold 4 cores: refused at once, naming the pools.
    let out = c.cli(&[
        "lease", "request", "--cpu", "4", "--for", "1m", "--wait", "1m",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pool burst: needs 4 cores, 2 free"),
        "{}",
        stderr(&out)
    );
    // Without --wait, a request only a pool could hold names the pools and
    // --wait (a pool grows for waiting requests), not only the nodes.
    let out = c.cli(&["lease", "request", "--cpu", "2", "--for", "1m"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("pools burst, dear can add nodes that do: ask with `--wait D`")
            && err.contains("base: needs 2 cores, 1 free"),
        "{err}"
    );
    // A gang larger than the pools can grow to names them and their limits.
    let out = c.cli(&[
        "lease", "request", "--cpu", "2", "--count", "5", "--for", "1m", "--wait", "1m",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("needs 5 nodes, 4 fit")
            && err.contains("pool burst: its nodes fit, and it can add 2 more (max_nodes 2)"),
        "{err}"
    );
    // 2 cores fit no node there is, but a new burst node: the request waits,
    // the leader starts a local agent, and the lease lands on it.
    let t = Instant::now();
    let lease = json_ok(&c.cli(&[
        "lease", "request", "--cpu", "2", "--for", "3s", "--wait", "60s", "--json",
    ]));
    let took = t.elapsed();
    assert_eq!(lease["state"], "granted", "{lease}");
    assert_eq!(lease["nodes"][0], "burst-1", "{lease}");
    eprintln!("queued request granted on a provisioned node after {took:?}");
    let listed = json_ok(&c.cli(&["node", "show", "burst-1", "--json"]));
    assert_eq!(listed["pool"], "burst", "{listed}");
    assert_eq!(listed["labels"]["tier"], "burst", "{listed}");
    assert!(
        !nodes(&c).contains(&"dear-1".to_string()),
        "the dearer pool grew too"
    );
    // The lease expires after 3 s; 2 s idle later the node is retired.
    wait_until("burst-1 to be retired", Duration::from_secs(30), || {
        !nodes(&c).contains(&"burst-1".to_string())
    });
    assert_eq!(nodes(&c), vec!["base".to_string()]);
    // The agent behind it has exited: its log says so.
    wait_until("the local agent to exit", Duration::from_secs(15), || {
        c.members.iter().any(|m| {
            std::fs::read_to_string(m.data.join("pools/burst/burst-1/agent.log"))
                .is_ok_and(|l| l.contains("; exiting"))
        }) && !agent_running("burst-1")
    });
}

/// Whether a `charter agent --name NAME` process is alive on this machine.
fn agent_running(name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"--name" && w[1] == name.as_bytes())
                && args.iter().any(|a| *a == b"agent")
        })
    })
}

#[test]
fn command_provisioner_gets_the_demand_as_json_and_its_node_joins() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = tmp.path().join("demand.json");
    let retired = tmp.path().join("retired.json");
    let add = tmp.path().join("add.sh");
    let rm = tmp.path().join("rm.sh");
    // The script registers a node the way a cloud script would start an
    // agent; it finds the servers in CHARTER_SERVERS.
    std::fs::write(
        &add,
        format!(
            "#!/bin/sh\ncat > {seen}\nexec {BIN} --server \"$CHARTER_SERVERS\" --token {TOKEN} node register cmd-1 --cpu 8 --mem 4GiB --pool cloud --label gpu=a100\n",
            seen = seen.display()
        ),
    )
    .unwrap();
    std::fs::write(&rm, format!("#!/bin/sh\ncat > {}\n", retired.display())).unwrap();
    for f in [&add, &rm] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cfg = config(
        tmp.path(),
        &format!(
            "[[pool]]\nname = \"cloud\"\nmax_nodes = 1\nidle = \"2s\"\ncpu = 8\nmem = \"4GiB\"\nlabels = {{ gpu = \"a100\" }}\ncost = 3\nprovisioner = \"command\"\ncommand = [\"{}\"]\nretire = [\"{}\"]\n",
            add.display(),
            rm.display()
        ),
    );
    let c = Cluster::start(3, &["--config", &cfg]);
    c.wait_leader(ELECTION);
    wait_pools(&c, 1);
    let lease = json_ok(&c.cli(&[
        "lease", "request", "--cpu", "2", "--label", "gpu=a100", "--for", "2s", "--wait", "60s",
        "--json",
    ]));
    assert_eq!(lease["nodes"][0], "cmd-1", "{lease}");
    let demand: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(demand["pool"], "cloud");
    assert_eq!(demand["count"], 1);
    assert_eq!(demand["node"]["cpu_millis"], 8000);
    assert_eq!(demand["demand"][0]["lease"], lease["id"]);
    assert_eq!(demand["demand"][0]["constraints"][0], "gpu=a100");
    assert_eq!(demand["servers"].as_array().unwrap().len(), 3);
    wait_until("cmd-1 to be retired", Duration::from_secs(30), || {
        !nodes(&c).contains(&"cmd-1".to_string())
    });
    wait_until("the retire program to run", Duration::from_secs(10), || {
        std::fs::read_to_string(&retired)
            .is_ok_and(|s| s.contains("\"node\":\"cmd-1\"") && s.contains("\"pool\":\"cloud\""))
    });
}
