use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn next(expr: &str, tz: Option<&str>, from: &str, n: usize) -> Vec<String> {
    Schedule::parse(expr, tz)
        .unwrap()
        .upcoming(at(from), n)
        .iter()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .collect()
}

#[test]
fn next_times_table() {
    // 2026-01-01 is a Thursday.
    let cases: &[(&str, Option<&str>, &str, &[&str])] = &[
        (
            "30 9 * * 1-5",
            None,
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-01T09:30:00Z",
                "2026-01-02T09:30:00Z",
                "2026-01-05T09:30:00Z",
            ],
        ),
        (
            "30 9 * * mon-fri",
            None,
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-01T09:30:00Z",
                "2026-01-02T09:30:00Z",
                "2026-01-05T09:30:00Z",
            ],
        ),
        // 0 and 7 are both Sunday.
        (
            "0 12 * * 0",
            None,
            "2026-01-01T00:00:00Z",
            &["2026-01-04T12:00:00Z"],
        ),
        (
            "0 12 * * 7",
            None,
            "2026-01-01T00:00:00Z",
            &["2026-01-04T12:00:00Z"],
        ),
        (
            "0 12 * * 5-7",
            None,
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-02T12:00:00Z",
                "2026-01-03T12:00:00Z",
                "2026-01-04T12:00:00Z",
            ],
        ),
        // Both day fields restricted: the 13th OR any Friday.
        (
            "0 0 13 * fri",
            None,
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-02T00:00:00Z",
                "2026-01-09T00:00:00Z",
                "2026-01-13T00:00:00Z",
                "2026-01-16T00:00:00Z",
            ],
        ),
        // A day field that starts with `*` is unrestricted: AND.
        (
            "0 0 */2 * fri",
            None,
            "2026-01-01T00:00:00Z",
            &["2026-01-09T00:00:00Z", "2026-01-23T00:00:00Z"],
        ),
        // Month ends and leap years.
        (
            "0 0 31 * *",
            None,
            "2026-01-31T00:00:00Z",
            &["2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z"],
        ),
        (
            "0 0 29 2 *",
            None,
            "2026-03-01T00:00:00Z",
            &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"],
        ),
        (
            "@weekly",
            None,
            "2026-01-01T00:00:00Z",
            &["2026-01-04T00:00:00Z"],
        ),
        (
            "@annually",
            None,
            "2026-01-01T00:00:00Z",
            &["2027-01-01T00:00:00Z"],
        ),
        (
            "@midnight",
            None,
            "2026-01-01T00:00:00Z",
            &["2026-01-02T00:00:00Z"],
        ),
        (
            "@hourly",
            None,
            "2026-01-01T00:30:00Z",
            &["2026-01-01T01:00:00Z"],
        ),
        (
            "*/15 * * * *",
            None,
            "2026-01-01T00:07:00Z",
            &["2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z"],
        ),
        (
            "*/10 * * * * *",
            None,
            "2026-01-01T00:00:05Z",
            &["2026-01-01T00:00:10Z", "2026-01-01T00:00:20Z"],
        ),
        (
            "0 9 1 jan,jul *",
            None,
            "2026-01-02T00:00:00Z",
            &["2026-07-01T09:00:00Z", "2027-01-01T09:00:00Z"],
        ),
        // Time zones: New York 09:30 is 14:30 UTC in winter, 13:30 in summer.
        (
            "30 9 * * *",
            Some("America/New_York"),
            "2026-03-06T00:00:00Z",
            &[
                "2026-03-06T14:30:00Z",
                "2026-03-07T14:30:00Z",
                "2026-03-08T13:30:00Z",
            ],
        ),
        (
            "0 3 * * *",
            Some("Europe/Berlin"),
            "2026-10-24T12:00:00Z",
            &["2026-10-25T02:00:00Z", "2026-10-26T02:00:00Z"],
        ),
    ];
    for (expr, tz, from, want) in cases {
        assert_eq!(
            next(expr, *tz, from, want.len()),
            *want,
            "{expr} in {tz:?} from {from}"
        );
    }
}

