//! A member's metrics, in the Prometheus text format (`prometheus-client`).
//!
//! Counters and histograms are fed as entries are applied (from the events
//! `apply` notes and the outcomes it returns) and by the raft loop (fsync
//! and propose-to-apply times); gauges are read from the status and the
//! live state at each scrape. Nothing here walks history: a scrape costs
//! O(live nodes + queued requests). Counters count what this process
//! applied since it started, entries replayed from its log at start
//! included.
//!
//! Over 500 lines: one registry of every metric family, and what feeds it.

use crate::state::{Event, EventKind, LeaseState, Refusal, RunState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// A label set of one `name="value"` pair.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The value.
    pub kind: String,
}

/// A node's label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node.
    pub node: String,
}

/// A deploy step's label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// The step.
    pub step: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Histogram of seconds from 0.5 ms to ~16 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Histogram of seconds from 50 ms to ~7 min (deploy steps: builds).
fn long_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// Everything a member exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Every event by type.
    pub events: Family<Kind, Counter>,
    /// Lease grants.
    pub grants: Counter,
    /// Leases that ended, by how.
    pub lease_ends: Family<Kind, Counter>,
    /// Refused commands by reason.
    pub refusals: Family<Kind, Counter>,
    /// State time of an expiry minus the lease's `expires_at`.
    pub expiry_lateness: Histogram,
    /// Cron ticks by outcome.
    pub cron_ticks: Family<Kind, Counter>,
    /// A scheduled tick's fire time minus its tick.
    pub cron_lateness: Histogram,
    /// Deployments that ended, by outcome.
    pub deployments: Family<Kind, Counter>,
    /// How long each deploy step took.
    pub step_seconds: Family<StepLabel, Histogram>,
    /// From a proposal entering the raft loop to its entry being applied
    /// (on the member that proposed it).
    pub propose_to_apply: Histogram,
    /// One sync of the raft log to disk.
    pub fsync: Histogram,
    /// Writes this member forwarded to the leader.
    pub forwards: Counter,
    /// `ForwardBatch` calls this member (as leader) served, and the writes in them.
    pub forward_batches: Counter,
    pub forwarded_writes: Counter,
    /// Scrape-time gauges.
    gauges: Gauges,
    /// `events`' counter of each kind, by `EventKind as usize`, made once:
    /// the raft thread counts without allocating a label or locking the
    /// family.
    per_kind: Vec<Counter>,
    /// `lease_ends`' counters, in [`END_KINDS`] order.
    ends: Vec<Counter>,
}

/// How leases end, as `charter_lease_ends_total` labels them.
const END_KINDS: [LeaseState; 5] = [
    LeaseState::Released,
    LeaseState::Expired,
    LeaseState::Revoked,
    LeaseState::Lost,
    LeaseState::TimedOut,
];

#[derive(Debug, Default)]
struct Gauges {
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    commit: Gauge,
    applied: Gauge,
    snapshot_index: Gauge,
    snapshot_bytes: Gauge,
    history_bytes: Gauge,
    clock_skew: FloatGauge,
    nodes: Family<Kind, Gauge>,
    leases: Family<Kind, Gauge>,
    ended_leases: Gauge,
    state_leases: Gauge,
    tasks: Gauge,
    keys: Gauge,
    queue: Gauge,
    queue_oldest: FloatGauge,
    events_kept_from: Gauge,
    node_cpu_capacity: Family<NodeLabel, Gauge>,
    node_cpu_allocated: Family<NodeLabel, Gauge>,
    node_memory_capacity: Family<NodeLabel, Gauge>,
    node_memory_allocated: Family<NodeLabel, Gauge>,
}

