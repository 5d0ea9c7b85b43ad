//! `charter server` and `charter dev`: run a member until SIGINT/SIGTERM.
//!
//! Over 500 lines: the server, dev, Hydra and deployer commands share their flags and start-up steps.

use super::client::{charter_home, dev_token_path};
use super::output::fail;
use charter_agent::run::AgentOptions;
use charter_scheduler::controller::provision::ScalingOptions;
use charter_scheduler::server::{Server, ServerOptions};
use charter_scheduler::service::auth::Tokens;
use clap::Args as ClapArgs;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `charter server`.
#[derive(ClapArgs, Debug)]
pub struct ServerArgs {
    /// This member's raft id (1, 2, 3, …).
    #[arg(long)]
    pub id: u64,
    /// Data directory (created if missing).
    #[arg(long)]
    pub data: PathBuf,
    /// gRPC address for the API and peers.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// HTTP address for /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:7780")]
    pub http: String,
    /// Initial members, `ID=ADDR,ID=ADDR,…` (their gRPC addresses), including this one.
    #[arg(long)]
    pub peers: Option<String>,
    /// Token file: lines `<token> <principal> [admin|hydra|deployer]`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Run without authentication (every caller is admin). Not for production.
    #[arg(long)]
    pub insecure: bool,
    /// Start empty and wait to be added with `charter cluster add`.
    #[arg(long)]
    pub join: bool,
    /// Applied entries between log compactions.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_entries: u64,
    /// Raft tick in milliseconds [default: 50, or `[raft] tick`].
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// A follower campaigns after 1-2x this without a leader [default: 1s,
    /// or `[raft] election_timeout`]; longer rides out lossy, slow links.
    #[arg(long)]
    pub election_timeout: Option<String>,
    /// Time between the leader's heartbeats [default: 100ms, or `[raft]
    /// heartbeat_interval`]; shorter than the election timeout.
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// Server config (`kind = "server"`): pools that grow with demand.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not run Hydra (cron) in this member; run `charter hydra` elsewhere.
    #[arg(long)]
    pub no_hydra: bool,
    /// Do not run the deployer in this member; run `charter deployer` elsewhere.
    #[arg(long)]
    pub no_deployer: bool,
    #[command(flatten)]
    pub history: HistoryArgs,
    /// How long the deployer leases servers before renewing, in ms (tests).
    #[arg(long, default_value_t = 0, hide = true)]
    pub deploy_lease_ms: u64,
}

/// `charter dev`.
#[derive(ClapArgs, Debug)]
pub struct DevArgs {
    /// Data directory (default: ~/.charter/dev, or $CHARTER_HOME/dev).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// HTTP address.
    #[arg(long, default_value = "127.0.0.1:7780")]
    pub http: String,
    /// Token file (default: one generated in the data directory).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Server config (`kind = "server"`): pools that grow with demand.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not start the local agent that offers this machine.
    #[arg(long)]
    pub no_agent: bool,
    /// Serve plaintext gRPC instead of TLS with dev's own CA.
    #[arg(long)]
    pub no_tls: bool,
    /// Do not run Hydra (cron).
    #[arg(long)]
    pub no_hydra: bool,
    /// Do not run the deployer.
    #[arg(long)]
    pub no_deployer: bool,
    #[command(flatten)]
    pub isolation: super::agent::IsolationArgs,
    #[command(flatten)]
    pub history: HistoryArgs,
}

/// What leaves the live state and what history keeps (`server` and `dev`;
/// each overrides the same key of `--config`'s `[history]`).
#[derive(ClapArgs, Debug, Clone)]
pub struct HistoryArgs {
    /// How long an ended lease and its task stay in live state [default: 1h].
    #[arg(long)]
    pub history_retention: Option<String>,
    /// Most ended leases in live state [default: 10000].
    #[arg(long)]
    pub history_max: Option<u64>,
    /// How long a request's idempotency key is honoured [default: 1h].
    #[arg(long)]
    pub idempotency_retention: Option<String>,
    /// Most idempotency keys kept [default: 100000].
    #[arg(long)]
    pub idempotency_max: Option<u64>,
    /// How long this member's history store keeps what left [default: 7d].
    #[arg(long)]
    pub history_keep: Option<String>,
    /// Most this member's history store keeps, in records' bytes (sled's
    /// files take up to about twice that) [default: 32MiB].
    #[arg(long)]
    pub history_max_size: Option<String>,
}

