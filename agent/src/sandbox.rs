//! Sandboxes: where a lease's processes live, who they run as, and how
//! they all end.
//!
//! Each lease gets a working directory `ROOT/ID` (see [`root`]), made 0700
//! for the lease's user, and each process started in it:
//! - runs as the lease's [`Identity`] when the agent is root: `setgroups`
//!   to none, `setgid`, `setuid`, then `PR_SET_NO_NEW_PRIVS`, after the
//!   steps below that need root;
//! - its own session and process group (`setsid`), so one signal reaches
//!   the whole group;
//! - an empty environment plus `PATH`, `HOME` (the sandbox), `TMPDIR`
//!   (`tmp` in the sandbox), the task's env and `CHARTER_LEASE_ID`,
//!   `CHARTER_NODE`, `CHARTER_LEASE_EXPIRES`, `CHARTER_FENCING_TOKEN` and
//!   `CHARTER_AGENT` (the agent's data dir);
//! - limits: a cgroup v2 with `cpu.max` and `memory.max` when the agent's
//!   cgroup is writable, else rlimits (`RLIMIT_AS` from the memory, a
//!   `RLIMIT_NOFILE` cap). [`Isolation::detect`] decides once at start.
//!
//! Ending: SIGTERM to every process of the lease, a grace period, SIGKILL.
//! "Of the lease" ([`Scope`]) is every process whose environment names this
//! lease and agent (a child that left the group with its own `setsid` is
//! found too) and, for a lease with a uid of its own, every process of that
//! uid (one that scrubbed its environment too).

use crate::users::Identity;
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

/// What belongs to one lease, for finding its processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The agent's data directory (marks the agent's processes).
    pub agent: PathBuf,
    /// The lease.
    pub lease: u64,
    /// The lease's own uid, when it has one no other lease shares.
    pub uid: Option<u32>,
}

/// What a process of a lease gets.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Whose processes these are.
    pub scope: Scope,
    /// The node.
    pub node: String,
    /// `expires_at`, ms since the epoch.
    pub expires_at: i64,
    /// The lease's fencing token.
    pub fencing_token: u64,
    /// The sandbox directory (working directory and HOME).
    pub dir: PathBuf,
    /// Who the processes run as (None: as the agent).
    pub user: Option<Identity>,
    /// CPU limit in millicores (0: none).
    pub cpu_millis: u64,
    /// Memory limit in bytes (0: none).
    pub memory_bytes: u64,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// The GPU indices the lease holds here (`CHARTER_GPUS`, `CUDA_VISIBLE_DEVICES`).
    pub gpus: Vec<u32>,
}

/// Where the sandboxes of the agent with data directory `data` live.
///
/// `DATA/leases` when a lease's user can reach it: the agent makes `DATA`
/// and `DATA/leases` 0711 (enter, not list), but every directory above
/// `DATA` must let others enter too. When one does not (`DATA` under a 0700
/// home, say), an isolating agent uses `/var/lib/charter/sandboxes/HASH`
/// instead (HASH from `DATA`'s path) and says so. `wanted` (the
/// `--sandboxes` flag) overrides both.
pub fn root(data: &Path, isolating: bool, wanted: Option<&Path>) -> PathBuf {
    if let Some(w) = wanted {
        return w.to_path_buf();
    }
    let own = data.join("leases");
    if !isolating {
        return own;
    }
    let abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    if enterable_above(&abs) {
        return own;
    }
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(abs.display().to_string().as_bytes()));
    Path::new("/var/lib/charter/sandboxes").join(&h[..16])
}

