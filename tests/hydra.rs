//! Hydra end to end: real members, a real agent, real processes. A
//! per-second job keeps firing once per tick while leaders are killed, a
//! chain runs in order and a failure upstream skips what depends on it.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(15);

fn history(c: &Cluster, job: &str, n: u32) -> Vec<Value> {
    let v = json_ok(&c.cli(&["cron", "history", job, "-n", &n.to_string(), "--json"]));
    v["runs"].as_array().cloned().unwrap_or_default()
}

fn apply(c: &Cluster, file: &Path) -> Value {
    json_ok(&c.cli(&["cron", "apply", file.to_str().unwrap(), "--json"]))
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_per_second_job_fires_once_per_tick_while_leaders_are_killed() {
    let kills: usize = std::env::var("CHARTER_HYDRA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    let _a = agent(&c, dir.path(), "a1");
    let out = shared_file(&dir.path().join("ran.txt"));
    let file = dir.path().join("crontab.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[job]]
name = "every-second"
schedule = "* * * * * *"
[job.task]
command = ["sh", "-c", "echo {{scheduled_at}} >> {}"]
cpu = 0.1
mem = "16MiB"
for = "1m"
"#,
            out.display()
        ),
    )
    .unwrap();
    let v = apply(&c, &file);
    assert_eq!(v["changes"][0]["change"], "added", "{v}");
    std::thread::sleep(Duration::from_secs(3));
    for k in 0..kills {
        let leader = c.wait_leader(ELECTION);
        c.kill9(leader);
        std::thread::sleep(Duration::from_millis(2_500));
        c.spawn(leader, false);
        std::thread::sleep(Duration::from_millis(1_500 + 300 * k as u64));
    }
    c.wait_leader(ELECTION);
    std::thread::sleep(Duration::from_secs(3));
    let runs = history(&c, "every-second", 1_000);
    assert!(runs.len() >= 8, "{runs:?}");
    // Every tick from the first to the newest is decided once: the history
    // is keyed by tick, so look for holes. Ticks missed during an election
    // are seconds late, within LATE_AFTER, so `missed = latest` fires them
    // all: no hole is allowed.
    let ticks: Vec<i64> = runs.iter().map(|r| ms(&r["scheduled_at"])).collect();
    for w in ticks.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1_000,
            "a hole or a repeat in the ticks: {ticks:?}"
        );
    }
    let fired: Vec<&Value> = runs.iter().filter(|r| r["state"] != "skipped").collect();
    assert_eq!(fired.len(), runs.len(), "skipped ticks: {runs:?}");
    // Each fire ran its process once: no tick appears twice in the file.
    let finished: Vec<&Value> = runs.iter().filter(|r| r["state"] == "succeeded").collect();
    assert!(
        finished.len() * 2 >= runs.len(),
        "most ticks' processes should succeed: {runs:?}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        *seen.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ran twice: {twice:?}");
    for r in &finished {
        let at = chrono::DateTime::parse_from_rfc3339(r["scheduled_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(
            seen.contains_key(at.as_str()),
            "{at} succeeded but did not run"
        );
    }
    let mut late: Vec<i64> = runs
        .iter()
        .map(|r| ms(&r["fired_at"]) - ms(&r["scheduled_at"]))
        .collect();
    late.sort_unstable();
    eprintln!(
        "{} ticks over {kills} leader kills: 0 duplicates, 0 holes; lateness p50 {} ms, p99 {} ms, max {} ms",
        runs.len(),
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late[late.len() - 1]
    );
}