impl HistoryArgs {
    /// The rules and limits: flags, then the file's `[history]`, then defaults.
    fn resolve(
        &self,
        file: &charter_config::server::HistoryConfig,
    ) -> anyhow::Result<(
        charter_scheduler::state::Retention,
        charter_scheduler::controller::HistoryKeep,
    )> {
        use charter_config::units::{parse_duration, parse_size};
        let flag = |name: &str, v: &Option<String>, parse: fn(&str) -> Result<u64, String>| {
            v.as_deref()
                .map(|v| {
                    parse(v)
                        .map_err(|e| fail(format!("bad --{name} `{v}`"), e, "e.g. 1h or 256MiB"))
                })
                .transpose()
        };
        let d = charter_scheduler::state::Retention::default();
        let k = charter_scheduler::controller::HistoryKeep::default();
        let r = charter_scheduler::state::Retention {
            history_ms: flag("history-retention", &self.history_retention, parse_duration)?
                .or(file.retention_ms)
                .unwrap_or(d.history_ms),
            history_max: self
                .history_max
                .or(file.max)
                .unwrap_or(d.history_max)
                .max(1),
            keys_ms: flag(
                "idempotency-retention",
                &self.idempotency_retention,
                parse_duration,
            )?
            .or(file.idempotency_retention_ms)
            .unwrap_or(d.keys_ms),
            keys_max: self
                .idempotency_max
                .or(file.idempotency_max)
                .unwrap_or(d.keys_max),
        };
        let keep = charter_scheduler::controller::HistoryKeep {
            keep_ms: flag("history-keep", &self.history_keep, parse_duration)?
                .or(file.keep_ms)
                .unwrap_or(k.keep_ms),
            max_bytes: flag("history-max-size", &self.history_max_size, parse_size)?
                .or(file.max_size)
                .unwrap_or(k.max_bytes),
        };
        Ok((r, keep))
    }
}

/// `charter deployer`: the deployer on its own, for members started with --no-deployer.
#[derive(ClapArgs, Debug)]
pub struct DeployerArgs {
    /// Where the deployer keeps its mirrors of the apps' repositories.
    #[arg(long)]
    pub work: Option<PathBuf>,
}

/// Runs the deployer standalone against `--server` until interrupted.
pub async fn run_deployer(g: &super::client::Global, a: &DeployerArgs) -> anyhow::Result<i32> {
    init_tracing();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let work = a
        .work
        .clone()
        .unwrap_or_else(|| charter_home().join("deployer"));
    let opts = charter_deployer::controller::Options {
        servers: g.servers.split(',').map(str::to_string).collect(),
        token: super::client::find_token(g),
        only_leader: false,
        work,
        server_lease_ms: 0,
    };
    let h = tokio::spawn(charter_deployer::controller::run(opts, stop));
    tracing::info!(servers = %g.servers, "deployer running standalone");
    until_signalled(stop_tx, h).await
}

/// Waits for Ctrl-C or SIGTERM, then stops a standalone controller.
async fn until_signalled(
    stop: tokio::sync::watch::Sender<bool>,
    running: tokio::task::JoinHandle<()>,
) -> anyhow::Result<i32> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop.send(true);
    let _ = running.await;
    Ok(0)
}

/// The deployer's artifact store as the server's.
struct Artifacts(charter_deployer::store::Store, PathBuf);

impl charter_scheduler::service::Artifacts for Artifacts {
    fn put(
        &self,
        app: &str,
        file: &Path,
        keep: usize,
        pinned: &[String],
    ) -> std::io::Result<String> {
        self.0.put(app, file, keep, pinned)
    }
    fn path(&self, sha256: &str) -> Option<PathBuf> {
        self.0.path(sha256)
    }
    fn incoming(&self) -> PathBuf {
        self.1.clone()
    }
}

fn artifacts(data: &Path) -> anyhow::Result<charter_scheduler::service::ArtifactStore> {
    let root = data.join("artifacts");
    let store = charter_deployer::store::Store::open(&root).map_err(|e| {
        fail(
            "cannot open the artifact store",
            format!("{}: {e}", root.display()),
            "check the data directory's permissions",
        )
    })?;
    Ok(charter_scheduler::service::ArtifactStore(
        std::sync::Arc::new(Artifacts(store, root.join("incoming"))),
    ))
}

