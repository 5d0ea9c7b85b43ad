//! A lease request as a file (`charter lease request -f lease.toml`):
//!
//! ```toml
//! cpu = 4                 # cores per node, or "500m" (default 100m)
//! mem = "8GiB"            # (default 256MiB)
//! gpu = 1
//! labels = { gpu = "a100" }             # exact labels
//! constraints = ["zone in (a,b)", "cuda>=12.0", "!spot"]
//! count = 2               # nodes, all or none
//! for = "2h"
//! max_total = "8h"        # renewals up to this long after the grant
//! wait = "30m"            # how long it may queue
//! priority = 10
//! max_cost = 2.5          # per node per hour
//! prefer = "cheapest"     # binpack | spread | cheapest
//! reason = "training run"
//! ```

use crate::constraint::Constraint;
use crate::reader::Fields;
use crate::spec::{LeaseSpec, Prefer, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// CPU a lease or task holds when it names none: 0.1 core, as Nomad's
/// 100 MHz default, so a lease that forgot `--cpu` still holds something
/// and many fit on a node.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// Memory a lease or task holds when it names none (Nomad: 300 MB).
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;

/// A validated lease request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseConfig {
    /// CPU in millicores, per node.
    pub cpu_millis: u64,
    /// Memory in bytes, per node.
    pub memory_bytes: u64,
    /// Disk in bytes, per node.
    pub disk_bytes: u64,
    /// Whole GPUs, per node.
    pub gpus: u32,
    /// Labels the nodes must have, exactly.
    pub labels: BTreeMap<String, String>,
    /// Further constraints, as written.
    pub constraints: Vec<String>,
    /// Nodes, all or none (0 = 1).
    pub count: u32,
    /// How long, in ms.
    pub duration_ms: u64,
    /// Renewals up to this long after the grant, in ms (0 = the duration).
    pub max_total_ms: u64,
    /// How long it may wait in the queue, in ms.
    pub wait_ms: u64,
    /// Queue priority; higher first.
    pub priority: i32,
    /// Price limit per node per hour.
    pub max_cost: Option<f64>,
    /// How nodes are ranked (none: binpack).
    #[serde(with = "crate::named::or_empty")]
    pub prefer: Option<Prefer>,
    /// Why.
    pub reason: String,
}

impl Default for LeaseConfig {
    /// A request with the default resources and nothing else.
    fn default() -> LeaseConfig {
        LeaseConfig {
            cpu_millis: DEFAULT_CPU_MILLIS,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            disk_bytes: 0,
            gpus: 0,
            labels: BTreeMap::new(),
            constraints: Vec::new(),
            count: 0,
            duration_ms: 0,
            max_total_ms: 0,
            wait_ms: 0,
            priority: 0,
            max_cost: None,
            prefer: None,
            reason: String::new(),
        }
    }
}

impl LeaseConfig {
    /// The request as the servers take it, with no deadline; `labels`
    /// become `key=value` constraints ahead of the written ones. Fails on a
    /// constraint that does not parse, saying which.
    pub fn spec(&self) -> Result<LeaseSpec, String> {
        let mut constraints: Vec<Constraint> = self
            .labels
            .iter()
            .map(|(k, v)| Constraint::eq(k, v))
            .collect();
        for c in &self.constraints {
            constraints.push(Constraint::parse(c)?);
        }
        Ok(LeaseSpec {
            resources: Resources {
                cpu_millis: self.cpu_millis,
                memory_bytes: self.memory_bytes,
                disk_bytes: self.disk_bytes,
                gpus: self.gpus,
            },
            constraints,
            count: self.count.max(1),
            duration_ms: self.duration_ms,
            max_total_ms: self.max_total_ms,
            priority: self.priority,
            wait_ms: self.wait_ms,
            max_cost_per_hour: self.max_cost,
            prefer: self.prefer.unwrap_or_default(),
            deadline: None,
            reason: self.reason.clone(),
        })
    }

    /// Reads a lease request from a table; `None` when a diagnostic was recorded.
    ///
    /// Over 80 lines: one step per field of a lease request, each with its own diagnostic.
    pub fn read(f: &Fields<'_, '_>) -> Option<LeaseConfig> {
        let cpu = f.cores("cpu");
        let mem = f.size("mem");
        let disk = f.size("disk");
        let gpus = f.u64("gpu");
        let labels = f.str_map("labels");
        let constraints = f.str_list("constraints");
        for c in &constraints {
            if let Err(e) = Constraint::parse(c) {
                f.error_at("constraints", e);
            }
        }
        let count = f.u64("count");
        let dur = f.duration("for");
        let max_total = f.duration("max_total").unwrap_or(0);
        let wait = f.duration("wait").unwrap_or(0);
        let priority = f.i64("priority").unwrap_or(0);
        let max_cost = f.f64("max_cost");
        // `prefer = ""` is the default, as it always was.
        let prefer: Option<Prefer> = match f.str("prefer").as_deref() {
            None | Some("") => None,
            Some(_) => f.named("prefer"),
        };
        let reason = f.str("reason").unwrap_or_default();
        let limited = [
            ("reason", crate::limits::reason(&reason)),
            ("constraints", crate::limits::constraints(&constraints)),
        ];
        for (key, r) in limited {
            if let Err(e) = r {
                f.error_at(key, e);
            }
        }
        let gpus = match gpus.map(u32::try_from) {
            Some(Ok(g)) => g,
            Some(Err(_)) => {
                f.error_at("gpu", "expected a whole number of GPUs below 4294967296");
                return None;
            }
            None => 0,
        };
        let count = match count.map(u32::try_from) {
            Some(Ok(c)) if c >= 1 => c,
            Some(_) => {
                f.error_at("count", "expected a number of nodes from 1 up");
                return None;
            }
            None => 1,
        };
        let Ok(priority) = i32::try_from(priority) else {
            f.error_at(
                "priority",
                "expected a priority between -2147483648 and 2147483647",
            );
            return None;
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
        if max_total != 0 && max_total < duration_ms {
            f.error_at("max_total", "must be at least `for`");
            return None;
        }
        Some(LeaseConfig {
            cpu_millis: cpu.unwrap_or(DEFAULT_CPU_MILLIS),
            memory_bytes: mem.unwrap_or(DEFAULT_MEMORY_BYTES),
            disk_bytes: disk.unwrap_or(0),
            gpus,
            labels,
            constraints,
            count,
            duration_ms,
            max_total_ms: max_total,
            wait_ms: wait,
            priority,
            max_cost,
            prefer,
            reason,
        })
    }
}
