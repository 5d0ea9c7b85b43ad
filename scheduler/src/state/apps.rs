//! The deployer's apps (each applied `app.toml`, by name) and their
//! deployments. A trigger starts a deployment keyed by the webhook's
//! delivery id and the commit's fingerprint; the deployer's controller moves
//! it through its steps with `DeployStep` reports (a change for a step other than
//! the current one changes nothing, so a retried or repeated proposal is
//! harmless) and `DeploySubmit` (the build task, the servers' tasks: at most
//! once per step). Rollback, supersession and retirement cancel the tasks in
//! the same command, so no deployment's servers outlive its end.
//!
//! Over 500 lines: the apps room and every deployer command (apply, trigger, step, submit), which share the deployment's record.

use super::defs::AppDefinition;
use super::events::EventKind;
use super::{Applied, LeaseSpec, Millis, Outcome, Refusal, State, TaskSpec};
use charter_config::deployment::{
    AppChange, DeployStatus, DeployStep, Deployment, StepRecord, StepState, Trigger, short_commit,
};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

/// Webhook delivery ids remembered per app.
pub const DELIVERIES_KEPT: usize = 1_000;
/// Ended deployments kept per app (running and active ones are always kept).
pub const DEPLOYMENTS_KEPT: usize = 200;

/// An applied app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// Its definition, as validated from the file.
    pub config: AppDefinition,
    /// The content hash of that definition.
    pub version: String,
    /// Who applied it; only they (or an admin) may change it.
    pub applied_by: String,
    /// When it was first applied.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// The active deployment.
    #[serde(default)]
    pub active: Option<u64>,
    /// The newest webhook delivery ids, oldest first.
    #[serde(default)]
    pub deliveries: Vec<String>,
}

/// A full commit id: 40 (sha1) or 64 (sha256) lower-case hex digits.
pub fn full_commit(c: &str) -> bool {
    (c.len() == 40 || c.len() == 64)
        && c.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The apps room: the deployer's apps by name (what it dereferences to) and
/// their deployments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Apps {
    /// Apps by name.
    pub all: OrdMap<String, App>,
    /// Deployments by id.
    pub deployments: OrdMap<u64, Deployment>,
    /// The id the next deployment gets.
    pub next_deploy_id: u64,
}

room_map!(Apps, all: OrdMap<String, App>);

impl State {
    pub(super) fn app_apply(
        &mut self,
        principal: &str,
        admin: bool,
        config: &AppDefinition,
        version: &str,
    ) -> Outcome {
        let now = self.time;
        let change = match self.apps.all.get(&config.name) {
            Some(a) if a.applied_by != principal && !admin => {
                return Err(Refusal::Denied {
                    reason: format!(
                        "app {} was applied by {}; pick another name",
                        config.name, a.applied_by
                    ),
                });
            }
            Some(a) if a.version == version => AppChange::Unchanged,
            Some(_) => AppChange::Changed,
            None => AppChange::Added,
        };
        if change != AppChange::Unchanged {
            let created_at = self
                .apps
                .all
                .get(&config.name)
                .map_or(now, |a| a.created_at);
            self.apps.all.insert(
                config.name.clone(),
                App {
                    config: config.clone(),
                    version: version.to_string(),
                    applied_by: principal.to_string(),
                    created_at,
                    updated_at: now,
                    active: self.apps.all.get(&config.name).and_then(|a| a.active),
                    deliveries: self
                        .apps
                        .all
                        .get(&config.name)
                        .map(|a| a.deliveries.clone())
                        .unwrap_or_default(),
                },
            );
        }
        Ok(Applied::AppApplied {
            app: Box::new(self.apps[&config.name].clone()),
            change,
        })
    }
}

fn deployed(d: Option<&Deployment>, started: bool, reason: impl Into<String>) -> Outcome {
    Ok(Applied::Deploy {
        deployment: d.cloned().map(Box::new),
        started,
        reason: reason.into(),
    })
}

