//! Time sources for the memory store: integer microseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A duration in whole microseconds, saturating at `u64::MAX` (585,000
/// years: beyond any period, deadline or wait the library handles).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A source of the current time in microseconds.
///
/// Implementations must never go backwards: the algorithms tolerate it
/// (conservatively), but a clock stepping back delays refills.
pub trait Clock: Send + Sync + 'static {
    /// The current time in microseconds.
    fn now_us(&self) -> u64;
}

/// The system's monotonic clock, expressed as Unix microseconds.
///
/// The Unix time is read once, at construction; after that the clock advances
/// monotonically, so wall clock adjustments (NTP steps) cannot move it
/// backwards. Anchoring to Unix time keeps fixed windows aligned to the same
/// instants as Redis's clock.
///
/// It reads the CPU's time stamp counter through `quanta` (the clock governor
/// uses) where the counter is invariant, and the OS monotonic clock
/// otherwise: on virtual machines `clock_gettime` alone was about a third of
/// a memory-store decision (docs/BENCHMARKS.md). Counters of different cores
/// may disagree by a few nanoseconds; the algorithms treat time that seems to
/// step back as no time passing, so that costs at most that much refill.
#[derive(Debug, Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    origin: u64,
    origin_unix_us: u64,
}

impl SystemClock {
    /// A clock anchored at the current Unix time.
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let clock = quanta::Clock::new();
        SystemClock {
            origin: clock.raw(),
            clock,
            origin_unix_us: u64::try_from(unix.as_micros()).unwrap_or(u64::MAX / 2),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        let elapsed_ns = self.clock.delta_as_nanos(self.origin, self.clock.raw());
        self.origin_unix_us + elapsed_ns / 1_000
    }
}

/// A clock that moves only when told to: every timing test uses it.
/// Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// let view = clock.clone();
/// clock.advance(Duration::from_millis(2));
/// assert_eq!(view.now_us(), 3_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `start_us` microseconds.
    pub fn new(start_us: u64) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(start_us)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let us = micros(by);
        self.now.fetch_add(us, Ordering::SeqCst);
    }

    /// Moves the clock forward by `us` microseconds.
    pub fn advance_us(&self, us: u64) {
        self.now.fetch_add(us, Ordering::SeqCst);
    }

    /// Sets the clock to `us` (tests may step it back on purpose).
    pub fn set_us(&self, us: u64) {
        self.now.store(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_unix_time_and_never_goes_back() {
        let clock = SystemClock::new();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_micros() as u64;
        let mut last = clock.now_us();
        assert!(last.abs_diff(unix) < 1_000_000, "{last} vs {unix}");
        for _ in 0..100_000 {
            let now = clock.now_us();
            assert!(now >= last);
            last = now;
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(clock.now_us() - last >= 19_000, "advances with real time");
    }
}
