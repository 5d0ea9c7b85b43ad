//! Retention: live state holds live things.
//!
//! Ended leases (with their tasks) and idempotency outcomes leave the
//! replicated state by rules applied inside `apply`, so every member trims
//! the same things at the same applied index:
//! - an ended lease stays [`Retention::history_ms`] after it ended, and at
//!   most [`Retention::history_max`] ended leases stay (the oldest go first,
//!   whichever rule bites first); its task goes with it once the task has
//!   ended and the lease is the task's newest;
//! - an idempotency outcome stays [`Retention::keys_ms`], and at most
//!   [`Retention::keys_max`] stay; a retry after that is a new request.
//!
//! A lease whose task a running deployment names is pinned: it leaves only
//! after the deployment ends (the deployer reads its build's task).
//!
//! Cron runs beyond a job's [`super::RUNS_KEPT`] and ended deployments
//! beyond an app's [`super::apps::DEPLOYMENTS_KEPT`] leave by their own
//! rules. Whatever leaves is pushed to [`State::trimmed`], which the member
//! drains into its history store on disk after each apply.
//!
//! The rules are in the state (`SetRetention`, proposed by the leader from
//! its config), so members with different configs still agree.
//!
//! Limitations: an idempotent retry inside the window gets the request's
//! outcome as it stands now (the same lease, in its current state), not a
//! copy of the first answer: outcomes are kept as a reference to keep them
//! small. A lease trimmed before its key answers such a retry
//! [`Refusal::Gone`], naming the lease.

use super::{Applied, Lease, Millis, Outcome, Refusal, State, Task};
use charter_config::deployment::{DeployStatus, Deployment};
use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

/// How long ended things and idempotency outcomes stay in live state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// An ended lease (and its task) stays this long, in ms.
    pub history_ms: u64,
    /// At most this many ended leases stay.
    pub history_max: u64,
    /// An idempotency outcome stays this long, in ms.
    pub keys_ms: u64,
    /// At most this many idempotency outcomes stay.
    pub keys_max: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            history_ms: 3_600_000,
            history_max: 10_000,
            keys_ms: 3_600_000,
            keys_max: 100_000,
        }
    }
}

/// Something `apply` took out of the live state: what the member's history
/// store keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trimmed {
    /// An ended lease.
    Lease(Lease),
    /// An ended task.
    Task(Task),
    /// A decided cron run beyond its job's keep.
    CronRun(super::CronRun),
    /// An ended deployment beyond its app's keep.
    Deployment(Deployment),
    /// An ended lock acquisition.
    Hold(super::LockHold),
}

/// An idempotency outcome, kept small: a reference for the common creates,
/// the whole outcome for the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum KeyOutcome {
    /// A lease (answered with the lease as it is now).
    Lease {
        /// Its id.
        id: u64,
    },
    /// A task (answered with the task and its lease as they are now).
    Task {
        /// Its id.
        id: u64,
    },
    /// Anything else, whole (boxed: the common variants stay 16 bytes).
    Whole {
        /// The first outcome.
        outcome: Box<Outcome>,
    },
}

impl KeyOutcome {
    /// How `out` is kept (a [`Refusal::Gone`] names what the key kept).
    pub fn of(out: &Outcome) -> KeyOutcome {
        match out {
            Ok(Applied::Lease(l)) => KeyOutcome::Lease { id: l.id },
            Ok(Applied::Task { task, .. }) => KeyOutcome::Task { id: task.id },
            Err(Refusal::Gone { what, id }) if what == "lease" => KeyOutcome::Lease { id: *id },
            Err(Refusal::Gone { what, id }) if what == "task" => KeyOutcome::Task { id: *id },
            other => KeyOutcome::Whole {
                outcome: Box::new(other.clone()),
            },
        }
    }
}

/// The 128-bit identity of an idempotency key, `principal/key` (the first
/// 16 bytes of its sha256): small to keep, and the same on every member
/// and build.
pub fn key_id(principal_key: &str) -> KeyId {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(principal_key.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    KeyId::from(u128::from_be_bytes(b))
}

/// The identity of `principal`'s idempotency key `key` ([`key_id`] of
/// `principal/key`): one principal's key never finds another's outcome.
pub fn principal_key_id(principal: &str, key: &str) -> KeyId {
    key_id(&format!("{principal}/{key}"))
}

/// A key's 128-bit id as its high and low halves: ordered as the `u128`,
/// and written to snapshots as one (the format is unchanged). Halves
/// because a `u128` aligns to 16 bytes, which made a kept key's map entry
/// 48 bytes instead of 40.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyId(u64, u64);

impl From<u128> for KeyId {
    fn from(id: u128) -> KeyId {
        KeyId((id >> 64) as u64, id as u64)
    }
}

impl From<KeyId> for u128 {
    fn from(id: KeyId) -> u128 {
        (u128::from(id.0) << 64) | u128::from(id.1)
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u128(u128::from(*self))
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        u128::deserialize(d).map(KeyId::from)
    }
}

/// The keys room: idempotency outcomes by [`key_id`] of `principal/key`
/// with when they were applied (what it dereferences to), and their order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Keys {
    /// Outcomes by key id.
    pub all: OrdMap<KeyId, (Millis, KeyOutcome)>,
    /// Key ids in the order they were applied (derived).
    pub times: KeyTimes,
    /// First outcomes by `principal/key` as states before retention kept
    /// them: read from an older snapshot into `all`, never written.
    pub legacy: OrdMap<String, Outcome>,
}

