//! The demo API of `examples/api_server.rs`, served on 127.0.0.1:0 and
//! driven over HTTP: the policies behave as docs/MIDDLEWARE.md says.

// The example itself, compiled as a module: the test drives the very `app`
// and `serve` that `cargo run --example api_server` runs (its `main` and
// flag parsing go unused here).
#[allow(dead_code)]
#[path = "../examples/api_server.rs"]
mod api_server;

use tollgate::{MemoryStore, Store};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_testkit::redis::RedisServer;
use tollgate_testkit::serve::Served;

/// The demo on the memory store.
async fn start() -> Served {
    start_on(MemoryStore::new()).await
}

/// The demo on `store`, served by the example's own `serve`.
async fn start_on<S: Store>(store: S) -> Served {
    let limiter = api_server::limiter(store).expect("policies");
    let app = api_server::app(limiter, &[]).expect("app");
    Served::start(|listener, shutdown| api_server::serve(listener, app, shutdown)).await
}

#[tokio::test]
async fn resource_admits_100_per_minute_per_ip() {
    let demo = start().await;
    for i in 0..100u64 {
        let reply = demo.send(reqwest::Method::GET, "/api/resource").await;
        assert_eq!(reply.status, 200, "request {i}");
        let expected = format!(r#""resource";r={};t=60"#, 99 - i);
        assert_eq!(reply.header("ratelimit"), Some(expected));
    }
    let denied = demo.send(reqwest::Method::GET, "/api/resource").await;
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.header("ratelimit-policy").as_deref(),
        Some(r#""resource";q=100;w=60"#)
    );
    // The first request leaves the window a minute after it was made.
    let retry: u64 = denied
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((55..=60).contains(&retry), "{retry}");
    // Health checks are not limited.
    let health = demo.send(reqwest::Method::GET, "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("ratelimit"), None);
}

#[tokio::test]
async fn login_admits_a_burst_of_5_then_one_every_12_seconds() {
    let demo = start().await;
    for _ in 0..5 {
        let reply = demo.send(reqwest::Method::POST, "/api/login").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("ratelimit-policy").as_deref(),
            Some(r#""login";q=5;w=60"#)
        );
    }
    let denied = demo.send(reqwest::Method::POST, "/api/login").await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after").as_deref(), Some("12"));
    // Login and resource budgets are independent.
    assert_eq!(
        demo.send(reqwest::Method::GET, "/api/resource")
            .await
            .status,
        200
    );
}

#[test]
fn the_port_flag_parses() {
    use clap::Parser;
    let args = api_server::Args::try_parse_from(["api_server", "--port", "3000"]).expect("flags");
    assert_eq!(args.port, 3000);
    let args = api_server::Args::try_parse_from([
        "api_server",
        "--trusted-proxy",
        "10.0.0.0/8",
        "--trusted-proxy",
        "::1",
    ])
    .expect("flags");
    assert_eq!(args.port, 3000);
    assert_eq!(args.trusted_proxies.len(), 2);
    assert!(api_server::Args::try_parse_from(["api_server", "--trusted-proxy", "nope"]).is_err());
}

/// Two demo instances on different ports, each with its own connection to
/// one Redis, enforce one shared limit for a client that alternates between
/// them.
#[tokio::test]
async fn two_instances_on_one_redis_share_one_limit() {
    let redis = RedisServer::start();
    let url = redis.url();
    let connect = || RedisStore::connect(&url, RedisOptions::default().prefix("demo"));
    let a = start_on(connect().await.expect("redis")).await;
    let b = start_on(connect().await.expect("redis")).await;
    assert_ne!(a.address, b.address);
    let (mut resource, mut login) = (0, 0);
    for i in 0..130 {
        let demo = if i % 2 == 0 { &a } else { &b };
        resource += u32::from(
            demo.send(reqwest::Method::GET, "/api/resource")
                .await
                .status
                == 200,
        );
        if i < 12 {
            login += u32::from(demo.send(reqwest::Method::POST, "/api/login").await.status == 200);
        }
    }
    assert_eq!(resource, 100, "sliding_log 100/1m shared by both instances");
    assert_eq!(
        login, 5,
        "token_bucket 5/1m burst 5 shared by both instances"
    );
}
