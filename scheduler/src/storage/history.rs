//! The history store: what left the live state, kept per member on disk.
//!
//! Every member writes what its own `apply` trims ([`Trimmed`]): ended
//! leases and tasks, cron runs beyond a job's keep, ended deployments beyond
//! an app's keep. Reads (`lease show`, `task show`, `lease list --all`,
//! `cron history`, `deploy history`) look at live state first and here
//! second. The store is bounded by age ([`History::prune`]: older than
//! `keep`) and size (the oldest go first once the stored bytes pass `max`).
//!
//! Layout (sled trees, big-endian keys so order is numeric):
//! - `lease`, `task`: id → record;
//! - `run`: job, 0, scheduled_at → record;
//! - `deploy`: app, 0, id → record;
//! - `lock`: lock name, 0, acquisition id → ended acquisition;
//! - `age`: trimmed-at, tree name, 0, key → value size (for pruning);
//! - `meta`: `bytes` → the values' total size.
//!
//! Records are MessagePack by field name (`rmp-serde`), like the log.
//!
//! Audit records are not in sled: they go to an append-only
//! [`AuditLog`] in the `audit-log` directory inside the store's, bounded
//! by its own bytes ([`AUDIT_BYTES`]) and by the same age.
//!
//! Writes are not fsynced on their own: the driver calls [`History::flush`]
//! before it compacts the raft log, and a member that crashes applies again
//! (and so trims and writes again) everything after its last snapshot.
//!
//! Limitations: a member that joined (or installed a snapshot) holds only
//! what it trimmed itself since; the history is not replicated.

use super::audit_log::AuditLog;
use crate::state::audit::AuditRecord;
use crate::state::{CronRun, Lease, Millis, Task, Trimmed};
use charter_config::deployment::Deployment;
use serde::de::DeserializeOwned;
use std::path::Path;

/// A member's history store.
#[derive(Debug)]
pub struct History {
    db: sled::Db,
    lease: sled::Tree,
    task: sled::Tree,
    run: sled::Tree,
    deploy: sled::Tree,
    lock: sled::Tree,
    audit: AuditLog,
    age: sled::Tree,
    meta: sled::Tree,
}

type Result<T> = std::result::Result<T, String>;

/// Audit records are kept for at most this many of the newest log entries
/// (and no longer than the history's age limit).
pub const AUDIT_BYTES: u64 = super::audit_log::MAX_BYTES;

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("history store: {what}: {e}")
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// `a`, 0, `b`: a key whose first part is text.
fn pair(a: &str, b: &[u8]) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(b);
    k
}

impl History {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<History> {
        let db =
            super::sled_store::open_db(|| sled::Config::new().path(dir).cache_capacity(2 << 20))
                .map_err(|e| err(&format!("cannot open {}", dir.display()), e))?;
        let tree = |n: &str| db.open_tree(n).map_err(|e| err("cannot open a tree", e));
        // Audit records were a tree here before they had a log of their own.
        db.drop_tree("audit")
            .map_err(|e| err("cannot drop the old audit tree", e))?;
        Ok(History {
            lease: tree("lease")?,
            task: tree("task")?,
            run: tree("run")?,
            deploy: tree("deploy")?,
            lock: tree("lock")?,
            audit: AuditLog::open(
                &dir.join("audit-log"),
                AUDIT_BYTES,
                super::audit_log::SEGMENT_BYTES,
            )?,
            age: tree("age")?,
            meta: tree("meta")?,
            db,
        })
    }

