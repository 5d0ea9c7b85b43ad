//! The event stream end to end (three members, real agent, real build):
//! `charter events --follow --json` sees a lease granted and expiring, a
//! task starting and exiting, a cron job firing and a deployment promoted,
//! each event once, in order, within 1 s of the change; a second reader
//! resuming from an index on another member sees the same sequence; a
//! non-admin sees only its own; `/v1/events` serves the same as SSE; and
//! `/metrics` passes `promtool check metrics`.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A `charter events --follow --json` process and the lines it printed,
/// each with the wall-clock time it arrived.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<(i64, Value)>>>,
}

impl Follower {
    fn start(server: &str, token: &str, args: &[&str]) -> Follower {
        let mut all = vec!["events", "--follow", "--json"];
        all.extend_from_slice(args);
        let mut child = cli_command(server, token, &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
                sink.lock().unwrap().push((now_ms(), v));
            }
        });
        Follower { child, lines }
    }

    fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Waits until an event of `kind` about `subject` arrived.
    fn wait(&self, kind: &str, subject: &str, within: Duration) -> Value {
        wait_for(&format!("event {kind} {subject}"), within, || {
            self.events()
                .into_iter()
                .find(|e| e["type"] == kind && e["subject"] == subject)
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(e: &Value) -> (u64, u64) {
    (e["index"].as_u64().unwrap(), e["seq"].as_u64().unwrap())
}

fn summary(e: &Value) -> String {
    format!("{} {} {}", e["index"], e["type"], e["subject"])
}

#[test]
fn followers_see_each_change_once_in_order_resume_from_an_index_and_see_only_their_own() {
    let c = Cluster::start(3, &["--log-format", "json"]);
    let leader = c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let agent_http = format!("127.0.0.1:{}", free_ports(1)[0]);
    let _a = agent_with(
        &c,
        dir.path(),
        "a1",
        &[
            "--ttl",
            "3s",
            "--run-as",
            "root=root",
            "--http",
            &agent_http,
        ],
    );
    wait_for("node a1", Duration::from_secs(15), || {
        let out = c.cli(&["node", "list", "--json"]);
        node_names(&json_ok(&out))
            .contains(&"a1".to_string())
            .then_some(())
    });
    let start = json_ok(&c.cli_on(leader, &["cluster", "status", "--json"]))["commit_index"]
        .as_u64()
        .unwrap()
        + 1;
    let since = start.to_string();
    let other = (leader + 1) % 3;
    let admin = Follower::start(&c.members[leader].grpc, TOKEN, &["--since-index", &since]);
    let ann = Follower::start(&c.servers(), USER_TOKEN, &["--since-index", &since]);

    // A lease granted that expires.
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--cpu", "0.1", "--for", "1s", "--json"],
    );
    let lease = json_ok(&out)["id"].as_u64().unwrap().to_string();
    admin.wait("lease.granted", &lease, Duration::from_secs(5));
    admin.wait("lease.expired", &lease, Duration::from_secs(10));

    // A task that starts and exits.
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &[
            "task",
            "submit",
            "--cpu",
            "0.1",
            "--json",
            "--",
            "sh",
            "-c",
            "sleep 0.3; exit 4",
        ],
    );
    let task = json_ok(&out)["id"].as_u64().unwrap().to_string();
    admin.wait("task.started", &task, Duration::from_secs(15));
    let exited = admin.wait("task.exited", &task, Duration::from_secs(15));
    assert!(
        exited["detail"].as_str().unwrap().contains("exit code 4"),
        "{exited}"
    );

    // A cron job of ann's that fires every second.
    let cron = dir.path().join("cron.toml");
    std::fs::write(
        &cron,
        "[[job]]\nname = \"beat\"\nschedule = \"* * * * * *\"\n[job.task]\ncommand = [\"true\"]\ncpu = 0.1\nfor = \"1m\"\n",
    )
    .unwrap();
    json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["cron", "apply", cron.to_str().unwrap(), "--json"],
    ));
    admin.wait("cron.fired", "beat", Duration::from_secs(10));
    json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["cron", "pause", "beat", "--json"],
    ));

    // A deployment promoted (the example app, built with rustc).
    let repo = charter::harness::example_app_repo(dir.path()).unwrap();
    let app = dir.path().join("app.toml");
    std::fs::write(
        &app,
        format!(
            "kind = \"app\"\nname = \"hello\"\nrepo = \"{}\"\nbranch = \"main\"\nservers = 1\nprogress_deadline = \"90s\"\nsecret = \"s3cret\"\n\n[build]\ncommand = [\"sh\", \"build.sh\"]\nartifact = \"out/hello\"\ncpu = 0.5\nmem = \"1GiB\"\ntimeout = \"2m\"\n\n[run]\ncommand = [\"./hello\"]\nports = [\"http\"]\n\n[health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\nmin_healthy = \"1s\"\n\n[requirements]\ncpu = 0.1\nmem = \"64MiB\"\n",
            repo.display()
        ),
    )
    .unwrap();
    json_ok(&c.cli(&["deploy", "apply", app.to_str().unwrap(), "--json"]));
    let out = c.cli(&["deploy", "trigger", "hello", "--json"]);
    let dep = json_ok(&out)["deployment"]["id"]
        .as_u64()
        .or_else(|| json_ok(&out)["id"].as_u64())
        .unwrap_or_else(|| {
            panic!(
                "no deployment id in {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
        .to_string();
    admin.wait("deploy.started", &dep, Duration::from_secs(10));
    admin.wait("deploy.promoted", &dep, Duration::from_secs(90));

    // Each event once, in order, within 1 s of the change it tells.
    let seen = admin.lines.lock().unwrap().clone();
    assert!(seen.len() >= 10, "{} events", seen.len());
    for w in seen.windows(2) {
        assert!(
            key(&w[0].1) < key(&w[1].1),
            "out of order or twice: {} then {}",
            summary(&w[0].1),
            summary(&w[1].1)
        );
    }
    for (arrived, e) in &seen {
        let late = arrived - e["at_ms"].as_i64().unwrap();
        assert!(
            late < 1000,
            "{} arrived {late} ms after it happened",
            summary(e)
        );
    }
    let first = key(&seen[0].1).0;
    assert!(
        first >= start,
        "an event from before --since-index {start}: {}",
        summary(&seen[0].1)
    );
    let kinds: Vec<&str> = seen
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    for k in [
        "lease.requested",
        "lease.granted",
        "lease.expired",
        "task.submitted",
        "task.started",
        "task.exited",
        "cron.fired",
        "deploy.started",
        "deploy.step",
        "deploy.promoted",
    ] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }

    // Another member, from the first event's index, without --follow: the
    // same sequence (up to what the first follower had seen).
    let last = key(&seen.last().unwrap().1);
    let out = cli(
        &c.members[other].grpc,
        TOKEN,
        &["events", "--json", "--since-index", &first.to_string()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let again: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e| key(e) <= last)
        .collect();
    let strip = |e: &Value| {
        let mut e = e.clone();
        e.as_object_mut().unwrap().remove("at");
        e
    };
    let a: Vec<Value> = seen.iter().map(|(_, e)| strip(e)).collect();
    let b: Vec<Value> = again.iter().map(strip).collect();
    assert_eq!(a, b, "member {other} tells another story");

    // ann saw only her own: her lease, task and cron job, none of root's
    // deployment or the cluster's node and member events.
    let mine = ann.events();
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|e| e["principal"] == "ann"), "{mine:?}");
    assert!(
        mine.iter()
            .any(|e| e["type"] == "lease.expired" && e["subject"] == lease.as_str())
    );
    assert!(mine.iter().any(|e| e["type"] == "cron.fired"));
    assert!(
        !mine
            .iter()
            .any(|e| e["type"].as_str().unwrap().starts_with("deploy."))
    );
    // ... and may not ask for another's.
    refused(
        &cli(&c.servers(), USER_TOKEN, &["events", "--principal", "root"]),
        "needs an admin token",
    );
    // A type filter, and a bad one.
    let out = cli(
        &c.servers(),
        TOKEN,
        &[
            "events",
            "--json",
            "--since-index",
            &since,
            "--type",
            "task.exited,deploy",
        ],
    );
    let filtered: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!filtered.is_empty());
    assert!(
        filtered
            .iter()
            .all(|e| e["type"] == "task.exited"
                || e["type"].as_str().unwrap().starts_with("deploy."))
    );
    refused(
        &cli(&c.servers(), TOKEN, &["events", "--type", "lease.bogus"]),
        "unknown event type",
    );
    // An index older than the member keeps: a clear error with where to resume.
    let out = cli(&c.servers(), TOKEN, &["events", "--since-index", "1"]);
    assert!(
        out.status.success(),
        "a fresh cluster keeps every event: {}",
        stderr(&out)
    );

    // The same over HTTP, as Server-Sent Events, with a bearer token.
    let (code, body) = charter::harness::http(
        &c.members[other].http,
        "GET",
        &format!("/v1/events?since_index={first}&follow=0&type=lease"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("\"subject\":\"{lease}\"")), "{body}");
    assert!(body.contains("id: "), "{body}");
    let (code, _) = charter::harness::http(
        &c.members[other].http,
        "GET",
        "/v1/events?follow=0",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 401, "no token, no events");
    // A reconnecting EventSource's Last-Event-ID resumes right after it,
    // mid-entry: after the request, its grant in the same entry.
    let requested = seen
        .iter()
        .map(|(_, e)| e)
        .find(|e| e["type"] == "lease.requested" && e["subject"] == lease.as_str())
        .unwrap();
    let (i, s) = key(requested);
    let (code, body) = charter::harness::http(
        &c.members[other].http,
        "GET",
        "/v1/events?follow=0&type=lease",
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("last-event-id", &format!("{i}.{s}")),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(&format!("id: {i}.{s}\n")), "{body}");
    assert!(body.contains(&format!("id: {i}.{}\n", s + 1)), "{body}");
    assert!(body.contains("\"type\":\"lease.granted\""), "{body}");

    // The leader logged the grant and the expiry as JSON lines with the
    // ids as fields, and no terminal colour codes.
    // (Every member's log: the leader logs, and it could have changed.)
    let log: String = c
        .members
        .iter()
        .map(|m| std::fs::read_to_string(&m.log).unwrap())
        .collect();
    assert!(!log.contains('\x1b'), "colour codes in a log file");
    let logged: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    for kind in ["lease.granted", "lease.expired"] {
        assert!(
            logged.iter().any(|l| l["level"] == "INFO"
                && l["fields"]["event"] == kind
                && l["fields"]["subject"] == lease.as_str()
                && l["fields"]["index"].as_u64().is_some()),
            "no {kind} line for lease {lease} in the leader's log"
        );
    }
    assert!(logged.iter().any(|l| l["fields"]["event"] == "cron.fired"));
    assert!(logged.iter().any(|l| l["fields"]["event"] == "deploy.step"));

    // The dashboard's data, as a non-admin may see it: the cluster and the
    // nodes, her own lease history aside only her own live objects, none of
    // root's apps.
    let http = &c.members[other].http;
    let bearer = |t: &str| format!("Bearer {t}");
    let (code, body) = charter::harness::http(
        http,
        "GET",
        "/v1/overview",
        &[("authorization", &bearer(USER_TOKEN))],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let o: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (o["principal"].as_str(), o["admin"].as_bool()),
        (Some("ann"), Some(false))
    );
    assert!(items(&o, "nodes").iter().any(|n| n["name"] == "a1"));
    assert!(items(&o, "apps").is_empty(), "root's app shown to ann: {o}");
    // Her own are there, and only hers.
    let (cron, tasks) = (items(&o, "cron"), items(&o, "tasks"));
    assert!(
        !cron.is_empty() && cron.iter().all(|j| j["owner"] == "ann"),
        "{o}"
    );
    assert!(
        !tasks.is_empty() && tasks.iter().all(|t| t["principal"] == "ann"),
        "{o}"
    );
    let (_, body) = charter::harness::http(
        http,
        "GET",
        "/v1/overview",
        &[("authorization", &bearer(TOKEN))],
        b"",
    )
    .unwrap();
    let o: Value = serde_json::from_str(&body).unwrap();
    assert!(items(&o, "apps").iter().any(|a| a["name"] == "hello"));
    // Another principal's task logs (root's server) are not ann's to read.
    let server = o["apps"][0]["deployments"][0]["servers"][0]["task"]
        .as_u64()
        .unwrap_or_else(|| panic!("no server task in {o}"));
    let (code, body) = charter::harness::http(
        http,
        "GET",
        &format!("/v1/tasks/{server}/logs"),
        &[("authorization", &bearer(USER_TOKEN))],
        b"",
    )
    .unwrap();
    assert_eq!(code, 403, "{body}");
    // A node credential follows no events over gRPC either.
    refused(
        &cli(&c.servers(), &node_credential("a1"), &["events"]),
        "cannot make this call",
    );
    // No token, a node credential: refused.
    let (code, _) = charter::harness::http(http, "GET", "/v1/overview", &[], b"").unwrap();
    assert_eq!(code, 401);
    let (code, _) = charter::harness::http(
        http,
        "GET",
        "/v1/overview",
        &[("authorization", &bearer(&node_credential("a1")))],
        b"",
    )
    .unwrap();
    assert_eq!(code, 403, "a node credential reads no dashboard");
    // The login checks the token and sets it as an HttpOnly, SameSite=Strict
    // cookie, which the read-only routes take and a route that changes
    // something (a lock) does not.
    let login = |token: &str| {
        let mut s = std::net::TcpStream::connect(http).unwrap();
        let body = format!("token={token}");
        use std::io::{Read, Write};
        write!(
            s,
            "POST /ui/login HTTP/1.1\r\nhost: {http}\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let refused_login = login("not-a-token");
    assert!(refused_login.starts_with("HTTP/1.1 303"), "{refused_login}");
    assert!(
        refused_login.contains("location: /?login=refused"),
        "{refused_login}"
    );
    assert!(!refused_login.to_ascii_lowercase().contains("set-cookie"));
    let ok = login(USER_TOKEN);
    let cookie_line = ok
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {ok}"));
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"),
        "{cookie_line}"
    );
    let cookie = format!("charter_token={USER_TOKEN}");
    let (code, body) =
        charter::harness::http(http, "GET", "/v1/overview", &[("cookie", &cookie)], b"").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, _) = charter::harness::http(
        http,
        "POST",
        "/v1/locks/by-cookie",
        &[("cookie", &cookie), ("content-type", "application/json")],
        b"{}",
    )
    .unwrap();
    assert_eq!(
        code, 401,
        "a state-changing route took the dashboard's cookie"
    );

    // Metrics: Prometheus text that promtool accepts, counting what happened.
    let (code, metrics) =
        charter::harness::http(&c.members[other].http, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(code, 200);
    promtool(&metrics);
    let m = |line: &str| value(&metrics, line);
    assert!(m("charter_lease_grants_total") >= 3.0);
    assert!(m("charter_lease_ends_total{kind=\"expired\"}") >= 1.0);
    assert!(m("charter_cron_ticks_total{kind=\"fired\"}") >= 1.0);
    assert!(m("charter_deployments_total{kind=\"promoted\"}") >= 1.0);
    assert!(m("charter_lease_expiry_lateness_seconds_count") >= 1.0);
    assert!(m("charter_node_cpu_capacity_millis{node=\"a1\"}") > 0.0);

    // The agent's own, on its --http port.
    let (code, agent) = charter::harness::http(&agent_http, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(code, 200);
    promtool(&agent);
    assert!(value(&agent, "charter_agent_task_starts_total") >= 1.0);
    assert!(value(&agent, "charter_agent_task_exits_total{kind=\"failed\"}") >= 1.0);
    assert!(value(&agent, "charter_agent_kill_lateness_seconds_count") >= 1.0);
    assert!(
        value(&agent, "charter_agent_leases") >= 1.0,
        "the deployment's server runs"
    );
}

/// The array `key` of a JSON object.
fn items(v: &Value, key: &str) -> Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no array {key} in {v}"))
        .clone()
}

