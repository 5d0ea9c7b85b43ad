//! Agents and tasks with real processes: a server, `charter agent`
//! processes, and tasks that run, fail, restart, and end with their lease.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(15);

/// Answers every HTTP request on `listener` with 200 `ok`, from a thread.
fn serve_ok(listener: std::net::TcpListener) {
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
}

fn setup() -> (Cluster, tempfile::TempDir) {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    (c, tempfile::tempdir().unwrap())
}

fn task(c: &Cluster, id: &str) -> Value {
    json_ok(&c.cli(&["task", "show", id, "--json"]))
}

fn submit(c: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["task", "submit", "--json"];
    all.extend_from_slice(args);
    json_ok(&c.cli(&all))["id"].as_u64().unwrap().to_string()
}

fn ended(c: &Cluster, id: &str, within: Duration) -> Value {
    wait_for(&format!("task {id} to end"), within, || {
        let t = task(c, id);
        (!matches!(
            t["state"].as_str(),
            Some("pending" | "running" | "restarting")
        ))
        .then_some(t)
    })
}

fn alive(pid: u32) -> bool {
    // A zombie has no command line: it is gone for our purposes.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[test]
fn a_batch_task_runs_and_its_exit_code_and_output_come_back() {
    let (c, dir) = setup();
    let _a = agent(&c, dir.path(), "a1");
    let id = submit(
        &c,
        &[
            "--cpu",
            "0.5",
            "--env",
            "WHO=world",
            "--",
            "sh",
            "-c",
            "echo hello $WHO; echo lease=$CHARTER_LEASE_ID node=$CHARTER_NODE; echo oops >&2; exit 3",
        ],
    );
    let t = ended(&c, &id, Duration::from_secs(20));
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["exit_code"], 3, "{t}");
    assert_eq!(t["node"], "a1", "{t}");
    let logs = c.cli(&["task", "logs", &id]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let out = String::from_utf8_lossy(&logs.stdout);
    assert!(out.starts_with("hello world\n"), "{out}");
    assert!(
        out.contains(&format!("lease={} node=a1", t["lease"])),
        "{out}"
    );
    assert_eq!(stderr(&logs), "oops\n");
    // Its lease was released when it ended, so the capacity is free again.
    let l = json_ok(&c.cli(&["lease", "show", &t["lease"].to_string(), "--json"]));
    assert_eq!(l["state"], "released", "{l}");
    // A failing task with retries runs again; a succeeding one reports 0.
    let id = submit(
        &c,
        &["--retries", "2", "--", "sh", "-c", "echo try; exit 1"],
    );
    let t = ended(&c, &id, Duration::from_secs(30));
    assert_eq!(
        (t["state"].as_str(), t["starts"].as_u64()),
        (Some("failed"), Some(3)),
        "{t}"
    );
    let out = String::from_utf8_lossy(&c.cli(&["task", "logs", &id]).stdout).to_string();
    assert_eq!(out, "try\ntry\ntry\n");
    let id = submit(&c, &["--", "true"]);
    let t = ended(&c, &id, Duration::from_secs(20));
    assert_eq!(
        (t["state"].as_str(), t["exit_code"].as_i64()),
        (Some("succeeded"), Some(0)),
        "{t}"
    );
}

#[test]
fn a_crashing_service_is_restarted_and_a_failing_check_makes_it_unhealthy() {
    let (c, dir) = setup();
    let _a = agent(&c, dir.path(), "a1");
    let id = submit(
        &c,
        &[
            "--amp",
            "service",
            "--restart",
            "always",
            "--",
            "sh",
            "-c",
            "echo up\nsleep 0.2; exit 1",
        ],
    );
    // A crash loop is not `running`: between starts it is `restarting`,
    // with its last exit and when it starts again.
    let t = wait_for(
        "the service to be restarted",
        Duration::from_secs(20),
        || {
            let t = task(&c, &id);
            (t["starts"].as_u64().unwrap_or(0) >= 3 && t["state"] == "restarting").then_some(t)
        },
    );
    assert_eq!(t["exit_code"], 1, "{t}");
    assert!(
        t["message"]
            .as_str()
            .unwrap()
            .starts_with("exited with 1; restarting in "),
        "{t}"
    );
    // `task list` says so too, one line per task although the command
    // holds a line end.
    let out = c.cli(&["task", "list"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{id} ")))
        .collect();
    assert_eq!(row.len(), 1, "{text}");
    assert!(
        row[0].contains("restarting") && row[0].ends_with("sh -c echo up\\nsleep 0.2; exit 1"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "a header and one row:\n{text}");
    json_ok(&c.cli(&["task", "cancel", &id, "--json"]));
    // Nothing listens on the checked port: the service turns unhealthy.
    let port = free_ports(1)[0].to_string();
    let id = submit(
        &c,
        &[
            "--amp",
            "service",
            "--health-http",
            &format!("{port}/healthz"),
            "--",
            "sleep",
            "600",
        ],
    );
    let t = wait_for(
        "the service to be unhealthy",
        Duration::from_secs(20),
        || {
            let t = task(&c, &id);
            (t["health"] == "unhealthy").then_some(t)
        },
    );
    assert_eq!(t["state"], "running", "{t}");
    // One that answers is healthy.
    let port = free_ports(1)[0];
    serve_ok(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
    let id = submit(
        &c,
        &[
            "--amp",
            "service",
            "--health-http",
            &format!("{port}/healthz"),
            "--",
            "sleep",
            "600",
        ],
    );
    wait_for("the service to be healthy", Duration::from_secs(20), || {
        (task(&c, &id)["health"] == "healthy").then_some(())
    });
}

/// A lease of 3 s runs `sleep 600` and a child that ignores SIGTERM in a
/// session of its own; returns (its pids, expires_at in ms, the lease id).
fn doomed(c: &Cluster, dir: &Path) -> (Vec<u32>, i64, String) {
    let pids = dir.join(format!("pids-{}", rand_suffix()));
    let script = "trap '' TERM; sleep 600 & echo $! >> $P; \
                  setsid sh -c 'trap \"\" TERM; echo $$ >> $P; exec sleep 600' & \
                  echo $$ >> $P; wait";
    let id = submit(
        c,
        &[
            "--for",
            "3s",
            "--grace",
            "1s",
            "--env",
            &format!("P={}", pids.display()),
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    let list = wait_for("the processes to start", Duration::from_secs(20), || {
        let s = std::fs::read_to_string(&pids).ok()?;
        let v: Vec<u32> = s.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (v.len() == 3).then_some(v)
    });
    let t = task(c, &id);
    let l = json_ok(&c.cli(&["lease", "show", &t["lease"].to_string(), "--json"]));
    let exp = chrono::DateTime::parse_from_rfc3339(l["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    (list, exp, id)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Waits until every pid is gone; returns how long after `exp` that was.
fn gone_after(pids: &[u32], exp: i64) -> i64 {
    wait_for(
        "every process of the lease to be gone",
        Duration::from_secs(20),
        || pids.iter().all(|p| !alive(*p)).then(now_ms),
    ) - exp
}

#[test]
fn nothing_of_a_lease_outlives_it_even_when_the_agent_is_cut_off() {
    let (c, dir) = setup();
    let _a = agent(&c, dir.path(), "a1");
    let (pids, exp, id) = doomed(&c, dir.path());
    assert!(pids.iter().all(|p| alive(*p)));
    let late = gone_after(&pids, exp);
    eprintln!("connected: last process gone {late} ms after expires_at");
    assert!(late < 1_000, "processes outlived the lease by {late} ms");
    assert_eq!(ended(&c, &id, Duration::from_secs(10))["state"], "expired");
    // Again with the server frozen: the agent ends the lease on its own clock.
    let (pids, exp, _) = doomed(&c, dir.path());
    let server = c.members[0].child.as_ref().unwrap().id() as i32;
    unsafe {
        libc::kill(server, libc::SIGSTOP);
    }
    let late = gone_after(&pids, exp);
    unsafe {
        libc::kill(server, libc::SIGCONT);
    }
    eprintln!("cut off: last process gone {late} ms after expires_at");
    assert!(
        late < 1_000,
        "processes outlived the lease by {late} ms while cut off"
    );
}

#[test]
fn a_restarted_agent_adopts_its_tasks_and_starts_nothing_twice() {
    let (c, dir) = setup();
    let mut a = agent(&c, dir.path(), "a1");
    let marks = dir.path().join("marks");
    let id = submit(
        &c,
        &[
            "--env",
            &format!("M={}", marks.display()),
            "--",
            "sh",
            "-c",
            "echo started >> $M; sleep 3; echo finished >> $M; exit 7",
        ],
    );
    wait_for("the task to start", Duration::from_secs(20), || {
        std::fs::read_to_string(&marks)
            .ok()
            .filter(|s| s.contains("started"))
    });
    a.restart();
    let t = ended(&c, &id, Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "started\nfinished\n",
        "run once, not again after the restart; agent log:\n{}",
        a.log()
    );
    assert_eq!(
        (t["state"].as_str(), t["exit_code"].as_i64()),
        (Some("failed"), Some(7)),
        "{t}"
    );
    // A lease that ended while its agent was down: the restarted agent
    // kills what is left and removes the sandbox.
    let id = submit(&c, &["--", "sleep", "600"]);
    let t = wait_for("the task to run", Duration::from_secs(20), || {
        let t = task(&c, &id);
        (t["state"] == "running").then_some(t)
    });
    a.kill9();
    json_ok(&c.cli(&["task", "cancel", &id, "--json"]));
    let sandbox = dir
        .path()
        .join("a1")
        .join("leases")
        .join(t["lease"].to_string());
    assert!(sandbox.exists());
    let before = leftover(dir.path(), &t["lease"].to_string());
    assert!(!before.is_empty(), "the sleep survives its agent's kill -9");
    a.restart();
    wait_for(
        "the leftovers to be cleaned up",
        Duration::from_secs(20),
        || {
            (leftover(dir.path(), &t["lease"].to_string()).is_empty() && !sandbox.exists())
                .then_some(())
        },
    );
}

/// Pids whose environment names this lease of an agent under `dir`.
fn leftover(dir: &Path, lease: &str) -> Vec<u32> {
    let want = format!("CHARTER_LEASE_ID={lease}");
    let agent = format!("CHARTER_AGENT={}", dir.join("a1").display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
                vars.contains(&want.as_bytes()) && vars.contains(&agent.as_bytes())
            })
        })
        .collect()
}

#[test]
fn limits_are_applied_by_cgroup_or_else_by_rlimit() {
    let (c, dir) = setup();
    let a = agent(&c, dir.path(), "a1");
    let id = submit(
        &c,
        &[
            "--mem",
            "64MiB",
            "--",
            "sh",
            "-c",
            "ulimit -v; cat /proc/self/cgroup",
        ],
    );
    let t = ended(&c, &id, Duration::from_secs(20));
    assert_eq!(t["state"], "succeeded", "{t}");
    let out = String::from_utf8_lossy(&c.cli(&["task", "logs", &id]).stdout).to_string();
    if a.log().contains("leases get rlimits") {
        eprintln!("no writable cgroup v2 here; checking the rlimit path");
        // 4 x 64 MiB of address space, in KiB.
        assert!(out.starts_with("262144\n"), "{out}");
    } else {
        assert!(
            out.contains("lease-"),
            "the task runs in its lease's cgroup: {out}"
        );
    }
}

#[test]
fn lease_exec_runs_in_the_sandbox_and_returns_the_exit_code() {
    let (c, dir) = setup();
    let _a = agent(&c, dir.path(), "a1");
    let l = json_ok(&c.cli(&["lease", "request", "--cpu", "1", "--for", "1m", "--json"]));
    let id = l["id"].to_string();
    let out =
        wait_for(
            "the agent to open the sandbox",
            Duration::from_secs(20),
            || {
                let out = c.cli(&[
            "lease", "exec", &id, "--env", "X=1", "--", "sh", "-c",
            "echo out $X $CHARTER_LEASE_ID $CHARTER_FENCING_TOKEN; pwd; echo err >&2; exit 5",
        ]);
                (!stderr(&out).contains("has no sandbox")).then_some(out)
            },
        );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.starts_with(&format!("out 1 {id} {}\n", l["fencing_token"])),
        "{text}"
    );
    assert!(
        text.contains(&format!("leases/{id}")),
        "runs in the sandbox: {text}"
    );
    assert_eq!(stderr(&out), "err\n");
    // Only the holder (or an admin) may run commands in a lease.
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "exec", &id, "--", "true"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("belongs to root"), "{}", stderr(&out));
    json_ok(&c.cli(&["lease", "release", &id, "--json"]));
    let out = c.cli(&["lease", "exec", &id, "--", "true"]);
    assert!(stderr(&out).contains("is released"), "{}", stderr(&out));
    // Two versions of one service side by side on the node.
    let v1 = submit(
        &c,
        &["--amp", "service", "--env", "V=1", "--", "sleep", "600"],
    );
    let v2 = submit(
        &c,
        &["--amp", "service", "--env", "V=2", "--", "sleep", "600"],
    );
    wait_for("both versions to run", Duration::from_secs(20), || {
        (task(&c, &v1)["state"] == "running" && task(&c, &v2)["state"] == "running").then_some(())
    });
    // Usage samples flow back while they run.
    let t = wait_for("a usage sample", Duration::from_secs(15), || {
        let t = task(&c, &v1);
        t["rss_bytes"].as_u64().filter(|r| *r > 0).map(|_| t)
    });
    assert!(t["cpu_ms"].is_u64(), "{t}");
}

#[test]
fn a_service_whose_agent_dies_is_placed_again_elsewhere() {
    let (c, dir) = setup();
    let mut a1 = agent(&c, dir.path(), "a1");
    let id = submit(
        &c,
        &["--amp", "service", "--cpu", "3", "--", "sleep", "600"],
    );
    let t = wait_for("the service to run", Duration::from_secs(20), || {
        let t = task(&c, &id);
        (t["state"] == "running").then_some(t)
    });
    assert_eq!(t["node"], "a1");
    let old_lease = t["lease"].to_string();
    let _a2 = agent(&c, dir.path(), "a2");
    // a1 dies; after its 3 s TTL it is down, its lease lost, and the
    // service gets a new lease on a2.
    a1.kill9();
    let t = wait_for("the service to run on a2", Duration::from_secs(30), || {
        let t = task(&c, &id);
        (t["state"] == "running" && t["node"] == "a2").then_some(t)
    });
    assert_ne!(t["lease"].to_string(), old_lease);
    assert!(
        t["message"].as_str().unwrap_or("").contains("placed again")
            || t["starts"].as_u64() >= Some(2),
        "{t}"
    );
    // The old lease is lost; a batch task without retries would not move.
    let nodes = json_ok(&c.cli(&["node", "list", "--json"]));
    let a1n = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "a1")
        .unwrap();
    assert_eq!(a1n["state"], "down", "{a1n}");
    // Clean up the processes a1 left behind (its agent was killed).
    let left = leftover(dir.path(), &old_lease);
    assert!(!left.is_empty(), "a1's sleep outlived its kill -9");
    for p in left {
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
}

#[test]
fn the_agent_resyncs_after_a_server_restart_and_follows_logs() {
    let (mut c, dir) = setup();
    let _a = agent(&c, dir.path(), "a1");
    let marks = dir.path().join("marks");
    let svc = submit(
        &c,
        &[
            "--amp",
            "service",
            "--env",
            &format!("M={}", marks.display()),
            "--",
            "sh",
            "-c",
            "echo up >> $M; exec sleep 600",
        ],
    );
    wait_for("the service to run", Duration::from_secs(20), || {
        (task(&c, &svc)["state"] == "running").then_some(())
    });
    // A client follows the service's output through the server.
    let mut follower = std::process::Command::new(BIN)
        .args(["--server", &c.servers(), "--token", TOKEN])
        .args(["task", "logs", "--follow", &svc])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The only server restarts: the agent's watch breaks and reconnects.
    // Neither the open watch nor the followed output holds the server's
    // graceful stop up to its 5 s limit.
    let t = Instant::now();
    assert_eq!(c.stop(0), Some(0));
    let took = t.elapsed();
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        took < Duration::from_secs(4),
        "the server took {took:?} to stop"
    );
    std::thread::sleep(Duration::from_millis(500));
    c.spawn(0, false);
    c.wait_leader(ELECTION);
    // Work submitted after the restart runs, and its output can be followed.
    let id = submit(
        &c,
        &[
            "--",
            "sh",
            "-c",
            "for i in 1 2 3; do echo $i; sleep 0.3; done",
        ],
    );
    wait_for("the task to run", Duration::from_secs(20), || {
        (task(&c, &id)["state"] != "pending").then_some(())
    });
    let out = c.cli(&["task", "logs", &id, "--follow"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n2\n3\n",
        "{}",
        stderr(&out)
    );
    assert_eq!(
        ended(&c, &id, Duration::from_secs(20))["state"],
        "succeeded"
    );
    // The service was neither started again nor disturbed.
    let t = task(&c, &svc);
    assert_eq!(
        (t["state"].as_str(), t["starts"].as_u64()),
        (Some("running"), Some(1)),
        "{t}"
    );
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "up\n");
}

#[test]
fn leases_hold_distinct_gpus_and_their_tasks_see_which() {
    let (c, dir) = setup();
    let _a = Agent::start_with(
        &c.servers(),
        "g1",
        &dir.path().join("g1"),
        &["--ttl", "3s", "--gpu", "2"],
    );
    wait_for("the agent to register", Duration::from_secs(20), || {
        node_names(&json_ok(&c.cli(&["node", "list", "--json"])))
            .contains(&"g1".to_string())
            .then_some(())
    });
    let show = "echo gpus=$CHARTER_GPUS cuda=$CUDA_VISIBLE_DEVICES; sleep 2";
    let first = submit(&c, &["--gpu", "1", "--", "sh", "-c", show]);
    let second = submit(&c, &["--gpu", "1", "--", "sh", "-c", show]);
    // No third GPU: a third lease asking for one is refused.
    let out = c.cli(&["task", "submit", "--gpu", "1", "--", "true"]);
    assert!(!out.status.success(), "a third GPU was handed out");
    let mut seen = Vec::new();
    for id in [&first, &second] {
        let t = ended(&c, id, Duration::from_secs(30));
        assert_eq!(t["state"], "succeeded", "{t}");
        let l = json_ok(&c.cli(&["lease", "show", &t["lease"].to_string(), "--json"]));
        let held = l["gpu_ids"][0].as_str().unwrap().to_string();
        let index = held.strip_prefix("g1:").unwrap().to_string();
        let logs = String::from_utf8_lossy(&c.cli(&["task", "logs", id]).stdout).to_string();
        assert_eq!(logs, format!("gpus={index} cuda={index}\n"), "{l}");
        seen.push(index);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1"]);
}

#[test]
fn named_ports_are_picked_given_as_env_and_checked_by_health() {
    let (c, dir) = setup();
    let _a = agent(&c, dir.path(), "a1");
    let id = submit(
        &c,
        &[
            "--amp",
            "service",
            "--port",
            "http",
            "--port",
            "admin",
            "--health-http",
            "http/healthz",
            "--",
            "sh",
            "-c",
            "echo port=$PORT http=$PORT_HTTP admin=$PORT_ADMIN; sleep 600",
        ],
    );
    let ports = wait_for("the ports to be reported", Duration::from_secs(20), || {
        let t = task(&c, &id);
        let p = &t["ports"];
        Some((p["http"].as_u64()?, p["admin"].as_u64()?))
    });
    assert_ne!(ports.0, ports.1);
    // Serve the picked http port: the health check (port 0) must find it.
    serve_ok(std::net::TcpListener::bind(("127.0.0.1", ports.0 as u16)).unwrap());
    wait_for("the service to be healthy", Duration::from_secs(20), || {
        (task(&c, &id)["health"] == "healthy").then_some(())
    });
    let logs = String::from_utf8_lossy(&c.cli(&["task", "logs", &id]).stdout).to_string();
    assert_eq!(
        logs,
        format!("port={0} http={0} admin={1}\n", ports.0, ports.1)
    );
    json_ok(&c.cli(&["task", "cancel", &id, "--json"]));
    // A health check on the first port of a task with none is refused.
    let out = c.cli(&[
        "task",
        "submit",
        "--amp",
        "service",
        "--health-http",
        "http/x",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad --health-http"),
        "{}",
        stderr(&out)
    );
}

/// `${PORT}`, `${PORT_<NAME>}` and `${CHARTER_*}` in a command run without
/// a shell are filled in, as Nomad interpolates `${NOMAD_PORT_http}`.
#[test]
fn ports_and_charter_variables_expand_in_a_command_without_a_shell() {
    let (c, dir) = setup();
    let _a = agent(&c, dir.path(), "a1");
    let id = submit(
        &c,
        &[
            "--port",
            "http",
            "--port",
            "admin",
            "--",
            "/bin/echo",
            "${PORT}",
            "${PORT_ADMIN}",
            "task=${CHARTER_TASK_ID}",
            "$PORT",
            "${HOME}",
        ],
    );
    let t = ended(&c, &id, Duration::from_secs(20));
    assert_eq!(t["state"], "succeeded", "{t}");
    let out = String::from_utf8_lossy(&c.cli(&["task", "logs", &id]).stdout).to_string();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{out}");
    assert!(words[0].parse::<u16>().is_ok_and(|p| p > 0), "{out}");
    assert!(words[1].parse::<u16>().is_ok_and(|p| p > 0), "{out}");
    assert_ne!(words[0], words[1], "{out}");
    assert_eq!(words[2], format!("task={id}"));
    assert_eq!(
        &words[3..],
        ["$PORT", "${HOME}"],
        "only ours are filled in: {out}"
    );
}

/// Cancelling a task that already ended is not a permission problem.
#[test]
fn cancelling_an_ended_task_says_it_ended() {
    let (c, dir) = setup();
    let _a = agent(&c, dir.path(), "a1");
    let id = submit(&c, &["--", "true"]);
    ended(&c, &id, Duration::from_secs(20));
    let out = c.cli(&["task", "cancel", &id]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("task {id} has already ended (succeeded)")),
        "{err}"
    );
    assert!(err.contains("FailedPrecondition"), "{err}");
    assert!(
        !err.contains("PermissionDenied") && !err.contains("ask an admin"),
        "{err}"
    );
}
