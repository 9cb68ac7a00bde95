//! Differential test: random timelines driven through the memory store and
//! through Redis (standalone and Cluster) must give identical decisions,
//! field by field — including when a policy changes under a live key (each
//! policy slot has a second version of the same algorithm that operations
//! switch to and back), when a state expires before the change, and when
//! the clock steps back (a failover to a replica whose clock is behind).

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use tollgate::{Algorithm, Clock, ManualClock, MemoryStore, Mode, Policy, PolicyRef, Store};
use tollgate_testkit::redis::{RedisCluster, RedisServer};

#[derive(Debug, Clone)]
struct Op {
    /// Microseconds to advance before the operation.
    step: u64,
    /// Microseconds to step the clock back before the operation.
    back: u64,
    key: u8,
    /// Which policies (indexes into the case's policies); several = multi.
    policies: Vec<usize>,
    cost: u64,
    mode: Mode,
    reset: bool,
    /// Decide under each slot's second version of its policy.
    changed: bool,
}

fn policy() -> impl Strategy<Value = (Policy, Policy)> {
    proptest::sample::select(Algorithm::ALL.to_vec())
        .prop_flat_map(|algorithm| (policy_of(algorithm), policy_of(algorithm)))
}

fn policy_of(algorithm: Algorithm) -> impl Strategy<Value = Policy> {
    (
        1u64..=12,
        prop_oneof![
            1_000u64..=50_000,
            50_000u64..=3_000_000,
            Just(1_000_000u64),
            Just(60_000_000u64)
        ],
        1u64..=15,
    )
        .prop_map(move |(limit, period, burst)| {
            let burst = algorithm.has_burst().then_some(burst);
            Policy::new(
                algorithm,
                limit,
                std::time::Duration::from_micros(period),
                burst,
            )
            .expect("valid")
        })
}

fn case() -> impl Strategy<Value = (Vec<(Policy, Policy)>, Vec<Op>)> {
    proptest::collection::vec(policy(), 1..=3).prop_flat_map(|policies| {
        let n = policies.len();
        let op = (
            prop_oneof![Just(0u64), 0u64..2_000, 0u64..400_000, 0u64..3_000_000],
            0u8..3,
            proptest::sample::subsequence((0..n).collect::<Vec<_>>(), 1..=n),
            prop_oneof![4 => 1u64..=3, 1 => 1u64..=20],
            prop_oneof![4 => Just(Mode::Consume), 1 => Just(Mode::Peek)],
            proptest::bool::weighted(0.03),
            proptest::bool::weighted(0.3),
            prop_oneof![8 => Just(0u64), 1 => 1u64..3_000_000],
        )
            .prop_map(
                |(step, key, policies, cost, mode, reset, changed, back)| Op {
                    step,
                    back,
                    key,
                    policies,
                    cost,
                    mode,
                    reset,
                    changed,
                },
            );
        (Just(policies), proptest::collection::vec(op, 1..60))
    })
}

async fn compare<S: Store>(
    redis: &S,
    clock: &ManualClock,
    policies: &[(Policy, Policy)],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let memory = MemoryStore::with_clock(clock.clone());
    let names: Vec<String> = (0..policies.len()).map(|i| format!("p{i}")).collect();
    for (i, op) in ops.iter().enumerate() {
        clock.advance_us(op.step);
        clock.set_us(clock.now_us() - op.back);
        let refs: Vec<PolicyRef<'_>> = op
            .policies
            .iter()
            .map(|&j| PolicyRef {
                name: &names[j],
                policy: if op.changed {
                    &policies[j].1
                } else {
                    &policies[j].0
                },
            })
            .collect();
        let key = [b'k', op.key];
        if op.reset {
            memory.reset(&key, &refs).await.expect("memory");
            redis.reset(&key, &refs).await.expect("redis reset");
            continue;
        }
        let expected = memory
            .apply(tollgate::Check::new(&key, &refs, op.cost, op.mode))
            .await
            .expect("memory");
        let actual = redis
            .apply(tollgate::Check::new(&key, &refs, op.cost, op.mode))
            .await
            .expect("redis");
        prop_assert_eq!(&expected[..], &actual[..], "op {} ({:?}) differs", i, op);
    }
    Ok(())
}

fn run_cases<F, Fut>(cases: u32, make: F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: std::future::Future<Output = tollgate_redis::RedisStore>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/differential.proptest-regressions",
        ))),
        ..Config::default()
    });
    runner
        .run(&case(), |(policies, ops)| {
            runtime.block_on(async {
                let clock = ManualClock::new(tollgate_testkit::conformance::START_US);
                let redis = make(clock.clone()).await;
                compare(&redis, &clock, &policies, &ops).await
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn redis_decides_exactly_like_memory() {
    let server = RedisServer::start();
    let url = server.url();
    run_cases(2_000, |clock| {
        let url = url.clone();
        async move { common::standalone(&url, clock).await }
    });
}

#[test]
fn redis_cluster_decides_exactly_like_memory() {
    let cluster = RedisCluster::start(3, 0);
    let urls = cluster.urls();
    run_cases(300, |clock| {
        let urls = urls.clone();
        async move { common::cluster(&urls, clock).await }
    });
}

/// The fallback for servers without functions: a user whose ACL forbids
/// them gets `EVALSHA` of the scripts, which must decide the same.
#[test]
fn redis_scripts_decide_exactly_like_memory() {
    let server = RedisServer::start();
    let url = common::scripts_only_user(&server);
    run_cases(500, |clock| {
        let url = url.clone();
        async move { common::standalone(&url, clock).await }
    });
    common::assert_no_fcall_ran(&server);
}
