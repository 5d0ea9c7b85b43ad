//! Deployments keep their promises whatever order, repetition or staleness
//! the deployer's commands arrive in: an app's active version is a promoted
//! deployment; a deployment that ended (rolled back, superseded, retired,
//! unchanged) has no task still going, so no server outlives its version;
//! at most one unpromoted deployment of an app runs at a time.

use super::MemberView;
use charter_config::deployment::DeployStatus;

/// Fails on an active version that was never promoted, a live task of an
/// ended deployment, or two unpromoted deployments of one app running.
pub fn check(views: &[MemberView<'_>]) -> Result<(), String> {
    for v in views {
        let s = &v.state;
        for (name, app) in s.apps.iter() {
            if let Some(id) = app.active {
                let Some(d) = s.apps.deployments.get(&id) else {
                    return Err(format!(
                        "member {}: app {name} is active at a missing deployment {id}",
                        v.id
                    ));
                };
                if d.promoted_at.is_none()
                    || !matches!(d.status, DeployStatus::Active | DeployStatus::Running)
                {
                    return Err(format!(
                        "member {}: app {name}'s active deployment {id} is {} (promoted: {:?})",
                        v.id,
                        d.status.as_str(),
                        d.promoted_at
                    ));
                }
            }
            let unpromoted = s
                .apps
                .deployments
                .values()
                .filter(|d| {
                    &d.app == name && d.status == DeployStatus::Running && d.promoted_at.is_none()
                })
                .count();
            if unpromoted > 1 {
                return Err(format!(
                    "member {}: app {name} runs {unpromoted} unpromoted deployments",
                    v.id
                ));
            }
        }
        for d in s.apps.deployments.values() {
            if matches!(d.status, DeployStatus::Running | DeployStatus::Active) {
                continue;
            }
            for t in d.build_task.iter().chain(&d.instances) {
                if let Some(task) = s.tasks.get(t).filter(|t| !t.state.is_ended()) {
                    return Err(format!(
                        "member {}: deployment {} is {} but its task {t} is {}",
                        v.id,
                        d.id,
                        d.status.as_str(),
                        task.state.as_str()
                    ));
                }
            }
        }
    }
    Ok(())
}
