//! The deployer's controller: read, plan, act. Every [`TURN`] it reads the
//! deployer's view (`Deploy.Plan`), asks the pure planner
//! ([`crate::pipeline::next`]) what each running deployment needs, and acts:
//! fetches and resolves commits (a bare mirror per app under its work
//! directory), submits build and server tasks (`Deploy.Submit`, once per
//! step in the state), and reports steps done or failed (`Deploy.Step`,
//! which the state applies only to the current step). It also renews the
//! servers' leases and polls branch heads. Embedded in a server it acts only
//! while that member leads; a new leader's controller resumes from the
//! replicated state (an interrupted fetch is simply done again).
//!
//! Over 500 lines: the deployer's loop and the actions the planner asks for (fetch, build, servers, steps, renewals, polling).

use crate::pipeline::{self, Action, Desired};
use charter_config::app::AppConfig;
use charter_config::codec::{self, Kind};
use charter_config::constraint::Constraint;
use charter_config::deployment::{
    DeployStatus, DeployStep, DeployView, Deployment, Trigger, short_commit,
};
use charter_config::spec::{Amp, Check, CheckKind, Health, LeaseSpec, Prefer, Resources, TaskSpec};
use charter_config::states::LeaseState;
use charter_proto as pb;
use charter_proto::conn::Servers;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The sleep between two looks at the state when nothing is deploying.
pub const TURN: Duration = Duration::from_millis(250);
/// The sleep between two looks while a deployment runs (after a step
/// changed the state, the next look is at once).
pub const BUSY_TURN: Duration = Duration::from_millis(40);
/// A server's lease lasts this long and is renewed when half is left.
pub const SERVER_LEASE_MS: u64 = 3_600_000;
/// Build and server leases wait this long for capacity.
pub const WAIT_MS: u64 = 10 * 60_000;
/// The build's output kept on record when it fails.
pub const LOG_TAIL: usize = 8 << 10;
/// A fetch's result: the full commit, and the active commit it is an
/// ancestor of (a push that would roll back), if it is.
type Fetched = (String, Option<String>);

/// How a build runs in its sandbox: clone, check out, run the command. The
/// clone trusts a local repository another user owns (git's
/// safe.directory), which a lease's own uid never does.
const BUILD_SCRIPT: &str = "set -e\nprintf '[safe]\\n\\tdirectory = *\\n' > .clone-gitconfig\nGIT_CONFIG_GLOBAL=\"$PWD/.clone-gitconfig\" git clone --quiet -- \"$1\" src\nrm -f .clone-gitconfig\ncd src\ngit -c advice.detachedHead=false checkout --quiet --detach \"$2\"\nshift 2\nexec \"$@\"";

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Server addresses.
    pub servers: Vec<String>,
    /// An admin token.
    pub token: Option<String>,
    /// Act only when the member answering `Deploy.Plan` leads (embedded).
    pub only_leader: bool,
    /// Where the bare mirrors of the apps' repositories live.
    pub work: PathBuf,
    /// How long a server's lease lasts before it is renewed (0: [`SERVER_LEASE_MS`]).
    pub server_lease_ms: u64,
}

/// Milliseconds since the Unix epoch, from the wall clock.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An app and its branch head, or why it could not be read.
type Head = (String, Result<String, String>);

struct Poll {
    next: i64,
    seen: String,
}

/// The controller's memory between turns (all of it can be lost).
struct Controller {
    opts: Options,
    servers: Servers,
    /// Fetches under way: each resolves the commit and, for a push, the
    /// active commit it is an ancestor of (if it is).
    fetching: HashMap<u64, JoinHandle<Result<Fetched, String>>>,
    polls: HashMap<String, Poll>,
    polling: Option<JoinHandle<Vec<Head>>>,
}

/// Runs until `stop` turns true.
pub async fn run(opts: Options, mut stop: watch::Receiver<bool>) {
    let servers = match Servers::new(&opts.servers, opts.token.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the deployer cannot start");
            return;
        }
    };
    let mut c = Controller {
        opts,
        servers,
        fetching: HashMap::new(),
        polls: HashMap::new(),
        polling: None,
    };
    let mut pause = TURN;
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            _ = tokio::time::sleep(pause) => {}
        }
        pause = TURN;
        match c.read().await {
            Ok(Some(view)) => {
                let acted = c.turn(&view).await;
                if acted {
                    pause = Duration::ZERO;
                } else if view
                    .deployments
                    .iter()
                    .any(|d| d.status == DeployStatus::Running)
                {
                    pause = BUSY_TURN;
                }
            }
            Ok(None) => c.idle(),
            Err(e) => tracing::debug!(error = %e, "the deployer cannot read its plan"),
        }
    }
}

