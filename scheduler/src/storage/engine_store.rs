//! [`LogStore`] on raft-engine, TiKV's log-structured store for raft logs.
//!
//! Layout, under the member's `raft/` directory: `engine/` holds raft-engine's
//! files for one raft group: the entries and three keys, `hard_state`,
//! `conf_state` and `snapshot` (the newest snapshot's metadata; protobuf).
//! Snapshot data lives in `snapfiles/` ([`SnapshotData`]), the applied state's
//! history in sled (`history/`).
//!
//! Writes between two syncs gather in one [`LogBatch`]; [`LogStore::sync`]
//! writes it with one fdatasync. Until then the new entries exist only in an
//! in-memory cache of the newest entries, which is also what the apply path
//! and up-to-date followers read; raft-engine's files are read back only for
//! a follower far behind (or after a restart). Compaction writes the
//! snapshot's metadata and raft-engine's `Compact` command in one batch; a
//! background thread then drops log files that hold nothing live.
//!
//! raft-engine panics (rather than returning an error) when its fdatasync
//! fails; the member's raft thread ends with it, as on any storage error.
//!
//! A data directory from before (the log in sled, `raft/db`) is moved over
//! when it is opened: the new log is built beside it, synced, renamed into
//! place, and only then are sled's files removed.

use super::snapshot_files::Snapshots;
use super::{LogStore, SnapshotData, SnapshotWriter, StoreResult};
use crate::Error;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, Engine, LogBatch, ReadableSize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

/// The one raft group in the engine.
pub(super) const GROUP: u64 = 1;
pub(super) const HARD_STATE: &[u8] = b"hard_state";
pub(super) const CONF_STATE: &[u8] = b"conf_state";
pub(super) const SNAPSHOT: &[u8] = b"snapshot";
/// The newest entries kept in memory once written: what a turn applies and
/// what an up-to-date follower is sent. At most this many, and this many bytes.
const CACHE_ENTRIES: usize = 1024;
const CACHE_BYTES: usize = 4 << 20;

/// raft-rs's entries, as raft-engine stores them.
pub(super) struct Entries;

