//! A few connections to one Redis server, used in turn.
//!
//! Each redis-rs connection is multiplexed: concurrent calls share its
//! socket and are pipelined. But one connection is one driver task, which
//! writes every call and reads every reply, and wakes each caller from
//! wherever it runs: under load that task is the client's bottleneck, and
//! on a machine whose cores Redis shares, two connections decided a third
//! more per second than one (docs/BENCHMARKS.md, "Connections per Redis
//! server"). Calls take the connections in turn; each call is one atomic
//! script, so which connection carries it changes nothing but the
//! throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The most connections a store opens to one server.
pub const MAX_CONNECTIONS: usize = 64;

/// The default number of connections to one server: one per core the
/// process may run on, at most 4 (beyond that a connection's driver task
/// is no longer where a decision's time goes; each one more is a socket and
/// a client in Redis).
pub fn default_connections() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Connections to one server, taken in turn. Cheap to clone; clones share
/// the connections and the turn.
#[derive(Clone)]
pub(crate) struct Pool {
    connections: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// Opens `size` connections (at least one, at most
    /// [`MAX_CONNECTIONS`]) with `config`, all within `timeout`.
    pub(crate) async fn open(
        client: &redis::Client,
        config: &ConnectionManagerConfig,
        size: usize,
        timeout: Duration,
    ) -> Result<Pool, RedisError> {
        let size = size.clamp(1, MAX_CONNECTIONS);
        let open = async {
            let mut connections = Vec::with_capacity(size);
            for _ in 0..size {
                connections.push(
                    client
                        .get_connection_manager_with_config(config.clone())
                        .await?,
                );
            }
            Ok::<_, RedisError>(connections)
        };
        let connections = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        Ok(Pool {
            connections: connections.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The connection for the next call.
    pub(crate) fn pick(&self) -> ConnectionManager {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.connections[turn % self.connections.len()].clone()
    }

    /// How many connections there are.
    pub(crate) fn len(&self) -> usize {
        self.connections.len()
    }
}
