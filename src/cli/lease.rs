//! `charter lease request|list|show|release`.

use super::client::{Client, Global, new_key};
use super::node::parse_labels;
use super::output::{self, fail};
use charter_config::units;
use charter_proto as pb;
use charter_proto::leases_client::LeasesClient;
use clap::Subcommand;
use serde::Serialize;
use std::path::PathBuf;

/// Lease verbs.
#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Ask for capacity for a time; prints the lease id, node, expiry and fencing token.
    Request {
        /// Cores, e.g. 4 or 0.5.
        #[arg(long)]
        cpu: Option<String>,
        /// Memory, e.g. 8GiB.
        #[arg(long)]
        mem: Option<String>,
        /// GPUs.
        #[arg(long)]
        gpu: Option<u32>,
        /// A label the node must have, `key=value`; repeat for more.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long, e.g. 30m or 2h.
        #[arg(long = "for")]
        duration: Option<String>,
        /// Why (shown in listings).
        #[arg(long, default_value = "")]
        reason: String,
        /// Idempotency key (default: a fresh one); the same key never grants twice.
        #[arg(long)]
        key: Option<String>,
        /// Read the request from a lease.toml; flags override it.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// List your granted leases (admins see everyone's).
    List {
        /// Include ended leases.
        #[arg(long)]
        all: bool,
        /// Read local state without a ReadIndex round (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Show one lease.
    Show {
        /// The lease id.
        id: u64,
    },
    /// End a lease early.
    Release {
        /// The lease id.
        id: u64,
    },
}

/// A lease in `--json` output: a stable interface.
#[derive(Serialize)]
pub struct LeaseJson {
    id: u64,
    principal: String,
    node: String,
    state: String,
    cpu_millis: u64,
    memory_bytes: u64,
    gpus: u32,
    granted_at: String,
    expires_at: String,
    ended_at: Option<String>,
    fencing_token: u64,
    reason: String,
}

fn lease_json(l: &pb::Lease) -> LeaseJson {
    let r = l.resources.unwrap_or_default();
    LeaseJson {
        id: l.id,
        principal: l.principal.clone(),
        node: l.node.clone(),
        state: l.state.clone(),
        cpu_millis: r.cpu_millis,
        memory_bytes: r.memory_bytes,
        gpus: r.gpus,
        granted_at: output::time(l.granted_at_ms),
        expires_at: output::time(l.expires_at_ms),
        ended_at: (l.ended_at_ms != 0).then(|| output::time(l.ended_at_ms)),
        fencing_token: l.fencing_token,
        reason: l.reason.clone(),
    }
}

fn print_lease(g: &Global, l: &pb::Lease) -> anyhow::Result<()> {
    let j = lease_json(l);
    if g.json {
        return output::json(&j);
    }
    println!("lease {} {} on {}", j.id, j.state, j.node);
    println!("  expires  {}", j.expires_at);
    println!("  fencing  {}", j.fencing_token);
    println!(
        "  holds    {} cores, {}{}",
        units::format_cores(j.cpu_millis),
        units::format_size(j.memory_bytes),
        if j.gpus > 0 {
            format!(", {} gpus", j.gpus)
        } else {
            String::new()
        }
    );
    if !j.reason.is_empty() {
        println!("  reason   {}", j.reason);
    }
    Ok(())
}

fn parse_flag<T>(flag: &str, v: &str, parse: fn(&str) -> Result<T, String>) -> anyhow::Result<T> {
    parse(v).map_err(|e| {
        fail(
            format!("bad {flag} `{v}`"),
            e,
            format!("see `charter lease request --help` for {flag}"),
        )
    })
}

/// Runs a lease verb.
pub async fn run(g: &Global, cmd: LeaseCmd) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    match cmd {
        LeaseCmd::Request {
            cpu,
            mem,
            gpu,
            labels,
            duration,
            reason,
            key,
            file,
        } => {
            let mut base = match &file {
                Some(f) => match charter_config::load_file(f) {
                    Ok(charter_config::AnyConfig::Lease(l)) => l,
                    Ok(other) => {
                        return Err(fail(
                            format!(
                                "{} is a {} config, not a lease request",
                                f.display(),
                                other.kind()
                            ),
                            "",
                            "pass a lease.toml",
                        ));
                    }
                    Err(d) => {
                        return Err(fail(
                            format!("{} is not a valid lease request", f.display()),
                            d.to_string(),
                            "fix the lines above",
                        ));
                    }
                },
                None => charter_config::lease::LeaseConfig::default(),
            };
            if let Some(v) = &cpu {
                base.cpu_millis = parse_flag("--cpu", v, units::parse_cores)?;
            }
            if let Some(v) = &mem {
                base.memory_bytes = parse_flag("--mem", v, units::parse_size)?;
            }
            if let Some(v) = gpu {
                base.gpus = v;
            }
            if let Some(v) = &duration {
                base.duration_ms = parse_flag("--for", v, units::parse_duration)?;
            }
            base.labels.extend(parse_labels(&labels)?);
            if !reason.is_empty() {
                base.reason = reason;
            }
            if base.duration_ms == 0 {
                return Err(fail(
                    "lease request needs a duration",
                    "no --for was given",
                    "add e.g. --for 2h",
                ));
            }
            let req = pb::LeaseRequest {
                idempotency_key: key.unwrap_or_else(new_key),
                resources: Some(pb::Resources {
                    cpu_millis: base.cpu_millis,
                    memory_bytes: base.memory_bytes,
                    disk_bytes: base.disk_bytes,
                    gpus: base.gpus,
                }),
                constraints: base
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
                duration_ms: base.duration_ms,
                reason: base.reason,
            };
            let r = c
                .call("lease request", |ch| {
                    let req = c.req(req.clone());
                    async move { LeasesClient::new(ch).request(req).await }
                })
                .await?;
            print_lease(g, &r.lease.unwrap_or_default())?;
        }
        LeaseCmd::List { all, stale } => {
            let r = c
                .call("lease list", |ch| {
                    let req = c.req(pb::ListLeasesRequest { all, stale });
                    async move { LeasesClient::new(ch).list(req).await }
                })
                .await?;
            let rows: Vec<LeaseJson> = r.leases.iter().map(lease_json).collect();
            if g.json {
                output::json(&serde_json::json!({ "leases": rows }))?;
            } else {
                output::table(
                    &[
                        "ID",
                        "STATE",
                        "NODE",
                        "PRINCIPAL",
                        "CPU",
                        "MEM",
                        "EXPIRES",
                        "FENCING",
                    ],
                    rows.iter()
                        .map(|l| {
                            vec![
                                l.id.to_string(),
                                l.state.clone(),
                                l.node.clone(),
                                l.principal.clone(),
                                units::format_cores(l.cpu_millis),
                                units::format_size(l.memory_bytes),
                                l.expires_at.clone(),
                                l.fencing_token.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        LeaseCmd::Show { id } => {
            let r = c
                .call("lease show", |ch| {
                    let req = c.req(pb::ShowLeaseRequest { id });
                    async move { LeasesClient::new(ch).show(req).await }
                })
                .await?;
            print_lease(g, &r.lease.unwrap_or_default())?;
        }
        LeaseCmd::Release { id } => {
            let key = new_key();
            let r = c
                .call("lease release", |ch| {
                    let req = c.req(pb::ReleaseLeaseRequest {
                        idempotency_key: key.clone(),
                        id,
                    });
                    async move { LeasesClient::new(ch).release(req).await }
                })
                .await?;
            print_lease(g, &r.lease.unwrap_or_default())?;
        }
    }
    Ok(0)
}
