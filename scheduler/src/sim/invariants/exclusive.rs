//! No two live leases hold the same exclusive resource: each GPU index of a
//! node belongs to at most one granted lease, and a granted lease holds
//! exactly as many indices on each of its nodes as it asked for.

use super::MemberView;
use crate::state::LeaseState;
use std::collections::BTreeMap;

/// Fails on a GPU held twice, or a lease holding the wrong number.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let mut holder: BTreeMap<(&str, u32), u64> = BTreeMap::new();
        for l in v.state.leases.values() {
            if l.state != LeaseState::Granted {
                continue;
            }
            for n in &l.nodes {
                let ids = l.gpu_ids.get(n).map_or(&[][..], |v| v.as_slice());
                if ids.len() != l.spec.resources.gpus as usize {
                    return Err(format!(
                        "member {}: lease {} asked for {} GPUs and holds {ids:?} on {n}",
                        v.id, l.id, l.spec.resources.gpus
                    ));
                }
                for g in ids {
                    if let Some(other) = holder.insert((n.as_str(), *g), l.id) {
                        return Err(format!(
                            "member {}: GPU {g} of {n} is held by leases {other} and {}",
                            v.id, l.id
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
