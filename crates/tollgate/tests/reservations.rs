//! The bound reservations keep, against random interleavings.
//!
//! One [`MemoryStore`] on a [`ManualClock`], one key, one reservable policy
//! (or two, reserved and checked all or nothing), and a random sequence of
//! plain checks, reservations, settles at an actual cost drawn around the
//! estimate (from nothing to three times it), cancels, retried settles,
//! settles of nonces never drawn, and clock steps that cross windows and
//! reservation deadlines. Every unit the store keeps charged is recorded
//! with the instant it counts at: an allowed check's cost when it is
//! made; a reservation's estimate less what its settle gave back, at the
//! reservation (a window gives back only while the window the estimate was
//! charged in lasts); and what a settle charged past the estimate, at the
//! settle. Whatever the interleaving, those units keep the policy within
//! its limit plus its `max_overdraft`:
//!
//! - `fixed_window`: in each window, at most `limit + max_overdraft`;
//! - `sliding_window`: at every instant, the previous window's units (read
//!   as at most the limit: a window's debt ends with it, as the store reads
//!   it) weighted as the algorithm weighs them, plus the current window's,
//!   at most `limit + max_overdraft`;
//! - `token_bucket`, `gcra`: in every interval `[a, b]` between those
//!   instants, at most `burst + rate * (b - a) + max_overdraft`.
//!
//! And every settle answers consistently: it gives back no more than the
//! estimate exceeded the actual (a window: exactly that, while the
//! estimate's window lasts; a bucket: nothing), charges and leaves unpaid
//! together exactly what the actual exceeded the estimate by; a retried
//! settle changes nothing and repeats the first answer; a reservation past
//! its deadline, or a nonce never drawn, is not found and changes nothing.
//! For the windows, what remains after every step is exactly what the
//! recorded units leave (the store forgets nothing it charged); for GCRA,
//! what remains and what each overdraft charges are exactly those of a
//! bucket level computed in exact arithmetic (a token bucket: never more,
//! as it rounds a debt's end up to a whole microsecond); and for
//! every algorithm a denied unit's `retry_after` is honest however far an
//! overdraft took the policy (denied 1 µs before it, allowed at it).
//!
//! A concurrent test makes many reservations at once from tokio tasks, and
//! one holds the memory store to its bound on open reservations.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::Union;
use tollgate::{
    Algorithm, Check, Decisions, ManualClock, MemoryStore, Mode, Policy, PolicyRef, ReserveCall,
    SettleAnswer, SettleCall, Store,
};

const KEY: &[u8] = b"tokens";

const RESERVABLE: [Algorithm; 4] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::TokenBucket,
    Algorithm::Gcra,
];

/// What happens next.
#[derive(Debug, Clone)]
enum Event {
    /// The clock moves forward by this many microseconds.
    Advance(u64),
    /// A plain check of this cost.
    Check(u64),
    /// A reservation of `estimate`, kept for `deadline_us`.
    Reserve { estimate: u64, deadline_us: u64 },
    /// An open reservation (index modulo how many there are) settles at
    /// `per_mille` thousandths of its estimate (0: a cancel).
    Settle { index: usize, per_mille: u64 },
    /// A settled reservation (index modulo how many there are) is settled
    /// again at `per_mille` thousandths of its estimate.
    Replay { index: usize, per_mille: u64 },
    /// A settle of a nonce never drawn.
    Unknown,
    /// When a request of one unit is denied, the clock moves to its
    /// `retry_after`: denied 1 µs before, allowed at it.
    Retry,
}

/// A reservable policy of `algorithm` with small limits and periods, so
/// that window edges, empty buckets and deadlines are hit often, and an
/// overdraft from none to the capacity (or the default, the capacity).
fn reservable_policy(algorithm: Algorithm) -> impl Strategy<Value = Policy> {
    (
        1u64..=300,
        1_000u64..=100_000,
        1u64..=300,
        prop_oneof![
            1 => Just(None),
            1 => (0u64..=1_000).prop_map(Some),
            2 => (0u64..=100).prop_map(Some),
        ],
    )
        .prop_map(move |(limit, period_us, burst, overdraft)| {
            let burst = algorithm.has_burst().then_some(burst);
            let policy = Policy::new(algorithm, limit, Duration::from_micros(period_us), burst)
                .expect("generated policies are valid");
            match overdraft {
                // Per mille of the capacity.
                Some(per_mille) => policy
                    .with_max_overdraft(policy.capacity() * per_mille / 1_000)
                    .expect("at most the capacity"),
                None => policy,
            }
        })
}

