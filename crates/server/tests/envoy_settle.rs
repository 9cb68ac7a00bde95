//! Envoy's stream-done rate limit call (`apply_on_stream_done`) on a
//! descriptor configured `settle: true`: the call with hits charges them
//! after the fact (whether or not they fit, overdrawing at most
//! `max_overdraft`, the rest unpaid) and is answered `OK`; the
//! request-path call without hits only looks, `OVER_LIMIT` once nothing
//! remains. Over gRPC and `POST /json`, on the memory store and on Redis.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer, descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// A budget of 1000 tokens an hour per user, charged after the fact, with
/// an overdraft of 200 (a named policy), and one of 100 inline (its
/// overdraft: its limit); a plain limit beside them.
const CONFIG: &str = r#"
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
      - key: team
        settle: true
        rate_limit: { unit: hour, requests_per_unit: 100 }
      - key: plain
        rate_limit: { unit: hour, requests_per_unit: 2 }
"#;

async fn ask(
    server: &TestServer,
    entries: &[(&str, &str)],
    hits: Option<u64>,
    request_hits: u32,
) -> RateLimitResponse {
    server
        .rls_client()
        .await
        .should_rate_limit(RateLimitRequest {
            domain: "llm".to_owned(),
            descriptors: vec![descriptor(entries, hits)],
            hits_addend: request_hits,
        })
        .await
        .unwrap()
        .into_inner()
}

/// (code, remaining) of the request's only descriptor.
async fn status(
    server: &TestServer,
    entries: &[(&str, &str)],
    hits: Option<u64>,
    request_hits: u32,
) -> (Code, u32) {
    let response = ask(server, entries, hits, request_hits).await;
    let status = &response.statuses[0];
    assert_eq!(response.overall_code, status.code, "{response:?}");
    (Code::try_from(status.code).unwrap(), status.limit_remaining)
}

