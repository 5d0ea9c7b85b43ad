//! Validation is data-driven: each case is a file and the exact diagnostics.

use charter_config::spec::Prefer;
use charter_config::{AnyConfig, load};

#[test]
fn diagnostics_table() {
    let cases: &[(&str, &str)] = &[
        ("cpu = 2\nmem = \"4GiB\"\nfor = \"2h\"\n", ""),
        (
            "# a lease\nmem = \"4GiB\"\nfor = \"2h\"\ncpu = \"two\"\n",
            "lease.toml:4: cpu: expected cores like 2 or 0.5, got \"two\"",
        ),
        (
            "cpu = \"two\"\nmem = \"lots\"\nfor = \"forever\"\n",
            "lease.toml:1: cpu: expected cores like 2 or 0.5, got \"two\"\n\
             lease.toml:2: mem: expected a size like 512MiB or 4GiB, got \"lots\"\n\
             lease.toml:3: for: expected a duration like 30s, 15m, 2h or 1d, got \"forever\"",
        ),
        (
            "cpu = 1\n",
            "lease.toml: for: missing; expected how long the lease lasts, like for = \"2h\"",
        ),
        (
            "cpu = 1\nfor = \"1h\"\nmemory = \"1GiB\"\n",
            "lease.toml:3: memory: unknown field; expected one of: constraints, count, cpu, disk, for, gpu, kind, labels, max_cost, max_total, mem, prefer, priority, reason, wait",
        ),
        (
            "cpu = 1\nfor = \"1h\"\nlabels = { gpu = 100 }\n",
            "lease.toml:3: labels.gpu: expected a string in quotes",
        ),
        (
            "cpu = 1\nfor = 10\n",
            "lease.toml:2: for: expected a duration with a unit (ms, s, m, h, d), like 10s, got \"10\"",
        ),
        (
            "cpu = [1\n",
            "lease.toml:1: invalid TOML: unclosed array, expected `]`",
        ),
        (
            "kind = \"job\"\n",
            "lease.toml:1: kind: expected one of lease, node, server, task, cron, app, got \"job\"",
        ),
        (
            "kind = \"node\"\nname = \"bad name\"\ncpu = 4\n",
            "lease.toml: mem: missing; expected the memory it offers, like mem = \"64GiB\"\n\
             lease.toml:2: name: expected 1-63 letters, digits, '-', '.' or '_', got \"bad name\"",
        ),
        (
            "kind = \"node\"\nname = \"n1\"\ncpu = 4\nmem = \"8GiB\"\ncost = -1\n",
            "lease.toml:5: cost: expected a number >= 0, got -1",
        ),
    ];
    for (src, want) in cases {
        let got = match load("lease.toml", src) {
            Ok(_) => String::new(),
            Err(d) => d.to_string(),
        };
        assert_eq!(got, *want, "for input:\n{src}");
    }
}

#[test]
fn typed_values() {
    let AnyConfig::Lease(l) = load(
        "l.toml",
        "cpu = 0.5\nmem = \"512MiB\"\ngpu = 1\nlabels = { gpu = \"a100\" }\nfor = \"1h30m\"\nreason = \"x\"\n",
    )
    .unwrap() else {
        panic!("not a lease")
    };
    assert_eq!(
        (l.cpu_millis, l.memory_bytes, l.gpus, l.duration_ms),
        (500, 512 << 20, 1, 5_400_000)
    );
    assert_eq!(l.labels["gpu"], "a100");
    let AnyConfig::Node(n) = load(
        "n.toml",
        "kind = \"node\"\nname = \"n1\"\ncpu = 16\nmem = \"64GiB\"\npool = \"gpu\"\ncost = 2.5\n",
    )
    .unwrap() else {
        panic!("not a node")
    };
    assert_eq!(
        (
            n.name.as_str(),
            n.cpu_millis,
            n.pool.as_str(),
            n.cost_per_hour
        ),
        ("n1", 16000, "gpu", 2.5)
    );
}

