//! The deployer end to end, with real git repositories, real builds (rustc)
//! and real HTTP services: apps registered and kept by their owner, a signed
//! push deploying with no failed request through the entry, replays and bad
//! signatures starting nothing, rollbacks on a failed build and on a
//! never-healthy version, `deploy rollback`, polling, a tampered artifact
//! refused, a lost node's servers started elsewhere, lease renewal, and a
//! leader killed mid-deploy.

mod common;

use common::*;
use std::time::Duration;

/// An agent for the deployer's tests. Builds run as the app's owner,
/// `root` here, mapped to the system's root: this machine's Rust toolchain
/// lives under /root (0700), out of reach of a lease's own uid. (Isolation
/// itself is tests/isolation.rs's.)
fn builder(c: &Cluster, dir: &std::path::Path, name: &str) -> Agent {
    agent_with(c, dir, name, &["--ttl", "3s", "--run-as", "root=root"])
}

#[test]
fn apps_are_registered_updated_and_kept_by_their_owner() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app/app.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let file = dir.path().join("app.toml");
    std::fs::write(&file, &text).unwrap();
    let f = file.to_str().unwrap();

    let v = json_ok(&c.cli(&["deploy", "apply", f, "--json"]));
    assert_eq!(v["change"], "added", "{v}");
    assert_eq!(v["app"]["name"], "hello");
    assert_eq!(v["app"]["servers"], 2);
    let first = v["app"]["version"].as_str().unwrap().to_string();
    assert_eq!(
        json_ok(&c.cli(&["deploy", "apply", f, "--json"]))["change"],
        "unchanged"
    );

    std::fs::write(&file, text.replace("servers = 2", "servers = 3")).unwrap();
    let v = json_ok(&c.cli(&["deploy", "apply", f, "--json"]));
    assert_eq!(v["change"], "changed", "{v}");
    assert_ne!(v["app"]["version"], first.as_str());
    let list = json_ok(&c.cli(&["deploy", "list", "--json"]));
    assert_eq!(list["apps"][0]["servers"], 3, "{list}");

    // A bad file is refused with its line, and the app stays as it was.
    std::fs::write(&file, text.replace("servers = 2", "servers = 0")).unwrap();
    let out = c.cli(&["deploy", "apply", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("app.toml:9: servers"),
        "{}",
        stderr(&out)
    );
    let list = json_ok(&c.cli(&["deploy", "list", "--json"]));
    assert_eq!(list["apps"][0]["servers"], 3, "{list}");

    // Another principal cannot take the app over.
    std::fs::write(&file, &text).unwrap();
    let out = c
        .cli_as(&c.servers(), USER_TOKEN, &["deploy", "apply", f])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("was applied by root"),
        "{}",
        stderr(&out)
    );
}

// ------------------------------------------------------------ deployments

use charter_deployer::webhook::hmac_sha256;
use std::path::{Path, PathBuf};

const SECRET: &str = "s3cret";

fn git(dir: &Path, args: &[&str]) -> String {
    charter::harness::git(dir, args).unwrap()
}

fn app_repo(root: &Path) -> PathBuf {
    charter::harness::example_app_repo(root).unwrap()
}

/// A one-member cluster with agent `a1`, the example app's repository and
/// its first commit.
fn setup() -> (Cluster, tempfile::TempDir, Agent, PathBuf, String) {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let a = builder(&c, dir.path(), "a1");
    let repo = app_repo(dir.path());
    let v1 = git(&repo, &["rev-parse", "HEAD"]);
    (c, dir, a, repo, v1)
}

/// Commits a new version of the app (`v2`, …) or a change to build.sh.
fn commit(repo: &Path, file: &str, from: &str, to: &str, msg: &str) -> String {
    let p = repo.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has no {from}");
    std::fs::write(&p, text.replace(from, to)).unwrap();
    git(repo, &["commit", "--quiet", "-am", msg]);
    git(repo, &["rev-parse", "HEAD"])
}

fn app_file(dir: &Path, repo: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        r#"kind = "app"
name = "hello"
repo = "{}"
branch = "main"
servers = 2
progress_deadline = "90s"
secret = "{SECRET}"

[build]
command = ["sh", "build.sh"]
artifact = "out/hello"
cpu = 0.5
mem = "1GiB"
timeout = "2m"

[run]
command = ["./hello"]
ports = ["http"]

[health]
http = "/healthz"
interval = "200ms"
min_healthy = "1s"

[requirements]
cpu = 0.1
mem = "64MiB"
"#,
        repo.display()
    );
    for (from, to) in extra {
        assert!(text.contains(from), "no {from} in the app file");
        text = text.replace(from, to);
    }
    let f = dir.join("app.toml");
    std::fs::write(&f, text).unwrap();
    f
}

