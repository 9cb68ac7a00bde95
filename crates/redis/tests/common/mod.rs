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
