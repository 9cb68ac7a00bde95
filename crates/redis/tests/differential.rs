//! Differential test: random timelines driven through the memory store and
//! through Redis (standalone and Cluster) must give identical decisions,
//! field by field — including when a policy changes under a live key (each
//! policy slot has a second version of the same algorithm that operations
//! switch to and back), when a state expires before the change, when the
//! clock steps back (a failover to a replica whose clock is behind), and
//! when a state the script stored compact is rewritten in the text form of
//! the previous release (a key that an instance of that release wrote
//! during a rolling upgrade, read by this one). A third of the operations
//! are lease calls (`Store::lease`): random wants and lifetimes, giving back
//! part of the key's last lease (sometimes more than it held, sometimes
//! with a wrong end), whose answers — decisions and leases — must be equal
//! too. About a third of the rest are a reservation's steps
//! (`Store::reserve`, `Store::settle`): reserves of random estimates and
//! deadlines, and settles of earlier reservations under, over and at their
//! estimate, at 0 (a cancel), replayed, past their deadline, of an unknown
//! nonce, for another key or other policies, whose answers must be equal
//! too.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use tollgate::{
    Algorithm, Clock, Held, LeaseAsk, LeaseCall, Leased, ManualClock, MemoryStore, Mode, Policy,
    PolicyRef, ReserveCall, SettleCall, Store,
};
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
    /// After the operation, rewrite its keys' compact states in the text
    /// form of the previous release.
    legacy: bool,
    /// A lease call (consuming) instead of a check: one ask per policy
    /// slot of the case, used for the slots the operation names.
    lease: Option<Vec<Ask>>,
    /// A reservation's step instead of a check or a lease call.
    reservation: Option<Step>,
}

/// A reservation's step.
#[derive(Debug, Clone)]
enum Step {
    /// Reserve `estimate` of the operation's policies for its key.
    Reserve { estimate: u64, deadline_us: u64 },
    /// Settle the earlier reservation `pick` (modulo how many were made;
    /// an unknown nonce when none was).
    Settle {
        pick: usize,
        actual: Actual,
        target: Target,
    },
}

/// A settle's actual cost, against the reservation's estimate.
#[derive(Debug, Clone, Copy)]
enum Actual {
    Zero,
    Equal,
    Under(u64),
    Over(u64),
}

impl Actual {
    fn of(self, estimate: u64) -> u64 {
        match self {
            Actual::Zero => 0,
            Actual::Equal => estimate,
            Actual::Under(d) => estimate.saturating_sub(d),
            Actual::Over(d) => estimate + d,
        }
    }
}

/// What a settle names.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The reservation as it was made.
    Same,
    /// Its nonce, with another key.
    OtherKey,
    /// Its nonce and key, with the operation's policies (other names, or
    /// by chance the same).
    OtherPolicies,
    /// A nonce never reserved.
    Unknown,
}

fn step() -> impl Strategy<Value = Step> {
    let reserve = (
        prop_oneof![4 => 1u64..=12, 1 => 13u64..=400],
        prop_oneof![
            1_000u64..=50_000,
            50_000u64..=3_000_000,
            Just(300_000_000u64)
        ],
    )
        .prop_map(|(estimate, deadline_us)| Step::Reserve {
            estimate,
            deadline_us,
        });
    let actual = prop_oneof![
        Just(Actual::Zero),
        Just(Actual::Equal),
        (1u64..=20).prop_map(Actual::Under),
        (1u64..=20).prop_map(Actual::Over),
        (21u64..=2_000).prop_map(Actual::Over),
    ];
    let target = prop_oneof![
        12 => Just(Target::Same),
        1 => Just(Target::OtherKey),
        1 => Just(Target::OtherPolicies),
        1 => Just(Target::Unknown),
    ];
    let settle = (any::<usize>(), actual, target).prop_map(|(pick, actual, target)| Step::Settle {
        pick,
        actual,
        target,
    });
    prop_oneof![reserve, settle]
}