fn desired(app: &AppConfig) -> Desired {
    Desired {
        progress_deadline_ms: app.progress_deadline_ms as i64,
        min_healthy_ms: app.health.min_healthy_ms as i64,
    }
}

impl Controller {
    /// The view, or `None` when embedded and this member does not lead.
    async fn read(&self) -> Result<Option<DeployView>, String> {
        let only = self.opts.only_leader;
        let r = self
            .servers
            .call(Duration::from_secs(2), |ch| {
                let q = self
                    .servers
                    .req(pb::DeployPlanRequest { leader_only: only });
                async move { pb::deploy_client::DeployClient::new(ch).plan(q).await }
            })
            .await
            .map_err(|f| f.status.message().to_string())?;
        if only && !r.leader {
            return Ok(None);
        }
        codec::decode(Kind::DeployView, &r.view)
            .map(Some)
            .map_err(|e| format!("unreadable plan: {e}"))
    }

    fn lease_ms(&self) -> u64 {
        match self.opts.server_lease_ms {
            0 => SERVER_LEASE_MS,
            ms => ms,
        }
    }

    /// Not leading: forget work in flight (the leader does it).
    fn idle(&mut self) {
        for (_, h) in self.fetching.drain() {
            h.abort();
        }
        self.polls.clear();
    }

    /// One look: acts on every running deployment; whether any step changed.
    async fn turn(&mut self, v: &DeployView) -> bool {
        let now = now_ms();
        let mut acted = false;
        for d in v
            .deployments
            .iter()
            .filter(|d| d.status == DeployStatus::Running)
        {
            let Some(app) = v.apps.get(&d.app) else {
                continue;
            };
            let built = v
                .built
                .get(&d.app)
                .and_then(|m| m.get(&d.commit))
                .filter(|_| d.build_task.is_none())
                .map(String::as_str);
            let action = pipeline::next(&desired(&app.config), d, &v.tasks, built, now);
            let fetching = action == Action::Fetch && self.fetching.contains_key(&d.id);
            acted |= action != Action::Wait && !fetching;
            let active = app
                .active
                .and_then(|a| v.deployments.iter().find(|x| x.id == a))
                .map(|x| x.commit.as_str());
            if let Err(e) = self.act(&app.config, d, action, active).await {
                tracing::warn!(deployment = d.id, app = %d.app, error = %e, "a deployment step did not go through; retrying");
            }
        }
        self.fetching.retain(|id, _| {
            v.deployments
                .iter()
                .any(|d| d.id == *id && d.status == DeployStatus::Running)
        });
        self.renew(v, now).await;
        self.poll(v, now).await;
        acted
    }

    /// Carries out `action` for `d`; `active` is the app's active commit.
    async fn act(
        &mut self,
        app: &AppConfig,
        d: &Deployment,
        action: Action,
        active: Option<&str>,
    ) -> Result<(), String> {
        match action {
            Action::Wait => Ok(()),
            Action::Fetch => self.fetch(app, d, active).await,
            Action::SubmitBuild => {
                let pair = build_task(app, d);
                self.submit(d.id, DeployStep::Build, vec![pair]).await
            }
            Action::SubmitServers => {
                let pairs = (0..app.servers.max(1))
                    .map(|i| server_task(app, d, i, self.lease_ms()))
                    .collect();
                self.submit(d.id, DeployStep::Lease, pairs).await
            }
            Action::Done {
                step,
                artifact,
                message,
            } => {
                tracing::info!(deployment = d.id, app = %app.name, step = %step, "step done");
                self.step(pb::DeployStepRequest {
                    artifact,
                    message,
                    ..step_req(d.id, step)
                })
                .await
            }
            Action::Fail {
                step,
                reason,
                log_of,
            } => {
                tracing::warn!(deployment = d.id, app = %app.name, step = %step, reason = %reason, "rolling back");
                let build_log = match log_of {
                    Some(t) => self.log_tail(t).await,
                    None => String::new(),
                };
                self.step(pb::DeployStepRequest {
                    build_log,
                    ..failed(d.id, step, reason)
                })
                .await
            }
        }
    }

