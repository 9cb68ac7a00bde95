//! One table row per envoyproxy/ratelimit variable: the variables set, a
//! key of the generated document, and the value it must hold (`~`: absent).

use std::path::PathBuf;

use serde_norway::Value;

use super::*;
use crate::config::{Config, KeyLayout, StoreKind};

fn environment(vars: &[(&str, &str)]) -> Result<Option<EnvoyEnvironment>, EnvError> {
    EnvoyEnvironment::from_vars(
        vars.iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    )
}

fn mapped(vars: &[(&str, &str)]) -> EnvoyEnvironment {
    environment(vars)
        .unwrap_or_else(|e| panic!("{vars:?}: {e}"))
        .unwrap_or_else(|| panic!("{vars:?}: not recognised as envoyproxy/ratelimit's"))
}

/// The value at a dotted path (`store.per_second.url`), `Null` when absent.
fn at(document: &str, path: &str) -> Value {
    let mut value: Value = serde_norway::from_str(document).unwrap();
    for part in path.split('.') {
        value = value.get(part).cloned().unwrap_or(Value::Null);
    }
    value
}

/// Variables as (name, value).
type Vars = &'static [(&'static str, &'static str)];

/// The table: variables, key, expected value (YAML).
const ROWS: &[(Vars, &str, &str)] = &[
    // Listeners: envoyproxy/ratelimit's defaults are every interface.
    (&[("REDIS_URL", "r:1")], "server.http", "0.0.0.0:8080"),
    (&[("REDIS_URL", "r:1")], "server.grpc", "0.0.0.0:8081"),
    (
        &[("REDIS_URL", "r:1"), ("HOST", "127.0.0.1")],
        "server.http",
        "127.0.0.1:8080",
    ),
    (
        &[("REDIS_URL", "r:1"), ("PORT", "9000")],
        "server.http",
        "0.0.0.0:9000",
    ),
    (
        &[("REDIS_URL", "r:1"), ("HOST", "localhost")],
        "server.http",
        "127.0.0.1:8080",
    ),
    (
        &[("REDIS_URL", "r:1"), ("HOST", "::1")],
        "server.http",
        "'[::1]:8080'",
    ),
    (
        &[("REDIS_URL", "r:1"), ("GRPC_HOST", "127.0.0.2")],
        "server.grpc",
        "127.0.0.2:8081",
    ),
    (
        &[("REDIS_URL", "r:1"), ("GRPC_PORT", "9001")],
        "server.grpc",
        "0.0.0.0:9001",
    ),
    // GRPC_UDS: a unix socket instead of GRPC_HOST:GRPC_PORT.
    (
        &[("REDIS_URL", "r:1"), ("GRPC_UDS", "/var/run/rl.sock")],
        "server.grpc",
        "unix:///var/run/rl.sock",
    ),
    (
        &[
            ("REDIS_URL", "r:1"),
            ("GRPC_UDS", "rl.sock"),
            ("GRPC_PORT", "9001"),
        ],
        "server.grpc",
        "unix:rl.sock",
    ),
    (
        &[("REDIS_URL", "r:1"), ("GRPC_UDS", "")],
        "server.grpc",
        "0.0.0.0:8081",
    ),
    // gRPC connection age.
    (
        &[("GRPC_MAX_CONNECTION_AGE", "1h30m")],
        "server.grpc_max_connection_age",
        "5400000000us",
    ),
    (
        &[("GRPC_MAX_CONNECTION_AGE_GRACE", "1.5s")],
        "server.grpc_max_connection_age_grace",
        "1500000us",
    ),
    (
        &[("REDIS_URL", "r:1")],
        "server.grpc_max_connection_age",
        "~",
    ),
    // gRPC TLS.
    (
        &[
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/c.pem"),
            ("GRPC_SERVER_TLS_KEY", "/k.pem"),
        ],
        "server.grpc_tls",
        "{cert: /c.pem, key: /k.pem}",
    ),
    (
        &[
            ("GRPC_SERVER_USE_TLS", "1"),
            ("GRPC_SERVER_TLS_CERT", "/c.pem"),
            ("GRPC_SERVER_TLS_KEY", "/k.pem"),
            ("GRPC_CLIENT_TLS_CACERT", "/ca.pem"),
        ],
        "server.grpc_tls.client_ca",
        "/ca.pem",
    ),
    (
        &[
            ("GRPC_SERVER_USE_TLS", "1"),
            ("GRPC_SERVER_TLS_CERT", "/c.pem"),
            ("GRPC_SERVER_TLS_KEY", "/k.pem"),
            ("GRPC_CLIENT_TLS_CACERT", "/ca.pem"),
            ("GRPC_CLIENT_TLS_SAN", "envoy.internal"),
        ],
        "server.grpc_tls.client_san",
        "envoy.internal",
    ),
    // Without a CA no client certificate is asked for: the SAN is unused.
    (
        &[
            ("GRPC_SERVER_USE_TLS", "1"),
            ("GRPC_SERVER_TLS_CERT", "/c.pem"),
            ("GRPC_SERVER_TLS_KEY", "/k.pem"),
            ("GRPC_CLIENT_TLS_SAN", "envoy.internal"),
        ],
        "server.grpc_tls.client_san",
        "~",
    ),
    (
        &[("GRPC_SERVER_TLS_CERT", "/c.pem")],
        "server.grpc_tls",
        "~",
    ),
    // Prometheus.
    (
        &[("USE_PROMETHEUS", "true")],
        "server.metrics",
        "{addr: '0.0.0.0:9090', path: /metrics}",
    ),
    (
        &[
            ("USE_PROMETHEUS", "true"),
            ("PROMETHEUS_ADDR", "127.0.0.1:9191"),
            ("PROMETHEUS_PATH", "/prom"),
        ],
        "server.metrics",
        "{addr: '127.0.0.1:9191', path: /prom}",
    ),
    (&[("PROMETHEUS_ADDR", ":9191")], "server.metrics", "~"),
    // Start and health.
    (
        &[("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "T")],
        "server.healthy_needs_domains",
        "true",
    ),
    // Redis: envoyproxy/ratelimit's defaults are a unix socket.
    (
        &[("CACHE_KEY_PREFIX", "p_")],
        "store.url",
        "unix:///var/run/nutcracker/ratelimit.sock",
    ),
    (&[("CACHE_KEY_PREFIX", "p_")], "store.kind", "redis"),
    (
        &[("REDIS_SOCKET_TYPE", "tcp"), ("REDIS_URL", "redis.ns:6379")],
        "store.url",
        "redis://redis.ns:6379",
    ),
    (
        &[("REDIS_SOCKET_TYPE", "tcp"), ("REDIS_URL", "redis://h:1/2")],
        "store.url",
        "redis://h:1/2",
    ),
    (
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "h:1"),
            ("REDIS_AUTH", "p@ss:w/rd"),
        ],
        "store.url",
        "redis://p%40ss:w%2Frd@h:1",
    ),
    (
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "h:1"),
            ("REDIS_AUTH", "s3cret"),
        ],
        "store.url",
        "redis://:s3cret@h:1",
    ),
    (
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "h:1"),
            ("REDIS_TLS", "true"),
        ],
        "store.url",
        "rediss://h:1",
    ),
    (
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "h:1"),
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CACERT", "/ca.pem"),
            ("REDIS_TLS_CLIENT_CERT", "/c.pem"),
            ("REDIS_TLS_CLIENT_KEY", "/k.pem"),
        ],
        "store",
        "{kind: redis, url: 'rediss://h:1', key_layout: envoy, envoy_prefix: '', tls_ca_file: /ca.pem, tls_cert_file: /c.pem, tls_key_file: /k.pem}",
    ),
    (
        &[("REDIS_URL", "h:1"), ("REDIS_TLS_CACERT", "/ca.pem")],
        "store.tls_ca_file",
        "~",
    ),
    (
        &[("REDIS_URL", "/run/redis.sock"), ("REDIS_AUTH", "u:p")],
        "store.url",
        "unix:///run/redis.sock?user=u&pass=p",
    ),
    (
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "h:1"),
            ("REDIS_TIMEOUT", "15ms"),
        ],
        "store.timeout",
        "15000us",
    ),
    (
        &[("REDIS_SOCKET_TYPE", "tcp"), ("REDIS_URL", "h:1")],
        "store.timeout",
        "~",
    ),
    (
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_TYPE", "cluster"),
            ("REDIS_URL", "a:1, b:2"),
            ("REDIS_AUTH", "pw"),
        ],
        "store",
        "{kind: redis_cluster, urls: ['redis://:pw@a:1', 'redis://:pw@b:2']}",
    ),
    (
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_TYPE", "SENTINEL"),
            ("REDIS_URL", "mymaster,s1:26379,s2:26379"),
            ("REDIS_AUTH", "app:pw"),
            ("REDIS_SENTINEL_AUTH", "spw"),
            ("REDIS_TLS", "true"),
        ],
        "store",
        "{kind: redis_sentinel, urls: ['rediss://:spw@s1:26379', 'rediss://:spw@s2:26379'], master_name: mymaster, master_username: app, master_password: pw, master_tls: true, key_layout: envoy, envoy_prefix: ''}",
    ),
    (&[("CACHE_KEY_PREFIX", "rl_")], "store.prefix", "rl_"),
    (&[("CACHE_KEY_PREFIX", "")], "store.prefix", "~"),
    // Counters continue in envoyproxy/ratelimit's key layout, except on a
    // Cluster (warned) and on the memory store.
    (&[("CACHE_KEY_PREFIX", "rl_")], "store.key_layout", "envoy"),
    (&[("CACHE_KEY_PREFIX", "rl_")], "store.envoy_prefix", "rl_"),
    (&[("REDIS_URL", "a:1")], "store.envoy_prefix", "''"),
    (
        &[("REDIS_TYPE", "CLUSTER"), ("REDIS_URL", "a:1")],
        "store.key_layout",
        "~",
    ),
    (&[("BACKEND_TYPE", "memcache")], "store.key_layout", "~"),
    // The deny cache: bytes / 128 entries.
    (
        &[("LOCAL_CACHE_SIZE_IN_BYTES", "1048576")],
        "store.deny_cache",
        "{enabled: true, capacity: 8192}",
    ),
    (
        &[("LOCAL_CACHE_SIZE_IN_BYTES", "100")],
        "store.deny_cache.capacity",
        "1",
    ),
    (
        &[("LOCAL_CACHE_SIZE_IN_BYTES", "0")],
        "store.deny_cache",
        "{enabled: false}",
    ),
    (&[("REDIS_URL", "h:1")], "store.deny_cache", "~"),
    // A second store for per-second limits.
    (
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "h:1"),
            ("CACHE_KEY_PREFIX", "rl_"),
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_SOCKET_TYPE", "tcp"),
            ("REDIS_PERSECOND_URL", "fast:2"),
            ("REDIS_PERSECOND_AUTH", "x"),
            ("REDIS_PERSECOND_TIMEOUT", "5ms"),
        ],
        "store.per_second",
        "{kind: redis, url: 'redis://:x@fast:2', timeout: 5000us, prefix: rl_}",
    ),
    (
        &[("REDIS_PERSECOND", "true")],
        "store.per_second.url",
        "unix:///var/run/nutcracker/ratelimitpersecond.sock",
    ),
    (
        &[
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_TYPE", "CLUSTER"),
            ("REDIS_PERSECOND_SOCKET_TYPE", "tcp"),
            ("REDIS_PERSECOND_URL", "c:1"),
        ],
        "store.per_second.urls",
        "['redis://c:1']",
    ),
    (
        &[("REDIS_PERSECOND_URL", "fast:2")],
        "store.per_second",
        "~",
    ),
    // A cluster is reached over TCP whatever REDIS_SOCKET_TYPE says.
    (
        &[("REDIS_TYPE", "CLUSTER"), ("REDIS_URL", "a:1")],
        "store.urls",
        "['redis://a:1']",
    ),
    // BACKEND_TYPE=memcache: the memory store (warned).
    (&[("BACKEND_TYPE", "memcache")], "store", "{kind: memory}"),
    // envoy:
    (&[("SHADOW_MODE", "true")], "envoy.shadow_mode", "true"),
    (&[("SHADOW_MODE", "false")], "envoy", "~"),
    (&[("QUOTA_MODE", "true")], "envoy.quota_mode", "true"),
    (
        &[("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true")],
        "envoy.stop_cache_key_increment_when_overlimit",
        "true",
    ),
    (
        &[("RESPONSE_DYNAMIC_METADATA", "true")],
        "envoy.response_dynamic_metadata",
        "true",
    ),
    (&[("RESPONSE_DYNAMIC_METADATA", "false")], "envoy", "~"),
    (
        &[("NEAR_LIMIT_RATIO", "0.9")],
        "envoy.near_limit_ratio",
        "0.9",
    ),
    (
        &[("NEAR_LIMIT_RATIO", "0.8"), ("REDIS_URL", "h")],
        "envoy.near_limit_ratio",
        "0.8",
    ),
    (
        &[("LIMIT_RESPONSE_HEADERS_ENABLED", "true")],
        "envoy.response_headers",
        "{enabled: true, limit: RateLimit-Limit, remaining: RateLimit-Remaining, reset: RateLimit-Reset}",
    ),
    (
        &[
            ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
            ("LIMIT_LIMIT_HEADER", "X-Limit"),
            ("LIMIT_REMAINING_HEADER", "X-Left"),
            ("LIMIT_RESET_HEADER", "X-Reset"),
        ],
        "envoy.response_headers",
        "{enabled: true, limit: X-Limit, remaining: X-Left, reset: X-Reset}",
    ),
    (
        &[("LIMIT_LIMIT_HEADER", "X-Limit")],
        "envoy.response_headers",
        "~",
    ),
];

