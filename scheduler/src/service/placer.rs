//! The leader places lease requests before proposing them, so `apply` on
//! every member only re-checks the named nodes (O(count)) instead of
//! scanning the fleet. Concurrent requests see each other through an overlay
//! of in-flight reservations; a reservation lasts until its proposal has
//! been applied (or failed). A stale or conflicting placement is harmless:
//! `apply` re-checks it and places the request itself.

use crate::placement;
use crate::raft_driver::MemberHandle;
use crate::state::{Command, Proposal, Resources};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// In-flight reservations by node.
#[derive(Default)]
pub struct Placer {
    reserved: Mutex<BTreeMap<String, Resources>>,
}

/// Resources held back for a proposal in flight; released on drop.
pub struct Reservation {
    placer: Arc<Placer>,
    nodes: Vec<String>,
    res: Resources,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut r) = self.placer.reserved.lock() {
            for n in &self.nodes {
                if let Some(held) = r.get_mut(n) {
                    *held = held.minus(&self.res);
                    if *held == Resources::default() {
                        r.remove(n);
                    }
                }
            }
        }
    }
}

impl Placer {
    /// Places a lease request on this (leader) member's view, sets the
    /// proposal's hint, and holds the chosen capacity until the proposal is
    /// applied (the reservation); other proposals are left alone.
    pub fn reserve(
        self: &Arc<Placer>,
        member: &MemberHandle,
        p: &mut Proposal,
    ) -> Option<Reservation> {
        let Command::RequestLease(spec) = &p.cmd else {
            return None;
        };
        // Deadline requests change price tiers with time: apply decides.
        if spec.deadline.is_some() {
            return None;
        }
        let mut r = self.reserved.lock().ok()?;
        // Place under the state's read lock rather than on a copy: a copy of
        // the persistent maps is O(1), but the raft thread's next write would
        // then copy whole chunks of nodes (lease sets included) to stay apart.
        let nodes = member.read(|state| placement::pick(&state.nodes, spec, &r))?;
        for n in &nodes {
            let held = r.entry(n.clone()).or_default();
            *held = held.plus(&spec.resources);
        }
        p.hint = Some(nodes.clone());
        Some(Reservation {
            placer: self.clone(),
            nodes,
            res: spec.resources,
        })
    }
}
