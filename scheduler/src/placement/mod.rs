//! Placement: which nodes get a lease. Pure functions over a [`State`] view.
//!
//! Checkers run per node, cheapest first, and the first that fails names the
//! reason: node state (one enum compare), price (one float compare), label
//! constraints (a few map lookups), then resources (four compares, the only
//! check that changes with load). Checkers return a small [`Why`] so ruling
//! out thousands of nodes allocates nothing; words are made only for
//! `lease why` and refusals. Feasible nodes are then ranked by the request's
//! preference (binpack, spread, cheapest) and the best `count` taken; ties
//! break by name, so every member picks the same.
//!
//! Candidates are found through indexes of ready nodes instead of scanning
//! the fleet: by free CPU ([`State::by_free`]) for binpack and spread, by
//! price then free CPU ([`State::by_price`]) for cheapest, each also per
//! label value ([`State::by_label`]) for `key=value` constraints; see
//! [`pick`].
//!
//! Limitations: only `key=value` constraints narrow the walk (`in`, `!=`,
//! versions are checked per node met); a gang request ranks nodes
//! independently (no topology).

use crate::fleet::{Fleet, LabelIndex, Node, price_key};
use charter_config::constraint::Op;
use charter_config::spec::{LeaseSpec, Prefer, Resources};
use charter_config::states::NodeState;
use imbl::OrdSet;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Why no set of nodes could take a request: one line per node, the nodes
/// nearest to holding it first (short of CPU, memory, disk or GPUs, then
/// draining or down, then too costly, then a label mismatch), by name
/// within each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NoFit {
    /// Nodes needed.
    pub needed: u32,
    /// Nodes that would fit.
    pub fitting: u32,
    /// `(node, reason)` for each node that was ruled out.
    pub per_node: Vec<(String, String)>,
}

impl Why {
    /// How near a node ruled out for this reason is to holding the
    /// request: 0 lacks only free capacity (it could hold it once a lease
    /// ends), 3 would need different labels.
    fn nearness(self) -> u8 {
        match self {
            Why::Cpu(..) | Why::Memory(..) | Why::Disk(..) | Why::Gpus(..) | Why::Shrunk => 0,
            Why::State(_) => 1,
            Why::Cost(..) => 2,
            Why::Label(_) => 3,
        }
    }
}

/// Reasons gathered with their nearness, put in [`NoFit`]'s order.
#[derive(Default)]
struct Reasons(Vec<(u8, String, String)>);

impl Reasons {
    fn push(&mut self, name: String, node: &Node, spec: &LeaseSpec, why: Why) {
        self.0
            .push((why.nearness(), name, explain(node, spec, why)));
    }

    /// Nearest first; the walk's order (by name) within a nearness.
    fn ordered(mut self) -> Vec<(String, String)> {
        self.0.sort_by_key(|(n, _, _)| *n);
        self.0.into_iter().map(|(_, name, r)| (name, r)).collect()
    }
}

impl NoFit {
    /// A one-line summary: the reasons of the first few nodes.
    pub fn summary(&self) -> String {
        if self.per_node.is_empty() && self.fitting == 0 {
            return "no nodes are registered".to_string();
        }
        let mut parts = Vec::new();
        if self.needed > 1 {
            parts.push(format!("needs {} nodes, {} fit", self.needed, self.fitting));
        }
        parts.extend(
            self.per_node
                .iter()
                .take(5)
                .map(|(n, r)| format!("{n}: {r}")),
        );
        let more = self.per_node.len().saturating_sub(5);
        if more > 0 {
            parts.push(format!("and {more} more"));
        }
        parts.join("; ")
    }
}

/// Why a node cannot hold a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Why {
    /// The node is draining or down.
    State(NodeState),
    /// The node costs more per hour than the request allows (price, limit).
    Cost(f64, f64),
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
    /// The node re-registered smaller than what its leases hold: no new
    /// grant until they end.
    Shrunk,
}

/// The first checker that rules `node` out for `spec`, cheapest first.
/// With `ever`, the node's state and current load are ignored: could it
/// hold the request at all?
pub fn rule_out(node: &Node, spec: &LeaseSpec, ever: bool) -> Option<Why> {
    rule_out_with(node, spec, ever, &Resources::default())
}

