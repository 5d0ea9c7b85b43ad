//! `charter deploy`: the deployer. `apply` registers or updates an app from
//! its app.toml (checked here and again by the server), `list` shows the
//! apps, `trigger` and `rollback` start deployments, `status` and `history`
//! show them.
//!
//! Over 500 lines: every deploy verb and its output.

use super::client::{Client, Global, new_key};
use super::output::{self, fail};
use charter_config::codec::{self, CodecError, Kind};
use charter_config::deployment::short_commit;
use charter_config::deployment::{DeployStatus, DeployStep, Trigger};
use charter_proto as pb;
use charter_proto::deploy_client::DeployClient;
use clap::Subcommand;
use serde::Serialize;
use std::path::PathBuf;

/// Deploy verbs.
#[derive(Subcommand, Debug)]
pub enum DeployCmd {
    /// Register an app from its app.toml, or update it.
    Apply {
        /// The app file (`kind = "app"`; see examples/app/app.toml).
        file: PathBuf,
    },
    /// The registered apps.
    List,
    /// Deploy a commit now (default: the branch head).
    Trigger {
        /// The app.
        app: String,
        /// A full or abbreviated commit.
        #[arg(long)]
        commit: Option<String>,
    },
    /// The newest deployment's steps and the active version's servers.
    #[command(
        after_help = "Examples:\n  charter deploy status hello\n  charter deploy status hello --watch   # exits 1 unless promoted\n  charter deploy status hello --json"
    )]
    Status {
        /// The app.
        app: String,
        /// Keep showing it until the deployment ends.
        #[arg(long)]
        watch: bool,
    },
    /// The app's deployments, newest first.
    History {
        /// The app.
        app: String,
        /// How many.
        #[arg(short, default_value_t = 20)]
        n: u32,
    },
    /// Deploy the version that was active before the current one again
    /// (or the one with this fingerprint).
    Rollback {
        /// The app.
        app: String,
        /// The fingerprint to return to (`deploy history` shows them).
        #[arg(long)]
        to: Option<String>,
    },
}

type Deployment = charter_config::deployment::Deployment;
type TaskView = charter_config::deployment::TaskView;

async fn history(
    c: &Client,
    app: &str,
    n: u32,
) -> anyhow::Result<(
    Vec<Deployment>,
    u64,
    std::collections::BTreeMap<u64, TaskView>,
)> {
    let r = c
        .call("deploy history", |ch| {
            let req = c.req(pb::DeployHistoryRequest {
                app: app.to_string(),
                n,
                stale: false,
            });
            async move { DeployClient::new(ch).history(req).await }
        })
        .await?;
    let ds = r
        .deployments
        .iter()
        .map(|d| codec::decode(Kind::Deployment, d))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            fail(
                "cannot read a deployment",
                e.to_string(),
                "upgrade this charter",
            )
        })?;
    let tasks = r
        .tasks
        .iter()
        .map(|(id, t)| Ok((*id, codec::decode(Kind::TaskView, t)?)))
        .collect::<Result<_, CodecError>>()
        .map_err(|e| fail("cannot read a task", e.to_string(), "upgrade this charter"))?;
    Ok((ds, r.active, tasks))
}

fn elapsed(from: i64, to: Option<i64>) -> String {
    let to = to.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    format!("{:.1}s", (to - from).max(0) as f64 / 1000.0)
}

/// How long a deployment took: to its promotion when it was promoted
/// (an active or retired version's `ended_at` is when it stopped serving),
/// else to its end, or so far.
fn took(d: &Deployment) -> String {
    elapsed(d.created_at, d.promoted_at.or(d.ended_at))
}

/// A time for `--json`: RFC 3339, or null.
fn rfc(ms: Option<i64>) -> serde_json::Value {
    ms.filter(|m| *m != 0)
        .map_or(serde_json::Value::Null, |m| output::time(m).into())
}

/// A deployment as `--json` prints it: every field always present (null or
/// empty when it does not apply), times in RFC 3339 like every other object.
fn deployment_json(d: &Deployment) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = d
        .steps
        .iter()
        .map(|r| {
            serde_json::json!({
                "step": r.step,
                "started_at": rfc(Some(r.started_at)),
                "ended_at": rfc(r.ended_at),
                "state": r.state,
                "message": r.message,
            })
        })
        .collect();
    serde_json::json!({
        "id": d.id,
        "app": d.app,
        "commit": d.commit,
        "fingerprint": d.fingerprint,
        "trigger": d.trigger,
        "by": d.by,
        "created_at": rfc(Some(d.created_at)),
        "status": d.status.as_str(),
        "steps": steps,
        "build_task": d.build_task,
        "artifact": d.artifact,
        "instances": d.instances,
        "previous": d.previous,
        "promoted_at": rfc(d.promoted_at),
        "failed_step": d.failed_step,
        "reason": d.reason,
        "build_log": d.build_log,
        "ended_at": rfc(d.ended_at),
    })
}

