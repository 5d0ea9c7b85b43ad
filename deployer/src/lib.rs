//! charter-deployer: commit → build → two fresh servers → healthy → active,
//! with rollback when anything fails.
//!
//! - [`pipeline`]: the pure planner that decides, from (desired, observed,
//!   now), what a deployment needs next.
//!
//! - [`webhook`]: push webhooks from GitHub, Gitea and GitLab: signatures
//!   and tokens checked against the app's secret in constant time, and the
//!   pushed branch and commit read from the payload.
//!
//! - [`git`]: branch heads (for polling) and checkouts, through `git`.
//! - [`store`]: the content-addressed artifact store with per-app retention.
//!
//! - [`controller`]: the leader's loop that reads the deployer's view,
//!   plans each running deployment and carries the plan out; also renews
//!   servers' leases and polls branch heads.
//! - [`hooks`]: `POST /hooks/git`, merged into a member's HTTP routes.
//!
//! The deployer talks to the scheduler only through gRPC; apps and
//! deployments live in the replicated state.

pub mod controller;
pub mod git;
pub mod hooks;
pub mod pipeline;
pub mod store;
pub mod webhook;
