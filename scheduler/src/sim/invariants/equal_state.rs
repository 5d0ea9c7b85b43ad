//! All members have equal state at the same applied index.

use super::{History, MemberView, hash};

/// Fails when two members' states differ at the same applied index.
pub fn check(h: &mut History, views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let last = h.checked.entry(v.id).or_default();
        if v.applied == 0 || v.applied == last.0 {
            continue;
        }
        last.0 = v.applied;
        let digest = hash(&v.state.to_bytes());
        let first = *h.states.entry(v.applied).or_insert(digest);
        if first != digest {
            return Err(format!(
                "member {} has a different state at applied index {}",
                v.id, v.applied
            ));
        }
    }
    Ok(())
}