#[test]
fn each_variable_maps_to_its_key() {
    for (vars, path, expected) in ROWS {
        let environment = mapped(vars);
        let expected: Value = serde_norway::from_str(expected).unwrap();
        assert_eq!(
            at(&environment.document, path),
            expected,
            "{vars:?} -> {path}\n{}",
            environment.document
        );
        assert_eq!(
            environment.source.generated.as_deref(),
            Some(environment.document.as_str())
        );
    }
}

#[test]
fn the_runtime_variables_name_the_config_directory() {
    for (vars, directory, dot, merge) in [
        (
            &[("REDIS_URL", "h")][..],
            "/srv/runtime_data/current/config",
            false,
            false,
        ),
        (
            &[("RUNTIME_ROOT", "/data")][..],
            "/data/config",
            false,
            false,
        ),
        (
            &[
                ("RUNTIME_ROOT", "/data"),
                ("RUNTIME_SUBDIRECTORY", "ratelimit"),
                ("RUNTIME_APPDIRECTORY", "limits"),
            ][..],
            "/data/ratelimit/limits",
            false,
            false,
        ),
        (
            &[("RUNTIME_ROOT", "/d"), ("RUNTIME_WATCH_ROOT", "false")][..],
            "/d/config",
            false,
            false,
        ),
        (
            &[("RUNTIME_ROOT", "/d"), ("RUNTIME_IGNOREDOTFILES", "true")][..],
            "/d/config",
            true,
            false,
        ),
        (
            &[("RUNTIME_ROOT", "/d"), ("MERGE_DOMAIN_CONFIG", "true")][..],
            "/d/config",
            false,
            true,
        ),
    ] {
        let source = mapped(vars).source;
        assert_eq!(source.envoy, Some(PathBuf::from(directory)), "{vars:?}");
        assert_eq!(source.ignore_dot_files, dot, "{vars:?}");
        assert_eq!(source.merge_domains, merge, "{vars:?}");
        assert_eq!(source.config, None);
    }
}

