//! A store's connections to one server (`RedisOptions::connections`):
//! calls take them in turn, every decision stays exact over several, a
//! connection lost reconnects on its own while the others carry on, and
//! connections the server closed while idle are found before a call is,
//! and reconnect by themselves once a server that was down is back.

mod common;

use std::time::{Duration, Instant};

use tollgate::Limiter;
use tollgate_redis::RedisStore;
use tollgate_testkit::redis::RedisServer;

/// A limiter of one policy `api` over a store with `connections` to
/// `server`, pinged every `keep_alive`. Tests that read which client sent
/// a decision last turn the pings off: a ping would be the last.
async fn limiter(
    server: &RedisServer,
    connections: usize,
    keep_alive: Option<Duration>,
    policy: &str,
) -> Limiter<RedisStore> {
    limiter_at(&server.url(), connections, keep_alive, policy).await
}

/// [`limiter`] over the server at `url` (a user of its own).
async fn limiter_at(
    url: &str,
    connections: usize,
    keep_alive: Option<Duration>,
    policy: &str,
) -> Limiter<RedisStore> {
    let options = common::options()
        .connections(connections)
        .keep_alive(keep_alive);
    let store = RedisStore::connect(url, options).await.expect("connect");
    assert_eq!(store.connections(), connections);
    Limiter::builder(store)
        .policy("api", policy.parse().expect("valid"))
        .build()
}

/// A limiter over two connections (pinged every second) that have both
/// decided, and their client ids.
async fn two_connections(server: &RedisServer) -> (Limiter<RedisStore>, Vec<String>) {
    let every = Some(Duration::from_secs(1));
    let limiter = limiter(server, 2, every, "fixed_window 1000/1h").await;
    for _ in 0..4 {
        limiter.check("api", "k", 1).await.expect("decides");
    }
    let clients = store_clients(server);
    assert_eq!(clients.len(), 2);
    (limiter, clients)
}

/// The ids of the clients whose last command passes `last`.
fn clients(server: &RedisServer, last: impl Fn(&str) -> bool) -> Vec<String> {
    server
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|line| {
            line.split(' ')
                .any(|f| f.strip_prefix("cmd=").is_some_and(&last))
        })
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// The ids of the clients whose last command was a decision.
fn deciding_clients(server: &RedisServer) -> Vec<String> {
    clients(server, |cmd| cmd == "fcall" || cmd == "evalsha")
}

/// The ids of every client but the test's own redis-cli: on a server of
/// the test's own, the store's connections.
fn store_clients(server: &RedisServer) -> Vec<String> {
    clients(server, |cmd| cmd != "client|list")
}

#[tokio::test]
async fn calls_take_the_connections_in_turn() {
    for connections in [1, 3] {
        // A server of its own: its only clients are this store's and the
        // test's redis-cli.
        let server = RedisServer::start();
        let limiter = limiter(&server, connections, None, "fixed_window 1000/1h").await;
        for i in 0..3 * connections {
            let decision = limiter.check("api", "k", 1).await.expect("decides");
            assert_eq!(decision.remaining, 999 - i as u64);
        }
        assert_eq!(
            deciding_clients(&server).len(),
            connections,
            "{connections} connections, each carrying decisions: {}",
            server.cli(&["CLIENT", "LIST"])
        );
    }
}

#[tokio::test]
async fn decisions_over_several_connections_admit_exactly_the_limit() {
    let server = RedisServer::start();
    let limiter = limiter(&server, 4, None, "fixed_window 100/1h").await;
    let calls: Vec<_> = (0..300)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.check("api", "hot", 1).await })
        })
        .collect();
    let mut allowed = 0;
    for call in calls {
        allowed += u32::from(call.await.expect("task").expect("decides").allowed);
    }
    assert_eq!(allowed, 100, "300 concurrent checks on 4 connections");
    assert_eq!(deciding_clients(&server).len(), 4);
}

#[tokio::test]
async fn a_lost_connection_reconnects_while_the_others_carry_on() {
    let server = RedisServer::start();
    let (limiter, clients) = two_connections(&server).await;
    assert_eq!(server.cli(&["CLIENT", "KILL", "ID", &clients[0]]), "1");
    // The call that meets the closed connection fails (a decision is never
    // re-sent: it may have run), unless the keep-alive found it first; the
    // connection reconnects on its own, and the other never failed.
    let mut failed = 0;
    for _ in 0..20 {
        failed += u32::from(limiter.check("api", "k", 1).await.is_err());
    }
    assert!(
        failed <= 1,
        "{failed} of 20 calls failed after one connection was killed"
    );
    for _ in 0..10 {
        limiter
            .check("api", "k", 1)
            .await
            .expect("decides after reconnecting");
    }
    let after = store_clients(&server);
    assert_eq!(after.len(), 2, "both connections are back: {after:?}");
    assert!(!after.contains(&clients[0]), "the killed one was replaced");
}

