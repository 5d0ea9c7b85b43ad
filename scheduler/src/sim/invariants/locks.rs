//! Locks: at any applied index a lock has at most `limit` holders, every
//! live acquisition is before its `expires_at` (and a waiter before its
//! `wait_until`), tokens only grow (a new holder of a lock has a greater
//! token than every earlier holder of it, and none exceeds the counter),
//! and each token of a lock (an election's term) has one holder.

use super::{History, MemberView};
use crate::state::HoldState;

/// Fails on a lock that breaks any of the rules above in any member.
pub fn check(h: &mut History, views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let s = &v.state;
        let now = s.time;
        // A member that restarted replays from its snapshot: start over.
        let (seen_at, mut seen) = h.lock_tokens.remove(&v.id).unwrap_or_default();
        if v.applied < seen_at {
            seen.clear();
        }
        for lock in s.locks.values() {
            if lock.holders.len() > lock.limit as usize {
                return Err(format!(
                    "member {}: lock {} has {} holders, limit {}",
                    v.id,
                    lock.name,
                    lock.holders.len(),
                    lock.limit
                ));
            }
            let mut last = 0;
            let (before, mut ids) = seen.remove(&lock.name).unwrap_or_default();
            let mut top = before;
            for id in &lock.holders {
                let Some(hold) = s.locks.holds.get(id) else {
                    return Err(format!(
                        "member {}: lock {} holder {id} unknown",
                        v.id, lock.name
                    ));
                };
                if hold.state != HoldState::Held || hold.expires_at <= now {
                    return Err(format!(
                        "member {}: lock {} holder {id} is {} expiring {} at {now}",
                        v.id, lock.name, hold.state, hold.expires_at
                    ));
                }
                if hold.token <= last || hold.token > s.fencing_token {
                    return Err(format!(
                        "member {}: lock {} holder {id} has token {} after {last} (counter {})",
                        v.id, lock.name, hold.token, s.fencing_token
                    ));
                }
                last = hold.token;
                let first = *h
                    .lock_terms
                    .entry((lock.name.clone(), hold.token))
                    .or_insert(hold.id);
                if first != hold.id {
                    return Err(format!(
                        "lock {} token {} held by acquisitions {first} and {}",
                        lock.name, hold.token, hold.id
                    ));
                }
                // Not seen holding before on this member: granted since, so
                // greater than any token this lock had then.
                if !ids.contains(&hold.id) && hold.token <= before {
                    return Err(format!(
                        "member {}: lock {} granted token {} after it had {before}",
                        v.id, lock.name, hold.token
                    ));
                }
                top = top.max(hold.token);
                ids.insert(hold.id);
            }
            seen.insert(lock.name.clone(), (top, ids));
            for id in &lock.waiters {
                match s.locks.holds.get(id) {
                    Some(w)
                        if w.state == HoldState::Waiting
                            && w.expires_at > now
                            && w.wait_until > now => {}
                    other => {
                        return Err(format!(
                            "member {}: lock {} waiter {id} at {now}: {other:?}",
                            v.id, lock.name
                        ));
                    }
                }
            }
        }
        h.lock_tokens.insert(v.id, (v.applied, seen));
    }
    Ok(())
}
