use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn job(name: &str, expr: &str) -> Job {
    Job {
        name: name.into(),
        schedule: Schedule::parse(expr, None).unwrap(),
        depends_on: Vec::new(),
        window: None,
        dependency_wait: Duration::minutes(5),
        concurrency: Concurrency::Allow,
        missed: Missed::Latest,
        max_catch_up: 3,
        paused: false,
        since: at("2026-01-01T00:00:00Z"),
    }
}

/// Decisions in a compact form: `F job HH:MM` or `S job HH:MM reason`.
fn show(ds: &[Decision]) -> Vec<String> {
    ds.iter()
        .map(|d| match d {
            Decision::Fire {
                job,
                scheduled_at,
                replaces,
            } => {
                let r = if replaces.is_empty() {
                    String::new()
                } else {
                    format!(" replaces {}", replaces.len())
                };
                format!("F {job} {}{r}", scheduled_at.format("%H:%M"))
            }
            Decision::Skip {
                job,
                scheduled_at,
                reason,
            } => format!("S {job} {} {reason}", scheduled_at.format("%H:%M")),
        })
        .collect()
}

#[test]
fn an_on_time_tick_fires_once_and_a_decided_one_never_again() {
    let jobs = [job("a", "*/5 * * * *")];
    let mut h = History::default();
    let now = at("2026-01-01T00:05:01Z");
    assert_eq!(show(&due(&jobs, &h, now)), ["F a 00:05"]);
    h.record("a", at("2026-01-01T00:05:00Z"), RunState::Running);
    assert!(due(&jobs, &h, now).is_empty(), "decided ticks stay decided");
    assert!(due(&jobs, &h, at("2026-01-01T00:09:59Z")).is_empty());
}

#[test]
fn missed_ticks_follow_the_policy() {
    // Down from 00:00 to 00:31: ticks 00:05 .. 00:30 are late, 00:31 is not a tick.
    let now = at("2026-01-01T00:31:00Z");
    let h = History::default();
    let mut j = job("a", "*/5 * * * *");
    let cases: &[(Missed, &[&str])] = &[
        (
            Missed::Skip,
            &[
                "S a 00:05 missed: no leader fired it in time (missed = skip)",
                "S a 00:10 missed: no leader fired it in time (missed = skip)",
                "S a 00:15 missed: no leader fired it in time (missed = skip)",
                "S a 00:20 missed: no leader fired it in time (missed = skip)",
                "S a 00:25 missed: no leader fired it in time (missed = skip)",
                "S a 00:30 missed: no leader fired it in time (missed = skip)",
            ],
        ),
        (
            Missed::Latest,
            &[
                "S a 00:05 missed: a later tick was fired instead (missed = latest)",
                "S a 00:10 missed: a later tick was fired instead (missed = latest)",
                "S a 00:15 missed: a later tick was fired instead (missed = latest)",
                "S a 00:20 missed: a later tick was fired instead (missed = latest)",
                "S a 00:25 missed: a later tick was fired instead (missed = latest)",
                "F a 00:30",
            ],
        ),
        (
            Missed::All,
            &[
                "S a 00:05 missed: beyond max_catch_up = 3",
                "S a 00:10 missed: beyond max_catch_up = 3",
                "S a 00:15 missed: beyond max_catch_up = 3",
                "F a 00:20",
                "F a 00:25",
                "F a 00:30",
            ],
        ),
    ];
    for (policy, want) in cases {
        j.missed = *policy;
        assert_eq!(
            show(&due(std::slice::from_ref(&j), &h, now)),
            *want,
            "{policy:?}"
        );
    }
    // No hidden cut-off: a year of missed hourly ticks still fires the newest.
    let mut y = job("y", "0 * * * *");
    y.missed = Missed::Latest;
    let ds = due(&[y], &h, at("2026-12-31T23:30:00Z"));
    let fires: Vec<&Decision> = ds
        .iter()
        .filter(|d| matches!(d, Decision::Fire { .. }))
        .collect();
    assert_eq!(fires.len(), 1, "one fire after a year down");
    assert_eq!(show(&ds).last().unwrap(), "F y 23:00");
    assert_eq!(
        ds.len(),
        MAX_SKIPS_RECORDED + 1,
        "the skips recorded one by one are bounded"
    );
    assert!(
        show(&ds)[0].ends_with("(and 8658 earlier missed ticks)"),
        "{}",
        show(&ds)[0]
    );
}