    /// Keeps what left the live state at state time `at`.
    pub fn put(&self, at: Millis, items: &[Trimmed]) -> Result<()> {
        let mut added = 0u64;
        for t in items {
            let (tree, name, key, value) = match t {
                Trimmed::Lease(l) => (&self.lease, "lease", be(l.id).to_vec(), json(l)),
                Trimmed::Task(x) => (&self.task, "task", be(x.id).to_vec(), json(x)),
                Trimmed::CronRun(r) => (
                    &self.run,
                    "run",
                    pair(&r.job, &be(r.scheduled_at as u64)),
                    json(r),
                ),
                Trimmed::Deployment(d) => {
                    (&self.deploy, "deploy", pair(&d.app, &be(d.id)), json(d))
                }
                Trimmed::Hold(h) => (&self.lock, "lock", pair(&h.lock, &be(h.id)), json(h)),
            };
            let size = value.len() as u64;
            if tree
                .insert(&key, value)
                .map_err(|e| err("cannot write", e))?
                .is_none()
            {
                let mut age = be(at.max(0) as u64).to_vec();
                age.extend(pair(name, &key));
                self.age
                    .insert(age, &be(size))
                    .map_err(|e| err("cannot write", e))?;
                added += size;
            }
        }
        if added > 0 {
            self.add_bytes(added as i64)?;
        }
        Ok(())
    }

    /// Keeps the audit records of log entry `index` (one buffered append
    /// per entry; a replayed entry is written once).
    pub fn put_audit(&self, index: u64, records: &[AuditRecord]) -> Result<()> {
        let at = records.first().map_or(0, |r| r.at);
        self.audit.put(index, at, records)
    }

    /// The newest `n` audit records at or after `since` that `keep`
    /// accepts, oldest first.
    pub fn audit(
        &self,
        since: Millis,
        n: usize,
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> Vec<AuditRecord> {
        self.audit.read(since, n, keep)
    }

    fn add_bytes(&self, n: i64) -> Result<u64> {
        let next = self
            .meta
            .update_and_fetch("bytes", |old| {
                let cur = old.map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
                Some(be((cur as i64).saturating_add(n).max(0) as u64).to_vec())
            })
            .map_err(|e| err("cannot write", e))?;
        Ok(next.map_or(0, |b| {
            u64::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 8]))
        }))
    }

    /// The stored values' total size in bytes.
    pub fn bytes(&self) -> u64 {
        self.meta
            .get("bytes")
            .ok()
            .flatten()
            .and_then(|b| b.as_ref().try_into().ok())
            .map_or(0, u64::from_be_bytes)
    }

    /// Drops what was trimmed before `now - keep_ms`, then the oldest until
    /// at most `max_bytes` are kept, and audit records beyond their bound.
    /// Returns how many were dropped.
    pub fn prune(&self, now: Millis, keep_ms: u64, max_bytes: u64) -> Result<usize> {
        let cut = now.saturating_sub(i64::try_from(keep_ms).unwrap_or(i64::MAX));
        let mut bytes = self.bytes();
        let mut dropped = 0;
        for item in self.age.iter() {
            let (k, v) = item.map_err(|e| err("cannot read", e))?;
            let at = u64::from_be_bytes(k[..8].try_into().unwrap_or([0; 8])) as i64;
            if at >= cut && bytes <= max_bytes {
                break;
            }
            let rest = &k[8..];
            let Some(sep) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            let tree = match &rest[..sep] {
                b"lease" => &self.lease,
                b"task" => &self.task,
                b"run" => &self.run,
                b"deploy" => &self.deploy,
                b"lock" => &self.lock,
                _ => continue,
            };
            tree.remove(&rest[sep + 1..])
                .map_err(|e| err("cannot prune", e))?;
            self.age.remove(&k).map_err(|e| err("cannot prune", e))?;
            let size = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            bytes = self.add_bytes(-(size as i64))?;
            dropped += 1;
        }
        Ok(dropped + self.audit.prune(cut)?)
    }

    /// Writes everything so far to disk.
    pub fn flush(&self) -> Result<()> {
        self.audit.flush()?;
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| err("cannot flush", e))
    }

    /// An ended lease, if kept.
    pub fn lease(&self, id: u64) -> Option<Lease> {
        get(&self.lease, &be(id))
    }

    /// An ended task, if kept.
    pub fn task(&self, id: u64) -> Option<Task> {
        get(&self.task, &be(id))
    }

    /// Kept leases, newest first, that `keep` accepts; at most `n`.
    pub fn leases(&self, n: usize, keep: impl Fn(&Lease) -> bool) -> Vec<Lease> {
        newest(&self.lease, n, keep)
    }

    /// Kept tasks, newest first, that `keep` accepts; at most `n`.
    pub fn tasks(&self, n: usize, keep: impl Fn(&Task) -> bool) -> Vec<Task> {
        newest(&self.task, n, keep)
    }

    /// A job's kept runs, newest first; at most `n`.
    pub fn runs(&self, job: &str, n: usize) -> Vec<CronRun> {
        self.run
            .scan_prefix(pair(job, &[]))
            .rev()
            .filter_map(|r| read(&r.ok()?.1))
            .take(n)
            .collect()
    }

    /// A lock's kept (ended) acquisitions, newest first; at most `n`.
    pub fn holds(&self, lock: &str, n: usize) -> Vec<crate::state::LockHold> {
        self.lock
            .scan_prefix(pair(lock, &[]))
            .rev()
            .filter_map(|r| read(&r.ok()?.1))
            .take(n)
            .collect()
    }

    /// An app's kept deployments, newest first; at most `n`.
    pub fn deployments(&self, app: &str, n: usize) -> Vec<Deployment> {
        self.deploy
            .scan_prefix(pair(app, &[]))
            .rev()
            .filter_map(|r| read(&r.ok()?.1))
            .take(n)
            .collect()
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Plain data: encoding cannot fail.
    rmp_serde::to_vec_named(v).unwrap_or_default()
}

