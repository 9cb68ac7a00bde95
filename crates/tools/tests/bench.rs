//! `tollgate bench` against targets with known limits: exact counts of
//! allowed and denied requests, and no over-admission.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use clap::Parser;
use tollgate::{Limiter, MemoryStore};
use tollgate_testkit::http::Client;
use tollgate_testkit::ports::free_port;
use tollgate_testkit::redis::RedisServer;
use tollgate_testkit::serve::{Stop, loopback, shutdown};
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
async fn direct_redis_counts_the_commands_redis_ran() {
    let server = RedisServer::start();
    let summary = bench::bench(&args(&[
        "direct",
        "--store",
        &server.url(),
        "--policy",
        "fixed_window 1000/1h",
        "--concurrency",
        "4",
        "--max-requests",
        "200",
    ]))
    .await
    .expect("runs");
    assert_eq!((summary.allowed, summary.errors), (200, 0));
    // Without leases every decision is one script call in Redis (the 4
    // first may be sent twice: refused once before the library is loaded),
    // and a script runs commands of its own.
    let redis = summary.redis.expect("counted on Redis");
    assert!((200..=204).contains(&redis.script_calls), "{redis:?}");
    assert!(redis.commands > redis.script_calls, "{redis:?}");
    let per_call = redis.script_calls_per_admitted.expect("some admitted");
    assert!((1.0..=1.02).contains(&per_call), "{redis:?}");
    assert!(summary.leases.is_none());
    let text = summary.text();
    assert!(
        text.contains(&format!(
            "redis       {} commands ({} script calls): ",
            redis.commands, redis.script_calls
        )),
        "{text}"
    );
}