/// A fraction of an estimate, per mille: often exactly 0 (a cancel) or the
/// estimate, else anywhere from nothing to three times it.
fn per_mille() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        1 => Just(1_000u64),
        4 => 0u64..1_000,
        4 => 1_001u64..=3_000,
    ]
}

/// Up to 200 events, timed by the policy's period.
fn events(policy: &Policy) -> impl Strategy<Value = Vec<Event>> + use<> {
    let p = policy.period_us();
    let capacity = policy.capacity();
    let event = Union::new_weighted(vec![
        (12, (0..=p / 8).prop_map(Event::Advance).boxed()),
        (3, (0..=2 * p).prop_map(Event::Advance).boxed()),
        (8, (1..=capacity.div_ceil(4)).prop_map(Event::Check).boxed()),
        (
            20,
            (
                prop_oneof![8 => 1..=capacity.div_ceil(3), 1 => 1..=2 * capacity],
                prop_oneof![1..=p / 2, 1..=4 * p],
            )
                .prop_map(|(estimate, deadline_us)| Event::Reserve {
                    estimate,
                    deadline_us,
                })
                .boxed(),
        ),
        (
            20,
            (any::<usize>(), per_mille())
                .prop_map(|(index, per_mille)| Event::Settle { index, per_mille })
                .boxed(),
        ),
        (
            5,
            (any::<usize>(), per_mille())
                .prop_map(|(index, per_mille)| Event::Replay { index, per_mille })
                .boxed(),
        ),
        (1, Just(Event::Unknown).boxed()),
        (4, Just(Event::Retry).boxed()),
    ]);
    proptest::collection::vec(event, 1..=200)
}

/// The policies of the key (one of each reservable algorithm, and in a
/// quarter of the cases a second one reserved with it, all or nothing), a
/// start instant and the events (timed by the first policy).
fn scenario() -> impl Strategy<Value = (Vec<Policy>, u64, Vec<Event>)> {
    let any_policy =
        || proptest::sample::select(RESERVABLE.to_vec()).prop_flat_map(reservable_policy);
    (any_policy(), proptest::option::weighted(0.25, any_policy())).prop_flat_map(
        |(first, second)| {
            let start = 0..10 * first.period_us();
            let events = events(&first);
            let policies = std::iter::once(first).chain(second).collect::<Vec<_>>();
            (Just(policies), start, events)
        },
    )
}

/// Units kept charged by one policy, counted at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Charge {
    at: u64,
    units: u64,
}

/// An open reservation: its nonce, estimate, when it was made, until when
/// it lives, and per policy the index of its estimate's [`Charge`].
#[derive(Debug, Clone)]
struct Open {
    nonce: u128,
    estimate: u64,
    at: u64,
    deadline: u64,
    charges: Vec<usize>,
}

/// A settled reservation, kept to be settled again.
#[derive(Debug, Clone)]
struct Done {
    nonce: u128,
    estimate: u64,
    deadline: u64,
    answer: SettleAnswer,
}

/// What a run went through, to show that the property is not vacuous.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    reserved: u64,
    denied: u64,
    /// Settles that gave units back.
    given_back: u64,
    /// Settles that charged past the estimate.
    overdrawn: u64,
    /// Settles that left units unpaid (the overdraft was full).
    unpaid: u64,
    replayed: u64,
    /// Settles that found their reservation past its deadline.
    expired: u64,
    /// Waits for a denied unit's `retry_after`.
    retried: u64,
}

const NAMES: [&str; 2] = ["first", "second"];

/// A bucket's level in exact arithmetic (scaled units, as the algorithms
/// count): full at the start, refilled continuously up to the burst, below
/// zero while an overdraft is owed.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: i128,
    last: u64,
    unit: i128,
    rate: i128,
    full: i128,
}

impl Bucket {
    fn new(policy: &Policy, now: u64) -> Self {
        let unit = i128::from(policy.scaled_unit());
        let full = i128::from(policy.burst()) * unit;
        Bucket {
            level: full,
            last: now,
            unit,
            rate: i128::from(policy.scaled_rate()),
            full,
        }
    }

