//! Membership changes in the simulation's fault menu: a member joins (a
//! fresh store started with `join`, then `ConfChange` add through the
//! leader) or leaves (`ConfChange` remove; once its removal is applied it
//! is stopped for good). The cluster stays between one member fewer and
//! one more than it started with.
//!
//! Who is a member is what the state says (its `members`, changed by
//! applied conf-change entries), as the best-informed member has it. The
//! final checks look at those members only: a joiner whose addition never
//! committed (its leader changed first) is not one of them.

use super::store::Durable;
use super::{EPOCH, Member, Sim};
use crate::clock::ManualClock;
use crate::raft_driver::{Input, MemberConfig};
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

impl Sim {
    /// The members as of the highest applied index any member has shown
    /// (committed entries are the same everywhere, so a later index is the
    /// newer truth; the up members may all be behind it for a while).
    pub(super) fn membership(&self) -> BTreeSet<u64> {
        self.known_members.1.clone()
    }

    /// Learns the membership from the up member that applied most, if it
    /// applied more than anyone before.
    fn learn_membership(&mut self) {
        let best = self
            .members
            .iter()
            .filter_map(|m| m.node.as_ref())
            .max_by_key(|(d, _)| d.applied())
            .map(|(d, h)| (d.applied(), h.read(|s| s.members.keys().copied().collect())));
        if let Some((applied, ids)) = best
            && applied >= self.known_members.0
        {
            self.known_members = (applied, ids);
        }
    }

    /// Members not removed: in the cluster, or joining it.
    fn live(&self) -> usize {
        self.members.iter().filter(|m| !m.removed).count()
    }

    /// Starts a fresh member and asks the leader to add it.
    pub(super) fn add_member(&mut self) -> bool {
        let Some(l) = self.leader() else { return false };
        if self.live() > self.cfg.members {
            return false;
        }
        let id = self.members.len() as u64 + 1;
        let mut peers = self.members[l].cfg.peers.clone();
        peers.insert(id, format!("sim-{id}"));
        let mut mc = MemberConfig::new(id, peers);
        mc.election_tick = 10 + 4 * (id as usize - 1);
        mc.election_spread = 1;
        mc.heartbeat_tick = 2;
        mc.snapshot_entries = self.rng.random_range(20..80);
        mc.background_snapshots = false;
        mc.join = true;
        let clock = ManualClock::new(EPOCH);
        clock.advance(i64::try_from(self.step * 10).unwrap_or(i64::MAX));
        self.members.push(Member {
            id,
            cfg: mc,
            durable: Arc::new(Mutex::new(Durable::default())),
            clock: Arc::new(clock),
            node: None,
            joined: false,
            removed: false,
        });
        let i = self.members.len() - 1;
        if self.start(i).is_err() {
            self.members[i].removed = true;
            return false;
        }
        self.conf_change(l, id, Some(format!("sim-{id}")))
    }

    /// Asks the leader to remove a random member (itself, possibly).
    pub(super) fn remove_member(&mut self) -> bool {
        let Some(l) = self.leader() else { return false };
        let members: Vec<u64> = self.membership().into_iter().collect();
        if members.len() + 1 < self.cfg.members || members.len() <= 2 {
            return false;
        }
        let id = members[self.rng.random_range(0..members.len())];
        self.conf_change(l, id, None)
    }

    fn conf_change(&mut self, leader: usize, id: u64, addr: Option<String>) -> bool {
        let Some((_, h)) = &self.members[leader].node else {
            return false;
        };
        // The answer is not waited for: what counts is what gets applied.
        let (reply, _rx) = oneshot::channel();
        h.send_input(Input::ConfChange { id, addr, reply }).is_ok()
    }

    /// Stops for good every member whose removal was applied (it was a
    /// member once and the state no longer names it).
    pub(super) fn retire_removed(&mut self) {
        self.learn_membership();
        let now = self.membership();
        for m in &mut self.members {
            if now.contains(&m.id) {
                if !m.joined {
                    self.report.joined += 1;
                }
                m.joined = true;
            } else if m.joined && !m.removed && !now.is_empty() {
                self.report.removed += 1;
                m.removed = true;
                m.node = None;
            }
        }
    }
}
