//! The envoyproxy/ratelimit counter script (`lua/envoy_counter.lua`) decides
//! exactly as `fixed_window` does: random timelines of checks, peeks and
//! resets, driven through `RedisStore::apply_envoy_counter` and through the
//! memory store's `fixed_window`, give identical decisions field by field.
//! (The clock never steps back here: then the script counts in the earlier
//! window's own counter, as envoyproxy/ratelimit does, where `fixed_window`
//! keeps the later window.) Also: its refusals.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tollgate::{Algorithm, ManualClock, MemoryStore, Mode, Policy, PolicyRef, Store};
use tollgate_redis::RedisStore;
use tollgate_testkit::redis::{RedisCluster, RedisServer};

#[derive(Debug, Clone)]
struct Op {
    step: u64,
    key: u8,
    cost: u64,
    mode: Mode,
    reset: bool,
}

fn case() -> impl Strategy<Value = (Policy, Vec<Op>)> {
    let policy =
        (1u64..=12, prop_oneof![Just(1u64), Just(2), Just(60)]).prop_map(|(limit, seconds)| {
            Policy::new(
                Algorithm::FixedWindow,
                limit,
                std::time::Duration::from_secs(seconds),
                None,
            )
            .expect("valid")
        });
    let op = (
        prop_oneof![Just(0u64), 0u64..2_000, 0u64..400_000, 0u64..3_000_000],
        0u8..3,
        prop_oneof![4 => 1u64..=3, 1 => 1u64..=14],
        prop_oneof![4 => Just(Mode::Consume), 1 => Just(Mode::Peek)],
        proptest::bool::weighted(0.03),
    )
        .prop_map(|(step, key, cost, mode, reset)| Op {
            step,
            key,
            cost,
            mode,
            reset,
        });
    (policy, proptest::collection::vec(op, 1..60))
}

async fn store(url: &str, clock: ManualClock) -> RedisStore {
    RedisStore::connect(url, common::options().envoy_prefix(common::unique_prefix()))
        .await
        .expect("connect")
        .with_test_clock(clock)
}

#[test]
fn the_envoy_counter_decides_exactly_like_fixed_window() {
    let server = RedisServer::start();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: 500,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |(policy, ops)| {
            runtime.block_on(async {
                let clock = ManualClock::new(tollgate_testkit::conformance::START_US);
                let redis = store(&url, clock.clone()).await;
                let memory = MemoryStore::with_clock(clock.clone());
                let refs = [PolicyRef {
                    name: "envoy",
                    policy: &policy,
                }];
                for (i, op) in ops.iter().enumerate() {
                    clock.advance_us(op.step);
                    let key = [b'k', b'0' + op.key];
                    let base = [b"edge_k_".as_slice(), &key, b"_"].concat();
                    if op.reset {
                        memory.reset(&key, &refs).await.expect("memory");
                        redis
                            .reset_envoy_counter(&base, &policy, &key)
                            .await
                            .expect("redis reset");
                        continue;
                    }
                    let expected = memory
                        .apply(tollgate::Check::new(&key, &refs, op.cost, op.mode))
                        .await
                        .expect("memory")[0];
                    let actual = redis
                        .apply_envoy_counter(&base, &policy, op.cost, op.mode)
                        .await
                        .expect("redis");
                    prop_assert_eq!(expected, actual, "op {} ({:?}) differs", i, op);
                }
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn the_envoy_counter_refuses_what_its_layout_cannot_hold() {
    let server = RedisServer::start();
    let fixed = |text: &str| -> Policy { text.parse().expect("policy") };
    let plain = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    let error = plain
        .apply_envoy_counter(b"d_k_v_", &fixed("fixed_window 3/1m"), 1, Mode::Consume)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no envoy prefix"), "{error}");
    let store = RedisStore::connect(&server.url(), common::options().envoy_prefix(""))
        .await
        .expect("connect");
    for policy in ["gcra 3/1m", "fixed_window 3/1500ms"] {
        let error = store
            .apply_envoy_counter(b"d_k_v_", &fixed(policy), 1, Mode::Consume)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("whole seconds"),
            "{policy}: {error}"
        );
    }
    // A counter that holds no integer is an error, and is left as it is
    // (at least 10 s before the hour turns, so the window stays the same).
    let window = fixed("fixed_window 3/1h");
    let now = loop {
        let time = server.cli(&["TIME"]);
        let now: u64 = time
            .lines()
            .next()
            .expect("TIME")
            .trim()
            .parse()
            .expect("seconds");
        if now % 3600 < 3590 {
            break now;
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600 - now % 3600)).await;
    };
    let key = format!("d_k_bad_{}", now - now % 3600);
    server.cli(&["SET", &key, "many"]);
    let error = store
        .apply_envoy_counter(b"d_k_bad_", &window, 1, Mode::Consume)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not hold an integer"), "{error}");
    assert_eq!(server.cli(&["GET", &key]), "many");
    let cluster = RedisCluster::start(3, 0);
    let on_cluster =
        RedisStore::connect_cluster(&cluster.urls(), common::options().envoy_prefix(""))
            .await
            .expect("connect to cluster");
    let error = on_cluster
        .apply_envoy_counter(b"d_k_v_", &window, 1, Mode::Consume)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("standalone Redis"), "{error}");
}
