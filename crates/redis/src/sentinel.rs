//! Finding a master through Redis Sentinel, and following it when it fails
//! over.
//!
//! [`RedisStore::connect_sentinel`](crate::RedisStore::connect_sentinel)
//! asks the sentinels for the master of a name, checks with `ROLE` that the
//! node it names is a master, and holds one multiplexed connection to it,
//! like a standalone store. The store asks again (`Sentinel::rediscover`)
//! when the master may have changed:
//!
//! - the master answers `READONLY` (it has been demoted to a replica) or
//!   `MASTERDOWN`: the decision did not run, so after asking it is sent
//!   again, to the new master, within the caller's deadline;
//! - the connection fails, or a call is abandoned at the caller's deadline
//!   (a hung master): the decision may have run, so it is returned as an
//!   error, never re-sent, and the sentinels are asked in the background so
//!   that the next call goes to the new master;
//! - every second, whatever the calls do (see `Sentinel::watch`): a
//!   failover that fails no call (a master cut off from the sentinels but
//!   not from this process) is followed too.
//!
//! The discovery follows Redis's guidelines for Sentinel clients: the
//! sentinels are asked in turn (`SENTINEL GET-MASTER-ADDR-BY-NAME`), each
//! bounded by the connect timeout, and an answer counts only when the node
//! it names says `ROLE` master: a sentinel that has not yet heard of a
//! failover, or a stale answer, is skipped for the next sentinel. redis-rs's
//! own `sentinel` module is not used: it has no bound on the sentinels'
//! connections (one hung sentinel stalls the discovery) and trusts the first
//! sentinel that answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManagerConfig;
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisConnectionInfo, RedisError, Value};

use crate::pool::Pool;

/// The least time between two discoveries started by failed calls: many
/// failing calls during a failover ask the sentinels once per interval,
/// not once each.
const MIN_REDISCOVERY_INTERVAL: Duration = Duration::from_millis(100);

/// How often the store asks the sentinels which master they name, failed
/// calls or not (see `Sentinel::watch`).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The master a store follows, and how to talk to it: the name the
/// sentinels monitor it under and its own credentials and TLS (the
/// sentinels' credentials and TLS are in their URLs).
///
/// ```
/// use tollgate_redis::SentinelMaster;
///
/// let master = SentinelMaster::new("mymaster").password("s3cret").tls(true);
/// assert_eq!(master.name, "mymaster");
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct SentinelMaster {
    /// The name the sentinels monitor the master under (`sentinel monitor
    /// <name> ...`).
    pub name: String,
    /// The master's ACL user, if any.
    pub username: Option<String>,
    /// The master's password (`AUTH`), if any.
    pub password: Option<String>,
    /// Whether the master speaks TLS. `None`: as the sentinels do (the
    /// first sentinel URL's scheme, `rediss://` or `redis://`).
    pub tls: Option<bool>,
    /// The database number on the master. Default 0.
    pub db: i64,
}

impl std::fmt::Debug for SentinelMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelMaster")
            .field("name", &self.name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("db", &self.db)
            .finish()
    }
}

impl SentinelMaster {
    /// The master monitored under `name`, without credentials, with the
    /// sentinels' TLS.
    pub fn new(name: impl Into<String>) -> Self {
        SentinelMaster {
            name: name.into(),
            username: None,
            password: None,
            tls: None,
            db: 0,
        }
    }

    /// Sets the master's password.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the master's ACL user.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Whether the master speaks TLS (default: as the sentinels).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the database number on the master.
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }
}

/// The master in use: its address and the connection to it.
#[derive(Clone)]
pub(crate) struct Current {
    /// Incremented each time the store switches to another master; a call
    /// that failed names the generation it used, so that a discovery
    /// started after another has switched does nothing.
    pub(crate) generation: u64,
    /// `host:port`, as the sentinels gave it.
    pub(crate) address: String,
    /// The store's connections to it.
    pub(crate) connections: Pool,
    /// For the invalidation feed: a client for the same master.
    pub(crate) client: redis::Client,
}

/// The sentinels and how to reach the master they name.
pub(crate) struct Finder {
    pub(crate) sentinels: Vec<redis::Client>,
    /// The sentinels' URLs without passwords, for messages.
    pub(crate) described: Vec<String>,
    pub(crate) master: SentinelMaster,
    /// Whether the master speaks TLS (resolved from `master.tls`).
    pub(crate) tls: bool,
    pub(crate) certificates: Option<redis::TlsCertificates>,
    /// Bounds each step of a discovery: one sentinel's answer, the `ROLE`
    /// check, the new connection.
    pub(crate) timeout: Duration,
    pub(crate) manager: ConnectionManagerConfig,
    /// How many connections to open to the master
    /// ([`RedisOptions::connections`](crate::RedisOptions::connections)).
    pub(crate) connections: usize,
    /// How often they are pinged
    /// ([`RedisOptions::keep_alive`](crate::RedisOptions::keep_alive)).
    pub(crate) keep_alive: Option<Duration>,
}

