//! A cluster of real `charter server` processes on 127.0.0.1, each with its
//! own sled directory under one temporary directory. Used by the end-to-end
//! tests and by `charter bench`; both pass the `charter` binary to run.
//!
//! Free ports come from below the kernel's ephemeral range, where only a
//! `bind` can take them (see [`free_ports`]).
//!
//! Over 500 lines: the process cluster the tests and benches share.

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The admin token every harness cluster accepts (principal `root`).
pub const TOKEN: &str = "test-admin-token-0001";
/// A non-admin token (principal `ann`).
pub const USER_TOKEN: &str = "test-user-token-0002";
/// Another non-admin token (principal `bob`).
pub const OTHER_TOKEN: &str = "test-user-token-0003";
/// A standalone Hydra's token (principal `hydra`, scope hydra).
pub const HYDRA_TOKEN: &str = "test-hydra-token-0004";
/// A standalone deployer's token (principal `deployer`, scope deployer).
pub const DEPLOYER_TOKEN: &str = "test-deployer-token-0005";

/// The node credential of node `name` in a harness cluster (what
/// `charter node credential NAME` prints there).
pub fn node_credential(name: &str) -> String {
    charter_scheduler::service::auth::node_credential(TOKEN, name)
        .unwrap_or_else(|| format!("invalid-node-name-{name}"))
}

/// What can go wrong driving the harness.
pub type Result<T> = std::result::Result<T, String>;