    /// The level at `now`.
    fn at(&self, now: u64) -> i128 {
        let refilled = self.level + self.rate * i128::from(now.saturating_sub(self.last));
        refilled.min(self.full.max(self.level))
    }

    fn charge(&mut self, now: u64, units: u64) {
        self.level = self.at(now) - i128::from(units) * self.unit;
        self.last = now;
    }

    /// What remains at `now`, in units.
    fn remaining(&self, now: u64) -> u64 {
        u64::try_from(self.at(now).max(0) / self.unit).expect("at most the burst")
    }

    /// What an overdraft of `units` may charge at `now`: what remains plus
    /// `max_overdraft`, less what is owed.
    fn overdraft(&self, now: u64, units: u64, max_overdraft: u64) -> u64 {
        let room = (self.at(now) + i128::from(max_overdraft) * self.unit).max(0) / self.unit;
        units.min(u64::try_from(room).expect("bounded"))
    }
}

struct Run<'a> {
    clock: ManualClock,
    store: MemoryStore,
    policies: &'a [Policy],
    /// Per policy, every charge in time order.
    charges: Vec<Vec<Charge>>,
    /// Per policy, a bucket's exact level (`None` for the windows).
    buckets: Vec<Option<Bucket>>,
    open: Vec<Open>,
    done: Vec<Done>,
    next_nonce: u128,
    seen: Seen,
}