/// `charter hydra`: Hydra on its own, for members started with --no-hydra.
#[derive(ClapArgs, Debug)]
pub struct HydraArgs {}

/// Hydra's schedule parser, for the server's `Cron.Apply`.
fn schedule_check() -> Option<charter_scheduler::service::ScheduleChecker> {
    use charter_hydra::schedule::Schedule;
    Some(charter_scheduler::service::ScheduleChecker {
        check: std::sync::Arc::new(charter_hydra::schedule::check),
        upcoming: std::sync::Arc::new(|expr, tz, after, n| {
            let (Ok(s), Some(t)) = (
                Schedule::parse(expr, tz),
                chrono::DateTime::from_timestamp_millis(after),
            ) else {
                return Vec::new();
            };
            s.upcoming(t, n)
                .into_iter()
                .map(|t| t.timestamp_millis())
                .collect()
        }),
    })
}

/// Runs Hydra standalone against `--server` until interrupted.
pub async fn run_hydra(g: &super::client::Global) -> anyhow::Result<i32> {
    init_tracing();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let opts = charter_hydra::controller::Options {
        servers: g.servers.split(',').map(str::to_string).collect(),
        token: super::client::find_token(g),
        only_leader: false,
    };
    let h = tokio::spawn(charter_hydra::controller::run(opts, stop));
    tracing::info!(servers = %g.servers, "hydra running standalone");
    until_signalled(stop_tx, h).await
}

/// The agent `charter dev` runs in its own process: this machine, detected.
fn dev_agent(
    data: &Path,
    name: &str,
    token: Option<String>,
    iso: &super::agent::IsolationArgs,
) -> anyhow::Result<AgentOptions> {
    let (lease_uids, run_as) = iso.parse()?;
    let dir = data.join("agent");
    std::fs::create_dir_all(&dir).map_err(|e| {
        fail(
            format!("cannot create {}", dir.display()),
            e.to_string(),
            "pass a writable --data",
        )
    })?;
    let found = charter_agent::resources::detect(&dir).map_err(|e| {
        fail(
            "cannot detect this machine's resources for the dev agent",
            e.to_string(),
            "pass --no-agent and start `charter agent` with --cpu/--mem/--disk",
        )
    })?;
    Ok(AgentOptions {
        servers: Vec::new(),
        token,
        name: name.to_string(),
        cpu_millis: found.cpu_millis,
        memory_bytes: found.memory_bytes,
        disk_bytes: found.disk_bytes,
        gpus: 0,
        labels: Default::default(),
        pool: "dev".into(),
        cost_per_hour: 0.0,
        ttl: Duration::from_secs(10),
        data: dir,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http: None,
        sandboxes: iso.sandboxes.clone(),
        lease_uids,
        run_as,
    })
}

fn addr(flag: &str, s: &str) -> anyhow::Result<SocketAddr> {
    s.parse().map_err(|e| {
        fail(
            format!("bad {flag} `{s}`"),
            format!("{e}"),
            format!("use IP:PORT, e.g. {flag} 127.0.0.1:7700"),
        )
    })
}

