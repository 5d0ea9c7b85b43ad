//! [`LogStore`] on sled. Layout: tree `raft_log` maps the big-endian index to
//! `term (8 bytes BE) ++ encoded Entry`, so `term()` needs no decode; tree
//! `raft_meta` holds `hard_state`, `conf_state` and `snapshot` (encoded
//! protobuf, the snapshot's metadata only). Snapshot data lives in files,
//! `snapfiles/INDEX.snap` beside the database: a large state is written and
//! fsynced there by a background thread, so the raft thread's own fsyncs
//! never wait for it, and an old snapshot's removal leaves no garbage in a
//! database. The newest two snapshots are kept, so a crash between writing
//! a snapshot and recording it loses nothing. (Stores from before keep
//! their data in a sled database, `snapshots/`, moved to a file at open.)
//!
//! Durability: sled 0.34's `flush()` writes its buffers and calls
//! `sync_file_range`, which neither flushes the drive cache nor file metadata.
//! [`SledStore::sync`] therefore follows it with `fsync` on the database file
//! (through a second descriptor; fsync acts on the inode).

use super::snapshot_files::Snapshots;
use super::{LogStore, SnapshotData, SnapshotWriter, StoreResult};
use crate::Error;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::fs::File;
use std::path::{Path, PathBuf};

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAPSHOT: &[u8] = b"snapshot";

/// Raft storage in a sled database directory.
pub struct SledStore {
    /// The database; kept so it is flushed and closed with the store.
    db: sled::Db,
    /// index → term ++ entry.
    log: sled::Tree,
    /// hard state, conf state, snapshot.
    meta: sled::Tree,
    /// The database file, fsynced after every flush.
    db_file: File,
    /// Where the database lives, for error messages.
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    /// The newest snapshot's metadata and its data's files.
    snaps: Snapshots,
    /// Index of the first entry in the log (snapshot index + 1).
    first: u64,
    /// Index of the last entry (or the snapshot index when the log is empty).
    last: u64,
}

pub(super) fn st(dir: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{}: {what}: {e}", dir.display()))
}

