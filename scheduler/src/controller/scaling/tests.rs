use super::*;
use crate::state::{Applied, Command, LeaseState, Proposal};
use charter_config::constraint::Constraint;

fn admin(at: Millis, cmd: Command) -> Proposal {
    Proposal {
        at,
        principal: "root".into(),
        admin: true,
        key: None,
        hint: None,
        cmd,
    }
}

fn res(cpu: u64) -> Resources {
    Resources {
        cpu_millis: cpu,
        memory_bytes: 1 << 30,
        ..Resources::default()
    }
}

fn pool(name: &str, cpu: u64, cost: f64, max: u32, gpu: Option<&str>) -> PoolOffer {
    PoolOffer {
        name: name.into(),
        max_nodes: max,
        capacity: res(cpu),
        labels: gpu
            .map(|g| [("gpu".to_string(), g.to_string())].into())
            .unwrap_or_default(),
        cost_per_hour: cost,
        idle_ms: 60_000,
    }
}

fn node(s: &mut State, at: Millis, name: &str, pool: &str, cpu: u64) {
    s.apply(&admin(
        at,
        Command::RegisterNode {
            name: name.into(),
            capacity: res(cpu),
            labels: Default::default(),
            pool: pool.into(),
            cost_per_hour: 1.0,
            ttl_ms: None,
            agent: None,
        },
    ))
    .unwrap();
}

