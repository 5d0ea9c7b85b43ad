//! The member's recent events, in applied order, for followers.
//!
//! The driver pushes the [`Event`]s `apply` noted for each entry, stamped
//! with the entry's raft index and their order in it; readers take what
//! came after their cursor. The log is in memory and bounded (like Nomad's
//! event buffer): it holds the newest [`EventLog::CAPACITY`] events, and
//! after a restart those from the entries replayed since the snapshot. A
//! reader that asks for an index older than what is kept gets
//! [`Gone`] with the oldest index it may resume from.

use crate::state::Event;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Where a reader is: the index and sequence of the last event it saw.
pub type Cursor = (u64, u32);

/// Asked for events this member no longer keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "events before index {oldest} are no longer kept on this member (it keeps the newest {cap} and those since its last snapshot); resume with --since-index {oldest} or later"
)]
pub struct Gone {
    /// The oldest index a reader may resume from.
    pub oldest: u64,
    /// How many events are kept.
    pub cap: usize,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Every event of an entry at this index or later is kept.
    floor: u64,
}

/// Recent events of one member.
#[derive(Debug, Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
    cap: usize,
}

impl EventLog {
    /// How many events a member keeps.
    pub const CAPACITY: usize = 10_000;

    /// An empty log that will keep events of entries after `applied`.
    pub fn new(applied: u64) -> EventLog {
        EventLog::with_capacity(applied, EventLog::CAPACITY)
    }

    /// The same with room for `cap` events. A member that starts from the
    /// bootstrap snapshot (index 1, which carries no event) keeps from 1.
    pub fn with_capacity(applied: u64, cap: usize) -> EventLog {
        EventLog {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                floor: applied.max(1) + u64::from(applied > 1),
            }),
            cap: cap.max(1),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        match self.ring.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds the events of the entry at `index`.
    pub fn push(&self, index: u64, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut r = self.ring();
        for (seq, mut e) in events.into_iter().enumerate() {
            e.index = index;
            e.seq = u32::try_from(seq).unwrap_or(u32::MAX);
            r.events.push_back(Arc::new(e));
        }
        while r.events.len() > self.cap {
            if let Some(old) = r.events.pop_front() {
                r.floor = r.floor.max(old.index + 1);
            }
        }
    }

    /// Forgets everything: the state jumped to `index` by a snapshot, so the
    /// events of the entries it covers were never seen here.
    pub fn reset(&self, index: u64) {
        let mut r = self.ring();
        r.events.clear();
        r.floor = index + 1;
    }

    /// The oldest index whose events are all kept.
    pub fn oldest(&self) -> u64 {
        self.ring().floor
    }

