//! Sandboxes: where a lease's processes live, and how they all end.
//!
//! Each lease gets a working directory `DATA/leases/ID`, and each process
//! started in it:
//! - its own session and process group (`setsid`), so one signal reaches
//!   the whole group;
//! - an empty environment plus `PATH`, `HOME` (the sandbox), the task's
//!   env and `CHARTER_LEASE_ID`, `CHARTER_NODE`, `CHARTER_LEASE_EXPIRES`,
//!   `CHARTER_FENCING_TOKEN` and `CHARTER_AGENT` (the agent's data dir);
//! - limits: a cgroup v2 with `cpu.max` and `memory.max` when the agent's
//!   cgroup is writable, else rlimits (`RLIMIT_AS` from the memory, a
//!   `RLIMIT_NOFILE` cap). [`Isolation::detect`] decides once at start.
//!
//! Ending: SIGTERM to every group of the lease, a grace period, SIGKILL,
//! then a sweep of `/proc` for any process whose environment names this
//! lease and agent (a child that left the group with its own `setsid`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// How processes are limited on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// cgroup v2: a child cgroup per lease under this directory.
    Cgroup(PathBuf),
    /// No writable cgroup v2: rlimits, for the given reason.
    Rlimits(String),
}

impl Isolation {
    /// Finds out whether this agent may make cgroups.
    pub fn detect() -> Isolation {
        let root = Path::new("/sys/fs/cgroup");
        if !root.join("cgroup.controllers").exists() {
            return Isolation::Rlimits("no cgroup v2 at /sys/fs/cgroup (cgroup v1 or none)".into());
        }
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            })
            .unwrap_or_default();
        let dir = root.join(own.trim_start_matches('/')).join("charter");
        match std::fs::create_dir_all(&dir) {
            Ok(()) => {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory");
                Isolation::Cgroup(dir)
            }
            Err(e) => Isolation::Rlimits(format!("cannot create {}: {e}", dir.display())),
        }
    }
}

/// What a process of a lease gets.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The lease.
    pub lease: u64,
    /// The node.
    pub node: String,
    /// `expires_at`, ms since the epoch.
    pub expires_at: i64,
    /// The lease's fencing token.
    pub fencing_token: u64,
    /// The agent's data directory (marks the agent's processes).
    pub agent: PathBuf,
    /// The sandbox directory (working directory and HOME).
    pub dir: PathBuf,
    /// CPU limit in millicores (0: none).
    pub cpu_millis: u64,
    /// Memory limit in bytes (0: none).
    pub memory_bytes: u64,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// The GPU indices the lease holds here (`CHARTER_GPUS`, `CUDA_VISIBLE_DEVICES`).
    pub gpus: Vec<u32>,
}

/// The lease directory under the agent's data directory.
pub fn lease_dir(agent: &Path, lease: u64) -> PathBuf {
    agent.join("leases").join(lease.to_string())
}

/// The environment marker of a lease's processes.
fn marker(agent: &Path, lease: u64) -> (String, String) {
    (
        format!("CHARTER_LEASE_ID={lease}"),
        format!("CHARTER_AGENT={}", agent.display()),
    )
}

