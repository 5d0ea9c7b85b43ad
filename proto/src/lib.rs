//! charter-proto: the generated gRPC types and services of Charter's API and
//! its Raft peer service, and [`conn`], the client side every caller shares
//! (CLI, agents, Hydra): failover between members with a bearer token.
//! Conversion to domain types happens at the edges, in the crates that own
//! those types.

pub mod conn;
pub mod tls;

/// Version 1 of the API (`package charter.v1`).
pub mod v1 {
    tonic::include_proto!("charter.v1");
}

pub use v1::*;