/// The active version's servers: task, node, address, health.
fn servers_json(
    d: &Deployment,
    tasks: &std::collections::BTreeMap<u64, TaskView>,
) -> Vec<serde_json::Value> {
    d.instances
        .iter()
        .map(|id| {
            let t = tasks.get(id).cloned().unwrap_or_default();
            let port = t.ports.values().next().copied();
            serde_json::json!({
                "task": id,
                "node": t.node,
                "address": port.map(|p| format!("{}:{p}", t.host)).unwrap_or_default(),
                "state": t.state,
                "health": t.health,
            })
        })
        .collect()
}

fn status_text(
    app: &str,
    ds: &[Deployment],
    active: u64,
    tasks: &std::collections::BTreeMap<u64, TaskView>,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    match ds.iter().find(|d| d.id == active) {
        Some(a) => {
            let _ = writeln!(
                o,
                "{app}: active {} (deployment {}, commit {})",
                a.fingerprint,
                a.id,
                short_commit(&a.commit)
            );
            for s in servers_json(a, tasks) {
                let _ = writeln!(
                    o,
                    "  task {:<6} {:<12} {:<22} {} {}",
                    s["task"],
                    s["node"].as_str().unwrap_or(""),
                    s["address"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    s["health"].as_str().unwrap_or("")
                );
            }
        }
        None => {
            let _ = writeln!(o, "{app}: no active version");
        }
    }
    if let Some(d) = ds
        .first()
        .filter(|d| d.id != active || d.ended_at.is_none())
    {
        let _ = writeln!(
            o,
            "deployment {} of {} ({}): {}{}",
            d.id,
            short_commit(&d.commit),
            d.trigger,
            d.status.as_str(),
            if d.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", d.reason)
            }
        );
        for r in &d.steps {
            let _ = writeln!(
                o,
                "  {:<14} {:<8} {:>8}  {}",
                r.step,
                r.state,
                elapsed(r.started_at, r.ended_at),
                r.message
            );
        }
        // A failed build's cause, not only "exited with 1".
        if d.status == DeployStatus::RolledBack && !d.build_log.trim().is_empty() {
            let lines: Vec<&str> = d.build_log.trim_end().lines().collect();
            let from = lines.len().saturating_sub(10);
            let _ = writeln!(o, "  last lines of the build log:");
            for l in &lines[from..] {
                let _ = writeln!(o, "    {l}");
            }
        }
    }
    o
}

/// An app as `--json` prints it.
#[derive(Serialize)]
struct AppJson {
    name: String,
    repo: String,
    branch: String,
    servers: u32,
    version: String,
    applied_by: String,
    created_at: String,
    updated_at: String,
}

fn app_json(a: &pb::App) -> AppJson {
    AppJson {
        name: a.name.clone(),
        repo: a.repo.clone(),
        branch: a.branch.clone(),
        servers: a.servers,
        version: a.version.clone(),
        applied_by: a.applied_by.clone(),
        created_at: output::time(a.created_at_ms),
        updated_at: output::time(a.updated_at_ms),
    }
}

/// Runs a deploy verb.
pub async fn run(g: &Global, cmd: DeployCmd) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    match cmd {
        DeployCmd::Apply { file } => apply(g, &c, file).await,
        DeployCmd::List => list(g, &c).await,
        DeployCmd::Trigger { app, commit } => trigger(g, &c, app, commit).await,
        DeployCmd::Status { app, watch } => status(g, &c, app, watch).await,
        DeployCmd::History { app, n } => history_cmd(g, &c, app, n).await,
        DeployCmd::Rollback { app, to } => rollback(g, &c, app, to).await,
    }
}

/// `deploy apply FILE`: checks the file here, then applies it.
async fn apply(g: &Global, c: &Client, file: PathBuf) -> anyhow::Result<i32> {
    match charter_config::load_file(&file) {
        Ok(charter_config::AnyConfig::App(_)) => {}
        Ok(other) => {
            return Err(fail(
                format!(
                    "{} is a {} config, not an app",
                    file.display(),
                    other.kind()
                ),
                "",
                "pass an app.toml (kind = \"app\"), like examples/app/app.toml",
            ));
        }
        Err(d) => {
            return Err(fail(
                format!("{} is not a valid app; nothing was applied", file.display()),
                d.to_string(),
                "fix the lines above and apply again",
            ));
        }
    }
    let text = std::fs::read_to_string(&file).map_err(|e| {
        fail(
            format!("cannot read {}", file.display()),
            e.to_string(),
            "check the path",
        )
    })?;
    let key = new_key();
    let name = file.display().to_string();
    let r = c
        .call("deploy apply", |ch| {
            let req = c.req(pb::ApplyAppRequest {
                idempotency_key: key.clone(),
                file: name.clone(),
                text: text.clone(),
            });
            async move { DeployClient::new(ch).apply(req).await }
        })
        .await?;
    let app = r.app.unwrap_or_default();
    if g.json {
        output::json(&serde_json::json!({ "change": r.change, "app": app_json(&app) }))?;
    } else {
        println!(
            "{} {} (version {})",
            r.change,
            app.name,
            &app.version[..12.min(app.version.len())]
        );
    }

    Ok(0)
}