use charter::harness::http;

/// A GitHub push delivery for `commit`, signed with `secret`.
fn push(http_addr: &str, commit: &str, delivery: &str, secret: &str) -> (u16, String) {
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{commit}","repository":{{"clone_url":"https://git.example/hello.git"}}}}"#
    );
    let sig = format!(
        "sha256={}",
        hex(&hmac_sha256(secret.as_bytes(), body.as_bytes()))
    );
    // An empty `delivery` leaves the header out.
    let mut headers = vec![
        ("x-github-event", "push"),
        ("x-hub-signature-256", sig.as_str()),
        ("content-type", "application/json"),
    ];
    if !delivery.is_empty() {
        headers.push(("x-github-delivery", delivery));
    }
    http(
        http_addr,
        "POST",
        "/hooks/git?app=hello",
        &headers,
        body.as_bytes(),
    )
    .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn history(c: &Cluster) -> serde_json::Value {
    json_ok(&c.cli(&["deploy", "history", "hello", "--json"]))
}

/// Waits until deployment `id` ends; returns it.
fn ended(c: &Cluster, id: u64, within: Duration) -> serde_json::Value {
    wait_for(&format!("deployment {id} to end"), within, || {
        let h = history(c);
        h["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["id"] == id && !d["ended_at"].is_null())
            .cloned()
    })
}

/// A client that GETs the app's entry every 20 ms on its own thread.
struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>, Vec<String>)>,
}

impl Poller {
    fn start(web: &str) -> Poller {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, web) = (stop.clone(), web.to_string());
        let thread = std::thread::spawn(move || {
            let (mut ok, mut bad, mut seen) = (0, Vec::new(), Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match http(&web, "GET", "/apps/hello/", &[], b"") {
                    Ok((200, b)) => {
                        ok += 1;
                        if seen.last() != Some(&b) {
                            seen.push(b);
                        }
                    }
                    other => bad.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, bad, seen)
        });
        Poller { stop, thread }
    }

    /// Stops it and asserts no request failed; the answers, each new body once.
    fn stop_without_failures(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, bad, seen) = self.thread.join().unwrap();
        assert!(
            bad.is_empty(),
            "{} of {} requests failed: {:?}",
            bad.len(),
            ok + bad.len(),
            &bad[..bad.len().min(5)]
        );
        (ok, seen)
    }
}

fn deployment_id(answer: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["deployment"]
        .as_u64()
        .unwrap_or_else(|| panic!("no deployment in {answer}"))
}

