//! The store the server decides on (`ServerStore`, behind the resilience
//! layer as the server wraps it) passes the store conformance suite: the
//! enum dispatch adds nothing and loses nothing.

mod memory {
    use tollgate::ManualClock;
    use tollgate::resilience::{ResilienceOptions, Resilient};
    use tollgate_server::store::ServerStore;

    tollgate_testkit::conformance_suite!(|clock: ManualClock| async move {
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

    tollgate_testkit::conformance_suite!({
        let server = Arc::new(RedisServer::start());
        move |clock: ManualClock| {
            let server = Arc::clone(&server);
            async move {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let prefix = format!(
                    "conformance-{}",
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
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
