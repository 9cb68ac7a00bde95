//! The layer in front of a real tonic gRPC server (`grpc.health.v1.Health`),
//! called by a real tonic client: tonic accepts the layered service as it
//! is, and a client sees what the layer answers: gRPC status codes, with
//! the rate limit fields as metadata. Last, gRPC-Web over HTTP/1.1.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use support::{START_US, limiter};
use tollgate::{Limiter, ManualClock, MemoryStore, Store};
use tollgate_testkit::serve::loopback;
use tollgate_tower::key::HeaderKey;
use tollgate_tower::{MissingKey, RateLimitLayer, ResponseFormat, StoreFailure};
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Serves `grpc.health.v1.Health` behind `layer` on 127.0.0.1:0 until the
/// test's runtime ends.
async fn serve<S: Store>(layer: RateLimitLayer<S>) -> SocketAddr {
    let (listener, address) = loopback().await;
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

/// `Health/Check` of the whole server, charged to `api_key` (none: no
/// `x-api-key` metadata).
async fn check(
    client: &mut HealthClient<Channel>,
    api_key: Option<&str>,
) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(api_key) = api_key {
        request
            .metadata_mut()
            .insert("x-api-key", api_key.parse().expect("metadata value"));
    }
    client.check(request).await
}

/// A layer over `limiter`'s `api` policy keyed by the `x-api-key` metadata.
fn keyed<S: Store>(limiter: Limiter<S>) -> tollgate_tower::RateLimitLayerBuilder<S> {
    RateLimitLayer::builder(limiter)
        .policy("api")
        .key(HeaderKey::new(HeaderName::from_static("x-api-key")))
}

/// A `fixed_window 3/1m` layer keyed by the `x-api-key` metadata.
fn layer(clock: &ManualClock, format: ResponseFormat) -> RateLimitLayer {
    keyed(limiter(clock, &[("api", "fixed_window 3/1m")]))
        .response_format(format)
        .build()
        .expect("layer")
}

/// The metadata value `name` of a refusal, as text.
fn metadata<'s>(status: &'s tonic::Status, name: &str) -> Option<&'s str> {
    let value = status.metadata().get(name)?;
    Some(value.to_str().expect("ASCII metadata"))
}

/// What the built-in formats answer a call that policy `api` denies for
/// 60 s: `RESOURCE_EXHAUSTED`, the policy and the wait in the message and
/// in the metadata.
fn assert_denied_for_60_s(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        r#"rate limit of policy "api" exceeded; retry in 60000 ms"#
    );
    assert_eq!(metadata(status, "retry-after"), Some("60"));
    assert_eq!(metadata(status, "grpc-retry-pushback-ms"), Some("60000"));
}

