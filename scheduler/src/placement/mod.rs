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

/// Why a node cannot hold a request: a small value, so ruling out thousands
/// of nodes allocates nothing. [`NoFit`] formats it only when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The node is draining or down.
    State(NodeState),
    /// Constraint `i` of the request does not hold.
    Label(usize),
    /// Not enough free CPU (needed, free) in millicores.
    Cpu(u64, u64),
    /// Not enough free memory (needed, free) in bytes.
    Memory(u64, u64),
    /// Not enough free disk (needed, free) in bytes.
    Disk(u64, u64),
    /// Not enough free GPUs (needed, free).
    Gpus(u32, u32),
}

/// The first checker that rules `node` out for `spec`, cheapest first.
pub fn rule_out(node: &Node, spec: &LeaseSpec) -> Option<Why> {
    if node.state != NodeState::Ready {
        return Some(Why::State(node.state));
    }
    for (i, c) in spec.constraints.iter().enumerate() {
        if node.labels.get(&c.key) != Some(&c.value) {
            return Some(Why::Label(i));
        }
    }
    let free = node.free();
    let r = &spec.resources;
    if r.cpu_millis > free.cpu_millis {
        return Some(Why::Cpu(r.cpu_millis, free.cpu_millis));
    }
    if r.memory_bytes > free.memory_bytes {
        return Some(Why::Memory(r.memory_bytes, free.memory_bytes));
    }
    if r.disk_bytes > free.disk_bytes {
        return Some(Why::Disk(r.disk_bytes, free.disk_bytes));
    }
    if r.gpus > free.gpus {
        return Some(Why::Gpus(r.gpus, free.gpus));
    }
    None
}

/// A reason in words, e.g. `needs gpu=a100, has gpu=t4` or `needs 8 cores, 2.5 free`.
pub fn explain(node: &Node, spec: &LeaseSpec, why: Why) -> String {
    match why {
        Why::State(s) => format!("node is {}", s.as_str()),
        Why::Label(i) => {
            let c = &spec.constraints[i];
            match node.labels.get(&c.key) {
                Some(v) => format!("needs {}={}, has {}={v}", c.key, c.value, c.key),
                None => format!("needs {}={}, has no {}", c.key, c.value, c.key),
            }
        }
        Why::Cpu(need, free) => format!("needs {} cores, {} free", cores(need), cores(free)),
        Why::Memory(need, free) => {
            format!("needs {} MiB memory, {} MiB free", need >> 20, free >> 20)
        }
        Why::Disk(need, free) => format!("needs {} MiB disk, {} MiB free", need >> 20, free >> 20),
        Why::Gpus(need, free) => format!("needs {need} gpus, {free} free"),
    }
}

/// Why `node` cannot hold `spec` in words, or `None` when it can.
pub fn check(node: &Node, spec: &LeaseSpec) -> Option<String> {
    rule_out(node, spec).map(|w| explain(node, spec, w))
}

fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
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
    for node in state.nodes.values() {
        if rule_out(node, spec).is_some() {
            continue;
        }
        let left = node.free().cpu_millis - spec.resources.cpu_millis;
        // Strictly less keeps the first (smallest) name among equals.
        if best.is_none_or(|(_, b)| left < b) {
            best = Some((node, left));
        }
    }
    best.map(|(n, _)| n.name.clone())
        .ok_or_else(|| why_not(state, spec))
}

/// Every node's reason for refusing `spec`, in words (the slow path).
pub fn why_not(state: &State, spec: &LeaseSpec) -> NoFit {
    let per_node = state
        .nodes
        .values()
        .filter_map(|n| rule_out(n, spec).map(|w| (n.name.clone(), explain(n, spec, w))))
        .collect();
    NoFit { per_node }
}

#[cfg(test)]
mod tests;
