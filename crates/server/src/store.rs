//! The store the server decides on, chosen by configuration.

use tollgate::store::{InvalidationSink, Invalidations};
use tollgate::{Check, Decisions, MemoryStore, PolicyRef, Store, StoreError};
use tollgate_redis::{ConnectError, RedisOptions, RedisStore, SentinelMaster};

use crate::config::{StoreKind, StoreSettings};

/// The memory store or a Redis store, behind one type so the server is not
/// generic over its store. Cheap to clone; clones share state.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ServerStore {
    /// The embedded memory store.
    Memory(MemoryStore),
    /// Redis, Redis Cluster, or the master Redis Sentinel names.
    Redis(RedisStore),
}

impl ServerStore {
    /// Connects to the configured store.
    ///
    /// # Errors
    /// [`ConnectError`] when Redis cannot be reached or its URL or prefix is
    /// invalid.
    pub async fn connect(settings: &StoreSettings) -> Result<ServerStore, ConnectError> {
        // No call bound on the Redis store: `store.timeout` is the
        // resilience layer's deadline, which wraps every call.
        let mut options = RedisOptions::default().prefix(settings.prefix.clone());
        if let Some(tls) = &settings.tls {
            if let Some(ca) = &tls.ca {
                options = options.tls_root_cert(ca.clone());
            }
            if let Some((cert, key)) = &tls.client {
                options = options.tls_client_cert(cert.clone(), key.clone());
            }
        }
        Ok(match settings.kind {
            StoreKind::Memory => {
                ServerStore::Memory(MemoryStore::builder().max_keys(settings.max_keys).build())
            }
            StoreKind::Redis => {
                let url = settings.urls.first().map_or("", String::as_str);
                ServerStore::Redis(RedisStore::connect(url, options).await?)
            }
            StoreKind::RedisCluster => {
                ServerStore::Redis(RedisStore::connect_cluster(&settings.urls, options).await?)
            }
            StoreKind::RedisSentinel => {
                let sentinel = settings
                    .sentinel
                    .as_ref()
                    .ok_or(ConnectError::NoMasterName)?;
                let mut master =
                    SentinelMaster::new(sentinel.master_name.clone()).tls(sentinel.master_tls);
                if let Some(username) = &sentinel.master_username {
                    master = master.username(username.clone());
                }
                if let Some(password) = &sentinel.master_password {
                    master = master.password(password.clone());
                }
                ServerStore::Redis(
                    RedisStore::connect_sentinel(&settings.urls, master, options).await?,
                )
            }
        })
    }

    /// `(entries held, entries evicted)` of the memory store; `None` on Redis.
    pub fn memory_usage(&self) -> Option<(usize, u64)> {
        match self {
            ServerStore::Memory(store) => Some((store.len(), store.evictions())),
            ServerStore::Redis(_) => None,
        }
    }

    /// Why the store fails, as precisely as it can tell: a failed decision
    /// may only say `broken pipe` where Redis answers `PING` with the reason
    /// (`NOAUTH`, `LOADING`...). Returns `error` with `PING`'s error added
    /// when that differs.
    pub async fn explain(&self, error: &StoreError) -> String {
        match self {
            ServerStore::Memory(_) => error.to_string(),
            ServerStore::Redis(store) => {
                // A connection Redis has just closed fails the first PING
                // with the closing; the reconnected one gets the answer.
                let mut ping = store.ping().await;
                if matches!(ping, Err(StoreError::Unavailable(_))) {
                    ping = store.ping().await;
                }
                match ping {
                    Err(ping) if ping != *error => format!("{error} (PING: {ping})"),
                    _ => error.to_string(),
                }
            }
        }
    }

    /// What the store is, for logs: `memory`, or the Redis store's topology,
    /// prefix (and, on Sentinel, the master in use).
    pub fn describe(&self) -> String {
        match self {
            ServerStore::Memory(_) => "memory".to_owned(),
            ServerStore::Redis(store) => format!("{store:?}"),
        }
    }
}

/// Reset notices: the Redis store's pub/sub feed; the memory store is
/// private to the process and has none (it is wrapped without one).
impl Invalidations for ServerStore {
    fn subscribe(&self, sink: InvalidationSink) {
        match self {
            ServerStore::Memory(_) => drop(sink),
            ServerStore::Redis(store) => store.subscribe(sink),
        }
    }
}

impl Store for ServerStore {
    async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        match self {
            ServerStore::Memory(store) => store.apply(check).await,
            ServerStore::Redis(store) => store.apply(check).await,
        }
    }

    async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        match self {
            ServerStore::Memory(store) => store.reset(key, policies).await,
            ServerStore::Redis(store) => store.reset(key, policies).await,
        }
    }
}
