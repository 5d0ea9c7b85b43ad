//! How node liveness is judged, on both sides of the wire.
//!
//! An agent heartbeats every third of its TTL. Two clocks decide what
//! happens when the heartbeats stop getting through:
//!
//! - the **agent** fences itself: when no heartbeat it sent has been
//!   answered for one TTL (counted on its monotonic clock from the moment
//!   it sent the last one that was), it stops its leases' processes
//!   (SIGTERM, at most [`fence_grace_ms`], SIGKILL);
//! - the **servers** mark the node down, and its leases lost and their
//!   work placed elsewhere, only after the TTL plus [`margin_ms`].
//!
//! The margin covers the agent's stop (its grace is half the margin) and
//! leaves the other half for the two clocks' drift and a heartbeat's
//! journey, so a copy of a task never starts elsewhere while the first can
//! still run: the same reasoning as a lease with a fencing token (Nomad's
//! `disconnect.stop_on_client_after`).

/// The margin added to a node's TTL before the servers mark it down:
/// half the TTL, at least 2 s.
pub fn margin_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 2).max(2_000)
}

/// How long after its last heartbeat the servers mark a node down.
pub fn down_after_ms(ttl_ms: u64) -> u64 {
    ttl_ms.saturating_add(margin_ms(ttl_ms))
}

/// How long a fencing agent lets its processes stop after SIGTERM
/// (never longer than a task's own grace).
pub fn fence_grace_ms(ttl_ms: u64) -> u64 {
    margin_ms(ttl_ms) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_has_stopped_before_the_servers_give_up_on_it() {
        for ttl in [300, 1_000, 3_000, 10_000, 60_000, 3_600_000] {
            let stopped = ttl + fence_grace_ms(ttl);
            assert!(stopped < down_after_ms(ttl), "ttl {ttl}");
            assert!(down_after_ms(ttl) - stopped >= 1_000, "ttl {ttl}");
        }
    }
}