/// Opens a sled database. sled 0.34 finishes its last buffer writes on a
/// background thread after the `Db` is dropped, so a database reopened in
/// the same process (tests, an in-process restart) can find its file lock
/// still held for a moment (longer when the disk is busy with other
/// fsyncs): wait up to 3 s for it. Another process holding the directory
/// still fails, after those 3 s.
pub(super) fn open_db(config: impl Fn() -> sled::Config) -> sled::Result<sled::Db> {
    let mut tries = 0;
    loop {
        match config().open() {
            Err(sled::Error::Io(e)) if lock_is_busy(&e) && tries < 150 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether sled refused to open because another handle holds its file lock.
/// sled 0.34 reports that as `ErrorKind::Other` with the lock error only in
/// the message ("could not acquire lock on …"), not as `WouldBlock`.
fn lock_is_busy(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

fn to_raft(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// Over 80 lines: opening the older sled log with each failure named (kept for moving logs over).
    pub fn open(dir: &Path) -> StoreResult<SledStore> {
        std::fs::create_dir_all(dir).map_err(|e| st(dir, "cannot create the data directory", e))?;
        // The log is read back only by lagging followers: a small cache
        // (sled's default is 1 GiB) keeps the member's memory small (16 MiB
        // filled up under load and stayed; 4 MiB costs no grant rate in
        // `bench --scenario soak`).
        let db = open_db(|| {
            sled::Config::new()
                .path(dir)
                .flush_every_ms(None)
                .cache_capacity(4 << 20)
        })
        .map_err(|e| st(dir, "cannot open the raft database", e))?;
        let log = db
            .open_tree("raft_log")
            .map_err(|e| st(dir, "cannot open tree raft_log", e))?;
        let meta = db
            .open_tree("raft_meta")
            .map_err(|e| st(dir, "cannot open tree raft_meta", e))?;
        let db_file = File::open(dir.join("db"))
            .map_err(|e| st(dir, "cannot open the database file for fsync", e))?;
        let decode = |key: &[u8]| -> StoreResult<Option<sled::IVec>> {
            meta.get(key)
                .map_err(|e| st(dir, "cannot read raft metadata", e))
        };
        let mut hard_state = HardState::default();
        if let Some(b) = decode(HARD_STATE)? {
            hard_state =
                HardState::parse_from_bytes(&b).map_err(|e| st(dir, "corrupt hard state", e))?;
        }
        let mut conf_state = ConfState::default();
        if let Some(b) = decode(CONF_STATE)? {
            conf_state =
                ConfState::parse_from_bytes(&b).map_err(|e| st(dir, "corrupt conf state", e))?;
        }
        let sink = SnapshotData::open(&dir.join("snapfiles"))?;
        let mut snapshot = None;
        if let Some(b) = decode(SNAPSHOT)? {
            let mut snap =
                Snapshot::parse_from_bytes(&b).map_err(|e| st(dir, "corrupt snapshot", e))?;
            let index = snap.get_metadata().index;
            // A store written before snapshots were files: move the data over.
            if sink.read(index)?.is_none()
                && let Some(old) = SnapshotData::read_legacy(&dir.join("snapshots"), index)?
            {
                sink.write(index, &old)?;
                let _ = std::fs::remove_dir_all(dir.join("snapshots"));
            }
            if !sink.file(index).is_file() {
                return Err(st(
                    dir,
                    "corrupt snapshot",
                    format!("the data of the snapshot at index {index} is missing"),
                ));
            }
            snap.set_data(Default::default());
            snapshot = Some(snap);
        }
        let snap_index = snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
        // A commit-only hard state is not synced on its own (see the
        // driver), so the stored commit can trail the snapshot recorded
        // after it; the snapshot's index was applied, so it was committed.
        hard_state.commit = hard_state.commit.max(snap_index);
        let index_of = |k: &[u8]| -> StoreResult<u64> {
            let arr: [u8; 8] = k
                .try_into()
                .map_err(|_| st(dir, "corrupt log key", "not 8 bytes"))?;
            Ok(u64::from_be_bytes(arr))
        };
        let first_key = log.first().map_err(|e| st(dir, "cannot read the log", e))?;
        let last_key = log.last().map_err(|e| st(dir, "cannot read the log", e))?;
        let (first, last) = match (first_key, last_key) {
            (Some((f, _)), Some((l, _))) => (index_of(&f)?, index_of(&l)?),
            _ => (snap_index + 1, snap_index),
        };
        if first != snap_index + 1 {
            return Err(st(
                dir,
                "corrupt raft log",
                format!("log starts at {first} but the snapshot is at {snap_index}"),
            ));
        }
        Ok(SledStore {
            db,
            log,
            meta,
            db_file,
            dir: dir.to_path_buf(),
            hard_state,
            conf_state,
            first,
            last,
            snaps: Snapshots::new(sink, snapshot),
        })
    }

    /// Whether the store holds no raft state at all (a fresh directory).
    pub fn is_fresh(&self) -> bool {
        self.snaps.newest().is_none() && self.last == 0 && self.hard_state == HardState::default()
    }

    fn put_meta(&self, key: &[u8], m: &impl protobuf::Message) -> StoreResult<()> {
        let b = m
            .write_to_bytes()
            .map_err(|e| st(&self.dir, "cannot encode raft metadata", e))?;
        self.meta
            .insert(key, b)
            .map_err(|e| st(&self.dir, "cannot write raft metadata", e))?;
        Ok(())
    }

    /// Records `snap` (whose data is already in the sink) as the newest
    /// snapshot, keeping the previous one's data until the next.
    fn record_snapshot(&mut self, snap: &Snapshot) -> StoreResult<()> {
        let meta = self.snaps.record(snap)?;
        self.put_meta(SNAPSHOT, &meta)
    }

    fn remove_range(&self, from: u64, to_inclusive: u64) -> StoreResult<()> {
        if from > to_inclusive {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for kv in self
            .log
            .range(from.to_be_bytes()..=to_inclusive.to_be_bytes())
        {
            let (k, _) = kv.map_err(|e| st(&self.dir, "cannot read the log", e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| st(&self.dir, "cannot truncate the log", e))
    }
}

impl raft::Storage for SledStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        for kv in self.log.range(low.to_be_bytes()..high.to_be_bytes()) {
            let (_, v) = kv.map_err(to_raft)?;
            let e = Entry::parse_from_bytes(&v[8..]).map_err(to_raft)?;
            out.push(e);
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if let Some(term) = self.snaps.term_at(idx) {
            return Ok(term);
        }
        if idx == 0 {
            return Ok(0);
        }
        if idx < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.log.get(idx.to_be_bytes()).map_err(to_raft)? {
            Some(v) if v.len() >= 8 => {
                let mut t = [0u8; 8];
                t.copy_from_slice(&v[..8]);
                Ok(u64::from_be_bytes(t))
            }
            _ => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.snaps.serve(request_index, to)
    }
}

impl LogStore for SledStore {
    fn append(&mut self, entries: &[Entry]) -> StoreResult<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first {
            return Err(st(
                &self.dir,
                "append below the snapshot",
                format!("entry {first_new} < first index {}", self.first),
            ));
        }
        // Conflicting suffix: raft-rs only appends entries that replace it.
        self.remove_range(first_new, self.last)?;
        let mut batch = sled::Batch::default();
        for e in entries {
            let mut v = Vec::with_capacity(8 + e.compute_size() as usize);
            v.extend_from_slice(&e.term.to_be_bytes());
            e.write_to_vec(&mut v)
                .map_err(|err| st(&self.dir, "cannot encode a log entry", err))?;
            batch.insert(&e.index.to_be_bytes(), v);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| st(&self.dir, "cannot append to the log", e))?;
        self.last = entries.last().map_or(self.last, |e| e.index);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> StoreResult<()> {
        self.hard_state = hs.clone();
        self.put_meta(HARD_STATE, hs)
    }

    fn set_commit(&mut self, commit: u64) -> StoreResult<()> {
        if self.hard_state.commit == commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> StoreResult<()> {
        self.conf_state = cs.clone();
        self.put_meta(CONF_STATE, cs)
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> StoreResult<()> {
        let meta = snap.get_metadata();
        self.snaps.sink.write(meta.index, &snap.data)?;
        self.record_snapshot(snap)?;
        self.remove_range(self.first, self.last)?;
        self.first = meta.index + 1;
        self.last = meta.index;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(&hs)?;
        self.set_conf_state(meta.get_conf_state())
    }

    fn compact_to(&mut self, index: u64, cs: &ConfState, data: Vec<u8>) -> StoreResult<bool> {
        if index < self.first || index > self.last {
            return Ok(false);
        }
        let term = raft::Storage::term(self, index)
            .map_err(|e| st(&self.dir, "cannot read the term to snapshot at", e))?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let m = snap.mut_metadata();
        m.index = index;
        m.term = term;
        m.set_conf_state(cs.clone());
        // The data is durable already (written by the caller through the
        // sink); record the snapshot before dropping the entries it replaces.
        self.record_snapshot(&snap)?;
        self.remove_range(self.first, index)?;
        self.first = index + 1;
        Ok(true)
    }

    fn conf_state(&self) -> ConfState {
        self.conf_state.clone()
    }

    fn snapshot_writer(&self) -> SnapshotWriter {
        self.snaps.writer()
    }

    fn sync(&mut self) -> StoreResult<()> {
        self.db
            .flush()
            .map_err(|e| st(&self.dir, "cannot flush the raft database", e))?;
        self.db_file
            .sync_data()
            .map_err(|e| st(&self.dir, "cannot fsync the raft database", e))
    }

    fn latest_snapshot(&self) -> Option<Snapshot> {
        self.snaps.latest()
    }

    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn take_snapshot_request(&mut self) -> bool {
        self.snaps.take_request()
    }
}