/// Fails unless `promtool check metrics` accepts the text (lint included).
fn promtool(metrics: &str) {
    use std::io::Write;
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn task_logs_follow_waits_for_a_queued_task_to_start_instead_of_failing() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    // (The test agent offers 4 cores.)
    let _a = agent_with(&c, dir.path(), "a1", &["--ttl", "3s"]);
    wait_for("node a1", Duration::from_secs(15), || {
        node_names(&json_ok(&c.cli(&["node", "list", "--json"])))
            .contains(&"a1".to_string())
            .then_some(())
    });
    // The node is full, so the task waits in the queue.
    let blocker = json_ok(&c.cli(&["lease", "request", "--cpu", "4", "--for", "1m", "--json"]));
    let blocker = blocker["id"].as_u64().unwrap().to_string();
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &[
            "task",
            "submit",
            "--cpu",
            "0.5",
            "--wait",
            "1m",
            "--json",
            "--",
            "sh",
            "-c",
            "echo hello-from-the-queue",
        ],
    );
    let task = json_ok(&out)["id"].as_u64().unwrap().to_string();
    let follower = cli_command(
        &c.servers(),
        USER_TOKEN,
        &["task", "logs", &task, "--follow"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Still waiting, not failed with "not placed yet".
    std::thread::sleep(Duration::from_millis(700));
    let mut follower = follower;
    assert!(
        follower.try_wait().unwrap().is_none(),
        "task logs --follow gave up on a queued task"
    );
    json_ok(&c.cli(&["lease", "release", &blocker, "--json"]));
    wait_for("the follower to end", Duration::from_secs(30), || {
        follower.try_wait().unwrap().map(|_| ())
    });
    let out = follower.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-the-queue\n"
    );
}
