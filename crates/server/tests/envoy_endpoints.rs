//! envoyproxy/ratelimit's endpoints and switches: `POST /json` (the gRPC
//! method's own decisions, in protobuf's JSON mapping), `GET /healthcheck`
//! and gRPC health under every name envoyproxy/ratelimit answers, while
//! the store is down and while no domain is loaded, `GET /rlconfig`,
//! `envoy.response_headers`, and the gRPC port over (mutual) TLS, with
//! the client's name checked (`client_san`).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Backend, TestServer, descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::tls::Certificates;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The status gRPC health gives `name`, or the error's code.
async fn grpc_health(channel: &Channel, name: &str) -> Result<i32, tonic::Code> {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: name.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| s.code())
}

const NAMES: [&str; 3] = [
    "",
    "ratelimit",
    "envoy.service.ratelimit.v3.RateLimitService",
];

#[tokio::test]
async fn json_decides_as_grpc_does_on_the_same_counters() {
    let server = TestServer::start(Backend::memory()).await;
    // `hourly` is 3 per hour in the test configuration, named `user=...`.
    let body = r#"{"domain":"edge","descriptors":[{"entries":[{"key":"path","value":"/login"}]}]}"#;
    let (status, first) = server.post_json("/json", body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["overallCode"], "OK");
    let left = first["statuses"][0]["limitRemaining"].as_u64().unwrap();
    // A gRPC call charges the same counter: one less.
    let mut rls = server.rls_client().await;
    let response = rls
        .should_rate_limit(RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![descriptor(&[("path", "/login")], None)],
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u64::from(response.statuses[0].limit_remaining), left - 1);
    // Spend the rest through /json, then 429 with the same JSON shape.
    let spend = format!(
        r#"{{"domain":"edge","hitsAddend":{},"descriptors":[{{"entries":[{{"key":"path","value":"/login"}}]}}]}}"#,
        left - 1
    );
    assert_eq!(server.post_json("/json", &spend).await.0, 200);
    let (status, over) = server.post_json("/json", body).await;
    assert_eq!(status, 429, "{over}");
    assert_eq!(over["overallCode"], "OVER_LIMIT");
    assert_eq!(over["statuses"][0]["code"], "OVER_LIMIT");
    // An unknown domain is OK without a limit, as in envoyproxy/ratelimit.
    let (status, text) = server
        .post_json(
            "/json",
            r#"{"domain":"nowhere","descriptors":[{"entries":[{"key":"a","value":"b"}]}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        text,
        serde_json::json!({"overallCode": "OK", "statuses": [{"code": "OK"}]})
    );
}

#[tokio::test]
async fn json_refuses_hostile_bodies_with_clear_errors() {
    let server = TestServer::start(Backend::memory()).await;
    for (body, status, detail) in [
        ("{", 400, "invalid JSON"),
        ("[1]", 400, "expected an object"),
        (
            r#"{"domain":"edge","descriptors":[{"entries":[{"key":"k","value":"v"}],"x":1}]}"#,
            400,
            "unknown field `x`",
        ),
        (
            r#"{"domain":"","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#,
            400,
            "domain must not be empty",
        ),
        (
            r#"{"domain":"edge"}"#,
            400,
            "descriptor list must not be empty",
        ),
        (
            r#"{"domain":"edge","descriptors":[{"entries":[{"key":"k","value":"v"}],"limit":{"requestsPerUnit":1,"unit":"UNKNOWN"}}]}"#,
            400,
            "is not a rate limit unit",
        ),
        (
            r#"{"domain":"edge","hitsAddend":"lots","descriptors":[]}"#,
            400,
            "hitsAddend",
        ),
    ] {
        let (got, problem) = server.post_json("/json", body).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{body}: {problem}"
        );
    }
    // 65 descriptors: above the gRPC method's own maximum.
    let many = format!(
        r#"{{"domain":"edge","descriptors":[{}]}}"#,
        vec![r#"{"entries":[{"key":"k","value":"v"}]}"#; 65].join(",")
    );
    let (status, text) = server.post_json("/json", &many).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text["detail"]
            .as_str()
            .unwrap()
            .contains("above the maximum of 64"),
        "{text}"
    );
    // Bodies are bounded like /v1/check (max_body_bytes 4096 here).
    let huge = format!(r#"{{"domain":"{}"}}"#, "x".repeat(5000));
    assert_eq!(server.post_json("/json", &huge).await.0, 413);
}

