//! Harness for end-to-end tests: real `charter` processes on 127.0.0.1 with
//! real sled directories, driven through the CLI and gRPC.
#![allow(dead_code)]

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_charter");
pub const TOKEN: &str = "test-admin-token-0001";
pub const USER_TOKEN: &str = "test-user-token-0002";

/// `n` free loopback ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// One member process.
pub struct Member {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
}

/// A cluster of member processes in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub token_file: PathBuf,
    pub peers: String,
}

impl Cluster {
    /// Starts `n` members with extra server flags.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("tokens");
        std::fs::write(
            &token_file,
            format!("{TOKEN} root admin\n{USER_TOKEN} ann\ntest-user-token-0003 bob\n"),
        )
        .unwrap();
        let ports = free_ports(2 * n);
        let mut members = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            members.push(Member {
                id,
                grpc: format!("127.0.0.1:{}", ports[2 * i]),
                http: format!("127.0.0.1:{}", ports[2 * i + 1]),
                data: dir.path().join(format!("m{id}")),
                log: dir.path().join(format!("m{id}.log")),
                child: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            });
        }
        let peers = members
            .iter()
            .map(|m| format!("{}={}", m.id, m.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            dir,
            members,
            token_file,
            peers,
        };
        for i in 0..n {
            c.spawn(i, false);
        }
        c
    }

    /// Starts member `i` (again).
    pub fn spawn(&mut self, i: usize, join: bool) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--id", &m.id.to_string()])
            .arg("--data")
            .arg(&m.data)
            .args([
                "--listen",
                &m.grpc,
                "--http",
                &m.http,
                "--peers",
                &self.peers,
            ])
            .arg("--token-file")
            .arg(&self.token_file)
            .args(&m.extra)
            .env("RUST_LOG", "info,raft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if join {
            cmd.arg("--join");
        }
        let child = cmd.spawn().expect("start charter server");
        self.members[i].child = Some(child);
    }

    /// Adds a member that starts with `--join` (not yet in the cluster).
    pub fn add_joiner(&mut self, extra: &[&str]) -> usize {
        let ports = free_ports(2);
        let id = self.members.len() as u64 + 1;
        let m = Member {
            id,
            grpc: format!("127.0.0.1:{}", ports[0]),
            http: format!("127.0.0.1:{}", ports[1]),
            data: self.dir.path().join(format!("m{id}")),
            log: self.dir.path().join(format!("m{id}.log")),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        self.peers.push_str(&format!(",{id}={}", m.grpc));
        self.members.push(m);
        let i = self.members.len() - 1;
        self.spawn(i, true);
        i
    }

    /// SIGKILLs member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERMs member `i` and waits for it to exit; returns its exit code.
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        let mut c = self.members[i].child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                c.kill().unwrap();
                c.wait().unwrap();
                panic!("member {} did not stop within 10 s of SIGTERM", i + 1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// All member gRPC addresses, comma-separated (for `--server`).
    pub fn servers(&self) -> String {
        self.members
            .iter()
            .map(|m| m.grpc.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs the CLI against member `i` only.
    pub fn cli_on(&self, i: usize, args: &[&str]) -> Output {
        cli(&self.members[i].grpc, TOKEN, args)
    }

    /// Runs the CLI against all members (it fails over between them).
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.servers(), TOKEN, args)
    }

    /// `cluster status --json --stale` of member `i`, if it answers.
    pub fn status(&self, i: usize) -> Option<Value> {
        let out = self.cli_on(i, &["cluster", "status", "--stale", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until every running member names the same leader; returns its index.
    pub fn wait_leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            let mut all = true;
            for i in 0..self.members.len() {
                if !self.is_running(i) {
                    continue;
                }
                match self.status(i).and_then(|s| s["leader_id"].as_u64()) {
                    Some(l) => leaders.push(l),
                    None => all = false,
                }
            }
            if all && !leaders.is_empty() && leaders.iter().all(|l| *l == leaders[0]) {
                let idx = (leaders[0] - 1) as usize;
                if self.is_running(idx) {
                    return idx;
                }
            }
            if Instant::now() > deadline {
                panic!("no agreed leader within {within:?}; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until member `i` has applied at least `index`.
    pub fn wait_applied(&self, i: usize, index: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status(i)
                && s["applied_index"].as_u64().unwrap_or(0) >= index
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "member {} did not apply {index} within {within:?}; logs:\n{}",
                    i + 1,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s.push_str(&format!("--- member {} ---\n", m.id));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Runs the CLI against `servers` with `token`, isolated from the user's home.
pub fn cli(servers: &str, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--server", servers, "--token", token])
        .args(args)
        .env(
            "CHARTER_HOME",
            std::env::temp_dir().join("charter-tests-no-home"),
        )
        .env_remove("CHARTER_TOKEN")
        .env_remove("CHARTER_SERVER")
        .stdin(Stdio::null())
        .output()
        .expect("run charter")
}

/// Asserts success and parses stdout as JSON.
pub fn json_ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Node names in `node list --json` output.
pub fn node_names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
