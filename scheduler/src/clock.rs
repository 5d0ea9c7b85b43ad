//! Time as a trait, so the state machine, controllers and a simulation never
//! read the wall clock themselves.

use crate::state::Millis;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time in ms since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Millis;

    /// Called when this member becomes leader, with the state's time
    /// (`floor`): a clock that keeps its own time starts again from here.
    fn anchor(&self, _floor: Millis) {}

    /// How far the wall clock is from this clock's time (wall minus this),
    /// when they can differ.
    fn skew_ms(&self) -> Option<i64> {
        None
    }
}

/// How far the wall clock may be from the leader's steady time before
/// the leader says so (a log line; the skew is always a metric).
pub const SKEW_BOUND_MS: i64 = 1_000;

/// The time a leader stamps on its proposals: the wall clock read once,
/// when the member becomes leader (never behind the state's time), then
/// moved on by the monotonic clock. A step of the wall clock, forward or
/// back, changes nothing until the next term; the leader reports a wall
/// clock that disagrees by more than [`SKEW_BOUND_MS`]. The monotonic
/// clock follows NTP's rate corrections (it only ignores steps), so the
/// two stay close over a long term.
pub struct SteadyClock<C: Clock> {
    wall: C,
    anchor: std::sync::Mutex<(std::time::Instant, Millis)>,
    warned: std::sync::atomic::AtomicBool,
}

impl<C: Clock> SteadyClock<C> {
    /// Anchored on `wall` now.
    pub fn new(wall: C) -> SteadyClock<C> {
        let t = wall.now();
        SteadyClock {
            wall,
            anchor: std::sync::Mutex::new((std::time::Instant::now(), t)),
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn steady(&self) -> Millis {
        let (at, t) = match self.anchor.lock() {
            Ok(a) => *a,
            Err(p) => *p.into_inner(),
        };
        t.saturating_add(Millis::try_from(at.elapsed().as_millis()).unwrap_or(Millis::MAX))
    }
}

impl<C: Clock> Clock for SteadyClock<C> {
    fn now(&self) -> Millis {
        let steady = self.steady();
        let skew = self.wall.now().saturating_sub(steady);
        if skew.abs() > SKEW_BOUND_MS {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    skew_ms = skew,
                    "the wall clock disagrees with the leader's steady time (a clock step?); proposals keep the steady time until the next term"
                );
            }
        } else if self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(
                skew_ms = skew,
                "the wall clock agrees with the steady time again"
            );
        }
        steady
    }

    fn anchor(&self, floor: Millis) {
        let wall = self.wall.now();
        if wall < floor.saturating_sub(SKEW_BOUND_MS) {
            tracing::warn!(
                behind_ms = floor - wall,
                "this member's wall clock is behind the cluster's time; time goes on from the cluster's"
            );
        }
        if let Ok(mut a) = self.anchor.lock() {
            *a = (std::time::Instant::now(), wall.max(floor));
        }
    }

    fn skew_ms(&self) -> Option<i64> {
        Some(self.wall.now().saturating_sub(self.steady()))
    }
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

/// A shared clock is a clock (so a test keeps a handle to move it).
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Millis {
        (**self).now()
    }
    fn anchor(&self, floor: Millis) {
        (**self).anchor(floor)
    }
    fn skew_ms(&self) -> Option<i64> {
        (**self).skew_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_step_of_the_wall_clock_moves_steady_time_only_at_the_next_anchor() {
        let wall = Arc::new(ManualClock::new(1_000_000));
        let c = SteadyClock::new(wall.clone());
        let t0 = c.now();
        assert!((1_000_000..1_000_100).contains(&t0), "{t0}");
        wall.advance(40_000);
        let t1 = c.now();
        assert!(
            t1 - t0 < 100,
            "a +40 s step moved steady time by {}",
            t1 - t0
        );
        assert!(c.skew_ms().unwrap() > 39_000);
        wall.advance(-80_000);
        let t2 = c.now();
        assert!(t2 >= t1 && t2 - t1 < 100, "a -80 s step moved steady time");
        assert!(c.skew_ms().unwrap() < -39_000);
        // A new term anchors on the wall clock, never behind the state.
        c.anchor(t2 + 5_000);
        let t3 = c.now();
        assert!(t3 >= t2 + 5_000, "anchored behind the floor: {t3}");
        wall.advance(60_000);
        c.anchor(0);
        assert!(c.now() >= 1_020_000);
    }
}
