//! Validation is data-driven: each case is a file and the exact diagnostics.

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
            "lease.toml:3: memory: unknown field; expected one of: cpu, disk, for, gpu, kind, labels, mem, reason",
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
            "lease.toml:1: kind: expected one of lease, node, got \"job\"",
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
