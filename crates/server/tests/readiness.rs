//! Readiness comes back by itself: with the circuit breaker open after
//! Redis went away, `/readyz` and gRPC health turn ready within 2 s of
//! Redis returning, with no client traffic at all (a Kubernetes readiness
//! probe that hides the pod also hides the traffic that would have probed
//! the store).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use common::{Backend, TestServer};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn grpc_serving(health: &mut HealthClient<Channel>) -> bool {
    health
        .check(HealthCheckRequest {
            service: tollgate_server::grpc::SERVICE_NAME.to_owned(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_recovers_without_traffic_once_redis_is_back() {
    let backend = Backend::redis();
    let Backend::Redis(redis) = &backend else {
        unreachable!()
    };
    let text = format!(
        "store:\n  kind: redis\n  url: {}\n  timeout: 50ms\npolicies:\n  - name: api\n    limit: 100\n    period: 1m\n",
        redis.url()
    );
    let mut server = TestServer::start_text(backend, &text).await;
    let channel = server.grpc_channel().await;
    let mut health = HealthClient::new(channel);
    assert_eq!(server.get_text("/readyz").await.0, 200);
    assert!(grpc_serving(&mut health).await);

    // Redis goes away; traffic opens the breaker, then stops.
    let Backend::Redis(redis) = &mut server.backend else {
        unreachable!()
    };
    redis.kill();
    for _ in 0..10 {
        let (status, body) = server
            .post_json("/v1/check", r#"{"policy": "api", "key": "k"}"#)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_ne!(
        server.app.store().breaker_state(),
        tollgate::resilience::BreakerState::Closed
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.get_text("/readyz").await.0 == 200 || grpc_serving(&mut health).await {
        assert!(Instant::now() < deadline, "never reported unready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A while with the store down and no traffic.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let decisions = server.app.store().stats().degraded;

    let Backend::Redis(redis) = &mut server.backend else {
        unreachable!()
    };
    tokio::task::block_in_place(|| redis.restart());
    let back = Instant::now();
    let (mut readyz, mut grpc) = (None, None);
    while (readyz.is_none() || grpc.is_none()) && back.elapsed() < Duration::from_secs(10) {
        if readyz.is_none() && server.get_text("/readyz").await.0 == 200 {
            readyz = Some(back.elapsed());
        }
        if grpc.is_none() && grpc_serving(&mut health).await {
            grpc = Some(back.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limit = Duration::from_secs(2);
    assert!(
        readyz.is_some_and(|t| t <= limit) && grpc.is_some_and(|t| t <= limit),
        "ready after Redis returned: /readyz {readyz:?}, gRPC health {grpc:?}"
    );
    assert_eq!(
        server.app.store().stats().degraded,
        decisions,
        "no decision was made meanwhile"
    );
    server.stop().await.unwrap();
}

/// A hung Redis (`SIGSTOP`: it accepts connections and never answers)
/// makes readiness, `/healthcheck`, gRPC health and the admin API's
/// override writes fail within their bound
/// (`tollgate_server::store::DIRECT_CALL_BOUND`), rather than hold their
/// requests, and the connections those hold, for as long as Redis hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_fails_readiness_and_admin_calls_within_their_bound() {
    let redis = tollgate_testkit::redis::RedisServer::start();
    let text = format!(
        "server:\n  admin_token: s3cret\nstore:\n  kind: redis\n  url: {}\n  timeout: 50ms\npolicies:\n  - name: api\n    limit: 100\n    period: 1m\n",
        redis.url()
    );
    let server = TestServer::start_text(Backend::RedisFromConfig(redis), &text).await;
    let channel = server.grpc_channel().await;
    let mut health = HealthClient::new(channel);
    assert_eq!(server.get_text("/readyz").await.0, 200);
    assert!(grpc_serving(&mut health).await);
    let Backend::RedisFromConfig(redis) = &server.backend else {
        unreachable!()
    };
    redis.stop_signal();
    let bound = tollgate_server::store::DIRECT_CALL_BOUND + Duration::from_secs(2);
    let (status, body) = tokio::time::timeout(bound, server.get_text("/readyz"))
        .await
        .expect("/readyz answers while Redis hangs");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("timed out"), "{body}");
    let (status, body) = tokio::time::timeout(bound, server.get_text("/healthcheck"))
        .await
        .expect("/healthcheck answers while Redis hangs");
    assert_eq!(status, 500, "{body}");
    let put = server
        .reqwest
        .put(server.url("/v1/overrides/api/vip"))
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json")
        .body(r#"{"limit": 5}"#)
        .send();
    let response = tokio::time::timeout(bound, put)
        .await
        .expect("an override write answers while Redis hangs")
        .unwrap();
    assert_eq!(response.status(), 503);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("may have been applied"),
        "{problem}"
    );
    // gRPC health is re-checked every 5 s; the check itself is bounded.
    let deadline = Instant::now() + Duration::from_secs(5) + 2 * bound;
    while grpc_serving(&mut health).await {
        assert!(Instant::now() < deadline, "gRPC health still SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.cont_signal();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.get_text("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy to `upstream` that, once `dark` is set, cuts the
/// connections it carries and holds every new one without a byte either
/// way: a Redis host that has vanished from the network.
async fn proxy(listener: tokio::net::TcpListener, upstream: u16, dark: Arc<AtomicBool>) {
    let (cut, _) = tokio::sync::broadcast::channel::<()>(1);
    let cut = Arc::new(cut);
    let watch = (Arc::clone(&dark), Arc::clone(&cut));
    tokio::spawn(async move {
        while !watch.0.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = watch.1.send(());
    });
    loop {
        let (mut client, _) = listener.accept().await.unwrap();
        if dark.load(Ordering::Relaxed) {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            continue;
        }
        let mut cut = cut.subscribe();
        tokio::spawn(async move {
            let mut server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                .await
                .unwrap();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.recv() => {}
            }
        });
    }
}

/// Readiness explains a failure with `PING`s, one per connection at worst
/// (each may meet a connection Redis closed). When every reconnection
/// hangs, each `PING` waits for one; together they take at most
/// `DIRECT_CALL_BOUND`, however many connections there are (before, 16
/// connections took 8 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explaining_a_failure_takes_one_bound_however_many_connections() {
    use tollgate::{Check, Mode, PolicyRef, Store, StoreError};
    use tollgate_server::store::{DIRECT_CALL_BOUND, ServerStore};
    let redis = tollgate_testkit::redis::RedisServer::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dark = Arc::new(AtomicBool::new(false));
    tokio::spawn(proxy(listener, redis.port(), Arc::clone(&dark)));
    let text = format!(
        "store:\n  kind: redis\n  url: redis://127.0.0.1:{port}\n  connections: 16\n  timeout: 50ms\n"
    );
    let config = tollgate_server::config::Config::parse(&text, "t.yaml").unwrap();
    let store = ServerStore::connect(&config.store).await.unwrap();
    let policy: tollgate::Policy = "fixed_window 1/1s".parse().unwrap();
    let refs = [PolicyRef {
        name: "probe",
        policy: &policy,
    }];
    let peek = || store.apply(Check::new(b"probe", &refs, 1, Mode::Peek));
    peek().await.unwrap();
    dark.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let error = peek()
            .await
            .err()
            .unwrap_or(StoreError::Unavailable("?".into()));
        let started = Instant::now();
        let why = store.explain(&error).await;
        let took = started.elapsed();
        assert!(
            took <= DIRECT_CALL_BOUND + Duration::from_millis(500),
            "explaining took {took:?}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}
