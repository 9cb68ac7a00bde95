//! The circuit breaker: stop calling a store that keeps failing, and probe it
//! back after a cool-down.
//!
//! Closed (calls go through) → after `failures` consecutive failures, Open
//! (every call is short-circuited) → after `cooldown`, HalfOpen (up to
//! `probes` calls go through, the rest are short-circuited) → Closed when
//! `probes` of them succeed, Open again as soon as one fails.
//!
//! The closed state, the one a healthy service lives in, costs one atomic
//! load per call and one per success; the mutex is taken only on failures
//! and while open or half-open.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go to the store.
    Closed,
    /// The store failed repeatedly: calls are decided by the failure mode
    /// without trying it, until the cool-down ends.
    Open,
    /// The cool-down ended: a few probe calls go to the store; the breaker
    /// closes when they succeed and opens again if one fails.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// What the breaker lets a call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Call the store (closed).
    Call,
    /// Call the store as a half-open probe; report the outcome.
    Probe,
    /// Do not call; the breaker expects to probe again after this long.
    ShortCircuit(Duration),
}

pub(crate) struct Breaker {
    state: AtomicU8,
    /// Consecutive failures while closed.
    consecutive: AtomicU32,
    /// Times it opened from closed.
    trips: AtomicU64,
    transitions: Mutex<Transitions>,
    failures_to_open: u32,
    cooldown_us: u64,
    probes: u32,
}

#[derive(Default)]
struct Transitions {
    opened_at_us: u64,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl Breaker {
    pub(crate) fn new(failures_to_open: u32, cooldown: Duration, probes: u32) -> Self {
        Breaker {
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            trips: AtomicU64::new(0),
            transitions: Mutex::new(Transitions::default()),
            failures_to_open: failures_to_open.max(1),
            cooldown_us: crate::clock::micros(cooldown),
            probes: probes.max(1),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// How many times it opened from closed (a failed half-open probe
    /// opening it again is not counted).
    pub(crate) fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Transitions> {
        // Every update under this lock is a few integer assignments: a
        // panic cannot leave it half-done, so a poisoned lock is still good.
        self.transitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn admit(&self, now_us: u64) -> Permit {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Permit::Call;
        }
        let mut t = self.lock();
        match self.state.load(Ordering::Acquire) {
            CLOSED => Permit::Call,
            OPEN => {
                let probe_at = t.opened_at_us.saturating_add(self.cooldown_us);
                if now_us >= probe_at {
                    self.state.store(HALF_OPEN, Ordering::Release);
                    t.probes_in_flight = 1;
                    t.probe_successes = 0;
                    Permit::Probe
                } else {
                    Permit::ShortCircuit(Duration::from_micros(probe_at - now_us))
                }
            }
            _ => {
                if t.probes_in_flight + t.probe_successes < self.probes {
                    t.probes_in_flight += 1;
                    Permit::Probe
                } else {
                    Permit::ShortCircuit(Duration::from_micros(self.cooldown_us))
                }
            }
        }
    }

    pub(crate) fn success(&self, permit: Permit) {
        match permit {
            Permit::Call => {
                // Load first: a healthy store never writes the shared line.
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
            }
            Permit::Probe => {
                let mut t = self.lock();
                t.probes_in_flight = t.probes_in_flight.saturating_sub(1);
                if self.state.load(Ordering::Acquire) == HALF_OPEN {
                    t.probe_successes += 1;
                    if t.probe_successes >= self.probes {
                        self.consecutive.store(0, Ordering::Relaxed);
                        self.state.store(CLOSED, Ordering::Release);
                    }
                }
            }
            Permit::ShortCircuit(_) => {}
        }
    }

    pub(crate) fn failure(&self, permit: Permit, now_us: u64) {
        match permit {
            Permit::Call => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.failures_to_open {
                    let mut t = self.lock();
                    if self.state.load(Ordering::Acquire) == CLOSED {
                        t.opened_at_us = now_us;
                        t.probes_in_flight = 0;
                        self.trips.fetch_add(1, Ordering::Relaxed);
                        self.state.store(OPEN, Ordering::Release);
                    }
                }
            }
            Permit::Probe => {
                let mut t = self.lock();
                t.probes_in_flight = t.probes_in_flight.saturating_sub(1);
                if self.state.load(Ordering::Acquire) == HALF_OPEN {
                    t.opened_at_us = now_us;
                    self.state.store(OPEN, Ordering::Release);
                }
            }
            Permit::ShortCircuit(_) => {}
        }
    }

    /// A probe whose call was dropped before it finished (the caller gave
    /// up): it frees its slot without a verdict.
    pub(crate) fn abandon(&self, permit: Permit) {
        if permit == Permit::Probe {
            let mut t = self.lock();
            t.probes_in_flight = t.probes_in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_probes_and_closes() {
        let b = Breaker::new(3, Duration::from_millis(100), 2);
        for _ in 0..2 {
            b.failure(Permit::Call, 0);
        }
        b.success(Permit::Call);
        for _ in 0..2 {
            b.failure(Permit::Call, 0);
        }
        assert_eq!(b.state(), BreakerState::Closed, "success resets the count");
        assert_eq!(b.trips(), 0);
        b.failure(Permit::Call, 10);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.trips(), 1);
        assert_eq!(
            b.admit(50_000),
            Permit::ShortCircuit(Duration::from_micros(50_010))
        );
        assert_eq!(b.admit(100_010), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(100_010), Permit::Probe);
        assert!(matches!(b.admit(100_010), Permit::ShortCircuit(_)));
        b.success(Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.success(Permit::Probe);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(100_020), Permit::Call);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = Breaker::new(1, Duration::from_millis(1), 1);
        b.failure(Permit::Call, 0);
        assert_eq!(b.admit(1_000), Permit::Probe);
        b.failure(Permit::Probe, 1_000);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.trips(), 1, "a failed probe re-opens; it does not trip");
        assert!(matches!(b.admit(1_500), Permit::ShortCircuit(_)));
        assert_eq!(b.admit(2_000), Permit::Probe);
        b.abandon(Permit::Probe);
        assert_eq!(
            b.admit(2_000),
            Permit::Probe,
            "an abandoned probe frees its slot"
        );
    }
}
