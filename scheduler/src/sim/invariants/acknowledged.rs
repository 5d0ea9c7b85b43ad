//! Every acknowledged request is in the state, with the outcome the client
//! was told, on every member: its idempotency key is kept (the sim keeps
//! the default one-hour window) and names the same result (the same lease
//! or task, or the same whole outcome), so a retry returns what the client
//! was told.

use super::MemberView;
use crate::state::retention::key_id;
use crate::state::{KeyOutcome, Outcome};
use std::collections::BTreeMap;

/// Fails when an acknowledged key is missing or its outcome differs.
pub fn check(acked: &BTreeMap<String, Outcome>, views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        for (key, outcome) in acked {
            let told = KeyOutcome::of(outcome);
            match v
                .state
                .keys
                .get(&key_id(&format!("sim/{key}")))
                .map(|(_, o)| o)
            {
                Some(o) if *o == told => {}
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
