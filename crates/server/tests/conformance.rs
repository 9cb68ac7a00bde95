//! The store the server decides on (`ServerStore`, behind the resilience
//! layer as the server wraps it) passes the store conformance suite: the
//! enum dispatch adds nothing and loses nothing.

mod memory {
    use tollgate::ManualClock;
    use tollgate::resilience::{ResilienceOptions, Resilient};
    use tollgate_server::store::ServerStore;

    // Without the lease cases: the resilience layer spends and takes leases
    // itself, in `apply` (its tests: tollgate's resilience tests), and is
    // no leasing store (`Store::leases` is false).
    tollgate_testkit::conformance_suite!(@without_leases |clock: ManualClock| async move {
        Resilient::with_invalidations(
            ServerStore::Memory(tollgate::MemoryStore::with_clock(clock.clone())),
            ResilienceOptions::default().clock(clock),
        )
    });
}

mod redis {
    use std::sync::Arc;

    use tollgate::ManualClock;
    use tollgate::resilience::{ResilienceOptions, Resilient};
    use tollgate_redis::{RedisOptions, RedisStore};
    use tollgate_server::store::ServerStore;
    use tollgate_testkit::redis::RedisServer;

    // Without the lease cases: the resilience layer spends and takes leases
    // itself, in `apply` (its tests: tollgate's resilience tests), and is
    // no leasing store (`Store::leases` is false).
    tollgate_testkit::conformance_suite!(@without_leases {
        let server = Arc::new(RedisServer::start());
        move |clock: ManualClock| {
            let server = Arc::clone(&server);
            async move {
                let prefix = tollgate_testkit::redis::unique_prefix();
                let options = RedisOptions::default()
                    .prefix(prefix)
                    .timeout(std::time::Duration::from_secs(5))
                    .connect_timeout(std::time::Duration::from_secs(5));
                let store = RedisStore::connect(&server.url(), options)
                    .await
                    .expect("connect")
                    .with_test_clock(clock.clone());
                Resilient::with_invalidations(
                    ServerStore::Redis(store),
                    ResilienceOptions::default()
                        .clock(clock)
                        .timeout(std::time::Duration::from_secs(5)),
                )
            }
        }
    });
}

/// The server's stores pass the lease cases themselves (the resilience
/// layer in front of them above does not forward lease calls yet).
mod leases {
    mod memory {
        use tollgate::ManualClock;
        use tollgate_server::store::ServerStore;

        tollgate_testkit::conformance_suite!(@leases |clock: ManualClock| async move {
            ServerStore::Memory(tollgate::MemoryStore::with_clock(clock))
        });
    }

    mod redis {
        use std::sync::Arc;

        use tollgate::ManualClock;
        use tollgate_redis::{RedisOptions, RedisStore};
        use tollgate_server::store::ServerStore;
        use tollgate_testkit::redis::RedisServer;

        tollgate_testkit::conformance_suite!(@leases {
            let server = Arc::new(RedisServer::start());
            move |clock: ManualClock| {
                let server = Arc::clone(&server);
                async move {
                    let options = RedisOptions::default()
                        .prefix(tollgate_testkit::redis::unique_prefix())
                        .timeout(std::time::Duration::from_secs(5))
                        .connect_timeout(std::time::Duration::from_secs(5));
                    let store = RedisStore::connect(&server.url(), options)
                        .await
                        .expect("connect")
                        .with_test_clock(clock);
                    ServerStore::Redis(store)
                }
            }
        });
    }
}

/// The two stores of `store.per_second` behind the router, on two real
/// redis-servers: the suite's 4/s policies live on the per-second one, its
/// longer ones on the main one, so its multi-policy cases span both. Every
/// case but one: `a_changed_policy_carries_the_state_over` changes a 1 s
/// period to 1 min and 100 ms, which moves the policy to the other store,
/// where its state starts fresh (docs/SERVER.md says so).
mod routed {
    use std::sync::Arc;
    use std::time::Duration;

    use tollgate::ManualClock;
    use tollgate::resilience::{ResilienceOptions, Resilient};
    use tollgate_redis::{RedisOptions, RedisStore};
    use tollgate_server::store::{RoutedStore, ServerStore};
    use tollgate_testkit::redis::RedisServer;

    async fn store(
        server: &RedisServer,
        prefix: &str,
        clock: &ManualClock,
    ) -> Resilient<ServerStore> {
        let options = RedisOptions::default()
            .prefix(prefix)
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5));
        let store = RedisStore::connect(&server.url(), options)
            .await
            .expect("connect")
            .with_test_clock(clock.clone());
        Resilient::with_invalidations(
            ServerStore::Redis(store),
            ResilienceOptions::default()
                .clock(clock.clone())
                .timeout(Duration::from_secs(5)),
        )
    }

    tollgate_testkit::conformance_suite!(@cases {
        let servers = Arc::new((RedisServer::start(), RedisServer::start()));
        move |clock: ManualClock| {
            let servers = Arc::clone(&servers);
            async move {
                let prefix = tollgate_testkit::redis::unique_prefix();
                let main = store(&servers.0, &prefix, &clock).await;
                let second = store(&servers.1, &prefix, &clock).await;
                RoutedStore::new(main, Some(second))
            }
        }
    };
        counts_down_to_the_limit_then_denies,
        retry_after_is_honest_through_the_store,
        peek_consumes_nothing,
        denied_requests_charge_nothing,
        costs_above_capacity_never_pass,
        keys_are_independent_whatever_their_bytes,
        policies_are_independent_for_one_key,
        several_policies_are_all_or_nothing,
        reset_returns_a_key_to_fresh,
        state_is_fresh_after_reset_after,
        leaky_bucket_reports_its_delay,
        concurrent_checks_admit_exactly_the_limit,
        a_policy_named_twice_is_refused_and_charges_nothing,
    );
}