impl State {
    fn fingerprint_of(&self, app: &App, commit: &str) -> String {
        let date = chrono::DateTime::from_timestamp_millis(self.time)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let vars = charter_config::fingerprint::Vars {
            user: app.applied_by.clone(),
            kind: "app".into(),
            name: app.config.name.clone(),
            commit: commit.to_string(),
            date,
            hash: app.version.clone(),
        };
        charter_config::fingerprint::render(&app.config.fingerprint, &vars)
            .map(|f| f.id)
            .unwrap_or_else(|_| format!("{}@{commit}", app.config.name))
    }

    /// A deployment of `app` that already has `fingerprint` (the active one,
    /// or a running one other than `except`), with why no new one is needed.
    fn same_version(&self, app: &App, fingerprint: &str, except: u64) -> Option<(u64, String)> {
        if fingerprint.is_empty() {
            return None;
        }
        if let Some(a) = app
            .active
            .and_then(|id| self.apps.deployments.get(&id))
            .filter(|a| a.fingerprint == fingerprint)
        {
            return Some((a.id, format!("{fingerprint} is already active")));
        }
        self.apps
            .deployments
            .values()
            .find(|o| {
                o.id != except
                    && o.app == app.config.name
                    && o.status == DeployStatus::Running
                    && o.fingerprint == fingerprint
            })
            .map(|o| {
                (
                    o.id,
                    format!("{fingerprint} is being deployed (deployment {})", o.id),
                )
            })
    }

    /// Starts a deployment of `commit` (empty or abbreviated: resolved by
    /// the fetch step) unless the delivery was seen, or the commit's
    /// fingerprint is active or being deployed. A running deployment not
    /// yet promoted is superseded.
    ///
    /// Over 80 lines: a trigger's checks and its supersession, in the order apply must do them.
    pub(super) fn deploy_trigger(
        &mut self,
        principal: &str,
        admin: bool,
        (name, commit, trigger, delivery): (&str, &str, Trigger, &str),
    ) -> Outcome {
        let app = self
            .apps
            .all
            .get(name)
            .cloned()
            .ok_or_else(|| Refusal::NotFound {
                what: format!("app {name} (charter deploy list shows the apps)"),
            })?;
        if !admin && app.applied_by != principal {
            return Err(Refusal::Denied {
                reason: format!(
                    "app {name} belongs to {}, not to {principal}",
                    app.applied_by
                ),
            });
        }
        if !delivery.is_empty() {
            if app.deliveries.iter().any(|d| d == delivery) {
                return deployed(None, false, format!("delivery {delivery} was seen before"));
            }
            let a = self.apps.all.get_mut(name).expect("looked up above");
            a.deliveries.push(delivery.to_string());
            let cut = a.deliveries.len().saturating_sub(DELIVERIES_KEPT);
            a.deliveries.drain(..cut);
        }
        let commit = commit.trim().to_ascii_lowercase();
        let fingerprint = if full_commit(&commit) {
            self.fingerprint_of(&app, &commit)
        } else {
            String::new()
        };
        if let Some((id, why)) = self.same_version(&app, &fingerprint, 0) {
            return deployed(self.apps.deployments.get(&id), false, why);
        }
        let id = self.apps.next_deploy_id.max(1);
        self.apps.next_deploy_id = id + 1;
        let superseded: Vec<u64> = self
            .apps
            .deployments
            .values()
            .filter(|d| {
                d.app == name && d.status == DeployStatus::Running && d.promoted_at.is_none()
            })
            .map(|d| d.id)
            .collect();
        for old in superseded {
            self.end_deployment(
                old,
                DeployStatus::Superseded,
                StepState::Superseded,
                if commit.is_empty() {
                    format!("superseded by deployment {id} (of the branch head)")
                } else {
                    format!("superseded by deployment {id} of {}", short_commit(&commit))
                },
            );
        }
        let d = Deployment {
            id,
            app: name.to_string(),
            commit,
            fingerprint,
            trigger,
            by: principal.to_string(),
            created_at: self.time,
            status: DeployStatus::Running,
            steps: vec![StepRecord {
                step: DeployStep::Fetch,
                started_at: self.time,
                ended_at: None,
                state: StepState::Running,
                message: String::new(),
            }],
            build_task: None,
            artifact: String::new(),
            instances: Vec::new(),
            previous: app.active,
            promoted_at: None,
            failed_step: None,
            reason: String::new(),
            build_log: String::new(),
            ended_at: None,
        };
        self.apps.deployments.insert(id, d.clone());
        let what = if d.commit.is_empty() {
            "the branch head".to_string()
        } else {
            short_commit(&d.commit).to_string()
        };
        self.note(
            EventKind::DeployStarted,
            &app.applied_by,
            id,
            format!("app {name} at {what} ({trigger})"),
        );
        self.trim_deployments(name);
        deployed(Some(&d), true, "")
    }

