//! Cron: applying cron files and reading jobs and history for people, and
//! the keyed fires and skips Hydra's controller proposes.

use super::Api;
use super::auth::{Principal, Scope, controller, principal, principal_or};
use crate::state::{Applied, Command, CronFire, CronJob, CronRun, JobDef, RunState, State};
use charter_config::AnyConfig;
use charter_proto as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Checks a schedule expression and zone, and tells its next ticks:
/// Hydra's parser, handed in by the binary (the scheduler does not depend
/// on Hydra).
#[derive(Clone)]
pub struct ScheduleChecker {
    /// `(expression, zone) -> Ok or the reason`.
    pub check: Arc<CheckFn>,
    /// `(expression, zone, after ms, n) -> the next n ticks (ms)`.
    pub upcoming: Arc<UpcomingFn>,
}

/// See [`ScheduleChecker::check`].
pub type CheckFn = dyn Fn(&str, Option<&str>) -> Result<(), String> + Send + Sync;

/// See [`ScheduleChecker::upcoming`].
pub type UpcomingFn = dyn Fn(&str, Option<&str>, i64, usize) -> Vec<i64> + Send + Sync;

impl std::fmt::Debug for ScheduleChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScheduleChecker")
    }
}

/// A run in wire form.
pub fn run_pb(r: &CronRun) -> pb::CronRun {
    pb::CronRun {
        job: r.job.clone(),
        scheduled_at_ms: r.scheduled_at,
        fired_at_ms: r.fired_at,
        manual: r.manual,
        state: r.state.as_str().into(),
        task_id: r.task.unwrap_or(0),
        exit_code: r.exit_code,
        duration_ms: r.duration_ms(),
        reason: r.reason.clone(),
    }
}

/// A job in wire form, with its newest run, as `who` may see it: its
/// `secret_env` values are hidden from anyone but its owner and admins.
fn job_pb(s: &State, j: &CronJob, who: &Principal) -> Result<pb::CronJob, Status> {
    let mut config = charter_config::cron::JobConfig::from(&j.config);
    if !who.admin && who.name != j.owner {
        charter_config::task::hide(&mut config.task.secret_env);
    }
    let last = s
        .cron
        .runs
        .get(&j.config.name)
        .and_then(|r| r.values().next_back())
        .map(run_pb);
    Ok(pb::CronJob {
        name: j.config.name.clone(),
        definition: super::convert::record(charter_config::codec::Kind::Job, &config)?,
        version: j.version.clone(),
        owner: j.owner.clone(),
        paused: j.paused,
        since_ms: j.since,
        last,
        schedule: j.config.schedule.clone(),
        timezone: j.config.timezone.clone(),
    })
}

