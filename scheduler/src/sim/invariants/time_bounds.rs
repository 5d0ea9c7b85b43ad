//! Leases are absolute: in every state no lease is granted at or past its
//! `expires_at`, no request is pending past its wait limit, and no renewal
//! took a lease past `granted_at + max_total`.

use super::MemberView;
use crate::state::LeaseState;

/// Fails on a lease that outlived its time in any member's state.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let now = v.state.time;
        for l in v.state.leases.values() {
            let bad = match l.state {
                LeaseState::Granted => {
                    l.expires_at <= now
                        || l.expires_at > l.granted_at.saturating_add(l.spec.max_total_ms as i64)
                }
                LeaseState::Pending => l.wait_until <= now,
                _ => false,
            };
            if bad {
                return Err(format!(
                    "member {}: lease {} is {} at {now} (expires {}, waits until {})",
                    v.id, l.id, l.state, l.expires_at, l.wait_until
                ));
            }
        }
    }
    Ok(())
}
