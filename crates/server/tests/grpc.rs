//! Envoy RLS v3 end to end: a tonic client built from the same envoy-types
//! sends Envoy-style descriptors to a server over a real socket.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer, descriptor};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

/// A descriptor carrying Envoy's per-request `limit` override.
fn overridden(entries: &[(&str, &str)], requests_per_unit: u32, unit: i32) -> RateLimitDescriptor {
    RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit,
            unit,
        }),
        ..descriptor(entries, None)
    }
}

struct Client(RateLimitServiceClient<Channel>);

impl Client {
    async fn connect(server: &TestServer) -> Client {
        Client(server.rls_client().await)
    }

    async fn ask(
        &mut self,
        domain: &str,
        descriptors: Vec<RateLimitDescriptor>,
        hits_addend: u32,
    ) -> RateLimitResponse {
        self.0
            .should_rate_limit(RateLimitRequest {
                domain: domain.to_owned(),
                descriptors,
                hits_addend,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn one(&mut self, entries: &[(&str, &str)]) -> DescriptorStatus {
        self.status(descriptor(entries, None)).await
    }

    /// The status of one descriptor in the `edge` domain.
    async fn status(&mut self, descriptor: RateLimitDescriptor) -> DescriptorStatus {
        let response = self.ask("edge", vec![descriptor], 0).await;
        response.statuses[0].clone()
    }

    /// The gRPC error of a request the server must reject.
    async fn rejected(
        &mut self,
        domain: &str,
        descriptors: Vec<RateLimitDescriptor>,
    ) -> tonic::Status {
        self.0
            .should_rate_limit(RateLimitRequest {
                domain: domain.to_owned(),
                descriptors,
                hits_addend: 0,
            })
            .await
            .unwrap_err()
    }
}

/// `response_headers_to_add` as `(name, value)` pairs.
fn headers(response: &RateLimitResponse) -> Vec<(&str, &str)> {
    response
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect()
}

/// Fails unless every line is in the `/metrics` text.
fn assert_metrics(metrics: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            metrics.contains(&format!("{line}\n")),
            "missing `{line}` in\n{metrics}"
        );
    }
}

/// `(requests_per_unit, unit)` of a status's `current_limit`.
fn current(status: &DescriptorStatus) -> Option<(u32, i32)> {
    status
        .current_limit
        .as_ref()
        .map(|l| (l.requests_per_unit, l.unit))
}

fn ok(status: &DescriptorStatus) -> bool {
    status.code == Code::Ok as i32
}

async fn envoy_semantics(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = Client::connect(&server).await;

    // An inline limit with a wildcard key: 10 per second per address.
    // Spend 10 at once, then one more in the same window is over the limit
    // (retried if the second boundary fell between the two calls).
    let mut over = false;
    for attempt in 0..5 {
        let address = format!("10.0.0.{attempt}");
        let first = client
            .ask(
                "edge",
                vec![descriptor(&[("remote_address", &address)], None)],
                10,
            )
            .await;
        let status = &first.statuses[0];
        assert!(ok(status));
        assert_eq!(status.limit_remaining, 0);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (10, Unit::Second as i32)
        );
        let reset = status.duration_until_reset.unwrap();
        assert!(
            reset.seconds == 0 || (reset.seconds == 1 && reset.nanos == 0),
            "{reset:?}"
        );
        let second = client.one(&[("remote_address", &address)]).await;
        if !ok(&second) {
            over = true;
            // Another address has its own counter.
            assert!(ok(&client.one(&[("remote_address", "192.0.2.1")]).await));
            break;
        }
    }
    assert!(over, "never over the limit");

