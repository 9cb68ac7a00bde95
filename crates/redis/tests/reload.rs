//! The function library (and, where functions cannot be used, the script)
//! is loaded again by itself after `FUNCTION FLUSH` (`SCRIPT FLUSH`) and
//! after Redis restarts, with no restart of the client.

mod common;

use std::time::{Duration, Instant};

use tollgate::Limiter;
use tollgate_redis::RedisStore;
use tollgate_testkit::redis::RedisServer;

async fn limiter(server: &RedisServer) -> Limiter<RedisStore> {
    limiter_at(&server.url()).await
}

async fn limiter_at(url: &str) -> Limiter<RedisStore> {
    let store = RedisStore::connect(url, common::options())
        .await
        .expect("connect");
    Limiter::builder(store)
        .policy("api", "fixed_window 3/1h".parse().expect("valid"))
        .build()
}

#[tokio::test]
async fn function_flush_is_survived() {
    let server = RedisServer::start();
    let limiter = limiter(&server).await;
    assert_eq!(
        limiter.check("api", "k", 1).await.expect("redis").remaining,
        2
    );
    assert!(limiter.store().uses_functions());
    assert_eq!(common::calls(&server, "function|load"), 1);
    assert_eq!(server.cli(&["FUNCTION", "FLUSH"]), "OK");
    assert_eq!(
        limiter
            .check("api", "k", 1)
            .await
            .expect("reloaded")
            .remaining,
        1
    );
    assert_eq!(common::calls(&server, "function|load"), 2, "loaded again");
    // Loaded again: the next call is a plain FCALL.
    assert_eq!(
        limiter.check("api", "k", 1).await.expect("redis").remaining,
        0
    );
    assert_eq!(common::calls(&server, "function|load"), 2);
    assert_eq!(common::calls(&server, "fcall"), 5, "3 decisions, 2 refused");
}

#[tokio::test]
async fn script_flush_is_survived_where_functions_cannot_be_used() {
    let server = RedisServer::start();
    let limiter = limiter_at(&common::scripts_only_user(&server)).await;
    assert_eq!(
        limiter.check("api", "k", 1).await.expect("redis").remaining,
        2
    );
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(
        limiter
            .check("api", "k", 1)
            .await
            .expect("reloaded")
            .remaining,
        1
    );
    let stats = server.cli(&["INFO", "commandstats"]);
    assert!(
        stats.contains("cmdstat_eval:"),
        "the script was sent again with EVAL:\n{stats}"
    );
    // Cached again: the next call is a plain EVALSHA.
    assert_eq!(
        limiter.check("api", "k", 1).await.expect("redis").remaining,
        0
    );
    assert!(!limiter.store().uses_functions());
    common::assert_no_fcall_ran(&server);
}

/// Redis down for a moment while calls keep failing (each makes redis-rs
/// try to reconnect, and each try is refused), then back: the next calls
/// find it at once. redis-rs's own retries would wait 1 to 2 s before
/// their first (its backoff starts at a second whatever the configuration
/// says), so a store that let it retry would keep failing for most of a
/// second after Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_used_again_at_once() {
    let mut server = RedisServer::start();
    let limiter = limiter(&server).await;
    assert!(limiter.check("api", "k", 1).await.expect("redis").allowed);
    server.kill();
    let down = Instant::now();
    let mut failed = 0;
    while down.elapsed() < Duration::from_millis(200) {
        // A call waiting for a reconnection is as down as a failed one.
        let call = tokio::time::timeout(Duration::from_millis(50), limiter.check("api", "k", 1));
        if !matches!(call.await, Ok(Ok(_))) {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed > 0, "Redis is down");
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restarted");
    let back = Instant::now();
    loop {
        // Long enough that no call that reaches Redis times out (it would
        // have charged the key), short of redis-rs's 1 s backoff.
        let call = tokio::time::timeout(Duration::from_millis(900), limiter.check("api", "k", 1));
        match call.await {
            // A fresh server: empty state, and the library had to be loaded.
            Ok(Ok(d)) => {
                assert_eq!(d.remaining, 2);
                break;
            }
            failed => assert!(
                back.elapsed() < Duration::from_millis(400),
                "still failing {:?} after Redis came back: {failed:?}",
                back.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(server);
}

/// A connection whose reconnection failed while Redis was down keeps that
/// failure until its next use, which starts a new attempt: the first call
/// to meet it after Redis is back was failed with the old refusal. A
/// refused connection proves the call was never written, so the store
/// sends it again, once, on the new attempt: no call fails once Redis is
/// back, and each is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_on_a_reconnection_that_failed_before_redis_came_back() {
    let mut server = RedisServer::start();
    let limiter = limiter(&server).await;
    assert!(limiter.check("api", "k", 1).await.expect("redis").allowed);
    server.kill();
    // Both connections meet the outage and fail to reconnect.
    for _ in 0..4 {
        assert!(limiter.check("api", "k", 1).await.is_err(), "Redis is down");
    }
    // Past the pings that follow a failure (100 ms, then 200, 400...), so
    // that the next one comes after the restart: each connection still
    // holds its refused reconnection when the calls below meet it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restarted");
    // A fresh server: each call charged once, on both connections.
    for remaining in [2, 1, 0] {
        let decision = limiter.check("api", "k", 1).await.expect("Redis is back");
        assert_eq!(decision.remaining, remaining);
    }
    assert!(!limiter.check("api", "k", 1).await.expect("redis").allowed);
    drop(server);
}
