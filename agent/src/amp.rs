//! Amps: the lifecycle drivers of work inside a lease, behind one trait.
//! Each amp's knobs come from the task config.
//!
//! - [`Batch`]: runs to completion; a failed attempt is retried with
//!   backoff while `retries` allow; the exit code is the result.
//! - [`Service`]: long-running; restarted per its policy (`always`,
//!   `on_failure`, `never`) up to `max_restarts`, with an optional health
//!   check (HTTP, TCP or a command) run by [`crate::health::Monitor`].
//! - `shell`: a person's commands in their lease (`charter lease exec`);
//!   it has no lifecycle of its own beyond the command, so it lives in
//!   [`crate::serve`] and needs no state here.
//!
//! An amp only decides; the supervisor starts, waits and kills.

use crate::supervisor::TaskInfo;
use charter_config::spec::{Amp as AmpKind, Health, Restart};
use charter_config::states::TaskState;

/// What follows a process's exit.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Start again after `backoff_ms`, saying why.
    Again {
        /// Delay before the next start.
        backoff_ms: i64,
        /// For the task's message.
        why: String,
    },
    /// The task is over: succeeded or failed.
    Done {
        /// The final state.
        state: TaskState,
        /// For the task's message.
        why: String,
    },
}

/// A lifecycle driver.
pub trait Amp: Send + Sync {
    /// Its name in task configs.
    fn name(&self) -> &'static str;
    /// The health check to run while the process lives, if any.
    fn health(&self) -> Option<Health> {
        None
    }
    /// What follows an exit with `code` (None: killed by a signal we did not
    /// send, or unknown) after `starts` starts.
    fn after_exit(&self, code: Option<i32>, starts: u32) -> Next;
}

/// Exponential backoff from 0.5 s, capped at 30 s.
fn backoff(n: u32) -> i64 {
    (500i64 << n.min(6)).min(30_000)
}

fn exited(code: Option<i32>) -> String {
    match code {
        Some(-1) | None => "its process ended while the agent was away; exit code unknown".into(),
        Some(c) => format!("exited with {c}"),
    }
}

/// Runs to completion, retried on failure.
pub struct Batch {
    /// Further attempts after a failure.
    pub retries: u32,
}

impl Amp for Batch {
    fn name(&self) -> &'static str {
        AmpKind::Batch.as_str()
    }

    fn after_exit(&self, code: Option<i32>, starts: u32) -> Next {
        if code == Some(0) {
            return Next::Done {
                state: TaskState::Succeeded,
                why: String::new(),
            };
        }
        if starts <= self.retries {
            return Next::Again {
                backoff_ms: backoff(starts.saturating_sub(1)),
                why: format!("attempt {starts} failed ({}); retrying", exited(code)),
            };
        }
        Next::Done {
            state: TaskState::Failed,
            why: exited(code),
        }
    }
}

/// Long-running, restarted per its policy, health-checked.
pub struct Service {
    /// When it is started again.
    pub restart: Restart,
    /// Most restarts (0: no limit).
    pub max_restarts: u32,
    /// Its health check.
    pub check: Option<Health>,
}

impl Amp for Service {
    fn name(&self) -> &'static str {
        AmpKind::Service.as_str()
    }

    fn health(&self) -> Option<Health> {
        self.check.clone()
    }

    fn after_exit(&self, code: Option<i32>, starts: u32) -> Next {
        let ok = code == Some(0);
        let again = match self.restart {
            Restart::Always => true,
            Restart::Never => false,
            Restart::OnFailure => !ok,
        };
        let room = self.max_restarts == 0 || starts <= self.max_restarts;
        if again && room {
            return Next::Again {
                backoff_ms: backoff(starts.saturating_sub(1)),
                why: format!("{}; restarting", exited(code)),
            };
        }
        Next::Done {
            state: if ok {
                TaskState::Succeeded
            } else {
                TaskState::Failed
            },
            why: if again {
                format!("{}; out of restarts ({})", exited(code), self.max_restarts)
            } else {
                exited(code)
            },
        }
    }
}

/// The amp a task names.
pub fn for_task(t: &TaskInfo) -> Box<dyn Amp> {
    match t.spec.amp {
        AmpKind::Service => Box::new(Service {
            restart: t.spec.restart,
            max_restarts: t.spec.max_restarts,
            check: t.spec.health.clone(),
        }),
        AmpKind::Batch => Box::new(Batch {
            retries: t.spec.retries,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_retries_then_fails_and_succeeds_at_once_on_zero() {
        let b = Batch { retries: 2 };
        assert!(matches!(
            b.after_exit(Some(0), 1),
            Next::Done {
                state: TaskState::Succeeded,
                ..
            }
        ));
        assert!(matches!(
            b.after_exit(Some(1), 1),
            Next::Again {
                backoff_ms: 500,
                ..
            }
        ));
        assert!(matches!(
            b.after_exit(Some(1), 2),
            Next::Again {
                backoff_ms: 1000,
                ..
            }
        ));
        assert!(matches!(
            b.after_exit(Some(1), 3),
            Next::Done {
                state: TaskState::Failed,
                ..
            }
        ));
    }

    #[test]
    fn service_restart_policies() {
        let s = |restart: Restart, max| Service {
            restart,
            max_restarts: max,
            check: None,
        };
        let again = |n: &Next| matches!(n, Next::Again { .. });
        // (policy, max restarts, exit code, starts so far, restarted?)
        let cases = [
            (Restart::Always, 0, Some(0), 9, true),
            (Restart::Always, 2, Some(0), 2, true),
            (Restart::Always, 2, Some(0), 3, false),
            (Restart::OnFailure, 0, Some(0), 1, false),
            (Restart::OnFailure, 0, Some(2), 1, true),
            (Restart::OnFailure, 0, None, 1, true),
            (Restart::Never, 0, Some(2), 1, false),
        ];
        for (policy, max, code, starts, want) in cases {
            let n = s(policy, max).after_exit(code, starts);
            assert_eq!(
                again(&n),
                want,
                "{policy} max {max} code {code:?} starts {starts}: {n:?}"
            );
        }
    }
}
