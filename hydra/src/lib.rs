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
//! - [`controller`]: reads the jobs and runs over gRPC, asks the planner
//!   what is due, and proposes each fire or skip keyed by
//!   `(job, scheduled_at)`. Hydra talks to the scheduler only through gRPC,
//!   so it runs embedded in a server or standalone with no change.

pub mod controller;
pub mod plan;
pub mod schedule;
