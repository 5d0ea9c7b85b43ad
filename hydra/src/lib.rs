//! charter-hydra: distributed cron with dependencies, exactly once.
//!
//! - [`schedule`]: Hydra's schedule type. Expressions follow crontab(5)
//!   (five fields, `0` and `7` are Sunday, day-of-month OR day-of-week when
//!   both are restricted, `@daily` and friends) with an optional leading
//!   seconds field; the `cron` crate does the calendar iteration behind it.
//!
//! The planner (`due(jobs, history, now)`) and the controller arrive with the
//! Hydra issue; Hydra talks to the scheduler only through gRPC.

pub mod schedule;
