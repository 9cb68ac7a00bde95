//! Reset notices over Redis pub/sub: how a reset through one instance
//! reaches the deny caches of every instance.
//!
//! [`RedisStore::reset`](tollgate::Store::reset) deletes the state, then
//! publishes the identity on `<prefix>:invalidate`. Each
//! [`Resilient`](tollgate::resilience::Resilient) built with
//! `with_invalidations` runs one background task (see `subscribe`) that
//! holds a subscribed connection and forwards every message to its cache.
//!
//! The task uses a RESP3 connection of its own, separate from the decision
//! connection, so a subscription never blocks a decision. It reports
//! [`Invalidation::Live`] after each (re)subscription (the cache is then
//! cleared, since notices may have been missed while it was down) and
//! [`Invalidation::Lost`] when the connection drops or stops answering its
//! `PING`s. On a Cluster it subscribes to one node at a time, cycling
//! through the seeds when one fails: Redis Cluster forwards every `PUBLISH`
//! to every node.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tollgate::store::{Invalidation, InvalidationSink};

/// How often a live subscription is checked with `PING`.
const PING_INTERVAL: Duration = Duration::from_millis(500);
/// Pause between attempts to (re)subscribe.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// The pub/sub channel of a key prefix: `<prefix>:invalidate`.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:invalidate")
}

/// Where the feed subscribes: RESP3 clients (push messages need RESP3), one
/// per seed, tried in turn.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub(crate) clients: Vec<redis::Client>,
    /// A Sentinel store subscribes on the master in use instead (every
    /// replica would do too: `PUBLISH` is replicated).
    pub(crate) sentinel: Option<std::sync::Arc<crate::sentinel::Sentinel>>,
    /// The TLS roots for the Sentinel master's client.
    pub(crate) certificates: Option<redis::TlsCertificates>,
    pub(crate) channel: String,
    /// Bound on connecting and on each command of the feed.
    pub(crate) timeout: Duration,
}

impl Subscriber {
    /// A client for `info`, switched to RESP3, with the same TLS roots.
    pub(crate) fn client(
        mut info: redis::ConnectionInfo,
        certificates: Option<redis::TlsCertificates>,
    ) -> redis::RedisResult<redis::Client> {
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        match certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates),
            None => redis::Client::open(info),
        }
    }
}

/// Spawns the feed's task on the current tokio runtime.
///
/// # Panics
/// Outside a tokio runtime.
pub(crate) fn subscribe(subscriber: Subscriber, sink: InvalidationSink) {
    tokio::spawn(run(subscriber, sink));
}

async fn run(subscriber: Subscriber, sink: InvalidationSink) {
    if subscriber.clients.is_empty() && subscriber.sentinel.is_none() {
        return;
    }
    let mut next = 0;
    while !sink.is_closed() {
        let mut generation = None;
        let client = match &subscriber.sentinel {
            Some(sentinel) => {
                let current = sentinel.current();
                generation = Some(current.generation);
                match Subscriber::client(
                    current.client.get_connection_info().clone(),
                    subscriber.certificates.clone(),
                ) {
                    Ok(client) => client,
                    Err(e) => {
                        // The same settings made the store's own client, so
                        // this does not pass by retrying: say so, once.
                        tracing::warn!(error = %e, "cannot subscribe to invalidations: resets from other instances will not clear this one's deny cache");
                        return;
                    }
                }
            }
            None => subscriber.clients[next % subscriber.clients.len()].clone(),
        };
        next += 1;
        if let Some((connection, pushes)) = connect(&client, &subscriber).await {
            if !sink.deliver(Invalidation::Live) {
                return;
            }
            let closed = listen(connection, pushes, &subscriber, &sink).await;
            if closed || !sink.deliver(Invalidation::Lost) {
                return;
            }
            tracing::debug!(channel = %subscriber.channel, "invalidation feed lost");
        }
        // The master may have moved: ask the sentinels (at most once per
        // interval, whoever asks).
        if let (Some(sentinel), Some(generation)) = (&subscriber.sentinel, generation) {
            sentinel.rediscover_in_background(generation);
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

type Pushes = tokio::sync::mpsc::UnboundedReceiver<PushInfo>;

/// A connection subscribed to the channel, and its push messages.
async fn connect(
    client: &redis::Client,
    subscriber: &Subscriber,
) -> Option<(MultiplexedConnection, Pushes)> {
    let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(subscriber.timeout)
        .set_response_timeout(subscriber.timeout)
        .set_push_sender(sender);
    let attempt = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        connection.subscribe(&subscriber.channel).await?;
        Ok::<_, redis::RedisError>(connection)
    };
    match tokio::time::timeout(subscriber.timeout * 2, attempt).await {
        Ok(Ok(connection)) => Some((connection, pushes)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot subscribe to invalidations");
            None
        }
        Err(_) => None,
    }
}

/// Forwards messages until the connection is lost (`false`) or the sink is
/// closed (`true`).
async fn listen(
    mut connection: MultiplexedConnection,
    mut pushes: Pushes,
    subscriber: &Subscriber,
    sink: &InvalidationSink,
) -> bool {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(PushInfo { kind: PushKind::Message, data }) => {
                    if let Some(identity) = payload(data) {
                        if !sink.deliver(Invalidation::Reset(identity)) {
                            return true;
                        }
                    }
                }
                Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => return false,
                Some(_) => {}
            },
            _ = ping.tick() => {
                if sink.is_closed() {
                    return true;
                }
                let ping_cmd = redis::cmd("PING");
                let pong = ping_cmd.query_async::<Value>(&mut connection);
                match tokio::time::timeout(subscriber.timeout, pong).await {
                    Ok(Ok(_)) => {}
                    _ => return false,
                }
            }
        }
    }
}

/// The message of a `message` push: `[channel, payload]`.
fn payload(data: Vec<Value>) -> Option<Vec<u8>> {
    match data.into_iter().nth(1)? {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}
