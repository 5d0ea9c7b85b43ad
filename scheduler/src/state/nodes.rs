//! Node registration.

use super::{Applied, Node, NodeState, Outcome, Refusal, Resources, State};
use std::collections::{BTreeMap, BTreeSet};

impl State {
    pub(super) fn register_node(
        &mut self,
        name: &str,
        capacity: &Resources,
        labels: &BTreeMap<String, String>,
        pool: &str,
        cost_per_hour: f64,
    ) -> Outcome {
        if name.is_empty() {
            return Err(Refusal::Invalid {
                reason: "node name is empty".into(),
            });
        }
        if !(cost_per_hour.is_finite() && cost_per_hour >= 0.0) {
            return Err(Refusal::Invalid {
                reason: format!("cost per hour must be a number >= 0, got {cost_per_hour}"),
            });
        }
        let now = self.time;
        let node = self.nodes.entry(name.to_string()).or_insert_with(|| Node {
            name: name.to_string(),
            capacity: *capacity,
            allocated: Resources::default(),
            labels: BTreeMap::new(),
            pool: String::new(),
            cost_per_hour,
            state: NodeState::Ready,
            registered_at: now,
            leases: BTreeSet::new(),
        });
        // A re-registration updates the offer; leases already granted stay, so
        // a shrunk node may be over its new capacity until they end.
        node.capacity = *capacity;
        node.labels = labels.clone();
        node.pool = pool.to_string();
        node.cost_per_hour = cost_per_hour;
        let out = node.clone();
        self.grant_queue();
        Ok(Applied::Node(out))
    }

    pub(super) fn set_draining(&mut self, name: &str, draining: bool, admin: bool) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: format!("draining node {name} needs an admin token"),
            });
        }
        let node = self.nodes.get_mut(name).ok_or_else(|| Refusal::NotFound {
            what: format!("node {name}"),
        })?;
        node.state = match (node.state, draining) {
            (NodeState::Down, _) => NodeState::Down,
            (_, true) => NodeState::Draining,
            (_, false) => NodeState::Ready,
        };
        let out = node.clone();
        if !draining {
            self.grant_queue();
        }
        Ok(Applied::Node(out))
    }
}