/// What a lease call asks of one policy.
#[derive(Debug, Clone)]
struct Ask {
    want: u64,
    ttl_us: u64,
    /// Give back part of the key's last lease of this policy: `pick` modulo
    /// (its units + 3), so sometimes all of it and sometimes more.
    give: Option<u64>,
    /// Added to that lease's end: a give-back that names the wrong end.
    skew: i64,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        prop_oneof![1 => Just(0u64), 4 => 1u64..=8, 2 => 1u64..=400],
        prop_oneof![
            1_000u64..=50_000,
            50_000u64..=3_000_000,
            Just(3_600_000_000u64)
        ],
        proptest::option::weighted(0.6, 0u64..1_000),
        prop_oneof![8 => Just(0i64), 1 => -2_000_000i64..=2_000_000],
    )
        .prop_map(|(want, ttl_us, give, skew)| Ask {
            want,
            ttl_us,
            give,
            skew,
        })
}

fn policy() -> impl Strategy<Value = (Policy, Policy)> {
    proptest::sample::select(Algorithm::ALL.to_vec())
        .prop_flat_map(|algorithm| (policy_of(algorithm), policy_of(algorithm)))
}

fn policy_of(algorithm: Algorithm) -> impl Strategy<Value = Policy> {
    // Mostly small limits, where decisions deny often; some large enough
    // for leases of more than one unit (a 16th of what remains).
    (
        prop_oneof![3 => 1u64..=12, 1 => 13u64..=400],
        prop_oneof![
            1_000u64..=50_000,
            50_000u64..=3_000_000,
            Just(1_000_000u64),
            Just(60_000_000u64)
        ],
        prop_oneof![3 => 1u64..=15, 1 => 16u64..=400],
        proptest::option::weighted(0.5, 0u64..=400),
    )
        .prop_map(move |(limit, period, burst, overdraft)| {
            let burst = algorithm.has_burst().then_some(burst);
            let policy = Policy::new(
                algorithm,
                limit,
                std::time::Duration::from_micros(period),
                burst,
            )
            .expect("valid");
            // Half of them overdraw less than the default (the capacity).
            match overdraft {
                Some(units) if tollgate::algorithm::can_reserve(algorithm) => policy
                    .with_max_overdraft(units % (policy.capacity() + 1))
                    .expect("an overdraft within the capacity"),
                _ => policy,
            }
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
            proptest::bool::weighted(0.2),
            proptest::option::weighted(0.33, proptest::collection::vec(ask(), n)),
            proptest::option::weighted(0.35, step()),
        )
            .prop_map(
                |(
                    step,
                    key,
                    policies,
                    cost,
                    mode,
                    reset,
                    changed,
                    back,
                    legacy,
                    lease,
                    reservation,
                )| Op {
                    step,
                    back,
                    key,
                    policies,
                    cost,
                    mode,
                    reset,
                    changed,
                    legacy,
                    lease,
                    reservation,
                },
            );
        (Just(policies), proptest::collection::vec(op, 1..60))
    })
}

/// The text form the previous release stored for a compact state
/// (`-...`, see crates/redis/src/lua/prelude.lua) of `policy`'s algorithm,
/// with `policy`'s unit for a bucket: exactly what that release wrote after
/// a charge under `policy`.
fn previous_release_form(value: &str, policy: &Policy) -> String {
    let digits = value.strip_prefix('-').expect("a compact state");
    let field = |range: std::ops::Range<usize>| -> u64 { digits[range].parse().expect("digits") };
    let n = digits.len();
    let unit = policy.scaled_unit();
    match policy.algorithm() {
        Algorithm::FixedWindow => format!("{}:{}", field(0..n - 6) * 1000, field(n - 6..n)),
        Algorithm::SlidingWindow => format!(
            "{}:{}:{}",
            field(0..n - 6) * 1000,
            field(n - 6..n - 3),
            field(n - 3..n)
        ),
        Algorithm::TokenBucket => {
            format!("{}:{}:{unit}", field(n - 3..n) * unit, field(0..n - 3))
        }
        Algorithm::LeakyBucket => format!("{unit}:{}:{unit}", field(0..n)),
        other => panic!("{other} has no compact form"),
    }
}

