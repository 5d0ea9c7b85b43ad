//! A node offer as a file (`charter node register -f node.toml`):
//!
//! ```toml
//! kind = "node"
//! name = "n1"
//! cpu = 16
//! mem = "64GiB"
//! labels = { zone = "a", gpu = "a100" }
//! pool = "gpu"
//! cost = 2.5              # per hour
//! ```

use crate::reader::Fields;
use serde::Serialize;
use std::collections::BTreeMap;

/// A validated node offer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeConfig {
    /// Unique node name.
    pub name: String,
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disk in bytes.
    pub disk_bytes: u64,
    /// Whole GPUs.
    pub gpus: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Pool name.
    pub pool: String,
    /// Price per hour.
    pub cost_per_hour: f64,
}

/// Whether `name` is a valid node name: 1–63 of `a-z 0-9 - . _`, starting alphanumeric.
pub fn valid_name(name: &str) -> bool {
    crate::limits::name(name)
}

impl NodeConfig {
    /// Reads a node offer from a table; `None` when a diagnostic was recorded.
    pub fn read(f: &Fields<'_, '_>) -> Option<NodeConfig> {
        let name = f.req_str("name", "the node's name, like name = \"n1\"");
        let cpu = f.cores("cpu");
        let mem = f.size("mem");
        let disk = f.size("disk").unwrap_or(0);
        let gpus = f.u64("gpu").unwrap_or(0);
        let labels = f.str_map("labels");
        if let Err(e) = crate::limits::labels(&labels) {
            f.error_at("labels", e);
        }
        let pool = f.str("pool").unwrap_or_else(|| "default".into());
        let cost = f.f64("cost").unwrap_or(0.0);
        if let Some(n) = &name
            && !valid_name(n)
        {
            f.error_at(
                "name",
                format!("expected 1-63 letters, digits, '-', '.' or '_', got \"{n}\""),
            );
        }
        if cpu.is_none() && !f.has("cpu") {
            f.missing("cpu", "the cores it offers, like cpu = 16");
        }
        if mem.is_none() && !f.has("mem") {
            f.missing("mem", "the memory it offers, like mem = \"64GiB\"");
        }
        Some(NodeConfig {
            name: name.filter(|n| valid_name(n))?,
            cpu_millis: cpu?,
            memory_bytes: mem?,
            disk_bytes: disk,
            gpus: u32::try_from(gpus).ok()?,
            labels,
            pool,
            cost_per_hour: cost,
        })
    }
}
