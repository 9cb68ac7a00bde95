//! Envoy RLS v3 end to end: a tonic client built from the same envoy-types
//! sends Envoy-style descriptors to a server over a real socket.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

fn descriptor(entries: &[(&str, &str)], hits_addend: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        limit: None,
        hits_addend: hits_addend.map(|value| UInt64Value { value }),
    }
}

struct Client(RateLimitServiceClient<Channel>);

impl Client {
    async fn connect(server: &TestServer) -> Client {
        Client(
            RateLimitServiceClient::connect(format!("http://{}", server.grpc))
                .await
                .unwrap(),
        )
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
        let response = self.ask("edge", vec![descriptor(entries, None)], 0).await;
        response.statuses[0].clone()
    }
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
    let headers: Vec<(&str, &str)> = response
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
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
    for line in [
        "tollgate_decisions_total{policy=\"envoy/edge/user/tier=shadow\",outcome=\"shadow\"} 1",
        "tollgate_decisions_total{policy=\"envoy/edge/user/tier=shadow\",outcome=\"allowed\"} 1",
        "tollgate_decisions_total{policy=\"login\",outcome=\"allowed\"} 1",
        "tollgate_decisions_total{policy=\"envoy/edge/user/tier\",outcome=\"denied\"} 1",
    ] {
        assert!(
            metrics.contains(&format!("{line}\n")),
            "missing `{line}` in\n{metrics}"
        );
    }

    // Invalid requests are gRPC errors, not crashes.
    let error = client
        .0
        .should_rate_limit(RateLimitRequest {
            domain: String::new(),
            descriptors: vec![],
            hits_addend: 0,
        })
        .await
        .unwrap_err();
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

#[tokio::test]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let server = TestServer::start(Backend::memory()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
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
