//! Tenant isolation, tried as an attacker with an ordinary token would:
//! a lease's processes run as a user of their own and cannot read another
//! lease's sandbox, the agent's files, the raft db or any token; names that
//! become paths and oversized fields are refused where they are written; a
//! node with a long assignment list keeps taking work; an agent's `kill -9`
//! leaves its tasks running, writing and healthy; and one principal cannot
//! read another's secret env.
//!
//! These tests need root (as CI runs them): only root can give leases users
//! of their own. Run as another user they say so and check nothing.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    if !root {
        eprintln!("not root: leases cannot get users of their own here; nothing checked");
    }
    root
}

/// `charter dev` started as a careless operator might: its home directory
/// open to everyone, tokens for an admin and for two teams in a 0600 file.
struct Dev {
    child: std::process::Child,
    home: tempfile::TempDir,
    listen: String,
}

const TEAM_A: &str = "team-a-token-000001";
const TEAM_B: &str = "team-b-token-000002";

impl Dev {
    fn start() -> Dev {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        open_like_tmp(home.path());
        let tokens = home.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("{TOKEN} root admin\n{TEAM_A} team-a\n{TEAM_B} team-b\n"),
        )
        .unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ports = free_ports(2);
        let listen = format!("127.0.0.1:{}", ports[0]);
        let child = Command::new(BIN)
            .args(["dev", "--listen", &listen])
            .args(["--http", &format!("127.0.0.1:{}", ports[1])])
            .args(["--token-file", tokens.to_str().unwrap()])
            .env("CHARTER_HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.path().join("dev.log")).unwrap())
            .spawn()
            .unwrap();
        let d = Dev {
            child,
            home,
            listen,
        };
        wait_for("the dev agent to register", Duration::from_secs(30), || {
            let out = d.cli(TOKEN, &["node", "list", "--json"]);
            (out.status.success() && !node_names(&json_ok(&out)).is_empty()).then_some(())
        });
        d
    }

    /// The CLI with dev's home, so it trusts dev's CA.
    fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        cli_command(&self.listen, token, args)
            .env("CHARTER_HOME", self.home.path())
            .output()
            .unwrap()
    }

    fn data(&self) -> std::path::PathBuf {
        self.home.path().join("dev")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = charter::harness::stop_child(&mut self.child, Duration::from_secs(15));
    }
}

