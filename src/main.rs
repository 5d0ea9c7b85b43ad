//! `charter`: the one binary. Servers, the dev cluster, agents and the CLI.
//!
//! Each noun lives in its own module under `cli/`.

mod cli;

/// jemalloc, as TiKV uses, instead of glibc's malloc. Measured with
/// `charter bench` (README, Performance): over 1,000,000 soak cycles with
/// glibc's malloc a member's RSS and grant p99 crept up and its cycle rate
/// fell by a quarter (2,966 -> 2,138/s, `_int_malloc` taking a growing
/// share of the CPU); jemalloc kept all three flat (RSS within 2%), and
/// took about a fifth off the members' CPU per grant at 64 in flight, for
/// about 8 MiB more resident heap.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (its `malloc_conf`; `_RJEM_MALLOC_CONF` in the
/// environment overrides them): two arenas instead of four per core, so
/// tokio's and raft's threads share heaps; pages a member frees go back
/// to the system after a second instead of ten (no muzzy stage); and each
/// thread caches freed blocks of up to 4 KiB instead of 32 KiB. A member
/// has about fifteen threads (tokio's, raft's, sled's seven IO threads) and
/// each kept up to 20 freed blocks of every size class from 4 to 32 KiB:
/// 13 MiB of the leader's heap sat in thread caches during a soak
/// (`malloc_stats_print`), 5 MiB with the 4 KiB limit, and its RSS after
/// 120,000-150,000 cycles fell from 67-72 to 61-62 MiB with no
/// measurable change in CPU per grant (README, Performance).
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 63] =
    b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_max:4096\0";

use clap::Parser;

fn main() {
    // Everything Charter writes (raft logs, state, tokens, task logs,
    // certificates) is its owner's alone: files 0600, directories 0700.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    quiet_on_closed_stdout();
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

#[cfg(test)]
mod tests {
    /// jemalloc runs with `MALLOC_CONF`'s settings, not its defaults (four
    /// arenas per core, ten-second decay, 32 KiB thread caches), and is the
    /// global allocator: a `Box` lives in one of its two arenas
    /// (`arenas.lookup`). Without the
    /// `#[global_allocator]` line the lookup is refused or faults on a
    /// pointer jemalloc never handed out; either way the test fails.
    #[test]
    fn jemalloc_is_the_allocator_with_charters_settings() {
        let held = Box::new([7u64; 8]);
        let mut ptr: *const [u64; 8] = &*held;
        let mut arena: u32 = u32::MAX;
        let mut len = std::mem::size_of::<u32>();
        // SAFETY: `arenas.lookup` takes a pointer (`void *`) and gives an
        // arena index (`unsigned`); both buffers are the sizes passed.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arenas.lookup".as_ptr(),
                (&raw mut arena).cast(),
                &mut len,
                (&raw mut ptr).cast(),
                std::mem::size_of::<*const [u64; 8]>(),
            )
        };
        assert_eq!(rc, 0, "jemalloc does not know a Box's memory");
        assert!(arena < 2, "a Box in arena {arena}");
        drop(held);
        // SAFETY: reads of jemalloc options, with the C types its manual
        // gives them (unsigned, ssize_t, size_t).
        let (narenas, dirty, muzzy, tcache_max) = unsafe {
            (
                tikv_jemalloc_ctl::raw::read::<u32>(b"opt.narenas\0").unwrap(),
                tikv_jemalloc_ctl::raw::read::<isize>(b"opt.dirty_decay_ms\0").unwrap(),
                tikv_jemalloc_ctl::raw::read::<isize>(b"opt.muzzy_decay_ms\0").unwrap(),
                tikv_jemalloc_ctl::raw::read::<usize>(b"opt.tcache_max\0").unwrap(),
            )
        };
        assert_eq!((narenas, dirty, muzzy, tcache_max), (2, 1000, 0, 4096));
    }
}
