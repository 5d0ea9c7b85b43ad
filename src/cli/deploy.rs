//! `charter deploy`: the deployer. For now `apply` registers or updates an
//! app from its app.toml (checked here and again by the server) and `list`
//! shows the registered apps; deployments arrive with the controller.

use super::client::{Client, Global, new_key};
use super::output::{self, fail};
use charter_proto as pb;
use charter_proto::deploy_client::DeployClient;
use clap::Subcommand;
use serde::Serialize;
use std::path::PathBuf;

/// Deploy verbs.
#[derive(Subcommand, Debug)]
pub enum DeployCmd {
    /// Register an app from its app.toml, or update it.
    Apply {
        /// The app file (`kind = "app"`; see examples/app/app.toml).
        file: PathBuf,
    },
    /// The registered apps.
    List,
}

/// An app as `--json` prints it.
#[derive(Serialize)]
struct AppJson {
    name: String,
    repo: String,
    branch: String,
    servers: u32,
    version: String,
    applied_by: String,
    created_at: String,
    updated_at: String,
}

fn app_json(a: &pb::App) -> AppJson {
    AppJson {
        name: a.name.clone(),
        repo: a.repo.clone(),
        branch: a.branch.clone(),
        servers: a.servers,
        version: a.version.clone(),
        applied_by: a.applied_by.clone(),
        created_at: output::time(a.created_at_ms),
        updated_at: output::time(a.updated_at_ms),
    }
}

/// Runs a deploy verb.
pub async fn run(g: &Global, cmd: DeployCmd) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    match cmd {
        DeployCmd::Apply { file } => {
            match charter_config::load_file(&file) {
                Ok(charter_config::AnyConfig::App(_)) => {}
                Ok(other) => {
                    return Err(fail(
                        format!(
                            "{} is a {} config, not an app",
                            file.display(),
                            other.kind()
                        ),
                        "",
                        "pass an app.toml (kind = \"app\"), like examples/app/app.toml",
                    ));
                }
                Err(d) => {
                    return Err(fail(
                        format!("{} is not a valid app; nothing was applied", file.display()),
                        d.to_string(),
                        "fix the lines above and apply again",
                    ));
                }
            }
            let text = std::fs::read_to_string(&file).map_err(|e| {
                fail(
                    format!("cannot read {}", file.display()),
                    e.to_string(),
                    "check the path",
                )
            })?;
            let key = new_key();
            let name = file.display().to_string();
            let r = c
                .call("deploy apply", |ch| {
                    let req = c.req(pb::ApplyAppRequest {
                        idempotency_key: key.clone(),
                        file: name.clone(),
                        text: text.clone(),
                    });
                    async move { DeployClient::new(ch).apply(req).await }
                })
                .await?;
            let app = r.app.unwrap_or_default();
            if g.json {
                output::json(&serde_json::json!({ "change": r.change, "app": app_json(&app) }))?;
            } else {
                println!(
                    "{} {} (version {})",
                    r.change,
                    app.name,
                    &app.version[..12.min(app.version.len())]
                );
            }
        }
        DeployCmd::List => {
            let r = c
                .call("deploy list", |ch| {
                    let req = c.req(pb::ListAppsRequest { stale: false });
                    async move { DeployClient::new(ch).list(req).await }
                })
                .await?;
            let rows: Vec<AppJson> = r.apps.iter().map(app_json).collect();
            if g.json {
                output::json(&serde_json::json!({ "apps": rows }))?;
            } else {
                output::table(
                    &["APP", "REPO", "BRANCH", "SERVERS", "VERSION", "UPDATED"],
                    rows.iter()
                        .map(|a| {
                            vec![
                                a.name.clone(),
                                a.repo.clone(),
                                a.branch.clone(),
                                a.servers.to_string(),
                                a.version.chars().take(12).collect(),
                                a.updated_at.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(0)
}
