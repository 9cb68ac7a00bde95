//! [`RedisStore`]: the [`Store`] whose state lives in Redis or Redis Cluster.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, Value};
use tollgate::algorithm::decision_from_parts;
use tollgate::reservation::{MAX_AMOUNT, MAX_DEADLINE};
use tollgate::store::{InvalidationSink, Invalidations};
use tollgate::{
    ChargeCall, Check, Decisions, LeaseAnswer, LeaseAsk, LeaseCall, Leased, Mode, PolicyRef,
    ReserveCall, SettleAnswer, SettleCall, Settled, Store, StoreError,
};

use crate::invalidate::{self, Subscriber};
use crate::keys::{InvalidPrefix, reservation_key, state_key, validate_prefix};
use crate::pool::Pool;
use crate::script::{self, ENVOY_COUNTER, ENVOY_COUNTER_SOURCE, LIBRARY};
use crate::sentinel::{Finder, Sentinel, SentinelMaster};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tollgate";

/// The first pause before re-sending after `TRYAGAIN` or `CLUSTERDOWN`
/// (and after any `MOVED` but a call's first); doubled after each, up to
/// [`MAX_BACKOFF`], until the caller's deadline.
const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause between two sends of one call.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// How to reach Redis and how to name keys.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// The first part of every key (no braces). Default `tollgate`.
    pub prefix: String,
    /// A bound on every call (one script evaluation): past it the call
    /// fails with [`StoreError::Timeout`]. Default `None`: deadlines belong
    /// to [`Resilient`](tollgate::resilience::Resilient), which the server
    /// puts in front of every store (its timeout, 50 ms by default, also
    /// drives the circuit breaker and the failure modes). The tower layer
    /// uses whatever limiter it is given: set one when the store is used
    /// bare, or a Redis that stops answering holds every call until it
    /// answers.
    pub timeout: Option<Duration>,
    /// Connecting fails after this long. Default 1 s.
    pub connect_timeout: Duration,
    /// For `rediss://` URLs: the CA certificate (PEM) that signed the
    /// server's certificate, when it is not in the public (webpki) roots —
    /// the usual case for a private Redis. `None` trusts the public roots.
    pub tls_root_cert: Option<Vec<u8>>,
    /// envoyproxy/ratelimit's `CACHE_KEY_PREFIX`, for the counters a caller
    /// keeps in its layout with [`RedisStore::apply_envoy_counter`]; `None`
    /// (the default) when the caller keeps none. Written as it is, so it
    /// may be empty.
    pub envoy_prefix: Option<String>,
    /// For `rediss://` URLs: a client certificate and its private key
    /// (both PEM), for a Redis that verifies its clients (mutual TLS,
    /// `tls-auth-clients yes`). `None`: no client certificate.
    pub tls_client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// Connections to the server (a standalone Redis, or the master a
    /// Sentinel names), used in turn: each is multiplexed, and more than
    /// one lets a busy client write and read on several at once. Default
    /// [`default_connections`](crate::pool::default_connections): one per
    /// core, at most 4. Between 1 and
    /// [`MAX_CONNECTIONS`](crate::pool::MAX_CONNECTIONS). A Cluster store
    /// keeps one connection per node.
    pub connections: usize,
    /// How often each of those connections is pinged, so that one the
    /// server closed (a restart, `CLIENT KILL`, an idle `timeout`)
    /// reconnects before a decision meets it, and so that none stays idle
    /// longer than this; after a round in which a `PING` failed, sooner
    /// (100 ms, doubling up to this), so that connections reconnect soon
    /// after a server that was down is back; and a connection whose `PING`
    /// the server refuses in two rounds in a row (a reconnection's `AUTH`
    /// refused, which redis-rs never tries again) is replaced. `None`:
    /// never (a closed connection is then found by the decision sent on
    /// it, which fails; a failed reconnection fails the next call, which
    /// starts another; a refused one stays refused). Default
    /// [`DEFAULT_KEEP_ALIVE`](crate::pool::DEFAULT_KEEP_ALIVE), 1 s.
    pub keep_alive: Option<Duration>,
}

/// Certificates are summarised, and the private key never printed.
impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls_root_cert", &self.tls_root_cert.is_some())
            .field("tls_client_cert", &self.tls_client_cert.is_some())
            .field("envoy_prefix", &self.envoy_prefix)
            .field("connections", &self.connections)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: None,
            connect_timeout: Duration::from_secs(1),
            tls_root_cert: None,
            envoy_prefix: None,
            tls_client_cert: None,
            connections: crate::pool::default_connections(),
            keep_alive: Some(crate::pool::DEFAULT_KEEP_ALIVE),
        }
    }
}