    /// The fetch step: starts resolving the commit in the app's mirror
    /// (off the controller's task), and once that finished reports the full
    /// commit, or that a pushed commit is behind the active version (a push
    /// never rolls back), or the failure.
    async fn fetch(
        &mut self,
        app: &AppConfig,
        d: &Deployment,
        active: Option<&str>,
    ) -> Result<(), String> {
        let Some(h) = self.fetching.get(&d.id) else {
            let (repo, branch, commit) = (app.repo.clone(), app.branch.clone(), d.commit.clone());
            // A push never rolls back: a pushed commit that the
            // active version already contains deploys nothing (an
            // old push replayed with a new delivery id, say).
            let behind_of = active
                .filter(|_| d.trigger == Trigger::Webhook)
                .map(str::to_string);
            let mirror = self
                .opts
                .work
                .join("mirrors")
                .join(format!("{}.git", app.name));
            tracing::info!(deployment = d.id, app = %app.name, commit = %d.commit, "fetching");
            self.fetching.insert(
                d.id,
                tokio::task::spawn_blocking(move || {
                    if let Some(dir) = mirror.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
                    }
                    let c = crate::git::resolve(&repo, &mirror, &commit, &branch)
                        .map_err(|e| e.to_string())?;
                    let behind = match behind_of {
                        Some(a) if a != c => crate::git::is_ancestor(&mirror, &c, &a)
                            .map_err(|e| e.to_string())?
                            .then_some(a),
                        _ => None,
                    };
                    Ok((c, behind))
                }),
            );
            return Ok(());
        };
        if !h.is_finished() {
            return Ok(());
        }
        let h = self.fetching.remove(&d.id).ok_or("fetch vanished")?;
        let step = match h.await {
            Ok(Ok((commit, None))) => pb::DeployStepRequest {
                commit,
                ..step_req(d.id, DeployStep::Fetch)
            },
            Ok(Ok((commit, Some(active)))) => pb::DeployStepRequest {
                message: format!(
                    "pushed commit {} is an ancestor of the active version's {}: a push never rolls back (`charter deploy rollback` does)",
                    charter_config::deployment::short_commit(&commit),
                    charter_config::deployment::short_commit(&active),
                ),
                commit,
                behind: true,
                ..step_req(d.id, DeployStep::Fetch)
            },
            Ok(Err(e)) => failed(d.id, DeployStep::Fetch, e),
            Err(e) => failed(d.id, DeployStep::Fetch, format!("the fetch stopped: {e}")),
        };
        self.step(step).await
    }

    async fn step(&self, r: pb::DeployStepRequest) -> Result<(), String> {
        self.servers
            .call(Duration::from_secs(2), |ch| {
                let q = self.servers.req(r.clone());
                async move { pb::deploy_client::DeployClient::new(ch).step(q).await }
            })
            .await
            .map(|_| ())
            .map_err(|f| f.status.message().to_string())
    }

    async fn submit(
        &self,
        id: u64,
        step: DeployStep,
        pairs: Vec<(LeaseSpec, TaskSpec)>,
    ) -> Result<(), String> {
        let (leases, tasks) = pairs
            .iter()
            .map(|(l, t)| (pb::LeaseRequest::from(l), pb::TaskSpec::from(t)))
            .unzip();
        let r = pb::DeploySubmitRequest {
            id,
            step: step.to_string(),
            leases,
            tasks,
        };
        self.servers
            .call(Duration::from_secs(2), |ch| {
                let q = self.servers.req(r.clone());
                async move { pb::deploy_client::DeployClient::new(ch).submit(q).await }
            })
            .await
            .map(|_| ())
            .map_err(|f| f.status.message().to_string())
    }

    /// The last [`LOG_TAIL`] bytes of a task's output (stdout, then stderr).
    async fn log_tail(&self, task: u64) -> String {
        use tokio_stream::StreamExt;
        let r = self
            .servers
            .call(Duration::from_secs(2), |ch| {
                let q = self.servers.req(pb::LogsRequest {
                    task_id: task,
                    follow: false,
                });
                async move { pb::tasks_client::TasksClient::new(ch).logs(q).await }
            })
            .await;
        let Ok(mut stream) = r else {
            return String::new();
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read = async {
            while let Some(Ok(c)) = stream.next().await {
                if c.stream == "stderr" {
                    err.extend_from_slice(&c.data);
                } else {
                    out.extend_from_slice(&c.data);
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), read).await;
        out.extend_from_slice(&err);
        let cut = out.len().saturating_sub(LOG_TAIL);
        String::from_utf8_lossy(&out[cut..]).into_owned()
    }

    /// Renews the servers' leases of running and active deployments when
    /// half their time is gone.
    async fn renew(&self, v: &DeployView, now: i64) {
        let half = (self.lease_ms() / 2) as i64;
        for d in &v.deployments {
            for id in &d.instances {
                let Some(t) = v.tasks.get(id) else { continue };
                if t.lease_state != LeaseState::Granted
                    || t.expires_at.is_none_or(|e| e - now > half)
                {
                    continue;
                }
                let q = pb::RenewLeaseRequest {
                    idempotency_key: String::new(),
                    id: t.lease,
                    duration_ms: self.lease_ms(),
                };
                let r = self
                    .servers
                    .call(Duration::from_secs(2), |ch| {
                        let q = self.servers.req(q.clone());
                        async move { pb::leases_client::LeasesClient::new(ch).renew(q).await }
                    })
                    .await;
                if let Err(f) = r {
                    tracing::warn!(lease = t.lease, app = %d.app, error = %f.status.message(), "cannot renew a server's lease");
                }
            }
        }
    }

    /// Polls the branch heads of apps with `poll` set, each on its own
    /// interval, off the controller's task; a new head is triggered once.
    async fn poll(&mut self, v: &DeployView, now: i64) {
        if let Some(h) = self.polling.take_if(|h| h.is_finished()) {
            for (app, head) in h.await.unwrap_or_default() {
                match head {
                    Ok(head) => {
                        let seen = self
                            .polls
                            .get(&app)
                            .map(|p| p.seen.clone())
                            .unwrap_or_default();
                        if head != seen
                            && self.trigger_poll(&app, &head).await.is_ok()
                            && let Some(p) = self.polls.get_mut(&app)
                        {
                            p.seen = head;
                        }
                    }
                    Err(e) => tracing::warn!(app = %app, error = %e, "cannot poll the branch head"),
                }
            }
        }
        if self.polling.is_some() {
            return;
        }
        let mut due = Vec::new();
        for (name, a) in &v.apps {
            let every = a.config.poll_ms as i64;
            if every == 0 {
                continue;
            }
            // Spread the first polls over the interval.
            let p = self.polls.entry(name.clone()).or_insert_with(|| Poll {
                next: now + (spread(name) % every.max(1)).min(every),
                seen: String::new(),
            });
            if p.next <= now {
                p.next = now + every;
                due.push((name.clone(), a.config.repo.clone(), a.config.branch.clone()));
            }
        }
        self.polls
            .retain(|n, _| v.apps.get(n).is_some_and(|a| a.config.poll_ms > 0));
        if !due.is_empty() {
            self.polling = Some(tokio::task::spawn_blocking(move || {
                due.into_iter()
                    .map(|(name, repo, branch)| {
                        let head = crate::git::local_head(&repo, &branch)
                            .map(Ok)
                            .unwrap_or_else(|| {
                                crate::git::head(&repo, &branch).map_err(|e| e.to_string())
                            });
                        (name, head)
                    })
                    .collect()
            }));
        }
    }

    async fn trigger_poll(&self, app: &str, head: &str) -> Result<(), String> {
        let q = pb::TriggerDeployRequest {
            app: app.to_string(),
            commit: head.to_string(),
            trigger: Trigger::Poll.to_string(),
            ..Default::default()
        };
        let r = self
            .servers
            .call(Duration::from_secs(2), |ch| {
                let q = self.servers.req(q.clone());
                async move { pb::deploy_client::DeployClient::new(ch).trigger(q).await }
            })
            .await
            .map_err(|f| f.status.message().to_string())?;
        if r.started {
            tracing::info!(app, commit = head, "a new head: deploying");
        }
        Ok(())
    }
}

/// A stable spread of an app's first poll over its interval.
fn spread(name: &str) -> i64 {
    name.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    }) as i64
        & i64::MAX
}

