//! `charter cron next`: anyone can check a schedule before applying it.

mod common;

use common::*;

#[test]
fn cron_next_prints_fire_times_and_refuses_bad_expressions() {
    // Berlin's spring-forward day: 02:30 does not exist, so the job runs
    // right after the jump (03:00 CEST = 01:00 UTC), as Debian's cron does.
    let out = cli(
        "127.0.0.1:1",
        TOKEN,
        &[
            "cron",
            "next",
            "30 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--from",
            "2026-03-28T00:00:00Z",
            "-n",
            "3",
            "--json",
        ],
    );
    let v = json_ok(&out);
    assert_eq!(
        v["next"],
        serde_json::json!([
            "2026-03-28T01:30:00.000Z",
            "2026-03-29T01:00:00.000Z",
            "2026-03-30T00:30:00.000Z"
        ])
    );
    let out = cli("127.0.0.1:1", TOKEN, &["cron", "next", "0 0 30 2 *"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("never fires"), "{}", stderr(&out));
    let out = cli(
        "127.0.0.1:1",
        TOKEN,
        &["cron", "next", "* * * *", "--tz", "Mars/Base"],
    );
    assert!(
        stderr(&out).contains("unknown time zone `Mars/Base`"),
        "{}",
        stderr(&out)
    );
}