room_map!(Keys, all: OrdMap<KeyId, (Millis, KeyOutcome)>);

impl Keys {
    /// Keeps `out` for key `id`, applied at `at`.
    fn remember(&mut self, id: KeyId, at: Millis, out: &Outcome) {
        self.all.insert(id, (at, KeyOutcome::of(out)));
        self.times.push(at, id);
    }

    /// When the oldest key leaves by age alone (kept `keep_ms`).
    fn next_trim(&self, keep_ms: u64) -> Option<Millis> {
        let keep = i64::try_from(keep_ms).unwrap_or(i64::MAX);
        self.times.oldest().map(|(at, _)| at.saturating_add(keep))
    }

    /// Lets go of keys older than `keep_ms` at `now`, and of the oldest
    /// beyond `max`.
    fn trim(&mut self, now: Millis, keep_ms: u64, max: u64) {
        let keep = i64::try_from(keep_ms).unwrap_or(i64::MAX);
        while let Some((at, id)) = self.times.oldest() {
            if !(now.saturating_sub(at) >= keep || self.times.len() as u64 > max) {
                break;
            }
            self.times.pop_oldest();
            self.all.remove(&id);
        }
    }
}

/// Key ids by `(applied at, id)`, oldest first. Keys are remembered in
/// time order (the state's time never goes back), but several share a
/// millisecond (a batch of writes, or a busy one) and their ids are
/// hashes, so the order within a millisecond is by id: a restored member
/// rebuilds the same order, and trimming by count takes the same keys on
/// every member. The newest millisecond's keys are kept apart in a small
/// sorted `newest`; when a later one comes they are pushed at the back of
/// a persistent vector, which trimming pops at the front. So an entry
/// takes 24 bytes in dense chunks ([`KeyId`]'s halves: a `u128` would
/// align it to 32) and a clone for a snapshot stays O(1). Sorted inserts
/// into the vector itself (the way before) split its chunks: 200,000
/// cycles of `scheduler/examples/state_heap.rs` took 3.9 s at 2 keys per
/// ms and 10.5 s at 16.
///
/// Always: `newest` holds exactly the keys of the newest millisecond there
/// is, `done` every older one, so two equal sequences are split alike.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyTimes {
    /// Older than the newest millisecond, in order.
    done: Vector<(Millis, KeyId)>,
    /// The newest millisecond's keys, by id.
    newest: Vec<(Millis, KeyId)>,
}

impl KeyTimes {
    /// Adds key `id` applied at `at`, in its place.
    pub fn push(&mut self, at: Millis, id: KeyId) {
        let e = (at, id);
        match self.newest.first() {
            Some(n) if n.0 < at => {
                for n in self.newest.drain(..) {
                    self.done.push_back(n);
                }
            }
            Some(n) if n.0 > at => {
                // Older than the newest millisecond: the state never
                // makes one, but the order holds whatever the caller does.
                let i = self.done.binary_search(&e).unwrap_or_else(|i| i);
                self.done.insert(i, e);
                return;
            }
            _ => {}
        }
        let i = self.newest.partition_point(|n| *n <= e);
        self.newest.insert(i, e);
    }

    /// The oldest key and when it was applied.
    pub fn oldest(&self) -> Option<(Millis, KeyId)> {
        self.done.front().or(self.newest.first()).copied()
    }

