//! Resource detection: what this machine can offer to leases.
//!
//! CPU comes from the scheduler-visible parallelism (cgroup quotas and
//! affinity included), memory from `/proc/meminfo`'s `MemTotal`, disk from
//! `statvfs` of the agent's data directory. Flags override each.

use std::path::Path;

/// What a machine offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Detected {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disk in bytes (total of the data directory's filesystem).
    pub disk_bytes: u64,
}

/// Why detection failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}; pass the value as a flag instead")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// A file did not have the expected shape.
    #[error("cannot understand {path}: {reason}; pass the value as a flag instead")]
    Parse {
        /// The file.
        path: String,
        /// What was missing.
        reason: String,
    },
}

/// Parses `MemTotal` (in kB) out of `/proc/meminfo` text, into bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => n.checked_mul(1024),
        _ => None,
    }
}

/// Detects the machine's resources; `data` is the agent's data directory.
pub fn detect(data: &Path) -> Result<Detected, DetectError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let path = "/proc/meminfo";
    let text = std::fs::read_to_string(path).map_err(|e| DetectError::Read {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let memory_bytes = parse_meminfo(&text).ok_or_else(|| DetectError::Parse {
        path: path.into(),
        reason: "no `MemTotal: N kB` line".into(),
    })?;
    Ok(Detected {
        cpu_millis: cpus * 1000,
        memory_bytes,
        disk_bytes: disk_total(data)?,
    })
}

fn disk_total(dir: &Path) -> Result<u64, DetectError> {
    use std::os::unix::ffi::OsStrExt;
    let read_err = |reason: String| DetectError::Read {
        path: dir.display().to_string(),
        reason,
    };
    let c =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| read_err(e.to_string()))?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(read_err(std::io::Error::last_os_error().to_string()));
    }
    Ok((s.f_blocks as u64).saturating_mul(s.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_table() {
        let cases: &[(&str, Option<u64>)] = &[
            (
                "MemTotal:       24570412 kB\nMemFree:  1 kB\n",
                Some(24_570_412 * 1024),
            ),
            ("MemFree: 5 kB\nMemTotal: 1024 kB\n", Some(1024 * 1024)),
            ("MemTotal: lots kB\n", None),
            ("MemTotal: 5 MB\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_meminfo(text), *want, "{text:?}");
        }
    }

    #[test]
    fn detects_this_machine() {
        let dir = std::env::temp_dir();
        let d = detect(&dir).unwrap();
        assert!(d.cpu_millis >= 1000);
        assert!(d.memory_bytes > 64 << 20);
        assert!(d.disk_bytes > 0);
        assert!(matches!(
            detect(Path::new("/no/such/dir")),
            Err(DetectError::Read { .. })
        ));
    }
}
