//! `charter node register|list`.
//!
//! Over 500 lines: every node verb and its output.

use super::client::{Client, Global, new_key};
use super::output::{self, fail};
use charter_config::units;
use charter_proto as pb;
use charter_proto::nodes_client::NodesClient;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `node register`'s arguments.
#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The node's name (omit with -f).
    pub name: Option<String>,
    /// Cores it offers, e.g. 16 or 0.5.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory it offers, e.g. 64GiB.
    #[arg(long)]
    pub mem: Option<String>,
    /// Disk it offers, e.g. 500GiB.
    #[arg(long)]
    pub disk: Option<String>,
    /// GPUs it has.
    #[arg(long, default_value_t = 0)]
    pub gpu: u32,
    /// A label, `key=value`; repeat for more.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Its pool.
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Its price per hour.
    #[arg(long, default_value_t = 0.0)]
    pub cost: f64,
    /// Heartbeat TTL, e.g. 15s: without a heartbeat for that long the node
    /// is down and its leases lost (default: none, for records without an agent).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Read the node from a node.toml instead (kind = "node").
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
}

/// Node verbs.
#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Add a node record with no agent behind it (for tests, benchmarks, simulated fleets).
    Register(RegisterArgs),
    /// List nodes.
    List {
        /// Read local state without a ReadIndex round (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Show one node.
    Show {
        /// The node's name.
        name: String,
    },
    /// Stop new grants on a node; its leases stay (admin).
    Drain {
        /// The node's name.
        name: String,
    },
    /// Resume grants on a drained node (admin).
    Undrain {
        /// The node's name.
        name: String,
    },
    /// List the pools that grow with demand (from the servers' --config).
    Pools {
        /// Read local state without a ReadIndex round (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Remove a node that holds no live lease (admin); its agent exits.
    Remove {
        /// The node's name.
        name: String,
    },
    /// Report a node alive (what its agent does; for tests and simulated fleets).
    Heartbeat {
        /// The node's name.
        name: String,
    },
    /// Print the node credential for a node's agent (admin): a token that can
    /// only register, heartbeat, watch and report for that node. Give it to
    /// the agent with `--token` or CHARTER_TOKEN; it stays valid until the
    /// cluster's first admin token changes.
    Credential {
        /// The node's name.
        name: String,
    },
}

async fn list(c: &Client, stale: bool) -> anyhow::Result<Vec<pb::Node>> {
    let r = c
        .call("node list", |ch| {
            let req = c.req(pb::ListNodesRequest { stale });
            async move { NodesClient::new(ch).list(req).await }
        })
        .await?;
    Ok(r.nodes)
}

fn print_node(g: &Global, n: &pb::Node) -> anyhow::Result<()> {
    let j = node_json(n);
    if g.json {
        return output::json(&j);
    }
    println!("node {} {} (pool {})", j.name, j.state, j.pool);
    println!(
        "  cpu      {} of {} cores allocated",
        units::format_cores(j.allocated_cpu_millis),
        units::format_cores(j.cpu_millis)
    );
    println!(
        "  memory   {} of {}",
        units::format_size(j.allocated_memory_bytes),
        units::format_size(j.memory_bytes)
    );
    println!("  leases   {}", j.leases);
    println!("  cost     {}/h", j.cost_per_hour);
    println!("  labels   {}", labels_text(&j.labels, ", "));
    Ok(())
}

/// Labels as `k=v` joined by `sep`, in key order.
fn labels_text<K: std::fmt::Display, V: std::fmt::Display>(
    labels: impl IntoIterator<Item = (K, V)>,
    sep: &str,
) -> String {
    labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// `node list --json` rows: a stable interface.
#[derive(Serialize)]
pub struct NodeJson {
    name: String,
    state: String,
    pool: String,
    cpu_millis: u64,
    memory_bytes: u64,
    disk_bytes: u64,
    gpus: u32,
    allocated_cpu_millis: u64,
    allocated_memory_bytes: u64,
    labels: BTreeMap<String, String>,
    cost_per_hour: f64,
    leases: u32,
    registered_at: String,
    ttl_ms: u64,
    last_seen: String,
}

fn node_json(n: &pb::Node) -> NodeJson {
    let cap = n.capacity.unwrap_or_default();
    let al = n.allocated.unwrap_or_default();
    NodeJson {
        name: n.name.clone(),
        state: n.state.clone(),
        pool: n.pool.clone(),
        cpu_millis: cap.cpu_millis,
        memory_bytes: cap.memory_bytes,
        disk_bytes: cap.disk_bytes,
        gpus: cap.gpus,
        allocated_cpu_millis: al.cpu_millis,
        allocated_memory_bytes: al.memory_bytes,
        labels: n.labels.clone().into_iter().collect(),
        cost_per_hour: n.cost_per_hour,
        leases: n.leases,
        registered_at: output::time(n.registered_at_ms),
        ttl_ms: n.ttl_ms,
        last_seen: output::time(n.last_seen_ms),
    }
}

async fn set_draining(g: &Global, name: String, draining: bool) -> anyhow::Result<()> {
    let c = Client::new(g)?;
    let key = new_key();
    let what = if draining {
        "node drain"
    } else {
        "node undrain"
    };
    let r = c
        .call(what, |ch| {
            let req = c.req(pb::SetDrainingRequest {
                idempotency_key: key.clone(),
                name: name.clone(),
                draining,
            });
            async move { NodesClient::new(ch).set_draining(req).await }
        })
        .await?;
    print_node(g, &r.node.unwrap_or_default())
}

/// Parses `key=value` labels.
pub fn parse_labels(ls: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    parse_pairs("--label", "gpu=a100", ls)
}

/// Parses repeated `KEY=VALUE` flags (`--label`, `--env`); `eg` is an example.
pub fn parse_pairs(
    flag: &str,
    eg: &str,
    items: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in items {
        match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => {
                return Err(fail(
                    format!("bad {flag} `{l}`"),
                    "expected key=value",
                    format!("write e.g. {flag} {eg}"),
                ));
            }
        }
    }
    Ok(out)
}

fn unit<T>(
    flag: &str,
    v: &Option<String>,
    parse: fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    match v {
        None => Ok(None),
        Some(s) => parse(s).map(Some).map_err(|e| {
            fail(
                format!("bad {flag} `{s}`"),
                e,
                format!("see `charter --help` for {flag}"),
            )
        }),
    }
}

/// Runs a node verb.
pub async fn run(g: &Global, cmd: NodeCmd) -> anyhow::Result<i32> {
    match cmd {
        NodeCmd::Register(a) => register(g, a).await,
        NodeCmd::Show { name } => show(g, name).await,
        NodeCmd::Drain { name } => set_draining(g, name, true).await.map(|()| 0),
        NodeCmd::Heartbeat { name } => heartbeat(g, name).await,
        NodeCmd::Undrain { name } => set_draining(g, name, false).await.map(|()| 0),
        NodeCmd::Pools { stale } => pools(g, stale).await,
        NodeCmd::Credential { name } => credential(g, name).await,
        NodeCmd::Remove { name } => remove(g, name).await,
        NodeCmd::List { stale } => list_cmd(g, stale).await,
    }
}

/// `node register NAME ...` or `-f node.toml`.
///
/// Over 80 lines: one step per `node register` flag, each with its own error.
async fn register(g: &Global, a: RegisterArgs) -> anyhow::Result<i32> {
    let RegisterArgs {
        name,
        cpu,
        mem,
        disk,
        gpu,
        labels,
        pool,
        cost,
        ttl,
        file,
    } = a;
    let ttl_ms = unit("--ttl", &ttl, units::parse_duration)?.unwrap_or(0);
    let req = match file {
        Some(f) => match charter_config::load_file(&f) {
            Ok(charter_config::AnyConfig::Node(n)) => pb::RegisterNodeRequest {
                idempotency_key: new_key(),
                name: n.name,
                capacity: Some(pb::Resources {
                    cpu_millis: n.cpu_millis,
                    memory_bytes: n.memory_bytes,
                    disk_bytes: n.disk_bytes,
                    gpus: n.gpus,
                }),
                labels: n.labels.into_iter().collect(),
                pool: n.pool,
                cost_per_hour: n.cost_per_hour,
                ttl_ms,
                ..Default::default()
            },
            Ok(other) => {
                return Err(fail(
                    format!("{} is a {} config, not a node", f.display(), other.kind()),
                    "",
                    "add kind = \"node\" to a node file",
                ));
            }
            Err(d) => {
                return Err(fail(
                    format!("{} is not a valid node config", f.display()),
                    d.to_string(),
                    "fix the lines above",
                ));
            }
        },
        None => {
            let Some(name) = name else {
                return Err(fail(
                    "node register needs a NAME",
                    "",
                    "charter node register n1 --cpu 16 --mem 64GiB",
                ));
            };
            if !charter_config::node::valid_name(&name) {
                return Err(fail(
                    format!("bad node name `{name}`"),
                    "expected 1-63 letters, digits, '-', '.' or '_'",
                    "pick another name",
                ));
            }
            let cpu = unit("--cpu", &cpu, units::parse_cores)?
                .ok_or_else(|| fail("node register needs --cpu", "", "e.g. --cpu 16"))?;
            let mem = unit("--mem", &mem, units::parse_size)?
                .ok_or_else(|| fail("node register needs --mem", "", "e.g. --mem 64GiB"))?;
            let disk = unit("--disk", &disk, units::parse_size)?.unwrap_or(0);
            if !(cost.is_finite() && cost >= 0.0) {
                return Err(fail(
                    format!("bad --cost {cost}"),
                    "a price per hour is a number >= 0",
                    "e.g. --cost 0.8",
                ));
            }
            pb::RegisterNodeRequest {
                idempotency_key: new_key(),
                name,
                capacity: Some(pb::Resources {
                    cpu_millis: cpu,
                    memory_bytes: mem,
                    disk_bytes: disk,
                    gpus: gpu,
                }),
                labels: parse_labels(&labels)?.into_iter().collect(),
                pool,
                cost_per_hour: cost,
                ttl_ms,
                ..Default::default()
            }
        }
    };
    let c = Client::new(g)?;
    let r = c
        .call("node register", |ch| {
            let req = c.req(req.clone());
            async move { NodesClient::new(ch).register(req).await }
        })
        .await?;
    let n = r.node.unwrap_or_default();
    if g.json {
        output::json(&node_json(&n))?;
    } else {
        println!("node {} registered", n.name);
    }

    Ok(0)
}

/// `node show NAME`.
async fn show(g: &Global, name: String) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let nodes = list(&c, false).await?;
    match nodes.iter().find(|n| n.name == name) {
        Some(n) => print_node(g, n)?,
        None => {
            return Err(fail(
                format!("node {name} not found"),
                "",
                "`charter node list` shows the nodes",
            ));
        }
    }

    Ok(0)
}

