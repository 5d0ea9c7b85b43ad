use super::*;
use crate::state::{Constraint, Resources, State};
use std::collections::BTreeMap;

fn node(
    name: &str,
    cpu: u64,
    used: u64,
    labels: &[(&str, &str)],
    state: NodeState,
    cost: f64,
) -> Node {
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
        cost_per_hour: cost,
        state,
        registered_at: 0,
        ttl_ms: None,
        agent: None,
        last_seen: 0,
        leases: Default::default(),
    }
}

fn spec(cpu: u64, constraints: &[&str]) -> LeaseSpec {
    let mut s = LeaseSpec::simple(
        Resources {
            cpu_millis: cpu,
            ..Resources::default()
        },
        1000,
    );
    s.constraints = constraints
        .iter()
        .map(|c| Constraint::parse(c).unwrap())
        .collect();
    s
}

/// (node cpu, used, labels, state, request cpu, constraints, expected reason)
type Case = (
    u64,
    u64,
    Vec<(&'static str, &'static str)>,
    NodeState,
    u64,
    Vec<&'static str>,
    Option<&'static str>,
);

#[test]
fn checker_table() {
    use NodeState::*;
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
            vec!["gpu=a100"],
            Some("needs gpu=a100, has gpu=t4"),
        ),
        (
            4000,
            0,
            vec![],
            Ready,
            1000,
            vec!["gpu=a100"],
            Some("needs gpu=a100, has no gpu"),
        ),
        (
            4000,
            0,
            vec![("gpu", "a100")],
            Ready,
            1000,
            vec!["gpu=a100"],
            None,
        ),
        (
            4000,
            0,
            vec![("zone", "c")],
            Ready,
            1000,
            vec!["zone in (a,b)"],
            Some("needs zone in (a,b), has zone=c"),
        ),
        (
            4000,
            0,
            vec![("cuda", "11.8")],
            Ready,
            1000,
            vec!["cuda>=12.0"],
            Some("needs cuda>=12.0, has cuda=11.8"),
        ),
        (
            4000,
            0,
            vec![("spot", "1")],
            Ready,
            1000,
            vec!["!spot"],
            Some("needs !spot, has spot=1"),
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
            vec!["gpu=a100"],
            Some("node is down"),
        ),
    ];
    for (i, (cpu, used, labels, st, req, cons, want)) in cases.into_iter().enumerate() {
        let n = node("n1", cpu, used, &labels, st, 1.0);
        assert_eq!(check(&n, &spec(req, &cons)).as_deref(), want, "case {i}");
    }
}

fn fleet() -> State {
    let mut s = State::new(BTreeMap::new());
    for n in [
        node("a", 8000, 0, &[("zone", "1")], NodeState::Ready, 3.0),
        node("b", 8000, 6000, &[("zone", "1")], NodeState::Ready, 1.0),
        node("c", 8000, 6000, &[("zone", "2")], NodeState::Ready, 2.0),
        node("d", 8000, 7500, &[("zone", "2")], NodeState::Ready, 0.5),
    ] {
        s.nodes.insert(n.name.clone(), n);
    }
    s.rebuild_index();
    s
}

/// (cpu, count, prefer, max cost, constraints, expected nodes or refusal prefix)
type RankCase = (
    u64,
    u32,
    Prefer,
    Option<f64>,
    Vec<&'static str>,
    Result<Vec<&'static str>, &'static str>,
);

#[test]
fn ranking_table() {
    let s = fleet();
    // (cpu, count, prefer, max cost, constraints, expected nodes)
    let cases: Vec<RankCase> = vec![
        (1000, 1, Prefer::Binpack, None, vec![], Ok(vec!["b"])),
        (500, 1, Prefer::Binpack, None, vec![], Ok(vec!["d"])),
        (4000, 1, Prefer::Binpack, None, vec![], Ok(vec!["a"])),
        (1000, 1, Prefer::Spread, None, vec![], Ok(vec!["a"])),
        (500, 1, Prefer::Cheapest, None, vec![], Ok(vec!["d"])),
        (1000, 1, Prefer::Cheapest, None, vec![], Ok(vec!["b"])),
        (
            1000,
            1,
            Prefer::Binpack,
            Some(0.9),
            vec![],
            // The node short only of free CPU comes before those too costly.
            Err("d: needs 1 cores, 0.5 free; a: costs 3/h, limit 0.9/h"),
        ),
        (1000, 2, Prefer::Binpack, None, vec![], Ok(vec!["b", "c"])),
        (
            1000,
            3,
            Prefer::Spread,
            None,
            vec![],
            Ok(vec!["a", "b", "c"]),
        ),
        (
            1000,
            4,
            Prefer::Binpack,
            None,
            vec![],
            Err("needs 4 nodes, 3 fit"),
        ),
        (
            1000,
            2,
            Prefer::Binpack,
            None,
            vec!["zone=2"],
            Err("needs 2 nodes, 1 fit"),
        ),
        (
            9000,
            1,
            Prefer::Binpack,
            None,
            vec![],
            Err("a: needs 9 cores, 8 free"),
        ),
    ];
    for (i, (cpu, count, prefer, max_cost, cons, want)) in cases.into_iter().enumerate() {
        let mut sp = spec(cpu, &cons);
        sp.count = count;
        sp.prefer = prefer;
        sp.max_cost_per_hour = max_cost;
        match (place(&s.nodes, &sp), want) {
            (Ok(got), Ok(w)) => assert_eq!(got, w, "case {i}"),
            (Err(nf), Err(w)) => assert!(nf.summary().starts_with(w), "case {i}: {}", nf.summary()),
            (got, w) => panic!("case {i}: got {got:?}, want {w:?}"),
        }
    }
}

