//! Leases: request (grant, queue or refuse), release, renew, revoke, and the
//! time-based changes of a tick (expiry, queue timeouts, queue grants).
//!
//! Over 500 lines: the leases room and every command on leases (request, grant, renew, end, queue, why), which share its indexes.

use super::events::EventKind;
use super::{Applied, Lease, LeaseSpec, LeaseState, Millis, Outcome, Quota, Refusal, State};
use crate::placement;
use imbl::{OrdMap, OrdSet};
use std::collections::BTreeMap;

/// What a lease asks for, as an event tells it.
fn lease_ask(spec: &LeaseSpec) -> String {
    let r = &spec.resources;
    let mut s = format!("{} cpu", r.cpu_millis as f64 / 1000.0);
    if spec.count > 1 {
        s = format!("{} x {s}", spec.count);
    }
    format!("{s} for {} s", spec.duration_ms / 1000)
}

fn ms(v: u64) -> Millis {
    Millis::try_from(v).unwrap_or(Millis::MAX)
}

/// How long a lease may be renewed for, from its grant, when the request
/// sets no max total (and no quota says less): 7 days.
pub const DEFAULT_MAX_TOTAL_MS: u64 = 7 * 24 * 3_600_000;

/// The leases room: leases by id, live and ended not yet trimmed (what it
/// dereferences to), and their orders: by expiry, the queue, timeouts,
/// price steps; the quotas and what each principal holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Leases {
    /// Leases by id.
    pub all: OrdMap<u64, Box<Lease>>,
    /// Granted leases ordered by expiry: `(expires_at, id)`.
    pub expiries: OrdSet<(Millis, u64)>,
    /// The queue: `(-priority, requested_at, id)` of pending requests.
    pub queue: OrdSet<(i64, Millis, u64)>,
    /// Pending requests ordered by when they give up: `(wait_until, id)`.
    pub timeouts: OrdSet<(Millis, u64)>,
    /// Pending deadline requests ordered by when they start taking any price.
    pub price_steps: OrdSet<(Millis, u64)>,
    /// Limits by principal; `*` is the default.
    pub quotas: OrdMap<String, Quota>,
    /// Live (pending or granted) leases and lock acquisitions per
    /// principal: how many, and their CPU in millicores, for quotas in O(1)
    /// (derived, rebuilt on load).
    pub held: OrdMap<String, (u64, u64)>,
    /// Ended leases by `(ended_at, id)`: the order they leave in (derived).
    pub ended: OrdSet<(Millis, u64)>,
    /// The id the next lease gets.
    pub next_id: u64,
}

room_map!(Leases, all: OrdMap<u64, Box<Lease>>);

impl Leases {
    /// Counts one live lease (or lock acquisition) holding `cpu`
    /// millicores in (or out of) `principal`'s total.
    pub(super) fn count(&mut self, principal: &str, cpu: u64, add: bool) {
        let e = self.held.entry(principal.to_string()).or_default();
        if add {
            *e = (e.0 + 1, e.1 + cpu);
        } else {
            *e = (e.0.saturating_sub(1), e.1.saturating_sub(cpu));
        }
        if *e == (0, 0) {
            self.held.remove(principal);
        }
    }
}

impl State {
    pub(super) fn request_lease(
        &mut self,
        principal: &str,
        spec: &LeaseSpec,
        hint: Option<&[String]>,
    ) -> Outcome {
        let (spec, cheap_until) = self.admit(principal, spec)?;
        let effective = if cheap_until > self.time {
            self.cheap_only(&spec)
        } else {
            spec.clone()
        };
        let placed = match hint.filter(|h| self.hint_fits(h, &effective)) {
            Some(h) => Ok(h.to_vec()),
            None => placement::place(&self.nodes, &effective),
        };
        let nodes = match placed {
            Ok(nodes) => Some(nodes),
            Err(nf) if spec.wait_ms == 0 => {
                return Err(Refusal::NoCapacity {
                    reason: self.refusal_now(&spec, &nf),
                });
            }
            Err(_) => {
                if let Err(nf) = placement::could_ever_fit(&self.nodes, &spec) {
                    return Err(Refusal::NoCapacity {
                        reason: format!("no node could ever hold it: {}", nf.summary()),
                    });
                }
                None
            }
        };
        let id = self.new_lease(principal, spec, cheap_until);
        match nodes {
            Some(nodes) => self.grant(id, nodes),
            None => self.enqueue(id),
        }
        Ok(Applied::Lease(Lease::clone(&self.leases[&id])))
    }