impl RedisOptions {
    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bounds every call (see [`RedisOptions::timeout`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trusts `pem` (a CA certificate) for `rediss://` connections.
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// Keeps counters in envoyproxy/ratelimit's layout too, under `prefix`
    /// (see [`RedisOptions::envoy_prefix`]).
    pub fn envoy_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.envoy_prefix = Some(prefix.into());
        self
    }

    /// Presents `cert` (PEM) with its private `key` (PEM) to a Redis that
    /// verifies its clients.
    pub fn tls_client_cert(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.tls_client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Sets the number of connections to the server (see
    /// [`RedisOptions::connections`]).
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// Sets how often each connection is pinged (see
    /// [`RedisOptions::keep_alive`]); `None`: never.
    pub fn keep_alive(mut self, every: Option<Duration>) -> Self {
        self.keep_alive = every;
        self
    }

    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.tls_root_cert.is_none() && self.tls_client_cert.is_none() {
            return None;
        }
        install_crypto_provider();
        Some(redis::TlsCertificates {
            client_tls: self
                .tls_client_cert
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.tls_root_cert.clone(),
        })
    }
}

/// Why a store could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The key prefix is invalid.
    #[error(transparent)]
    Prefix(#[from] InvalidPrefix),
    /// The URL is not a valid Redis URL.
    #[error("invalid Redis URL `{url}`: {source}")]
    Url {
        /// The URL, with any password replaced.
        url: String,
        /// The parser's reason.
        source: RedisError,
    },
    /// Redis could not be reached.
    #[error("cannot connect to Redis: {0}")]
    Connect(RedisError),
    /// A Cluster store needs at least one seed URL.
    #[error("a Redis Cluster needs at least one seed URL")]
    NoSeeds,
    /// A Sentinel store needs at least one sentinel URL.
    #[error("Redis Sentinel needs at least one sentinel URL")]
    NoSentinels,
    /// A Sentinel store needs the name the sentinels monitor the master
    /// under.
    #[error("Redis Sentinel needs the master's name")]
    NoMasterName,
    /// The sentinels must be reached over TCP (`redis://` or `rediss://`).
    #[error("sentinel URL `{0}` must start with redis:// or rediss://")]
    SentinelScheme(String),
}

/// What a store talks to, over every topology: the redis-rs connections
/// are multiplexed (concurrent calls share one socket and are pipelined),
/// reconnect on their own, and are cheap to clone. A standalone store holds
/// a [`Pool`] of them; a Sentinel store a pool to the master in use,
/// replaced when the master moves (see [`crate::sentinel`]).
enum Connection {
    Standalone(Pool),
    Cluster(ClusterConnection),
    Sentinel(Arc<Sentinel>),
}

impl Connection {
    /// The connection a call uses, and the Sentinel master's generation it
    /// belongs to (0 on other topologies).
    fn resolve(&self) -> (Link, u64) {
        match self {
            Connection::Standalone(pool) => (Link::Node(pool.pick()), 0),
            Connection::Cluster(cluster) => (Link::Cluster(cluster.clone()), 0),
            Connection::Sentinel(sentinel) => {
                let current = sentinel.current();
                (Link::Node(current.connections.pick()), current.generation)
            }
        }
    }

    /// The connections to the one server calls go to (the Sentinel's
    /// master in use); `None` on a Cluster, which keeps one per node.
    fn pool(&self) -> Option<Pool> {
        match self {
            Connection::Standalone(pool) => Some(pool.clone()),
            Connection::Sentinel(sentinel) => Some(sentinel.current().connections),
            Connection::Cluster(_) => None,
        }
    }
}

/// The connection one call is sent on.
enum Link {
    /// To one server: a standalone Redis or a Sentinel's master.
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    /// `ASKING` then `cmd` on the connection to `address` (`host:port`, from
    /// an `ASK` error), as one pipeline: one write, so nothing another task
    /// sends on that multiplexed connection can come between them.
    async fn asking(&mut self, address: &str, cmd: &Cmd) -> RedisResult<Value> {
        let Link::Cluster(connection) = self else {
            return Err(RedisError::from((
                ErrorKind::ClientError,
                "ASK redirection on a standalone connection",
            )));
        };
        let route = address
            .rsplit_once(':')
            .and_then(|(host, port)| {
                Some(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port: port.parse().ok()?,
                })
            })
            .ok_or_else(|| {
                RedisError::from((
                    ErrorKind::ClientError,
                    "ASK redirection to an invalid address",
                    address.to_owned(),
                ))
            })?;
        let mut pipeline = redis::pipe();
        pipeline.cmd("ASKING").add_command(cmd.clone());
        // Skip ASKING's reply (OK); keep `cmd`'s.
        let mut replies = connection.route_pipeline(&pipeline, 1, 1, route).await?;
        replies
            .pop()
            .ok_or_else(|| RedisError::from((ErrorKind::ClientError, "no reply after ASKING")))
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Node(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Node(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Node(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// Rate limiting state in Redis: every decision is one `FCALL` of a Lua
/// function (one `EVALSHA` of a script where functions cannot be used) that
/// reads, decides and writes atomically, on Redis's clock.
/// Cheap to clone; clones share the connection.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use tollgate::Limiter;
/// use tollgate_redis::{RedisOptions, RedisStore};
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379", RedisOptions::default()).await?;
/// let limiter = Limiter::builder(store).policy("api", "100/1m".parse()?).build();
/// let decision = limiter.check("api", "user-1", 1).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    prefix: String,
    /// See [`RedisOptions::envoy_prefix`].
    envoy_prefix: Option<String>,
    /// The bound on every call, if the store is used bare (see
    /// [`RedisOptions::timeout`]).
    timeout: Option<Duration>,
    /// Bounds connecting and `ping`.
    connect_timeout: Duration,
    /// Where a deny cache's invalidation feed subscribes (see
    /// [`invalidate`]); also names the channel `reset` publishes on.
    subscriber: Subscriber,
    /// Set once Redis has shown that this store cannot use functions
    /// (Redis before 7, or an ACL without `FCALL` or `FUNCTION LOAD`):
    /// decisions are `EVALSHA`s of scripts from then on (docs/REDIS.md).
    scripts_only: AtomicBool,
    /// Attempts to load the function library completed so far (whatever
    /// their outcome), and the lock one attempt at a time holds: when a
    /// server lost the library (a restart, `FUNCTION FLUSH`), every call in
    /// flight finds it missing, and one attempt serves them all instead of
    /// one compile each (or, when the load is refused, one refusal each in
    /// turn).
    library_loads: AtomicU64,
    loading: tokio::sync::Mutex<()>,
    /// Tests only: the time sent to the script instead of Redis's clock.
    #[cfg(feature = "test-clock")]
    clock: Option<tollgate::ManualClock>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = match self.inner.connection {
            Connection::Standalone(_) => "standalone",
            Connection::Cluster(_) => "cluster",
            Connection::Sentinel(_) => "sentinel",
        };
        let mut debug = f.debug_struct("RedisStore");
        debug.field("topology", &topology);
        if let Connection::Sentinel(sentinel) = &self.inner.connection {
            debug
                .field("master_name", &sentinel.master_name())
                .field("master", &sentinel.current().address)
                .field("sentinels", &sentinel.sentinels());
        }
        if !matches!(self.inner.connection, Connection::Cluster(_)) {
            debug.field("connections", &self.connections());
        }
        debug
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// rustls needs a process-wide crypto provider and cannot choose one when
/// the dependency graph enables none or several: without this, the first
/// `rediss://` connection panics. Installs ring unless the application has
/// installed a provider of its own.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The URL without its password, for messages and logs: the user
/// information of a TCP URL, and the `pass=` query parameter of a unix
/// socket URL (`redis+unix:///run/redis.sock?pass=...`).
///
/// ```
/// assert_eq!(tollgate_redis::store::redact("redis://:pw@10.0.0.1:26379"), "redis://***@10.0.0.1:26379");
/// ```
pub fn redact(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    match url.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("pass", _)) => "pass=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => url,
    }
}

impl RedisStore {
    /// Connects to one Redis server. The URL is `redis://` or `rediss://`
    /// (TLS, via rustls), with optional `user:password@` (ACL) and `/db`;
    /// or a unix socket, `unix:///path/redis.sock` or
    /// `redis+unix:///path/redis.sock`, with optional `?db=2&user=u&pass=p`
    /// (percent-encoded).
    ///
    /// # Errors
    /// [`ConnectError`] for an invalid URL or prefix, or when Redis cannot be
    /// reached within the connect timeout.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, ConnectError> {
        validate_prefix(&options.prefix)?;
        if url.starts_with("rediss:") {
            install_crypto_provider();
        }
        let client = match options.certificates() {
            Some(certificates) => redis::Client::build_with_tls(url, certificates),
            None => redis::Client::open(url),
        }
        .map_err(|source| ConnectError::Url {
            url: redact(url),
            source,
        })?;
        // A decision is never re-sent after an I/O error (see `resend`).
        // In redis-rs 0.32 the ConnectionManager never re-sends a command:
        // a command that fails on a dropped connection (reset, broken
        // pipe, EOF) or times out returns its error, and the manager
        // reconnects in the background; `number_of_retries` and
        // `max_delay` only govern the connection attempts of one such
        // reconnection. Redis errors (NOSCRIPT, TRYAGAIN...) are returned
        // as they are; `RedisStore::send` decides what to re-send.
        // No response timeout here: in redis-rs 0.32 one only fails the
        // request (a timeout is not an unrecoverable error, so the manager
        // does not reconnect on it), which is what the caller's deadline
        // does already — deadlines have one owner (`RedisOptions::timeout`).
        let pool = Pool::open(
            &client,
            &manager_config(&options),
            options.connections,
            options.connect_timeout,
            options.keep_alive,
        )
        .await
        .map_err(ConnectError::Connect)?;
        let subscriber =
            Subscriber::client(client.get_connection_info().clone(), options.certificates())
                .map_err(|source| ConnectError::Url {
                    url: redact(url),
                    source,
                })?;
        Ok(Self::new(
            Connection::Standalone(pool),
            vec![subscriber],
            options,
        ))
    }

    /// Connects to the master that Redis Sentinel monitors under
    /// `master.name`, through any of `sentinels` (`redis://` or `rediss://`
    /// URLs, each with the sentinels' own `user:password@` if they require
    /// one), and follows it when it fails over: the sentinels are asked
    /// again when the master refuses a write (`READONLY`: it was demoted) or
    /// stops answering, and the store switches to the master they name
    /// (see [`crate::sentinel`]). The master's credentials and TLS are in
    /// `master`; `options.tls_root_cert` serves both the sentinels and the
    /// master.
    ///
    /// # Errors
    /// As [`connect`](Self::connect), [`ConnectError::NoSentinels`], and
    /// [`ConnectError::SentinelScheme`] for a sentinel URL that is not TCP.
    pub async fn connect_sentinel<U: AsRef<str>>(
        sentinels: &[U],
        master: SentinelMaster,
        options: RedisOptions,
    ) -> Result<Self, ConnectError> {
        validate_prefix(&options.prefix)?;
        let mut clients = Vec::with_capacity(sentinels.len());
        let mut described = Vec::with_capacity(sentinels.len());
        for url in sentinels {
            let url = url.as_ref();
            let tls = url.starts_with("rediss://");
            if !(tls || url.starts_with("redis://")) {
                return Err(ConnectError::SentinelScheme(redact(url)));
            }
            if tls {
                install_crypto_provider();
            }
            let client = match (options.certificates(), tls) {
                (Some(certificates), true) => redis::Client::build_with_tls(url, certificates),
                _ => redis::Client::open(url),
            }
            .map_err(|source| ConnectError::Url {
                url: redact(url),
                source,
            })?;
            clients.push(client);
            described.push(redact(url));
        }
        let Some(first) = described.first() else {
            return Err(ConnectError::NoSentinels);
        };
        if master.name.is_empty() {
            return Err(ConnectError::NoMasterName);
        }
        let tls = master.tls.unwrap_or(first.starts_with("rediss://"));
        if tls {
            install_crypto_provider();
        }
        let certificates = options.certificates().filter(|_| tls);
        let finder = Finder {
            sentinels: clients,
            described,
            master,
            tls,
            certificates: certificates.clone(),
            timeout: options.connect_timeout,
            manager: manager_config(&options),
            connections: options.connections,
            keep_alive: options.keep_alive,
        };
        let sentinel = Sentinel::connect(finder)
            .await
            .map_err(ConnectError::Connect)?;
        let mut store = Self::new(Connection::Sentinel(sentinel), Vec::new(), options);
        if let Some(inner) = Arc::get_mut(&mut store.inner) {
            inner.subscriber.certificates = certificates;
        }
        Ok(store)
    }

    /// Connects to a Redis Cluster through any of its nodes (`seeds`);
    /// the topology is discovered from them and refreshed when slots move
    /// (`MOVED`/`ASK` are followed).
    ///
    /// # Errors
    /// As [`connect`](Self::connect), and [`ConnectError::NoSeeds`].
    pub async fn connect_cluster<U: AsRef<str>>(
        seeds: &[U],
        options: RedisOptions,
    ) -> Result<Self, ConnectError> {
        validate_prefix(&options.prefix)?;
        if seeds.is_empty() {
            return Err(ConnectError::NoSeeds);
        }
        let mut infos = Vec::with_capacity(seeds.len());
        for seed in seeds {
            let url = seed.as_ref();
            if url.starts_with("rediss:") {
                install_crypto_provider();
            }
            let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|source| {
                ConnectError::Url {
                    url: redact(url),
                    source,
                }
            })?;
            infos.push(info);
        }
        let subscribers = infos
            .iter()
            .map(|info| Subscriber::client(info.clone(), options.certificates()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConnectError::Connect)?;
        // No redis-rs retries: `RedisStore::send` re-sends, and only what
        // did not run. In redis-rs 0.32's cluster_async, `retries(n)` caps
        // every re-send of a request, whatever the error
        // (`RedisError::retry_method`): MOVED and ASK are followed,
        // TRYAGAIN and CLUSTERDOWN re-sent after a sleep, but a connection
        // reset, broken pipe or EOF is re-sent on a new connection too
        // (`Reconnect`), and any other I/O error, a response timeout
        // included, at once (`RetryImmediately`) - after the script may
        // have run, so a lost reply would charge twice. With `retries(0)`
        // each error is returned to the caller at its first occurrence,
        // and what repairs the connection still happens: a MOVED (or a
        // node that cannot be reached) still rebuilds the slot map before
        // the next request is routed, and an I/O error on a node's
        // connection still reconnects to that node.
        let mut builder = ClusterClientBuilder::new(infos)
            .connection_timeout(options.connect_timeout)
            .retries(0);
        if let Some(certificates) = options.certificates() {
            builder = builder.certs(certificates);
        }
        let client = builder.build().map_err(ConnectError::Connect)?;
        let connection =
            tokio::time::timeout(options.connect_timeout, client.get_async_connection())
                .await
                .map_err(|_| {
                    ConnectError::Connect(RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )))
                })?
                .map_err(ConnectError::Connect)?;
        Ok(Self::new(
            Connection::Cluster(connection),
            subscribers,
            options,
        ))
    }

    fn new(connection: Connection, subscribers: Vec<redis::Client>, options: RedisOptions) -> Self {
        let sentinel = match &connection {
            Connection::Sentinel(sentinel) => Some(Arc::clone(sentinel)),
            _ => None,
        };
        RedisStore {
            inner: Arc::new(Inner {
                connection,
                subscriber: Subscriber {
                    clients: subscribers,
                    sentinel,
                    certificates: None,
                    channel: invalidate::channel(&options.prefix),
                    timeout: options.connect_timeout,
                },
                prefix: options.prefix,
                envoy_prefix: options.envoy_prefix,
                timeout: options.timeout,
                connect_timeout: options.connect_timeout,
                scripts_only: AtomicBool::new(false),
                library_loads: AtomicU64::new(0),
                loading: tokio::sync::Mutex::new(()),
                #[cfg(feature = "test-clock")]
                clock: None,
            }),
        }
    }

    /// Tests only: make the script use `clock` instead of Redis's `TIME`, so
    /// a test can drive a timeline. Never compiled into production builds
    /// (feature `test-clock`).
    #[cfg(feature = "test-clock")]
    #[doc(hidden)]
    pub fn with_test_clock(self, clock: tollgate::ManualClock) -> Self {
        let inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_test_clock before cloning the store"));
        RedisStore {
            inner: Arc::new(Inner {
                clock: Some(clock),
                ..inner
            }),
        }
    }

    /// Sends `PING`, within the timeout. For diagnosis: when a decision
    /// fails with a bare I/O error, `PING` usually says why. For instance
    /// Redis 7 closes an unauthenticated connection that sends a command of
    /// more than 10 arguments (a decision is one), so a missing password
    /// shows as `broken pipe`, and `PING` as `NOAUTH`.
    ///
    /// # Errors
    /// The [`StoreError`] of the command.
    /// Bounded by the connect timeout: a diagnosis must not hang on the
    /// store it diagnoses.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let bound = self.inner.connect_timeout;
        match tokio::time::timeout(bound, self.run::<String>(&redis::cmd("PING"), None)).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(StoreError::Timeout(bound)),
        }
    }

    /// The connections the store keeps to its server
    /// ([`RedisOptions::connections`]; to the master in use, on Sentinel).
    /// 1 on a Cluster, which keeps one per node.
    pub fn connections(&self) -> usize {
        self.inner.connection.pool().map_or(1, |pool| pool.len())
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// envoyproxy/ratelimit's `CACHE_KEY_PREFIX`, when this store keeps
    /// counters in its layout (see [`RedisOptions::envoy_prefix`]).
    pub fn envoy_prefix(&self) -> Option<&str> {
        self.inner.envoy_prefix.as_deref()
    }

    /// Decides `cost` against `policy`, a `fixed_window` of whole seconds,
    /// on a counter in envoyproxy/ratelimit's key layout: the key is the
    /// envoy prefix, then `base` (`<domain>_<key>_<value>_..._`, as
    /// envoyproxy/ratelimit joins a descriptor), then the window start in
    /// Unix seconds on Redis's clock; the value is a plain integer. One
    /// script reads the counter and, only when the cost fits (and `mode`
    /// consumes), adds it with `INCRBY` and sets `EXPIRE <period>`, as
    /// envoyproxy/ratelimit does; decisions are those of `fixed_window`.
    /// Identities are not escaped: that layout is envoyproxy/ratelimit's,
    /// collisions included (see docs/REDIS.md).
    ///
    /// # Errors
    /// [`StoreError::Protocol`] on a Cluster (the key's slot depends on the
    /// window, which only the script knows), when no envoy prefix was
    /// configured, for a policy that is not a whole-second fixed window, or
    /// when the counter does not hold an integer; as [`Store::apply`]
    /// otherwise.
    pub async fn apply_envoy_counter(
        &self,
        base: &[u8],
        policy: &tollgate::Policy,
        cost: u64,
        mode: Mode,
    ) -> Result<tollgate::Decision, StoreError> {
        let consume = if mode == Mode::Consume { "1" } else { "0" };
        let reply: Vec<i64> = self.run_envoy_counter(base, policy, cost, consume).await?;
        let refs = [PolicyRef {
            name: "envoy",
            policy,
        }];
        let decisions = parse_reply(&reply, &refs, cost)?;
        decisions
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Protocol("no decision".into()))
    }

    /// Deletes the current window's counter of
    /// [`apply_envoy_counter`](Self::apply_envoy_counter) (earlier windows
    /// are never read again), then publishes `identity` for the deny
    /// caches, as [`Store::reset`] does.
    ///
    /// # Errors
    /// As [`apply_envoy_counter`](Self::apply_envoy_counter).
    pub async fn reset_envoy_counter(
        &self,
        base: &[u8],
        policy: &tollgate::Policy,
        identity: &[u8],
    ) -> Result<(), StoreError> {
        let _: Vec<i64> = self.run_envoy_counter(base, policy, 1, "reset").await?;
        self.publish_reset(identity).await
    }

    async fn run_envoy_counter(
        &self,
        base: &[u8],
        policy: &tollgate::Policy,
        cost: u64,
        mode: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let Some(prefix) = &self.inner.envoy_prefix else {
            return Err(StoreError::Protocol(
                "this store keeps no counters in envoyproxy/ratelimit's layout (no envoy prefix)"
                    .into(),
            ));
        };
        if matches!(self.inner.connection, Connection::Cluster(_)) {
            return Err(StoreError::Protocol(
                "envoyproxy/ratelimit's key layout needs a standalone Redis, not a Cluster".into(),
            ));
        }
        let period = policy.period();
        if policy.algorithm() != tollgate::Algorithm::FixedWindow
            || period.subsec_nanos() != 0
            || period.is_zero()
        {
            return Err(StoreError::Protocol(format!(
                "envoyproxy/ratelimit's key layout holds fixed windows of whole seconds, not {policy}"
            )));
        }
        let mut key = Vec::with_capacity(prefix.len() + base.len());
        key.extend_from_slice(prefix.as_bytes());
        key.extend_from_slice(base);
        let now = self.now_arg();
        let command = |verb: &str, script: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(script)
                .arg(0)
                .arg(&key)
                .arg(mode)
                .arg(cost)
                .arg(&now)
                .arg(policy.limit())
                .arg(period.as_secs());
            cmd
        };
        let evalsha = command("EVALSHA", ENVOY_COUNTER.get_hash());
        // A script only (it is not in the library): never an FCALL.
        let build = |call: Call| match call {
            Call::Eval => command("EVAL", ENVOY_COUNTER_SOURCE),
            Call::Fcall | Call::Evalsha => command("EVALSHA", ENVOY_COUNTER.get_hash()),
        };
        self.run(&evalsha, Some(&build)).await
    }

    /// Publishes `identity` on the reset channel.
    async fn publish_reset(&self, identity: &[u8]) -> Result<(), StoreError> {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.inner.subscriber.channel).arg(identity);
        self.run::<i64>(&publish, None).await.map(|_| ())
    }

    /// The key holding `identity`'s state for `policy`.
    pub fn key(&self, identity: &[u8], policy: &PolicyRef<'_>) -> Vec<u8> {
        state_key(
            &self.inner.prefix,
            identity,
            policy.name,
            policy.policy.algorithm(),
        )
    }

    fn now_arg(&self) -> String {
        #[cfg(feature = "test-clock")]
        if let Some(clock) = &self.inner.clock {
            return tollgate::Clock::now_us(clock).to_string();
        }
        String::new()
    }

    /// Runs `cmd` within the timeout, re-sending it only after errors that
    /// prove it did not run (see [`resend`]); for a decision, `build` makes
    /// the command that takes its place when Redis lacks its code.
    /// Sends a plain command (never a decision) under the store's rules:
    /// its timeout, its re-send rules, its topology.
    pub(crate) async fn run_command<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        self.run(cmd, None).await
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
        build: Option<&BuildCall<'_>>,
    ) -> Result<T, StoreError> {
        let result = match self.inner.timeout {
            Some(bound) => match tokio::time::timeout(bound, self.send(cmd, build)).await {
                Err(_) => return Err(StoreError::Timeout(bound)),
                Ok(result) => result,
            },
            None => self.send(cmd, build).await,
        };
        result
            .and_then(redis::from_owned_redis_value)
            .map_err(store_error)
    }

    /// Sends `cmd` until it runs or fails with an error that leaves it
    /// possibly run, or any other error (the caller bounds the time).
    async fn send(&self, cmd: &Cmd, build: Option<&BuildCall<'_>>) -> RedisResult<Value> {
        let (mut connection, generation) = self.inner.connection.resolve();
        let topology = match &self.inner.connection {
            Connection::Standalone(_) => Topology::Standalone,
            Connection::Cluster(_) => Topology::Cluster,
            Connection::Sentinel(_) => Topology::Sentinel,
        };
        // If the caller abandons this call (its deadline), the master may
        // be hung: the sentinels are asked in the background.
        let mut abandoned = Abandoned {
            sentinel: match &self.inner.connection {
                Connection::Sentinel(sentinel) => Some(Arc::clone(sentinel)),
                _ => None,
            },
            generation,
        };
        let result = self
            .send_on(&mut connection, &mut abandoned, topology, cmd, build)
            .await;
        if let Err(error) = &result {
            if connection_lost(error) {
                // The server may have closed the others too.
                if let Some(pool) = self.inner.connection.pool() {
                    pool.heal();
                }
            }
        }
        // The call completed: not abandoned.
        let sentinel = abandoned.sentinel.take();
        if let (Err(error), Some(sentinel)) = (&result, sentinel) {
            // The connection failed: the master may have died or moved.
            if may_have_moved(error) {
                sentinel.rediscover_in_background(abandoned.generation);
            }
        }
        result
    }

    /// [`send`](Self::send)'s loop, on `connection`.
    async fn send_on(
        &self,
        connection: &mut Link,
        abandoned: &mut Abandoned,
        topology: Topology,
        cmd: &Cmd,
        build: Option<&BuildCall<'_>>,
    ) -> RedisResult<Value> {
        // What is sent; replaced (built only then) when Redis lacks the
        // library or the script: at most once each per call.
        let mut cmd = Cow::Borrowed(cmd);
        let mut fcall = is_fcall(&cmd);
        let (mut loaded, mut evaled) = (false, false);
        let mut ask: Option<String> = None;
        // The node the last send was redirected to by an ASK, if it was.
        let mut asked: Option<String> = None;
        // An error met on the way (a failed FUNCTION LOAD), to go through
        // the same rules as a reply before anything is sent again.
        let mut pending: Option<RedisError> = None;
        // The library load attempts completed before the last send (set
        // before every send; the first error always follows one): one
        // after it may already have put the library back.
        let mut loads_before = 0;
        let mut moved = false;
        let mut reconnected = false;
        let mut backoff = MIN_BACKOFF;
        loop {
            let error = match pending.take() {
                Some(error) => error,
                None => {
                    loads_before = self.inner.library_loads.load(Ordering::Acquire);
                    let reply = match ask.take() {
                        Some(address) => {
                            let reply = connection.asking(&address, &cmd).await;
                            asked = Some(address);
                            reply
                        }
                        None => {
                            asked = None;
                            connection.req_packed_command(&cmd).await
                        }
                    };
                    match reply.and_then(Value::extract_error) {
                        Ok(value) => return Ok(value),
                        Err(error) => error,
                    }
                }
            };
            let wait = match resend(&error, topology, fcall) {
                Resend::Never => return Err(error),
                Resend::Rediscover => {
                    // The node is no longer the master and did not run the
                    // call: ask the sentinels, then send it to the new
                    // master (or return the error if there is none yet).
                    let Some(sentinel) = abandoned.sentinel.clone() else {
                        return Err(error);
                    };
                    // Boxed: a rare path, kept out of every call's future
                    // (inlined, its depth overflows the compiler's query
                    // limit in deeply nested callers).
                    let rediscover = Box::pin(sentinel.rediscover(abandoned.generation, true));
                    if rediscover.await.is_err() {
                        return Err(error);
                    }
                    let current = sentinel.current();
                    if current.generation == abandoned.generation {
                        return Err(error);
                    }
                    *connection = Link::Node(current.connections.pick());
                    abandoned.generation = current.generation;
                    false
                }
                Resend::Eval => {
                    let build = build.filter(|_| !evaled).ok_or(error)?;
                    evaled = true;
                    cmd = Cow::Owned(build(Call::Eval));
                    false
                }
                Resend::LoadLibrary if asked.is_some() => {
                    // A node an ASK pointed to may own no slot yet (a new
                    // master taking its first one), so a load sent to every
                    // master would miss it: this call goes there again, as
                    // an EVAL, which carries its code.
                    let build = build.filter(|_| !evaled).ok_or(error)?;
                    evaled = true;
                    cmd = Cow::Owned(build(Call::Eval));
                    fcall = false;
                    ask = asked.take();
                    false
                }
                Resend::LoadLibrary => {
                    let build = build.filter(|_| !loaded).ok_or(error)?;
                    // Boxed: a rare path, kept out of every call's future.
                    let load = Box::pin(async {
                        let _one = self.inner.loading.lock().await;
                        if self.inner.library_loads.load(Ordering::Acquire) != loads_before {
                            return None;
                        }
                        let result = load_library(connection).await;
                        self.inner.library_loads.fetch_add(1, Ordering::Release);
                        Some(result)
                    });
                    loaded = true;
                    let Some(result) = load.await else {
                        // Another call tried since this one was sent: it
                        // counts as this call's attempt. Sent again as that
                        // call left things (the library loaded, or scripts
                        // from now on); a library still missing then is
                        // this call's error, not another load.
                        if !self.uses_functions() {
                            cmd = Cow::Owned(build(Call::Evalsha));
                            fcall = false;
                        }
                        continue;
                    };
                    match result {
                        Ok(()) => {}
                        Err(load) if functions_unavailable(&load) => {
                            self.use_scripts(&load);
                            cmd = Cow::Owned(build(Call::Evalsha));
                            fcall = false;
                        }
                        Err(load) => {
                            // The call did not run. A load refused by a
                            // node that is no longer the master (READONLY),
                            // or by a cluster that is busy (TRYAGAIN), is
                            // handled as that reply to the call would be;
                            // the load is tried again after it.
                            loaded = false;
                            pending = Some(load);
                        }
                    }
                    false
                }
                Resend::Scripts => {
                    let Some(build) = build else {
                        return Err(error);
                    };
                    self.use_scripts(&error);
                    cmd = Cow::Owned(build(Call::Evalsha));
                    fcall = false;
                    false
                }
                Resend::Ask(address) => {
                    ask = Some(address);
                    false
                }
                // redis-rs rebuilds its slot map on a MOVED before it routes
                // the next request, so the first re-send goes at once; a
                // further MOVED means the nodes do not agree yet: wait.
                Resend::Moved => std::mem::replace(&mut moved, true),
                Resend::Backoff => true,
                // Once: refused again, Redis is still down.
                Resend::Reconnected if reconnected => return Err(error),
                Resend::Reconnected => {
                    reconnected = true;
                    false
                }
            };
            if wait {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// From now on, decisions are `EVALSHA`s: `error` said that functions
    /// cannot be used here. Said once in the log.
    fn use_scripts(&self, error: &RedisError) {
        if !self.inner.scripts_only.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "Redis functions unavailable (Redis before 7, or an ACL without FCALL and \
                 FUNCTION LOAD): decisions use EVALSHA, which costs Redis more CPU"
            );
        }
    }

    /// Whether decisions are sent as `FCALL` (Redis functions): until Redis
    /// has shown that this store cannot use them (docs/REDIS.md).
    pub fn uses_functions(&self) -> bool {
        !self.inner.scripts_only.load(Ordering::Relaxed)
    }

    /// Sends `check` (with `extra`: a lease call, a reservation's step) as
    /// one call of the decision code, and returns its integers (main.lua).
    async fn eval(&self, check: Check<'_>, extra: Extra<'_>) -> Result<Vec<i64>, StoreError> {
        let now = self.now_arg();
        let mask = script::mask(check.policies);
        // Only a lease call's script holds the lease code, only a
        // reservation's the reservation code.
        let script = || match extra {
            Extra::None => script::for_mask(mask),
            Extra::Lease(_) => script::for_lease_mask(mask),
            Extra::Reserve { .. } | Extra::Settle { .. } | Extra::Charge => {
                script::for_reserve_mask(mask)
            }
        };
        // FCALL of the library's function; where Redis cannot run functions,
        // EVALSHA of the script of exactly this check's algorithms
        // (script.rs). The library is missing on a new server, after FUNCTION
        // FLUSH or on a node that never had it: it is loaded, then the FCALL
        // sent again. The script is missing after a restart, a failover or
        // SCRIPT FLUSH: EVAL sends it whole, which also caches it.
        let build = |call: Call| match call {
            Call::Fcall => self.command("FCALL", &LIBRARY.name, check, extra, &now),
            Call::Evalsha => {
                let hash = script().script.get_hash();
                self.command("EVALSHA", hash, check, extra, &now)
            }
            Call::Eval => self.command("EVAL", &script().source, check, extra, &now),
        };
        let first = build(if self.uses_functions() {
            Call::Fcall
        } else {
            Call::Evalsha
        });
        self.run(&first, Some(&build)).await
    }

    /// `FCALL <function>`, `EVALSHA <sha>` or `EVAL <source>`, with the keys
    /// and arguments that main.lua documents: a decision's, or with `extra`
    /// a lease call's (lease/main.lua) or a reservation step's
    /// (reserve/main.lua).
    fn command(
        &self,
        verb: &str,
        script: &str,
        check: Check<'_>,
        extra: Extra<'_>,
        now: &str,
    ) -> Cmd {
        let Check {
            key,
            policies,
            cost,
            mode,
        } = check;
        let (record, names) = match extra {
            Extra::Reserve { record, names, .. } | Extra::Settle { record, names } => {
                (Some(record), names)
            }
            Extra::None | Extra::Lease(_) | Extra::Charge => (None, &[][..]),
        };
        let mut cmd = redis::cmd(verb);
        cmd.arg(script)
            .arg(policies.len() + usize::from(record.is_some()));
        for policy in policies {
            cmd.arg(self.key(key, policy));
        }
        if let Some(record) = record {
            cmd.arg(record);
        }
        let call = match (extra, mode) {
            (Extra::Lease(_), _) => "lease",
            (Extra::Reserve { .. }, _) => "reserve",
            (Extra::Settle { .. }, _) => "settle",
            (Extra::Charge, _) => "charge",
            (Extra::None, Mode::Consume) => "1",
            (Extra::None, Mode::Peek) => "0",
        };
        cmd.arg(call).arg(cost).arg(now);
        for p in policies {
            redis::RedisWrite::write_arg_fmt(&mut cmd, script::PolicyArg(p.policy));
        }
        match extra {
            Extra::None => {}
            Extra::Lease(asks) => {
                for ask in asks {
                    cmd.arg(ask.want)
                        .arg(ask.ttl_us)
                        .arg(ask.held.units)
                        .arg(ask.held.until);
                }
            }
            Extra::Reserve { deadline_us, .. } => {
                cmd.arg(names).arg(deadline_us);
            }
            Extra::Charge => {
                for p in policies {
                    cmd.arg(p.policy.max_overdraft());
                }
            }
            Extra::Settle { .. } => {
                cmd.arg(names);
                for p in policies {
                    cmd.arg(p.policy.max_overdraft());
                }
            }
        }
        cmd
    }

    /// The key of reservation `nonce`'s record (see
    /// [`reservation_key`]).
    pub fn reservation_key(&self, identity: &[u8], nonce: u128) -> Vec<u8> {
        reservation_key(&self.inner.prefix, identity, nonce)
    }
}

