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
