//! `charter cron`: Hydra, distributed cron. `cron next` checks an
//! expression offline; `apply`/`diff` send a whole file (checked here and
//! again by the server, nothing applied if any job is wrong); `list`,
//! `show`, `history`, `trigger`, `pause`, `resume` and `delete` work on the
//! applied jobs.
//!
//! Over 500 lines: every cron verb and its output.

use super::client::{Client, Global, new_key};
use super::output::{self, fail};
use charter_hydra::controller::{fire_request, load, millis};
use charter_hydra::schedule::Schedule;
use charter_proto as pb;
use charter_proto::cron_client::CronClient;
use clap::Subcommand;
use serde::Serialize;
use std::path::PathBuf;

/// Cron verbs.
#[derive(Subcommand, Debug)]
pub enum CronCmd {
    /// Print the next fire times of a crontab(5) expression.
    Next {
        /// The expression, e.g. "30 2 * * mon-fri" or "@daily" (quote it).
        expr: String,
        /// IANA time zone the fields are read in (default UTC).
        #[arg(long)]
        tz: Option<String>,
        /// Start from this time (RFC 3339; default now).
        #[arg(long)]
        from: Option<String>,
        /// How many.
        #[arg(short = 'n', default_value_t = 5)]
        n: usize,
    },
    /// Check a cron file and apply it as one version (its jobs you applied
    /// before that it no longer has are deleted).
    Apply {
        /// The file (`[[job]]` tables; see examples/crontab.toml).
        file: PathBuf,
    },
    /// Show what `cron apply FILE` would change.
    Diff {
        /// The file.
        file: PathBuf,
    },
    /// Every job with its next tick and last result.
    List,
    /// One job: its definition, next ticks and last run.
    Show {
        /// The job.
        name: String,
    },
    /// A job's runs, newest last.
    History {
        /// The job.
        name: String,
        /// How many of the newest runs.
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
    },
    /// Run a job now, outside its schedule (recorded as manual).
    Trigger {
        /// The job.
        name: String,
    },
    /// Stop a job from firing (its ticks while paused are not missed ticks).
    Pause {
        /// The job.
        name: String,
    },
    /// Let a paused job fire again from now on.
    Resume {
        /// The job.
        name: String,
    },
    /// Remove a job; its history stays readable.
    Delete {
        /// The job.
        name: String,
    },
}

/// A run as `--json` prints it.
#[derive(Serialize)]
struct RunJson {
    job: String,
    scheduled_at: String,
    fired_at: String,
    manual: bool,
    state: String,
    task_id: Option<u64>,
    exit_code: Option<i32>,
    duration_ms: Option<i64>,
    reason: String,
}

fn run_json(r: &pb::CronRun) -> RunJson {
    RunJson {
        job: r.job.clone(),
        scheduled_at: output::time(r.scheduled_at_ms),
        fired_at: output::time(r.fired_at_ms),
        manual: r.manual,
        state: r.state.clone(),
        task_id: (r.task_id != 0).then_some(r.task_id),
        exit_code: r.exit_code,
        duration_ms: r.duration_ms,
        reason: r.reason.clone(),
    }
}

/// A job as `--json` prints it.
#[derive(Serialize)]
struct JobJson {
    name: String,
    schedule: String,
    timezone: String,
    owner: String,
    paused: bool,
    version: String,
    next: Option<String>,
    last: Option<RunJson>,
    definition: serde_json::Value,
}

fn job_json(j: &pb::CronJob) -> JobJson {
    let next = load(j).ok().and_then(|l| {
        (!j.paused)
            .then(|| l.job.schedule.next_after(chrono::Utc::now()))
            .flatten()
    });
    JobJson {
        name: j.name.clone(),
        schedule: j.schedule.clone(),
        timezone: if j.timezone.is_empty() {
            "UTC".into()
        } else {
            j.timezone.clone()
        },
        owner: j.owner.clone(),
        paused: j.paused,
        version: j.version.clone(),
        next: next.map(|t| output::time(t.timestamp_millis())),
        last: j.last.as_ref().map(run_json),
        definition: charter_config::codec::decode::<charter_config::cron::JobConfig>(
            charter_config::codec::Kind::Job,
            &j.definition,
        )
        .ok()
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(serde_json::Value::Null),
    }
}