impl raft_engine::MessageExt for Entries {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Raft storage in a raft-engine directory.
pub struct EngineStore {
    engine: Arc<Engine>,
    /// The `raft/` directory, for error messages and snapshot files.
    dir: PathBuf,
    /// Writes since the last sync.
    pending: LogBatch,
    /// Whether `pending` drops log entries (then old files may go after it).
    compacting: bool,
    hard_state: HardState,
    conf_state: ConfState,
    /// The newest snapshot's metadata and its data's files.
    snaps: Snapshots,
    /// Index of the first entry in the log (snapshot index + 1).
    first: u64,
    /// Index of the last entry (or the snapshot index when the log is empty).
    last: u64,
    /// The newest entries, contiguous and ending at `last` when not empty.
    /// Entries not yet synced are always here.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Wakes the thread that drops log files after a compaction.
    purge: Option<mpsc::Sender<()>>,
    purger: Option<std::thread::JoinHandle<()>>,
}

pub(super) fn st(dir: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{}: {what}: {e}", dir.display()))
}

fn to_raft(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

pub(super) fn open_engine(dir: &Path) -> StoreResult<Engine> {
    let path = dir
        .to_str()
        .ok_or_else(|| st(dir, "cannot open the raft log", "the path is not UTF-8"))?;
    let cfg = raft_engine::Config {
        dir: path.to_string(),
        // Small files, so that what a compaction frees is soon a whole file
        // to drop; the log is compacted after every snapshot (every 4 MiB
        // or the snapshot's size). Files are dropped once they hold more
        // than 16 MiB, and up to 1.5x that is kept for reuse: the log's
        // disk stays under ~40 MiB plus what is live (a soak with 64 MiB
        // and 8 MiB files kept 160 MiB).
        target_file_size: ReadableSize::mb(4),
        purge_threshold: ReadableSize::mb(16),
        // Batches are a few KiB of already compact entries: no LZ4.
        batch_compression_threshold: ReadableSize(0),
        recovery_threads: 2,
        ..Default::default()
    };
    Engine::open(cfg).map_err(|e| st(dir, "cannot open the raft log", e))
}

fn read_meta<M: protobuf::Message>(
    engine: &Engine,
    dir: &Path,
    key: &[u8],
) -> StoreResult<Option<M>> {
    engine
        .get_message::<M>(GROUP, key)
        .map_err(|e| st(dir, "corrupt raft metadata", e))
}

impl EngineStore {
    /// Opens (or creates) the store in `dir` (the member's `raft/`),
    /// moving a log kept in sled there before over first.
    pub fn open(dir: &Path) -> StoreResult<EngineStore> {
        std::fs::create_dir_all(dir).map_err(|e| st(dir, "cannot create the data directory", e))?;
        let engine_dir = dir.join("engine");
        if dir.join("db").is_file() {
            if !engine_dir.exists() {
                super::sled_move::move_from_sled(dir, &engine_dir)?;
            }
            super::sled_move::remove_sled_files(dir)?;
        }
        let engine = open_engine(&engine_dir)?;
        let hard_state: Option<HardState> = read_meta(&engine, dir, HARD_STATE)?;
        let conf_state: Option<ConfState> = read_meta(&engine, dir, CONF_STATE)?;
        let snapshot: Option<Snapshot> = read_meta(&engine, dir, SNAPSHOT)?;
        let sink = SnapshotData::open(&dir.join("snapfiles"))?;
        let snap_index = snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
        if snapshot.is_some() && !sink.file(snap_index).is_file() {
            return Err(st(
                dir,
                "corrupt snapshot",
                format!("the data of the snapshot at index {snap_index} is missing"),
            ));
        }
        let mut hard_state = hard_state.unwrap_or_default();
        // A commit-only hard state is not synced on its own (see the
        // driver), so the stored commit can trail the snapshot recorded
        // after it; the snapshot's index was applied, so it was committed.
        hard_state.commit = hard_state.commit.max(snap_index);
        let (first, last) = match (engine.first_index(GROUP), engine.last_index(GROUP)) {
            (Some(f), Some(l)) => (f, l),
            _ => (snap_index + 1, snap_index),
        };
        if first != snap_index + 1 {
            return Err(st(
                dir,
                "corrupt raft log",
                format!("log starts at {first} but the snapshot is at {snap_index}"),
            ));
        }
        let engine = Arc::new(engine);
        let (purge, purger) = start_purger(engine.clone(), dir)?;
        Ok(EngineStore {
            engine,
            dir: dir.to_path_buf(),
            pending: LogBatch::default(),
            compacting: false,
            hard_state,
            conf_state: conf_state.unwrap_or_default(),
            first,
            last,
            cache: VecDeque::new(),
            cache_bytes: 0,
            snaps: Snapshots::new(sink, snapshot),
            purge: Some(purge),
            purger: Some(purger),
        })
    }

    /// Whether the store holds no raft state at all (a fresh directory).
    pub fn is_fresh(&self) -> bool {
        self.snaps.newest().is_none() && self.last == 0 && self.hard_state == HardState::default()
    }

    /// Bytes of log files holding live entries (files kept for reuse
    /// after a purge are not counted).
    pub fn log_bytes(&self) -> u64 {
        self.engine.get_used_size() as u64
    }

    fn put_meta(&mut self, key: &[u8], m: &impl protobuf::Message) -> StoreResult<()> {
        self.pending
            .put_message(GROUP, key.to_vec(), m)
            .map_err(|e| st(&self.dir, "cannot encode raft metadata", e))
    }

    /// Index of the first cached entry (`last + 1` when the cache is empty).
    fn cache_first(&self) -> u64 {
        self.last + 1 - self.cache.len() as u64
    }

    fn cache_push(&mut self, e: &Entry) {
        self.cache_bytes += e.data.len() + e.context.len();
        self.cache.push_back(e.clone());
    }

    fn cache_pop_front(&mut self) {
        if let Some(e) = self.cache.pop_front() {
            self.cache_bytes -= e.data.len() + e.context.len();
        }
    }

    fn cache_clear(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    /// Records `snap` (whose data is already in the sink) as the newest
    /// snapshot, keeping the previous one's data until the next.
    fn record_snapshot(&mut self, snap: &Snapshot) -> StoreResult<()> {
        let meta = self.snaps.record(snap)?;
        self.put_meta(SNAPSHOT, &meta)
    }

    fn engine_entries(&self, low: u64, high: u64, max: Option<u64>) -> raft::Result<Vec<Entry>> {
        let mut out = Vec::with_capacity((high - low) as usize);
        self.engine
            .fetch_entries_to::<Entries>(GROUP, low, high, max.map(|m| m as usize), &mut out)
            .map_err(to_raft)?;
        Ok(out)
    }
}

impl Drop for EngineStore {
    fn drop(&mut self) {
        // The purger holds the engine too: let it end, so the engine (and
        // its directory lock) is gone when the store is.
        self.purge.take();
        if let Some(t) = self.purger.take() {
            let _ = t.join();
        }
    }
}

/// Drops log files that hold nothing live, each time it is woken.
fn start_purger(
    engine: Arc<Engine>,
    dir: &Path,
) -> StoreResult<(mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<()>();
    let shown = dir.display().to_string();
    let t = std::thread::Builder::new()
        .name("raft-log-purge".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                if let Err(e) = engine.purge_expired_files() {
                    tracing::warn!(dir = %shown, error = %e, "cannot drop old raft log files");
                }
            }
        })
        .map_err(|e| st(dir, "cannot start the raft log purge thread", e))?;
    Ok((tx, t))
}

impl raft::Storage for EngineStore {
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
        let max = max_size.into();
        let cached = self.cache_first();
        let mut out = if low < cached {
            self.engine_entries(low, high.min(cached), max)?
        } else {
            Vec::with_capacity((high - low) as usize)
        };
        // The engine stops early at the size limit; the cache goes on from
        // where it ended.
        let from = low.max(cached);
        if out.len() as u64 == from - low {
            for i in from..high {
                out.push(self.cache[(i - cached) as usize].clone());
            }
        }
        raft::util::limit_size(&mut out, max);
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
        let cached = self.cache_first();
        if idx >= cached {
            return Ok(self.cache[(idx - cached) as usize].term);
        }
        match self
            .engine
            .get_entry::<Entries>(GROUP, idx)
            .map_err(to_raft)?
        {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
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

impl LogStore for EngineStore {
    fn append(&mut self, entries: &[Entry]) -> StoreResult<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first || first_new > self.last + 1 {
            return Err(st(
                &self.dir,
                "append outside the log",
                format!(
                    "entry {first_new}, the log holds {}..={}",
                    self.first, self.last
                ),
            ));
        }
        // A conflicting suffix: raft-engine drops it from the first new index.
        while self.cache.back().is_some_and(|e| e.index >= first_new) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.data.len() + e.context.len();
            }
        }
        if self.cache.back().is_some_and(|e| e.index + 1 != first_new) {
            self.cache_clear();
        }
        self.pending
            .add_entries::<Entries>(GROUP, entries)
            .map_err(|e| st(&self.dir, "cannot encode log entries", e))?;
        for e in entries {
            self.cache_push(e);
        }
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
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        self.snaps.sink.write(index, &snap.data)?;
        self.record_snapshot(snap)?;
        // Entries after the snapshot are from another history and must go:
        // raft-engine drops a suffix only when an append overwrites it, so
        // write a placeholder at the snapshot's index and compact past it.
        if index >= self.first && index <= self.last {
            let placeholder = Entry {
                index,
                term,
                ..Default::default()
            };
            self.pending
                .add_entries::<Entries>(GROUP, &[placeholder])
                .map_err(|e| st(&self.dir, "cannot encode log entries", e))?;
        }
        self.pending
            .add_command(GROUP, Command::Compact { index: index + 1 });
        self.compacting = true;
        self.cache_clear();
        self.first = index + 1;
        self.last = index;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(term);
        hs.commit = hs.commit.max(index);
        self.set_hard_state(&hs)?;
        self.set_conf_state(snap.get_metadata().get_conf_state())
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
        // sink); the snapshot is recorded in the same batch that drops the
        // entries it replaces.
        self.record_snapshot(&snap)?;
        self.pending
            .add_command(GROUP, Command::Compact { index: index + 1 });
        self.compacting = true;
        self.first = index + 1;
        while self.cache.front().is_some_and(|e| e.index < self.first) {
            self.cache_pop_front();
        }
        Ok(true)
    }

    fn conf_state(&self) -> ConfState {
        self.conf_state.clone()
    }

    fn snapshot_writer(&self) -> SnapshotWriter {
        self.snaps.writer()
    }

    fn sync(&mut self) -> StoreResult<()> {
        self.engine
            .write(&mut self.pending, true)
            .map_err(|e| st(&self.dir, "cannot write the raft log", e))?;
        // Written: the oldest cached entries can be read from the engine.
        while self.cache.len() > CACHE_ENTRIES || self.cache_bytes > CACHE_BYTES {
            self.cache_pop_front();
        }
        if std::mem::take(&mut self.compacting)
            && let Some(p) = &self.purge
        {
            let _ = p.send(());
        }
        Ok(())
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
