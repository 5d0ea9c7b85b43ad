//! What the codec costs per proposal: encodes and decodes a lease request
//! as a forwarded write and inside a log entry of 32, and decodes its
//! `LeaseSpec` alone and its `Command` alone (the difference is serde's
//! buffering of the internally tagged `Command`), and prints µs per call.
//!
//! `cargo run --release -p charter-scheduler --example codec_cost [N]`
//! (default 200,000 calls of each).

use charter_scheduler::codec::{self, Kind};
use charter_scheduler::state::{Command, LeaseSpec, Proposal, Resources};
use serde::de::DeserializeOwned;
use std::hint::black_box;
use std::time::Instant;

/// µs per call of `f`, over `n` calls.
fn per_call(n: u64, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn decodes<T: DeserializeOwned>(n: u64, kind: Kind, b: &[u8]) -> f64 {
    per_call(n, || {
        let v: Result<T, _> = codec::decode(kind, black_box(b));
        black_box(v.is_ok());
    })
}

fn main() -> Result<(), String> {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(format!("N {a:?}: give a whole number above 0"))?,
        None => 200_000,
    };
    let resources = Resources {
        cpu_millis: 10,
        memory_bytes: 1 << 20,
        ..Resources::default()
    };
    let spec = LeaseSpec {
        reason: "bench".into(),
        ..LeaseSpec::simple(resources, 3_600_000)
    };
    let p = Proposal {
        at: 1_900_000_000_000,
        principal: "bench".into(),
        admin: true,
        key: Some("0123456789abcdef0123456789abcdef".into()),
        hint: Some(vec!["b17".into()]),
        cmd: Command::RequestLease(spec.clone()),
    };
    let fwd = codec::encode(Kind::Forward, &p);
    let entry = codec::encode(Kind::Entry, &vec![p.clone(); 32]);
    let spec_only = codec::encode(Kind::Forward, &spec);
    let cmd_only = codec::encode(Kind::Forward, &p.cmd);
    let back: Vec<Proposal> =
        codec::decode(Kind::Entry, &entry).map_err(|e| format!("the entry: {e}"))?;
    if back.first() != Some(&p) {
        return Err("the entry does not decode to what was encoded".into());
    }
    println!("{:>40} {:>8}", "per call", "µs");
    let enc = per_call(n, || {
        black_box(codec::encode(Kind::Forward, black_box(&p)));
    });
    println!("{:>40} {enc:>8.2}", "encode a proposal");
    let dec = decodes::<Proposal>(n, Kind::Forward, &fwd);
    println!("{:>40} {dec:>8.2}", "decode a proposal");
    let in_entry = decodes::<Vec<Proposal>>(n / 32, Kind::Entry, &entry) / 32.0;
    println!(
        "{:>40} {in_entry:>8.2}",
        "decode a proposal in an entry of 32"
    );
    let s = decodes::<LeaseSpec>(n, Kind::Forward, &spec_only);
    println!("{:>40} {s:>8.2}", "decode its LeaseSpec alone");
    let c = decodes::<Command>(n, Kind::Forward, &cmd_only);
    println!("{:>40} {c:>8.2}", "decode its Command alone");
    println!("{} bytes as a forwarded write", fwd.len());
    Ok(())
}