impl Run<'_> {
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

    fn peek(&self) -> Decisions {
        self.store
            .apply_sync(Check::new(KEY, &self.refs(), 1, Mode::Peek))
    }

    fn charge(&mut self, policy: usize, units: u64) -> usize {
        let at = self.now();
        if let Some(bucket) = &mut self.buckets[policy] {
            bucket.charge(at, units);
        }
        self.charges[policy].push(Charge { at, units });
        self.charges[policy].len() - 1
    }

    fn settle(&mut self, nonce: u128, actual: u64) -> Option<SettleAnswer> {
        let refs = self.refs();
        self.store.settle_sync(SettleCall {
            key: KEY,
            policies: &refs,
            nonce,
            actual,
        })
    }

    fn step(&mut self, event: &Event) -> Result<(), TestCaseError> {
        let now = self.now();
        match *event {
            Event::Advance(us) => self.clock.advance_us(us),
            Event::Check(cost) => {
                let refs = self.refs();
                let decisions = self
                    .store
                    .apply_sync(Check::new(KEY, &refs, cost, Mode::Consume));
                if decisions.iter().all(|d| d.allowed) {
                    for i in 0..self.policies.len() {
                        self.charge(i, cost);
                    }
                }
            }
            Event::Reserve {
                estimate,
                deadline_us,
            } => {
                self.next_nonce += 1;
                let nonce = self.next_nonce;
                let refs = self.refs();
                let decisions = self.store.reserve_sync(ReserveCall {
                    check: Check::new(KEY, &refs, estimate, Mode::Consume),
                    nonce,
                    deadline_us,
                });
                prop_assert_eq!(decisions.len(), self.policies.len());
                if decisions.iter().all(|d| d.allowed) {
                    self.seen.reserved += 1;
                    let charges = (0..self.policies.len())
                        .map(|i| self.charge(i, estimate))
                        .collect();
                    self.open.push(Open {
                        nonce,
                        estimate,
                        at: now,
                        deadline: now + deadline_us,
                        charges,
                    });
                } else {
                    self.seen.denied += 1;
                    let before = self.peek();
                    prop_assert_eq!(
                        self.settle(nonce, 0),
                        None,
                        "a denied reservation was recorded"
                    );
                    prop_assert_eq!(self.peek(), before);
                }
            }
            Event::Settle { index, per_mille } => {
                if self.open.is_empty() {
                    return Ok(());
                }
                let open = self.open.remove(index % self.open.len());
                let actual = open.estimate * per_mille / 1_000;
                let before = self.peek();
                let answer = self.settle(open.nonce, actual);
                if now >= open.deadline {
                    self.seen.expired += 1;
                    prop_assert_eq!(answer, None, "settled past its deadline");
                    prop_assert_eq!(self.peek(), before, "an expired settle changed the state");
                    return Ok(());
                }
                let Some(answer) = answer else {
                    return Err(TestCaseError::fail(format!(
                        "{open:?} not found at {now}, before its deadline"
                    )));
                };
                prop_assert!(!answer.replayed, "{:?}", answer);
                prop_assert_eq!((answer.estimate, answer.actual), (open.estimate, actual));
                prop_assert_eq!(answer.settled.len(), self.policies.len());
                prop_assert_eq!(answer.decisions.clone(), self.peek());
                for (i, s) in answer.settled.iter().enumerate() {
                    let policy = &self.policies[i];
                    let under = open.estimate.saturating_sub(actual);
                    let over = actual.saturating_sub(open.estimate);
                    // A window gives back everything, while the window
                    // the estimate was charged in lasts; a bucket nothing.
                    let p = policy.period_us();
                    let same_window = open.at - open.at % p == now - now % p;
                    let expected = if !policy.algorithm().has_burst() && same_window {
                        under
                    } else {
                        0
                    };
                    prop_assert_eq!(s.returned, expected, "{:?} at {}: {:?}", open, now, s);
                    prop_assert_eq!(s.charged + s.unpaid, over, "{:?}", s);
                    if let Some(bucket) = &self.buckets[i] {
                        // GCRA keeps fractions of a microsecond: exact. A
                        // token bucket rounds a debt's end up to a whole
                        // microsecond: never more.
                        let most = bucket.overdraft(now, over, policy.max_overdraft());
                        if policy.algorithm() == Algorithm::Gcra {
                            prop_assert_eq!(s.charged, most, "{:?} at {}: {:?}", open, now, s);
                        } else {
                            prop_assert!(s.charged <= most, "{:?} at {}: {:?}", open, now, s);
                        }
                    }
                    prop_assert!(s.charged <= policy.max_overdraft() + policy.capacity());
                    self.charges[i][open.charges[i]].units -= s.returned;
                    if s.charged > 0 {
                        self.charge(i, s.charged);
                    }
                }
                let settled = &answer.settled;
                self.seen.given_back += u64::from(settled.iter().any(|s| s.returned > 0));
                self.seen.overdrawn += u64::from(settled.iter().any(|s| s.charged > 0));
                self.seen.unpaid += u64::from(settled.iter().any(|s| s.unpaid > 0));
                self.done.push(Done {
                    nonce: open.nonce,
                    estimate: open.estimate,
                    deadline: open.deadline,
                    answer,
                });
            }
            Event::Replay { index, per_mille } => {
                if self.done.is_empty() {
                    return Ok(());
                }
                let done = self.done[index % self.done.len()].clone();
                let before = self.peek();
                let answer = self.settle(done.nonce, done.estimate * per_mille / 1_000);
                if now >= done.deadline {
                    prop_assert_eq!(answer, None, "replayed past its deadline");
                } else if done.answer.actual == 0 {
                    prop_assert_eq!(answer, None, "a cancel deletes its reservation");
                } else {
                    self.seen.replayed += 1;
                    let answer = answer.ok_or_else(|| {
                        TestCaseError::fail(format!("{done:?} forgotten before its deadline"))
                    })?;
                    prop_assert!(answer.replayed);
                    prop_assert_eq!(
                        (answer.estimate, answer.actual, &answer.settled),
                        (
                            done.answer.estimate,
                            done.answer.actual,
                            &done.answer.settled
                        )
                    );
                }
                prop_assert_eq!(self.peek(), before, "a replay changed the state");
            }
            Event::Unknown => {
                let before = self.peek();
                prop_assert_eq!(self.settle(u128::MAX - self.next_nonce, 5), None);
                prop_assert_eq!(self.peek(), before);
            }
            Event::Retry => {
                let decisions = self.peek();
                if decisions.iter().all(|d| d.allowed) {
                    return Ok(());
                }
                // The longest wait of the policies that deny.
                let wait = decisions
                    .iter()
                    .filter_map(|d| d.retry_after)
                    .max()
                    .ok_or_else(|| TestCaseError::fail(format!("no retry_after: {decisions:?}")))?;
                let wait = u64::try_from(wait.as_micros()).expect("bounded");
                self.seen.retried += 1;
                self.clock.advance_us(wait - 1);
                let early = self.peek();
                prop_assert!(
                    !early.iter().all(|d| d.allowed),
                    "allowed 1 µs before retry_after ({} µs): {:?}",
                    wait,
                    early
                );
                self.clock.advance_us(1);
                let on_time = self.peek();
                prop_assert!(
                    on_time.iter().all(|d| d.allowed),
                    "denied at retry_after ({} µs): {:?}",
                    wait,
                    on_time
                );
            }
        }
        self.remaining_is_what_the_charges_leave()
    }

    /// For the windows, what remains now is exactly what the recorded
    /// charges leave, read as the algorithm reads its counts.
    fn remaining_is_what_the_charges_leave(&self) -> Result<(), TestCaseError> {
        let now = self.now();
        let decisions = self.peek();
        for (i, policy) in self.policies.iter().enumerate() {
            let (limit, p) = (policy.limit(), policy.period_us());
            let window = now - now % p;
            let sum = |from: u64, to: u64| -> u64 {
                self.charges[i]
                    .iter()
                    .filter(|c| c.at >= from && c.at < to)
                    .map(|c| c.units)
                    .sum()
            };
            let curr = sum(window, window + p);
            if let Some(bucket) = &self.buckets[i] {
                let exact = bucket.remaining(now);
                let seen = decisions[i].remaining;
                if policy.algorithm() == Algorithm::Gcra {
                    prop_assert_eq!(seen, exact, "gcra: {:?}", bucket);
                } else {
                    prop_assert!(seen <= exact, "token_bucket: {} of {}", seen, exact);
                }
                continue;
            }
            let expected = match policy.algorithm() {
                Algorithm::FixedWindow => limit.saturating_sub(curr),
                Algorithm::SlidingWindow => {
                    let prev = if window >= p {
                        sum(window - p, window)
                    } else {
                        0
                    };
                    let weighted = prev.min(limit) * (p - (now - window)) + curr.min(limit) * p;
                    (limit * p).saturating_sub(weighted) / p
                }
                _ => continue,
            };
            prop_assert_eq!(
                decisions[i].remaining,
                expected,
                "{}: {} in this window; the store has {:?}",
                policy.algorithm(),
                curr,
                decisions[i]
            );
        }
        Ok(())
    }
}

