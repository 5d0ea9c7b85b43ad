//! Named locks, semaphores and the elections built on them.
//!
//! A lock is a name with a `limit` (1 for a mutex, N for a semaphore) and
//! the acquisitions on it ([`LockHold`]): up to `limit` held, the rest
//! waiting in arrival order. A held acquisition carries a fencing token from
//! the same ever-growing sequence as lease grants, so a resource that saw
//! token T can refuse any holder with a smaller one.
//!
//! Every acquisition, held or waiting, stays alive only while its client
//! renews it: `expires_at` is `now + ttl` at the acquisition and at each
//! renewal, absolute and in the log, so a leader change never extends it.
//! At `expires_at` it ends (`expired`) inside `apply`, whatever any member
//! believes, and the next waiter gets the lock at the same applied index. A
//! waiter also gives up at `wait_until` (`timed_out`).
//!
//! An election is a lock with limit 1: its leader is the holder, with the
//! value it campaigned with; the leader's token is the election's term.
//!
//! Live state holds live things: an ended acquisition leaves at once (to the
//! history store), and a lock with no holder and no waiter leaves too.
//! Live acquisitions count against the principal's `max_leases` quota.
//!
//! Over 500 lines: the locks room and every lock command.

use super::{Applied, Millis, Outcome, Refusal, State, Trimmed};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

/// The shortest TTL an acquisition may have.
pub const MIN_TTL_MS: u64 = 1_000;
/// The longest TTL an acquisition may have (renewals go on as long as the
/// holder renews).
pub const MAX_TTL_MS: u64 = 24 * 3_600_000;
/// The most holders a semaphore may have.
pub const MAX_LIMIT: u32 = 10_000;
/// The most bytes of a holder description or an election value.
pub const MAX_VALUE: usize = 4096;
/// A wait this long (or longer) is a wait without end.
pub const WAIT_FOREVER_MS: u64 = u64::MAX;

fn ms(v: u64) -> Millis {
    Millis::try_from(v).unwrap_or(Millis::MAX)
}

/// What an acquisition asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSpec {
    /// The lock's name.
    pub name: String,
    /// How long the acquisition lives without a renewal, in ms.
    pub ttl_ms: u64,
    /// How many may hold the lock at once (1: a mutex).
    pub limit: u32,
    /// How long to wait in line, in ms (0: not at all; [`WAIT_FOREVER_MS`]:
    /// until granted or no longer renewed).
    pub wait_ms: u64,
    /// Who holds it, as the client says (e.g. `host:pid`).
    pub holder: String,
    /// An election's value (e.g. the leader's address).
    pub value: String,
}

charter_config::named! {
    /// Where an acquisition is in its life.
    #[derive(Default)]
    pub enum HoldState: "lock state" {
        /// In line for the lock.
        #[default]
        Waiting = "waiting",
        /// Holds the lock until `expires_at` (or a renewal).
        Held = "held",
        /// Let go by its holder (or given up while waiting).
        Released = "released",
        /// Not renewed before `expires_at`.
        Expired = "expired",
        /// Waited longer than it was willing to.
        TimedOut = "timed_out",
    }
}

impl HoldState {
    /// Whether the acquisition is over.
    pub fn is_ended(self) -> bool {
        !matches!(self, HoldState::Waiting | HoldState::Held)
    }
}

/// One acquisition of a lock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHold {
    /// Unique, increasing id (its own sequence).
    pub id: u64,
    /// The lock's name.
    pub lock: String,
    /// Who asked.
    pub principal: String,
    /// The holder, as the client described itself.
    pub holder: String,
    /// The election value.
    pub value: String,
    /// Its time to live without a renewal, in ms.
    pub ttl_ms: u64,
    /// Waiting, held, or how it ended.
    pub state: HoldState,
    /// The fencing token of the grant (0 while waiting).
    pub token: u64,
    /// When it was asked for.
    pub requested_at: Millis,
    /// When a waiter gives up.
    pub wait_until: Millis,
    /// When it got the lock.
    pub acquired_at: Option<Millis>,
    /// When it ends unless renewed first.
    pub expires_at: Millis,
    /// When it ended.
    pub ended_at: Option<Millis>,
}