/// The sentinels, the master's settings, and the master in use.
pub(crate) struct Sentinel {
    finder: Finder,
    current: Mutex<Current>,
    /// One discovery at a time; holds when the last one finished.
    discovery: tokio::sync::Mutex<Option<Instant>>,
    /// A background discovery is started or waiting: failing calls start
    /// no other (a hung master fails every call, and one task each would
    /// queue for the whole discovery).
    background: AtomicBool,
}

impl Sentinel {
    /// Finds the master through the sentinels and connects to it.
    /// Starts [`watch`](Self::watch).
    pub(crate) async fn connect(finder: Finder) -> Result<Arc<Sentinel>, RedisError> {
        let (address, client) = finder.discover().await?;
        let connections = finder.open(&client).await?;
        let sentinel = Arc::new(Sentinel {
            finder,
            current: Mutex::new(Current {
                generation: 0,
                address,
                connections,
                client,
            }),
            discovery: tokio::sync::Mutex::new(None),
            background: AtomicBool::new(false),
        });
        tokio::spawn(Self::watch(Arc::downgrade(&sentinel)));
        Ok(sentinel)
    }

    /// Asks the sentinels which master they name every [`WATCH_INTERVAL`],
    /// and switches when it is not the one in use (after the `ROLE` check),
    /// until the store is dropped. Failed calls already make the store
    /// ask; this follows a failover that fails no call: a master cut off
    /// from the sentinels but not from this process keeps answering, and
    /// without the watch the store would keep writing to it, writes the
    /// promoted replica never sees. One connection to one sentinel at a
    /// time, re-made (with the next sentinel) when it fails.
    async fn watch(sentinel: std::sync::Weak<Sentinel>) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut next = 0;
        loop {
            tick.tick().await;
            let Some(sentinel) = sentinel.upgrade() else {
                return;
            };
            let finder = &sentinel.finder;
            let asked = tokio::time::timeout(finder.timeout, async {
                if connection.is_none() {
                    let client = &finder.sentinels[next % finder.sentinels.len()];
                    next += 1;
                    connection = Some(client.get_multiplexed_async_connection().await?);
                }
                let Some(connection) = connection.as_mut() else {
                    return Err(RedisError::from((
                        ErrorKind::ClientError,
                        "no sentinel connection",
                    )));
                };
                finder.named(connection).await
            })
            .await;
            match asked {
                Ok(Ok(address)) => {
                    let current = sentinel.current();
                    if address != current.address {
                        if let Err(e) = sentinel.rediscover(current.generation, true).await {
                            tracing::debug!(error = %e, "Redis Sentinel: the named master is not ready");
                        }
                    }
                }
                // Another sentinel next time.
                Ok(Err(_)) | Err(_) => connection = None,
            }
        }
    }

    /// The master in use.
    pub(crate) fn current(&self) -> Current {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The master's name.
    pub(crate) fn master_name(&self) -> &str {
        &self.finder.master.name
    }

    /// The sentinels' URLs, without passwords.
    pub(crate) fn sentinels(&self) -> &[String] {
        &self.finder.described
    }

    /// Asks the sentinels for the master again, unless the store has
    /// switched since `generation` or another discovery is running (then
    /// waits for it), and switches to the master found if it is another
    /// one. `urgent`: a call waits for the answer (it was refused with
    /// `READONLY`), so the minimum interval between discoveries does not
    /// apply.
    pub(crate) async fn rediscover(&self, generation: u64, urgent: bool) -> Result<(), RedisError> {
        let mut last = self.discovery.lock().await;
        if self.current().generation != generation {
            return Ok(());
        }
        if !urgent && last.is_some_and(|at| at.elapsed() < MIN_REDISCOVERY_INTERVAL) {
            return Ok(());
        }
        let found = self.finder.discover().await;
        *last = Some(Instant::now());
        let (address, client) = found?;
        if address == self.current().address {
            // The same master (its connection reconnects on its own).
            return Ok(());
        }
        let connections = self.finder.open(&client).await?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        tracing::warn!(
            master = %self.finder.master.name,
            from = %current.address,
            to = %address,
            "Redis Sentinel: following the master to its new address"
        );
        *current = Current {
            generation: current.generation + 1,
            address,
            connections,
            client,
        };
        Ok(())
    }

    /// Starts [`rediscover`](Self::rediscover) in the background: for a call
    /// that failed or was abandoned and will not wait for it.
    pub(crate) fn rediscover_in_background(self: &Arc<Self>, generation: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let sentinel = Arc::clone(self);
        runtime.spawn(async move {
            let result = sentinel.rediscover(generation, false).await;
            sentinel.background.store(false, Ordering::Release);
            if let Err(e) = result {
                tracing::debug!(error = %e, master = %sentinel.finder.master.name, "Redis Sentinel: no master found yet");
            }
        });
    }
}

