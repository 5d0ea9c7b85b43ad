//! Snapshot data as files, `INDEX.snap` in one directory beside the raft
//! log, whichever store keeps the log.

use super::sled_store::{open_db, st};
use super::{Encode, SnapshotWriter, StoreResult, Written};
use raft::eraftpb::Snapshot;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Where snapshot data is written: one file per snapshot, `INDEX.snap`
/// (written to a temporary name, fsynced, renamed, and the directory
/// fsynced), so a large state leaves no garbage behind and a background
/// thread can write one while the raft thread goes on.
#[derive(Clone)]
pub struct SnapshotData {
    dir: PathBuf,
}

impl SnapshotData {
    pub(super) fn open(dir: &Path) -> StoreResult<SnapshotData> {
        std::fs::create_dir_all(dir)
            .map_err(|e| st(dir, "cannot create the snapshot directory", e))?;
        Ok(SnapshotData {
            dir: dir.to_path_buf(),
        })
    }

    pub(super) fn file(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:020}.snap"))
    }

    /// Writes `data` as the data of the snapshot at `index` and makes it
    /// durable.
    pub fn write(&self, index: u64, data: &[u8]) -> StoreResult<()> {
        self.write_with(index, &mut |w: &mut dyn std::io::Write| w.write_all(data))
            .map(drop)
    }

    /// Writes the data of the snapshot at `index`, as `encode` makes it,
    /// and makes it durable; returns how many bytes it holds.
    pub fn write_with(&self, index: u64, encode: &mut Encode<'_>) -> StoreResult<u64> {
        let tmp = self.dir.join(format!("{index:020}.snap.tmp"));
        let io = |what: &str, e: std::io::Error| st(&self.dir, what, e);
        let f = File::create(&tmp).map_err(|e| io("cannot write snapshot data", e))?;
        let mut out = Counted {
            inner: std::io::BufWriter::with_capacity(256 << 10, f),
            bytes: 0,
        };
        encode(&mut out).map_err(|e| io("cannot write snapshot data", e))?;
        let bytes = out.bytes;
        let f = out
            .inner
            .into_inner()
            .map_err(|e| io("cannot write snapshot data", e.into_error()))?;
        f.sync_data()
            .map_err(|e| io("cannot fsync snapshot data", e))?;
        std::fs::rename(&tmp, self.file(index)).map_err(|e| io("cannot write snapshot data", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot fsync the snapshot directory", e))?;
        Ok(bytes)
    }

    pub(super) fn read(&self, index: u64) -> StoreResult<Option<Vec<u8>>> {
        match std::fs::read(self.file(index)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(st(&self.dir, "cannot read snapshot data", e)),
        }
    }

    /// `meta` (a snapshot's metadata) with its data, read from its file.
    pub(super) fn with_data(&self, meta: &Snapshot) -> StoreResult<Snapshot> {
        let index = meta.get_metadata().index;
        let data = self.read(index)?.ok_or_else(|| {
            st(
                &self.dir,
                "corrupt snapshot",
                format!("the data of the snapshot at index {index} is missing"),
            )
        })?;
        let mut s = meta.clone();
        s.set_data(data.into());
        Ok(s)
    }

    /// Drops snapshot data older than `keep_from` (not synced: losing the
    /// removal in a crash only leaves garbage behind).
    pub(super) fn prune(&self, keep_from: u64) -> StoreResult<()> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| st(&self.dir, "cannot list snapshots", e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let index = name
                .strip_suffix(".snap")
                .or_else(|| name.strip_suffix(".snap.tmp"))
                .and_then(|i| i.parse::<u64>().ok());
            if index.is_some_and(|i| i < keep_from) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Data of the snapshot at `index` from the sled database that held
    /// snapshots before files did (`snapshots/`), if there is one.
    pub(super) fn read_legacy(dir: &Path, index: u64) -> StoreResult<Option<Vec<u8>>> {
        if !dir.join("db").is_file() {
            return Ok(None);
        }
        let db = open_db(|| sled::Config::new().path(dir).flush_every_ms(None))
            .map_err(|e| st(dir, "cannot open the old snapshot database", e))?;
        let data = db
            .get(index.to_be_bytes())
            .map_err(|e| st(dir, "cannot read old snapshot data", e))?;
        Ok(data.map(|d| d.to_vec()))
    }
}

/// What a store keeps of its snapshots: the newest one's metadata (its data
/// stays in its file) and whether raft asked for one it could not give.
pub(super) struct Snapshots {
    pub(super) sink: SnapshotData,
    newest: Option<Snapshot>,
    wanted: AtomicBool,
}

impl Snapshots {
    pub(super) fn new(sink: SnapshotData, newest: Option<Snapshot>) -> Snapshots {
        Snapshots {
            sink,
            newest,
            wanted: AtomicBool::new(false),
        }
    }

    /// The newest snapshot's metadata.
    pub(super) fn newest(&self) -> Option<&Snapshot> {
        self.newest.as_ref()
    }

    /// Records `snap` (whose data is already in the sink) as the newest,
    /// keeping the previous one's data until the next; returns the metadata
    /// for the store to write.
    pub(super) fn record(&mut self, snap: &Snapshot) -> StoreResult<Snapshot> {
        let mut meta_only = snap.clone();
        meta_only.set_data(Default::default());
        if let Some(prev) = &self.newest {
            self.sink.prune(prev.get_metadata().index)?;
        }
        self.newest = Some(meta_only.clone());
        Ok(meta_only)
    }

    /// The term at `idx` when it is the newest snapshot's index.
    pub(super) fn term_at(&self, idx: u64) -> Option<u64> {
        self.newest
            .as_ref()
            .filter(|s| s.get_metadata().index == idx)
            .map(|s| s.get_metadata().term)
    }

    /// `raft::Storage::snapshot`: the newest, with its data, if member `to`
    /// can take it; otherwise a fresh one is asked for.
    pub(super) fn serve(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.newest {
            Some(s) if super::snapshot_usable(s, request_index, to) => self
                .sink
                .with_data(s)
                .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e)))),
            _ => {
                self.wanted.store(true, Ordering::SeqCst);
                Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }

    /// The newest snapshot with its data (metadata only if it is unreadable:
    /// a broken disk, which the caller's decode of an empty state reports).
    pub(super) fn latest(&self) -> Option<Snapshot> {
        self.newest
            .as_ref()
            .map(|s| self.sink.with_data(s).unwrap_or_else(|_| s.clone()))
    }

    /// Whether raft asked for a snapshot that could not be given; clears it.
    pub(super) fn take_request(&self) -> bool {
        self.wanted.swap(false, Ordering::SeqCst)
    }

    /// A handle that writes snapshot data durably from another thread.
    pub(super) fn writer(&self) -> SnapshotWriter {
        let sink = self.sink.clone();
        std::sync::Arc::new(move |index, encode| {
            Ok(Written {
                bytes: sink.write_with(index, encode)?,
                data: Vec::new(),
            })
        })
    }
}

/// A writer that counts what goes through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: std::io::Write> std::io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