impl LockHold {
    /// When this acquisition next needs `apply`'s attention.
    pub fn due(&self) -> Millis {
        match self.state {
            HoldState::Waiting => self.expires_at.min(self.wait_until),
            _ => self.expires_at,
        }
    }
}

/// A lock in the live state: it exists while someone holds or waits for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Its name.
    pub name: String,
    /// How many may hold it at once.
    pub limit: u32,
    /// The held acquisitions, in grant order (oldest first).
    pub holders: Vec<u64>,
    /// The waiting acquisitions, first in line first.
    pub waiters: Vec<u64>,
}

/// Checks a lock's name; the reason says what names may be.
pub fn check_name(name: &str) -> Result<(), String> {
    use charter_config::limits;
    if limits::name(name) {
        return Ok(());
    }
    Err(format!(
        "lock name {:?}: {}",
        name.chars().take(64).collect::<String>(),
        limits::NAME_RULE
    ))
}

/// Checks an acquisition's fields; the reason says which and what is allowed.
pub fn check_spec(s: &LockSpec) -> Result<(), String> {
    check_name(&s.name)?;
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&s.ttl_ms) {
        return Err(format!(
            "lock ttl {} ms: must be between 1s and 24h",
            s.ttl_ms
        ));
    }
    if !(1..=MAX_LIMIT).contains(&s.limit) {
        return Err(format!(
            "lock limit {}: must be between 1 and {MAX_LIMIT}",
            s.limit
        ));
    }
    for (what, v) in [("holder", &s.holder), ("value", &s.value)] {
        if v.len() > MAX_VALUE || v.contains('\0') {
            return Err(format!(
                "lock {what}: at most {MAX_VALUE} bytes and no NUL ({} bytes given)",
                v.len()
            ));
        }
    }
    Ok(())
}

/// The locks room: locks someone holds or waits for, by name (what it
/// dereferences to), and the live acquisitions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Locks {
    /// Locks by name.
    pub all: OrdMap<String, Lock>,
    /// Live acquisitions (held or waiting) by id.
    pub holds: OrdMap<u64, LockHold>,
    /// Live acquisitions by when they next expire or give up: `(due, id)`
    /// (derived, rebuilt on load).
    pub hold_due: OrdSet<(Millis, u64)>,
    /// The id the next acquisition gets.
    pub next_hold_id: u64,
}

room_map!(Locks, all: OrdMap<String, Lock>);

impl Locks {
    /// When the next acquisition expires or gives up.
    pub fn next_due(&self) -> Option<Millis> {
        self.hold_due.iter().next().map(|(at, _)| *at)
    }

    /// The lock `name` with its acquisitions: holders, then waiters in line.
    pub fn view(&self, name: &str) -> Option<(&Lock, Vec<&LockHold>)> {
        let lock = self.all.get(name)?;
        let holds = lock
            .holders
            .iter()
            .chain(&lock.waiters)
            .filter_map(|id| self.holds.get(id))
            .collect();
        Some((lock, holds))
    }

    /// Acquisition `id`'s place in its lock's line, 1 first (0: not waiting).
    pub fn position(&self, lock: &str, id: u64) -> usize {
        self.all
            .get(lock)
            .and_then(|l| l.waiters.iter().position(|w| *w == id))
            .map_or(0, |i| i + 1)
    }

    /// The leader of election `name`: the oldest holder of its lock.
    pub fn leader(&self, name: &str) -> Option<&LockHold> {
        let lock = self.all.get(name)?;
        lock.holders.first().and_then(|id| self.holds.get(id))
    }
}

