//! The `charter` package's library side: what the binary and the end-to-end
//! tests share.
//!
//! - [`harness`]: a cluster of real `charter server` processes on 127.0.0.1
//!   in a temporary directory, for end-to-end tests and `charter bench`.

pub mod harness;
pub mod netlab;