/// [`rule_out`] with `reserved` held back on the node as well (the leader's
/// in-flight grants).
pub fn rule_out_with(
    node: &Node,
    spec: &LeaseSpec,
    ever: bool,
    reserved: &Resources,
) -> Option<Why> {
    if !ever && node.state != NodeState::Ready {
        return Some(Why::State(node.state));
    }
    if let Some(max) = spec.max_cost_per_hour
        && node.cost_per_hour > max
    {
        return Some(Why::Cost(node.cost_per_hour, max));
    }
    if let Some(i) = spec.constraints.iter().position(|c| !c.holds(&node.labels)) {
        return Some(Why::Label(i));
    }
    if !ever && !node.allocated.fits_in(&node.capacity) {
        return Some(Why::Shrunk);
    }
    let free = if ever {
        node.capacity
    } else {
        node.free().minus(reserved)
    };
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
        Why::Cost(price, max) => format!("costs {price}/h, limit {max}/h"),
        Why::Label(i) => {
            let c = &spec.constraints[i];
            match node.labels.get(&c.key) {
                Some(v) => format!("needs {c}, has {}={v}", c.key),
                None => format!("needs {c}, has no {}", c.key),
            }
        }
        Why::Cpu(need, free) => format!("needs {} cores, {} free", cores(need), cores(free)),
        Why::Memory(need, free) => {
            format!("needs {} MiB memory, {} MiB free", need >> 20, free >> 20)
        }
        Why::Disk(need, free) => format!("needs {} MiB disk, {} MiB free", need >> 20, free >> 20),
        Why::Gpus(need, free) => format!("needs {need} gpus, {free} free"),
        Why::Shrunk => {
            "re-registered smaller than its leases hold; no grants until they end".into()
        }
    }
}

