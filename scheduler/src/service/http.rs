//! The HTTP side: `/healthz` and `/metrics` (Prometheus text format).

use crate::raft_driver::{MemberHandle, Role};
use crate::state::LeaseState;
use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
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

async fn metrics(AxState(m): AxState<MemberHandle>) -> String {
    let st = m.status();
    let (nodes, granted) = m.read(|s| {
        (
            s.nodes.len(),
            s.leases
                .values()
                .filter(|l| l.state == LeaseState::Granted)
                .count(),
        )
    });
    format!(
        "# TYPE charter_raft_term gauge\ncharter_raft_term {}\n\
         # TYPE charter_raft_commit_index gauge\ncharter_raft_commit_index {}\n\
         # TYPE charter_raft_applied_index gauge\ncharter_raft_applied_index {}\n\
         # TYPE charter_raft_is_leader gauge\ncharter_raft_is_leader {}\n\
         # TYPE charter_nodes gauge\ncharter_nodes {}\n\
         # TYPE charter_leases_granted gauge\ncharter_leases_granted {}\n",
        st.term,
        st.commit,
        st.applied,
        u8::from(st.role == Role::Leader),
        nodes,
        granted
    )
}