#[test]
fn errors_table() {
    let cases: &[(&str, &str)] = &[
        (
            "* * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; got 4 in `* * * *`",
        ),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("0 24 * * *", "hour: 24 is out of range 0-23"),
        ("0 0 0 * *", "day of month: 0 is out of range 1-31"),
        ("0 0 * 13 *", "month: 13 is out of range 1-12"),
        (
            "0 0 * * 8",
            "day of week: 8 is out of range 0-7 (0 and 7 are Sunday)",
        ),
        (
            "0 0 * * fri-mon",
            "day of week: range `fri-mon` runs backwards; crontab ranges do not wrap around",
        ),
        (
            "*/0 * * * *",
            "minute: step `0` must be a whole number above 0",
        ),
        ("0 0 L * *", "day of month: `L` is not a number"),
        (
            "0 0 * * funday",
            "day of week: `funday` is not a number or a name like sun",
        ),
        (
            "0 0 30 2 *",
            "`0 0 30 2 *` never fires (no such date, e.g. 30 February)",
        ),
        (
            "@reboot",
            "@reboot has no meaning for a cluster; use a schedule, or run the task once with `charter cron trigger`",
        ),
        (
            "@every 5m",
            "unknown macro `@every 5m`; expected @yearly @annually @monthly @weekly @daily @midnight @hourly",
        ),
        ("1,,2 * * * *", "minute: empty item in `1,,2`"),
    ];
    for (expr, want) in cases {
        assert_eq!(Schedule::parse(expr, None).unwrap_err().0, *want, "{expr}");
    }
    assert_eq!(
        Schedule::parse("* * * * *", Some("Mars/Olympus"))
            .unwrap_err()
            .0,
        "unknown time zone `Mars/Olympus`; use an IANA name like Europe/Berlin or UTC"
    );
}

/// Debian cron's DST rules, Europe/Berlin 2026: on 29 March 02:00 CET jumps
/// to 03:00 CEST (01:00 UTC); on 25 October 03:00 CEST falls back to 02:00
/// CET (01:00 UTC), so 02:00-03:00 happens twice.
#[test]
fn dst_follows_debian_cron() {
    let cases: &[(&str, &str, &[&str])] = &[
        // A fixed time in the skipped hour runs right after the jump.
        (
            "30 2 * * *",
            "2026-03-28T00:00:00Z",
            &[
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
            ],
        ),
        // Several fixed times inside one gap run once.
        (
            "0,15,45 2 * * *",
            "2026-03-29T00:50:00Z",
            &["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"],
        ),
        // A fixed time in the repeated hour runs once, at the first occurrence.
        (
            "30 2 * * *",
            "2026-10-24T12:00:00Z",
            &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
        ),
        // `*` in the minute or hour field keeps normal times: nothing in the
        // skipped hour...
        (
            "*/30 * * * *",
            "2026-03-29T00:00:00Z",
            &[
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z",
            ],
        ),
        // ... and every real half hour through the repeated one.
        (
            "*/30 * * * *",
            "2026-10-24T23:50:00Z",
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:00:00Z",
            ],
        ),
        (
            "15 * * * *",
            "2026-10-24T23:50:00Z",
            &[
                "2026-10-25T00:15:00Z",
                "2026-10-25T01:15:00Z",
                "2026-10-25T02:15:00Z",
            ],
        ),
        // Outside the changes nothing moves (New York, fixed 09:30).
        (
            "30 9 * * *",
            "2026-03-07T00:00:00Z",
            &["2026-03-07T14:30:00Z", "2026-03-08T13:30:00Z"],
        ),
    ];
    for (expr, from, want) in cases {
        let tz = if expr.starts_with("30 9") {
            "America/New_York"
        } else {
            "Europe/Berlin"
        };
        assert_eq!(
            next(expr, Some(tz), from, want.len()),
            *want,
            "{expr} from {from}"
        );
    }
}

/// The shortcut away from local-time changes answers exactly what the full
/// walk answers, in zones with changes, around them and far from them.
#[test]
fn the_shortcut_agrees_with_the_walk() {
    let exprs = [
        "*/20 * * * * *",
        "*/7 * * * *",
        "30 2 * * *",
        "0 1-3 * * sun",
        "15 0 1 * *",
        "0 12 29 2 *",
        "@hourly",
    ];
    let zones = [None, Some("Europe/Berlin"), Some("America/New_York")];
    // Every 997 minutes over a year, and every 7 minutes within 5 h of
    // each change of both zones.
    let start = at("2026-01-01T00:00:00Z");
    let mut times: Vec<DateTime<Utc>> = (0..(365 * 24 * 60 / 997))
        .map(|i| start + Duration::minutes(997 * i) + Duration::seconds(i % 60))
        .collect();
    for change in [
        "2026-03-08T07:00:00Z",
        "2026-03-29T01:00:00Z",
        "2026-10-25T01:00:00Z",
        "2026-11-01T06:00:00Z",
    ] {
        times.extend((-43..43).map(|k| at(change) + Duration::minutes(7 * k)));
    }
    let mut plain_used = 0;
    for e in exprs {
        for z in zones {
            let s = Schedule::parse(e, z).unwrap();
            for &t in &times {
                let walk = s.next_walk(t);
                if let Some(p) = s.next_plain(t) {
                    plain_used += 1;
                    assert_eq!(Some(p), walk, "{e} in {z:?} after {t}");
                }
                assert_eq!(s.next_after(t), walk, "{e} in {z:?} after {t}");
            }
        }
    }
    assert!(
        plain_used > 10_000,
        "the shortcut was used {plain_used} times"
    );
}
