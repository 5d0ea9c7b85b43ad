//! At most one leader per term, ever.

use super::{History, MemberView};
use crate::raft_driver::Role;

/// Fails when two members have led the same term.
pub fn check(h: &mut History, views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views.iter().filter(|v| v.role == Role::Leader) {
        let first = *h.leaders.entry(v.term).or_insert(v.id);
        if first != v.id {
            return Err(format!(
                "two leaders in term {}: {first} and {}",
                v.term, v.id
            ));
        }
    }
    Ok(())
}
