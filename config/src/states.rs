//! Where things are in their lives: nodes, leases, tasks, a service's
//! health and cron runs. The servers keep them, the agent, Hydra and the
//! deployer act on them, the CLI prints them; every one of those reads
//! these types, so a new state is handled wherever it matters or the
//! build fails.

crate::named! {
    /// Whether a node takes new grants.
    pub enum NodeState: "node state" {
        /// Takes new grants.
        Ready = "ready",
        /// Keeps its leases, takes no new ones.
        Draining = "draining",
        /// Missed its heartbeat TTL.
        Down = "down",
    }
}

crate::named! {
    /// Where a lease is in its life.
    #[derive(Default)]
    pub enum LeaseState: "lease state" {
        /// Waiting in the queue for capacity.
        #[default]
        Pending = "pending",
        /// Holds its resources until `expires_at`.
        Granted = "granted",
        /// Ended early by its holder (or cancelled while pending).
        Released = "released",
        /// Ended at `expires_at`.
        Expired = "expired",
        /// Ended early by an admin.
        Revoked = "revoked",
        /// Its node went down.
        Lost = "lost",
        /// Waited in the queue longer than it was willing to.
        TimedOut = "timed_out",
    }
}

impl LeaseState {
    /// Whether the lease has ended (holds nothing and never will).
    pub fn is_ended(self) -> bool {
        !matches!(self, LeaseState::Pending | LeaseState::Granted)
    }
}

crate::named! {
    /// Where a task is in its life.
    #[derive(Default)]
    pub enum TaskState: "task state" {
        /// Waiting for its lease or its agent.
        #[default]
        Pending = "pending",
        /// Its process runs.
        Running = "running",
        /// Its process exited and the agent starts it again after a backoff
        /// (a service's restart, a batch task's retry); `exit_code` is the
        /// last exit.
        Restarting = "restarting",
        /// Exited 0 (batch).
        Succeeded = "succeeded",
        /// Exited non-zero after every retry, or could not start.
        Failed = "failed",
        /// Cancelled, or its lease was released or revoked before it finished.
        Cancelled = "cancelled",
        /// Its lease expired before it finished; its processes were killed.
        Expired = "expired",
        /// Its node went down.
        Lost = "lost",
    }
}

impl TaskState {
    /// Whether the task is over.
    pub fn is_ended(self) -> bool {
        !matches!(
            self,
            TaskState::Pending | TaskState::Running | TaskState::Restarting
        )
    }
}

crate::named! {
    /// A service's health, as its checks found it.
    #[derive(Default)]
    pub enum HealthState: "health" {
        /// Not checked: a batch task, a service with no check, or one not
        /// started yet (written as the empty string).
        #[default]
        Unchecked = "",
        /// Started; not yet passed `healthy_after` checks in a row.
        Starting = "starting",
        /// Passed `healthy_after` checks in a row.
        Healthy = "healthy",
        /// Failed `unhealthy_after` checks in a row.
        Unhealthy = "unhealthy",
    }
}

crate::named! {
    /// How a decided cron tick stands.
    pub enum RunState: "run state" {
        /// Its task has not ended.
        Running = "running",
        /// Its task succeeded.
        Succeeded = "succeeded",
        /// Its task failed, expired, was lost, or could not be placed.
        Failed = "failed",
        /// Its task was cancelled (by hand, or replaced by a newer run).
        Cancelled = "cancelled",
        /// Decided not to run; the reason says why.
        Skipped = "skipped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_display_from_str_and_serde() {
        for s in TaskState::ALL {
            assert_eq!(s.to_string().parse::<TaskState>(), Ok(*s));
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        assert_eq!(LeaseState::TimedOut.to_string(), "timed_out");
        assert_eq!("".parse::<HealthState>(), Ok(HealthState::Unchecked));
        let e = "granted ".parse::<LeaseState>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown lease state `granted `; expected pending, granted, released, expired, revoked, lost or timed_out"
        );
        assert!(
            TaskState::Restarting < TaskState::Succeeded,
            "ordered as declared"
        );
    }
}
