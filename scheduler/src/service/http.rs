//! The HTTP side: `/healthz` and `/metrics` (Prometheus text format).

use crate::raft_driver::{MemberHandle, Role};
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
    // O(1) with respect to history: map sizes and the expiry index.
    let (nodes, granted, leases, ended, tasks, keys) = m.read(|s| {
        (
            s.nodes.len(),
            s.expiries.len(),
            s.leases.len(),
            s.ended.len(),
            s.tasks.len(),
            s.keys.len(),
        )
    });
    let history = m.history().map_or(0, |h| h.bytes());
    format!(
        "# TYPE charter_raft_term gauge\ncharter_raft_term {}\n\
         # TYPE charter_raft_commit_index gauge\ncharter_raft_commit_index {}\n\
         # TYPE charter_raft_applied_index gauge\ncharter_raft_applied_index {}\n\
         # TYPE charter_raft_is_leader gauge\ncharter_raft_is_leader {}\n\
         # TYPE charter_nodes gauge\ncharter_nodes {}\n\
         # TYPE charter_leases_granted gauge\ncharter_leases_granted {}\n\
         # HELP charter_state_leases Leases in the live state, live and recently ended.\n\
         # TYPE charter_state_leases gauge\ncharter_state_leases {}\n\
         # HELP charter_state_ended_leases Ended leases the live state still holds.\n\
         # TYPE charter_state_ended_leases gauge\ncharter_state_ended_leases {}\n\
         # HELP charter_state_tasks Tasks in the live state.\n\
         # TYPE charter_state_tasks gauge\ncharter_state_tasks {}\n\
         # HELP charter_state_idempotency_keys Idempotency outcomes kept.\n\
         # TYPE charter_state_idempotency_keys gauge\ncharter_state_idempotency_keys {}\n\
         # HELP charter_history_bytes Bytes this member's history store keeps.\n\
         # TYPE charter_history_bytes gauge\ncharter_history_bytes {}\n\
         # HELP charter_raft_snapshot_bytes Size of the newest snapshot this member made.\n\
         # TYPE charter_raft_snapshot_bytes gauge\ncharter_raft_snapshot_bytes {}\n\
         # HELP charter_clock_skew_ms This member's wall clock minus the steady time it stamps as leader.\n\
         # TYPE charter_clock_skew_ms gauge\ncharter_clock_skew_ms {}\n",
        st.term,
        st.commit,
        st.applied,
        u8::from(st.role == Role::Leader),
        nodes,
        granted,
        leases,
        ended,
        tasks,
        keys,
        history,
        st.snapshot_bytes,
        m.clock().skew_ms().unwrap_or(0)
    )
}
