//! The controller: read, calculate, propose. It reads the jobs and the runs
//! that matter (`Cron.Plan`), asks the pure planner what is due at its
//! clock's `now`, and proposes each decision keyed by `(job, scheduled_at)`
//! (`Cron.Fire`, `Cron.Skip`). The state applies a key once, so two
//! controllers, a retry or a new leader re-deciding a tick change nothing.
//!
//! It wakes at the next tick of any job (so a per-second job fires within
//! milliseconds of its second) and at least every [`POLL`] to follow
//! dependencies, applies and pauses. Embedded in a server it acts only
//! while that member leads; standalone it acts through whichever member
//! answers.

use crate::plan::{self, Decision, History, Job, RunState};
use crate::schedule::Schedule;
use charter_config::codec::{self, Kind};
use charter_config::cron::JobConfig;
use charter_config::spec::LeaseSpec;
use charter_proto as pb;
use charter_proto::conn::Servers;
use charter_proto::cron_client::CronClient;
use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use std::time::Duration;
use tokio::sync::watch;

/// The longest sleep between two looks at the state.
pub const POLL: Duration = Duration::from_millis(200);
/// A cron task's lease waits this long for capacity when its file sets no `wait`.
pub const DEFAULT_WAIT_MS: u64 = 10 * 60_000;
/// A cron task's lease lasts this long when its file sets no `for`.
pub const DEFAULT_FOR_MS: u64 = 3_600_000;

/// How the controller runs.
pub struct Options {
    /// Server addresses.
    pub servers: Vec<String>,
    /// An admin token (fires and skips need one).
    pub token: Option<String>,
    /// Act only when the member answering `Cron.Plan` leads (embedded).
    pub only_leader: bool,
}

/// A job read from the state: its definition and the planner's view.
pub struct Loaded {
    /// The definition.
    pub config: JobConfig,
    /// The planner's view.
    pub job: Job,
    /// What each run asks for.
    pub lease: LeaseSpec,
}

/// Reads one job of a `Cron.Plan` reply.
pub fn load(j: &pb::CronJob) -> Result<Loaded, String> {
    let config: JobConfig = codec::decode(Kind::Job, &j.definition)
        .map_err(|e| format!("job {}: unreadable definition: {e}", j.name))?;
    let zone = Some(config.timezone.as_str()).filter(|z| !z.is_empty());
    let schedule =
        Schedule::parse(&config.schedule, zone).map_err(|e| format!("job {}: {}", j.name, e.0))?;
    let job = Job {
        name: config.name.clone(),
        schedule,
        depends_on: config.depends_on.clone(),
        window: (config.window_ms > 0).then(|| Span::milliseconds(config.window_ms as i64)),
        dependency_wait: Span::milliseconds(config.dependency_wait_ms as i64),
        concurrency: config.concurrency,
        missed: config.missed,
        max_catch_up: config.max_catch_up,
        paused: j.paused,
        since: millis(j.since_ms),
    };
    let lease = config
        .task
        .lease
        .spec()
        .map_err(|e| format!("job {}: {e}", j.name))?;
    Ok(Loaded { config, job, lease })
}

