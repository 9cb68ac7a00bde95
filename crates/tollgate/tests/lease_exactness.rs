//! The exactness of leases, against a simulated fleet.
//!
//! Two to four instances share one [`MemoryStore`] (on a [`ManualClock`])
//! for one key and one leased policy (or two, checked all or nothing: a
//! request then needs a unit of each, leased together). Each instance takes leases with
//! [`MemoryStore::lease_sync`] and spends them locally as the local half
//! does: one unit at a time, only while the store's clock is before the
//! `until` the store granted, giving back what is left on its next lease
//! call or dropping it. A further instance makes plain checks without
//! leasing, some of them for everything the store has left (a burst of
//! demand, so that a unit a lease could spend beyond the policy is
//! actually admitted). Every admitted unit is recorded with its instant:
//! an allowed lease call's cost when the store answers, a leased unit when
//! it is spent. Whatever the interleaving, the admitted units must respect
//! the policy exactly as if every one had been decided by the store at the
//! instant it was spent:
//!
//! - `fixed_window`: at most the limit in each window;
//! - `sliding_window`: at every admission, the previous window's admitted
//!   units, weighted as the algorithm weighs them, plus the current
//!   window's, at most the limit (the algorithm's own integer inequality);
//! - `token_bucket`, `gcra`: in every interval `[a, b]` between admission
//!   instants, at most `burst + rate * (b - a)` units;
//! - and one formulation for all four, checked as the events happen: a
//!   twin store without leases, charged each admitted unit at the instant
//!   it is admitted, allows every one of them, and at every step the
//!   leasing store's `remaining` plus the units still spendable from
//!   leases is at most the twin's `remaining` — the store never promises
//!   more than a store that saw every unit when it was spent.
//!
//! The last one is what makes give-backs exact, and it is stricter than
//! the bounds above: they fail only if the fleet happens to spend an
//! excess while it exists, and the twin's `remaining` shows the excess the
//! moment a rule creates it (a bucket's give-back did: see
//! [`give_back`](tollgate::algorithm::give_back)). With it, each give-back
//! is checked to return exactly what the rule says: all the units to a
//! window's counter while the lease is valid, none otherwise.
//!
//! A reset forgets the key's state: an operator re-grants the allowance on
//! purpose, so admissions before and after it are not held to one
//! allowance. The instances forget their leases with it (the invalidation
//! feed revokes them), the twin is reset too, and every bound is measured
//! within one span between resets.

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::Union;
use tollgate::{
    Algorithm, Check, Held, Lease, LeaseAsk, LeaseCall, ManualClock, MemoryStore, Mode, Policy,
    PolicyRef, Store,
};

const KEY: &[u8] = b"hot";

/// What happens next in the fleet.
#[derive(Debug, Clone)]
enum Event {
    /// The clock moves forward by this many microseconds.
    Advance(u64),
    /// An instance (index modulo the fleet's size) makes a lease call:
    /// a check of `cost`, asking `want` more units for at most `ttl_us`,
    /// giving back its unspent units.
    Lease {
        instance: usize,
        cost: u64,
        want: u64,
        ttl_us: u64,
    },
    /// An instance spends up to this many units of its lease, one at a
    /// time, while it holds a valid one.
    Spend(usize, u64),
    /// An instance drops its lease: its units are forfeited.
    Drop(usize),
    /// A plain check of this cost by an instance that does not lease.
    Check(u64),
    /// A burst of demand at that instance: a plain check of everything the
    /// store has left, so that any unit a lease could spend beyond the
    /// policy is actually admitted.
    Drain,
    /// The key is reset, and every instance forgets its lease.
    Reset,
}