/// What a call of the decision code carries beyond its check.
#[derive(Debug, Clone, Copy)]
enum Extra<'a> {
    /// Nothing: a decision.
    None,
    /// A lease call's asks, one per policy.
    Lease(&'a [LeaseAsk]),
    /// A reservation: its record's key, the policy names as the record
    /// keeps them ([`names_arg`]), and how long it lives.
    Reserve {
        record: &'a [u8],
        names: &'a [u8],
        deadline_us: u64,
    },
    /// A settle (the check's cost is the actual cost): the record's key and
    /// the policy names to match.
    Settle { record: &'a [u8], names: &'a [u8] },
    /// A charge after the fact (the check's cost is the units): no record.
    Charge,
}

/// The policy names of a reservation as its record keeps them and a
/// settle must match: each name's length in decimal, `:`, the name. One
/// text per list of names, and no two lists alike (the lengths delimit).
fn names_arg(policies: &[PolicyRef<'_>]) -> Vec<u8> {
    let mut names = Vec::with_capacity(policies.iter().map(|p| p.name.len() + 4).sum());
    for p in policies {
        names.extend_from_slice(p.name.len().to_string().as_bytes());
        names.push(b':');
        names.extend_from_slice(p.name.as_bytes());
    }
    names
}

/// The forms of one decision (or of the envoy counter, a script only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `FCALL` of the library's function.
    Fcall,
    /// `EVALSHA` of the script.
    Evalsha,
    /// `EVAL` of the whole script, after `NOSCRIPT`; built only then,
    /// since it carries the script.
    Eval,
}

