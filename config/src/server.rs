//! A server's own config (`charter server --config server.toml`): its pools
//! and how they grow.
//!
//! ```toml
//! kind = "server"
//!
//! [[pool]]
//! name = "burst"
//! max_nodes = 4           # never more nodes than this in the pool
//! idle = "10m"            # a node with no lease for this long is retired
//! join_timeout = "2m"     # a provisioned node that has not joined by then is given up
//! # what each new node offers: the scheduler asks this pool only for demand it can meet
//! cpu = 4
//! mem = "8GiB"
//! gpu = 0
//! labels = { zone = "a" }
//! cost = 0.4              # per hour
//! provisioner = "command" # or "local": `charter agent` processes on this machine
//! command = ["./add-node.sh"]      # gets the demand as JSON on stdin
//! retire = ["./remove-node.sh"]    # optional; gets {"pool", "node"} as JSON on stdin
//! timeout = "5m"          # how long one command may run
//! ```
//!
//! A pool with a provisioner owns its nodes: any of them idle for `idle` is
//! retired. Give every server of a cluster the same file: the leader's pools
//! and retention rules are the ones in force.
//!
//! ```toml
//! [history]
//! retention = "1h"              # an ended lease (and its task) stays in live state this long
//! max = 10000                   # ... and at most this many ended leases stay
//! idempotency_retention = "1h"  # a request's idempotency key is honoured this long
//! idempotency_max = 100000      # ... and at most this many keys are kept
//! keep = "7d"                   # each member's history store keeps what left this long
//! max_size = "32MiB"            # ... and at most this much (records; files ~2x)
//! ```
//!
//! ```toml
//! [raft]
//! tick = "50ms"                 # raft's clock
//! election_timeout = "1s"       # a follower campaigns after 1-2x this without a leader
//! heartbeat_interval = "100ms"  # the leader's heartbeats; below the election timeout
//! ```

use crate::reader::Fields;
use serde::Serialize;
use std::collections::BTreeMap;

/// A validated server config.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerConfig {
    /// Pools that can grow, by name order as written.
    pub pools: Vec<PoolConfig>,
    /// What leaves the live state, and how long history keeps it.
    pub history: HistoryConfig,
    /// Election and heartbeat timing.
    pub raft: RaftTiming,
}

/// The `[raft]` table: each field unset keeps its default.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RaftTiming {
    /// Raft's tick, in ms (50).
    pub tick_ms: Option<u64>,
    /// Time without a leader before a follower campaigns (randomised up to
    /// twice this), in ms (1000).
    pub election_timeout_ms: Option<u64>,
    /// Time between the leader's heartbeats, in ms (100).
    pub heartbeat_interval_ms: Option<u64>,
}

impl RaftTiming {
    fn read(f: &Fields<'_, '_>) -> RaftTiming {
        RaftTiming {
            tick_ms: f.duration("tick"),
            election_timeout_ms: f.duration("election_timeout"),
            heartbeat_interval_ms: f.duration("heartbeat_interval"),
        }
    }

    /// `(tick, election ticks, heartbeat ticks)`, defaults filled in, or
    /// what is wrong.
    pub fn resolve(&self) -> Result<(u64, usize, usize), String> {
        // Defaults measured on lossy links (README, "Partitions and
        // clocks"): 1 s elections rode out 100-300 ms delay and 10% loss
        // with no new term, where 500 ms churned through 9 in a minute.
        let tick = self.tick_ms.unwrap_or(50);
        let heartbeat = self.heartbeat_interval_ms.unwrap_or(tick.max(100));
        let election = self
            .election_timeout_ms
            .unwrap_or((heartbeat * 5).max(1_000));
        if !(1..=10_000).contains(&tick) {
            return Err(format!("the raft tick must be 1 ms to 10 s, got {tick} ms"));
        }
        if heartbeat < tick || election < tick {
            return Err(format!(
                "the heartbeat interval ({heartbeat} ms) and election timeout ({election} ms) must each be at least one tick ({tick} ms)"
            ));
        }
        let (e, h) = (election / tick, heartbeat / tick);
        if e <= h {
            return Err(format!(
                "the election timeout ({election} ms) must be longer than the heartbeat interval ({heartbeat} ms); 5-10x is usual"
            ));
        }
        Ok((tick, e as usize, h as usize))
    }
}