/// A lease of `token`'s, waited for until its sandbox exists; its id and
/// the sandbox's path.
fn lease_with_sandbox(d: &Dev, token: &str) -> (String, String) {
    let l = json_ok(&d.cli(
        token,
        &[
            "lease", "request", "--cpu", "0.1", "--mem", "32MiB", "--for", "5m", "--json",
        ],
    ));
    let id = l["id"].as_u64().unwrap().to_string();
    let pwd = wait_for("the lease's sandbox", Duration::from_secs(20), || {
        let out = d.cli(token, &["lease", "exec", &id, "--", "pwd"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    (id, pwd)
}

/// Runs `script` in lease `id` as `token`: exit code and stdout.
fn exec(d: &Dev, token: &str, id: &str, script: &str) -> (Option<i32>, String) {
    let out = d.cli(token, &["lease", "exec", id, "--", "sh", "-c", script]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// The sled files under `dir` (the raft log and the state).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_lease_cannot_read_other_leases_the_agent_or_the_control_plane() {
    if !root() {
        return;
    }
    let d = Dev::start();
    // Team A: a file in its sandbox and a task whose output is logged.
    let (a, a_dir) = lease_with_sandbox(&d, TEAM_A);
    let (code, _) = exec(&d, TEAM_A, &a, "echo team-a-file-secret > mine.txt");
    assert_eq!(code, Some(0));
    let t = json_ok(&d.cli(
        TEAM_A,
        &[
            "task",
            "submit",
            "--cpu",
            "0.1",
            "--mem",
            "32MiB",
            "--json",
            "--",
            "sh",
            "-c",
            "echo team-a-log-secret; sleep 600",
        ],
    ));
    let task = t["id"].as_u64().unwrap();
    let log = d
        .data()
        .join("agent/logs")
        .join(format!("task-{task}/stdout.log"));
    wait_for("team A's task output", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("team-a-log-secret"))
    });

    // Team B, in its own lease.
    let (b, b_dir) = lease_with_sandbox(&d, TEAM_B);
    assert_ne!(a_dir, b_dir);
    let (_, ids) = exec(&d, TEAM_B, &b, "id -u; id -G; stat -c %a .");
    let ids: Vec<&str> = ids.lines().collect();
    assert_ne!(ids[0], "0", "a lease's processes never run as root");
    let (_, a_uid) = exec(&d, TEAM_A, &a, "id -u");
    assert_ne!(ids[0], a_uid.trim(), "each lease is a user of its own");
    assert_eq!(ids[1], ids[0], "no supplementary groups: only its own gid");
    assert_eq!(ids[2], "700", "the sandbox is its user's alone");

    // Everything team B should not read: team A's sandbox and log, the
    // agent's data, every file of the member (raft log, state with the
    // agent's secret), the token files.
    let mut targets = vec![
        format!("{a_dir}/mine.txt"),
        log.display().to_string(),
        d.home.path().join("tokens").display().to_string(),
    ];
    let member_files: Vec<String> = files_under(&d.data())
        .into_iter()
        .filter(|p| !p.starts_with(d.data().join("agent")))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        member_files.iter().any(|f| f.contains("/raft/")),
        "{member_files:?}"
    );
    targets.extend(member_files);
    let script: String = targets
        .iter()
        .map(|t| format!("if cat '{t}' >/dev/null 2>&1; then echo READ {t}; fi; "))
        .collect::<String>()
        + &format!(
            "ls '{a_dir}' >/dev/null 2>&1 && echo LISTED {a_dir}; ls .. >/dev/null 2>&1 && echo LISTED ..; true"
        );
    let (code, out) = exec(&d, TEAM_B, &b, &script);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "", "team B read what it must not");
    // The same paths are there and readable to the agent's own user: the
    // refusals above are permissions, not missing files.
    for t in &targets {
        assert!(std::fs::read(t).is_ok(), "{t} should exist");
    }
    // And team A still reads its own file.
    let (_, mine) = exec(&d, TEAM_A, &a, "cat mine.txt");
    assert_eq!(mine, "team-a-file-secret\n");
}

/// A cluster of one with one agent, for the write-side checks.
fn one_with_agent() -> (Cluster, tempfile::TempDir, Agent) {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&c, dir.path(), "a1");
    (c, dir, a)
}

fn err(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "should be refused");
    stderr(out)
}

