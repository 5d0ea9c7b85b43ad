//! `charter task submit|list|show|logs|cancel`: work that runs in a lease
//! of its own on an agent's node.

use super::client::{Client, Global, new_key};
use super::lease::{RequestArgs, build_request};
use super::output::{self, fail};
use charter_config::spec::{Amp, Check, Health, Restart};
use charter_config::units;
use charter_proto as pb;
use charter_proto::tasks_client::TasksClient;
use clap::Subcommand;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// Task verbs.
#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Ask for a lease and run a task in it: `task submit [flags] -- CMD...` or `-f task.toml`.
    #[command(
        after_help = "Examples:\n  charter task submit --cpu 2 --mem 1GiB --retries 2 -- ./job.sh\n  charter task submit --amp service --port http -- python3 -m http.server '${PORT}'\n  charter task submit -f task.toml"
    )]
    Submit(Box<SubmitArgs>),
    /// List your live tasks (admins see everyone's).
    List {
        /// Include ended tasks.
        #[arg(long)]
        all: bool,
        /// Only tasks in this state (pending, running, restarting, succeeded, failed, cancelled, expired, lost).
        #[arg(long)]
        state: Option<String>,
        /// Only the task your submit with this idempotency key made
        /// (`task submit --key`, or the key an `Unavailable` error printed).
        #[arg(long)]
        key: Option<String>,
    },
    /// Show one task: state, exit code, node, lease.
    Show {
        /// The task id.
        id: u64,
    },
    /// Print a task's output (stdout to stdout, stderr to stderr).
    Logs {
        /// The task id.
        id: u64,
        /// Keep printing until the task ends.
        #[arg(long)]
        follow: bool,
    },
    /// Stop a task and release its lease.
    Cancel {
        /// The task id.
        id: u64,
    },
}

/// `charter task submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// Read the task from a task.toml; flags override it.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// A name for listings.
    #[arg(long)]
    name: Option<String>,
    /// batch (default: runs to completion) or service (long-running).
    #[arg(long)]
    amp: Option<Amp>,
    /// Batch: further attempts after a failure.
    #[arg(long)]
    retries: Option<u32>,
    /// Service: always, on_failure (default) or never.
    #[arg(long)]
    restart: Option<Restart>,
    /// Service: most restarts (0: no limit).
    #[arg(long)]
    max_restarts: Option<u32>,
    /// Between SIGTERM and SIGKILL when the lease ends (default 10s).
    #[arg(long)]
    grace: Option<String>,
    /// An environment variable `KEY=VALUE`; repeat for more.
    #[arg(long = "env")]
    env: Vec<String>,
    /// A named port the agent picks for it: `PORT` (the first) and
    /// `PORT_<NAME>` in its environment; repeat for more.
    #[arg(long = "port")]
    ports: Vec<String>,
    /// Service: healthy while `GET http://127.0.0.1:PORT/PATH` answers 200
    /// (`PORT/PATH`; PORT may be the first `--port` name).
    #[arg(long)]
    health_http: Option<String>,
    /// Service: healthy while 127.0.0.1:PORT accepts connections.
    #[arg(long)]
    health_tcp: Option<u16>,
    /// The lease the task runs in (default --for 1h).
    #[command(flatten)]
    lease: RequestArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// A task in `--json` output: a stable interface.
#[derive(Serialize)]
struct TaskJson {
    id: u64,
    name: String,
    principal: String,
    amp: String,
    command: Vec<String>,
    state: String,
    exit_code: Option<i32>,
    starts: u32,
    health: String,
    node: String,
    lease: u64,
    submitted_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    message: String,
    /// The last usage sample: resident bytes and CPU ms (null before one).
    rss_bytes: Option<u64>,
    cpu_ms: Option<u64>,
    /// The ports its agent picked, by name.
    ports: std::collections::BTreeMap<String, u32>,
}

fn task_json(t: &pb::Task) -> TaskJson {
    let spec = t.spec.clone().unwrap_or_default();
    TaskJson {
        id: t.id,
        name: spec.name,
        principal: t.principal.clone(),
        amp: spec.amp,
        command: spec.command,
        state: t.state.clone(),
        exit_code: t.exit_code,
        starts: t.starts,
        health: t.health.clone(),
        node: t.node.clone(),
        lease: t.lease_id,
        submitted_at: output::time(t.submitted_at_ms),
        started_at: (t.started_at_ms != 0).then(|| output::time(t.started_at_ms)),
        ended_at: (t.ended_at_ms != 0).then(|| output::time(t.ended_at_ms)),
        message: t.message.clone(),
        rss_bytes: t.usage.map(|u| u.rss_bytes),
        cpu_ms: t.usage.map(|u| u.cpu_ms),
        ports: t.ports.clone().into_iter().collect(),
    }
}