#[test]
fn a_signed_push_deploys_with_no_failed_request_and_replays_and_bad_signatures_start_nothing() {
    // Servers are leased for 4 s at a time: the deployer must renew them.
    let c = Cluster::start(1, &["--deploy-lease-ms", "4000"]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let mut a = builder(&c, dir.path(), "a1");
    let repo = app_repo(dir.path());
    let v1 = git(&repo, &["rev-parse", "HEAD"]);
    let f = app_file(dir.path(), &repo, &[]);
    json_ok(&c.cli(&["deploy", "apply", f.to_str().unwrap(), "--json"]));
    let web = c.0.members[0].http.clone();

    // The first version.
    let (code, body) = push(&web, &v1, "d-1", SECRET);
    assert_eq!(code, 202, "{body}");
    let first = deployment_id(&body);
    let d = ended(&c, first, Duration::from_secs(120));
    assert_eq!(d["status"], "active", "{d}");
    let entry = |path: &str| http(&web, "GET", &format!("/apps/hello{path}"), &[], b"");
    assert_eq!(entry("/").unwrap(), (200, "hello from v1\n".into()));

    // A bad signature, and an unsigned one: 401, nothing starts.
    let v2 = commit(&repo, "hello.rs", "\"v1\"", "\"v2\"", "v2");
    let (code, body) = push(&web, &v2, "d-2", "wrong");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("does not match"), "{body}");
    let (code, _) = http(
        &web,
        "POST",
        "/hooks/git?app=hello",
        &[("x-github-delivery", "d-3")],
        b"{}",
    )
    .unwrap();
    assert_eq!(code, 401);
    assert_eq!(history(&c)["deployments"].as_array().unwrap().len(), 1);

    // The client polls the entry through the whole deploy of v2.
    let poller = Poller::start(&web);
    let (code, body) = push(&web, &v2, "d-4", SECRET);
    assert_eq!(code, 202, "{body}");
    let second = deployment_id(&body);
    // Answered at once, not after the deploy: it is still under way (it
    // takes a build and a second of health at least).
    let under_way = history(&c)["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == second && d["ended_at"].is_null());
    assert!(under_way, "{}", history(&c));
    // The same delivery again, and the same commit in another delivery: nothing new.
    let (code, body) = push(&web, &v2, "d-4", SECRET);
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("seen before"), "{body}");
    let (_, body) = push(&web, &v2, "d-5", SECRET);
    assert!(body.contains("is being deployed"), "{body}");
    let d = ended(&c, second, Duration::from_secs(120));
    assert_eq!(d["status"], "active", "{d}");
    std::thread::sleep(Duration::from_millis(500));
    let (ok, seen) = poller.stop_without_failures();
    assert_eq!(
        seen,
        ["hello from v1\n", "hello from v2\n"],
        "the old version answers until the swap"
    );
    assert!(ok > 20, "{ok} requests");
    // Pushed again once active: still deployed once.
    let (_, body) = push(&web, &v2, "d-6", SECRET);
    assert!(body.contains("is already active"), "{body}");
    let h = history(&c);
    assert_eq!(h["deployments"].as_array().unwrap().len(), 2, "{h}");
    assert_eq!(h["active"], second);
    // Every step on record; the old version retired and its servers gone.
    let steps: Vec<&str> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "fetch",
            "build",
            "publish",
            "lease",
            "start",
            "await_healthy",
            "promote",
            "retire"
        ]
    );
    let old = h["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == first)
        .unwrap()
        .clone();
    assert_eq!(old["status"], "retired", "{old}");
    let tasks = json_ok(&c.cli(&["task", "list", "--json"]));
    let running: Vec<u64> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(running.len(), 2, "only the new servers run: {tasks}");
    let status = json_ok(&c.cli(&["deploy", "status", "hello", "--json"]));
    assert_eq!(status["active"]["deployment"], second, "{status}");
    assert_eq!(
        status["active"]["servers"].as_array().unwrap().len(),
        2,
        "{status}"
    );
    for s in status["active"]["servers"].as_array().unwrap() {
        let addr = s["address"].as_str().unwrap();
        assert_eq!(
            http(addr, "GET", "/", &[], b"").unwrap().1,
            "hello from v2\n"
        );
    }

    // An old push replayed cannot roll back: without its delivery id it is
    // refused (only the body is signed), and under a new id its commit is
    // found to be an ancestor of the active one, so nothing is built or
    // started and v2 stays active.
    let (code, body) = push(&web, &v1, "", SECRET);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("delivery id"), "{body}");
    let (code, body) = push(&web, &v1, "d-7", SECRET);
    assert_eq!(code, 202, "{body}");
    let replay = deployment_id(&body);
    let r = ended(&c, replay, Duration::from_secs(60));
    assert_eq!(r["status"], "unchanged", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("ancestor"), "{r}");
    assert!(r["build_task"].is_null(), "{r}");
    assert!(
        r["instances"].as_array().is_none_or(|i| i.is_empty()),
        "{r}"
    );
    assert_eq!(history(&c)["active"], second);
    assert_eq!(entry("/").unwrap(), (200, "hello from v2\n".into()));
    // Twice: now the two newest deployments both ended `unchanged`, and
    // status still shows the active version (it looks past them).
    let (code, body) = push(&web, &v1, "d-8", SECRET);
    assert_eq!(code, 202, "{body}");
    let again = ended(&c, deployment_id(&body), Duration::from_secs(60));
    assert_eq!(again["status"], "unchanged", "{again}");
    let status = json_ok(&c.cli(&["deploy", "status", "hello", "--json"]));
    assert_eq!(status["active"]["deployment"], second, "{status}");
    let text = String::from_utf8_lossy(&c.cli(&["deploy", "status", "hello"]).stdout).to_string();
    assert!(
        text.contains(&format!("(deployment {second}")) && !text.contains("no active version"),
        "{text}"
    );

    // The agent is killed and restarted: its servers run on (their output
    // goes to files, not through the agent), the entry never fails, and the
    // restarted agent checks their health again.
    let poller = Poller::start(&web);
    a.kill9();
    std::thread::sleep(Duration::from_secs(2));
    a.restart();
    std::thread::sleep(Duration::from_secs(3));
    let (ok, seen) = poller.stop_without_failures();
    assert_eq!(seen, ["hello from v2\n"]);
    assert!(ok > 20, "{ok} requests");
    let status = json_ok(&c.cli(&["deploy", "status", "hello", "--json"]));
    for s in status["active"]["servers"].as_array().unwrap() {
        assert_eq!(
            (s["state"].as_str(), s["health"].as_str()),
            (Some("running"), Some("healthy")),
            "{status}"
        );
    }
}