/// `node heartbeat NAME`.
async fn heartbeat(g: &Global, name: String) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let r = c
        .call("node heartbeat", |ch| {
            let req = c.req(pb::HeartbeatRequest { name: name.clone() });
            async move { NodesClient::new(ch).heartbeat(req).await }
        })
        .await?;
    print_node(g, &r.node.unwrap_or_default())?;

    Ok(0)
}

/// `node pools`.
async fn pools(g: &Global, stale: bool) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let r = c
        .call("node pools", |ch| {
            let req = c.req(pb::ListNodesRequest { stale });
            async move { NodesClient::new(ch).pools(req).await }
        })
        .await?;
    let rows: Vec<serde_json::Value> = r
        .pools
        .iter()
        .map(|p| {
            let cap = p.capacity.unwrap_or_default();
            serde_json::json!({
                "name": p.name,
                "nodes": p.nodes,
                "max_nodes": p.max_nodes,
                "cpu_millis": cap.cpu_millis,
                "memory_bytes": cap.memory_bytes,
                "gpus": cap.gpus,
                "labels": p.labels.iter().collect::<BTreeMap<_, _>>(),
                "cost_per_hour": p.cost_per_hour,
                "idle_ms": p.idle_ms,
            })
        })
        .collect();
    if g.json {
        output::json(&serde_json::json!({ "pools": rows }))?;
    } else {
        output::table(
            &["POOL", "NODES", "NEW NODE", "COST/H", "IDLE", "LABELS"],
            r.pools
                .iter()
                .map(|p| {
                    let cap = p.capacity.unwrap_or_default();
                    let labels: BTreeMap<_, _> = p.labels.iter().collect();
                    vec![
                        p.name.clone(),
                        format!("{}/{}", p.nodes, p.max_nodes),
                        format!(
                            "{} cores, {}",
                            units::format_cores(cap.cpu_millis),
                            units::format_size(cap.memory_bytes)
                        ),
                        p.cost_per_hour.to_string(),
                        format!("{}s", p.idle_ms / 1000),
                        labels_text(&labels, ","),
                    ]
                })
                .collect(),
        );
    }

    Ok(0)
}

