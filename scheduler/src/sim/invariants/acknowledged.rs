//! Every acknowledged request is in the state, with the outcome the client
//! was told, on every member.

use super::MemberView;
use crate::state::Outcome;
use std::collections::BTreeMap;

/// Fails when an acknowledged key is missing or its outcome differs.
pub fn check(acked: &BTreeMap<String, Outcome>, views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        for (key, outcome) in acked {
            match v.state.applied_keys.get(&format!("sim/{key}")) {
                Some(o) if o == outcome => {}
                Some(o) => {
                    return Err(format!(
                        "member {}: acknowledged {key} was {outcome:?} but the state says {o:?}",
                        v.id
                    ));
                }
                None => {
                    return Err(format!(
                        "member {}: acknowledged request {key} is not in the state",
                        v.id
                    ));
                }
            }
        }
    }
    Ok(())
}