/// Whether every directory above `dir` lets others enter (o+x).
fn enterable_above(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Makes the sandbox root: it and the directories between it and `data`
/// that the agent made are 0711 when isolating (enter, not list), else 0700.
pub fn make_root(root: &Path, isolating: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root)?;
    let mode = if isolating { 0o711 } else { 0o700 };
    let mut dirs = vec![root.to_path_buf()];
    // The fallback's parents (/var/lib/charter/sandboxes) must be enterable too.
    if root.starts_with("/var/lib/charter/sandboxes") {
        dirs.extend(["/var/lib/charter", "/var/lib/charter/sandboxes"].map(PathBuf::from));
    } else if let Some(p) = root.parent() {
        dirs.push(p.to_path_buf());
    }
    for d in dirs {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The lease's directory under the sandbox root.
pub fn lease_dir(root: &Path, lease: u64) -> PathBuf {
    root.join(lease.to_string())
}

/// Makes the lease's sandbox: 0700, owned by its user, with a `tmp` for
/// `TMPDIR`. An existing one (an adopted lease) is left as it is.
pub fn prepare(dir: &Path, user: Option<Identity>) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let tmp = dir.join("tmp");
    std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
    for d in [dir, tmp.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        if let Some(u) = user {
            std::os::unix::fs::lchown(d, Some(u.uid), Some(u.gid))?;
        }
    }
    Ok(())
}

/// Opens a file in a sandbox for the agent to read, as safely as the
/// sandbox's user could: never through a link in its last component, only
/// a regular file, and (for a lease with a user of its own) only one that
/// user owns. A link or hard link to a file of the agent's is refused.
pub fn open_own(path: &Path, user: Option<Identity>) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if let Some(u) = user
        && m.uid() != u.uid
    {
        return Err(std::io::Error::other(format!(
            "{} is not owned by the lease's user (uid {})",
            path.display(),
            u.uid
        )));
    }
    Ok(f)
}

/// Hands a file the agent put in a sandbox to the lease's user.
pub fn give(path: &Path, user: Option<Identity>) -> std::io::Result<()> {
    match user {
        Some(u) => std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid)),
        None => Ok(()),
    }
}

/// The environment marker of a lease's processes.
fn marker(s: &Scope) -> (String, String) {
    (
        format!("CHARTER_LEASE_ID={}", s.lease),
        format!("CHARTER_AGENT={}", s.agent.display()),
    )
}

/// Starts `argv` in the lease's sandbox with stdout/stderr as given.
///
/// Over 80 lines: the child's setup, in the order the kernel needs it (session, user, limits, environment).
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
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .current_dir(&l.dir)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", &l.dir)
        .env("TMPDIR", l.dir.join("tmp"))
        .envs(&l.env)
        .env("CHARTER_LEASE_ID", l.scope.lease.to_string())
        .env("CHARTER_NODE", &l.node)
        .env("CHARTER_LEASE_EXPIRES", rfc3339(l.expires_at))
        .env("CHARTER_FENCING_TOKEN", l.fencing_token.to_string())
        .env("CHARTER_AGENT", &l.scope.agent)
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
            let dir = root.join(format!("lease-{}", l.scope.lease));
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
    let user = l.user;
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // setrlimit, open, write, close, setgroups, setgid, setuid, prctl; the
    // path was allocated before the fork. Dropping to the lease's user comes
    // last, after the steps that need root (joining the cgroup), and any
    // failure to drop stops the exec: nothing runs as root by mistake.
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
            if let Some(u) = user
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(u.gid) != 0
                    || libc::setuid(u.uid) != 0
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
            {
                return Err(std::io::Error::last_os_error());
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

/// Pids of live processes of the lease: marked by its environment, or
/// running as its own uid.
pub fn lease_pids(s: &Scope) -> Vec<u32> {
    let (want_lease, want_agent) = marker(s);
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            s.uid.is_some_and(|u| pid_uid(*pid) == Some(u))
                || std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
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

/// The real uid of a process.
fn pid_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Pids of live processes whose real uid is `uid`.
pub fn uid_pids(uid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| pid_uid(*pid) == Some(uid))
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

/// SIGKILLs every process of the lease (and their groups), then removes
/// its cgroup. Returns how many processes were found.
pub fn kill_all(s: &Scope, iso: &Isolation) -> usize {
    let mut found = 0;
    // Processes may fork while we kill; a few rounds catch the stragglers.
    for _ in 0..5 {
        let pids = lease_pids(s);
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
    release_cgroup(s.lease, iso);
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

/// SIGTERMs every process of the lease; returns how many there were.
pub fn term_all(s: &Scope) -> usize {
    let pids = lease_pids(s);
    for pid in &pids {
        // SAFETY: kill(2) on pids that carry this lease's marker.
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGTERM);
        }
    }
    pids.len()
}

/// What the lease's live processes use now: resident bytes and CPU ms.
pub fn usage(s: &Scope) -> (u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let tick = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let (mut rss, mut cpu) = (0u64, 0u64);
    for pid in lease_pids(s) {
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
