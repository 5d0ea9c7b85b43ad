//! charter-proto: the generated gRPC types and services of Charter's API and
//! its Raft peer service, and [`conn`], the client side every caller shares
//! (CLI, agents, Hydra): failover between members with a bearer token.
//! [`convert`] turns the typed model (`charter-config`) into wire messages
//! and back, one place per type; types only the scheduler knows are
//! converted in its services.

pub mod conn;
pub mod convert;
pub mod tls;

/// Version 1 of the API (`package charter.v1`).
pub mod v1 {
    tonic::include_proto!("charter.v1");
}

pub use v1::*;
