//! The pure planner of a deployment: from the app (desired), the
//! deployment and its tasks as the state has them (observed), and `now`, the
//! one thing to do next. The controller carries it out and proposes the
//! result; the planner does no IO, so a controller on a new leader resumes
//! from the replicated state alone.
//!
//! Rules:
//! - Before promotion, any failure, or the progress deadline passing,
//!   rolls back: the state releases the new servers and the old version
//!   stays active. The failed step and the reason are recorded.
//! - `await_healthy` finishes when every new server has been healthy for
//!   `min_healthy`; the old version serves until then and until promotion.
//! - A build of the same commit already in the store is reused.
//! - After promotion there is no way back: `retire` waits [`DRAIN_MS`] for
//!   requests in flight to the old servers, then retires them.

use charter_config::deployment::{DeployStep, Deployment, StepState, TaskView};
use charter_config::states::{HealthState, LeaseState, TaskState};
use charter_config::units::format_duration;
use std::collections::BTreeMap;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// After promotion, the old servers keep running this long for requests
/// already sent to them.
pub const DRAIN_MS: i64 = 2_000;

/// What the app asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The deployment must be promoted within this many ms of its start.
    pub progress_deadline_ms: i64,
    /// How long every new server must stay healthy before promotion.
    pub min_healthy_ms: i64,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing yet.
    Wait,
    /// Fetch the repository and resolve the commit.
    Fetch,
    /// Submit the build task.
    SubmitBuild,
    /// Submit one task per server.
    SubmitServers,
    /// The current step is done.
    Done {
        /// The step.
        step: DeployStep,
        /// Build: the artifact's sha256.
        artifact: String,
        /// A note for the record.
        message: String,
    },
    /// The current step failed: roll back.
    Fail {
        /// The step.
        step: DeployStep,
        /// Why.
        reason: String,
        /// A build task whose output should be kept.
        log_of: Option<u64>,
    },
}

fn done(step: DeployStep, message: impl Into<String>) -> Action {
    Action::Done {
        step,
        artifact: String::new(),
        message: message.into(),
    }
}

fn fail(step: DeployStep, reason: impl Into<String>) -> Action {
    Action::Fail {
        step,
        reason: reason.into(),
        log_of: None,
    }
}

fn why_ended(what: &str, id: u64, t: &TaskView) -> String {
    let mut s = format!("{what} (task {id}) {}", t.state);
    if let Some(c) = t.exit_code {
        s.push_str(&format!(" with exit code {c}"));
    }
    if !t.message.is_empty() {
        s.push_str(&format!(": {}", t.message));
    }
    s
}

/// The next action for a running deployment. `built` is an artifact an
/// earlier deployment built from the same commit, if any.
pub fn next(
    want: &Desired,
    d: &Deployment,
    tasks: &BTreeMap<u64, TaskView>,
    built: Option<&str>,
    now: Millis,
) -> Action {
    let step = d.step();
    if d.current().is_none_or(|r| r.state != StepState::Running) {
        return Action::Wait;
    }
    if step.before_promote() && now - d.created_at > want.progress_deadline_ms {
        return fail(
            step,
            format!(
                "progress deadline of {} passed in step {step}",
                format_duration(want.progress_deadline_ms.max(0) as u64)
            ),
        );
    }
    let servers: Vec<(u64, Option<&TaskView>)> =
        d.instances.iter().map(|id| (*id, tasks.get(id))).collect();
    let lost = servers.iter().find_map(|(id, t)| match t {
        Some(t) if t.state.is_ended() => Some(why_ended("a server", *id, t)),
        None => Some(format!("a server (task {id}) is gone from the state")),
        _ => None,
    });
    let all = |ok: &dyn Fn(&TaskView) -> bool| servers.iter().all(|(_, t)| t.is_some_and(ok));
    match step {
        DeployStep::Fetch => Action::Fetch,
        DeployStep::Build => build(d, tasks, built),
        DeployStep::Publish => done(step, format!("sha256 {}", d.artifact)),
        DeployStep::Lease if d.instances.is_empty() => Action::SubmitServers,
        DeployStep::Lease | DeployStep::Start | DeployStep::AwaitHealthy if lost.is_some() => {
            fail(step, lost.unwrap_or_default())
        }
        DeployStep::Lease if all(&|t| t.lease_state == LeaseState::Granted) => done(step, ""),
        DeployStep::Start if all(&|t| t.state == TaskState::Running) => done(step, ""),
        DeployStep::Lease | DeployStep::Start => Action::Wait,
        DeployStep::AwaitHealthy => healthy_for(want, &servers, now),
        DeployStep::Promote => done(step, ""),
        DeployStep::Retire => match d.promoted_at {
            Some(p) if now - p >= DRAIN_MS => done(step, ""),
            _ => Action::Wait,
        },
    }
}