#[tokio::test]
async fn healthcheck_and_grpc_health_answer_every_name() {
    let server = TestServer::start(Backend::memory()).await;
    assert_eq!(
        server.get_text("/healthcheck").await,
        (200, "OK".to_owned())
    );
    let channel = server.grpc_channel().await;
    for name in NAMES {
        assert_eq!(
            grpc_health(&channel, name).await,
            Ok(ServingStatus::Serving as i32),
            "{name:?}"
        );
    }
    assert_eq!(
        grpc_health(&channel, "other").await,
        Err(tonic::Code::NotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_while_the_store_is_down() {
    let backend = Backend::redis();
    let Backend::Redis(redis) = &backend else {
        unreachable!()
    };
    let text = format!(
        "store:\n  kind: redis\n  url: {}\n  timeout: 50ms\ndomains:\n  - domain: d\n    descriptors:\n      - key: k\n        rate_limit: {{ unit: second, requests_per_unit: 5 }}\n",
        redis.url()
    );
    let mut server = TestServer::start_text(backend, &text).await;
    let channel = server.grpc_channel().await;
    assert_eq!(server.get_text("/healthcheck").await.0, 200);
    let Backend::Redis(redis) = &mut server.backend else {
        unreachable!()
    };
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.get_text("/healthcheck").await;
        let mut all_down = status == 500;
        for name in NAMES {
            all_down &= grpc_health(&channel, name).await == Ok(ServingStatus::NotServing as i32);
        }
        if all_down {
            assert!(!body.is_empty(), "the body says why");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still healthy with Redis down: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn healthy_needs_domains_fails_health_without_a_domain() {
    let server = TestServer::start_text(
        Backend::memory(),
        "server:\n  healthy_needs_domains: true\npolicies:\n  - name: api\n    limit: 1\n    period: 1s\n",
    )
    .await;
    let (status, body) = server.get_text("/healthcheck").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("no rate limit configuration loaded"),
        "{body}"
    );
    assert_eq!(server.get_text("/readyz").await.0, 503);
    let channel = server.grpc_channel().await;
    for name in NAMES {
        assert_eq!(
            grpc_health(&channel, name).await,
            Ok(ServingStatus::NotServing as i32),
            "{name:?}"
        );
    }
}

#[tokio::test]
async fn rlconfig_lists_every_limit() {
    let server = TestServer::start_text(
        Backend::memory(),
        "policies:
  - name: login
    algorithm: token_bucket
    limit: 5
    period: 1m
domains:
  - domain: b
    descriptors:
      - key: k
        rate_limit: { unit: hour, requests_per_unit: 0 }
  - domain: a
    descriptors:
      - key: user
        value: '*'
        descriptors:
          - key: plan
            value: free
            shadow_mode: true
            rate_limit: { unit: minute, requests_per_unit: 3, name: free }
      - key: path
        value: /login
        policy: login
      - key: ip
        algorithm: gcra
        rate_limit: { unit: second, requests_per_unit: 10 }
",
    )
    .await;
    let (status, text) = server.get_text("/rlconfig").await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        "a.ip: unit=SECOND requests_per_unit=10, algorithm=gcra, shadow_mode: false, quota_mode: false
a.path_/login: unit=MINUTE requests_per_unit=5, policy=login token_bucket 5/1m burst 5, shadow_mode: false, quota_mode: false
a.user_*.plan_free: unit=MINUTE requests_per_unit=3, shadow_mode: true, quota_mode: false
b.k: unit=HOUR requests_per_unit=0, shadow_mode: false, quota_mode: false
"
    );
}

#[tokio::test]
async fn response_headers_follow_the_descriptor_nearest_its_limit() {
    let server = TestServer::start_text(
        Backend::memory(),
        "envoy:
  response_headers: { enabled: true, remaining: X-Left }
domains:
  - domain: d
    descriptors:
      - key: wide
        rate_limit: { unit: minute, requests_per_unit: 10 }
      - key: narrow
        rate_limit: { unit: hour, requests_per_unit: 2 }
      - key: free
        rate_limit: { unlimited: true }
",
    )
    .await;
    let mut rls = server.rls_client().await;
    let mut ask = async |entries: &[&[(&str, &str)]]| {
        rls.should_rate_limit(RateLimitRequest {
            domain: "d".into(),
            descriptors: entries.iter().map(|e| descriptor(e, None)).collect(),
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner()
    };
    let headers = |response: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse| {
        response
            .response_headers_to_add
            .iter()
            .filter(|h| ["RateLimit-Limit", "X-Left", "RateLimit-Reset"].contains(&h.key.as_str()))
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect::<Vec<_>>()
    };
    // The least remaining wins: narrow (1 left of 2) over wide (9 of 10).
    let response = ask(&[&[("free", "x")], &[("wide", "x")], &[("narrow", "x")]]).await;
    let got = headers(&response);
    assert_eq!(
        got[0],
        ("RateLimit-Limit".to_owned(), "2".to_owned()),
        "{got:?}"
    );
    assert_eq!(got[1], ("X-Left".to_owned(), "1".to_owned()), "{got:?}");
    let reset: u64 = got[2].1.parse().unwrap();
    // Fixed windows are aligned on the clock, as envoyproxy/ratelimit's are.
    assert!((1..=3600).contains(&reset), "{got:?}");
    // The IETF fields are still there.
    assert!(
        response
            .response_headers_to_add
            .iter()
            .any(|h| h.key == "RateLimit-Policy")
    );
    // Only the unlimited one: no limit, no headers.
    assert!(headers(&ask(&[&[("free", "x")]]).await).is_empty());
    // Over the limit: that descriptor, 0 remaining.
    ask(&[&[("narrow", "x")]]).await;
    let response = ask(&[&[("wide", "x")], &[("narrow", "x")]]).await;
    let got = headers(&response);
    assert_eq!(got[0].1, "2", "{got:?}");
    assert_eq!(got[1].1, "0", "{got:?}");
}

/// A throwaway CA with a server certificate for 127.0.0.1 and a client
/// certificate (`ours`), and a second CA with a client of its own
/// (`other`: a stranger to the server).
fn certificates(dir: &Path) -> (Certificates, Certificates) {
    let (ours, other) = (dir.join("ours"), dir.join("other"));
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    (Certificates::create(&ours), Certificates::create(&other))
}

/// A directory removed when dropped (the tests' private keys with it),
/// whether the test passed or not.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test configuration with `keys` added to its `server:` section.
fn with_server_keys(keys: &str) -> String {
    common::CONFIG.replacen("server:\n", &format!("server:\n{keys}"), 1)
}

async fn tls_channel(
    server: &TestServer,
    ca: &Path,
    client: Option<&Certificates>,
) -> Result<Channel, tonic::transport::Error> {
    let read = |path: &Path| std::fs::read(path).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name("127.0.0.1");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(
            read(&client.client_cert),
            read(&client.client_key),
        ));
    }
    Endpoint::from_shared(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(tls)?
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn allowed(channel: Channel) -> Result<i32, tonic::Status> {
    RateLimitServiceClient::new(channel)
        .should_rate_limit(RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![descriptor(&[("path", "/login")], None)],
            hits_addend: 0,
        })
        .await
        .map(|r| r.into_inner().overall_code)
}

#[tokio::test]
async fn grpc_over_mutual_tls() {
    let (ours, other) = certificates(&temp_dir("grpc-tls"));
    let _cleanup = RemovedOnDrop(ours.ca.parent().unwrap().parent().unwrap().to_owned());
    let text = with_server_keys(&format!(
        "  grpc_tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n  grpc_max_connection_age: 1h\n  grpc_max_connection_age_grace: 2s\n",
        ours.server_cert.display(),
        ours.server_key.display(),
        ours.ca.display(),
    ));
    let server = TestServer::start_text(Backend::memory(), &text).await;
    // A client the CA signed is served.
    let channel = tls_channel(&server, &ours.ca, Some(&ours)).await.unwrap();
    assert_eq!(allowed(channel.clone()).await.unwrap(), 1, "OK");
    assert_eq!(
        grpc_health(&channel, "ratelimit").await,
        Ok(ServingStatus::Serving as i32)
    );
    // No client certificate, or one from another CA: refused.
    for client in [None, Some(&other)] {
        let refused = match tls_channel(&server, &ours.ca, client).await {
            Err(_) => true,
            Ok(channel) => allowed(channel).await.is_err(),
        };
        assert!(refused, "{:?} was served", client.map(|c| &c.client_cert));
    }
    // Plaintext gRPC: refused.
    let plain = Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .timeout(Duration::from_secs(5));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => allowed(channel).await.is_err(),
    };
    assert!(refused, "plaintext was served");
}

/// `server.grpc_tls.client_san` (GRPC_CLIENT_TLS_SAN): a client the CA
/// signed is served only when its certificate is valid for the name; any
/// other fails the handshake, as a client of another CA does.
#[tokio::test]
async fn grpc_tls_client_san_admits_only_the_named_client() {
    let (ours, other) = certificates(&temp_dir("grpc-tls-san"));
    let _cleanup = RemovedOnDrop(ours.ca.parent().unwrap().parent().unwrap().to_owned());
    let start = |san: &str| {
        let text = with_server_keys(&format!(
            "  grpc_tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n    client_san: {san}\n",
            ours.server_cert.display(),
            ours.server_key.display(),
            ours.ca.display(),
        ));
        async move { TestServer::start_text(Backend::memory(), &text).await }
    };
    let named = start(tollgate_testkit::tls::CLIENT_SAN).await;
    let channel = tls_channel(&named, &ours.ca, Some(&ours)).await.unwrap();
    assert_eq!(allowed(channel.clone()).await.unwrap(), 1, "OK");
    assert_eq!(
        grpc_health(&channel, "ratelimit").await,
        Ok(ServingStatus::Serving as i32)
    );
    let someone_else = start("someone-else.tollgate.test").await;
    for (server, client) in [(&named, &other), (&someone_else, &ours)] {
        let refused = match tls_channel(server, &ours.ca, Some(client)).await {
            Err(_) => true,
            Ok(channel) => {
                allowed(channel.clone()).await.is_err()
                    && grpc_health(&channel, "ratelimit").await.is_err()
            }
        };
        assert!(refused, "{} was served", client.client_cert.display());
    }
}

/// The certificate and key files are read again when they change: a new
/// connection gets the new pair (a client trusting only the new CA
/// connects, one trusting only the old one no longer does), and a pair
/// that does not load is never served.
#[tokio::test]
async fn grpc_tls_certificates_are_reloaded_when_their_files_change() {
    let dir = temp_dir("grpc-tls-rotate");
    let _cleanup = RemovedOnDrop(dir.clone());
    let (ours, other) = certificates(&dir);
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(&ours.server_cert, &cert).unwrap();
    std::fs::copy(&ours.server_key, &key).unwrap();
    let text = with_server_keys(&format!(
        "  grpc_tls: {{ cert: {}, key: {} }}\n",
        cert.display(),
        key.display(),
    ));
    // Watched as `tollgate serve` watches (every 500 ms by default).
    let server = TestServer::start_with(
        Backend::memory(),
        &text,
        tollgate_server::ConfigSource::default(),
        tollgate_server::ServerOptions::default()
            .watch_interval(Some(Duration::from_millis(200)))
            .reload_on_sighup(false),
    )
    .await;
    let old = tls_channel(&server, &ours.ca, None).await.unwrap();
    assert_eq!(allowed(old.clone()).await.unwrap(), 1);
    // A broken key first: the old pair stays served.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = tls_channel(&server, &ours.ca, None).await.unwrap();
    assert_eq!(
        allowed(still).await.unwrap(),
        1,
        "the old pair is still served"
    );
    // The rotation, by renames (as a Kubernetes Secret's symlink swap or
    // an atomic writer does): the new pair is served from the next
    // connection on.
    for (from, to) in [(&other.server_key, &key), (&other.server_cert, &cert)] {
        let staged = dir.join("staged");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(channel) = tls_channel(&server, &other.ca, None).await {
            if allowed(channel).await.is_ok() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = match tls_channel(&server, &ours.ca, None).await {
        Err(_) => true,
        Ok(channel) => allowed(channel).await.is_err(),
    };
    assert!(refused, "a client trusting only the old CA still connected");
    // The connection made before the rotation keeps working.
    assert_eq!(allowed(old).await.unwrap(), 1);
}

/// A server on the memory store with one-way TLS on its gRPC port (a
/// fresh CA in a directory named after `name`, removed with the guard),
/// `header_timeout` as given and an idle timeout long enough not to
/// interfere.
async fn one_way_tls_server(
    name: &str,
    header_timeout: &str,
) -> (RemovedOnDrop, Certificates, TestServer) {
    let dir = temp_dir(name);
    let cleanup = RemovedOnDrop(dir.clone());
    let (ours, _) = certificates(&dir);
    let text = with_server_keys(&format!(
        "  header_timeout: {header_timeout}\n  idle_timeout: 30s\n  grpc_tls: {{ cert: {}, key: {} }}\n",
        ours.server_cert.display(),
        ours.server_key.display(),
    ));
    let server = TestServer::start_text(Backend::memory(), &text).await;
    (cleanup, ours, server)
}

/// A client that starts a TLS handshake and never finishes it holds up no
/// other client, is closed within the header timeout, and does not hold
/// up shutdown.
#[tokio::test]
async fn a_stalled_tls_handshake_holds_up_no_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_cleanup, ours, mut server) = one_way_tls_server("grpc-tls-stalled", "3s").await;
    // A handshake record announcing 512 bytes, and 100 of them.
    let stall = || async {
        let mut stalled = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
        let mut record = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        record.resize(105, 0);
        stalled.write_all(&record).await.unwrap();
        stalled
    };
    let mut stalled = stall().await;
    let channel = tls_channel(&server, &ours.ca, None).await.unwrap();
    assert_eq!(allowed(channel).await.unwrap(), 1);
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled handshake was never closed");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Shutdown with a handshake in flight: a client served after it
    // connected shows it was accepted (connections are accepted in order).
    let _stalled = stall().await;
    let channel = tls_channel(&server, &ours.ca, None).await.unwrap();
    assert_eq!(allowed(channel).await.unwrap(), 1);
    let stopping = Instant::now();
    server.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "shutdown waited for a stalled handshake: {:?}",
        stopping.elapsed()
    );
}

/// A raw TLS stream to the gRPC port (ALPN `h2`), trusting `ca`.
async fn tls_stream(
    server: &TestServer,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&std::fs::read(ca).unwrap()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.expect("handshake")
}

/// Over TLS, a connection whose preface came one byte per TLS record (so
/// the server decrypts it in small pieces) is past its header clock: it
/// stays open beyond the header timeout.
#[tokio::test]
async fn a_tls_connection_with_its_preface_stays_open_past_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_cleanup, ours, server) = one_way_tls_server("grpc-tls-preface", "1s").await;
    let mut tls = tls_stream(&server, &ours.ca).await;
    for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
        tls.write_all(&[*byte]).await.unwrap();
        tls.flush().await.unwrap();
    }
    // An empty SETTINGS frame.
    tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < Duration::from_millis(2500) {
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buffer)).await {
            Ok(Ok(0)) => panic!(
                "cut after {:?} though its preface was complete",
                started.elapsed()
            ),
            Ok(Err(error)) => panic!("{error} after {:?}", started.elapsed()),
            _ => {}
        }
    }
}