fn trigger(c: &Cluster, args: &[&str]) -> u64 {
    let mut a = vec!["deploy"];
    a.extend_from_slice(args);
    a.push("--json");
    let v = json_ok(&c.cli(&a));
    assert_eq!(v["started"], true, "{v}");
    v["deployment"]["id"].as_u64().unwrap()
}

fn apply(c: &Cluster, f: &Path) {
    json_ok(&c.cli(&["deploy", "apply", f.to_str().unwrap(), "--json"]));
}

#[test]
fn failed_builds_and_unhealthy_versions_roll_back_and_rollback_returns_to_the_earlier_version() {
    let (c, dir, _a, repo, v1) = setup();
    apply(&c, &app_file(dir.path(), &repo, &[]));
    let web = c.0.members[0].http.clone();
    let entry = || http(&web, "GET", "/apps/hello/", &[], b"").unwrap();

    let id = trigger(&c, &["trigger", "hello"]);
    let d = ended(&c, id, Duration::from_secs(120));
    assert_eq!(
        (d["status"].as_str(), d["commit"].as_str()),
        (Some("active"), Some(v1.as_str())),
        "{d}"
    );
    assert_eq!(d["trigger"], "manual");
    // Times in `--json` are RFC 3339, as in every other object, and every
    // field is there (null when it does not apply).
    for f in ["created_at", "promoted_at"] {
        assert!(d[f].as_str().is_some_and(|t| t.ends_with('Z')), "{f}: {d}");
    }
    assert!(d["steps"][0]["started_at"].as_str().is_some(), "{d}");
    assert!(
        d.get("failed_step").is_some() && d.get("build_log").is_some(),
        "{d}"
    );
    // Triggering the branch head that is already active starts nothing,
    // and says so (as `--commit` of it does), instead of "started".
    let v = json_ok(&c.cli(&["deploy", "trigger", "hello", "--json"]));
    assert_eq!(v["started"], false, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("active"), "{v}");
    let out = c.cli(&["deploy", "trigger", "hello"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("nothing started: "), "{text}");

    // A build that fails: rolled back at build, its output on record.
    commit(
        &repo,
        "build.sh",
        "set -e\n",
        "set -e\necho compiler exploded >&2\nexit 3\n",
        "broken build",
    );
    let id = trigger(&c, &["trigger", "hello"]);
    let d = ended(&c, id, Duration::from_secs(60));
    assert_eq!(d["status"], "rolled_back", "{d}");
    assert_eq!(d["failed_step"], "build", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("exit code 3"), "{d}");
    assert!(
        d["build_log"]
            .as_str()
            .unwrap()
            .contains("compiler exploded"),
        "{d}"
    );
    assert_eq!(
        history(&c)["active"],
        json_ok(&c.cli(&["deploy", "status", "hello", "--json"]))["active"]["deployment"]
    );
    assert_eq!(entry(), (200, "hello from v1\n".into()));
    // A watch of it fails as `kubectl rollout status` would, and shows why.
    let out = c.cli(&["deploy", "status", "hello", "--watch"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("rolled_back") && text.contains("compiler exploded"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "screen codes written into a pipe: {text:?}"
    );

    // A version that never becomes healthy: rolled back at the deadline.
    commit(
        &repo,
        "build.sh",
        "echo compiler exploded >&2\nexit 3\n",
        "",
        "fixed build",
    );
    let v2 = commit(&repo, "hello.rs", "\"v1\"", "\"v2\"", "v2");
    apply(
        &c,
        &app_file(
            dir.path(),
            &repo,
            &[
                ("progress_deadline = \"90s\"", "progress_deadline = \"12s\""),
                ("min_healthy = \"1s\"", "min_healthy = \"1s\"\nstatus = 204"),
            ],
        ),
    );
    let id = trigger(&c, &["trigger", "hello", "--commit", &v2[..10]]);
    let d = ended(&c, id, Duration::from_secs(60));
    assert_eq!(d["status"], "rolled_back", "{d}");
    assert_eq!(d["failed_step"], "await_healthy", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("progress deadline of 12s passed"),
        "{d}"
    );
    assert_eq!(
        d["commit"],
        v2.as_str(),
        "the abbreviated commit was resolved"
    );
    assert_eq!(entry(), (200, "hello from v1\n".into()));
    // Its servers were stopped and released.
    let tasks = json_ok(&c.cli(&["task", "list", "--json"]));
    for t in tasks["tasks"].as_array().unwrap() {
        if d["instances"].as_array().unwrap().contains(&t["id"]) {
            assert_eq!(t["state"], "cancelled", "{t}");
        }
    }

    // Healthy again: v2 deploys (its build is reused), then rollback returns to v1.
    apply(&c, &app_file(dir.path(), &repo, &[]));
    let id = trigger(&c, &["trigger", "hello"]);
    let d = ended(&c, id, Duration::from_secs(120));
    assert_eq!(d["status"], "active", "{d}");
    assert!(
        d["steps"][1]["message"]
            .as_str()
            .unwrap()
            .contains("reused"),
        "{d}"
    );
    assert_eq!(entry(), (200, "hello from v2\n".into()));
    let id = trigger(&c, &["rollback", "hello"]);
    let d = ended(&c, id, Duration::from_secs(120));
    assert_eq!(
        (d["status"].as_str(), d["trigger"].as_str()),
        (Some("active"), Some("rollback")),
        "{d}"
    );
    assert_eq!(d["commit"], v1.as_str());
    assert_eq!(entry(), (200, "hello from v1\n".into()));
    // The retired v2 took as long as it took to promote, not until it was
    // retired.
    let h = history(&c);
    let v2d = h["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["status"] == "retired" && x["commit"] == v2.as_str())
        .cloned()
        .unwrap();
    let ms = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(v2d[k].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let took = format!(
        "{:.1}s",
        (ms("promoted_at") - ms("created_at")) as f64 / 1000.0
    );
    let table = String::from_utf8_lossy(&c.cli(&["deploy", "history", "hello"]).stdout).to_string();
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", v2d["id"])))
        .unwrap();
    assert!(row.contains(&format!(" {took} ")), "{took} in {row}");
    let out = c.cli(&["deploy", "rollback", "hello", "--to", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no built deployment has fingerprint nope"),
        "{}",
        stderr(&out)
    );

    // The active version's node is lost: its servers start again elsewhere.
    let _a2 = builder(&c, dir.path(), "a2");
    let mut a1 = _a;
    a1.kill9();
    wait_for(
        "both servers healthy on a2",
        Duration::from_secs(60),
        || {
            let st = json_ok(&c.cli(&["deploy", "status", "hello", "--json"]));
            let servers = st["active"]["servers"].as_array()?.clone();
            (servers.len() == 2
                && servers
                    .iter()
                    .all(|s| s["node"] == "a2" && s["health"] == "healthy"))
            .then_some(())
        },
    );
    assert_eq!(entry(), (200, "hello from v1\n".into()));
    // Restarted, a1 kills what its lost leases left running.
    a1.restart();
    wait_for(
        "a1's old servers to be gone",
        Duration::from_secs(30),
        || (processes_in(&a1.data) == 0).then_some(()),
    );
}

/// Processes whose working directory is under `dir`.
fn processes_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir)))
        .count()
}

#[test]
fn a_leader_killed_mid_deploy_ends_in_the_new_version_or_a_rollback_never_without_servers() {
    let mut c = Cluster::start(3, &[]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let _a = builder(&c, dir.path(), "a1");
    let repo = app_repo(dir.path());
    apply(
        &c,
        &app_file(
            dir.path(),
            &repo,
            &[("min_healthy = \"1s\"", "min_healthy = \"3s\"")],
        ),
    );
    let first = trigger(&c, &["trigger", "hello"]);
    assert_eq!(
        ended(&c, first, Duration::from_secs(120))["status"],
        "active"
    );

    let v2 = commit(&repo, "hello.rs", "\"v1\"", "\"v2\"", "v2");
    let id = trigger(&c, &["trigger", "hello", "--commit", &v2]);
    wait_for("the new servers to start", Duration::from_secs(60), || {
        let h = history(&c);
        let d = h["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["id"] == id)?
            .clone();
        matches!(
            d["steps"].as_array()?.last()?["step"].as_str()?,
            "start" | "await_healthy"
        )
        .then_some(())
    });
    let leader = c.wait_leader(Duration::from_secs(5));
    let other = (leader + 1) % 3;
    let web = c.0.members[other].http.clone();
    let poller = Poller::start(&web);
    c.0.kill9(leader);
    let d = ended(&c, id, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    poller.stop_without_failures();
    let status = json_ok(&c.cli(&["deploy", "status", "hello", "--json"]));
    let want = match d["status"].as_str() {
        Some("active") => id,
        Some("rolled_back") => first,
        other => panic!("deployment {id} ended {other:?}: {d}"),
    };
    assert_eq!(status["active"]["deployment"], want, "{status}");
    let servers = status["active"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{status}");
    for s in servers {
        assert_eq!(s["health"], "healthy", "{status}");
    }
    c.spawn(leader, false);
}

#[test]
fn polling_deploys_new_heads_and_a_tampered_artifact_is_refused_by_the_agent() {
    let (c, dir, _a, repo, v1) = setup();
    apply(
        &c,
        &app_file(
            dir.path(),
            &repo,
            &[("secret = ", "poll = \"1s\"\nsecret = ")],
        ),
    );
    let active = |commit: &str| {
        let h = history(&c);
        h["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["commit"] == commit && d["status"] == "active" && d["trigger"] == "poll")
            .cloned()
    };
    // The head is deployed without any trigger, and so is the next one.
    let first = wait_for(
        "the polled head to be active",
        Duration::from_secs(120),
        || active(&v1),
    );
    let v2 = commit(&repo, "hello.rs", "\"v1\"", "\"v2\"", "v2");
    wait_for(
        "the new head to be active",
        Duration::from_secs(120),
        || active(&v2),
    );
    assert_eq!(
        history(&c)["deployments"].as_array().unwrap().len(),
        2,
        "each head once"
    );

    // Damage the stored artifact of v1: going back to it fails at the
    // agent's check, and v2 stays active.
    let blob = c.0.members[0]
        .data
        .join("artifacts/sha256")
        .join(first["artifact"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let id = trigger(&c, &["rollback", "hello"]);
    let d = ended(&c, id, Duration::from_secs(60));
    assert_eq!(d["status"], "rolled_back", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("sha256"), "{d}");
    let web = c.0.members[0].http.clone();
    assert_eq!(
        http(&web, "GET", "/apps/hello/", &[], b"").unwrap(),
        (200, "hello from v2\n".into())
    );

    // With v1's artifact gone from the store (as `keep` prunes), going
    // back builds v1 again instead of reusing what no server could fetch.
    std::fs::remove_file(&blob).unwrap();
    let id = trigger(&c, &["rollback", "hello"]);
    let d = ended(&c, id, Duration::from_secs(120));
    assert_eq!(d["status"], "active", "{d}");
    assert!(d["build_task"].is_u64(), "built again: {d}");
    assert_eq!(
        http(&web, "GET", "/apps/hello/", &[], b"").unwrap(),
        (200, "hello from v1\n".into())
    );
}

#[test]
fn members_started_without_the_deployer_leave_it_to_a_standalone_one() {
    let c = Cluster::start(1, &["--no-deployer"]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let _a = builder(&c, dir.path(), "a1");
    let repo = app_repo(dir.path());
    apply(&c, &app_file(dir.path(), &repo, &[]));
    let id = trigger(&c, &["trigger", "hello"]);
    std::thread::sleep(Duration::from_secs(2));
    let d = history(&c)["deployments"][0].clone();
    assert_eq!(
        (
            d["id"].as_u64(),
            d["status"].as_str(),
            d["steps"].as_array().unwrap().len()
        ),
        (Some(id), Some("running"), 1),
        "nobody fetched: {d}"
    );
    let mut deployer = std::process::Command::new(BIN)
        .args([
            "--server",
            &c.servers(),
            "--token",
            DEPLOYER_TOKEN,
            "deployer",
            "--work",
        ])
        .arg(dir.path().join("work"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let d = ended(&c, id, Duration::from_secs(120));
    let _ = deployer.kill();
    let _ = deployer.wait();
    assert_eq!(d["status"], "active", "{d}");
    assert!(dir.path().join("work/mirrors/hello.git/HEAD").is_file());
}
