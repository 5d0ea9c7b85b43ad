//! Deploy: apps (`charter deploy apply app.toml`), deployments (triggers,
//! history, the deployer controller's view and step changes) and the
//! member's artifact store (agents upload a build's artifact and fetch it
//! for a server, checking its sha256).
//!
//! Over 500 lines: the Deploy service: apps, deployments, the deployer's view and the artifact store's streams.

use super::auth::{Scope, agent_caller, controller, principal, principal_or};
use super::{Api, convert};
use crate::state::{App, Applied, Command, State, StepReport, Task};
use charter_config::AnyConfig;
use charter_config::codec::Kind;
use charter_config::deployment::{AppView, DeployStatus, DeployView, Deployment, TaskView};
use charter_config::deployment::{DeployStep, Trigger};
use charter_config::named::UnknownName;
use charter_proto as pb;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Where a member keeps artifacts (the deployer's store, handed in by the binary).
pub trait Artifacts: Send + Sync {
    /// Stores the file at `file` as a version of `app`, keeping its newest
    /// `keep` and every one in `pinned`; returns its sha256.
    fn put(
        &self,
        app: &str,
        file: &Path,
        keep: usize,
        pinned: &[String],
    ) -> std::io::Result<String>;
    /// Where the artifact `sha256` is, if stored here.
    fn path(&self, sha256: &str) -> Option<PathBuf>;
    /// A directory for uploads in progress.
    fn incoming(&self) -> PathBuf;
}

/// A handle on a member's artifact store.
#[derive(Clone)]
pub struct ArtifactStore(pub Arc<dyn Artifacts>);

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactStore")
    }
}

/// Bytes per artifact chunk on the wire.
const CHUNK: usize = 1 << 20;

/// A deployment for an API `bytes` field (see [`convert::record`]).
fn deployment_bytes(d: &Deployment) -> Result<Vec<u8>, Status> {
    convert::record(Kind::Deployment, d)
}