/// `n` free loopback ports.
///
/// They come from below the kernel's ephemeral range (read from
/// `/proc/sys/net/ipv4/ip_local_port_range`): a port picked by binding port 0
/// is free only until some outgoing connection of another process takes it as
/// its source port, which happened in CI between the pick and the member's
/// own bind. Ports outside that range are only ever taken by a `bind`, each
/// one is checked free here, and a process-wide cursor never hands the same
/// one out twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    let (low, high) = unclaimed_range();
    let span = u32::from(high - low);
    // Start each process at its own place in the range, so test binaries
    // run one after another do not walk the same ports.
    let _ = CURSOR.compare_exchange(
        0,
        (std::process::id().wrapping_mul(7919) % span).max(1),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut ports = Vec::with_capacity(n);
    let mut tries = 0u32;
    while ports.len() < n {
        tries += 1;
        if tries > span {
            return Err(format!(
                "no free loopback port between {low} and {high}; stop what holds them and retry"
            ));
        }
        let port = low + (CURSOR.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Ports no outgoing connection takes: from 20000 up to the start of the
/// ephemeral range (Linux's default is 32768-60999), or above its end when
/// the range starts lower.
fn unclaimed_range() -> (u16, u16) {
    let range: Vec<u16> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map(|s| {
            s.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (low, high) = match range[..] {
        [low, high] => (low, high),
        _ => (32768, 60999),
    };
    if low > 21000 {
        (20000, low)
    } else if high < 64000 {
        (high + 1, 65000)
    } else {
        (20000, 30000)
    }
}

/// One member process.
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// gRPC address.
    pub grpc: String,
    /// HTTP address.
    pub http: String,
    /// Data directory.
    pub data: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// The process, while it runs.
    pub child: Option<Child>,
    /// Extra `charter server` flags.
    pub extra: Vec<String>,
    /// Extra environment (e.g. libfaketime's, to step its clock).
    pub env: Vec<(String, String)>,
    /// A program and arguments the member runs under (e.g. `ip netns
    /// exec NS`, from [`crate::netlab::Lab::wrap`]); empty: none.
    pub wrap: Vec<String>,
}

/// A cluster of member processes.
pub struct Cluster {
    /// The `charter` binary.
    pub bin: PathBuf,
    /// Holds every member's data and logs; removed on drop.
    pub dir: tempfile::TempDir,
    /// The members, by index (member id = index + 1).
    pub members: Vec<Member>,
    /// The token file all members use.
    pub token_file: PathBuf,
    /// The `--peers` value.
    pub peers: String,
    /// Environment every CLI call of the harness gets (e.g. `CHARTER_TLS_CA`).
    pub cli_env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts `n` members of a fresh cluster with extra server flags.
    pub fn start(bin: &Path, n: usize, extra: &[&str]) -> Result<Cluster> {
        let mut c = Cluster::prepare(bin, n, extra)?;
        for i in 0..n {
            c.spawn(i, false)?;
        }
        Ok(c)
    }

    /// `n` members, member `i` in host `i` of `lab` (`IP:7700` gRPC,
    /// `IP:7800` HTTP), started. Clients reach them from another host of
    /// the lab (`lab.command(host, bin)`).
    pub fn in_lab(
        bin: &Path,
        lab: &crate::netlab::Lab,
        n: usize,
        extra: &[&str],
    ) -> Result<Cluster> {
        let mut c = Cluster::prepare(bin, n, extra)?;
        for (i, m) in c.members.iter_mut().enumerate() {
            m.grpc = format!("{}:7700", crate::netlab::ip(i));
            m.http = format!("{}:7800", crate::netlab::ip(i));
            m.wrap = lab.wrap(i);
        }
        c.peers = c
            .members
            .iter()
            .map(|m| format!("{}={}", m.id, m.grpc))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..n {
            c.spawn(i, false)?;
        }
        Ok(c)
    }

    /// [`Cluster::start`] without starting anyone: set members' `env`,
    /// then [`Cluster::spawn`] each.
    pub fn prepare(bin: &Path, n: usize, extra: &[&str]) -> Result<Cluster> {
        let dir =
            tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let token_file = dir.path().join("tokens");
        std::fs::write(
            &token_file,
            format!(
                "{TOKEN} root admin\n{USER_TOKEN} ann\n{OTHER_TOKEN} bob\n\
                 {HYDRA_TOKEN} hydra hydra\n{DEPLOYER_TOKEN} deployer deployer\n"
            ),
        )
        .map_err(|e| format!("cannot write the token file: {e}"))?;
        let ports = free_ports(2 * n)?;
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
                env: Vec::new(),
                wrap: Vec::new(),
            });
        }
        let peers = members
            .iter()
            .map(|m| format!("{}={}", m.id, m.grpc))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            bin: bin.to_path_buf(),
            dir,
            members,
            token_file,
            peers,
            cli_env: Vec::new(),
        })
    }

    /// Starts member `i` (again), from its data directory.
    pub fn spawn(&mut self, i: usize, join: bool) -> Result<()> {
        let m = &self.members[i];
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&m.log)
                .map_err(|e| format!("cannot open {}: {e}", m.log.display()))
        };
        let mut cmd = match m.wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
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
            .envs(m.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?);
        if join {
            cmd.arg("--join");
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Adds a member started with `--join` (not yet in the cluster); returns its index.
    pub fn add_joiner(&mut self, extra: &[&str]) -> Result<usize> {
        let ports = free_ports(2)?;
        let id = self.members.len() as u64 + 1;
        let m = Member {
            id,
            grpc: format!("127.0.0.1:{}", ports[0]),
            http: format!("127.0.0.1:{}", ports[1]),
            data: self.dir.path().join(format!("m{id}")),
            log: self.dir.path().join(format!("m{id}.log")),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            wrap: Vec::new(),
        };
        self.peers.push_str(&format!(",{id}={}", m.grpc));
        self.members.push(m);
        let i = self.members.len() - 1;
        self.spawn(i, true)?;
        Ok(i)
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs member `i` and waits up to 10 s; returns its exit code.
    pub fn stop(&mut self, i: usize) -> Result<Option<i32>> {
        let Some(mut c) = self.members[i].child.take() else {
            return Ok(None);
        };
        stop_child(&mut c, Duration::from_secs(10)).map_err(|e| format!("member {}: {e}", i + 1))
    }

    /// Whether member `i` has a running process.
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

    /// Runs the CLI against `servers` with `token`, isolated from the user's home.
    pub fn cli_as(&self, servers: &str, token: &str, args: &[&str]) -> Result<Output> {
        Command::new(&self.bin)
            .args(["--server", servers, "--token", token])
            .args(args)
            .env("CHARTER_HOME", self.dir.path().join("cli-home"))
            .env_remove("CHARTER_TOKEN")
            .env_remove("CHARTER_SERVER")
            .envs(self.cli_env.iter().cloned())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))
    }

    /// `cluster status --json --stale` of member `i`, if it answers.
    pub fn status(&self, i: usize) -> Option<Value> {
        let out = self
            .cli_as(
                &self.members[i].grpc,
                TOKEN,
                &["cluster", "status", "--stale", "--json"],
            )
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until every running member names the same running leader; returns its index.
    pub fn wait_leader(&self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            let mut all = true;
            for i in (0..self.members.len()).filter(|i| self.is_running(*i)) {
                match self.status(i).and_then(|s| s["leader_id"].as_u64()) {
                    Some(l) => leaders.push(l),
                    None => all = false,
                }
            }
            if all && !leaders.is_empty() && leaders.iter().all(|l| *l == leaders[0]) {
                let idx = (leaders[0] - 1) as usize;
                if idx < self.members.len() && self.is_running(idx) {
                    return Ok(idx);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no agreed leader within {within:?}; logs:\n{}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until member `i` has applied at least `index`.
    pub fn wait_applied(&self, i: usize, index: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status(i)
                && s["applied_index"].as_u64().unwrap_or(0) >= index
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "member {} did not apply {index} within {within:?}; logs:\n{}",
                    i + 1,
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every member's log, for failure messages.
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

/// Runs git in `dir` with a throwaway identity; its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=charter",
            "-c",
            "user.email=charter@localhost",
        ])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}; install git"))?;
    if !out.status.success() {
        return Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A git repository `ROOT/hello-repo` (branch `main`, one commit) with the
/// example app (`examples/app`): its build names this machine's own
/// `rustc`, since a sandbox's environment is empty and a rustup proxy there
/// may not know which toolchain to run.
pub fn example_app_repo(root: &Path) -> Result<PathBuf> {
    let repo = root.join("hello-repo");
    std::fs::create_dir_all(&repo).map_err(|e| format!("cannot make {}: {e}", repo.display()))?;
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}; the example app is built with it"))?;
    let rustc = Path::new(String::from_utf8_lossy(&sysroot.stdout).trim()).join("bin/rustc");
    let write = |name: &str, text: &str| {
        std::fs::write(repo.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
    };
    write("hello.rs", include_str!("../examples/app/hello.rs"))?;
    write(
        "build.sh",
        &include_str!("../examples/app/build.sh")
            .replace("rustc ", &format!("{} ", rustc.display())),
    )?;
    git(&repo, &["init", "--quiet", "--initial-branch", "main"])?;
    git(&repo, &["add", "."])?;
    git(&repo, &["commit", "--quiet", "-m", "v1"])?;
    Ok(repo)
}

/// One HTTP/1.1 request on a fresh connection (`connection: close`):
/// the status and the body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Stops `c` as a person does: SIGTERM, then up to `grace` for it to exit
/// (an agent ends its leases' processes in that time), then SIGKILL.
/// Its exit code, or an error when it had to be killed.
pub fn stop_child(c: &mut Child, grace: Duration) -> Result<Option<i32>> {
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    unsafe {
        libc::kill(c.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        if let Some(st) = c.try_wait().map_err(|e| e.to_string())? {
            return Ok(st.code());
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return Err(format!("did not stop within {grace:?} of SIGTERM"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
