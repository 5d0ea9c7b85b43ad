//! `POST /hooks/git` on a member's HTTP port: a push webhook from GitHub,
//! Gitea or GitLab. The app is the one named by `?app=NAME`, or the one
//! whose `repo` the payload names. The signature (or token) is checked
//! against that app's secret; a missing or bad one gets 401, is logged, and
//! starts nothing. A good one must carry its delivery id (400 without one)
//! and becomes a `Deploy.Trigger` keyed by it (a replayed delivery starts
//! nothing; an old body replayed under a new id is stopped at fetch, since
//! its commit is an ancestor of the active one), answered 202 at once: the
//! deployment itself is the controller's work.

use crate::webhook;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use charter_config::app::AppConfig;
use charter_config::codec::{self, Kind};
use charter_config::deployment::Deployment;
use charter_proto as pb;
use charter_proto::conn::Servers;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The servers the handler talks to, set once the member listens.
pub type Link = Arc<OnceLock<Servers>>;

/// The webhook route.
pub fn router(link: Link) -> Router {
    Router::new()
        .route("/hooks/git", post(hook))
        .with_state(link)
}

fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, axum::Json(body)).into_response()
}

/// `https://host/x/hello.git`, `https://host/x/hello/` and
/// `https://host/x/hello` name the same repository.
fn same_repo(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .to_ascii_lowercase()
    };
    !a.trim().is_empty() && norm(a) == norm(b)
}

async fn apps(servers: &Servers) -> Result<Vec<AppConfig>, String> {
    let r = servers
        .call(Duration::from_millis(800), |ch| {
            let q = servers.req(pb::ListAppsRequest { stale: true });
            async move { pb::deploy_client::DeployClient::new(ch).list(q).await }
        })
        .await
        .map_err(|f| f.status.message().to_string())?;
    r.apps
        .iter()
        .map(|a| {
            codec::decode(Kind::App, &a.definition)
                .map_err(|e| format!("app {}: unreadable definition: {e}", a.name))
        })
        .collect()
}

/// Over 80 lines: a webhook's checks in the order they must run (app, signature, branch, delivery), each with its answer.
async fn hook(
    State(link): State<Link>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(servers) = link.get() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "the member is starting; retry"}),
        );
    };
    let headers: BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    let all = match apps(servers).await {
        Ok(a) => a,
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("cannot read the apps: {e}; retry")}),
            );
        }
    };
    // Which app: named, or found by the repository the payload names.
    let named = q.get("app");
    let urls = serde_json::from_slice::<serde_json::Value>(&body)
        .map(|v| webhook::repo_urls(&v))
        .unwrap_or_default();
    let candidates: Vec<&AppConfig> = all
        .iter()
        .filter(|a| match named {
            Some(n) => &a.name == n,
            None => urls.iter().any(|u| same_repo(u, &a.repo)),
        })
        .collect();
    if candidates.is_empty() {
        let what = match named {
            Some(n) => format!("no app {n}"),
            None => format!("no app has repo {:?}; name it with ?app=NAME", urls),
        };
        tracing::warn!(%what, "webhook refused");
        return answer(StatusCode::NOT_FOUND, json!({"error": what}));
    }
    let mut refusal = None;
    let mut push = None;
    for a in &candidates {
        match webhook::verify(&headers, &body, &a.secret) {
            Ok(p) => {
                push = Some((*a, p));
                break;
            }
            Err(e) => refusal = Some(e),
        }
    }
    let Some((app, push)) = push else {
        let code = match &refusal {
            Some(r) if r.bad_request() => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        let e = refusal.map(|e| e.to_string()).unwrap_or_default();
        tracing::warn!(apps = ?candidates.iter().map(|a| &a.name).collect::<Vec<_>>(), error = %e, "webhook refused");
        return answer(code, json!({"error": e}));
    };
    if push.branch != app.branch {
        return answer(
            StatusCode::ACCEPTED,
            json!({"ignored": format!("a push to {}; app {} deploys {}", push.branch, app.name, app.branch)}),
        );
    }
    let req = pb::TriggerDeployRequest {
        app: app.name.clone(),
        commit: push.commit.clone(),
        trigger: charter_config::deployment::Trigger::Webhook.to_string(),
        delivery: push.delivery.clone(),
        ..Default::default()
    };
    let r = servers
        .call(Duration::from_millis(800), |ch| {
            let q = servers.req(req.clone());
            async move { pb::deploy_client::DeployClient::new(ch).trigger(q).await }
        })
        .await;
    match r {
        Ok(r) => {
            let id = codec::decode::<Deployment>(Kind::Deployment, &r.deployment)
                .ok()
                .map(|d| d.id);
            tracing::info!(app = %app.name, commit = %push.commit, delivery = %push.delivery, started = r.started, "webhook");
            answer(
                StatusCode::ACCEPTED,
                json!({"app": app.name, "commit": push.commit, "deployment": id, "started": r.started, "reason": r.reason}),
            )
        }
        Err(f) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!("cannot queue the deployment: {}; retry", f.status.message())}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls_match_loosely() {
        assert!(same_repo("https://h/x/hello.git", "https://h/x/hello"));
        assert!(same_repo("https://h/x/hello/", "https://H/x/hello.git"));
        assert!(same_repo("/srv/git/hello", "/srv/git/hello/"));
        assert!(!same_repo("https://h/x/hello2", "https://h/x/hello"));
        assert!(!same_repo("", ""));
    }
}
