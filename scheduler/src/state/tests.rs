use super::*;

fn p(at: Millis, principal: &str, key: Option<&str>, cmd: Command) -> Proposal {
    Proposal {
        at,
        principal: principal.into(),
        admin: principal == "root",
        key: key.map(String::from),
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
        matches!(&r, Err(Refusal::Denied { reason }) if reason.contains("max total")),
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
