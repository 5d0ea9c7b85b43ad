//! The command line: `charter <noun> <verb>`. Global flags: `--server`
//! (env `CHARTER_SERVER`, a comma-separated list tried in order), `--token`
//! (env `CHARTER_TOKEN`, else the dev token), `--json`.

mod agent;
mod audit;
mod bench;
mod bench_agent;
mod bench_deploy;
mod bench_etcd;
mod bench_locks;
mod bench_soak;
mod client;
mod cluster;
mod cron;
mod deploy;
mod events;
mod lease;
mod lock;
mod node;
pub mod output;
mod quota;
mod server;
mod task;
mod tls;
mod validate;

use clap::{Parser, Subcommand};

/// Charter: a lease-based cluster scheduler and deploy daemon.
#[derive(Parser, Debug)]
#[command(name = "charter", version, about, propagate_version = true)]
pub struct Args {
    /// Server gRPC address(es), comma-separated; tried in order.
    #[arg(
        long,
        global = true,
        env = "CHARTER_SERVER",
        hide_env_values = true,
        default_value = "127.0.0.1:7700"
    )]
    pub server: String,
    /// API token (else the dev token written by `charter dev`).
    #[arg(long, global = true, env = "CHARTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA (PEM): speak TLS and trust only certificates it signed.
    #[arg(long, global = true, env = "CHARTER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// This party's certificate (PEM), presented to the other side; servers and agents need one.
    #[arg(long, global = true, env = "CHARTER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, global = true, env = "CHARTER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Machine-readable JSON output (snake_case fields).
    #[arg(long, global = true)]
    pub json: bool,
    /// How servers, agents and controllers log to stderr: text (plain
    /// when stderr is not a terminal) or json (one object per line).
    #[arg(long, global = true, env = "CHARTER_LOG_FORMAT", value_enum, default_value_t = server::LogFormat::Text)]
    pub log_format: server::LogFormat,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The nouns.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a cluster member.
    #[command(
        after_help = "Examples:\n  charter server --id 1 --data /var/lib/charter --listen 10.0.0.1:7700 --http 10.0.0.1:7800 --peers 1=10.0.0.1:7700,2=10.0.0.2:7700,3=10.0.0.3:7700 --token-file tokens\n  charter server ... --config server.toml --election-timeout 2s"
    )]
    Server(server::ServerArgs),
    /// Offer this machine to the cluster: register, heartbeat, run leases' work.
    #[command(
        after_help = "Examples:\n  charter agent --join 10.0.0.1:7700,10.0.0.2:7700 --label gpu=a100\n  charter agent --join 127.0.0.1:7700 --cpu 2 --mem 4GiB --ttl 10s"
    )]
    Agent(agent::AgentArgs),
    /// Run a one-member cluster for local use, with data in a default directory.
    #[command(
        after_help = "Examples:\n  charter dev\n  charter dev --no-agent --data /tmp/charter-dev"
    )]
    Dev(server::DevArgs),
    /// Run Hydra (cron) on its own, for members started with --no-hydra.
    Hydra(server::HydraArgs),
    /// Run the deployer on its own, for members started with --no-deployer.
    Deployer(server::DeployerArgs),
    /// Cluster membership and status.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter cluster status\n  charter cluster add 4 10.0.0.4:7700"
    )]
    Cluster(cluster::ClusterCmd),
    /// Nodes: the servers that offer capacity.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter node list\n  charter node drain n1\n  charter node remove n1"
    )]
    Node(node::NodeCmd),
    /// Leases: time-bounded claims on a node's capacity.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter lease request --cpu 4 --label gpu=a100 --for 2h --wait 10m\n  charter lease renew 42 --for 1h\n  charter lease exec 42 -- nvidia-smi"
    )]
    Lease(lease::LeaseCmd),
    /// Tasks: work run by an agent in a lease of its own.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter task submit --cpu 1 -- ./train.sh\n  charter task submit --amp service --port http --health-http http/healthz -- python3 -m http.server '${PORT}'\n  charter task logs 7 --follow"
    )]
    Task(task::TaskCmd),
    /// Named locks and semaphores with fencing tokens; `lock run` runs a command while holding one.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter lock run nightly --ttl 10s -- ./report.sh\n  charter lock acquire db --wait 1m\n  charter lock show db"
    )]
    Lock(lock::LockCmd),
    /// Leader election on a lock: campaign and run a command while leader, or --observe.
    #[command(
        after_help = "Examples:\n  charter elect primary --value 10.0.0.7:8080 -- ./serve.sh\n  charter elect primary --observe"
    )]
    Elect(lock::ElectArgs),
    /// Per-principal limits: max cores, leases and duration.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter quota set ann --max-cores 8 --max-leases 4 --max-duration 1d\n  charter quota list"
    )]
    Quota(quota::QuotaCmd),
    /// Hydra, distributed cron: apply cron files, list jobs, read their history.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter cron apply crontab.toml\n  charter cron list\n  charter cron history nightly"
    )]
    Cron(cron::CronCmd),
    /// The deployer: register apps (`deploy apply app.toml`) and list them.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter deploy apply app.toml\n  charter deploy trigger hello\n  charter deploy status hello --watch"
    )]
    Deploy(deploy::DeployCmd),
    /// Who did what: principal, command, target and outcome of each change in the log.
    #[command(
        after_help = "Examples:\n  charter audit\n  charter audit --principal ann --since 1h --json"
    )]
    Audit(audit::AuditArgs),
    /// The cluster's events: leases, nodes, tasks, cron runs, deployments, members.
    #[command(
        after_help = "Examples:\n  charter events --follow\n  charter events --type lease,task --json\n  charter events --since-index 1200 --follow"
    )]
    Events(events::EventsArgs),
    /// Make a cluster CA and certificates for members, agents and clients.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  charter tls init certs --members 1,2,3 --agents n1,n2 --clients admin"
    )]
    Tls(tls::TlsCmd),
    /// Check any Charter config file; exits non-zero with every problem found.
    Validate(validate::ValidateArgs),
    /// Measure Charter on this machine: starts a cluster on 127.0.0.1, prints figures, stops it.
    Bench(bench::BenchArgs),
    /// Print a shell completion script: `charter completion bash > /etc/bash_completion.d/charter`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (charter.1), or write one per command into --dir.
    Man {
        /// Write charter.1 and charter-NOUN.1 … here instead.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

/// Runs a command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    server::set_log_format(args.log_format);
    let g = client::Global {
        servers: args.server.clone(),
        token: args.token.clone(),
        json: args.json,
    };
    // Processes that serve, and bench (its own clusters), never take dev's CA
    // by themselves.
    let client = !matches!(
        args.cmd,
        Cmd::Server(_) | Cmd::Dev(_) | Cmd::Agent(_) | Cmd::Bench(_) | Cmd::Tls(_)
    );
    tls::install(
        &args.tls_ca,
        &args.tls_cert,
        &args.tls_key,
        client.then_some(args.server.as_str()),
    )?;
    match args.cmd {
        Cmd::Tls(c) => tls::run(c),
        Cmd::Server(a) => rt.block_on(server::run_server(a)),
        Cmd::Dev(a) => rt.block_on(server::run_dev(a)),
        Cmd::Hydra(_) => rt.block_on(server::run_hydra(&g)),
        Cmd::Deployer(a) => rt.block_on(server::run_deployer(&g, &a)),
        Cmd::Agent(a) => rt.block_on(agent::run(&g, a)),
        Cmd::Cluster(c) => rt.block_on(cluster::run(&g, c)),
        Cmd::Node(c) => rt.block_on(node::run(&g, c)),
        Cmd::Lease(c) => rt.block_on(lease::run(&g, c)),
        Cmd::Quota(c) => rt.block_on(quota::run(&g, c)),
        Cmd::Lock(c) => rt.block_on(lock::run(&g, c)),
        Cmd::Elect(a) => rt.block_on(lock::elect(&g, a)),
        Cmd::Audit(a) => rt.block_on(audit::run(&g, a)),
        Cmd::Events(a) => rt.block_on(events::run(&g, a)),
        Cmd::Task(c) => rt.block_on(task::run(&g, c)),
        Cmd::Deploy(c) => rt.block_on(deploy::run(&g, c)),
        Cmd::Validate(a) => validate::run(&g, a),
        Cmd::Cron(c) => cron::run(&rt, &g, c),
        Cmd::Bench(a) => bench::run(&rt, g.json, a),
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Args::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "charter", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(0)
        }
        Cmd::Man { dir } => man(dir.as_deref()),
    }
}

