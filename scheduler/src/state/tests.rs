use super::*;

fn p(at: Millis, principal: &str, key: Option<&str>, cmd: Command) -> Proposal {
    Proposal {
        at,
        principal: principal.into(),
        admin: principal == "root",
        key: key.map(String::from),
        hint: None,
        cmd,
    }
}

fn register(name: &str, cpu: u64) -> Command {
    Command::RegisterNode {
        name: name.into(),
        capacity: Resources {
            cpu_millis: cpu,
            memory_bytes: 1 << 30,
            ..Resources::default()
        },
        labels: Default::default(),
        pool: "default".into(),
        cost_per_hour: 0.5,
        ttl_ms: None,
        agent: None,
    }
}

fn priced(name: &str, cpu: u64, cost: f64, ttl_ms: Option<u64>) -> Command {
    Command::RegisterNode {
        name: name.into(),
        capacity: Resources {
            cpu_millis: cpu,
            memory_bytes: 1 << 30,
            ..Resources::default()
        },
        labels: Default::default(),
        pool: "default".into(),
        cost_per_hour: cost,
        ttl_ms,
        agent: None,
    }
}

fn spec(cpu: u64, ms: u64) -> LeaseSpec {
    LeaseSpec::simple(
        Resources {
            cpu_millis: cpu,
            ..Resources::default()
        },
        ms,
    )
}

fn lease(cpu: u64, ms: u64) -> Command {
    Command::RequestLease(spec(cpu, ms))
}

fn queued(cpu: u64, ms: u64, wait: u64, priority: i32) -> Command {
    let mut s = spec(cpu, ms);
    s.wait_ms = wait;
    s.priority = priority;
    Command::RequestLease(s)
}