    // A descriptor referencing a named policy (token_bucket 5/1m burst 10).
    let status = client.one(&[("path", "/login")]).await;
    assert!(ok(&status));
    assert_eq!(status.limit_remaining, 9);
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (5, Unit::Minute as i32)
    );

    // unlimited; requests_per_unit 0; unmatched; unknown domain.
    let status = client.one(&[("path", "/free")]).await;
    assert!(ok(&status) && status.current_limit.is_none());
    assert_eq!(status.limit_remaining, u32::MAX);
    let status = client.one(&[("path", "/closed")]).await;
    assert_eq!(status.code, Code::OverLimit as i32);
    let status = client.one(&[("path", "/elsewhere")]).await;
    assert!(ok(&status) && status.current_limit.is_none());
    let response = client
        .ask(
            "no-such-domain",
            vec![descriptor(&[("path", "/login")], None)],
            0,
        )
        .await;
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert!(response.statuses[0].current_limit.is_none());

    // Nested descriptors, hits_addend per descriptor: set wins, 0 peeks.
    let user = [("user", "alice"), ("tier", "gold")];
    let response = client
        .ask("edge", vec![descriptor(&user, Some(0))], 7)
        .await;
    assert_eq!(
        response.statuses[0].limit_remaining, 2,
        "a peek charges nothing"
    );
    let response = client
        .ask("edge", vec![descriptor(&user, Some(2))], 7)
        .await;
    assert!(ok(&response.statuses[0]));
    assert_eq!(response.statuses[0].limit_remaining, 0);
    assert_eq!(
        response.statuses[0].current_limit.as_ref().unwrap().name,
        "per_user"
    );
    let response = client.ask("edge", vec![descriptor(&user, None)], 0).await;
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    assert_eq!(response.statuses[0].code, Code::OverLimit as i32);
    // The response carries the IETF header fields.
    let headers = headers(&response);
    assert_eq!(
        headers,
        [
            ("RateLimit-Policy", r#""envoy/edge/user/tier";q=2;w=3600"#),
            ("RateLimit", headers[1].1),
        ]
    );
    assert!(headers[1].1.starts_with(r#""envoy/edge/user/tier";r=0;t="#));

    // replaces: premium replaces per_user, which is then neither applied
    // nor charged.
    let bob = [("user", "bob"), ("tier", "gold")];
    let response = client
        .ask(
            "edge",
            vec![
                descriptor(&bob, None),
                descriptor(&[("plan", "premium")], None),
            ],
            0,
        )
        .await;
    assert_eq!(response.statuses.len(), 2);
    assert!(response.statuses[0].current_limit.is_none());
    assert_eq!(response.statuses[1].limit_remaining, 99);
    let status = client.one(&bob).await;
    assert_eq!(
        status.limit_remaining, 1,
        "the replaced limit was not charged"
    );

    // Shadow mode: over the limit is reported OK, counted as shadow.
    let shadow = [("user", "carol"), ("tier", "shadow")];
    assert!(ok(&client.one(&shadow).await));
    let response = client.ask("edge", vec![descriptor(&shadow, None)], 0).await;
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert!(ok(&response.statuses[0]));
    assert_eq!(response.statuses[0].limit_remaining, 0);

    let (_, metrics) = server.get_text("/metrics").await;
    assert_metrics(
        &metrics,
        &[
            "tollgate_decisions_total{policy=\"envoy/edge/user/tier=shadow\",outcome=\"shadow\"} 1",
            "tollgate_decisions_total{policy=\"envoy/edge/user/tier=shadow\",outcome=\"allowed\"} 1",
            "tollgate_decisions_total{policy=\"login\",outcome=\"allowed\"} 1",
            "tollgate_decisions_total{policy=\"envoy/edge/user/tier\",outcome=\"denied\"} 1",
        ],
    );

    // Invalid requests are gRPC errors, not crashes.
    let error = client.rejected("", vec![]).await;
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn envoy_semantics_on_memory() {
    envoy_semantics(Backend::memory()).await;
}

#[tokio::test]
async fn envoy_semantics_on_redis() {
    envoy_semantics(Backend::redis()).await;
}

/// Envoy's per-request `limit` override, as envoyproxy/ratelimit applies
/// it: in a configured domain it wins over whatever the entries match.
async fn limit_overrides(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = Client::connect(&server).await;
    let hour = Unit::Hour as i32;

    // A descriptor with a configured limit (10/s): the override (3/h) wins,
    // exactly 3 allowed, reported as the current limit.
    let address = [("remote_address", "198.51.100.7")];
    for remaining in [2, 1, 0] {
        let response = client
            .ask("edge", vec![overridden(&address, 3, hour)], 0)
            .await;
        let status = &response.statuses[0];
        assert!(ok(status), "{status:?}");
        assert_eq!(current(status), Some((3, hour)));
        assert_eq!(status.current_limit.as_ref().unwrap().name, "");
        assert_eq!(status.limit_remaining, remaining);
        let reset = status.duration_until_reset.unwrap();
        assert!(
            (0..=3600).contains(&reset.seconds) && (reset.seconds, reset.nanos) != (0, 0),
            "{reset:?}"
        );
        let headers = headers(&response);
        assert_eq!(
            headers[0],
            ("RateLimit-Policy", r#""envoy/override";q=3;w=3600"#)
        );
        assert!(
            headers[1]
                .1
                .starts_with(&format!(r#""envoy/override";r={remaining};t="#)),
            "{headers:?}"
        );
    }
    let response = client
        .ask("edge", vec![overridden(&address, 3, hour)], 0)
        .await;
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    assert_eq!(response.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(response.statuses[0].limit_remaining, 0);
    assert_eq!(current(&response.statuses[0]), Some((3, hour)));
    // The configured counter of the same entries was never charged.
    let status = client.one(&address).await;
    assert!(ok(&status));
    assert_eq!(current(&status), Some((10, Unit::Second as i32)));
    assert_eq!(status.limit_remaining, 9);

    // Different overrides of one descriptor keep different counters (per
    // unit and count); the configured `per_user` limit keeps its own.
    let dave = [("user", "dave"), ("tier", "gold")];
    assert_eq!(
        client
            .status(overridden(&dave, 1, hour))
            .await
            .limit_remaining,
        0
    );
    let status = client.status(overridden(&dave, 1, hour)).await;
    assert_eq!(status.code, Code::OverLimit as i32);
    let status = client.status(overridden(&dave, 2, hour)).await;
    assert!(ok(&status));
    assert_eq!(
        (current(&status), status.limit_remaining),
        (Some((2, hour)), 1)
    );
    let day = Unit::Day as i32;
    let status = client.status(overridden(&dave, 1, day)).await;
    assert!(ok(&status));
    assert_eq!(
        (current(&status), status.limit_remaining),
        (Some((1, day)), 0)
    );
    let status = client.one(&dave).await;
    assert_eq!(status.current_limit.as_ref().unwrap().name, "per_user");
    assert_eq!(status.limit_remaining, 1);

    // hits_addend applies as for configured limits; 0 peeks.
    let erin = [("account", "erin")];
    let mut peek = overridden(&erin, 5, hour);
    peek.hits_addend = Some(UInt64Value { value: 0 });
    assert_eq!(client.status(peek.clone()).await.limit_remaining, 5);
    let response = client
        .ask("edge", vec![overridden(&erin, 5, hour)], 4)
        .await;
    assert_eq!(response.statuses[0].limit_remaining, 1);
    let response = client
        .ask("edge", vec![overridden(&erin, 5, hour)], 2)
        .await;
    assert_eq!(response.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(
        client.status(peek).await.limit_remaining,
        1,
        "a denial charges nothing"
    );

    // No configured match is needed; `unlimited`, `shadow_mode` and
    // `replaces` of a matching node do not apply to an override.
    let minute = Unit::Minute as i32;
    for entries in [
        &[("path", "/elsewhere")][..],
        &[("path", "/free")][..],
        &[("user", "frank"), ("tier", "shadow")][..],
    ] {
        let status = client.status(overridden(entries, 1, minute)).await;
        assert!(ok(&status), "{entries:?}");
        assert_eq!(
            (current(&status), status.limit_remaining),
            (Some((1, minute)), 0)
        );
        let status = client.status(overridden(entries, 1, minute)).await;
        assert_eq!(status.code, Code::OverLimit as i32, "{entries:?}");
    }
    let grace = [("user", "grace"), ("tier", "gold")];
    let response = client
        .ask(
            "edge",
            vec![
                overridden(&grace, 5, hour),
                descriptor(&[("plan", "premium")], None),
            ],
            0,
        )
        .await;
    assert_eq!(
        current(&response.statuses[0]),
        Some((5, hour)),
        "not replaced"
    );
    assert_eq!(response.statuses[0].limit_remaining, 4);

    // requests_per_unit 0: always over the limit, as a configured 0 is.
    let status = client
        .status(overridden(&[("path", "/zero")], 0, minute))
        .await;
    assert_eq!(status.code, Code::OverLimit as i32);
    assert_eq!(
        (current(&status), status.limit_remaining),
        (Some((0, minute)), 0)
    );
    assert_eq!(status.duration_until_reset.unwrap().seconds, 60);

    // 7 is a week (envoyproxy/ratelimit reads the number as its WEEK).
    let status = client
        .status(overridden(&[("path", "/weekly")], 9, 7))
        .await;
    assert!(ok(&status));
    assert_eq!(
        (current(&status), status.limit_remaining),
        (Some((9, Unit::Week as i32)), 8)
    );

    // A unit that is not one is INVALID_ARGUMENT, and the whole request is
    // rejected before anything is charged.
    let first = [("path", "/not-charged")];
    for unit in [Unit::Unknown as i32, 8, -1] {
        let error = client
            .rejected(
                "edge",
                vec![overridden(&first, 1, hour), overridden(&first, 1, unit)],
            )
            .await;
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{unit}");
        assert!(
            error
                .message()
                .starts_with(&format!("descriptors[1].limit.unit {unit} ")),
            "{}",
            error.message()
        );
    }
    assert_eq!(
        client
            .status(overridden(&first, 1, hour))
            .await
            .limit_remaining,
        0
    );

    // An unknown domain is no limit, override or not (envoyproxy/ratelimit).
    for unit in [hour, Unit::Unknown as i32] {
        let response = client
            .ask("no-such-domain", vec![overridden(&first, 1, unit)], 0)
            .await;
        assert!(ok(&response.statuses[0]) && response.statuses[0].current_limit.is_none());
    }
}

#[tokio::test]
async fn limit_overrides_on_memory() {
    limit_overrides(Backend::memory()).await;
}

#[tokio::test]
async fn limit_overrides_on_redis() {
    limit_overrides(Backend::redis()).await;
}

/// Every override is counted under one label, whatever its entries, unit
/// and count, so request input cannot grow the metrics; a repeated denial
/// is answered by the deny cache, as for configured limits.
#[tokio::test]
async fn override_metrics_use_one_fixed_label() {
    let server = TestServer::start(Backend::memory()).await;
    let mut client = Client::connect(&server).await;
    let (hour, day) = (Unit::Hour as i32, Unit::Day as i32);
    for (entries, count, unit) in [
        ([("metric", "a")], 1, hour),
        ([("metric", "b")], 2, hour),
        ([("metric", "c")], 1, day),
    ] {
        assert!(ok(&client.status(overridden(&entries, count, unit)).await));
    }
    for _ in 0..2 {
        let status = client.status(overridden(&[("metric", "a")], 1, hour)).await;
        assert_eq!(status.code, Code::OverLimit as i32);
    }
    let (_, metrics) = server.get_text("/metrics").await;
    assert_metrics(
        &metrics,
        &[
            "tollgate_decisions_total{policy=\"envoy/override\",outcome=\"allowed\"} 3",
            "tollgate_decisions_total{policy=\"envoy/override\",outcome=\"denied\"} 2",
            "tollgate_decisions_total{policy=\"envoy/override\",outcome=\"shadow\"} 0",
        ],
    );
    // At least the repeated denial was answered locally (how many depends
    // on what the deny cache learns from the store's answers).
    let deny_cache_hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_deny_cache_hits_total "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(deny_cache_hits >= 1, "{metrics}");
    let labels: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tollgate_decisions_total{"))
        .collect();
    assert_eq!(labels.len(), 4, "one label, four outcomes: {labels:?}");
    // tollgate's own metrics hold no request input; envoyproxy/ratelimit's
    // statistics name an override by its entries, as it does, within
    // `envoy.stats_max_series` (see tests/envoy_modes.rs).
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("tollgate_") && l.contains("metric")),
        "request input in a label:\n{metrics}"
    );
    assert!(metrics.contains(
        "ratelimit_service_rate_limit_over_limit{domain=\"edge\",key1=\"metric_a\"} 2\n"
    ));
}

/// Overrides go through the resilience layer: with Redis down and
/// `on_failure: closed`, an override is denied and counted as degraded.
#[tokio::test]
async fn an_override_follows_the_failure_mode() {
    let backend = Backend::redis();
    let Backend::Redis(redis) = &backend else {
        unreachable!()
    };
    let text = format!(
        "store:\n  kind: redis\n  url: {}\n  timeout: 200ms\n  on_failure: closed\n\
         domains:\n  - domain: edge\n    descriptors:\n      - key: k\n        \
         rate_limit: {{ unit: second, requests_per_unit: 100 }}\n",
        redis.url()
    );
    let mut server = TestServer::start_text(backend, &text).await;
    let mut client = Client::connect(&server).await;
    let hour = Unit::Hour as i32;
    let status = client.status(overridden(&[("k", "v")], 5, hour)).await;
    assert!(ok(&status));
    assert_eq!(status.limit_remaining, 4);
    if let Backend::Redis(redis) = &mut server.backend {
        redis.kill();
    }
    let status = client.status(overridden(&[("k", "v")], 5, hour)).await;
    assert_eq!(status.code, Code::OverLimit as i32, "closed: denied");
    assert_eq!(current(&status), Some((5, hour)));
    let (_, metrics) = server.get_text("/metrics").await;
    assert_metrics(
        &metrics,
        &[
            "tollgate_decisions_total{policy=\"envoy/override\",outcome=\"allowed\"} 1",
            "tollgate_decisions_total{policy=\"envoy/override\",outcome=\"degraded\"} 1",
        ],
    );
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let server = TestServer::start(Backend::memory()).await;
    let channel = server.grpc_channel().await;
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: tollgate_server::grpc::SERVICE_NAME.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// Sends an already encoded `RateLimitRequest`, so a test can send bytes no
/// well-behaved client would.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, len).to_vec()))
    }
}

/// One length-delimited protobuf field (lengths below 128: one byte).
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2, u8::try_from(bytes.len()).unwrap()];
    out.extend_from_slice(bytes);
    out
}

/// `RateLimitRequest { domain, descriptors: [{ entries: [{ key, value }] }] }`
/// encoded by hand, so `value` may be any bytes.
fn raw_request(domain: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
    let entry = [field(1, key), field(2, value)].concat();
    let descriptor = field(1, &entry);
    [field(1, domain.as_bytes()), field(2, &descriptor)].concat()
}

async fn send_raw(server: &TestServer, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = server.grpc_channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    );
    grpc.unary(tonic::Request::new(message), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A descriptor value that is not UTF-8 (protobuf `string` fields must be)
/// is the client's fault: `INVALID_ARGUMENT`, not `INTERNAL`. So is a
/// message that is not protobuf at all. The same bytes with a valid value
/// are answered.
#[tokio::test]
async fn a_descriptor_value_that_is_not_utf8_is_invalid_argument() {
    let server = TestServer::start(Backend::memory()).await;
    let ok = send_raw(&server, raw_request("edge", b"remote_address", b"10.0.0.1")).await;
    let response = ok.unwrap();
    let response = <RateLimitResponse as prost::Message>::decode(response.as_slice()).unwrap();
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_eq!(response.statuses[0].limit_remaining, 9);

    for (what, message) in [
        (
            "value",
            raw_request("edge", b"remote_address", b"10.0.\xff\xfe.1"),
        ),
        ("key", raw_request("edge", b"remote\xc3", b"x")),
        ("truncated", raw_request("edge", b"k", b"v")[..9].to_vec()),
    ] {
        let status = send_raw(&server, message).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
    }
    // The server still answers.
    assert!(
        send_raw(&server, raw_request("edge", b"remote_address", b"10.0.0.1"))
            .await
            .is_ok()
    );
}