    /// A request checked and completed: its renewal cap (a week, or the
    /// principal's quota), its quota, and with a deadline how long it may
    /// wait and until when it takes only the cheapest capacity (the first
    /// half of that wait).
    fn admit(&self, principal: &str, spec: &LeaseSpec) -> Result<(LeaseSpec, Millis), Refusal> {
        let invalid = |reason: &str| {
            Err(Refusal::Invalid {
                reason: reason.into(),
            })
        };
        if spec.duration_ms == 0 {
            return invalid("lease duration must be positive");
        }
        if spec.count == 0 {
            return invalid("count must be at least 1");
        }
        if spec.max_total_ms != 0 && spec.max_total_ms < spec.duration_ms {
            return invalid("max total must be at least the duration");
        }
        let mut spec = spec.clone();
        if spec.max_total_ms == 0 {
            // Renewable for a week by default, or up to the principal's
            // quota: the time asked for is what the lease holds, renewals
            // extend it (Slurm's and Nomad's leases are not capped at
            // their first length either).
            let quota = self.quota_of(principal).and_then(|q| q.max_duration_ms);
            spec.max_total_ms = quota
                .unwrap_or(DEFAULT_MAX_TOTAL_MS)
                .min(DEFAULT_MAX_TOTAL_MS)
                .max(spec.duration_ms);
        }
        self.check_quota(principal, &spec)?;
        let mut cheap_until = self.time;
        if let Some(d) = spec.deadline {
            let latest_start = d.saturating_sub(ms(spec.duration_ms));
            if latest_start < self.time {
                return Err(Refusal::Invalid {
                    reason: format!(
                        "the deadline leaves {} s, less than the lease's {} s",
                        (d - self.time).max(0) / 1000,
                        spec.duration_ms / 1000
                    ),
                });
            }
            let room = u64::try_from(latest_start - self.time).unwrap_or(0);
            spec.wait_ms = if spec.wait_ms == 0 {
                room
            } else {
                spec.wait_ms.min(room)
            };
            cheap_until = self.time.saturating_add(ms(room / 2));
        }
        Ok((spec, cheap_until))
    }

    /// A new pending lease for `spec`, counted in its principal's total.
    fn new_lease(&mut self, principal: &str, spec: LeaseSpec, cheap_until: Millis) -> u64 {
        let id = self.leases.next_id;
        self.leases.next_id += 1;
        let lease = Lease {
            id,
            principal: principal.to_string(),
            nodes: Vec::new(),
            state: LeaseState::Pending,
            requested_at: self.time,
            wait_until: self.time.saturating_add(ms(spec.wait_ms)),
            cheap_until,
            granted_at: 0,
            expires_at: 0,
            fencing_token: 0,
            cost_per_hour: 0.0,
            ended_at: None,
            gpu_ids: Default::default(),
            spec,
        };
        self.hold(principal, &lease.spec, true);
        self.note(
            EventKind::LeaseRequested,
            principal,
            id,
            lease_ask(&lease.spec),
        );
        self.leases.all.insert(id, Box::new(lease));
        id
    }

    /// Puts pending lease `id` in the queue, the timeouts and (with a
    /// deadline) the price steps.
    fn enqueue(&mut self, id: u64) {
        let Some(l) = self.leases.all.get(&id) else {
            return;
        };
        let (key, wait_until, cheap_until) = (
            l.queue_key(),
            l.wait_until,
            (l.cheap_until > l.requested_at).then_some(l.cheap_until),
        );
        self.leases.queue.insert(key);
        self.leases.timeouts.insert((wait_until, id));
        if let Some(at) = cheap_until {
            self.leases.price_steps.insert((at, id));
        }
    }

