//! Bad input gets a clear error that says what was wrong and what to do,
//! never a panic, and changes nothing.

mod common;

use common::*;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn charter(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env(
            "CHARTER_HOME",
            std::env::temp_dir().join("charter-tests-no-home"),
        )
        .env_remove("CHARTER_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_clear_error(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr:\n{err}");
    assert!(
        !err.contains("panicked"),
        "panic instead of an error:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// Runs a server that is expected to exit by itself; kills it after 20 s.
fn server_exits(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("server kept running on bad input: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let d = data.to_str().unwrap();
    let tokens = dir.path().join("t");
    std::fs::write(&tokens, "tok-12345678 root admin\n").unwrap();
    let t = tokens.to_str().unwrap();
    assert_clear_error(
        &charter(&["server", "--id", "x", "--data", d]),
        2,
        &["invalid value 'x' for '--id"],
    );
    assert_clear_error(
        &server_exits(&[
            "server",
            "--id",
            "1",
            "--data",
            d,
            "--token-file",
            t,
            "--peers",
            "1=nowhere",
        ]),
        1,
        &[
            "bad --peers entry `1=nowhere`",
            "hint: write ID=IP:PORT pairs",
        ],
    );
    assert_clear_error(
        &server_exits(&[
            "server",
            "--id",
            "1",
            "--data",
            d,
            "--token-file",
            t,
            "--listen",
            "localhost",
        ]),
        1,
        &["bad --listen `localhost`", "hint: use IP:PORT"],
    );
    assert_clear_error(
        &server_exits(&[
            "server",
            "--id",
            "1",
            "--data",
            d,
            "--token-file",
            t,
            "--election-timeout",
            "100ms",
            "--heartbeat-interval",
            "200ms",
        ]),
        1,
        &[
            "bad raft timing",
            "must be longer than the heartbeat interval",
            "hint: set --election-timeout above --heartbeat-interval",
        ],
    );
    assert_clear_error(
        &server_exits(&[
            "server",
            "--id",
            "4",
            "--data",
            d,
            "--token-file",
            t,
            "--peers",
            "1=127.0.0.1:1,2=127.0.0.1:2",
        ]),
        1,
        &["--peers does not list this member (id 4)"],
    );
    assert_clear_error(
        &server_exits(&["server", "--id", "1", "--data", d]),
        1,
        &["refusing to start without authentication", "--insecure"],
    );
    std::fs::write(&tokens, "tok-12345678 root superuser\n").unwrap();
    assert_clear_error(
        &server_exits(&["server", "--id", "1", "--data", d, "--token-file", t]),
        1,
        &[
            ":1: expected `admin`, `hydra`, `deployer` or nothing after the principal, got `superuser`",
        ],
    );
    assert_clear_error(
        &charter(&[
            "--server",
            "127.0.0.1:1",
            "lease",
            "request",
            "--for",
            "forever",
        ]),
        1,
        &[
            "bad --for `forever`",
            "expected a duration like 30s, 15m, 2h or 1d",
        ],
    );
    assert_clear_error(
        &charter(&[
            "--server",
            "127.0.0.1:1",
            "node",
            "register",
            "n1",
            "--cpu",
            "two",
            "--mem",
            "1GiB",
        ]),
        1,
        &["bad --cpu `two`", "expected cores like 2 or 0.5"],
    );
    assert!(
        !data.join("raft").exists(),
        "refused starts leave no data behind"
    );
}

#[test]
fn insecure_warns_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let listen = format!("127.0.0.1:{}", ports[0]);
    let http = format!("127.0.0.1:{}", ports[1]);
    let child = Command::new(BIN)
        .args([
            "server",
            "--id",
            "1",
            "--insecure",
            "--listen",
            &listen,
            "--http",
            &http,
            "--data",
        ])
        .arg(dir.path().join("d"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Any caller is accepted, without a token.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = cli(&listen, "", &["cluster", "status", "--json"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "insecure server never answered: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("warning: running with --insecure"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wrong_tokens_and_non_admins_are_refused() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    let out = cli(&c.servers(), "not-a-known-token", &["node", "list"]);
    assert_clear_error(
        &out,
        1,
        &[
            "node list failed",
            "unknown token",
            "hint: pass --token or set CHARTER_TOKEN",
        ],
    );
    let out = cli(
        &c.servers(),
        USER_TOKEN,
        &["node", "register", "n1", "--cpu", "1", "--mem", "1GiB"],
    );
    assert_clear_error(
        &out,
        1,
        &[
            "registering a node needs an agent's node credential or an admin token; a user token (ann) is neither",
        ],
    );
    // Nothing changed.
    assert!(node_names(&json_ok(&c.cli(&["node", "list", "--json"]))).is_empty());
    // Principal A cannot release principal B's lease.
    json_ok(&c.cli(&[
        "node", "register", "n1", "--cpu", "4", "--mem", "4GiB", "--json",
    ]));
    let l = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "request", "--cpu", "1", "--for", "1h", "--json"],
    ));
    let id = l["id"].to_string();
    let out = cli(&c.servers(), OTHER_TOKEN, &["lease", "release", &id]);
    assert_clear_error(&out, 1, &["belongs to ann, not to bob"]);
    let still = json_ok(&cli(
        &c.servers(),
        USER_TOKEN,
        &["lease", "show", &id, "--json"],
    ));
    assert_eq!(still["state"], "granted");
}

#[test]
fn unusable_or_corrupt_data_dirs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("t");
    std::fs::write(&tokens, "tok-12345678 root admin\n").unwrap();
    let t = tokens.to_str().unwrap();
    // A path that cannot be created, even by root.
    assert_clear_error(
        &server_exits(&[
            "server",
            "--id",
            "1",
            "--data",
            "/proc/charter-cannot-exist",
            "--token-file",
            t,
        ]),
        1,
        &[
            "cannot create data directory /proc/charter-cannot-exist",
            "hint: pass --data with a directory you can write",
        ],
    );
    // A file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert_clear_error(
        &server_exits(&[
            "server",
            "--id",
            "1",
            "--data",
            file.to_str().unwrap(),
            "--token-file",
            t,
        ]),
        1,
        &["is not a directory"],
    );
    // A member's directory whose raft log was destroyed.
    let mut c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    json_ok(&c.cli(&[
        "node", "register", "n1", "--cpu", "4", "--mem", "4GiB", "--json",
    ]));
    c.stop(0);
    let data = c.members[0].data.clone();
    let mut destroyed = 0;
    for f in std::fs::read_dir(data.join("raft").join("engine")).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "raftlog") {
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            std::fs::write(&path, vec![0xA5u8; len]).unwrap();
            destroyed += 1;
        }
    }
    assert!(destroyed > 0, "no raft log files found");
    let ports = free_ports(2);
    let (l, h) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let out = server_exits(&[
        "server",
        "--id",
        "1",
        "--data",
        data.to_str().unwrap(),
        "--token-file",
        t,
        "--listen",
        &l,
        "--http",
        &h,
    ]);
    assert_clear_error(
        &out,
        1,
        &[
            "cannot start the server",
            "is missing or unreadable, but member 1 has run from this directory before",
        ],
    );
    // The same directory under another id is refused too.
    let out = server_exits(&[
        "server",
        "--id",
        "2",
        "--data",
        data.to_str().unwrap(),
        "--token-file",
        t,
        "--listen",
        &l,
        "--http",
        &h,
        "--peers",
        &format!("2={l}"),
    ]);
    assert_clear_error(&out, 1, &["belongs to member 1, not 2"]);
}