impl Gauges {
    /// Registers the scrape-time gauges.
    ///
    /// Over 80 lines: a flat list: one registration per metric family.
    fn register(&self, r: &mut Registry) {
        let g = self;
        r.register(
            "charter_raft_term",
            "The raft term this member is in",
            g.term.clone(),
        );
        r.register(
            "charter_raft_leader_id",
            "The leader this member knows (0: none)",
            g.leader.clone(),
        );
        r.register(
            "charter_raft_is_leader",
            "1 when this member leads",
            g.is_leader.clone(),
        );
        r.register(
            "charter_raft_commit_index",
            "The raft commit index",
            g.commit.clone(),
        );
        r.register(
            "charter_raft_applied_index",
            "The index this member applied",
            g.applied.clone(),
        );
        r.register(
            "charter_raft_snapshot_index",
            "Index of this member's newest snapshot",
            g.snapshot_index.clone(),
        );
        r.register(
            "charter_raft_snapshot_bytes",
            "Size of the newest snapshot this member made",
            g.snapshot_bytes.clone(),
        );
        r.register(
            "charter_history_bytes",
            "Bytes this member's history store keeps",
            g.history_bytes.clone(),
        );
        r.register(
            "charter_clock_skew_seconds",
            "This member's wall clock minus the steady time it stamps as leader",
            g.clock_skew.clone(),
        );
        r.register("charter_nodes", "Nodes by state", g.nodes.clone());
        r.register(
            "charter_leases",
            "Live leases by state (pending, granted)",
            g.leases.clone(),
        );
        r.register(
            "charter_state_ended_leases",
            "Ended leases the live state still holds",
            g.ended_leases.clone(),
        );
        r.register(
            "charter_state_leases",
            "Leases in the live state, live and recently ended",
            g.state_leases.clone(),
        );
        r.register(
            "charter_state_tasks",
            "Tasks in the live state",
            g.tasks.clone(),
        );
        r.register(
            "charter_state_idempotency_keys",
            "Idempotency outcomes kept",
            g.keys.clone(),
        );
        r.register(
            "charter_queue_depth",
            "Lease requests waiting",
            g.queue.clone(),
        );
        r.register(
            "charter_queue_oldest_seconds",
            "Age of the oldest waiting request",
            g.queue_oldest.clone(),
        );
        r.register(
            "charter_events_kept_from_index",
            "The oldest raft index whose events this member still serves",
            g.events_kept_from.clone(),
        );
        r.register(
            "charter_node_cpu_capacity_millis",
            "A node's CPU, in millicores",
            g.node_cpu_capacity.clone(),
        );
        r.register(
            "charter_node_cpu_allocated_millis",
            "CPU its live leases hold, in millicores",
            g.node_cpu_allocated.clone(),
        );
        r.register(
            "charter_node_memory_capacity_bytes",
            "A node's memory",
            g.node_memory_capacity.clone(),
        );
        r.register(
            "charter_node_memory_allocated_bytes",
            "Memory its live leases hold",
            g.node_memory_allocated.clone(),
        );
    }
}