/// Rewrites every compact state of `key` under `policies` in the previous
/// release's text form, keeping its expiry.
async fn rewrite_as_previous_release(
    raw: &mut impl redis::aio::ConnectionLike,
    redis: &tollgate_redis::RedisStore,
    key: &[u8],
    policies: &[PolicyRef<'_>],
) {
    for policy in policies {
        if matches!(
            policy.policy.algorithm(),
            Algorithm::SlidingLog | Algorithm::Gcra
        ) {
            continue; // no compact form (a sorted set; an integer already)
        }
        let name = redis.key(key, policy);
        let value: Option<String> = redis::cmd("GET")
            .arg(&name)
            .query_async(raw)
            .await
            .expect("GET");
        if let Some(value) = value.filter(|v| v.starts_with('-')) {
            let () = redis::cmd("SET")
                .arg(&name)
                .arg(previous_release_form(&value, policy.policy))
                .arg("KEEPTTL")
                .query_async(raw)
                .await
                .expect("SET");
        }
    }
}

/// What the lease calls of a run did, counted over all its timelines: a
/// run must have taken leases of every algorithm that leases, leases of
/// several units, and had held units both given back and refused, or it
/// compared too little.
#[derive(Debug, Default)]
struct Seen {
    /// Leases taken, by algorithm (in `Algorithm::ALL`'s order).
    leases: [AtomicU64; 6],
    several_units: AtomicU64,
    returned: AtomicU64,
    refused: AtomicU64,
    /// Reservations made and refused; settles that gave back, charged
    /// more, left units unpaid, replayed, and found nothing.
    reserved: AtomicU64,
    reserve_denied: AtomicU64,
    settle_returned: AtomicU64,
    settle_charged: AtomicU64,
    settle_unpaid: AtomicU64,
    settle_replayed: AtomicU64,
    settle_unknown: AtomicU64,
}

impl Seen {
    fn count(&self, refs: &[PolicyRef<'_>], asks: &[LeaseAsk], answer: &tollgate::LeaseAnswer) {
        for ((p, ask), leased) in refs.iter().zip(asks).zip(&answer.leased) {
            let add = |counter: &AtomicU64, yes: bool| {
                counter.fetch_add(u64::from(yes), Ordering::Relaxed);
            };
            let algorithm = Algorithm::ALL
                .iter()
                .position(|&a| a == p.policy.algorithm())
                .expect("an algorithm");
            add(&self.leases[algorithm], leased.units > 0);
            add(&self.several_units, leased.units > 1);
            add(&self.returned, leased.returned > 0);
            add(&self.refused, ask.held.units > 0 && leased.returned == 0);
        }
    }

    fn assert_covered(&self) {
        for (i, algorithm) in Algorithm::ALL.iter().enumerate() {
            let leases = self.leases[i].load(Ordering::Relaxed);
            let leasing = Policy::new(*algorithm, 1, std::time::Duration::from_secs(1), None)
                .expect("valid")
                .with_lease(
                    tollgate::Lease::new(2, std::time::Duration::from_secs(1)).expect("valid"),
                )
                .is_ok();
            assert_eq!(
                leases > 0,
                leasing,
                "{algorithm}: {leases} leases: {self:?}"
            );
        }
        for (what, counter) in [
            ("leases of several units", &self.several_units),
            ("units given back", &self.returned),
            ("give-backs refused", &self.refused),
            ("reservations made", &self.reserved),
            ("reservations refused", &self.reserve_denied),
            ("settles giving back", &self.settle_returned),
            ("settles charging more", &self.settle_charged),
            ("settles leaving units unpaid", &self.settle_unpaid),
            ("settles replayed", &self.settle_replayed),
            ("settles of no reservation", &self.settle_unknown),
        ] {
            assert!(counter.load(Ordering::Relaxed) > 0, "no {what}: {self:?}");
        }
    }

    fn count_settle(&self, answer: Option<&tollgate::SettleAnswer>) {
        let add = |counter: &AtomicU64, yes: bool| {
            counter.fetch_add(u64::from(yes), Ordering::Relaxed);
        };
        let Some(answer) = answer else {
            add(&self.settle_unknown, true);
            return;
        };
        add(&self.settle_replayed, answer.replayed);
        for settled in &answer.settled {
            add(&self.settle_returned, settled.returned > 0);
            add(&self.settle_charged, settled.charged > 0);
            add(&self.settle_unpaid, settled.unpaid > 0);
        }
    }
}

/// A reservation a timeline made.
#[derive(Debug)]
struct Made {
    nonce: u128,
    key: u8,
    /// Its policy slots.
    slots: Vec<usize>,
    estimate: u64,
    /// The clock's time at its deadline.
    deadline: u64,
}

async fn compare(
    redis: &tollgate_redis::RedisStore,
    raw: &mut impl redis::aio::ConnectionLike,
    clock: &ManualClock,
    policies: &[(Policy, Policy)],
    ops: &[Op],
    seen: &Seen,
) -> Result<(), TestCaseError> {
    let memory = MemoryStore::with_clock(clock.clone());
    let names: Vec<String> = (0..policies.len()).map(|i| format!("p{i}")).collect();
    // The last lease granted per (key, policy slot), not yet given back.
    let mut leases: HashMap<(u8, usize), Leased> = HashMap::new();
    let mut reservations: Vec<Made> = Vec::new();
    // The latest time of the timeline's operations so far.
    let mut latest = 0;
    for (i, op) in ops.iter().enumerate() {
        latest = latest.max(clock.now_us());
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
        if let Some(step) = &op.reservation {
            let policy_of = |j: usize| PolicyRef {
                name: &names[j],
                policy: if op.changed {
                    &policies[j].1
                } else {
                    &policies[j].0
                },
            };
            match *step {
                Step::Reserve {
                    estimate,
                    deadline_us,
                } => {
                    let nonce = 1 + reservations.len() as u128;
                    let call = ReserveCall {
                        check: tollgate::Check::new(&key, &refs, estimate, Mode::Consume),
                        nonce,
                        deadline_us,
                    };
                    let expected = memory.reserve(call).await.expect("memory");
                    let actual = redis.reserve(call).await.expect("redis reserve");
                    prop_assert_eq!(&expected[..], &actual[..], "op {} ({:?}) differs", i, op);
                    let allowed = expected.iter().all(|d| d.allowed);
                    let counter = if allowed {
                        &seen.reserved
                    } else {
                        &seen.reserve_denied
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if allowed {
                        reservations.push(Made {
                            nonce,
                            key: op.key,
                            slots: op.policies.clone(),
                            estimate,
                            deadline: clock.now_us() + deadline_us,
                        });
                    }
                }
                Step::Settle {
                    pick,
                    actual,
                    target,
                } => {
                    let made = (!reservations.is_empty())
                        .then(|| &reservations[pick % reservations.len()])
                        .filter(|_| !matches!(target, Target::Unknown));
                    // A reservation past its deadline is forgotten by the
                    // memory store at any later call that meets it (or
                    // makes another reservation in its shard), by Redis when
                    // its record expires: the two agree unless the clock
                    // steps back over the deadline after it passed.
                    if made.is_some_and(|m| m.deadline <= latest && clock.now_us() < m.deadline) {
                        continue;
                    }
                    let (nonce, settle_key, slots, estimate) = match made {
                        Some(m) => {
                            let settle_key = match target {
                                Target::OtherKey => [b'k', (m.key + 1) % 3],
                                _ => [b'k', m.key],
                            };
                            let slots = match target {
                                Target::OtherPolicies => op.policies.clone(),
                                _ => m.slots.clone(),
                            };
                            (m.nonce, settle_key, slots, m.estimate)
                        }
                        None => (u128::MAX - i as u128, key, op.policies.clone(), op.cost),
                    };
                    let settle_refs: Vec<PolicyRef<'_>> =
                        slots.iter().map(|&j| policy_of(j)).collect();
                    let call = SettleCall {
                        key: &settle_key,
                        policies: &settle_refs,
                        nonce,
                        actual: actual.of(estimate),
                    };
                    let expected = memory.settle(call).await.expect("memory");
                    let actual = redis.settle(call).await.expect("redis settle");
                    prop_assert_eq!(&expected, &actual, "op {} ({:?}) differs", i, op);
                    seen.count_settle(expected.as_ref());
                }
            }
        } else if let Some(asks) = &op.lease {
            let asks: Vec<LeaseAsk> = op
                .policies
                .iter()
                .map(|&j| {
                    let ask = &asks[j];
                    let held = ask.give.map_or(Held::default(), |pick| {
                        let last = leases.remove(&(op.key, j)).unwrap_or_default();
                        Held {
                            units: pick % (last.units + 3),
                            until: last.until.saturating_add_signed(ask.skew),
                        }
                    });
                    LeaseAsk {
                        want: ask.want,
                        ttl_us: ask.ttl_us,
                        held,
                    }
                })
                .collect();
            let call = LeaseCall {
                check: tollgate::Check::new(&key, &refs, op.cost, Mode::Consume),
                asks: &asks,
            };
            let expected = memory.lease(call).await.expect("memory");
            let actual = redis.lease(call).await.expect("redis lease");
            prop_assert_eq!(
                &expected,
                &actual,
                "op {} ({:?}, {:?}) differs",
                i,
                op,
                asks
            );
            seen.count(&refs, &asks, &expected);
            for (&j, leased) in op.policies.iter().zip(&expected.leased) {
                if leased.units > 0 {
                    leases.insert((op.key, j), *leased);
                }
            }
        } else {
            let check = tollgate::Check::new(&key, &refs, op.cost, op.mode);
            let expected = memory.apply(check).await.expect("memory");
            let actual = redis.apply(check).await.expect("redis");
            prop_assert_eq!(&expected[..], &actual[..], "op {} ({:?}) differs", i, op);
        }
        if op.legacy {
            rewrite_as_previous_release(raw, redis, &key, &refs).await;
        }
    }
    Ok(())
}

/// Runs `cases` random timelines against the store `make` builds, with
/// `raw` (a plain connection to the same Redis) for the rewrites.
fn run_cases<F, Fut, C, Raw>(cases: u32, make: F, raw: Raw)
where
    F: Fn(ManualClock) -> Fut,
    Fut: std::future::Future<Output = tollgate_redis::RedisStore>,
    C: redis::aio::ConnectionLike + Clone,
    Raw: std::future::Future<Output = C>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let raw = runtime.block_on(raw);
    let seen = Seen::default();
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
                compare(&redis, &mut raw.clone(), &clock, &policies, &ops, &seen).await
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    seen.assert_covered();
}

/// A plain connection to the standalone Redis at `url`, for the rewrites.
fn raw_connection(
    url: &str,
) -> impl std::future::Future<Output = redis::aio::MultiplexedConnection> + use<> {
    let client = redis::Client::open(url).expect("url");
    async move {
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }
}

#[test]
fn redis_decides_exactly_like_memory() {
    let server = RedisServer::start();
    let url = server.url();
    run_cases(
        2_000,
        |clock| {
            let url = url.clone();
            async move { common::standalone(&url, clock).await }
        },
        raw_connection(&url),
    );
}

#[test]
fn redis_cluster_decides_exactly_like_memory() {
    let cluster = RedisCluster::start(3, 0);
    let urls = cluster.urls();
    let raw = redis::cluster::ClusterClient::new(urls.clone()).expect("urls");
    run_cases(
        300,
        |clock| {
            let urls = urls.clone();
            async move { common::cluster(&urls, clock).await }
        },
        async move { raw.get_async_connection().await.expect("connect") },
    );
}

/// The fallback for servers without functions: a user whose ACL forbids
/// them gets `EVALSHA` of the scripts, which must decide the same.
#[test]
fn redis_scripts_decide_exactly_like_memory() {
    let server = RedisServer::start();
    let url = common::scripts_only_user(&server);
    run_cases(
        500,
        |clock| {
            let url = url.clone();
            async move { common::standalone(&url, clock).await }
        },
        raw_connection(&server.url()),
    );
    common::assert_no_fcall_ran(&server);
}
