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

fn lease(cpu: u64, ms: u64) -> Command {
    Command::RequestLease(LeaseSpec {
        resources: Resources {
            cpu_millis: cpu,
            ..Resources::default()
        },
        constraints: vec![],
        duration_ms: ms,
        reason: "test".into(),
    })
}

fn granted(o: Outcome) -> Lease {
    match o {
        Ok(Applied::Lease(l)) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

#[test]
fn grants_never_overcommit_and_tokens_grow() {
    let mut s = State::new(Default::default());
    s.apply(&p(10, "ann", None, register("n1", 2000))).unwrap();
    let a = granted(s.apply(&p(20, "ann", None, lease(1500, 1000))));
    assert_eq!((a.granted_at, a.expires_at, a.fencing_token), (20, 1020, 1));
    let refused = s.apply(&p(30, "bob", None, lease(1000, 1000)));
    assert!(
        matches!(refused, Err(Refusal::NoCapacity { .. })),
        "{refused:?}"
    );
    let b = granted(s.apply(&p(40, "bob", None, lease(500, 1000))));
    assert_eq!(b.fencing_token, 2);
    assert_eq!(s.nodes["n1"].allocated.cpu_millis, 2000);
    // Releasing frees capacity; the next grant's token is still larger.
    s.apply(&p(50, "ann", None, Command::ReleaseLease { id: a.id }))
        .unwrap();
    let c = granted(s.apply(&p(60, "bob", None, lease(1000, 1000))));
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
    granted(s.apply(&p(4, "bob", Some("k1"), lease(1000, 1000))));
    assert_eq!(s.leases.len(), 2);
}

#[test]
fn only_the_owner_or_an_admin_releases() {
    let mut s = State::new(Default::default());
    s.apply(&p(1, "ann", None, register("n1", 4000))).unwrap();
    let l = granted(s.apply(&p(2, "ann", None, lease(1000, 1000))));
    let r = s.apply(&p(3, "bob", None, Command::ReleaseLease { id: l.id }));
    assert!(matches!(r, Err(Refusal::NotYours { .. })), "{r:?}");
    assert_eq!(s.leases[&l.id].state, LeaseState::Granted);
    s.apply(&p(4, "root", None, Command::ReleaseLease { id: l.id }))
        .unwrap();
    let again = s.apply(&p(5, "ann", None, Command::ReleaseLease { id: l.id }));
    assert!(matches!(again, Err(Refusal::Ended { .. })), "{again:?}");
}

#[test]
fn expiry_only_ends_due_leases_and_time_never_goes_back() {
    let mut s = State::new(Default::default());
    s.apply(&p(100, "ann", None, register("n1", 4000))).unwrap();
    let a = granted(s.apply(&p(100, "ann", None, lease(1000, 50))));
    let b = granted(s.apply(&p(100, "ann", None, lease(1000, 500))));
    assert_eq!(s.due_expiries(150, 10), vec![a.id]);
    // A proposal stamped earlier (an old leader's clock) does not move time back.
    s.apply(&p(90, "ann", None, register("n2", 1000))).unwrap();
    assert_eq!(s.time, 100);
    let out = s.apply(&p(
        150,
        "expiry",
        None,
        Command::ExpireLeases {
            ids: vec![a.id, b.id],
        },
    ));
    assert_eq!(out, Ok(Applied::Expired { ids: vec![a.id] }));
    assert_eq!(s.leases[&a.id].state, LeaseState::Expired);
    assert_eq!(s.leases[&b.id].state, LeaseState::Granted);
    assert_eq!(s.nodes["n1"].allocated.cpu_millis, 1000);
    assert!(s.due_expiries(150, 10).is_empty());
}

#[test]
fn snapshot_bytes_round_trip() {
    let mut s = State::new([(1, "127.0.0.1:1".to_string())].into());
    s.apply(&p(1, "ann", Some("x"), register("n1", 4000)))
        .unwrap();
    granted(s.apply(&p(2, "ann", Some("y"), lease(1000, 1000))));
    let back = State::from_bytes(&s.to_bytes()).unwrap();
    assert_eq!(back, s);
}
