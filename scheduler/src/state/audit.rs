//! Who did what: one audit record per applied command a principal asked
//! for, made from the log entry and its outcome (so every member makes the
//! same records). The driver keeps them in the history store, bounded by
//! its age and size like the rest of history.
//!
//! Not recorded: node heartbeats, agents' task reports and the leader's
//! ticks (machine chatter, not decisions), and calls refused before they
//! reach the log (a bad token, a call the caller's credential may not make
//! at all; those go to the member's log as warnings).

use super::{Applied, Command, Millis, Outcome, Proposal};
use serde::{Deserialize, Serialize};

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The raft index of the entry.
    pub index: u64,
    /// Its place in the entry's batch.
    pub seq: u32,
    /// When it was applied (log time, ms since the epoch).
    pub at: Millis,
    /// Who asked.
    pub principal: String,
    /// What was asked, as the CLI says it (`lease request`, `cron apply`).
    pub command: String,
    /// What it was about (`lease 42`, `node n1`, `job backup`).
    pub target: String,
    /// `ok`, or `refused: …` with the refusal.
    pub outcome: String,
}

/// The record of `p` applied at `index` with `out`; `None` for what is not
/// audited (see the module's notes).
pub fn record(index: u64, seq: u32, p: &Proposal, out: &Outcome) -> Option<AuditRecord> {
    let (command, target) = describe(&p.cmd, out)?;
    Some(AuditRecord {
        index,
        seq,
        at: p.at,
        principal: p.principal.clone(),
        command,
        target,
        outcome: match out {
            Ok(_) => "ok".to_string(),
            Err(r) => format!("refused: {r}"),
        },
    })
}

/// Over 80 lines: a table: one arm per command.
fn describe(cmd: &Command, out: &Outcome) -> Option<(String, String)> {
    let lease = |id: u64| format!("lease {id}");
    if let Command::Refused {
        command, target, ..
    } = cmd
    {
        return Some((command.clone(), target.clone()));
    }
    let (command, target): (&str, String) = match cmd {
        Command::Refused { .. } => return None,
        Command::Heartbeat { .. }
        | Command::ReportTask(_)
        | Command::Tick
        | Command::RenewLock { .. } => return None,
        Command::RegisterNode { name, .. } => ("node register", format!("node {name}")),
        Command::SetQuota { principal, .. } => ("quota set", format!("quota {principal}")),
        Command::SetDraining { name, draining } => (
            if *draining {
                "node drain"
            } else {
                "node undrain"
            },
            format!("node {name}"),
        ),
        Command::RequestLease(_) => (
            "lease request",
            match out {
                Ok(Applied::Lease(l)) => lease(l.id),
                _ => "lease".into(),
            },
        ),
        Command::ReleaseLease { id } => ("lease release", lease(*id)),
        Command::RenewLease { id, .. } => ("lease renew", lease(*id)),
        Command::RevokeLease { id } => ("lease revoke", lease(*id)),
        Command::RemoveNode { name } => ("node remove", format!("node {name}")),
        Command::SubmitTask { .. } => (
            "task submit",
            match out {
                Ok(Applied::Task { task, .. }) => format!("task {}", task.id),
                _ => "task".into(),
            },
        ),
        Command::CancelTask { id } => ("task cancel", format!("task {id}")),
        Command::SetPools { .. } => ("pools set", "pools".into()),
        Command::CronApply { jobs, .. } => {
            let mut names: Vec<&str> = jobs.iter().map(|j| j.config.name.as_str()).collect();
            let more = names.len().saturating_sub(8);
            names.truncate(8);
            let mut t = format!("jobs {}", names.join(","));
            if more > 0 {
                t.push_str(&format!(" and {more} more"));
            }
            ("cron apply", t)
        }
        Command::CronFire(f) => (
            if f.manual {
                "cron trigger"
            } else {
                "cron fire"
            },
            format!("job {}", f.job),
        ),
        Command::CronSkip { job, .. } => ("cron skip", format!("job {job}")),
        Command::CronPause { job, paused } => (
            if *paused { "cron pause" } else { "cron resume" },
            format!("job {job}"),
        ),
        Command::CronDelete { job } => ("cron delete", format!("job {job}")),
        Command::AppApply { config, .. } => ("app apply", format!("app {}", config.name)),
        Command::DeployTrigger { app, .. } => ("deploy trigger", format!("app {app}")),
        Command::DeployStep(s) => ("deploy step", format!("deployment {}", s.id)),
        Command::DeploySubmit { id, .. } => ("deploy submit", format!("deployment {id}")),
        Command::SetRetention(_) => ("retention set", "retention".into()),
        Command::AcquireLock(spec) => (
            "lock acquire",
            match out {
                Ok(Applied::Hold(h)) => format!("lock {} acquisition {}", spec.name, h.id),
                _ => format!("lock {}", spec.name),
            },
        ),
        Command::ReleaseLock { id } => ("lock release", format!("lock acquisition {id}")),
    };
    Some((command.to_string(), target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Refusal;

    fn prop(cmd: Command) -> Proposal {
        Proposal {
            at: 1_000,
            principal: "ann".into(),
            admin: false,
            key: None,
            hint: None,
            cmd,
        }
    }

    #[test]
    fn records_say_who_what_on_what_and_how_it_ended() {
        let refused: Outcome = Err(Refusal::Denied {
            reason: "revoking lease 7 needs an admin token".into(),
        });
        let r = record(9, 1, &prop(Command::RevokeLease { id: 7 }), &refused).unwrap();
        assert_eq!(
            (r.index, r.seq, r.at, r.principal.as_str()),
            (9, 1, 1_000, "ann")
        );
        assert_eq!(
            (r.command.as_str(), r.target.as_str()),
            ("lease revoke", "lease 7")
        );
        assert!(
            r.outcome.starts_with("refused: ") && r.outcome.contains("needs an admin token"),
            "{}",
            r.outcome
        );
        let ok: Outcome = Ok(Applied::Ticked {
            expired: vec![],
            timed_out: vec![],
            granted: vec![],
            down: vec![],
            lost: vec![],
        });
        let r = record(3, 0, &prop(Command::ReleaseLease { id: 4 }), &ok).unwrap();
        assert_eq!((r.target.as_str(), r.outcome.as_str()), ("lease 4", "ok"));
        // A call refused before the log is recorded as asked.
        let r = record(
            5,
            0,
            &prop(Command::Refused {
                command: "node drain".into(),
                target: "node n1".into(),
                reason: "draining a node needs an admin token".into(),
            }),
            &refused,
        )
        .unwrap();
        assert_eq!(
            (r.command.as_str(), r.target.as_str()),
            ("node drain", "node n1")
        );
        // Machine chatter is not audited.
        assert!(record(1, 0, &prop(Command::Tick), &ok).is_none());
        assert!(record(1, 0, &prop(Command::Heartbeat { name: "n1".into() }), &ok).is_none());
    }
}
