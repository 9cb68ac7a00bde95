//! A few connections to one Redis server, used in turn, and kept alive.
//!
//! Each redis-rs connection is multiplexed: concurrent calls share its
//! socket and are pipelined. But one connection is one driver task, which
//! writes every call and reads every reply, and wakes each caller from
//! wherever it runs: under load that task is the client's bottleneck, and
//! on a machine whose cores Redis shares, two connections decided 18% to
//! 32% more per second than one (docs/BENCHMARKS.md, "Connections per
//! Redis server"). Calls take the connections in turn; each call is one
//! atomic script, so which connection carries it changes nothing but the
//! throughput.
//!
//! A connection that the server closed (a restart, `CLIENT KILL`, Redis's
//! idle `timeout`) is noticed by redis-rs only when a call on it fails, and
//! that call is lost (it may have run, so it is never re-sent). With calls
//! spread over several connections each would lose one, and a connection
//! used less often idles longer. So every connection is pinged once a
//! second by default (finding a closed one before a call does: a failed
//! `PING` makes it reconnect; and keeping it from idling as long as an idle
//! limit of a few seconds or more), all of them when a call on any of
//! them found its connection gone, and sooner after a round in which a
//! `PING` failed (a failed reconnection is not tried again until the
//! connection is used). A connection the server keeps refusing (a
//! reconnection whose `AUTH` failed, which redis-rs never tries again) is
//! replaced by a new one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// The most connections a store opens to one server.
pub const MAX_CONNECTIONS: usize = 64;

/// What a number of connections counts, for the error of a front end that
/// is given one for a store that has no such setting (the memory store,
/// a Cluster).
pub const CONNECTIONS_APPLY_TO: &str = "the number of connections to one Redis server (a standalone one, or the master of a Sentinel); the memory store has none, and a Cluster store keeps one per node";

/// How often every connection is pinged, by default
/// ([`RedisOptions::keep_alive`](crate::RedisOptions::keep_alive)).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// The longest one keep-alive `PING` is waited for: a hung server must not
/// hold the round back from the other connections.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The default number of connections to one server: one per core the
/// process may run on, at most 4 (beyond that a connection's driver task
/// is no longer where a decision's time goes; each one more is a socket and
/// a client in Redis).
pub fn default_connections() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Connections to one server, taken in turn. Cheap to clone; clones share
/// the connections and the turn. The keep-alive task ends with the last
/// clone.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Each replaced when it is stuck ([`pinging`]).
    connections: Box<[RwLock<ConnectionManager>]>,
    next: AtomicUsize,
    /// Wakes the keep-alive task for a round now ([`Pool::heal`]).
    heal: Arc<Notify>,
    /// What a replacement is opened from, and within how long.
    client: redis::Client,
    config: ConnectionManagerConfig,
    timeout: Duration,
}

impl Pool {
    /// Opens `size` connections (at least one, at most
    /// [`MAX_CONNECTIONS`]) with `config`, side by side, all within
    /// `timeout`, and pings them every `keep_alive` (none: never).
    pub(crate) async fn open(
        client: &redis::Client,
        config: &ConnectionManagerConfig,
        size: usize,
        timeout: Duration,
        keep_alive: Option<Duration>,
    ) -> Result<Pool, RedisError> {
        let size = size.clamp(1, MAX_CONNECTIONS);
        // Side by side: each costs a few round trips (TCP, TLS, the
        // handshake), which one after another would add up to more than
        // the timeout on a distant server. A `JoinSet` aborts whatever is
        // still opening when it is dropped: on an error, at the timeout, or
        // when the caller gives up on this future (a Sentinel discovery
        // past its call's deadline), so nothing half-open is left behind.
        let mut opening = JoinSet::new();
        for _ in 0..size {
            let (client, config) = (client.clone(), config.clone());
            opening.spawn(async move { client.get_connection_manager_with_config(config).await });
        }
        let all = async {
            let mut connections = Vec::with_capacity(size);
            while let Some(opened) = opening.join_next().await {
                connections
                    .push(opened.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?);
            }
            Ok::<_, RedisError>(connections)
        };
        let connections = tokio::time::timeout(timeout, all)
            .await
            .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        let shared = Arc::new(Shared {
            connections: connections.into_iter().map(RwLock::new).collect(),
            next: AtomicUsize::new(0),
            heal: Arc::new(Notify::new()),
            client: client.clone(),
            config: config.clone(),
            timeout,
        });
        if let Some(every) = keep_alive {
            tokio::spawn(pinging(
                Arc::downgrade(&shared),
                Arc::clone(&shared.heal),
                every,
            ));
        }
        Ok(Pool { shared })
    }

