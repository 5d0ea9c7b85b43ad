//! Who a lease's processes run as.
//!
//! An agent running as root gives each lease a user of its own, as
//! systemd's `DynamicUser` does: a uid (and the gid of the same number)
//! from a configured range, default 61000-61999, that no account in
//! `/etc/passwd` or `/etc/group` uses and no other live lease of this agent
//! holds. The lease's sandbox is made 0700 for that user, and its processes
//! drop to it with no supplementary groups and `PR_SET_NO_NEW_PRIVS` (see
//! [`crate::sandbox::spawn`]), so they can read neither the agent's files
//! nor other leases'. A principal may instead be mapped to a fixed system
//! user (`--run-as ann=ann`), as Slurm runs a job as its submitter, for
//! home directories on NFS and the like; such leases of one principal
//! share that user.
//!
//! Uids are handed out round-robin through the range, so a uid comes back
//! as late as possible; the sandbox directory's owner records which uid a
//! lease has, so a restarted agent adopts a lease with the uid it had.
//! Several agents on one machine (a pool's local agents, tests) share the
//! range: an agent holds an exclusive `flock` on `/run/charter/uids/UID`
//! for each uid it hands out, and skips a uid another agent locks or whose
//! processes still run. The kernel drops the lock when the agent dies; its
//! leases' processes then keep the uid busy until it adopts them again.
//!
//! An agent that is not root cannot change users: its leases run as the
//! agent itself and are not isolated from each other or from it (it says
//! so once, at start).
//!
//! Limitations: files a lease leaves outside its sandbox (in `/tmp`, say)
//! stay owned by its uid, which a later lease may get; `TMPDIR` points into
//! the sandbox so well-behaved programs leave nothing there. No user
//! namespace or mount namespace is made.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

/// The default range of dynamic uids.
pub const DEFAULT_RANGE: (u32, u32) = (61_000, 61_999);

/// A user and group to run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Whether the uid belongs to this lease alone (a dynamic one): then
    /// every process of the uid is the lease's.
    pub dynamic: bool,
}

/// How this agent chooses identities.
#[derive(Debug)]
pub struct Users {
    /// None: the agent is not root and runs everything as itself.
    policy: Option<Policy>,
    /// Dynamic uids held by live leases, and where the round-robin goes on.
    held: Mutex<Held>,
}

#[derive(Debug)]
struct Policy {
    range: (u32, u32),
    fixed: BTreeMap<String, Identity>,
    /// Uids and gids the system's accounts use (never handed out).
    taken: BTreeSet<u32>,
    /// Where uids are reserved machine-wide ([`LOCKS`]).
    locks: std::path::PathBuf,
}

#[derive(Debug, Default)]
struct Held {
    /// Each live lease's uid and the lock that reserves it on this machine.
    by_lease: BTreeMap<u64, (u32, Option<std::fs::File>)>,
    next: u32,
}

/// Where agents reserve uids on this machine.
pub const LOCKS: &str = "/run/charter/uids";

/// Takes the machine-wide reservation of `uid` in `dir`: an exclusive
/// `flock` on `dir/UID`, held while the returned file is open. None when
/// another agent holds it; an error when the lock file cannot be made.
fn reserve(dir: &Path, uid: u32) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(uid.to_string()))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Parses `61000-61999`.
pub fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not a range; write FIRST-LAST, like 61000-61999"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{v}` is not a uid"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if a == 0 || a > b {
        return Err(format!(
            "`{s}`: the first uid must be above 0 and at most the last"
        ));
    }
    if a < 1000 {
        return Err(format!(
            "`{s}`: uids below 1000 belong to the system; pick a range like 61000-61999"
        ));
    }
    Ok((a, b))
}

/// One line of `/etc/passwd` or `/etc/group`: name and the numeric fields.
fn db_entries(text: &str) -> impl Iterator<Item = (&str, u32, Option<u32>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let id = f.get(2)?.parse().ok()?;
        Some((*f.first()?, id, f.get(3).and_then(|g| g.parse().ok())))
    })
}

/// Resolves `USER` (a name in `/etc/passwd`, or `UID[:GID]`) to an identity.
pub fn resolve(user: &str, passwd: &str) -> Result<Identity, String> {
    if let Some((u, g)) = user.split_once(':') {
        let u = u.parse().map_err(|_| format!("`{u}` is not a uid"))?;
        let g = g.parse().map_err(|_| format!("`{g}` is not a gid"))?;
        return Ok(Identity {
            uid: u,
            gid: g,
            dynamic: false,
        });
    }
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(Identity {
            uid,
            gid: uid,
            dynamic: false,
        });
    }
    db_entries(passwd)
        .find(|(name, _, _)| *name == user)
        .map(|(_, uid, gid)| Identity {
            uid,
            gid: gid.unwrap_or(uid),
            dynamic: false,
        })
        .ok_or_else(|| format!("no user `{user}` in /etc/passwd"))
}

