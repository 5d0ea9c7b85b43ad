//! A deployment walks typed steps in order. Each turn, the controller reads
//! what it observes, calls [`next_action`] with `now`, and carries out the
//! action; the planner does no IO, so a restarted controller resumes from the
//! observed state alone.
//!
//! Rules: any failure before `Promote`, or passing the progress deadline
//! before `Promote`, rolls back (the new servers are released and the old
//! version stays active). `AwaitHealthy` finishes only after the new servers
//! have been healthy for `min_healthy`. After `Promote` there is no way back:
//! a failed `Retire` is retried.

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Fetch the commit.
    Fetch,
    /// Build it as a batch task on the cluster.
    Build,
    /// Publish the artifact to the content-addressed store.
    Publish,
    /// Lease fresh servers.
    Lease,
    /// Start the service there.
    Start,
    /// Wait until all are healthy for `min_healthy`.
    AwaitHealthy,
    /// Make the new version active.
    Promote,
    /// Drain, stop and release the previous version's servers.
    Retire,
}

impl Step {
    /// Every step in order.
    pub const ALL: [Step; 8] = [
        Step::Fetch,
        Step::Build,
        Step::Publish,
        Step::Lease,
        Step::Start,
        Step::AwaitHealthy,
        Step::Promote,
        Step::Retire,
    ];

    /// The step after this one.
    pub fn next(self) -> Option<Step> {
        let i = Step::ALL.iter().position(|s| *s == self)?;
        Step::ALL.get(i + 1).copied()
    }
}

/// Where the current step is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepState {
    /// Not started.
    Pending,
    /// Started at this time.
    Running(Millis),
    /// Finished.
    Done,
    /// Failed, with the reason.
    Failed(String),
}

/// What the app asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The whole deployment must reach `Promote` within this many ms.
    pub progress_deadline_ms: i64,
    /// How long every new server must stay healthy before promotion.
    pub min_healthy_ms: i64,
}

/// What the controller sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// When the deployment started.
    pub started_at: Millis,
    /// The current step.
    pub step: Step,
    /// Its state.
    pub state: StepState,
    /// Since when all new servers have been healthy, if they are.
    pub healthy_since: Option<Millis>,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start (or retry) this step.
    Run(Step),
    /// Nothing to do yet.
    Wait,
    /// Mark this step done.
    Complete(Step),
    /// Stop and release the new servers; the old version stays active.
    RollBack {
        /// The step that failed.
        failed: Step,
        /// Why.
        reason: String,
    },
    /// The deployment is over.
    Finished,
}

/// The next action for a deployment, from what is desired, observed and `now`.
pub fn next_action(d: &Desired, o: &Observed, now: Millis) -> Action {
    let before_promote = o.step < Step::Promote;
    if before_promote && now - o.started_at > d.progress_deadline_ms && o.state != StepState::Done {
        return Action::RollBack {
            failed: o.step,
            reason: format!("progress deadline of {} ms passed", d.progress_deadline_ms),
        };
    }
    match &o.state {
        StepState::Failed(why) if before_promote => Action::RollBack {
            failed: o.step,
            reason: why.clone(),
        },
        StepState::Failed(_) | StepState::Pending => Action::Run(o.step),
        StepState::Running(_) if o.step == Step::AwaitHealthy => match o.healthy_since {
            Some(h) if now - h >= d.min_healthy_ms => Action::Complete(Step::AwaitHealthy),
            _ => Action::Wait,
        },
        StepState::Running(_) => Action::Wait,
        StepState::Done => match o.step.next() {
            Some(n) => Action::Run(n),
            None => Action::Finished,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(step: Step, state: StepState, healthy_since: Option<Millis>) -> Observed {
        Observed {
            started_at: 0,
            step,
            state,
            healthy_since,
        }
    }

    #[test]
    fn planner_table() {
        let d = Desired {
            progress_deadline_ms: 600_000,
            min_healthy_ms: 10_000,
        };
        let rb = |failed, reason: &str| Action::RollBack {
            failed,
            reason: reason.into(),
        };
        let cases = vec![
            (
                obs(Step::Fetch, StepState::Pending, None),
                1,
                Action::Run(Step::Fetch),
            ),
            (
                obs(Step::Fetch, StepState::Done, None),
                1,
                Action::Run(Step::Build),
            ),
            (
                obs(Step::Build, StepState::Running(5), None),
                100,
                Action::Wait,
            ),
            (
                obs(Step::Build, StepState::Failed("exit 2".into()), None),
                100,
                rb(Step::Build, "exit 2"),
            ),
            (
                obs(Step::AwaitHealthy, StepState::Running(5), None),
                100,
                Action::Wait,
            ),
            (
                obs(Step::AwaitHealthy, StepState::Running(5), Some(1_000)),
                10_999,
                Action::Wait,
            ),
            (
                obs(Step::AwaitHealthy, StepState::Running(5), Some(1_000)),
                11_000,
                Action::Complete(Step::AwaitHealthy),
            ),
            (
                obs(Step::AwaitHealthy, StepState::Running(5), None),
                600_001,
                rb(Step::AwaitHealthy, "progress deadline of 600000 ms passed"),
            ),
            (
                obs(Step::AwaitHealthy, StepState::Done, None),
                600_001,
                Action::Run(Step::Promote),
            ),
            (
                obs(Step::Promote, StepState::Running(5), None),
                900_000,
                Action::Wait,
            ),
            (
                obs(Step::Retire, StepState::Failed("agent gone".into()), None),
                900_000,
                Action::Run(Step::Retire),
            ),
            (
                obs(Step::Retire, StepState::Done, None),
                900_000,
                Action::Finished,
            ),
        ];
        for (i, (o, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(next_action(&d, &o, now), want, "case {i}: {o:?} at {now}");
        }
    }

    #[test]
    fn steps_run_in_order() {
        let mut s = Step::Fetch;
        let mut seen = vec![s];
        while let Some(n) = s.next() {
            seen.push(n);
            s = n;
        }
        assert_eq!(seen, Step::ALL);
    }
}