fn read<T: DeserializeOwned>(b: &[u8]) -> Option<T> {
    rmp_serde::from_slice(b).ok()
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Option<T> {
    read(&tree.get(key).ok()??)
}

fn newest<T: DeserializeOwned>(tree: &sled::Tree, n: usize, keep: impl Fn(&T) -> bool) -> Vec<T> {
    tree.iter()
        .rev()
        .filter_map(|r| read(&r.ok()?.1))
        .filter(|v| keep(v))
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{LeaseState, TaskState};

    fn lease(id: u64) -> Trimmed {
        Trimmed::Lease(Lease {
            id,
            principal: if id.is_multiple_of(2) { "ann" } else { "bob" }.into(),
            state: LeaseState::Released,
            ended_at: Some(id as i64),
            ..Lease::default()
        })
    }

    #[test]
    fn audit_records_read_newest_last_and_leave_by_entries_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let rec = |index: u64, seq: u32, at: Millis, who: &str| AuditRecord {
            index,
            seq,
            at,
            principal: who.into(),
            command: "lease request".into(),
            target: format!("lease {index}"),
            outcome: "ok".into(),
        };
        h.put_audit(5, &[rec(5, 0, 100, "ann"), rec(5, 1, 100, "bob")])
            .unwrap();
        h.put_audit(7, &[rec(7, 0, 200, "ann")]).unwrap();
        let all = h.audit(0, 10, |_| true);
        let keys: Vec<(u64, u32)> = all.iter().map(|r| (r.index, r.seq)).collect();
        assert_eq!(keys, [(5, 0), (5, 1), (7, 0)], "oldest first");
        let anns = h.audit(0, 1, |r| r.principal == "ann");
        assert_eq!(anns.len(), 1);
        assert_eq!(anns[0].index, 7, "the newest n");
        assert_eq!(h.audit(150, 10, |_| true).len(), 1, "since");
        // Entries replayed after a crash are written once.
        h.put_audit(7, &[rec(7, 0, 200, "ann")]).unwrap();
        assert_eq!(h.audit(0, 10, |_| true).len(), 3);
        drop(h);
        let h = History::open(dir.path()).unwrap();
        h.put_audit(7, &[rec(7, 0, 200, "ann")]).unwrap();
        assert_eq!(h.audit(0, 10, |_| true).len(), 3, "after a reopen too");
    }

    #[test]
    fn the_audit_log_keeps_whole_segments_within_its_bytes_and_age() {
        use super::super::audit_log::AuditLog;
        let dir = tempfile::tempdir().unwrap();
        let rec = |index: u64, at: Millis| AuditRecord {
            index,
            seq: 0,
            at,
            principal: "ann".into(),
            command: "lease request".into(),
            target: format!("lease {index}"),
            outcome: "ok".into(),
        };
        let log = AuditLog::open(dir.path(), 2_000, 500).unwrap();
        for i in 1..=200u64 {
            log.put(i, i as Millis * 10, &[rec(i, i as Millis * 10)])
                .unwrap();
        }
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        log.flush().unwrap();
        assert!(log.bytes() <= 2_000 + 500, "{} bytes kept", log.bytes());
        assert!(on_disk <= 2_000 + 500, "{on_disk} bytes on disk");
        let kept = log.read(0, 1_000, |_| true);
        assert_eq!(kept.last().unwrap().index, 200, "the newest stay");
        let first = kept[0].index;
        assert!(first > 1, "the oldest went");
        let idx: Vec<u64> = kept.iter().map(|r| r.index).collect();
        assert_eq!(idx, (first..=200).collect::<Vec<_>>(), "in order, no gaps");
        // A torn last line (a crash mid-write) is skipped; the log goes on.
        drop(log);
        let newest = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"index\":201,\"rec").unwrap();
        let log = AuditLog::open(dir.path(), 2_000, 500).unwrap();
        assert_eq!(log.read(0, 1, |_| true)[0].index, 200);
        log.put(201, 2_010, &[rec(201, 2_010)]).unwrap();
        assert_eq!(
            log.read(0, 1, |_| true)[0].index,
            201,
            "a clean line after the torn one"
        );
        // By age: a segment goes once the next one began before the cut.
        log.put(300, 100_000, &[rec(300, 100_000)]).unwrap();
        log.prune(100_001).unwrap();
        let left: Vec<u64> = log
            .read(0, 1_000, |_| true)
            .iter()
            .map(|r| r.index)
            .collect();
        assert_eq!(left.last(), Some(&300));
        assert!(left.iter().all(|i| *i >= 150), "{left:?}");
    }

    #[test]
    fn keeps_what_was_trimmed_and_prunes_by_age_then_size() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        h.put(1_000, &(1..=10).map(lease).collect::<Vec<_>>())
            .unwrap();
        let task = Task {
            id: 3,
            state: TaskState::Succeeded,
            ..Task::default()
        };
        h.put(2_000, &[Trimmed::Task(task.clone())]).unwrap();
        assert_eq!(h.lease(4).unwrap().principal, "ann");
        assert_eq!(h.task(3), Some(task));
        assert!(h.lease(11).is_none());
        let anns: Vec<u64> = h
            .leases(3, |l| l.principal == "ann")
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(anns, [10, 8, 6], "newest first, filtered, limited");
        let all = h.bytes();
        assert!(all > 0);
        // Writing the same again adds nothing.
        h.put(1_000, &[lease(1)]).unwrap();
        assert_eq!(h.bytes(), all);
        // By age: the leases (trimmed at 1,000) go, the task (2,000) stays.
        assert_eq!(h.prune(2_500, 1_000, u64::MAX).unwrap(), 10);
        assert!(h.lease(4).is_none() && h.task(3).is_some());
        // By size: the oldest go until the rest fits.
        h.put(3_000, &(20..30).map(lease).collect::<Vec<_>>())
            .unwrap();
        let before = h.bytes();
        h.prune(3_000, u64::MAX, before / 2).unwrap();
        assert!(h.bytes() <= before / 2, "{} > {}", h.bytes(), before / 2);
        assert!(h.task(3).is_none(), "the oldest went first");
        assert!(h.lease(29).is_some(), "the newest stay");
        drop(h);
        let h = History::open(dir.path()).unwrap();
        assert!(h.lease(29).is_some(), "kept across a reopen");
    }
}
