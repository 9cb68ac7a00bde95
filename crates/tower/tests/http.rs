//! End to end: real axum servers on 127.0.0.1:0, a real HTTP client, a
//! memory store on a manual clock (so every field value is exact).

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use support::{START_US, limiter};
use tollgate::{Limiter, ManualClock, MemoryStore, PolicyRef, Store, StoreError};
use tollgate_testkit::http::Reply;
use tollgate_testkit::serve::Served;
use tollgate_tower::key::{Cidr, ClientIp, HeaderKey, Key, ProxyHeader, RouteParam};
use tollgate_tower::{MissingKey, RateLimitLayer, ResponseFormat, StoreFailure};

fn hello() -> axum::routing::MethodRouter {
    get(|| async { "hello" })
}

/// `/` behind one layer with `policy`, configured by `configure`.
fn app<S: Store>(
    limiter: Limiter<S>,
    policy: &str,
    configure: impl FnOnce(
        tollgate_tower::RateLimitLayerBuilder<S>,
    ) -> tollgate_tower::RateLimitLayerBuilder<S>,
) -> Router {
    let layer = configure(RateLimitLayer::builder(limiter).policy(policy))
        .build()
        .expect("layer");
    Router::new().route("/", hello()).layer(layer)
}

#[tokio::test]
async fn allowed_and_denied_responses_carry_exact_fields_and_bodies() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 3/1m")]);
    let server = Served::router(app(limiter, "api", |b| b)).await;

    let first = server.get("/").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "hello");
    assert_eq!(
        first.header("ratelimit-policy").as_deref(),
        Some(r#""api";q=3;w=60"#)
    );
    assert_eq!(
        first.header("ratelimit").as_deref(),
        Some(r#""api";r=2;t=60"#)
    );

    clock.advance(Duration::from_millis(500));
    assert_eq!(
        server.get("/").await.header("ratelimit").as_deref(),
        Some(r#""api";r=1;t=60"#)
    );
    assert_eq!(
        server.get("/").await.header("ratelimit").as_deref(),
        Some(r#""api";r=0;t=60"#)
    );

    // The oldest entry leaves the window 59.5 s from now.
    let denied = server.get("/").await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after").as_deref(), Some("60"));
    assert_eq!(
        denied.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        denied.body,
        r#"{"error":"rate_limited","policy":"api","retry_after_ms":59500}"#
    );
    assert_eq!(
        denied.header("ratelimit-policy").as_deref(),
        Some(r#""api";q=3;w=60"#)
    );
    assert_eq!(
        denied.header("ratelimit").as_deref(),
        Some(r#""api";r=0;t=60"#)
    );
    // Legacy fields are off by default.
    assert_eq!(denied.header("x-ratelimit-limit"), None);

    clock.advance(Duration::from_millis(59_500));
    let again = server.get("/").await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.header("ratelimit").as_deref(),
        Some(r#""api";r=0;t=60"#)
    );
}

#[tokio::test]
async fn retry_after_rounds_up_and_is_never_zero() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 1/1s")]);
    let server = Served::router(app(limiter, "api", |b| b)).await;
    assert_eq!(server.get("/").await.status, 200);
    clock.advance(Duration::from_micros(999_999));
    let denied = server.get("/").await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        denied.body,
        r#"{"error":"rate_limited","policy":"api","retry_after_ms":1}"#
    );
    clock.advance(Duration::from_micros(1));
    assert_eq!(server.get("/").await.status, 200);
}

#[tokio::test]
async fn a_request_that_can_never_pass_has_no_retry_after() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 3/1m")]);
    let server = Served::router(app(limiter, "api", |b| b.cost(5))).await;
    let denied = server.get("/").await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after"), None);
    assert_eq!(
        denied.body,
        r#"{"error":"rate_limited","policy":"api","retry_after_ms":null}"#
    );
    assert_eq!(
        denied.header("ratelimit").as_deref(),
        Some(r#""api";r=3;t=0"#)
    );
}

#[tokio::test]
async fn several_policies_are_checked_together_and_all_reported() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(
        &clock,
        &[
            ("per_second", "fixed_window 2/s"),
            ("per_minute", "sliding_log 5/1m"),
        ],
    );
    let layer = RateLimitLayer::builder(limiter)
        .policies(["per_second", "per_minute"])
        .build()
        .expect("layer");
    let server = Served::router(Router::new().route("/", hello()).route_layer(layer)).await;

    let policy = r#""per_second";q=2;w=1, "per_minute";q=5;w=60"#;
    let first = server.get("/").await;
    assert_eq!(first.header("ratelimit-policy").as_deref(), Some(policy));
    assert_eq!(
        first.header("ratelimit").as_deref(),
        Some(r#""per_second";r=1;t=1, "per_minute";r=4;t=60"#)
    );
    assert_eq!(server.get("/").await.status, 200);

    // The per-second policy denies; nothing is charged to the other.
    let denied = server.get("/").await;
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.body,
        r#"{"error":"rate_limited","policy":"per_second","retry_after_ms":1000}"#
    );
    assert_eq!(denied.header("retry-after").as_deref(), Some("1"));
    assert_eq!(denied.header("ratelimit-policy").as_deref(), Some(policy));
    assert_eq!(
        denied.header("ratelimit").as_deref(),
        Some(r#""per_second";r=0;t=1, "per_minute";r=3;t=60"#)
    );

    clock.advance(Duration::from_secs(1));
    let next = server.get("/").await;
    assert_eq!(next.status, 200);
    assert_eq!(
        next.header("ratelimit").as_deref(),
        Some(r#""per_second";r=1;t=1, "per_minute";r=2;t=60"#)
    );
}

#[tokio::test]
async fn routes_with_their_own_layers_have_independent_budgets() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(
        &clock,
        &[("a", "sliding_log 1/1m"), ("b", "sliding_log 2/1m")],
    );
    let layer = |policy: &str| {
        RateLimitLayer::builder(limiter.clone())
            .policy(policy)
            .build()
            .expect("layer")
    };
    let app = Router::new()
        .route("/a", hello().route_layer(layer("a")))
        .route("/b", hello().route_layer(layer("b")))
        .route("/free", hello());
    let server = Served::router(app).await;

    assert_eq!(server.get("/a").await.status, 200);
    let denied = server.get("/a").await;
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.header("ratelimit").as_deref(),
        Some(r#""a";r=0;t=60"#)
    );

    let b = server.get("/b").await;
    assert_eq!(b.status, 200);
    assert_eq!(
        b.header("ratelimit-policy").as_deref(),
        Some(r#""b";q=2;w=60"#)
    );
    assert_eq!(b.header("ratelimit").as_deref(), Some(r#""b";r=1;t=60"#));

    let free = server.get("/free").await;
    assert_eq!(free.status, 200);
    assert_eq!(free.header("ratelimit"), None);
}

#[tokio::test]
async fn a_route_map_follows_the_matched_path_and_route_parameters() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(
        &clock,
        &[
            ("per_user", "sliding_log 1/1m"),
            ("login", "token_bucket 5/1m burst 5"),
        ],
    );
    let layer = RateLimitLayer::builder(limiter)
        .route("/users/{id}", ["per_user"])
        .route("/login", ["login"])
        .key(RouteParam::new("id"))
        // `/login` has no `{id}`: charge the client's IP there.
        .on_missing_key(MissingKey::peer_ip())
        .build()
        .expect("layer");
    let app = Router::new()
        .route("/users/{id}", hello())
        .route("/login", hello())
        .route("/health", hello())
        .layer(layer);
    let server = Served::router(app).await;

    let user1 = server.get("/users/1").await;
    assert_eq!(user1.status, 200);
    assert_eq!(
        user1.header("ratelimit").as_deref(),
        Some(r#""per_user";r=0;t=60"#)
    );
    assert_eq!(server.get("/users/1").await.status, 429);
    // Percent-encoded, the same user: the same key.
    assert_eq!(server.get("/users/%31").await.status, 429);
    assert_eq!(server.get("/users/2").await.status, 200);

    let login = server.get("/login").await;
    assert_eq!(login.status, 200);
    assert_eq!(
        login.header("ratelimit-policy").as_deref(),
        Some(r#""login";q=5;w=60"#)
    );
    assert_eq!(
        login.header("ratelimit").as_deref(),
        Some(r#""login";r=4;t=12"#)
    );

    let health = server.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("ratelimit-policy"), None);
}

/// A literal path in the map names a request however its path is
/// percent-encoded: axum hands `/files/%72eport.pdf` to the handler as
/// `report.pdf`, so encoding a character must not escape the policy.
#[tokio::test]
async fn a_literal_route_is_not_escaped_by_percent_encoding_its_path() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(
        &clock,
        &[
            ("report", "sliding_log 1/1m"),
            ("files", "sliding_log 100/1m"),
        ],
    );
    let layer = RateLimitLayer::builder(limiter)
        .policy("files")
        .route("/files/report.pdf", ["report"])
        .build()
        .expect("layer");
    let name = get(|axum::extract::Path(name): axum::extract::Path<String>| async move { name });
    let app = Router::new().route("/files/{name}", name).layer(layer);
    let server = Served::router(app).await;

    let first = server.get("/files/report.pdf").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("ratelimit-policy").as_deref(),
        Some(r#""report";q=1;w=60"#)
    );
    for encoded in [
        "/files/%72eport.pdf",
        "/files/report%2Epdf",
        "/files/%72%65port.pdf",
    ] {
        let reply = server.get(encoded).await;
        assert_eq!(reply.status, 429, "{encoded}: {}", reply.body);
    }
    // Another file is the default policy's.
    let other = server.get("/files/%61.pdf").await;
    assert_eq!((other.status, other.body.as_str()), (200, "a.pdf"));
    assert_eq!(
        other.header("ratelimit-policy").as_deref(),
        Some(r#""files";q=100;w=60"#)
    );
}

#[tokio::test]
async fn stacked_layers_each_add_their_list_members() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(
        &clock,
        &[
            ("route", "sliding_log 1/1m"),
            ("global", "sliding_log 100/1m"),
        ],
    );
    let layer = |policy: &str| {
        RateLimitLayer::builder(limiter.clone())
            .policy(policy)
            .build()
            .expect("layer")
    };
    let app = Router::new()
        .route("/", hello().route_layer(layer("route")))
        .layer(layer("global"));
    let server = Served::router(app).await;
    let first = server.get("/").await;
    assert_eq!(
        first.header("ratelimit-policy").as_deref(),
        Some(r#""route";q=1;w=60, "global";q=100;w=60"#)
    );
    assert_eq!(
        first.header("ratelimit").as_deref(),
        Some(r#""route";r=0;t=60, "global";r=99;t=60"#)
    );
    // The route's layer denies; the global one had already charged.
    let denied = server.get("/").await;
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.header("ratelimit").as_deref(),
        Some(r#""route";r=0;t=60, "global";r=98;t=60"#)
    );
}

#[tokio::test]
async fn every_clone_and_every_layer_of_one_limiter_shares_the_budget() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("shared", "sliding_log 10/1m")]);
    let layer = || {
        RateLimitLayer::builder(limiter.clone())
            .policy("shared")
            .build()
            .expect("layer")
    };
    let app = Router::new()
        .route("/x", hello().route_layer(layer()))
        .route("/y", hello().route_layer(layer()));
    let server = std::sync::Arc::new(Served::router(app).await);

    // 30 concurrent requests: axum clones the service for each connection.
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let server = std::sync::Arc::clone(&server);
            tokio::spawn(async move { server.get("/x").await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 10);
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 20);
    assert_eq!(server.get("/y").await.status, 429);
}

#[tokio::test]
async fn problem_details_format() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 1/1m")]);
    let server = Served::router(app(limiter, "api", |b| {
        b.response_format(ResponseFormat::ProblemJson)
    }))
    .await;
    assert_eq!(server.get("/").await.status, 200);
    let denied = server.get("/").await;
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.header("content-type").as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(
        denied.body,
        r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"rate limit of policy \"api\" exceeded; retry in 60000 ms","policy":"api","retry_after_ms":60000}"#
    );
    let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json");
    assert_eq!(body["status"], 429);
}

#[tokio::test]
async fn a_custom_response_function_gets_the_fields_and_retry_after() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 1/1m")]);
    let format = ResponseFormat::custom(|denial| {
        let retry = denial.retry_after.map(|r| r.as_secs()).unwrap_or_default();
        let mut response = Response::new(Bytes::from(format!(
            "slow down: {} for {}s, key {}",
            denial.policy, retry, denial.key
        )));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response
    });
    let server = Served::router(app(limiter, "api", |b| b.response_format(format))).await;
    assert_eq!(server.get("/").await.status, 200);
    let denied = server.get("/").await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.body, "slow down: api for 60s, key ip:127.0.0.1");
    assert_eq!(denied.header("retry-after").as_deref(), Some("60"));
    assert_eq!(
        denied.header("ratelimit").as_deref(),
        Some(r#""api";r=0;t=60"#)
    );
}

#[tokio::test]
async fn legacy_fields_when_asked_for() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(
        &clock,
        &[("api", "sliding_log 3/1m"), ("hourly", "sliding_log 10/1h")],
    );
    let layer = RateLimitLayer::builder(limiter)
        .policies(["hourly", "api"])
        .legacy_headers(true)
        .build()
        .expect("layer");
    let server = Served::router(Router::new().route("/", hello()).layer(layer)).await;
    let first = server.get("/").await;
    // The most constrained policy: fewest remaining.
    assert_eq!(first.header("x-ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(first.header("x-ratelimit-remaining").as_deref(), Some("2"));
    assert_eq!(first.header("x-ratelimit-reset").as_deref(), Some("60"));
    assert!(first.header("ratelimit").is_some());
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_untrusted_peers_and_honoured_from_trusted_proxies() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 1/1m")]);
    let behind = |trusted: &str| {
        let trusted: Cidr = trusted.parse().expect("cidr");
        let client = ClientIp::new(ProxyHeader::XForwardedFor, [trusted]);
        app(limiter.clone(), "api", |b| b.key(client))
    };

    // The test client (127.0.0.1) is not a trusted proxy: its claims are ignored.
    let untrusting = Served::router(behind("10.0.0.0/8")).await;
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    // Each request in turn: its X-Forwarded-For and the status it gets.
    async fn expect(server: &Served, requests: &[(&'static str, u16)]) {
        for &(forwarded, status) in requests {
            let reply = server
                .get_with("/", &[("x-forwarded-for", forwarded)])
                .await;
            assert_eq!(reply.status, status, "x-forwarded-for: {forwarded}");
        }
    }
    expect(&untrusting, &[("198.51.100.1", 200), ("198.51.100.2", 429)]).await;

    // Now it is trusted: each forwarded client has its own budget.
    let trusting = Served::router(behind("127.0.0.1/32")).await;
    expect(
        &trusting,
        &[
            ("198.51.100.1", 200),
            ("198.51.100.2", 200),
            ("198.51.100.1", 429),
            // A client prepending a fake address is still charged as itself.
            ("203.0.113.50, 198.51.100.2", 429),
            // IPv6 clients share a key per /64.
            ("2001:db8:1:2::1", 200),
            ("2001:db8:1:2:ffff::2", 429),
            ("2001:db8:1:3::1", 200),
        ],
    )
    .await;
    // An unknown hop right of the client: no key, 400 by default, never 500.
    let unknown = trusting.get_with("/", &xff("198.51.100.9, unknown")).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body, r#"{"error":"missing_key"}"#);
}

#[tokio::test]
async fn shadow_mode_never_rejects_but_reports_and_charges() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 1/1m")]);
    let server = Served::router(app(limiter.clone(), "api", |b| b.shadow(true))).await;
    for _ in 0..3 {
        let reply = server.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("ratelimit").as_deref(),
            Some(r#""api";r=0;t=60"#)
        );
        assert_eq!(reply.header("retry-after"), None);
    }
    // The charge is real: an enforcing layer on the same limiter denies.
    let enforcing = Served::router(app(limiter, "api", |b| b)).await;
    assert_eq!(enforcing.get("/").await.status, 429);
}

#[tokio::test]
async fn allowlisted_keys_bypass_the_limit() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 1/1m")]);
    let me = Key::for_ip("127.0.0.1".parse().expect("ip"), 64);
    let server = Served::router(app(limiter, "api", |b| b.allow_keys([me]))).await;
    for _ in 0..3 {
        let reply = server.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit"), None);
    }
}

/// A cost function prices each request from its head: the charge follows
/// it, 0 is free (no check, no fields), and a price above what the policy
/// can ever grant is a 429 with no Retry-After.
#[tokio::test]
async fn a_cost_function_prices_each_request() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("items", "fixed_window 10/1h")]);
    let server = Served::router(app(limiter, "items", |b| {
        b.cost_fn(|request| {
            request
                .headers
                .get("x-items")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        })
    }))
    .await;
    let items = |n: &'static str| [("x-items", n)];
    // `r` of the RateLimit field (the window's end depends on the start).
    let remaining = |reply: &Reply| -> Option<u64> {
        let field = reply.header("ratelimit")?;
        field
            .split(';')
            .find_map(|p| p.strip_prefix("r=")?.parse().ok())
    };
    let reply = server.get_with("/", &items("4")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(remaining(&reply), Some(6));
    let free = server.get_with("/", &items("0")).await;
    assert_eq!(free.status, 200);
    assert_eq!(free.header("ratelimit"), None, "free: not checked");
    assert_eq!(
        remaining(&server.get("/").await),
        Some(5),
        "no header: the function's default of 1"
    );
    let too_many = server.get_with("/", &items("6")).await;
    assert_eq!(too_many.status, 429);
    assert!(too_many.header("retry-after").is_some());
    let never = server.get_with("/", &items("11")).await;
    assert_eq!(never.status, 429);
    assert_eq!(
        never.header("retry-after"),
        None,
        "no wait lets 11 of 10 through"
    );
    let rest = server.get_with("/", &items("5")).await;
    assert_eq!(rest.status, 200, "denials charged nothing");
    assert_eq!(remaining(&rest), Some(0));
}

#[tokio::test]
async fn missing_keys_are_rejected_or_fall_back_or_skip_as_configured() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 1/1m")]);
    let by_api_key = |missing: MissingKey| {
        let key = HeaderKey::new(http::HeaderName::from_static("x-api-key"));
        app(limiter.clone(), "api", |b| {
            b.key(key).on_missing_key(missing)
        })
    };

    let bad_request = Served::router(by_api_key(MissingKey::BadRequest)).await;
    let reply = bad_request.get("/").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body, r#"{"error":"missing_key"}"#);
    assert_eq!(reply.header("ratelimit"), None);
    let keyed = bad_request.get_with("/", &[("x-api-key", "k1")]).await;
    assert_eq!(keyed.status, 200);
    assert_eq!(
        keyed.header("ratelimit").as_deref(),
        Some(r#""api";r=0;t=60"#)
    );

    let challenge = HeaderValue::from_static("ApiKey");
    let unauthorized = Served::router(by_api_key(MissingKey::Unauthorized(Some(challenge)))).await;
    let reply = unauthorized.get("/").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate").as_deref(), Some("ApiKey"));
    assert_eq!(reply.body, r#"{"error":"missing_key"}"#);

    // Without a key, the peer IP; an API key spelled like that IP is another key.
    let fallback = Served::router(by_api_key(MissingKey::peer_ip())).await;
    assert_eq!(fallback.get("/").await.status, 200);
    assert_eq!(fallback.get("/").await.status, 429);
    let spelled = fallback.get_with("/", &[("x-api-key", "127.0.0.1")]).await;
    assert_eq!(spelled.status, 200);

    let skip = Served::router(by_api_key(MissingKey::Skip)).await;
    for _ in 0..3 {
        let reply = skip.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit"), None);
    }
}

#[tokio::test]
async fn a_server_without_connect_info_answers_400_not_500() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "sliding_log 1/1m")]);
    let server = Served::router_without_connect_info(app(limiter, "api", |b| b)).await;
    let reply = server.get("/").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body, r#"{"error":"missing_key"}"#);
}