/// Over TLS, the HTTP/2 preface is timed inside the encryption: a client
/// that completes the handshake, then trickles the preface, is cut at the
/// header timeout, not kept for the connection's whole age.
#[tokio::test]
async fn a_preface_trickled_over_tls_is_cut_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_cleanup, ours, server) = one_way_tls_server("grpc-tls-trickle", "1s").await;
    let mut tls = tls_stream(&server, &ours.ca).await;
    let started = Instant::now();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut cut = false;
    for byte in preface.iter().take(20) {
        if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Whatever the server sent (its SETTINGS), or the end of the
        // connection.
        let mut probe = [0u8; 4096];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), tls.read(&mut probe)).await
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "a trickled preface was still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn grpc_tls_without_client_ca_serves_any_client() {
    let (ours, _) = certificates(&temp_dir("grpc-tls-one-way"));
    let _cleanup = RemovedOnDrop(ours.ca.parent().unwrap().parent().unwrap().to_owned());
    let text = with_server_keys(&format!(
        "  grpc_tls: {{ cert: {}, key: {} }}\n",
        ours.server_cert.display(),
        ours.server_key.display(),
    ));
    let server = TestServer::start_text(Backend::memory(), &text).await;
    let channel = tls_channel(&server, &ours.ca, None).await.unwrap();
    assert_eq!(allowed(channel).await.unwrap(), 1);
}

/// `server.grpc_max_connection_age` (GRPC_MAX_CONNECTION_AGE): a live
/// connection is sent GOAWAY once it is that old, and closed after the
/// grace, however quiet and healthy it is.
#[tokio::test]
async fn a_grpc_connection_is_closed_at_its_max_age() {
    let server = TestServer::start_text(
        Backend::memory(),
        &with_server_keys("  grpc_max_connection_age: 1s\n  grpc_max_connection_age_grace: 1s\n"),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let opened = Instant::now();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(async move {
        let result = connection.await;
        (opened.elapsed(), result)
    });
    let mut client = client.ready().await.unwrap();
    // A call is served on it meanwhile.
    let (response, mut body) = client
        .send_request(tollgate_testkit::grpc::rls_call(server.grpc), false)
        .unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let (age, result) = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the connection outlived its max age by 9 s")
        .unwrap();
    assert!(age >= Duration::from_millis(900), "closed after {age:?}");
    // Closed by the server's GOAWAY, not by an error.
    assert!(result.is_ok(), "{result:?}");
}
