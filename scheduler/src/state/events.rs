//! What a person cares about in an applied change, as typed events.
//!
//! `apply` notes an [`Event`] at each place a lease, node, task, cron run or
//! deployment changes in a way someone watches for. Events come from the
//! applied log, so every member produces the same ones in the same order;
//! the driver stamps each with the raft index of its entry and a sequence
//! within it ([`crate::events`] keeps and serves them). Like the history
//! outbox they are not part of the state's identity.

use super::{HealthState, LeaseState, Millis, State, TaskState};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What happened. Shown as `topic.action` (`lease.granted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum EventKind {
    /// A lease was asked for (granted at once or queued).
    LeaseRequested,
    /// A lease was granted.
    LeaseGranted,
    /// A lease was renewed.
    LeaseRenewed,
    /// Its holder released it.
    LeaseReleased,
    /// It reached its expiry.
    LeaseExpired,
    /// An admin revoked it.
    LeaseRevoked,
    /// Its node went down.
    LeaseLost,
    /// A queued request gave up waiting.
    LeaseTimedOut,
    /// A node registered (or changed its offer).
    NodeRegistered,
    /// A node missed its heartbeat.
    NodeDown,
    /// A down node is back.
    NodeUp,
    /// A node takes no new grants.
    NodeDrained,
    /// A drained node takes grants again.
    NodeUndrained,
    /// A node was removed.
    NodeRemoved,
    /// A task was submitted.
    TaskSubmitted,
    /// Its process started.
    TaskStarted,
    /// It ended (succeeded, failed, cancelled, expired, lost).
    TaskExited,
    /// Its process is being started again.
    TaskRestarted,
    /// Its health check passes.
    TaskHealthy,
    /// Its health check fails.
    TaskUnhealthy,
    /// A cron tick started its task.
    CronFired,
    /// A cron tick was skipped.
    CronSkipped,
    /// A cron run's task succeeded.
    CronSucceeded,
    /// A cron run failed (or could not start).
    CronFailed,
    /// A deployment started.
    DeployStarted,
    /// A deployment moved to its next step.
    DeployStep,
    /// A deployment's version became the app's active one.
    DeployPromoted,
    /// A deployment failed before promotion; the old version stays.
    DeployRolledBack,
    /// A deployment ended otherwise (superseded, retired, unchanged, done).
    DeployEnded,
    /// A member joined the raft group.
    MemberJoined,
    /// A member left the raft group.
    MemberLeft,
    /// A new term's leader applied its first entry.
    LeaderChanged,
}

impl EventKind {
    /// Every kind, for parsing and listing.
    pub const ALL: [EventKind; 32] = [
        EventKind::LeaseRequested,
        EventKind::LeaseGranted,
        EventKind::LeaseRenewed,
        EventKind::LeaseReleased,
        EventKind::LeaseExpired,
        EventKind::LeaseRevoked,
        EventKind::LeaseLost,
        EventKind::LeaseTimedOut,
        EventKind::NodeRegistered,
        EventKind::NodeDown,
        EventKind::NodeUp,
        EventKind::NodeDrained,
        EventKind::NodeUndrained,
        EventKind::NodeRemoved,
        EventKind::TaskSubmitted,
        EventKind::TaskStarted,
        EventKind::TaskExited,
        EventKind::TaskRestarted,
        EventKind::TaskHealthy,
        EventKind::TaskUnhealthy,
        EventKind::CronFired,
        EventKind::CronSkipped,
        EventKind::CronSucceeded,
        EventKind::CronFailed,
        EventKind::DeployStarted,
        EventKind::DeployStep,
        EventKind::DeployPromoted,
        EventKind::DeployRolledBack,
        EventKind::DeployEnded,
        EventKind::MemberJoined,
        EventKind::MemberLeft,
        EventKind::LeaderChanged,
    ];

    /// The topics, as `--type` takes them.
    pub const TOPICS: [&'static str; 6] = ["lease", "node", "task", "cron", "deploy", "member"];

    /// `topic.action`.
    pub fn as_str(self) -> &'static str {
        use EventKind::*;
        match self {
            LeaseRequested => "lease.requested",
            LeaseGranted => "lease.granted",
            LeaseRenewed => "lease.renewed",
            LeaseReleased => "lease.released",
            LeaseExpired => "lease.expired",
            LeaseRevoked => "lease.revoked",
            LeaseLost => "lease.lost",
            LeaseTimedOut => "lease.timed_out",
            NodeRegistered => "node.registered",
            NodeDown => "node.down",
            NodeUp => "node.up",
            NodeDrained => "node.drained",
            NodeUndrained => "node.undrained",
            NodeRemoved => "node.removed",
            TaskSubmitted => "task.submitted",
            TaskStarted => "task.started",
            TaskExited => "task.exited",
            TaskRestarted => "task.restarted",
            TaskHealthy => "task.healthy",
            TaskUnhealthy => "task.unhealthy",
            CronFired => "cron.fired",
            CronSkipped => "cron.skipped",
            CronSucceeded => "cron.succeeded",
            CronFailed => "cron.failed",
            DeployStarted => "deploy.started",
            DeployStep => "deploy.step",
            DeployPromoted => "deploy.promoted",
            DeployRolledBack => "deploy.rolled_back",
            DeployEnded => "deploy.ended",
            MemberJoined => "member.joined",
            MemberLeft => "member.left",
            LeaderChanged => "member.leader_changed",
        }
    }

    /// The part before the dot.
    pub fn topic(self) -> &'static str {
        self.as_str().split('.').next().unwrap_or("")
    }

    /// The kind a lease ending in `to` makes.
    pub fn lease_ended(to: LeaseState) -> EventKind {
        match to {
            LeaseState::Expired => EventKind::LeaseExpired,
            LeaseState::Revoked => EventKind::LeaseRevoked,
            LeaseState::Lost => EventKind::LeaseLost,
            LeaseState::TimedOut => EventKind::LeaseTimedOut,
            LeaseState::Pending | LeaseState::Granted | LeaseState::Released => {
                EventKind::LeaseReleased
            }
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<EventKind, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event type `{s}`; expected a topic ({}) or one of its types, e.g. lease.granted", EventKind::TOPICS.join(", ")))
    }
}

impl From<EventKind> for String {
    fn from(k: EventKind) -> String {
        k.as_str().to_string()
    }
}

impl TryFrom<String> for EventKind {
    type Error = String;

    fn try_from(s: String) -> Result<EventKind, String> {
        s.parse()
    }
}

/// A set of kinds a follower asked for: whole topics or single types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindFilter(Vec<String>);

impl KindFilter {
    /// Parses `lease,task.exited`: empty means everything.
    pub fn parse(items: &[String]) -> Result<KindFilter, String> {
        let mut out = Vec::new();
        for raw in items.iter().flat_map(|s| s.split(',')) {
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            if !EventKind::TOPICS.contains(&t) {
                t.parse::<EventKind>()?;
            }
            out.push(t.to_string());
        }
        Ok(KindFilter(out))
    }

    /// Whether `k` passes.
    pub fn matches(&self, k: EventKind) -> bool {
        self.0.is_empty() || self.0.iter().any(|t| t == k.topic() || t == k.as_str())
    }
}

/// One event, as `apply` notes it and members serve it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The raft index of the entry it came from (set by the driver).
    pub index: u64,
    /// Its place among that entry's events, from 0.
    pub seq: u32,
    /// State time when it happened (ms since the epoch).
    pub at: Millis,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Whose object it is (`""`: the cluster's, seen by admins only).
    pub principal: String,
    /// What it is about: a lease or task id, a node, job or member name.
    pub subject: String,
    /// A short human account (`on n1, token 7`, `exit code 3`).
    pub detail: String,
    /// A time it measures, in ms: how late an expiry or a cron tick
    /// happened after it was due, or how long a deploy step took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<i64>,
}

/// Events noted by `apply` since the member last took them.
#[derive(Clone, Debug, Default)]
pub struct EventBox(pub Vec<Event>);

impl PartialEq for EventBox {
    fn eq(&self, _: &EventBox) -> bool {
        true
    }
}

/// At most this many events wait in a state nobody takes them from (a
/// test's or the simulation's): older ones are dropped.
const UNTAKEN_MAX: usize = 4096;

impl State {
    /// Notes an event at the current state time.
    pub(super) fn note(
        &mut self,
        kind: EventKind,
        principal: &str,
        subject: impl ToString,
        detail: impl Into<String>,
    ) {
        self.note_ms(kind, principal, subject, detail, None);
    }

    /// Notes an event that measures a time ([`Event::ms`]).
    pub(super) fn note_ms(
        &mut self,
        kind: EventKind,
        principal: &str,
        subject: impl ToString,
        detail: impl Into<String>,
        ms: Option<i64>,
    ) {
        let events = &mut self.events.0;
        if events.len() >= UNTAKEN_MAX {
            events.drain(..UNTAKEN_MAX / 2);
        }
        events.push(Event {
            index: 0,
            seq: 0,
            at: self.time,
            kind,
            principal: principal.to_string(),
            subject: subject.to_string(),
            detail: detail.into(),
            ms,
        });
    }

    /// Takes the events noted since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events.0)
    }

    /// Notes a task's move from `old` to its present state and health.
    pub(super) fn note_task(&mut self, id: u64, old: (TaskState, HealthState)) {
        let Some(t) = self.tasks.all.get(&id) else {
            return;
        };
        let (state, health, principal) = (t.state, t.health, t.principal.clone());
        let code = t.exit_code;
        let message = t.message.clone();
        if state != old.0 {
            let kind = match state {
                TaskState::Running => Some(EventKind::TaskStarted),
                TaskState::Restarting => Some(EventKind::TaskRestarted),
                s if s.is_ended() => Some(EventKind::TaskExited),
                _ => None,
            };
            if let Some(kind) = kind {
                let mut detail = state.as_str().to_string();
                if let Some(c) = code.filter(|_| state.is_ended()) {
                    detail.push_str(&format!(", exit code {c}"));
                }
                if state.is_ended() && !message.is_empty() {
                    detail.push_str(&format!(": {message}"));
                }
                self.note(kind, &principal, id, detail);
            }
        }
        if health != old.1 && !state.is_ended() {
            match health {
                HealthState::Healthy => self.note(EventKind::TaskHealthy, &principal, id, ""),
                HealthState::Unhealthy => {
                    self.note(EventKind::TaskUnhealthy, &principal, id, message)
                }
                HealthState::Unchecked | HealthState::Starting => {}
            }
        }
    }
}
