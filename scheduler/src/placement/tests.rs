use super::*;
use crate::state::{Constraint, Resources};
use std::collections::BTreeMap;

fn node(name: &str, cpu: u64, used: u64, labels: &[(&str, &str)], state: NodeState) -> Node {
    Node {
        name: name.into(),
        capacity: Resources {
            cpu_millis: cpu,
            memory_bytes: 8 << 30,
            ..Resources::default()
        },
        allocated: Resources {
            cpu_millis: used,
            ..Resources::default()
        },
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        pool: "default".into(),
        cost_per_hour: 0.0,
        state,
        registered_at: 0,
        leases: Default::default(),
    }
}

fn spec(cpu: u64, constraints: &[(&str, &str)]) -> LeaseSpec {
    LeaseSpec {
        resources: Resources {
            cpu_millis: cpu,
            ..Resources::default()
        },
        constraints: constraints
            .iter()
            .map(|(k, v)| Constraint {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        duration_ms: 1000,
        reason: String::new(),
    }
}

/// (node cpu, used, labels, state, request cpu, constraints, expected reason)
type Case = (
    u64,
    u64,
    Vec<(&'static str, &'static str)>,
    NodeState,
    u64,
    Vec<(&'static str, &'static str)>,
    Option<&'static str>,
);

#[test]
fn checker_table() {
    use NodeState::*;
    // (node cpu, used, labels, state, request cpu, constraints, expected reason)
    let cases: Vec<Case> = vec![
        (4000, 0, vec![], Ready, 1000, vec![], None),
        (4000, 3000, vec![], Ready, 1000, vec![], None),
        (
            4000,
            3500,
            vec![],
            Ready,
            1000,
            vec![],
            Some("needs 1 cores, 0.5 free"),
        ),
        (
            8000,
            0,
            vec![],
            Ready,
            16000,
            vec![],
            Some("needs 16 cores, 8 free"),
        ),
        (
            4000,
            0,
            vec![("gpu", "t4")],
            Ready,
            1000,
            vec![("gpu", "a100")],
            Some("needs gpu=a100, has gpu=t4"),
        ),
        (
            4000,
            0,
            vec![],
            Ready,
            1000,
            vec![("gpu", "a100")],
            Some("needs gpu=a100, has no gpu"),
        ),
        (
            4000,
            0,
            vec![("gpu", "a100")],
            Ready,
            1000,
            vec![("gpu", "a100")],
            None,
        ),
        (
            4000,
            0,
            vec![],
            Draining,
            1000,
            vec![],
            Some("node is draining"),
        ),
        // The cheapest checker reports first: state before labels before resources.
        (
            1000,
            1000,
            vec![("gpu", "t4")],
            Down,
            2000,
            vec![("gpu", "a100")],
            Some("node is down"),
        ),
    ];
    for (i, (cpu, used, labels, st, req, cons, want)) in cases.into_iter().enumerate() {
        let n = node("n1", cpu, used, &labels, st);
        assert_eq!(check(&n, &spec(req, &cons)).as_deref(), want, "case {i}");
    }
}

#[test]
fn binpack_prefers_the_fullest_node_then_name() {
    let mut s = State::new(BTreeMap::new());
    for n in [
        node("a", 8000, 0, &[], NodeState::Ready),
        node("b", 8000, 6000, &[], NodeState::Ready),
        node("c", 8000, 6000, &[], NodeState::Ready),
        node("d", 8000, 7500, &[], NodeState::Ready),
    ] {
        s.nodes.insert(n.name.clone(), n);
    }
    assert_eq!(place(&s, &spec(1000, &[])).unwrap(), "b");
    assert_eq!(place(&s, &spec(500, &[])).unwrap(), "d");
    assert_eq!(place(&s, &spec(4000, &[])).unwrap(), "a");
    let err = place(&s, &spec(9000, &[])).unwrap_err();
    assert_eq!(err.per_node.len(), 4);
    assert!(
        err.summary().starts_with("a: needs 9 cores, 8 free"),
        "{}",
        err.summary()
    );
}

#[test]
fn empty_fleet_says_so() {
    let s = State::new(BTreeMap::new());
    assert_eq!(
        place(&s, &spec(1, &[])).unwrap_err().summary(),
        "no nodes are registered"
    );
}
