//! The memory store passes the conformance suite, alone and behind the
//! resilience layer (deny cache, breaker) that the server puts in front
//! of every store.

mod memory {
    tollgate_testkit::conformance_suite!(|clock: tollgate::ManualClock| async move {
        tollgate::MemoryStore::with_clock(clock)
    });

    mod reservations {
        tollgate_testkit::conformance_suite!(@reservations |clock: tollgate::ManualClock| async move {
            tollgate::MemoryStore::with_clock(clock)
        });
    }
}

mod resilient_memory {
    use tollgate::resilience::{ResilienceOptions, Resilient};
    use tollgate::{ManualClock, MemoryStore};

    // Without the lease cases: the resilience layer spends and takes leases
    // itself, in `apply` (its tests: tollgate's resilience tests), and is
    // no leasing store (`Store::leases` is false).
    tollgate_testkit::conformance_suite!(@without_leases |clock: ManualClock| async move {
        Resilient::new(
            MemoryStore::with_clock(clock.clone()),
            ResilienceOptions::default().clock(clock),
        )
    });

    // Reservations go through the breaker and the timeout to the store (a
    // give-back lets go of the key's denials in the deny cache).
    mod reservations {
        use tollgate::resilience::{ResilienceOptions, Resilient};
        use tollgate::{ManualClock, MemoryStore};

        tollgate_testkit::conformance_suite!(@reservations |clock: ManualClock| async move {
            Resilient::new(
                MemoryStore::with_clock(clock.clone()),
                ResilienceOptions::default().clock(clock),
            )
        });
    }
}