/// Why `node` cannot hold `spec` now, in words, or `None` when it can.
pub fn check(node: &Node, spec: &LeaseSpec) -> Option<String> {
    rule_out(node, spec, false).map(|w| explain(node, spec, w))
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

/// Ranking: smaller is better.
fn better(prefer: Prefer, a: (&Node, u64), b: (&Node, u64)) -> Ordering {
    let by_left = a.1.cmp(&b.1);
    let primary = match prefer {
        Prefer::Binpack => by_left,
        Prefer::Spread => by_left.reverse(),
        Prefer::Cheapest => {
            a.0.cost_per_hour
                .total_cmp(&b.0.cost_per_hour)
                .then(by_left)
        }
    };
    primary.then_with(|| a.0.name.cmp(&b.0.name))
}

/// Picks `spec.count` nodes for `spec`, best first by its preference.
pub fn place(fleet: &Fleet, spec: &LeaseSpec) -> Result<Vec<String>, NoFit> {
    place_with(fleet, spec, &BTreeMap::new())
}

/// [`place`] with some resources of some nodes held back (`reserved`: the
/// leader's in-flight grants).
pub fn place_with(
    fleet: &Fleet,
    spec: &LeaseSpec,
    reserved: &BTreeMap<String, Resources>,
) -> Result<Vec<String>, NoFit> {
    pick(fleet, spec, reserved).ok_or_else(|| why_not(fleet, spec))
}

/// The best `spec.count` nodes, or `None` (no reasons: the fast path).
///
/// Binpack and spread walk [`State::by_free`] (ready nodes by free CPU)
/// from the tightest or the loosest fit and stop at the first `count` that
/// pass every checker, so a fleet of any size costs a few lookups when
/// nodes are alike; cheapest walks [`State::by_price`] the same way. With
/// a `key=value` constraint, the walk is over the nodes that carry that
/// label ([`State::by_label`], the fewest of the constraints'), so a rare
/// label costs what its nodes cost, not the fleet. Nodes with reservations
/// are judged apart, since the index does not know what they hold back.
pub fn pick(
    fleet: &Fleet,
    spec: &LeaseSpec,
    reserved: &BTreeMap<String, Resources>,
) -> Option<Vec<String>> {
    let count = spec.count.max(1) as usize;
    let need = spec.resources.cpu_millis;
    let mut cands: Vec<(&Node, u64)> = Vec::with_capacity(count + reserved.len());
    for (name, held) in reserved {
        if let Some(n) = fleet.get(name)
            && rule_out_with(n, spec, false, held).is_none()
        {
            cands.push((n, n.free().minus(held).cpu_millis - need));
        }
    }
    let fits = |name: &String| -> Option<&Node> {
        if reserved.contains_key(name) {
            return None;
        }
        let n = fleet.get(name)?;
        rule_out(n, spec, false).is_none().then_some(n)
    };
    let empty = LabelIndex::default();
    let (by_free, by_price) = match narrowest(fleet, spec) {
        Some(ix) => (&ix.by_free, &ix.by_price),
        None if has_missing_label(fleet, spec) => (&empty.by_free, &empty.by_price),
        None => (&fleet.index.by_free, &fleet.index.by_price),
    };
    let walk = Walk {
        need,
        count,
        fits: &fits,
    };
    match spec.prefer {
        Prefer::Binpack => walk.binpack(by_free, &mut cands),
        Prefer::Spread => walk.spread(by_free, &mut cands),
        Prefer::Cheapest => {
            let max = spec.max_cost_per_hour.map(price_key);
            walk.cheapest(by_price, max, &mut cands)
        }
    }
    if cands.len() < count {
        return None;
    }
    cands.sort_by(|a, b| better(spec.prefer, *a, *b));
    Some(
        cands
            .into_iter()
            .take(count)
            .map(|(n, _)| n.name.clone())
            .collect(),
    )
}

/// The label index of the `key=value` constraint of `spec` that the fewest
/// ready nodes meet, when it is smaller than the whole fleet.
fn narrowest<'a>(fleet: &'a Fleet, spec: &LeaseSpec) -> Option<&'a LabelIndex> {
    spec.constraints
        .iter()
        .filter_map(|c| match &c.op {
            Op::Eq { value } => fleet.index.by_label.get(&(c.key.clone(), value.clone())),
            _ => None,
        })
        .min_by_key(|ix| ix.by_free.len())
        .filter(|ix| ix.by_free.len() < fleet.index.by_free.len())
}

/// Whether a `key=value` constraint of `spec` is met by no ready node.
fn has_missing_label(fleet: &Fleet, spec: &LeaseSpec) -> bool {
    spec.constraints.iter().any(|c| match &c.op {
        Op::Eq { value } => !fleet
            .index
            .by_label
            .contains_key(&(c.key.clone(), value.clone())),
        _ => false,
    })
}

/// Every node's reason for refusing `spec` now, in words (the slow path).
pub fn why_not(fleet: &Fleet, spec: &LeaseSpec) -> NoFit {
    let mut nf = NoFit {
        needed: spec.count.max(1),
        ..NoFit::default()
    };
    let mut reasons = Reasons::default();
    for n in fleet.values() {
        match rule_out(n, spec, false) {
            Some(w) => reasons.push(n.name.clone(), n, spec, w),
            None => nf.fitting += 1,
        }
    }
    nf.per_node = reasons.ordered();
    nf
}

/// Whether any `count` nodes, registered or that a pool could still add,
/// could ever hold `spec` (ignoring their state and load); if not, every
/// node's and pool's reason.
pub fn could_ever_fit(fleet: &Fleet, spec: &LeaseSpec) -> Result<(), NoFit> {
    let mut nf = registered_could_ever_fit(fleet, spec);
    if nf.fitting >= nf.needed {
        return Ok(());
    }
    // Nodes a pool could still add count too.
    let mut reasons = Reasons::default();
    let mut pool_lines = Vec::new();
    for p in fleet.pools.values() {
        let n = p.new_node("");
        match rule_out(&n, spec, true) {
            Some(w) => reasons.push(format!("pool {}", p.name), &n, spec, w),
            None => {
                let room = fleet.pool_room(&p.name);
                nf.fitting += room.min(nf.needed);
                pool_lines.push((
                    format!("pool {}", p.name),
                    format!(
                        "its nodes fit, and it can add {room} more (max_nodes {})",
                        p.max_nodes
                    ),
                ));
            }
        }
    }
    if nf.fitting >= nf.needed {
        return Ok(());
    }
    nf.per_node.extend(pool_lines);
    nf.per_node.extend(reasons.ordered());
    Err(nf)
}

