//! Each adapter has its own key space (issue 12, item 5): whatever a client
//! sends through one adapter (the HTTP JSON API, Envoy gRPC) never reaches a
//! counter another adapter charges, on the memory store and on a real
//! Redis. docs/SERVER.md, "Key spaces".

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
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
        .client
        .post(server.url("/v1/reset"))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body(serde_json::json!({ "policy": "login", "key": key }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

/// The reproduction: the HTTP key `4:edge4:path6:/login` with the
/// policy `login` was, byte for byte, the Envoy descriptor `path=/login` of
/// the domain `edge`, whose limit is that same named policy.
async fn http_cannot_reach_envoy_counters(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut grpc = RateLimitServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
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
