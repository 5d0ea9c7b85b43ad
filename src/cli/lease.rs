//! `charter lease request|list|show|renew|release|revoke|why`.
//!
//! Over 500 lines: every lease verb and its output.

use super::client::{Client, Global, new_key};
use super::output::{self, fail};
use charter_config::constraint::Constraint;
use charter_config::states::LeaseState;
use charter_config::units;
use charter_proto as pb;
use charter_proto::leases_client::LeasesClient;
use clap::Subcommand;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// Lease verbs.
#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Ask for capacity for a time; prints the lease id, nodes, expiry, fencing token and cost.
    #[command(
        after_help = "Examples:\n  charter lease request --cpu 4 --mem 8GiB --for 2h\n  charter lease request --cpu 1 --label gpu=a100 --for 30m --wait 10m\n  charter lease request -f lease.toml --key nightly-2026-12-02"
    )]
    Request {
        /// What to ask for.
        #[command(flatten)]
        args: Box<RequestArgs>,
        /// Read the request from a lease.toml; flags override it.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// List your live leases (admins see everyone's).
    List {
        /// Include ended leases.
        #[arg(long)]
        all: bool,
        /// Only leases in this state (pending, granted, released, expired, revoked, lost, timed_out).
        #[arg(long)]
        state: Option<String>,
        /// Read local state without a ReadIndex round (may be stale).
        #[arg(long)]
        stale: bool,
        /// Only the lease your request with this idempotency key made
        /// (`lease request --key`, or the key an `Unavailable` error printed).
        #[arg(long)]
        key: Option<String>,
    },
    /// Show one lease.
    Show {
        /// The lease id.
        id: u64,
    },
    /// Extend a lease to now + D, up to its max total.
    Renew {
        /// The lease id.
        id: u64,
        /// How long from now, e.g. 1h (default: the lease's own duration).
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// End a lease early, or cancel a pending request.
    Release {
        /// The lease id.
        id: u64,
    },
    /// End anyone's lease at once (admin).
    Revoke {
        /// The lease id.
        id: u64,
    },
    /// Explain a pending request node by node.
    Why {
        /// The lease id.
        id: u64,
    },
    /// Run a command inside a granted lease (the shell amp): streams its
    /// output and exits with its exit code.
    Exec {
        /// The lease id.
        id: u64,
        /// An environment variable `KEY=VALUE`; repeat for more.
        #[arg(long = "env")]
        env: Vec<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// `charter lease request`.
#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    /// Cores per node, e.g. 4 or 0.5.
    #[arg(long)]
    cpu: Option<String>,
    /// Memory per node, e.g. 8GiB.
    #[arg(long)]
    mem: Option<String>,
    /// GPUs per node.
    #[arg(long)]
    gpu: Option<u32>,
    /// A label the node must have, `key=value`; repeat for more.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// A constraint: key=value, key!=value, "key in (a,b)", key, !key, key>=1.2, key<2.
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// How long, e.g. 30m or 2h.
    #[arg(long = "for")]
    duration: Option<String>,
    /// Renewals may extend the lease up to this long after its grant (default: --for).
    #[arg(long)]
    max_total: Option<String>,
    /// Nodes, all or none.
    #[arg(long)]
    count: Option<u32>,
    /// Wait up to D in the queue, showing a live status, until granted.
    #[arg(long)]
    wait: Option<String>,
    /// Queue priority; higher goes first.
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Only nodes at or under this price per hour.
    #[arg(long)]
    max_cost: Option<f64>,
    /// binpack (default), spread or cheapest.
    #[arg(long)]
    prefer: Option<charter_config::spec::Prefer>,
    /// Finish by this time (RFC 3339, or +D from now, e.g. +6h): waits for the
    /// cheapest capacity while the deadline allows, then takes any price.
    #[arg(long)]
    deadline: Option<String>,
    /// Why (shown in listings).
    #[arg(long)]
    reason: Option<String>,
    /// Idempotency key (default: a fresh one); the same key never grants twice.
    #[arg(long)]
    key: Option<String>,
}

/// A lease in `--json` output: a stable interface.
#[derive(Serialize)]
pub struct LeaseJson {
    id: u64,
    principal: String,
    nodes: Vec<String>,
    state: String,
    cpu_millis: u64,
    memory_bytes: u64,
    gpus: u32,
    gpu_ids: Vec<String>,
    constraints: Vec<String>,
    priority: i32,
    requested_at: String,
    wait_until: String,
    granted_at: Option<String>,
    expires_at: Option<String>,
    ended_at: Option<String>,
    max_total_ms: u64,
    fencing_token: u64,
    cost_per_hour: f64,
    cost: f64,
    deadline: Option<String>,
    reason: String,
}

fn opt_time(ms: i64, present: bool) -> Option<String> {
    present.then(|| output::time(ms))
}

fn lease_json(l: &pb::Lease) -> LeaseJson {
    let r = l.resources.unwrap_or_default();
    let granted = l.fencing_token != 0;
    LeaseJson {
        id: l.id,
        principal: l.principal.clone(),
        nodes: l.nodes.clone(),
        state: l.state.clone(),
        cpu_millis: r.cpu_millis,
        memory_bytes: r.memory_bytes,
        gpus: r.gpus,
        gpu_ids: l.gpu_ids.clone(),
        constraints: l.constraints.clone(),
        priority: l.priority,
        requested_at: output::time(l.requested_at_ms),
        wait_until: output::time(l.wait_until_ms),
        granted_at: opt_time(l.granted_at_ms, granted),
        expires_at: opt_time(l.expires_at_ms, granted),
        ended_at: opt_time(l.ended_at_ms, l.ended_at_ms != 0),
        max_total_ms: l.max_total_ms,
        fencing_token: l.fencing_token,
        cost_per_hour: l.cost_per_hour,
        cost: l.cost,
        deadline: opt_time(l.deadline_ms, l.deadline_ms != 0),
        reason: l.reason.clone(),
    }
}

fn print_lease(g: &Global, l: &pb::Lease) -> anyhow::Result<()> {
    let j = lease_json(l);
    if g.json {
        return output::json(&j);
    }
    if j.nodes.is_empty() {
        println!("lease {} {}", j.id, j.state);
        println!("  waits until {}", j.wait_until);
    } else {
        println!("lease {} {} on {}", j.id, j.state, j.nodes.join(", "));
        println!("  expires  {}", j.expires_at.clone().unwrap_or_default());
        println!("  fencing  {}", j.fencing_token);
        println!(
            "  cost     {:.4}/h ({:.4} for the lease)",
            j.cost_per_hour, j.cost
        );
    }
    println!(
        "  holds    {} cores, {}{} per node",
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

fn load_lease(
    file: Option<&std::path::Path>,
) -> anyhow::Result<charter_config::lease::LeaseConfig> {
    Ok(match file {
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
    })
}

/// The wire request: `base` (from a file, or defaults) with the flags on top.
pub fn build_request(
    a: RequestArgs,
    mut base: charter_config::lease::LeaseConfig,
) -> anyhow::Result<pb::LeaseRequest> {
    if let Some(v) = &a.cpu {
        base.cpu_millis = parse_flag("--cpu", v, units::parse_cores)?;
    }
    if let Some(v) = &a.mem {
        base.memory_bytes = parse_flag("--mem", v, units::parse_size)?;
    }
    if let Some(v) = a.gpu {
        base.gpus = v;
    }
    if let Some(v) = &a.duration {
        base.duration_ms = parse_flag("--for", v, units::parse_duration)?;
    }
    if let Some(v) = &a.max_total {
        base.max_total_ms = parse_flag("--max-total", v, units::parse_duration)?;
    }
    if let Some(v) = &a.wait {
        base.wait_ms = parse_flag("--wait", v, units::parse_duration)?;
    }
    base.labels.extend(super::node::parse_labels(&a.labels)?);
    for c in &a.constraints {
        Constraint::parse(c).map_err(|e| {
            fail(
                format!("bad --constraint `{c}`"),
                e,
                "e.g. --constraint 'zone in (a,b)'",
            )
        })?;
        base.constraints.push(c.clone());
    }
    if base.duration_ms == 0 {
        return Err(fail(
            "lease request needs a duration",
            "no --for was given",
            "add e.g. --for 2h",
        ));
    }
    let mut spec = base
        .spec()
        .map_err(|e| fail("bad constraint", e, "e.g. --constraint 'zone in (a,b)'"))?;
    if let Some(v) = a.reason {
        spec.reason = v;
    }
    if let Some(v) = a.count {
        spec.count = v;
    }
    if let Some(v) = a.priority {
        spec.priority = v;
    }
    if let Some(v) = a.max_cost {
        spec.max_cost_per_hour = Some(v);
    }
    if let Some(v) = a.prefer {
        spec.prefer = v;
    }
    spec.deadline = a.deadline.as_deref().map(parse_deadline).transpose()?;
    Ok(pb::LeaseRequest {
        idempotency_key: a.key.unwrap_or_else(new_key),
        ..pb::LeaseRequest::from(&spec)
    })
}

/// `+6h` from now, or an RFC 3339 time.
fn parse_deadline(s: &str) -> anyhow::Result<i64> {
    let bad = |why: String| {
        fail(
            format!("bad --deadline `{s}`"),
            why,
            "give an RFC 3339 time like 2026-11-23T06:00:00Z, or +6h",
        )
    };
    if let Some(d) = s.strip_prefix('+') {
        let ms = units::parse_duration(d).map_err(bad)?;
        return Ok(chrono::Utc::now().timestamp_millis() + ms as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| bad(e.to_string()))
}

/// Releases (the holder) or revokes (an admin) a lease, with one
/// idempotency key across retries.
async fn end_lease(c: &Client, id: u64, revoke: bool) -> anyhow::Result<pb::Lease> {
    let key = new_key();
    let what = if revoke {
        "lease revoke"
    } else {
        "lease release"
    };
    let r = c
        .call(what, |ch| {
            let req = c.req(pb::ReleaseLeaseRequest {
                idempotency_key: key.clone(),
                id,
            });
            async move {
                let mut client = LeasesClient::new(ch);
                if revoke {
                    client.revoke(req).await
                } else {
                    client.release(req).await
                }
            }
        })
        .await?;
    Ok(r.lease.unwrap_or_default())
}

async fn show(c: &Client, id: u64) -> anyhow::Result<pb::Lease> {
    let r = c
        .call("lease show", |ch| {
            let req = c.req(pb::ShowLeaseRequest { id });
            async move { LeasesClient::new(ch).show(req).await }
        })
        .await?;
    Ok(r.lease.unwrap_or_default())
}

async fn why(c: &Client, id: u64) -> anyhow::Result<pb::WhyReply> {
    c.call("lease why", |ch| {
        let req = c.req(pb::ShowLeaseRequest { id });
        async move { LeasesClient::new(ch).why(req).await }
    })
    .await
}

/// Waits for a pending lease, with a one-line status on stderr, until it is
/// granted or gives up.
async fn wait_for_grant(g: &Global, c: &Client, mut l: pb::Lease) -> anyhow::Result<pb::Lease> {
    use std::io::IsTerminal;
    // A live status line only on a terminal (never into a pipe or a file).
    let tty = !g.json && std::io::stderr().is_terminal();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let interrupted = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => 130,
            _ = term.recv() => 143,
        }
    };
    tokio::pin!(interrupted);
    // Woken by this principal's lease events (a grant, a release that
    // frees room, a timeout), not by polling.
    let mut wake = super::events::Wake::on(g, &["lease", "node"]);
    while state(&l) == LeaseState::Pending {
        if tty {
            let w = why(c, l.id).await.map(|w| w.summary).unwrap_or_default();
            let mut e = std::io::stderr();
            let _ = write!(
                e,
                "\r\x1b[2Klease {} pending until {}: {}",
                l.id,
                output::time(l.wait_until_ms),
                w
            );
            let _ = e.flush();
        }
        tokio::select! {
            code = &mut interrupted => {
                // Like salloc: a request nobody waits for any more is
                // given back, so it never holds capacity unused.
                if tty {
                    eprintln!();
                }
                let id = l.id;
                match end_lease(c, id, false).await {
                    Ok(r) => eprintln!("interrupted: lease request {id} given back ({})", r.state),
                    Err(e) => eprintln!(
                        "interrupted, but lease request {id} could not be given back: {e}; release it with `charter lease release {id}`"
                    ),
                }
                std::process::exit(code);
            }
            _ = wake.next() => {}
        }
        l = show(c, l.id).await?;
    }
    if tty {
        eprintln!("\r\x1b[2Klease {} {}", l.id, l.state);
    }
    Ok(l)
}

/// Runs `argv` in lease `id` and returns its exit code.
async fn exec(c: &Client, id: u64, env: &[String], argv: Vec<String>) -> anyhow::Result<i32> {
    let vars: std::collections::HashMap<String, String> =
        super::node::parse_pairs("--env", "MODE=fast", env)?
            .into_iter()
            .collect();
    let mut s = c
        .call("lease exec", |ch| {
            let req = c.req(pb::ExecRequest {
                lease_id: id,
                argv: argv.clone(),
                env: vars.clone(),
            });
            async move { LeasesClient::new(ch).exec(req).await }
        })
        .await?;
    loop {
        match s.message().await {
            Ok(Some(o)) => match o.stream.as_str() {
                "stderr" => std::io::stderr().write_all(&o.data)?,
                "exit" => return Ok(o.exit_code.unwrap_or(-1)),
                _ => {
                    std::io::stdout().write_all(&o.data)?;
                    std::io::stdout().flush()?;
                }
            },
            Ok(None) => {
                return Err(fail(
                    "lease exec ended without an exit code",
                    "the agent or the server went away while the command ran",
                    "check `charter lease show` and the node; the command may have run",
                ));
            }
            Err(e) => return Err(super::client::status_error("lease exec", "", &e).into()),
        }
    }
}

/// Runs a lease verb.
pub async fn run(g: &Global, cmd: LeaseCmd) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    match cmd {
        LeaseCmd::Request { args, file } => request(g, &c, args, file).await,
        LeaseCmd::List {
            all,
            state,
            stale,
            key,
        } => list(g, &c, all, state, stale, key).await,
        LeaseCmd::Show { id } => print_lease(g, &show(&c, id).await?).map(|()| 0),
        LeaseCmd::Renew { id, duration } => renew(g, &c, id, duration).await,
        LeaseCmd::Release { id } => print_lease(g, &end_lease(&c, id, false).await?).map(|()| 0),
        LeaseCmd::Revoke { id } => print_lease(g, &end_lease(&c, id, true).await?).map(|()| 0),
        LeaseCmd::Exec { id, env, command } => exec(&c, id, &env, command).await,
        LeaseCmd::Why { id } => why_cmd(g, &c, id).await,
    }
}

/// `lease request`: with `--wait`, follows the request until granted.
async fn request(
    g: &Global,
    c: &Client,
    args: Box<RequestArgs>,
    file: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let req = build_request(*args, load_lease(file.as_deref())?)?;
    let key = req.idempotency_key.clone();
    let r = c
        .call_keyed(
            "lease request",
            &key,
            &format!("`charter lease list --key {key}`"),
            |ch| {
                let req = c.req(req.clone());
                async move { LeasesClient::new(ch).request(req).await }
            },
        )
        .await?;
    let mut l = r.lease.unwrap_or_default();
    if state(&l) == LeaseState::Pending {
        l = wait_for_grant(g, c, l).await?;
    }
    print_lease(g, &l)?;
    if state(&l) != LeaseState::Granted {
        return Ok(1);
    }

    Ok(0)
}

/// `lease list`.
async fn list(
    g: &Global,
    c: &Client,
    all: bool,
    state: Option<String>,
    stale: bool,
    key: Option<String>,
) -> anyhow::Result<i32> {
    let states = charter_scheduler::state::LeaseState::NAMES;
    if let Some(st) = state.as_deref().filter(|s| !states.contains(s)) {
        return Err(fail(
            format!("bad --state `{st}`"),
            "not a lease state",
            format!("use one of {}", states.join(", ")),
        ));
    }
    let r = c
        .call("lease list", |ch| {
            let req = c.req(pb::ListLeasesRequest {
                all: all || state.is_some(),
                stale,
                key: key.clone().unwrap_or_default(),
            });
            async move { LeasesClient::new(ch).list(req).await }
        })
        .await?;
    let rows: Vec<LeaseJson> = r
        .leases
        .iter()
        .filter(|l| state.as_ref().is_none_or(|s| *s == l.state))
        .map(lease_json)
        .collect();
    if g.json {
        output::json(&serde_json::json!({ "leases": rows }))?;
    } else {
        output::table(
            &[
                "ID",
                "STATE",
                "NODES",
                "PRINCIPAL",
                "CPU",
                "MEM",
                "EXPIRES",
                "FENCING",
                "COST/H",
            ],
            rows.iter()
                .map(|l| {
                    vec![
                        l.id.to_string(),
                        l.state.clone(),
                        l.nodes.join(","),
                        l.principal.clone(),
                        units::format_cores(l.cpu_millis),
                        units::format_size(l.memory_bytes),
                        l.expires_at.clone().unwrap_or_else(|| "-".into()),
                        l.fencing_token.to_string(),
                        format!("{:.2}", l.cost_per_hour),
                    ]
                })
                .collect(),
        );
    }

    Ok(0)
}

/// `lease renew ID [--for D]`.
async fn renew(g: &Global, c: &Client, id: u64, duration: Option<String>) -> anyhow::Result<i32> {
    let duration_ms = match duration {
        Some(d) => parse_flag("--for", &d, units::parse_duration)?,
        None => {
            let l = show(c, id).await?;
            (l.expires_at_ms - l.granted_at_ms).max(1) as u64
        }
    };
    let key = new_key();
    let r = c
        .call("lease renew", |ch| {
            let req = c.req(pb::RenewLeaseRequest {
                idempotency_key: key.clone(),
                id,
                duration_ms,
            });
            async move { LeasesClient::new(ch).renew(req).await }
        })
        .await?;
    let l = r.lease.unwrap_or_default();
    // Say so when the lease got less than asked (its max total).
    let asked = chrono::Utc::now().timestamp_millis() + duration_ms as i64;
    if l.expires_at_ms + 1_000 < asked {
        eprintln!(
            "note: lease {id} now ends at {}, not {}: its max total is {} from its grant (set --max-total on a request to renew longer)",
            output::time(l.expires_at_ms),
            output::time(asked),
            units::format_duration(l.max_total_ms)
        );
    }
    print_lease(g, &l)?;

    Ok(0)
}

/// `lease why ID`.
async fn why_cmd(g: &Global, c: &Client, id: u64) -> anyhow::Result<i32> {
    let w = why(c, id).await?;
    if g.json {
        output::json(
            &serde_json::json!({"state": w.state, "summary": w.summary, "reasons": w.reasons}),
        )?;
    } else {
        println!("lease {id}: {}", w.summary);
        for r in &w.reasons {
            println!("  {r}");
        }
    }

    Ok(0)
}

/// A lease's state from the wire (one this build does not know: pending).
fn state(l: &pb::Lease) -> LeaseState {
    l.state.parse().unwrap_or_default()
}
