//! Each adapter has its own key space (issue 12, item 5): whatever a client
//! sends through one adapter (the HTTP JSON API, Envoy gRPC, the tower
//! middleware) never reaches a counter another adapter charges, on the
//! memory store and on a real Redis. docs/SERVER.md, "Key spaces".

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use common::{Backend, TestServer};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use http::request::Parts;
use tokio::net::TcpListener;
use tollgate::Limiter;
use tollgate_tower::RateLimitLayer;
use tollgate_tower::key::{Key, KeyError, KeyExtractor, PeerIp, key_fn};
use tonic::transport::Channel;

/// What remains of the Envoy descriptor `path=/login` in the domain `edge`
/// (the named policy `login`: token bucket, burst 10) after one more hit.
async fn envoy_login(client: &mut RateLimitServiceClient<Channel>) -> u32 {
    let response = client
        .should_rate_limit(RateLimitRequest {
            domain: "edge".to_owned(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "path".to_owned(),
                    value: "/login".to_owned(),
                }],
                limit: None,
                hits_addend: None,
            }],
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let status = &response.statuses[0];
    assert_eq!(status.code, Code::Ok as i32, "{response:?}");
    assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 5);
    status.limit_remaining
}

/// `/v1/check` of `login` for `key`: what remains.
async fn http_login(server: &TestServer, key: &str) -> u64 {
    let body = serde_json::json!({ "policy": "login", "key": key }).to_string();
    let (status, body) = server.post_json("/v1/check", &body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["allowed"], true, "{body}");
    body["remaining"].as_u64().unwrap()
}

/// `/v1/reset` of `login` for `key`.
async fn http_reset(server: &TestServer, key: &str) {
    let response = server
        .reset(
            &serde_json::json!({ "policy": "login", "key": key }).to_string(),
            "s3cret",
        )
        .await;
    assert_eq!(response.status(), 204);
}

/// The reproduction: the HTTP key `4:edge4:path6:/login` with the
/// policy `login` was, byte for byte, the Envoy descriptor `path=/login` of
/// the domain `edge`, whose limit is that same named policy.
async fn http_cannot_reach_envoy_counters(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut grpc = server.rls_client().await;
    assert_eq!(envoy_login(&mut grpc).await, 9);

    // Four HTTP checks spend the HTTP client's own budget...
    let spelled = "4:edge4:path6:/login";
    for expected in [9, 8, 7, 6] {
        assert_eq!(http_login(&server, spelled).await, expected);
    }
    // ...and none of the gRPC client's.
    assert_eq!(
        envoy_login(&mut grpc).await,
        8,
        "four HTTP checks drained the gRPC client's budget"
    );

    // An HTTP reset returns the HTTP key to fresh, and only that.
    http_reset(&server, spelled).await;
    assert_eq!(
        envoy_login(&mut grpc).await,
        7,
        "an HTTP reset restored the gRPC client's budget"
    );
    assert_eq!(http_login(&server, spelled).await, 9);

    // Nor can an HTTP client name the policies only Envoy requests use:
    // the per-request override and inline descriptor limits.
    for policy in ["envoy/override", "envoy/edge/remote_address"] {
        let body = serde_json::json!({ "policy": policy, "key": spelled }).to_string();
        let (status, body) = server.post_json("/v1/check", &body).await;
        assert_eq!(status, 404, "{policy}: {body}");
    }
}

#[tokio::test]
async fn http_cannot_reach_envoy_counters_on_memory() {
    http_cannot_reach_envoy_counters(Backend::memory()).await;
}

#[tokio::test]
async fn http_cannot_reach_envoy_counters_on_redis() {
    http_cannot_reach_envoy_counters(Backend::redis()).await;
}

/// Tower layers whose limiter shares the server's store (the same memory
/// store, or the same Redis under the same prefix), charging `login`: on
/// `/ip` to the peer IP (`ip:127.0.0.1`, which an HTTP client can send as
/// its key too), on `/raw` to a header's value as the client sent it (a
/// `key_fn`), with which a client can spell any key at all.
async fn middleware_and_server_keep_apart(backend: Backend) {
    let server = TestServer::start(backend).await;
    let store = server.app.store().get_ref().clone();
    let login = server.app.current().config.policies["login"];
    let limiter = Limiter::builder(store).policy("login", login).build();
    let layer = |key: Box<dyn KeyExtractor>| {
        RateLimitLayer::builder(limiter.clone())
            .policy("login")
            .key(key)
            .build()
            .unwrap()
    };
    let raw = key_fn(|request: &Parts| {
        let value = request.headers.get("x-key");
        let value = value.ok_or(KeyError::Missing("x-key".into()))?;
        Ok(Key::from(value.as_bytes()))
    });
    let app = Router::new()
        .route(
            "/ip",
            get(|| async { "ok" }).route_layer(layer(Box::new(PeerIp::new()))),
        )
        .route(
            "/raw",
            get(|| async { "ok" }).route_layer(layer(Box::new(raw))),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let through_middleware = |path: &'static str, key: &'static str| {
        let request = server.reqwest.get(format!("http://{address}{path}"));
        async move {
            let response = request.header("x-key", key).send().await.unwrap();
            assert_eq!(response.status(), 200);
            // `"login";r=<remaining>;t=<seconds>`: what remains.
            let field = response.headers()["ratelimit"].to_str().unwrap();
            let remaining = field.split(';').find_map(|p| p.strip_prefix("r="));
            remaining.unwrap().parse::<u64>().unwrap()
        }
    };

    // The peer IP: neither spent nor reset through the HTTP API.
    for remaining in [9, 8, 7, 6] {
        assert_eq!(through_middleware("/ip", "").await, remaining);
    }
    let spelled = "ip:127.0.0.1";
    assert_eq!(
        http_login(&server, spelled).await,
        9,
        "the middleware's checks drained the HTTP client's budget"
    );
    http_reset(&server, spelled).await;
    assert_eq!(
        through_middleware("/ip", "").await,
        5,
        "an HTTP reset restored the middleware's budget"
    );

    // A raw key spelling what the HTTP API charges for `user-1`, then what
    // the Envoy service charges for `path=/login` in `edge`.
    for spelled in ["http:user-1", "envoy:4:edge4:path6:/login"] {
        for remaining in [9, 8, 7, 6] {
            assert_eq!(through_middleware("/raw", spelled).await, remaining);
        }
    }
    assert_eq!(
        http_login(&server, "user-1").await,
        9,
        "a middleware key drained the HTTP client's budget"
    );
    let mut grpc = server.rls_client().await;
    assert_eq!(
        envoy_login(&mut grpc).await,
        9,
        "a middleware key drained the gRPC client's budget"
    );
}

#[tokio::test]
async fn middleware_and_server_keep_apart_on_memory() {
    middleware_and_server_keep_apart(Backend::memory()).await;
}

#[tokio::test]
async fn middleware_and_server_keep_apart_on_redis() {
    middleware_and_server_keep_apart(Backend::redis()).await;
}
