//! charter-deployer: commit → build → two fresh servers → healthy → active,
//! with rollback when anything fails.
//!
//! - [`pipeline`]: the typed steps of a deployment and the pure planner that
//!   decides, from (desired, observed, now), what to do next.
//!
//! - [`webhook`]: push webhooks from GitHub, Gitea and GitLab: signatures
//!   and tokens checked against the app's secret in constant time, and the
//!   pushed branch and commit read from the payload.
//!
//! - [`git`]: branch heads (for polling) and checkouts, through `git`.
//! - [`store`]: the content-addressed artifact store with per-app retention.
//!
//! The replicated apps and deployments, the controller that executes the
//! plan, the artifact route and the CLI are not built yet; the deployer
//! talks to the scheduler only through gRPC.

pub mod controller;
pub mod git;
pub mod hooks;
pub mod pipeline;
pub mod store;
pub mod webhook;