    /// Grants pending lease `id` on `nodes` (placement checked them).
    /// The lowest `n` GPU indices of `node` that no live lease holds.
    /// Placement checked that `n` GPUs are free (and that the node is not
    /// over its capacity), so `n` of `0..capacity` are unheld.
    fn free_gpus(&self, node: &str, n: u32) -> Vec<u32> {
        let Some(nd) = self.nodes.nodes.get(node) else {
            return Vec::new();
        };
        let held: std::collections::BTreeSet<u32> = nd
            .leases
            .iter()
            .filter_map(|l| self.leases.all.get(l))
            .filter_map(|l| l.gpu_ids.get(node))
            .flatten()
            .copied()
            .collect();
        (0..nd.capacity.gpus)
            .filter(|g| !held.contains(g))
            .take(n as usize)
            .collect()
    }

    fn grant(&mut self, id: u64, nodes: Vec<String>) {
        let now = self.time;
        self.fencing_token += 1;
        let token = self.fencing_token;
        let want = self
            .leases
            .all
            .get(&id)
            .map_or(0, |l| l.spec.resources.gpus);
        let gpu_ids: BTreeMap<String, Vec<u32>> = if want == 0 {
            BTreeMap::new()
        } else {
            nodes
                .iter()
                .map(|n| (n.clone(), self.free_gpus(n, want)))
                .collect()
        };
        let lease = self
            .leases
            .all
            .get_mut(&id)
            .expect("grant of a lease that exists");
        let mut cost = 0.0;
        let mut moved = Vec::with_capacity(nodes.len());
        for name in &nodes {
            let node = self
                .nodes
                .nodes
                .get_mut(name)
                .expect("placement returned a node that exists");
            let old_key = super::node_key(node);
            node.allocated = node.allocated.plus(&lease.spec.resources);
            assert!(
                node.allocated.fits_in(&node.capacity),
                "invariant broken: node {name} over-committed by lease {id}"
            );
            node.leases.insert(id);
            cost += node.cost_per_hour;
            moved.push((old_key, super::node_key(node)));
        }
        self.leases.queue.remove(&lease.queue_key());
        self.leases.timeouts.remove(&(lease.wait_until, id));
        self.leases.price_steps.remove(&(lease.cheap_until, id));
        lease.nodes = nodes;
        lease.state = LeaseState::Granted;
        lease.granted_at = now;
        lease.expires_at = now.saturating_add(ms(lease.spec.duration_ms));
        lease.fencing_token = token;
        lease.cost_per_hour = cost;
        lease.gpu_ids = gpu_ids;
        self.leases.expiries.insert((lease.expires_at, id));
        let (principal, detail) = (
            lease.principal.clone(),
            format!("on {}, token {token}", lease.nodes.join(",")),
        );
        for (old, new) in moved {
            self.nodes.reindex(old, new);
        }
        self.note(EventKind::LeaseGranted, &principal, id, detail);
    }

    fn owned(&self, id: u64, principal: &str, admin: bool) -> Result<&Lease, Refusal> {
        let lease = self.leases.all.get(&id).ok_or_else(|| Refusal::NotFound {
            what: format!("lease {id}"),
        })?;
        if lease.principal != principal && !admin {
            return Err(Refusal::NotYours {
                id,
                owner: lease.principal.clone(),
                principal: principal.to_string(),
            });
        }
        if lease.state.is_ended() {
            return Err(Refusal::Ended {
                id,
                state: lease.state,
            });
        }
        Ok(lease)
    }

    pub(super) fn release_lease(&mut self, id: u64, principal: &str, admin: bool) -> Outcome {
        self.owned(id, principal, admin)?;
        let lease = self.end_lease(id, LeaseState::Released);
        self.grant_queue();
        Ok(Applied::Lease(lease))
    }

