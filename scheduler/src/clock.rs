//! Time as a trait, so the state machine, controllers and a simulation never
//! read the wall clock themselves.

use crate::state::Millis;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time in ms since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock moved by hand, for tests and simulation.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock at `t`.
    pub fn new(t: Millis) -> ManualClock {
        ManualClock(AtomicI64::new(t))
    }
    /// Moves the clock by `ms` (may be negative: a clock step).
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets the clock.
    pub fn set(&self, t: Millis) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}
