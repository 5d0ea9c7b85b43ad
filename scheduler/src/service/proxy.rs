//! `/apps/NAME/...` on every member's HTTP port: the stable entry of a
//! deployed app. Requests go, in turn, to the healthy servers of the app's
//! active version as this member's state has them, so the entry switches
//! to a new version the moment it is promoted, and the old version answers
//! until then. A server that refuses the connection is skipped for the next.

use crate::raft_driver::MemberHandle;
use crate::state::State;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The healthy servers (`host:port`) of an app's active version.
pub fn targets(s: &State, app: &str) -> Vec<String> {
    let Some(d) = s
        .apps
        .get(app)
        .and_then(|a| a.active)
        .and_then(|id| s.apps.deployments.get(&id))
    else {
        return Vec::new();
    };
    d.instances
        .iter()
        .filter_map(|id| s.tasks.get(id))
        .filter(|t| t.health == crate::state::HealthState::Healthy && !t.state.is_ended())
        .filter_map(|t| {
            let node = s.leases.get(&t.lease)?.nodes.first()?;
            let host = super::deploy::agent_host(s, node)?;
            let port = t.spec.ports.first().and_then(|p| t.ports.get(p))?;
            Some(format!("{host}:{port}"))
        })
        .collect()
}

fn client() -> Option<&'static reqwest::Client> {
    static C: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    C.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(10))
            .build()
            .ok()
    })
    .as_ref()
}

/// `/apps/{app}` (the root of the app).
pub async fn root(
    member: AxState<MemberHandle>,
    Path(app): Path<String>,
    q: RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    forward(member, app, String::new(), q, method, headers, body).await
}

/// `/apps/{app}/{*rest}`.
pub async fn path(
    member: AxState<MemberHandle>,
    Path((app, rest)): Path<(String, String)>,
    q: RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    forward(member, app, rest, q, method, headers, body).await
}

const HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Over 80 lines: one request proxied in the order HTTP needs: pick, connect, copy.
async fn forward(
    AxState(m): AxState<MemberHandle>,
    app: String,
    rest: String,
    RawQuery(q): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let targets = m.read(|s| targets(s, &app));
    if targets.is_empty() {
        let known = m.read(|s| s.apps.contains_key(&app));
        let (code, msg) = if known {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app {app} has no healthy active server yet\n"),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                format!("no app {app}; charter deploy list shows the apps\n"),
            )
        };
        return (code, msg).into_response();
    }
    let Some(client) = client() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot make an HTTP client\n",
        )
            .into_response();
    };
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut last = String::new();
    for i in 0..targets.len() {
        let t = &targets[(start + i) % targets.len()];
        let mut url = format!("http://{t}/{rest}");
        if let Some(q) = &q {
            url.push('?');
            url.push_str(q);
        }
        let mut req = client.request(method.clone(), &url);
        for (k, v) in &headers {
            if k != "host" && !HOP.contains(&k.as_str()) {
                req = req.header(k, v);
            }
        }
        match req.body(body.clone()).send().await {
            Ok(r) => {
                let mut out = Response::builder().status(r.status());
                for (k, v) in r.headers() {
                    if !HOP.contains(&k.as_str()) {
                        out = out.header(k, v);
                    }
                }
                let bytes = match r.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        return (
                            StatusCode::BAD_GATEWAY,
                            format!("{t} broke off its answer: {e}\n"),
                        )
                            .into_response();
                    }
                };
                return out
                    .body(Body::from(bytes))
                    .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response());
            }
            // Not connected: nothing reached the server, try the next one.
            Err(e) if e.is_connect() => last = format!("{t}: {e}"),
            Err(e) => return (StatusCode::BAD_GATEWAY, format!("{t}: {e}\n")).into_response(),
        }
    }
    (
        StatusCode::BAD_GATEWAY,
        format!("no server of app {app} answered ({last})\n"),
    )
        .into_response()
}