/// The policy's bound on the units it kept charged, checked directly on
/// them (independently of the store's decisions).
fn within_policy(policy: &Policy, charges: &[Charge]) -> Result<(), TestCaseError> {
    let (limit, period) = (policy.limit(), policy.period_us());
    let most = policy.capacity() + policy.max_overdraft();
    let window = |t: u64| t - t % period;
    let sum = |from: u64, to: u64| -> u64 {
        charges
            .iter()
            .filter(|c| c.at >= from && c.at <= to)
            .map(|c| c.units)
            .sum()
    };
    match policy.algorithm() {
        Algorithm::FixedWindow => {
            for c in charges {
                let w = window(c.at);
                let total = sum(w, w + period - 1);
                prop_assert!(total <= most, "{total} charged in the window at {w}");
            }
        }
        Algorithm::SlidingWindow => {
            for c in charges {
                let w = window(c.at);
                let prev = if w >= period {
                    sum(w - period, w - 1)
                } else {
                    0
                };
                let curr = sum(w, c.at);
                let elapsed = c.at - w;
                prop_assert!(
                    u128::from(prev.min(limit)) * u128::from(period - elapsed)
                        + u128::from(curr) * u128::from(period)
                        <= u128::from(most) * u128::from(period),
                    "at {}: {prev} charged in the previous window, {curr} in this one",
                    c.at
                );
            }
        }
        Algorithm::TokenBucket | Algorithm::Gcra => {
            // units * period <= (burst + overdraft) * period + limit * (b - a),
            // in integers; charges are in time order (see lease_exactness).
            let mut totals = vec![0];
            totals.extend(charges.iter().scan(0, |total, c| {
                *total += c.units;
                Some(*total)
            }));
            for (i, a) in charges.iter().enumerate() {
                for (j, b) in charges.iter().enumerate().skip(i) {
                    let units = totals[j + 1] - totals[i];
                    prop_assert!(
                        u128::from(units) * u128::from(period)
                            <= u128::from(most) * u128::from(period)
                                + u128::from(limit) * u128::from(b.at - a.at),
                        "{units} charged in [{}, {}]",
                        a.at,
                        b.at
                    );
                }
            }
        }
        other => unreachable!("{other} cannot be reserved"),
    }
    Ok(())
}

