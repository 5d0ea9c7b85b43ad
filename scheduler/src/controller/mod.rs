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

/// How often the tick loop looks at `next_due`.
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

/// Runs the tick loop until `stop` turns true.
pub async fn ticks(member: MemberHandle, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TICK_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        if !member.is_leader() {
            continue;
        }
        let now = member.clock().now();
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
            Err(e) => tracing::debug!(error = %e, "tick proposal failed; will retry"),
        }
    }
}