/// Parses `PRINCIPAL=USER` mappings.
pub fn parse_run_as(items: &[String], passwd: &str) -> Result<BTreeMap<String, Identity>, String> {
    let mut out = BTreeMap::new();
    for it in items {
        let (p, u) = it
            .split_once('=')
            .ok_or_else(|| format!("`{it}` is not PRINCIPAL=USER, like ann=ann"))?;
        let id = resolve(u.trim(), passwd).map_err(|e| format!("`{it}`: {e}"))?;
        out.insert(p.trim().to_string(), id);
    }
    Ok(out)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Users {
    /// Leases run as the agent itself.
    pub fn shared() -> Users {
        Users {
            policy: None,
            held: Mutex::default(),
        }
    }

    /// Leases get dynamic users from `range` unless their principal is in
    /// `fixed`; `passwd` and `group` are the system's account databases,
    /// `locks` where uids are reserved ([`LOCKS`]).
    pub fn isolated(
        range: (u32, u32),
        fixed: BTreeMap<String, Identity>,
        (passwd, group): (&str, &str),
        locks: &Path,
    ) -> Users {
        let taken = db_entries(passwd)
            .flat_map(|(_, u, g)| [Some(u), g])
            .chain(db_entries(group).map(|(_, g, _)| Some(g)))
            .flatten()
            .collect();
        Users {
            policy: Some(Policy {
                range,
                fixed,
                taken,
                locks: locks.to_path_buf(),
            }),
            held: Mutex::new(Held {
                by_lease: BTreeMap::new(),
                next: range.0,
            }),
        }
    }

    /// What this machine allows: isolated when root (reading the account
    /// databases), shared otherwise.
    pub fn detect(range: (u32, u32), fixed: BTreeMap<String, Identity>) -> Users {
        if !is_root() {
            return Users::shared();
        }
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Users::isolated(
            range,
            fixed,
            (&read("/etc/passwd"), &read("/etc/group")),
            Path::new(LOCKS),
        )
    }

    /// Whether leases get users of their own.
    pub fn isolating(&self) -> bool {
        self.policy.is_some()
    }

    /// The identity for `lease` of `principal`. `owner` is the uid that
    /// owns the lease's sandbox already (a restarted agent adopting it), if
    /// any. `busy` says whether any process runs as a uid (a uid with
    /// processes is skipped). None: run as the agent.
    pub fn assign(
        &self,
        lease: u64,
        principal: &str,
        owner: Option<u32>,
        busy: impl Fn(u32) -> bool,
    ) -> Result<Option<Identity>, String> {
        let Some(p) = &self.policy else {
            return Ok(None);
        };
        if let Some(id) = p.fixed.get(principal) {
            return Ok(Some(*id));
        }
        let mut held = self.held.lock().map_err(|_| "the uid table is poisoned")?;
        let dynamic = |uid| Identity {
            uid,
            gid: uid,
            dynamic: true,
        };
        if let Some((uid, _)) = held.by_lease.get(&lease) {
            return Ok(Some(dynamic(*uid)));
        }
        let in_range = |u: u32| (p.range.0..=p.range.1).contains(&u);
        let lock_failed =
            |e: std::io::Error| format!("cannot reserve a uid in {}: {e}", p.locks.display());
        if let Some(uid) = owner.filter(|u| in_range(*u))
            && !held.by_lease.values().any(|(u, _)| *u == uid)
        {
            // Adopting: the uid is this lease's already; reserve it again
            // (the lock died with the agent's earlier life).
            let lock = reserve(&p.locks, uid).map_err(lock_failed)?;
            held.by_lease.insert(lease, (uid, lock));
            return Ok(Some(dynamic(uid)));
        }
        let used: BTreeSet<u32> = held.by_lease.values().map(|(u, _)| *u).collect();
        let size = u64::from(p.range.1 - p.range.0) + 1;
        let start = if in_range(held.next) {
            held.next
        } else {
            p.range.0
        };
        for i in 0..size {
            let uid = p.range.0 + ((u64::from(start - p.range.0) + i) % size) as u32;
            if used.contains(&uid) || p.taken.contains(&uid) {
                continue;
            }
            // Locked first, then checked for processes: another agent that
            // takes the lock later sees this lease's processes or our lock.
            let Some(lock) = reserve(&p.locks, uid).map_err(lock_failed)? else {
                continue;
            };
            if busy(uid) {
                continue;
            }
            held.by_lease.insert(lease, (uid, Some(lock)));
            held.next = uid.checked_add(1).unwrap_or(p.range.0);
            return Ok(Some(dynamic(uid)));
        }
        Err(format!(
            "no free uid in {}-{}: every one is held by a live lease, an account, another agent or a process",
            p.range.0, p.range.1
        ))
    }

    /// Whether `uid` is one this agent hands out as a lease's own.
    pub fn dynamic_uid(&self, uid: u32) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|p| (p.range.0..=p.range.1).contains(&uid) && !p.taken.contains(&uid))
    }

    /// Gives `lease`'s dynamic uid back.
    pub fn release(&self, lease: u64) {
        if let Ok(mut h) = self.held.lock() {
            h.by_lease.remove(&lease);
        }
    }
}

