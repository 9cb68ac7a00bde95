//! Run-time overrides shared through Redis: set through one store, in
//! force on every instance that follows it, on a standalone Redis and a
//! Cluster; bounded, with ended overrides making room.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::overrides::{Override, OverrideLimit, OverrideStore, Overrides, follow};
use tollgate::{Limiter, Policy};
use tollgate_redis::RedisStore;
use tollgate_testkit::redis::{RedisCluster, RedisServer};

/// How often each instance reads the version.
const EVERY: Duration = Duration::from_millis(100);

/// One instance: its store, its followed table and its limiter.
struct Instance {
    store: RedisStore,
    table: Arc<Overrides>,
    limiter: Limiter<RedisStore>,
}

fn instance(store: RedisStore) -> Instance {
    let table = Arc::new(Overrides::new());
    tokio::spawn(follow(Arc::downgrade(&table), store.clone(), EVERY));
    let limiter = Limiter::builder(store.clone())
        .policy("api", "fixed_window 2/1h".parse().expect("valid"))
        .overrides(Arc::clone(&table))
        .build();
    Instance {
        store,
        table,
        limiter,
    }
}

/// Waits until `table` says what `expect` says of (api, key), at most 1 s
/// after `start`, when the change was made (the bound on propagation).
async fn propagated(
    table: &Overrides,
    key: &[u8],
    expect: impl Fn(Option<Override>) -> bool,
    start: Instant,
) {
    while !expect(table.lookup("api", key).map(|(o, _)| o)) {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "not propagated within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn three_instances_agree(stores: Vec<RedisStore>) {
    let fleet: Vec<Instance> = stores.into_iter().map(instance).collect();
    let key = "customer-1".to_owned();
    let raised = Override {
        limit: OverrideLimit::Policy("fixed_window 5/1h".parse::<Policy>().expect("valid")),
        expires_at_us: None,
    };
    let start = Instant::now();
    assert!(
        fleet[0]
            .store
            .put_override("api", key.as_bytes(), &raised, 100)
            .await
            .expect("put")
    );
    for instance in &fleet {
        propagated(
            &instance.table,
            key.as_bytes(),
            |o| o == Some(raised),
            start,
        )
        .await;
    }
    // The fleet shares one state and now one limit of 5 for this key.
    let mut allowed = 0;
    for i in 0..12 {
        let d = fleet[i % 3]
            .limiter
            .check("api", &key, 1)
            .await
            .expect("redis");
        allowed += usize::from(d.allowed);
    }
    assert_eq!(allowed, 5);
    let start = Instant::now();
    assert!(
        fleet[2]
            .store
            .delete_override("api", key.as_bytes())
            .await
            .expect("delete")
    );
    for instance in &fleet {
        propagated(&instance.table, key.as_bytes(), |o| o.is_none(), start).await;
    }
    assert!(
        !fleet[1]
            .limiter
            .check("api", &key, 1)
            .await
            .expect("redis")
            .allowed
    );
}

#[tokio::test]
async fn an_override_set_through_one_instance_holds_on_all_three_standalone() {
    let server = RedisServer::start();
    let options = common::options();
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(
            RedisStore::connect(&server.url(), options.clone())
                .await
                .expect("connect"),
        );
    }
    three_instances_agree(stores).await;
}

#[tokio::test]
async fn an_override_set_through_one_instance_holds_on_all_three_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let options = common::options();
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(
            RedisStore::connect_cluster(&cluster.urls(), options.clone())
                .await
                .expect("connect"),
        );
    }
    three_instances_agree(stores).await;
}

#[tokio::test]
async fn the_store_holds_at_most_max_and_ended_overrides_make_room() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    let blocked = |expires_at_us| Override {
        limit: OverrideLimit::Blocked,
        expires_at_us,
    };
    // Two that ended long ago (by Redis's clock) and one that never ends.
    assert!(
        store
            .put_override("api", b"a", &blocked(Some(1)), 3)
            .await
            .expect("put")
    );
    assert!(
        store
            .put_override("api", b"b", &blocked(Some(1)), 3)
            .await
            .expect("put")
    );
    assert!(
        store
            .put_override("api", b"c", &blocked(None), 3)
            .await
            .expect("put")
    );
    // Full: the ended two are swept to make room.
    assert!(
        store
            .put_override("api", b"d", &blocked(None), 3)
            .await
            .expect("put")
    );
    assert!(
        store
            .put_override("api", b"e", &blocked(None), 3)
            .await
            .expect("put")
    );
    assert!(
        !store
            .put_override("api", b"f", &blocked(None), 3)
            .await
            .expect("put"),
        "three live overrides fill a store of three"
    );
    // Replacing one is not adding one.
    assert!(
        store
            .put_override("api", b"c", &blocked(Some(1)), 3)
            .await
            .expect("put")
    );
    let mut keys: Vec<Vec<u8>> = store
        .load_overrides()
        .await
        .expect("load")
        .into_iter()
        .map(|(_, key, _)| key)
        .collect();
    keys.sort();
    assert_eq!(keys, vec![b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    // A damaged entry is left out, not fatal.
    let hash = format!("{}:{{%overrides}}", store.prefix());
    server.cli(&["HSET", &hash, "junk", "x y z"]);
    assert_eq!(store.load_overrides().await.expect("load").len(), 3);
}

/// Raises `api` to `raised` for one key, spends 7, removes the override
/// and checks once more: every (allowed, remaining).
async fn spent_under_an_override<S: tollgate::Store>(
    store: S,
    base: &str,
    raised: &str,
) -> Vec<(bool, u64)> {
    let limiter = Limiter::builder(store)
        .policy("api", base.parse::<Policy>().expect("valid"))
        .overrides(Arc::new(Overrides::new()))
        .build();
    limiter
        .set_override(
            "api",
            "k",
            OverrideLimit::Policy(raised.parse().expect("valid")),
            None,
        )
        .expect("set");
    let mut seen = Vec::new();
    for _ in 0..7 {
        let d = limiter.check("api", "k", 1).await.expect("decision");
        seen.push((d.allowed, d.remaining));
    }
    assert!(limiter.remove_override("api", "k"));
    let d = limiter.check("api", "k", 1).await.expect("decision");
    seen.push((d.allowed, d.remaining));
    seen
}

/// An override is a policy change for one key, on Redis as in memory:
/// units spent under it count, in absolute units, once it is gone (a
/// bucket's tokens clamped to the policy's capacity, GCRA's arrival time,
/// a window's count).
#[tokio::test]
async fn state_spent_under_an_override_carries_over_alike_in_redis_and_memory() {
    let server = RedisServer::start();
    for (base, raised) in [
        ("fixed_window 2/1h", "fixed_window 6/1h"),
        ("sliding_window 2/1h", "sliding_window 6/1h"),
        ("token_bucket 2/1h burst 2", "token_bucket 6/1h burst 6"),
        ("gcra 2/1h burst 2", "gcra 6/1h burst 6"),
    ] {
        let redis = RedisStore::connect(&server.url(), common::options())
            .await
            .expect("connect");
        let on_redis = spent_under_an_override(redis, base, raised).await;
        let in_memory = spent_under_an_override(tollgate::MemoryStore::new(), base, raised).await;
        assert_eq!(on_redis, in_memory, "{base}");
        assert_eq!(
            on_redis.iter().filter(|(a, _)| *a).count(),
            6,
            "{base}: {on_redis:?}"
        );
        assert_eq!(
            on_redis.last(),
            Some(&(false, 0)),
            "{base}: 6 spent against 2"
        );
    }
}