/// A state time as a UTC time.
pub fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Replaces `{job}`, `{scheduled_at}` (RFC 3339, UTC), `{scheduled_date}`
/// (YYYY-MM-DD in the job's zone), `{scheduled_time}` (HH:MM:SS there) and
/// `{scheduled_unix}` (seconds). Unknown `{...}` stay as written.
pub fn expand(text: &str, job: &str, at: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    let local = at.with_timezone(&tz);
    text.replace("{job}", job)
        .replace(
            "{scheduled_at}",
            &at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
        .replace("{scheduled_date}", &local.format("%Y-%m-%d").to_string())
        .replace("{scheduled_time}", &local.format("%H:%M:%S").to_string())
        .replace("{scheduled_unix}", &at.timestamp().to_string())
}

/// The `Cron.Fire` request for a run of `job` at `at`: its task with the
/// placeholders expanded and `CHARTER_CRON_JOB`/`CHARTER_CRON_SCHEDULED_AT`
/// in its environment, and its lease with Hydra's defaults for `for` and `wait`.
pub fn fire_request(
    l: &Loaded,
    at: DateTime<Utc>,
    manual: bool,
    replaces: &[DateTime<Utc>],
) -> pb::FireCronRequest {
    let name = &l.config.name;
    let tz = l.job.schedule.tz();
    let mut task = l.config.task.spec();
    // The job's `retries` are its task's: the agent runs it again with backoff.
    task.retries = task.retries.max(l.config.retries);
    task.command = task
        .command
        .iter()
        .map(|a| expand(a, name, at, tz))
        .collect();
    for v in task.env.values_mut() {
        *v = expand(v, name, at, tz);
    }
    task.env.insert("CHARTER_CRON_JOB".into(), name.clone());
    task.env.insert(
        "CHARTER_CRON_SCHEDULED_AT".into(),
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    if task.name.is_empty() {
        task.name = name.clone();
    }
    let mut lease = l.lease.clone();
    if lease.duration_ms == 0 {
        lease.duration_ms = DEFAULT_FOR_MS;
    }
    if lease.wait_ms == 0 {
        lease.wait_ms = DEFAULT_WAIT_MS;
    }
    if lease.reason.is_empty() {
        lease.reason = format!("cron {name}");
    }
    pb::FireCronRequest {
        idempotency_key: String::new(),
        job: name.clone(),
        scheduled_at_ms: at.timestamp_millis(),
        manual,
        replaces_ms: replaces.iter().map(|r| r.timestamp_millis()).collect(),
        lease: Some((&lease).into()),
        task: Some((&task).into()),
    }
}

/// A run's state from the wire; one this build does not know counts as
/// failed (it did not succeed).
fn run_state(s: &str) -> RunState {
    s.parse().unwrap_or(RunState::Failed)
}

/// The planner's inputs from a `Cron.Plan` reply; jobs that cannot be read
/// are left out with their error.
pub fn view(reply: &pb::CronPlanReply) -> (Vec<Loaded>, History, Vec<String>) {
    let mut jobs = Vec::new();
    let mut history = History::default();
    let mut errors = Vec::new();
    for pj in &reply.jobs {
        let Some(j) = &pj.job else { continue };
        match load(j) {
            Ok(l) => jobs.push(l),
            Err(e) => errors.push(e),
        }
        for r in &pj.runs {
            history.record(&r.job, millis(r.scheduled_at_ms), run_state(&r.state));
        }
    }
    (jobs, history, errors)
}

/// One look: reads the state, decides what is due at `now`, proposes it.
/// Returns the next time any job ticks, to sleep until then.
///
/// Over 80 lines: one turn of Hydra: read, plan, propose each decision.
pub async fn step(
    servers: &Servers,
    only_leader: bool,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, String> {
    let reply = servers
        .call(Duration::from_secs(2), |ch| {
            let r = servers.req(pb::CronPlanRequest {
                leader_only: only_leader,
            });
            async move { CronClient::new(ch).plan(r).await }
        })
        .await
        .map_err(|f| {
            format!(
                "reading the cron plan from {}: {}",
                f.addr,
                f.status.message()
            )
        })?;
    if only_leader && !reply.leader {
        return Ok(None);
    }
    tracing::debug!(
        late_ms = (Utc::now() - now).num_milliseconds(),
        "hydra read the plan"
    );
    let (jobs, history, errors) = view(&reply);
    for e in errors {
        tracing::warn!("hydra: {e}");
    }
    let plain: Vec<Job> = jobs.iter().map(|l| l.job.clone()).collect();
    for d in plan::due(&plain, &history, now) {
        let res = match &d {
            Decision::Fire {
                job,
                scheduled_at,
                replaces,
            } => {
                let Some(l) = jobs.iter().find(|l| &l.config.name == job) else {
                    continue;
                };
                let req = fire_request(l, *scheduled_at, false, replaces);
                servers
                    .call(Duration::from_secs(5), |ch| {
                        let r = servers.req(req.clone());
                        async move { CronClient::new(ch).fire(r).await }
                    })
                    .await
                    .map(|_| ())
            }
            Decision::Skip {
                job,
                scheduled_at,
                reason,
            } => {
                let req = pb::SkipCronRequest {
                    job: job.clone(),
                    scheduled_at_ms: scheduled_at.timestamp_millis(),
                    reason: reason.clone(),
                };
                servers
                    .call(Duration::from_secs(5), |ch| {
                        let r = servers.req(req.clone());
                        async move { CronClient::new(ch).skip(r).await }
                    })
                    .await
                    .map(|_| ())
            }
        };
        tracing::debug!(
            late_ms = (Utc::now() - now).num_milliseconds(),
            "hydra decided {d:?}"
        );
        if let Err(f) = res {
            // Nothing is lost: the tick is still undecided and the next
            // look decides it again under the same key.
            return Err(format!("proposing {d:?}: {}", f.status.message()));
        }
    }
    Ok(jobs
        .iter()
        .filter(|l| !l.job.paused)
        .filter_map(|l| l.job.schedule.next_after(now))
        .min())
}

/// Runs the controller until `stop` turns true.
pub async fn run(opts: Options, mut stop: watch::Receiver<bool>) {
    let servers = match Servers::new(&opts.servers, opts.token.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("hydra cannot start: {e}");
            return;
        }
    };
    let mut last_error = String::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let now = Utc::now();
        let sleep = match step(&servers, opts.only_leader, now).await {
            Ok(next) => {
                last_error.clear();
                let poll = Span::from_std(POLL).unwrap_or_default();
                let until = next.map_or(poll, |n| (n - Utc::now()).min(poll));
                until.to_std().unwrap_or_default()
            }
            Err(e) => {
                if e != last_error {
                    tracing::warn!("hydra: {e}");
                    last_error = e;
                }
                POLL
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_in_the_jobs_zone() {
        let at = Utc.with_ymd_and_hms(2026, 3, 1, 23, 30, 0).unwrap();
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            expand(
                "{job} {scheduled_at} {scheduled_date} {scheduled_time} {x}",
                "r",
                at,
                tz
            ),
            "r 2026-03-01T23:30:00Z 2026-03-02 00:30:00 {x}"
        );
        assert_eq!(
            expand("{scheduled_unix}", "r", at, chrono_tz::UTC),
            "1772407800"
        );
    }
}