/// A leased policy of `algorithm` with small limits and periods, so that
/// window edges, full buckets and the last units are hit often; bursts and
/// limits up to a few hundred, so that leases of several units are taken
/// (a lease takes at most a sixteenth of what remains).
fn leased_policy(algorithm: Algorithm) -> impl Strategy<Value = Policy> {
    (1u64..=300, 1_000u64..=100_000, 1u64..=300, 2u64..=64).prop_map(
        move |(limit, period_us, burst, max)| {
            let burst = algorithm.has_burst().then_some(burst);
            Policy::new(algorithm, limit, Duration::from_micros(period_us), burst)
                .and_then(|p| p.with_lease(Lease::new(max, Duration::from_millis(1))?))
                .expect("generated policies are valid")
        },
    )
}

/// Up to 200 events. How often leased units are spent varies from case to
/// case: a fleet that spends slowly holds its leases long, which is where
/// a rule that lets a fleet spend more than the store allows shows.
fn events(policy: &Policy, spend: u32) -> impl Strategy<Value = Vec<Event>> + use<> {
    let p = policy.period_us();
    let max = policy.lease().expect("leased").max();
    let event = Union::new_weighted(vec![
        // Mostly small steps, sometimes past a whole period.
        (16, (0..=p / 16).prop_map(Event::Advance).boxed()),
        (4, (0..=p + p / 4).prop_map(Event::Advance).boxed()),
        // Short and long leases: a short one given back while a long one
        // taken after it is still held is where exactness is at stake.
        (
            20,
            (
                0usize..4,
                1u64..=3,
                0..=max,
                prop_oneof![1..=p / 8, 1..=2 * p],
            )
                .prop_map(|(instance, cost, want, ttl_us)| Event::Lease {
                    instance,
                    cost,
                    want,
                    ttl_us,
                })
                .boxed(),
        ),
        (
            spend,
            (0usize..4, prop_oneof![3 => Just(1u64), 1 => 1..=max])
                .prop_map(|(instance, units)| Event::Spend(instance, units))
                .boxed(),
        ),
        (4, (0usize..4).prop_map(Event::Drop).boxed()),
        (8, (1u64..=3).prop_map(Event::Check).boxed()),
        (3, Just(Event::Drain).boxed()),
        // About one event in fifty to a hundred.
        (1, Just(Event::Reset).boxed()),
    ]);
    proptest::collection::vec(event, 1..=200)
}

const LEASING: [Algorithm; 4] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::TokenBucket,
    Algorithm::Gcra,
];

/// The policies of the key (one of each leasing algorithm, and in a
/// quarter of the cases a second policy of any leasing algorithm checked
/// with it, all or nothing), a fleet size, a start instant and the events
/// (timed by the first policy).
fn scenario() -> impl Strategy<Value = (Vec<Policy>, usize, u64, Vec<Event>)> {
    let second = proptest::sample::select(LEASING.to_vec()).prop_flat_map(leased_policy);
    (
        proptest::sample::select(LEASING.to_vec()).prop_flat_map(leased_policy),
        proptest::option::weighted(0.25, second),
    )
        .prop_flat_map(|(first, second)| {
            let start = 0..10 * first.period_us();
            let events = (2u32..=40).prop_flat_map(move |spend| events(&first, spend));
            let policies = std::iter::once(first).chain(second).collect::<Vec<_>>();
            (Just(policies), 2usize..=4, start, events)
        })
}

/// A lease an instance holds of one policy: units charged in the store,
/// not yet spent.
#[derive(Debug, Clone, Copy, Default)]
struct InHand {
    units: u64,
    until: u64,
}

impl InHand {
    fn spendable(&self, now: u64) -> bool {
        self.units > 0 && now < self.until
    }
}

/// Units admitted at an instant, in one span between resets.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    span: u32,
    at: u64,
    units: u64,
}

/// What a run went through, to show that the property is not vacuous.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Leases granted.
    leases: u64,
    /// Leases of more than one unit.
    multi_unit_leases: u64,
    /// Units spent from leases.
    spent: u64,
    /// Lease calls that took units back.
    given_back: u64,
    /// Units spent from a lease while a lease of another instance was also
    /// spendable.
    spent_while_shared: u64,
    /// Calls and checks denied.
    denied: u64,
}