/// The build step: reuse an artifact of the same commit, submit the build,
/// or follow its task.
fn build(d: &Deployment, tasks: &BTreeMap<u64, TaskView>, built: Option<&str>) -> Action {
    let step = DeployStep::Build;
    match (built, d.build_task) {
        (Some(a), _) => Action::Done {
            step,
            artifact: a.to_string(),
            message: "reused the artifact of an earlier build of this commit".into(),
        },
        (None, None) => Action::SubmitBuild,
        (None, Some(id)) => match tasks.get(&id) {
            Some(t) if t.state == TaskState::Succeeded && t.artifact.len() == 64 => Action::Done {
                step,
                artifact: t.artifact.clone(),
                message: String::new(),
            },
            Some(t) if t.state.is_ended() => Action::Fail {
                step,
                reason: why_ended("the build", id, t),
                log_of: Some(id),
            },
            Some(_) => Action::Wait,
            None => fail(
                step,
                format!("the build (task {id}) is gone from the state"),
            ),
        },
    }
}

/// The await_healthy step: done once every server has been healthy for
/// `min_healthy`.
fn healthy_for(want: &Desired, servers: &[(u64, Option<&TaskView>)], now: Millis) -> Action {
    let since: Option<Vec<Millis>> = servers
        .iter()
        .map(|(_, t)| {
            t.filter(|t| t.health == HealthState::Healthy)
                .and_then(|t| t.health_since)
        })
        .collect();
    match since.and_then(|s| s.into_iter().max()) {
        Some(all) if now - all >= want.min_healthy_ms => done(
            DeployStep::AwaitHealthy,
            format!(
                "{} servers healthy for {}",
                servers.len(),
                format_duration((now - all).max(0) as u64)
            ),
        ),
        _ => Action::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use charter_config::deployment::{DeployStatus, StepRecord};
    use charter_config::states::{HealthState, LeaseState, TaskState};

    fn dep(step: DeployStep) -> Deployment {
        Deployment {
            id: 7,
            app: "hello".into(),
            commit: "a".repeat(40),
            fingerprint: String::new(),
            trigger: charter_config::deployment::Trigger::Webhook,
            by: "root".into(),
            created_at: 0,
            status: DeployStatus::Running,
            steps: vec![StepRecord {
                step,
                started_at: 0,
                ended_at: None,
                state: StepState::Running,
                message: String::new(),
            }],
            build_task: None,
            artifact: "f".repeat(64),
            instances: vec![],
            previous: None,
            promoted_at: None,
            failed_step: None,
            reason: String::new(),
            build_log: String::new(),
            ended_at: None,
        }
    }

    fn task(state: TaskState, health: HealthState, since: Option<Millis>) -> TaskView {
        TaskView {
            state,
            health,
            health_since: since,
            lease_state: if state == TaskState::Pending {
                LeaseState::Pending
            } else {
                LeaseState::Granted
            },
            ..TaskView::default()
        }
    }

    #[test]
    fn planner_table() {
        let want = Desired {
            progress_deadline_ms: 600_000,
            min_healthy_ms: 3_000,
        };
        let sha = "b".repeat(64);
        let built = TaskView {
            artifact: sha.clone(),
            ..task(TaskState::Succeeded, HealthState::Unchecked, None)
        };
        let with = |step: DeployStep, f: &dyn Fn(&mut Deployment)| {
            let mut d = dep(step);
            f(&mut d);
            d
        };
        let servers = |d: &mut Deployment| d.instances = vec![2, 3];
        type Case<'a> = (
            Deployment,
            Vec<(u64, TaskView)>,
            Option<&'a str>,
            Millis,
            Action,
        );
        let cases: Vec<Case> = vec![
            (dep(DeployStep::Fetch), vec![], None, 1, Action::Fetch),
            (dep(DeployStep::Build), vec![], None, 1, Action::SubmitBuild),
            (
                dep(DeployStep::Build),
                vec![],
                Some(&sha),
                1,
                Action::Done {
                    step: DeployStep::Build,
                    artifact: sha.clone(),
                    message: "reused the artifact of an earlier build of this commit".into(),
                },
            ),
            (
                with(DeployStep::Build, &|d| d.build_task = Some(1)),
                vec![(1, task(TaskState::Running, HealthState::Unchecked, None))],
                None,
                1,
                Action::Wait,
            ),
            (
                with(DeployStep::Build, &|d| d.build_task = Some(1)),
                vec![(1, built.clone())],
                None,
                1,
                Action::Done {
                    step: DeployStep::Build,
                    artifact: sha.clone(),
                    message: String::new(),
                },
            ),
            (
                with(DeployStep::Build, &|d| d.build_task = Some(1)),
                vec![(
                    1,
                    TaskView {
                        exit_code: Some(2),
                        message: "exited with 2".into(),
                        ..task(TaskState::Failed, HealthState::Unchecked, None)
                    },
                )],
                None,
                1,
                Action::Fail {
                    step: DeployStep::Build,
                    reason: "the build (task 1) failed with exit code 2: exited with 2".into(),
                    log_of: Some(1),
                },
            ),
            (
                dep(DeployStep::Publish),
                vec![],
                None,
                1,
                done(DeployStep::Publish, format!("sha256 {}", "f".repeat(64))),
            ),
            (
                dep(DeployStep::Lease),
                vec![],
                None,
                1,
                Action::SubmitServers,
            ),
            (
                with(DeployStep::Lease, &servers),
                vec![
                    (2, task(TaskState::Pending, HealthState::Unchecked, None)),
                    (3, task(TaskState::Running, HealthState::Unchecked, None)),
                ],
                None,
                1,
                Action::Wait,
            ),
            (
                with(DeployStep::Lease, &servers),
                vec![
                    (2, task(TaskState::Running, HealthState::Unchecked, None)),
                    (3, task(TaskState::Pending, HealthState::Unchecked, None)),
                ],
                None,
                1,
                Action::Wait,
            ),
            (
                with(DeployStep::Start, &servers),
                vec![
                    (2, task(TaskState::Running, HealthState::Unchecked, None)),
                    (3, task(TaskState::Running, HealthState::Unchecked, None)),
                ],
                None,
                1,
                done(DeployStep::Start, ""),
            ),
            (
                with(DeployStep::AwaitHealthy, &servers),
                vec![
                    (2, task(TaskState::Running, HealthState::Healthy, Some(100))),
                    (3, task(TaskState::Running, HealthState::Starting, Some(0))),
                ],
                None,
                10_000,
                Action::Wait,
            ),
            (
                with(DeployStep::AwaitHealthy, &servers),
                vec![
                    (2, task(TaskState::Running, HealthState::Healthy, Some(100))),
                    (3, task(TaskState::Running, HealthState::Healthy, Some(900))),
                ],
                None,
                3_899,
                Action::Wait,
            ),
            (
                with(DeployStep::AwaitHealthy, &servers),
                vec![
                    (2, task(TaskState::Running, HealthState::Healthy, Some(100))),
                    (3, task(TaskState::Running, HealthState::Healthy, Some(900))),
                ],
                None,
                3_900,
                done(DeployStep::AwaitHealthy, "2 servers healthy for 3s"),
            ),
            (
                with(DeployStep::AwaitHealthy, &servers),
                vec![
                    (2, task(TaskState::Running, HealthState::Healthy, Some(100))),
                    (
                        3,
                        TaskView {
                            message: "exited with 1".into(),
                            ..task(TaskState::Failed, HealthState::Unchecked, None)
                        },
                    ),
                ],
                None,
                3_900,
                fail(
                    DeployStep::AwaitHealthy,
                    "a server (task 3) failed: exited with 1",
                ),
            ),
            (
                with(DeployStep::AwaitHealthy, &servers),
                vec![
                    (
                        2,
                        task(TaskState::Running, HealthState::Unhealthy, Some(100)),
                    ),
                    (3, task(TaskState::Running, HealthState::Healthy, Some(9))),
                ],
                None,
                600_001,
                fail(
                    DeployStep::AwaitHealthy,
                    "progress deadline of 10m passed in step await_healthy",
                ),
            ),
            (
                dep(DeployStep::Promote),
                vec![],
                None,
                600_001,
                done(DeployStep::Promote, ""),
            ),
            (
                with(DeployStep::Retire, &|d| d.promoted_at = Some(600_000)),
                vec![],
                None,
                601_999,
                Action::Wait,
            ),
            (
                with(DeployStep::Retire, &|d| d.promoted_at = Some(600_000)),
                vec![],
                None,
                602_000,
                done(DeployStep::Retire, ""),
            ),
        ];
        for (i, (d, tasks, built, now, want_action)) in cases.into_iter().enumerate() {
            let tasks: BTreeMap<u64, TaskView> = tasks.into_iter().collect();
            assert_eq!(
                next(&want, &d, &tasks, built, now),
                want_action,
                "case {i}: step {} at {now}",
                d.step()
            );
        }
    }

    #[test]
    fn an_ended_step_waits_for_the_state() {
        let mut d = dep(DeployStep::Build);
        d.steps[0].state = StepState::Failed;
        let want = Desired {
            progress_deadline_ms: 1,
            min_healthy_ms: 0,
        };
        assert_eq!(next(&want, &d, &BTreeMap::new(), None, 99), Action::Wait);
    }
}
