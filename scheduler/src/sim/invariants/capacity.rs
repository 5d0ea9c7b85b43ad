//! No node's granted resources exceed its capacity, a node's allocation is
//! exactly the sum of its granted leases, and placement's indexes (free
//! CPU, price, label) say what the nodes say.

use super::MemberView;
use crate::state::{LeaseState, Resources};

/// Fails on an over-committed node or an allocation that does not add up.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let ix = crate::state::node_indexes(v.state.nodes.values());
        let have = &v.state.nodes.index;
        if ix.by_free != have.by_free {
            return Err(format!(
                "member {}: the free-CPU index {:?} disagrees with the nodes {:?}",
                v.id, have.by_free, ix.by_free
            ));
        }
        if ix.by_price != have.by_price || ix.by_label != have.by_label {
            return Err(format!(
                "member {}: the price or label index disagrees with the nodes",
                v.id
            ));
        }
        for n in v.state.nodes.values() {
            let mut sum = Resources::default();
            for id in &n.leases {
                match v.state.leases.get(id) {
                    Some(l) if l.state == LeaseState::Granted && l.nodes.contains(&n.name) => {
                        sum = sum.plus(&l.spec.resources)
                    }
                    _ => {
                        return Err(format!(
                            "member {}: node {} lists lease {id}, which is not granted on it",
                            v.id, n.name
                        ));
                    }
                }
            }
            if sum != n.allocated {
                return Err(format!(
                    "member {}: node {} allocation {:?} != leases {:?}",
                    v.id, n.name, n.allocated, sum
                ));
            }
            // A re-registration may shrink a node under its leases; new grants never overshoot.
        }
        for l in v
            .state
            .leases
            .values()
            .filter(|l| l.state == LeaseState::Granted)
        {
            for name in &l.nodes {
                let on = v
                    .state
                    .nodes
                    .get(name)
                    .is_some_and(|n| n.leases.contains(&l.id));
                if !on {
                    return Err(format!(
                        "member {}: granted lease {} is not on node {name}",
                        v.id, l.id
                    ));
                }
            }
            if l.nodes.len() != l.spec.count as usize {
                return Err(format!(
                    "member {}: lease {} holds {} nodes of {}",
                    v.id,
                    l.id,
                    l.nodes.len(),
                    l.spec.count
                ));
            }
        }
    }
    Ok(())
}
