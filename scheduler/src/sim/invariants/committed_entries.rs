//! No committed entry is ever lost or changed: every member's log agrees
//! with what was committed at each index, as long as it still holds it.

use super::{History, MemberView, hash};
use raft::{GetEntriesContext, Storage};

/// Fails when a member holds a different entry at a committed index.
pub fn check(h: &mut History, views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let first = v.store.first_index().unwrap_or(1);
        let last = v.store.last_index().unwrap_or(0).min(v.commit);
        if last < first {
            continue;
        }
        // Only entries committed since the last check (and at most 64).
        let seen_to = h.checked.get(&v.id).map_or(0, |c| c.1);
        let from = first
            .max(last.saturating_sub(64))
            .max(seen_to.min(last) + 1);
        if from > last {
            continue;
        }
        h.checked.entry(v.id).or_default().1 = last;
        let entries = v
            .store
            .entries(from, last + 1, None, GetEntriesContext::empty(false))
            .map_err(|e| format!("member {} cannot read its committed log: {e}", v.id))?;
        for e in entries {
            let seen = (e.term, hash(&e.data));
            let first_seen = *h.committed.entry(e.index).or_insert(seen);
            if first_seen != seen {
                return Err(format!(
                    "committed entry {} changed on member {}: term {} → {}",
                    e.index, v.id, first_seen.0, seen.0
                ));
            }
        }
    }
    Ok(())
}