#[test]
fn log_level_and_format() {
    for (vars, level, json) in [
        (&[("REDIS_URL", "h")][..], "warn", false),
        (
            &[("REDIS_URL", "h"), ("LOG_LEVEL", "debug")][..],
            "debug",
            false,
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_LEVEL", "INFO")][..],
            "info",
            false,
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_LEVEL", "warning")][..],
            "warn",
            false,
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_LEVEL", "fatal")][..],
            "error",
            false,
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_LEVEL", "panic")][..],
            "error",
            false,
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_LEVEL", "trace")][..],
            "trace",
            false,
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_FORMAT", "json")][..],
            "warn",
            true,
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_FORMAT", "JSON")][..],
            "warn",
            true,
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_FORMAT", "text")][..],
            "warn",
            false,
        ),
    ] {
        let log = mapped(vars).log;
        assert_eq!((log.level, log.json), (level, json), "{vars:?}");
    }
}

#[test]
fn only_envoyproxy_variables_switch_the_mapping_on() {
    assert!(environment(&[]).unwrap().is_none());
    // The generic names alone are not enough: other software sets them.
    assert!(
        environment(&[("HOST", "0.0.0.0"), ("PORT", "80"), ("LOG_LEVEL", "debug")])
            .unwrap()
            .is_none()
    );
    assert!(
        environment(&[("TOLLGATE_CONFIG", "x"), ("PATH", "/bin")])
            .unwrap()
            .is_none()
    );
    let found = mapped(&[("PORT", "80"), ("RUNTIME_ROOT", "/d"), ("PATH", "/bin")]);
    assert_eq!(found.variables, ["PORT", "RUNTIME_ROOT"]);
}

