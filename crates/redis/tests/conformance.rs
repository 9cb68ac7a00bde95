//! The Redis store passes the same conformance suite as the memory store,
//! on a standalone server, on a 3-master Cluster and on a master found
//! through Redis Sentinel (one replica, three sentinels), alone and behind
//! the resilience layer (deny cache, breaker), the reservation cases
//! included. Each case starts its own servers.

mod common;

mod standalone {
    use std::sync::Arc;

    use tollgate::ManualClock;
    use tollgate_testkit::redis::RedisServer;

    tollgate_testkit::conformance_suite!({
        let server = Arc::new(RedisServer::start());
        move |clock: ManualClock| {
            let server = Arc::clone(&server);
            async move { super::common::standalone(&server.url(), clock).await }
        }
    });

    mod reservations {
        use super::*;

        tollgate_testkit::conformance_suite!(@reservations {
            let server = Arc::new(RedisServer::start());
            move |clock: ManualClock| {
                let server = Arc::clone(&server);
                async move { super::super::common::standalone(&server.url(), clock).await }
            }
        });
    }
}

mod cluster {
    use std::sync::Arc;

    use tollgate::ManualClock;
    use tollgate_testkit::redis::RedisCluster;

    tollgate_testkit::conformance_suite!({
        let cluster = Arc::new(RedisCluster::start(3, 0));
        move |clock: ManualClock| {
            let cluster = Arc::clone(&cluster);
            async move { super::common::cluster(&cluster.urls(), clock).await }
        }
    });

    mod reservations {
        use super::*;

        tollgate_testkit::conformance_suite!(@reservations {
            let cluster = Arc::new(RedisCluster::start(3, 0));
            move |clock: ManualClock| {
                let cluster = Arc::clone(&cluster);
                async move { super::super::common::cluster(&cluster.urls(), clock).await }
            }
        });
    }
}

mod sentinel {
    use std::sync::Arc;

    use std::time::Duration;

    use tollgate::ManualClock;
    use tollgate_testkit::redis::{RedisSentinel, SentinelSetup};

    tollgate_testkit::conformance_suite!({
        // No failover here: a master starved of CPU on a busy machine must
        // not be deemed down (and its unreplicated writes lost) mid-suite.
        let setup = SentinelSetup::default().down_after(Duration::from_secs(60));
        let group = Arc::new(RedisSentinel::start_with(setup));
        move |clock: ManualClock| {
            let group = Arc::clone(&group);
            async move { super::common::sentinel(&group, clock).await }
        }
    });

    mod reservations {
        use super::*;

        tollgate_testkit::conformance_suite!(@reservations {
            let setup = SentinelSetup::default().down_after(Duration::from_secs(60));
            let group = Arc::new(RedisSentinel::start_with(setup));
            move |clock: ManualClock| {
                let group = Arc::clone(&group);
                async move { super::super::common::sentinel(&group, clock).await }
            }
        });
    }
}

mod resilient_standalone {
    use std::sync::Arc;

    use tollgate::ManualClock;
    use tollgate::resilience::{ResilienceOptions, Resilient};
    use tollgate_testkit::redis::RedisServer;

    // Without the lease cases: the resilience layer spends and takes leases
    // itself, in `apply` (its tests: tollgate's resilience tests), and is
    // no leasing store (`Store::leases` is false).
    tollgate_testkit::conformance_suite!(@without_leases {
        let server = Arc::new(RedisServer::start());
        move |clock: ManualClock| {
            let server = Arc::clone(&server);
            async move {
                let store = super::common::standalone(&server.url(), clock.clone()).await;
                let options = ResilienceOptions::default()
                    .clock(clock)
                    .timeout(std::time::Duration::from_secs(5));
                Resilient::with_invalidations(store, options)
            }
        }
    });

    // Reservations go through the breaker and the timeout to the store (a
    // give-back lets go of the key's denials in the deny cache).
    mod reservations {
        use super::*;

        tollgate_testkit::conformance_suite!(@reservations {
            let server = Arc::new(RedisServer::start());
            move |clock: ManualClock| {
                let server = Arc::clone(&server);
                async move {
                    let store =
                        super::super::common::standalone(&server.url(), clock.clone()).await;
                    let options = ResilienceOptions::default()
                        .clock(clock)
                        .timeout(std::time::Duration::from_secs(5));
                    Resilient::with_invalidations(store, options)
                }
            }
        });
    }
}
