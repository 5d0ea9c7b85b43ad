//! Thin test wrappers over `charter::harness`: panics instead of errors.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use charter::harness::{
    DEPLOYER_TOKEN, HYDRA_TOKEN, OTHER_TOKEN, TOKEN, USER_TOKEN, node_credential,
};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// The CLI against `servers` with `token`, isolated from the user's home,
/// not yet run (to set more environment, pipe it, or spawn it).
pub fn cli_command(servers: &str, token: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--server", servers, "--token", token])
        .args(args)
        .env(
            "CHARTER_HOME",
            std::env::temp_dir().join("charter-tests-no-home"),
        )
        .env_remove("CHARTER_TOKEN")
        .env_remove("CHARTER_SERVER")
        .stdin(Stdio::null());
    c
}

/// Runs the CLI against `servers` with `token`, isolated from the user's home.
pub fn cli(servers: &str, token: &str, args: &[&str]) -> Output {
    cli_command(servers, token, args)
        .output()
        .expect("run charter")
}

/// The idempotency key an `Unavailable` error printed.
pub fn printed_key(err: &str) -> String {
    err.split("idempotency key is ")
        .nth(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| panic!("no idempotency key in: {err}"))
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

/// Asserts the command failed and said `want` on stderr.
pub fn refused(out: &Output, want: &str) {
    assert!(!out.status.success(), "accepted: {}", stderr(out));
    let err = stderr(out);
    assert!(err.contains(want), "wanted {want:?} in: {err}");
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

/// A `charter agent` process offering 4 cores, stopped (SIGTERM) on drop.
pub struct Agent {
    pub child: Child,
    pub name: String,
    pub data: std::path::PathBuf,
    pub servers: String,
    /// Its flags, kept for a restart.
    pub flags: Vec<String>,
}

impl Agent {
    pub fn start(servers: &str, name: &str, data: &Path) -> Agent {
        Agent::start_with(servers, name, data, &["--ttl", "3s"])
    }

    /// [`Agent::start`] with other flags (`--ttl`, `--label`, …).
    pub fn start_with(servers: &str, name: &str, data: &Path, flags: &[&str]) -> Agent {
        if let Some(parent) = data.parent() {
            open_like_tmp(parent);
        }
        let log = std::fs::File::create(data.with_extension("log")).unwrap();
        // An agent holds its node's credential, never the admin token.
        let token = node_credential(name);
        let child = Command::new(BIN)
            .args([
                "--server", servers, "--token", &token, "agent", "--name", name,
            ])
            .args(["--cpu", "4", "--mem", "4GiB", "--disk", "10GiB"])
            .args(flags)
            .arg("--data")
            .arg(data)
            .env("CHARTER_HOME", data.join("home"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            child,
            name: name.into(),
            data: data.to_path_buf(),
            servers: servers.into(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill9();
        let flags = std::mem::take(&mut self.flags);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        *self = Agent::start_with(
            &self.servers.clone(),
            &self.name.clone(),
            &self.data.clone(),
            &flags,
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A stopped agent ends its leases' processes.
        let _ = charter::harness::stop_child(&mut self.child, Duration::from_secs(15));
    }
}

/// Opens a test's directory like `/tmp` (1777). Tests run as root, so an
/// agent gives each lease a user of its own: the lease's processes can
/// then write the files the test reads (`ran.txt`, pid files) and reach
/// their sandbox under the agent's data directory below this one, while
/// the agent's own files stay its own (0700/0600).
pub fn open_like_tmp(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// An empty file every lease may append to (each lease is a user of its
/// own, so a file one lease made would be closed to the next).
pub fn shared_file(path: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    path.to_path_buf()
}

/// Polls `f` every 50 ms until it gives a value; panics after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts an agent named `name` under `dir` and waits until it registered.
pub fn agent(c: &Cluster, dir: &Path, name: &str) -> Agent {
    agent_with(c, dir, name, &["--ttl", "3s"])
}

/// [`agent`] with other flags.
pub fn agent_with(c: &Cluster, dir: &Path, name: &str, flags: &[&str]) -> Agent {
    let a = Agent::start_with(&c.servers(), name, &dir.join(name), flags);
    wait_for("the agent to register", Duration::from_secs(20), || {
        node_names(&json_ok(&c.cli(&["node", "list", "--json"])))
            .contains(&name.to_string())
            .then_some(())
    });
    a
}

/// One sample's value in Prometheus text.
pub fn value(metrics: &str, line: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{line} ")))
        .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}