#[tokio::test]
async fn limits_a_tonic_server_with_resource_exhausted() {
    // Both built-in formats answer a gRPC call in gRPC's terms: a JSON body
    // would reach a tonic client as `Internal`.
    for format in [ResponseFormat::Json, ResponseFormat::ProblemJson] {
        let clock = ManualClock::new(START_US);
        let address = serve(layer(&clock, format)).await;
        let mut client = client(address).await;

        for remaining in [2, 1, 0] {
            let response = check(&mut client, Some("k1")).await.expect("allowed");
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

        // A Trailers-Only response with `grpc-status: 8`; every header
        // field, `retry-after` included, arrives as metadata.
        for _ in 0..2 {
            let status = check(&mut client, Some("k1")).await.expect_err("denied");
            assert_denied_for_60_s(&status);
            assert_eq!(
                metadata(&status, "ratelimit-policy"),
                Some(r#""api";q=3;w=60"#)
            );
            assert_eq!(metadata(&status, "ratelimit"), Some(r#""api";r=0;t=60"#));
        }

        // Another key has its own budget; the window's end refills the first.
        check(&mut client, Some("k2"))
            .await
            .expect("other key allowed");
        clock.advance(std::time::Duration::from_secs(60));
        check(&mut client, Some("k1"))
            .await
            .expect("allowed in the next window");
    }
}

#[tokio::test]
async fn a_missing_or_too_long_key_is_invalid_argument() {
    let limiter = Limiter::builder(MemoryStore::new())
        .policy("api", "10/s".parse().expect("policy"))
        .max_key_len(16)
        .build();
    let address = serve(keyed(limiter).build().expect("layer")).await;
    let mut client = client(address).await;

    check(&mut client, Some("k1")).await.expect("allowed");
    let status = check(&mut client, None).await.expect_err("no key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "the request does not carry what it is rate limited by"
    );
    assert_eq!(metadata(&status, "ratelimit"), None);

    // `header:` and 10 characters are more than 16 bytes.
    let status = check(&mut client, Some("0123456789"))
        .await
        .expect_err("key too long");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "the request's rate limiting key is too long"
    );
}

#[tokio::test]
async fn a_missing_credential_is_unauthenticated() {
    let clock = ManualClock::new(START_US);
    let layer = keyed(limiter(&clock, &[("api", "10/s")]))
        .on_missing_key(MissingKey::Unauthorized(Some(HeaderValue::from_static(
            "Bearer",
        ))))
        .build()
        .expect("layer");
    let mut client = client(serve(layer).await).await;

    let status = check(&mut client, None).await.expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(metadata(&status, "www-authenticate"), Some("Bearer"));
}

/// A bare `RedisStore` (no `Resilient`) on a real `redis-server`, killed
/// mid-test: the layer's `StoreFailure::Deny` is `UNAVAILABLE`, gRPC's code
/// for "retry with a backoff".
#[tokio::test]
async fn a_store_failure_is_unavailable() {
    use tollgate_redis::{RedisOptions, RedisStore};

    let mut redis = tollgate_testkit::redis::RedisServer::start();
    let store = RedisStore::connect(&redis.url(), RedisOptions::default())
        .await
        .expect("connect");
    let limiter = Limiter::builder(store)
        .policy("api", "fixed_window 10/1m".parse().expect("policy"))
        .build();
    let layer = keyed(limiter)
        .on_store_failure(StoreFailure::Deny)
        .build()
        .expect("layer");
    let mut client = client(serve(layer).await).await;

    check(&mut client, Some("k1"))
        .await
        .expect("allowed while Redis is up");
    redis.kill();
    let status = check(&mut client, Some("k1"))
        .await
        .expect_err("denied while Redis is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "the rate limiter cannot decide right now");
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
        check(&mut client, Some("k1")).await.expect("allowed");
    }
    let status = check(&mut client, Some("k1")).await.expect_err("denied");
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
    // The function writes denials only: the layer's other refusals are
    // still gRPC's.
    let status = check(&mut client, None).await.expect_err("no key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn a_custom_format_can_keep_the_grpc_default() {
    // Its own body for HTTP clients, the built-in answer for gRPC calls.
    let mixed = ResponseFormat::custom(|denial| {
        if denial.is_grpc() {
            return denial.grpc_response();
        }
        let mut response = http::Response::new(Bytes::from_static(b"slow down"));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response
    });
    let clock = ManualClock::new(START_US);
    let mut client = client(serve(layer(&clock, mixed)).await).await;

    for _ in 0..3 {
        check(&mut client, Some("k1")).await.expect("allowed");
    }
    let status = check(&mut client, Some("k1")).await.expect_err("denied");
    assert_denied_for_60_s(&status);
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
        check(&mut client, Some("k1")).await.expect("allowed");
    }
    let status = check(&mut client, Some("k1")).await.expect_err("denied");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.metadata().get("retry-after").expect("retry-after"),
        "60"
    );
}

/// gRPC-Web (HTTP/1.1, no trailers frame needed for Trailers-Only): the
/// refusal is in the headers, the body is empty with `content-length: 0`,
/// and a plain HTTP request to the same server still gets the JSON 429.
#[tokio::test]
async fn grpc_web_calls_get_trailers_only_refusals_over_http1() {
    use axum::routing::post;
    use tollgate_testkit::http::Reply;
    use tollgate_testkit::serve::Served;

    let clock = ManualClock::new(START_US);
    let limited = keyed(limiter(&clock, &[("api", "fixed_window 1/1m")]))
        .build()
        .expect("layer");
    let app = axum::Router::new().route("/", post(|| async { "hello" }).layer(limited));
    let server = Served::router(app).await;
    let send = |content_type: &'static str| {
        let request = server
            .reqwest
            .post(server.url("/"))
            .header("x-api-key", "k1")
            .header("content-type", content_type);
        async move { Reply::of(request.send().await.expect("response")).await }
    };

    assert_eq!(send("application/grpc-web+proto").await.status, 200);
    for (content_type, answered) in [
        ("application/grpc-web+proto", "application/grpc-web"),
        ("application/grpc-web-text", "application/grpc-web-text"),
    ] {
        let denied = send(content_type).await;
        assert_eq!(denied.status, 200, "{content_type}");
        assert_eq!(denied.header("content-type").as_deref(), Some(answered));
        assert_eq!(denied.header("content-length").as_deref(), Some("0"));
        assert_eq!(denied.body, "");
        assert_eq!(denied.header("grpc-status").as_deref(), Some("8"));
        assert_eq!(
            denied.header("grpc-message").as_deref(),
            Some(r#"rate limit of policy "api" exceeded; retry in 60000 ms"#)
        );
        assert_eq!(denied.header("retry-after").as_deref(), Some("60"));
        assert_eq!(
            denied.header("ratelimit").as_deref(),
            Some(r#""api";r=0;t=60"#)
        );
    }
    let plain = send("application/json").await;
    assert_eq!(plain.status, 429);
    assert_eq!(plain.header("grpc-status"), None);
    assert_eq!(
        plain.body,
        r#"{"error":"rate_limited","policy":"api","retry_after_ms":60000}"#
    );
}

/// Every gRPC call is a `POST`. A `GET` carrying a gRPC `content-type`
/// (which any client can send) is a plain HTTP request: refused with the
/// 429, never with a Trailers-Only `200 OK` and an empty body, which a
/// shared cache in front could store and serve for that URL to everybody.
#[tokio::test]
async fn a_get_with_a_grpc_content_type_is_refused_as_http() {
    use axum::routing::get;
    use tollgate_testkit::http::Reply;
    use tollgate_testkit::serve::Served;

    let clock = ManualClock::new(START_US);
    let limited = keyed(limiter(&clock, &[("api", "fixed_window 1/1m")]))
        .build()
        .expect("layer");
    let app = axum::Router::new().route("/app.js", get(|| async { "js" }).layer(limited));
    let server = Served::router(app).await;
    let send = |content_type: &'static str| {
        let request = server
            .reqwest
            .get(server.url("/app.js"))
            .header("x-api-key", "k1")
            .header("content-type", content_type);
        async move { Reply::of(request.send().await.expect("response")).await }
    };

    assert_eq!(send("application/grpc").await.status, 200);
    for content_type in [
        "application/grpc",
        "application/grpc-web+proto",
        "application/grpc-web-text",
    ] {
        let denied = send(content_type).await;
        assert_eq!(denied.status, 429, "{content_type}");
        assert_eq!(denied.header("grpc-status"), None, "{content_type}");
        assert_eq!(
            denied.body,
            r#"{"error":"rate_limited","policy":"api","retry_after_ms":60000}"#
        );
    }
}