#[tokio::test]
async fn a_leaky_bucket_delays_then_answers_429_beyond_the_maximum_wait() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("shape", "leaky_bucket 10/s burst 4")]);
    let server = Served::router(app(limiter, "shape", |b| {
        b.max_delay(Duration::from_millis(250))
    }))
    .await;

    // The store's clock stands still: queued requests wait 0, 100, 200 ms.
    for expected_ms in [0, 100, 200] {
        let started = Instant::now();
        let reply = server.get("/").await;
        let waited = started.elapsed();
        assert_eq!(reply.status, 200);
        assert!(waited >= Duration::from_millis(expected_ms), "{waited:?}");
        assert!(
            waited < Duration::from_millis(expected_ms + 200),
            "{waited:?}"
        );
    }
    // The fourth would wait 300 ms: refused at once. A retry waits no longer
    // than 250 ms after 300 - 250 + 100 (its own place) = 150 ms.
    let started = Instant::now();
    let refused = server.get("/").await;
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        refused.body,
        r#"{"error":"rate_limited","policy":"shape","retry_after_ms":150}"#
    );
    assert_eq!(
        refused.header("ratelimit").as_deref(),
        Some(r#""shape";r=0;t=1"#)
    );
    // The queue is full now: the store itself denies.
    let full = server.get("/").await;
    assert_eq!(full.status, 429);
    assert_eq!(
        full.body,
        r#"{"error":"rate_limited","policy":"shape","retry_after_ms":100}"#
    );
}