#[test]
fn validate_reports_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("lease.toml");
    std::fs::write(
        &bad,
        "cpu = \"two\"\nmem = \"lots\"\nfor = \"1h\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let out = charter(&["validate", bad.to_str().unwrap()]);
    assert_clear_error(
        &out,
        1,
        &[
            "lease.toml:1: cpu: expected cores like 2 or 0.5, got \"two\"",
            "lease.toml:2: mem: expected a size like 512MiB or 4GiB, got \"lots\"",
            "lease.toml:4: colour: unknown field",
        ],
    );
    let good = dir.path().join("ok.toml");
    std::fs::write(&good, "cpu = 2\nmem = \"1GiB\"\nfor = \"2h\"\n").unwrap();
    let out = charter(&["validate", "--json", good.to_str().unwrap()]);
    let v = json_ok(&out);
    assert_eq!(v["valid"], true);
    assert_eq!(v["kind"], "lease");
    assert_eq!(v["hash"].as_str().unwrap().len(), 64);
    let out = charter(&[
        "validate",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_clear_error(&out, 1, &["missing.toml: cannot read the file"]);
}

#[test]
fn the_examples_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("app")).unwrap());
    for e in files {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = charter(&["validate", p.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}", p.display(), stderr(&out));
            n += 1;
        }
    }
    assert!(
        n >= 5,
        "examples/ has its configs (lease, task, server, crontab, app)"
    );
}

