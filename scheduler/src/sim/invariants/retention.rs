//! Nothing live is ever trimmed: whatever the retention rules took out of
//! the live state had ended, and nothing live points at something gone.

use super::MemberView;

/// Fails when a live thing refers to a lease or task the state no longer
/// holds, or when the index of ended leases disagrees with the leases.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let s = &v.state;
        let missing = |what: &str, id: u64| {
            Err(format!(
                "member {}: {what} refers to lease {id}, which was trimmed while live",
                v.id
            ))
        };
        for (_, id) in s.leases.expiries.iter() {
            if s.leases.get(id).is_none_or(|l| l.state.is_ended()) {
                return missing("the expiry index", *id);
            }
        }
        for (_, _, id) in s.leases.queue.iter() {
            if s.leases.get(id).is_none_or(|l| l.state.is_ended()) {
                return missing("the queue", *id);
            }
        }
        for n in s.nodes.values() {
            for id in &n.leases {
                if !s.leases.contains_key(id) {
                    return missing(&format!("node {}", n.name), *id);
                }
            }
        }
        for d in s.apps.deployments.values().filter(|d| d.ended_at.is_none()) {
            for t in d.build_task.iter().chain(&d.instances) {
                if !s.tasks.contains_key(t) {
                    return Err(format!(
                        "member {}: running deployment {} refers to task {t}, which was trimmed",
                        v.id, d.id
                    ));
                }
            }
        }
        let ended: Vec<(i64, u64)> = s
            .leases
            .values()
            .filter_map(|l| Some((l.ended_at?, l.id)))
            .filter(|(_, id)| !s.pinned(*id))
            .collect();
        if ended.len() != s.leases.ended.len() || ended.iter().any(|e| !s.leases.ended.contains(e))
        {
            return Err(format!(
                "member {}: the index of ended leases ({}) disagrees with the ended leases ({})",
                v.id,
                s.leases.ended.len(),
                ended.len()
            ));
        }
    }
    Ok(())
}
