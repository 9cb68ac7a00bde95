//! A server on 127.0.0.1:0 for each test, over the memory store or a real
//! Redis, with its own shutdown.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::google::protobuf::UInt64Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_server::{
    App, Config, ConfigSource, Listeners, ServeError, ServerOptions, ServerStore,
};
use tollgate_testkit::redis::{RedisCluster, RedisServer};

pub const CONFIG: &str = r#"
server:
  max_body_bytes: 4096
  max_key_bytes: 64
  admin_token: s3cret
policies:
  - name: api
    algorithm: sliding_log
    limit: 100
    period: 1m
  - name: login
    algorithm: token_bucket
    limit: 5
    period: 1m
    burst: 10
  - name: tiny
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
      - key: remote_address
        rate_limit: { unit: second, requests_per_unit: 10 }
      - key: path
        value: /login
        policy: login
      - key: path
        value: /free
        rate_limit: { unlimited: true }
      - key: path
        value: /closed
        rate_limit: { unit: minute, requests_per_unit: 0 }
      - key: user
        descriptors:
          - key: tier
            value: shadow
            shadow_mode: true
            rate_limit: { unit: hour, requests_per_unit: 1 }
          - key: tier
            rate_limit: { unit: hour, requests_per_unit: 2, name: per_user }
      - key: plan
        value: premium
        rate_limit:
          unit: hour
          requests_per_unit: 100
          replaces:
            - name: per_user
"#;

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
            Backend::Memory | Backend::RedisCluster(_) => {
                ServerStore::connect(&config.store).await.unwrap()
            }
            Backend::Redis(_) => self.store().await,
        }
    }

    pub async fn store(&self) -> ServerStore {
        match self {
            Backend::Memory => ServerStore::Memory(tollgate::MemoryStore::new()),
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
        }
    }
}

/// A running server.
pub struct TestServer {
    pub app: Arc<App>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    /// Kept alive for the server's life.
    pub backend: Backend,
}

impl TestServer {
    /// A server on [`CONFIG`].
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_text(backend, CONFIG).await
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

    pub async fn start_with(
        backend: Backend,
        text: &str,
        source: ConfigSource,
        options: ServerOptions,
    ) -> TestServer {
        let config = if source == ConfigSource::default() {
            Config::parse(text, "test.yaml").unwrap()
        } else {
            source.load().unwrap()
        };
        let store = backend.store_for(&config).await;
        let app = Arc::new(App::new(source, config, store));
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tollgate_server::run(
            Arc::clone(&app),
            Listeners {
                http: http_listener,
                grpc: Some(grpc_listener),
            },
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        let server = TestServer {
            app,
            http,
            grpc,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            stop: Some(stop),
            task: Some(task),
            backend,
        };
        // Up: `run` has started its watcher and listeners.
        while server
            .client
            .get(server.url("/healthz"))
            .send()
            .await
            .is_err()
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let response = self.post(path, body).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
        };
        (status, value)
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Triggers shutdown and waits for the server to stop.
    pub async fn stop(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap(),
            None => Ok(()),
        }
    }

    pub fn trigger_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn take_task(&mut self) -> JoinHandle<Result<(), ServeError>> {
        self.task.take().unwrap()
    }
}