fn chain(dir: &Path, a_exit: u8) -> std::path::PathBuf {
    // Each job's lease runs as a user of its own: the file they all append
    // to is made writable by all of them.
    let out = dir.join("order.txt");
    if !out.exists() {
        shared_file(&out);
    }
    let job = |name: &str, after: Option<&str>, cmd: String| {
        format!(
            r#"
[[job]]
name = "{name}"
schedule = "*/3 * * * * *"
concurrency = "forbid"
{}
[job.task]
command = ["sh", "-c", "{cmd}"]
cpu = 0.1
for = "1m"
"#,
            after
                .map(|a| format!("depends_on = [\"{a}\"]\ndependency_wait = \"20s\""))
                .unwrap_or_default()
        )
    };
    let text = [
        job(
            "a",
            None,
            format!(
                "sleep 0.3; echo a {{scheduled_at}} >> {}; exit {a_exit}",
                out.display()
            ),
        ),
        job(
            "b",
            Some("a"),
            format!("echo b {{scheduled_at}} >> {}", out.display()),
        ),
        job(
            "c",
            Some("b"),
            format!("echo c {{scheduled_at}} >> {}", out.display()),
        ),
    ]
    .concat();
    let file = dir.join("chain.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_chain_runs_in_order_and_a_failure_skips_what_depends_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    let _a = agent(&c, dir.path(), "a1");

    // A bad file is refused whole, with its line, and nothing is applied.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[job]]\nname = \"x\"\nschedule = \"61 * * * *\"\n[job.task]\ncommand = [\"true\"]\nfor = \"1m\"\n\n[[job]]\nname = \"y\"\nschedule = \"@daily\"\n[job.task]\ncommand = [\"true\"]\nfor = \"1m\"\n",
    )
    .unwrap();
    let out = c.cli(&["cron", "apply", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.toml:3"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was applied"),
        "{}",
        stderr(&out)
    );
    let v = json_ok(&c.cli(&["cron", "list", "--json"]));
    assert_eq!(v["jobs"], serde_json::json!([]), "{v}");

    let file = chain(dir.path(), 0);
    let diff = json_ok(&c.cli(&["cron", "diff", file.to_str().unwrap(), "--json"]));
    assert_eq!(diff["applied"], false);
    assert_eq!(diff["changes"].as_array().unwrap().len(), 3, "{diff}");
    assert!(
        json_ok(&c.cli(&["cron", "list", "--json"]))["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let v = apply(&c, &file);
    assert_eq!(v["applied"], true, "{v}");
    let version = v["version"].as_str().unwrap().to_string();
    assert!(version.starts_with("root/cron/chain@"), "{version}");

    // Wait for a tick whose whole chain succeeded.
    let t = Instant::now();
    let tick = loop {
        let done: Vec<String> = history(&c, "c", 5)
            .iter()
            .filter(|r| r["state"] == "succeeded")
            .map(|r| r["scheduled_at"].as_str().unwrap().to_string())
            .collect();
        if let Some(t) = done.first() {
            break t.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "c never succeeded");
        std::thread::sleep(Duration::from_millis(200));
    };
    let secs = chrono::DateTime::parse_from_rfc3339(&tick)
        .unwrap()
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let order: Vec<String> = std::fs::read_to_string(dir.path().join("order.txt"))
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(&secs))
        .map(|l| l[..1].to_string())
        .collect();
    assert_eq!(order, ["a", "b", "c"], "tick {secs}");
    let b = history(&c, "b", 50);
    let b_run = b
        .iter()
        .find(|r| r["scheduled_at"] == tick.as_str())
        .unwrap();
    let a_run = history(&c, "a", 50)
        .into_iter()
        .find(|r| r["scheduled_at"] == tick.as_str())
        .unwrap();
    assert!(
        ms(&b_run["fired_at"]) >= ms(&a_run["fired_at"]) + 300,
        "{a_run} {b_run}"
    );

    // Now a fails: b and c are skipped, with the reason.
    let v = apply(&c, &chain(dir.path(), 1));
    let changes: Vec<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["changed", "unchanged", "unchanged"], "{v}");
    let t = Instant::now();
    let failed_tick = loop {
        let a_failed = history(&c, "a", 5)
            .into_iter()
            .filter(|r| r["state"] == "failed")
            .map(|r| r["scheduled_at"].as_str().unwrap().to_string())
            .next();
        if let Some(at) = a_failed {
            let c_runs = history(&c, "c", 10);
            if let Some(cr) = c_runs.iter().find(|r| r["scheduled_at"] == at.as_str()) {
                break (at, cr.clone());
            }
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no failed chain");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (at, c_run) = failed_tick;
    let b_run = history(&c, "b", 10)
        .into_iter()
        .find(|r| r["scheduled_at"] == at.as_str())
        .unwrap();
    assert_eq!(b_run["state"], "skipped", "{b_run}");
    assert_eq!(b_run["reason"], "dependency a failed", "{b_run}");
    assert_eq!(c_run["state"], "skipped", "{c_run}");
    assert_eq!(c_run["reason"], "dependency b failed", "{c_run}");

    // The rest of the surface: show, pause, trigger, resume, delete.
    let show = json_ok(&c.cli(&["cron", "show", "c", "--json"]));
    assert_eq!(show["schedule"], "*/3 * * * * *", "{show}");
    assert!(show["next"].is_string(), "{show}");
    let p = json_ok(&c.cli(&["cron", "pause", "a", "--json"]));
    assert_eq!(p["paused"], true, "{p}");
    // A tick decided while the pause was on its way may land; none after.
    let paused_at = chrono::Utc::now().timestamp_millis() + 1_000;
    std::thread::sleep(Duration::from_secs(7));
    let late: Vec<Value> = history(&c, "a", 1_000)
        .into_iter()
        .filter(|r| ms(&r["scheduled_at"]) > paused_at)
        .collect();
    assert!(late.is_empty(), "a paused job kept firing: {late:?}");
    let trig = json_ok(&c.cli(&["cron", "trigger", "a", "--json"]));
    assert_eq!(trig["runs"][0]["manual"], true, "{trig}");
    let manual_at = trig["runs"][0]["scheduled_at"].clone();
    let hist = history(&c, "a", 1_000);
    assert!(
        hist.iter()
            .any(|r| r["scheduled_at"] == manual_at && r["manual"] == true),
        "{hist:?}"
    );
    json_ok(&c.cli(&["cron", "resume", "a", "--json"]));
    let d = c.cli(&["cron", "delete", "a"]);
    assert!(d.status.success(), "{}", stderr(&d));
    let names: Vec<String> = json_ok(&c.cli(&["cron", "list", "--json"]))["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["b", "c"]);
    assert!(!history(&c, "a", 5).is_empty(), "history outlives the job");
}

fn per_second(name: &str, missed: &str, extra: &str) -> String {
    format!(
        r#"
[[job]]
name = "{name}"
schedule = "* * * * * *"
missed = "{missed}"
{extra}
[job.task]
command = ["true"]
cpu = 0.1
for = "1m"
"#
    )
}

#[test]
fn ticks_missed_while_the_cluster_was_down_follow_each_jobs_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION);
    let _a = agent(&c, dir.path(), "a1");
    let file = dir.path().join("missed.toml");
    std::fs::write(
        &file,
        [
            per_second("latest", "latest", ""),
            per_second("skip", "skip", ""),
            per_second("all", "all", "max_catch_up = 3"),
        ]
        .concat(),
    )
    .unwrap();
    apply(&c, &file);
    // `cron show` says what each policy does after downtime.
    for (job, words) in [
        (
            "latest",
            "missed   latest: after downtime only the newest tick more than 10 s late runs",
        ),
        ("skip", "missed   skip: ticks more than 10 s late"),
        (
            "all",
            "missed   all: after downtime the newest 3 ticks more than 10 s late run",
        ),
    ] {
        let out = c.cli(&["cron", "show", job]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains(words), "{job}: {text}");
    }
    std::thread::sleep(Duration::from_secs(3));
    c.stop(0);
    std::thread::sleep(Duration::from_secs(16));
    c.spawn(0, false);
    c.wait_leader(ELECTION);
    std::thread::sleep(Duration::from_secs(4));
    // The planner calls a tick missed when it is over 10 s old as it
    // decides; the newest `fired` missed ticks fire, the older are skipped.
    for (job, fired) in [("latest", 1), ("skip", 0), ("all", 3)] {
        let runs = history(&c, job, 1_000);
        let ticks: Vec<i64> = runs.iter().map(|r| ms(&r["scheduled_at"])).collect();
        for w in ticks.windows(2) {
            assert_eq!(
                w[1] - w[0],
                1_000,
                "{job}: a tick was never decided: {ticks:?}"
            );
        }
        let missed: Vec<usize> = (0..runs.len())
            .filter(|i| {
                runs[*i]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("missed:"))
            })
            .collect();
        assert!(missed.len() >= 2, "{job}: {runs:?}");
        assert!(
            missed.iter().all(|i| runs[*i]["state"] == "skipped"),
            "{job}: {runs:?}"
        );
        let last = *missed.last().unwrap();
        let lateness = |i: usize| ms(&runs[i]["fired_at"]) - ms(&runs[i]["scheduled_at"]);
        for (i, r) in runs.iter().enumerate().skip(last + 1).take(fired) {
            assert_ne!(r["state"], "skipped", "{job}: {r}");
            assert!(lateness(i) > 10_000, "{job}: not a missed tick: {r}");
        }
        // `fired_at` is when the fire was applied, which trails the
        // planner's decision by a proposal round: up to a few hundred ms on
        // a busy 2-core machine (seen: 10,286 ms during a full test run).
        assert!(
            lateness(last + fired + 1) <= 10_500,
            "{job}: a missed tick fired beyond the policy: {}",
            runs[last + fired + 1]
        );
    }
}

#[test]
fn hydra_runs_standalone_against_members_started_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(1, &["--no-hydra"]);
    c.wait_leader(ELECTION);
    let _a = agent(&c, dir.path(), "a1");
    let file = dir.path().join("one.toml");
    std::fs::write(&file, per_second("solo", "latest", "")).unwrap();
    apply(&c, &file);
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(history(&c, "solo", 10).is_empty(), "a member ran Hydra");
    let mut hydra = std::process::Command::new(BIN)
        .args(["--server", &c.servers(), "--token", HYDRA_TOKEN, "hydra"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !history(&c, "solo", 10)
        .iter()
        .any(|r| r["state"] == "succeeded")
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "standalone Hydra fired nothing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = hydra.kill();
    let _ = hydra.wait();
}
