//! Fencing tokens only grow: in grant order (lease id order) every token is
//! larger than the one before, and none exceeds the state's counter.

use super::MemberView;

/// Fails when a later grant carries a token that is not larger.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let mut last = 0;
        for l in v.state.leases.values() {
            if l.fencing_token <= last {
                return Err(format!(
                    "member {}: lease {} has fencing token {} after {last}",
                    v.id, l.id, l.fencing_token
                ));
            }
            last = l.fencing_token;
        }
        if last > v.state.fencing_token {
            return Err(format!(
                "member {}: token {last} beyond the counter {}",
                v.id, v.state.fencing_token
            ));
        }
    }
    Ok(())
}
