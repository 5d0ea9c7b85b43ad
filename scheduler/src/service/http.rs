//! The HTTP side: `/healthz` and `/metrics` (Prometheus text format,
//! [`crate::metrics`]).

use super::auth::{Principal, Scope, Tokens};
use crate::metrics::Reading;
use crate::raft_driver::{MemberHandle, Role};
use crate::state::LeaseState;
use axum::Router;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The HTTP routes of a member.
pub fn router(member: MemberHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/apps/{app}", axum::routing::any(super::proxy::root))
        .route("/apps/{app}/", axum::routing::any(super::proxy::root))
        .route(
            "/apps/{app}/{*rest}",
            axum::routing::any(super::proxy::path),
        )
        .with_state(member)
}

async fn healthz(AxState(m): AxState<MemberHandle>) -> (StatusCode, String) {
    let st = m.status();
    if let Some(f) = st.fatal {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("fatal: {f}\n"));
    }
    let body = format!(
        "{{\"id\":{},\"role\":\"{}\",\"leader_id\":{},\"term\":{},\"applied_index\":{}}}\n",
        st.id,
        st.role.as_str(),
        st.leader_id.unwrap_or(0),
        st.term,
        st.applied
    );
    (StatusCode::OK, body)
}

async fn metrics(AxState(m): AxState<MemberHandle>) -> impl axum::response::IntoResponse {
    let st = m.status();
    let now = m.clock().now();
    // O(live objects): map sizes, the queue and the fleet, never history.
    let mut r = m.read(|s| {
        let mut by_state = std::collections::BTreeMap::new();
        let mut per_node = Vec::with_capacity(s.nodes.len());
        for n in s.nodes.values() {
            *by_state.entry(n.state.as_str()).or_insert(0u64) += 1;
            per_node.push((
                n.name.clone(),
                [
                    n.capacity.cpu_millis,
                    n.allocated.cpu_millis,
                    n.capacity.memory_bytes,
                    n.allocated.memory_bytes,
                ],
            ));
        }
        let oldest = s.leases.queue.iter().map(|(_, at, _)| *at).min();
        Reading {
            nodes: by_state.into_iter().collect(),
            leases: vec![
                (LeaseState::Pending.as_str(), s.leases.queue.len() as u64),
                (LeaseState::Granted.as_str(), s.leases.expiries.len() as u64),
            ],
            ended_leases: s.leases.ended.len() as u64,
            state_leases: s.leases.len() as u64,
            tasks: s.tasks.len() as u64,
            keys: s.keys.len() as u64,
            queue: (
                s.leases.queue.len() as u64,
                oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0),
            ),
            per_node,
            ..Reading::default()
        }
    });
    r.raft = (st.term, st.leader_id.unwrap_or(0), st.role == Role::Leader);
    r.index = (st.commit, st.applied);
    r.snapshot = (st.snapshot_index, st.snapshot_bytes);
    r.history_bytes = m.history().map_or(0, |h| h.bytes());
    r.clock_skew_ms = m.clock().skew_ms().unwrap_or(0);
    r.events_kept_from = m.events().oldest();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.metrics().render(&r),
    )
}

/// A JSON error `{"error": …}` with the HTTP status a gRPC code maps to.
pub(crate) fn error(s: tonic::Status) -> Response {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        code,
        axum::Json(serde_json::json!({ "error": s.message() })),
    )
        .into_response()
}

/// The dashboard's session cookie.
pub const COOKIE: &str = "charter_token";

/// The token of a request: its bearer header, else (when `cookie`) the
/// dashboard's session cookie.
fn token_of(headers: &HeaderMap, cookie: bool) -> Option<String> {
    if let Some(h) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(h.to_string());
    }
    if !cookie {
        return None;
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| format!("Bearer {v}"))
}

/// Who calls an HTTP route: a user or admin token as a bearer header, or,
/// on the read-only routes that pass `cookie`, the dashboard's cookie
/// (never on a route that changes anything, so another site's page cannot
/// act with it). Machine credentials are refused; `what` names the route
/// in the refusal.
pub(crate) fn caller(
    tokens: &Tokens,
    headers: &HeaderMap,
    cookie: bool,
    what: &str,
) -> Result<Principal, Box<Response>> {
    let p = tokens
        .check(token_of(headers, cookie).as_deref())
        .map_err(|s| Box::new(error(s)))?;
    if p.scope != Scope::User {
        return Err(Box::new(error(tonic::Status::permission_denied(format!(
            "{what} need a user or admin token"
        )))));
    }
    Ok(p)
}