    /// The connection for the next call.
    pub(crate) fn pick(&self) -> ConnectionManager {
        let connections = &self.shared.connections;
        let turn = self.shared.next.fetch_add(1, Ordering::Relaxed);
        connections[turn % connections.len()]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many connections there are.
    pub(crate) fn len(&self) -> usize {
        self.shared.connections.len()
    }

    /// A call found its connection gone: ping every connection now, so
    /// that those the server closed too (it restarted, or dropped its
    /// clients) reconnect before a call meets them. At most one round runs
    /// at a time; a round asked for during one follows it.
    pub(crate) fn heal(&self) {
        self.shared.heal.notify_one();
    }
}

/// The wait before the round after one in which a `PING` failed; doubled
/// after each such round, up to the keep-alive's own period.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Rounds in a row in which a connection's `PING` is refused (below)
/// before the connection is replaced.
const REFUSALS_BEFORE_REPLACING: u32 = 2;

/// What one `PING` came to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ping {
    /// `PONG`, or a refusal of the `PING` itself by a server that is
    /// there (`NOPERM` for a user without `+ping`, `BUSY` behind a long
    /// script, `MASTERDOWN`...): the connection works, and a new one
    /// would be refused the same.
    Answered,
    /// An I/O error (the connection reconnects by itself at its next use),
    /// a timeout, or `LOADING` (the server is starting).
    Failed,
    /// What a reconnection whose `AUTH` was refused leaves
    /// (`AuthenticationFailed`, which redis-rs never tries again): a new
    /// connection, with the URL's credentials, may be let in.
    Refused,
}

impl Ping {
    fn of(ping: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>) -> Ping {
        match ping {
            Ok(Ok(())) => Ping::Answered,
            Ok(Err(e)) if e.kind() == ErrorKind::AuthenticationFailed => Ping::Refused,
            Ok(Err(e))
                if e.is_io_error() || e.is_timeout() || e.kind() == ErrorKind::BusyLoadingError =>
            {
                Ping::Failed
            }
            Ok(Err(_)) => Ping::Answered,
            Err(_) => Ping::Failed,
        }
    }
}

/// Pings every connection of the pool every `every`, or at once when
/// [`Pool::heal`] asks, all side by side, so that a round takes at most
/// [`PING_TIMEOUT`] (plus the connect timeout when a connection is being
/// replaced) however many there are and whatever the server does;
/// ends at the first round after the pool is dropped. Holds neither the
/// pool nor its connections while it waits, so that dropping the store
/// closes them within a round.
///
/// After a round in which a `PING` failed (the server is down, or was
/// when the connection tried again), the next comes sooner:
/// [`FIRST_RETRY`], doubling while they keep failing, up to `every`. A
/// reconnection that failed by I/O is not tried again until something
/// uses the connection, so without this the first call after the server
/// came back would fail whenever no call or round had used the connection
/// since. One that failed otherwise (the password was being rotated) is
/// never tried again by redis-rs: a connection whose `PING` is refused for
/// its authentication ([`Ping::Refused`]) in
/// [`REFUSALS_BEFORE_REPLACING`] rounds in a row is replaced by a new one,
/// opened within the pool's connect timeout (and tried again next round if
/// that fails). Calls in flight on the old one finish on it.
async fn pinging(shared: Weak<Shared>, heal: Arc<Notify>, every: Duration) {
    // The wait after the last round, if a PING failed in it.
    let mut retry: Option<Duration> = None;
    let mut refusals: Vec<u32> = Vec::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(retry.unwrap_or(every)) => {}
            () = heal.notified() => {}
        }
        let Some(pool) = shared.upgrade() else {
            return;
        };
        refusals.resize(pool.connections.len(), 0);
        let mut round = JoinSet::new();
        for (i, connection) in pool.connections.iter().enumerate() {
            let mut connection = connection
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let replace = (refusals[i] >= REFUSALS_BEFORE_REPLACING)
                .then(|| (pool.client.clone(), pool.config.clone(), pool.timeout));
            let replacing = replace.is_some();
            round.spawn(async move {
                if let Some((client, config, timeout)) = replace {
                    let opening = client.get_connection_manager_with_config(config);
                    if let Ok(Ok(new)) = tokio::time::timeout(timeout, opening).await {
                        connection = new;
                    }
                }
                let ping = redis::cmd("PING");
                let ping =
                    tokio::time::timeout(PING_TIMEOUT, ping.query_async::<()>(&mut connection))
                        .await;
                (i, Ping::of(ping), replacing.then_some(connection))
            });
        }
        drop(pool);
        let mut answered = true;
        let mut replaced = Vec::new();
        while let Some(ping) = round.join_next().await {
            let Ok((i, outcome, opened)) = ping else {
                answered = false;
                continue;
            };
            answered &= outcome == Ping::Answered;
            refusals[i] = if outcome == Ping::Refused {
                refusals[i] + 1
            } else {
                0
            };
            if let Some(opened) = opened.filter(|_| outcome == Ping::Answered) {
                replaced.push((i, opened));
            }
        }
        if let Some(pool) = shared.upgrade() {
            for (i, opened) in replaced {
                *pool.connections[i]
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = opened;
            }
        }
        retry = (!answered).then(|| retry.map_or(FIRST_RETRY, |wait| wait * 2).min(every));
    }
}