/// The uid owning `path`, if it exists.
pub fn owner(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.uid())
}

/// Whether any process runs with real uid `uid` (from `/proc`).
pub fn uid_busy(uid: u32) -> bool {
    !crate::sandbox::uid_pids(uid).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nann:x:1000:1000::/home/ann:/bin/sh\nodd:x:61001:61001::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\nann:x:1000:\nclash:x:61003:\n";

    #[test]
    fn dynamic_uids_skip_accounts_and_busy_uids_and_come_back_last() {
        let locks = tempfile::tempdir().unwrap();
        let u = Users::isolated(
            (61_000, 61_004),
            BTreeMap::new(),
            (PASSWD, GROUP),
            locks.path(),
        );
        let uid = |lease, busy: &dyn Fn(u32) -> bool| {
            u.assign(lease, "p", None, busy).unwrap().unwrap().uid
        };
        let idle = |_| false;
        assert_eq!(uid(1, &idle), 61_000);
        // 61001 is an account, 61003 a group.
        assert_eq!(uid(2, &idle), 61_002);
        assert_eq!(uid(2, &idle), 61_002, "the same lease keeps its uid");
        let busy = |u| u == 61_004;
        let err = u.assign(3, "p", None, busy).unwrap_err();
        assert!(err.contains("no free uid in 61000-61004"), "{err}");
        u.release(1);
        // Round-robin: the freed 61000 comes back only after 61004.
        assert_eq!(uid(4, &idle), 61_004);
        assert_eq!(uid(5, &idle), 61_000);
        assert!(u.assign(6, "p", None, idle).is_err());
    }

    #[test]
    fn fixed_users_and_adopted_owners() {
        let fixed = parse_run_as(&["ann=ann".into(), "bob=2000:3000".into()], PASSWD).unwrap();
        let locks = tempfile::tempdir().unwrap();
        let u = Users::isolated((61_000, 61_999), fixed, (PASSWD, GROUP), locks.path());
        let ann = u.assign(1, "ann", None, |_| false).unwrap().unwrap();
        assert_eq!((ann.uid, ann.gid, ann.dynamic), (1000, 1000, false));
        let bob = u.assign(2, "bob", None, |_| false).unwrap().unwrap();
        assert_eq!((bob.uid, bob.gid), (2000, 3000));
        // A sandbox already owned by a range uid keeps it; one owned by
        // root (an older agent) gets a fresh one.
        assert_eq!(
            u.assign(3, "c", Some(61_500), |_| false)
                .unwrap()
                .unwrap()
                .uid,
            61_500
        );
        assert_eq!(
            u.assign(4, "c", Some(0), |_| false).unwrap().unwrap().uid,
            61_000
        );
        assert!(
            parse_run_as(&["ann".into()], PASSWD)
                .unwrap_err()
                .contains("PRINCIPAL=USER")
        );
        assert!(
            parse_run_as(&["a=nobody2".into()], PASSWD)
                .unwrap_err()
                .contains("no user `nobody2`")
        );
        assert!(
            Users::shared()
                .assign(1, "ann", None, |_| false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn two_agents_on_one_machine_never_hand_out_the_same_uid() {
        let locks = tempfile::tempdir().unwrap();
        let one = Users::isolated((61_000, 61_002), BTreeMap::new(), ("", ""), locks.path());
        let two = Users::isolated((61_000, 61_002), BTreeMap::new(), ("", ""), locks.path());
        let uid = |u: &Users, lease| u.assign(lease, "p", None, |_| false).unwrap().unwrap().uid;
        assert_eq!(uid(&one, 1), 61_000);
        assert_eq!(uid(&two, 1), 61_001, "61000 is the other agent's");
        assert_eq!(uid(&one, 2), 61_002);
        assert!(two.assign(2, "p", None, |_| false).is_err(), "none left");
        one.release(1);
        assert_eq!(uid(&two, 2), 61_000, "released by the first agent");
        drop(one);
        assert_eq!(uid(&two, 3), 61_002, "an agent gone frees its uids");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("61000-61999"), Ok((61_000, 61_999)));
        assert!(parse_range("61000").is_err());
        assert!(parse_range("5-10").unwrap_err().contains("below 1000"));
        assert!(parse_range("62000-61000").is_err());
    }
}
