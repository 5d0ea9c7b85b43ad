//! `charter dev`: one command, a default data directory it prints, a dev
//! token and a TLS CA the CLI finds without being told, a local agent that runs tasks,
//! Hydra applying and firing the example crontab, and a clean stop on SIGINT.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn dev_runs_with_a_token_the_cli_finds_and_stops_on_sigint() {
    let home = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let listen = format!("127.0.0.1:{}", ports[0]);
    let http = format!("127.0.0.1:{}", ports[1]);
    let child = Command::new(BIN)
        .args(["dev", "--listen", &listen, "--http", &http])
        .env("CHARTER_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI, given neither --token nor CHARTER_TOKEN, uses the dev token.
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(["--server", &listen])
            .args(args)
            .env("CHARTER_HOME", home.path())
            .env_remove("CHARTER_TOKEN")
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(&["cluster", "status", "--json"]);
        if out.status.success() {
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if s["role"] == "leader" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "dev never became leader: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Dev serves TLS with its own CA, which the CLI above trusted without
    // being told; a client that does not know it (another home) is refused,
    // even with the right token.
    let token = std::fs::read_to_string(home.path().join("dev-token")).unwrap();
    let other = tempfile::tempdir().unwrap();
    let plain = Command::new(BIN)
        .args(["--server", &listen, "--token", token.trim(), "node", "list"])
        .env("CHARTER_HOME", other.path())
        .env("CHARTER_RETRY_FOR", "1s")
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plaintext reached dev");
    let key = home.path().join("dev-tls").join("member-1-key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The dev agent offers this machine; a task runs on it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node_names(&json_ok(&cli(&["node", "list", "--json"]))).is_empty() {
        assert!(Instant::now() < deadline, "the dev agent never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = json_ok(&cli(&[
        "task",
        "submit",
        "--cpu",
        "0.1",
        "--json",
        "--",
        "sh",
        "-c",
        "echo from-the-dev-agent",
    ]));
    let id = t["id"].as_u64().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = json_ok(&cli(&["task", "show", &id, "--json"]));
        if t["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the task never succeeded: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = cli(&["task", "logs", &id]);
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "from-the-dev-agent\n"
    );
    // Hydra runs in dev: the example crontab's per-10-second job fires.
    let crontab = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/crontab.toml");
    let v = json_ok(&cli(&["cron", "apply", crontab, "--json"]));
    assert_eq!(v["applied"], true, "{v}");
    let t = Instant::now();
    loop {
        let h = json_ok(&cli(&["cron", "history", "heartbeat", "--json"]));
        if h["runs"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["state"] == "succeeded"))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "no heartbeat run: {h}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A wrong token is still refused: the dev token is only a default.
    let out = Command::new(BIN)
        .args([
            "--server",
            &listen,
            "--token",
            "wrong-token-123",
            "node",
            "list",
        ])
        .env("CHARTER_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        home.path().join("dev").join("raft").is_dir(),
        "data in the default directory"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("data in {}", home.path().join("dev").display())),
        "prints its data directory:\n{err}"
    );
}