fn print_runs(json: bool, runs: &[pb::CronRun]) -> anyhow::Result<()> {
    let rows: Vec<RunJson> = runs.iter().map(run_json).collect();
    if json {
        return output::json(&serde_json::json!({ "runs": rows }));
    }
    output::table(
        &[
            "SCHEDULED",
            "FIRED",
            "STATE",
            "TASK",
            "EXIT",
            "DURATION",
            "REASON",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    format!(
                        "{}{}",
                        r.scheduled_at,
                        if r.manual { " (manual)" } else { "" }
                    ),
                    r.fired_at.clone(),
                    r.state.clone(),
                    r.task_id.map(|t| t.to_string()).unwrap_or_default(),
                    r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    r.duration_ms
                        .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                        .unwrap_or_default(),
                    r.reason.clone(),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn print_job(json: bool, j: &pb::CronJob) -> anyhow::Result<()> {
    let v = job_json(j);
    if json {
        return output::json(&v);
    }
    println!("job      {}", v.name);
    println!("schedule {} ({})", v.schedule, v.timezone);
    println!("owner    {}", v.owner);
    println!("paused   {}", v.paused);
    println!("version  {}", v.version);
    println!("next     {}", v.next.as_deref().unwrap_or("-"));
    let missed = v.definition["missed"].as_str().unwrap_or("latest");
    let catch_up = v.definition["max_catch_up"].as_u64().unwrap_or(1);
    println!("missed   {}", missed_words(missed, catch_up));
    if let Some(l) = &v.last {
        println!(
            "last     {} {} {}",
            l.scheduled_at,
            l.state,
            if l.reason.is_empty() { "" } else { &l.reason }
        );
    }
    Ok(())
}

/// What a job's `missed` policy does after downtime, in words: which late
/// ticks still run.
fn missed_words(missed: &str, max_catch_up: u64) -> String {
    let late = charter_hydra::plan::LATE_AFTER.num_seconds();
    match missed {
        "skip" => format!(
            "skip: ticks more than {late} s late (no leader fired them in time) are skipped"
        ),
        "all" => format!(
            "all: after downtime the newest {} ticks more than {late} s late run, older ones are skipped",
            max_catch_up.max(1)
        ),
        _ => format!(
            "latest: after downtime only the newest tick more than {late} s late runs (older ones are skipped); ticks less late run as usual"
        ),
    }
}

/// Reads and checks a cron file here first, so a bad file fails without a server.
fn read_file(file: &std::path::Path) -> anyhow::Result<String> {
    match charter_config::load_file_with(file, &charter_hydra::schedule::check) {
        Ok(charter_config::AnyConfig::Cron(_)) => {}
        Ok(other) => {
            return Err(fail(
                format!(
                    "{} is a {} config, not a cron file",
                    file.display(),
                    other.kind()
                ),
                "",
                "pass a file of [[job]] tables, like examples/crontab.toml",
            ));
        }
        Err(d) => {
            return Err(fail(
                format!(
                    "{} is not a valid cron file; nothing was applied",
                    file.display()
                ),
                d.to_string(),
                "fix the lines above and apply again",
            ));
        }
    }
    std::fs::read_to_string(file).map_err(|e| {
        fail(
            format!("cannot read {}", file.display()),
            e.to_string(),
            "check the path",
        )
    })
}

async fn list(c: &Client) -> anyhow::Result<pb::ListCronReply> {
    c.call("cron list", |ch| {
        let req = c.req(pb::ListCronRequest { stale: false });
        async move { CronClient::new(ch).list(req).await }
    })
    .await
}

async fn get_job(c: &Client, name: &str) -> anyhow::Result<pb::CronJob> {
    list(c)
        .await?
        .jobs
        .into_iter()
        .find(|j| j.name == name)
        .ok_or_else(|| {
            fail(
                format!("no cron job named {name}"),
                "",
                "`charter cron list` shows the applied jobs",
            )
        })
}

/// Runs a verb that talks to the cluster.
pub async fn run_remote(g: &Global, cmd: CronCmd) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    match cmd {
        CronCmd::Next { .. } => unreachable!("handled offline"),
        CronCmd::Apply { file } => apply(g, &c, &file, false).await.map(|()| 0),
        CronCmd::Diff { file } => apply(g, &c, &file, true).await.map(|()| 0),
        CronCmd::List => list_cmd(g, &c).await,
        CronCmd::Show { name } => print_job(g.json, &get_job(&c, &name).await?).map(|()| 0),
        CronCmd::History { name, n } => history(g, &c, name, n).await,
        CronCmd::Trigger { name } => trigger(g, &c, name).await,
        CronCmd::Pause { name } => set_paused(g, &c, name, true).await.map(|()| 0),
        CronCmd::Resume { name } => set_paused(g, &c, name, false).await.map(|()| 0),
        CronCmd::Delete { name } => delete(g, &c, name).await,
    }
}

/// `cron list`.
async fn list_cmd(g: &Global, c: &Client) -> anyhow::Result<i32> {
    let r = list(c).await?;
    let rows: Vec<JobJson> = r.jobs.iter().map(job_json).collect();
    if g.json {
        output::json(&serde_json::json!({ "version": r.version, "jobs": rows }))?;
    } else {
        output::table(
            &["JOB", "SCHEDULE", "TZ", "NEXT", "LAST", "RESULT"],
            rows.iter()
                .map(|j| {
                    vec![
                        j.name.clone(),
                        j.schedule.clone(),
                        j.timezone.clone(),
                        if j.paused {
                            "paused".into()
                        } else {
                            j.next.clone().unwrap_or_else(|| "-".into())
                        },
                        j.last
                            .as_ref()
                            .map(|l| l.scheduled_at.clone())
                            .unwrap_or_else(|| "-".into()),
                        j.last.as_ref().map(|l| l.state.clone()).unwrap_or_default(),
                    ]
                })
                .collect(),
        );
    }

    Ok(0)
}

/// `cron history NAME`.
async fn history(g: &Global, c: &Client, name: String, n: u32) -> anyhow::Result<i32> {
    let r = c
        .call("cron history", |ch| {
            let req = c.req(pb::CronHistoryRequest {
                job: name.clone(),
                n,
                stale: false,
            });
            async move { CronClient::new(ch).history(req).await }
        })
        .await?;
    print_runs(g.json, &r.runs)?;

    Ok(0)
}

/// `cron trigger NAME`.
async fn trigger(g: &Global, c: &Client, name: String) -> anyhow::Result<i32> {
    let job = get_job(c, &name).await?;
    let l = load(&job).map_err(|e| fail("cannot read the job", e, ""))?;
    let mut req = fire_request(&l, millis(chrono::Utc::now().timestamp_millis()), true, &[]);
    req.idempotency_key = new_key();
    let r = c
        .call("cron trigger", |ch| {
            let req = c.req(req.clone());
            async move { CronClient::new(ch).fire(req).await }
        })
        .await?;
    print_runs(g.json, &[r])?;

    Ok(0)
}

/// `cron delete NAME`.
async fn delete(g: &Global, c: &Client, name: String) -> anyhow::Result<i32> {
    let key = new_key();
    let r = c
        .call("cron delete", |ch| {
            let req = c.req(pb::CronJobRequest {
                idempotency_key: key.clone(),
                job: name.clone(),
            });
            async move { CronClient::new(ch).delete(req).await }
        })
        .await?;
    if g.json {
        output::json(&job_json(&r))?;
    } else {
        println!(
            "deleted cron job {} (its history stays: cron history {})",
            r.name, r.name
        );
    }

    Ok(0)
}

async fn set_paused(g: &Global, c: &Client, name: String, paused: bool) -> anyhow::Result<()> {
    let key = new_key();
    let r = c
        .call(if paused { "cron pause" } else { "cron resume" }, |ch| {
            let req = c.req(pb::SetCronPausedRequest {
                idempotency_key: key.clone(),
                job: name.clone(),
                paused,
            });
            async move { CronClient::new(ch).set_paused(req).await }
        })
        .await?;
    print_job(g.json, &r)
}

async fn apply(
    g: &Global,
    c: &Client,
    file: &std::path::Path,
    dry_run: bool,
) -> anyhow::Result<()> {
    let text = read_file(file)?;
    let key = new_key();
    let name = file.display().to_string();
    let r = c
        .call(if dry_run { "cron diff" } else { "cron apply" }, |ch| {
            let req = c.req(pb::ApplyCronRequest {
                idempotency_key: key.clone(),
                file: name.clone(),
                text: text.clone(),
                dry_run,
            });
            async move { CronClient::new(ch).apply(req).await }
        })
        .await?;
    if g.json {
        let changes: Vec<serde_json::Value> = r
            .changes
            .iter()
            .map(|c| serde_json::json!({ "job": c.job, "change": c.change }))
            .collect();
        return output::json(&serde_json::json!({
            "version": r.version,
            "applied": r.applied,
            "changes": changes,
        }));
    }
    for ch in &r.changes {
        let mark = match ch.change.as_str() {
            "added" => "+",
            "deleted" => "-",
            "changed" => "~",
            _ => "=",
        };
        println!("{mark} {} ({})", ch.job, ch.change);
    }
    if r.applied {
        println!("applied version {}", r.version);
    } else {
        println!("would apply version {} (nothing changed yet)", r.version);
    }
    Ok(())
}

/// Runs a cron verb.
pub fn run(rt: &tokio::runtime::Runtime, g: &Global, cmd: CronCmd) -> anyhow::Result<i32> {
    let json = g.json;
    match cmd {
        CronCmd::Next { expr, tz, from, n } => {
            let s = Schedule::parse(&expr, tz.as_deref()).map_err(|e| {
                fail(
                    format!("bad schedule `{expr}`"),
                    e.to_string(),
                    "write 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or a macro like @daily",
                )
            })?;
            let from = match from {
                Some(f) => chrono::DateTime::parse_from_rfc3339(&f)
                    .map_err(|e| {
                        fail(
                            format!("bad --from `{f}`"),
                            e.to_string(),
                            "give an RFC 3339 time like 2026-11-22T06:00:00Z",
                        )
                    })?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let next = s.upcoming(from, n.min(10_000));
            let shown: Vec<String> = next
                .iter()
                .map(|t| output::time(t.timestamp_millis()))
                .collect();
            if json {
                output::json(&serde_json::json!({ "next": shown }))?;
            } else {
                let tz = s.tz();
                for t in &next {
                    println!(
                        "{}  ({} {})",
                        output::time(t.timestamp_millis()),
                        t.with_timezone(&tz).format("%a %Y-%m-%d %H:%M:%S"),
                        tz.name()
                    );
                }
            }
            Ok(0)
        }
        other => rt.block_on(run_remote(g, other)),
    }
}
