//! Shared by the layer's end-to-end tests: the clock and the limiter they
//! put behind the layer. Serving and requests are testkit's
//! ([`tollgate_testkit::serve`], [`tollgate_testkit::http`]).

#![allow(dead_code)] // each test file uses a different part

use tollgate::{Limiter, ManualClock, MemoryStore};

/// A start time on a whole minute, so fixed windows start with the test.
pub const START_US: u64 = 1_700_000_040_000_000;

/// A limiter over a memory store on `clock`, with `policies` (name, text).
pub fn limiter(clock: &ManualClock, policies: &[(&str, &str)]) -> Limiter<MemoryStore> {
    let mut builder = Limiter::builder(MemoryStore::with_clock(clock.clone()));
    for (name, text) in policies {
        builder = builder.policy(*name, text.parse().expect("policy"));
    }
    builder.build()
}
