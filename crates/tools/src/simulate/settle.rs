//! The `settle` pattern: costs known only at the end.
//!
//! Each request reserves an estimate when it arrives
//! ([`MemoryStore::reserve_sync`]) and, when admitted, settles a drawn
//! time later at a drawn actual cost ([`MemoryStore::settle_sync`]): an
//! LLM call that knows its tokens when its response is done. Draws come
//! from a seeded generator, made once for the whole run, so every
//! algorithm sees the same requests and a run is reproducible.
//!
//! What the plots and the worst window count is the cost each algorithm
//! kept charged, at the instant it counts for the policy: a reservation's
//! estimate less what its settle gave back, when it was reserved (a window
//! gives back while the window the estimate was charged in lasts; a bucket
//! forfeits), and what a settle charged past the estimate (the overdraft),
//! when it settled.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use serde::Serialize;
use tollgate::reservation::{MAX_AMOUNT, MAX_DEADLINE};
use tollgate::{Check, ManualClock, MemoryStore, Mode, Policy, PolicyRef, ReserveCall, SettleCall};

use super::{KEY, SimulateError};

/// How the actual cost of a request is drawn around its estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CostDistribution {
    /// Uniform in `estimate * [1 - spread, 1 + spread]`.
    Uniform,
    /// Log-normal with median `estimate` and σ `spread`: mostly near the
    /// estimate, now and then far above it (the long answers).
    Lognormal,
}

/// The cost model of the `settle` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostModel {
    /// Units each request reserves.
    pub estimate: u64,
    /// How the actual cost is drawn.
    pub distribution: CostDistribution,
    /// The spread of the draw (see [`CostDistribution`]).
    pub spread: f64,
    /// The mean time from a reservation to its settle; each is drawn
    /// uniformly in `[0, 2 * hold]`.
    #[serde(serialize_with = "micros")]
    pub hold: Duration,
    /// How long a reservation stays open; a settle later than this finds
    /// nothing (the estimate stays charged).
    #[serde(serialize_with = "micros")]
    pub deadline: Duration,
    /// The seed of the draws.
    pub seed: u64,
}

impl CostDistribution {
    /// Its command line name.
    pub fn name(self) -> &'static str {
        match self {
            CostDistribution::Uniform => "uniform",
            CostDistribution::Lognormal => "lognormal",
        }
    }
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(tollgate::clock::micros(*d))
}

impl CostModel {
    /// Checks the model's numbers.
    ///
    /// # Errors
    /// [`SimulateError::Pattern`] naming the flag out of range.
    pub fn validate(&self) -> Result<(), SimulateError> {
        let bad = |reason: String| Err(SimulateError::Pattern(reason));
        if self.estimate == 0 || self.estimate > MAX_AMOUNT {
            return bad(format!("--estimate must be from 1 to {MAX_AMOUNT}"));
        }
        let most = match self.distribution {
            CostDistribution::Uniform => 1.0,
            CostDistribution::Lognormal => 3.0,
        };
        if !(self.spread.is_finite() && (0.0..=most).contains(&self.spread)) {
            return bad(format!(
                "--cost-spread must be from 0 to {most} for --cost {}",
                self.distribution.name()
            ));
        }
        if self.deadline.is_zero() || self.deadline > MAX_DEADLINE {
            return bad(format!(
                "--deadline must be above 0 and at most {}",
                super::plot::format_period(tollgate::clock::micros(MAX_DEADLINE))
            ));
        }
        if self.hold > MAX_DEADLINE {
            return bad(format!(
                "--hold must be at most {}",
                super::plot::format_period(tollgate::clock::micros(MAX_DEADLINE))
            ));
        }
        Ok(())
    }

    /// One request per arrival: its actual cost and when it settles, drawn
    /// in arrival order from the seed.
    pub fn requests(&self, arrivals: &[u64]) -> Vec<Request> {
        let mut rng = SplitMix64(self.seed);
        let hold = tollgate::clock::micros(self.hold);
        arrivals
            .iter()
            .map(|&at| {
                let factor = match self.distribution {
                    CostDistribution::Uniform => 1.0 + self.spread * (2.0 * rng.unit() - 1.0),
                    CostDistribution::Lognormal => (self.spread * rng.normal()).exp(),
                };
                let actual = (self.estimate as f64 * factor).round();
                let actual = if actual.is_finite() {
                    (actual.max(0.0) as u64).min(MAX_AMOUNT)
                } else {
                    MAX_AMOUNT
                };
                let held = if hold == 0 {
                    0
                } else {
                    rng.next() % (2 * hold + 1)
                };
                Request {
                    at,
                    actual,
                    settle_at: at + held,
                }
            })
            .collect()
    }
}

/// One request of the `settle` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// When it arrives and reserves, µs from the start.
    pub at: u64,
    /// What it turns out to cost.
    pub actual: u64,
    /// When it settles (if admitted), µs from the start.
    pub settle_at: u64,
}

/// What one algorithm did with the costs of the `settle` pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CostRun {
    /// The actual cost of every request offered.
    pub offered: u64,
    /// The actual cost of the requests admitted.
    pub actual: u64,
    /// What stayed charged in the store: estimates less what came back,
    /// plus overdrafts.
    pub kept: u64,
    /// Units of estimates given back.
    pub returned: u64,
    /// Units charged past estimates.
    pub overdrawn: u64,
    /// Units past estimates not charged (the overdraft was full).
    pub unpaid: u64,
    /// Reservations whose settle came after their deadline (settled at
    /// their estimate).
    pub expired: u64,
    /// The most units kept charged in any window of one period.
    pub worst_window: u64,
    /// Units kept charged, each at the instant it counts (µs from the
    /// start), sorted.
    #[serde(skip)]
    pub charged: Vec<(u64, u64)>,
}

