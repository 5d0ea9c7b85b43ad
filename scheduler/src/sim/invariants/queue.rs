//! The queue is consistent and never sits on capacity: a pending request is
//! in the queue and the timeout index, a granted lease in the expiry index,
//! an ended one in none; and after every applied change no pending request
//! fits (whatever freed capacity also granted what it could).

use super::MemberView;
use crate::state::LeaseState;

/// Fails on an index out of step with a lease, or a pending request that fits.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let s = &v.state;
        for l in s.leases.values() {
            let queued = s.leases.queue.contains(&l.queue_key());
            let timing = s.leases.timeouts.contains(&(l.wait_until, l.id));
            let expiring = s.leases.expiries.contains(&(l.expires_at, l.id));
            let want = match l.state {
                LeaseState::Pending => (true, true, false),
                LeaseState::Granted => (false, false, true),
                _ => (false, false, false),
            };
            if (queued, timing, expiring) != want {
                return Err(format!(
                    "member {}: lease {} is {} but queue/timeouts/expiries say {:?}",
                    v.id,
                    l.id,
                    l.state,
                    (queued, timing, expiring)
                ));
            }
            if l.state == LeaseState::Pending && s.place_pending(l).is_some() {
                return Err(format!(
                    "member {}: pending lease {} fits but was not granted",
                    v.id, l.id
                ));
            }
        }
        let indexed = s.leases.queue.len() + s.leases.expiries.len();
        let live = s.leases.values().filter(|l| !l.state.is_ended()).count();
        if indexed != live {
            return Err(format!(
                "member {}: {indexed} indexed leases, {live} live",
                v.id
            ));
        }
    }
    Ok(())
}