/// The value of the series `series` in the server's metrics.
async fn metric(server: &TestServer, series: &str) -> u64 {
    let (_, metrics) = server.get_text("/metrics").await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{series} ")))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

async fn charged_after_the_fact(backend: Backend) {
    let server = TestServer::start_text(backend, CONFIG).await;
    let alice = [("user", "alice")];
    // The request path asks whether anything remains (hits_addend 0, on
    // the descriptor or, left out, on the request): nothing is charged.
    for _ in 0..3 {
        assert_eq!(status(&server, &alice, Some(0), 0).await, (Code::Ok, 1000));
        assert_eq!(status(&server, &alice, None, 0).await, (Code::Ok, 1000));
    }
    // The stream-done call charges the response's usage: OK, what remains.
    assert_eq!(status(&server, &alice, Some(700), 0).await, (Code::Ok, 300));
    // More than remains is charged still, up to the overdraft (300 + 200):
    // nothing remains, and the answer is still OK (Envoy does not read it).
    assert_eq!(status(&server, &alice, Some(500), 0).await, (Code::Ok, 0));
    // The next request is refused.
    assert_eq!(
        status(&server, &alice, Some(0), 0).await,
        (Code::OverLimit, 0)
    );
    assert_eq!(status(&server, &alice, None, 0).await, (Code::OverLimit, 0));
    // Past the overdraft: unpaid, and reported.
    assert_eq!(status(&server, &alice, Some(100), 0).await, (Code::Ok, 0));
    assert_eq!(
        metric(
            &server,
            r#"tollgate_settle_units_total{policy="tokens",units="unpaid"}"#
        )
        .await,
        100
    );
    assert_eq!(
        metric(
            &server,
            r#"tollgate_settle_units_total{policy="tokens",units="charged"}"#
        )
        .await,
        // 700, then 500: the 300 left and the whole overdraft of 200.
        1200
    );
    // envoyproxy/ratelimit's statistics: every hit, within or over.
    let stat =
        |name: &str| format!(r#"ratelimit_service_rate_limit_{name}{{domain="llm",key1="user"}}"#);
    assert_eq!(metric(&server, &stat("total_hits")).await, 1300);
    assert_eq!(metric(&server, &stat("over_limit")).await, 100);
    // Another user is untouched.
    assert_eq!(
        status(&server, &[("user", "bob")], Some(0), 0).await,
        (Code::Ok, 1000)
    );

    // The request's own hits_addend, on a descriptor without one: charged
    // after the fact too (Envoy sends it from the filter state).
    let team = [("team", "blue")];
    assert_eq!(status(&server, &team, None, 60).await, (Code::Ok, 40));
    // Overdraft of the inline limit: its limit (100): 40 + 100 charged.
    assert_eq!(status(&server, &team, None, 500).await, (Code::Ok, 0));
    assert_eq!(status(&server, &team, None, 0).await, (Code::OverLimit, 0));

    // With nothing left at all, a charge is unpaid whole (the one-unit
    // reservation it is made of is refused: docs/ENVOY.md).
    assert_eq!(status(&server, &team, Some(5), 0).await, (Code::Ok, 0));

    // Several descriptors: a settle descriptor's charge never makes the
    // request over, a plain one still decides.
    let response = server
        .rls_client()
        .await
        .should_rate_limit(RateLimitRequest {
            domain: "llm".to_owned(),
            descriptors: vec![
                descriptor(&[("user", "carol")], Some(50)),
                descriptor(&[("plain", "x")], None),
            ],
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.overall_code, Code::Ok as i32, "{response:?}");
    assert_eq!(response.statuses[0].limit_remaining, 950);

    // Hits past what the store computes exactly: charged as the most it
    // can (the whole budget and its overdraft), the rest unpaid.
    let response = server
        .rls_client()
        .await
        .should_rate_limit(RateLimitRequest {
            domain: "llm".to_owned(),
            descriptors: vec![descriptor(&[("user", "erin")], Some(1 << 60))],
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.overall_code, Code::Ok as i32, "{response:?}");
    assert_eq!(
        status(&server, &[("user", "erin")], Some(0), 0).await,
        (Code::OverLimit, 0)
    );

    // POST /json is the same service.
    let (status, body) = server
        .post_json(
            "/json",
            r#"{"domain":"llm","descriptors":[{"entries":[{"key":"user","value":"dave"}],"hitsAddend":"250"}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["statuses"][0]["limitRemaining"], 750, "{body}");
}

#[tokio::test]
async fn charged_after_the_fact_on_the_memory_store() {
    charged_after_the_fact(Backend::memory()).await;
}

#[tokio::test]
async fn charged_after_the_fact_on_redis() {
    charged_after_the_fact(Backend::redis()).await;
}

/// Many stream-done calls at once against one user's budget: what is
/// charged never passes the limit plus the overdraft, and every hit is
/// either charged or reported unpaid.
async fn concurrent_charges_hold_the_budget(backend: Backend) {
    let server = std::sync::Arc::new(TestServer::start_text(backend, CONFIG).await);
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let server = std::sync::Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            for call in 0..10u64 {
                // 1 to 40 hits, spread over the calls.
                let hits = 1 + (task * 7 + call * 13) % 40;
                assert_eq!(
                    status(&server, &[("user", "crowd")], Some(hits), 0).await.0,
                    Code::Ok
                );
                sent += hits;
            }
            sent
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    // Each charge is one atomic step: its hits charged or unpaid.
    let charged = metric(
        &server,
        r#"tollgate_settle_units_total{policy="tokens",units="charged"}"#,
    )
    .await;
    let unpaid = metric(
        &server,
        r#"tollgate_settle_units_total{policy="tokens",units="unpaid"}"#,
    )
    .await;
    assert!(sent > 1200, "{sent} hits sent: the budget must be overrun");
    assert_eq!(charged + unpaid, sent);
    // Overrun: charged up to the limit and the whole overdraft, no further.
    assert_eq!(charged, 1000 + 200, "{charged} charged");
    // Spent: the next request is refused.
    assert_eq!(
        status(&server, &[("user", "crowd")], Some(0), 0).await.0,
        Code::OverLimit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_charges_hold_the_budget_on_the_memory_store() {
    concurrent_charges_hold_the_budget(Backend::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_charges_hold_the_budget_on_redis() {
    concurrent_charges_hold_the_budget(Backend::redis()).await;
}
