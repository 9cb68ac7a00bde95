//! The server tests' own support: [`TestServer`], a `tollgate_server::run`
//! on 127.0.0.1:0 (HTTP and gRPC ports) for each test over the memory
//! store, a real Redis or a Redis Cluster, with its own shutdown; the
//! [`CONFIG`] it runs by default; Envoy descriptors. Serving and HTTP
//! requests are testkit's ([`tollgate_testkit::serve`],
//! [`tollgate_testkit::http`]).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::UInt64Value;
use tokio::task::JoinHandle;
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_server::config::{DEFAULT_STORE_TIMEOUT, DEMO_CONFIG};
use tollgate_server::{
    App, Config, ConfigSource, Listeners, ServeError, ServerOptions, ServerStore,
};
use tollgate_testkit::http::Client;
use tollgate_testkit::redis::{RedisCluster, RedisServer};
use tollgate_testkit::serve::{Stop, loopback, shutdown};
use tonic::transport::{Channel, Endpoint};

/// The test server's configuration: the demo's policies before its `burst`
/// (`api`, `login`) and its `edge` domain (from [`DEMO_CONFIG`]), with
/// request bounds, an admin token, two more policies and more descriptors.
/// Tests assert on its exact policy list.
pub static CONFIG: LazyLock<String> = LazyLock::new(|| {
    let (policies, descriptors) = demo_parts();
    format!(
        r#"
server:
  max_body_bytes: 4096
  max_key_bytes: 64
  admin_token: s3cret
policies:
{policies}  - name: tiny
    algorithm: fixed_window
    limit: 2
    period: 1h
  - name: hourly
    algorithm: fixed_window
    limit: 3
    period: 1h
domains:
  - domain: edge
    descriptors:
{descriptors}      - key: path
        value: /free
        rate_limit: {{ unlimited: true }}
      - key: path
        value: /closed
        rate_limit: {{ unit: minute, requests_per_unit: 0 }}
      - key: user
        descriptors:
          - key: tier
            value: shadow
            shadow_mode: true
            rate_limit: {{ unit: hour, requests_per_unit: 1 }}
          - key: tier
            rate_limit: {{ unit: hour, requests_per_unit: 2, name: per_user }}
      - key: plan
        value: premium
        rate_limit:
          unit: hour
          requests_per_unit: 100
          replaces:
            - name: per_user
"#
    )
});

/// Two runs of lines of [`DEMO_CONFIG`]: its policies before `burst`, and
/// the descriptors of its `edge` domain (its last section).
fn demo_parts() -> (&'static str, &'static str) {
    let part = |text: &'static str, before: &str| {
        text.split_once(before)
            .unwrap_or_else(|| panic!("the demo configuration has no {before:?}"))
    };
    let (_, rest) = part(DEMO_CONFIG, "policies:\n");
    let (policies, rest) = part(rest, "  - name: burst\n");
    let (_, rest) = part(rest, "  - domain: edge\n    descriptors:\n");
    (policies, rest)
}

/// The store timeout of [`TestServer`]s on Redis whose configuration
/// leaves it at the default.
pub const TEST_STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// One policy, `api`: `limit` requests an hour in fixed windows; reload
/// tests write it with one limit, then another.
pub fn api_config(limit: u64) -> String {
    format!(
        "policies:\n  - name: api\n    algorithm: fixed_window\n    limit: {limit}\n    period: 1h\n"
    )
}

/// An Envoy request descriptor of `entries` (key, value), with Envoy's
/// `hits_addend` when given.
pub fn descriptor(entries: &[(&str, &str)], hits_addend: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        limit: None,
        hits_addend: hits_addend.map(|value| UInt64Value { value }),
    }
}