/// `node credential NAME`.
async fn credential(g: &Global, name: String) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let r = c
        .call("node credential", |ch| {
            let req = c.req(pb::NodeCredentialRequest { name: name.clone() });
            async move { NodesClient::new(ch).credential(req).await }
        })
        .await?;
    if g.json {
        output::json(&serde_json::json!({ "node": name, "credential": r.credential }))?;
    } else {
        println!("{}", r.credential);
    }

    Ok(0)
}

/// `node remove NAME`.
async fn remove(g: &Global, name: String) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let key = new_key();
    let r = c
        .call("node remove", |ch| {
            let req = c.req(pb::RemoveNodeRequest {
                idempotency_key: key.clone(),
                name: name.clone(),
            });
            async move { NodesClient::new(ch).remove(req).await }
        })
        .await?;
    let n = r.node.unwrap_or_default();
    if g.json {
        output::json(&serde_json::json!({ "removed": n.name }))?;
    } else {
        println!("removed node {}", n.name);
    }

    Ok(0)
}

/// `node list`.
async fn list_cmd(g: &Global, stale: bool) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let nodes = list(&c, stale).await?;
    let rows: Vec<NodeJson> = nodes.iter().map(node_json).collect();
    if g.json {
        output::json(&serde_json::json!({ "nodes": rows }))?;
    } else {
        output::table(
            &["NAME", "STATE", "POOL", "CPU", "MEM", "LEASES", "LABELS"],
            rows.iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.state.clone(),
                        n.pool.clone(),
                        format!(
                            "{}/{}",
                            units::format_cores(n.allocated_cpu_millis),
                            units::format_cores(n.cpu_millis)
                        ),
                        format!(
                            "{}/{}",
                            units::format_size(n.allocated_memory_bytes),
                            units::format_size(n.memory_bytes)
                        ),
                        n.leases.to_string(),
                        labels_text(&n.labels, ","),
                    ]
                })
                .collect(),
        );
    }

    Ok(0)
}
