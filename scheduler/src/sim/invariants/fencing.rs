//! Fencing tokens only grow: in grant order every token is larger than the
//! one before, no two grants share one, and none exceeds the state's counter.

use super::MemberView;

/// Fails when a later grant carries a token that is not larger.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        // Tokens grow in grant order; a queued request is granted later than
        // requests that arrived after it, so order by grant, not by id.
        let mut granted: Vec<_> = v
            .state
            .leases
            .values()
            .filter(|l| l.fencing_token > 0)
            .collect();
        granted.sort_by_key(|l| (l.granted_at, l.fencing_token));
        let mut last = 0;
        for l in granted {
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
