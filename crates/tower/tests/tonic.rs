//! The layer in front of a real tonic gRPC server (`grpc.health.v1.Health`),
//! called by a real tonic client: tonic accepts the layered service as it
//! is, and a client sees what the layer answers.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use support::{START_US, limiter};
use tokio::net::TcpListener;
use tollgate::ManualClock;
use tollgate_tower::key::HeaderKey;
use tollgate_tower::{RateLimitLayer, ResponseFormat};
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Serves `grpc.health.v1.Health` behind `layer` on 127.0.0.1:0 until the
/// test's runtime ends.
async fn serve(layer: RateLimitLayer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    address
}

async fn client(address: SocketAddr) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
}

/// `Health/Check` of the whole server, charged to `api_key`.
async fn check(
    client: &mut HealthClient<Channel>,
    api_key: &str,
) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-api-key", api_key.parse().expect("metadata value"));
    client.check(request).await
}

/// A `fixed_window 3/1m` layer keyed by the `x-api-key` metadata.
fn layer(clock: &ManualClock, format: ResponseFormat) -> RateLimitLayer {
    RateLimitLayer::builder(limiter(clock, &[("api", "fixed_window 3/1m")]))
        .policy("api")
        .key(HeaderKey::new(HeaderName::from_static("x-api-key")))
        .response_format(format)
        .build()
        .expect("layer")
}

#[tokio::test]
async fn limits_a_tonic_server() {
    let clock = ManualClock::new(START_US);
    let address = serve(layer(&clock, ResponseFormat::Json)).await;
    let mut client = client(address).await;

    for remaining in [2, 1, 0] {
        let response = check(&mut client, "k1").await.expect("allowed");
        assert_eq!(response.get_ref().status(), ServingStatus::Serving);
        let metadata = response.metadata();
        assert_eq!(
            metadata.get("ratelimit-policy").expect("policy"),
            r#""api";q=3;w=60"#
        );
        assert_eq!(
            metadata.get("ratelimit").expect("ratelimit"),
            format!(r#""api";r={remaining};t=60"#).as_str()
        );
    }

    // The default 429 is HTTP, not gRPC: no `grpc-status`, a JSON body.
    // tonic reads that body as a gRPC frame, whose first byte (`{`, 123) is
    // no valid compression flag, so the client sees `Internal` with a
    // message naming the HTTP status; the header fields arrive as metadata.
    // (tonic would infer `Unavailable` from the 429 only for an empty body.)
    for _ in 0..2 {
        let status = check(&mut client, "k1").await.expect_err("denied");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(status.message().contains("429"), "{status:?}");
        assert_eq!(
            status.metadata().get("retry-after").expect("retry-after"),
            "60"
        );
        assert_eq!(
            status.metadata().get("ratelimit").expect("ratelimit"),
            r#""api";r=0;t=60"#
        );
    }

    // Another key has its own budget; the window's end refills the first.
    check(&mut client, "k2").await.expect("other key allowed");
    clock.advance(std::time::Duration::from_secs(60));
    check(&mut client, "k1")
        .await
        .expect("allowed in the next window");
}

#[tokio::test]
async fn a_custom_format_answers_resource_exhausted() {
    // A trailers-only gRPC response: HTTP 200, `grpc-status: 8`. The layer
    // still adds `Retry-After` and the rate limit fields.
    let grpc = ResponseFormat::custom(|denial| {
        let mut response = http::Response::new(Bytes::new());
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        let message = format!("rate limited by policy {}", denial.policy);
        headers.insert("grpc-message", message.parse().expect("grpc-message"));
        response
    });
    let clock = ManualClock::new(START_US);
    let address = serve(layer(&clock, grpc)).await;
    let mut client = client(address).await;

    for _ in 0..3 {
        check(&mut client, "k1").await.expect("allowed");
    }
    let status = check(&mut client, "k1").await.expect_err("denied");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "rate limited by policy api");
    assert_eq!(
        status.metadata().get("retry-after").expect("retry-after"),
        "60"
    );
    assert_eq!(
        status.metadata().get("ratelimit").expect("ratelimit"),
        r#""api";r=0;t=60"#
    );
}

#[tokio::test]
async fn an_empty_429_is_unavailable() {
    // A bodiless 429: tonic infers the gRPC status from the HTTP status.
    let empty = ResponseFormat::custom(|_denial| {
        let mut response = http::Response::new(Bytes::new());
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response
    });
    let clock = ManualClock::new(START_US);
    let address = serve(layer(&clock, empty)).await;
    let mut client = client(address).await;

    for _ in 0..3 {
        check(&mut client, "k1").await.expect("allowed");
    }
    let status = check(&mut client, "k1").await.expect_err("denied");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.metadata().get("retry-after").expect("retry-after"),
        "60"
    );
}
