//! Unit tests of the configuration: the demo and the issue's example parse,
//! settings and their defaults, and every rejected value with its file,
//! line and field.

use std::time::Duration;

use tollgate::resilience;

use super::*;

fn error(text: &str) -> ConfigError {
    Config::parse(text, "t.yaml").expect_err("should be rejected")
}

/// Each `(text, line, expected)`: `text` is refused at `t.yaml:<line>:`
/// with a message containing `expected`. Every case is checked before the
/// assertion, which lists each that failed.
fn assert_refused_where_written(cases: &[(&str, usize, &str)]) {
    let mut wrong = Vec::new();
    for (text, line, expected) in cases {
        let message = error(text).to_string();
        if !message.contains(expected) || !message.starts_with(&format!("t.yaml:{line}:")) {
            wrong.push(format!(
                "{text:?}: expected line {line} and `{expected}`, got `{message}`"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_demo_configuration_is_valid() {
    let config = Config::demo().unwrap();
    assert_eq!(config.policies.len(), 3);
    assert_eq!(config.server.http, DEFAULT_HTTP.parse().unwrap());
    assert!(config.domains.contains_key("edge"));
}

#[test]
fn the_issue_example_parses() {
    // The demo is the issue's example on the memory store.
    let text = DEMO_CONFIG.replace(
        "store:\n  kind: memory\n",
        "store:\n  kind: redis\n  url: redis://127.0.0.1:6379\n  prefix: tollgate\n  timeout: 50ms\n  on_failure: open\n",
    );
    let config = Config::parse(&text, "t.yaml").unwrap();
    assert_eq!(config.store.kind, StoreKind::Redis);
    assert_eq!(config.store.timeout, Duration::from_millis(50));
    assert_eq!(config.policies["login"].burst(), 10);
    let names: Vec<&str> = config.limiter_policies().map(|(n, _)| n).collect();
    assert!(names.contains(&"envoy/edge/remote_address"), "{names:?}");
}

/// Without `timeout:`, a store call is bounded by 10 ms: below Envoy's
/// default rate limit filter timeout (20 ms), so `on_failure` answers
/// first (crates/cli/tests/envoy_proxy.rs shows it behind a real Envoy).
#[test]
fn the_default_store_timeout_is_below_envoys_filter_timeout() {
    let config = Config::parse(
        "store:\n  kind: redis\n  url: redis://127.0.0.1:6379\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(config.store.timeout, Duration::from_millis(10));
    assert!(config.store.timeout < Duration::from_millis(20));
}

#[test]
fn resilience_settings_and_per_policy_modes_parse() {
    let config = Config::parse(
        "store:
  on_failure: local
  local_share: 0.25
  breaker: { failures: 3, cooldown: 2s, half_open_probes: 2 }
  deny_cache: { enabled: false, capacity: 100 }
policies:
  - name: api
    limit: 10
    period: 1s
  - name: login
    limit: 5
    period: 1m
    on_failure: closed
",
        "t.yaml",
    )
    .unwrap();
    let store = &config.store;
    assert_eq!(store.on_failure, FailureMode::Local);
    assert!((store.local_share - 0.25).abs() < f64::EPSILON);
    assert_eq!(
        (
            store.breaker.failures,
            store.breaker.cooldown,
            store.breaker.half_open_probes
        ),
        (3, Duration::from_secs(2), 2)
    );
    assert_eq!(
        (store.deny_cache.enabled, store.deny_cache.capacity),
        (false, 100)
    );
    assert_eq!(
        config.failure_modes.into_iter().collect::<Vec<_>>(),
        [("login".to_owned(), FailureMode::Closed)]
    );
    // Unset, everything is the library's default.
    let defaults = Config::parse("store:\n  kind: memory\n", "t.yaml")
        .unwrap()
        .store;
    assert_eq!(defaults.breaker, BreakerSettings::default());
    assert_eq!(
        defaults.breaker.failures,
        resilience::DEFAULT_BREAKER_FAILURES
    );
    assert!(defaults.deny_cache.enabled);
    assert!((defaults.local_share - 1.0).abs() < f64::EPSILON);
}

#[test]
fn errors_carry_file_line_and_field() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "policies:\n  - name: a\n    limit: 1\n    period: 1s\n    burts: 3\n",
            5,
            "unknown field `burts`",
        ),
        (
            "policies:\n  - name: a\n    limit: 0\n    period: 1s\n",
            2,
            "limit must be at least 1",
        ),
        (
            "policies:\n  - name: a\n    limit: 1\n    period: 5fortnights\n",
            4,
            "policies[0].period: unknown unit `fortnights`",
        ),
        (
            "policies:\n  - name: a\n    algorithm: fixed_window\n    limit: 1\n    period: 1s\n    burst: 3\n",
            2,
            "burst has no meaning for fixed_window",
        ),
        (
            "policies:\n  - name: a\n    limit: 1\n    period: 1s\n  - name: a\n    limit: 2\n    period: 1s\n",
            5,
            "policy `a` is defined twice",
        ),
        (
            "store:\n  kind: redis\n",
            2,
            "`url` is required when kind is redis",
        ),
        ("store:\n  kind: mongo\n", 2, "unknown variant `mongo`"),
        (
            "store:\n  on_failure: local\n  local_share: 0\n",
            2,
            "store: local_share must be above 0 and at most 1",
        ),
        (
            "store:\n  local_share: 1.5\n",
            2,
            "local_share must be above 0",
        ),
        (
            "store:\n  max_keys: 0\n",
            2,
            "store: max_keys must be between 1 and 1000000000, not 0",
        ),
        (
            "store:\n  max_keys: lots\n",
            2,
            "store.max_keys: invalid type",
        ),
        (
            "store:\n  max_reservations: 0\n",
            2,
            "store: max_reservations must be between 1 and 100000000, not 0",
        ),
        (
            "store:\n  max_reservations: -3\n",
            2,
            "store.max_reservations: invalid type",
        ),
        (
            "store:\n  kind: redis\n  url: redis://127.0.0.1:6379\n  max_reservations: 10\n",
            2,
            "store: max_reservations bounds the memory store's open reservations; on Redis each reservation is a key",
        ),
        (
            "store:\n  kind: redis\n  url: redis://127.0.0.1:6379\n  connections: 0\n",
            2,
            "store: connections must be between 1 and 64, not 0",
        ),
        (
            "store:\n  kind: redis\n  url: redis://127.0.0.1:6379\n  connections: 65\n",
            2,
            "store: connections must be between 1 and 64, not 65",
        ),
        (
            "store:\n  connections: 2\n",
            2,
            "store: connections is the number of connections to one Redis server",
        ),
        (
            "store:\n  kind: redis_cluster\n  urls: [redis://127.0.0.1:7000]\n  connections: 2\n",
            2,
            "a Cluster store keeps one per node",
        ),
        (
            "store:\n  breaker:\n    failures: 0\n",
            3,
            "store.breaker: failures must be at least 1",
        ),
        (
            "store:\n  breaker: { failures: 3, cooldown: 0s }\n",
            2,
            "store.breaker: cooldown must be above zero",
        ),
        (
            "store:\n  breaker:\n    failure: 3\n",
            3,
            "store.breaker: unknown field `failure`",
        ),
        (
            "store:\n  deny_cache:\n    capacity: 0\n",
            3,
            "store.deny_cache: capacity must be at least 1",
        ),
        (
            "policies:\n  - name: a\n    limit: 1\n    period: 1s\n    on_failure: maybe\n",
            5,
            "policies[0].on_failure: unknown variant `maybe`",
        ),
        (
            "policies:\n  - name: a\n    limit: -3\n    period: 1s\n",
            3,
            "policies[0].limit: invalid type: integer `-3`",
        ),
        (
            "domains:\n  - domain: d\n    descriptors:\n      - key: k\n        policy: nope\n",
            4,
            "unknown policy `nope`",
        ),
        (
            "domains:\n  - domain: d\n    descriptors:\n      - key: k\n        rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
            4,
            "unknown unit `fortnight`",
        ),
        (
            "domains:\n  - domain: d\n    descriptors:\n      - key: k\n      - key: k\n",
            2,
            "duplicate descriptor `k`",
        ),
        ("server:\n  http: nowhere\n", 2, "invalid socket address"),
        (
            "server:\n  http: 127.0.0.1:1\n  max_connections: 0\n",
            2,
            "server: max_connections must be between 1 and 1000000, not 0",
        ),
        (
            "server:\n  max_connections: -1\n",
            2,
            "server.max_connections: invalid type: integer `-1`",
        ),
        (
            "server:\n  max_connections: 1000001\n",
            2,
            "max_connections must be between 1 and 1000000",
        ),
        (
            "server:\n  http: 127.0.0.1:1\n  header_timeout: 5 fortnights\n",
            3,
            "server.header_timeout: unknown unit",
        ),
        (
            "server:\n  header_timeout: 0s\n",
            2,
            "server: header_timeout must be above zero and at most 1h, not 0ns",
        ),
        (
            "server:\n  body_timeout: 2h\n",
            2,
            "server: body_timeout must be above zero and at most 1h",
        ),
        (
            "server:\n  max_body_bytes: 4096\n  idle_timeout: 0ms\n",
            2,
            "server: idle_timeout must be above zero",
        ),
        (
            "server:\n  http: 127.0.0.1:1\n  grpc: 127.0.0.1:2\n  idle_timeout: 10\n",
            4,
            "server.idle_timeout:",
        ),
        (
            "server:\n  shutdown_timeout: 0s\n",
            2,
            "server: shutdown_timeout must be above zero",
        ),
        (
            "server:\n  grpc_max_streams: 0\n",
            2,
            "server: grpc_max_streams must be between 1 and 65536, not 0",
        ),
        (
            "server:\n  grpc_max_streams: 5000000000\n",
            2,
            "server.grpc_max_streams: invalid value",
        ),
        (
            "server:\n  grpc_request_timeout: 0s\n",
            2,
            "server: grpc_request_timeout must be above zero",
        ),
        (
            "server:\n  grpc_request_timeout: soon\n",
            2,
            "server.grpc_request_timeout:",
        ),
        (
            "server:\n  idle_timeuot: 1s\n",
            2,
            "server: unknown field `idle_timeuot`",
        ),
        (
            "server:\n  max_body_bytes: 4096\n  grpc: /run/rl.sock\n",
            3,
            "server.grpc: `/run/rl.sock` is not an address: expected IP:PORT or unix:PATH",
        ),
        (
            "server:\n  grpc_max_calls: 0\n",
            2,
            "server: grpc_max_calls must be between 1 and 10000000, not 0",
        ),
        (
            "server:\n  grpc_max_buffered_bytes: 1000\n",
            2,
            "server: grpc_max_buffered_bytes must be between 1048581 (the longest request: one message and its prefix) and 68719476736, not 1000",
        ),
        (
            "server:\n  grpc: unix://run/rl.sock\n",
            2,
            "server.grpc: `unix://run/rl.sock`: unix:// needs an absolute path",
        ),
        ("policies: [\n", 2, "did not find expected"),
    ];
    assert_refused_where_written(cases);
}

#[test]
fn grpc_tls_client_san_needs_a_ca_and_a_name() {
    let tls = Config::parse(
        "server:\n  grpc_tls: { cert: /c, key: /k, client_ca: /ca, client_san: envoy.internal }\n",
        "t.yaml",
    )
    .unwrap()
    .server
    .grpc_tls
    .unwrap();
    assert_eq!(tls.client_san.as_deref(), Some("envoy.internal"));
    for ip in ["10.0.0.1", "'[::1]'"] {
        let text = format!(
            "server:\n  grpc_tls: {{ cert: /c, key: /k, client_ca: /ca, client_san: {ip} }}\n"
        );
        assert!(Config::parse(&text, "t.yaml").is_ok(), "{ip}");
    }
    assert_refused_where_written(&[
        (
            "server:\n  grpc_tls: { cert: /c, key: /k, client_ca: /ca, client_san: '*.example.com' }\n",
            2,
            "client_san `*.example.com` is not a DNS name or an IP address (a wildcard is not a name)",
        ),
        (
            "server:\n  grpc_tls: { cert: /c, key: /k, client_ca: /ca, client_san: '' }\n",
            2,
            "client_san must not be empty",
        ),
        (
            "server:\n  grpc_tls: { cert: /c, key: /k, client_san: envoy.internal }\n",
            2,
            "client_san needs client_ca",
        ),
        (
            "server:\n  grpc_tls: { cert: /c, key: /k, client_ca: /ca, client_san: 'not a name' }\n",
            2,
            "client_san `not a name` is not a DNS name or an IP address",
        ),
    ]);
}

#[test]
fn connection_limits_parse_and_default() {
    let server = Config::parse(
        "server:
  max_connections: 500
  header_timeout: 2s
  body_timeout: 3s
  idle_timeout: 30s
  shutdown_timeout: 1500ms
  grpc_max_streams: 64
  grpc_max_buffered_bytes: 2097152
  grpc_max_calls: 500
  grpc_request_timeout: 250ms
",
        "t.yaml",
    )
    .unwrap()
    .server;
    assert_eq!(server.max_connections, 500);
    let unix = Config::parse("server:\n  grpc: unix:/run/tollgate/grpc.sock\n", "t.yaml");
    assert_eq!(
        unix.unwrap().server.grpc,
        crate::ListenAddr::Unix("/run/tollgate/grpc.sock".into())
    );
    assert_eq!(server.header_timeout, Duration::from_secs(2));
    assert_eq!(server.body_timeout, Duration::from_secs(3));
    assert_eq!(server.idle_timeout, Duration::from_secs(30));
    assert_eq!(server.shutdown_timeout, Duration::from_millis(1500));
    assert_eq!(server.grpc_max_streams, 64);
    assert_eq!(server.grpc_max_buffered_bytes, 2 << 20);
    assert_eq!(server.grpc_max_calls, 500);
    assert_eq!(server.grpc_request_timeout, Duration::from_millis(250));
    // The documented defaults, with and without a `server:` section.
    for text in ["", "server:\n  max_body_bytes: 4096\n"] {
        let server = Config::parse(text, "t.yaml").unwrap().server;
        assert_eq!(server.grpc.to_string(), "127.0.0.1:8081");
        assert_eq!(server.max_connections, 10_000);
        assert_eq!(server.header_timeout, Duration::from_secs(5));
        assert_eq!(server.body_timeout, Duration::from_secs(10));
        assert_eq!(server.idle_timeout, Duration::from_secs(60));
        assert_eq!(server.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(server.grpc_max_streams, 256);
        assert_eq!(server.grpc_max_buffered_bytes, 64 << 20);
        assert_eq!(server.grpc_max_calls, 10_000);
        assert_eq!(server.grpc_request_timeout, Duration::from_secs(5));
    }
}

#[test]
fn the_dashboard_section_parses_defaults_and_is_strict() {
    // The documented defaults, with and without a `server:` section.
    for text in [
        "",
        "server:\n  max_body_bytes: 4096\n",
        "server:\n  dashboard: {}\n",
    ] {
        let server = Config::parse(text, "t.yaml").unwrap().server;
        assert_eq!(server.dashboard, DashboardSettings::default());
        assert!(server.dashboard.enabled);
        assert!(!server.dashboard.show_keys);
        assert!(!server.metrics_auth);
    }
    let server = Config::parse(
        "server:\n  admin_token: t\n  metrics_auth: true\n  dashboard:\n    enabled: false\n    show_keys: true\n",
        "t.yaml",
    )
    .unwrap()
    .server;
    assert!(server.metrics_auth);
    assert!(!server.dashboard.enabled);
    assert!(server.dashboard.show_keys);
    assert_refused_where_written(&[
        (
            "server:\n  dashboard:\n    enabled: true\n    show_key: true\n",
            4,
            "unknown field `show_key`",
        ),
        (
            "server:\n  dashboard:\n    enabled: yes please\n",
            3,
            "server.dashboard.enabled",
        ),
        (
            "server:\n  metrics_auth: true\n",
            2,
            "metrics_auth: true needs admin_token",
        ),
        // Tokens no Authorization header can carry.
        (
            "server:\n  admin_token: \" s3cret\"\n",
            2,
            "admin_token must not start or end with a space",
        ),
        (
            "server:\n  admin_token: \"s3cret\\t\"\n",
            2,
            "admin_token must not start or end with a space",
        ),
        (
            "server:\n  admin_token: \"s3\\ncret\"\n",
            2,
            "or hold a control character",
        ),
    ]);
    // Spaces inside, and characters beyond ASCII, can be sent.
    for token in ["s3 cret", "s3crét"] {
        let text = format!("server:\n  admin_token: \"{token}\"\n");
        let server = Config::parse(&text, "t.yaml").unwrap().server;
        assert_eq!(server.admin_token.as_deref(), Some(token));
    }
}

#[test]
fn field_paths_are_named() {
    let message = error("policies:\n  - name: a\n    limit: 0\n    period: 1s\n").to_string();
    assert!(message.contains("policies[0]"), "{message}");
}

#[test]
fn policy_names_are_checked() {
    let message = error("policies:\n  - name: 'a\"b'\n    limit: 1\n    period: 1s\n").to_string();
    assert!(message.contains("contains `\"`"), "{message}");
}

#[test]
fn empty_documents_are_empty_configurations() {
    let config = Config::parse("", "t.yaml").unwrap();
    assert!(config.policies.is_empty());
    assert_eq!(config.store.kind, StoreKind::Memory);
}

#[test]
fn sentinel_and_unix_socket_stores_parse() {
    let text = "store:\n  kind: redis_sentinel\n  urls: [\"rediss://:sentinel-pw@10.0.0.1:26379\", \"rediss://10.0.0.2:26379\"]\n  master_name: mymaster\n  master_username: limiter\n  master_password: master-pw\n";
    let store = Config::parse(text, "t.yaml").unwrap().store;
    assert_eq!(store.kind, StoreKind::RedisSentinel);
    assert_eq!(store.urls.len(), 2);
    let sentinel = store.sentinel.clone().unwrap();
    assert_eq!(sentinel.master_name, "mymaster");
    assert_eq!(sentinel.master_username.as_deref(), Some("limiter"));
    assert_eq!(sentinel.master_password.as_deref(), Some("master-pw"));
    assert!(
        sentinel.master_tls,
        "TLS by default as the sentinels (rediss://)"
    );
    assert!(
        !format!("{store:?}").contains("master-pw"),
        "the master password is not printed"
    );
    let plain =
        "store:\n  kind: redis_sentinel\n  urls: [redis://10.0.0.1:26379]\n  master_name: m\n";
    let sentinel = Config::parse(plain, "t.yaml")
        .unwrap()
        .store
        .sentinel
        .unwrap();
    assert!(!sentinel.master_tls && sentinel.master_password.is_none());
    let forced = format!("{plain}  master_tls: true\n");
    assert!(
        Config::parse(&forced, "t.yaml")
            .unwrap()
            .store
            .sentinel
            .unwrap()
            .master_tls
    );
    for url in [
        "unix:///run/redis/redis.sock",
        "redis+unix:///run/redis.sock?db=2&pass=x",
    ] {
        let text = format!("store:\n  kind: redis\n  url: \"{url}\"\n");
        let store = Config::parse(&text, "t.yaml").unwrap().store;
        assert_eq!(
            (store.kind, store.urls, store.sentinel),
            (StoreKind::Redis, vec![url.to_owned()], None)
        );
    }
}

#[test]
fn sentinel_and_unix_socket_mistakes_are_refused_with_their_line() {
    let cases: &[(&str, &str)] = &[
        (
            "store:\n  kind: redis_sentinel\n  urls: [redis://h:26379]\n",
            "`master_name` (the name the sentinels monitor the master under) is required",
        ),
        (
            "store:\n  kind: redis_sentinel\n  master_name: m\n",
            "`urls` (at least one sentinel) is required when kind is redis_sentinel",
        ),
        (
            "store:\n  kind: redis_sentinel\n  urls: []\n  master_name: m\n",
            "`urls` (at least one sentinel) is required",
        ),
        (
            "store:\n  kind: redis_sentinel\n  url: redis://h:26379\n  master_name: m\n",
            "kind redis_sentinel takes `urls: [...]` (the sentinels), not `url`",
        ),
        (
            "store:\n  kind: redis\n  url: redis://h:6379\n  master_name: m\n",
            "`master_name` is only for kind redis_sentinel",
        ),
        (
            "store:\n  kind: redis_cluster\n  urls: [redis://h:6379]\n  master_tls: true\n",
            "`master_tls` is only for kind redis_sentinel",
        ),
        (
            "store:\n  master_password: x\n",
            "`master_password` is only for kind redis_sentinel",
        ),
        (
            "store:\n  kind: redis_sentinel\n  urls: [redis://h:26379]\n  master_name: m\n  master_username: u\n",
            "`master_username` needs `master_password`",
        ),
        (
            "store:\n  kind: redis_sentinel\n  urls: [redis://h:26379]\n  master_name: \"my master\"\n",
            "master_name must be 1 to 256 characters without spaces",
        ),
        (
            "store:\n  kind: redis_sentinel\n  urls: [redis://h:26379]\n  master_name: \"\"\n",
            "master_name must be 1 to 256 characters",
        ),
        (
            "store:\n  kind: redis_sentinel\n  urls: [redis://a:26379, rediss://b:26379]\n  master_name: m\n",
            "mix redis:// and rediss://",
        ),
        (
            "store:\n  kind: redis_sentinel\n  urls: [\"unix:///run/sentinel.sock\"]\n  master_name: m\n",
            "unix sockets are for kind redis; a sentinel is reached over redis:// or rediss://",
        ),
        (
            "store:\n  kind: redis_cluster\n  urls: [\"redis+unix:///run/redis.sock\"]\n",
            "unix sockets are for kind redis; a cluster node",
        ),
        (
            "store:\n  kind: redis\n  url: \"unix://run/redis.sock\"\n",
            "a unix socket URL needs an absolute path",
        ),
        (
            "store:\n  kind: redis\n  url: \"tcp://h:6379\"\n",
            "must start with redis://, rediss://, unix:// or redis+unix://",
        ),
        (
            "store:\n  kind: redis\n  url: \"http://u:secret@h\"\n",
            "store URL `http://***@h`",
        ),
        (
            "store:\n  kind: redis\n  urls: [redis://h:6379]\n",
            "`urls` is for redis_cluster and redis_sentinel",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        let message = error(text).to_string();
        if !message.contains(expected)
            || !message.starts_with("t.yaml:2:")
            || message.contains("secret")
        {
            wrong.push(format!(
                "{text:?}: expected line 2 and `{expected}`, got `{message}`"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn tls_files_are_read_and_checked_with_their_line() {
    let dir = std::env::temp_dir().join(format!("tollgate-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = |name: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n"),
        )
        .unwrap();
        path.display().to_string()
    };
    let (ca, cert, key) = (pem("ca.pem"), pem("cert.pem"), pem("key.pem"));
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let not_pem = not_pem.display().to_string();

    let text = format!(
        "store:\n  kind: redis\n  url: rediss://h:6380\n  tls_ca_file: \"{ca}\"\n  tls_cert_file: \"{cert}\"\n  tls_key_file: \"{key}\"\n"
    );
    let store = Config::parse(&text, "t.yaml").unwrap().store;
    let tls = store.tls.clone().unwrap();
    assert!(tls.ca.unwrap().ends_with(b"-----END CERTIFICATE-----\n"));
    assert!(tls.client.is_some());
    assert!(
        format!("{store:?}").contains("TlsFiles { ca: true, client: true }"),
        "the files' contents are never printed: {store:?}"
    );
    // TLS to a sentinel's master only: the files serve the master.
    let text = format!(
        "store:\n  kind: redis_sentinel\n  urls: [redis://h:26379]\n  master_name: m\n  master_tls: true\n  tls_ca_file: \"{ca}\"\n"
    );
    assert!(Config::parse(&text, "t.yaml").unwrap().store.tls.is_some());

    let cases = [
        (
            format!("store:\n  tls_ca_file: \"{ca}\"\n"),
            "`tls_ca_file` is for the Redis kinds".to_owned(),
        ),
        (
            format!("store:\n  kind: redis\n  url: redis://h:6379\n  tls_ca_file: \"{ca}\"\n"),
            "`tls_ca_file` needs TLS: a rediss:// URL".to_owned(),
        ),
        (
            format!(
                "store:\n  kind: redis_sentinel\n  urls: [redis://h:26379]\n  master_name: m\n  tls_ca_file: \"{ca}\"\n"
            ),
            "needs TLS: a rediss:// URL or `master_tls: true`".to_owned(),
        ),
        (
            format!("store:\n  kind: redis\n  url: rediss://h:6380\n  tls_cert_file: \"{cert}\"\n"),
            "`tls_cert_file` and `tls_key_file` go together".to_owned(),
        ),
        (
            "store:\n  kind: redis\n  url: rediss://h:6380\n  tls_ca_file: /no/such/ca.pem\n"
                .to_owned(),
            "tls_ca_file `/no/such/ca.pem`: No such file".to_owned(),
        ),
        (
            format!(
                "store:\n  kind: redis\n  url: rediss://h:6380\n  tls_ca_file: \"{not_pem}\"\n"
            ),
            "is not PEM".to_owned(),
        ),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in &cases {
        let message = error(text).to_string();
        if !message.contains(expected.as_str()) || !message.starts_with("t.yaml:2:") {
            wrong.push(format!(
                "{text:?}: expected line 2 and `{expected}`, got `{message}`"
            ));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// An envoyproxy/ratelimit file `text` added to an empty configuration.
fn envoy_file(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::parse("", "<empty>")?;
    config.add_envoy_file(text, "e.yaml", false)?;
    Ok(config)
}

#[test]
fn every_field_of_envoyproxy_ratelimit_files_is_read() {
    let config = envoy_file(
        "domain: all
descriptors:
  - key: quota
    quota_mode: true
    detailed_metric: true
    value_to_metric: true
    metadata:
      team: payments
      nested: { list: [1, two, { three: 3 }], flag: true }
    rate_limit: { unit: HOUR, requests_per_unit: 10, name: q }
  - key: zero
    value: ''
    rate_limit: { unit: second }
  - key: free
    rate_limit: { unlimited: true, requests_per_unit: 5, name: '' }
  - key: wild
    value: /a*b*c
    share_threshold: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
      replaces: [{ name: q }]
",
    )
    .unwrap();
    let domain = &config.domains["all"];
    let (quota, _) = domain.find(&[("quota", "x")]).unwrap();
    assert!(quota.quota);
    assert_eq!(quota.rule.name.as_deref(), Some("q"));
    let metadata = &quota.metadata.expect("metadata").fields().fields;
    assert_eq!(
        metadata["team"].kind,
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            "payments".into()
        ))
    );
    assert!(metadata.contains_key("nested"));
    // No requests_per_unit: 0, always over the limit; an empty value is no
    // value (any value matches).
    let (zero, _) = domain.find(&[("zero", "anything")]).unwrap();
    assert_eq!(
        zero.rule.applied,
        crate::envoy::Applied::DenyAll {
            unit: crate::envoy::Unit::Second
        }
    );
    // unlimited ignores requests_per_unit; an empty name is no name.
    let (free, _) = domain.find(&[("free", "x")]).unwrap();
    assert_eq!(free.rule.applied, crate::envoy::Applied::Unlimited);
    assert!(free.rule.name.is_none());
    let (wild, _) = domain.find(&[("wild", "/a-b-c")]).unwrap();
    assert_eq!(wild.rule.replaces, ["q"]);
}

#[test]
fn what_envoyproxy_ratelimit_refuses_is_refused_with_file_and_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: me\n      unit: second\n      requests_per_unit: 1\n      replaces: [{ name: me }]\n",
            3,
            "rate_limit `me` names itself in `replaces`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: plain\n    share_threshold: true\n",
            3,
            "share_threshold needs a wildcard value",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unlimited: true, unit: day }\n",
            3,
            "an `unlimited` rate_limit takes no unit",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { requests_per_unit: 3 }\n",
            3,
            "rate_limit needs a `unit`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: unknown, requests_per_unit: 3 }\n",
            3,
            "unknown unit `unknown`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    metadata: [1, 2]\n",
            4,
            "metadata: invalid type: sequence",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    metadata:\n      limits:\n        ? [1, 2]\n        : x\n",
            3,
            "descriptor `k`: metadata.limits: a key must be text, a number, a boolean or null, not a list",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    quota_mode: 3\n",
            4,
            "quota_mode: invalid type: integer `3`, expected a boolean",
        ),
        (
            "domain: d\ndescriptors:\n  - key: ''\n",
            3,
            "descriptor `key` must not be empty",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: -1 }\n",
            4,
            "requests_per_unit",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, replaces: [{ name: '' }] }\n",
            3,
            "`replaces` entries need a `name`",
        ),
        (
            "domain: ''\ndescriptors: []\n",
            1,
            "domain must not be empty",
        ),
        ("domain: d\n1: x\n", 2, "a key that is a string"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: 1.5\n",
            4,
            "a floating-point number (1.5), which envoyproxy/ratelimit refuses",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: 9223372036854775808\n",
            4,
            "beyond a 64-bit signed integer",
        ),
        ("domain: d\ndescriptors: [a]\n", 2, "expected a mapping"),
    ];
    let mut wrong = Vec::new();
    for (text, line, expected) in cases {
        let message = envoy_file(text).expect_err(text).to_string();
        if !message.contains(expected) || !message.starts_with(&format!("e.yaml:{line}:")) {
            wrong.push(format!(
                "{text:?}: expected line {line} and `{expected}`, got `{message}`"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn domains_in_two_files_are_refused_or_merged() {
    let first = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1 }\n";
    let second = "# the same domain\ndomain: d\ndescriptors:\n  - key: b\n    rate_limit: { unit: second, requests_per_unit: 2 }\n";
    let mut config = Config::parse("", "<empty>").unwrap();
    config.add_envoy_file(first, "one.yaml", false).unwrap();
    let error = config
        .add_envoy_file(second, "two.yaml", false)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("two.yaml:2: domain `d` is defined in another file too"),
        "{error}"
    );
    // Merged: both descriptors, one domain.
    config.add_envoy_file(second, "two.yaml", true).unwrap();
    let domain = &config.domains["d"];
    assert!(domain.find(&[("a", "x")]).is_some() && domain.find(&[("b", "x")]).is_some());
    // A descriptor twice across merged files is refused.
    let error = config
        .add_envoy_file(first, "three.yaml", true)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("three.yaml:1: merging into domain `d`: duplicate descriptor `a`"),
        "{error}"
    );
}

#[test]
fn the_envoy_section_parses_defaults_and_checks() {
    let defaults = Config::parse("", "t.yaml").unwrap().envoy;
    assert_eq!(defaults, EnvoySettings::default());
    assert!(!defaults.shadow_mode && !defaults.quota_mode);
    assert!((defaults.near_limit_ratio - 0.8).abs() < f64::EPSILON);
    assert!(!defaults.stop_cache_key_increment_when_overlimit);
    assert!(!defaults.response_dynamic_metadata);
    assert_eq!(defaults.stats_max_series, DEFAULT_STATS_MAX_SERIES);
    let envoy = Config::parse(
        "envoy:\n  shadow_mode: true\n  quota_mode: true\n  near_limit_ratio: 0.5\n  stop_cache_key_increment_when_overlimit: true\n  stats_max_series: 7\n  response_dynamic_metadata: true\n",
        "t.yaml",
    )
    .unwrap()
    .envoy;
    assert!(envoy.shadow_mode && envoy.quota_mode && envoy.stop_cache_key_increment_when_overlimit);
    assert!((envoy.near_limit_ratio - 0.5).abs() < f64::EPSILON);
    assert_eq!(envoy.stats_max_series, 7);
    assert!(envoy.response_dynamic_metadata);
    for (text, expected) in [
        (
            "envoy:\n  near_limit_ratio: 1.5\n",
            "near_limit_ratio must be between 0 and 1",
        ),
        (
            "envoy:\n  near_limit_ratio: -0.1\n",
            "near_limit_ratio must be between 0 and 1",
        ),
        (
            "envoy:\n  near_limit_ratio: .nan\n",
            "near_limit_ratio must be between 0 and 1",
        ),
        (
            "envoy:\n  stats_max_series: 0\n",
            "stats_max_series must be between 1 and",
        ),
        ("envoy:\n  shadow: true\n", "unknown field `shadow`"),
    ] {
        let message = error(text).to_string();
        assert!(
            message.starts_with("t.yaml:2:") && message.contains(expected),
            "{text:?}: `{message}`"
        );
    }
}

/// envoyproxy/ratelimit reads YAML 1.1: `yes`/`no`/`on`/`off` are flags,
/// and a key left empty is its zero value.
#[test]
fn envoy_files_read_yaml_1_1_flags_and_empty_keys() {
    let config = envoy_file(
        "domain: y
descriptors:
  - key: k
    value: 007
    shadow_mode: yes
    quota_mode: Off
    descriptors:
    rate_limit:
      unit: second
      requests_per_unit:
      replaces:
  - key: bare
    rate_limit:
",
    )
    .unwrap();
    let domain = &config.domains["y"];
    // The value is the text as written, not a number.
    let (m, _) = domain.find(&[("k", "007")]).unwrap();
    assert!(m.shadow && !m.quota);
    assert_eq!(
        m.rule.applied,
        crate::envoy::Applied::DenyAll {
            unit: crate::envoy::Unit::Second
        }
    );
    assert!(domain.find(&[("k", "7")]).is_none());
    // `rate_limit:` left empty is no limit; fractions are fine quoted and
    // inside metadata, and keys there may be anything.
    envoy_file(
        "domain: q\ndescriptors:\n  - key: k\n    value: '1.5'\n    metadata: { 2.5: 1.5, true: [0.1] }\n",
    )
    .unwrap();
    assert!(domain.find(&[("bare", "x")]).is_none());
    let message = envoy_file("domain: y\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("e.yaml:4:18:") && message.contains("expected a boolean"),
        "{message}"
    );
}

/// envoyproxy/ratelimit checks key names against its schema's, wherever
/// written, then ignores those written where they mean nothing: such a
/// file loads (with a warning). In tollgate's own `domains:` they are
/// errors, as any unknown field there.
#[test]
fn schema_keys_in_the_wrong_place_are_ignored_in_envoy_files_only() {
    let text = "domain: m
unit: second
descriptors:
  - key: k
    unit: second
    requests_per_unit: 5
    rate_limit:
      unit: minute
      requests_per_unit: 2
      key: stray
      replaces: [{ name: other, value: stray }]
";
    let config = envoy_file(text).unwrap();
    let (m, _) = config.domains["m"].find(&[("k", "v")]).unwrap();
    assert_eq!(m.rule.replaces, ["other"]);
    assert!(matches!(
        m.rule.applied,
        crate::envoy::Applied::Policy {
            requests_per_unit: 2,
            unit: Some(crate::envoy::Unit::Minute),
            ..
        }
    ));
    // Not a key of the schema at all: refused there too.
    let message = envoy_file("domain: m\ndescriptors:\n  - key: k\n    units: second\n")
        .unwrap_err()
        .to_string();
    assert!(message.contains("unknown field `units`"), "{message}");
    // A misplaced key's value is not read, but checked as there: its lists
    // hold mappings only, and its mappings' keys are the schema's.
    let misplaced = |value: &str| {
        envoy_file(&format!(
            "domain: m\nkey: {value}\ndescriptors:\n  - key: k\n    replaces: {value}\n"
        ))
    };
    for (value, refused) in [
        ("[a]", "a list holding text"),
        ("[[]]", "a list holding a list"),
        ("[{ key: a }, 5]", "a list holding a number"),
        ("{ unit: { units: 2 } }", "unknown key `units`"),
        ("[{ replaces: [x] }]", "a list holding text"),
    ] {
        let message = misplaced(value).unwrap_err().to_string();
        assert!(message.contains(refused), "{value}: {message}");
        assert!(message.starts_with("e.yaml:2:"), "{value}: {message}");
    }
    for value in [
        "[]",
        "[{ key: a, metadata: { anything: [1, 2] } }]",
        "{ unit: second }",
        "5",
        "",
    ] {
        misplaced(value).unwrap_or_else(|e| panic!("{value}: {e}"));
    }
    // `metadata` itself, where it means nothing, is not looked into.
    let text = "domain: m\nmetadata: { team: [1, 2] }\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, metadata: { owner: [x] } }\n    replaces: [{ name: o, metadata: [1] }]\n";
    envoy_file(text).unwrap();
    // In tollgate's own configuration: an error, where it is written.
    let message =
        error("domains:\n  - domain: m\n    descriptors:\n      - key: k\n        unit: second\n")
            .to_string();
    assert!(
        message.starts_with("t.yaml:4:9:") && message.contains("`unit` has no meaning here"),
        "{message}"
    );
}

/// envoyproxy/ratelimit reads a file's first YAML document only.
#[test]
fn envoy_files_are_read_to_their_first_document() {
    let config =
        envoy_file("---\ndomain: first\ndescriptors: []\n---\ndomain: second\nnot: [valid\n")
            .unwrap();
    assert!(config.domains.contains_key("first") && config.domains.len() == 1);
    // The first document is checked as any file is.
    let message = envoy_file("---\ndomain: d\ndescriptors:\n  - key: k\n    value: 1.5\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("e.yaml:5:") && message.contains("floating-point"),
        "{message}"
    );
    // A file of comments alone has no domain.
    let message = envoy_file("# nothing here\n").unwrap_err().to_string();
    assert!(message.contains("missing field `domain`"), "{message}");
}

#[test]
fn a_per_second_store_inherits_what_it_does_not_write() {
    let config = Config::parse(
        "store:
  kind: redis
  url: redis://127.0.0.1:6379
  prefix: main
  timeout: 15ms
  on_failure: closed
  breaker: { failures: 3 }
  connections: 3
  key_layout: envoy
  envoy_prefix: rl_
  per_second:
    kind: redis
    url: redis://127.0.0.1:6380
    on_failure: local
",
        "t.yaml",
    )
    .unwrap();
    let main = &config.store;
    assert_eq!(main.key_layout, KeyLayout::Envoy);
    assert_eq!(main.envoy_prefix, "rl_");
    let second = main.per_second.as_deref().unwrap();
    assert_eq!(second.kind, StoreKind::Redis);
    assert_eq!(second.urls, ["redis://127.0.0.1:6380"]);
    // Written: its own. Left out: the main store's.
    assert_eq!(second.on_failure, FailureMode::Local);
    assert_eq!(second.prefix, "main");
    assert_eq!(second.timeout, Duration::from_millis(15));
    assert_eq!(second.breaker.failures, 3);
    assert_eq!((main.connections, second.connections), (3, 3));
    // One setting for both.
    assert_eq!(second.key_layout, KeyLayout::Envoy);
    assert_eq!(second.envoy_prefix, "rl_");
    assert!(second.per_second.is_none());
    // A per-second Cluster cannot hold envoyproxy/ratelimit's layout: it
    // keeps tollgate's while the main store keeps envoy's.
    let split = Config::parse(
        "store:\n  kind: redis\n  url: redis://a\n  key_layout: envoy\n  per_second:\n    kind: redis_cluster\n    urls: [redis://b]\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(split.store.key_layout, KeyLayout::Envoy);
    let second = split.store.per_second.as_deref().unwrap();
    assert_eq!(second.key_layout, KeyLayout::Tollgate);
    // Its own number of connections, written; the default otherwise.
    let own = Config::parse(
        "store:\n  kind: redis\n  url: redis://a\n  per_second:\n    kind: redis\n    url: redis://b\n    connections: 1\n",
        "t.yaml",
    )
    .unwrap();
    let default = tollgate_redis::pool::default_connections();
    assert_eq!(own.store.connections, default);
    assert_eq!(own.store.per_second.as_deref().unwrap().connections, 1);
    // Without the section, one store; the layout defaults to tollgate's.
    let plain = Config::parse("store:\n  kind: memory\n", "t.yaml").unwrap();
    assert!(plain.store.per_second.is_none());
    assert_eq!(plain.store.key_layout, KeyLayout::Tollgate);
    assert_eq!(plain.store.envoy_prefix, "");
}

#[test]
fn store_layouts_and_per_second_sections_are_checked_where_written() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "store:\n  kind: redis\n  url: redis://a\n  per_second:\n    kind: redis\n",
            5,
            "store.per_second: `url` is required when kind is redis",
        ),
        (
            "store:\n  kind: redis\n  url: redis://a\n  per_second:\n    kind: redis\n    url: redis://b\n    per_second: { kind: memory }\n",
            5,
            "store.per_second: a per_second store has no per_second section of its own",
        ),
        (
            "store:\n  kind: redis\n  url: redis://a\n  per_second:\n    kind: redis\n    url: redis://b\n    key_layout: envoy\n",
            5,
            "`key_layout` is one setting for both stores",
        ),
        (
            "store:\n  kind: redis\n  url: redis://a\n  per_second:\n    kind: redis\n    url: redis://b\n    urls: [redis://c]\n",
            5,
            "kind redis takes `url`",
        ),
        (
            "store:\n  kind: redis\n  url: redis://a\n  per_second:\n    kind: redis\n    url: redis://b\n    tiemout: 1s\n",
            7,
            "unknown field `tiemout`",
        ),
        (
            "store:\n  kind: redis_cluster\n  urls: [redis://a]\n  key_layout: envoy\n",
            2,
            "key_layout: envoy is not supported on redis_cluster",
        ),
        (
            "store:\n  kind: memory\n  key_layout: envoy\n",
            2,
            "the memory store has none",
        ),
        (
            "store:\n  kind: redis\n  url: redis://a\n  key_layout: envoyproxy\n",
            4,
            "unknown variant `envoyproxy`",
        ),
        (
            "store:\n  kind: redis\n  url: redis://a\n  envoy_prefix: rl_\n",
            2,
            "envoy_prefix names counters in envoyproxy/ratelimit's layout: it needs key_layout: envoy",
        ),
    ];
    assert_refused_where_written(cases);
}

#[test]
fn a_policy_lease_parses_and_absent_means_no_leasing() {
    let config = Config::parse(
        &format!(
            "policies:
  - name: hot
    algorithm: fixed_window
    limit: 300
    period: 1s
    lease: {{ max: 50, ttl: 200ms }}
  - name: bucket
    algorithm: token_bucket
    limit: 100
    period: 1s
    burst: 200
    lease:
      max: 2
      ttl: 1h
  - name: smooth
    algorithm: sliding_window
    limit: 100
    period: 1m
    lease: {{ max: {}, ttl: 1ms }}
  - name: cell
    limit: 100
    period: 1s
    lease: {{ max: 10, ttl: 1s }}
  - name: plain
    limit: 100
    period: 1s
",
            tollgate::Lease::MAX_UNITS
        ),
        "t.yaml",
    )
    .unwrap();
    let lease = |name: &str| config.policies[name].lease();
    let expected = |max, ttl| Some(tollgate::Lease::new(max, ttl).unwrap());
    assert_eq!(lease("hot"), expected(50, Duration::from_millis(200)));
    assert_eq!(lease("bucket"), expected(2, Duration::from_secs(3600)));
    assert_eq!(
        lease("smooth"),
        expected(tollgate::Lease::MAX_UNITS, Duration::from_millis(1))
    );
    assert_eq!(lease("cell"), expected(10, Duration::from_secs(1)));
    assert_eq!(
        config.policies["cell"].algorithm(),
        tollgate::Algorithm::Gcra
    );
    assert_eq!(lease("plain"), None);
    // The lease is part of the policy: the rest of it is as without one.
    assert_eq!(config.policies["hot"].limit(), 300);
    assert_eq!(config.policies["bucket"].burst(), 200);
}

#[test]
fn hostile_lease_sections_are_refused_where_written() {
    let policy = |algorithm: &str, lease: &str| {
        format!(
            "policies:\n  - name: a\n    algorithm: {algorithm}\n    limit: 10\n    period: 1s\n    lease: {lease}\n"
        )
    };
    let fixed = |lease: &str| policy("fixed_window", lease);
    let max = tollgate::Lease::MAX_UNITS;
    let cases: [(String, usize, &str); 18] = [
        // Unknown keys, missing keys, wrong types: at the key, or the section.
        (fixed("{ max: 5, ttl: 1s, size: 3 }"), 6, "policies[0].lease: unknown field `size`, expected `max` or `ttl`"),
        (fixed("{ max: 5 }"), 6, "policies[0].lease: missing field `ttl`"),
        (fixed("{ ttl: 1s }"), 6, "policies[0].lease: missing field `max`"),
        (fixed("50"), 6, "policies[0].lease: invalid type: integer `50`, expected a mapping"),
        (fixed("{ max: lots, ttl: 1s }"), 6, "policies[0].lease.max: invalid type: string \"lots\""),
        (fixed("{ max: -5, ttl: 1s }"), 6, "policies[0].lease.max: invalid type: integer `-5`"),
        (fixed("{ max: 2.5, ttl: 1s }"), 6, "policies[0].lease.max: invalid type: floating point `2.5`"),
        (fixed("{ max: 5, ttl: 100 }"), 6, "policies[0].lease.ttl: period `100` has no unit"),
        (fixed("{ max: 5, ttl: soon }"), 6, "policies[0].lease.ttl: unknown unit `soon`"),
        // Out of bounds: max 2..=Lease::MAX_UNITS, ttl 1ms..=1h.
        (fixed("{ max: 1, ttl: 1s }"), 6, &format!("policies[0].lease: invalid lease: max must be between 2 and {max} units, not 1")),
        (fixed("{ max: 0, ttl: 1s }"), 6, &format!("invalid lease: max must be between 2 and {max} units, not 0")),
        (fixed(&format!("{{ max: {}, ttl: 1s }}", max + 1)), 6, &format!("invalid lease: max must be between 2 and {max} units, not {}", max + 1)),
        (fixed("{ max: 5, ttl: 999us }"), 6, "policies[0].lease: invalid lease: ttl must be between 1ms and 1h"),
        (fixed("{ max: 5, ttl: 0s }"), 6, "invalid lease: ttl must be between 1ms and 1h, not 0ns"),
        (fixed("{ max: 5, ttl: 61m }"), 6, "invalid lease: ttl must be between 1ms and 1h, not 3660s"),
        // Algorithms that cannot lease: at the policy, saying why.
        (policy("sliding_log", "{ max: 5, ttl: 1s }"), 2, "policies[0]: policy `a`: sliding_log cannot lease: sliding_log records the instant of every admitted unit"),
        (policy("leaky_bucket", "{ max: 5, ttl: 1s }"), 2, "policies[0]: policy `a`: leaky_bucket cannot lease: leaky_bucket answers each request with its own delay"),
        // Block style: an unknown key at its own line.
        ("policies:\n  - name: a\n    limit: 10\n    period: 1s\n    lease:\n      max: 5\n      ttl: 1s\n      ttl_ms: 3\n".to_owned(), 8, "policies[0].lease: unknown field `ttl_ms`"),
    ];
    let cases: Vec<(&str, usize, &str)> = cases
        .iter()
        .map(|(text, line, expected)| (text.as_str(), *line, *expected))
        .collect();
    assert_refused_where_written(&cases);
}

#[test]
fn max_overdraft_and_max_reservations_parse_with_their_defaults() {
    let config = Config::parse(
        "store:\n  max_reservations: 500\npolicies:
  - name: tokens
    algorithm: fixed_window
    limit: 1000
    period: 1m
    max_overdraft: 200
  - name: plain
    algorithm: token_bucket
    limit: 10
    period: 1s
    burst: 30
  - name: none
    algorithm: gcra
    limit: 10
    period: 1s
    max_overdraft: 0
",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(config.store.max_reservations, 500);
    assert_eq!(config.policies["tokens"].max_overdraft(), 200);
    // Default: the capacity (a bucket's burst).
    assert_eq!(config.policies["plain"].max_overdraft(), 30);
    assert_eq!(config.policies["none"].max_overdraft(), 0);
    let defaults = Config::parse("", "t.yaml").unwrap();
    assert_eq!(
        defaults.store.max_reservations,
        tollgate::store::memory::DEFAULT_MAX_RESERVATIONS
    );
}

#[test]
fn hostile_max_overdrafts_are_refused_where_written() {
    let policy = |algorithm: &str, overdraft: &str| {
        format!(
            "policies:\n  - name: a\n    algorithm: {algorithm}\n    limit: 10\n    period: 1s\n    max_overdraft: {overdraft}\n"
        )
    };
    let cases: [(String, usize, &str); 6] = [
        (
            policy("fixed_window", "11"),
            2,
            "policies[0]: policy `a`: max_overdraft 11 is above the most this policy takes, 10 units",
        ),
        (
            policy("fixed_window", "-1"),
            6,
            "policies[0].max_overdraft: invalid type: integer `-1`",
        ),
        (
            policy("fixed_window", "lots"),
            6,
            "policies[0].max_overdraft: invalid type: string \"lots\"",
        ),
        (
            policy("sliding_log", "5"),
            2,
            "policies[0]: policy `a`: sliding_log cannot be reserved: sliding_log records every admitted unit",
        ),
        (
            policy("leaky_bucket", "5"),
            2,
            "policies[0]: policy `a`: leaky_bucket cannot be reserved: leaky_bucket answers each request with its own delay",
        ),
        (
            "policies:\n  - name: a\n    limit: 10\n    period: 1s\n    max_overdraw: 5\n"
                .to_owned(),
            5,
            "policies[0]: unknown field `max_overdraw`",
        ),
    ];
    let cases: Vec<(&str, usize, &str)> = cases
        .iter()
        .map(|(text, line, expected)| (text.as_str(), *line, *expected))
        .collect();
    assert_refused_where_written(&cases);
}

#[test]
fn settle_descriptors_parse_and_are_refused_where_they_cannot_be_reserved() {
    let domain = |descriptor: &str| {
        format!(
            "policies:\n  - name: log\n    algorithm: sliding_log\n    limit: 10\n    period: 1m\n  - name: tokens\n    algorithm: fixed_window\n    limit: 10\n    period: 1m\ndomains:\n  - domain: d\n    descriptors:\n{descriptor}"
        )
    };
    let config = Config::parse(
        &domain("      - key: user\n        settle: true\n        policy: tokens\n      - key: team\n        settle: true\n        rate_limit: { unit: hour, requests_per_unit: 5 }\n"),
        "t.yaml",
    )
    .unwrap();
    let d = &config.domains["d"];
    assert!(d.find(&[("user", "u")]).unwrap().0.settle);
    assert!(d.find(&[("team", "t")]).unwrap().0.settle);
    let cases: [(String, usize, &str); 5] = [
        (
            domain("      - key: user\n        settle: true\n"),
            13,
            "descriptor `user`: `settle: true` needs a limit to charge",
        ),
        (
            domain(
                "      - key: user\n        settle: true\n        rate_limit: { unlimited: true }\n",
            ),
            13,
            "`settle: true` needs a limit to charge",
        ),
        (
            domain(
                "      - key: user\n        settle: true\n        algorithm: leaky_bucket\n        rate_limit: { unit: hour, requests_per_unit: 5 }\n",
            ),
            13,
            "`settle: true`: leaky_bucket cannot be reserved",
        ),
        (
            domain("      - key: user\n        settle: maybe\n        policy: tokens\n"),
            14,
            "settle: invalid type: string \"maybe\", expected a boolean",
        ),
        (
            domain("      - key: user\n        settle: true\n        policy: log\n"),
            1,
            "domain `d`: descriptor `user`: `settle: true`: policy `log`: sliding_log cannot be reserved",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, line, expected) in &cases {
        let message = error(text).to_string();
        // The named policy's algorithm is known once the domain is built:
        // the file is named, without a line.
        let located = *line == 1 || message.starts_with(&format!("t.yaml:{line}:"));
        if !message.contains(expected) || !located {
            wrong.push(format!(
                "expected line {line} and `{expected}`, got `{message}`"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // envoyproxy/ratelimit's counters keep no reservation.
    let envoy_layout = "store:\n  kind: redis\n  url: redis://a\n  key_layout: envoy\ndomains:\n  - domain: d\n    descriptors:\n      - key: team\n        settle: true\n        rate_limit: { unit: hour, requests_per_unit: 5 }\n";
    let message = error(envoy_layout).to_string();
    assert!(
        message.contains("with store.key_layout: envoy an inline fixed_window limit is kept on envoyproxy/ratelimit's counter"),
        "{message}"
    );
    // Another algorithm keeps tollgate's layout: accepted.
    Config::parse(
        &envoy_layout.replace(
            "settle: true\n",
            "settle: true\n        algorithm: sliding_window\n",
        ),
        "t.yaml",
    )
    .unwrap();
}

/// The repro files of the review, in both formats: aliases that expand to
/// millions of nodes (the first two took 2.7 GB and 5 s each; the third,
/// 4 s of CPU), and 100 000 levels of `[` behind a quote inside a plain
/// scalar (24 s and 27 s of parsing). Each is refused at once, naming the
/// file and the line.
#[test]
fn alias_bombs_and_hidden_nesting_are_refused_in_both_formats() {
    let list = |item: &str, n: usize| vec![item; n].join(",");
    let bomb = |indent: &str| {
        format!(
            "{indent}metadata:\n{indent}  a: &a [{}]\n{indent}  b: [{}]\n",
            list("x", 3000),
            list("*a", 3000)
        )
    };
    let own_bomb = format!(
        "domains:\n  - domain: d\n    descriptors:\n      - key: k\n        \
         rate_limit: {{unit: second, requests_per_unit: 1}}\n{}",
        bomb("        ")
    );
    let envoy_bomb = format!(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: second, requests_per_unit: 1}}\n{}",
        bomb("    ")
    );
    let envoy_top = format!(
        "domain: d\nkey: &a [{}]\nvalue: [{}]\n",
        list("x", 8000),
        list("*a", 8000)
    );
    let deep = |first: &str| {
        format!(
            "{first}\n{}{}{}\n",
            if first.starts_with("server") {
                "policies: "
            } else {
                "descriptors: "
            },
            "[".repeat(100_000),
            "]".repeat(100_000)
        )
    };
    let own_deep = deep("server:\n  admin_token: x \"");
    let envoy_deep = deep("domain: d \"");
    let nodes = format!("more than {MAX_CONFIG_NODES} YAML nodes once aliases");
    let nested = "nested deeper than 64 levels";
    let cases = [
        (
            Config::parse(&own_bomb, "t.yaml").err(),
            "t.yaml:7:",
            &*nodes,
        ),
        (envoy_file(&envoy_bomb).err(), "e.yaml:6:", &nodes),
        (envoy_file(&envoy_top).err(), "e.yaml:2:", &nodes),
        (
            Config::parse(&own_deep, "t.yaml").err(),
            "t.yaml:3:75:",
            nested,
        ),
        (envoy_file(&envoy_deep).err(), "e.yaml:2:78:", nested),
    ];
    let mut wrong = Vec::new();
    for (n, (error, at, expected)) in cases.iter().enumerate() {
        let message = error.as_ref().map(ToString::to_string).unwrap_or_default();
        if !message.starts_with(at) || !message.contains(expected) {
            wrong.push(format!(
                "case {n}: expected `{at}` and `{expected}`, got `{message}`"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The same shapes, small, are read as before.
    let small = own_bomb
        .replace(&list("x", 3000), "x")
        .replace(&list("*a", 3000), "*a");
    Config::parse(&small, "t.yaml").unwrap();
}