/// Runs one scenario, checking every step and the bound, and returns what
/// it saw.
fn run(policies: &[Policy], start: u64, events: &[Event]) -> Result<Seen, TestCaseError> {
    let clock = ManualClock::new(start);
    let mut run = Run {
        store: MemoryStore::with_clock(clock.clone()),
        clock,
        policies,
        charges: vec![Vec::new(); policies.len()],
        buckets: policies
            .iter()
            .map(|p| p.algorithm().has_burst().then(|| Bucket::new(p, start)))
            .collect(),
        open: Vec::new(),
        done: Vec::new(),
        next_nonce: 0,
        seen: Seen::default(),
    };
    for event in events {
        run.step(event)?;
    }
    for (policy, charges) in policies.iter().zip(&run.charges) {
        within_policy(policy, charges)?;
    }
    Ok(run.seen)
}

/// The scenarios reach what the property is about: reservations given
/// back, overdrawn, left unpaid, replayed, expired, denied, on every
/// algorithm. A fixed seed, so that this never depends on luck.
#[test]
fn the_scenarios_exercise_reservations() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[19; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut by_algorithm = std::collections::BTreeMap::<Algorithm, Seen>::new();
    for _ in 0..256 {
        let (policies, start, events) = scenario()
            .new_tree(&mut runner)
            .expect("scenarios generate")
            .current();
        let seen = run(&policies, start, &events).expect("the property holds");
        let total = by_algorithm.entry(policies[0].algorithm()).or_default();
        total.reserved += seen.reserved;
        total.denied += seen.denied;
        total.given_back += seen.given_back;
        total.overdrawn += seen.overdrawn;
        total.unpaid += seen.unpaid;
        total.replayed += seen.replayed;
        total.expired += seen.expired;
        total.retried += seen.retried;
    }
    for algorithm in RESERVABLE {
        let seen = by_algorithm.get(&algorithm).copied().unwrap_or_default();
        assert!(seen.reserved >= 500, "{algorithm}: {seen:?}");
        assert!(seen.denied >= 300, "{algorithm}: {seen:?}");
        assert!(seen.overdrawn >= 150, "{algorithm}: {seen:?}");
        assert!(seen.unpaid >= 20, "{algorithm}: {seen:?}");
        assert!(seen.replayed >= 80, "{algorithm}: {seen:?}");
        assert!(seen.expired >= 80, "{algorithm}: {seen:?}");
        assert!(seen.retried >= 25, "{algorithm}: {seen:?}");
        if !algorithm.has_burst() {
            assert!(seen.given_back >= 200, "{algorithm}: {seen:?}");
        }
    }
}