/// Builds a form of the command being sent, when Redis lacks its code.
type BuildCall<'a> = dyn Fn(Call) -> Cmd + Send + Sync + 'a;

/// Whether `cmd` is an `FCALL`.
fn is_fcall(cmd: &Cmd) -> bool {
    matches!(cmd.args_iter().next(), Some(redis::Arg::Simple(verb)) if verb == b"FCALL")
}

/// `FUNCTION LOAD REPLACE` of the library on `connection`: on a Cluster,
/// redis-rs sends it to every master and succeeds only if all succeed.
/// REPLACE is safe: a library of this name can only hold this code
/// (script.rs), and other versions' libraries have other names.
async fn load_library(connection: &mut Link) -> RedisResult<()> {
    let mut load = redis::cmd("FUNCTION");
    load.arg("LOAD").arg("REPLACE").arg(&LIBRARY.source);
    connection
        .req_packed_command(&load)
        .await
        .and_then(Value::extract_error)
        .map(drop)
}

/// Whether an error to `FCALL` or `FUNCTION LOAD` says that functions
/// cannot be used on this server by this user, so that the command did not
/// run: an unknown command (Redis before 7) or an ACL refusing it. Redis
/// has no error kind for these, so they are told by text.
fn functions_unavailable(error: &RedisError) -> bool {
    let detail = error.detail().unwrap_or_default();
    match error.code() {
        Some("ERR") => {
            detail.starts_with("unknown command") || detail.starts_with("unknown subcommand")
        }
        // Only the ACL's refusal of the command itself, before it ran (a
        // refusal of a key or of a command inside the function is not).
        Some("NOPERM") => detail.contains("'fcall'") || detail.contains("'function|load'"),
        _ => false,
    }
}