/// Man pages from the same definitions as `--help` (clap_mangen).
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<i32> {
    use clap::CommandFactory;
    let cmd = Args::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::io::Write::write_all(&mut std::io::stdout(), &page)?;
        return Ok(0);
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        output::fail(
            format!("cannot create {}", dir.display()),
            e.to_string(),
            "pass a --dir you may write to",
        )
    })?;
    let mut pages = vec![("charter".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("charter-{}", sub.get_name());
        let title: &'static str = Box::leak(name.clone().into_boxed_str());
        pages.push((name, sub.clone().name(title)));
    }
    for (name, c) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut f = std::fs::File::create(&path).map_err(|e| {
            output::fail(
                format!("cannot write {}", path.display()),
                e.to_string(),
                "pass a --dir you may write to",
            )
        })?;
        clap_mangen::Man::new(c).render(&mut f)?;
        println!("{}", path.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::{CommandFactory, Parser};

    fn examples(c: &clap::Command, out: &mut Vec<String>) {
        if let Some(h) = c.get_after_help() {
            for l in h.to_string().lines() {
                let l = l.trim();
                if l.starts_with("charter ") {
                    out.push(l.split(" #").next().unwrap_or(l).trim().to_string());
                }
            }
        }
        for s in c.get_subcommands() {
            examples(s, out);
        }
    }

    #[test]
    fn every_example_in_help_parses() {
        let mut all = Vec::new();
        examples(&Args::command(), &mut all);
        assert!(all.len() >= 30, "{} examples", all.len());
        for e in all.iter().filter(|e| !e.contains("...")) {
            let argv: Vec<String> = e
                .split_whitespace()
                .map(|w| w.trim_matches('\'').to_string())
                .collect();
            if let Err(err) = Args::try_parse_from(&argv) {
                panic!("`{e}` does not parse: {err}");
            }
        }
    }
}
