//! `charter bench` runs every scenario once with tiny sizes, so the harness
//! cannot rot. No speed is asserted: benchmarks are not tests.

mod common;

use common::*;
use std::process::{Command, Stdio};

#[test]
fn every_scenario_runs_once_and_reports_json() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "--json",
            "--scenario",
            "all",
            "--duration",
            "200ms",
            "--nodes",
            "5",
            "--rounds",
            "1",
            "--placement-nodes",
            "50",
            "--expiry-leases",
            "2",
            "--agent-tasks",
            "3",
            "--cron-kills",
            "1",
            "--deploy-rounds",
            "2",
            "--deploy-apps",
            "3",
        ])
        .env(
            "CHARTER_HOME",
            std::env::temp_dir().join("charter-tests-no-home"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let v = json_ok(&out);
    let reports = v.as_array().unwrap();
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "grant",
            "placement",
            "failover",
            "memory",
            "expiry",
            "tasks",
            "cron",
            "deploy",
            "locks"
        ]
    );
    let grant = &reports[0]["metrics"];
    for k in [
        "leader_c1_grants_per_s",
        "follower_c64_p99_ms",
        "leader_c16_p999_ms",
    ] {
        assert!(grant[k].as_f64().is_some(), "grant lacks {k}: {grant}");
    }
    // Each target runs on a cluster of its own: both must have granted.
    for k in ["leader_c1_grants_per_s", "follower_c1_grants_per_s"] {
        assert!(
            grant[k].as_f64().unwrap() > 0.0,
            "no grant succeeded ({k}): {grant}"
        );
    }
    assert!(
        reports[1]["metrics"]["n50_us_per_decision"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(reports[2]["metrics"]["round1_ms"].as_f64().unwrap() > 0.0);
    assert!(reports[3]["metrics"]["member1_rss_mib"].as_f64().unwrap() > 1.0);
    let expiry = &reports[4]["metrics"];
    assert_eq!(expiry["leases"].as_f64(), Some(2.0), "{expiry}");
    assert_eq!(
        expiry["agent_tasks_running"].as_f64(),
        Some(3.0),
        "{expiry}"
    );
    assert!(expiry["to_gone_p99_ms"].as_f64().is_some(), "{expiry}");
    let tasks = &reports[5]["metrics"];
    assert!(tasks["succeeded"].as_f64().unwrap() > 0.0, "{tasks}");
    assert_eq!(tasks["succeeded"], tasks["submitted"], "{tasks}");
    let cron = &reports[6]["metrics"];
    assert!(cron["kill_phase_ticks"].as_f64().unwrap() > 3.0, "{cron}");
    assert_eq!(cron["duplicates"].as_f64(), Some(0.0), "{cron}");
    assert!(cron["lateness_p99_ms"].as_f64().is_some(), "{cron}");
    let deploy = &reports[7]["metrics"];
    assert_eq!(deploy["rounds"].as_f64(), Some(2.0), "{deploy}");
    assert!(deploy["build_p50_ms"].as_f64().unwrap() > 0.0, "{deploy}");
    assert!(deploy["overhead_p50_ms"].as_f64().is_some(), "{deploy}");
    assert_eq!(deploy["apps"].as_f64(), Some(3.0), "{deploy}");
    let locks = &reports[8]["metrics"];
    assert!(
        locks["lib_c1_cycles_per_s"].as_f64().unwrap() > 0.0,
        "{locks}"
    );
    assert!(
        locks["lib_release_handover_p50_ms"].as_f64().unwrap() > 0.0,
        "{locks}"
    );
    assert!(
        locks["cli_charter_handover_p50_ms"].as_f64().is_some(),
        "{locks}"
    );
}

#[test]
fn unknown_scenarios_are_refused() {
    let out = Command::new(BIN)
        .args(["bench", "--scenario", "warp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown scenario `warp`"),
        "{}",
        stderr(&out)
    );
}
