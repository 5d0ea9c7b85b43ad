//! charter-scheduler: the replicated scheduler.
//!
//! - [`state`]: the replicated state machine (`Command`, `State::apply`); pure.
//! - [`fleet`]: the nodes room of the state: nodes, pools, placement's indexes.
//! - [`placement`]: feasibility checkers and ranking over a [`fleet::Fleet`]; pure.
//! - [`storage`]: raft-rs `Storage` on sled, and in memory.
//! - [`transport`]: how raft messages reach peers: gRPC, or a test double.
//! - [`raft_driver`] (`raft/`): the raft-rs `RawNode` driver: one thread, raft-rs's Ready order.
//! - [`service`]: tonic services and auth; followers forward writes to the leader.
//! - [`controller`]: leader-only loops (lease expiry).
//! - [`server`]: wires a member together from flags.
//! - [`clock`]: the `Clock` trait; the only place that reads the wall clock.
//! - `sim` (feature `sim`, on for this crate's tests only): a deterministic
//!   simulation of a whole cluster with invariants.

/// A room of the state reads as its main map (`state.leases.get(&id)`):
/// `room_map!(Leases, all: OrdMap<u64, Lease>)` gives `Leases` a `Deref`
/// and `DerefMut` to its field `all`.
macro_rules! room_map {
    ($room:ty, $field:ident: $map:ty) => {
        impl std::ops::Deref for $room {
            type Target = $map;
            fn deref(&self) -> &$map {
                &self.$field
            }
        }

        impl std::ops::DerefMut for $room {
            fn deref_mut(&mut self) -> &mut $map {
                &mut self.$field
            }
        }
    };
}

pub mod clock;
pub mod codec;
pub mod controller;
mod error;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod placement;
#[path = "raft/mod.rs"]
pub mod raft_driver;
pub mod server;
pub mod service;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod storage;
pub mod transport;

pub use error::{Error, Result};