/// What a scrape reads from the member and its state.
#[derive(Debug, Default)]
pub struct Reading {
    /// Raft term, leader id (0: none), whether this member leads.
    pub raft: (u64, u64, bool),
    /// Commit and applied index.
    pub index: (u64, u64),
    /// Newest snapshot's index and size.
    pub snapshot: (u64, u64),
    /// Bytes in the history store.
    pub history_bytes: u64,
    /// Wall clock minus steady time, ms.
    pub clock_skew_ms: i64,
    /// Nodes by state.
    pub nodes: Vec<(&'static str, u64)>,
    /// Live leases by state.
    pub leases: Vec<(&'static str, u64)>,
    /// Ended leases still in the live state.
    pub ended_leases: u64,
    /// Leases in the live state, live and recently ended.
    pub state_leases: u64,
    /// Tasks and idempotency keys in the live state.
    pub tasks: u64,
    /// Idempotency outcomes kept.
    pub keys: u64,
    /// Pending requests, and the age of the oldest in seconds.
    pub queue: (u64, f64),
    /// The oldest index whose events are kept.
    pub events_kept_from: u64,
    /// Per node: name, cpu capacity and allocated (millicores), memory
    /// capacity and allocated (bytes).
    pub per_node: Vec<(String, [u64; 4])>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// A registry with every family registered.
    ///
    /// Over 80 lines: a flat list: one field per metric family.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            events: Family::default(),
            grants: Counter::default(),
            lease_ends: Family::default(),
            refusals: Family::default(),
            expiry_lateness: seconds(),
            cron_ticks: Family::default(),
            cron_lateness: seconds(),
            deployments: Family::default(),
            step_seconds: Family::new_with_constructor(long_seconds),
            propose_to_apply: seconds(),
            fsync: seconds(),
            forwards: Counter::default(),
            forward_batches: Counter::default(),
            forwarded_writes: Counter::default(),
            gauges: Gauges::default(),
            per_kind: Vec::new(),
            ends: Vec::new(),
        };
        let made =
            |f: &Family<Kind, Counter>, k: &str| f.get_or_create(&Kind { kind: k.into() }).clone();
        m.per_kind = EventKind::ALL
            .iter()
            .map(|k| made(&m.events, k.as_str()))
            .collect();
        m.ends = END_KINDS
            .iter()
            .map(|k| made(&m.lease_ends, k.as_str()))
            .collect();
        let r = &mut m.registry;
        r.register(
            "charter_events",
            "Events applied, by type (`charter events`)",
            m.events.clone(),
        );
        r.register("charter_lease_grants", "Leases granted", m.grants.clone());
        r.register(
            "charter_lease_ends",
            "Leases ended, by kind: released, expired, revoked, lost, timed_out",
            m.lease_ends.clone(),
        );
        r.register(
            "charter_refusals",
            "Commands refused in apply, by kind of refusal",
            m.refusals.clone(),
        );
        r.register(
            "charter_lease_expiry_lateness_seconds",
            "How long after its expires_at a lease was expired in the state",
            m.expiry_lateness.clone(),
        );
        r.register(
            "charter_cron_ticks",
            "Cron ticks by outcome: fired, skipped, succeeded, failed",
            m.cron_ticks.clone(),
        );
        r.register(
            "charter_cron_lateness_seconds",
            "How long after its scheduled time a cron tick fired",
            m.cron_lateness.clone(),
        );
        r.register(
            "charter_deployments",
            "Deployments by outcome: promoted, rolled_back, superseded, retired, unchanged",
            m.deployments.clone(),
        );
        r.register(
            "charter_deploy_step_seconds",
            "How long each deploy step took",
            m.step_seconds.clone(),
        );
        r.register(
            "charter_propose_to_apply_seconds",
            "From a write entering this member's raft loop to its entry being applied",
            m.propose_to_apply.clone(),
        );
        r.register(
            "charter_raft_fsync_seconds",
            "One sync of the raft log to disk",
            m.fsync.clone(),
        );
        r.register(
            "charter_forwards",
            "Writes this member forwarded to the leader",
            m.forwards.clone(),
        );
        r.register(
            "charter_forward_batches_served",
            "Calls of forwarded writes this member served as leader (one per batch)",
            m.forward_batches.clone(),
        );
        r.register(
            "charter_forwarded_writes_served",
            "Forwarded writes this member served as leader",
            m.forwarded_writes.clone(),
        );
        m.gauges.register(r);
        m
    }

