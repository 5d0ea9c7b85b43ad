//! Tasks: work bound to a lease. `task submit` asks for a lease and binds a
//! task to it in one command; the lease's agent runs it and reports; a task
//! that ends releases its lease, and a lease that ends takes its task along.

use super::events::EventKind;
use super::{
    Amp, Applied, HealthState, Lease, LeaseSpec, LeaseState, Outcome, Refusal, Restart, State,
    Task, TaskSpec, TaskState, Usage,
};
use imbl::OrdMap;

/// How long a task placed again after its node was lost waits for capacity.
pub const REPLACE_WAIT_MS: u64 = 10 * 60_000;

/// What an agent reports about a task.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskReport {
    /// The task.
    pub id: u64,
    /// The reporting node (must hold the task's lease).
    pub node: String,
    /// Its state now.
    pub state: TaskState,
    /// The last exit code.
    pub exit_code: Option<i32>,
    /// Processes started so far.
    pub starts: u32,
    /// A service's health.
    pub health: HealthState,
    /// An error or note.
    pub message: String,
    /// A resource-usage sample, if one was taken.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The ports picked for it, by name.
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, u16>,
    /// The sha256 of the artifact it stored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact: String,
}

/// How an event names a task: its name, else its command (at most 80
/// characters of it).
fn task_title(spec: &TaskSpec) -> String {
    if !spec.name.is_empty() {
        return spec.name.clone();
    }
    let cmd = spec.command.join(" ");
    match cmd.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &cmd[..i]),
        None => cmd,
    }
}

/// The tasks room: tasks by id (what it dereferences to) and the task bound
/// to each lease that has one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tasks {
    /// Tasks by id, live and ended not yet trimmed.
    pub all: OrdMap<u64, Task>,
    /// The task bound to each lease that has one.
    pub by_lease: OrdMap<u64, u64>,
    /// The id the next task gets.
    pub next_id: u64,
}

room_map!(Tasks, all: OrdMap<u64, Task>);

impl State {
    pub(super) fn submit_task(
        &mut self,
        principal: &str,
        lease: &LeaseSpec,
        spec: &TaskSpec,
    ) -> Outcome {
        if spec.command.is_empty() || spec.command[0].is_empty() {
            return Err(Refusal::Invalid {
                reason: "a task needs a command, like -- ./run.sh".into(),
            });
        }
        if lease.count > 1 {
            return Err(Refusal::Invalid {
                reason: "a task runs on one node; its lease's count must be 1".into(),
            });
        }
        let lease = match self.request_lease(principal, lease, None)? {
            Applied::Lease(l) => l,
            other => unreachable!("request_lease returns a lease, got {other:?}"),
        };
        let id = self.tasks.next_id.max(1);
        self.tasks.next_id = id + 1;
        let task = Task {
            id,
            principal: principal.to_string(),
            lease: lease.id,
            spec: spec.clone(),
            state: TaskState::Pending,
            exit_code: None,
            starts: 0,
            health: HealthState::Unchecked,
            submitted_at: self.time,
            started_at: None,
            ended_at: None,
            message: String::new(),
            usage: None,
            ports: Default::default(),
            run: None,
            health_since: None,
            artifact: String::new(),
        };
        self.tasks.all.insert(id, task.clone());
        self.tasks.by_lease.insert(lease.id, id);
        self.note(
            EventKind::TaskSubmitted,
            principal,
            id,
            format!("{} in lease {}", task_title(spec), lease.id),
        );
        Ok(Applied::Task {
            task: Box::new(task),
            lease: Box::new(lease),
        })
    }

    fn task_and_lease(&self, id: u64) -> Result<(Task, Lease), Refusal> {
        let task = self.tasks.all.get(&id).ok_or_else(|| Refusal::NotFound {
            what: format!("task {id}"),
        })?;
        let lease = self
            .leases
            .all
            .get(&task.lease)
            .ok_or_else(|| Refusal::NotFound {
                what: format!("lease {} of task {id}", task.lease),
            })?;
        Ok((task.clone(), Lease::clone(lease)))
    }