    pub(super) fn revoke_lease(&mut self, id: u64, admin: bool) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: format!("revoking lease {id} needs an admin token"),
            });
        }
        self.owned(id, "", true)?;
        let lease = self.end_lease(id, LeaseState::Revoked);
        self.grant_queue();
        Ok(Applied::Lease(lease))
    }

    pub(super) fn renew_lease(
        &mut self,
        id: u64,
        principal: &str,
        admin: bool,
        duration_ms: u64,
    ) -> Outcome {
        let lease = self.owned(id, principal, admin)?;
        if lease.state != LeaseState::Granted {
            return Err(Refusal::Ended {
                id,
                state: lease.state,
            });
        }
        if duration_ms == 0 {
            return Err(Refusal::Invalid {
                reason: "renewal duration must be positive".into(),
            });
        }
        let cap = lease.granted_at.saturating_add(ms(lease.spec.max_total_ms));
        if lease.expires_at >= cap {
            return Err(Refusal::Limit {
                reason: format!(
                    "lease {id} has reached its max total of {} s from its grant; request a new lease (with --max-total to renew longer)",
                    lease.spec.max_total_ms / 1000
                ),
            });
        }
        let old = lease.expires_at;
        let new = self.time.saturating_add(ms(duration_ms)).min(cap).max(old);
        let lease = self.leases.all.get_mut(&id).expect("checked above");
        lease.expires_at = new;
        self.leases.expiries.remove(&(old, id));
        self.leases.expiries.insert((new, id));
        let out = Lease::clone(lease);
        self.note(EventKind::LeaseRenewed, &out.principal, id, "");
        Ok(Applied::Lease(out))
    }

    /// Expires due leases, times out due requests, then grants what fits.
    pub(super) fn tick(&mut self) -> Applied {
        let now = self.time;
        let (down, lost) = self.nodes_down();
        let stepped: Vec<(Millis, u64)> = self
            .leases
            .price_steps
            .iter()
            .take_while(|(at, _)| *at <= now)
            .copied()
            .collect();
        for k in stepped {
            self.leases.price_steps.remove(&k);
        }
        let expired: Vec<u64> = self
            .leases
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in &expired {
            self.end_lease(*id, LeaseState::Expired);
        }
        let timed_out: Vec<u64> = self
            .leases
            .timeouts
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in &timed_out {
            self.end_lease(*id, LeaseState::TimedOut);
        }
        let granted = self.grant_queue();
        self.tick_locks();
        Applied::Ticked {
            expired,
            timed_out,
            granted,
            down,
            lost,
        }
    }

    /// Grants queued requests in priority order, each that fits (first fit).
    pub(super) fn grant_queue(&mut self) -> Vec<u64> {
        let mut granted = Vec::new();
        let queued: Vec<u64> = self.leases.queue.iter().map(|(_, _, id)| *id).collect();
        for id in queued {
            if let Some(nodes) = self.place_pending(&self.leases[&id]) {
                self.grant(id, nodes);
                granted.push(id);
            }
        }
        granted
    }

    /// Ends a pending or granted lease and frees what it held.
    pub(super) fn end_lease(&mut self, id: u64, to: LeaseState) -> Lease {
        let now = self.time;
        let lease = self
            .leases
            .all
            .get_mut(&id)
            .expect("caller checked the lease exists");
        match lease.state {
            LeaseState::Pending => {
                self.leases.queue.remove(&lease.queue_key());
                self.leases.timeouts.remove(&(lease.wait_until, id));
                self.leases.price_steps.remove(&(lease.cheap_until, id));
            }
            LeaseState::Granted => {
                self.leases.expiries.remove(&(lease.expires_at, id));
                let mut moved = Vec::with_capacity(lease.nodes.len());
                for name in &lease.nodes {
                    if let Some(node) = self.nodes.nodes.get_mut(name) {
                        let old_key = super::node_key(node);
                        node.allocated = node.allocated.minus(&lease.spec.resources);
                        node.leases.remove(&id);
                        moved.push((old_key, super::node_key(node)));
                    }
                }
                lease.state = to;
                lease.ended_at = Some(now);
                let out = Lease::clone(lease);
                for (old, new) in moved {
                    self.nodes.reindex(old, new);
                }
                self.ended_lease(&out);
                self.end_task_of(id, to);
                return out;
            }
            _ => return Lease::clone(lease),
        }
        lease.state = to;
        lease.ended_at = Some(now);
        let out = Lease::clone(lease);
        self.ended_lease(&out);
        self.end_task_of(id, to);
        out
    }

    /// Bookkeeping of a lease that just ended: its principal holds it no
    /// more, and it may leave the live state later.
    fn ended_lease(&mut self, l: &Lease) {
        let late = (l.state == LeaseState::Expired).then(|| self.time - l.expires_at);
        self.note_ms(
            EventKind::lease_ended(l.state),
            &l.principal,
            l.id,
            "",
            late,
        );
        self.hold(&l.principal, &l.spec, false);
        self.note_ended(l.ended_at.unwrap_or(self.time), l.id);
    }

    /// A lease lost with its node: it holds nothing any more.
    pub(super) fn lose_lease(&mut self, id: u64) {
        if self
            .leases
            .all
            .get(&id)
            .is_some_and(|l| l.state == LeaseState::Granted)
        {
            self.end_lease(id, LeaseState::Lost);
        }
    }

    /// Whether the leader's placement still holds: `count` distinct nodes
    /// that each fit now (the re-check that keeps a node from over-commit,
    /// whatever the leader believed).
    fn hint_fits(&self, hint: &[String], spec: &LeaseSpec) -> bool {
        let distinct = hint.iter().collect::<std::collections::BTreeSet<_>>().len() == hint.len();
        distinct
            && hint.len() == spec.count.max(1) as usize
            && hint.iter().all(|n| {
                self.nodes
                    .nodes
                    .get(n)
                    .is_some_and(|node| placement::rule_out(node, spec, false).is_none())
            })
    }

    /// Where a pending lease would go now (only the cheapest capacity while
    /// its deadline allows), or `None`.
    pub fn place_pending(&self, l: &Lease) -> Option<Vec<String>> {
        let none = std::collections::BTreeMap::new();
        if l.cheap_until > self.time {
            placement::pick(&self.nodes, &self.cheap_only(&l.spec), &none)
        } else {
            placement::pick(&self.nodes, &l.spec, &none)
        }
    }

    /// `spec` limited to the lowest price among nodes that could ever hold
    /// it, including nodes a pool could still add.
    pub fn cheap_only(&self, spec: &LeaseSpec) -> LeaseSpec {
        let pooled = self
            .nodes
            .pools
            .values()
            .filter(|p| self.pool_room(&p.name) > 0)
            .map(|p| p.new_node(""))
            .filter(|n| placement::rule_out(n, spec, true).is_none())
            .map(|n| n.cost_per_hour);
        let cheapest = self
            .nodes
            .nodes
            .values()
            .filter(|n| placement::rule_out(n, spec, true).is_none())
            .map(|n| n.cost_per_hour)
            .chain(pooled)
            .min_by(f64::total_cmp);
        let mut s = spec.clone();
        if let Some(c) = cheapest {
            s.max_cost_per_hour = Some(s.max_cost_per_hour.map_or(c, |m| m.min(c)));
        }
        s
    }

    /// Why a request that may not wait is refused, in the words that lead
    /// to the fix: one that no node could ever hold says so (waiting cannot
    /// help); one that only a pool could hold names the pool and `--wait`
    /// (a pool grows for waiting requests); else what is busy now.
    fn refusal_now(&self, spec: &LeaseSpec, now: &placement::NoFit) -> String {
        if let Err(ever) = placement::could_ever_fit(&self.nodes, spec) {
            return format!("no node could ever hold it: {}", ever.summary());
        }
        let registered = placement::registered_could_ever_fit(&self.nodes, spec);
        if registered.fitting < registered.needed {
            let pools = placement::pools_that_fit(&self.nodes, spec);
            let which = match pools.as_slice() {
                [one] => format!("pool {one}"),
                many => format!("pools {}", many.join(", ")),
            };
            return format!(
                "no registered node can hold it ({}); {which} can add nodes that do: ask with `--wait D` and a pool grows for it",
                now.summary()
            );
        }
        now.summary()
    }

    /// Why pending lease `l` waits, for `lease why`: one line per node (the
    /// nearest first), its place in the queue and the requests ahead, and,
    /// in a deadline request's cheap phase, the pricier nodes it leaves
    /// alone until then. Returns `(lines, summary)`.
    pub fn why_pending(&self, l: &Lease) -> (Vec<String>, String) {
        let cheap = l.cheap_until > self.time;
        let spec = if cheap {
            self.cheap_only(&l.spec)
        } else {
            l.spec.clone()
        };
        let nf = placement::why_not(&self.nodes, &spec);
        let mut lines: Vec<String> = nf
            .per_node
            .iter()
            .map(|(n, r)| format!("{n}: {r}"))
            .collect();
        let mut summary = format!("pending: {}", nf.summary());
        if cheap {
            let pricier: Vec<String> = self
                .nodes
                .nodes
                .values()
                .filter(|n| {
                    placement::rule_out(n, &spec, false)
                        .is_some_and(|w| matches!(w, placement::Why::Cost(..)))
                })
                .filter(|n| placement::rule_out(n, &l.spec, false).is_none())
                .map(|n| format!("{} ({}/h)", n.name, n.cost_per_hour))
                .collect();
            let limit = spec.max_cost_per_hour.unwrap_or(0.0);
            let until = chrono::DateTime::from_timestamp_millis(l.cheap_until)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let line = if pricier.is_empty() {
                format!(
                    "until {until} (half the time its deadline leaves) it takes only the cheapest capacity, at most {limit}/h"
                )
            } else {
                format!(
                    "until {until} (half the time its deadline leaves) it takes only the cheapest capacity, at most {limit}/h; free now but pricier: {}",
                    pricier.join(", ")
                )
            };
            summary = format!("{summary}; {line}");
            lines.push(line);
        }
        let key = l.queue_key();
        let ahead: Vec<u64> = self
            .leases
            .queue
            .range(..key)
            .map(|(_, _, id)| *id)
            .collect();
        let place = if ahead.is_empty() {
            "first in the queue".to_string()
        } else {
            let shown: Vec<String> = ahead
                .iter()
                .take(5)
                .map(|id| format!("lease {id}"))
                .collect();
            let more = ahead.len().saturating_sub(5);
            format!(
                "position {} in the queue, behind {}{}",
                ahead.len() + 1,
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        };
        summary = format!("{summary}; {place}");
        lines.push(place);
        (lines, summary)
    }

    /// The limits `principal` is held to: its own quota, else `*`'s.
    fn quota_of(&self, principal: &str) -> Option<&Quota> {
        self.leases
            .quotas
            .get(principal)
            .or_else(|| self.leases.quotas.get("*"))
    }

    fn check_quota(&self, principal: &str, spec: &LeaseSpec) -> Result<(), Refusal> {
        let Some(q) = self.quota_of(principal) else {
            return Ok(());
        };
        let deny = |reason: String| Err(Refusal::Denied { reason });
        if let Some(max) = q.max_duration_ms
            && spec.max_total_ms > max
        {
            return deny(format!(
                "quota: {principal} may hold a lease for at most {} s, asked for {} s (with renewals); ask for less or have an admin raise it",
                max / 1000,
                spec.max_total_ms / 1000
            ));
        }
        // O(1): live leases are counted per principal as they come and go.
        let (live, held) = self.leases.held.get(principal).copied().unwrap_or((0, 0));
        if let Some(max) = q.max_leases
            && live >= u64::from(max)
        {
            return deny(format!(
                "quota: {principal} may hold at most {max} leases at once and holds {live}; release one first"
            ));
        }
        if let Some(max) = q.max_cpu_millis {
            let asked = spec.resources.cpu_millis * u64::from(spec.count.max(1));
            if held + asked > max {
                return deny(format!(
                    "quota: {principal} may hold at most {} cores; holds {}, asked for {} more",
                    max as f64 / 1000.0,
                    held as f64 / 1000.0,
                    asked as f64 / 1000.0
                ));
            }
        }
        Ok(())
    }

    /// When the next time-based change is due: an expiry, a queue timeout,
    /// a deadline request's price step, or a missed heartbeat.
    pub fn next_due(&self) -> Option<Millis> {
        [
            self.leases.expiries.iter().next().map(|(at, _)| *at),
            self.leases.timeouts.iter().next().map(|(at, _)| *at),
            self.leases.price_steps.iter().next().map(|(at, _)| *at),
            self.nodes.heartbeats.iter().next().map(|(at, _)| *at),
            self.locks.next_due(),
            self.next_trim(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
