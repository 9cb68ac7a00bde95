//! Property tests of the algorithms over random request sequences.

use proptest::prelude::*;
use tollgate::algorithm::{State, decide, next_allowed_after};
use tollgate::{Algorithm, Mode, Policy};

fn any_policy() -> impl Strategy<Value = Policy> {
    policy_of(Algorithm::ALL.to_vec())
}

fn policy_of(algorithms: Vec<Algorithm>) -> impl Strategy<Value = Policy> {
    (
        proptest::sample::select(algorithms),
        1u64..=20,
        1_000u64..=3_000_000,
        1u64..=30,
    )
        .prop_map(|(algorithm, limit, period_us, burst)| {
            let burst = algorithm.has_burst().then_some(burst);
            Policy::new(
                algorithm,
                limit,
                std::time::Duration::from_micros(period_us),
                burst,
            )
            .expect("generated policies are valid")
        })
}

/// A policy and a timeline of `(time step, cost)`, steps up to two periods.
fn scenario() -> impl Strategy<Value = (Policy, Vec<(u64, u64)>)> {
    any_policy().prop_flat_map(|p| {
        let step = 0..=2 * p.period_us() / p.limit().max(1) + 1;
        let cost = 1..=p.capacity() + 1;
        (Just(p), proptest::collection::vec((step, cost), 1..150))
    })
}

/// As [`scenario`], with steps that may go back in time (a failover to a
/// replica whose clock is behind) by up to two periods.
fn scenario_with_steps_back() -> impl Strategy<Value = (Policy, Vec<(i64, u64)>)> {
    any_policy().prop_flat_map(|p| {
        let forward = i64::try_from(2 * p.period_us() / p.limit().max(1) + 1).expect("small");
        let back = i64::try_from(2 * p.period_us()).expect("small");
        let step = prop_oneof![4 => 0..=forward, 1 => -back..=0];
        let cost = 1..=p.capacity() + 1;
        (Just(p), proptest::collection::vec((step, cost), 1..150))
    })
}

/// Two policies of one algorithm (a policy changed under a live key) and a
/// timeline of `(time step, which policy, cost)`.
fn changing_scenario() -> impl Strategy<Value = (Policy, Policy, Vec<(u64, bool, u64)>)> {
    proptest::sample::select(Algorithm::ALL.to_vec()).prop_flat_map(|a| {
        (policy_of(vec![a]), policy_of(vec![a])).prop_flat_map(|(p, q)| {
            let longest = p.period_us().max(q.period_us());
            let step = 0..=longest / 4;
            let cost = 1..=p.capacity().max(q.capacity()) + 1;
            let op = (step, proptest::bool::weighted(0.2), cost);
            (Just(p), Just(q), proptest::collection::vec(op, 1..150))
        })
    })
}

/// Runs a timeline from a start instant, returning every admitted `(t, cost)`.
fn run(policy: &Policy, start: u64, steps: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut state = State::fresh(policy, start);
    let mut now = start;
    let mut admitted = Vec::new();
    for &(dt, cost) in steps {
        now += dt;
        let d = decide(policy, &mut state, now, cost, Mode::Consume);
        if d.allowed {
            admitted.push((now, cost));
        }
    }
    admitted
}

