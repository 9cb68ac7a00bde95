//! Shared helpers of the Redis store's tests.
#![allow(dead_code)]

use tollgate::ManualClock;
use tollgate_redis::{RedisOptions, RedisStore};

pub use tollgate_testkit::redis::unique_prefix;

pub fn options() -> RedisOptions {
    RedisOptions::default()
        .prefix(unique_prefix())
        .timeout(std::time::Duration::from_secs(5))
        // A loaded CI machine can take more than the default second.
        .connect_timeout(std::time::Duration::from_secs(5))
        // Whatever the machine's cores (the default follows them): the
        // suites run over more than one connection.
        .connections(2)
}

/// A standalone store driven by `clock`.
pub async fn standalone(url: &str, clock: ManualClock) -> RedisStore {
    RedisStore::connect(url, options())
        .await
        .expect("connect")
        .with_test_clock(clock)
}

/// A Cluster store driven by `clock`.
pub async fn cluster(urls: &[String], clock: ManualClock) -> RedisStore {
    RedisStore::connect_cluster(urls, options())
        .await
        .expect("connect to cluster")
        .with_test_clock(clock)
}

/// The master `group`'s sentinels monitor, without credentials.
pub fn sentinel_master(
    group: &tollgate_testkit::redis::RedisSentinel,
) -> tollgate_redis::SentinelMaster {
    tollgate_redis::SentinelMaster::new(group.master_name())
}

/// A Sentinel store driven by `clock`.
pub async fn sentinel(
    group: &tollgate_testkit::redis::RedisSentinel,
    clock: ManualClock,
) -> RedisStore {
    RedisStore::connect_sentinel(&group.sentinel_urls(), sentinel_master(group), options())
        .await
        .expect("connect through the sentinels")
        .with_test_clock(clock)
}

/// Creates a user on `server` whose ACL allows everything but functions
/// (`FCALL`, `FUNCTION`), as an operator might; returns its URL. A store
/// connecting with it must decide through `EVALSHA`.
pub fn scripts_only_user(server: &tollgate_testkit::redis::RedisServer) -> String {
    user_without(server, "scripts", &["-function", "-fcall", "-fcall_ro"])
}

/// Creates user `name` (password `pw`) on `server`, allowed every command,
/// key and channel except the ACL rules `denied` (e.g. `-function`);
/// returns its URL.
pub fn user_without(
    server: &tollgate_testkit::redis::RedisServer,
    name: &str,
    denied: &[&str],
) -> String {
    let mut args = vec!["ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all"];
    args.extend_from_slice(denied);
    assert_eq!(server.cli(&args), "OK");
    format!("redis://{name}:pw@127.0.0.1:{}", server.port())
}

/// The calls `server` counts for `command` (`INFO commandstats`), 0 if none.
pub fn calls(server: &tollgate_testkit::redis::RedisServer, command: &str) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// That `server` ran no `FCALL` (refused ones are not calls) and some
/// `EVALSHA`s.
pub fn assert_no_fcall_ran(server: &tollgate_testkit::redis::RedisServer) {
    assert_eq!(calls(server, "fcall"), 0);
    assert!(calls(server, "evalsha") > 0);
}

/// The count a `fixed_window` state holds, in either of its stored forms
/// (docs/REDIS.md, "Keys and state"): compact, `-<start ms><count, 6
/// digits>`, or text, `start:count`. `None` for anything else.
pub fn fixed_window_count(value: &str) -> Option<u64> {
    match value.strip_prefix('-') {
        Some(digits) if digits.len() > 6 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits[digits.len() - 6..].parse().ok()
        }
        Some(_) => None,
        None => value.split_once(':')?.1.parse().ok(),
    }
}
