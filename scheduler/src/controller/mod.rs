//! Leader-only loops. Each reads replicated state, calculates with the
//! clock's `now`, and proposes commands; on a follower it does nothing.
//!
//! - expiry: at `expires_at` the leader proposes `ExpireLeases`. After a
//!   failover the new leader finds every lease that expired meanwhile due at
//!   once, since `expires_at` is absolute and in the log.

use crate::raft_driver::MemberHandle;
use crate::state::{Applied, Command, Proposal};
use std::time::Duration;
use tokio::sync::watch;

/// How often the expiry loop looks for due leases.
pub const EXPIRY_PERIOD: Duration = Duration::from_millis(20);
/// The most leases one expiry proposal ends.
const EXPIRY_BATCH: usize = 1000;

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
        let due = member.read(|s| s.due_expiries(now, EXPIRY_BATCH));
        if due.is_empty() {
            continue;
        }
        let p = Proposal {
            at: now,
            principal: "charter:expiry".into(),
            admin: true,
            key: None,
            cmd: Command::ExpireLeases { ids: due },
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
