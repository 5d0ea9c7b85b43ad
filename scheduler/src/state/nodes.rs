//! Node registration.

use super::events::EventKind;
use super::{
    AgentEndpoint, Applied, Millis, Node, NodeState, Outcome, PoolOffer, Quota, Refusal, Resources,
    State,
};

fn ms(v: u64) -> Millis {
    Millis::try_from(v).unwrap_or(Millis::MAX)
}

/// When a node last seen at `seen` with heartbeat TTL `ttl` is marked
/// down: the TTL plus the margin of [`charter_config::liveness`], by which
/// its agent has stopped its work on its own.
pub(super) fn due(seen: Millis, ttl: u64) -> Millis {
    seen.saturating_add(ms(charter_config::liveness::down_after_ms(ttl)))
}
use std::collections::{BTreeMap, BTreeSet};

impl State {
    pub(super) fn register_node(
        &mut self,
        name: &str,
        capacity: &Resources,
        labels: &BTreeMap<String, String>,
        pool: &str,
        cost_per_hour: f64,
        (ttl_ms, agent): (Option<u64>, Option<&AgentEndpoint>),
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
        let old_key = self.nodes.key_of(name);
        let node = self
            .nodes
            .nodes
            .entry(name.to_string())
            .or_insert_with(|| Node {
                name: name.to_string(),
                capacity: *capacity,
                allocated: Resources::default(),
                labels: BTreeMap::new(),
                pool: String::new(),
                cost_per_hour,
                state: NodeState::Ready,
                registered_at: now,
                ttl_ms: None,
                agent: None,
                last_seen: now,
                leases: BTreeSet::new(),
            });
        let old_due = node
            .ttl_ms
            .map(|t| (due(node.last_seen, t), node.name.clone()));
        // A re-registration updates the offer; leases already granted stay, so
        // a shrunk node may be over its new capacity until they end.
        node.capacity = *capacity;
        node.labels = labels.clone();
        node.pool = pool.to_string();
        node.cost_per_hour = cost_per_hour;
        node.ttl_ms = ttl_ms.filter(|t| *t > 0);
        node.agent = agent.cloned();
        node.last_seen = now;
        let came_back = node.state == NodeState::Down;
        if came_back {
            node.state = NodeState::Ready;
        }
        let new_due = node.ttl_ms.map(|t| (due(now, t), node.name.clone()));
        let out = node.clone();
        if let Some(d) = old_due {
            self.nodes.heartbeats.remove(&d);
        }
        if let Some(d) = new_due {
            self.nodes.heartbeats.insert(d);
        }
        self.nodes.reindex(old_key, super::node_key(&out));
        let r = &out.capacity;
        let detail = format!(
            "{} cpu, {} MiB, pool {}{}",
            r.cpu_millis as f64 / 1000.0,
            r.memory_bytes >> 20,
            if out.pool.is_empty() { "-" } else { &out.pool },
            if came_back { ", back from down" } else { "" }
        );
        self.note(EventKind::NodeRegistered, "", name, detail);
        self.grant_queue();
        Ok(Applied::Node(out))
    }

    pub(super) fn heartbeat(&mut self, name: &str) -> Outcome {
        let now = self.time;
        let node = self
            .nodes
            .nodes
            .get_mut(name)
            .ok_or_else(|| Refusal::NotFound {
                what: format!("node {name}"),
            })?;
        let came_back = node.state == NodeState::Down;
        if let Some(t) = node.ttl_ms {
            self.nodes
                .heartbeats
                .remove(&(due(node.last_seen, t), name.to_string()));
            self.nodes
                .heartbeats
                .insert((due(now, t), name.to_string()));
        }
        node.last_seen = now;
        if came_back {
            node.state = NodeState::Ready;
        }
        let out = node.clone();
        if came_back {
            self.nodes.reindex(None, super::node_key(&out));
            self.note(EventKind::NodeUp, "", name, "heartbeat resumed");
            self.grant_queue();
        }
        Ok(Applied::Node(out))
    }

    /// Called before applying an entry of raft term `term` proposed at
    /// `at`. On the first entry of a new term every live node with a TTL
    /// gets a full TTL from `at` before it can be marked down: while there
    /// was no leader its heartbeats had nowhere to go (Nomad's failover
    /// heartbeat grace). Deterministic: term and time are in the log.
    pub fn observe_term(&mut self, term: u64, at: Millis) {
        if term <= self.members.term {
            return;
        }
        self.members.term = term;
        let now = self.time.max(at);
        let dues: Vec<(Millis, String)> = self.nodes.heartbeats.iter().cloned().collect();
        for (old, name) in dues {
            let Some(node) = self.nodes.nodes.get_mut(&name) else {
                continue;
            };
            let (Some(ttl), false) = (node.ttl_ms, node.state == NodeState::Down) else {
                continue;
            };
            let new = due(now, ttl);
            if new > old {
                node.last_seen = now;
                self.nodes.heartbeats.remove(&(old, name.clone()));
                self.nodes.heartbeats.insert((new, name));
            }
        }
    }

