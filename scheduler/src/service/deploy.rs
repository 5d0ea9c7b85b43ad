//! Deploy: registering apps (`charter deploy apply app.toml`) and listing
//! them. Deployments arrive with the deployer's controller.

use super::Api;
use super::auth::principal;
use crate::state::{App, Applied, Command};
use charter_config::AnyConfig;
use charter_proto as pb;
use tonic::{Request, Response, Status};

fn app_pb(a: &App) -> pb::App {
    pb::App {
        name: a.config.name.clone(),
        repo: a.config.repo.clone(),
        branch: a.config.branch.clone(),
        servers: a.config.servers,
        version: a.version.clone(),
        applied_by: a.applied_by.clone(),
        created_at_ms: a.created_at,
        updated_at_ms: a.updated_at,
        definition: String::from_utf8_lossy(&charter_config::canonical::to_bytes(&a.config))
            .into_owned(),
    }
}

#[tonic::async_trait]
impl pb::deploy_server::Deploy for Api {
    async fn apply(
        &self,
        req: Request<pb::ApplyAppRequest>,
    ) -> Result<Response<pb::ApplyAppReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let name = if r.file.is_empty() {
            "app.toml"
        } else {
            &r.file
        };
        let cfg = match charter_config::load(name, &r.text) {
            Ok(AnyConfig::App(a)) => a,
            Ok(other) => {
                return Err(Status::invalid_argument(format!(
                    "{name} is a {} config, not an app; an app has kind = \"app\"",
                    other.kind()
                )));
            }
            Err(d) => {
                return Err(Status::invalid_argument(format!(
                    "{name} is not a valid app; nothing was applied:\n{d}"
                )));
            }
        };
        let version = charter_config::canonical::hash(&charter_config::canonical::to_bytes(&cfg));
        let out = self
            .submit(
                &who,
                &r.idempotency_key,
                Command::AppApply {
                    config: cfg,
                    version,
                },
            )
            .await?;
        match out {
            Applied::AppApplied { app, change } => Ok(Response::new(pb::ApplyAppReply {
                app: Some(app_pb(&app)),
                change,
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsReply>, Status> {
        let _who = principal(&req)?;
        self.barrier(req.get_ref().stale).await?;
        Ok(Response::new(pb::ListAppsReply {
            apps: self.member.read(|s| s.apps.values().map(app_pb).collect()),
        }))
    }
}