/// The fleet, the store it shares, and the twin that sees every admitted
/// unit when it is admitted.
struct Fleet<'a> {
    clock: ManualClock,
    store: MemoryStore,
    twin: MemoryStore,
    policies: &'a [Policy],
    /// Each instance's lease of each policy. A request needs a unit of
    /// every policy: an instance spends only while it holds all of them.
    instances: Vec<Vec<InHand>>,
    span: u32,
    admitted: Vec<Admitted>,
    seen: Seen,
}

const NAMES: [&str; 2] = ["first", "second"];

impl Fleet<'_> {
    fn refs(&self) -> Vec<PolicyRef<'_>> {
        NAMES
            .iter()
            .zip(self.policies)
            .map(|(&name, policy)| PolicyRef { name, policy })
            .collect()
    }

    fn now(&self) -> u64 {
        tollgate::Clock::now_us(&self.clock)
    }

    /// Records `units` admitted now, and charges them to the twin, which
    /// must allow them: the twin is the store the fleet would have had if
    /// every unit had been decided at the instant it was admitted.
    fn admit(&mut self, units: u64) -> Result<(), TestCaseError> {
        let now = self.now();
        let refs = self.refs();
        let twin = self
            .twin
            .apply_sync(Check::new(KEY, &refs, units, Mode::Consume));
        prop_assert!(
            twin.iter().all(|d| d.allowed),
            "{units} unit(s) admitted at {now} that a store without leases denies: {twin:?}"
        );
        self.admitted.push(Admitted {
            span: self.span,
            at: now,
            units,
        });
        Ok(())
    }

    fn step(&mut self, event: &Event) -> Result<(), TestCaseError> {
        let n = self.instances.len();
        let now = self.now();
        match *event {
            Event::Advance(us) => self.clock.advance_us(us),
            Event::Lease {
                instance,
                cost,
                want,
                ttl_us,
            } => {
                let held = std::mem::take(&mut self.instances[instance % n]);
                let asks: Vec<LeaseAsk> = (0..self.policies.len())
                    .map(|i| {
                        let held = held.get(i).copied().unwrap_or_default();
                        LeaseAsk {
                            want,
                            ttl_us,
                            held: Held {
                                units: held.units,
                                until: held.until,
                            },
                        }
                    })
                    .collect();
                let refs = self.refs();
                let answer = self.store.lease_sync(LeaseCall {
                    check: Check::new(KEY, &refs, cost, Mode::Consume),
                    asks: &asks,
                });
                let allowed = answer.decisions.iter().all(|d| d.allowed);
                let mut in_hand = Vec::new();
                for ((policy, ask), leased) in self.policies.iter().zip(&asks).zip(&answer.leased) {
                    // What is given back: all of it to a window's counter
                    // while the lease is valid (the counter holds every unit
                    // leased in its window, so nothing clips it), nothing
                    // once the lease is over, and nothing to a bucket
                    // (forfeited: see `give_back`).
                    let window = matches!(
                        policy.algorithm(),
                        Algorithm::FixedWindow | Algorithm::SlidingWindow
                    );
                    let held = ask.held;
                    let expected = if window && now < held.until {
                        held.units
                    } else {
                        0
                    };
                    prop_assert_eq!(
                        leased.returned,
                        expected,
                        "{} given back at {} of {:?}",
                        policy,
                        now,
                        held
                    );
                    self.seen.given_back += u64::from(leased.returned > 0);
                    if !allowed {
                        prop_assert_eq!(leased.units, 0, "a denied call leases nothing");
                        continue;
                    }
                    prop_assert!(leased.units <= want);
                    if leased.units > 0 {
                        self.seen.leases += 1;
                        self.seen.multi_unit_leases += u64::from(leased.units > 1);
                        prop_assert!(leased.until > now && leased.until <= now + ttl_us);
                        prop_assert_eq!(leased.valid_us, leased.until - now);
                    }
                    in_hand.push(InHand {
                        units: leased.units,
                        until: leased.until,
                    });
                }
                if allowed {
                    // The call's decisions describe the store after the
                    // lease, as a look right after it does.
                    let after = self.peek(&self.store);
                    for (answered, looked) in answer.decisions.iter().zip(&after) {
                        prop_assert_eq!(answered.remaining, looked.remaining);
                        prop_assert_eq!(answered.reset_after, looked.reset_after);
                    }
                    self.admit(cost)?;
                    self.instances[instance % n] = in_hand;
                } else {
                    self.seen.denied += 1;
                }
            }
            Event::Spend(instance, units) => {
                let all = |held: &Vec<InHand>| {
                    held.len() == self.policies.len() && held.iter().all(|h| h.spendable(now))
                };
                for _ in 0..units {
                    if !all(&self.instances[instance % n]) {
                        break;
                    }
                    for held in &mut self.instances[instance % n] {
                        held.units -= 1;
                    }
                    let spending = self.instances.iter().filter(|held| all(held)).count();
                    self.seen.spent_while_shared += u64::from(spending > 1);
                    self.seen.spent += 1;
                    self.admit(1)?;
                }
            }
            Event::Drop(instance) => self.instances[instance % n].clear(),
            Event::Check(cost) => {
                let refs = self.refs();
                let decision = self
                    .store
                    .apply_sync(Check::new(KEY, &refs, cost, Mode::Consume));
                if decision.iter().all(|d| d.allowed) {
                    self.admit(cost)?;
                } else {
                    self.seen.denied += 1;
                }
            }
            Event::Drain => {
                let refs = self.refs();
                let left = self
                    .peek(&self.store)
                    .iter()
                    .map(|d| d.remaining)
                    .min()
                    .unwrap_or_default();
                if left > 0 {
                    let decision =
                        self.store
                            .apply_sync(Check::new(KEY, &refs, left, Mode::Consume));
                    prop_assert!(
                        decision.iter().all(|d| d.allowed),
                        "what remains is allowed: {decision:?}"
                    );
                    self.admit(left)?;
                }
            }
            Event::Reset => {
                block_on(self.store.reset(KEY, &self.refs())).expect("memory store resets");
                block_on(self.twin.reset(KEY, &self.refs())).expect("memory store resets");
                self.instances.iter_mut().for_each(Vec::clear);
                self.span += 1;
            }
        }
        self.promises_no_more_than_the_twin()
    }

    /// What `store` decides for one unit of the key now, charging nothing.
    fn peek(&self, store: &MemoryStore) -> tollgate::Decisions {
        store.apply_sync(Check::new(KEY, &self.refs(), 1, Mode::Peek))
    }

    /// For each policy, the store's `remaining` plus every unit of it still
    /// spendable from a lease is at most the twin's `remaining`.
    fn promises_no_more_than_the_twin(&self) -> Result<(), TestCaseError> {
        let now = self.now();
        let (store, twin) = (self.peek(&self.store), self.peek(&self.twin));
        for (i, policy) in self.policies.iter().enumerate() {
            let spendable: u64 = self
                .instances
                .iter()
                .filter_map(|held| held.get(i))
                .filter(|held| now < held.until)
                .map(|held| held.units)
                .sum();
            let (store, twin) = (store[i].remaining, twin[i].remaining);
            prop_assert!(
                store + spendable <= twin,
                "{policy} at {now}: the store has {store} remaining and leases {spendable} \
                 spendable units, the twin only {twin} remaining; leases {:?}",
                self.instances
            );
        }
        Ok(())
    }
}