/// `--lease-max`/`--lease-ttl` arguments of a `direct` bench of one hot
/// key: `fixed_window 100/1h`, 600 requests from 3 instances.
fn leased_direct(store: &str) -> BenchArgs {
    args(&[
        "direct",
        "--store",
        store,
        "--instances",
        "3",
        "--policy",
        "fixed_window 100/1h",
        "--lease-max",
        "20",
        "--lease-ttl",
        "1m",
        "--concurrency",
        "4",
        "--max-requests",
        "600",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_leases_admit_exactly_the_limit_and_report_what_leasing_did() {
    let summary = bench::bench(&leased_direct("memory")).await.expect("runs");
    // Leases live longer than the run and every instance keeps being asked,
    // so every leased unit is spent: the whole limit, never more.
    assert_eq!(
        (summary.allowed, summary.denied, summary.errors),
        (100, 500, 0)
    );
    assert!(summary.accuracy.as_ref().expect("policy known").ok());
    assert!(
        summary.target.contains("lease max 20 ttl 60s"),
        "{}",
        summary.target
    );
    let leases = summary.leases.expect("leasing reported");
    assert!(leases.taken > 0 && leases.units > 0, "{leases:?}");
    assert!(leases.units <= 100, "{leases:?}");
    assert!(
        leases.store_calls < summary.requests,
        "leases served some checks without the store: {leases:?}"
    );
    assert!(summary.redis.is_none());
    assert!(
        summary.text().contains("leases      taken "),
        "{}",
        summary.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_redis_leases_admit_exactly_the_limit() {
    let server = RedisServer::start();
    let summary = bench::bench(&leased_direct(&server.url()))
        .await
        .expect("runs");
    assert_eq!(
        (summary.allowed, summary.denied, summary.errors),
        (100, 500, 0)
    );
    assert!(summary.accuracy.expect("policy known").ok());
    let leases = summary.leases.expect("leasing reported");
    assert!(leases.taken > 0 && leases.units > 0, "{leases:?}");
    // Leases and the deny cache answered most checks: Redis ran fewer
    // scripts than there were checks, and each lease call is one.
    let redis = summary.redis.expect("counted on Redis");
    assert!(redis.script_calls < summary.requests, "{redis:?}");
    assert!(redis.script_calls >= leases.taken, "{redis:?} {leases:?}");
}

#[test]
fn lease_flags_come_together_and_only_for_algorithms_that_lease() {
    for half in [["--lease-max", "10"], ["--lease-ttl", "1s"]] {
        let mut argv = vec!["bench", "direct"];
        argv.extend_from_slice(&half);
        assert!(Cli::try_parse_from(argv).is_err(), "{half:?} alone");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let refused = |line: &[&str]| {
        let mut argv = vec!["direct", "--max-requests", "1"];
        argv.extend_from_slice(line);
        runtime.block_on(bench::bench(&args(&argv)))
    };
    let log = refused(&[
        "--policy",
        "sliding_log 10/1s",
        "--lease-max",
        "10",
        "--lease-ttl",
        "1s",
    ]);
    assert!(
        matches!(
            log,
            Err(BenchError::Policy(
                tollgate::PolicyError::LeaseNotSupported(_)
            ))
        ),
        "{log:?}"
    );
    let tiny = refused(&["--lease-max", "1", "--lease-ttl", "1s"]);
    assert!(
        matches!(
            tiny,
            Err(BenchError::Policy(tollgate::PolicyError::InvalidLease(_)))
        ),
        "{tiny:?}"
    );
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
    let (listener, address) = loopback().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
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
    three_requests_to_nothing_are_three_errors("http", |port| format!("http://127.0.0.1:{port}/"))
        .await;
}

/// Three requests of the `kind` target at `target(port)`, on a port where
/// nothing listens: three errors, with samples, and the run completes.
async fn three_requests_to_nothing_are_three_errors(kind: &str, target: fn(u16) -> String) {
    let target = target(free_port());
    let summary = bench::bench(&args(&[
        kind,
        &target,
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

/// The real tollgate server on 127.0.0.1:0 (memory store), as
/// `crates/server/tests/common` starts it: its Envoy RLS gRPC address, and
/// the sender that stops it when dropped.
async fn rls_server(config: &str) -> (SocketAddr, Stop) {
    use std::sync::Arc;
    use tollgate_server::{App, Config, ConfigSource, Listeners, ServerOptions, ServerStore};
    let config = Config::parse(config, "test.yaml").expect("valid config");
    let app = Arc::new(App::new(
        ConfigSource::default(),
        config,
        ServerStore::Memory(MemoryStore::new()),
    ));
    let (http, http_address) = loopback().await;
    let (grpc, grpc_address) = loopback().await;
    let (stop, stopped) = shutdown();
    tokio::spawn(tollgate_server::run(
        app,
        Listeners {
            http,
            grpc: Some(grpc.into()),
        },
        ServerOptions::default()
            .watch_interval(None)
            .reload_on_sighup(false),
        stopped,
    ));
    // Up once `/healthz` answers: `run` has started its listeners.
    Client::new(http_address).wait_until_up("/healthz").await;
    (grpc_address, stop)
}

const RLS_CONFIG: &str = r#"
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        rate_limit: { unit: minute, requests_per_unit: 5 }
      - key: user
        algorithm: sliding_log
        rate_limit: { unit: minute, requests_per_unit: 3 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_counts_ok_and_over_limit_exactly() {
    let (addr, _stop) = rls_server(RLS_CONFIG).await;
    let addr = addr.to_string();

    // 40 requests over 2 keys, 5 per key per (fixed, aligned) minute: 10
    // allowed, 30 denied. A run that crosses a minute boundary gets a
    // second window per key (the accuracy bound then says 10 per key), so
    // it is run again.
    let mut crossed = 0;
    let summary = loop {
        let summary = bench::bench(&args(&[
            "grpc",
            &addr,
            "--concurrency",
            "4",
            "--max-requests",
            "40",
            "--keys",
            "2",
            "--policy",
            "fixed_window 5/1m",
        ]))
        .await
        .expect("runs");
        let accuracy = summary.accuracy.clone().expect("policy given");
        assert!(accuracy.ok(), "{accuracy:?}");
        if accuracy.allowance_per_key == 5 || crossed == 2 {
            break summary;
        }
        crossed += 1;
    };
    assert_eq!(summary.requests, 40);
    assert_eq!(
        (summary.allowed, summary.denied, summary.errors),
        (10, 30, 0),
        "{:?}",
        summary.error_samples
    );
    let accuracy = summary.accuracy.clone().expect("policy given");
    assert_eq!((accuracy.keys, accuracy.max_admitted_per_key), (2, 5));
    assert!(summary.target.starts_with("grpc http://127.0.0.1:"));
    assert!(summary.text().contains("OK: no key over-admitted"));

    // Another descriptor key, the open model, and hits_addend = cost: a
    // sliding log of 3 per minute admits one request of cost 2 per key.
    let summary = bench::bench(&args(&[
        "grpc",
        &format!("http://{addr}"),
        "--descriptor-key",
        "user",
        "--rate",
        "100",
        "--duration",
        "300ms",
        "--keys",
        "3",
        "--cost",
        "2",
        "--policy",
        "sliding_log 3/1m",
    ]))
    .await
    .expect("runs");
    assert_eq!(summary.requests, 30);
    assert_eq!(
        (summary.allowed, summary.denied, summary.errors),
        (3, 27, 0)
    );
    let accuracy = summary.accuracy.expect("policy given");
    assert_eq!(accuracy.max_admitted_per_key, 2);
    assert!(accuracy.ok());

    // A domain the server does not know limits nothing (Envoy's rule):
    // everything is allowed, which the accuracy check flags.
    let summary = bench::bench(&args(&[
        "grpc",
        &addr,
        "--domain",
        "elsewhere",
        "--concurrency",
        "2",
        "--max-requests",
        "10",
        "--policy",
        "sliding_log 5/1m",
        "--key-prefix",
        "k",
    ]))
    .await
    .expect("runs");
    assert_eq!((summary.allowed, summary.denied), (10, 0));
    let accuracy = summary.accuracy.expect("policy given");
    assert_eq!(accuracy.over_admitted.get("k0"), Some(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_failures_are_errors() {
    three_requests_to_nothing_are_three_errors("grpc", |port| format!("127.0.0.1:{port}")).await;

    // An empty domain (the server would reject every request) and TLS are
    // refused before the run.
    let refused = bench::bench(&args(&[
        "grpc",
        "127.0.0.1:1",
        "--domain",
        "",
        "--max-requests",
        "1",
    ]))
    .await;
    assert!(matches!(refused, Err(BenchError::Args(_))), "{refused:?}");
    let refused = bench::bench(&args(&[
        "grpc",
        "https://127.0.0.1:1",
        "--max-requests",
        "1",
    ]))
    .await;
    assert!(matches!(refused, Err(BenchError::Args(_))), "{refused:?}");
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
    let refused = bench::bench(&args(&["grpc", "192.0.2.1:8081", "--max-requests", "1"])).await;
    assert!(matches!(refused, Err(BenchError::Remote(_))), "{refused:?}");
}

/// `--connections` is a number of connections to one Redis server: out of
/// range it is refused by the parser, and with the memory store or a
/// Cluster (none, one per node) before the run.
#[tokio::test]
async fn connections_are_refused_where_they_mean_nothing() {
    for n in ["0", "65", "-1", "many"] {
        let argv = ["bench", "direct", "--connections", n];
        assert!(Cli::try_parse_from(argv).is_err(), "--connections {n}");
    }
    for store in ["memory", "redis-cluster://127.0.0.1:1,127.0.0.1:2"] {
        let refused = bench::bench(&args(&[
            "direct",
            "--store",
            store,
            "--connections",
            "2",
            "--max-requests",
            "1",
        ]))
        .await;
        assert!(
            matches!(refused, Err(BenchError::Args(_))),
            "{store}: {refused:?}"
        );
    }
}