/// The `[history]` table: each field unset keeps its default.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistoryConfig {
    /// How long an ended lease and its task stay in live state, in ms (1 h).
    pub retention_ms: Option<u64>,
    /// Most ended leases in live state (10,000).
    pub max: Option<u64>,
    /// How long an idempotency key is honoured, in ms (1 h).
    pub idempotency_retention_ms: Option<u64>,
    /// Most idempotency keys kept (100,000).
    pub idempotency_max: Option<u64>,
    /// How long a member's history store keeps what left, in ms (7 d).
    pub keep_ms: Option<u64>,
    /// Most bytes of records a member's history store keeps (32 MiB).
    pub max_size: Option<u64>,
}

impl HistoryConfig {
    fn read(f: &Fields<'_, '_>) -> HistoryConfig {
        let out = HistoryConfig {
            retention_ms: f.duration("retention"),
            max: f.u64("max"),
            idempotency_retention_ms: f.duration("idempotency_retention"),
            idempotency_max: f.u64("idempotency_max"),
            keep_ms: f.duration("keep"),
            max_size: f.size("max_size"),
        };
        if out.max == Some(0) {
            f.error_at(
                "max",
                "keep at least 1 ended lease (0 would forget one as it ends)",
            );
        }
        out
    }
}

/// How a pool gets new nodes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "provisioner", rename_all = "snake_case")]
pub enum Provisioner {
    /// Starts `charter agent` processes on this machine (dev and tests).
    Local,
    /// Runs a user's program with the demand as JSON on stdin; the program
    /// makes nodes join (usually by starting `charter agent` somewhere).
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Program run after a node is retired, if any.
        retire: Vec<String>,
        /// How long one run may take, in ms.
        timeout_ms: u64,
    },
}

/// One pool that can grow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolConfig {
    /// The pool's name; nodes in it carry `pool = name`.
    pub name: String,
    /// The most nodes the pool may hold.
    pub max_nodes: u32,
    /// A node with no lease for this long is retired, in ms.
    pub idle_ms: u64,
    /// A provisioned node that has not joined by then is given up, in ms.
    pub join_timeout_ms: u64,
    /// CPU each new node offers, in millicores.
    pub cpu_millis: u64,
    /// Memory each new node offers, in bytes.
    pub memory_bytes: u64,
    /// Disk each new node offers, in bytes.
    pub disk_bytes: u64,
    /// GPUs each new node offers.
    pub gpus: u32,
    /// Labels of each new node.
    pub labels: BTreeMap<String, String>,
    /// Price per node per hour.
    pub cost_per_hour: f64,
    /// How nodes are added.
    pub provisioner: Provisioner,
}

impl ServerConfig {
    /// Reads a server config; `None` when a diagnostic was recorded.
    pub fn read(f: &Fields<'_, '_>) -> Option<ServerConfig> {
        let mut pools = Vec::new();
        let mut ok = true;
        for t in f.tables("pool") {
            match PoolConfig::read(&t) {
                Some(p) => {
                    if pools.iter().any(|q: &PoolConfig| q.name == p.name) {
                        t.error_at("name", format!("pool \"{}\" is defined twice", p.name));
                        ok = false;
                    }
                    pools.push(p);
                }
                None => ok = false,
            }
            t.finish();
        }
        let history = f
            .table("history")
            .map(|h| {
                let out = HistoryConfig::read(&h);
                h.finish();
                out
            })
            .unwrap_or_default();
        let raft = f
            .table("raft")
            .map(|h| {
                let out = RaftTiming::read(&h);
                if let Err(e) = out.resolve() {
                    h.error_at("election_timeout", e);
                    ok = false;
                }
                h.finish();
                out
            })
            .unwrap_or_default();
        ok.then_some(ServerConfig {
            pools,
            history,
            raft,
        })
    }
}

