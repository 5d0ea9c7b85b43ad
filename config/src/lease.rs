//! A lease request as a file (`charter lease request -f lease.toml`):
//!
//! ```toml
//! cpu = 4                 # cores, or "500m"
//! mem = "8GiB"
//! gpu = 1
//! labels = { gpu = "a100" }
//! for = "2h"
//! reason = "training run"
//! ```

use crate::reader::Fields;
use serde::Serialize;
use std::collections::BTreeMap;

/// A validated lease request.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LeaseConfig {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disk in bytes.
    pub disk_bytes: u64,
    /// Whole GPUs.
    pub gpus: u32,
    /// Labels the node must have, exactly.
    pub labels: BTreeMap<String, String>,
    /// How long, in ms.
    pub duration_ms: u64,
    /// Why.
    pub reason: String,
}

impl LeaseConfig {
    /// Reads a lease request from a table; `None` when a diagnostic was recorded.
    pub fn read(f: &Fields<'_, '_>) -> Option<LeaseConfig> {
        let cpu = f.cores("cpu");
        let mem = f.size("mem");
        let disk = f.size("disk");
        let gpus = f.u64("gpu");
        let labels = f.str_map("labels");
        let dur = f.duration("for");
        let reason = f.str("reason").unwrap_or_default();
        let gpus = match gpus.map(u32::try_from) {
            Some(Ok(g)) => g,
            Some(Err(_)) => {
                f.error_at("gpu", "expected a whole number of GPUs below 4294967296");
                return None;
            }
            None => 0,
        };
        let Some(duration_ms) = dur else {
            if !f.has("for") {
                f.missing("for", "how long the lease lasts, like for = \"2h\"");
            }
            return None;
        };
        if duration_ms == 0 {
            f.error_at("for", "a lease must last longer than 0s");
            return None;
        }
        Some(LeaseConfig {
            cpu_millis: cpu.unwrap_or(0),
            memory_bytes: mem.unwrap_or(0),
            disk_bytes: disk.unwrap_or(0),
            gpus,
            labels,
            duration_ms,
            reason,
        })
    }
}
