//! Thin test wrappers over `charter::harness`: panics instead of errors.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use charter::harness::{OTHER_TOKEN, TOKEN, USER_TOKEN};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_charter");

pub struct Cluster(pub charter::harness::Cluster);

impl std::ops::Deref for Cluster {
    type Target = charter::harness::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Cluster {
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster(charter::harness::Cluster::start(BIN.as_ref(), n, extra).unwrap())
    }
    pub fn spawn(&mut self, i: usize, join: bool) {
        self.0.spawn(i, join).unwrap()
    }
    pub fn add_joiner(&mut self, extra: &[&str]) -> usize {
        self.0.add_joiner(extra).unwrap()
    }
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        self.0.stop(i).unwrap()
    }
    pub fn wait_leader(&self, within: Duration) -> usize {
        self.0.wait_leader(within).unwrap_or_else(|e| panic!("{e}"))
    }
    pub fn wait_applied(&self, i: usize, index: u64, within: Duration) {
        self.0
            .wait_applied(i, index, within)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    /// The CLI against member `i` only, as the admin.
    pub fn cli_on(&self, i: usize, args: &[&str]) -> Output {
        self.0.cli_as(&self.members[i].grpc, TOKEN, args).unwrap()
    }
    /// The CLI against all members (it fails over between them), as the admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.0.cli_as(&self.servers(), TOKEN, args).unwrap()
    }
}

pub fn free_ports(n: usize) -> Vec<u16> {
    charter::harness::free_ports(n).unwrap()
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

/// Node names in `node list --json` output, sorted.
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