/// A deployment if there is one, or an empty field.
fn maybe_deployment(d: Option<Box<Deployment>>) -> Result<Vec<u8>, Status> {
    d.map(|d| deployment_bytes(&d))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A deployment step named on the wire.
fn step_of(s: &str) -> Result<DeployStep, Status> {
    s.parse()
        .map_err(|e: UnknownName| Status::invalid_argument(e.to_string()))
}

fn deploy_reply(out: Applied) -> Result<(Option<Box<Deployment>>, bool, String), Status> {
    match out {
        Applied::Deploy {
            deployment,
            started,
            reason,
        } => Ok((deployment, started, reason)),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The host a node's agent serves on: where its tasks' ports are.
pub fn agent_host<'a>(s: &'a State, node: &str) -> Option<&'a str> {
    let addr = &s.nodes.get(node)?.agent.as_ref()?.addr;
    addr.rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
}

/// What the deployer knows of a task: its state, health, lease and where
/// its ports are.
pub fn task_view(s: &State, t: &Task) -> TaskView {
    let lease = s.leases.get(&t.lease);
    let node = lease
        .and_then(|l| l.nodes.first())
        .cloned()
        .unwrap_or_default();
    let host = agent_host(s, &node).unwrap_or_default().to_string();
    TaskView {
        state: t.state,
        health: t.health,
        health_since: t.health_since,
        lease: t.lease,
        lease_state: lease.map(|l| l.state).unwrap_or_default(),
        expires_at: lease.map(|l| l.expires_at),
        node,
        host,
        ports: t.ports.clone(),
        artifact: t.artifact.clone(),
        exit_code: t.exit_code,
        message: t.message.clone(),
    }
}

/// The deployer controller's view of the state.
pub fn deploy_view(s: &State) -> DeployView {
    let mut v = DeployView {
        time: s.time,
        ..DeployView::default()
    };
    for a in s.apps.values() {
        v.apps.insert(
            a.config.name.clone(),
            AppView {
                config: (&a.config).into(),
                applied_by: a.applied_by.clone(),
                active: a.active,
            },
        );
    }
    // Only the commits being deployed now can reuse a build.
    let deploying: std::collections::BTreeSet<(&str, &str)> = s
        .apps
        .deployments
        .values()
        .filter(|d| d.status == DeployStatus::Running)
        .map(|d| (d.app.as_str(), d.commit.as_str()))
        .collect();
    for d in s.apps.deployments.values() {
        if !d.artifact.is_empty() && deploying.contains(&(d.app.as_str(), d.commit.as_str())) {
            v.built
                .entry(d.app.clone())
                .or_default()
                .insert(d.commit.clone(), d.artifact.clone());
        }
        if matches!(d.status, DeployStatus::Running | DeployStatus::Active) {
            for id in d.build_task.iter().chain(&d.instances) {
                if let Some(t) = s.tasks.get(id) {
                    v.tasks.insert(*id, task_view(s, t));
                }
            }
            v.deployments.push(d.clone());
        }
    }
    v
}

/// An app on the wire; its webhook secret only for its applier and admins.
fn app_pb(a: &App, who: &super::auth::Principal) -> Result<pb::App, Status> {
    let mut config = charter_config::app::AppConfig::from(&a.config);
    if !who.admin && who.name != a.applied_by {
        if !config.secret.is_empty() {
            config.secret = charter_config::task::HIDDEN.into();
        }
        charter_config::task::hide(&mut config.run.secret_env);
    }
    Ok(pb::App {
        name: a.config.name.clone(),
        repo: a.config.repo.clone(),
        branch: a.config.branch.clone(),
        servers: a.config.servers,
        version: a.version.clone(),
        applied_by: a.applied_by.clone(),
        created_at_ms: a.created_at,
        updated_at_ms: a.updated_at,
        definition: convert::record(Kind::App, &config)?,
    })
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
                    config: Box::new((&*cfg).into()),
                    version,
                },
            )
            .await?;
        match out {
            Applied::AppApplied { app, change } => Ok(Response::new(pb::ApplyAppReply {
                app: Some(app_pb(&app, &who)?),
                change: change.to_string(),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsReply>, Status> {
        let who = principal_or(&req, Scope::Deployer)?;
        self.barrier(req.get_ref().stale).await?;
        Ok(Response::new(pb::ListAppsReply {
            apps: self.member.read(|s| {
                s.apps
                    .values()
                    .map(|a| app_pb(a, &who))
                    .collect::<Result<_, _>>()
            })?,
        }))
    }

    async fn trigger(
        &self,
        req: Request<pb::TriggerDeployRequest>,
    ) -> Result<Response<pb::TriggerDeployReply>, Status> {
        let who = principal_or(&req, Scope::Deployer)?;
        let r = req.into_inner();
        let trigger = match r.trigger.as_str() {
            "" => Trigger::Manual,
            t => t
                .parse()
                .map_err(|e: UnknownName| Status::invalid_argument(e.to_string()))?,
        };
        if !r.commit.is_empty() && !r.commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "commit `{}` is not a hex commit id; give a full or abbreviated sha, or none for the branch head",
                r.commit
            )));
        }
        let cmd = Command::DeployTrigger {
            app: r.app,
            commit: r.commit,
            trigger,
            delivery: r.delivery,
        };
        let out = if r.idempotency_key.is_empty() {
            self.submit_unkeyed(&who, cmd).await?
        } else {
            self.submit(&who, &r.idempotency_key, cmd).await?
        };
        let (d, started, reason) = deploy_reply(out)?;
        Ok(Response::new(pb::TriggerDeployReply {
            deployment: maybe_deployment(d)?,
            started,
            reason,
        }))
    }

    async fn history(
        &self,
        req: Request<pb::DeployHistoryRequest>,
    ) -> Result<Response<pb::DeployHistoryReply>, Status> {
        let _who = principal_or(&req, Scope::Deployer)?;
        self.barrier(req.get_ref().stale).await?;
        let r = req.into_inner();
        let n = if r.n == 0 { 20 } else { r.n as usize };
        self.member.read(|s| {
            let app = s.apps.get(&r.app).ok_or_else(|| {
                Status::not_found(format!(
                    "app {} not found; charter deploy list shows the apps",
                    r.app
                ))
            })?;
            let ds: Vec<&Deployment> = s
                .apps
                .deployments
                .values()
                .rev()
                .filter(|d| d.app == r.app)
                .take(n)
                .collect();
            let mut tasks = std::collections::HashMap::new();
            for d in &ds {
                for id in d.build_task.iter().chain(&d.instances) {
                    if let Some(t) = s.tasks.get(id) {
                        tasks.insert(*id, convert::record(Kind::TaskView, &task_view(s, t))?);
                    }
                }
            }
            let mut deployments = ds
                .iter()
                .map(|d| deployment_bytes(d))
                .collect::<Result<Vec<_>, _>>()?;
            // Older deployments than the live state keeps, from history.
            if deployments.len() < n {
                let oldest = ds.last().map_or(u64::MAX, |d| d.id);
                let older = self
                    .member
                    .history()
                    .map(|h| h.deployments(&r.app, n - deployments.len()))
                    .unwrap_or_default();
                for d in older.iter().filter(|d| d.id < oldest) {
                    deployments.push(deployment_bytes(d)?);
                }
            }
            Ok(Response::new(pb::DeployHistoryReply {
                deployments,
                active: app.active.unwrap_or(0),
                tasks,
            }))
        })
    }

    async fn plan(
        &self,
        req: Request<pb::DeployPlanRequest>,
    ) -> Result<Response<pb::DeployPlanReply>, Status> {
        let _who = controller(&req, Scope::Deployer, "reading the deployer's plan")?;
        let is_leader = || self.member.status().role == crate::raft_driver::Role::Leader;
        if req.get_ref().leader_only && !is_leader() {
            return Ok(Response::new(pb::DeployPlanReply::default()));
        }
        self.barrier(false).await?;
        let leader = is_leader();
        let mut view = self.member.read(deploy_view);
        // An earlier build whose artifact this member no longer holds
        // (pruned by `keep`, or lost) is built again rather than reused:
        // its servers could not fetch it.
        if let Some(store) = &self.artifacts {
            for by_commit in view.built.values_mut() {
                by_commit.retain(|_, sha| store.0.path(sha).is_some());
            }
        }
        Ok(Response::new(pb::DeployPlanReply {
            leader,
            view: convert::record(Kind::DeployView, &view)?,
        }))
    }

    async fn step(
        &self,
        req: Request<pb::DeployStepRequest>,
    ) -> Result<Response<pb::DeploymentReply>, Status> {
        let who = controller(&req, Scope::Deployer, "changing a deployment's step")?;
        let r = req.into_inner();
        let cmd = Command::DeployStep(StepReport {
            id: r.id,
            step: step_of(&r.step)?,
            failed: r.failed,
            message: r.message,
            commit: r.commit,
            artifact: r.artifact,
            build_log: r.build_log,
            behind: r.behind,
        });
        let (d, _, _) = deploy_reply(self.submit_unkeyed(&who, cmd).await?)?;
        Ok(Response::new(pb::DeploymentReply {
            deployment: maybe_deployment(d)?,
        }))
    }

    async fn submit(
        &self,
        req: Request<pb::DeploySubmitRequest>,
    ) -> Result<Response<pb::DeploymentReply>, Status> {
        let who = controller(&req, Scope::Deployer, "submitting a deployment's tasks")?;
        let r = req.into_inner();
        if r.leases.len() != r.tasks.len() {
            return Err(Status::invalid_argument("one lease per task"));
        }
        let mut tasks = Vec::new();
        for (l, t) in r.leases.into_iter().zip(r.tasks) {
            tasks.push((
                crate::state::LeaseSpec::try_from(l)?,
                crate::state::TaskSpec::try_from(t)?,
            ));
        }
        let cmd = Command::DeploySubmit {
            id: r.id,
            step: step_of(&r.step)?,
            tasks,
        };
        let (d, _, _) = deploy_reply(self.submit_unkeyed(&who, cmd).await?)?;
        Ok(Response::new(pb::DeploymentReply {
            deployment: maybe_deployment(d)?,
        }))
    }

    async fn put_artifact(
        &self,
        req: Request<Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::PutArtifactReply>, Status> {
        let (_, scoped) = agent_caller(&req, "storing an artifact")?;
        let store = self.artifacts()?;
        let mut stream = req.into_inner();
        let dir = store.0.incoming();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Status::internal(format!("cannot make {}: {e}", dir.display())))?;
        let tmp = dir.join(format!("upload-{}", uuid_ish()));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Status::internal(format!("cannot write {}: {e}", tmp.display())))?;
        let (mut app, mut want, mut size, mut h) =
            (String::new(), String::new(), 0u64, Sha256::new());
        let member = self.member.clone();
        let result: Result<(), Status> = async {
            let mut first = true;
            while let Some(c) = stream.next().await {
                let c = c?;
                if std::mem::take(&mut first) {
                    // Only the app the named task builds, checked before a
                    // byte is written.
                    member.read(|s| {
                        build_of(s, c.task_id, &c.app)?;
                        runs_on(s, c.task_id, &scoped)
                    })?;
                    app = c.app;
                    want = c.sha256;
                }
                h.update(&c.data);
                size += c.data.len() as u64;
                tokio::io::AsyncWriteExt::write_all(&mut file, &c.data)
                    .await
                    .map_err(|e| Status::internal(format!("cannot write the artifact: {e}")))?;
            }
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(|e| Status::internal(format!("cannot write the artifact: {e}")))?;
            Ok(())
        }
        .await;
        drop(file);
        let got = hex::encode(h.finalize());
        // Versions still running or active are never pruned.
        let (keep, pinned) = self.member.read(|s| {
            let keep = s.apps.get(&app).map_or(5, |a| a.config.keep as usize);
            let pinned: Vec<String> = s
                .apps
                .deployments
                .values()
                .filter(|d| {
                    d.app == app && matches!(d.status, DeployStatus::Running | DeployStatus::Active)
                })
                .map(|d| d.artifact.clone())
                .filter(|a| !a.is_empty())
                .collect();
            (keep, pinned)
        });
        let stored = match result {
            Err(e) => Err(e),
            Ok(()) if got != want => Err(Status::invalid_argument(format!(
                "the artifact's bytes have sha256 {got}, not {want}; upload it again"
            ))),
            Ok(()) => {
                let (s, t, a) = (store.clone(), tmp.clone(), app.clone());
                tokio::task::spawn_blocking(move || s.0.put(&a, &t, keep, &pinned))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map(|_| ())
                    .map_err(|e| Status::internal(format!("cannot store the artifact: {e}")))
            }
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        stored?;
        Ok(Response::new(pb::PutArtifactReply { size }))
    }

    type GetArtifactStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>,
    >;

    async fn get_artifact(
        &self,
        req: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        let (_, scoped) = agent_caller(&req, "fetching an artifact")?;
        let store = self.artifacts()?;
        let key = req.into_inner().sha256;
        if let Some(node) = &scoped {
            self.member.read(|s| needed_on(s, &key, node))?;
        }
        let path = store.0.path(&key).ok_or_else(|| {
            Status::not_found(format!("artifact {key} is not stored on this member"))
        })?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::internal(format!("cannot read {}: {e}", path.display())))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let c = pb::ArtifactChunk {
                            app: String::new(),
                            sha256: key.clone(),
                            data: buf[..n].to_vec(),
                            task_id: 0,
                        };
                        if tx.send(Ok(c)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "cannot read the artifact: {e}"
                            ))))
                            .await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Whether task `task` is the build of a deployment of `app`: the only
