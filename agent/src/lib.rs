//! charter-agent: the per-machine agent. It registers its node, heartbeats,
//! watches its assignments and runs tasks inside leases through amps.
//!
//! - [`resources`]: what this machine offers (CPU, memory, disk), detected
//!   from the OS and overridable by flags.
//! - [`conn`]: channels to every server, with failover.
//! - [`run`]: registration and heartbeats until stopped or removed.
//!
//! The assignment watch, sandboxes and amps arrive with the agents issue;
//! the agent speaks to the scheduler only through gRPC.

pub mod conn;
pub mod resources;
pub mod run;