#[test]
fn tokens_with_a_line_end_work_and_bad_ones_and_bad_states_are_named() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(20));
    // `--token "$(cat tokens)"`-style mistakes: a trailing newline works.
    let out = cli(&c.servers(), &format!("{TOKEN}\n"), &["lease", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A 100 KB token is named as such, not as a capacity problem.
    let big = "x".repeat(100_000);
    assert_clear_error(
        &cli(&c.servers(), &big, &["lease", "list"]),
        1,
        &["cannot use the token", "100000 bytes", "at most 4096"],
    );
    // A state that does not exist is an error, not an empty table.
    assert_clear_error(
        &cli(&c.servers(), TOKEN, &["lease", "list", "--state", "bogus"]),
        1,
        &["bad --state `bogus`", "use one of pending, granted"],
    );
}

#[test]
fn completion_scripts_and_man_pages_come_from_the_command_definitions() {
    let out = charter(&["completion", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bash = String::from_utf8_lossy(&out.stdout);
    assert!(
        bash.contains("_charter") && bash.contains("lease"),
        "{bash}"
    );
    let zsh = charter(&["completion", "zsh"]);
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef charter"));
    assert_clear_error(
        &charter(&["completion", "tcsh"]),
        2,
        &["invalid value 'tcsh'"],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = charter(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lease = std::fs::read_to_string(dir.path().join("charter-lease.1")).unwrap();
    assert!(lease.contains(".TH charter-lease 1"), "{lease}");
    assert!(
        std::fs::read_to_string(dir.path().join("charter.1"))
            .unwrap()
            .contains(".TH charter 1")
    );
    // `--help` names the variable, not an empty value.
    let help = String::from_utf8_lossy(&charter(&["--help"]).stdout).to_string();
    assert!(
        help.contains("[env: CHARTER_SERVER]") && !help.contains("CHARTER_SERVER="),
        "{help}"
    );
}

#[test]
fn an_unreachable_server_fails_within_two_seconds_each_naming_them_all() {
    let ports = free_ports(2);
    let servers = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let t = Instant::now();
    let out = cli(&servers, TOKEN, &["lease", "list"]);
    let took = t.elapsed();
    assert_clear_error(
        &out,
        1,
        &[
            &format!(
                "cannot connect to 127.0.0.1:{}, 127.0.0.1:{}",
                ports[0], ports[1]
            ),
            "hint: check that --server",
        ],
    );
    // 2 s per server, not the 15 s retry budget (a loose bound: a busy machine).
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn errors_under_json_are_one_object_on_stderr() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(20));
    let parse = |out: &Output| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
        assert!(out.stdout.is_empty());
        serde_json::from_str(stderr(out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stderr(out)))
    };
    let e = parse(&cli(
        &c.servers(),
        TOKEN,
        &["lease", "list", "--state", "x", "--json"],
    ));
    assert_eq!(e["error"]["code"], "invalid_input", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad --state `x`"),
        "{e}"
    );
    assert!(
        e["error"]["hint"].as_str().unwrap().contains("pending"),
        "{e}"
    );
    let e = parse(&cli(
        &c.servers(),
        "wrong-token-1234",
        &["lease", "list", "--json"],
    ));
    assert_eq!(e["error"]["code"], "Unauthenticated", "{e}");
    assert!(
        e["error"]["hint"].as_str().unwrap().contains("--token"),
        "{e}"
    );
    // The member's log is a file: plain text, no colour codes.
    let log = std::fs::read_to_string(&c.members[0].log).unwrap();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}

/// The example app's build works with a plain `rustc` on PATH, and says
/// precisely why not (before anything is deployed: a failed build rolls
/// back) when there is none or it does not run, as a rustup proxy without
/// a toolchain does.
#[test]
fn the_example_app_builds_or_says_why_not() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/app");
    let build = |path: &str, home: &str| -> (Output, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["build.sh", "hello.rs"] {
            std::fs::copy(examples.join(f), dir.path().join(f)).unwrap();
        }
        let out = Command::new("/bin/sh")
            .arg("build.sh")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", path)
            .env("HOME", home)
            .output()
            .unwrap();
        (out, dir)
    };
    // No rustc at all.
    let empty = tempfile::tempdir().unwrap();
    let (out, _d) = build(&format!("{}:/bin", empty.path().display()), "/nonexistent");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no rustc on PATH for user"), "{err}");
    assert!(err.contains("apt install rustc"), "{err}");
    // A rustc that does not run (a rustup proxy with no default toolchain).
    let proxy = tempfile::tempdir().unwrap();
    let fake = proxy.path().join("rustc");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'error: rustup could not choose a version of rustc to run' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (out, _d) = build(
        &format!("{}:/bin:/usr/bin", proxy.path().display()),
        "/nonexistent",
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("does not run for user"), "{err}");
    assert!(err.contains("rustup could not choose a version"), "{err}");
    // A rustc that runs builds the service (this machine's own toolchain).
    let which = Command::new("sh")
        .args(["-c", "command -v rustc"])
        .output()
        .unwrap();
    let rustc = std::path::PathBuf::from(String::from_utf8_lossy(&which.stdout).trim());
    let home = std::env::var("HOME").unwrap_or_default();
    let path = format!("{}:/usr/bin:/bin", rustc.parent().unwrap().display());
    let (out, dir) = build(&path, &home);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("building with rustc"));
    assert!(dir.path().join("out/hello").is_file());
}