#[test]
fn lease_queue_and_constraint_fields() {
    let src = "cpu = 1\nfor = \"1h\"\nconstraints = [\"zone in (a,b)\", \"cuda>=12\"]\ncount = 2\nwait = \"10m\"\nmax_total = \"4h\"\npriority = -3\nmax_cost = 1.5\nprefer = \"spread\"\n";
    let AnyConfig::Lease(l) = load("l.toml", src).unwrap() else {
        panic!("not a lease")
    };
    assert_eq!(
        (l.count, l.wait_ms, l.max_total_ms, l.priority),
        (2, 600_000, 14_400_000, -3)
    );
    assert_eq!((l.max_cost, l.prefer), (Some(1.5), Some(Prefer::Spread)));
    let bad = "cpu = 1\nfor = \"2h\"\nconstraints = [\"zone in a\"]\nprefer = \"random\"\nmax_total = \"1h\"\ncount = 0\n";
    let err = load("l.toml", bad).unwrap_err().to_string();
    for want in [
        "l.toml:3: constraints: constraint `zone in a`: the values of `in` go in parentheses",
        "l.toml:4: prefer: expected binpack, spread or cheapest, got \"random\"",
        "l.toml:6: count: expected a number of nodes from 1 up",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn server_pools() {
    let src = "kind = \"server\"\n\n[[pool]]\nname = \"burst\"\nmax_nodes = 3\nidle = \"30s\"\ncpu = 4\nmem = \"8GiB\"\nlabels = { zone = \"b\" }\ncost = 0.25\nprovisioner = \"local\"\n\n[[pool]]\nname = \"cloud\"\nmax_nodes = 10\ncpu = 16\nmem = \"64GiB\"\nprovisioner = \"command\"\ncommand = [\"./add.sh\", \"--fast\"]\nretire = [\"./rm.sh\"]\n";
    let AnyConfig::Server(c) = load("server.toml", src).unwrap() else {
        panic!("not a server config")
    };
    assert_eq!(c.pools.len(), 2);
    let b = &c.pools[0];
    assert_eq!(
        (
            b.name.as_str(),
            b.max_nodes,
            b.idle_ms,
            b.cpu_millis,
            b.cost_per_hour
        ),
        ("burst", 3, 30_000, 4000, 0.25)
    );
    assert_eq!(b.provisioner, charter_config::server::Provisioner::Local);
    assert_eq!(
        c.pools[1].provisioner,
        charter_config::server::Provisioner::Command {
            argv: vec!["./add.sh".into(), "--fast".into()],
            retire: vec!["./rm.sh".into()],
            timeout_ms: 300_000,
        }
    );
    let bad = "kind = \"server\"\n[[pool]]\nname = \"a\"\nmax_nodes = 0\ncpu = 1\nmem = \"1GiB\"\nprovisioner = \"cloud\"\nsize = 3\n[[pool]]\nname = \"a\"\nmax_nodes = 1\ncpu = 1\nmem = \"1GiB\"\nprovisioner = \"command\"\n";
    let err = load("server.toml", bad).unwrap_err().to_string();
    for want in [
        "server.toml:4: pool[0].max_nodes: a pool that may hold 0 nodes never grows; use 1 or more",
        "server.toml:7: pool[0].provisioner: expected \"local\" or \"command\", got \"cloud\"",
        "server.toml:8: pool[0].size: unknown field",
        "server.toml: pool[1].command: missing; expected the program to run",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn task_configs() {
    let AnyConfig::Task(t) = load(
        "task.toml",
        "kind = \"task\"\namp = \"service\"\ncommand = [\"./web\", \"-p\", \"80\"]\nrestart = \"always\"\ncpu = 1\nfor = \"2h\"\n[health]\ntcp = true\nport = 80\n",
    )
    .unwrap() else {
        panic!("not a task")
    };
    assert_eq!((t.amp.as_str(), t.restart.as_str()), ("service", "always"));
    assert_eq!(t.command, ["./web", "-p", "80"]);
    assert_eq!(t.lease.duration_ms, 7_200_000);
    let h = t.health.unwrap();
    assert_eq!((h.kind.as_str(), h.port, h.unhealthy_after), ("tcp", 80, 3));
    let bad = "kind = \"task\"\namp = \"cron\"\nrestart = \"sometimes\"\nfor = \"1h\"\n[health]\nhttp = \"/\"\nport = 99999\n";
    let err = load("task.toml", bad).unwrap_err().to_string();
    for want in [
        "task.toml: command: missing; expected the program to run",
        "task.toml:2: amp: expected batch or service, got \"cron\"",
        "task.toml:3: restart: expected always, on_failure or never, got \"sometimes\"",
        "task.toml:7: health.port: expected a port from 1 to 65535",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn cron_files() {
    let check = |e: &str, _tz: Option<&str>| {
        if e.split_whitespace().count() >= 5 || e.starts_with('@') {
            Ok(())
        } else {
            Err(format!("expected 5 fields, got `{e}`"))
        }
    };
    let src = "[[job]]\nname = \"a\"\nschedule = \"0 2 * * *\"\n[job.task]\ncommand = [\"./a\"]\nfor = \"1h\"\n\n[[job]]\nname = \"b\"\nschedule = \"@daily\"\ndepends_on = [\"a\"]\nwindow = \"1h\"\nconcurrency = \"forbid\"\nmissed = \"all\"\nmax_catch_up = 4\n[job.task]\ncommand = [\"./b\"]\nfor = \"30m\"\n";
    let AnyConfig::Cron(c) = charter_config::load_with("crontab.toml", src, &check).unwrap() else {
        panic!("not a cron file")
    };
    assert_eq!(c.jobs.len(), 2);
    let b = &c.jobs[1];
    assert_eq!(
        (
            b.window_ms,
            b.concurrency.as_str(),
            b.missed.as_str(),
            b.max_catch_up
        ),
        (3_600_000, "forbid", "all", 4)
    );
    assert_eq!(b.task.command, ["./b"]);
    // Every problem at once, with lines; nothing is returned.
    let bad = "[[job]]\nname = \"a\"\nschedule = \"0 2 *\"\ndepends_on = [\"ghost\"]\n[job.task]\ncommand = [\"./a\"]\nfor = \"1h\"\n\n[[job]]\nname = \"b\"\nschedule = \"@daily\"\nmissed = \"never\"\n";
    let err = charter_config::load_with("crontab.toml", bad, &check)
        .unwrap_err()
        .to_string();
    for want in [
        "crontab.toml:3: job[0].schedule: expected 5 fields, got `0 2 *`",
        "crontab.toml:12: job[1].missed: expected skip, latest or all, got \"never\"",
        "crontab.toml: job[1].task: missing; expected a [job.task] table",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Names are checked across the file: unknown upstreams and cycles.
    let cyc = "[[job]]\nname = \"a\"\nschedule = \"@daily\"\ndepends_on = [\"b\"]\n[job.task]\ncommand = [\"x\"]\nfor = \"1h\"\n[[job]]\nname = \"b\"\nschedule = \"@daily\"\ndepends_on = [\"a\"]\n[job.task]\ncommand = [\"x\"]\nfor = \"1h\"\n";
    let err = charter_config::load_with("c.toml", cyc, &check)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c.toml:4: job[0].depends_on: dependency cycle: a -> b -> a"),
        "{err}"
    );
    let ghost = "[[job]]\nname = \"a\"\nschedule = \"@daily\"\ndepends_on = [\"ghost\"]\n[job.task]\ncommand = [\"x\"]\nfor = \"1h\"\n";
    let err = charter_config::load_with("c.toml", ghost, &check)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no job named \"ghost\" in this file"), "{err}");
}

#[test]
fn server_raft_timing() {
    let src =
        "kind = \"server\"\n\n[raft]\nelection_timeout = \"2s\"\nheartbeat_interval = \"250ms\"\n";
    let AnyConfig::Server(c) = load("server.toml", src).unwrap() else {
        panic!("not a server config")
    };
    assert_eq!(c.raft.resolve(), Ok((50, 40, 5)));
    assert_eq!(
        charter_config::server::RaftTiming::default().resolve(),
        Ok((50, 20, 2)),
        "defaults: 1 s elections, 100 ms heartbeats"
    );
    let bad = "kind = \"server\"\n\n[raft]\nelection_timeout = \"100ms\"\nheartbeat_interval = \"200ms\"\n";
    let err = load("server.toml", bad).unwrap_err().to_string();
    assert!(
        err.contains("server.toml:4")
            && err.contains("must be longer than the heartbeat interval (200 ms)"),
        "{err}"
    );
}
