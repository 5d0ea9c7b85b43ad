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
            let run = s.cron.runs.get(&k.0).and_then(|r| r.get(&k.1));
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
            match s.cron.runs.get(job).and_then(|r| r.get(at)) {
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

/// At least once: with a leader there long enough (the end of the
/// liveness phase, once the simulated Hydra found nothing left to
/// propose), every tick of `j0` from its first to its newest is decided.
pub fn check_every_tick(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let Some(job) = v.state.cron.jobs.get("j0") else {
            continue;
        };
        let ticks: Vec<Millis> = v
            .state
            .cron
            .runs
            .get("j0")
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        let first = (job.since.div_euclid(1000) + 1) * 1000;
        if let Some(t) = ticks.first()
            && *t != first
        {
            return Err(format!(
                "member {}: j0 was applied at {} but its first decided tick is {t}",
                v.id, job.since
            ));
        }
        if let Some(w) = ticks.windows(2).find(|w| w[1] - w[0] != 1000) {
            return Err(format!(
                "member {}: j0's ticks between {} and {} were never decided",
                v.id, w[0], w[1]
            ));
        }
    }
    Ok(())
}