/// Polls a memory store's future, which never waits, to completion.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => unreachable!("the memory store never waits"),
    }
}

/// The policy's bound on what one span admitted, checked directly on the
/// admitted units (independently of the twin's decisions).
fn within_policy(policy: &Policy, admitted: &[Admitted]) -> Result<(), TestCaseError> {
    let (limit, period) = (policy.limit(), policy.period_us());
    let window = |t: u64| t - t % period;
    let sum = |from: u64, to: u64| -> u64 {
        admitted
            .iter()
            .filter(|a| a.at >= from && a.at <= to)
            .map(|a| a.units)
            .sum()
    };
    match policy.algorithm() {
        Algorithm::FixedWindow => {
            for a in admitted {
                let w = window(a.at);
                let total = sum(w, w + period - 1);
                prop_assert!(total <= limit, "{total} admitted in the window at {w}");
            }
        }
        Algorithm::SlidingWindow => {
            // At each admission instant, everything admitted up to it.
            for a in admitted {
                let w = window(a.at);
                let prev = if w >= period {
                    sum(w - period, w - 1)
                } else {
                    0
                };
                let curr = sum(w, a.at);
                let elapsed = a.at - w;
                prop_assert!(
                    u128::from(prev) * u128::from(period - elapsed)
                        + u128::from(curr) * u128::from(period)
                        <= u128::from(limit) * u128::from(period),
                    "at {}: {prev} admitted in the previous window, {curr} in this one",
                    a.at
                );
            }
        }
        Algorithm::TokenBucket | Algorithm::Gcra => {
            // units * period <= burst * period + limit * (b - a): the
            // bucket's capacity plus its refill over [a, b], in integers.
            // Admissions are in time order, so the units of [a, b] are a
            // difference of running totals (pairs that split one instant
            // give smaller sums than the pair that spans it, also checked).
            let mut totals = vec![0];
            totals.extend(admitted.iter().scan(0, |total, a| {
                *total += a.units;
                Some(*total)
            }));
            for (i, a) in admitted.iter().enumerate() {
                for (j, b) in admitted.iter().enumerate().skip(i) {
                    let units = totals[j + 1] - totals[i];
                    prop_assert!(
                        u128::from(units) * u128::from(period)
                            <= u128::from(policy.burst()) * u128::from(period)
                                + u128::from(limit) * u128::from(b.at - a.at),
                        "{units} admitted in [{}, {}]",
                        a.at,
                        b.at
                    );
                }
            }
        }
        other => unreachable!("{other} cannot lease"),
    }
    Ok(())
}