#[test]
fn unhonoured_variables_are_warnings_that_name_them() {
    let found = mapped(&[
        ("USE_STATSD", "true"),
        ("MEMCACHE_HOST_PORT", "m:11211"),
        ("CONFIG_GRPC_XDS_SERVER_URL", "x:1"),
        ("TRACING_ENABLED", "true"),
        ("REDIS_POOL_SIZE", "20"),
        ("DEBUG_PORT", "6070"),
        ("EXPIRATION_JITTER_MAX_SECONDS", "300"),
    ]);
    for name in [
        "USE_STATSD",
        "MEMCACHE_HOST_PORT",
        "CONFIG_GRPC_XDS_SERVER_URL",
        "TRACING_ENABLED",
        "REDIS_POOL_SIZE",
        "DEBUG_PORT",
        "EXPIRATION_JITTER_MAX_SECONDS",
    ] {
        assert!(
            found
                .warnings
                .iter()
                .any(|w| w.starts_with(&format!("{name} is set but not honoured"))),
            "{name}: {:?}",
            found.warnings
        );
    }
    assert_eq!(found.warnings.len(), 7, "{:?}", found.warnings);
    // Asking for nothing tollgate lacks is not worth a warning.
    let quiet = mapped(&[
        ("USE_STATSD", "false"),
        ("TRACING_ENABLED", "0"),
        ("DISABLE_STATS", "false"),
        ("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "true"),
        ("RUNTIME_ROOT", "/d"),
        ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true"),
        ("RESPONSE_DYNAMIC_METADATA", "true"),
        ("RUNTIME_WATCH_ROOT", "false"),
    ]);
    assert_eq!(quiet.warnings, Vec::<String>::new());
    let xds = mapped(&[("CONFIG_TYPE", "GRPC_XDS_SOTW")]);
    assert!(
        xds.warnings[0].contains("CONFIG_TYPE=GRPC_XDS_SOTW"),
        "{:?}",
        xds.warnings
    );
    let memcache = mapped(&[("BACKEND_TYPE", "memcache")]);
    assert!(
        memcache.warnings[0].contains("BACKEND_TYPE=memcache"),
        "{:?}",
        memcache.warnings
    );
    let san = mapped(&[
        ("GRPC_SERVER_USE_TLS", "true"),
        ("GRPC_SERVER_TLS_CERT", "/c.pem"),
        ("GRPC_SERVER_TLS_KEY", "/k.pem"),
        ("GRPC_CLIENT_TLS_SAN", "envoy.internal"),
    ]);
    assert_eq!(
        san.warnings,
        [
            "GRPC_CLIENT_TLS_SAN is set but not used: without GRPC_CLIENT_TLS_CACERT \
          no client certificate is asked for (as in envoyproxy/ratelimit)"
        ]
    );
    let uds = mapped(&[
        ("GRPC_UDS", "/run/rl.sock"),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", "9001"),
    ]);
    assert_eq!(
        uds.warnings,
        [
            "GRPC_HOST is set but not used: gRPC listens on GRPC_UDS instead (as in envoyproxy/ratelimit)",
            "GRPC_PORT is set but not used: gRPC listens on GRPC_UDS instead (as in envoyproxy/ratelimit)"
        ]
    );
    assert_eq!(
        mapped(&[("GRPC_UDS", "/run/rl.sock")]).warnings,
        Vec::<String>::new()
    );
    let tls = mapped(&[("GRPC_SERVER_TLS_CERT", "/c.pem")]);
    assert!(
        tls.warnings[0].contains("GRPC_SERVER_USE_TLS is not true"),
        "{:?}",
        tls.warnings
    );
}

#[test]
fn invalid_values_are_errors_that_name_the_variable() {
    for (vars, variable, problem) in [
        (
            &[("REDIS_TYPE", "bogus")][..],
            "REDIS_TYPE",
            "SINGLE, CLUSTER or SENTINEL",
        ),
        (
            &[("REDIS_SOCKET_TYPE", "udp")][..],
            "REDIS_SOCKET_TYPE",
            "`tcp` or `unix`",
        ),
        (
            &[("REDIS_TYPE", "SENTINEL"), ("REDIS_URL", "master")][..],
            "REDIS_URL",
            "<master name>,<sentinel",
        ),
        (&[("REDIS_TLS", "yes")][..], "REDIS_TLS", "not a boolean"),
        (
            &[("REDIS_URL", "h"), ("PORT", "70000")][..],
            "PORT",
            "whole number",
        ),
        (
            &[("REDIS_URL", "h"), ("HOST", "example.com")][..],
            "HOST",
            "not an IP address",
        ),
        (
            &[("REDIS_URL", "h"), ("LOG_LEVEL", "loud")][..],
            "LOG_LEVEL",
            "not a level",
        ),
        (
            &[("REDIS_TIMEOUT", "10")][..],
            "REDIS_TIMEOUT",
            "not a duration",
        ),
        (
            &[("REDIS_TIMEOUT", "0s")][..],
            "REDIS_TIMEOUT",
            "above zero",
        ),
        (
            &[("GRPC_MAX_CONNECTION_AGE", "-1s")][..],
            "GRPC_MAX_CONNECTION_AGE",
            "not a duration",
        ),
        (
            &[("GRPC_SERVER_USE_TLS", "true")][..],
            "GRPC_SERVER_TLS_CERT",
            "required",
        ),
        (
            &[
                ("GRPC_SERVER_USE_TLS", "true"),
                ("GRPC_SERVER_TLS_CERT", "/c"),
                ("GRPC_SERVER_TLS_KEY", "/k"),
                ("GRPC_CLIENT_TLS_CACERT", "/ca"),
                ("GRPC_CLIENT_TLS_SAN", "*.example.com"),
            ][..],
            "GRPC_CLIENT_TLS_SAN",
            "not a DNS name or an IP address",
        ),
        (
            &[("USE_PROMETHEUS", "true"), ("PROMETHEUS_ADDR", "9090")][..],
            "PROMETHEUS_ADDR",
            "host:port",
        ),
        (
            &[("NEAR_LIMIT_RATIO", "high")][..],
            "NEAR_LIMIT_RATIO",
            "not a number",
        ),
        (
            &[("LOCAL_CACHE_SIZE_IN_BYTES", "-1")][..],
            "LOCAL_CACHE_SIZE_IN_BYTES",
            "whole number",
        ),
        (
            &[("BACKEND_TYPE", "etcd")][..],
            "BACKEND_TYPE",
            "`redis` or `memcache`",
        ),
        (
            &[("CONFIG_TYPE", "CONSUL")][..],
            "CONFIG_TYPE",
            "FILE or GRPC_XDS_SOTW",
        ),
    ] {
        let error = environment(vars).expect_err(&format!("{vars:?}"));
        assert_eq!(error.variable, variable, "{vars:?}: {error}");
        assert!(error.problem.contains(problem), "{vars:?}: {error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("environment variable {variable}=")),
            "{error}"
        );
    }
    // A password is never echoed.
    let error = environment(&[
        ("REDIS_TYPE", "SENTINEL"),
        ("REDIS_URL", "m"),
        ("REDIS_SENTINEL_AUTH", "s3cret"),
    ])
    .unwrap_err();
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

#[test]
fn go_durations() {
    for (text, micros) in [
        ("0", 0),
        ("10s", 10_000_000),
        ("1h30m", 5_400_000_000),
        ("250ms", 250_000),
        ("1.5s", 1_500_000),
        (".5s", 500_000),
        ("300us", 300),
        ("300µs", 300),
        ("1ns", 1),
        ("2m3s4ms", 123_004_000),
    ] {
        assert_eq!(
            parse_go_duration(text),
            Ok(Duration::from_micros(micros)),
            "{text}"
        );
    }
    for text in ["", "10", "s", "1d", "-1s", "1.2.3s", "1 s"] {
        assert!(parse_go_duration(text).is_err(), "{text}");
    }
}

/// The document parses as tollgate's configuration, meaning what the
/// variables say.
#[test]
fn the_document_is_a_valid_configuration() {
    let environment = mapped(&[
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", "0"),
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("REDIS_AUTH", "user:p@ss"),
        ("REDIS_TIMEOUT", "15ms"),
        ("CACHE_KEY_PREFIX", "rl_"),
        ("LOCAL_CACHE_SIZE_IN_BYTES", "1048576"),
        ("USE_PROMETHEUS", "true"),
        ("PROMETHEUS_ADDR", "127.0.0.1:0"),
        ("GRPC_MAX_CONNECTION_AGE", "24h"),
        ("GRPC_MAX_CONNECTION_AGE_GRACE", "1h"),
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
        ("LIMIT_REMAINING_HEADER", "X-Left"),
        ("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
    ]);
    let config = Config::parse(&environment.document, "<environment>")
        .unwrap_or_else(|e| panic!("{e}\n{}", environment.document));
    assert_eq!(config.server.http, "127.0.0.1:0".parse().unwrap());
    assert_eq!(config.store.urls, ["redis://user:p%40ss@127.0.0.1:6379"]);
    assert_eq!(config.store.prefix, "rl_");
    assert_eq!(config.store.timeout, Duration::from_millis(15));
    assert_eq!(config.store.deny_cache.capacity, 8192);
    assert_eq!(
        config.server.grpc_max_connection_age,
        Duration::from_secs(86_400)
    );
    assert_eq!(
        config.server.grpc_max_connection_age_grace,
        Duration::from_secs(3600)
    );
    assert!(config.server.metrics.is_some());
    assert!(config.server.healthy_needs_domains);
    assert!(config.envoy.response_headers.enabled);
    assert_eq!(config.envoy.response_headers.remaining, "X-Left");
}

/// `GRPC_UDS` loads as a unix socket at the path Go would listen on: an
/// absolute path (even one starting with `//`), a relative one, an
/// abstract name.
#[test]
fn grpc_uds_is_the_path_go_listens_on() {
    for path in ["/run/rl.sock", "//run/rl.sock", "rl.sock", "@ratelimit"] {
        let environment = mapped(&[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "127.0.0.1:6379"),
            ("GRPC_UDS", path),
        ]);
        let config = Config::parse(&environment.document, "<environment>")
            .unwrap_or_else(|e| panic!("{e}\n{}", environment.document));
        assert_eq!(
            config.server.grpc,
            crate::ListenAddr::Unix(PathBuf::from(path)),
            "{path}"
        );
    }
}

/// Environments that reach the parts built beside the mapping (Sentinel, a
/// per-second store, envoyproxy/ratelimit's key layout, the `envoy:`
/// switches) give documents that load, meaning what they say.
#[test]
fn documents_of_every_store_kind_and_switch_load() {
    let load = |vars: &[(&str, &str)]| {
        let environment = mapped(vars);
        Config::parse(&environment.document, "<environment>")
            .unwrap_or_else(|e| panic!("{e}\n{}", environment.document))
    };
    // A single Redis with a per-second Cluster: the main store continues
    // envoyproxy/ratelimit's counters, the Cluster cannot (and says so).
    let vars = [
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("CACHE_KEY_PREFIX", "rl_"),
        ("REDIS_PERSECOND", "true"),
        ("REDIS_PERSECOND_TYPE", "CLUSTER"),
        ("REDIS_PERSECOND_URL", "127.0.0.1:7000,127.0.0.1:7001"),
    ];
    let config = load(&vars);
    assert_eq!(config.store.key_layout, KeyLayout::Envoy);
    assert_eq!(config.store.envoy_prefix, "rl_");
    let second = config.store.per_second.as_deref().unwrap();
    assert_eq!(second.kind, StoreKind::RedisCluster);
    assert_eq!(second.key_layout, KeyLayout::Tollgate);
    assert!(
        mapped(&vars)
            .warnings
            .iter()
            .any(|w| w.starts_with("REDIS_PERSECOND_TYPE=CLUSTER")),
        "{:?}",
        mapped(&vars).warnings
    );
    // Sentinel, with every envoy: switch.
    let config = load(&[
        ("REDIS_TYPE", "SENTINEL"),
        ("REDIS_URL", "mymaster,127.0.0.1:26379,127.0.0.1:26380"),
        ("REDIS_AUTH", "pw"),
        ("SHADOW_MODE", "true"),
        ("QUOTA_MODE", "true"),
        ("NEAR_LIMIT_RATIO", "0.9"),
        ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true"),
        ("RESPONSE_DYNAMIC_METADATA", "1"),
    ]);
    assert_eq!(config.store.kind, StoreKind::RedisSentinel);
    assert_eq!(config.store.key_layout, KeyLayout::Envoy);
    assert!(config.envoy.shadow_mode && config.envoy.quota_mode);
    assert!(config.envoy.stop_cache_key_increment_when_overlimit);
    assert!(config.envoy.response_dynamic_metadata);
    assert!((config.envoy.near_limit_ratio - 0.9).abs() < 1e-9);
    // A Cluster keeps tollgate's layout.
    let config = load(&[("REDIS_TYPE", "CLUSTER"), ("REDIS_URL", "127.0.0.1:7000")]);
    assert_eq!(config.store.key_layout, KeyLayout::Tollgate);
}

/// What `tollgate check` prints and what an invalid value's error says
/// never carry a password.
#[test]
fn printed_documents_and_errors_hide_passwords() {
    let sentinel = mapped(&[
        ("REDIS_TYPE", "SENTINEL"),
        ("REDIS_URL", "mymaster,127.0.0.1:26379"),
        ("REDIS_AUTH", "master-secret"),
        ("REDIS_SENTINEL_AUTH", "sentinel-secret"),
        ("REDIS_PERSECOND", "true"),
        ("REDIS_PERSECOND_URL", "127.0.0.1:6380"),
        ("REDIS_PERSECOND_SOCKET_TYPE", "tcp"),
        ("REDIS_PERSECOND_AUTH", "fast-secret"),
    ]);
    // The document used to connect has them; the printed one does not.
    assert!(sentinel.document.contains("master-secret"));
    let printed = sentinel.redacted_document();
    for secret in ["master-secret", "sentinel-secret", "fast-secret"] {
        assert!(!printed.contains(secret), "{secret} in\n{printed}");
    }
    assert!(printed.contains("master_name: mymaster"), "{printed}");
    // A REDIS_URL of the wrong form (a URL, where envoyproxy/ratelimit
    // takes `host:port`) is refused without echoing its password.
    let error = environment(&[
        ("REDIS_TYPE", "SENTINEL"),
        ("REDIS_URL", "redis://:url-secret@h:1"),
    ])
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(!error.is_empty(), "refused");
    assert!(!error.contains("url-secret"), "{error}");
}