/// Cost admitted in `[from, to]`.
fn admitted_between(admitted: &[(u64, u64)], from: u64, to: u64) -> u64 {
    admitted
        .iter()
        .filter(|&&(t, _)| t >= from && t <= to)
        .map(|&(_, c)| c)
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Regression seeds live next to this file and are committed.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/properties.proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn admitted_cost_never_exceeds_the_policy((policy, steps) in scenario(), start in 0u64..10_000_000) {
        let admitted = run(&policy, start, &steps);
        let (limit, period) = (policy.limit(), policy.period_us());
        for &(t, _) in &admitted {
            // Every window of one period that starts at an admitted request.
            let in_period = admitted_between(&admitted, t, t + period - 1);
            match policy.algorithm() {
                Algorithm::SlidingLog => prop_assert!(in_period <= limit),
                // Documented: up to twice the limit across a window edge.
                Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                    prop_assert!(in_period <= 2 * limit);
                    let window = t - t % period;
                    prop_assert!(admitted_between(&admitted, window, window + period - 1) <= limit);
                }
                // Buckets: the capacity plus what refills over the interval.
                Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket => {
                    for &(u, _) in admitted.iter().filter(|&&(u, _)| u >= t) {
                        let refill = u128::from(u - t) * u128::from(limit) / u128::from(period);
                        let bound = u128::from(policy.burst()) + refill;
                        prop_assert!(u128::from(admitted_between(&admitted, t, u)) <= bound);
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn steady_traffic_at_the_policy_rate_is_always_admitted(
        // The sliding window counter is an approximation: at exactly the rate
        // after a full window it counts the previous window as if uniform
        // and may deny (documented in docs/ALGORITHMS.md).
        policy in policy_of(Algorithm::ALL.into_iter().filter(|a| a.is_exact()).collect()),
        start in 0u64..10_000_000,
        count in 1u64..200,
    ) {
        let (limit, period) = (policy.limit(), policy.period_us());
        // Each request at least one emission interval after the previous one.
        let gap = period.div_ceil(limit);
        let mut state = State::fresh(&policy, start);
        for k in 0..count {
            let now = start + k * gap;
            let d = decide(&policy, &mut state, now, 1, Mode::Consume);
            prop_assert!(d.allowed, "request {k} at {now} denied: {d:?}");
        }
        // The k-th request exactly k * period / limit after the first, rounded
        // up to whole µs, so a gap may be a fraction of a µs short of the
        // interval. Windows absorb that; a bucket needs room for one unit of
        // rounding (burst >= 2) — a full bucket of one cannot bank the
        // overflow, which is what a token bucket is.
        if !policy.algorithm().has_burst() || policy.burst() >= 2 {
            let mut state = State::fresh(&policy, start);
            for k in 0..count {
                let now = start + (k * period).div_ceil(limit);
                let d = decide(&policy, &mut state, now, 1, Mode::Consume);
                prop_assert!(d.allowed, "scheduled request {k} at {now} denied: {d:?}");
            }
        }
    }

    #[test]
    fn remaining_never_exceeds_limit_and_retry_after_is_honest((policy, steps) in scenario()) {
        let mut state = State::fresh(&policy, 0);
        let mut now = 0;
        for &(dt, cost) in &steps {
            now += dt;
            let d = decide(&policy, &mut state, now, cost, Mode::Consume);
            prop_assert!(d.remaining <= d.limit);
            prop_assert_eq!(d.limit, policy.capacity());
            if d.allowed {
                prop_assert_eq!(d.retry_after, None);
                continue;
            }
            match d.retry_after {
                None => prop_assert!(cost > policy.capacity()),
                Some(r) => {
                    let r = r.as_micros() as u64;
                    prop_assert!(r > 0, "a denial with retry_after 0");
                    let mut at = state.clone();
                    prop_assert!(decide(&policy, &mut at, now + r, cost, Mode::Peek).allowed,
                        "not allowed at retry_after {r}");
                    let mut before = state.clone();
                    prop_assert!(!decide(&policy, &mut before, now + r - 1, cost, Mode::Peek).allowed,
                        "already allowed 1 µs before retry_after {r}");
                }
            }
        }
    }

    /// What the deny cache relies on when it caches the denial that follows
    /// an allow: the derived wait is never later than the truth, at most
    /// 1 µs early, and exact when a unit is a whole number of microseconds.
    #[test]
    fn next_allowed_after_an_allow_is_a_tight_lower_bound((policy, steps) in scenario()) {
        let mut state = State::fresh(&policy, 0);
        let mut now = 0;
        for &(dt, cost) in &steps {
            now += dt;
            let d = decide(&policy, &mut state, now, cost, Mode::Consume);
            let Some(wait) = next_allowed_after(&policy, cost, &d) else {
                prop_assert!(!d.allowed || d.remaining >= cost || !matches!(policy.algorithm(),
                    Algorithm::FixedWindow | Algorithm::Gcra | Algorithm::TokenBucket | Algorithm::LeakyBucket));
                continue;
            };
            let wait = wait.as_micros() as u64;
            prop_assert!(d.allowed && d.remaining < cost);
            let allowed_at = |t: u64| decide(&policy, &mut state.clone(), t, cost, Mode::Peek).allowed;
            prop_assert!(!allowed_at(now), "tight, yet allowed again at once");
            if wait > 0 {
                prop_assert!(!allowed_at(now + wait - 1), "allowed before the derived wait {wait}");
            }
            let exact = policy.scaled_rate() == 1 || policy.algorithm() == Algorithm::FixedWindow;
            let late_by = if exact { 0 } else { 1 };
            prop_assert!(allowed_at(now + wait + late_by), "derived wait {wait} is early by more than {late_by} µs");
        }
    }

    /// After the clock steps back, `retry_after` still names the first
    /// instant the request passes: the buckets refill (drain) only from the
    /// instant their level was measured, as GCRA's arrival time always did.
    #[test]
    fn retry_after_is_honest_when_the_clock_steps_back((policy, steps) in scenario_with_steps_back()) {
        let start = 10 * policy.period_us();
        let mut state = State::fresh(&policy, start);
        let mut now = start;
        for &(dt, cost) in &steps {
            now = now.saturating_add_signed(dt);
            let d = decide(&policy, &mut state, now, cost, Mode::Consume);
            prop_assert!(d.remaining <= d.limit);
            let Some(r) = d.retry_after else {
                prop_assert!(d.allowed || cost > policy.capacity());
                continue;
            };
            let r = r.as_micros() as u64;
            prop_assert!(r > 0, "a denial with retry_after 0");
            prop_assert!(decide(&policy, &mut state.clone(), now + r, cost, Mode::Peek).allowed,
                "not allowed at retry_after {r}");
            prop_assert!(!decide(&policy, &mut state.clone(), now + r - 1, cost, Mode::Peek).allowed,
                "already allowed 1 µs before retry_after {r}");
        }
    }

    /// A policy changed under a live key, any number of times: the state is
    /// read in absolute units, so the key never admits more than the policy
    /// in force allows from a fresh start — a bucket at most its capacity
    /// plus its refill since the change, the sliding log at most its limit
    /// in any period since the change — and `retry_after` stays honest.
    #[test]
    fn a_changed_policy_never_admits_more_than_the_policy_in_force((p, q, steps) in changing_scenario()) {
        let mut state = State::fresh(&p, 0);
        let mut now = 0;
        // (instant, cost) admitted since the last change, and its policy.
        let mut since: Vec<(u64, u64)> = Vec::new();
        let mut current = &p;
        let mut changed_at = 0;
        for &(dt, use_q, cost) in &steps {
            now += dt;
            let policy = if use_q { &q } else { &p };
            if !std::ptr::eq(policy, current) {
                (current, changed_at) = (policy, now);
                since.clear();
            }
            let d = decide(policy, &mut state, now, cost, Mode::Consume);
            if d.allowed {
                since.push((now, cost));
            } else if let Some(r) = d.retry_after {
                let r = r.as_micros() as u64;
                prop_assert!(decide(policy, &mut state.clone(), now + r, cost, Mode::Peek).allowed,
                    "not allowed at retry_after {r}");
                prop_assert!(!decide(policy, &mut state.clone(), now + r - 1, cost, Mode::Peek).allowed,
                    "already allowed 1 µs before retry_after {r}");
            }
            let (limit, period) = (policy.limit(), policy.period_us());
            let total = admitted_between(&since, changed_at, now);
            match policy.algorithm() {
                Algorithm::SlidingLog => {
                    prop_assert!(admitted_between(&since, now.saturating_sub(period - 1), now) <= limit);
                }
                Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket => {
                    let refill = u128::from(now - changed_at) * u128::from(limit) / u128::from(period);
                    prop_assert!(u128::from(total) <= u128::from(policy.burst()) + refill);
                }
                // Windows: a count carried into a window never lets it admit
                // more than the limit in that window (the window it was
                // counted in keeps running under the new period).
                Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                    prop_assert!(total <= limit * (2 + (now - changed_at) / period));
                }
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn reset_after_is_exactly_when_the_state_is_fresh((policy, steps) in scenario()) {
        let mut state = State::fresh(&policy, 0);
        let mut now = 0;
        for &(dt, cost) in &steps {
            now += dt;
            let d = decide(&policy, &mut state, now, cost, Mode::Consume);
            let fresh_at = now + d.reset_after.as_micros() as u64;
            prop_assert_eq!(fresh_at.max(now), state.fresh_at(&policy).max(now));
            if d.reset_after.is_zero() {
                continue;
            }
            for c in [1, policy.capacity()] {
                let mut aged = state.clone();
                let mut fresh = State::fresh(&policy, fresh_at);
                prop_assert_eq!(
                    decide(&policy, &mut aged, fresh_at, c, Mode::Peek),
                    decide(&policy, &mut fresh, fresh_at, c, Mode::Peek)
                );
            }
            let mut almost = state.clone();
            let d = decide(&policy, &mut almost, fresh_at - 1, 1, Mode::Peek);
            prop_assert!(d.remaining < policy.capacity(), "fresh already 1 µs early: {d:?}");
        }
    }

    #[test]
    fn gcra_and_token_bucket_agree((policy, steps) in scenario()) {
        let policy = Policy::new(Algorithm::Gcra, policy.limit(), policy.period(), Some(policy.capacity()))
            .expect("same parameters");
        let bucket = Policy::new(Algorithm::TokenBucket, policy.limit(), policy.period(), Some(policy.burst()))
            .expect("same parameters");
        let (mut g, mut b) = (State::fresh(&policy, 0), State::fresh(&bucket, 0));
        let mut now = 0;
        for &(dt, cost) in &steps {
            now += dt;
            prop_assert_eq!(decide(&policy, &mut g, now, cost, Mode::Consume), decide(&bucket, &mut b, now, cost, Mode::Consume));
        }
    }
}