/// Runs one scenario, checking every bound, and returns what it saw.
fn run(
    policies: &[Policy],
    size: usize,
    start: u64,
    events: &[Event],
) -> Result<Seen, TestCaseError> {
    let clock = ManualClock::new(start);
    let mut fleet = Fleet {
        store: MemoryStore::with_clock(clock.clone()),
        twin: MemoryStore::with_clock(clock.clone()),
        clock,
        policies,
        instances: vec![Vec::new(); size],
        span: 0,
        admitted: Vec::new(),
        seen: Seen::default(),
    };
    for event in events {
        fleet.step(event)?;
    }
    for span in 0..=fleet.span {
        let admitted: Vec<Admitted> = fleet
            .admitted
            .iter()
            .copied()
            .filter(|a| a.span == span)
            .collect();
        for policy in policies {
            within_policy(policy, &admitted)?;
        }
    }
    Ok(fleet.seen)
}

/// The scenarios reach what the property is about: leases of several units
/// spent while other instances hold leases too, give-backs, denials. A
/// fixed seed, so that this never depends on luck.
#[test]
fn the_scenarios_exercise_leases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[17; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut total = Seen::default();
    let mut by_algorithm = std::collections::BTreeMap::new();
    let mut spent_under_two_policies = 0;
    for _ in 0..256 {
        let (policies, size, start, events) = scenario()
            .new_tree(&mut runner)
            .expect("scenarios generate")
            .current();
        let seen = run(&policies, size, start, &events).expect("the property holds");
        for policy in &policies {
            *by_algorithm.entry(policy.algorithm()).or_insert(0u64) += seen.spent_while_shared;
        }
        if policies.len() == 2 {
            spent_under_two_policies += seen.spent;
        }
        total.leases += seen.leases;
        total.multi_unit_leases += seen.multi_unit_leases;
        total.spent += seen.spent;
        total.given_back += seen.given_back;
        total.spent_while_shared += seen.spent_while_shared;
        total.denied += seen.denied;
    }
    assert!(total.multi_unit_leases >= 1_000, "{total:?}");
    assert!(total.spent >= 1_000, "{total:?}");
    assert!(total.given_back >= 500, "{total:?}");
    assert!(total.denied >= 200, "{total:?}");
    assert!(
        spent_under_two_policies >= 100,
        "{spent_under_two_policies}"
    );
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
    ] {
        let shared = by_algorithm.get(&algorithm).copied().unwrap_or_default();
        // Buckets lease less: a lease's want is scaled to how long it can
        // live, which for a bucket is until it would be full again.
        assert!(
            shared >= 50,
            "{algorithm}: {shared} units spent while leases were shared; {total:?}"
        );
    }
}