/// The bounds catch what they are about: one unit over, at the edge each
/// algorithm has, fails; exactly the policy and its overdraft passes.
#[test]
fn the_bounds_reject_one_unit_too_many() {
    let charges = |units: &[(u64, u64)]| -> Vec<Charge> {
        units
            .iter()
            .map(|&(at, units)| Charge { at, units })
            .collect()
    };
    type Timeline = &'static [(u64, u64)];
    // Each policy owes at most 5 past its 10.
    let cases: [(&str, Timeline, Timeline); 4] = [
        (
            "fixed_window 10/1s",
            &[(999_999, 15), (1_000_000, 15)],
            &[(0, 10), (999_999, 6)],
        ),
        // Half into the next window, half of the previous 10 (a debt does
        // not carry over) still counts: 10 more fit with the overdraft.
        (
            "sliding_window 10/1s",
            &[(999_999, 15), (1_500_000, 10)],
            &[(999_999, 15), (1_500_000, 11)],
        ),
        (
            "token_bucket 10/1s burst 20",
            &[(0, 25), (100_000, 1), (300_000, 2)],
            &[(0, 25), (99_999, 1)],
        ),
        (
            "gcra 10/1s burst 20",
            &[(0, 25), (100_000, 1), (300_000, 2)],
            &[(0, 20), (300_000, 8), (300_001, 1)],
        ),
    ];
    for (text, within, over) in cases {
        let policy: Policy = text.parse().expect("valid policy");
        let policy = policy.with_max_overdraft(5).expect("below the capacity");
        assert!(within_policy(&policy, &charges(within)).is_ok(), "{text}");
        assert!(within_policy(&policy, &charges(over)).is_err(), "{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Regression seeds live next to this file and are committed.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/reservations.proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn reservations_keep_every_policy_within_its_limit_plus_its_overdraft(
        (policies, start, events) in scenario()
    ) {
        run(&policies, start, &events)?;
    }
}

/// 64 tokio tasks on a multi-threaded runtime reserve at once on one key,
/// for two policies (a token budget per minute and a window), and settle
/// at random actual costs: with time standing still, every unit the store
/// kept charged (estimates less what came back, plus overdrafts) fits in
/// each policy's limit plus its overdraft, and the store's `remaining`
/// accounts for them exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_keep_the_budget() {
    const TASKS: u64 = 64;
    let policies = [
        "fixed_window 10000/1m"
            .parse::<Policy>()
            .and_then(|p| p.with_max_overdraft(500))
            .expect("valid"),
        "token_bucket 10000/1m burst 8000"
            .parse::<Policy>()
            .and_then(|p| p.with_max_overdraft(300))
            .expect("valid"),
    ];
    for (name, policy) in ["window", "bucket"].into_iter().zip(policies) {
        let clock = ManualClock::new(1_790_000_000_000_000);
        let store = Arc::new(MemoryStore::with_clock(clock));
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let refs = [PolicyRef {
                        name,
                        policy: &policy,
                    }];
                    let (mut kept, mut denied) = (0u64, 0u64);
                    // A small deterministic generator per task.
                    let mut x = task * 0x9e37_79b9 + 1;
                    let mut next = move |n: u64| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % n
                    };
                    for call in 0..20u64 {
                        let nonce = u128::from(task << 32 | call) + 1;
                        let estimate = 50 + next(300);
                        let check = Check::new(KEY, &refs, estimate, Mode::Consume);
                        let decisions = store
                            .reserve(ReserveCall {
                                check,
                                nonce,
                                deadline_us: 60_000_000,
                            })
                            .await
                            .expect("the memory store reserves");
                        if !decisions[0].allowed {
                            denied += 1;
                            continue;
                        }
                        tokio::task::yield_now().await;
                        let actual = estimate * next(2_500) / 1_000;
                        let settle = SettleCall {
                            key: KEY,
                            policies: &refs,
                            nonce,
                            actual,
                        };
                        let answer = store.settle(settle).await.expect("works").expect("open");
                        let s = answer.settled[0];
                        assert!(s.returned <= estimate.saturating_sub(actual), "{answer:?}");
                        assert_eq!(s.charged + s.unpaid, actual.saturating_sub(estimate));
                        kept += estimate - s.returned + s.charged;
                    }
                    (kept, denied)
                })
            })
            .collect();
        let (mut kept, mut denied) = (0, 0);
        for task in tasks {
            let (k, d) = task.await.expect("no task panics");
            (kept, denied) = (kept + k, denied + d);
        }
        let refs = [PolicyRef {
            name,
            policy: &policy,
        }];
        let left = store.apply_sync(Check::new(KEY, &refs, 1, Mode::Peek))[0].remaining;
        let most = policy.capacity() + policy.max_overdraft();
        assert!(kept <= most, "{name}: {kept} kept of {most}");
        assert!(denied > 0, "{name}: the tasks never reached the limit");
        assert_eq!(
            left,
            policy.capacity().saturating_sub(kept),
            "{name}: {kept} kept, {left} left"
        );
    }
}