impl State {
    /// Grants `spec`'s lock now, queues the caller, or refuses (full and no wait).
    pub(super) fn acquire_lock(&mut self, principal: &str, spec: &LockSpec) -> Outcome {
        check_spec(spec).map_err(|reason| Refusal::Invalid { reason })?;
        let now = self.time;
        if let Some(lock) = self.locks.all.get(&spec.name) {
            if lock.limit != spec.limit {
                return Err(Refusal::Invalid {
                    reason: format!(
                        "lock {} is held with limit {}, not {}: every holder of a lock must ask for the same limit",
                        spec.name, lock.limit, spec.limit
                    ),
                });
            }
            let full = lock.holders.len() as u64 >= u64::from(lock.limit);
            if (full || !lock.waiters.is_empty()) && spec.wait_ms == 0 {
                let holders: Vec<String> = lock
                    .holders
                    .iter()
                    .filter_map(|id| self.locks.holds.get(id))
                    .map(|h| format!("{} (token {})", h.principal, h.token))
                    .collect();
                return Err(Refusal::Limit {
                    reason: format!(
                        "lock {} is held by {} ({} of {}, {} waiting): try again, or wait in line with --wait",
                        spec.name,
                        holders.join(", "),
                        lock.holders.len(),
                        lock.limit,
                        lock.waiters.len()
                    ),
                });
            }
        }
        self.check_lock_quota(principal)?;
        let id = self.locks.next_hold_id.max(1);
        self.locks.next_hold_id = id + 1;
        let hold = LockHold {
            id,
            lock: spec.name.clone(),
            principal: principal.to_string(),
            holder: spec.holder.clone(),
            value: spec.value.clone(),
            ttl_ms: spec.ttl_ms,
            state: HoldState::Waiting,
            token: 0,
            requested_at: now,
            wait_until: if spec.wait_ms == WAIT_FOREVER_MS {
                Millis::MAX
            } else {
                now.saturating_add(ms(spec.wait_ms))
            },
            acquired_at: None,
            expires_at: now.saturating_add(ms(spec.ttl_ms)),
            ended_at: None,
        };
        self.locks.hold_due.insert((hold.due(), id));
        self.locks.holds.insert(id, hold);
        self.count_lock(principal, true);
        self.locks
            .all
            .entry(spec.name.clone())
            .or_insert_with(|| Lock {
                name: spec.name.clone(),
                limit: spec.limit,
                ..Lock::default()
            })
            .waiters
            .push(id);
        self.grant_locks(&spec.name);
        Ok(Applied::Hold(Box::new(self.locks.holds[&id].clone())))
    }

    /// Keeps an acquisition (held or waiting) alive for another TTL.
    pub(super) fn renew_lock(&mut self, id: u64, principal: &str, admin: bool) -> Outcome {
        let h = self.owned_hold(id, principal, admin)?;
        let (old, ttl) = (h.due(), h.ttl_ms);
        let now = self.time;
        let h = self.locks.holds.get_mut(&id).expect("checked above");
        h.expires_at = now.saturating_add(ms(ttl)).max(h.expires_at);
        let new = h.due();
        let out = h.clone();
        self.locks.hold_due.remove(&(old, id));
        self.locks.hold_due.insert((new, id));
        Ok(Applied::Hold(Box::new(out)))
    }

    /// Lets go of an acquisition (a waiter leaves the line); the next in
    /// line gets the lock.
    pub(super) fn release_lock(&mut self, id: u64, principal: &str, admin: bool) -> Outcome {
        self.owned_hold(id, principal, admin)?;
        let out = self.end_hold(id, HoldState::Released);
        self.grant_locks(&out.lock);
        Ok(Applied::Hold(Box::new(out)))
    }

