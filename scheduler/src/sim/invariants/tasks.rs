//! A task and its lease agree: a task still going is bound to a live lease
//! that maps back to it, and no lease runs for a task that has ended.

use super::MemberView;

/// Fails on a live task without a live lease, or a live lease of an ended task.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let s = &v.state;
        for t in s.tasks.values() {
            let lease = s.leases.get(&t.lease);
            let live_lease = lease.is_some_and(|l| !l.state.is_ended());
            if s.tasks.by_lease.get(&t.lease) != Some(&t.id) {
                return Err(format!(
                    "member {}: task {} says lease {}, which does not map back to it",
                    v.id, t.id, t.lease
                ));
            }
            if !t.state.is_ended() && !live_lease {
                return Err(format!(
                    "member {}: task {} is {} but its lease {} is {:?}",
                    v.id,
                    t.id,
                    t.state.as_str(),
                    t.lease,
                    lease.map(|l| l.state)
                ));
            }
            if t.state.is_ended() && live_lease {
                return Err(format!(
                    "member {}: task {} ended ({}) but its lease {} still holds capacity",
                    v.id,
                    t.id,
                    t.state.as_str(),
                    t.lease
                ));
            }
        }
    }
    Ok(())
}
