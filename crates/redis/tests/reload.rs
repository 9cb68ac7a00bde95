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

#[tokio::test]
async fn a_restarted_redis_is_used_again_within_a_second() {
    let mut server = RedisServer::start();
    let limiter = limiter(&server).await;
    assert!(limiter.check("api", "k", 1).await.expect("redis").allowed);
    server.kill();
    assert!(limiter.check("api", "k", 1).await.is_err(), "Redis is down");
    server.restart();
    let back = Instant::now();
    loop {
        match limiter.check("api", "k", 1).await {
            // A fresh server: empty state, and the script had to be reloaded.
            Ok(d) => {
                assert_eq!(d.remaining, 2);
                break;
            }
            Err(e) => {
                assert!(
                    back.elapsed() < Duration::from_secs(1),
                    "still failing after 1 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
