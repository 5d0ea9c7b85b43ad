//! Lease grant, release and expiry.

use super::{Applied, Lease, LeaseSpec, LeaseState, Millis, Outcome, Refusal, State};
use crate::placement;

impl State {
    pub(super) fn request_lease(&mut self, principal: &str, spec: &LeaseSpec) -> Outcome {
        if spec.duration_ms == 0 {
            return Err(Refusal::Invalid {
                reason: "lease duration must be positive".into(),
            });
        }
        let node_name = placement::place(self, spec).map_err(|why| Refusal::NoCapacity {
            reason: why.summary(),
        })?;
        let id = self.next_lease_id;
        self.next_lease_id += 1;
        self.fencing_token += 1;
        let expires_at = self
            .time
            .saturating_add(Millis::try_from(spec.duration_ms).unwrap_or(Millis::MAX));
        let lease = Lease {
            id,
            principal: principal.to_string(),
            node: node_name.clone(),
            resources: spec.resources,
            state: LeaseState::Granted,
            granted_at: self.time,
            expires_at,
            fencing_token: self.fencing_token,
            reason: spec.reason.clone(),
            ended_at: None,
        };
        let node = self
            .nodes
            .get_mut(&node_name)
            .expect("placement returned a node that exists");
        node.allocated = node.allocated.plus(&spec.resources);
        assert!(
            node.allocated.fits_in(&node.capacity),
            "invariant broken: node {node_name} over-committed by a grant"
        );
        node.leases.insert(id);
        self.expiries.insert((expires_at, id));
        self.leases.insert(id, lease.clone());
        Ok(Applied::Lease(lease))
    }

    pub(super) fn release_lease(&mut self, id: u64, principal: &str, admin: bool) -> Outcome {
        let lease = self.leases.get(&id).ok_or_else(|| Refusal::NotFound {
            what: format!("lease {id}"),
        })?;
        if lease.principal != principal && !admin {
            return Err(Refusal::NotYours {
                id,
                owner: lease.principal.clone(),
                principal: principal.to_string(),
            });
        }
        if lease.state != LeaseState::Granted {
            return Err(Refusal::Ended {
                id,
                state: lease.state,
            });
        }
        Ok(Applied::Lease(self.end_lease(id, LeaseState::Released)))
    }

    pub(super) fn expire_leases(&mut self, ids: &[u64]) -> Applied {
        let mut done = Vec::new();
        for &id in ids {
            let due = self
                .leases
                .get(&id)
                .is_some_and(|l| l.state == LeaseState::Granted && l.expires_at <= self.time);
            if due {
                self.end_lease(id, LeaseState::Expired);
                done.push(id);
            }
        }
        Applied::Expired { ids: done }
    }

    /// Ends a granted lease and frees its resources.
    fn end_lease(&mut self, id: u64, to: LeaseState) -> Lease {
        let now = self.time;
        let lease = self
            .leases
            .get_mut(&id)
            .expect("caller checked the lease exists");
        lease.state = to;
        lease.ended_at = Some(now);
        self.expiries.remove(&(lease.expires_at, id));
        if let Some(node) = self.nodes.get_mut(&lease.node) {
            node.allocated = node.allocated.minus(&lease.resources);
            node.leases.remove(&id);
        }
        lease.clone()
    }

    /// Granted leases whose `expires_at` is at or before `now`, oldest first.
    pub fn due_expiries(&self, now: Millis, limit: usize) -> Vec<u64> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }
}
