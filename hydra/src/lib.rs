//! charter-hydra: distributed cron with dependencies, exactly once.
//!
//! - [`schedule`]: Hydra's schedule type. Expressions follow crontab(5)
//!   (five fields, `0` and `7` are Sunday, day-of-month OR day-of-week when
//!   both are restricted, `@daily` and friends) with an optional leading
//!   seconds field; the `cron` crate does the calendar iteration behind it.
//!
//! - [`plan`]: the pure planner `due(jobs, history, now)`: missed ticks,
//!   dependencies and concurrency.
//!
//! The controller and the `cron` CLI arrive with the Hydra issue; Hydra
//! talks to the scheduler only through gRPC.

pub mod plan;
pub mod schedule;