/// Which store a test runs on.
pub enum Backend {
    Memory,
    Redis(RedisServer),
    /// A Redis Cluster; the server connects to it as its configuration's
    /// `store:` section says (`kind: redis_cluster`, `urls: [...]`).
    RedisCluster(RedisCluster),
    /// A master, a replica and sentinels; the server finds the master as its
    /// configuration says (`kind: redis_sentinel`, `urls`, `master_name`).
    RedisSentinel(tollgate_testkit::redis::RedisSentinel),
    /// Whatever the configuration's `store:` section names, kept alive by
    /// the test itself: several servers on one Redis or Cluster.
    Config,
    /// A server the app connects to as its configuration says (`url:
    /// unix://...`, `rediss://` with TLS files...), not through the test's
    /// own store; the test probes it over TCP.
    RedisFromConfig(RedisServer),
}

impl Backend {
    pub fn memory() -> Backend {
        Backend::Memory
    }

    pub fn redis() -> Backend {
        Backend::Redis(RedisServer::start())
    }

    pub fn redis_cluster() -> Backend {
        Backend::RedisCluster(RedisCluster::start(3, 0))
    }

    /// The store for `config`: for Redis the backend's own, for the memory
    /// store and a cluster the one the configuration's `store:` section
    /// builds.
    pub async fn store_for(&self, config: &Config) -> ServerStore {
        match self {
            Backend::Memory
            | Backend::RedisCluster(_)
            | Backend::RedisSentinel(_)
            | Backend::Config
            | Backend::RedisFromConfig(_) => ServerStore::connect(&config.store).await.unwrap(),
            Backend::Redis(_) => self.store().await,
        }
    }

