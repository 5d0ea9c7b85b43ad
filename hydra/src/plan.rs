//! The planner: a pure function `due(jobs, history, now) -> decisions`.
//! No clock, no IO: the controller passes `now` and the history it read
//! from the replicated state, and proposes each decision keyed by
//! `(job, scheduled_at)`, so a tick is decided once whoever decides it.
//!
//! Rules, per job that is not paused, for each scheduled time `s` after the
//! job's cursor (its newest decided tick, or when it was applied) up to
//! `now`:
//! - **Missed ticks**: a tick is *late* when `now − s` exceeds
//!   [`LATE_AFTER`] (no leader fired it in time). Late ticks follow
//!   `missed`: `skip` records each as skipped; `latest` fires only the
//!   newest late tick and skips the others; `all` fires up to
//!   `max_catch_up` of the newest and skips the older ones. There is no
//!   other cut-off: a job is never given up on. Only the newest
//!   [`MAX_SKIPS_RECORDED`] skipped ticks are recorded one by one.
//! - **Dependencies**: a run of a job with `depends_on` needs each
//!   upstream's run for the same `s` (with `window`, its newest run in
//!   `[s − window, s]`) to have succeeded. While one is pending or running
//!   the tick waits, up to `dependency_wait`; then it is skipped as
//!   `dependency X late`. A failed or skipped upstream run skips it at once
//!   as `dependency X failed`; no upstream run at all counts as late.
//! - **Concurrency**: with a run of the job still going, `forbid` skips
//!   the new tick, `replace` fires it and cancels the old run, `allow`
//!   fires it.
//!
//! Decisions come out in time order per job, jobs in name order.

use crate::schedule::Schedule;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// A tick older than this when first decided was missed.
pub const LATE_AFTER: Duration = Duration::seconds(10);
/// At most this many missed ticks of one job are recorded one by one as
/// skipped; older ones are only counted (in the oldest recorded one's reason).
pub const MAX_SKIPS_RECORDED: usize = 100;
/// A walk over more ticks than this stops (a per-second job down for ~12 days).
const MAX_TICKS: usize = 1_000_000;

pub use charter_config::cron::{Concurrency, Missed};
pub use charter_config::states::RunState;

/// A job as the planner needs it.
#[derive(Clone, Debug)]
pub struct Job {
    /// Unique name.
    pub name: String,
    /// When it fires.
    pub schedule: Schedule,
    /// Upstream jobs whose runs must succeed first.
    pub depends_on: Vec<String>,
    /// With a window, an upstream's newest run within it counts.
    pub window: Option<Duration>,
    /// How long a tick waits for its upstream runs.
    pub dependency_wait: Duration,
    /// Runs at once.
    pub concurrency: Concurrency,
    /// Missed ticks.
    pub missed: Missed,
    /// With `missed = all`: at most this many late ticks fire.
    pub max_catch_up: u32,
    /// Paused jobs decide nothing.
    pub paused: bool,
    /// Ticks at or before this are never decided (when the job was applied).
    pub since: DateTime<Utc>,
}

/// One decided tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The tick.
    pub scheduled_at: DateTime<Utc>,
    /// How it stands.
    pub state: RunState,
}

/// Every decided tick, by job and time.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Runs of each job by scheduled time.
    pub runs: BTreeMap<String, BTreeMap<DateTime<Utc>, Run>>,
}

impl History {
    /// Records a run (tests and the controller's view of the state).
    pub fn record(&mut self, job: &str, scheduled_at: DateTime<Utc>, state: RunState) {
        self.runs.entry(job.to_string()).or_default().insert(
            scheduled_at,
            Run {
                scheduled_at,
                state,
            },
        );
    }

    fn newest(&self, job: &str) -> Option<DateTime<Utc>> {
        self.runs
            .get(job)
            .and_then(|r| r.keys().next_back().copied())
    }