    pub(super) fn task_report(&mut self, r: &TaskReport, admin: bool) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: format!("reporting on task {} needs an agent (admin) token", r.id),
            });
        }
        let (task, lease) = self.task_and_lease(r.id)?;
        // A late report about an ended task changes nothing.
        if task.state.is_ended() {
            return Ok(Applied::Task {
                task: Box::new(task),
                lease: Box::new(lease),
            });
        }
        if !lease.nodes.contains(&r.node) {
            return Err(Refusal::Denied {
                reason: format!(
                    "task {} runs on {:?}, not on node {}",
                    r.id, lease.nodes, r.node
                ),
            });
        }
        let now = self.time;
        let t = self.tasks.all.get_mut(&r.id).expect("looked up above");
        let was = (t.state, t.health);
        t.state = r.state;
        t.exit_code = r.exit_code.or(t.exit_code);
        t.starts = t.starts.max(r.starts);
        if t.health != r.health {
            t.health_since = Some(now);
        }
        t.health = r.health;
        if !r.artifact.is_empty() {
            t.artifact = r.artifact.clone();
        }
        if !r.message.is_empty() || r.usage.is_none() {
            t.message = r.message.clone();
        }
        if r.usage.is_some() {
            t.usage = r.usage;
        }
        if !r.ports.is_empty() {
            t.ports = r.ports.clone();
        }
        if r.state != TaskState::Pending && t.started_at.is_none() {
            t.started_at = Some(now);
        }
        if r.state.is_ended() {
            t.ended_at = Some(now);
        }
        self.note_task(r.id, was);
        if r.state.is_ended() {
            self.settle_run(r.id);
            if lease.state == LeaseState::Granted {
                self.end_lease(lease.id, LeaseState::Released);
                self.grant_queue();
            }
        }
        let (task, lease) = self.task_and_lease(r.id)?;
        Ok(Applied::Task {
            task: Box::new(task),
            lease: Box::new(lease),
        })
    }

    pub(super) fn cancel_task(&mut self, id: u64, principal: &str, admin: bool) -> Outcome {
        let (task, lease) = self.task_and_lease(id)?;
        if task.principal != principal && !admin {
            return Err(Refusal::Denied {
                reason: format!(
                    "task {id} belongs to {}, not to {principal}",
                    task.principal
                ),
            });
        }
        if task.state.is_ended() {
            // Nobody's permission would change it: FailedPrecondition.
            return Err(Refusal::Limit {
                reason: format!(
                    "task {id} has already ended ({}); nothing to cancel",
                    task.state.as_str()
                ),
            });
        }
        let now = self.time;
        let t = self.tasks.all.get_mut(&id).expect("looked up above");
        let was = t.state;
        t.state = TaskState::Cancelled;
        t.ended_at = Some(now);
        t.message = format!("cancelled by {principal}");
        self.note_task(id, (was, HealthState::Unchecked));
        self.settle_run(id);
        if !lease.state.is_ended() {
            self.end_lease(lease.id, LeaseState::Released);
            self.grant_queue();
        }
        let (task, lease) = self.task_and_lease(id)?;
        Ok(Applied::Task {
            task: Box::new(task),
            lease: Box::new(lease),
        })
    }

    /// A lease ended: its task, if still going, ends with it, or, when its
    /// node was lost and the task may run again (a service not set to
    /// `never`, a batch task with retries left), it gets a new lease
    /// elsewhere, waiting up to [`REPLACE_WAIT_MS`] for capacity.
    pub(super) fn end_task_of(&mut self, lease: u64, to: LeaseState) {
        let Some(id) = self.tasks.by_lease.get(&lease).copied() else {
            return;
        };
        if to == LeaseState::Lost
            && let Some(t) = self.tasks.all.get(&id).filter(|t| !t.state.is_ended())
            && match t.spec.amp {
                Amp::Service => t.spec.restart != Restart::Never,
                Amp::Batch => t.starts <= t.spec.retries,
            }
            && let Some(old) = self.leases.all.get(&lease)
        {
            let principal = t.principal.clone();
            let mut spec = old.spec.clone();
            spec.wait_ms = spec.wait_ms.max(REPLACE_WAIT_MS);
            spec.deadline = None;
            let node = old.nodes.join(",");
            if let Ok(Applied::Lease(new)) = self.request_lease(&principal, &spec, None) {
                let t = self.tasks.all.get_mut(&id).expect("looked up above");
                t.lease = new.id;
                t.state = TaskState::Pending;
                // The lost node's ports and health say nothing about the
                // next node: its agent picks fresh ports (the old ones may
                // still be held by the lost node's leftovers) and checks anew.
                t.ports.clear();
                t.health = HealthState::Unchecked;
                t.health_since = None;
                t.message = format!("node {node} was lost; placed again in lease {}", new.id);
                let detail = t.message.clone();
                self.tasks.by_lease.insert(new.id, id);
                self.note(EventKind::TaskRestarted, &principal, id, detail);
                return;
            }
        }
        let now = self.time;
        if let Some(t) = self.tasks.all.get_mut(&id)
            && !t.state.is_ended()
        {
            let was = t.state;
            t.state = match to {
                LeaseState::Expired => TaskState::Expired,
                LeaseState::Lost => TaskState::Lost,
                LeaseState::TimedOut => TaskState::Failed,
                _ => TaskState::Cancelled,
            };
            t.message = format!("its lease {lease} ended: {}", to.as_str());
            t.ended_at = Some(now);
            self.note_task(id, (was, HealthState::Unchecked));
            self.settle_run(id);
        }
    }

    /// What node `name`'s agent must run: its granted leases, each with its task.
    pub fn assignments(&self, name: &str) -> Vec<(Lease, Option<Task>)> {
        let Some(node) = self.nodes.nodes.get(name) else {
            return Vec::new();
        };
        node.leases
            .iter()
            .filter_map(|id| self.leases.all.get(id))
            .map(|l| {
                let task = self
                    .tasks
                    .by_lease
                    .get(&l.id)
                    .and_then(|t| self.tasks.all.get(t))
                    .cloned();
                (Lease::clone(l), task)
            })
            .collect()
    }
}
