//! `charter agent`: offers this machine to the cluster. It registers the
//! node with what it detected (flags override), heartbeats, and exits when
//! stopped (SIGINT/SIGTERM) or when the cluster removes the node.

use super::client::{Global, charter_home, find_token};
use super::output::fail;
use charter_agent::resources;
use charter_agent::run::{AgentOptions, Exit};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::time::Duration;

/// `charter agent`.
#[derive(ClapArgs, Debug)]
pub struct AgentArgs {
    /// Server address(es) to join, comma-separated (default: --server).
    #[arg(long)]
    pub join: Option<String>,
    /// Node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Cores to offer, like 4 or 0.5 (default: detected).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory to offer, like 8GiB (default: detected).
    #[arg(long)]
    pub mem: Option<String>,
    /// Disk to offer, like 100GiB (default: the data directory's filesystem).
    #[arg(long)]
    pub disk: Option<String>,
    /// GPUs to offer.
    #[arg(long, default_value_t = 0)]
    pub gpu: u32,
    /// A label `key=value`; repeat for more.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The node's pool.
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Price per hour.
    #[arg(long, default_value_t = 0.0)]
    pub cost: f64,
    /// Data directory (default: ~/.charter/agent, or $CHARTER_HOME/agent).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Heartbeat TTL: the node is down after this long without a heartbeat.
    #[arg(long, default_value = "10s")]
    pub ttl: String,
    /// Where to serve task logs to the servers (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Serve the agent's metrics at /metrics on this address (IP:PORT);
    /// none by default.
    #[arg(long)]
    pub http: Option<String>,
    #[command(flatten)]
    pub isolation: IsolationArgs,
}

/// Who leases run as and where their sandboxes are (`charter agent`, `charter dev`).
#[derive(ClapArgs, Debug, Clone)]
pub struct IsolationArgs {
    /// Uids (and gids) handed to leases when the agent runs as root: each
    /// live lease gets one of its own.
    #[arg(long, default_value = "61000-61999")]
    pub lease_uids: String,
    /// Run the leases of PRINCIPAL as a fixed system USER (a name, UID or
    /// UID:GID) instead of a uid of their own, e.g. --run-as ann=ann; repeat
    /// for more.
    #[arg(long = "run-as", value_name = "PRINCIPAL=USER")]
    pub run_as: Vec<String>,
    /// Where leases' sandboxes go (default: DATA/leases, or
    /// /var/lib/charter/sandboxes/… when a lease's user cannot reach DATA).
    #[arg(long)]
    pub sandboxes: Option<PathBuf>,
}

impl IsolationArgs {
    /// The parsed uid range and fixed users.
    pub fn parse(
        &self,
    ) -> anyhow::Result<(
        (u32, u32),
        std::collections::BTreeMap<String, charter_agent::users::Identity>,
    )> {
        use charter_agent::users;
        let range = users::parse_range(&self.lease_uids).map_err(|e| {
            fail(
                format!("bad --lease-uids `{}`", self.lease_uids),
                e,
                "pass a range like --lease-uids 61000-61999",
            )
        })?;
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let run_as = users::parse_run_as(&self.run_as, &passwd).map_err(|e| {
            fail(
                "bad --run-as",
                e,
                "pass PRINCIPAL=USER with a user of this machine, like --run-as ann=ann",
            )
        })?;
        Ok((range, run_as))
    }
}

/// This machine's name, if it is a valid node name, else `node`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| charter_config::node::valid_name(s))
        .unwrap_or_else(|| "node".to_string())
}

fn unit<T>(
    flag: &str,
    v: &str,
    parse: fn(&str) -> Result<T, String>,
    eg: &str,
) -> anyhow::Result<T> {
    parse(v).map_err(|e| fail(format!("bad {flag} `{v}`"), e, format!("e.g. {flag} {eg}")))
}