    /// Marks nodes whose heartbeat is overdue as down; their leases are lost.
    pub(super) fn nodes_down(&mut self) -> (Vec<String>, Vec<u64>) {
        let now = self.time;
        let overdue: Vec<(Millis, String)> = self
            .nodes
            .heartbeats
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect();
        let mut down = Vec::new();
        let mut lost = Vec::new();
        for key in overdue {
            self.nodes.heartbeats.remove(&key);
            let old_key = self.nodes.key_of(&key.1);
            let Some(node) = self.nodes.nodes.get_mut(&key.1) else {
                continue;
            };
            // An entry made by an older rule (a state from before the
            // margin) that no longer matches the node's due: dropped.
            if node.ttl_ms.map(|t| due(node.last_seen, t)) != Some(key.0) {
                continue;
            }
            node.state = NodeState::Down;
            let ids: Vec<u64> = node.leases.iter().copied().collect();
            self.nodes.reindex(old_key, None);
            self.note(
                EventKind::NodeDown,
                "",
                &key.1,
                format!("missed its heartbeat; {} leases lost", ids.len()),
            );
            down.push(key.1);
            for id in ids {
                self.lose_lease(id);
                lost.push(id);
            }
        }
        (down, lost)
    }

    pub(super) fn set_quota(&mut self, principal: &str, quota: &Quota, admin: bool) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: format!("setting {principal}'s quota needs an admin token"),
            });
        }
        if principal.is_empty() {
            return Err(Refusal::Invalid {
                reason: "quota principal is empty; name one, or `*` for everyone".into(),
            });
        }
        self.leases
            .quotas
            .insert(principal.to_string(), quota.clone());
        Ok(Applied::Quota {
            principal: principal.to_string(),
            quota: quota.clone(),
        })
    }

    pub(super) fn set_draining(&mut self, name: &str, draining: bool, admin: bool) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: format!("draining node {name} needs an admin token"),
            });
        }
        let old_key = self.nodes.key_of(name);
        let node = self
            .nodes
            .nodes
            .get_mut(name)
            .ok_or_else(|| Refusal::NotFound {
                what: format!("node {name}"),
            })?;
        node.state = match (node.state, draining) {
            (NodeState::Down, _) => NodeState::Down,
            (_, true) => NodeState::Draining,
            (_, false) => NodeState::Ready,
        };
        let out = node.clone();
        self.nodes.reindex(old_key, super::node_key(&out));
        let kind = if draining {
            EventKind::NodeDrained
        } else {
            EventKind::NodeUndrained
        };
        self.note(kind, "", name, out.state.as_str());
        if !draining {
            self.grant_queue();
        }
        Ok(Applied::Node(out))
    }

    pub(super) fn remove_node(&mut self, name: &str, admin: bool) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: format!("removing node {name} needs an admin token"),
            });
        }
        let node = self
            .nodes
            .nodes
            .get(name)
            .ok_or_else(|| Refusal::NotFound {
                what: format!("node {name}"),
            })?;
        if !node.leases.is_empty() {
            let ids: Vec<String> = node.leases.iter().map(u64::to_string).collect();
            return Err(Refusal::Denied {
                reason: format!(
                    "node {name} holds live leases ({}); drain it and wait for them to end, or revoke them first",
                    ids.join(", ")
                ),
            });
        }
        let old_key = self.nodes.key_of(name);
        let node = self.nodes.nodes.remove(name).expect("looked up above");
        self.nodes.reindex(old_key, None);
        if let Some(t) = node.ttl_ms {
            self.nodes
                .heartbeats
                .remove(&(due(node.last_seen, t), name.to_string()));
        }
        self.note(EventKind::NodeRemoved, "", name, "");
        // A deadline request's cheap price may have been this node's.
        self.grant_queue();
        Ok(Applied::Node(node))
    }

    pub(super) fn set_pools(&mut self, pools: &[PoolOffer], admin: bool) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: "setting the pools needs an admin token".into(),
            });
        }
        let mut seen = BTreeSet::new();
        for p in pools {
            if p.name.is_empty() || !seen.insert(p.name.as_str()) {
                return Err(Refusal::Invalid {
                    reason: format!("pool name {:?} is empty or given twice", p.name),
                });
            }
            if !(p.cost_per_hour.is_finite() && p.cost_per_hour >= 0.0) {
                return Err(Refusal::Invalid {
                    reason: format!("pool {}: cost per hour must be a number >= 0", p.name),
                });
            }
        }
        self.nodes.pools = pools.iter().map(|p| (p.name.clone(), p.clone())).collect();
        // A deadline request's cheap price may have been a pool's.
        self.grant_queue();
        Ok(Applied::Pools {
            pools: pools.to_vec(),
        })
    }

    /// How many more nodes pool `name` may add (0 for an unknown pool).
    pub fn pool_room(&self, name: &str) -> u32 {
        let Some(p) = self.nodes.pools.get(name) else {
            return 0;
        };
        let held = self.nodes.nodes.values().filter(|n| n.pool == name).count();
        p.max_nodes
            .saturating_sub(u32::try_from(held).unwrap_or(u32::MAX))
    }
}