fn ask(
    s: &mut State,
    at: Millis,
    cpu: u64,
    count: u32,
    constraint: Option<&str>,
) -> crate::state::Lease {
    let mut spec = LeaseSpec::simple(res(cpu), 600_000);
    spec.resources.memory_bytes = 0;
    spec.count = count;
    spec.wait_ms = 300_000;
    spec.constraints = constraint
        .map(|c| vec![Constraint::parse(c).unwrap()])
        .unwrap_or_default();
    match s.apply(&admin(at, Command::RequestLease(spec))) {
        Ok(Applied::Lease(l)) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn with_pools(pools: Vec<PoolOffer>) -> State {
    let mut s = State::new(Default::default());
    s.apply(&admin(1, Command::SetPools { pools })).unwrap();
    s
}

#[test]
fn a_request_no_node_could_hold_is_queued_when_a_pool_could_add_one() {
    let mut s = with_pools(vec![pool("gpu", 8000, 3.0, 2, Some("a100"))]);
    node(&mut s, 2, "n1", "default", 4000);
    let l = ask(&mut s, 3, 2000, 1, Some("gpu=a100"));
    assert_eq!(
        l.state,
        LeaseState::Pending,
        "queued for the pool, not refused"
    );
    // Without the pool the same request is refused at once.
    let mut bare = State::new(Default::default());
    node(&mut bare, 2, "n1", "default", 4000);
    let mut spec = LeaseSpec::simple(res(2000), 600_000);
    spec.wait_ms = 300_000;
    spec.constraints = vec![Constraint::parse("gpu=a100").unwrap()];
    let err = bare
        .apply(&admin(3, Command::RequestLease(spec)))
        .unwrap_err();
    assert!(
        err.to_string().contains("no node could ever hold it"),
        "{err}"
    );
}

#[test]
fn demand_goes_to_the_cheapest_pool_that_could_meet_it() {
    let mut s = with_pools(vec![
        pool("dear", 8000, 2.0, 5, None),
        pool("cheap", 8000, 0.5, 5, None),
        pool("gpu", 8000, 0.1, 5, Some("t4")),
    ]);
    let l = ask(&mut s, 2, 3000, 1, Some("!gpu"));
    let p = plan(&s, &[], &BTreeSet::new(), &BTreeMap::new(), 10);
    assert_eq!(
        p.grow,
        vec![Grow {
            pool: "cheap".into(),
            count: 1,
            demand: vec![l.id]
        }]
    );
    // A blocked pool (its provisioner just failed) is passed over.
    let blocked = BTreeSet::from(["cheap".to_string()]);
    let p = plan(&s, &[], &blocked, &BTreeMap::new(), 10);
    assert_eq!(p.grow[0].pool, "dear");
}

#[test]
fn new_nodes_are_packed_and_capped_by_room_and_inflight() {
    let mut s = with_pools(vec![pool("p", 4000, 1.0, 3, None)]);
    node(&mut s, 2, "p-1", "p", 1000); // one node already in the pool: room 2
    for i in 0..3 {
        ask(&mut s, 3 + i, 2000, 1, None);
    }
    // Two 2-core requests share one new 4-core node; the third needs another.
    let p = plan(&s, &[], &BTreeSet::new(), &BTreeMap::new(), 10);
    assert_eq!(p.grow.len(), 1);
    assert_eq!((p.grow[0].count, p.grow[0].demand.len()), (2, 3));
    // A node in flight absorbs demand first: only one more is asked for.
    let flying = vec![Inflight {
        pool: "p".into(),
        name: Some("p-2".into()),
        since: 5,
    }];
    let p = plan(&s, &flying, &BTreeSet::new(), &BTreeMap::new(), 10);
    assert_eq!(p.grow[0].count, 1);
    // A gang of 3 from a pool with room for 2 waits for capacity to free
    // (here: one node exists) and asks for only what the pool may add.
    let mut s = with_pools(vec![pool("p", 4000, 1.0, 3, None)]);
    node(&mut s, 2, "p-1", "p", 4000);
    ask(&mut s, 3, 4000, 1, None); // fills p-1
    ask(&mut s, 4, 1000, 3, None);
    let p = plan(&s, &[], &BTreeSet::new(), &BTreeMap::new(), 10);
    assert!(
        p.grow.is_empty(),
        "a gang of 3 cannot come from 2 new nodes: {p:?}"
    );
}

#[test]
fn idle_pool_nodes_are_retired_after_the_idle_time_and_busy_ones_never() {
    let mut s = with_pools(vec![pool("p", 4000, 1.0, 3, None)]);
    node(&mut s, 2, "p-1", "p", 4000);
    node(&mut s, 2, "p-2", "p", 4000);
    node(&mut s, 2, "fixed", "default", 1000); // not a growable pool: never retired
    let mut idle = BTreeMap::new();
    observe_idle(&s, &mut idle, 1_000);
    let l = ask(&mut s, 1_500, 4000, 1, None);
    assert_eq!(l.state, LeaseState::Granted);
    let busy = l.nodes[0].clone();
    observe_idle(&s, &mut idle, 2_000);
    assert!(!idle.contains_key(&busy) && !idle.contains_key("fixed"));
    let p = plan(&s, &[], &BTreeSet::new(), &idle, 60_999);
    assert!(p.retire.is_empty(), "not idle for 60 s yet: {p:?}");
    let p = plan(&s, &[], &BTreeSet::new(), &idle, 61_000);
    let other = if busy == "p-1" { "p-2" } else { "p-1" };
    assert_eq!(p.retire, vec![other.to_string()]);
    // Removing a node with a live lease is refused; an idle one goes.
    let err = s
        .apply(&admin(61_001, Command::RemoveNode { name: busy.clone() }))
        .unwrap_err();
    assert!(err.to_string().contains("holds live leases"), "{err}");
    s.apply(&admin(61_002, Command::RemoveNode { name: other.into() }))
        .unwrap();
    assert!(!s.nodes.contains_key(other));
}

#[test]
fn joined_nodes_settle_inflight_and_late_ones_are_given_up() {
    let mut s = with_pools(vec![pool("p", 4000, 1.0, 3, None)]);
    let mut known = BTreeSet::new();
    let mut flying = vec![
        Inflight {
            pool: "p".into(),
            name: Some("p-1".into()),
            since: 0,
        },
        Inflight {
            pool: "p".into(),
            name: None,
            since: 0,
        },
        Inflight {
            pool: "p".into(),
            name: None,
            since: 0,
        },
    ];
    let timeouts = BTreeMap::from([("p".to_string(), 10_000)]);
    node(&mut s, 2, "p-1", "p", 4000);
    node(&mut s, 2, "somebody", "p", 4000);
    let late = settle_inflight(&s, &mut flying, &mut known, &timeouts, 5_000);
    assert!(late.is_empty());
    assert_eq!(
        flying.len(),
        1,
        "the named node and one unnamed settled: {flying:?}"
    );
    let late = settle_inflight(&s, &mut flying, &mut known, &timeouts, 10_001);
    assert_eq!((late.len(), flying.len()), (1, 0));
}

#[test]
fn a_deadline_request_scales_a_dearer_pool_only_once_its_cheap_phase_is_over() {
    let mut s = with_pools(vec![pool("dear", 4000, 2.0, 2, None)]);
    // A cheap node, busy for now.
    s.apply(&admin(
        2,
        Command::RegisterNode {
            name: "cheap".into(),
            capacity: res(2000),
            labels: Default::default(),
            pool: "default".into(),
            cost_per_hour: 0.1,
            ttl_ms: None,
            agent: None,
        },
    ))
    .unwrap();
    ask(&mut s, 3, 2000, 1, None);
    let mut spec = LeaseSpec::simple(res(2000), 60_000);
    spec.resources.memory_bytes = 0;
    spec.deadline = Some(4 + 60_000 + 100_000); // 100 s of room: cheap for 50 s
    let l = match s.apply(&admin(4, Command::RequestLease(spec))) {
        Ok(Applied::Lease(l)) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!((l.state, l.cheap_until), (LeaseState::Pending, 4 + 50_000));
    let p = plan(&s, &[], &BTreeSet::new(), &BTreeMap::new(), 1_000);
    assert!(p.grow.is_empty(), "still waiting for the cheap node: {p:?}");
    s.apply(&admin(4 + 50_000, Command::Tick)).unwrap();
    let p = plan(&s, &[], &BTreeSet::new(), &BTreeMap::new(), 4 + 50_000);
    assert_eq!(p.grow.len(), 1, "{p:?}");
    assert_eq!(
        (p.grow[0].pool.as_str(), &p.grow[0].demand),
        ("dear", &vec![l.id])
    );
}