    /// Up to `max` events after `cursor` that `keep` lets through, and the
    /// cursor to read on from. A cursor from before the kept range (or
    /// across a reset) is [`Gone`].
    pub fn after(
        &self,
        cursor: Cursor,
        max: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<(Vec<Arc<Event>>, Cursor), Gone> {
        let r = self.ring();
        // The reader has seen everything up to `cursor`; it missed
        // something when entries between it and the floor had events.
        if cursor.0 + 1 < r.floor {
            return Err(Gone {
                oldest: r.floor,
                cap: self.cap,
            });
        }
        let start = r.events.partition_point(|e| (e.index, e.seq) <= cursor);
        let mut out = Vec::new();
        let mut last = cursor;
        for e in r.events.iter().skip(start) {
            last = (e.index, e.seq);
            if keep(e) {
                out.push(e.clone());
                if out.len() >= max {
                    break;
                }
            }
        }
        Ok((out, last))
    }

    /// The cursor before the newest `n` events that `keep` lets through
    /// (before the oldest kept when fewer pass).
    pub fn before_tail(&self, n: usize, keep: impl Fn(&Event) -> bool) -> Cursor {
        let r = self.ring();
        let mut seen = 0;
        for (i, e) in r.events.iter().enumerate().rev() {
            if keep(e) {
                seen += 1;
                if seen == n {
                    return match i.checked_sub(1).and_then(|j| r.events.get(j)) {
                        Some(p) => (p.index, p.seq),
                        None => EventLog::cursor_before(r.floor),
                    };
                }
            }
        }
        EventLog::cursor_before(r.floor)
    }

    /// The cursor a reader starting at `since` (the first index it wants)
    /// begins from.
    pub fn cursor_before(since: u64) -> Cursor {
        match since {
            0 | 1 => (0, u32::MAX),
            i => (i - 1, u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EventKind;

    fn ev(kind: EventKind, subject: &str) -> Event {
        Event {
            index: 0,
            seq: 0,
            at: 0,
            kind,
            principal: "ann".into(),
            subject: subject.into(),
            detail: String::new(),
            ms: None,
        }
    }

    fn subjects(v: &[Arc<Event>]) -> Vec<String> {
        v.iter().map(|e| e.subject.clone()).collect()
    }

    #[test]
    fn readers_resume_from_an_index_and_a_cursor() {
        let log = EventLog::new(0);
        log.push(
            3,
            vec![
                ev(EventKind::LeaseRequested, "a"),
                ev(EventKind::LeaseGranted, "b"),
            ],
        );
        log.push(5, vec![ev(EventKind::LeaseExpired, "c")]);
        let (all, cur) = log.after(EventLog::cursor_before(0), 10, |_| true).unwrap();
        assert_eq!(subjects(&all), ["a", "b", "c"]);
        assert_eq!((all[1].index, all[1].seq), (3, 1));
        assert_eq!(cur, (5, 0));
        let (from5, _) = log.after(EventLog::cursor_before(5), 10, |_| true).unwrap();
        assert_eq!(subjects(&from5), ["c"]);
        let (from4, _) = log.after(EventLog::cursor_before(4), 10, |_| true).unwrap();
        assert_eq!(subjects(&from4), ["c"]);
        // Mid-entry cursor, a filter, a page size.
        let (rest, _) = log.after((3, 0), 10, |_| true).unwrap();
        assert_eq!(subjects(&rest), ["b", "c"]);
        let (only, _) = log
            .after((0, u32::MAX), 10, |e| e.kind == EventKind::LeaseExpired)
            .unwrap();
        assert_eq!(subjects(&only), ["c"]);
        let (page, cur) = log.after((0, u32::MAX), 1, |_| true).unwrap();
        assert_eq!((subjects(&page), cur), (vec!["a".to_string()], (3, 0)));
        let (two, _) = log
            .after(log.before_tail(2, |_| true), 10, |_| true)
            .unwrap();
        assert_eq!(subjects(&two), ["b", "c"]);
        let (all, _) = log
            .after(log.before_tail(9, |_| true), 10, |_| true)
            .unwrap();
        assert_eq!(subjects(&all), ["a", "b", "c"]);
        let (none, cur) = log.after((5, 0), 10, |_| true).unwrap();
        assert!(none.is_empty());
        assert_eq!(cur, (5, 0));
    }

    #[test]
    fn what_fell_off_or_was_reset_is_gone_with_where_to_resume() {
        let log = EventLog::with_capacity(0, 3);
        for i in 1..=5 {
            log.push(i, vec![ev(EventKind::LeaseGranted, &i.to_string())]);
        }
        // 1 and 2 fell off: index 3 is the oldest kept.
        assert_eq!(log.oldest(), 3);
        let err = log
            .after(EventLog::cursor_before(2), 10, |_| true)
            .unwrap_err();
        assert_eq!(err.oldest, 3);
        assert!(err.to_string().contains("--since-index 3"), "{err}");
        let (kept, _) = log.after(EventLog::cursor_before(3), 10, |_| true).unwrap();
        assert_eq!(subjects(&kept), ["3", "4", "5"]);
        // A reader that saw 2 has missed nothing.
        assert!(log.after((2, 0), 10, |_| true).is_ok());
        log.reset(9);
        assert!(log.after((5, 0), 10, |_| true).is_err());
        assert!(log.after((9, u32::MAX), 10, |_| true).unwrap().0.is_empty());
        // A member restarted at applied 7 keeps from 8.
        let fresh = EventLog::new(7);
        assert!(
            fresh
                .after(EventLog::cursor_before(1), 10, |_| true)
                .is_err()
        );
        assert!(
            fresh
                .after(EventLog::cursor_before(8), 10, |_| true)
                .is_ok()
        );
    }
}
