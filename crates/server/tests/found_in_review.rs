//! Cases found in review of reservations (issue 19) and the dashboard
//! (issue 20): a forged settle across the two stores, a dashboard first
//! turned on by a reload, an absurd stream-done usage.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer};

const POLICIES: &str = "policies:
  - name: tiny
    algorithm: fixed_window
    limit: 2
    period: 1h
";

/// SERVER.md's table of `/v1/settle` errors: `404` for a reservation
/// "never made, ... forged, tampered with ... such an id touches no
/// state". A forged id naming one policy of each store (`store.per_second`)
/// is answered `501` "cannot reserve: ... reservations naming policies of
/// both the main and the per-second store" instead: a settle that tells the
/// caller about the store layout and says "cannot reserve" for a settle.
#[tokio::test]
async fn a_forged_settle_across_stores_is_404_as_documented() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use tollgate_testkit::redis::RedisServer;

    let (main, second) = (RedisServer::start(), RedisServer::start());
    let (_app, server) = common::per_second_server(&main, &second).await;
    // The text form: version 1, nonce, the policy names, the key.
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&7u128.to_le_bytes());
    bytes.push(2);
    for name in ["second", "hour"] {
        bytes.push(u8::try_from(name.len()).unwrap());
        bytes.extend_from_slice(name.as_bytes());
    }
    bytes.extend_from_slice(b"http:victim");
    let forged = URL_SAFE_NO_PAD.encode(bytes);
    let (status, body) = server
        .post_json(
            "/v1/settle",
            &serde_json::json!({"reservation": forged, "actual": 1}).to_string(),
        )
        .await;
    assert_eq!(status, 404, "a forged id: {body}");
    drop(server);
    drop((main, second));
}

/// A dashboard turned on by a reload for the first time (the server
/// started with `server.dashboard.enabled: false`) counts, in its first
/// one-second sample, every decision made since the process started: a
/// day with the dashboard off shows as one second with a day's decisions
/// (capped at 2^32 - 1), which flattens every chart for the five minutes
/// the ring holds. Turned off and on again, it counts from then
/// (`a_reload_turns_the_dashboard_off_and_on`): the two paths disagree,
/// because `Series::sampled_before` is only set by an enabled sample.
#[tokio::test]
async fn a_dashboard_first_enabled_by_a_reload_counts_from_then() {
    use tollgate_testkit::files::temp_dir;

    let dir = temp_dir("review2-dashboard-late");
    let file = dir.join("tollgate.yaml");
    std::fs::write(
        &file,
        format!("server:\n  dashboard:\n    enabled: false\n{POLICIES}"),
    )
    .unwrap();
    let server = TestServer::start_file(Backend::Memory, &file).await;
    // Decisions while the dashboard is off: 2 allowed, 98 denied.
    for _ in 0..100 {
        let (status, _) = server
            .post_json("/v1/check", r#"{"policy": "tiny", "key": "k"}"#)
            .await;
        assert_eq!(status, 200);
    }
    server.app.dashboard().tick(&server.app);
    std::fs::write(&file, POLICIES).unwrap();
    server.app.reload().unwrap();
    server.app.dashboard().tick(&server.app);
    let stats: serde_json::Value = server.get("/v1/stats").await.json();
    let tiny = stats["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tiny")
        .unwrap();
    let denied: u64 = tiny["series"]["denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        denied, 0,
        "denials made while the dashboard was off are charted as the first second after it \
         was turned on: {tiny}"
    );
}

/// Issue 19: an actual cost past the estimate "may overdraw ..., never
/// silently dropped"; the middleware settles a usage above 2^53 - 1 as
/// 2^53 - 1 ("the policy's overdraft bounds what that charges"). Envoy's
/// stream-done call on a `settle: true` descriptor with a `hits_addend`
/// above 2^53 - 1 is refused instead (`INVALID_ARGUMENT`, which Envoy,
/// fire-and-forget, ignores): nothing is charged at all, and no unpaid
/// units are counted. A response reporting an absurd usage is free.
#[tokio::test]
async fn an_envoy_stream_done_charge_past_2_53_is_not_dropped() {
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

    let config = r#"
policies:
  - name: tokens
    algorithm: fixed_window
    limit: 1000
    period: 1h
    max_overdraft: 200
domains:
  - domain: llm
    descriptors:
      - key: user
        settle: true
        policy: tokens
"#;
    let server = TestServer::start_text(Backend::Memory, config).await;
    let ask = |hits: Option<u64>| {
        let server = &server;
        async move {
            server
                .rls_client()
                .await
                .should_rate_limit(RateLimitRequest {
                    domain: "llm".to_owned(),
                    descriptors: vec![common::descriptor(&[("user", "mallory")], hits)],
                    hits_addend: 0,
                })
                .await
        }
    };
    // The stream-done call with an absurd usage: whatever it answers, the
    // budget must be spent (charged up to what remains plus the overdraft).
    let answer = ask(Some(1 << 53)).await;
    let next = ask(Some(0)).await.unwrap().into_inner();
    assert_eq!(
        next.overall_code,
        Code::OverLimit as i32,
        "after a stream-done usage of 2^53 (answered {answer:?}), the next request is still \
         admitted: {next:?}"
    );
}