#[tokio::test]
async fn shadow_mode_does_not_delay() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("shape", "leaky_bucket 1/s burst 3")]);
    let server = Served::router(app(limiter, "shape", |b| b.shadow(true))).await;
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(server.get("/").await.status, 200);
    }
    assert!(started.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn a_key_longer_than_the_limiter_accepts_is_400() {
    let limiter = Limiter::builder(MemoryStore::new())
        .policy("api", "10/s".parse().expect("policy"))
        .max_key_len(8)
        .build();
    let server = Served::router(app(limiter, "api", |b| b)).await;
    let reply = server.get("/").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body, r#"{"error":"key_too_long"}"#);
}

/// A store that is down: what a Redis outage looks like to the layer.
struct DownStore;

impl Store for DownStore {
    async fn apply(&self, _check: tollgate::Check<'_>) -> Result<tollgate::Decisions, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }

    async fn reset(&self, _key: &[u8], _policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

#[tokio::test]
async fn a_failing_store_lets_requests_through_or_answers_503() {
    let down = || {
        Limiter::builder(DownStore)
            .policy("api", "10/s".parse().expect("policy"))
            .build()
    };
    let open = Served::router(app(down(), "api", |b| b)).await;
    let reply = open.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "hello");
    assert_eq!(reply.header("ratelimit"), None);

    let closed = Served::router(app(down(), "api", |b| {
        b.on_store_failure(StoreFailure::Deny)
    }))
    .await;
    let reply = closed.get("/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, r#"{"error":"rate_limiter_unavailable"}"#);
}

#[test]
fn configuration_mistakes_are_found_when_building() {
    use tollgate_tower::ConfigError;
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("api", "10/s"), ("café", "10/s")]);
    let build = |b: tollgate_tower::RateLimitLayerBuilder<MemoryStore>| b.build().err();
    let builder = || RateLimitLayer::builder(limiter.clone());
    assert_eq!(build(builder()), Some(ConfigError::NoPolicy));
    assert_eq!(
        build(builder().policy("nope")),
        Some(ConfigError::UnknownPolicy("nope".into()))
    );
    assert_eq!(
        build(builder().policy("café")),
        Some(ConfigError::PolicyName("café".into()))
    );
    assert_eq!(
        build(builder().policies(["api", "api"])),
        Some(ConfigError::DuplicatePolicy("api".into()))
    );
    assert_eq!(
        build(builder().policy("api").cost(0)),
        Some(ConfigError::ZeroCost)
    );
    assert_eq!(
        build(builder().route("/x", Vec::<String>::new())),
        Some(ConfigError::EmptyRoute("/x".into()))
    );
    assert!(build(builder().route("/x", ["api"])).is_none());
}

/// What an authentication middleware leaves in the extensions.
#[derive(Clone)]
struct User {
    id: u64,
}

#[tokio::test]
async fn an_authenticated_identity_is_charged_per_user() {
    use axum::extract::Request;
    use axum::middleware::{Next, from_fn};
    use tollgate_tower::key::Identity;

    // Toy authentication: `authorization: user <id>`.
    async fn authenticate(mut request: Request, next: Next) -> axum::response::Response {
        let user = request
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("user "))
            .and_then(|id| id.parse().ok())
            .map(|id| User { id });
        if let Some(user) = user {
            request.extensions_mut().insert(user);
        }
        next.run(request).await
    }

    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("per_user", "sliding_log 1/1m")]);
    let layer = RateLimitLayer::builder(limiter)
        .policy("per_user")
        .key(Identity::new(|user: &User| user.id.to_string()))
        .on_missing_key(MissingKey::Unauthorized(None))
        .build()
        .expect("layer");
    // Authentication runs first: it is added after (outside) the limit.
    let app = Router::new()
        .route("/", hello())
        .layer(layer)
        .layer(from_fn(authenticate));
    let server = Served::router(app).await;

    let as_user = |id: &'static str| [("authorization", id)];
    assert_eq!(server.get_with("/", &as_user("user 1")).await.status, 200);
    assert_eq!(server.get_with("/", &as_user("user 1")).await.status, 429);
    assert_eq!(server.get_with("/", &as_user("user 2")).await.status, 200);
    let anonymous = server.get("/").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), None);
}

