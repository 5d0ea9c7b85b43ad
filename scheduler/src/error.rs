//! The scheduler's error type. Two families: errors that stop the member
//! (storage, corrupt log) and errors a client can retry (no leader, leader
//! changed). Deterministic refusals are not errors here: they are
//! [`crate::state::Refusal`] outcomes.

/// The scheduler's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Raft storage failed; the member must stop.
    #[error("storage failure: {0}")]
    Storage(String),
    /// A committed entry or snapshot cannot be decoded; the member must stop.
    #[error("corrupt replicated data at index {index}: {reason}")]
    Corrupt {
        /// The log index.
        index: u64,
        /// What failed.
        reason: String,
    },
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] ::raft::Error),
    /// This member is not the leader.
    #[error("this member is not the leader")]
    NotLeader,
    /// Leadership moved before the request committed; retry with the same key.
    #[error("leadership changed before the request committed; retry")]
    LeaderChanged,
    /// No leader is elected now; retry shortly.
    #[error("no leader is elected right now; retry in a moment")]
    NoLeader,
    /// The member is shutting down.
    #[error("the member is shutting down")]
    Stopped,
    /// Bad settings given at start.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// Whether the member must stop: its state may no longer be trusted.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Storage(_) | Error::Corrupt { .. })
    }

    /// Whether a client may retry the same request (with the same key).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader | Error::LeaderChanged | Error::NoLeader | Error::Stopped
        )
    }
}