#[tokio::test]
async fn connections_closed_while_idle_are_found_before_a_call_is() {
    let server = RedisServer::start();
    let (limiter, clients) = two_connections(&server).await;
    // What a restart or Redis's idle `timeout` does to idle clients.
    for id in &clients {
        assert_eq!(server.cli(&["CLIENT", "KILL", "ID", id]), "1");
    }
    // Idle for more than a keep-alive round: both reconnect before any
    // call needs them, so none fails.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..20 {
        limiter
            .check("api", "k", 1)
            .await
            .unwrap_or_else(|e| panic!("call {i} after an idle close: {e}"));
    }
    let after = store_clients(&server);
    assert_eq!(after.len(), 2, "both connections are back: {after:?}");
    assert!(
        after.iter().all(|id| !clients.contains(id)),
        "both were replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reconnect_by_themselves_once_redis_is_back() {
    let mut server = RedisServer::start();
    // Pinged every 10 s: only the rounds that follow a failed one (100 ms
    // after it, doubling) can reconnect the connections within the test.
    let every = Some(Duration::from_secs(10));
    let limiter = limiter(&server, 2, every, "fixed_window 1000/1h").await;
    limiter.check("api", "k", 1).await.expect("decides");
    server.kill();
    // The call that finds Redis gone starts a round of PINGs, which fail.
    assert!(limiter.check("api", "k", 1).await.is_err(), "Redis is down");
    let failed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restarted");
    // The waits double from 100 ms, so a round starts within as long again
    // as it has been since the first failed one (and far within 10 s);
    // 600 ms more for the round itself on a loaded machine.
    let back = failed_at.elapsed();
    tokio::time::sleep(back + Duration::from_millis(600)).await;
    assert!(
        failed_at.elapsed() < Duration::from_secs(9),
        "the test ran too long to tell"
    );
    // No call since the failed one: the first on each connection succeeds.
    for i in 0..4 {
        limiter.check("api", "k", 1).await.unwrap_or_else(|e| {
            panic!("call {i} after Redis was back (restarted {back:?} after the failed call): {e}")
        });
    }
    assert_eq!(store_clients(&server).len(), 2, "both connections are back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_reconnection_was_refused_is_replaced() {
    let server = RedisServer::start();
    let url = common::user_without(&server, "rotated", &[]);
    let every = Some(tollgate_redis::pool::DEFAULT_KEEP_ALIVE);
    let limiter = limiter_at(&url, 2, every, "fixed_window 1000/1h").await;
    limiter.check("api", "k", 1).await.expect("decides");
    // A password being rotated: the connections are closed and try again
    // with the old one, which the server refuses (not an I/O error, so
    // redis-rs never tries that connection again by itself).
    let password = |p: &str| server.cli(&["ACL", "SETUSER", "rotated", "resetpass", p]);
    assert_eq!(password(">other"), "OK");
    server.cli(&["CLIENT", "KILL", "USER", "rotated"]);
    assert!(limiter.check("api", "k", 1).await.is_err(), "closed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = limiter.check("api", "k", 1).await.expect_err("refused");
    assert_eq!(password(">pw"), "OK");
    let restored = Instant::now();
    loop {
        if limiter.check("api", "k", 1).await.is_ok() {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(5),
            "still failing 5 s after the password was restored (first refused with {refused})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every connection works again, not just one.
    for i in 0..4 {
        limiter
            .check("api", "k", 1)
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
    }
}

/// What the server has accepted since it started (`INFO stats`).
fn connections_received(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received")
}

/// A server that refuses the `PING` itself, here to a user whose ACL does
/// not allow it, is there: its connections are kept, not replaced at every
/// round (only a refused authentication replaces one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_refused_by_the_acl_replaces_no_connection() {
    let server = RedisServer::start();
    let url = common::user_without(&server, "noping", &["-ping"]);
    let every = Some(Duration::from_millis(200));
    let limiter = limiter_at(&url, 2, every, "fixed_window 1000/1h").await;
    limiter.check("api", "k", 1).await.expect("decides");
    let before = connections_received(&server);
    // Ten rounds and more, every PING refused with NOPERM.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Less the one this INFO's redis-cli opened.
    let opened = connections_received(&server) - before - 1;
    assert_eq!(opened, 0, "{opened} connections opened in 3 s");
    limiter.check("api", "k", 1).await.expect("still decides");
}