#[test]
fn dependencies_wait_fail_and_time_out() {
    let a = job("a", "0 2 * * *");
    let mut b = job("b", "0 2 * * *");
    b.depends_on = vec!["a".into()];
    let mut c = job("c", "0 2 * * *");
    c.depends_on = vec!["b".into()];
    let jobs = [a, b, c];
    let s = at("2026-01-01T02:00:00Z");
    let now = at("2026-01-01T02:00:01Z");
    let mut h = History::default();
    // Only A can fire; B and C wait for their upstream runs.
    assert_eq!(show(&due(&jobs, &h, now)), ["F a 02:00"]);
    h.record("a", s, RunState::Running);
    assert!(due(&jobs, &h, now).is_empty());
    // A succeeded: B fires, then C after B.
    h.record("a", s, RunState::Succeeded);
    assert_eq!(show(&due(&jobs, &h, now)), ["F b 02:00"]);
    h.record("b", s, RunState::Succeeded);
    assert_eq!(show(&due(&jobs, &h, now)), ["F c 02:00"]);
    // A failing A skips B, and then C, with the reason.
    let mut h = History::default();
    h.record("a", s, RunState::Failed);
    assert_eq!(
        show(&due(&jobs, &h, now)),
        ["S b 02:00 dependency a failed"]
    );
    h.record("b", s, RunState::Skipped);
    assert_eq!(
        show(&due(&jobs, &h, now)),
        ["S c 02:00 dependency b failed"]
    );
    // An upstream still running after the wait: late.
    let mut h = History::default();
    h.record("a", s, RunState::Running);
    let ds = due(&jobs, &h, at("2026-01-01T02:05:01Z"));
    assert!(
        show(&ds).contains(&"S b 02:00 dependency a late".to_string()),
        "{ds:?}"
    );
}

#[test]
fn a_window_accepts_the_newest_upstream_run_within_it() {
    let a = job("ingest", "0 * * * *");
    let mut r = job("report", "30 2 * * *");
    r.depends_on = vec!["ingest".into()];
    r.window = Some(Duration::hours(1));
    let jobs = [a, r];
    let mut h = History::default();
    for hour in ["00", "01", "02"] {
        h.record(
            "ingest",
            at(&format!("2026-01-01T{hour}:00:00Z")),
            RunState::Succeeded,
        );
    }
    let ds = due(&jobs, &h, at("2026-01-01T02:30:01Z"));
    assert_eq!(show(&ds), ["F report 02:30"]);
    // The newest run in the window failed: skipped, though an older one succeeded.
    h.record("ingest", at("2026-01-01T02:00:00Z"), RunState::Failed);
    let ds = due(&jobs, &h, at("2026-01-01T02:30:01Z"));
    assert_eq!(show(&ds), ["S report 02:30 dependency ingest failed"]);
}

#[test]
fn concurrency_policies() {
    let mut h = History::default();
    h.record("j", at("2026-01-01T00:00:00Z"), RunState::Running);
    let now = at("2026-01-01T00:01:01Z");
    let mut j = job("j", "* * * * *");
    let cases = [
        (Concurrency::Allow, "F j 00:01"),
        (
            Concurrency::Forbid,
            "S j 00:01 the previous run is still going (concurrency = forbid)",
        ),
        (Concurrency::Replace, "F j 00:01 replaces 1"),
    ];
    for (c, want) in cases {
        j.concurrency = c;
        assert_eq!(
            show(&due(std::slice::from_ref(&j), &h, now)),
            [want],
            "{c:?}"
        );
    }
    // A paused job decides nothing.
    j.paused = true;
    assert!(due(&[j], &h, now).is_empty());
}