impl Finder {
    /// The master's address and a client for it, from the first sentinel
    /// whose answer names a node that says it is a master. A node that
    /// failed the check is not checked again in the same round (during a
    /// failover, every sentinel may still name the dead or hung master:
    /// the round then costs one bound, not one per sentinel).
    async fn discover(&self) -> Result<(String, redis::Client), RedisError> {
        let mut reasons = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        for (sentinel, described) in self.sentinels.iter().zip(&self.described) {
            let (host, port) = match tokio::time::timeout(self.timeout, self.ask(sentinel)).await {
                Ok(Ok(address)) => address,
                Ok(Err(e)) => {
                    reasons.push(format!("{described}: {e}"));
                    continue;
                }
                Err(_) => {
                    reasons.push(format!("{described}: no answer within {:?}", self.timeout));
                    continue;
                }
            };
            let address = format!("{host}:{port}");
            if failed.contains(&address) {
                continue;
            }
            match tokio::time::timeout(self.timeout, self.check(host, port)).await {
                Ok(Ok(client)) => return Ok((address, client)),
                Ok(Err(e)) => reasons.push(format!("{described} names {address}: {e}")),
                Err(_) => reasons.push(format!(
                    "{described} names {address}, which does not answer within {:?}",
                    self.timeout
                )),
            }
            failed.push(address);
        }
        Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "no sentinel named a reachable master",
            format!("master `{}`: {}", self.master.name, reasons.join("; ")),
        )))
    }

    /// One sentinel's answer: the master's host and port.
    async fn ask(&self, sentinel: &redis::Client) -> Result<(String, u16), RedisError> {
        let mut connection = sentinel.get_multiplexed_async_connection().await?;
        self.address(&mut connection).await
    }

    /// The master a sentinel names, as `host:port`.
    async fn named(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<String, RedisError> {
        let (host, port) = self.address(connection).await?;
        Ok(format!("{host}:{port}"))
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on `connection`.
    async fn address(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(String, u16), RedisError> {
        let address: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master.name)
            .query_async(connection)
            .await?;
        address.ok_or_else(|| {
            RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "the sentinel does not monitor this master name",
            ))
        })
    }

    /// A client for the node at `host:port` if it says `ROLE` master (a
    /// sentinel's answer may be stale: Redis's guidelines for Sentinel
    /// clients require the check).
    async fn check(&self, host: String, port: u16) -> Result<redis::Client, RedisError> {
        let client = self.master_client(host, port)?;
        let mut master = client.get_multiplexed_async_connection().await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut master).await?;
        let is_master = match role.first() {
            Some(Value::BulkString(role)) => role == b"master",
            Some(Value::SimpleString(role)) => role == "master",
            _ => false,
        };
        if is_master {
            Ok(client)
        } else {
            Err(RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "the node is not a master (a failover is under way)",
            )))
        }
    }

    /// A client for the master at `host:port`, with its credentials and TLS.
    fn master_client(&self, host: String, port: u16) -> Result<redis::Client, RedisError> {
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host, port)
        };
        let info = ConnectionInfo {
            addr,
            redis: RedisConnectionInfo {
                db: self.master.db,
                username: self.master.username.clone(),
                password: self.master.password.clone(),
                protocol: redis::ProtocolVersion::RESP2,
            },
        };
        match (&self.certificates, self.tls) {
            (Some(certificates), true) => redis::Client::build_with_tls(info, certificates.clone()),
            _ => redis::Client::open(info),
        }
    }

    /// The store's connections to the master (the same configuration as a
    /// standalone store's: they never re-send a command).
    async fn open(&self, client: &redis::Client) -> Result<Pool, RedisError> {
        Pool::open(
            client,
            &self.manager,
            self.connections,
            self.timeout,
            self.keep_alive,
        )
        .await
    }
}
