//! The audit log: what each applied log entry did ([`AuditRecord`]s), one
//! JSON line per entry, appended to segment files and bounded by bytes.
//!
//! It was a sled tree with one value per entry; under a steady write load
//! sled kept rewriting it and the member's data directory grew to about
//! 2.5 times what the records were (`charter bench --scenario soak`). An
//! append-only file with whole segments dropped costs one buffered write
//! per entry and takes exactly what it keeps.
//!
//! - Segments are `FIRSTINDEX-FIRSTAT.log` in the directory (both numbers
//!   zero-padded, so names sort in log order); a new one starts when the
//!   current passes [`SEGMENT_BYTES`].
//! - The oldest segments go once all segments pass the byte bound, or once
//!   the next segment began before the age cut (so every record of the
//!   older one is older than the cut).
//! - A member that crashed applies again what followed its last snapshot:
//!   entries at or below the newest index already written are skipped.
//! - A torn last line (a crash mid-write) is skipped when read.
//! - Files are readable by the member's user only.

use crate::state::Millis;
use crate::state::audit::AuditRecord;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// The most bytes the audit log keeps (whole segments).
pub const MAX_BYTES: u64 = 32 << 20;

#[derive(Serialize, Deserialize)]
struct Line {
    index: u64,
    records: Vec<AuditRecord>,
}

struct Segment {
    path: PathBuf,
    first_at: Millis,
    bytes: u64,
}

struct Inner {
    segments: Vec<Segment>,
    /// The newest segment, open for appending.
    file: Option<BufWriter<File>>,
    /// The newest index written.
    last_index: u64,
}

/// A member's audit log.
pub struct AuditLog {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

type Result<T> = std::result::Result<T, String>;

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("audit log: {what}: {e}")
}

fn parse_name(p: &Path) -> Option<(u64, Millis)> {
    let stem = p.file_name()?.to_str()?.strip_suffix(".log")?;
    let (index, at) = stem.split_once('-')?;
    Some((index.parse().ok()?, at.parse().ok()?))
}

fn lines(path: &Path) -> Vec<Line> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(std::result::Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Whether `f` is empty or its last byte is a line end.
fn ends_with_newline(f: &mut File) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return true;
    };
    if len == 0 || f.seek(SeekFrom::Start(len - 1)).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    f.read_exact(&mut b).is_err() || b[0] == b'\n'
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`, keeping at most `max_bytes` in
    /// segments of `segment_bytes`.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Result<AuditLog> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(&format!("cannot create {}", dir.display()), e))?;
        let mut segments: Vec<(u64, Segment)> = std::fs::read_dir(dir)
            .map_err(|e| err(&format!("cannot read {}", dir.display()), e))?
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let (index, first_at) = parse_name(&path)?;
                let bytes = e.metadata().ok()?.len();
                Some((
                    index,
                    Segment {
                        path,
                        first_at,
                        bytes,
                    },
                ))
            })
            .collect();
        segments.sort_by_key(|(i, _)| *i);
        let last_index = segments
            .last()
            .and_then(|(first, s)| lines(&s.path).last().map(|l| l.index).or(Some(*first)))
            .unwrap_or(0);
        let file = match segments.last_mut() {
            Some((_, s)) => {
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&s.path)
                    .map_err(|e| err(&format!("cannot open {}", s.path.display()), e))?;
                // A torn last line ends here, so the next one starts clean.
                if !ends_with_newline(&mut f) {
                    f.write_all(b"\n").map_err(|e| err("cannot write", e))?;
                    s.bytes += 1;
                }
                Some(BufWriter::new(f))
            }
            None => None,
        };
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: segment_bytes.max(1),
            inner: Mutex::new(Inner {
                segments: segments.into_iter().map(|(_, s)| s).collect(),
                file,
                last_index,
            }),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| err("lock", "poisoned by a panic"))
    }

    /// Appends the records of log entry `index` (applied at `at`).
    pub fn put(&self, index: u64, at: Millis, records: &[AuditRecord]) -> Result<()> {
        let mut g = self.lock()?;
        if index <= g.last_index {
            return Ok(());
        }
        let full = g
            .segments
            .last()
            .is_none_or(|s| s.bytes >= self.segment_bytes);
        if full {
            if let Some(mut f) = g.file.take() {
                f.flush().map_err(|e| err("cannot write", e))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let path = self.dir.join(format!("{index:020}-{:020}.log", at.max(0)));
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| err(&format!("cannot create {}", path.display()), e))?;
            g.file = Some(BufWriter::new(f));
            g.segments.push(Segment {
                path,
                first_at: at,
                bytes: 0,
            });
            self.drop_over(&mut g);
        }
        let mut line = serde_json::to_vec(&Line {
            index,
            records: records.to_vec(),
        })
        .map_err(|e| err("cannot encode", e))?;
        line.push(b'\n');
        if let Some(f) = g.file.as_mut() {
            f.write_all(&line).map_err(|e| err("cannot write", e))?;
        }
        if let Some(s) = g.segments.last_mut() {
            s.bytes += line.len() as u64;
        }
        g.last_index = index;
        Ok(())
    }

    /// Drops the oldest segments while all of them pass the byte bound.
    fn drop_over(&self, g: &mut Inner) {
        while g.segments.len() > 1
            && g.segments.iter().map(|s| s.bytes).sum::<u64>() > self.max_bytes
        {
            let s = g.segments.remove(0);
            let _ = std::fs::remove_file(&s.path);
        }
    }

    /// Drops segments whose every record is older than `cut`, and any
    /// beyond the byte bound. Returns how many segments went.
    pub fn prune(&self, cut: Millis) -> Result<usize> {
        let mut g = self.lock()?;
        let before = g.segments.len();
        while g.segments.len() > 1 && g.segments[1].first_at < cut {
            let s = g.segments.remove(0);
            let _ = std::fs::remove_file(&s.path);
        }
        self.drop_over(&mut g);
        Ok(before - g.segments.len())
    }

    /// Writes what is buffered and syncs it to disk.
    pub fn flush(&self) -> Result<()> {
        let mut g = self.lock()?;
        if let Some(f) = g.file.as_mut() {
            f.flush().map_err(|e| err("cannot write", e))?;
            f.get_ref().sync_data().map_err(|e| err("cannot sync", e))?;
        }
        Ok(())
    }

    /// The newest `n` records at or after `since` that `keep` accepts,
    /// oldest first.
    pub fn read(
        &self,
        since: Millis,
        n: usize,
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> Vec<AuditRecord> {
        let paths: Vec<PathBuf> = match self.lock() {
            Ok(mut g) => {
                if let Some(f) = g.file.as_mut() {
                    let _ = f.flush();
                }
                g.segments.iter().rev().map(|s| s.path.clone()).collect()
            }
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        'segments: for p in paths {
            for line in lines(&p).into_iter().rev() {
                for r in line.records.into_iter().rev() {
                    if r.at < since || out.len() >= n {
                        break 'segments;
                    }
                    if keep(&r) {
                        out.push(r);
                    }
                }
            }
        }
        out.reverse();
        out
    }

    /// The bytes its segments hold.
    pub fn bytes(&self) -> u64 {
        self.lock()
            .map(|g| g.segments.iter().map(|s| s.bytes).sum())
            .unwrap_or(0)
    }
}
