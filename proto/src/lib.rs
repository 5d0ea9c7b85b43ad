//! charter-proto: the generated gRPC types and services of Charter's API and
//! its Raft peer service. Nothing else lives here: conversion to domain types
//! happens at the edges, in the crates that own those types.

/// Version 1 of the API (`package charter.v1`).
pub mod v1 {
    tonic::include_proto!("charter.v1");
}

pub use v1::*;