fn env(app: &AppConfig, d: &Deployment) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("CHARTER_APP".to_string(), app.name.clone()),
        ("CHARTER_COMMIT".to_string(), d.commit.clone()),
        ("CHARTER_DEPLOYMENT".to_string(), d.id.to_string()),
    ])
}

fn step_req(id: u64, step: DeployStep) -> pb::DeployStepRequest {
    pb::DeployStepRequest {
        id,
        step: step.to_string(),
        ..Default::default()
    }
}

fn failed(id: u64, step: DeployStep, why: String) -> pb::DeployStepRequest {
    pb::DeployStepRequest {
        failed: true,
        message: why,
        ..step_req(id, step)
    }
}

/// The build of `d`: a batch task that clones the app's repository at the
/// commit, runs the build command and stores the artifact.
fn build_task(app: &AppConfig, d: &Deployment) -> (LeaseSpec, TaskSpec) {
    let b = &app.build;
    let lease = LeaseSpec {
        max_total_ms: 0,
        wait_ms: WAIT_MS,
        reason: format!("build {}@{}", app.name, short_commit(&d.commit)),
        ..LeaseSpec::simple(
            Resources {
                cpu_millis: b.cpu_millis,
                memory_bytes: b.memory_bytes,
                ..Resources::default()
            },
            b.timeout_ms,
        )
    };
    let mut command = vec![
        "sh".to_string(),
        "-c".into(),
        BUILD_SCRIPT.into(),
        "charter-build".into(),
        app.repo.clone(),
        d.commit.clone(),
    ];
    command.extend(b.command.iter().cloned());
    let task = TaskSpec {
        name: format!("{} build {}", app.name, short_commit(&d.commit)),
        amp: Amp::Batch,
        command,
        env: env(app, d),
        artifact_out: format!("src/{}", b.artifact),
        ..TaskSpec::default()
    };
    (lease, task)
}