/// `deploy list`.
async fn list(g: &Global, c: &Client) -> anyhow::Result<i32> {
    let r = c
        .call("deploy list", |ch| {
            let req = c.req(pb::ListAppsRequest { stale: false });
            async move { DeployClient::new(ch).list(req).await }
        })
        .await?;
    let rows: Vec<AppJson> = r.apps.iter().map(app_json).collect();
    if g.json {
        output::json(&serde_json::json!({ "apps": rows }))?;
    } else {
        output::table(
            &["APP", "REPO", "BRANCH", "SERVERS", "VERSION", "UPDATED"],
            rows.iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.repo.clone(),
                        a.branch.clone(),
                        a.servers.to_string(),
                        a.version.chars().take(12).collect(),
                        a.updated_at.clone(),
                    ]
                })
                .collect(),
        );
    }

    Ok(0)
}

/// `deploy trigger APP [--commit SHA]`.
async fn trigger(
    g: &Global,
    c: &Client,
    app: String,
    commit: Option<String>,
) -> anyhow::Result<i32> {
    let commit = commit.unwrap_or_default();
    send_trigger(g, c, ("deploy trigger", Trigger::Manual), app, commit).await
}

/// Starts a deployment of `app` at `commit` (empty: the branch head) for
/// `trigger`, and prints what started.
async fn send_trigger(
    g: &Global,
    c: &Client,
    (what, trigger): (&str, Trigger),
    app: String,
    commit: String,
) -> anyhow::Result<i32> {
    let key = new_key();
    let mut r = c
        .call(what, |ch| {
            let req = c.req(pb::TriggerDeployRequest {
                idempotency_key: key.clone(),
                app: app.clone(),
                commit: commit.clone(),
                trigger: trigger.to_string(),
                delivery: String::new(),
            });
            async move { DeployClient::new(ch).trigger(req).await }
        })
        .await?;
    if commit.is_empty() {
        settled_trigger(c, &mut r).await?;
    }
    trigger_out(g, &r)
}

/// What `deploy status` shows of the newest deployments, and the key that
/// tells a change: on a terminal the text itself (the running step's clock
/// ticks); off one, a new deployment, status or step state.
fn status_view(
    json: bool,
    tty: bool,
    app: &str,
    (ds, active, tasks): (
        &[Deployment],
        u64,
        &std::collections::BTreeMap<u64, TaskView>,
    ),
) -> anyhow::Result<(String, String)> {
    let newest = ds.first();
    let text = if json {
        let a = ds.iter().find(|d| d.id == active);
        serde_json::to_string_pretty(&serde_json::json!({
            "app": app,
            "active": a.map(|a| serde_json::json!({
                "deployment": a.id,
                "fingerprint": a.fingerprint,
                "commit": a.commit,
                "servers": servers_json(a, tasks),
            })),
            "deployment": newest.map(deployment_json),
        }))?
    } else {
        status_text(app, ds, active, tasks)
    };
    let key = if tty {
        text.clone()
    } else {
        newest.map_or(String::new(), |d| {
            let steps: Vec<String> = d
                .steps
                .iter()
                .map(|r| format!("{}={}", r.step, r.state))
                .collect();
            format!("{} {} {} {}", active, d.id, d.status, steps.join(","))
        })
    };
    Ok((text, key))
}

/// `deploy status APP [--watch]`: follows the newest deployment on events.
async fn status(g: &Global, c: &Client, app: String, watch: bool) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut shown = String::new();
    // Woken by deploy and task events, not by polling; a terminal's
    // view also ticks each second for the running step's clock.
    let mut wake = watch.then(|| super::events::Wake::on(g, &["deploy", "task"]));
    loop {
        let (mut ds, active, mut tasks) = history(c, &app, 2).await?;
        // The active version may be older than the two newest (a
        // trigger of the active commit ends `unchanged`): look further.
        if active != 0 && !ds.iter().any(|d| d.id == active) {
            let (more, _, t) = history(c, &app, 200).await?;
            if let Some(a) = more.into_iter().find(|d| d.id == active) {
                ds.push(a);
                tasks.extend(t);
            }
        }
        let newest = ds.first();
        let (text, key) = status_view(g.json, tty, &app, (&ds, active, &tasks))?;
        if key != shown || !watch {
            if watch && tty && !g.json {
                print!("\x1b[2J\x1b[H");
            }
            println!("{}", text.trim_end());
            shown = key;
        }
        let done = newest.is_none_or(|d| d.ended_at.is_some());
        if !watch || done {
            // Like `kubectl rollout status`: a watch fails unless the
            // deployment it followed was promoted (or had nothing to do).
            if watch
                && let Some(d) = newest
                && !matches!(d.status, DeployStatus::Active | DeployStatus::Unchanged)
            {
                return Ok(1);
            }
            break;
        }
        if let Some(w) = wake.as_mut() {
            if tty && !g.json {
                tokio::select! {
                    _ = w.next() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            } else {
                w.next().await;
            }
        }
    }

    Ok(0)
}

