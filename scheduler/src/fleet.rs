//! The fleet: the nodes room of the replicated state. It owns the nodes
//! (what each offers and holds), their heartbeat deadlines, the pools that
//! can grow, and placement's indexes of the ready nodes (by free CPU, by
//! price, by label value), which it keeps in step with every change to a
//! node. Placement reads a [`Fleet`] and nothing else of the state.
//!
//! Invariant: the indexes hold exactly the ready nodes, each under its
//! current free CPU, price and labels (the simulation compares them with a
//! rebuild at every step).
//!
//! Limitations: a node's labels are cloned into its index keys; a fleet
//! with many labels per node pays that on every grant and release.

use charter_config::Millis;
use charter_config::spec::Resources;
use charter_config::states::NodeState;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How the servers reach a node's agent (for logs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEndpoint {
    /// Its gRPC address.
    pub addr: String,
    /// The bearer token it accepts (made by the agent at start).
    pub secret: String,
}

/// A server that offers capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// What it offers in all.
    pub capacity: Resources,
    /// What granted leases hold now.
    pub allocated: Resources,
    /// Labels such as `zone=a`, `gpu=a100`.
    pub labels: BTreeMap<String, String>,
    /// Its pool.
    pub pool: String,
    /// Price per hour.
    pub cost_per_hour: f64,
    /// Ready, draining or down.
    pub state: NodeState,
    /// When it first registered.
    pub registered_at: Millis,
    /// Heartbeat time-to-live: missing it marks the node down and its leases
    /// lost. `None` for records without an agent (`node register`).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// The last registration or heartbeat.
    #[serde(default)]
    pub last_seen: Millis,
    /// Where its agent serves logs, and the secret the servers call it with.
    #[serde(default)]
    pub agent: Option<AgentEndpoint>,
    /// Ids of the granted leases on it.
    pub leases: BTreeSet<u64>,
}

impl Node {
    /// Capacity not held by any lease.
    pub fn free(&self) -> Resources {
        self.capacity.minus(&self.allocated)
    }
}

/// What a pool that can grow would add: the shape of each new node and how
/// many nodes the pool may hold. Replicated, so every member agrees whether a
/// request could ever be met (by a node that exists or one a pool could add).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolOffer {
    /// The pool's name.
    pub name: String,
    /// The most nodes the pool may hold.
    pub max_nodes: u32,
    /// What each new node offers.
    pub capacity: Resources,
    /// Labels of each new node.
    pub labels: BTreeMap<String, String>,
    /// Price per node per hour.
    pub cost_per_hour: f64,
    /// A node of the pool with no lease for this long is retired, in ms.
    pub idle_ms: u64,
}

impl PoolOffer {
    /// A fresh, empty node of this pool, as placement sees it.
    pub fn new_node(&self, name: &str) -> Node {
        Node {
            name: name.to_string(),
            capacity: self.capacity,
            allocated: Resources::default(),
            labels: self.labels.clone(),
            pool: self.name.clone(),
            cost_per_hour: self.cost_per_hour,
            state: NodeState::Ready,
            registered_at: 0,
            ttl_ms: None,
            agent: None,
            last_seen: 0,
            leases: BTreeSet::new(),
        }
    }
}

/// `cost` as a key that sorts as [`f64::total_cmp`] does.
pub fn price_key(cost: f64) -> u64 {
    let b = cost.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

/// The ready nodes that carry one label value, in the two orders placement
/// walks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelIndex {
    /// `(free cpu_millis, name)`.
    pub by_free: OrdSet<(u64, String)>,
    /// `(price_key(cost), free cpu_millis, name)`.
    pub by_price: OrdSet<(u64, u64, String)>,
}

/// A ready node's entries in the placement indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKey {
    free: u64,
    name: String,
    price: u64,
    labels: Vec<(String, String)>,
}

/// A node's [`NodeKey`]: only ready nodes take grants.
pub fn node_key(n: &Node) -> Option<NodeKey> {
    (n.state == NodeState::Ready).then(|| NodeKey {
        free: n.free().cpu_millis,
        name: n.name.clone(),
        price: price_key(n.cost_per_hour),
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// Placement's indexes of a fleet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeIndexes {
    /// The ready nodes by `(free cpu_millis, name)`.
    pub by_free: OrdSet<(u64, String)>,
    /// The ready nodes by `(price_key(cost), free cpu_millis, name)`.
    pub by_price: OrdSet<(u64, u64, String)>,
    /// The ready nodes that carry each `(label, value)`.
    pub by_label: OrdMap<(String, String), LabelIndex>,
}

/// The placement indexes of `nodes`, built from scratch.
pub fn node_indexes<'a>(nodes: impl Iterator<Item = &'a Node>) -> NodeIndexes {
    let mut ix = NodeIndexes::default();
    for k in nodes.filter_map(node_key) {
        ix.index(k, true);
    }
    ix
}

impl NodeIndexes {
    /// Adds (or removes) a node's entries.
    pub fn index(&mut self, k: NodeKey, add: bool) {
        let by_free = (k.free, k.name.clone());
        let by_price = (k.price, k.free, k.name.clone());
        if add {
            self.by_free.insert(by_free.clone());
            self.by_price.insert(by_price.clone());
        } else {
            self.by_free.remove(&by_free);
            self.by_price.remove(&by_price);
        }
        for label in k.labels {
            if add {
                let ix = self.by_label.entry(label).or_default();
                ix.by_free.insert(by_free.clone());
                ix.by_price.insert(by_price.clone());
            } else if let Some(ix) = self.by_label.get_mut(&label) {
                ix.by_free.remove(&by_free);
                ix.by_price.remove(&by_price);
                if ix.by_free.is_empty() {
                    self.by_label.remove(&label);
                }
            }
        }
    }
}

/// The nodes room: nodes by name (what it dereferences to), heartbeat
/// deadlines, pools, and placement's indexes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fleet {
    /// Nodes by name.
    pub nodes: OrdMap<String, Node>,
    /// Nodes with a heartbeat TTL ordered by when they are due: `(last_seen + ttl, name)`.
    pub heartbeats: OrdSet<(Millis, String)>,
    /// Pools that can grow, by name.
    pub pools: OrdMap<String, PoolOffer>,
    /// Placement's indexes of the ready nodes (derived from `nodes`, not
    /// replicated, rebuilt on load).
    pub index: NodeIndexes,
}

room_map!(Fleet, nodes: OrdMap<String, Node>);

impl Fleet {
    /// A node's current placement key, if it takes grants.
    pub fn key_of(&self, name: &str) -> Option<NodeKey> {
        self.nodes.get(name).and_then(node_key)
    }

    /// Moves a node's entries in the indexes from `old` to `new`.
    pub fn reindex(&mut self, old: Option<NodeKey>, new: Option<NodeKey>) {
        if old != new {
            if let Some(o) = old {
                self.index.index(o, false);
            }
            if let Some(n) = new {
                self.index.index(n, true);
            }
        }
    }

    /// Rebuilds the indexes from the nodes (after loading).
    pub fn rebuild_index(&mut self) {
        self.index = node_indexes(self.nodes.values());
    }

    /// How many more nodes pool `name` may add (0 for an unknown pool).
    pub fn pool_room(&self, name: &str) -> u32 {
        let Some(p) = self.pools.get(name) else {
            return 0;
        };
        let held = self.nodes.values().filter(|n| n.pool == name).count();
        p.max_nodes
            .saturating_sub(u32::try_from(held).unwrap_or(u32::MAX))
    }
}