/// The outcome of one policy under the `settle` pattern: requests admitted
/// and denied, and the costs.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// When each admitted request arrived, sorted.
    pub admitted_at: Vec<u64>,
    /// Requests denied.
    pub denied: u64,
    /// The costs.
    pub costs: CostRun,
}

/// Runs `policy` over `requests` (sorted by arrival) on a fresh memory
/// store under a manual clock starting at `origin`: each request reserves
/// `model.estimate` and, when admitted, settles at `settle_at` (settles
/// come before arrivals at the same instant).
pub fn run(policy: &Policy, origin: u64, requests: &[Request], model: &CostModel) -> Outcome {
    let clock = ManualClock::new(origin);
    let store = MemoryStore::with_clock_and_shards(clock.clone(), 1);
    let refs = [PolicyRef {
        name: "simulated",
        policy,
    }];
    let mut out = Outcome::default();
    let costs = &mut out.costs;
    costs.offered = requests.iter().map(|r| r.actual).sum();
    // Per admitted request: the index of its estimate in `costs.charged`.
    let mut slots = vec![usize::MAX; requests.len()];
    let mut pending = BinaryHeap::new();
    let deadline_us = tollgate::clock::micros(model.deadline);
    let settle = |i: usize, costs: &mut CostRun, slots: &[usize]| {
        let request = requests[i];
        clock.set_us(origin + request.settle_at);
        costs.actual += request.actual;
        let answer = store.settle_sync(SettleCall {
            key: KEY,
            policies: &refs,
            nonce: i as u128,
            actual: request.actual,
        });
        let Some(answer) = answer else {
            costs.expired += 1;
            return;
        };
        let s = answer.settled[0];
        costs.charged[slots[i]].1 -= s.returned;
        if s.charged > 0 {
            costs.charged.push((request.settle_at, s.charged));
        }
        costs.returned += s.returned;
        costs.overdrawn += s.charged;
        costs.unpaid += s.unpaid;
    };
    for (i, request) in requests.iter().enumerate() {
        while let Some(&Reverse((at, j))) = pending.peek() {
            if at > request.at {
                break;
            }
            pending.pop();
            settle(j, costs, &slots);
        }
        clock.set_us(origin + request.at);
        let decisions = store.reserve_sync(ReserveCall {
            check: Check::new(KEY, &refs, model.estimate, Mode::Consume),
            nonce: i as u128,
            deadline_us,
        });
        if decisions.first().is_some_and(|d| d.allowed) {
            out.admitted_at.push(request.at);
            slots[i] = costs.charged.len();
            costs.charged.push((request.at, model.estimate));
            pending.push(Reverse((request.settle_at, i)));
        } else {
            out.denied += 1;
        }
    }
    while let Some(Reverse((_, j))) = pending.pop() {
        settle(j, costs, &slots);
    }
    costs.charged.sort_unstable();
    costs.kept = costs.charged.iter().map(|c| c.1).sum();
    costs.worst_window =
        super::worst_window_by(&costs.charged, |c| c.0, |c| c.1, policy.period_us());
    out
}

/// A small, seeded generator (SplitMix64): the same draws on every
/// machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // (0, 1]: ln is finite
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(distribution: CostDistribution, spread: f64) -> CostModel {
        CostModel {
            estimate: 100,
            distribution,
            spread,
            hold: Duration::from_millis(10),
            deadline: Duration::from_secs(300),
            seed: 7,
        }
    }

    #[test]
    fn draws_are_reproducible_and_around_the_estimate() {
        let arrivals: Vec<u64> = (0..10_000).map(|i| i * 100).collect();
        let uniform = model(CostDistribution::Uniform, 0.5).requests(&arrivals);
        assert_eq!(
            uniform,
            model(CostDistribution::Uniform, 0.5).requests(&arrivals)
        );
        assert!(uniform.iter().all(|r| (50..=150).contains(&r.actual)));
        let mean = uniform.iter().map(|r| r.actual).sum::<u64>() / 10_000;
        assert!((95..=105).contains(&mean), "{mean}");
        assert!(
            uniform
                .iter()
                .all(|r| r.settle_at >= r.at && r.settle_at <= r.at + 20_000)
        );
        let lognormal = model(CostDistribution::Lognormal, 1.0).requests(&arrivals);
        let mut costs: Vec<u64> = lognormal.iter().map(|r| r.actual).collect();
        costs.sort_unstable();
        let median = costs[5_000];
        assert!((90..=110).contains(&median), "median {median}");
        assert!(costs[9_900] > 500, "a long tail: {}", costs[9_900]);
        let exact = model(CostDistribution::Uniform, 0.0).requests(&arrivals);
        assert!(exact.iter().all(|r| r.actual == 100));
    }

    #[test]
    fn the_model_refuses_numbers_out_of_range() {
        let good = model(CostDistribution::Uniform, 0.5);
        assert!(good.validate().is_ok());
        for bad in [
            CostModel {
                estimate: 0,
                ..good
            },
            CostModel {
                spread: 1.5,
                ..good
            },
            CostModel {
                spread: f64::NAN,
                ..good
            },
            CostModel {
                spread: -0.1,
                ..good
            },
            CostModel {
                deadline: Duration::ZERO,
                ..good
            },
            CostModel {
                deadline: Duration::from_secs(7200),
                ..good
            },
            CostModel {
                hold: Duration::from_secs(7200),
                ..good
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
