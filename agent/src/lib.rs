//! charter-agent: the per-machine agent. It registers its node, heartbeats,
//! watches its assignments and runs tasks inside leases through amps.
//!
//! - [`resources`]: what this machine offers (CPU, memory, disk), detected
//!   from the OS and overridable by flags.
//! - [`conn`]: channels to every server, with failover.
//! - [`run`]: registration, heartbeats, the assignment watch and reports.
//! - [`supervisor`]: leases' runners, ending every lease on the agent's own
//!   clock; [`amp`]: the batch and service lifecycle drivers.
//! - [`users`]: who a lease's processes run as (a uid of their own when
//!   the agent is root).
//! - [`sandbox`]: working directory, user, session, scrubbed env, limits, kill.
//! - [`health`]: HTTP, TCP and command checks of services.
//! - [`logs`]: size-bounded output files; [`serve`]: logs for the servers.
//!
//! The agent speaks to the scheduler only through gRPC.

pub mod amp;
pub mod artifact;
pub use charter_proto::conn;
pub mod health;
pub mod interpolate;
pub mod logs;
pub mod metrics;
pub mod resources;
pub mod run;
pub mod sandbox;
pub mod serve;
pub mod supervisor;
pub mod users;
