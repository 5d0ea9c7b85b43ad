//! The deployer's apps: each applied `app.toml`, by name. Deployments of
//! them arrive with the deployer's controller.

use super::{Applied, Millis, Outcome, Refusal, State};
use charter_config::app::AppConfig;
use serde::{Deserialize, Serialize};

/// An applied app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// Its definition, as validated from the file.
    pub config: AppConfig,
    /// The content hash of that definition.
    pub version: String,
    /// Who applied it; only they (or an admin) may change it.
    pub applied_by: String,
    /// When it was first applied.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
}

impl State {
    pub(super) fn app_apply(
        &mut self,
        principal: &str,
        admin: bool,
        config: &AppConfig,
        version: &str,
    ) -> Outcome {
        let now = self.time;
        let change = match self.apps.get(&config.name) {
            Some(a) if a.applied_by != principal && !admin => {
                return Err(Refusal::Denied {
                    reason: format!(
                        "app {} was applied by {}; pick another name",
                        config.name, a.applied_by
                    ),
                });
            }
            Some(a) if a.version == version => "unchanged",
            Some(_) => "changed",
            None => "added",
        };
        if change != "unchanged" {
            let created_at = self.apps.get(&config.name).map_or(now, |a| a.created_at);
            self.apps.insert(
                config.name.clone(),
                App {
                    config: config.clone(),
                    version: version.to_string(),
                    applied_by: principal.to_string(),
                    created_at,
                    updated_at: now,
                },
            );
        }
        Ok(Applied::AppApplied {
            app: Box::new(self.apps[&config.name].clone()),
            change: change.into(),
        })
    }
}
