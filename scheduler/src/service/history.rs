//! Reads that go past the live state: a lease, task, cron run or deployment
//! that left it is looked up in this member's history store, and one that
//! is no longer kept anywhere is named as such ("ended more than 7d ago and
//! is no longer kept"), not as unknown.

use super::Api;
use crate::state::{Lease, State, Task};
use charter_config::units::format_duration;
use tonic::Status;

/// Most ended objects a listing takes from the history store.
pub const LISTED: usize = 1_000;

impl Api {
    /// Why `what` `id` (below `next`, the id the next one gets) is not found.
    pub(super) fn not_kept(&self, what: &str, id: u64, next: u64) -> Status {
        if id == 0 || id >= next {
            return Status::not_found(format!(
                "{what} {id} not found; `charter {what} list` shows yours"
            ));
        }
        Status::not_found(format!(
            "{what} {id} ended more than {} ago and is no longer kept (or ended before this member joined); \
             the servers' --history-keep says how long ended {what}s are kept",
            format_duration(self.keep.keep_ms)
        ))
    }

    /// A lease from live state, else from the history store.
    pub(super) fn lease_anywhere(&self, id: u64) -> Result<Lease, Status> {
        let (live, next) = self
            .member
            .read(|s| (s.leases.get(&id).map(|l| Lease::clone(l)), s.leases.next_id));
        live.or_else(|| self.member.history()?.lease(id))
            .ok_or_else(|| self.not_kept("lease", id, next))
    }

    /// A task and its lease from live state, else from the history store.
    pub(super) fn task_anywhere(&self, id: u64) -> Result<(Task, Option<Lease>), Status> {
        let (live, next) = self.member.read(|s| {
            let found = s
                .tasks
                .get(&id)
                .map(|t| (t.clone(), s.leases.get(&t.lease).map(|l| Lease::clone(l))));
            (found, s.tasks.next_id)
        });
        if let Some(found) = live {
            return Ok(found);
        }
        let h = self.member.history();
        let t = h
            .and_then(|h| h.task(id))
            .ok_or_else(|| self.not_kept("task", id, next))?;
        let l = h.and_then(|h| h.lease(t.lease));
        Ok((t, l))
    }

    /// Ended leases kept in history that `keep` accepts, newest first.
    pub(super) fn leases_kept(&self, keep: impl Fn(&Lease) -> bool) -> Vec<Lease> {
        self.member
            .history()
            .map(|h| h.leases(LISTED, keep))
            .unwrap_or_default()
    }

    /// Ended tasks kept in history that `keep` accepts, newest first.
    pub(super) fn tasks_kept(&self, keep: impl Fn(&Task) -> bool) -> Vec<Task> {
        self.member
            .history()
            .map(|h| h.tasks(LISTED, keep))
            .unwrap_or_default()
    }
}

/// The live leases (pending and granted) in id order: O(live).
pub(super) fn live_leases(s: &State) -> Vec<&Lease> {
    let mut ids: Vec<u64> = s
        .leases
        .expiries
        .iter()
        .map(|(_, id)| *id)
        .chain(s.leases.queue.iter().map(|(_, _, id)| *id))
        .collect();
    ids.sort_unstable();
    ids.iter()
        .filter_map(|id| s.leases.get(id).map(|l| &**l))
        .collect()
}
