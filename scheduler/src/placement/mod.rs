//! Placement: which node gets a lease. Pure functions over a [`State`] view.
//!
//! Checkers run per node, cheapest first, and the first that fails names the
//! reason: node state (one enum compare), then label constraints (a few map
//! lookups), then resources (four compares, but the only check that changes
//! with load). Feasible nodes are then ranked; the default, binpack, prefers
//! the node that is left with the least free CPU, so large requests still
//! find room elsewhere. Ties break by name, so every member picks the same.
//!
//! Limitations: equality constraints only; one node per lease; binpack only.

use crate::state::{LeaseSpec, Node, NodeState, State};

/// Why no node could take a request: one line per node, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NoFit {
    /// `(node, reason)` for each node that was ruled out.
    pub per_node: Vec<(String, String)>,
}

impl NoFit {
    /// A one-line summary: the reasons of the first few nodes.
    pub fn summary(&self) -> String {
        if self.per_node.is_empty() {
            return "no nodes are registered".to_string();
        }
        let shown: Vec<String> = self
            .per_node
            .iter()
            .take(5)
            .map(|(n, r)| format!("{n}: {r}"))
            .collect();
        let more = self.per_node.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{}; and {more} more", shown.join("; "))
        } else {
            shown.join("; ")
        }
    }
}

/// Why `node` cannot hold `spec`, or `None` when it can.
pub fn check(node: &Node, spec: &LeaseSpec) -> Option<String> {
    if node.state != NodeState::Ready {
        return Some(format!("node is {}", node.state.as_str()));
    }
    for c in &spec.constraints {
        match node.labels.get(&c.key) {
            Some(v) if *v == c.value => {}
            Some(v) => return Some(format!("needs {}={}, has {}={v}", c.key, c.value, c.key)),
            None => return Some(format!("needs {}={}, has no {}", c.key, c.value, c.key)),
        }
    }
    let free = node.free();
    let r = &spec.resources;
    if r.cpu_millis > free.cpu_millis {
        return Some(format!(
            "needs {} cores, {} free",
            cores(r.cpu_millis),
            cores(free.cpu_millis)
        ));
    }
    if r.memory_bytes > free.memory_bytes {
        return Some(format!(
            "needs {} MiB memory, {} MiB free",
            r.memory_bytes >> 20,
            free.memory_bytes >> 20
        ));
    }
    if r.disk_bytes > free.disk_bytes {
        return Some(format!(
            "needs {} MiB disk, {} MiB free",
            r.disk_bytes >> 20,
            free.disk_bytes >> 20
        ));
    }
    if r.gpus > free.gpus {
        return Some(format!("needs {} gpus, {} free", r.gpus, free.gpus));
    }
    None
}

fn cores(millis: u64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{:.3}", millis as f64 / 1000.0)
            .trim_end_matches('0')
            .to_string()
    }
}

/// Picks the node for `spec`: feasible nodes ranked by binpack, ties by name.
pub fn place(state: &State, spec: &LeaseSpec) -> Result<String, NoFit> {
    let mut best: Option<(&Node, u64)> = None;
    let mut nofit = NoFit::default();
    for node in state.nodes.values() {
        if let Some(why) = check(node, spec) {
            nofit.per_node.push((node.name.clone(), why));
            continue;
        }
        let left = node.free().cpu_millis - spec.resources.cpu_millis;
        // Strictly less keeps the first (smallest) name among equals.
        if best.is_none_or(|(_, b)| left < b) {
            best = Some((node, left));
        }
    }
    best.map(|(n, _)| n.name.clone()).ok_or(nofit)
}

#[cfg(test)]
mod tests;
