//! Every member tells the same events: what a member's event log holds at
//! `(index, seq)` is what every other member holds there (the leader a
//! member names in `member.leader_changed` aside, which is what that member
//! knew). Events come from `apply` and the log, so a difference means a
//! member applied differently, or noted an event outside `apply`.

use super::{History, MemberView};
use crate::state::EventKind;

/// Fails when two members' events at the same place differ.
pub fn check(h: &mut History, views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let cursor = h.event_cursors.entry(v.id).or_insert((0, u32::MAX));
        let (batch, next) = match v.events.after(*cursor, usize::MAX, |_| true) {
            Ok(b) => b,
            // Restarted or caught up by a snapshot: read on from what it keeps.
            Err(gone) => {
                let from = crate::events::EventLog::cursor_before(gone.oldest);
                v.events
                    .after(from, usize::MAX, |_| true)
                    .map_err(|e| format!("member {}: {e}", v.id))?
            }
        };
        *cursor = next;
        let mut counts: std::collections::BTreeMap<u64, u32> = Default::default();
        for e in &batch {
            *counts.entry(e.index).or_default() += 1;
        }
        for (index, n) in counts {
            let first = *h.event_counts.entry(index).or_insert((v.id, n));
            if first.1 != n {
                return Err(format!(
                    "entry {index}: member {} tells {n} events, member {} told {}",
                    v.id, first.0, first.1
                ));
            }
        }
        for e in batch {
            let subject = if e.kind == EventKind::LeaderChanged {
                String::new()
            } else {
                e.subject.clone()
            };
            let told = format!(
                "{} {} {} {} {} {:?}",
                e.kind, e.at, e.principal, subject, e.detail, e.ms
            );
            let first = h
                .events
                .entry((e.index, e.seq))
                .or_insert_with(|| (v.id, told.clone()));
            if first.1 != told {
                return Err(format!(
                    "event {}.{}: member {} tells `{}`, member {} told `{}`",
                    e.index, e.seq, v.id, told, first.0, first.1
                ));
            }
        }
    }
    Ok(())
}