#[test]
fn could_ever_fit_ignores_load_but_not_capacity() {
    let s = fleet();
    assert!(
        could_ever_fit(&s.nodes, &spec(8000, &[])).is_ok(),
        "a full node could free up"
    );
    let nf = could_ever_fit(&s.nodes, &spec(1000, &["gpu=a100"])).unwrap_err();
    assert_eq!(nf.per_node.len(), 4);
    assert_eq!(
        nf.per_node[0],
        ("a".to_string(), "needs gpu=a100, has no gpu".to_string())
    );
    assert!(could_ever_fit(&s.nodes, &spec(9000, &[])).is_err());
}

#[test]
fn empty_fleet_says_so() {
    let s = State::new(BTreeMap::new());
    assert_eq!(
        place(&s.nodes, &spec(1, &[])).unwrap_err().summary(),
        "no nodes are registered"
    );
}

/// The index walk picks exactly what ranking every node would pick.
mod index_matches_a_full_scan {
    use super::*;
    use proptest::prelude::*;

    fn reference(
        s: &State,
        spec: &LeaseSpec,
        reserved: &BTreeMap<String, Resources>,
    ) -> Option<Vec<String>> {
        let none = Resources::default();
        let mut fits: Vec<(&Node, u64)> = s
            .nodes
            .values()
            .filter_map(|n| {
                let held = reserved.get(&n.name).unwrap_or(&none);
                rule_out_with(n, spec, false, held).is_none().then(|| {
                    (
                        n,
                        n.free().minus(held).cpu_millis - spec.resources.cpu_millis,
                    )
                })
            })
            .collect();
        let count = spec.count.max(1) as usize;
        if fits.len() < count {
            return None;
        }
        fits.sort_by(|a, b| better(spec.prefer, *a, *b));
        Some(
            fits.into_iter()
                .take(count)
                .map(|(n, _)| n.name.clone())
                .collect(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn same_choice(
            nodes in proptest::collection::vec((0u64..4, 0u64..5, 0u8..4, 0u8..3, 0u8..3), 0..30),
            cpu in 0u64..5,
            count in 1u32..4,
            prefer in 0u8..3,
            zone in proptest::option::of(0u8..3),
            reserved in proptest::collection::vec((0usize..30, 0u64..3), 0..4),
            max_cost in proptest::option::of(0u8..4),
            rack in proptest::option::of(0u8..2),
        ) {
            let mut s = State::new(BTreeMap::new());
            for (i, (cap, used, st, z, cost)) in nodes.iter().enumerate() {
                let cap = (cap + 1) * 1000;
                let state = [NodeState::Ready, NodeState::Ready, NodeState::Draining, NodeState::Down][*st as usize];
                let zone = format!("z{z}");
                // 1 node in 7 is on rack r1: a rare label.
                let rack = if i % 7 == 3 { "r1" } else { "r0" };
                let n = node(&format!("n{i:02}"), cap, (used * 500).min(cap), &[("zone", &zone), ("rack", rack)], state, f64::from(*cost));
                s.nodes.insert(n.name.clone(), n);
            }
            s.rebuild_index();
            let mut sp = spec(cpu * 500, &[]);
            sp.count = count;
            sp.prefer = [Prefer::Binpack, Prefer::Spread, Prefer::Cheapest][prefer as usize];
            if let Some(z) = zone {
                sp.constraints = vec![Constraint::eq("zone", &format!("z{z}"))];
            }
            if let Some(r) = rack {
                sp.constraints.push(Constraint::eq("rack", &format!("r{r}")));
            }
            sp.max_cost_per_hour = max_cost.map(|c| f64::from(c) - 0.5);
            let mut held = BTreeMap::new();
            for (i, c) in reserved {
                if i < nodes.len() {
                    held.insert(format!("n{i:02}"), Resources { cpu_millis: c * 500, ..Resources::default() });
                }
            }
            prop_assert_eq!(pick(&s.nodes, &sp, &held), reference(&s, &sp, &held));
        }
    }
}
