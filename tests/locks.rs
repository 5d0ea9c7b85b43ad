//! Locks end to end on 3-member clusters with real processes: `lock run`
//! holders never overlap, a killed holder frees the lock at its expiry, a
//! stopped holder is stopped or fenced when it wakes, a leader crash moves
//! no expiry, a semaphore never runs more than its limit, and the HTTP API
//! and ownership rules hold.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(15);

fn fenced_append() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/locks/fenced-append.sh")
}

/// The CLI against every member as `token`, not yet run.
fn cmd(c: &Cluster, token: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--server", &c.servers(), "--token", token])
        .args(args)
        .env("CHARTER_HOME", c.dir.path().join("cli-home"))
        .env_remove("CHARTER_TOKEN")
        .env_remove("CHARTER_SERVER")
        .envs(c.cli_env.iter().cloned())
        .stdin(Stdio::null());
    cmd
}

/// The CLI as ann (a user), to completion.
fn user(c: &Cluster, args: &[&str]) -> std::process::Output {
    cmd(c, USER_TOKEN, args).output().unwrap()
}

fn show(c: &Cluster, name: &str) -> Value {
    json_ok(&c.cli(&["lock", "show", name, "--recent", "20", "--json"]))
}

fn holders(v: &Value) -> Vec<Value> {
    v["holders"].as_array().cloned().unwrap_or_default()
}

/// Waits until lock `name` has a holder; returns it.
fn wait_held(c: &Cluster, name: &str, within: Duration) -> Value {
    wait_for(&format!("lock {name} held"), within, || {
        holders(&show(c, name)).first().cloned()
    })
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|e| panic!("not a time: {v} ({e})"))
}

