//! Scaling, the pure half: which pools to grow for the queued demand, and
//! which idle pool nodes to retire. No IO, no clock: `now` comes in.
//!
//! Rules:
//! - Only queued requests count as demand: a request in the queue could not
//!   be placed on any node there is (apply grants the queue whenever capacity
//!   appears). A deadline request still in its cheap phase asks only for
//!   capacity at its cheap price.
//! - Each request goes to the cheapest pool (then by name) whose new nodes
//!   could hold it, within the request's price limit and the pool's room.
//!   A gang of `count` needs `count` distinct new nodes of one pool.
//! - New nodes are packed first fit. Nodes already being provisioned
//!   (in flight) absorb demand before any new one is asked for, so a slow
//!   joiner is not provisioned twice.
//! - A node of a pool that can grow, with no lease for the pool's `idle`
//!   time, is retired.

use crate::placement;
use crate::state::{LeaseSpec, Millis, PoolOffer, Resources, State};
use std::collections::{BTreeMap, BTreeSet};

/// A node asked of a provisioner that has not joined yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Inflight {
    /// Its pool.
    pub pool: String,
    /// The name it will join under, when the provisioner chose it.
    pub name: Option<String>,
    /// When it was asked for.
    pub since: Millis,
}

/// New nodes one pool is asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Grow {
    /// The pool.
    pub pool: String,
    /// How many new nodes.
    pub count: u32,
    /// The queued leases they are for.
    pub demand: Vec<u64>,
}

/// What the scaler should do now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Pools to grow.
    pub grow: Vec<Grow>,
    /// Idle nodes to retire.
    pub retire: Vec<String>,
}

/// Decides what to provision and retire. `blocked` pools (a provisioner
/// that just failed) are not asked; `idle_since` says since when each node
/// has held no lease (see [`observe_idle`]).
pub fn plan(
    state: &State,
    inflight: &[Inflight],
    blocked: &BTreeSet<String>,
    idle_since: &BTreeMap<String, Millis>,
    now: Millis,
) -> Plan {
    let mut pools: Vec<&PoolOffer> = state
        .nodes
        .pools
        .values()
        .filter(|p| !blocked.contains(&p.name))
        .collect();
    pools.sort_by(|a, b| {
        a.cost_per_hour
            .total_cmp(&b.cost_per_hour)
            .then_with(|| a.name.cmp(&b.name))
    });
    // Per pool: the free resources of each node being added (in flight first).
    let mut fresh: BTreeMap<&str, Vec<Resources>> = BTreeMap::new();
    let mut room: BTreeMap<&str, u32> = BTreeMap::new();
    for p in &pools {
        let flying = inflight.iter().filter(|i| i.pool == p.name).count();
        fresh.insert(&p.name, vec![p.capacity; flying]);
        let r = state
            .pool_room(&p.name)
            .saturating_sub(u32::try_from(flying).unwrap_or(u32::MAX));
        room.insert(&p.name, r);
    }
    let mut grow: BTreeMap<&str, Grow> = BTreeMap::new();
    for (_, _, id) in state.leases.queue.iter() {
        let Some(lease) = state.leases.get(id) else {
            continue;
        };
        let spec = if lease.cheap_until > state.time {
            state.cheap_only(&lease.spec)
        } else {
            lease.spec.clone()
        };
        for p in &pools {
            if placement::rule_out(&p.new_node(""), &spec, true).is_some() {
                continue;
            }
            let nodes = fresh
                .get_mut(p.name.as_str())
                .expect("every pool has a list");
            let r = room.get_mut(p.name.as_str()).expect("every pool has room");
            if let Some(added) = take(nodes, r, p, &spec) {
                let g = grow.entry(&p.name).or_insert_with(|| Grow {
                    pool: p.name.clone(),
                    count: 0,
                    demand: Vec::new(),
                });
                g.count += added;
                g.demand.push(*id);
                break;
            }
        }
    }
    let retire = state
        .nodes
        .values()
        .filter(|n| n.leases.is_empty())
        .filter_map(|n| {
            let p = state.nodes.pools.get(&n.pool)?;
            let since = *idle_since.get(&n.name)?;
            (now.saturating_sub(since) >= i64::try_from(p.idle_ms).unwrap_or(i64::MAX))
                .then(|| n.name.clone())
        })
        .collect();
    Plan {
        grow: grow.into_values().filter(|g| g.count > 0).collect(),
        retire,
    }
}

/// Puts `spec.count` copies of the request on distinct nodes of `nodes`
/// (first fit), adding new ones while `room` allows. Returns how many were
/// added, or `None` (and changes nothing) when they cannot all be placed.
fn take(
    nodes: &mut Vec<Resources>,
    room: &mut u32,
    p: &PoolOffer,
    spec: &LeaseSpec,
) -> Option<u32> {
    let want = spec.count.max(1) as usize;
    let need = &spec.resources;
    let mut chosen: Vec<usize> = (0..nodes.len())
        .filter(|i| need.fits_in(&nodes[*i]))
        .take(want)
        .collect();
    let added = want - chosen.len();
    if u32::try_from(added).unwrap_or(u32::MAX) > *room {
        return None;
    }
    for _ in 0..added {
        nodes.push(p.capacity);
        chosen.push(nodes.len() - 1);
    }
    for i in chosen {
        nodes[i] = nodes[i].minus(need);
    }
    *room -= added as u32;
    Some(added as u32)
}

/// Updates since when each node of a growable pool has held no lease: a
/// node with leases leaves the map, an idle one enters it at `now`.
pub fn observe_idle(state: &State, idle_since: &mut BTreeMap<String, Millis>, now: Millis) {
    idle_since.retain(|name, _| {
        state
            .nodes
            .get(name)
            .is_some_and(|n| n.leases.is_empty() && state.nodes.pools.contains_key(&n.pool))
    });
    for n in state.nodes.values() {
        if n.leases.is_empty() && state.nodes.pools.contains_key(&n.pool) {
            idle_since.entry(n.name.clone()).or_insert(now);
        }
    }
}

/// Drops in-flight entries whose node has joined or that waited longer
/// than `join_timeout_ms` of their pool. `known` is the set of node names
/// seen before; a new node of a pool settles one unnamed entry of it.
/// Returns the entries given up on.
pub fn settle_inflight(
    state: &State,
    inflight: &mut Vec<Inflight>,
    known: &mut BTreeSet<String>,
    join_timeout_ms: &BTreeMap<String, u64>,
    now: Millis,
) -> Vec<Inflight> {
    let joined: Vec<(String, String)> = state
        .nodes
        .values()
        .filter(|n| !known.contains(&n.name))
        .map(|n| (n.name.clone(), n.pool.clone()))
        .collect();
    for (name, pool) in joined {
        known.insert(name.clone());
        let pos = inflight
            .iter()
            .position(|i| i.name.as_deref() == Some(&name))
            .or_else(|| {
                inflight
                    .iter()
                    .position(|i| i.name.is_none() && i.pool == pool)
            });
        if let Some(p) = pos {
            inflight.remove(p);
        }
    }
    known.retain(|n| state.nodes.contains_key(n));
    let mut given_up = Vec::new();
    inflight.retain(|i| {
        let limit = join_timeout_ms.get(&i.pool).copied().unwrap_or(120_000);
        let late = now.saturating_sub(i.since) > i64::try_from(limit).unwrap_or(i64::MAX);
        if late {
            given_up.push(i.clone());
        }
        !late
    });
    given_up
}

#[cfg(test)]
mod tests;