    /// Counts one applied entry's events.
    pub fn observe_events(&self, events: &[Event]) {
        let secs = |ms: i64| ms.max(0) as f64 / 1000.0;
        for e in events {
            if let Some(c) = self.per_kind.get(e.kind as usize) {
                c.inc();
            }
            let end = |i: usize| {
                if let Some(c) = self.ends.get(i) {
                    c.inc();
                }
            };
            let count = |f: &Family<Kind, Counter>, k: &str| {
                f.get_or_create(&Kind { kind: k.into() }).inc();
            };
            use EventKind::*;
            match e.kind {
                LeaseGranted => {
                    self.grants.inc();
                }
                LeaseReleased => end(0),
                LeaseExpired => {
                    end(1);
                    if let Some(ms) = e.ms {
                        self.expiry_lateness.observe(secs(ms));
                    }
                }
                LeaseRevoked => end(2),
                LeaseLost => end(3),
                LeaseTimedOut => end(4),
                CronFired => {
                    count(&self.cron_ticks, "fired");
                    if let Some(ms) = e.ms {
                        self.cron_lateness.observe(secs(ms));
                    }
                }
                CronSkipped => count(&self.cron_ticks, RunState::Skipped.as_str()),
                CronSucceeded => count(&self.cron_ticks, RunState::Succeeded.as_str()),
                CronFailed => count(&self.cron_ticks, RunState::Failed.as_str()),
                DeployPromoted => count(&self.deployments, "promoted"),
                DeployRolledBack => count(
                    &self.deployments,
                    charter_config::deployment::DeployStatus::RolledBack.as_str(),
                ),
                DeployEnded => {
                    // `app A: superseded at build: ...`
                    let how = e
                        .detail
                        .split(": ")
                        .nth(1)
                        .and_then(|s| s.split(' ').next())
                        .unwrap_or("ended");
                    use charter_config::deployment::DeployStatus as Status;
                    let how = match how.parse() {
                        Ok(s @ (Status::Superseded | Status::Retired | Status::Unchanged)) => {
                            s.as_str()
                        }
                        _ => "ended",
                    };
                    count(&self.deployments, how);
                }
                DeployStep => {
                    let step = e.detail.split(' ').next().unwrap_or("");
                    if let (Some(ms), Ok(step)) =
                        (e.ms, step.parse::<charter_config::deployment::DeployStep>())
                    {
                        self.step_seconds
                            .get_or_create(&StepLabel {
                                step: step.to_string(),
                            })
                            .observe(secs(ms));
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts a refusal.
    pub fn observe_refusal(&self, r: &Refusal) {
        let kind = match r {
            Refusal::Invalid { .. } => "invalid",
            Refusal::NoCapacity { .. } => "no_capacity",
            Refusal::NotFound { .. } => "not_found",
            Refusal::NotYours { .. } => "not_yours",
            Refusal::Ended { .. } => "ended",
            Refusal::Gone { .. } => "gone",
            Refusal::Denied { .. } => "denied",
            Refusal::Limit { .. } => "limit",
        };
        self.refusals
            .get_or_create(&Kind { kind: kind.into() })
            .inc();
    }

    /// Records one fsync's duration.
    pub fn observe_fsync(&self, d: Duration) {
        self.fsync.observe(d.as_secs_f64());
    }

    /// The text a scrape returns, with the gauges set from `r`.
    pub fn render(&self, r: &Reading) -> String {
        let g = &self.gauges;
        g.term.set(int(r.raft.0));
        g.leader.set(int(r.raft.1));
        g.is_leader.set(i64::from(r.raft.2));
        g.commit.set(int(r.index.0));
        g.applied.set(int(r.index.1));
        g.snapshot_index.set(int(r.snapshot.0));
        g.snapshot_bytes.set(int(r.snapshot.1));
        g.history_bytes.set(int(r.history_bytes));
        g.clock_skew.set(r.clock_skew_ms as f64 / 1000.0);
        g.nodes.clear();
        for (k, v) in &r.nodes {
            g.nodes
                .get_or_create(&Kind { kind: (*k).into() })
                .set(int(*v));
        }
        g.leases.clear();
        for (k, v) in &r.leases {
            g.leases
                .get_or_create(&Kind { kind: (*k).into() })
                .set(int(*v));
        }
        g.ended_leases.set(int(r.ended_leases));
        g.state_leases.set(int(r.state_leases));
        g.tasks.set(int(r.tasks));
        g.keys.set(int(r.keys));
        g.queue.set(int(r.queue.0));
        g.queue_oldest.set(r.queue.1);
        g.events_kept_from.set(int(r.events_kept_from));
        for f in [
            &g.node_cpu_capacity,
            &g.node_cpu_allocated,
            &g.node_memory_capacity,
            &g.node_memory_allocated,
        ] {
            f.clear();
        }
        for (name, v) in &r.per_node {
            let l = NodeLabel { node: name.clone() };
            g.node_cpu_capacity.get_or_create(&l).set(int(v[0]));
            g.node_cpu_allocated.get_or_create(&l).set(int(v[1]));
            g.node_memory_capacity.get_or_create(&l).set(int(v[2]));
            g.node_memory_allocated.get_or_create(&l).set(int(v[3]));
        }
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_counts_in_its_own_counter() {
        // `per_kind` is indexed by `EventKind as usize`: ALL must be in
        // declaration order.
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k}");
        }
        let m = Metrics::new();
        let ev = |kind| Event {
            index: 1,
            seq: 0,
            at: 0,
            kind,
            principal: String::new(),
            subject: String::new(),
            detail: String::new(),
            ms: Some(5),
        };
        m.observe_events(&[
            ev(EventKind::LeaseExpired),
            ev(EventKind::LeaseExpired),
            ev(EventKind::TaskExited),
        ]);
        let text = m.render(&Reading::default());
        assert!(
            text.contains("charter_events_total{kind=\"lease.expired\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("charter_events_total{kind=\"task.exited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("charter_events_total{kind=\"cron.fired\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("charter_lease_ends_total{kind=\"expired\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("charter_lease_ends_total{kind=\"lost\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("charter_lease_expiry_lateness_seconds_count 2"),
            "{text}"
        );
    }
}