fn run_reply(a: Applied) -> Result<Response<pb::CronRun>, Status> {
    match a {
        Applied::CronRun(r) => Ok(Response::new(run_pb(&r))),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

fn job_reply(s: &State, a: Applied, who: &Principal) -> Result<Response<pb::CronJob>, Status> {
    match a {
        Applied::CronJob(j) => Ok(Response::new(job_pb(s, &j, who)?)),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The runs of `job` the planner needs: from `from` on, and every running one.
/// What Hydra plans from (`Cron.Plan`): every job with its runs from its
/// own newest tick, and from where any downstream job's pending ticks may
/// look (its cursor minus its window); running ones always.
pub fn plan_reply(s: &State, who: &Principal, leader: bool) -> Result<pb::CronPlanReply, Status> {
    let newest = |name: &str| {
        s.cron
            .runs
            .get(name)
            .and_then(|r| r.iter().rev().find(|(_, r)| !r.manual).map(|(at, _)| *at))
    };
    let cursor = |j: &CronJob| newest(&j.config.name).map_or(j.since, |n| n.max(j.since));
    let jobs = s
        .cron
        .jobs
        .values()
        .map(|j| {
            let mut from = newest(&j.config.name).unwrap_or(i64::MAX);
            for d in s.cron.jobs.values() {
                if d.config.depends_on.contains(&j.config.name) {
                    from = from.min(cursor(d) - d.config.window_ms as i64);
                }
            }
            Ok(pb::CronPlanJob {
                job: Some(job_pb(s, j, who)?),
                runs: plan_runs(s, &j.config.name, from),
            })
        })
        .collect::<Result<_, Status>>()?;
    Ok(pb::CronPlanReply {
        jobs,
        leader,
        time_ms: s.time,
    })
}

/// A fire request from the wire (Hydra's or `cron trigger`'s), checked.
pub fn fire_command(r: pb::FireCronRequest) -> Result<CronFire, Status> {
    let lease = crate::state::LeaseSpec::try_from(r.lease.unwrap_or_default())?;
    let task = crate::state::TaskSpec::try_from(r.task.unwrap_or_default())?;
    Ok(CronFire {
        job: r.job,
        scheduled_at: r.scheduled_at_ms,
        manual: r.manual,
        replaces: r.replaces_ms,
        lease: Box::new(lease),
        task: Box::new(task),
    })
}

fn plan_runs(s: &State, job: &str, from: i64) -> Vec<pb::CronRun> {
    let Some(runs) = s.cron.runs.get(job) else {
        return Vec::new();
    };
    runs.values()
        .filter(|r| !r.manual && (r.scheduled_at >= from || r.state == RunState::Running))
        .map(run_pb)
        .collect()
}

impl Api {
    /// Reads and checks a cron file the way `charter validate` does.
    fn parse_cron(
        &self,
        who: &Principal,
        file: &str,
        text: &str,
    ) -> Result<(String, Vec<JobDef>), Status> {
        let check = self.schedule_check.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this server cannot check schedules (started without Hydra's parser)",
            )
        })?;
        let name = if file.is_empty() {
            "crontab.toml"
        } else {
            file
        };
        let cfg = match charter_config::load_with(name, text, &|e, z| (check.check)(e, z)) {
            Ok(AnyConfig::Cron(c)) => c,
            Ok(other) => {
                return Err(Status::invalid_argument(format!(
                    "{name} is a {} config, not a cron file; a cron file has [[job]] tables",
                    other.kind()
                )));
            }
            Err(d) => {
                return Err(Status::invalid_argument(format!(
                    "{name} is not a valid cron file; nothing was applied:\n{d}"
                )));
            }
        };
        let hash = charter_config::canonical::hash(&charter_config::canonical::to_bytes(&cfg));
        let stem = std::path::Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "crontab".into());
        let vars = charter_config::fingerprint::Vars {
            user: who.name.clone(),
            kind: "cron".into(),
            name: stem,
            hash,
            ..Default::default()
        };
        let version = charter_config::fingerprint::render("{user}/{kind}/{name}@{hash}", &vars)
            .map_err(Status::internal)?
            .id;
        let jobs = cfg
            .jobs
            .into_iter()
            .map(|c| JobDef {
                owner: if c.owner.is_empty() {
                    who.name.clone()
                } else {
                    c.owner.clone()
                },
                config: (&c).into(),
            })
            .collect();
        Ok((version, jobs))
    }
}

#[tonic::async_trait]
impl pb::cron_server::Cron for Api {
    async fn apply(
        &self,
        req: Request<pb::ApplyCronRequest>,
    ) -> Result<Response<pb::ApplyCronReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let (version, jobs) = self.parse_cron(&who, &r.file, &r.text)?;
        if r.dry_run {
            self.barrier(false).await?;
            let changes = self
                .member
                .read(|s| s.cron_plan_apply(&who.name, who.admin, &jobs))
                .map_err(super::refusal_status)?;
            return Ok(Response::new(pb::ApplyCronReply {
                version,
                changes: changes
                    .into_iter()
                    .map(|c| pb::CronChange {
                        job: c.job,
                        change: c.change,
                    })
                    .collect(),
                applied: false,
            }));
        }
        let out = self
            .submit(
                &who,
                &r.idempotency_key,
                Command::CronApply {
                    version: version.clone(),
                    jobs,
                },
            )
            .await?;
        match out {
            Applied::CronApplied { changes } => Ok(Response::new(pb::ApplyCronReply {
                version,
                changes: changes
                    .into_iter()
                    .map(|c| pb::CronChange {
                        job: c.job,
                        change: c.change,
                    })
                    .collect(),
                applied: true,
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListCronRequest>,
    ) -> Result<Response<pb::ListCronReply>, Status> {
        let who = principal(&req)?;
        self.barrier(req.get_ref().stale).await?;
        let reply = self.member.read(|s| {
            Ok::<_, Status>(pb::ListCronReply {
                jobs: s
                    .cron
                    .jobs
                    .values()
                    .map(|j| job_pb(s, j, &who))
                    .collect::<Result<_, _>>()?,
                version: s.cron.version.clone(),
            })
        })?;
        Ok(Response::new(reply))
    }

    async fn history(
        &self,
        req: Request<pb::CronHistoryRequest>,
    ) -> Result<Response<pb::CronHistoryReply>, Status> {
        let _who = principal(&req)?;
        let r = req.into_inner();
        self.barrier(r.stale).await?;
        let n = if r.n == 0 { 20 } else { r.n as usize };
        let runs = self.member.read(|s| {
            let runs = s.cron.runs.get(&r.job)?;
            let mut v: Vec<pb::CronRun> = runs.values().rev().take(n).map(run_pb).collect();
            v.reverse();
            Some(v)
        });
        // Older runs than the live state keeps come from the history store.
        let runs = match runs {
            Some(mut v) if v.len() < n => {
                let first = v.first().map_or(i64::MAX, |r| r.scheduled_at_ms);
                let mut older: Vec<pb::CronRun> = self
                    .member
                    .history()
                    .map(|h| h.runs(&r.job, n - v.len()))
                    .unwrap_or_default()
                    .iter()
                    .filter(|x| x.scheduled_at < first)
                    .map(run_pb)
                    .collect();
                older.reverse();
                older.append(&mut v);
                Some(older)
            }
            other => other,
        };
        match runs {
            Some(runs) => Ok(Response::new(pb::CronHistoryReply { runs })),
            None if self.member.read(|s| s.cron.jobs.contains_key(&r.job)) => {
                Ok(Response::new(pb::CronHistoryReply { runs: Vec::new() }))
            }
            None => Err(Status::not_found(format!(
                "cron job {} has no history and does not exist; `charter cron list` shows the jobs",
                r.job
            ))),
        }
    }

    async fn set_paused(
        &self,
        req: Request<pb::SetCronPausedRequest>,
    ) -> Result<Response<pb::CronJob>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let out = self
            .submit(
                &who,
                &r.idempotency_key,
                Command::CronPause {
                    job: r.job,
                    paused: r.paused,
                },
            )
            .await?;
        self.member.read(|s| job_reply(s, out, &who))
    }

    async fn delete(
        &self,
        req: Request<pb::CronJobRequest>,
    ) -> Result<Response<pb::CronJob>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let out = self
            .submit(&who, &r.idempotency_key, Command::CronDelete { job: r.job })
            .await?;
        self.member.read(|s| job_reply(s, out, &who))
    }

    async fn fire(
        &self,
        req: Request<pb::FireCronRequest>,
    ) -> Result<Response<pb::CronRun>, Status> {
        let who = principal_or(&req, Scope::Hydra)?;
        let r = req.into_inner();
        let key = r.idempotency_key.clone();
        let fire = fire_command(r)?;
        // The (job, scheduled_at) key is in the command itself: a scheduled
        // fire needs no client key to be applied once.
        let out = if key.is_empty() && !fire.manual {
            self.submit_unkeyed(&who, Command::CronFire(fire)).await?
        } else {
            self.submit(&who, &key, Command::CronFire(fire)).await?
        };
        run_reply(out)
    }

    async fn skip(
        &self,
        req: Request<pb::SkipCronRequest>,
    ) -> Result<Response<pb::CronRun>, Status> {
        let who = controller(&req, Scope::Hydra, "skipping cron ticks")?;
        let r = req.into_inner();
        run_reply(
            self.submit_unkeyed(
                &who,
                Command::CronSkip {
                    job: r.job,
                    scheduled_at: r.scheduled_at_ms,
                    reason: r.reason,
                },
            )
            .await?,
        )
    }

    async fn plan(
        &self,
        req: Request<pb::CronPlanRequest>,
    ) -> Result<Response<pb::CronPlanReply>, Status> {
        let who = controller(&req, Scope::Hydra, "reading Hydra's plan")?;
        let is_leader = || self.member.status().role == crate::raft_driver::Role::Leader;
        if req.get_ref().leader_only && !is_leader() {
            return Ok(Response::new(pb::CronPlanReply::default()));
        }
        self.barrier(false).await?;
        let leader = is_leader();
        let reply = self.member.read(|s| plan_reply(s, &who, leader))?;
        Ok(Response::new(reply))
    }
}
