//! `charter validate FILE`: checks any config and prints every problem.

use super::client::Global;
use clap::Args as ClapArgs;
use std::path::PathBuf;

/// `charter validate`.
#[derive(ClapArgs, Debug)]
pub struct ValidateArgs {
    /// The config file (lease.toml, node.toml, …).
    pub file: PathBuf,
}

/// Exit 0 when valid, 1 with diagnostics otherwise.
pub fn run(g: &Global, a: ValidateArgs) -> anyhow::Result<i32> {
    match charter_config::load_file_with(&a.file, &charter_hydra::schedule::check) {
        Ok(cfg) => {
            let hash = charter_config::canonical::hash(&cfg.canonical());
            if g.json {
                super::output::json(&serde_json::json!({
                    "file": a.file.display().to_string(),
                    "valid": true,
                    "kind": cfg.kind(),
                    "hash": hash,
                }))?;
            } else {
                println!(
                    "{}: valid {} config (sha256 {hash})",
                    a.file.display(),
                    cfg.kind()
                );
            }
            Ok(0)
        }
        Err(d) => {
            if g.json {
                let errs: Vec<_> = d
                    .0
                    .iter()
                    .map(|x| {
                        serde_json::json!({"file": x.file, "line": x.line, "field": x.field, "message": x.message})
                    })
                    .collect();
                super::output::json(
                    &serde_json::json!({"file": a.file.display().to_string(), "valid": false, "errors": errs}),
                )?;
            } else {
                eprintln!("{d}");
                eprintln!(
                    "error: {} is not a valid Charter config ({} problem(s))",
                    a.file.display(),
                    d.0.len()
                );
            }
            Ok(1)
        }
    }
}