impl PoolConfig {
    /// Over 80 lines: one step per server.toml table, each with its own diagnostics.
    fn read(f: &Fields<'_, '_>) -> Option<PoolConfig> {
        let name = f.req_str("name", "the pool's name, like name = \"burst\"");
        let max_nodes = f.u64("max_nodes");
        let idle = f.duration("idle").unwrap_or(10 * 60_000);
        let join_timeout = f.duration("join_timeout").unwrap_or(2 * 60_000);
        let cpu = f.cores("cpu");
        let mem = f.size("mem");
        let disk = f.size("disk").unwrap_or(0);
        let gpus = f.u64("gpu").unwrap_or(0);
        let labels = f.str_map("labels");
        if let Err(e) = crate::limits::labels(&labels) {
            f.error_at("labels", e);
        }
        let cost = f.f64("cost").unwrap_or(0.0);
        let kind = f.req_str("provisioner", "\"local\" or \"command\"");
        let argv = f.str_list("command");
        let retire = f.str_list("retire");
        let timeout = f.duration("timeout").unwrap_or(5 * 60_000);
        if let Some(n) = &name
            && !crate::node::valid_name(n)
        {
            f.error_at(
                "name",
                format!("expected 1-63 letters, digits, '-', '.' or '_', got \"{n}\""),
            );
        }
        if max_nodes.is_none() && !f.has("max_nodes") {
            f.missing(
                "max_nodes",
                "the most nodes the pool may hold, like max_nodes = 4",
            );
        }
        if max_nodes == Some(0) {
            f.error_at(
                "max_nodes",
                "a pool that may hold 0 nodes never grows; use 1 or more",
            );
        }
        if cpu.is_none() && !f.has("cpu") {
            f.missing("cpu", "the cores each new node offers, like cpu = 4");
        }
        if mem.is_none() && !f.has("mem") {
            f.missing(
                "mem",
                "the memory each new node offers, like mem = \"8GiB\"",
            );
        }
        if !(cost.is_finite() && cost >= 0.0) {
            f.error_at("cost", "expected a price per hour of 0 or more");
        }
        if idle == 0 {
            f.error_at("idle", "expected a time longer than 0s");
        }
        let provisioner = match kind.as_deref() {
            Some("local") => {
                if f.has("command") || f.has("retire") {
                    f.error_at(
                        "command",
                        "the local provisioner starts `charter agent` itself; remove command/retire or use provisioner = \"command\"",
                    );
                }
                Some(Provisioner::Local)
            }
            Some("command") => {
                if argv.is_empty() {
                    f.missing(
                        "command",
                        "the program to run, like command = [\"./add-node.sh\"]",
                    );
                    None
                } else {
                    Some(Provisioner::Command {
                        argv,
                        retire,
                        timeout_ms: timeout,
                    })
                }
            }
            Some(other) => {
                f.error_at(
                    "provisioner",
                    format!("expected \"local\" or \"command\", got \"{other}\""),
                );
                None
            }
            None => None,
        };
        Some(PoolConfig {
            name: name.filter(|n| crate::node::valid_name(n))?,
            max_nodes: u32::try_from(max_nodes.filter(|m| *m > 0)?).ok()?,
            idle_ms: idle,
            join_timeout_ms: join_timeout.max(1),
            cpu_millis: cpu?,
            memory_bytes: mem?,
            disk_bytes: disk,
            gpus: u32::try_from(gpus).ok()?,
            labels,
            cost_per_hour: Some(cost).filter(|c| c.is_finite() && *c >= 0.0)?,
            provisioner: provisioner?,
        })
    }
}
