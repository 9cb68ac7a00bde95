//! `store.per_second`: a second store for every policy whose period is one
//! second (envoyproxy/ratelimit's `REDIS_PERSECOND`), on two real
//! redis-servers: which keys land where, a check across both stores (never
//! over the limits; the documented under-admission), resets, readiness,
//! metrics and a failure of one store degrading only its policies.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tollgate::{ManualClock, Mode, MultiDecision, PolicyRef, Store};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_server::grpc::RateLimitGrpc;
use tollgate_server::{App, Config, ConfigSource, ServerStore};
use tollgate_testkit::files::temp_file;
use tollgate_testkit::redis::RedisServer;

/// Policies on both stores, and Envoy descriptors of unit second and
/// minute; `extra` is added to `store:` (the per-second store inherits it).
fn config(main: &RedisServer, second: &RedisServer, extra: &str) -> String {
    format!(
        "store:
  kind: redis
  url: {}
  prefix: t
  on_failure: closed
  timeout: 1s
{extra}  per_second:
    kind: redis
    url: {}
policies:
  - name: second
    algorithm: fixed_window
    limit: 2
    period: 1s
  - name: millis
    algorithm: fixed_window
    limit: 2
    period: 1000ms
  - name: hour
    algorithm: fixed_window
    limit: 3
    period: 1h
domains:
  - domain: edge
    descriptors:
      - key: ip
        rate_limit: {{ unit: second, requests_per_unit: 10 }}
      - key: path
        rate_limit: {{ unit: minute, requests_per_unit: 10 }}
",
        main.url(),
        second.url(),
    )
}

async fn start(text: &str) -> Arc<App> {
    let file = temp_file("per-second.yaml", text);
    let source = ConfigSource {
        config: Some(file),
        ..ConfigSource::default()
    };
    Arc::new(App::start(source).await.unwrap())
}

async fn decide(app: &App, names: &[&str], key: &str, mode: Mode) -> MultiDecision {
    let loaded = app.current();
    let key = format!("http:{key}");
    app.decide(&loaded, names, key.as_bytes(), 1, mode, false)
        .await
        .unwrap()
}

async fn envoy(app: &Arc<App>, key: &str, value: &str) -> RateLimitResponse {
    let request = RateLimitRequest {
        domain: "edge".to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: key.to_owned(),
                value: value.to_owned(),
            }],
            ..RateLimitDescriptor::default()
        }],
        ..RateLimitRequest::default()
    };
    RateLimitGrpc::new(Arc::clone(app))
        .should_rate_limit(tonic::Request::new(request))
        .await
        .unwrap()
        .into_inner()
}

