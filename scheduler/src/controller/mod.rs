//! Leader-only loops. Each reads replicated state, calculates with the
//! clock's `now`, and proposes commands; on a follower it does nothing.
//!
//! - expiry: at `expires_at` the leader proposes `ExpireLeases`. After a
//!   failover the new leader finds every lease that expired meanwhile due at
//!   once, since `expires_at` is absolute and in the log.

use crate::raft_driver::MemberHandle;
use crate::state::{Applied, Command, Millis, Proposal, State};
use std::time::Duration;
use tokio::sync::watch;

/// How often the expiry loop looks for due leases.
pub const EXPIRY_PERIOD: Duration = Duration::from_millis(20);
/// The most leases one expiry proposal ends.
const EXPIRY_BATCH: usize = 1000;

/// The proposal that expires every lease due at `now` (up to a batch), if any.
/// Pure: the expiry loop and the simulation both use it.
pub fn expiry_proposal(state: &State, now: Millis) -> Option<Proposal> {
    let due = state.due_expiries(now, EXPIRY_BATCH);
    (!due.is_empty()).then(|| Proposal {
        at: now,
        principal: "charter:expiry".into(),
        admin: true,
        key: None,
        cmd: Command::ExpireLeases { ids: due },
    })
}

/// Runs the expiry loop until `stop` turns true.
pub async fn expiry(member: MemberHandle, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(EXPIRY_PERIOD);
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
        let Some(p) = member.read(|s| expiry_proposal(s, now)) else {
            continue;
        };
        match member.propose(p).await {
            Ok(Ok(Applied::Expired { ids })) => {
                tracing::debug!(count = ids.len(), "expired leases");
            }
            Ok(other) => tracing::warn!(?other, "unexpected expiry outcome"),
            Err(e) => tracing::debug!(error = %e, "expiry proposal failed; will retry"),
        }
    }
}
