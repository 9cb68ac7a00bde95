//! envoyproxy/ratelimit configuration files, loaded unchanged, answer
//! Envoy's requests.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::{Backend, TestServer, descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_server::{ConfigSource, ServerOptions};

fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(path)
}

#[test]
fn a_directory_of_envoy_files_loads_hidden_entries_skipped() {
    let source = ConfigSource {
        config: None,
        envoy: Some(data("envoy")),
        ..ConfigSource::default()
    };
    let config = source.load().unwrap();
    let mut domains: Vec<&str> = config.domains.keys().map(String::as_str).collect();
    domains.sort_unstable();
    assert_eq!(domains, ["edge_proxy_per_ip", "messaging", "mongo_cps"]);
    assert!(
        config.policies.is_empty(),
        "no demo policies with envoy files alone"
    );
}

#[test]
fn broken_envoy_files_are_rejected_precisely() {
    let dir = tollgate_testkit::files::temp_dir("envoy-broken");
    let file = dir.join("bad.yaml");
    for (text, expected) in [
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      unknown: 2\n",
            "bad.yaml:7:7: descriptors[0].rate_limit: unknown field `unknown`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: parsec\n      requests_per_unit: 1\n",
            "bad.yaml:3:5: descriptors[0]: descriptor `k`: unknown unit `parsec`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
            "bad.yaml:1:1: duplicate descriptor `k=v`",
        ),
        ("descriptors: []\n", "missing field `domain`"),
    ] {
        std::fs::write(&file, text).unwrap();
        let source = ConfigSource {
            config: None,
            envoy: Some(file.clone()),
            ..ConfigSource::default()
        };
        let error = source.load().unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{text}\n`{error}` lacks `{expected}`"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn envoy_files_answer_envoy_requests_on_redis() {
    let source = ConfigSource {
        config: None,
        envoy: Some(data("envoy")),
        ..ConfigSource::default()
    };
    let server = TestServer::start_with(
        Backend::redis(),
        "",
        source,
        ServerOptions::default()
            .watch_interval(None)
            .reload_on_sighup(false),
    )
    .await;
    let mut client = server.rls_client().await;
    let mut ask = async |domain: &str, entries: &[(&str, &str)]| {
        let response = client
            .should_rate_limit(RateLimitRequest {
                domain: domain.to_owned(),
                descriptors: vec![descriptor(entries, None)],
                hits_addend: 0,
            })
            .await
            .unwrap()
            .into_inner();
        response.statuses[0].clone()
    };
    // Nested: 5 marketing messages a day per number.
    let marketing = [("message_type", "marketing"), ("to_number", "2061234567")];
    for remaining in (0..5).rev() {
        let status = ask("messaging", &marketing).await;
        assert_eq!(
            (status.code, status.limit_remaining),
            (Code::Ok as i32, remaining)
        );
    }
    assert_eq!(
        ask("messaging", &marketing).await.code,
        Code::OverLimit as i32
    );
    assert_eq!(
        ask("messaging", &[("to_number", "2061234567")])
            .await
            .limit_remaining,
        99
    );
    // The blacklisted address; a wildcard prefix; unlimited; shadow mode.
    assert_eq!(
        ask("edge_proxy_per_ip", &[("remote_address", "50.0.0.5")])
            .await
            .code,
        Code::OverLimit as i32
    );
    assert_eq!(
        ask("edge_proxy_per_ip", &[("api", "/v1/users")])
            .await
            .limit_remaining,
        999
    );
    assert_eq!(
        ask("edge_proxy_per_ip", &[("client_id", "trusted")])
            .await
            .limit_remaining,
        u32::MAX
    );
    for _ in 0..3 {
        assert_eq!(
            ask("edge_proxy_per_ip", &[("path", "/noisy")]).await.code,
            Code::Ok as i32
        );
    }
    assert_eq!(
        ask("mongo_cps", &[("database", "users")])
            .await
            .limit_remaining,
        499
    );
}
