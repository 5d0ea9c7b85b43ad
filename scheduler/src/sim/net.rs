//! The simulated network: every message between members passes through one
//! queue, where the simulation drops, delays, duplicates and reorders it, and
//! partitions (symmetric or one-way) block it.

use crate::transport::Transport;
use raft::eraftpb::Message;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// A message in flight.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Sender.
    pub from: u64,
    /// Receiver.
    pub to: u64,
    /// The step at which it may be delivered.
    pub at: u64,
    /// The raft message.
    pub msg: Message,
}

/// The network between members.
#[derive(Debug, Default)]
pub struct Net {
    /// Messages sent and not yet delivered or dropped.
    pub in_flight: Vec<Envelope>,
    /// Directed links that drop everything: `(from, to)`.
    pub blocked: BTreeSet<(u64, u64)>,
    /// The current step (set by the simulation before members run).
    pub now: u64,
}

impl Net {
    /// Cuts `id` off from everyone, both ways.
    pub fn isolate(&mut self, id: u64, members: &[u64]) {
        for &m in members {
            if m != id {
                self.blocked.insert((id, m));
                self.blocked.insert((m, id));
            }
        }
    }

    /// Whether `from → to` is cut.
    pub fn is_blocked(&self, from: u64, to: u64) -> bool {
        self.blocked.contains(&(from, to))
    }
}

/// One member's view of the network.
pub struct SimTransport {
    /// The sending member.
    pub from: u64,
    /// The shared network.
    pub net: Arc<Mutex<Net>>,
}

impl Transport for SimTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        if let Ok(mut n) = self.net.lock() {
            let at = n.now + 1;
            for msg in msgs {
                n.in_flight.push(Envelope {
                    from: self.from,
                    to: msg.to,
                    at,
                    msg,
                });
            }
        }
    }
    fn set_peer(&mut self, _id: u64, _addr: &str) {}
    fn remove_peer(&mut self, _id: u64) {}
}