    /// Ends acquisitions whose time is up, then grants what they freed.
    /// Returns the ids that ended.
    pub(super) fn tick_locks(&mut self) -> Vec<u64> {
        let now = self.time;
        let due: Vec<u64> = self
            .locks
            .hold_due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        let mut freed = Vec::new();
        for id in &due {
            let Some(h) = self.locks.holds.get(id) else {
                continue;
            };
            let to = if h.expires_at <= now {
                HoldState::Expired
            } else {
                HoldState::TimedOut
            };
            freed.push(self.end_hold(*id, to).lock);
        }
        freed.sort();
        freed.dedup();
        for name in freed {
            self.grant_locks(&name);
        }
        due
    }

    fn owned_hold(&self, id: u64, principal: &str, admin: bool) -> Result<&LockHold, Refusal> {
        let h = self.locks.holds.get(&id).ok_or_else(|| Refusal::NotFound {
            what: format!(
                "lock acquisition {id} (it ended, or never was: an ended acquisition cannot be renewed; acquire again)"
            ),
        })?;
        if h.principal != principal && !admin {
            return Err(Refusal::Denied {
                reason: format!(
                    "lock acquisition {id} of {} belongs to {}, not to {principal}",
                    h.lock, h.principal
                ),
            });
        }
        Ok(h)
    }

    fn check_lock_quota(&self, principal: &str) -> Result<(), Refusal> {
        let Some(max) = self
            .leases
            .quotas
            .get(principal)
            .or_else(|| self.leases.quotas.get("*"))
            .and_then(|q| q.max_leases)
        else {
            return Ok(());
        };
        let (live, _) = self.leases.held.get(principal).copied().unwrap_or((0, 0));
        if live >= u64::from(max) {
            return Err(Refusal::Denied {
                reason: format!(
                    "quota: {principal} may hold at most {max} leases and lock acquisitions at once and holds {live}; release one first"
                ),
            });
        }
        Ok(())
    }

    /// Counts a live acquisition in (or out of) its principal's live leases.
    pub(super) fn count_lock(&mut self, principal: &str, add: bool) {
        self.leases.count(principal, 0, add);
    }

    /// Gives lock `name` to waiters, first in line first, while it has room.
    fn grant_locks(&mut self, name: &str) {
        let now = self.time;
        loop {
            let Some(lock) = self.locks.all.get_mut(name) else {
                return;
            };
            if lock.holders.len() as u64 >= u64::from(lock.limit) || lock.waiters.is_empty() {
                break;
            }
            let id = lock.waiters.remove(0);
            lock.holders.push(id);
            self.fencing_token += 1;
            let token = self.fencing_token;
            let Some(h) = self.locks.holds.get_mut(&id) else {
                continue;
            };
            let old = h.due();
            h.state = HoldState::Held;
            h.token = token;
            h.acquired_at = Some(now);
            let new = h.due();
            self.locks.hold_due.remove(&(old, id));
            self.locks.hold_due.insert((new, id));
        }
        if let Some(lock) = self.locks.all.get(name)
            && lock.holders.is_empty()
            && lock.waiters.is_empty()
        {
            self.locks.all.remove(name);
        }
    }

    /// Ends a live acquisition: it leaves its lock's line and the live state.
    fn end_hold(&mut self, id: u64, to: HoldState) -> LockHold {
        let mut h = self
            .locks
            .holds
            .remove(&id)
            .expect("caller checked the acquisition is live");
        self.locks.hold_due.remove(&(h.due(), id));
        if let Some(lock) = self.locks.all.get_mut(&h.lock) {
            lock.holders.retain(|x| *x != id);
            lock.waiters.retain(|x| *x != id);
        }
        h.state = to;
        // An expiry or a timeout happened at its time, whichever command
        // brought it into the log.
        h.ended_at = Some(match to {
            HoldState::Expired => h.expires_at.min(self.time),
            HoldState::TimedOut => h.wait_until.min(self.time),
            _ => self.time,
        });
        self.count_lock(&h.principal, false);
        self.trimmed.push(Trimmed::Hold(h.clone()));
        h
    }
}