    fn trim_deployments(&mut self, app: &str) {
        let ended: Vec<u64> = self
            .apps
            .deployments
            .values()
            .filter(|d| d.app == app && d.ended_at.is_some() && d.status != DeployStatus::Active)
            .map(|d| d.id)
            .collect();
        for id in ended
            .iter()
            .take(ended.len().saturating_sub(DEPLOYMENTS_KEPT))
        {
            if let Some(d) = self.apps.deployments.remove(id) {
                self.trimmed.push(super::Trimmed::Deployment(d));
            }
        }
    }

    /// Ends a deployment: its current step is closed as `step_state`, and
    /// its tasks still going are cancelled.
    fn end_deployment(
        &mut self,
        id: u64,
        status: DeployStatus,
        step_state: StepState,
        reason: String,
    ) {
        let now = self.time;
        let Some(d) = self.apps.deployments.get_mut(&id) else {
            return;
        };
        d.status = status;
        d.ended_at = Some(now);
        if let Some(r) = d.steps.last_mut().filter(|r| r.ended_at.is_none()) {
            r.ended_at = Some(now);
            r.state = step_state;
            if r.message.is_empty() {
                r.message = reason.clone();
            }
        }
        if status == DeployStatus::RolledBack {
            d.failed_step = Some(d.step());
        }
        let kind = if status == DeployStatus::RolledBack {
            EventKind::DeployRolledBack
        } else {
            EventKind::DeployEnded
        };
        let detail = format!("app {}: {status} at {}: {reason}", d.app, d.step());
        d.reason = reason;
        let tasks: Vec<u64> = d.build_task.iter().chain(&d.instances).copied().collect();
        let owner = self.apps.all.get(&d.app).map(|a| a.applied_by.clone());
        self.note(kind, owner.as_deref().unwrap_or(""), id, detail);
        self.unpin(id);
        for t in tasks {
            let _ = self.cancel_task(t, "deployer", true);
        }
    }