/// artifact an upload may store.
fn build_of(s: &State, task: u64, app: &str) -> Result<(), Status> {
    if !charter_config::limits::name(app) {
        return Err(Status::invalid_argument(format!(
            "app name {:?}: {}",
            app.chars().take(64).collect::<String>(),
            charter_config::limits::NAME_RULE
        )));
    }
    let builds = s
        .apps
        .deployments
        .values()
        .any(|d| d.build_task == Some(task) && d.app == app);
    if builds {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "task {task} is not a build of app {app}; only a deployment's build stores an artifact"
        )))
    }
}

/// Refuses a node-scoped caller when task `task` does not run on its node.
fn runs_on(s: &State, task: u64, scoped: &Option<String>) -> Result<(), Status> {
    let Some(node) = scoped else {
        return Ok(());
    };
    let here = s
        .tasks
        .get(&task)
        .and_then(|t| s.leases.get(&t.lease))
        .is_some_and(|l| l.nodes.contains(node));
    if here {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "task {task} does not run on node {node}; a node credential moves only its own tasks' artifacts"
        )))
    }
}

/// Refuses node `node` an artifact no live task on it fetches.
fn needed_on(s: &State, sha: &str, node: &str) -> Result<(), Status> {
    let needed = s.tasks.values().any(|t| {
        !t.state.is_ended()
            && t.spec.artifact_in == sha
            && s.leases
                .get(&t.lease)
                .is_some_and(|l| l.nodes.iter().any(|n| n == node))
    });
    if needed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "no task on node {node} uses artifact {sha}; a node credential fetches only its own tasks' artifacts"
        )))
    }
}

/// Whether task `task` is a deployment's build or server.
pub(super) fn deployment_task(s: &State, task: u64) -> bool {
    s.apps
        .deployments
        .values()
        .any(|d| d.build_task == Some(task) || d.instances.contains(&task))
}

/// Whether lease `lease` holds a deployment's build or server.
pub(super) fn deployment_lease(s: &State, lease: u64) -> bool {
    s.apps.deployments.values().any(|d| {
        d.build_task
            .iter()
            .chain(&d.instances)
            .any(|t| s.tasks.get(t).is_some_and(|t| t.lease == lease))
    })
}

/// A name for an upload's temporary file, unique within the process.
fn uuid_ish() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