/// Starts `argv` in the lease's sandbox with stdout/stderr as given.
pub fn spawn(
    l: &Launch,
    iso: &Isolation,
    argv: &[String],
    stdout: Stdio,
    stderr: Stdio,
) -> std::io::Result<tokio::process::Child> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    std::fs::create_dir_all(&l.dir)?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .current_dir(&l.dir)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", &l.dir)
        .envs(&l.env)
        .env("CHARTER_LEASE_ID", l.lease.to_string())
        .env("CHARTER_NODE", &l.node)
        .env("CHARTER_LEASE_EXPIRES", rfc3339(l.expires_at))
        .env("CHARTER_FENCING_TOKEN", l.fencing_token.to_string())
        .env("CHARTER_AGENT", &l.agent)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if !l.gpus.is_empty() {
        let ids: Vec<String> = l.gpus.iter().map(u32::to_string).collect();
        cmd.env("CHARTER_GPUS", ids.join(","))
            .env("CUDA_VISIBLE_DEVICES", ids.join(","));
    }
    let procs = match iso {
        Isolation::Cgroup(root) => {
            let dir = root.join(format!("lease-{}", l.lease));
            std::fs::create_dir_all(&dir)?;
            if l.cpu_millis > 0 {
                // Quota per 100 ms period.
                let _ = std::fs::write(
                    dir.join("cpu.max"),
                    format!("{} 100000", l.cpu_millis * 100),
                );
            }
            if l.memory_bytes > 0 {
                let _ = std::fs::write(dir.join("memory.max"), l.memory_bytes.to_string());
            }
            CString::new(dir.join("cgroup.procs").display().to_string()).ok()
        }
        Isolation::Rlimits(_) => None,
    };
    let mem = l.memory_bytes;
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // setrlimit, open, write, close; the path was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            match &procs {
                Some(path) => {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                None => {
                    if mem > 0 {
                        // Address space, with room for runtimes that reserve more than they touch.
                        let lim = mem.saturating_mul(4).max(64 << 20);
                        let r = libc::rlimit {
                            rlim_cur: lim as libc::rlim_t,
                            rlim_max: lim as libc::rlim_t,
                        };
                        libc::setrlimit(libc::RLIMIT_AS, &r);
                    }
                    let files = libc::rlimit {
                        rlim_cur: 4096,
                        rlim_max: 4096,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &files);
                }
            }
            Ok(())
        });
    }
    cmd.kill_on_drop(false);
    cmd.spawn()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Sends `sig` to process group `pgid` (ignores "no such group").
pub fn signal_group(pgid: u32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group.
        unsafe {
            libc::kill(-(pgid as libc::pid_t), sig);
        }
    }
}

/// Pids of live processes whose environment marks them as `lease`'s of
/// the agent with data directory `agent`.
pub fn lease_pids(agent: &Path, lease: u64) -> Vec<u32> {
    let (want_lease, want_agent) = marker(agent, lease);
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let mut lease_ok = false;
                let mut agent_ok = false;
                for var in env.split(|b| *b == 0) {
                    lease_ok |= var == want_lease.as_bytes();
                    agent_ok |= var == want_agent.as_bytes();
                }
                lease_ok && agent_ok
            })
        })
        .collect()
}

/// Every lease id with a live marked process of the agent at `agent`.
pub fn leases_with_processes(agent: &Path) -> Vec<u64> {
    let want_agent = format!("CHARTER_AGENT={}", agent.display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u64> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            if !vars.contains(&want_agent.as_bytes()) {
                return None;
            }
            vars.iter().find_map(|v| {
                std::str::from_utf8(v.strip_prefix(b"CHARTER_LEASE_ID=")?)
                    .ok()?
                    .parse()
                    .ok()
            })
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// SIGKILLs every marked process of the lease (and their groups), then
/// removes its cgroup. Returns how many processes were found.
pub fn kill_all(agent: &Path, lease: u64, iso: &Isolation) -> usize {
    let mut found = 0;
    // Processes may fork while we kill; a few rounds catch the stragglers.
    for _ in 0..5 {
        let pids = lease_pids(agent, lease);
        if pids.is_empty() {
            break;
        }
        found += pids.len();
        for pid in pids {
            // SAFETY: kill(2) on pids that carry this lease's marker.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            signal_group(pid, libc::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    release_cgroup(lease, iso);
    found
}

/// Kills what is left in the lease's cgroup and removes it (cgroup v2 only).
pub fn release_cgroup(lease: u64, iso: &Isolation) {
    if let Isolation::Cgroup(root) = iso {
        let dir = root.join(format!("lease-{lease}"));
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        let _ = std::fs::remove_dir(&dir);
    }
}

/// SIGTERMs every marked process of the lease; returns how many there were.
pub fn term_all(agent: &Path, lease: u64) -> usize {
    let pids = lease_pids(agent, lease);
    for pid in &pids {
        // SAFETY: kill(2) on pids that carry this lease's marker.
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGTERM);
        }
    }
    pids.len()
}

/// What the lease's live processes use now: resident bytes and CPU ms.
pub fn usage(agent: &Path, lease: u64) -> (u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let tick = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let (mut rss, mut cpu) = (0u64, 0u64);
    for pid in lease_pids(agent, lease) {
        if let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) {
            rss += statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * page;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command (which may hold spaces): state is 3rd,
            // utime and stime the 14th and 15th.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            cpu += (t(11) + t(12)) * 1000 / tick;
        }
    }
    (rss, cpu)
}
