//! What the live state holds in heap at the soak's steady state: applies
//! request-and-release cycles (each with its own idempotency key, as the
//! soak sends them) to a `State` with the default retention, then prints
//! the heap held and what each large map takes, and how long a clone (what
//! the raft thread does per snapshot) takes.
//!
//! `cargo run --release -p charter-scheduler --example state_heap [CYCLES]
//! [PER_MS]` (default 200,000 cycles, 2 in each ms of state time: the soak
//! runs 1,500-4,000 cycles a second, so several keys share a millisecond).

use charter_scheduler::state::{Applied, Command, LeaseSpec, Millis, Proposal, Resources, State};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to `System` with the caller's arguments as they
// came; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HELD.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        HELD.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn mib() -> f64 {
    HELD.load(Ordering::Relaxed) as f64 / 1_048_576.0
}

fn proposal(at: Millis, key: String, cmd: Command) -> Proposal {
    Proposal {
        at,
        principal: "bench".into(),
        admin: true,
        key: Some(key),
        hint: None,
        cmd,
    }
}

fn main() -> Result<(), String> {
    let cycles: u64 = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| format!("CYCLES {a:?}: {e}: give a whole number"))?,
        None => 200_000,
    };
    let per_ms: u64 = match std::env::args().nth(2) {
        Some(a) => a
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(format!("PER_MS {a:?}: give a whole number above 0"))?,
        None => 2,
    };
    let mut s = State::new(Default::default());
    let register = Command::RegisterNode {
        name: "soak".into(),
        capacity: Resources {
            cpu_millis: 1_000_000,
            memory_bytes: 1 << 40,
            ..Resources::default()
        },
        labels: Default::default(),
        pool: "bench".into(),
        cost_per_hour: 0.0,
        ttl_ms: None,
        agent: None,
    };
    s.apply(&proposal(1, "node".into(), register))
        .map_err(|r| format!("register: {r:?}"))?;
    let start = mib();
    let began = Instant::now();
    for n in 0..cycles {
        let at = 1_000_000 + (n / per_ms) as Millis;
        let mut spec = LeaseSpec::simple(
            Resources {
                cpu_millis: 10,
                ..Resources::default()
            },
            3_600_000,
        );
        spec.reason = "soak".into();
        let client = n % 32;
        let id = match s.apply(&proposal(
            at,
            format!("soak-{client}-{n}"),
            Command::RequestLease(spec),
        )) {
            Ok(Applied::Lease(l)) => l.id,
            other => return Err(format!("cycle {n}: request: {other:?}")),
        };
        s.apply(&proposal(
            at,
            format!("soak-{client}-{n}-release"),
            Command::ReleaseLease { id },
        ))
        .map_err(|r| format!("cycle {n}: release: {r:?}"))?;
        // The driver hands these to the history store and drains events.
        let _ = s.take_trimmed();
        s.events.0.clear();
    }
    println!(
        "{cycles} cycles ({per_ms} per ms) in {:?}: state heap {:.2} MiB, {} leases, {} keys",
        began.elapsed(),
        mib() - start,
        s.leases.len(),
        s.keys.len()
    );
    let t = Instant::now();
    let copy = s.clone();
    println!("clone: {:?}", t.elapsed());
    drop(copy);
    let mut part = |name: &str, take: &mut dyn FnMut(&mut State)| {
        let before = mib();
        take(&mut s);
        println!("{name}: {:.2} MiB", before - mib());
    };
    part("keys by time", &mut |s| s.keys.times = Default::default());
    part("keys by id", &mut |s| s.keys.all = Default::default());
    part("ended leases' order", &mut |s| {
        s.leases.ended = Default::default()
    });
    part("leases", &mut |s| s.leases.all = Default::default());
    println!("rest: {:.2} MiB", mib() - start);
    Ok(())
}
