//! envoyproxy/ratelimit's service-wide semantics behind Envoy's gRPC call:
//! quota mode (per descriptor and global), global shadow mode,
//! `stop_cache_key_increment_when_overlimit`, and its per-descriptor
//! statistics on `/metrics`, bounded whatever requests send.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer, descriptor};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

/// A server on `envoy` (the `envoy:` section's lines) and the domain `d`
/// with `descriptors` (indented as a domain's list).
async fn server(envoy: &str, descriptors: &str) -> TestServer {
    let text = format!("envoy:\n{envoy}domains:\n  - domain: d\n    descriptors:\n{descriptors}");
    TestServer::start_text(Backend::memory(), &text).await
}

async fn ask(server: &TestServer, descriptors: Vec<RateLimitDescriptor>) -> RateLimitResponse {
    server
        .rls_client()
        .await
        .should_rate_limit(RateLimitRequest {
            domain: "d".to_owned(),
            descriptors,
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

/// `(overall, [each status])`.
async fn codes(server: &TestServer, entries: &[(&str, &str)]) -> (i32, Vec<i32>) {
    let descriptors = entries.iter().map(|e| descriptor(&[*e], None)).collect();
    let response = ask(server, descriptors).await;
    let statuses = response.statuses.iter().map(|s| s.code).collect();
    (response.overall_code, statuses)
}

const ONE_AN_HOUR: &str = "rate_limit: { unit: hour, requests_per_unit: 1 }";

#[tokio::test]
async fn quota_descriptors_deny_only_when_all_of_them_are_over() {
    let server = server(
        "  quota_mode: false\n",
        &format!(
            "      - key: qa\n        quota_mode: true\n        {ONE_AN_HOUR}\n\
             \x20     - key: qb\n        quota_mode: true\n        {ONE_AN_HOUR}\n\
             \x20     - key: plain\n        {ONE_AN_HOUR}\n"
        ),
    )
    .await;
    assert_eq!(codes(&server, &[("qa", "x")]).await, (OK, vec![OK]));
    // One quota descriptor over, another within: each status says so, the
    // request passes.
    assert_eq!(
        codes(&server, &[("qa", "x"), ("qb", "y")]).await,
        (OK, vec![OVER, OK])
    );
    // Every quota descriptor over: over the limit.
    assert_eq!(
        codes(&server, &[("qa", "x"), ("qb", "y")]).await,
        (OVER, vec![OVER, OVER])
    );
    // The one quota descriptor of this request is over: every one is.
    assert_eq!(
        codes(&server, &[("qa", "x"), ("plain", "p")]).await,
        (OVER, vec![OVER, OK])
    );
    // Quota descriptors within and a rate limit within: passes.
    assert_eq!(
        codes(&server, &[("qa", "new"), ("plain", "q")]).await,
        (OK, vec![OK, OK])
    );
    // A rate limit over: over the limit, whatever the quotas say.
    assert_eq!(codes(&server, &[("plain", "p")]).await, (OVER, vec![OVER]));
}

#[tokio::test]
async fn global_quota_mode_makes_every_descriptor_a_quota() {
    let server = server(
        "  quota_mode: true\n",
        &format!("      - key: plain\n        {ONE_AN_HOUR}\n"),
    )
    .await;
    assert_eq!(codes(&server, &[("plain", "p")]).await, (OK, vec![OK]));
    assert_eq!(codes(&server, &[("plain", "p")]).await, (OVER, vec![OVER]));
    // A descriptor that matches nothing is a quota that passed.
    assert_eq!(
        codes(&server, &[("plain", "p"), ("none", "z")]).await,
        (OK, vec![OVER, OK])
    );
}

#[tokio::test]
async fn global_shadow_mode_answers_ok_and_counts_it() {
    let server = server(
        "  shadow_mode: true\n",
        &format!("      - key: plain\n        {ONE_AN_HOUR}\n"),
    )
    .await;
    assert_eq!(codes(&server, &[("plain", "p")]).await, (OK, vec![OK]));
    // The status still says over the limit; the overall code does not.
    assert_eq!(codes(&server, &[("plain", "p")]).await, (OK, vec![OVER]));
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("\nratelimit_service_global_shadow_mode 1\n"),
        "{metrics}"
    );
}

/// With the switch, a request with any descriptor over the limit charges
/// none of the others; without it, the others are charged.
#[tokio::test]
async fn stop_cache_key_increment_when_overlimit_charges_nothing_of_a_denied_request() {
    let descriptors = format!(
        "      - key: tight\n        {ONE_AN_HOUR}\n\
         \x20     - key: loose\n        rate_limit: {{ unit: hour, requests_per_unit: 5 }}\n"
    );
    for (switch, remaining) in [(true, [4, 4, 3]), (false, [4, 3, 2])] {
        let server = server(
            &format!("  stop_cache_key_increment_when_overlimit: {switch}\n"),
            &descriptors,
        )
        .await;
        let both = || {
            vec![
                descriptor(&[("tight", "t")], None),
                descriptor(&[("loose", "l")], None),
            ]
        };
        let first = ask(&server, both()).await;
        assert_eq!(first.overall_code, OK);
        assert_eq!(first.statuses[1].limit_remaining, remaining[0]);
        let second = ask(&server, both()).await;
        assert_eq!((second.overall_code, second.statuses[0].code), (OVER, OVER));
        assert_eq!(second.statuses[1].code, OK);
        assert_eq!(
            second.statuses[1].limit_remaining, remaining[1],
            "switch {switch}"
        );
        let alone = ask(&server, vec![descriptor(&[("loose", "l")], None)]).await;
        assert_eq!(
            alone.statuses[0].limit_remaining, remaining[2],
            "switch {switch}"
        );
    }
}

/// With the switch, a limit over its limit that does not make the request
/// `OVER_LIMIT` (a shadowed one, or a quota one while another quota
/// descriptor passes) does not stop the others from being charged: the
/// request is admitted, and admitting it uncharged would let it through
/// again and again. A quota descriptor that makes the request `OVER_LIMIT`
/// (all quota descriptors over) stops the charge, as any denial does.
#[tokio::test]
async fn stop_cache_key_increment_when_overlimit_charges_every_admitted_request() {
    let descriptors = format!(
        "      - key: trial\n        shadow_mode: true\n        {ONE_AN_HOUR}\n\
         \x20     - key: plan\n        quota_mode: true\n        {ONE_AN_HOUR}\n\
         \x20     - key: extra\n        quota_mode: true\n        rate_limit: {{ unit: hour, requests_per_unit: 100 }}\n\
         \x20     - key: user\n        rate_limit: {{ unit: hour, requests_per_unit: 3 }}\n"
    );
    let server = server(
        "  stop_cache_key_increment_when_overlimit: true\n",
        &descriptors,
    )
    .await;
    // Spend the shadowed and the quota limit (one an hour each).
    ask(&server, vec![descriptor(&[("trial", "x")], None)]).await;
    ask(&server, vec![descriptor(&[("plan", "x")], None)]).await;
    let cases: [(&str, Vec<(&str, &str)>); 2] = [
        ("shadow", vec![("trial", "x")]),
        ("quota", vec![("plan", "x"), ("extra", "x")]),
    ];
    for (what, over) in cases {
        for remaining in (0..3).rev() {
            let mut request: Vec<RateLimitDescriptor> = over
                .iter()
                .map(|&entry| descriptor(&[entry], None))
                .collect();
            request.push(descriptor(&[("user", what)], None));
            let reply = ask(&server, request).await;
            assert_eq!(reply.overall_code, OK, "{what}");
            assert_eq!(
                reply.statuses.last().unwrap().limit_remaining,
                remaining,
                "{what}"
            );
        }
        let reply = ask(&server, vec![descriptor(&[("user", what)], None)]).await;
        assert_eq!(reply.overall_code, OVER, "{what}: 3 admitted, 3 charged");
    }
    // The only quota descriptor over: the request is OVER_LIMIT, and the
    // other limit is not charged.
    let reply = ask(
        &server,
        vec![
            descriptor(&[("plan", "x")], None),
            descriptor(&[("user", "alone")], None),
        ],
    )
    .await;
    assert_eq!(reply.overall_code, OVER);
    let reply = ask(&server, vec![descriptor(&[("user", "alone")], None)]).await;
    assert_eq!(reply.statuses[0].limit_remaining, 2, "not charged before");
}

/// The line of statistic `name` with `labels` in `metrics`, as a number.
fn stat(metrics: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("ratelimit_service_rate_limit_{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn per_descriptor_statistics_have_envoyproxy_ratelimit_s_names() {
    let server = server(
        "  near_limit_ratio: 0.5\n",
        "      - key: user\n        rate_limit: { unit: hour, requests_per_unit: 4 }\n\
         \x20     - key: bulk\n        rate_limit: { unit: hour, requests_per_unit: 4 }\n\
         \x20     - key: trial\n        shadow_mode: true\n        rate_limit: { unit: hour, requests_per_unit: 1 }\n\
         \x20     - key: ip\n        detailed_metric: true\n        rate_limit: { unit: hour, requests_per_unit: 9 }\n\
         \x20     - key: app\n        descriptors:\n          - key: route\n            rate_limit: { unit: hour, requests_per_unit: 9 }\n\
         \x20     - key: free\n        rate_limit: { unlimited: true }\n",
    )
    .await;
    for _ in 0..5 {
        ask(&server, vec![descriptor(&[("user", "u1")], None)]).await;
    }
    ask(&server, vec![descriptor(&[("bulk", "b")], Some(3))]).await;
    for _ in 0..2 {
        ask(&server, vec![descriptor(&[("trial", "t")], None)]).await;
    }
    ask(&server, vec![descriptor(&[("ip", "10.0.0.1")], None)]).await;
    ask(
        &server,
        vec![descriptor(&[("app", "a"), ("route", "r")], None)],
    )
    .await;
    ask(&server, vec![descriptor(&[("free", "f")], None)]).await;
    let (_, metrics) = server.get_text("/metrics").await;
    let user = r#"domain="d",key1="user""#;
    // 4 within (the 3rd and 4th above half of 4: near), the 5th over.
    assert_eq!(
        [
            "total_hits",
            "within_limit",
            "near_limit",
            "over_limit",
            "shadow_mode"
        ]
        .map(|name| stat(&metrics, name, user)),
        [5, 4, 2, 1, 0]
    );
    // Three hits at once from 0 to 3: one of them above 2.
    assert_eq!(stat(&metrics, "near_limit", r#"domain="d",key1="bulk""#), 1);
    let trial = r#"domain="d",key1="trial""#;
    assert_eq!(
        ["total_hits", "within_limit", "over_limit", "shadow_mode"]
            .map(|name| stat(&metrics, name, trial)),
        [2, 1, 1, 1]
    );
    // detailed_metric: the value, its IPv4 dots made underscores.
    assert_eq!(
        stat(&metrics, "total_hits", r#"domain="d",key1="ip_10_0_0_1""#),
        1
    );
    // Two entries: key1 and key2.
    assert_eq!(
        stat(
            &metrics,
            "total_hits",
            r#"domain="d",key1="app",key2="route""#
        ),
        1
    );
    // Unlimited descriptors have no statistics.
    assert!(!metrics.contains("key1=\"free\""), "{metrics}");
    assert!(metrics.contains("# TYPE ratelimit_service_rate_limit_total_hits counter\n"));
}

/// Values from requests (here `detailed_metric`'s) never make more series
/// than `envoy.stats_max_series`: the rest is one overflow series.
#[tokio::test]
async fn hostile_values_cannot_grow_the_statistics() {
    let server = server(
        "  stats_max_series: 3\n",
        "      - key: user\n        detailed_metric: true\n        rate_limit: { unit: hour, requests_per_unit: 1000 }\n",
    )
    .await;
    let hostile = "a\"b\\c\nd}";
    ask(&server, vec![descriptor(&[("user", hostile)], None)]).await;
    for i in 0..200 {
        let value = format!("{i}.{}", "x".repeat(i % 7));
        ask(&server, vec![descriptor(&[("user", &value)], None)]).await;
    }
    let metrics = server.app.metrics();
    assert_eq!(metrics.envoy_series_count(), 3);
    assert_eq!(metrics.envoy_overflow().total_hits, 201 - 3);
    let (_, text) = server.get_text("/metrics").await;
    let total_lines = text
        .lines()
        .filter(|l| l.starts_with("ratelimit_service_rate_limit_total_hits{"))
        .count();
    assert_eq!(total_lines, 4, "three series and the overflow one:\n{text}");
    assert_eq!(
        stat(
            &text,
            "total_hits",
            r#"domain="tollgate_overflow",key1="tollgate_overflow""#
        ),
        198
    );
    // Label values are escaped: the hostile value stays in its line.
    assert_eq!(
        stat(&text, "total_hits", r#"domain="d",key1="user_a\"b\\c\nd}""#),
        1
    );
}

/// `replaces` skips a limit another matched limit names; an `unlimited`
/// one stays unlimited (envoyproxy/ratelimit sets unlimited limits aside
/// before it applies `replaces`).
#[tokio::test]
async fn replaces_skips_a_named_limit_but_not_an_unlimited_one() {
    let server = server(
        "  quota_mode: false\n",
        "      - key: special\n        rate_limit: { unit: hour, requests_per_unit: 5, replaces: [{ name: general }, { name: open }] }\n\
         \x20     - key: general\n        rate_limit: { unit: hour, requests_per_unit: 1, name: general }\n\
         \x20     - key: open\n        rate_limit: { unlimited: true, name: open }\n",
    )
    .await;
    let entries = [("special", "s"), ("general", "g"), ("open", "o")];
    for _ in 0..2 {
        let descriptors = entries.iter().map(|e| descriptor(&[*e], None)).collect();
        let response = ask(&server, descriptors).await;
        assert_eq!(response.overall_code, OK);
        // The replaced limit: OK, no limit reported, not charged.
        assert!(response.statuses[1].current_limit.is_none());
        assert_eq!(response.statuses[2].limit_remaining, u32::MAX);
    }
    // `general` was never charged: its one request an hour is still there.
    let alone = ask(&server, vec![descriptor(&[("general", "g")], None)]).await;
    assert_eq!(
        (alone.overall_code, alone.statuses[0].limit_remaining),
        (OK, 0)
    );
}

/// The answer's `dynamic_metadata` as JSON (the `POST /json` form), or
/// `None` when the answer has none.
fn dynamic_metadata(response: &RateLimitResponse) -> Option<serde_json::Value> {
    let json = tollgate_server::json::encode_response(response);
    json.get("dynamicMetadata").cloned()
}

/// With `envoy.response_dynamic_metadata`, each answer names the request
/// and merges the configured `metadata` of the descriptors that passed, in
/// request order, the first value of a key winning and structs merged key
/// by key (envoyproxy/ratelimit's `RESPONSE_DYNAMIC_METADATA`). A
/// descriptor over its limit, an `unlimited` one, one whose limit is
/// replaced and an override send none; a shadowed one over its limit
/// passes and sends its own. Without the switch, no metadata at all.
#[tokio::test]
async fn dynamic_metadata_carries_what_the_passed_descriptors_configure() {
    use serde_json::json;
    let descriptors = format!(
        "      - key: a\n        metadata: {{ name: first, shared: {{ x: 1 }} }}\n        {ONE_AN_HOUR}\n\
         \x20     - key: b\n        metadata: {{ name: second, other: o, shared: {{ x: 2, y: 2 }} }}\n        rate_limit: {{ unit: hour, requests_per_unit: 5, replaces: [{{ name: gone }}] }}\n\
         \x20     - key: u\n        metadata: {{ name: unlimited }}\n        rate_limit: {{ unlimited: true }}\n\
         \x20     - key: s\n        shadow_mode: true\n        metadata: {{ shadowed: true }}\n        {ONE_AN_HOUR}\n\
         \x20     - key: q\n        quota_mode: true\n        metadata: {{ quota: q }}\n        {ONE_AN_HOUR}\n\
         \x20     - key: p\n        quota_mode: true\n        metadata: {{ quota: p }}\n        {ONE_AN_HOUR}\n\
         \x20     - key: r\n        metadata: {{ replaced: r }}\n        rate_limit: {{ unit: hour, requests_per_unit: 5, name: gone }}\n\
         \x20     - key: dm\n        detailed_metric: true\n        metadata: {{ detailed: true }}\n        {ONE_AN_HOUR}\n"
    );
    let server = server("  response_dynamic_metadata: true\n", &descriptors).await;

    let first = ask(
        &server,
        vec![
            descriptor(&[("u", "1")], None),
            descriptor(&[("a", "1")], None),
            descriptor(&[("b", "1")], Some(2)),
            descriptor(&[("r", "1")], None),
            descriptor(&[("nothing", "matches")], None),
        ],
    )
    .await;
    assert_eq!(first.overall_code, OK);
    assert_eq!(
        dynamic_metadata(&first),
        Some(json!({
            "domain": "d",
            "descriptors": [
                {"entries": ["u=1"]},
                {"entries": ["a=1"]},
                {"entries": ["b=1"], "hitsAddend": 2},
                {"entries": ["r=1"]},
                {"entries": ["nothing=matches"]},
            ],
            "metadata": {"name": "first", "other": "o", "shared": {"x": 1, "y": 2}},
        }))
    );
    // The merge went into a copy: `a`'s configured `shared` did not take
    // `b`'s `y` (envoyproxy/ratelimit's merge writes into it).
    let alone = ask(&server, vec![descriptor(&[("a", "2")], None)]).await;
    assert_eq!(
        dynamic_metadata(&alone).unwrap()["metadata"],
        json!({"name": "first", "shared": {"x": 1}})
    );
    // `detailed_metric` keeps the metadata (envoyproxy/ratelimit loses it
    // when it renames the statistics).
    let detailed = ask(&server, vec![descriptor(&[("dm", "1")], None)]).await;
    assert_eq!(
        dynamic_metadata(&detailed).unwrap()["metadata"],
        json!({"detailed": true})
    );

    // `a` is over its limit now: `b`'s values are the first.
    let second = ask(
        &server,
        vec![
            descriptor(&[("a", "1")], None),
            descriptor(&[("b", "1")], None),
        ],
    )
    .await;
    assert_eq!(second.overall_code, OVER);
    assert_eq!(
        dynamic_metadata(&second).unwrap()["metadata"],
        json!({"name": "second", "other": "o", "shared": {"x": 2, "y": 2}})
    );

    // Nothing passed with metadata: no `metadata` key; the request's own
    // `hits_addend` is there when it is not 0.
    let over = server
        .rls_client()
        .await
        .should_rate_limit(RateLimitRequest {
            domain: "d".to_owned(),
            descriptors: vec![descriptor(&[("a", "1")], None)],
            hits_addend: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dynamic_metadata(&over),
        Some(json!({"domain": "d", "descriptors": [{"entries": ["a=1"]}], "hitsAddend": 3}))
    );

    // A shadowed limit over its limit passes, and sends its metadata.
    for _ in 0..2 {
        let shadowed = ask(&server, vec![descriptor(&[("s", "1")], None)]).await;
        assert_eq!(
            dynamic_metadata(&shadowed).unwrap()["metadata"],
            json!({"shadowed": true})
        );
    }
    // A quota descriptor over its limit does not pass, even when the
    // request does (another quota descriptor is within its limit).
    ask(&server, vec![descriptor(&[("q", "1")], None)]).await;
    let quota = ask(
        &server,
        vec![
            descriptor(&[("q", "1")], None),
            descriptor(&[("p", "1")], None),
        ],
    )
    .await;
    assert_eq!(quota.overall_code, OK);
    assert_eq!((quota.statuses[0].code, quota.statuses[1].code), (OVER, OK));
    assert_eq!(
        dynamic_metadata(&quota).unwrap()["metadata"],
        json!({"quota": "p"})
    );

    // An override matches no configured descriptor: no metadata, and its
    // limit is written out.
    let mut overridden = descriptor(&[("b", "3")], None);
    overridden.limit = Some(
        envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride {
            requests_per_unit: 7,
            unit: envoy_types::pb::envoy::r#type::v3::RateLimitUnit::Minute as i32,
        },
    );
    let response = ask(&server, vec![overridden]).await;
    assert_eq!(
        dynamic_metadata(&response),
        Some(json!({
            "domain": "d",
            "descriptors": [{"entries": ["b=3"], "limit": "requests_per_unit:7 unit:MINUTE"}],
        }))
    );

    // Under the global shadow mode the answer is `OK`, but a descriptor
    // over its limit still did not pass.
    let shadowed_all = crate::server(
        "  response_dynamic_metadata: true\n  shadow_mode: true\n",
        &descriptors,
    )
    .await;
    ask(&shadowed_all, vec![descriptor(&[("a", "1")], None)]).await;
    let over = ask(
        &shadowed_all,
        vec![
            descriptor(&[("a", "1")], None),
            descriptor(&[("b", "1")], None),
        ],
    )
    .await;
    assert_eq!((over.overall_code, over.statuses[0].code), (OK, OVER));
    assert_eq!(
        dynamic_metadata(&over).unwrap()["metadata"]["name"],
        json!("second")
    );

    // Off by default.
    let quiet = crate::server("  quota_mode: false\n", &descriptors).await;
    let response = ask(&quiet, vec![descriptor(&[("b", "1")], None)]).await;
    assert_eq!(response.overall_code, OK);
    assert_eq!(response.dynamic_metadata, None);
}