/// Server `i` of `d`: a service of the artifact on a fresh lease, spread
/// over the nodes, health-checked on its first port.
fn server_task(app: &AppConfig, d: &Deployment, i: u32, lease_ms: u64) -> (LeaseSpec, TaskSpec) {
    let r = &app.requirements;
    let mut constraints: Vec<Constraint> =
        r.labels.iter().map(|(k, v)| Constraint::eq(k, v)).collect();
    // Checked when the app was applied; one that no longer parses is left
    // to the servers, which refuse the submission saying why.
    constraints.extend(
        r.constraints
            .iter()
            .filter_map(|c| Constraint::parse(c).ok()),
    );
    let h = &app.health;
    let check = match h.kind {
        CheckKind::Tcp => Check::Tcp { port: 0 },
        CheckKind::Http | CheckKind::Command => Check::Http {
            port: 0,
            path: h.path.clone(),
            status: h.status,
        },
    };
    let name = app
        .build
        .artifact
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("app")
        .to_string();
    let mut env = env(app, d);
    env.extend(app.run.env.clone());
    env.extend(app.run.secret_env.clone());
    let lease = LeaseSpec {
        constraints,
        max_total_ms: u64::MAX / 4,
        wait_ms: WAIT_MS,
        prefer: Prefer::Spread,
        reason: format!(
            "{} server {} of {}",
            app.name,
            i + 1,
            short_commit(&d.commit)
        ),
        ..LeaseSpec::simple(
            Resources {
                cpu_millis: r.cpu_millis,
                memory_bytes: r.memory_bytes,
                ..Resources::default()
            },
            lease_ms,
        )
    };
    let task = TaskSpec {
        name: format!("{} {} #{}", app.name, short_commit(&d.commit), i + 1),
        amp: Amp::Service,
        command: app.run.command.clone(),
        env,
        health: Some(Health {
            check,
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            healthy_after: 1,
            unhealthy_after: 2,
        }),
        ports: app.run.ports.clone(),
        artifact_in: d.artifact.clone(),
        artifact_name: name,
        ..TaskSpec::default()
    };
    (lease, task)
}