fn got(o: Outcome) -> Lease {
    match o {
        Ok(Applied::Lease(l)) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn tick(s: &mut State, at: Millis) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    match s.apply(&p(at, "charter:tick", None, Command::Tick)) {
        Ok(Applied::Ticked {
            expired,
            timed_out,
            granted,
            ..
        }) => (expired, timed_out, granted),
        other => panic!("expected a tick, got {other:?}"),
    }
}

#[test]
fn grants_never_overcommit_and_tokens_grow() {
    let mut s = State::new(Default::default());
    s.apply(&p(10, "ann", None, register("n1", 2000))).unwrap();
    let a = got(s.apply(&p(20, "ann", None, lease(1500, 1000))));
    assert_eq!((a.granted_at, a.expires_at, a.fencing_token), (20, 1020, 1));
    assert_eq!(a.nodes, vec!["n1".to_string()]);
    let refused = s.apply(&p(30, "bob", None, lease(1000, 1000)));
    assert!(
        matches!(refused, Err(Refusal::NoCapacity { .. })),
        "{refused:?}"
    );
    let b = got(s.apply(&p(40, "bob", None, lease(500, 1000))));
    assert_eq!(b.fencing_token, 2);
    assert_eq!(s.nodes["n1"].allocated.cpu_millis, 2000);
    s.apply(&p(50, "ann", None, Command::ReleaseLease { id: a.id }))
        .unwrap();
    let c = got(s.apply(&p(60, "bob", None, lease(1000, 1000))));
    assert_eq!(c.fencing_token, 3);
    assert_eq!(s.nodes["n1"].allocated.cpu_millis, 1500);
}

/// Grants, releases and expiries move a node's entries in placement's
/// indexes (free CPU, price, each label) without rebuilding them: after
/// each, they equal the indexes built from the nodes.
#[test]
fn grants_and_ends_keep_placements_indexes_exact() {
    let mut s = State::new(Default::default());
    for (i, cost) in [(0, 0.5), (1, 0.9), (2, 0.5)] {
        let mut cmd = priced(&format!("n{i}"), 4000, cost, None);
        if let Command::RegisterNode { labels, .. } = &mut cmd {
            labels.insert("zone".into(), format!("z{}", i % 2));
            labels.insert("gpu".into(), "a100".into());
        }
        s.apply(&p(10, "root", None, cmd)).unwrap();
    }
    let agrees = |s: &State, what: &str| {
        let want = node_indexes(s.nodes.values());
        assert_eq!(s.nodes.index, want, "after {what}");
    };
    let mut ids = Vec::new();
    for (i, cpu) in [1500, 700, 2500, 300, 1000].into_iter().enumerate() {
        let at = 20 + i as Millis;
        let l = got(s.apply(&p(at, "ann", None, lease(cpu, 100 + 10 * i as u64))));
        agrees(&s, &format!("granting {cpu} millicores"));
        ids.push(l.id);
    }
    s.apply(&p(40, "ann", None, Command::ReleaseLease { id: ids[1] }))
        .unwrap();
    agrees(&s, "a release");
    let (expired, _, _) = tick(&mut s, 135);
    assert!(!expired.is_empty(), "a lease expired at 135");
    agrees(&s, "expiries");
    assert!(
        s.nodes.values().any(|n| n.allocated.cpu_millis > 0),
        "some leases still hold cpu"
    );
}

#[test]
fn idempotent_keys_return_the_first_outcome() {
    let mut s = State::new(Default::default());
    s.apply(&p(1, "ann", None, register("n1", 4000))).unwrap();
    let first = s.apply(&p(2, "ann", Some("k1"), lease(1000, 1000)));
    let again = s.apply(&p(3, "ann", Some("k1"), lease(1000, 1000)));
    assert_eq!(first, again);
    assert_eq!(s.leases.len(), 1);
    assert_eq!(s.nodes["n1"].allocated.cpu_millis, 1000);
    // Keys are per principal: bob's k1 is another request.
    got(s.apply(&p(4, "bob", Some("k1"), lease(1000, 1000))));
    assert_eq!(s.leases.len(), 2);
}

#[test]
fn principals_are_isolated_and_admins_are_not() {
    let mut s = State::new(Default::default());
    s.apply(&p(1, "ann", None, register("n1", 4000))).unwrap();
    let l = got(s.apply(&p(2, "ann", None, lease(1000, 1000))));
    for cmd in [
        Command::ReleaseLease { id: l.id },
        Command::RenewLease {
            id: l.id,
            duration_ms: 10,
        },
    ] {
        let r = s.apply(&p(3, "bob", None, cmd));
        assert!(matches!(r, Err(Refusal::NotYours { .. })), "{r:?}");
    }
    let r = s.apply(&p(3, "ann", None, Command::RevokeLease { id: l.id }));
    assert!(
        matches!(r, Err(Refusal::Denied { .. })),
        "only admins revoke: {r:?}"
    );
    assert_eq!(s.leases[&l.id].state, LeaseState::Granted);
    let r = got(s.apply(&p(4, "root", None, Command::RevokeLease { id: l.id })));
    assert_eq!(r.state, LeaseState::Revoked);
    let again = s.apply(&p(5, "ann", None, Command::ReleaseLease { id: l.id }));
    assert!(matches!(again, Err(Refusal::Ended { .. })), "{again:?}");
}

#[test]
fn ticks_expire_due_leases_and_time_never_goes_back() {
    let mut s = State::new(Default::default());
    s.apply(&p(100, "ann", None, register("n1", 4000))).unwrap();
    let a = got(s.apply(&p(100, "ann", None, lease(1000, 50))));
    let b = got(s.apply(&p(100, "ann", None, lease(1000, 500))));
    assert_eq!(s.next_due(), Some(150));
    // A proposal stamped earlier (an old leader's clock) does not move time back.
    s.apply(&p(90, "ann", None, register("n2", 1000))).unwrap();
    assert_eq!(s.time, 100);
    assert_eq!(tick(&mut s, 149), (vec![], vec![], vec![]));
    assert_eq!(tick(&mut s, 150), (vec![a.id], vec![], vec![]));
    assert_eq!(s.leases[&a.id].state, LeaseState::Expired);
    assert_eq!(s.leases[&b.id].state, LeaseState::Granted);
    assert_eq!(s.nodes["n1"].allocated.cpu_millis, 1000);
    assert_eq!(s.next_due(), Some(600));
}

#[test]
fn the_queue_grants_by_priority_then_age_when_capacity_frees() {
    let mut s = State::new(Default::default());
    s.apply(&p(0, "root", None, register("n1", 2000))).unwrap();
    let big = got(s.apply(&p(0, "ann", None, lease(2000, 100))));
    let low = got(s.apply(&p(1, "ann", None, queued(1000, 1000, 10_000, 0))));
    let old_high = got(s.apply(&p(2, "bob", None, queued(1000, 1000, 10_000, 5))));
    let new_high = got(s.apply(&p(3, "bob", None, queued(1000, 1000, 10_000, 5))));
    for l in [&low, &old_high, &new_high] {
        assert_eq!(l.state, LeaseState::Pending);
        assert_eq!(l.fencing_token, 0);
    }
    // The first lease expires: the two priority-5 requests fit, oldest first.
    let (expired, timed_out, granted) = tick(&mut s, 100);
    assert_eq!((expired, timed_out), (vec![big.id], vec![]));
    assert_eq!(granted, vec![old_high.id, new_high.id]);
    assert!(s.leases[&old_high.id].fencing_token < s.leases[&new_high.id].fencing_token);
    assert_eq!(s.leases[&low.id].state, LeaseState::Pending);
    // A release hands capacity to the queue at once, in the same apply.
    s.apply(&p(
        150,
        "bob",
        None,
        Command::ReleaseLease { id: old_high.id },
    ))
    .unwrap();
    assert_eq!(s.leases[&low.id].state, LeaseState::Granted);
    assert_eq!(s.leases[&low.id].granted_at, 150);
}

#[test]
fn queued_requests_time_out_and_new_nodes_take_the_queue() {
    let mut s = State::new(Default::default());
    s.apply(&p(0, "root", None, register("n1", 1000))).unwrap();
    got(s.apply(&p(0, "ann", None, lease(1000, 100_000))));
    let short = got(s.apply(&p(0, "ann", None, queued(1000, 1000, 50, 0))));
    let long = got(s.apply(&p(0, "ann", None, queued(1000, 1000, 5_000, 0))));
    assert_eq!(s.next_due(), Some(50));
    assert_eq!(tick(&mut s, 60), (vec![], vec![short.id], vec![]));
    assert_eq!(s.leases[&short.id].state, LeaseState::TimedOut);
    // A node joins: the waiting request is granted in the same apply.
    s.apply(&p(70, "root", None, register("n2", 1000))).unwrap();
    assert_eq!(s.leases[&long.id].state, LeaseState::Granted);
    assert_eq!(s.leases[&long.id].nodes, vec!["n2".to_string()]);
    // A request no node could ever hold is refused at once, even if it would wait.
    let r = s.apply(&p(80, "ann", None, queued(8000, 1000, 5_000, 0)));
    match r {
        Err(Refusal::NoCapacity { reason }) => {
            assert!(
                reason.starts_with("no node could ever hold it: n1: needs 8 cores, 1 free"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn renewals_stop_at_the_max_total() {
    let mut s = State::new(Default::default());
    s.apply(&p(0, "root", None, register("n1", 1000))).unwrap();
    let mut sp = spec(500, 1000);
    sp.max_total_ms = 2500;
    let l = got(s.apply(&p(0, "ann", None, Command::RequestLease(sp))));
    assert_eq!(l.expires_at, 1000);
    let r = got(s.apply(&p(
        800,
        "ann",
        None,
        Command::RenewLease {
            id: l.id,
            duration_ms: 1000,
        },
    )));
    assert_eq!(r.expires_at, 1800);
    assert_eq!(
        r.fencing_token, l.fencing_token,
        "a renewal keeps the holder's token"
    );
    let r = got(s.apply(&p(
        1700,
        "ann",
        None,
        Command::RenewLease {
            id: l.id,
            duration_ms: 5000,
        },
    )));
    assert_eq!(r.expires_at, 2500, "capped at granted_at + max total");
    let r = s.apply(&p(
        1800,
        "ann",
        None,
        Command::RenewLease {
            id: l.id,
            duration_ms: 100,
        },
    ));
    assert!(
        matches!(&r, Err(Refusal::Limit { reason }) if reason.contains("max total")),
        "{r:?}"
    );
    assert_eq!(s.next_due(), Some(2500));
}

#[test]
fn draining_stops_new_grants_and_undraining_serves_the_queue() {
    let mut s = State::new(Default::default());
    s.apply(&p(0, "root", None, register("n1", 2000))).unwrap();
    let held = got(s.apply(&p(0, "ann", None, lease(1000, 10_000))));
    let r = s.apply(&p(
        1,
        "ann",
        None,
        Command::SetDraining {
            name: "n1".into(),
            draining: true,
        },
    ));
    assert!(matches!(r, Err(Refusal::Denied { .. })), "{r:?}");
    s.apply(&p(
        1,
        "root",
        None,
        Command::SetDraining {
            name: "n1".into(),
            draining: true,
        },
    ))
    .unwrap();
    assert_eq!(
        s.leases[&held.id].state,
        LeaseState::Granted,
        "drain keeps leases"
    );
    let waiting = got(s.apply(&p(2, "ann", None, queued(500, 1000, 10_000, 0))));
    assert_eq!(waiting.state, LeaseState::Pending);
    s.apply(&p(
        3,
        "root",
        None,
        Command::SetDraining {
            name: "n1".into(),
            draining: false,
        },
    ))
    .unwrap();
    assert_eq!(s.leases[&waiting.id].state, LeaseState::Granted);
}

#[test]
fn gang_requests_get_all_nodes_or_none_and_show_their_cost() {
    let mut s = State::new(Default::default());
    for n in ["n1", "n2"] {
        s.apply(&p(0, "root", None, register(n, 1000))).unwrap();
    }
    let mut sp = spec(1000, 3_600_000);
    sp.count = 3;
    let r = s.apply(&p(0, "ann", None, Command::RequestLease(sp.clone())));
    assert!(matches!(r, Err(Refusal::NoCapacity { .. })), "{r:?}");
    assert_eq!(
        s.nodes["n1"].allocated.cpu_millis, 0,
        "none of a refused gang is held"
    );
    sp.count = 2;
    let l = got(s.apply(&p(0, "ann", None, Command::RequestLease(sp))));
    assert_eq!(l.nodes, vec!["n1".to_string(), "n2".to_string()]);
    assert_eq!(l.cost_per_hour, 1.0);
    assert!(
        (l.cost() - 1.0).abs() < 1e-9,
        "two nodes at 0.5/h for an hour: {}",
        l.cost()
    );
}

#[test]
fn snapshot_bytes_round_trip() {
    let mut s = State::new([(1, "127.0.0.1:1".to_string())].into());
    s.apply(&p(1, "ann", Some("x"), register("n1", 4000)))
        .unwrap();
    got(s.apply(&p(2, "ann", Some("y"), lease(1000, 1000))));
    got(s.apply(&p(2, "ann", Some("z"), queued(4000, 1000, 100, 3))));
    let back = State::from_bytes(&s.to_bytes()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn quotas_refuse_with_a_clear_message_and_change_nothing() {
    let mut s = State::new(Default::default());
    s.apply(&p(0, "root", None, register("n1", 8000))).unwrap();
    let q = Quota {
        max_cpu_millis: Some(3000),
        max_leases: Some(2),
        max_duration_ms: Some(3_600_000),
    };
    let r = s.apply(&p(
        0,
        "ann",
        None,
        Command::SetQuota {
            principal: "*".into(),
            quota: q.clone(),
        },
    ));
    assert!(
        matches!(r, Err(Refusal::Denied { .. })),
        "only admins set quotas: {r:?}"
    );
    s.apply(&p(
        0,
        "root",
        None,
        Command::SetQuota {
            principal: "ann".into(),
            quota: q,
        },
    ))
    .unwrap();
    let deny = |r: Outcome, want: &str| match r {
        Err(Refusal::Denied { reason }) => assert!(reason.contains(want), "{reason}"),
        other => panic!("expected a quota refusal, got {other:?}"),
    };
    deny(
        s.apply(&p(1, "ann", None, lease(1000, 7_200_000))),
        "at most 3600 s, asked for 7200 s",
    );
    got(s.apply(&p(1, "ann", None, lease(2000, 1000))));
    deny(
        s.apply(&p(2, "ann", None, lease(2000, 1000))),
        "at most 3 cores; holds 2, asked for 2 more",
    );
    got(s.apply(&p(2, "ann", None, lease(1000, 1000))));
    deny(
        s.apply(&p(3, "ann", None, lease(100, 1000))),
        "at most 2 leases at once and holds 2",
    );
    assert_eq!(s.leases.len(), 2, "refusals change nothing");
    // Others have no quota.
    got(s.apply(&p(3, "bob", None, lease(4000, 7_200_000))));
}

#[test]
fn a_node_that_misses_its_heartbeat_is_down_and_its_leases_lost() {
    let mut s = State::new(Default::default());
    s.apply(&p(0, "root", None, priced("a", 2000, 1.0, Some(1000))))
        .unwrap();
    s.apply(&p(0, "root", None, priced("b", 2000, 1.0, None)))
        .unwrap();
    let on_a = got(s.apply(&p(0, "ann", None, lease(2000, 100_000))));
    assert_eq!(on_a.nodes, vec!["a".to_string()]);
    // Down at TTL (1 s) plus the margin (2 s) its agent stops work in.
    assert_eq!(s.next_due(), Some(3000));
    s.apply(&p(
        900,
        "root",
        None,
        Command::Heartbeat { name: "a".into() },
    ))
    .unwrap();
    assert_eq!(s.next_due(), Some(3900));
    s.apply(&p(3899, "charter:tick", None, Command::Tick))
        .unwrap();
    assert_eq!(
        s.nodes["a"].state,
        NodeState::Ready,
        "not before TTL + margin"
    );
    match s.apply(&p(3900, "charter:tick", None, Command::Tick)) {
        Ok(Applied::Ticked { down, lost, .. }) => {
            assert_eq!((down, lost), (vec!["a".to_string()], vec![on_a.id]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.nodes["a"].state, NodeState::Down);
    assert_eq!(s.leases[&on_a.id].state, LeaseState::Lost);
    assert_eq!(s.nodes["a"].allocated.cpu_millis, 0);
    // Nothing is granted on a down node; a heartbeat brings it back.
    let waiting = got(s.apply(&p(4000, "ann", None, queued(2000, 1000, 60_000, 0))));
    assert_eq!(waiting.nodes, vec!["b".to_string()]);
    let next = got(s.apply(&p(4000, "ann", None, queued(2000, 1000, 60_000, 0))));
    assert_eq!(next.state, LeaseState::Pending);
    s.apply(&p(
        4100,
        "root",
        None,
        Command::Heartbeat { name: "a".into() },
    ))
    .unwrap();
    assert_eq!(s.nodes["a"].state, NodeState::Ready);
    assert_eq!(s.leases[&next.id].state, LeaseState::Granted);
}

#[test]
fn a_deadline_waits_for_cheap_capacity_then_takes_what_there_is() {
    let mut s = State::new(Default::default());
    s.apply(&p(0, "root", None, priced("cheap", 1000, 1.0, None)))
        .unwrap();
    s.apply(&p(0, "root", None, priced("dear", 1000, 5.0, None)))
        .unwrap();
    got(s.apply(&p(0, "bob", None, lease(1000, 100_000))));
    assert_eq!(
        s.nodes["cheap"].allocated.cpu_millis, 1000,
        "bob holds the cheap node"
    );
    // Finish within 10 s of work by t=20 s: latest start 10 s; cheap-only until 5 s.
    let mut sp = spec(1000, 10_000);
    sp.deadline = Some(20_000);
    let l = got(s.apply(&p(0, "ann", None, Command::RequestLease(sp.clone()))));
    assert_eq!(
        l.state,
        LeaseState::Pending,
        "waits although the dear node is free"
    );
    assert_eq!((l.cheap_until, l.wait_until), (5_000, 10_000));
    // `lease why` names the free pricier node it leaves alone, and until when.
    let (lines, summary) = s.why_pending(&l);
    assert!(
        summary.contains("until 1970-01-01T00:00:05Z (half the time its deadline leaves) it takes only the cheapest capacity, at most 1/h; free now but pricier: dear (5/h)"),
        "{summary}"
    );
    assert!(summary.contains("first in the queue"), "{summary}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cheap: needs 1 cores, 0 free")),
        "{lines:?}"
    );
    assert_eq!(s.next_due(), Some(5_000));
    let (_, _, granted) = tick(&mut s, 5_000);
    assert_eq!(
        granted,
        vec![l.id],
        "past the halfway point it takes the dear node"
    );
    assert_eq!(s.leases[&l.id].nodes, vec!["dear".to_string()]);
    assert_eq!(s.leases[&l.id].cost_per_hour, 5.0);
    // A deadline that cannot be met is refused at once.
    sp.deadline = Some(15_000);
    let r = s.apply(&p(6_000, "ann", None, Command::RequestLease(sp)));
    assert!(matches!(r, Err(Refusal::Invalid { .. })), "{r:?}");
}

#[test]
fn apply_rechecks_the_leaders_placement_and_never_overcommits() {
    let mut s = State::new(Default::default());
    for n in ["a", "b", "c"] {
        s.apply(&p(0, "root", None, register(n, 2000))).unwrap();
    }
    let hinted = |nodes: &[&str], cpu: u64, count: u32| {
        let mut sp = spec(cpu, 1000);
        sp.count = count;
        let mut pr = p(1, "ann", None, Command::RequestLease(sp));
        pr.hint = Some(nodes.iter().map(|n| n.to_string()).collect());
        pr
    };
    // A valid hint is taken as is (binpack alone would pick "a").
    let l = got(s.apply(&hinted(&["c"], 1500, 1)));
    assert_eq!(l.nodes, vec!["c".to_string()]);
    // A hint that no longer fits (the leader raced itself) is re-placed.
    let l = got(s.apply(&hinted(&["c"], 1500, 1)));
    assert_eq!(l.nodes, vec!["a".to_string()]);
    // Wrong count, duplicates and unknown nodes are ignored the same way.
    for bad in [
        hinted(&["b"], 100, 2),
        hinted(&["b", "b"], 100, 2),
        hinted(&["zz"], 100, 1),
    ] {
        let l = got(s.apply(&bad));
        assert!(!l.nodes.iter().any(|n| n == "zz"));
        assert_eq!(l.nodes.len(), l.spec.count as usize);
    }
    for n in s.nodes.values() {
        assert!(
            n.allocated.fits_in(&n.capacity),
            "{} over-committed",
            n.name
        );
    }
}

#[test]
fn a_new_leader_term_gives_every_node_a_full_ttl_before_it_is_down() {
    let mut s = State::new(BTreeMap::new());
    s.apply(&p(0, "root", None, priced("n1", 1000, 1.0, Some(1_000))))
        .unwrap();
    // No leader for 5 s: the node's heartbeats had nowhere to go. The new
    // term's first entry (at 5 s) restarts its TTL.
    s.observe_term(2, 5_000);
    let (_, _, _) = tick(&mut s, 5_500);
    assert_eq!(s.nodes["n1"].state, NodeState::Ready);
    tick(&mut s, 7_999);
    assert_eq!(s.nodes["n1"].state, NodeState::Ready, "TTL + margin: 8 s");
    tick(&mut s, 8_001);
    assert_eq!(s.nodes["n1"].state, NodeState::Down);
    // An entry of a term already seen changes nothing.
    s.apply(&p(
        8_100,
        "root",
        None,
        Command::Heartbeat { name: "n1".into() },
    ))
    .unwrap();
    s.observe_term(2, 9_000);
    tick(&mut s, 11_101);
    assert_eq!(s.nodes["n1"].state, NodeState::Down);
}

fn cron_jobs(owner: &str, text: &str) -> Vec<JobDef> {
    match charter_config::load_with("c.toml", text, &|_, _| Ok(())) {
        Ok(charter_config::AnyConfig::Cron(c)) => c
            .jobs
            .into_iter()
            .map(|config| JobDef {
                config: (&config).into(),
                owner: owner.into(),
            })
            .collect(),
        other => panic!("not a cron file: {other:?}"),
    }
}

const TWO_JOBS: &str = r#"
[[job]]
name = "a"
schedule = "* * * * *"
[job.task]
command = ["true"]
cpu = 1
for = "1m"

[[job]]
name = "b"
schedule = "* * * * *"
[job.task]
command = ["true"]
cpu = 1
for = "1m"
"#;

fn fire(job: &str, at: Millis) -> Command {
    let mut lease = spec(1000, 60_000);
    lease.wait_ms = 60_000;
    Command::CronFire(CronFire {
        job: job.into(),
        scheduled_at: at,
        manual: false,
        replaces: Vec::new(),
        lease: Box::new(lease),
        task: Box::new(TaskSpec {
            command: vec!["true".into()],
            ..TaskSpec::default()
        }),
    })
}

fn run_of(o: Outcome) -> CronRun {
    match o {
        Ok(Applied::CronRun(r)) => *r,
        other => panic!("expected a run, got {other:?}"),
    }
}

#[test]
fn a_cron_tick_fires_once_whoever_proposes_it() {
    let mut s = State::new(BTreeMap::new());
    s.apply(&p(1, "root", None, register("n1", 4000))).unwrap();
    let applied = s.apply(&p(
        2,
        "ann",
        None,
        Command::CronApply {
            version: "v1".into(),
            jobs: cron_jobs("ann", TWO_JOBS),
        },
    ));
    assert!(matches!(applied, Ok(Applied::CronApplied { ref changes }) if changes.len() == 2));
    // Scheduled fires are Hydra's.
    assert!(s.apply(&p(60_000, "ann", None, fire("a", 60_000))).is_err());
    let first = run_of(s.apply(&p(60_005, "root", None, fire("a", 60_000))));
    assert_eq!(first.state, RunState::Running);
    assert_eq!(first.fired_at, 60_005);
    let task = first.task.expect("a task");
    assert_eq!(s.tasks[&task].principal, "ann");
    // A second controller, a retry, a new leader: the same run, no new task.
    let again = run_of(s.apply(&p(60_900, "root", None, fire("a", 60_000))));
    assert_eq!(again, first);
    let skipped = run_of(s.apply(&p(
        60_950,
        "root",
        None,
        Command::CronSkip {
            job: "a".into(),
            scheduled_at: 60_000,
            reason: "late".into(),
        },
    )));
    assert_eq!(skipped, first, "a fired tick is not skipped after the fact");
    assert_eq!(s.tasks.len(), 1);
    // The task's end settles the run.
    s.apply(&p(
        61_000,
        "root",
        None,
        Command::ReportTask(TaskReport {
            id: task,
            node: "n1".into(),
            state: TaskState::Failed,
            exit_code: Some(3),
            starts: 1,
            health: HealthState::Unchecked,
            message: "exited with 3".into(),
            usage: None,
            ports: Default::default(),
            artifact: String::new(),
        }),
    ))
    .unwrap();
    let run = &s.cron.runs["a"][&60_000];
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.exit_code, Some(3));
    assert_eq!(run.duration_ms(), Some(995));
    assert!(run.reason.contains("exited with 3"), "{}", run.reason);
}

#[test]
fn cron_apply_adds_changes_deletes_and_guards_other_principals_jobs() {
    let mut s = State::new(BTreeMap::new());
    let apply = |s: &mut State, who: &str, text: &str| {
        s.apply(&p(
            5,
            who,
            None,
            Command::CronApply {
                version: "v".into(),
                jobs: cron_jobs(who, text),
            },
        ))
    };
    apply(&mut s, "ann", TWO_JOBS).unwrap();
    let only_a = &TWO_JOBS[..TWO_JOBS.find("[[job]]\nname = \"b\"").unwrap()];
    let changed = only_a.replace("* * * * *", "*/5 * * * *");
    let plan = s
        .cron_plan_apply("ann", false, &cron_jobs("ann", &changed))
        .unwrap();
    let kinds: Vec<(&str, &str)> = plan
        .iter()
        .map(|c| (c.job.as_str(), c.change.as_str()))
        .collect();
    assert_eq!(kinds, [("a", "changed"), ("b", "deleted")]);
    assert_eq!(s.cron.jobs["a"].since, 5);
    s.time = 50;
    apply(&mut s, "ann", &changed).unwrap();
    assert_eq!(s.cron.jobs.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(s.cron.jobs["a"].config.schedule, "*/5 * * * *");
    assert_eq!(
        s.cron.jobs["a"].since, 50,
        "a new schedule starts when applied: its earlier ticks are not missed ones"
    );
    // Bob cannot take over ann's job, nor give his runs to ann.
    assert!(matches!(
        apply(&mut s, "bob", only_a),
        Err(Refusal::Denied { .. })
    ));
    let mut as_ann = cron_jobs("ann", TWO_JOBS);
    as_ann.truncate(1);
    as_ann[0].config.name = "c".into();
    let r = s.apply(&p(
        6,
        "bob",
        None,
        Command::CronApply {
            version: "v".into(),
            jobs: as_ann,
        },
    ));
    assert!(matches!(r, Err(Refusal::Denied { .. })), "{r:?}");
    assert_eq!(s.cron.jobs.len(), 1);
}

#[test]
fn old_runs_are_trimmed_and_stay_decided() {
    let mut s = State::new(BTreeMap::new());
    s.apply(&p(
        1,
        "root",
        None,
        Command::CronApply {
            version: "v".into(),
            jobs: cron_jobs("root", TWO_JOBS),
        },
    ))
    .unwrap();
    let skip = |at: Millis| Command::CronSkip {
        job: "a".into(),
        scheduled_at: at,
        reason: "test".into(),
    };
    for i in 0..(RUNS_KEPT as i64 + 5) {
        s.apply(&p(10 + i, "root", None, skip(1_000 + i))).unwrap();
    }
    assert_eq!(s.cron.runs["a"].len(), RUNS_KEPT);
    assert_eq!(s.cron.jobs["a"].trimmed_to, Some(1_004));
    // A stale controller re-deciding a dropped tick is refused, not re-run.
    assert!(s.apply(&p(9_999, "root", None, fire("a", 1_002))).is_err());
    assert!(s.tasks.is_empty());
}

fn gpu_node(name: &str, gpus: u32) -> Command {
    Command::RegisterNode {
        name: name.into(),
        capacity: Resources {
            cpu_millis: 8000,
            memory_bytes: 1 << 30,
            gpus,
            ..Resources::default()
        },
        labels: Default::default(),
        pool: "default".into(),
        cost_per_hour: 1.0,
        ttl_ms: None,
        agent: None,
    }
}

fn gpu_lease(gpus: u32) -> Command {
    let mut s = spec(1000, 60_000);
    s.resources.gpus = gpus;
    Command::RequestLease(s)
}

#[test]
fn gpus_are_handed_out_by_index_and_never_twice() {
    let mut s = State::new(BTreeMap::new());
    s.apply(&p(1, "root", None, gpu_node("g", 4))).unwrap();
    let a = got(s.apply(&p(2, "ann", None, gpu_lease(2))));
    let b = got(s.apply(&p(3, "ann", None, gpu_lease(1))));
    assert_eq!(a.gpu_ids["g"], [0, 1]);
    assert_eq!(b.gpu_ids["g"], [2]);
    s.apply(&p(4, "ann", None, Command::ReleaseLease { id: a.id }))
        .unwrap();
    let c = got(s.apply(&p(5, "ann", None, gpu_lease(3))));
    assert_eq!(
        c.gpu_ids["g"],
        [0, 1, 3],
        "freed indices are reused, held ones skipped"
    );
    let none = got(s.apply(&p(6, "ann", None, lease(1000, 60_000))));
    assert!(none.gpu_ids.is_empty());
}

#[test]
fn a_node_that_shrank_below_its_leases_takes_no_grant_until_they_end() {
    let mut s = State::new(BTreeMap::new());
    s.apply(&p(1, "root", None, gpu_node("g", 2))).unwrap();
    let a = got(s.apply(&p(2, "ann", None, gpu_lease(2))));
    // Re-registered with no GPUs while a lease holds two: a lease that
    // needs none used to pass placement and trip the over-commit check in
    // apply (every member panicking on the same entry).
    s.apply(&p(3, "root", None, gpu_node("g", 0))).unwrap();
    let r = s.apply(&p(4, "ann", None, lease(1000, 60_000)));
    match r {
        Err(Refusal::NoCapacity { reason }) => {
            assert!(reason.contains("re-registered smaller"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    s.apply(&p(5, "ann", None, Command::ReleaseLease { id: a.id }))
        .unwrap();
    got(s.apply(&p(6, "ann", None, lease(1000, 60_000))));
}

// ---------------------------------------------------------------- deployments

fn app_state() -> State {
    let mut s = State::new(Default::default());
    s.apply(&p(1, "root", None, register("n1", 4_000))).unwrap();
    let text = include_str!("../../../examples/app/app.toml");
    let Ok(charter_config::AnyConfig::App(config)) = charter_config::load("app.toml", text) else {
        panic!("the example app loads");
    };
    s.apply(&p(
        2,
        "ann",
        None,
        Command::AppApply {
            config: Box::new((&*config).into()),
            version: "v".into(),
        },
    ))
    .unwrap();
    s
}

fn trigger(commit: &str, delivery: &str) -> Command {
    Command::DeployTrigger {
        app: "hello".into(),
        commit: commit.into(),
        trigger: Trigger::Webhook,
        delivery: delivery.into(),
    }
}

fn deploy_of(o: Outcome) -> (Option<Deployment>, bool, String) {
    match o.unwrap() {
        Applied::Deploy {
            deployment,
            started,
            reason,
        } => (deployment.map(|d| *d), started, reason),
        other => panic!("not a deployment: {other:?}"),
    }
}

fn step(id: u64, step: DeployStep) -> Command {
    Command::DeployStep(StepReport {
        id,
        step,
        ..StepReport::default()
    })
}

fn one_task() -> Vec<(LeaseSpec, TaskSpec)> {
    vec![(
        spec(500, 60_000),
        TaskSpec {
            command: vec!["true".into()],
            ..TaskSpec::default()
        },
    )]
}

use charter_config::deployment::{DeployStatus, DeployStep, Deployment, Trigger};

#[test]
fn deliveries_and_fingerprints_start_a_deployment_once_and_a_newer_commit_supersedes() {
    let mut s = app_state();
    let (a, b) = ("a".repeat(40), "b".repeat(40));
    let (d, started, _) = deploy_of(s.apply(&p(10, "root", None, trigger(&a, "d1"))));
    let first = d.unwrap();
    assert!(started);
    assert_eq!(first.fingerprint, format!("ann/app/hello@{a}"));
    // The same delivery again: nothing at all.
    let (d, started, why) = deploy_of(s.apply(&p(11, "root", None, trigger(&a, "d1"))));
    assert!(
        d.is_none() && !started && why.contains("seen before"),
        "{why}"
    );
    // The same commit in another delivery: the running deployment.
    let (d, started, why) = deploy_of(s.apply(&p(12, "root", None, trigger(&a, "d2"))));
    assert_eq!((d.map(|d| d.id), started), (Some(first.id), false));
    assert!(why.contains("is being deployed"), "{why}");
    // Its build runs; a newer commit supersedes it and cancels the build.
    s.apply(&p(
        13,
        "root",
        None,
        Command::DeployStep(StepReport {
            id: first.id,
            step: DeployStep::Fetch,
            commit: a.clone(),
            ..StepReport::default()
        }),
    ))
    .unwrap();
    let (d, ..) = deploy_of(s.apply(&p(
        14,
        "root",
        None,
        Command::DeploySubmit {
            id: first.id,
            step: DeployStep::Build,
            tasks: one_task(),
        },
    )));
    let build = d.unwrap().build_task.unwrap();
    assert_eq!(
        s.tasks[&build].principal, "ann",
        "tasks run as the app's owner"
    );
    let (d, started, _) = deploy_of(s.apply(&p(15, "root", None, trigger(&b, "d3"))));
    assert!(started);
    let second = d.unwrap();
    let old = &s.apps.deployments[&first.id];
    assert_eq!(old.status, DeployStatus::Superseded);
    assert!(
        old.reason
            .contains(&format!("superseded by deployment {}", second.id)),
        "{}",
        old.reason
    );
    assert_eq!(s.tasks[&build].state, TaskState::Cancelled);
    // A trigger of the branch head (commit not known yet) supersedes too,
    // and the reason says so instead of ending in "of ".
    let (d, started, _) = deploy_of(s.apply(&p(16, "root", None, trigger("", "d3b"))));
    assert!(started);
    let third = d.unwrap();
    let r = &s.apps.deployments[&second.id].reason;
    assert_eq!(
        r,
        &format!("superseded by deployment {} (of the branch head)", third.id)
    );
    // Others may not trigger ann's app; only admins report steps.
    assert!(s.apply(&p(16, "bob", None, trigger(&a, "d4"))).is_err());
    assert!(
        s.apply(&p(16, "ann", None, step(second.id, DeployStep::Fetch)))
            .is_err()
    );
}

#[test]
fn steps_move_only_the_current_one_and_promotion_then_retirement_swap_versions() {
    let mut s = app_state();
    let walk = |s: &mut State, commit: &str, at: Millis| -> u64 {
        let (d, ..) = deploy_of(s.apply(&p(at, "root", None, trigger(commit, ""))));
        let id = d.unwrap().id;
        // A report for a later step changes nothing.
        let (d, ..) = deploy_of(s.apply(&p(at, "root", None, step(id, DeployStep::Build))));
        assert_eq!(d.unwrap().step(), DeployStep::Fetch);
        s.apply(&p(
            at + 1,
            "root",
            None,
            Command::DeployStep(StepReport {
                id,
                step: DeployStep::Fetch,
                commit: commit.into(),
                ..StepReport::default()
            }),
        ))
        .unwrap();
        s.apply(&p(
            at + 2,
            "root",
            None,
            Command::DeployStep(StepReport {
                id,
                step: DeployStep::Build,
                artifact: "f".repeat(64),
                ..StepReport::default()
            }),
        ))
        .unwrap();
        s.apply(&p(at + 3, "root", None, step(id, DeployStep::Publish)))
            .unwrap();
        let servers = [one_task(), one_task()].concat();
        for _ in 0..2 {
            // Submitted once, however often proposed.
            s.apply(&p(
                at + 4,
                "root",
                None,
                Command::DeploySubmit {
                    id,
                    step: DeployStep::Lease,
                    tasks: servers.clone(),
                },
            ))
            .unwrap();
        }
        assert_eq!(s.apps.deployments[&id].instances.len(), 2);
        for (i, name) in [
            DeployStep::Lease,
            DeployStep::Start,
            DeployStep::AwaitHealthy,
            DeployStep::Promote,
        ]
        .into_iter()
        .enumerate()
        {
            s.apply(&p(at + 5 + i as Millis, "root", None, step(id, name)))
                .unwrap();
        }
        id
    };
    let first = walk(&mut s, &"a".repeat(40), 10);
    assert_eq!(s.apps["hello"].active, Some(first));
    s.apply(&p(20, "root", None, step(first, DeployStep::Retire)))
        .unwrap();
    assert_eq!(s.apps.deployments[&first].status, DeployStatus::Active);
    let old_servers = s.apps.deployments[&first].instances.clone();

    let second = walk(&mut s, &"b".repeat(40), 30);
    assert_eq!(s.apps["hello"].active, Some(second), "promoted");
    for t in &old_servers {
        assert_eq!(
            s.tasks[t].state,
            TaskState::Pending,
            "the old servers serve until retire"
        );
    }
    s.apply(&p(40, "root", None, step(second, DeployStep::Retire)))
        .unwrap();
    assert_eq!(s.apps.deployments[&first].status, DeployStatus::Retired);
    assert_eq!(s.apps.deployments[&second].status, DeployStatus::Active);
    for t in &old_servers {
        assert_eq!(s.tasks[t].state, TaskState::Cancelled);
    }
    // The active commit again: nothing starts.
    let (_, started, why) = deploy_of(s.apply(&p(41, "root", None, trigger(&"b".repeat(40), ""))));
    assert!(!started && why.contains("already active"), "{why}");

    // A failure before promotion rolls back and releases the new servers.
    let (d, ..) = deploy_of(s.apply(&p(50, "root", None, trigger(&"c".repeat(40), ""))));
    let id = d.unwrap().id;
    s.apply(&p(
        51,
        "root",
        None,
        Command::DeployStep(StepReport {
            id,
            step: DeployStep::Fetch,
            failed: true,
            message: "no commit cccc".into(),
            ..StepReport::default()
        }),
    ))
    .unwrap();
    let d = &s.apps.deployments[&id];
    assert_eq!(
        (d.status, d.failed_step, d.reason.as_str()),
        (
            DeployStatus::RolledBack,
            Some(DeployStep::Fetch),
            "no commit cccc"
        )
    );
    assert_eq!(
        s.apps["hello"].active,
        Some(second),
        "the old version stays active"
    );
    // A snapshot keeps all of it.
    let back: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(back.apps.deployments, s.apps.deployments);
}

/// A state with node n1 and the given retention rules in force.
fn retained(r: Retention) -> State {
    let mut s = State::new(Default::default());
    s.apply(&p(1, "root", None, register("n1", 64_000)))
        .unwrap();
    s.apply(&p(1, "root", None, Command::SetRetention(r)))
        .unwrap();
    s
}

#[test]
fn ended_leases_leave_by_age_and_by_count_and_only_when_ended() {
    let mut s = retained(Retention {
        history_ms: 10_000,
        history_max: 3,
        ..Retention::default()
    });
    let ids: Vec<u64> = (0..6)
        .map(|i| got(s.apply(&p(10 + i, "ann", None, lease(100, 60_000)))).id)
        .collect();
    // Five end; the sixth stays live however long it lives.
    for (i, id) in ids[..5].iter().enumerate() {
        s.apply(&p(
            20 + i as i64,
            "ann",
            None,
            Command::ReleaseLease { id: *id },
        ))
        .unwrap();
    }
    s.apply(&p(30, "root", None, Command::Tick)).unwrap();
    let kept: Vec<u64> = s.leases.keys().copied().collect();
    assert_eq!(
        kept,
        [ids[2], ids[3], ids[4], ids[5]],
        "at most 3 ended stay"
    );
    let gone: Vec<u64> = s
        .take_trimmed()
        .iter()
        .map(|t| match t {
            Trimmed::Lease(l) => l.id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(gone, [ids[0], ids[1]], "the oldest went to the history");
    // By age: 10 s after they ended the rest go, at a tick the state asked for.
    assert_eq!(s.next_due(), Some(22 + 10_000));
    s.apply(&p(24 + 10_000, "root", None, Command::Tick))
        .unwrap();
    assert_eq!(s.leases.keys().copied().collect::<Vec<_>>(), [ids[5]]);
    assert_eq!(s.take_trimmed().len(), 3);
    // The live one, its node and the quota counters are untouched.
    assert_eq!(s.nodes["n1"].allocated.cpu_millis, 100);
    assert_eq!(s.leases.held.get("ann"), Some(&(1, 100)));
    // Rebuilding the derived indexes from the serialised state agrees.
    let again = State::from_bytes(&s.to_bytes()).unwrap();
    assert_eq!(again, s);
    assert_eq!(
        (again.leases.ended.clone(), again.leases.held.clone()),
        (s.leases.ended.clone(), s.leases.held.clone())
    );
}

#[test]
fn a_retry_inside_the_window_gets_its_result_and_after_it_is_new() {
    let mut s = retained(Retention {
        keys_ms: 5_000,
        keys_max: 2,
        ..Retention::default()
    });
    let first = got(s.apply(&p(10, "ann", Some("k1"), lease(100, 60_000))));
    // Retried inside the window: the same lease, nothing new.
    let again = got(s.apply(&p(20, "ann", Some("k1"), lease(100, 60_000))));
    assert_eq!((again.id, s.leases.next_id), (first.id, first.id + 1));
    // Another principal's same key is another request.
    let bob = got(s.apply(&p(21, "bob", Some("k1"), lease(100, 60_000))));
    assert_ne!(bob.id, first.id);
    // After the window, the same key is a new request.
    let late = got(s.apply(&p(10 + 5_000, "ann", Some("k1"), lease(100, 60_000))));
    assert_ne!(late.id, first.id, "outside the window: new");
    // By count: a third key pushes out the oldest.
    s.apply(&p(5_020, "ann", Some("k2"), lease(100, 60_000)))
        .unwrap();
    s.apply(&p(5_021, "ann", Some("k3"), lease(100, 60_000)))
        .unwrap();
    assert_eq!(s.keys.len(), 2);
    // A refusal is kept whole and given back as it was.
    let r = s.apply(&p(
        5_030,
        "ann",
        Some("k4"),
        Command::ReleaseLease { id: 999 },
    ));
    assert!(matches!(r, Err(Refusal::NotFound { .. })), "{r:?}");
    s.apply(&p(5_031, "root", None, register("n2", 1_000)))
        .unwrap();
    assert_eq!(
        s.apply(&p(
            5_032,
            "ann",
            Some("k4"),
            Command::ReleaseLease { id: 999 }
        )),
        r
    );
}

#[test]
fn key_times_stay_oldest_first_and_equal_their_rebuild() {
    use super::retention::KeyTimes;
    let mut t = KeyTimes::default();
    let big = u128::MAX - 1; // both halves of the id matter
    let k = |id: u128| super::retention::KeyId::from(id);
    for (at, id) in [(5, 1), (7, big), (6, 3), (7, 2), (1, 9)] {
        t.push(at, k(id));
    }
    let rebuilt: KeyTimes = [(7, 2), (1, 9), (7, big), (5, 1), (6, 3)]
        .into_iter()
        .map(|(at, id)| (at, k(id)))
        .collect();
    assert_eq!(t, rebuilt);
    let mut order = Vec::new();
    while let Some(o) = t.oldest() {
        order.push(o);
        t.pop_oldest();
    }
    let want: Vec<_> = [(1, 9), (5, 1), (6, 3), (7, 2), (7, big)]
        .into_iter()
        .map(|(at, id)| (at, k(id)))
        .collect();
    assert_eq!(order, want);
    assert!(t.is_empty());
}

proptest::proptest! {
    /// Keys pushed in time order, many in the same millisecond, with
    /// trims and rebuilds (a restore from a snapshot) between: the order is
    /// always that of a sorted list of `(at, id)`, and equal to its rebuild.
    #[test]
    fn key_times_match_a_sorted_list_through_pushes_trims_and_rebuilds(
        ops in proptest::collection::vec((0i64..3, proptest::prelude::any::<u128>(), 0u8..10), 1..300)
    ) {
        use super::retention::KeyTimes;
        let (mut t, mut model, mut at) = (KeyTimes::default(), Vec::new(), 0);
        for (dt, id, what) in ops {
            let id = super::retention::KeyId::from(id);
            at += dt;
            match what {
                0 => {
                    t.pop_oldest();
                    if !model.is_empty() {
                        model.remove(0);
                    }
                }
                1 => t = model.iter().copied().collect(),
                _ => {
                    t.push(at, id);
                    let i = model.partition_point(|m| *m <= (at, id));
                    model.insert(i, (at, id));
                }
            }
            proptest::prop_assert_eq!(t.len(), model.len());
            proptest::prop_assert_eq!(t.oldest(), model.first().copied());
        }
        let rebuilt: KeyTimes = model.iter().copied().collect();
        proptest::prop_assert_eq!(&t, &rebuilt);
        let mut order = Vec::new();
        while let Some(o) = t.oldest() {
            order.push(o);
            t.pop_oldest();
        }
        proptest::prop_assert_eq!(order, model);
    }
}

#[test]
fn a_retry_whose_lease_left_names_it() {
    let mut s = retained(Retention {
        history_ms: 0,
        ..Retention::default()
    });
    let l = got(s.apply(&p(10, "ann", Some("k"), lease(100, 60_000))));
    s.apply(&p(11, "ann", None, Command::ReleaseLease { id: l.id }))
        .unwrap();
    s.apply(&p(12, "root", None, Command::Tick)).unwrap();
    assert!(!s.leases.contains_key(&l.id));
    let r = s.apply(&p(13, "ann", Some("k"), lease(100, 60_000)));
    assert_eq!(
        r,
        Err(Refusal::Gone {
            what: "lease".into(),
            id: l.id
        })
    );
    assert_eq!(s.leases.next_id, l.id + 1, "not requested again");
}

#[test]
fn quotas_count_live_leases_without_scanning_history() {
    let mut s = retained(Retention::default());
    s.apply(&p(
        2,
        "root",
        None,
        Command::SetQuota {
            principal: "ann".into(),
            quota: Quota {
                max_leases: Some(2),
                ..Quota::default()
            },
        },
    ))
    .unwrap();
    let a = got(s.apply(&p(3, "ann", None, lease(100, 60_000))));
    got(s.apply(&p(4, "ann", None, lease(100, 60_000))));
    assert!(matches!(
        s.apply(&p(5, "ann", None, lease(100, 60_000))),
        Err(Refusal::Denied { .. })
    ));
    s.apply(&p(6, "ann", None, Command::ReleaseLease { id: a.id }))
        .unwrap();
    got(s.apply(&p(7, "ann", None, lease(100, 60_000))));
    assert_eq!(s.leases.held.get("ann"), Some(&(2, 200)));
}

#[test]
fn why_puts_the_nearest_nodes_first_and_names_the_queue_ahead() {
    let mut s = State::new(Default::default());
    // Nodes "a".."f" lack the label; "z" has it but is full.
    for n in ["a", "b", "c", "d", "e", "f"] {
        s.apply(&p(0, "root", None, register(n, 4000))).unwrap();
    }
    let mut z = register("z", 1000);
    if let Command::RegisterNode { labels, .. } = &mut z {
        labels.insert("q".into(), "1".into());
    }
    s.apply(&p(0, "root", None, z)).unwrap();
    let labelled = |wait: u64| {
        let mut sp = spec(1000, 10_000);
        sp.constraints = vec![Constraint::parse("q=1").unwrap()];
        sp.wait_ms = wait;
        Command::RequestLease(sp)
    };
    got(s.apply(&p(1, "bob", None, labelled(0))));
    let first = got(s.apply(&p(2, "ann", None, labelled(60_000))));
    let second = got(s.apply(&p(3, "ann", None, labelled(60_000))));
    assert_eq!(second.state, LeaseState::Pending);
    let (lines, summary) = s.why_pending(&second);
    // The real blocker comes before six label mismatches, not after them.
    assert!(
        summary.starts_with("pending: z: needs 1 cores, 0 free; a: needs q=1"),
        "{summary}"
    );
    assert!(
        summary.ends_with(&format!(
            "position 2 in the queue, behind lease {}",
            first.id
        )),
        "{summary}"
    );
    assert_eq!(lines[0], "z: needs 1 cores, 0 free");
    // Without --wait, a label no node has is "never", not "busy now".
    let mut sp = spec(1000, 10_000);
    sp.constraints = vec![Constraint::parse("gpu=a100").unwrap()];
    let r = s.apply(&p(4, "ann", None, Command::RequestLease(sp)));
    match r {
        Err(Refusal::NoCapacity { reason }) => {
            assert!(
                reason.starts_with("no node could ever hold it: "),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn lock(name: &str, ttl: u64, limit: u32, wait: u64) -> Command {
    Command::AcquireLock(LockSpec {
        name: name.into(),
        ttl_ms: ttl,
        limit,
        wait_ms: wait,
        holder: "test".into(),
        value: String::new(),
    })
}

fn hold(o: Outcome) -> LockHold {
    match o {
        Ok(Applied::Hold(h)) => *h,
        other => panic!("expected a lock acquisition, got {other:?}"),
    }
}

#[test]
fn a_mutex_goes_to_waiters_in_arrival_order_with_growing_tokens() {
    let mut s = State::new(Default::default());
    let a = hold(s.apply(&p(10, "ann", None, lock("db", 5000, 1, 0))));
    assert_eq!((a.state, a.token, a.expires_at), (HoldState::Held, 1, 5010));
    // Full and no wait: refused, nothing changes.
    let busy = s.apply(&p(20, "bob", None, lock("db", 5000, 1, 0)));
    assert!(matches!(busy, Err(Refusal::Limit { .. })), "{busy:?}");
    let b = hold(s.apply(&p(30, "bob", None, lock("db", 5000, 1, 60_000))));
    let c = hold(s.apply(&p(40, "cat", None, lock("db", 5000, 1, 60_000))));
    assert_eq!((b.state, c.state), (HoldState::Waiting, HoldState::Waiting));
    // A lease in between takes a token from the same sequence.
    s.apply(&p(45, "ann", None, register("n1", 1000))).unwrap();
    assert_eq!(
        got(s.apply(&p(46, "ann", None, lease(100, 1000)))).fencing_token,
        2
    );
    // Only the owner (or an admin) lets go.
    let not_owner = s.apply(&p(50, "bob", None, Command::ReleaseLock { id: a.id }));
    assert!(
        matches!(not_owner, Err(Refusal::Denied { .. })),
        "{not_owner:?}"
    );
    s.apply(&p(60, "ann", None, Command::ReleaseLock { id: a.id }))
        .unwrap();
    let (lk, holds) = s.locks.view("db").unwrap();
    assert_eq!(lk.holders, vec![b.id]);
    assert_eq!(lk.waiters, vec![c.id]);
    assert_eq!((holds[0].token, holds[0].acquired_at), (3, Some(60)));
    s.apply(&p(70, "root", None, Command::ReleaseLock { id: b.id }))
        .unwrap();
    assert_eq!(s.locks.leader("db").unwrap().id, c.id);
    assert_eq!(s.locks.leader("db").unwrap().token, 4);
    s.apply(&p(80, "cat", None, Command::ReleaseLock { id: c.id }))
        .unwrap();
    assert!(
        s.locks.is_empty() && s.locks.holds.is_empty(),
        "an idle lock leaves"
    );
    assert_eq!(s.trimmed.0.len(), 3, "ended acquisitions go to history");
}

#[test]
fn a_lock_expires_at_its_absolute_time_inside_apply() {
    let mut s = State::new(Default::default());
    let a = hold(s.apply(&p(0, "ann", None, lock("job", 2000, 1, 0))));
    let b = hold(s.apply(&p(10, "bob", None, lock("job", 2000, 1, 60_000))));
    // bob renews his place in line; ann stops renewing.
    s.apply(&p(1500, "bob", None, Command::RenewLock { id: b.id }))
        .unwrap();
    assert_eq!(s.next_due(), Some(2000));
    // Any command at or past 2000 sees ann's acquisition end first.
    let late = s.apply(&p(1999, "ann", None, Command::RenewLock { id: a.id }));
    assert_eq!(
        hold(late).expires_at,
        3999,
        "a renewal before expiry counts"
    );
    s.apply(&p(3400, "bob", None, Command::RenewLock { id: b.id }))
        .unwrap();
    let gone = s.apply(&p(4000, "ann", None, Command::RenewLock { id: a.id }));
    assert!(matches!(gone, Err(Refusal::NotFound { .. })), "{gone:?}");
    let leader = s.locks.leader("job").unwrap();
    assert_eq!((leader.id, leader.acquired_at), (b.id, Some(4000)));
    assert!(leader.token > a.token);
    match s.trimmed.0.last() {
        Some(Trimmed::Hold(h)) => assert_eq!(
            (h.id, h.state, h.ended_at),
            (a.id, HoldState::Expired, Some(3999))
        ),
        other => panic!("expected ann's ended acquisition, got {other:?}"),
    }
}

#[test]
fn waiters_time_out_and_dead_waiters_expire() {
    let mut s = State::new(Default::default());
    let a = hold(s.apply(&p(0, "ann", None, lock("x", 60_000, 1, 0))));
    let b = hold(s.apply(&p(0, "bob", None, lock("x", 60_000, 1, 1000))));
    let c = hold(s.apply(&p(0, "cat", None, lock("x", 1000, 1, 120_000))));
    tick(&mut s, 1000);
    assert!(s.locks.holds.get(&b.id).is_none() && s.locks.holds.get(&c.id).is_none());
    let ended: Vec<(u64, HoldState)> = s
        .trimmed
        .0
        .iter()
        .filter_map(|t| match t {
            Trimmed::Hold(h) => Some((h.id, h.state)),
            _ => None,
        })
        .collect();
    assert!(ended.contains(&(b.id, HoldState::TimedOut)), "{ended:?}");
    assert!(ended.contains(&(c.id, HoldState::Expired)), "{ended:?}");
    assert_eq!(s.locks.leader("x").unwrap().id, a.id);
}

#[test]
fn a_semaphore_holds_at_most_its_limit_and_limits_must_agree() {
    let mut s = State::new(Default::default());
    let mut ids = Vec::new();
    for (i, who) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        ids.push(hold(s.apply(&p(
            i as Millis,
            who,
            None,
            lock("pool", 5000, 3, 60_000),
        ))));
    }
    let held = |s: &State| s.locks["pool"].holders.len();
    assert_eq!(held(&s), 3);
    assert_eq!(s.locks["pool"].waiters, vec![ids[3].id, ids[4].id]);
    let wrong = s.apply(&p(10, "f", None, lock("pool", 5000, 2, 0)));
    assert!(matches!(wrong, Err(Refusal::Invalid { .. })), "{wrong:?}");
    s.apply(&p(20, "b", None, Command::ReleaseLock { id: ids[1].id }))
        .unwrap();
    assert_eq!(held(&s), 3);
    assert_eq!(s.locks.holds[&ids[3].id].state, HoldState::Held);
    let bad = s.apply(&p(30, "f", None, lock("../etc", 5000, 1, 0)));
    assert!(matches!(bad, Err(Refusal::Invalid { .. })), "{bad:?}");
    let short = s.apply(&p(30, "f", None, lock("ok", 10, 1, 0)));
    assert!(matches!(short, Err(Refusal::Invalid { .. })), "{short:?}");
}

#[test]
fn lock_acquisitions_count_against_the_lease_quota_and_survive_a_reload() {
    let mut s = State::new(Default::default());
    s.apply(&p(
        0,
        "root",
        None,
        Command::SetQuota {
            principal: "ann".into(),
            quota: Quota {
                max_leases: Some(2),
                ..Quota::default()
            },
        },
    ))
    .unwrap();
    hold(s.apply(&p(1, "ann", None, lock("a", 5000, 1, 0))));
    hold(s.apply(&p(2, "ann", None, lock("b", 5000, 1, 0))));
    let over = s.apply(&p(3, "ann", None, lock("c", 5000, 1, 0)));
    assert!(matches!(over, Err(Refusal::Denied { .. })), "{over:?}");
    let mut back = State::from_bytes(&s.to_bytes()).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.next_due(), s.next_due());
    let again = back.apply(&p(4, "ann", None, lock("c", 5000, 1, 0)));
    assert!(matches!(again, Err(Refusal::Denied { .. })), "{again:?}");
    tick(&mut back, 5002);
    assert!(back.locks.holds.is_empty());
    hold(back.apply(&p(5003, "ann", None, lock("c", 5000, 1, 0))));
}

fn kinds(s: &mut State) -> Vec<String> {
    s.take_events()
        .into_iter()
        .map(|e| format!("{} {} {}", e.kind, e.subject, e.principal))
        .collect()
}

fn report(task: u64, state: TaskState, health: HealthState, code: Option<i32>) -> Command {
    Command::ReportTask(TaskReport {
        id: task,
        node: "n1".into(),
        state,
        exit_code: code,
        starts: 1,
        health,
        message: String::new(),
        usage: None,
        ports: Default::default(),
        artifact: String::new(),
    })
}

#[test]
fn applied_changes_note_typed_events_in_order_and_refusals_note_none() {
    let mut s = State::new(BTreeMap::new());
    s.apply(&p(1, "root", None, register("n1", 2000))).unwrap();
    let mut long = spec(1500, 1_000);
    long.max_total_ms = 10_000;
    let l = got(s.apply(&p(2, "ann", None, Command::RequestLease(long))));
    // Queued behind it, then granted when it expires.
    let q = got(s.apply(&p(3, "bob", None, queued(1000, 1_000, 60_000, 0))));
    s.apply(&p(
        4,
        "ann",
        None,
        Command::RenewLease {
            id: l.id,
            duration_ms: 1_000,
        },
    ))
    .unwrap();
    assert_eq!(
        kinds(&mut s),
        [
            "node.registered n1 ",
            &format!("lease.requested {} ann", l.id),
            &format!("lease.granted {} ann", l.id),
            &format!("lease.requested {} bob", q.id),
            &format!("lease.renewed {} ann", l.id),
        ]
    );
    // A refusal changes nothing and says nothing.
    assert!(
        s.apply(&p(5, "bob", None, Command::ReleaseLease { id: l.id }))
            .is_err()
    );
    assert!(kinds(&mut s).is_empty());
    // Expiry 20 ms late, then the queue's grant, in one tick.
    tick(&mut s, 1_024);
    let evs = s.take_events();
    let names: Vec<String> = evs
        .iter()
        .map(|e| format!("{} {}", e.kind, e.subject))
        .collect();
    assert_eq!(
        names,
        [
            format!("lease.expired {}", l.id),
            format!("lease.granted {}", q.id)
        ]
    );
    assert_eq!(evs[0].ms, Some(20), "lateness: state time minus expires_at");
    assert_eq!(evs[0].at, 1_024);

    // A task's life: submitted (with its lease), started, healthy, exited,
    // and its lease released.
    s.apply(&p(2_000, "bob", None, Command::ReleaseLease { id: q.id }))
        .unwrap();
    kinds(&mut s);
    let t = match s.apply(&p(
        2_001,
        "ann",
        None,
        Command::SubmitTask {
            lease: Box::new(spec(500, 60_000)),
            task: Box::new(TaskSpec {
                command: vec!["./run".into()],
                ..TaskSpec::default()
            }),
        },
    )) {
        Ok(Applied::Task { task, .. }) => task.id,
        other => panic!("{other:?}"),
    };
    s.apply(&p(
        2_002,
        "root",
        None,
        report(t, TaskState::Running, HealthState::Unchecked, None),
    ))
    .unwrap();
    s.apply(&p(
        2_003,
        "root",
        None,
        report(t, TaskState::Running, HealthState::Healthy, None),
    ))
    .unwrap();
    // The same report again is no change.
    s.apply(&p(
        2_004,
        "root",
        None,
        report(t, TaskState::Running, HealthState::Healthy, None),
    ))
    .unwrap();
    s.apply(&p(
        2_005,
        "root",
        None,
        report(t, TaskState::Failed, HealthState::Healthy, Some(3)),
    ))
    .unwrap();
    let evs = s.take_events();
    let names: Vec<String> = evs.iter().map(|e| e.kind.to_string()).collect();
    assert_eq!(
        names,
        [
            "lease.requested",
            "lease.granted",
            "task.submitted",
            "task.started",
            "task.healthy",
            "task.exited",
            "lease.released"
        ]
    );
    assert!(
        evs[5].detail.contains("failed, exit code 3"),
        "{}",
        evs[5].detail
    );
    assert!(evs.iter().all(|e| e.principal == "ann"));
    // Events are not part of the state's identity.
    let mut other = s.clone();
    other
        .apply(&p(3_000, "root", None, register("n2", 1000)))
        .unwrap();
    let mut same = s.clone();
    same.apply(&p(3_000, "root", None, register("n2", 1000)))
        .unwrap();
    same.take_events();
    assert_eq!(other, same);
}

#[test]
fn cron_fires_and_deploy_steps_note_their_lateness_and_durations() {
    let mut s = State::new(BTreeMap::new());
    s.apply(&p(1, "root", None, register("n1", 4000))).unwrap();
    s.apply(&p(
        2,
        "ann",
        None,
        Command::CronApply {
            version: "v1".into(),
            jobs: cron_jobs("ann", TWO_JOBS),
        },
    ))
    .unwrap();
    s.take_events();
    s.apply(&p(60_250, "root", None, fire("a", 60_000)))
        .unwrap();
    let evs = s.take_events();
    let fired = evs
        .iter()
        .find(|e| e.kind == EventKind::CronFired)
        .expect("fired");
    assert_eq!(
        (fired.subject.as_str(), fired.principal.as_str()),
        ("a", "ann")
    );
    assert_eq!(fired.ms, Some(250));
    s.apply(&p(
        60_300,
        "root",
        None,
        Command::CronSkip {
            job: "b".into(),
            scheduled_at: 60_000,
            reason: "paused".into(),
        },
    ))
    .unwrap();
    assert!(kinds(&mut s).contains(&"cron.skipped b ann".to_string()));
}
