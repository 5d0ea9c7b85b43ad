//! charter-deployer: commit → build → two fresh servers → healthy → active,
//! with rollback when anything fails.
//!
//! - [`pipeline`]: the typed steps of a deployment and the pure planner that
//!   decides, from (desired, observed, now), what to do next.
//!
//! Triggers (webhook, polling), the artifact store and the controller that
//! executes the plan arrive with the deployer issue; the deployer talks to
//! the scheduler only through gRPC.

pub mod pipeline;