/// Like [`could_ever_fit`] over the registered nodes only (no pool grows):
/// `fitting` counts the nodes that could hold `spec` once free.
pub fn registered_could_ever_fit(fleet: &Fleet, spec: &LeaseSpec) -> NoFit {
    let mut nf = NoFit {
        needed: spec.count.max(1),
        ..NoFit::default()
    };
    let mut reasons = Reasons::default();
    for n in fleet.values() {
        match rule_out(n, spec, true) {
            Some(w) => reasons.push(n.name.clone(), n, spec, w),
            None => nf.fitting += 1,
        }
    }
    nf.per_node = reasons.ordered();
    nf
}

/// Pools whose new nodes could hold `spec` and that have room to add one.
pub fn pools_that_fit(fleet: &Fleet, spec: &LeaseSpec) -> Vec<String> {
    fleet
        .pools
        .values()
        .filter(|p| fleet.pool_room(&p.name) > 0)
        .filter(|p| rule_out(&p.new_node(""), spec, true).is_none())
        .map(|p| p.name.clone())
        .collect()
}

/// A walk of an index for `count` nodes with `need` millicores free that
/// pass `fits`, each pushed with the CPU it would leave free.
struct Walk<'a, 'f> {
    need: u64,
    count: usize,
    fits: &'f dyn Fn(&String) -> Option<&'a Node>,
}

impl<'a> Walk<'a, '_> {
    /// From the tightest fit up.
    fn binpack(&self, by_free: &OrdSet<(u64, String)>, cands: &mut Vec<(&'a Node, u64)>) {
        let mut found = 0;
        for (free, name) in by_free.range((self.need, String::new())..) {
            if let Some(n) = (self.fits)(name) {
                cands.push((n, free - self.need));
                found += 1;
                if found == self.count {
                    return;
                }
            }
        }
    }

    /// Free-CPU levels from the top; names ascending within a level.
    fn spread(&self, by_free: &OrdSet<(u64, String)>, cands: &mut Vec<(&'a Node, u64)>) {
        let mut found = 0;
        let mut level = by_free.iter().next_back().map(|(f, _)| *f);
        while let Some(l) = level {
            if l < self.need || found == self.count {
                return;
            }
            let from = (l, String::new());
            let entries: Box<dyn Iterator<Item = &(u64, String)>> = match l.checked_add(1) {
                Some(next) => Box::new(by_free.range(from..(next, String::new()))),
                None => Box::new(by_free.range(from..)),
            };
            for (free, name) in entries {
                if let Some(n) = (self.fits)(name) {
                    cands.push((n, free - self.need));
                    found += 1;
                    if found == self.count {
                        return;
                    }
                }
            }
            level = by_free
                .range(..(l, String::new()))
                .next_back()
                .map(|(f, _)| *f);
        }
    }

    /// Price levels from the cheapest (up to `max`); within a level, free
    /// CPU from the tightest fit: the order `better` ranks in.
    fn cheapest(
        &self,
        by_price: &OrdSet<(u64, u64, String)>,
        max: Option<u64>,
        cands: &mut Vec<(&'a Node, u64)>,
    ) {
        let mut found = 0;
        let mut from = (0u64, self.need, String::new());
        loop {
            let mut next = None;
            for (price, free, name) in by_price.range(from.clone()..) {
                if max.is_some_and(|m| *price > m) {
                    return;
                }
                if *free < self.need {
                    // The next level's nodes that cannot fit: skip them.
                    next = Some(*price);
                    break;
                }
                if let Some(n) = (self.fits)(name) {
                    cands.push((n, free - self.need));
                    found += 1;
                    if found == self.count {
                        return;
                    }
                }
            }
            match next {
                Some(p) => from = (p, self.need, String::new()),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