#[test]
fn names_and_sizes_are_refused_where_they_are_written_and_change_nothing() {
    let (c, _dir, _a) = one_with_agent();
    let as_ann = |args: &[&str]| cli(&c.servers(), USER_TOKEN, args);
    // A reason of 120 KB, 37 times: refused at write, nothing recorded.
    let huge = "r".repeat(120_000);
    for _ in 0..37 {
        let e = err(&as_ann(&[
            "lease", "request", "--for", "10m", "--reason", &huge,
        ]));
        assert!(e.contains("at most 1024"), "{e}");
    }
    let l = json_ok(&c.cli(&["lease", "list", "--all", "--json"]));
    assert_eq!(l["leases"], serde_json::json!([]), "{l}");

    // An app name that is a path, in the task's env or in an upload.
    let e = err(&c.cli(&[
        "task",
        "submit",
        "--env",
        "CHARTER_APP=/../../../tmp/x",
        "--",
        "true",
    ]));
    assert!(e.contains("CHARTER_APP"), "{e}");
    let owned = std::env::temp_dir().join(format!("charter-owned-{}", std::process::id()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put = |app: String, task: u64| {
        rt.block_on(async {
            use charter_proto as pb;
            let conn =
                charter_proto::conn::Servers::new(&[c.servers()], Some(TOKEN.to_string())).unwrap();
            let (addr, ch) = conn.each().into_iter().next().unwrap();
            let chunk = pb::ArtifactChunk {
                app,
                sha256: "0".repeat(64),
                data: b"x".to_vec(),
                task_id: task,
            };
            let req = conn.req(tokio_stream::iter(vec![chunk]));
            let r = pb::deploy_client::DeployClient::new(ch)
                .put_artifact(req)
                .await;
            (addr, r.map(|_| ()).map_err(|s| s.message().to_string()))
        })
    };
    let (_, r) = put(format!("/{}{}", "../".repeat(12), owned.display()), 0);
    assert!(r.unwrap_err().contains("app name"));
    let (_, r) = put("hello".into(), 1);
    assert!(r.unwrap_err().contains("not a build of app hello"));
    assert!(!owned.exists(), "{} was written", owned.display());
    // A non-admin cannot name artifacts at all: they are the deployer's.
    let r = rt.block_on(async {
        use charter_proto as pb;
        let conn = charter_proto::conn::Servers::new(&[c.servers()], Some(USER_TOKEN.to_string()))
            .unwrap();
        let (_, ch) = conn.each().into_iter().next().unwrap();
        let req = conn.req(pb::SubmitTaskRequest {
            lease: Some(pb::LeaseRequest {
                duration_ms: 60_000,
                ..Default::default()
            }),
            task: Some(pb::TaskSpec {
                command: vec!["true".into()],
                artifact_out: "out/a".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        pb::tasks_client::TasksClient::new(ch).submit(req).await
    });
    assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied);

    // Labels and names of a node, checked on the wire too.
    let e = err(&c.cli(&["node", "register", "../n", "--cpu", "1", "--mem", "1GiB"]));
    assert!(e.contains("node name"), "{e}");
}

#[test]
fn a_node_with_a_long_assignment_list_keeps_taking_work() {
    let (c, _dir, _a) = one_with_agent();
    // Bob fills the node with 40 tasks of 60 KB env each: 2.4 MB of
    // assignments, more than half of gRPC's 4 MiB message limit, with the
    // commands and the rest.
    let big = format!("BLOB={}", "b".repeat(60_000));
    let cmd = "x".repeat(60_000);
    for _ in 0..40 {
        let out = cli(
            &c.servers(),
            OTHER_TOKEN,
            &[
                "task",
                "submit",
                "--cpu",
                "0.05",
                "--mem",
                "8MiB",
                "--env",
                &big,
                "--json",
                "--",
                "sh",
                "-c",
                "sleep 600",
                "sh",
                &cmd,
            ],
        );
        json_ok(&out);
    }
    // Ann's task still starts and finishes.
    let t = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["task", "submit", "--cpu", "0.1", "--json", "--", "true"],
    ));
    let id = t["id"].as_u64().unwrap().to_string();
    let t = wait_for("ann's task to succeed", Duration::from_secs(60), || {
        let t = json_ok(&cli(
            &c.servers(),
            USER_TOKEN,
            &["task", "show", &id, "--json"],
        ));
        (t["state"] == "succeeded").then_some(t)
    });
    assert_eq!(t["exit_code"], 0);
    let t0 = std::time::Instant::now();
    loop {
        let tasks = json_ok(&c.cli(&["task", "list", "--all", "--json"]));
        let running = tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "running")
            .count();
        if running == 40 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let states: Vec<String> = tasks["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| format!("{} {} {}", t["id"], t["state"], t["message"]))
                .collect();
            panic!("bob's 40 tasks should all run: {states:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_agent_killed_and_restarted_leaves_its_tasks_running_writing_and_healthy() {
    let (c, dir, mut a) = one_with_agent();
    let submit = |args: &[&str]| {
        let mut all = vec!["task", "submit", "--cpu", "0.1", "--json"];
        all.extend_from_slice(args);
        json_ok(&c.cli(&all))["id"].as_u64().unwrap().to_string()
    };
    // A chatty task, and a service with an HTTP health check.
    let chatty = submit(&[
        "--",
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.1; done",
    ]);
    let web = submit(&[
        "--amp",
        "service",
        "--port",
        "http",
        "--health-http",
        "http/",
        "--",
        "sh",
        "-c",
        "exec python3 -m http.server --bind 127.0.0.1 $PORT",
    ]);
    let show = |id: &str| json_ok(&c.cli(&["task", "show", id, "--json"]));
    let healthy = |within| {
        wait_for("the service to be healthy", within, || {
            let t = show(&web);
            (t["health"] == "healthy").then_some(t)
        })
    };
    let before = healthy(Duration::from_secs(30));
    let port = before["ports"]["http"].as_u64().unwrap();
    let log = dir
        .path()
        .join("a1/logs")
        .join(format!("task-{chatty}/stdout.log"));
    let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    wait_for("the chatty task to write", Duration::from_secs(20), || {
        (size() > 0).then_some(())
    });
    let answers = || {
        charter::harness::http(&format!("127.0.0.1:{port}"), "GET", "/", &[], b"")
            .is_ok_and(|(code, _)| code == 200)
    };
    assert!(answers());

    a.kill9();
    // Its processes go on without the agent: the log grows, the service answers.
    let grown = size();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        size() > grown,
        "the chatty task stopped writing without its agent"
    );
    assert!(answers(), "the service stopped answering without its agent");

    a.restart();
    std::thread::sleep(Duration::from_secs(3));
    let t = show(&chatty);
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["starts"], 1, "adopted, not started again: {t}");
    let grown = size();
    std::thread::sleep(Duration::from_secs(1));
    assert!(size() > grown, "still writing after the restart: {t}");
    // The service is the same process, checked again by the new agent:
    // a failing check would make it unhealthy.
    let w = show(&web);
    assert_eq!(
        (w["state"].as_str(), w["starts"].as_u64()),
        (Some("running"), Some(1)),
        "{w}"
    );
    assert!(answers());
    assert!(
        a.log().contains("adopting"),
        "the restarted agent adopted its tasks: {}",
        a.log()
    );
    // Stop the service's server: the resumed checks see it and say so.
    let pids = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("http.server"))
                && std::fs::read(e.path().join("environ")).is_ok_and(|env| {
                    String::from_utf8_lossy(&env).contains(&format!("CHARTER_TASK_ID={web}"))
                })
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect::<Vec<_>>();
    assert!(!pids.is_empty());
    for p in pids {
        // SAFETY: kill(2) on the service's own process, found above.
        unsafe {
            libc::kill(p, libc::SIGSTOP);
        }
    }
    wait_for(
        "the resumed check to notice",
        Duration::from_secs(30),
        || (show(&web)["health"] == "unhealthy").then_some(()),
    );
}

#[test]
fn one_principal_cannot_read_anothers_secret_env() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etl.toml");
    std::fs::write(
        &file,
        r#"
[[job]]
name = "nightly-etl"
schedule = "0 3 * * *"
[job.task]
command = ["./etl.sh"]
env = { MODE = "full" }
secret_env = { DB_PASSWORD = "hunter2" }
for = "1h"
"#,
    )
    .unwrap();
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["cron", "apply", file.to_str().unwrap(), "--json"],
    );
    json_ok(&out);
    let show = |token: &str| -> Value {
        let v = json_ok(&cli(
            &c.servers(),
            token,
            &["cron", "show", "nightly-etl", "--json"],
        ));
        v["definition"]["task"].clone()
    };
    let bob = show(OTHER_TOKEN);
    assert_eq!(bob["secret_env"]["DB_PASSWORD"], "(hidden)", "{bob}");
    assert_eq!(bob["env"]["MODE"], "full", "plain env stays readable");
    assert!(!bob.to_string().contains("hunter2"), "{bob}");
    assert_eq!(show(USER_TOKEN)["secret_env"]["DB_PASSWORD"], "hunter2");
    assert_eq!(show(TOKEN)["secret_env"]["DB_PASSWORD"], "hunter2");
    let list = cli(&c.servers(), OTHER_TOKEN, &["cron", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains("hunter2"));
}