/// With Redis killed, `Resilient` (failure mode `open`) lets the request
/// through marked degraded; the layer says so in `Tollgate-Degraded` when
/// asked to, and never answers 500.
#[tokio::test]
async fn degraded_decisions_are_reported_when_redis_is_down() {
    use axum::routing::get;
    use tollgate::{Limiter, ResilienceOptions, Resilient};
    use tollgate_redis::{RedisOptions, RedisStore};
    use tollgate_tower::RateLimitLayer;
    use tollgate_tower::key::PeerIp;

    let mut redis = tollgate_testkit::redis::RedisServer::start();
    let store = RedisStore::connect(&redis.url(), RedisOptions::default())
        .await
        .expect("connect");
    let limiter = Limiter::builder(Resilient::new(store, ResilienceOptions::default()))
        .policy("api", "fixed_window 10/1m".parse().expect("valid"))
        .build();
    let app = |report: bool| {
        let layer = RateLimitLayer::builder(limiter.clone())
            .policy("api")
            .key(PeerIp::new())
            .degraded_header(report)
            .build()
            .expect("layer");
        axum::Router::new().route("/", get(|| async { "ok" }).route_layer(layer))
    };
    let (reporting, silent) = (
        Served::router(app(true)).await,
        Served::router(app(false)).await,
    );
    let healthy = reporting.get("/").await;
    assert_eq!(
        (healthy.status, healthy.header("tollgate-degraded")),
        (200, None)
    );
    redis.kill();
    let down = reporting.get("/").await;
    assert_eq!(down.status, 200, "failure mode open allows");
    assert_eq!(down.header("tollgate-degraded").as_deref(), Some("true"));
    let quiet = silent.get("/").await;
    assert_eq!(
        (quiet.status, quiet.header("tollgate-degraded")),
        (200, None)
    );
}

