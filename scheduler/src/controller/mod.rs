//! Leader-only loops. Each reads replicated state, calculates with the
//! clock's `now`, and proposes commands; on a follower it does nothing.
//!
//! - ticks: when [`State::next_due`] has passed (a lease's `expires_at`, a
//!   queued request's wait limit), the leader proposes `Tick`, which expires,
//!   times out and grants in one deterministic step. After a failover the new
//!   leader finds everything that fell due meanwhile due at once, since the
//!   times are absolute and in the log.

pub mod provision;
pub mod scaling;

use crate::raft_driver::MemberHandle;
use crate::state::{Applied, Command, Millis, Proposal, State};
use std::time::Duration;
use tokio::sync::watch;

/// The longest the tick loop sleeps before it looks at `next_due` again.
pub const TICK_PERIOD: Duration = Duration::from_millis(20);

/// The proposal that applies everything due at `now`, if anything is.
/// Pure: the tick loop and the simulation both use it.
pub fn tick_proposal(state: &State, now: Millis) -> Option<Proposal> {
    let due = state.next_due()?;
    (due <= now).then(|| Proposal {
        at: now,
        principal: "charter:tick".into(),
        admin: true,
        key: None,
        hint: None,
        cmd: Command::Tick,
    })
}

/// How often the leader checks that its retention rules are in force.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// How often a member prunes its history store (often: small steady
/// deletions instead of a burst).
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// What a member keeps of what left the live state: for how long, how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryKeep {
    /// Age limit, in ms.
    pub keep_ms: u64,
    /// Size limit, in bytes.
    pub max_bytes: u64,
}

impl Default for HistoryKeep {
    fn default() -> HistoryKeep {
        HistoryKeep {
            keep_ms: 7 * 24 * 3_600_000,
            max_bytes: 32 << 20,
        }
    }
}

/// Puts the leader's retention rules in force (`SetRetention` when the
/// state's differ) and prunes this member's history store, until `stop`.
pub async fn retention(
    member: MemberHandle,
    wanted: crate::state::Retention,
    keep: HistoryKeep,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(RETENTION_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pruned = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(h) = member.history()
            && pruned.elapsed() >= PRUNE_EVERY
        {
            pruned = tokio::time::Instant::now();
            let (h, now) = (h.clone(), member.clock().now());
            let done =
                tokio::task::spawn_blocking(move || h.prune(now, keep.keep_ms, keep.max_bytes))
                    .await;
            match done {
                Ok(Ok(n)) if n > 0 => tracing::info!(dropped = n, "history pruned"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the history store"),
                _ => {}
            }
        }
        if !member.is_leader() || member.read(|s| s.retention == wanted) {
            continue;
        }
        let p = Proposal {
            at: member.clock().now(),
            principal: "charter:retention".into(),
            admin: true,
            key: None,
            hint: None,
            cmd: Command::SetRetention(wanted),
        };
        match member.propose(p).await {
            Ok(Ok(_)) => tracing::info!(
                ?wanted,
                "retention rules from this member's config are in force"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "the retention rules were refused"),
            Err(e) => {
                tracing::debug!(error = %e, "proposing the retention rules failed; will retry")
            }
        }
    }
}

/// Runs the tick loop until `stop` turns true.
///
/// The leader sleeps until the next thing falls due (at most
/// [`TICK_PERIOD`]), and wakes early when an applied entry may have made
/// something due sooner, so an expiry is proposed within a millisecond or
/// two of its time rather than up to a period late.
pub async fn ticks(member: MemberHandle, mut stop: watch::Receiver<bool>) {
    let mut applied = member.applied_watch();
    let mut wait = TICK_PERIOD;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = applied.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        wait = TICK_PERIOD;
        if !member.is_leader() {
            continue;
        }
        let now = member.clock().now();
        let due = member.read(|s| s.next_due());
        if let Some(d) = due.filter(|d| *d > now) {
            // One millisecond past it, so the time has come when we wake.
            let ms = u64::try_from(d - now).unwrap_or(u64::MAX).saturating_add(1);
            wait = Duration::from_millis(ms).min(TICK_PERIOD);
            continue;
        }
        let Some(p) = member.read(|s| tick_proposal(s, now)) else {
            continue;
        };
        match member.propose(p).await {
            Ok(Ok(Applied::Ticked {
                expired,
                timed_out,
                granted,
                down,
                lost,
            })) => {
                if !down.is_empty() {
                    tracing::warn!(
                        ?down,
                        lost = lost.len(),
                        "nodes missed their heartbeat: down, their leases lost"
                    );
                }
                tracing::debug!(
                    expired = expired.len(),
                    timed_out = timed_out.len(),
                    granted = granted.len(),
                    "tick"
                );
            }
            Ok(other) => tracing::warn!(?other, "unexpected tick outcome"),
            Err(e) => {
                tracing::debug!(error = %e, "tick proposal failed; will retry");
                // Not at once: leadership may be moving.
                wait = Duration::from_millis(5);
            }
        }
    }
}