/// The bounds catch what they are about: one unit over, at the edge each
/// algorithm has, fails; exactly the policy passes.
#[test]
fn the_bounds_reject_one_unit_too_many() {
    let admitted = |units: &[(u64, u64)]| -> Vec<Admitted> {
        units
            .iter()
            .map(|&(at, units)| Admitted { span: 0, at, units })
            .collect()
    };
    // (policy, admissions within it, admissions one unit over), each
    // admission (instant, units).
    type Timeline = &'static [(u64, u64)];
    let cases: [(&str, Timeline, Timeline); 4] = [
        // 10 in one window; across the edge each window has its own 10.
        (
            "fixed_window 10/1s",
            &[(999_999, 10), (1_000_000, 10)],
            &[(0, 5), (999_999, 6)],
        ),
        // Half into the next window, half of the previous 10 still counts.
        (
            "sliding_window 10/1s",
            &[(999_999, 10), (1_500_000, 5)],
            &[(999_999, 10), (1_500_000, 6)],
        ),
        // The burst at once, then one unit per 100 ms.
        (
            "token_bucket 10/1s burst 20",
            &[(0, 20), (100_000, 1), (300_000, 2)],
            &[(0, 20), (99_999, 1)],
        ),
        (
            "gcra 10/1s burst 20",
            &[(0, 20), (100_000, 1), (300_000, 2)],
            &[(0, 20), (300_000, 2), (300_001, 2)],
        ),
    ];
    for (text, within, over) in cases {
        let policy: Policy = text.parse().expect("valid policy");
        assert!(within_policy(&policy, &admitted(within)).is_ok(), "{text}");
        assert!(within_policy(&policy, &admitted(over)).is_err(), "{text}");
    }
}

/// The counterexample to giving units back to a bucket, as fleet events
/// (see `give_back`): before buckets forfeited, 101 units passed at 0.5 s.
#[test]
fn a_give_back_never_fills_a_bucket_under_a_later_lease() {
    for algorithm in ["token_bucket", "gcra"] {
        let policy: Policy = format!("{algorithm} 10/1s burst 100")
            .parse::<Policy>()
            .and_then(|p| p.with_lease(Lease::new(64, Duration::from_secs(1))?))
            .expect("valid policy");
        let lease = |instance, want, ttl_us| Event::Lease {
            instance,
            cost: 1,
            want,
            ttl_us,
        };
        let events = [
            Event::Check(1),
            lease(0, 8, 1),
            // Two wanted over a ttl of 1 s, valid 0.8 s: one leased (the
            // want is scaled to how long the lease can live).
            lease(1, 2, 1_000_000),
            lease(0, 0, 1),
            Event::Advance(500_000),
            Event::Drain,
            Event::Spend(1, 1),
        ];
        let seen = run(&[policy], 2, 0, &events).expect("exact");
        assert_eq!((seen.leases, seen.spent), (2, 1), "{algorithm}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Regression seeds live next to this file and are committed.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/lease_exactness.proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_fleet_spending_leases_never_admits_more_than_the_policy(
        (policies, size, start, events) in scenario()
    ) {
        run(&policies, size, start, &events)?;
    }
}
