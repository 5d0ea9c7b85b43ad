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
    let args = cli::Args::parse();
    let code = match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", cli::output::format_error(&e));
            1
        }
    };
    std::process::exit(code);
}
