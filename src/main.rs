//! `charter`: the one binary. Servers, the dev cluster, agents and the CLI.
//!
//! Each noun lives in its own module under `cli/`.

mod cli;

use clap::Parser;

fn main() {
    // Everything Charter writes (raft logs, state, tokens, task logs,
    // certificates) is its owner's alone: files 0600, directories 0700.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    quiet_on_closed_stdout();
    steady_heap();
    let args = cli::Args::parse();
    let json = args.json;
    let code = match cli::run(args) {
        Ok(code) => code,
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            141
        }
        Err(e) if json => {
            eprintln!("{}", cli::output::error_json(&e));
            1
        }
        Err(e) => {
            eprintln!("{}", cli::output::format_error(&e));
            1
        }
    };
    std::process::exit(code);
}

/// `charter lease list | head -1`: a reader that closed its end of the pipe
/// ends the command quietly with 141 (as SIGPIPE would end `cat`), not
/// with a panic. SIGPIPE itself stays ignored, so a server's connection
/// closing under a write is an error the client retries, not a death.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Keeps a long-running member's heap from growing with its churn (glibc
/// only). Measured with `charter bench --scenario soak` (150,000 cycles,
/// README): a member settled at 112 MiB resident with glibc's defaults and
/// at 77 MiB with these two settings, at a higher grant rate. By default
/// glibc raises its mmap threshold each time a large block (a snapshot's
/// encoding, a page of the assignment watch) is freed, so later large
/// blocks come from the heap and leave holes it never returns; a fixed
/// threshold gives every block over 256 KiB its own mapping, returned to
/// the system when freed. Two arenas instead of eight per core keep
/// tokio's worker threads from each holding a heap of its own.
fn steady_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called once,
    // before any other thread exists, and a refused setting is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the heap's free pages back to the system every `every` (glibc
/// only), for a member's lifetime: what the member frees under churn
/// (ended leases and idempotency records trimmed, a snapshot's encoding)
/// leaves free pages inside the heap that glibc keeps until asked.
/// Measured with `bench --scenario soak --cycles 1000000` (README): the
/// leader ended at 88.8 MiB without it and 72.7 MiB trimmed every 10 s,
/// with no loss of grant rate.
pub fn return_free_heap(every: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    // SAFETY: malloc_trim only releases free memory; it
                    // takes the allocator's own locks.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the heap trimmer; the member runs without it");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}
