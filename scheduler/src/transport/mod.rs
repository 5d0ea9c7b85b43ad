//! How raft messages reach other members.
//!
//! The driver hands outbound messages to a [`Transport`] and never waits: a
//! transport queues and may drop (raft tolerates loss). Delivery failures come
//! back as [`Report`]s so raft-rs can back off (`report_unreachable`) and
//! retry snapshots (`report_snapshot`).

mod grpc;

pub use grpc::{GrpcTransport, MAX_PEER_MESSAGE, ReportSink};

use raft::eraftpb::Message;

/// Feedback from the transport to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A message to this member could not be delivered.
    Unreachable(u64),
    /// A snapshot to this member was delivered (`true`) or failed (`false`).
    Snapshot(u64, bool),
}

/// Sends raft messages to peers by member id.
pub trait Transport: Send + 'static {
    /// Queues messages for sending; must not block.
    fn send(&mut self, msgs: Vec<Message>);
    /// Sets or changes the address of a member.
    fn set_peer(&mut self, id: u64, addr: &str);
    /// Forgets a member.
    fn remove_peer(&mut self, id: u64);
}