    fn running(&self, job: &str) -> Vec<DateTime<Utc>> {
        self.runs
            .get(job)
            .map(|r| {
                r.values()
                    .filter(|x| x.state == RunState::Running)
                    .map(|x| x.scheduled_at)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A decision about one tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run it; cancel the runs at `replaces` first (concurrency `replace`).
    Fire {
        /// The job.
        job: String,
        /// The tick.
        scheduled_at: DateTime<Utc>,
        /// Running ticks of the same job to cancel.
        replaces: Vec<DateTime<Utc>>,
    },
    /// Record it as skipped, with the reason.
    Skip {
        /// The job.
        job: String,
        /// The tick.
        scheduled_at: DateTime<Utc>,
        /// Why, e.g. `dependency ingest failed`.
        reason: String,
    },
}

enum Upstream {
    Ok,
    Wait,
    Failed(String),
    Late(String),
}

fn upstream(job: &Job, history: &History, s: DateTime<Utc>, now: DateTime<Utc>) -> Upstream {
    for dep in &job.depends_on {
        let runs = history.runs.get(dep);
        let run = match job.window {
            None => runs.and_then(|r| r.get(&s)),
            Some(w) => runs.and_then(|r| r.range(s - w..=s).next_back().map(|(_, x)| x)),
        };
        match run.map(|r| r.state) {
            Some(RunState::Succeeded) => {}
            Some(RunState::Failed | RunState::Cancelled | RunState::Skipped) => {
                return Upstream::Failed(format!("dependency {dep} failed"));
            }
            Some(RunState::Running) | None => {
                return if now - s > job.dependency_wait {
                    Upstream::Late(format!("dependency {dep} late"))
                } else {
                    Upstream::Wait
                };
            }
        }
    }
    Upstream::Ok
}

/// Decides the ticks of `jobs` due by `now`.
pub fn due(jobs: &[Job], history: &History, now: DateTime<Utc>) -> Vec<Decision> {
    let mut sorted: Vec<&Job> = jobs.iter().filter(|j| !j.paused).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for job in sorted {
        due_of(job, history, now, &mut out);
    }
    out
}

/// `job`'s ticks after its newest decided one (or when it was applied), up
/// to `now`.
fn ticks(job: &Job, history: &History, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let cursor = history
        .newest(&job.name)
        .map_or(job.since, |n| n.max(job.since));
    let mut ticks = Vec::new();
    let mut t = cursor;
    while let Some(s) = job.schedule.next_after(t) {
        if s > now || ticks.len() >= MAX_TICKS {
            break;
        }
        ticks.push(s);
        t = s;
    }
    ticks
}

/// Of the late ticks, those the missed policy still fires.
fn kept_late(job: &Job, late: &[DateTime<Utc>]) -> Vec<DateTime<Utc>> {
    match job.missed {
        Missed::Skip => Vec::new(),
        Missed::Latest => late.last().copied().into_iter().collect(),
        Missed::All => late
            .iter()
            .rev()
            .take(job.max_catch_up.max(1) as usize)
            .rev()
            .copied()
            .collect(),
    }
}

/// Why a late tick is skipped, by the missed policy.
fn missed_why(job: &Job) -> String {
    match job.missed {
        Missed::Skip => "missed: no leader fired it in time (missed = skip)".to_string(),
        Missed::Latest => "missed: a later tick was fired instead (missed = latest)".to_string(),
        Missed::All => format!("missed: beyond max_catch_up = {}", job.max_catch_up.max(1)),
    }
}

/// The decisions for one job's due ticks, in order.
fn due_of(job: &Job, history: &History, now: DateTime<Utc>, out: &mut Vec<Decision>) {
    let ticks = ticks(job, history, now);
    let late: Vec<DateTime<Utc>> = ticks
        .iter()
        .copied()
        .filter(|s| now - *s > LATE_AFTER)
        .collect();
    let keep_late = kept_late(job, &late);
    let dropped: Vec<DateTime<Utc>> = late
        .iter()
        .copied()
        .filter(|s| !keep_late.contains(s))
        .collect();
    let unrecorded = dropped.len().saturating_sub(MAX_SKIPS_RECORDED);
    let first_recorded = dropped.get(unrecorded).copied();
    let mut running = history.running(&job.name);
    for s in ticks {
        let skip = |reason: String| Decision::Skip {
            job: job.name.clone(),
            scheduled_at: s,
            reason,
        };
        if now - s > LATE_AFTER && !keep_late.contains(&s) {
            if first_recorded.is_none_or(|f| s < f) {
                continue; // counted below, not recorded one by one
            }
            let mut why = missed_why(job);
            if unrecorded > 0 && Some(s) == first_recorded {
                why.push_str(&format!(" (and {unrecorded} earlier missed ticks)"));
            }
            out.push(skip(why));
            continue;
        }
        match upstream(job, history, s, now) {
            Upstream::Wait => break, // later ticks wait behind this one
            Upstream::Failed(why) | Upstream::Late(why) => {
                out.push(skip(why));
                continue;
            }
            Upstream::Ok => {}
        }
        match job.concurrency {
            Concurrency::Forbid if !running.is_empty() => {
                out.push(skip(
                    "the previous run is still going (concurrency = forbid)".into(),
                ));
            }
            Concurrency::Replace => {
                out.push(Decision::Fire {
                    job: job.name.clone(),
                    scheduled_at: s,
                    replaces: std::mem::take(&mut running),
                });
                running.push(s);
            }
            Concurrency::Allow | Concurrency::Forbid => {
                out.push(Decision::Fire {
                    job: job.name.clone(),
                    scheduled_at: s,
                    replaces: Vec::new(),
                });
                running.push(s);
            }
        }
    }
}

#[cfg(test)]
mod tests;