    /// Drops the oldest key.
    pub fn pop_oldest(&mut self) {
        if self.done.pop_front().is_none() && !self.newest.is_empty() {
            self.newest.remove(0);
        }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.done.len() + self.newest.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FromIterator<(Millis, KeyId)> for KeyTimes {
    fn from_iter<I: IntoIterator<Item = (Millis, KeyId)>>(it: I) -> KeyTimes {
        let mut v: Vec<(Millis, KeyId)> = it.into_iter().collect();
        v.sort_unstable();
        let split = match v.last() {
            Some(&(last, _)) => v.partition_point(|e| e.0 < last),
            None => 0,
        };
        let newest = v.split_off(split);
        KeyTimes {
            done: v.into_iter().collect(),
            newest,
        }
    }
}

impl State {
    /// What `principal`'s request with idempotency key `key` made, while
    /// the key is kept.
    pub fn kept_outcome(&self, principal: &str, key: &str) -> Option<&KeyOutcome> {
        self.keys
            .all
            .get(&principal_key_id(principal, key))
            .map(|(_, o)| o)
    }

    /// The outcome kept for key `id`, answered as it stands now.
    pub(super) fn replay(&self, id: KeyId) -> Option<Outcome> {
        let (_, kept) = self.keys.all.get(&id)?;
        Some(match kept {
            KeyOutcome::Whole { outcome } => (**outcome).clone(),
            KeyOutcome::Lease { id } => match self.leases.all.get(id) {
                Some(l) => Ok(Applied::Lease(Lease::clone(l))),
                None => Err(gone("lease", *id)),
            },
            KeyOutcome::Task { id } => {
                let t = self.tasks.all.get(id);
                match t.and_then(|t| Some((t, self.leases.all.get(&t.lease)?))) {
                    Some((t, l)) => Ok(Applied::Task {
                        task: Box::new(t.clone()),
                        lease: l.clone(),
                    }),
                    None => Err(gone("task", *id)),
                }
            }
        })
    }

    /// Keeps `out` for key `id`, applied now.
    pub(super) fn remember(&mut self, id: KeyId, out: &Outcome) {
        self.keys.remember(id, self.time, out);
    }

    /// Notes that lease `id` ended (it may leave later, unless pinned).
    pub(super) fn note_ended(&mut self, ended_at: Millis, id: u64) {
        if !self.pinned(id) {
            self.leases.ended.insert((ended_at, id));
        }
    }

    /// Whether lease `id`'s task is named by a running deployment.
    pub fn pinned(&self, id: u64) -> bool {
        let Some(task) = self.tasks.by_lease.get(&id) else {
            return false;
        };
        self.apps.deployments.values().any(|d| {
            d.status == DeployStatus::Running
                && (d.build_task == Some(*task) || d.instances.contains(task))
        })
    }

    /// Deployment `id` stopped running: the ended leases of its tasks may
    /// leave now.
    pub(super) fn unpin(&mut self, id: u64) {
        let Some(d) = self.apps.deployments.get(&id) else {
            return;
        };
        let tasks: Vec<u64> = d.build_task.iter().chain(&d.instances).copied().collect();
        // Every lease the tasks had (a task placed again had more than one).
        let ended: Vec<(Millis, u64)> = self
            .tasks
            .by_lease
            .iter()
            .filter(|(_, t)| tasks.contains(t))
            .filter_map(|(l, _)| Some((self.leases.all.get(l)?.ended_at?, *l)))
            .collect();
        for (at, lease) in ended {
            if !self.pinned(lease) {
                self.leases.ended.insert((at, lease));
            }
        }
    }

    /// When the next retention rule bites by time alone, if ever.
    pub fn next_trim(&self) -> Option<Millis> {
        let r = &self.retention;
        let after = |at: Millis, ms: u64| at.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
        [
            self.leases
                .ended
                .iter()
                .next()
                .map(|(at, _)| after(*at, r.history_ms)),
            self.keys.next_trim(r.keys_ms),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies the retention rules at the state's time: what is due leaves
    /// the live state and goes to [`State::trimmed`].
    pub(super) fn trim(&mut self) {
        let r = self.retention;
        let now = self.time;
        let older =
            |at: Millis, ms: u64| now.saturating_sub(at) >= i64::try_from(ms).unwrap_or(i64::MAX);
        while let Some(&(at, id)) = self.leases.ended.iter().next() {
            if !(older(at, r.history_ms) || self.leases.ended.len() as u64 > r.history_max) {
                break;
            }
            self.leases.ended.remove(&(at, id));
            self.trim_lease(id);
        }
        self.keys.trim(now, r.keys_ms, r.keys_max);
    }

    /// Takes an ended lease out, and its task when the task has ended and
    /// this was its newest lease (a task placed again lives on).
    fn trim_lease(&mut self, id: u64) {
        let Some(lease) = self.leases.all.remove(&id) else {
            return;
        };
        if let Some(t) = self.tasks.by_lease.remove(&id)
            && self
                .tasks
                .all
                .get(&t)
                .is_some_and(|t| t.lease == id && t.state.is_ended())
            && let Some(task) = self.tasks.all.remove(&t)
        {
            self.trimmed.push(Trimmed::Task(task));
        }
        self.trimmed.push(Trimmed::Lease(*lease));
    }

    /// What left the live state since the last call.
    pub fn take_trimmed(&mut self) -> Vec<Trimmed> {
        std::mem::take(&mut self.trimmed.0)
    }
}

fn gone(what: &str, id: u64) -> Refusal {
    Refusal::Gone {
        what: what.into(),
        id,
    }
}