/// Runs the agent until a signal or until its node is removed.
///
/// Over 80 lines: the agent command: flags checked in order, each with its own error, then the agent started.
pub async fn run(g: &Global, a: AgentArgs) -> anyhow::Result<i32> {
    super::server::init_tracing();
    let data = a.data.unwrap_or_else(|| charter_home().join("agent"));
    std::fs::create_dir_all(&data).map_err(|e| {
        fail(
            format!(
                "cannot create the agent's data directory {}",
                data.display()
            ),
            e.to_string(),
            "pass --data with a directory you can write",
        )
    })?;
    let name = a.name.unwrap_or_else(host_name);
    if !charter_config::node::valid_name(&name) {
        return Err(fail(
            format!("bad --name `{name}`"),
            "a node name is 1-63 letters, digits, '-', '.' or '_', starting with a letter or digit",
            "pass --name like n1",
        ));
    }
    let labels = super::node::parse_labels(&a.labels)?;
    if !(a.cost.is_finite() && a.cost >= 0.0) {
        return Err(fail(
            format!("bad --cost {}", a.cost),
            "a price per hour is a number of 0 or more",
            "pass --cost 0.5",
        ));
    }
    use charter_config::units;
    let ttl = unit("--ttl", &a.ttl, units::parse_duration, "10s")?;
    if ttl < 300 {
        return Err(fail(
            format!("bad --ttl {}", a.ttl),
            "a TTL under 300ms leaves no room for a heartbeat",
            "pass --ttl 10s",
        ));
    }
    let cpu = a
        .cpu
        .as_deref()
        .map(|v| unit("--cpu", v, units::parse_cores, "4"))
        .transpose()?;
    let mem = a
        .mem
        .as_deref()
        .map(|v| unit("--mem", v, units::parse_size, "8GiB"))
        .transpose()?;
    let disk = a
        .disk
        .as_deref()
        .map(|v| unit("--disk", v, units::parse_size, "100GiB"))
        .transpose()?;
    let detected = if cpu.is_some() && mem.is_some() && disk.is_some() {
        resources::Detected::default()
    } else {
        resources::detect(&data).map_err(|e| {
            fail(
                "cannot detect this machine's resources",
                e.to_string(),
                "pass --cpu, --mem and --disk",
            )
        })?
    };
    let servers: Vec<String> = a
        .join
        .as_deref()
        .unwrap_or(&g.servers)
        .split(',')
        .map(str::to_string)
        .collect();
    let (lease_uids, run_as) = a.isolation.parse()?;
    let opts = AgentOptions {
        sandboxes: a.isolation.sandboxes.clone(),
        lease_uids,
        run_as,
        servers,
        token: find_token(g),
        name: name.clone(),
        cpu_millis: cpu.unwrap_or(detected.cpu_millis),
        memory_bytes: mem.unwrap_or(detected.memory_bytes),
        disk_bytes: disk.unwrap_or(detected.disk_bytes),
        gpus: a.gpu,
        labels,
        pool: a.pool,
        cost_per_hour: a.cost,
        ttl: Duration::from_millis(ttl),
        data,
        listen: a.listen.parse().map_err(|e| {
            fail(
                format!("bad --listen `{}`", a.listen),
                format!("{e}"),
                "use IP:PORT, e.g. --listen 127.0.0.1:0",
            )
        })?,
        http: match &a.http {
            None => None,
            Some(h) => Some(h.parse().map_err(|e| {
                fail(
                    format!("bad --http `{h}`"),
                    format!("{e}"),
                    "use IP:PORT, e.g. --http 127.0.0.1:7790",
                )
            })?),
        },
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match charter_agent::run::run(opts, stop).await {
        Ok(Exit::Stopped) => {
            eprintln!("charter agent: node {name}: stopped by a signal; exiting");
            Ok(0)
        }
        Ok(Exit::Removed) => {
            eprintln!("charter agent: node {name} was removed from the cluster; exiting");
            Ok(0)
        }
        Err(e) => Err(fail(
            e.what,
            e.why,
            "check the token (an agent needs its node credential, `charter node credential NAME`, or an admin token) and the flags",
        )),
    }
}