fn print_task(g: &Global, t: &pb::Task) -> anyhow::Result<()> {
    let j = task_json(t);
    if g.json {
        return output::json(&j);
    }
    println!(
        "task {} {}{}",
        j.id,
        j.state,
        if j.node.is_empty() {
            String::new()
        } else {
            format!(" on {}", j.node)
        }
    );
    println!("  command  {}", output::one_line(&j.command.join(" ")));
    println!("  amp      {}, lease {}", j.amp, j.lease);
    if let Some(c) = j.exit_code {
        println!("  exit     {c}");
    }
    if !j.health.is_empty() {
        println!("  health   {}", j.health);
    }
    if !j.ports.is_empty() {
        let ports: Vec<String> = j.ports.iter().map(|(n, p)| format!("{n}={p}")).collect();
        println!("  ports    {}", ports.join(" "));
    }
    if j.starts > 1 {
        println!("  starts   {}", j.starts);
    }
    if let (Some(rss), Some(cpu)) = (j.rss_bytes, j.cpu_ms) {
        println!(
            "  usage    {} resident, {:.1} s CPU",
            units::format_size(rss),
            cpu as f64 / 1000.0
        );
    }
    if !j.message.is_empty() {
        println!("  message  {}", output::one_line(&j.message));
    }
    Ok(())
}

/// Over 80 lines: one step per `task submit` flag, each with its own error.
fn spec(a: &SubmitArgs) -> anyhow::Result<(pb::TaskSpec, charter_config::lease::LeaseConfig)> {
    let mut t = match &a.file {
        Some(f) => match charter_config::load_file(f) {
            Ok(charter_config::AnyConfig::Task(t)) => *t,
            Ok(other) => {
                return Err(fail(
                    format!("{} is a {} config, not a task", f.display(), other.kind()),
                    "",
                    "pass a task.toml (kind = \"task\")",
                ));
            }
            Err(d) => {
                return Err(fail(
                    format!("{} is not a valid task", f.display()),
                    d.to_string(),
                    "fix the lines above",
                ));
            }
        },
        None => charter_config::task::TaskConfig {
            name: String::new(),
            amp: Amp::Batch,
            command: Vec::new(),
            env: Default::default(),
            secret_env: Default::default(),
            retries: 0,
            restart: Restart::OnFailure,
            max_restarts: 0,
            grace_ms: 0,
            health: None,
            ports: Vec::new(),
            lease: charter_config::lease::LeaseConfig::default(),
        },
    };
    if !a.command.is_empty() {
        t.command = a.command.clone();
    }
    if t.command.is_empty() {
        return Err(fail(
            "task submit needs a command",
            "nothing after `--` and no -f task.toml",
            "e.g. charter task submit --cpu 1 -- ./run.sh --fast",
        ));
    }
    if let Some(v) = &a.name {
        t.name = v.clone();
    }
    if let Some(v) = a.amp {
        t.amp = v;
    }
    if let Some(v) = a.retries {
        t.retries = v;
    }
    if let Some(v) = a.restart {
        t.restart = v;
    }
    if let Some(v) = a.max_restarts {
        t.max_restarts = v;
    }
    if let Some(v) = &a.grace {
        t.grace_ms = units::parse_duration(v)
            .map_err(|e| fail(format!("bad --grace `{v}`"), e, "e.g. --grace 5s"))?;
    }
    t.env
        .extend(super::node::parse_pairs("--env", "MODE=fast", &a.env)?);
    t.ports.extend(a.ports.iter().cloned());
    let mut spec = t.spec();
    // A check from a flag: every half second, healthy at once, unhealthy
    // after two failures.
    let quick = |check| Health {
        check,
        interval_ms: 500,
        timeout_ms: 1_000,
        healthy_after: 1,
        unhealthy_after: 2,
    };
    if let Some(v) = &a.health_http {
        let (port, path) = v.split_once('/').unwrap_or((v.as_str(), ""));
        // The first named port is port 0: the agent checks what it picked.
        let named = t.ports.first().is_some_and(|p| p == port);
        let port: u16 = if named {
            0
        } else {
            port.parse().map_err(|_| {
                fail(
                    format!("bad --health-http `{v}`"),
                    "expected PORT/PATH, PORT a number or the first --port name",
                    "e.g. --health-http 8080/healthz or --port http --health-http http/healthz",
                )
            })?
        };
        spec.health = Some(quick(Check::Http {
            port,
            path: format!("/{path}"),
            status: 200,
        }));
    }
    if let Some(port) = a.health_tcp {
        spec.health = Some(quick(Check::Tcp { port }));
    }
    let mut lease = t.lease.clone();
    if lease.duration_ms == 0 {
        lease.duration_ms = 3_600_000;
    }
    Ok((pb::TaskSpec::from(&spec), lease))
}