/// Parses `1=127.0.0.1:7701,2=127.0.0.1:7702`.
pub fn parse_peers(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |why: String| {
            fail(
                format!("bad --peers entry `{part}`"),
                why,
                "write ID=IP:PORT pairs separated by commas, e.g. --peers 1=127.0.0.1:7701,2=127.0.0.1:7702",
            )
        };
        let (id, a) = part.split_once('=').ok_or_else(|| bad("no `=`".into()))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{id}` is not a member id (1, 2, 3, …)")))?;
        if id == 0 {
            return Err(bad("member ids start at 1".into()));
        }
        a.trim()
            .parse::<SocketAddr>()
            .map_err(|e| bad(format!("`{a}` is not IP:PORT: {e}")))?;
        if out.insert(id, a.trim().to_string()).is_some() {
            return Err(bad(format!("member {id} is listed twice")));
        }
    }
    Ok(out)
}

/// Reads `--config`: the pools that grow (and the binary local agents run)
/// and the `[history]` table.
/// Election and heartbeat timing: flags, then `--config`'s `[raft]`, then
/// defaults; `(tick ms, election ticks, heartbeat ticks)`.
fn raft_timing(
    a: &ServerArgs,
    mut t: charter_config::server::RaftTiming,
) -> anyhow::Result<(u64, usize, usize)> {
    let dur = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
        v.as_deref()
            .map(|s| {
                charter_config::units::parse_duration(s).map_err(|e| {
                    fail(
                        format!("bad --{flag} {s}"),
                        e,
                        format!("pass e.g. --{flag} 1s"),
                    )
                })
            })
            .transpose()
    };
    if let Some(v) = a.tick_ms {
        t.tick_ms = Some(v);
    }
    if let Some(v) = dur("election-timeout", &a.election_timeout)? {
        t.election_timeout_ms = Some(v);
    }
    if let Some(v) = dur("heartbeat-interval", &a.heartbeat_interval)? {
        t.heartbeat_interval_ms = Some(v);
    }
    t.resolve().map_err(|e| {
        fail(
            "bad raft timing",
            e,
            "set --election-timeout above --heartbeat-interval, both at least --tick-ms",
        )
    })
}

type Config = (
    ScalingOptions,
    charter_config::server::HistoryConfig,
    charter_config::server::RaftTiming,
);

fn server_config(config: Option<&Path>) -> anyhow::Result<Config> {
    let Some(path) = config else {
        return Ok(Default::default());
    };
    let cfg = match charter_config::load_file(path) {
        Ok(charter_config::AnyConfig::Server(c)) => c,
        Ok(other) => {
            return Err(fail(
                format!("--config {} is not a server config", path.display()),
                format!("it is a {} config", other.kind()),
                "put kind = \"server\" at the top of the file, with [[pool]] tables",
            ));
        }
        Err(d) => {
            return Err(fail(
                format!("--config {} is not valid", path.display()),
                d.to_string(),
                "fix the lines named above; `charter validate FILE` checks it",
            ));
        }
    };
    let exe = std::env::current_exe().ok();
    let scaling = ScalingOptions {
        pools: cfg.pools,
        exe,
        ..ScalingOptions::default()
    };
    Ok((scaling, cfg.history, cfg.raft))
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,raft=warn,sled=warn,h2=warn,tower=warn")
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LOG_FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => fmt.with_ansi(colour()).try_init(),
    };
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human lines (colour only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, fields, target, span.
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Sets the format [`init_tracing`] uses (once, from the global flag).
pub fn set_log_format(f: LogFormat) {
    let _ = LOG_FORMAT.set(f);
}

/// Colour only on a terminal, and never when `NO_COLOR` is set
/// (<https://no-color.org>): a log file holds plain text.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(fail(
            format!("data directory {} is not a directory", dir.display()),
            "a file is in the way",
            "pass --data with a directory path",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        fail(
            format!("cannot create data directory {}", dir.display()),
            e.to_string(),
            "pass --data with a directory you can write",
        )
    })?;
    // Only this member's user may read what is kept here (the raft log,
    // the state with agents' secrets and webhook secrets, artifacts).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        fail(
            format!(
                "cannot make data directory {} private (0700)",
                dir.display()
            ),
            e.to_string(),
            "pass --data with a directory you own",
        )
    })?;
    let probe = dir.join(".charter-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| {
        fail(
            format!("data directory {} is not writable", dir.display()),
            e.to_string(),
            "fix its permissions or pass another --data",
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Runs a member until a signal or a fatal error.
pub async fn run_server(a: ServerArgs) -> anyhow::Result<i32> {
    init_tracing();
    let listen = addr("--listen", &a.listen)?;
    let http = addr("--http", &a.http)?;
    if a.id == 0 {
        return Err(fail(
            "bad --id 0",
            "member ids start at 1",
            "pass --id 1 (2, 3, …)",
        ));
    }
    let tokens = match (&a.token_file, a.insecure) {
        (Some(f), _) => Tokens::load(f).map_err(|e| {
            fail(
                "cannot use the token file",
                e,
                "fix the file; each line is `<token> <principal> [admin|hydra|deployer]`",
            )
        })?,
        (None, true) => {
            tracing::warn!(
                "--insecure: no authentication; every caller is an admin. Do not use this in production."
            );
            eprintln!(
                "warning: running with --insecure: no authentication, every caller is an admin"
            );
            Tokens::insecure()
        }
        (None, false) => {
            return Err(fail(
                "refusing to start without authentication",
                "no --token-file was given",
                "pass --token-file FILE (lines `<token> <principal> [admin|hydra|deployer]`), or --insecure for a throwaway cluster",
            ));
        }
    };
    let peers = match &a.peers {
        Some(p) => parse_peers(p)?,
        None => BTreeMap::from([(a.id, listen.to_string())]),
    };
    if !a.join && !peers.contains_key(&a.id) {
        return Err(fail(
            format!("--peers does not list this member (id {})", a.id),
            format!("--peers names {:?}", peers.keys().collect::<Vec<_>>()),
            format!(
                "add {}={} to --peers, or pass --join to be added later",
                a.id, listen
            ),
        ));
    }
    check_data_dir(&a.data)?;
    let (scaling, history, raft) = server_config(a.config.as_deref())?;
    let (retention, history) = a.history.resolve(&history)?;
    let (tick, election, heartbeat) = raft_timing(&a, raft)?;
    let opts = ServerOptions {
        id: a.id,
        data: a.data.clone(),
        listen,
        http,
        peers,
        tokens,
        join: a.join,
        snapshot_entries: a.snapshot_entries.max(1),
        tick: Duration::from_millis(tick),
        timing: (election, heartbeat),
        scaling,
        schedule_check: schedule_check(),
        artifacts: Some(artifacts(&a.data)?),
        http_extra: None,
        retention,
        history,
    };
    let deployer = (!a.no_deployer).then_some(a.deploy_lease_ms);
    serve(opts, None, (!a.no_hydra, deployer)).await
}

/// Over 80 lines: the server command: flags checked in order, each with its own error.
async fn serve(
    mut opts: ServerOptions,
    agent: Option<AgentOptions>,
    (hydra, deployer): (bool, Option<u64>),
) -> anyhow::Result<i32> {
    let data = opts.data.clone();
    let hydra_token = opts.tokens.peer_token();
    // The webhook route talks to this member once it listens.
    let link: charter_deployer::hooks::Link = Default::default();
    opts.http_extra = Some(charter_deployer::hooks::router(link.clone()));
    let mut server = Server::start(opts)
        .await
        .map_err(|e| fail("cannot start the server", e.to_string(), ""))?;
    let own = vec![server.listen.to_string()];
    if let Ok(s) = charter_proto::conn::Servers::new(&own, hydra_token.clone()) {
        let _ = link.set(s);
    }
    tracing::info!(id = server.member.id(), grpc = %server.listen, http = %server.http, data = %data.display(), "charter member serving");
    let (agent_stop, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = agent.map(|mut a| {
        a.servers = vec![server.listen.to_string()];
        tokio::spawn(async move {
            let stop = async {
                let _ = agent_stopped.await;
            };
            if let Err(e) = charter_agent::run::run(a, stop).await {
                tracing::error!(error = %e, "the dev agent stopped");
            }
        })
    });
    // Hydra in this member: it acts only while this member leads.
    let (hydra_stop, hydra_stopped) = tokio::sync::watch::channel(false);
    let hydra = hydra.then(|| {
        let opts = charter_hydra::controller::Options {
            servers: vec![server.listen.to_string()],
            token: hydra_token.clone(),
            only_leader: true,
        };
        tokio::spawn(charter_hydra::controller::run(opts, hydra_stopped.clone()))
    });
    // The deployer in this member: it acts only while this member leads.
    let deployer = deployer.map(|server_lease_ms| {
        let opts = charter_deployer::controller::Options {
            servers: own.clone(),
            token: hydra_token.clone(),
            only_leader: true,
            work: data.join("deployer"),
            server_lease_ms,
        };
        tokio::spawn(charter_deployer::controller::run(opts, hydra_stopped))
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let fatal = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = term.recv() => false,
        _ = server.driver_stopped() => true,
    };
    let status = server.member.status();
    tracing::info!("shutting down");
    let _ = hydra_stop.send(true);
    if let Some(h) = hydra {
        let _ = h.await;
    }
    if let Some(h) = deployer {
        let _ = h.await;
    }
    let _ = agent_stop.send(());
    if let Some(a) = agent {
        let _ = tokio::time::timeout(Duration::from_secs(15), a).await;
    }
    server.shutdown().await.map_err(|e| {
        fail(
            "the member stopped on a fatal error",
            e.to_string(),
            "see the log above; the data directory is left as it was",
        )
    })?;
    if fatal {
        return Err(fail(
            "the member stopped on a fatal error",
            status
                .fatal
                .unwrap_or_else(|| "the raft thread ended".into()),
            "see the log above",
        ));
    }
    Ok(0)
}

fn ensure_dev_tokens(data: &Path) -> anyhow::Result<PathBuf> {
    let file = data.join("tokens");
    let token = match std::fs::read_to_string(&file) {
        Ok(text) => text.split_whitespace().next().map(str::to_string),
        Err(_) => None,
    };
    let token = match token {
        Some(t) => t,
        None => {
            let t = format!("dev-{:032x}", rand::random::<u128>());
            let user = std::env::var("USER").unwrap_or_else(|_| "dev".into());
            std::fs::write(&file, format!("{t} {user} admin\n")).map_err(|e| {
                fail(
                    format!("cannot write {}", file.display()),
                    e.to_string(),
                    "pass a writable --data",
                )
            })?;
            t
        }
    };
    let dev_token = dev_token_path();
    if let Some(dir) = dev_token.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&dev_token, format!("{token}\n")).map_err(|e| {
        fail(
            format!("cannot write {}", dev_token.display()),
            e.to_string(),
            "set CHARTER_HOME to a writable directory",
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    for f in [&file, &dev_token] {
        let _ = std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600));
    }
    Ok(file)
}

/// Runs the one-member dev cluster.
///
/// Over 80 lines: `charter dev` in order: home, token, TLS, member, agent.
pub async fn run_dev(a: DevArgs) -> anyhow::Result<i32> {
    init_tracing();
    let data = a.data.unwrap_or_else(|| charter_home().join("dev"));
    let listen = addr("--listen", &a.listen)?;
    let http = addr("--http", &a.http)?;
    check_data_dir(&data)?;
    let (scaling, history, raft) = server_config(a.config.as_deref())?;
    let (retention, history) = a.history.resolve(&history)?;
    let (tick, election, heartbeat) = raft.resolve().map_err(|e| {
        fail(
            "bad [raft] timing in --config",
            e,
            "fix the [raft] table of the server config",
        )
    })?;
    let token_file = match a.token_file {
        Some(f) => f,
        None => ensure_dev_tokens(&data)?,
    };
    let tokens = Tokens::load(&token_file).map_err(|e| {
        fail(
            "cannot use the token file",
            e,
            "fix it or remove it to get a fresh dev token",
        )
    })?;
    // TLS by default, with a CA of its own the CLI trusts for this address
    // (unless --tls-* flags gave this process its identity already).
    let tls_dir = super::client::dev_tls_dir();
    if !a.no_tls && charter_proto::tls::installed().is_none() {
        let tls = super::tls::init_dev(&tls_dir, &a.listen).map_err(|e| {
            fail(
                "cannot set up dev's TLS",
                e,
                format!(
                    "remove {} to start over, or pass --no-tls",
                    tls_dir.display()
                ),
            )
        })?;
        charter_proto::tls::install(tls);
        eprintln!(
            "charter dev: TLS with the CA {} (the CLI trusts it for --server {})",
            tls_dir.join("ca.pem").display(),
            a.listen
        );
    } else if a.no_tls {
        // A plaintext dev: the CLI must not expect TLS at this address.
        let _ = std::fs::remove_file(tls_dir.join("server"));
    }
    eprintln!(
        "charter dev: data in {}\n  gRPC {listen}, HTTP http://{http}\n  token file {} (the CLI reads the dev token from {})",
        data.display(),
        token_file.display(),
        dev_token_path().display()
    );
    let agent = if a.no_agent {
        None
    } else {
        // The dev agent holds its node's credential, not the admin token.
        let name = super::agent::host_name();
        let credential = tokens.node_credential(&name);
        Some(dev_agent(&data, &name, credential, &a.isolation)?)
    };
    let store = artifacts(&data)?;
    let opts = ServerOptions {
        id: 1,
        data,
        listen,
        http,
        peers: BTreeMap::from([(1, listen.to_string())]),
        tokens,
        join: false,
        snapshot_entries: 10_000,
        tick: Duration::from_millis(tick),
        timing: (election, heartbeat),
        scaling,
        schedule_check: schedule_check(),
        artifacts: Some(store),
        http_extra: None,
        retention,
        history,
    };
    serve(opts, agent, (!a.no_hydra, (!a.no_deployer).then_some(0))).await
}