/// `deploy history APP`.
async fn history_cmd(g: &Global, c: &Client, app: String, n: u32) -> anyhow::Result<i32> {
    let (ds, active, _) = history(c, &app, n).await?;
    if g.json {
        let ds: Vec<serde_json::Value> = ds.iter().map(deployment_json).collect();
        output::json(&serde_json::json!({ "app": app, "active": active, "deployments": ds }))?;
    } else {
        output::table(
            &[
                "ID",
                "COMMIT",
                "FINGERPRINT",
                "TRIGGER",
                "STATUS",
                "STEP",
                "STARTED",
                "TOOK",
                "REASON",
            ],
            ds.iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        short_commit(&d.commit).to_string(),
                        d.fingerprint.clone(),
                        d.trigger.to_string(),
                        d.status.to_string(),
                        d.failed_step.unwrap_or(d.step()).to_string(),
                        output::time(d.created_at),
                        took(d),
                        d.reason.clone(),
                    ]
                })
                .collect(),
        );
    }

    Ok(0)
}

/// `deploy rollback APP [--to FINGERPRINT]`.
async fn rollback(g: &Global, c: &Client, app: String, to: Option<String>) -> anyhow::Result<i32> {
    let (ds, active, _) = history(c, &app, 200).await?;
    let target = match &to {
        Some(fp) => ds
            .iter()
            .find(|d| &d.fingerprint == fp && !d.artifact.is_empty()),
        None => ds
            .iter()
            .find(|d| d.id == active)
            .and_then(|a| a.previous)
            .and_then(|p| ds.iter().find(|d| d.id == p)),
    };
    let Some(target) = target else {
        return Err(fail(
            format!("no version of {app} to roll back to"),
            match &to {
                Some(fp) => format!("no built deployment has fingerprint {fp}"),
                None => "the active version has no earlier one".into(),
            },
            "charter deploy history APP shows the fingerprints; pass one with --to",
        ));
    };
    let commit = target.commit.clone();
    send_trigger(g, c, ("deploy rollback", Trigger::Rollback), app, commit).await
}

/// A deployment of the branch head started: waits (up to 10 s) for its
/// fetch to learn the commit, so a head that is already active or being
/// deployed is reported as nothing started, as `--commit` of it is.
async fn settled_trigger(c: &Client, r: &mut pb::TriggerDeployReply) -> anyhow::Result<()> {
    let Some(mut d) = deployment_of(&r.deployment)? else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while r.started && d.status == DeployStatus::Running && d.step() == DeployStep::Fetch {
        if std::time::Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (ds, ..) = history(c, &d.app, 5).await?;
        let Some(now) = ds.into_iter().find(|x| x.id == d.id) else {
            return Ok(());
        };
        d = now;
    }
    if d.status == DeployStatus::Unchanged {
        r.started = false;
        r.reason = d.reason.clone();
    }
    r.deployment = codec::encode(Kind::Deployment, &d)?;
    Ok(())
}

fn trigger_out(g: &Global, r: &pb::TriggerDeployReply) -> anyhow::Result<i32> {
    let d = deployment_of(&r.deployment)?;
    if g.json {
        output::json(&serde_json::json!({
            "started": r.started,
            "reason": r.reason,
            "deployment": d.as_ref().map(deployment_json),
        }))?;
    } else if let Some(d) = d.filter(|_| r.started) {
        println!(
            "deployment {} of {} started; charter deploy status {} --watch follows it",
            d.id, d.app, d.app
        );
    } else {
        println!("nothing started: {}", r.reason);
    }
    Ok(0)
}

/// The deployment an API reply carries, if any (an empty field: none).
fn deployment_of(b: &[u8]) -> anyhow::Result<Option<Deployment>> {
    if b.is_empty() {
        return Ok(None);
    }
    codec::decode(Kind::Deployment, b).map(Some).map_err(|e| {
        fail(
            "cannot read the deployment",
            e.to_string(),
            "upgrade this charter",
        )
    })
}
