//! Hydra's replicated part: the applied cron jobs and every decided tick.
//!
//! A run is keyed by `(job, scheduled_at)`. `CronFire` and `CronSkip` for a
//! key that is already decided change nothing and return the run as it is:
//! whichever controller, leader or retry proposes a tick, it is decided
//! once. A fire submits the job's task in the same command, so a tick and
//! its task are never apart; the task's end settles the run.
//!
//! Each job keeps its newest [`RUNS_KEPT`] runs; fires and skips at or
//! before the newest dropped one are refused as already decided, so
//! trimming never reopens a tick.

use super::defs::JobDefinition;
use super::events::EventKind;
use super::{Applied, LeaseSpec, Millis, Outcome, Refusal, State, TaskSpec, TaskState};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

/// Runs kept per job; older ones are dropped (and stay decided).
pub const RUNS_KEPT: usize = 1_000;

/// An applied job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CronJob {
    /// Its definition, as validated from the file.
    pub config: JobDefinition,
    /// The fingerprint of the file version that last changed it.
    pub version: String,
    /// Who its runs belong to.
    pub owner: String,
    /// Who applied it; their next apply without it deletes it.
    pub applied_by: String,
    /// Paused jobs do not fire.
    pub paused: bool,
    /// Ticks at or before this are never decided (when it was applied or resumed).
    pub since: Millis,
    /// Ticks at or before this were decided and their runs dropped.
    #[serde(default)]
    pub trimmed_to: Option<Millis>,
}

pub use charter_config::states::RunState;

/// One decided tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CronRun {
    /// The job.
    pub job: String,
    /// The tick (for a manual run: when it was asked for).
    pub scheduled_at: Millis,
    /// When it was decided (the leader's time).
    pub fired_at: Millis,
    /// A `cron trigger`, not a tick.
    pub manual: bool,
    /// How it stands.
    pub state: RunState,
    /// Its task, if it fired.
    pub task: Option<u64>,
    /// Its task's exit code.
    pub exit_code: Option<i32>,
    /// When its task ended.
    pub ended_at: Option<Millis>,
    /// Why it was skipped or failed.
    pub reason: String,
}

impl CronRun {
    /// From firing to its task's end, once it ended.
    pub fn duration_ms(&self) -> Option<Millis> {
        self.ended_at.map(|e| e - self.fired_at)
    }
}

/// A job of an applied file, as the apply command carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDef {
    /// The validated definition.
    pub config: JobDefinition,
    /// Who its runs belong to.
    pub owner: String,
}

/// What an apply did (or, dry, would do) to one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobChange {
    /// The job.
    pub job: String,
    /// `added`, `changed`, `unchanged` or `deleted`.
    pub change: String,
}

/// The cron room: applied jobs and their decided ticks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cron {
    /// Applied jobs by name.
    pub jobs: OrdMap<String, CronJob>,
    /// Decided ticks, per job by scheduled time.
    pub runs: Runs,
    /// The fingerprint of the newest applied cron file.
    pub version: String,
}

impl State {
    /// What applying `jobs` as `principal`'s file would change: its jobs
    /// are added or changed, and jobs it applied before that the file no
    /// longer has are deleted. Refuses jobs another principal applied
    /// (unless admin) and owners other than the principal (unless admin).
    pub fn cron_plan_apply(
        &self,
        principal: &str,
        admin: bool,
        jobs: &[JobDef],
    ) -> Result<Vec<JobChange>, Refusal> {
        let mut out = Vec::new();
        for d in jobs {
            let name = &d.config.name;
            if !admin && d.owner != principal {
                return Err(Refusal::Denied {
                    reason: format!(
                        "job {name}: only an admin may set owner = \"{}\"; leave owner out to own it yourself",
                        d.owner
                    ),
                });
            }
            let change = match self.cron.jobs.get(name) {
                None => "added",
                Some(j) if j.applied_by != principal && !admin => {
                    return Err(Refusal::Denied {
                        reason: format!(
                            "job {name} was applied by {}; pick another name",
                            j.applied_by
                        ),
                    });
                }
                Some(j) if j.config == d.config && j.owner == d.owner => "unchanged",
                Some(_) => "changed",
            };
            out.push(JobChange {
                job: name.clone(),
                change: change.into(),
            });
        }
        for (name, j) in &self.cron.jobs {
            if j.applied_by == principal && !jobs.iter().any(|d| &d.config.name == name) {
                out.push(JobChange {
                    job: name.clone(),
                    change: "deleted".into(),
                });
            }
        }
        Ok(out)
    }