/// Redis's clock in whole seconds: which one-second window it is in.
fn redis_second(redis: &RedisServer) -> String {
    redis
        .cli(&["TIME"])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn keys(redis: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = redis
        .cli(&["--scan"])
        .lines()
        .map(str::to_owned)
        .filter(|k| !k.contains("tollgate-readyz"))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn per_second_policies_land_in_the_second_redis_and_the_others_in_the_first() {
    let (main, second) = (RedisServer::start(), RedisServer::start());
    let app = start(&config(&main, &second, "")).await;
    // A per-second key expires when its window ends: the keys are read
    // within the second of Redis's clock they were written in, and the
    // scenario made again on clean servers when a second ended while it ran.
    let mut attempts = 0;
    let (in_second, in_main) = loop {
        attempts += 1;
        let window = redis_second(&second);
        for name in ["second", "millis", "hour"] {
            assert!(decide(&app, &[name], "alice", Mode::Consume).await.allowed);
        }
        for (key, value) in [("ip", "10.0.0.1"), ("path", "/a")] {
            let response = envoy(&app, key, value).await;
            assert_eq!(response.overall_code, Code::Ok as i32, "{response:?}");
        }
        let found = (keys(&second), keys(&main));
        if redis_second(&second) == window {
            break found;
        }
        assert!(
            attempts < 5,
            "a second ended during each of {attempts} attempts"
        );
        second.cli(&["FLUSHALL"]);
        main.cli(&["FLUSHALL"]);
    };
    assert_eq!(
        in_second,
        [
            "t:{envoy:4:edge2:ip8:10.0.0.1}:envoy/edge/ip:fixed_window",
            "t:{http:alice}:millis:fixed_window",
            "t:{http:alice}:second:fixed_window",
        ]
    );
    assert_eq!(
        in_main,
        [
            "t:{envoy:4:edge4:path2:/a}:envoy/edge/path:fixed_window",
            "t:{http:alice}:hour:fixed_window",
        ]
    );
    // Every policy counts where it lives.
    let d = decide(&app, &["second", "hour"], "alice", Mode::Peek).await;
    assert_eq!(d.decisions[1].remaining, 2, "{d:?}");
}

/// Both stores with a test clock and no deny cache, so per-second windows
/// move only when the test says.
async fn app_on_clocks(main: &RedisServer, second: &RedisServer) -> (Arc<App>, ManualClock) {
    app_on_clocks_with(main, second, "", |options| options).await
}

/// [`app_on_clocks`] with `extra` in `store:` and `options` for both.
async fn app_on_clocks_with(
    main: &RedisServer,
    second: &RedisServer,
    extra: &str,
    options: fn(RedisOptions) -> RedisOptions,
) -> (Arc<App>, ManualClock) {
    let text = config(
        main,
        second,
        &format!("  deny_cache: {{ enabled: false }}\n{extra}"),
    );
    let config = Config::parse(&text, "t.yaml").unwrap();
    let clock = ManualClock::new(1_700_000_000_000_000);
    let connect = |redis: &RedisServer| {
        let url = redis.url();
        let clock = clock.clone();
        async move {
            let options = options(RedisOptions::default().prefix("t"));
            let store = RedisStore::connect(&url, options).await.unwrap();
            ServerStore::Redis(store.with_test_clock(clock))
        }
    };
    let (main_store, second_store) = (connect(main).await, connect(second).await);
    let app = App::with_stores(
        ConfigSource::default(),
        config,
        main_store,
        Some(second_store),
    );
    (Arc::new(app), clock)
}

#[tokio::test]
async fn a_check_across_both_stores_never_over_admits_and_may_under_admit() {
    let (main, second) = (RedisServer::start(), RedisServer::start());
    let (app, clock) = app_on_clocks(&main, &second).await;
    let both = ["second", "hour"];
    // second: 2/s; hour: 3/h.
    for expected in [(1, 2), (0, 1)] {
        let d = decide(&app, &both, "k", Mode::Consume).await;
        assert!(d.allowed, "{d:?}");
        let remaining = (d.decisions[0].remaining, d.decisions[1].remaining);
        assert_eq!(remaining, expected);
    }
    // The per-second store denies: the hour is looked at, not charged.
    let d = decide(&app, &both, "k", Mode::Consume).await;
    assert!(!d.allowed && !d.decisions[0].allowed && d.decisions[1].allowed);
    let hour = decide(&app, &["hour"], "k", Mode::Peek).await;
    assert_eq!(
        hour.decisions[0].remaining, 1,
        "a denied check charged the hour"
    );
    // A new second; the hour has one left, spent alone.
    clock.advance_us(1_000_000);
    assert!(decide(&app, &["hour"], "k", Mode::Consume).await.allowed);
    // Now the per-second store allows and charges, the main store denies:
    // the check is denied (never over the limits) and the per-second charge
    // stays (the documented under-admission, at most `cost` this second).
    let d = decide(&app, &both, "k", Mode::Consume).await;
    assert!(
        !d.allowed && d.decisions[0].allowed && !d.decisions[1].allowed,
        "{d:?}"
    );
    let second_left = decide(&app, &["second"], "k", Mode::Peek).await;
    assert_eq!(second_left.decisions[0].remaining, 1, "{second_left:?}");
    // Peeks of both change nothing.
    let d = decide(&app, &both, "k", Mode::Peek).await;
    assert_eq!((d.decisions[0].remaining, d.decisions[1].remaining), (1, 0));
    assert_eq!(
        decide(&app, &["second"], "k", Mode::Peek).await.decisions[0].remaining,
        1
    );
    // Over many checks of both at once, none is ever allowed past either
    // limit: the hour has none left.
    for _ in 0..5 {
        clock.advance_us(1_000_000);
        assert!(!decide(&app, &both, "k", Mode::Consume).await.allowed);
    }
}

#[tokio::test]
async fn a_reset_reaches_both_stores_and_their_deny_caches() {
    let (main, second) = (RedisServer::start(), RedisServer::start());
    let app = start(&config(&main, &second, "")).await;
    // Both feeds subscribed before the reset is published.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .stores()
        .any(|s| s.stats().invalidation_feed_live != Some(true))
    {
        assert!(Instant::now() < deadline, "the reset feeds never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loaded = app.current();
    // The per-second key expires when its window ends: it is looked for
    // within the second of Redis's clock it was written in, and written
    // again on clean servers when a second ended meanwhile (as above).
    let mut attempts = 0;
    let found = loop {
        attempts += 1;
        let window = redis_second(&second);
        assert!(
            decide(&app, &["second", "hour"], "bob", Mode::Consume)
                .await
                .allowed
        );
        let found = (keys(&main).len(), keys(&second).len());
        if redis_second(&second) == window {
            break found;
        }
        assert!(
            attempts < 5,
            "a second ended during each of {attempts} attempts"
        );
        second.cli(&["FLUSHALL"]);
        main.cli(&["FLUSHALL"]);
    };
    assert_eq!(found, (1, 1));
    let refs: Vec<PolicyRef<'_>> = ["second", "hour"]
        .iter()
        .map(|name| PolicyRef {
            name,
            policy: loaded.limiter.policy(name).unwrap(),
        })
        .collect();
    app.routed_store().reset(b"http:bob", &refs).await.unwrap();
    assert_eq!(keys(&main), Vec::<String>::new());
    assert_eq!(keys(&second), Vec::<String>::new());
    // Each store published its notice, and its own feed delivered it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.stores().any(|s| s.stats().invalidations == 0) {
        assert!(Instant::now() < deadline, "a reset notice never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failing_store_degrades_only_the_policies_on_it() {
    let (main, mut second) = (RedisServer::start(), RedisServer::start());
    let app = start(&config(&main, &second, "")).await;
    app.ready().await.unwrap();
    second.kill();
    // Per-second policies: decided by on_failure (closed), marked degraded.
    let d = decide(&app, &["second"], "carol", Mode::Consume).await;
    assert!(!d.allowed && d.decisions[0].degraded, "{d:?}");
    let response = envoy(&app, "ip", "10.0.0.2").await;
    assert_eq!(
        response.overall_code,
        Code::OverLimit as i32,
        "{response:?}"
    );
    // The others: decided by the main store, as usual.
    for _ in 0..3 {
        let d = decide(&app, &["hour"], "carol", Mode::Consume).await;
        assert!(d.allowed && !d.decisions[0].degraded, "{d:?}");
    }
    assert!(
        !decide(&app, &["hour"], "carol", Mode::Consume)
            .await
            .allowed
    );
    let response = envoy(&app, "path", "/b").await;
    assert_eq!(response.overall_code, Code::Ok as i32, "{response:?}");
    // Readiness names the store that fails.
    let not_ready = app.ready().await.unwrap_err();
    assert!(not_ready.starts_with("per_second store: "), "{not_ready}");
    // Metrics: one series per store.
    let metrics = app.render_metrics();
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value(r#"tollgate_store_errors_total{store="main"}"#), 0);
    assert!(value(r#"tollgate_store_errors_total{store="per_second"}"#) >= 1);
    assert_eq!(value(r#"tollgate_circuit_breaker_state{store="main"}"#), 0);
    assert!(metrics.contains(r#"tollgate_memory_store_keys{store="per_second_local"}"#));
    // Back: the probe closes its breaker, and readiness follows.
    second.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        app.probe_store(false).await;
        if app.ready().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the per-second store never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = decide(&app, &["second"], "carol", Mode::Consume).await;
    assert!(d.allowed && !d.decisions[0].degraded, "{d:?}");
}

#[tokio::test]
async fn without_a_per_second_section_one_store_holds_everything() {
    let main = RedisServer::start();
    let text = format!(
        "store:\n  kind: redis\n  url: {}\n  prefix: t\n  timeout: 1s\npolicies:\n  - name: second\n    algorithm: fixed_window\n    limit: 2\n    period: 1s\n",
        main.url()
    );
    let app = start(&text).await;
    assert!(app.per_second_store().is_none());
    // Decided in Redis (a default 10 ms timeout can pass on a loaded
    // machine, and an `open` decision writes nothing).
    let d = decide(&app, &["second"], "dave", Mode::Consume).await;
    assert!(d.allowed && !d.decisions[0].degraded, "{d:?}");
    assert_eq!(keys(&main), ["t:{http:dave}:second:fixed_window"]);
    // Unlabelled metrics, as they always were.
    assert!(
        app.render_metrics()
            .contains("\ntollgate_store_errors_total 0\n")
    );
}

#[tokio::test]
async fn per_second_envoy_counters_keep_envoyproxys_layout_on_the_second_redis() {
    let (main, second) = (RedisServer::start(), RedisServer::start());
    let (app, _clock) = app_on_clocks_with(
        &main,
        &second,
        "  key_layout: envoy\n  envoy_prefix: rl_\n",
        |options| options.envoy_prefix("rl_"),
    )
    .await;
    for (key, value) in [("ip", "10.0.0.1"), ("path", "/a")] {
        let response = envoy(&app, key, value).await;
        assert_eq!(response.overall_code, Code::Ok as i32, "{response:?}");
    }
    // The clock is 1_700_000_000 s; its minute started at 1_699_999_980.
    assert_eq!(keys(&second), ["rl_edge_ip_10.0.0.1_1700000000"]);
    assert_eq!(keys(&main), ["rl_edge_path_/a_1699999980"]);
    assert_eq!(second.cli(&["GET", "rl_edge_ip_10.0.0.1_1700000000"]), "1");
}
