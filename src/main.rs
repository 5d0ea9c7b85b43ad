//! `charter`: the one binary. Servers, the dev cluster, agents and the CLI.
//!
//! Each noun lives in its own module under `cli/`.

mod cli;

use clap::Parser;

fn main() {
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
