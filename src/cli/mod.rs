//! The command line: `charter <noun> <verb>`. Global flags: `--server`
//! (env `CHARTER_SERVER`, a comma-separated list tried in order), `--token`
//! (env `CHARTER_TOKEN`, else the dev token), `--json`.

mod agent;
mod bench;
mod bench_agent;
mod bench_deploy;
mod bench_soak;
mod client;
mod cluster;
mod cron;
mod deploy;
mod lease;
mod node;
pub mod output;
mod quota;
mod server;
mod task;
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
    /// Machine-readable JSON output (snake_case fields).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The nouns.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a cluster member.
    Server(server::ServerArgs),
    /// Offer this machine to the cluster: register, heartbeat, run leases' work.
    Agent(agent::AgentArgs),
    /// Run a one-member cluster for local use, with data in a default directory.
    Dev(server::DevArgs),
    /// Run Hydra (cron) on its own, for members started with --no-hydra.
    Hydra(server::HydraArgs),
    /// Run the deployer on its own, for members started with --no-deployer.
    Deployer(server::DeployerArgs),
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Nodes: the servers that offer capacity.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Leases: time-bounded claims on a node's capacity.
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// Tasks: work run by an agent in a lease of its own.
    #[command(subcommand)]
    Task(task::TaskCmd),
    /// Per-principal limits: max cores, leases and duration.
    #[command(subcommand)]
    Quota(quota::QuotaCmd),
    /// Hydra, distributed cron: apply cron files, list jobs, read their history.
    #[command(subcommand)]
    Cron(cron::CronCmd),
    /// The deployer: register apps (`deploy apply app.toml`) and list them.
    #[command(subcommand)]
    Deploy(deploy::DeployCmd),
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
    let g = client::Global {
        servers: args.server.clone(),
        token: args.token.clone(),
        json: args.json,
    };
    match args.cmd {
        Cmd::Server(a) => rt.block_on(server::run_server(a)),
        Cmd::Dev(a) => rt.block_on(server::run_dev(a)),
        Cmd::Hydra(_) => rt.block_on(server::run_hydra(&g)),
        Cmd::Deployer(a) => rt.block_on(server::run_deployer(&g, &a)),
        Cmd::Agent(a) => rt.block_on(agent::run(&g, a)),
        Cmd::Cluster(c) => rt.block_on(cluster::run(&g, c)),
        Cmd::Node(c) => rt.block_on(node::run(&g, c)),
        Cmd::Lease(c) => rt.block_on(lease::run(&g, c)),
        Cmd::Quota(c) => rt.block_on(quota::run(&g, c)),
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