    /// The controller's report on the current step of a deployment.
    pub(super) fn deploy_step(&mut self, admin: bool, step: &StepReport) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: "deployment steps are the deployer's (an admin token)".into(),
            });
        }
        let d = self
            .apps
            .deployments
            .get(&step.id)
            .cloned()
            .ok_or_else(|| Refusal::NotFound {
                what: format!("deployment {}", step.id),
            })?;
        let current = d.current().filter(|r| r.state == StepState::Running);
        if d.status != DeployStatus::Running || current.is_none_or(|r| r.step != step.step) {
            return deployed(Some(&d), false, "not its current step");
        }
        let now = self.time;
        if step.failed {
            self.step_failed(step, d.promoted_at.is_some());
            return deployed(self.apps.deployments.get(&step.id), false, "");
        }
        if let Some(ended) = self.step_done(&d, step)? {
            return ended;
        }
        self.next_step(&d, step, now);
        deployed(self.apps.deployments.get(&d.id), false, "")
    }

    /// A failed step: before promotion the deployment rolls back (keeping
    /// the build's log); after it there is no way back, so the failure is
    /// only noted and the step tried again.
    fn step_failed(&mut self, step: &StepReport, promoted: bool) {
        if promoted {
            // Past promotion there is no way back: note it, retry.
            let r = self
                .apps
                .deployments
                .get_mut(&step.id)
                .and_then(|d| d.steps.last_mut());
            if let Some(r) = r {
                r.message = step.message.clone();
            }
        } else {
            if !step.build_log.is_empty()
                && let Some(d) = self.apps.deployments.get_mut(&step.id)
            {
                d.build_log = step.build_log.clone();
            }
            self.end_deployment(
                step.id,
                DeployStatus::RolledBack,
                StepState::Failed,
                step.message.clone(),
            );
        }
    }

    /// What a step's success changes beyond moving on: fetch resolves the
    /// commit (and ends the deployment unchanged when that version is
    /// active or being deployed), build records the artifact, promote makes
    /// it the active version, retire ends the one it replaced. `Some` when
    /// the deployment ended here.
    ///
    /// Over 80 lines: one arm per step that changes more than the step.
    fn step_done(&mut self, d: &Deployment, step: &StepReport) -> Result<Option<Outcome>, Refusal> {
        let now = self.time;
        match step.step {
            DeployStep::Fetch => {
                let commit = step.commit.trim().to_ascii_lowercase();
                if !full_commit(&commit) {
                    return Err(Refusal::Invalid {
                        reason: format!("fetch must resolve a full commit, not `{commit}`"),
                    });
                }
                let app = self
                    .apps
                    .all
                    .get(&d.app)
                    .cloned()
                    .ok_or_else(|| Refusal::NotFound {
                        what: format!("app {}", d.app),
                    })?;
                let fingerprint = self.fingerprint_of(&app, &commit);
                let same = self
                    .same_version(&app, &fingerprint, d.id)
                    .map(|(_, why)| why);
                if let Some(x) = self.apps.deployments.get_mut(&d.id) {
                    x.commit = commit;
                    x.fingerprint = fingerprint;
                }
                let same = same.or_else(|| step.behind.then(|| step.message.clone()));
                if let Some(why) = same {
                    self.end_deployment(d.id, DeployStatus::Unchanged, StepState::Done, why);
                    return Ok(Some(deployed(self.apps.deployments.get(&d.id), false, "")));
                }
            }
            DeployStep::Build => {
                if step.artifact.len() != 64 {
                    return Err(Refusal::Invalid {
                        reason: "a finished build names its artifact's sha256".into(),
                    });
                }
                if let Some(x) = self.apps.deployments.get_mut(&d.id) {
                    x.artifact = step.artifact.clone();
                }
            }
            DeployStep::Promote => {
                if let Some(a) = self.apps.all.get_mut(&d.app) {
                    a.active = Some(d.id);
                }
                let owner = self.apps.all.get(&d.app).map(|a| a.applied_by.clone());
                self.note(
                    EventKind::DeployPromoted,
                    owner.as_deref().unwrap_or(""),
                    d.id,
                    format!("app {} serves {}", d.app, short_commit(&d.commit)),
                );
                if let Some(x) = self.apps.deployments.get_mut(&d.id) {
                    x.promoted_at = Some(now);
                }
            }
            DeployStep::Retire => {
                let old: Vec<u64> = self
                    .apps
                    .deployments
                    .values()
                    .filter(|o| o.app == d.app && o.id != d.id && o.status == DeployStatus::Active)
                    .map(|o| o.id)
                    .collect();
                for o in old {
                    self.end_deployment(
                        o,
                        DeployStatus::Retired,
                        StepState::Done,
                        format!("replaced by deployment {}", d.id),
                    );
                }
            }
            DeployStep::Publish
            | DeployStep::Lease
            | DeployStep::Start
            | DeployStep::AwaitHealthy => {}
        }
        Ok(None)
    }

    /// Closes the current step as done and opens the next, or makes the
    /// deployment active after the last; notes the step's event.
    fn next_step(&mut self, d: &Deployment, step: &StepReport, now: Millis) {
        let x = self
            .apps
            .deployments
            .get_mut(&d.id)
            .expect("looked up above");
        let mut took = None;
        if let Some(r) = x.steps.last_mut() {
            took = Some(now - r.started_at);
            r.state = StepState::Done;
            r.ended_at = Some(now);
            if !step.message.is_empty() {
                r.message = step.message.clone();
            }
        }
        let detail = match step.step.next() {
            Some(n) => {
                x.steps.push(StepRecord {
                    step: n,
                    started_at: now,
                    ended_at: None,
                    state: StepState::Running,
                    message: String::new(),
                });
                format!("{} done, {n} next (app {})", step.step, d.app)
            }
            None => {
                x.status = DeployStatus::Active;
                x.ended_at = Some(now);
                self.unpin(d.id);
                format!("{} done, active (app {})", step.step, d.app)
            }
        };
        let owner = self.apps.all.get(&d.app).map(|a| a.applied_by.clone());
        self.note_ms(
            EventKind::DeployStep,
            owner.as_deref().unwrap_or(""),
            d.id,
            detail,
            took,
        );
    }

    /// Submits the build task or the servers' tasks of a deployment's
    /// current step, once: a second submission for the step changes nothing.
    pub(super) fn deploy_submit(
        &mut self,
        admin: bool,
        id: u64,
        step: DeployStep,
        tasks: &[(LeaseSpec, TaskSpec)],
    ) -> Outcome {
        if !admin {
            return Err(Refusal::Denied {
                reason: "deployment tasks are the deployer's (an admin token)".into(),
            });
        }
        let d = self
            .apps
            .deployments
            .get(&id)
            .cloned()
            .ok_or_else(|| Refusal::NotFound {
                what: format!("deployment {id}"),
            })?;
        let open = d.status == DeployStatus::Running
            && d.current()
                .is_some_and(|r| r.step == step && r.state == StepState::Running);
        let fresh = match step {
            DeployStep::Build => d.build_task.is_none() && tasks.len() == 1,
            DeployStep::Lease => d.instances.is_empty() && !tasks.is_empty(),
            _ => {
                return Err(Refusal::Invalid {
                    reason: format!("step {step} submits no tasks; build and lease do"),
                });
            }
        };
        if !open || !fresh {
            return deployed(Some(&d), false, "already submitted");
        }
        let owner = self
            .apps
            .all
            .get(&d.app)
            .map(|a| a.applied_by.clone())
            .unwrap_or_default();
        let mut ids = Vec::new();
        let mut refused = None;
        for (lease, spec) in tasks {
            match self.submit_task(&owner, lease, spec) {
                Ok(Applied::Task { task, .. }) => ids.push(task.id),
                Ok(other) => unreachable!("submit_task returns a task, got {other:?}"),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let x = self.apps.deployments.get_mut(&id).expect("looked up above");
        if step == DeployStep::Build {
            x.build_task = ids.first().copied();
        } else {
            x.instances = ids;
        }
        if let Some(e) = refused {
            let what = if step == DeployStep::Build {
                "the build task"
            } else {
                "a server"
            };
            self.end_deployment(
                id,
                DeployStatus::RolledBack,
                StepState::Failed,
                format!("could not submit {what}: {e}"),
            );
        }
        deployed(self.apps.deployments.get(&id), false, "")
    }
}

/// The controller's report on a step (see [`State::deploy_step`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The deployment.
    pub id: u64,
    /// The step it is about.
    pub step: DeployStep,
    /// Failed (then the deployment rolls back) or done.
    pub failed: bool,
    /// Why, or a note.
    pub message: String,
    /// Fetch: the full commit.
    pub commit: String,
    /// Build: the artifact's sha256.
    pub artifact: String,
    /// Build: the tail of its output.
    pub build_log: String,
    /// Fetch: the commit is behind the active version (an ancestor of
    /// it): the deployment ends unchanged, with `message` as its reason.
    #[serde(default)]
    pub behind: bool,
}