/// Whether an error to `FCALL` says that the library's function is
/// missing on that node (it did not run).
fn function_missing(error: &RedisError) -> bool {
    error.code() == Some("ERR")
        && error
            .detail()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// The connection settings shared by the standalone and Sentinel stores.
fn manager_config(options: &RedisOptions) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(options.connect_timeout)
        // One connection attempt per reconnection, no retries: redis-rs's
        // backoff (backon's) sleeps 1 to 2 s before its first retry whatever
        // the factor and `max_delay` say, and every call made meanwhile
        // waits for that sleep even once Redis is back. Without it, a failed
        // attempt fails the calls waiting for it, and the next call (or the
        // pool's next `PING`, every `keep_alive`) starts another at once:
        // attempts follow the calls, one at a time per connection, and the
        // resilience layer's breaker keeps calls (so attempts) few while
        // Redis stays down.
        .set_number_of_retries(0)
}

/// Turns a lease call's reply (main.lua, `lease`) into its answer: the
/// check's five integers per policy, then four per policy of what it
/// leased.
fn parse_lease_reply(
    reply: &[i64],
    policies: &[PolicyRef<'_>],
    cost: u64,
) -> Result<LeaseAnswer, StoreError> {
    let n = policies.len();
    if reply.len() != 9 * n {
        return Err(StoreError::Protocol(format!(
            "lease call returned {} values for {n} policies",
            reply.len()
        )));
    }
    let (decisions, leased) = reply.split_at(5 * n);
    let leased = leased
        .chunks_exact(4)
        .map(|l| {
            Ok(Leased {
                units: field(l[0])?,
                until: field(l[1])?,
                valid_us: field(l[2])?,
                returned: field(l[3])?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(LeaseAnswer {
        decisions: parse_reply(decisions, policies, cost)?,
        leased,
    })
}

/// Turns a settle's reply (reserve/main.lua, `settle`) into its answer:
/// nothing when the reservation was not found; else the estimate, the
/// actual cost, whether replayed, three integers per policy of what
/// settling did, and five per policy of a one-unit peek.
fn parse_settle_reply(
    reply: &[i64],
    policies: &[PolicyRef<'_>],
) -> Result<Option<SettleAnswer>, StoreError> {
    let n = policies.len();
    if reply.is_empty() {
        return Ok(None);
    }
    if reply.len() != 3 + 8 * n {
        return Err(StoreError::Protocol(format!(
            "settle returned {} values for {n} policies",
            reply.len()
        )));
    }
    let (settled, decisions) = reply[3..].split_at(3 * n);
    let settled = settled
        .chunks_exact(3)
        .map(|s| {
            Ok(Settled {
                returned: field(s[0])?,
                charged: field(s[1])?,
                unpaid: field(s[2])?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(SettleAnswer {
        estimate: field(reply[0])?,
        actual: field(reply[1])?,
        replayed: reply[2] == 1,
        settled,
        decisions: parse_reply(decisions, policies, 1)?,
    }))
}

/// One integer of the decision code's reply, never negative.
fn field(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v)
        .map_err(|_| StoreError::Protocol(format!("negative value {v} from the decision script")))
}

/// Turns the script's five integers per policy into decisions.
fn parse_reply(
    reply: &[i64],
    policies: &[PolicyRef<'_>],
    cost: u64,
) -> Result<Decisions, StoreError> {
    if reply.len() != 5 * policies.len() {
        return Err(StoreError::Protocol(format!(
            "decision script returned {} values for {} policies",
            reply.len(),
            policies.len()
        )));
    }
    policies
        .iter()
        .zip(reply.chunks_exact(5))
        .map(|(p, r)| {
            Ok(decision_from_parts(
                p.policy,
                cost,
                r[0] == 1,
                field(r[1])?,
                field(r[2])?,
                field(r[3])?,
                field(r[4])?,
            ))
        })
        .collect()
}

/// The topology a store connects to, for [`resend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    Standalone,
    Cluster,
    Sentinel,
}

/// Asks the sentinels in the background when dropped with `sentinel` set:
/// a call abandoned at its deadline (a hung master never answers, so no
/// error would say so).
struct Abandoned {
    sentinel: Option<Arc<Sentinel>>,
    /// The master generation the call is on.
    generation: u64,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(sentinel) = self.sentinel.take() {
            sentinel.rediscover_in_background(self.generation);
        }
    }
}

/// Whether `error` says the call's connection is gone (reset, broken
/// pipe, EOF), so that the server may have closed its others too.
fn connection_lost(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error()
}

/// Whether an error says the connection to the master failed, so that
/// the master may have died or moved (not an answer of a live master).
fn may_have_moved(error: &RedisError) -> bool {
    connection_lost(error) || error.is_connection_refusal() || error.is_timeout()
}

/// What [`RedisStore::send`] does after an error.
#[derive(Debug, PartialEq)]
enum Resend {
    /// Return the error: the command may have run (an I/O error: reset,
    /// broken pipe, EOF, timeout), or re-sending cannot help.
    Never,
    /// `NOSCRIPT`: send the `EVAL` instead.
    Eval,
    /// `FCALL` of a function the node lacks: load the library, then send
    /// it again (or the `EVALSHA`, if the load says functions cannot be
    /// used).
    LoadLibrary,
    /// `FCALL` refused as an unknown command or by the ACL: send the
    /// `EVALSHA` instead, and from now on.
    Scripts,
    /// `MOVED`: send again, to the slot's new owner.
    Moved,
    /// `ASK`: send again to this node (`host:port`), after `ASKING`.
    Ask(String),
    /// `TRYAGAIN` (a multi-key call while the slot migrates and its keys
    /// are split between two nodes) or `CLUSTERDOWN`: send again after a
    /// pause.
    Backoff,
    /// `READONLY` or `MASTERDOWN` from a Sentinel store's master: it has
    /// been demoted (or lost its master) and ran nothing; ask the sentinels
    /// and send again to the master they name.
    Rediscover,
    /// The connection was refused (a standalone or Sentinel store): the
    /// call waited for a reconnection that had failed, and was never
    /// written ([`reconnection_refused`]). That failure started a new
    /// attempt; send again, once, on it, so that the first call after
    /// Redis is back is not failed by the attempt that failed while it was
    /// down.
    Reconnected,
}

/// Whether an error proves that the command did not run, so that sending
/// it again cannot run it twice. A decision charges quota, so a command is
/// re-sent only then: after `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN` or
/// `NOSCRIPT`, which Redis answers instead of running it, on a Sentinel
/// store after `READONLY` (a replica refuses the script's first write, so
/// it wrote nothing) and `MASTERDOWN`, and, on a standalone or Sentinel
/// store, after a reconnection that was refused
/// ([`reconnection_refused`]). An error on the
/// connection (reset, broken pipe, EOF) or a timeout leaves it unknown
/// whether it ran: that is returned. Matched by kind, never by text (but
/// for redis-rs's own mark on a refused reconnection, which the kind
/// cannot tell from a refusal after a write); redirections only on a
/// Cluster (a standalone connection cannot follow them).
///
/// After an `FCALL` (`fcall`), an error that its function is missing, or
/// that functions cannot be used, also proves that it did not run.
fn resend(error: &RedisError, topology: Topology, fcall: bool) -> Resend {
    let cluster = topology == Topology::Cluster;
    if fcall && function_missing(error) {
        return Resend::LoadLibrary;
    }
    if fcall && functions_unavailable(error) {
        return Resend::Scripts;
    }
    match error.kind() {
        ErrorKind::ReadOnly | ErrorKind::MasterDown if topology == Topology::Sentinel => {
            Resend::Rediscover
        }
        ErrorKind::NoScriptError => Resend::Eval,
        ErrorKind::TryAgain | ErrorKind::ClusterDown => Resend::Backoff,
        ErrorKind::Moved if cluster => Resend::Moved,
        ErrorKind::Ask if cluster => match error.redirect_node() {
            Some((address, _slot)) => Resend::Ask(address.to_owned()),
            None => Resend::Never,
        },
        _ if !cluster && reconnection_refused(error) => Resend::Reconnected,
        _ => Resend::Never,
    }
}

/// What redis-rs's connection manager puts before the error of a failed
/// reconnection when it hands it to a call that waited for it (before
/// writing anything).
const RECONNECTION_FAILED: &str = "Reconnecting failed";

/// Whether `error` is a refused reconnection handed to a call that waited
/// for it, so that the call was never written: a refusal
/// (`ConnectionRefused`, or a unix socket's missing file) that redis-rs's
/// connection manager returns from its stored attempt, marked with
/// [`RECONNECTION_FAILED`].
///
/// The kind alone would not prove it: an established TCP connection that
/// meets ICMP "port unreachable" while its data is not acknowledged keeps
/// `ECONNREFUSED` as a soft error and reports it when its retransmissions
/// time out, after the command may have reached Redis and run. That error
/// comes from the connection's driver, unmarked. Should a redis-rs upgrade
/// change the mark, nothing is re-sent (the safe side), and
/// `tests/reload.rs` fails.
fn reconnection_refused(error: &RedisError) -> bool {
    error.is_connection_refusal() && error.to_string().starts_with(RECONNECTION_FAILED)
}

/// A Redis error as a store error, by kind. (The client has no response
/// timeout of its own: deadlines are the caller's.)
fn store_error(e: RedisError) -> StoreError {
    match e.kind() {
        redis::ErrorKind::TypeError
        | redis::ErrorKind::ResponseError
        | redis::ErrorKind::ExtensionError => StoreError::Protocol(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Store for RedisStore {
    async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        let reply = self.eval(check, Extra::None).await?;
        parse_reply(&reply, check.policies, check.cost)
    }

    /// One call of the decision code (main.lua's `lease`), atomic like a
    /// check and sent, re-sent and bounded exactly as
    /// [`apply`](Store::apply)'s: the check is always consumed, whatever
    /// its mode.
    ///
    /// # Errors
    /// As [`apply`](Store::apply), and [`StoreError::Protocol`] when the
    /// call has not one ask per policy.
    async fn lease(&self, call: LeaseCall<'_>) -> Result<LeaseAnswer, StoreError> {
        let LeaseCall { check, asks } = call;
        if asks.len() != check.policies.len() {
            return Err(StoreError::Protocol(format!(
                "a lease call needs one ask per policy: {} asks for {} policies",
                asks.len(),
                check.policies.len()
            )));
        }
        let reply = self.eval(check, Extra::Lease(asks)).await?;
        parse_lease_reply(&reply, check.policies, check.cost)
    }

    fn leases(&self) -> bool {
        true
    }

    /// One call of the decision code (reserve/main.lua's reservation
    /// step): the check of the estimate, consumed, and when every policy
    /// allows it the record, `<prefix>:{<identity>}:%r:<nonce>`
    /// ([`reservation_key`]), in the identity's slot, expiring at the
    /// deadline. Sent, re-sent and bounded exactly as
    /// [`apply`](Store::apply)'s.
    ///
    /// # Errors
    /// As [`apply`](Store::apply), and [`StoreError::Protocol`] for no
    /// policy, an estimate past [`MAX_AMOUNT`] or a deadline past
    /// [`MAX_DEADLINE`] (what the limiter allows; the script computes
    /// exactly below 2^53).
    async fn reserve(&self, call: ReserveCall<'_>) -> Result<Decisions, StoreError> {
        let ReserveCall {
            check,
            nonce,
            deadline_us,
        } = call;
        if check.policies.is_empty() {
            return Err(StoreError::Protocol(
                "a reservation needs at least one policy".into(),
            ));
        }
        if check.cost > MAX_AMOUNT {
            return Err(StoreError::Protocol(format!(
                "an estimate of {} is above the maximum of {MAX_AMOUNT}",
                check.cost
            )));
        }
        if u128::from(deadline_us) > MAX_DEADLINE.as_micros() {
            return Err(StoreError::Protocol(format!(
                "a reservation deadline of {deadline_us} µs is above the maximum of {MAX_DEADLINE:?}"
            )));
        }
        let record = self.reservation_key(check.key, nonce);
        let names = names_arg(check.policies);
        let check = Check {
            mode: Mode::Consume,
            ..check
        };
        let extra = Extra::Reserve {
            record: &record,
            names: &names,
            deadline_us,
        };
        let reply = self.eval(check, extra).await?;
        parse_reply(&reply, check.policies, check.cost)
    }

    /// One call of the decision code (reserve/main.lua's settle step):
    /// finds the record, gives back or overdraws the difference, marks it
    /// settled (keeping its expiry) and peeks every policy, atomically.
    /// Sent, re-sent and bounded exactly as [`apply`](Store::apply)'s: a
    /// settle whose reply is lost is not re-sent by the store, and the
    /// caller may retry it safely (a retry replays).
    ///
    /// # Errors
    /// As [`apply`](Store::apply), and [`StoreError::Protocol`] for an
    /// actual cost past [`MAX_AMOUNT`].
    async fn settle(&self, call: SettleCall<'_>) -> Result<Option<SettleAnswer>, StoreError> {
        let SettleCall {
            key,
            policies,
            nonce,
            actual,
        } = call;
        if actual > MAX_AMOUNT {
            return Err(StoreError::Protocol(format!(
                "an actual cost of {actual} is above the maximum of {MAX_AMOUNT}"
            )));
        }
        if policies.is_empty() {
            return Ok(None);
        }
        let record = self.reservation_key(key, nonce);
        let names = names_arg(policies);
        let check = Check {
            key,
            policies,
            cost: actual,
            mode: Mode::Consume,
        };
        let extra = Extra::Settle {
            record: &record,
            names: &names,
        };
        let reply = self.eval(check, extra).await?;
        parse_settle_reply(&reply, policies)
    }

    /// One call of the decision code (reserve/main.lua's charge step):
    /// overdraws every policy by the units and peeks it, atomically. Sent,
    /// re-sent and bounded exactly as [`apply`](Store::apply)'s (a charge
    /// whose reply is lost is not re-sent: it may have run).
    ///
    /// # Errors
    /// As [`apply`](Store::apply), and [`StoreError::Protocol`] for no
    /// policy or units past [`MAX_AMOUNT`].
    async fn charge(&self, call: ChargeCall<'_>) -> Result<SettleAnswer, StoreError> {
        let ChargeCall {
            key,
            policies,
            units,
        } = call;
        if units > MAX_AMOUNT || policies.is_empty() {
            return Err(StoreError::Protocol(format!(
                "a charge of {units} units for {} policies is out of bounds",
                policies.len()
            )));
        }
        let check = Check {
            key,
            policies,
            cost: units,
            mode: Mode::Consume,
        };
        let reply = self.eval(check, Extra::Charge).await?;
        parse_settle_reply(&reply, policies)?
            .ok_or_else(|| StoreError::Protocol("a charge answered nothing".into()))
    }

    fn reserves(&self) -> bool {
        true
    }

    /// Deletes the state, then publishes `key` on `<prefix>:invalidate` so
    /// that the deny caches of every instance forget it (see
    /// [`invalidate`]). Both steps are bounded by the timeout; a failure of
    /// either is returned (a reset is idempotent: retry it).
    async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        let mut del = redis::cmd("DEL");
        for policy in policies {
            del.arg(self.key(key, policy));
        }
        self.run::<i64>(&del, None).await?;
        self.publish_reset(key).await
    }
}

impl Invalidations for RedisStore {
    /// Spawns a task holding a pub/sub connection on `<prefix>:invalidate`
    /// (a Cluster: one node at a time, any node will do), reconnecting on
    /// its own, until the wrapper is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    fn subscribe(&self, sink: InvalidationSink) {
        invalidate::subscribe(self.inner.subscriber.clone(), sink);
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn server(kind: ErrorKind, detail: &str) -> RedisError {
        RedisError::from((
            kind,
            "An error was signalled by the server",
            detail.to_owned(),
        ))
    }

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(
            redact("redis://u:pw@host:6379/2"),
            "redis://***@host:6379/2"
        );
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=2&pass=pw&user=u"),
            "redis+unix:///run/redis.sock?db=2&pass=***&user=u"
        );
        assert_eq!(redact("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }

    #[test]
    fn an_fcall_refused_before_it_ran_loads_the_library_or_falls_back_to_scripts() {
        let missing = server(ErrorKind::ResponseError, "Function not found");
        let unknown = server(
            ErrorKind::ResponseError,
            "unknown command 'FCALL', with args beginning with: ",
        );
        let refused = redis::make_extension_error(
            "NOPERM".to_owned(),
            Some("User u has no permissions to run the 'fcall' command".to_owned()),
        );
        let key_refused = redis::make_extension_error(
            "NOPERM".to_owned(),
            Some("No permissions to access a key".to_owned()),
        );
        for topology in [Topology::Standalone, Topology::Cluster, Topology::Sentinel] {
            assert_eq!(resend(&missing, topology, true), Resend::LoadLibrary);
            assert_eq!(resend(&unknown, topology, true), Resend::Scripts);
            assert_eq!(resend(&refused, topology, true), Resend::Scripts);
            assert_eq!(resend(&key_refused, topology, true), Resend::Never);
            // Not after an EVALSHA (or any other command).
            assert_eq!(resend(&missing, topology, false), Resend::Never);
            assert_eq!(resend(&unknown, topology, false), Resend::Never);
        }
        let load_refused = redis::make_extension_error(
            "NOPERM".to_owned(),
            Some("User u has no permissions to run the 'function|load' command".to_owned()),
        );
        assert!(functions_unavailable(&load_refused));
        assert!(functions_unavailable(&unknown));
        assert!(!functions_unavailable(&missing));
        assert!(!functions_unavailable(&key_refused));
    }

    #[test]
    fn only_errors_that_prove_the_command_did_not_run_are_resent() {
        for topology in [Topology::Standalone, Topology::Cluster, Topology::Sentinel] {
            let no_script = server(ErrorKind::NoScriptError, "No matching script");
            assert_eq!(resend(&no_script, topology, false), Resend::Eval);
            let try_again = server(ErrorKind::TryAgain, "Multiple keys request");
            assert_eq!(resend(&try_again, topology, false), Resend::Backoff);
            let down = server(ErrorKind::ClusterDown, "The cluster is down");
            assert_eq!(resend(&down, topology, false), Resend::Backoff);
            // The command may have run: never re-sent.
            for kind in [
                io::ErrorKind::ConnectionReset,
                io::ErrorKind::BrokenPipe,
                io::ErrorKind::UnexpectedEof,
                io::ErrorKind::ConnectionAborted,
                io::ErrorKind::TimedOut,
                io::ErrorKind::Other,
            ] {
                let error = RedisError::from(io::Error::from(kind));
                assert_eq!(resend(&error, topology, false), Resend::Never, "{kind:?}");
            }
            // A script error may come after some of its writes.
            let failed = server(ErrorKind::ResponseError, "Error running script");
            assert_eq!(resend(&failed, topology, false), Resend::Never);
        }
        let moved = server(ErrorKind::Moved, "3999 127.0.0.1:6381");
        assert_eq!(resend(&moved, Topology::Cluster, false), Resend::Moved);
        let ask = server(ErrorKind::Ask, "3999 127.0.0.1:6381");
        assert_eq!(
            resend(&ask, Topology::Cluster, false),
            Resend::Ask("127.0.0.1:6381".to_owned())
        );
        // A standalone connection cannot follow a redirection.
        for topology in [Topology::Standalone, Topology::Sentinel] {
            assert_eq!(resend(&moved, topology, false), Resend::Never);
            assert_eq!(resend(&ask, topology, false), Resend::Never);
        }
        // A demoted master refuses the script's first write, so it wrote
        // nothing: a Sentinel store asks for the new master and re-sends;
        // a standalone store has nowhere else to send it.
        let read_only = server(
            ErrorKind::ReadOnly,
            "You can't write against a read only replica.",
        );
        let master_down = server(ErrorKind::MasterDown, "Link with MASTER is down");
        for error in [&read_only, &master_down] {
            assert_eq!(resend(error, Topology::Sentinel, false), Resend::Rediscover);
            assert_eq!(resend(error, Topology::Standalone, false), Resend::Never);
            assert_eq!(resend(error, Topology::Cluster, false), Resend::Never);
        }
        // A refused reconnection, as the connection manager hands it to the
        // calls that waited for it, wrote nothing. The cluster client keeps
        // its own connections, so it is returned there.
        let refused = RedisError::from(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("{RECONNECTION_FAILED}: Connection refused (os error 111)"),
        ));
        for topology in [Topology::Standalone, Topology::Sentinel] {
            assert_eq!(resend(&refused, topology, false), Resend::Reconnected);
        }
        assert_eq!(resend(&refused, Topology::Cluster, false), Resend::Never);
        // A refusal from an established connection (a soft error reported
        // when its retransmissions time out) may come after the command ran.
        let late = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        for topology in [Topology::Standalone, Topology::Sentinel, Topology::Cluster] {
            assert_eq!(resend(&late, topology, false), Resend::Never);
        }
    }
}