    pub async fn store(&self) -> ServerStore {
        match self {
            Backend::Memory => ServerStore::Memory(tollgate::MemoryStore::new()),
            Backend::Config => panic!("Backend::Config has no store but its configuration's"),
            Backend::Redis(server) => ServerStore::Redis(
                RedisStore::connect(&server.url(), RedisOptions::default().prefix("test"))
                    .await
                    .unwrap(),
            ),
            Backend::RedisCluster(cluster) => ServerStore::Redis(
                RedisStore::connect_cluster(
                    &cluster.urls(),
                    RedisOptions::default().prefix("test"),
                )
                .await
                .unwrap(),
            ),
            Backend::RedisSentinel(group) => ServerStore::Redis(
                RedisStore::connect_sentinel(
                    &group.sentinel_urls(),
                    tollgate_redis::SentinelMaster::new(group.master_name()),
                    RedisOptions::default().prefix("test"),
                )
                .await
                .unwrap(),
            ),
            Backend::RedisFromConfig(server) => ServerStore::Redis(
                RedisStore::connect(&server.unix_url(), RedisOptions::default().prefix("test"))
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// A server whose policy `second` (5 per second) lives on the per-second
/// Redis `second` and `hour` (5 per hour) on `main` (`store.per_second`),
/// started as `serve` starts (`App::start` connects both stores; a
/// [`TestServer`]'s `App::new` one), serving the HTTP API.
pub async fn per_second_server(
    main: &RedisServer,
    second: &RedisServer,
) -> (Arc<App>, tollgate_testkit::serve::Served) {
    let text = format!(
        "store:\n  kind: redis\n  url: {}\n  timeout: 1s\n  per_second:\n    kind: redis\n    url: {}\npolicies:\n  - name: second\n    algorithm: fixed_window\n    limit: 5\n    period: 1s\n  - name: hour\n    algorithm: fixed_window\n    limit: 5\n    period: 1h\n",
        main.url(),
        second.url()
    );
    let source = ConfigSource {
        config: Some(tollgate_testkit::files::temp_file("per-second.yaml", &text)),
        ..ConfigSource::default()
    };
    let app = Arc::new(App::start(source).await.unwrap());
    let server =
        tollgate_testkit::serve::Served::router(tollgate_server::http::router(Arc::clone(&app)))
            .await;
    (app, server)
}

/// A running server.
pub struct TestServer {
    pub app: Arc<App>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// A client of the HTTP port (the server is one through `Deref`).
    pub client: Client,
    stop: Option<Stop>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    /// Kept alive for the server's life.
    pub backend: Backend,
}

impl TestServer {
    /// A server on [`CONFIG`].
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_text(backend, &CONFIG).await
    }

    /// A server on the configuration `text`, which is neither watched nor
    /// reloaded on SIGHUP.
    pub async fn start_text(backend: Backend, text: &str) -> TestServer {
        Self::start_with(
            backend,
            text,
            ConfigSource::default(),
            ServerOptions::default()
                .watch_interval(None)
                .reload_on_sighup(false),
        )
        .await
    }

    /// A server on the configuration file `file`, neither watched nor
    /// reloaded on SIGHUP: the test rewrites it and reloads by hand.
    pub async fn start_file(backend: Backend, file: &std::path::Path) -> TestServer {
        let source = ConfigSource {
            config: Some(file.to_path_buf()),
            ..ConfigSource::default()
        };
        Self::start_with(
            backend,
            "",
            source,
            ServerOptions::default()
                .watch_interval(None)
                .reload_on_sighup(false),
        )
        .await
    }

    pub async fn start_with(
        backend: Backend,
        text: &str,
        source: ConfigSource,
        options: ServerOptions,
    ) -> TestServer {
        let mut config = if source == ConfigSource::default() {
            Config::parse(text, "test.yaml").unwrap()
        } else {
            // As `App::start`: refused envoy files leave the server without
            // an Envoy configuration rather than stopping it.
            source.load_or_unloaded().unwrap()
        };
        // These tests are about answers, not a slow store: on a loaded
        // 2-core machine a healthy Redis call can outlast the default store
        // timeout (10 ms, sized to answer before Envoy's 20 ms), and the
        // degraded decision would break an exact assertion. So a
        // configuration on Redis that leaves `store.timeout` at its default
        // gets TEST_STORE_TIMEOUT here; a test of timeouts writes its own.
        // The default itself is tested in config/tests.rs and behind a real
        // Envoy (crates/cli/tests/envoy_proxy.rs).
        if !matches!(backend, Backend::Memory) && config.store.timeout == DEFAULT_STORE_TIMEOUT {
            config.store.timeout = TEST_STORE_TIMEOUT;
        }
        let store = backend.store_for(&config).await;
        let app = Arc::new(App::new(source, config, store));
        let (http_listener, http) = loopback().await;
        let (grpc_listener, grpc) = loopback().await;
        let (stop, stopped) = shutdown();
        let task = tokio::spawn(tollgate_server::run(
            Arc::clone(&app),
            Listeners {
                http: http_listener,
                grpc: Some(grpc_listener.into()),
            },
            options,
            stopped,
        ));
        let server = TestServer {
            app,
            http,
            grpc,
            client: Client::new(http),
            stop: Some(stop),
            task: Some(task),
            backend,
        };
        // Up: `run` has started its watcher and listeners.
        server.wait_until_up("/healthz").await;
        server
    }

    /// A connection to the gRPC port.
    pub async fn grpc_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// An Envoy rate limit service client of the gRPC port.
    pub async fn rls_client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.grpc_channel().await)
    }

    /// `/v1/reset` of the JSON `body` with the bearer `token`: the
    /// response.
    pub async fn reset(&self, body: &str, token: &str) -> reqwest::Response {
        let authorization = format!("Bearer {token}");
        self.post_with("/v1/reset", body, &[("authorization", &authorization)])
            .await
    }

    /// Triggers shutdown and waits for the server to stop.
    pub async fn stop(&mut self) -> Result<(), ServeError> {
        self.trigger_stop();
        match self.task.take() {
            Some(task) => task.await.unwrap(),
            None => Ok(()),
        }
    }

    pub fn trigger_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.fire();
        }
    }

    pub fn take_task(&mut self) -> JoinHandle<Result<(), ServeError>> {
        self.task.take().unwrap()
    }
}

impl Deref for TestServer {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}