fn finish(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("process did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn competing_lock_runs_never_overlap_and_tokens_grow() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo \"start $CHARTER_LOCK_TOKEN $(date +%s%N)\" >> {0}; sleep 0.2; echo \"end $CHARTER_LOCK_TOKEN $(date +%s%N)\" >> {0}",
        log.display()
    );
    let rounds = 6;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut runs = Vec::new();
            for _ in 0..rounds {
                runs.push(cmd(
                    &c,
                    USER_TOKEN,
                    &[
                        "lock", "run", "mx", "--ttl", "3s", "--wait", "60s", "--", "sh", "-c",
                        &script,
                    ],
                ));
            }
            std::thread::spawn(move || {
                for mut r in runs {
                    let out = r.output().unwrap();
                    assert!(out.status.success(), "{}", stderr(&out));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 4 * rounds, "{text}");
    let mut last_end: u128 = 0;
    let mut last_token = 0u64;
    for pair in lines.chunks(2) {
        let (s, e) = (&pair[0], &pair[1]);
        assert_eq!((s[0], e[0]), ("start", "end"), "runs interleaved:\n{text}");
        assert_eq!(s[1], e[1], "one run's start and end:\n{text}");
        let token: u64 = s[1].parse().unwrap();
        assert!(token > last_token, "tokens only grow:\n{text}");
        let (t0, t1): (u128, u128) = (s[2].parse().unwrap(), e[2].parse().unwrap());
        assert!(
            t0 >= last_end,
            "a run started before the last ended:\n{text}"
        );
        last_token = token;
        last_end = t1;
    }
    // Everything was released: the lock is free.
    assert!(holders(&show(&c, "mx")).is_empty());
}

#[test]
fn a_killed_holder_frees_the_lock_at_its_expiry_and_its_command_dies() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut holder = cmd(
        &c,
        USER_TOKEN,
        &[
            "lock",
            "run",
            "k9",
            "--ttl",
            "3s",
            "--",
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 600", pidfile.display()),
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let first = wait_held(&c, "k9", Duration::from_secs(20));
    let pid: i32 = wait_for("the command's pid", Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    holder.kill().unwrap(); // SIGKILL: no release, no renewal
    holder.wait().unwrap();
    // The command dies with its supervisor (nothing would stop it later).
    wait_for("the command to die", Duration::from_secs(5), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    let out = user(
        &c,
        &[
            "lock", "acquire", "k9", "--ttl", "3s", "--wait", "30s", "--json",
        ],
    );
    let next = json_ok(&out);
    assert!(
        next["token"].as_u64().unwrap() > first["token"].as_u64().unwrap(),
        "{next} after {first}"
    );
    let v = show(&c, "k9");
    let ended = v["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == first["id"])
        .cloned()
        .unwrap_or_else(|| panic!("the killed holder's acquisition in history: {v}"));
    assert_eq!(ended["state"], "expired", "{ended}");
    let now_held = &holders(&v)[0];
    assert!(
        ms(&now_held["acquired_at"]) >= ms(&ended["expires_at"]),
        "granted before the old holder's expiry: {v}"
    );
    assert_eq!(ended["ended_at"], ended["expires_at"], "{ended}");
}

#[test]
fn a_stopped_holder_is_stopped_or_fenced_when_it_wakes() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let fa = fenced_append();
    let writer = |tag: &str, n: &str| {
        format!(
            "i=0; while [ $i -lt {n} ]; do {} {} \"$CHARTER_LOCK_TOKEN\" {tag} || true; i=$((i+1)); sleep 0.1; done",
            fa.display(),
            out.display()
        )
    };
    let mut a = cmd(
        &c,
        USER_TOKEN,
        &[
            "lock",
            "run",
            "fz",
            "--ttl",
            "2s",
            "--",
            "sh",
            "-c",
            &writer("a", "100000"),
        ],
    );
    use std::os::unix::process::CommandExt;
    let mut a = a.process_group(0).stderr(Stdio::piped()).spawn().unwrap();
    let pgid = a.id() as i32;
    wait_for("a's first writes", Duration::from_secs(20), || {
        let t = std::fs::read_to_string(&out).ok()?;
        (t.lines().count() >= 3).then_some(())
    });
    // Freeze the holder and its command, as a long GC pause or a stopped VM.
    unsafe { libc::kill(-pgid, libc::SIGSTOP) };
    let b = cmd(
        &c,
        OTHER_TOKEN,
        &[
            "lock",
            "run",
            "fz",
            "--ttl",
            "2s",
            "--wait",
            "30s",
            "--",
            "sh",
            "-c",
            &writer("b", "5"),
        ],
    )
    .output()
    .unwrap();
    assert!(b.status.success(), "{}", stderr(&b));
    unsafe { libc::kill(-pgid, libc::SIGCONT) };
    let status = finish(&mut a, Duration::from_secs(10));
    assert!(!status.success(), "the woken holder must stop its command");
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<(u64, &str)> = text
        .lines()
        .map(|l| {
            let (t, tag) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), tag)
        })
        .collect();
    let first_b = rows.iter().position(|r| r.1 == "b").expect("b wrote");
    assert!(
        rows[first_b..].iter().all(|r| r.1 == "b"),
        "a wrote after b took the lock:\n{text}"
    );
    assert!(
        rows.windows(2).all(|w| w[0].0 <= w[1].0),
        "tokens went back:\n{text}"
    );
}

#[test]
fn a_leader_crash_moves_no_expiry_and_loses_no_acquisition() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION);
    let before: Vec<Value> = ["l1", "l2", "l3"]
        .iter()
        .map(|n| {
            json_ok(&user(&c, &["lock", "acquire", n, "--ttl", "6s", "--json"]));
            holders(&show(&c, n))[0].clone()
        })
        .collect();
    // A waiter in line behind l1, renewing its place through the crash.
    let waiter = cmd(
        &c,
        OTHER_TOKEN,
        &[
            "lock", "acquire", "l1", "--ttl", "5s", "--wait", "60s", "--json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for("the waiter in line", Duration::from_secs(10), || {
        (show(&c, "l1")["waiters"].as_array()?.len() == 1).then_some(())
    });
    c.0.kill9(leader);
    let new = c.wait_leader(ELECTION);
    assert_ne!(new, leader);
    // Each acquisition is still held, or ended at the expiry it had: the
    // new leader neither moved it nor lost it.
    for (n, b) in ["l1", "l2", "l3"].iter().zip(&before) {
        let v = show(&c, n);
        let h = holders(&v)
            .into_iter()
            .chain(v["recent"].as_array().cloned().unwrap_or_default())
            .find(|h| h["id"] == b["id"])
            .unwrap_or_else(|| panic!("{n}'s acquisition is gone: {v}"));
        assert_eq!(
            (&h["expires_at"], &h["token"]),
            (&b["expires_at"], &b["token"]),
            "{n}: {v}"
        );
        assert!(h["state"] == "held" || h["state"] == "expired", "{h}");
    }
    let got = waiter.wait_with_output().unwrap();
    let w = json_ok(&got);
    assert!(w["token"].as_u64().unwrap() > before[2]["token"].as_u64().unwrap());
    let l1 = show(&c, "l1");
    let first = l1["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == before[0]["id"])
        .cloned()
        .unwrap_or_else(|| panic!("l1's first holder in history: {l1}"));
    assert_eq!(first["state"], "expired");
    assert_eq!(first["expires_at"], before[0]["expires_at"], "{l1}");
    assert!(ms(&holders(&l1)[0]["acquired_at"]) >= ms(&before[0]["expires_at"]));
}

#[test]
fn a_semaphore_of_three_never_runs_more_than_three() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    let dir = tempfile::tempdir().unwrap();
    let running = dir.path().join("running");
    std::fs::create_dir(&running).unwrap();
    let counts = dir.path().join("counts");
    let script = format!(
        "touch {r}/$$; ls {r} | wc -l >> {c}; sleep 1.5; rm {r}/$$",
        r = running.display(),
        c = counts.display()
    );
    let runs: Vec<Child> = (0..6)
        .map(|_| {
            cmd(
                &c,
                USER_TOKEN,
                &[
                    "lock", "run", "pool", "--limit", "3", "--ttl", "3s", "--wait", "60s", "--",
                    "sh", "-c", &script,
                ],
            )
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    for mut r in runs {
        assert!(finish(&mut r, Duration::from_secs(90)).success());
    }
    let seen: Vec<u32> = std::fs::read_to_string(&counts)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(
        seen.iter().all(|n| *n <= 3),
        "more than 3 at once: {seen:?}"
    );
    assert_eq!(seen.iter().max(), Some(&3), "it is a semaphore: {seen:?}");
    // A holder that asks for another limit is told so.
    let held = user(&c, &["lock", "acquire", "pool", "--limit", "3"]);
    assert!(held.status.success(), "{}", stderr(&held));
    let wrong = user(&c, &["lock", "acquire", "pool", "--limit", "2"]);
    refused(&wrong, "limit 3, not 2");
}

#[test]
fn http_locks_ownership_and_elections() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    let http = c.members[0].http.clone();
    let auth = |t: &str| format!("Bearer {t}");
    let ann = auth(USER_TOKEN);
    let bob = auth(OTHER_TOKEN);
    let call = |method: &str, path: &str, who: &str, body: &str| {
        let (code, text) = charter::harness::http(
            &http,
            method,
            path,
            &[("authorization", who), ("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        (code, v, text)
    };
    let (code, a, text) = call(
        "POST",
        "/v1/locks/web",
        &ann,
        r#"{"ttl_ms": 10000, "holder": "web-1", "value": "10.0.0.1:80"}"#,
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(a["state"], "held");
    let id = a["id"].as_u64().unwrap();
    // bob: busy without a wait, and not his to release or renew.
    let (code, _, text) = call("POST", "/v1/locks/web", &bob, "");
    assert_eq!(code, 409, "{text}");
    let (code, _, text) = call("DELETE", &format!("/v1/locks/web/{id}"), &bob, "");
    assert_eq!(code, 403, "{text}");
    let (code, _, text) = call("PUT", &format!("/v1/locks/web/{id}"), &bob, "");
    assert_eq!(code, 403, "{text}");
    // bob sees who holds it, but not ann's holder or value.
    let (code, v, text) = call("GET", "/v1/elections/web", &bob, "");
    assert_eq!(code, 200, "{text}");
    assert_eq!(v["leader"]["principal"], "ann");
    assert_eq!(v["leader"]["value"], "");
    let (_, v, _) = call("GET", "/v1/elections/web", &ann, "");
    assert_eq!(v["leader"]["value"], "10.0.0.1:80");
    // Bad input is refused with what was wrong, and changes nothing.
    let (code, v, text) = call("POST", "/v1/locks/web", &ann, r#"{"ttl": 5}"#);
    assert_eq!(code, 400, "{text}");
    assert!(v["error"].as_str().unwrap().contains("ttl"), "{text}");
    let (code, _, text) = call("POST", "/v1/locks/x", "Bearer nope-nope-nope", "");
    assert_eq!(code, 401, "{text}");
    // Machine credentials are not users: a Hydra token or a node's may not.
    for machine in [HYDRA_TOKEN.to_string(), node_credential("n1")] {
        let (code, _, text) = call("POST", "/v1/locks/x", &auth(&machine), "");
        assert_eq!(code, 403, "{text}");
        let out = cmd(&c, &machine, &["lock", "acquire", "x"])
            .output()
            .unwrap();
        refused(&out, "needs a user or admin token");
    }
    // The watch: an SSE stream that names the leader, then the next one.
    let watcher = std::thread::spawn({
        let http = http.clone();
        let bob = bob.clone();
        move || {
            use std::io::{BufRead, BufReader, Write};
            let mut s = std::net::TcpStream::connect(&http).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            write!(
                s,
                "GET /v1/elections/web?watch=1 HTTP/1.1\r\nhost: x\r\nauthorization: {bob}\r\n\r\n"
            )
            .unwrap();
            let mut leaders = Vec::new();
            for line in BufReader::new(s).lines() {
                let line = line.unwrap();
                if let Some(data) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(data).unwrap();
                    leaders.push(v["leader"]["principal"].clone());
                    if leaders.len() == 2 {
                        return leaders;
                    }
                }
            }
            leaders
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, text) = call("DELETE", &format!("/v1/locks/web/{id}"), &ann, "");
    assert_eq!(code, 200, "{text}");
    let (code, b, text) = call("POST", "/v1/locks/web", &bob, r#"{"ttl_ms": 5000}"#);
    assert_eq!(code, 200, "{text}");
    assert!(b["token"].as_u64() > a["token"].as_u64());
    let leaders = watcher.join().unwrap();
    assert_eq!(leaders[0], "ann", "{leaders:?}");
    assert!(
        leaders[1] == "bob" || leaders[1] == Value::Null,
        "{leaders:?}"
    );
    // The CLI says the same about ownership.
    refused(
        &user(&c, &["lock", "release", "web", &b["id"].to_string()]),
        "belongs to bob",
    );
}

#[test]
fn an_election_hands_over_at_expiry_and_observers_see_every_leader() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION);
    let dir = tempfile::tempdir().unwrap();
    let mut observer = cmd(&c, OTHER_TOKEN, &["elect", "primary", "--observe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let out = observer.stdout.take().unwrap();
        let lines = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let elector = |value: &str, log: &Path| {
        cmd(
            &c,
            USER_TOKEN,
            &[
                "elect",
                "primary",
                "--value",
                value,
                "--ttl",
                "2s",
                "--",
                "sh",
                "-c",
                &format!(
                    "echo \"$CHARTER_LOCK_TOKEN\" > {}; exec sleep 600",
                    log.display()
                ),
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    let (la, lb) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = elector("10.0.0.1:80", &la);
    let first = wait_held(&c, "primary", Duration::from_secs(20));
    let mut b = elector("10.0.0.2:80", &lb);
    wait_for("b in line", Duration::from_secs(10), || {
        (show(&c, "primary")["waiters"].as_array()?.len() == 1).then_some(())
    });
    assert!(!lb.exists(), "b ran while a led");
    a.kill().unwrap(); // the leader stops renewing
    a.wait().unwrap();
    let term_b: u64 = wait_for("b to lead", Duration::from_secs(20), || {
        std::fs::read_to_string(&lb).ok()?.trim().parse().ok()
    });
    let term_a: u64 = std::fs::read_to_string(&la)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(term_a, first["token"].as_u64().unwrap());
    assert!(term_b > term_a);
    let v = show(&c, "primary");
    let old = v["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == first["id"])
        .cloned()
        .unwrap();
    assert_eq!(old["state"], "expired");
    assert!(ms(&holders(&v)[0]["acquired_at"]) >= ms(&old["expires_at"]));
    // The observer (another principal) saw ann lead in both terms, values blanked.
    wait_for(
        "the observer to see term b",
        Duration::from_secs(10),
        || {
            let l = lines.lock().unwrap();
            l.iter()
                .any(|x| x.ends_with(&format!("term {term_b}")))
                .then_some(())
        },
    );
    let seen = lines.lock().unwrap().clone();
    assert!(
        seen.iter().any(|x| x.ends_with(&format!("term {term_a}"))),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|x| !x.contains("10.0.0.")),
        "another principal's value shown: {seen:?}"
    );
    b.kill().unwrap();
    b.wait().unwrap();
    observer.kill().unwrap();
    observer.wait().unwrap();
    reader.join().unwrap();
}
