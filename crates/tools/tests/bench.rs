//! `tollgate bench` against targets with known limits: exact counts of
//! allowed and denied requests, and no over-admission.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use clap::Parser;
use tollgate::{Limiter, MemoryStore};
use tollgate_testkit::redis::RedisServer;
use tollgate_tools::bench::{self, BenchArgs, BenchError};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn args(line: &[&str]) -> BenchArgs {
    let mut argv = vec!["bench"];
    argv.extend_from_slice(line);
    Cli::parse_from(argv).args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_memory_admits_exactly_the_limit_per_key() {
    let summary = bench::bench(&args(&[
        "direct",
        "--policy",
        "sliding_log 50/1m",
        "--concurrency",
        "4",
        "--max-requests",
        "500",
        "--keys",
        "2",
        "--instances",
        "3",
    ]))
    .await
    .expect("runs");
    assert_eq!(summary.requests, 500);
    assert_eq!(
        (summary.allowed, summary.denied, summary.errors),
        (100, 400, 0)
    );
    let accuracy = summary.accuracy.clone().expect("policy known");
    assert_eq!(accuracy.keys, 2);
    assert_eq!(accuracy.max_admitted_per_key, 50);
    assert!(accuracy.ok(), "{accuracy:?}");
    assert!(summary.latency.max_ms >= summary.latency.p50_ms);
    assert!(summary.text().contains("OK: no key over-admitted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_redis_fleet_admits_exactly_the_limit() {
    let server = RedisServer::start();
    let summary = bench::bench(&args(&[
        "direct",
        "--store",
        &server.url(),
        "--instances",
        "3",
        "--policy",
        "sliding_log 30/1m",
        "--concurrency",
        "8",
        "--max-requests",
        "300",
    ]))
    .await
    .expect("runs");
    assert_eq!(
        (summary.allowed, summary.denied, summary.errors),
        (30, 270, 0)
    );
    assert!(summary.accuracy.expect("policy known").ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_open_model_sends_on_schedule() {
    // 200/s for 0.5 s: exactly 100 arrivals; a token bucket of 10 refilled
    // at 1/min admits 10.
    let summary = bench::bench(&args(&[
        "direct",
        "--phase",
        "500ms:rate=200",
        "--policy",
        "token_bucket 1/1m burst 10",
    ]))
    .await
    .expect("runs");
    assert_eq!(summary.requests, 100);
    assert_eq!((summary.allowed, summary.denied), (10, 90));
    assert!(
        (0.45..1.0).contains(&summary.elapsed_secs),
        "{}",
        summary.elapsed_secs
    );
}

/// A small rate limited HTTP server: `sliding_log 20/1m` per `x-key`
/// header (or one key without it).
async fn limited_server() -> SocketAddr {
    let limiter = Limiter::builder(MemoryStore::new())
        .policy("api", "sliding_log 20/1m".parse().expect("valid"))
        .build();
    async fn handler(State(limiter): State<Limiter>, headers: HeaderMap) -> StatusCode {
        let key = headers
            .get("x-key")
            .map_or(&b"anonymous"[..], |v| v.as_bytes());
        match limiter.check("api", key, 1).await {
            Ok(d) if d.allowed => StatusCode::OK,
            Ok(_) => StatusCode::TOO_MANY_REQUESTS,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    let app = Router::new().route("/r", get(handler)).with_state(limiter);
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_counts_2xx_and_429_exactly() {
    let addr = limited_server().await;
    let url = format!("http://{addr}/r");
    let summary = bench::bench(&args(&[
        "http",
        &url,
        "--rate",
        "200",
        "--duration",
        "1s",
        "--policy",
        "sliding_log 20/1m",
    ]))
    .await
    .expect("runs");
    assert_eq!(summary.requests, 200);
    assert_eq!(
        (summary.allowed, summary.denied, summary.errors),
        (20, 180, 0)
    );
    assert!(summary.accuracy.expect("policy given").ok());

    // Three keys in a header, each with its own 20.
    let summary = bench::bench(&args(&[
        "http",
        &url,
        "--concurrency",
        "4",
        "--max-requests",
        "150",
        "--keys",
        "3",
        "--key-header",
        "x-key",
        "--policy",
        "sliding_log 20/1m",
        "--json",
    ]))
    .await
    .expect("runs");
    assert_eq!((summary.allowed, summary.denied), (60, 90));
    let json = serde_json::to_value(&summary).expect("serializes");
    assert_eq!(json["accuracy"]["max_admitted_per_key"], 20);
    assert_eq!(json["accuracy"]["allowance_per_key"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_admission_is_flagged() {
    // The server allows 20 per minute, but we claim it should allow 5.
    let addr = limited_server().await;
    let summary = bench::bench(&args(&[
        "http",
        &format!("http://{addr}/r"),
        "--concurrency",
        "2",
        "--max-requests",
        "30",
        "--policy",
        "sliding_log 5/1m",
        "--key-prefix",
        "k",
    ]))
    .await
    .expect("runs");
    let accuracy = summary.accuracy.clone().expect("policy given");
    assert!(!accuracy.ok());
    assert_eq!(accuracy.over_admitted.get("k0"), Some(&20));
    assert!(summary.text().contains("OVER-ADMISSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_not_fatal() {
    // Nothing listens on this port (bound, then dropped).
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let summary = bench::bench(&args(&[
        "http",
        &format!("http://127.0.0.1:{port}/"),
        "--concurrency",
        "1",
        "--max-requests",
        "3",
        "--timeout",
        "2s",
    ]))
    .await
    .expect("runs");
    assert_eq!((summary.requests, summary.errors), (3, 3));
    assert!(!summary.error_samples.is_empty());
}

#[tokio::test]
async fn remote_targets_are_refused_by_default() {
    let refused = bench::bench(&args(&["http", "http://192.0.2.1/", "--max-requests", "1"])).await;
    assert!(matches!(refused, Err(BenchError::Remote(_))), "{refused:?}");
    let refused = bench::bench(&args(&[
        "direct",
        "--store",
        "redis://192.0.2.1:6379",
        "--max-requests",
        "1",
    ]))
    .await;
    assert!(matches!(refused, Err(BenchError::Remote(_))), "{refused:?}");
}