async fn show(c: &Client, id: u64) -> anyhow::Result<pb::TaskReply> {
    c.call("task show", |ch| {
        let req = c.req(pb::ShowTaskRequest { id, stale: false });
        async move { TasksClient::new(ch).show(req).await }
    })
    .await
}

/// Runs a task verb.
pub async fn run(g: &Global, cmd: TaskCmd) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    match cmd {
        TaskCmd::Submit(a) => submit(g, &c, a).await,
        TaskCmd::List { all, state, key } => list(g, &c, all, state, key).await,
        TaskCmd::Show { id } => show_cmd(g, &c, id).await,
        TaskCmd::Cancel { id } => cancel(g, &c, id).await,
        TaskCmd::Logs { id, follow } => logs(g, &c, id, follow).await,
    }
}

/// `task submit`.
async fn submit(g: &Global, c: &Client, a: Box<SubmitArgs>) -> anyhow::Result<i32> {
    let (task, base) = spec(&a)?;
    let lease = build_request(a.lease, base)?;
    let key = if lease.idempotency_key.is_empty() {
        new_key()
    } else {
        lease.idempotency_key.clone()
    };
    let r = c
        .call_keyed(
            "task submit",
            &key,
            &format!("`charter task list --key {key}`"),
            |ch| {
                let req = c.req(pb::SubmitTaskRequest {
                    idempotency_key: key.clone(),
                    lease: Some(lease.clone()),
                    task: Some(task.clone()),
                });
                async move { TasksClient::new(ch).submit(req).await }
            },
        )
        .await?;
    print_task(g, &r.task.unwrap_or_default())?;

    Ok(0)
}

/// `task list`.
async fn list(
    g: &Global,
    c: &Client,
    all: bool,
    state: Option<String>,
    key: Option<String>,
) -> anyhow::Result<i32> {
    let r = c
        .call("task list", |ch| {
            let req = c.req(pb::ListTasksRequest {
                all,
                state: state.clone().unwrap_or_default(),
                stale: false,
                key: key.clone().unwrap_or_default(),
            });
            async move { TasksClient::new(ch).list(req).await }
        })
        .await?;
    let rows: Vec<TaskJson> = r.tasks.iter().map(task_json).collect();
    if g.json {
        output::json(&serde_json::json!({ "tasks": rows }))?;
    } else {
        output::table(
            &["ID", "STATE", "NODE", "EXIT", "AMP", "COMMAND"],
            rows.iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.state.clone(),
                        t.node.clone(),
                        t.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        t.amp.clone(),
                        t.command.join(" "),
                    ]
                })
                .collect(),
        );
    }

    Ok(0)
}

/// `task show ID`.
async fn show_cmd(g: &Global, c: &Client, id: u64) -> anyhow::Result<i32> {
    let r = show(c, id).await?;
    print_task(g, &r.task.unwrap_or_default())?;

    Ok(0)
}

/// `task cancel ID`.
async fn cancel(g: &Global, c: &Client, id: u64) -> anyhow::Result<i32> {
    let key = new_key();
    let r = c
        .call("task cancel", |ch| {
            let req = c.req(pb::CancelTaskRequest {
                idempotency_key: key.clone(),
                id,
            });
            async move { TasksClient::new(ch).cancel(req).await }
        })
        .await?;
    print_task(g, &r.task.unwrap_or_default())?;

    Ok(0)
}

/// `task logs ID [--follow]`.
async fn logs(g: &Global, c: &Client, id: u64, follow: bool) -> anyhow::Result<i32> {
    // Following a task not placed yet waits for it to start, woken
    // by task events rather than by polling.
    let mut wake = None;
    let mut s = loop {
        let r = c
            .try_call(|ch| {
                let req = c.req(pb::LogsRequest {
                    task_id: id,
                    follow,
                });
                async move { TasksClient::new(ch).logs(req).await }
            })
            .await;
        match r {
            Ok(s) => break s,
            Err(e)
                if follow
                    && e.status.code() == tonic::Code::FailedPrecondition
                    && e.status.message().contains("not been placed") =>
            {
                wake.get_or_insert_with(|| super::events::Wake::on(g, &["task"]))
                    .next()
                    .await;
            }
            Err(e) => {
                return Err(super::client::status_error("task logs", &e.addr, &e.status).into());
            }
        }
    };
    loop {
        match s.message().await {
            Ok(Some(chunk)) => {
                if chunk.stream == "stderr" {
                    std::io::stderr().write_all(&chunk.data)?;
                } else {
                    std::io::stdout().write_all(&chunk.data)?;
                    std::io::stdout().flush()?;
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(super::client::status_error("task logs", "", &e).into());
            }
        }
    }

    Ok(0)
}