/// The memory store holds at most `max_reservations` records, whatever the
/// keys (1 000 reservations, half of them on one hot key, against a bound
/// of 100): past it, the reservation nearest its deadline is forgotten
/// first, settled at its estimate (a later settle finds nothing, and the
/// estimate stays charged); the latest ones settle as usual. Settled
/// records, kept for replays, count too and go at their deadline.
#[test]
fn the_memory_store_keeps_at_most_max_reservations() {
    let clock = ManualClock::new(1_790_000_000_000_000);
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_reservations(100)
        .build();
    let policy: Policy = "fixed_window 1000000/1h".parse().expect("valid");
    let refs = [PolicyRef {
        name: "tokens",
        policy: &policy,
    }];
    let key = |i: u64| {
        if i % 2 == 0 {
            "hot".to_owned()
        } else {
            format!("k{i}")
        }
    };
    for i in 0..1_000u64 {
        let k = key(i);
        let decisions = store.reserve_sync(ReserveCall {
            check: Check::new(k.as_bytes(), &refs, 10, Mode::Consume),
            nonce: u128::from(i),
            // Later reservations live longer: the first ones go first.
            deadline_us: 60_000_000 + i,
        });
        assert!(decisions[0].allowed);
        assert!(store.reservations() <= 100, "{} held", store.reservations());
    }
    assert_eq!(store.reservation_evictions(), 900);
    let settle = |i: u64, actual| {
        let k = key(i);
        store.settle_sync(SettleCall {
            key: k.as_bytes(),
            policies: &refs,
            nonce: u128::from(i),
            actual,
        })
    };
    let hot = |store: &MemoryStore| {
        store.apply_sync(Check::new(b"hot", &refs, 1, Mode::Peek))[0].remaining
    };
    // Evicted: nothing found, the estimate stays.
    let before = hot(&store);
    assert_eq!(settle(0, 0), None);
    assert_eq!(hot(&store), before);
    assert_eq!(before, 1_000_000 - 500 * 10, "every hot estimate charged");
    // Kept: settled, then replayed; a cancel deletes its reservation.
    let answer = settle(998, 1).expect("among the latest 100");
    assert_eq!(answer.settled[0].returned, 9);
    assert!(settle(998, 1).expect("kept for replays").replayed);
    assert_eq!(
        settle(996, 0).expect("among the latest").settled[0].returned,
        10
    );
    assert_eq!(settle(996, 0), None, "a cancel deletes its reservation");
    // Past every deadline, the next reservation sweeps them all away.
    clock.advance_us(61_000_000);
    store.reserve_sync(ReserveCall {
        check: Check::new(b"hot", &refs, 1, Mode::Consume),
        nonce: 5_000,
        deadline_us: 60_000_000,
    });
    assert_eq!(store.reservations(), 1);
    assert_eq!(store.reservation_evictions(), 900, "expired, not evicted");
}

/// Why the bounds count an overdraft when it is settled, not with its
/// reservation: two reservations of 50 fill a window of `100/1m` (overdraft
/// 100); settled in the next window at 150 each, both overdrafts are charged
/// in full there (100 + 100: the new window's limit plus its overdraft).
/// Counted at their actual cost when reserved, the first window would hold
/// 300, past its 200: the bound holds only as the store charges, the
/// overdraft in the window of the settle (and unpaid units never count).
#[test]
fn an_overdraft_counts_in_the_window_it_is_settled_in() {
    let start = 1_790_000_000_000_000 - 1_790_000_000_000_000 % 60_000_000;
    let clock = ManualClock::new(start);
    let store = MemoryStore::with_clock(clock.clone());
    let policy: Policy = "fixed_window 100/1m"
        .parse::<Policy>()
        .and_then(|p| p.with_max_overdraft(100))
        .expect("valid");
    let refs = [PolicyRef {
        name: "tokens",
        policy: &policy,
    }];
    for nonce in [1, 2] {
        let decisions = store.reserve_sync(ReserveCall {
            check: Check::new(KEY, &refs, 50, Mode::Consume),
            nonce,
            deadline_us: 300_000_000,
        });
        assert!(decisions[0].allowed);
    }
    clock.advance_us(60_000_000);
    let mut charged = 0;
    for nonce in [1, 2] {
        let answer = store
            .settle_sync(SettleCall {
                key: KEY,
                policies: &refs,
                nonce,
                actual: 150,
            })
            .expect("open");
        assert_eq!(answer.settled[0].returned, 0, "the window has ended");
        assert_eq!(answer.settled[0].unpaid, 0, "{answer:?}");
        charged += answer.settled[0].charged;
    }
    assert_eq!(charged, 200, "the new window's limit plus its overdraft");
    let reserved_window_at_actual_cost = 150 + 150;
    assert!(reserved_window_at_actual_cost > policy.limit() + policy.max_overdraft());
}