#[tokio::test]
async fn a_leased_policy_behind_the_layer_is_served_from_leases_and_exact() {
    use tollgate::{Lease, Policy, ResilienceOptions, Resilient};
    let clock = ManualClock::new(START_US);
    let store = Resilient::new(
        MemoryStore::with_clock(clock.clone()),
        ResilienceOptions::default().clock(clock.clone()),
    );
    // The one line that turns leasing on: the policy's lease.
    let policy = "fixed_window 200/1h"
        .parse::<Policy>()
        .expect("valid")
        .with_lease(Lease::new(20, Duration::from_secs(60)).expect("valid"))
        .expect("leases");
    let limiter = Limiter::builder(store).policy("api", policy).build();
    let server = Served::router(app(limiter.clone(), "api", |b| b)).await;
    let mut ok = 0;
    for _ in 0..300 {
        clock.advance(Duration::from_micros(10));
        let reply = server.get("/").await;
        ok += usize::from(reply.status == 200);
        assert!(
            reply.status == 200 || reply.status == 429,
            "{}",
            reply.status
        );
    }
    assert_eq!(ok, 200, "exactly the limit");
    let leases = limiter.store().stats().leases;
    assert!(leases.taken > 0, "{leases:?}");
    assert!(
        limiter.store().stats().calls < 100,
        "{} store calls for 300 requests",
        limiter.store().stats().calls
    );
}

#[tokio::test]
async fn the_layer_honours_an_override_of_the_key_it_charges() {
    use std::sync::Arc;
    use tollgate::overrides::{OverrideLimit, Overrides};
    let clock = ManualClock::new(START_US);
    let limiter = Limiter::builder(MemoryStore::with_clock(clock.clone()))
        .policy("api", "fixed_window 2/1m".parse().expect("valid"))
        .overrides(Arc::new(Overrides::with_clock(clock.clone())))
        .build();
    let server = Served::router(app(limiter.clone(), "api", |b| b)).await;
    // The layer charges the peer's address: name that key, as the layer
    // builds it, and give it 5.
    let key = Key::for_ip("127.0.0.1".parse().expect("ip"), 64);
    limiter
        .set_override(
            "api",
            &key,
            OverrideLimit::Policy("fixed_window 5/1m".parse().expect("valid")),
            None,
        )
        .expect("set");
    let mut ok = 0;
    for _ in 0..8 {
        ok += usize::from(server.get("/").await.status == 200);
    }
    assert_eq!(ok, 5, "the override's limit, with no change to the layer");
}
