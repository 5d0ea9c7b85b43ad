//! Hydra's exactly once: a cron tick is decided once. At most one task is
//! ever bound to a `(job, scheduled_at)`, a run and its task point at each
//! other, and every acknowledged decision is in the state as it was told.

use super::MemberView;
use crate::state::Millis;
use std::collections::BTreeMap;

/// Acknowledged decisions: `(job, tick) -> (task, fired_at)`.
pub type Acked = BTreeMap<(String, Millis), (Option<u64>, Millis)>;

/// Fails on a tick with two tasks, or a run and task that disagree.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let s = &v.state;
        let mut by_tick: BTreeMap<&(String, Millis), u64> = BTreeMap::new();
        for t in s.tasks.values() {
            let Some(k) = &t.run else { continue };
            if let Some(other) = by_tick.insert(k, t.id) {
                return Err(format!(
                    "member {}: tick {k:?} has two tasks, {other} and {}",
                    v.id, t.id
                ));
            }
            let run = s.cron_runs.get(&k.0).and_then(|r| r.get(&k.1));
            if run.and_then(|r| r.task) != Some(t.id) {
                return Err(format!(
                    "member {}: task {} says tick {k:?}, whose run is {run:?}",
                    v.id, t.id
                ));
            }
        }
    }
    Ok(())
}

/// Fails on an acknowledged decision missing or changed (once every member
/// caught up).
pub fn check_acked(acked: &Acked, views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let s = &v.state;
        for ((job, at), (task, fired_at)) in acked {
            // Trimming may drop old runs; the simulation never fills 1,000.
            match s.cron_runs.get(job).and_then(|r| r.get(at)) {
                Some(r) if r.task == *task && r.fired_at == *fired_at => {}
                other => {
                    return Err(format!(
                        "member {}: acknowledged tick ({job}, {at}) as task {task:?} at {fired_at}, the state has {other:?}",
                        v.id
                    ));
                }
            }
        }
    }
    Ok(())
}