    pub(super) fn cron_apply(
        &mut self,
        principal: &str,
        admin: bool,
        version: &str,
        jobs: &[JobDef],
    ) -> Outcome {
        let changes = self.cron_plan_apply(principal, admin, jobs)?;
        let now = self.time;
        for c in &changes {
            match c.change.as_str() {
                "deleted" => {
                    self.cron.jobs.remove(&c.job);
                }
                "unchanged" => {}
                _ => {
                    let d = jobs
                        .iter()
                        .find(|d| d.config.name == c.job)
                        .expect("planned from these jobs");
                    let old = self.cron.jobs.get(&c.job);
                    // A new schedule starts now: its ticks before the
                    // change were never due, so they are not missed.
                    let same_times = old.is_some_and(|o| {
                        o.config.schedule == d.config.schedule
                            && o.config.timezone == d.config.timezone
                    });
                    let job = CronJob {
                        config: d.config.clone(),
                        version: version.to_string(),
                        owner: d.owner.clone(),
                        applied_by: principal.to_string(),
                        paused: d.config.paused,
                        since: match old {
                            Some(o) if same_times => o.since,
                            _ => now,
                        },
                        trimmed_to: old.and_then(|o| o.trimmed_to),
                    };
                    self.cron.jobs.insert(c.job.clone(), job);
                }
            }
        }
        self.cron.version = version.to_string();
        Ok(Applied::CronApplied { changes })
    }

    fn cron_job_for(&self, name: &str, principal: &str, admin: bool) -> Result<&CronJob, Refusal> {
        let job = self.cron.jobs.get(name).ok_or_else(|| Refusal::NotFound {
            what: format!("cron job {name}"),
        })?;
        if !admin && job.owner != principal && job.applied_by != principal {
            return Err(Refusal::Denied {
                reason: format!(
                    "cron job {name} belongs to {}, not to {principal}",
                    job.owner
                ),
            });
        }
        Ok(job)
    }

    pub(super) fn cron_set_paused(
        &mut self,
        name: &str,
        paused: bool,
        principal: &str,
        admin: bool,
    ) -> Outcome {
        self.cron_job_for(name, principal, admin)?;
        let now = self.time;
        let job = self.cron.jobs.get_mut(name).expect("looked up above");
        if job.paused && !paused {
            // Ticks while paused are not missed: they were never due.
            job.since = job.since.max(now);
        }
        job.paused = paused;
        Ok(Applied::CronJob(Box::new(job.clone())))
    }

    pub(super) fn cron_delete(&mut self, name: &str, principal: &str, admin: bool) -> Outcome {
        let job = self.cron_job_for(name, principal, admin)?.clone();
        self.cron.jobs.remove(name);
        Ok(Applied::CronJob(Box::new(job)))
    }

    /// The run of `(job, at)` if that tick is already decided (or trimmed).
    fn decided(&self, job: &CronJob, at: Millis) -> Option<Result<Applied, Refusal>> {
        if let Some(r) = self
            .cron
            .runs
            .get(&job.config.name)
            .and_then(|r| r.get(&at))
        {
            return Some(Ok(Applied::CronRun(Box::new(r.clone()))));
        }
        match job.trimmed_to {
            Some(t) if at <= t => Some(Err(Refusal::Denied {
                reason: format!(
                    "tick {at} of cron job {} was decided long ago (its run is no longer kept)",
                    job.config.name
                ),
            })),
            _ => None,
        }
    }

    fn record_run(&mut self, run: CronRun) -> Applied {
        let name = run.job.clone();
        let owner = self.cron.jobs.get(&name).map(|j| j.owner.clone());
        let tick = tick_name(run.scheduled_at, run.manual);
        let (kind, detail) = match run.state {
            RunState::Skipped => (EventKind::CronSkipped, format!("{tick}: {}", run.reason)),
            RunState::Running => (
                EventKind::CronFired,
                format!("{tick}, task {}", run.task.unwrap_or(0)),
            ),
            _ => (EventKind::CronFailed, format!("{tick}: {}", run.reason)),
        };
        let late = (!run.manual).then(|| run.fired_at - run.scheduled_at);
        self.note_ms(kind, owner.as_deref().unwrap_or(""), &name, detail, late);
        let runs = self.cron.runs.entry(name.clone()).or_default();
        runs.insert(run.scheduled_at, run.clone());
        let mut dropped = None;
        let mut gone = Vec::new();
        while runs.len() > RUNS_KEPT {
            match runs.iter().find(|(_, r)| r.state != RunState::Running) {
                Some((at, _)) => {
                    let at = *at;
                    if let Some(r) = runs.remove(&at) {
                        gone.push(super::Trimmed::CronRun(r));
                    }
                    dropped = Some(at);
                }
                None => break,
            }
        }
        if let Some(at) = dropped
            && let Some(job) = self.cron.jobs.get_mut(&name)
        {
            job.trimmed_to = Some(job.trimmed_to.map_or(at, |t| t.max(at)));
        }
        for g in gone {
            self.trimmed.push(g);
        }
        Applied::CronRun(Box::new(run))
    }

    /// Fires a tick (or a manual run): submits the job's task and records
    /// the run. A decided tick changes nothing. Scheduled fires come from
    /// controllers (admin); manual ones from the job's owner too.
    pub(super) fn cron_fire(&mut self, principal: &str, admin: bool, fire: &CronFire) -> Outcome {
        if !fire.manual && !admin {
            return Err(Refusal::Denied {
                reason: "firing scheduled ticks is Hydra's (an admin token); use `charter cron trigger` for a manual run".into(),
            });
        }
        let job = self.cron_job_for(&fire.job, principal, admin)?.clone();
        if let Some(done) = self.decided(&job, fire.scheduled_at) {
            return done;
        }
        for at in &fire.replaces {
            let task = self
                .cron
                .runs
                .get(&fire.job)
                .and_then(|r| r.get(at))
                .filter(|r| r.state == RunState::Running)
                .and_then(|r| r.task);
            if let Some(id) = task {
                let reason = format!(
                    "replaced by the run of {} (concurrency = replace)",
                    fire.scheduled_at
                );
                let _ = self.cancel_task(id, &job.owner, true);
                if let Some(r) = self
                    .cron
                    .runs
                    .get_mut(&fire.job)
                    .and_then(|r| r.get_mut(at))
                {
                    r.reason = reason;
                }
            }
        }
        let mut run = CronRun {
            job: fire.job.clone(),
            scheduled_at: fire.scheduled_at,
            fired_at: self.time,
            manual: fire.manual,
            state: RunState::Running,
            task: None,
            exit_code: None,
            ended_at: None,
            reason: String::new(),
        };
        let mut task = fire.task.clone();
        if task.name.is_empty() {
            task.name = fire.job.clone();
        }
        match self.submit_task(&job.owner, &fire.lease, &task) {
            Ok(Applied::Task { task, .. }) => {
                run.task = Some(task.id);
                if let Some(t) = self.tasks.all.get_mut(&task.id) {
                    t.run = Some((fire.job.clone(), fire.scheduled_at));
                }
            }
            Ok(other) => unreachable!("submit_task returns a task, got {other:?}"),
            Err(e) => {
                run.state = RunState::Failed;
                run.ended_at = Some(self.time);
                run.reason = format!("could not submit its task: {e}");
            }
        }
        Ok(self.record_run(run))
    }

    pub(super) fn cron_skip(
        &mut self,
        job: &str,
        scheduled_at: Millis,
        reason: &str,
        admin: bool,
    ) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: "skipping ticks is Hydra's (an admin token)".into(),
            });
        }
        let j = self.cron_job_for(job, "", true)?.clone();
        if let Some(done) = self.decided(&j, scheduled_at) {
            return done;
        }
        Ok(self.record_run(CronRun {
            job: job.to_string(),
            scheduled_at,
            fired_at: self.time,
            manual: false,
            state: RunState::Skipped,
            task: None,
            exit_code: None,
            ended_at: None,
            reason: reason.to_string(),
        }))
    }

    /// A task ended: its run, if it has one, takes its outcome.
    pub(super) fn settle_run(&mut self, task: u64) {
        let Some(t) = self.tasks.all.get(&task) else {
            return;
        };
        let Some((job, at)) = t.run.clone() else {
            return;
        };
        if !t.state.is_ended() {
            return;
        }
        let (state, code, ended, message) = (t.state, t.exit_code, t.ended_at, t.message.clone());
        let Some(run) = self.cron.runs.get_mut(&job).and_then(|r| r.get_mut(&at)) else {
            return;
        };
        if run.state != RunState::Running {
            return;
        }
        run.state = match state {
            TaskState::Succeeded => RunState::Succeeded,
            TaskState::Cancelled => RunState::Cancelled,
            _ => RunState::Failed,
        };
        run.exit_code = code;
        run.ended_at = ended.or(Some(self.time));
        if run.reason.is_empty() && state != TaskState::Succeeded {
            run.reason = format!("task {task} {}: {message}", state.as_str());
        }
        let (kind, detail) = match run.state {
            RunState::Succeeded => (EventKind::CronSucceeded, tick_name(at, run.manual)),
            _ => (
                EventKind::CronFailed,
                format!("{}: {}", tick_name(at, run.manual), run.reason),
            ),
        };
        let owner = self.cron.jobs.get(&job).map(|j| j.owner.clone());
        self.note(kind, owner.as_deref().unwrap_or(""), &job, detail);
    }
}

/// How an event names a tick: `tick 2026-12-04T10:00:00Z` or `manual run`.
fn tick_name(at: Millis, manual: bool) -> String {
    if manual {
        return "manual run".into();
    }
    match chrono::DateTime::from_timestamp_millis(at) {
        Some(t) => format!("tick {}", t.format("%Y-%m-%dT%H:%M:%SZ")),
        None => format!("tick {at}"),
    }
}

/// A fire as the command carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CronFire {
    /// The job.
    pub job: String,
    /// The tick (manual: when it was asked for).
    pub scheduled_at: Millis,
    /// A `cron trigger`.
    pub manual: bool,
    /// Running ticks of the job to cancel first (concurrency = replace).
    pub replaces: Vec<Millis>,
    /// The lease its task runs in.
    pub lease: Box<LeaseSpec>,
    /// Its task, placeholders expanded.
    pub task: Box<TaskSpec>,
}

/// Runs by tick, per job.
pub type Runs = OrdMap<String, OrdMap<Millis, CronRun>>;
