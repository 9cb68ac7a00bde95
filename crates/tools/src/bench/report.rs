//! What a run measured: outcomes, latency, and admissions per key checked
//! against the policy.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tollgate::{Algorithm, Policy};

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestResult {
    /// Allowed (a 2xx for `http`).
    Allowed,
    /// Denied (a 429 for `http`).
    Denied,
    /// An HTTP status that is neither 2xx nor 429.
    Status(u16),
    /// No answer: connection, timeout, protocol or store failure.
    Error(String),
}

/// Everything recorded during a run. Merged from workers at the end.
#[derive(Debug)]
pub struct Collector {
    /// Latency in µs: from when the request was due to start (open model)
    /// or started (closed model) to its answer.
    pub latency: Histogram<u64>,
    /// Allowed, denied, other statuses, errors.
    pub allowed: u64,
    /// Denied requests.
    pub denied: u64,
    /// Requests answered with another HTTP status, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed.
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    /// Per key index: requests and allowed requests.
    pub per_key: HashMap<u32, KeyCount>,
}

/// Requests of one key.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyCount {
    /// Requests sent.
    pub requests: u64,
    /// Requests allowed.
    pub allowed: u64,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    /// An empty collector; latencies from 1 µs to 1 hour at 3 significant digits.
    pub fn new() -> Self {
        Collector {
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid histogram bounds")),
            allowed: 0,
            denied: 0,
            statuses: BTreeMap::new(),
            errors: 0,
            error_samples: Vec::new(),
            per_key: HashMap::new(),
        }
    }

    /// Records one request.
    pub fn record(&mut self, key: u32, outcome: RequestResult, latency: Duration) {
        let us = tollgate::clock::micros(latency).max(1);
        self.latency.saturating_record(us);
        let count = self.per_key.entry(key).or_default();
        count.requests += 1;
        match outcome {
            RequestResult::Allowed => {
                self.allowed += 1;
                count.allowed += 1;
            }
            RequestResult::Denied => self.denied += 1,
            RequestResult::Status(status) => *self.statuses.entry(status).or_default() += 1,
            RequestResult::Error(message) => {
                self.errors += 1;
                if self.error_samples.len() < 5 && !self.error_samples.contains(&message) {
                    self.error_samples.push(message);
                }
            }
        }
    }

    /// Requests recorded.
    pub fn requests(&self) -> u64 {
        self.latency.len()
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// Admissions per key against the policy's allowance over the run.
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    /// The policy checked against.
    pub policy: String,
    /// Whether the algorithm is exact (only `sliding_window` is not: its
    /// bound is the aligned windows').
    pub exact: bool,
    /// Units per request.
    pub cost: u64,
    /// The span the allowance is computed over: from the first request
    /// sent to the last answer, widened by 1 ms on each side for clock
    /// differences between this process and the store, in seconds.
    pub span_secs: f64,
    /// Units the policy can admit to one key over that span.
    pub allowance_per_key: u64,
    /// Keys that sent requests.
    pub keys: usize,
    /// The most units admitted to one key.
    pub max_admitted_per_key: u64,
    /// Keys admitted more units than the allowance, with their units.
    pub over_admitted: BTreeMap<String, u64>,
}

impl Accuracy {
    /// Whether no key was over-admitted.
    pub fn ok(&self) -> bool {
        self.over_admitted.is_empty()
    }
}

/// Units `policy` can admit to one key between the Unix instants `start_us`
/// and `end_us` (inclusive), whatever the timing of the requests:
///
/// - `fixed_window`, `sliding_window`: the limit per aligned window the span
///   touches (the sliding window never admits more than the limit in an
///   aligned window either);
/// - `sliding_log`: the limit per period, for `floor(span / P) + 1`
///   periods (any window of one period admits at most the limit);
/// - `token_bucket`, `gcra`, `leaky_bucket`: a full bucket plus the refill
///   over the span, `burst + ceil(limit * span / P)`.
pub fn allowance(policy: &Policy, start_us: u64, end_us: u64) -> u64 {
    let period = u128::from(policy.period_us());
    let limit = u128::from(policy.limit());
    let span = u128::from(end_us.saturating_sub(start_us));
    let units = match policy.algorithm() {
        Algorithm::FixedWindow | Algorithm::SlidingWindow => {
            let windows = u128::from(end_us) / period - u128::from(start_us) / period + 1;
            limit * windows
        }
        Algorithm::SlidingLog => limit * (span / period + 1),
        _ => u128::from(policy.burst()) + (limit * span).div_ceil(period),
    };
    u64::try_from(units).unwrap_or(u64::MAX)
}

/// What the leasing layers of a `direct` bench did over the run (every
/// instance's, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LeaseReport {
    /// Leases taken from the store.
    pub taken: u64,
    /// Units leased (charged in the store to be spent locally).
    pub units: u64,
    /// Units of ended leases given back to the store.
    pub returned: u64,
    /// Units of ended leases neither spent nor given back.
    pub forfeited: u64,
    /// (policy, identity) pairs tracked at the end of the run.
    pub keys: usize,
    /// Calls the leasing layers made to the store (lease calls and
    /// decisions made there).
    pub store_calls: u64,
}

/// What Redis ran during a `direct` bench on Redis, from the first request
/// to the last answer (`INFO commandstats`, summed over every master of a
/// cluster).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RedisCommands {
    /// Every command Redis ran, those run by the scripts included (`INFO`
    /// and `CLUSTER`, the count's own, excepted).
    pub commands: u64,
    /// Script calls (`FCALL`, `EVALSHA`, `EVAL`): the decisions and lease
    /// calls the stores sent.
    pub script_calls: u64,
    /// `commands` per allowed request; `None` when none was allowed.
    pub commands_per_admitted: Option<f64>,
    /// `script_calls` per allowed request; `None` when none was allowed.
    pub script_calls_per_admitted: Option<f64>,
}

impl RedisCommands {
    /// `commands` commands, `script_calls` of them script calls, for
    /// `allowed` admitted requests.
    pub fn new(commands: u64, script_calls: u64, allowed: u64) -> Self {
        let per = |n: u64| (allowed > 0).then(|| n as f64 / allowed as f64);
        RedisCommands {
            commands,
            script_calls,
            commands_per_admitted: per(commands),
            script_calls_per_admitted: per(script_calls),
        }
    }
}

/// The summary of a run, as printed (or with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// What was benchmarked.
    pub target: String,
    /// The phases run.
    pub phases: Vec<String>,
    /// Requests answered or failed.
    pub requests: u64,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
    /// Requests per second.
    pub throughput: f64,
    /// Allowed requests (2xx for `http`).
    pub allowed: u64,
    /// Denied requests (429 for `http`).
    pub denied: u64,
    /// Other HTTP statuses, by status.
    pub other_statuses: BTreeMap<u16, u64>,
    /// Failed requests.
    pub errors: u64,
    /// The first distinct error messages.
    pub error_samples: Vec<String>,
    /// Latency percentiles.
    pub latency: Latency,
    /// Admissions against the policy, when one is known.
    pub accuracy: Option<Accuracy>,
    /// `direct` with `--lease-max`: what leasing did.
    pub leases: Option<LeaseReport>,
    /// `direct` on Redis: the commands Redis ran.
    pub redis: Option<RedisCommands>,
}

impl Summary {
    /// Builds the summary. `span_us` is the run's first send and last
    /// answer as Unix µs; `policy` the policy to check against.
    pub fn new(
        target: String,
        phases: Vec<String>,
        collected: &Collector,
        elapsed: Duration,
        span_us: (u64, u64),
        policy: Option<(&Policy, u64)>,
        key_name: &dyn Fn(u32) -> String,
    ) -> Self {
        let h = &collected.latency;
        let ms = |us: u64| us as f64 / 1_000.0;
        let latency = Latency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1_000.0,
        };
        let accuracy = policy.map(|(policy, cost)| {
            // 1 ms either side: this process's clock and the store's are
            // read at different instants (and Redis's is its own).
            let start = span_us.0.saturating_sub(1_000);
            let end = span_us.1 + 1_000;
            let allowance = allowance(policy, start, end);
            let mut over = BTreeMap::new();
            let mut most = 0;
            for (&key, count) in &collected.per_key {
                let units = count.allowed * cost;
                most = most.max(units);
                if units > allowance {
                    over.insert(key_name(key), units);
                }
            }
            Accuracy {
                policy: policy.to_string(),
                exact: policy.algorithm().is_exact(),
                cost,
                span_secs: (end - start) as f64 / 1e6,
                allowance_per_key: allowance,
                keys: collected.per_key.len(),
                max_admitted_per_key: most,
                over_admitted: over,
            }
        });
        let requests = collected.requests();
        Summary {
            target,
            phases,
            requests,
            elapsed_secs: elapsed.as_secs_f64(),
            throughput: requests as f64 / elapsed.as_secs_f64().max(1e-9),
            allowed: collected.allowed,
            denied: collected.denied,
            other_statuses: collected.statuses.clone(),
            errors: collected.errors,
            error_samples: collected.error_samples.clone(),
            latency,
            accuracy,
            leases: None,
            redis: None,
        }
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "target      {}", self.target);
        for (i, phase) in self.phases.iter().enumerate() {
            let _ = writeln!(out, "phase {:<5} {phase}", i + 1);
        }
        let _ = writeln!(
            out,
            "requests    {} in {:.2} s: {:.1}/s",
            self.requests, self.elapsed_secs, self.throughput
        );
        let mut outcomes = format!(
            "allowed {}, denied {}, errors {}",
            self.allowed, self.denied, self.errors
        );
        for (status, n) in &self.other_statuses {
            let _ = write!(outcomes, ", status {status}: {n}");
        }
        let _ = writeln!(out, "outcomes    {outcomes}");
        for sample in &self.error_samples {
            let _ = writeln!(out, "  error     {sample}");
        }
        let l = &self.latency;
        let _ = writeln!(
            out,
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3})",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
        );
        match &self.accuracy {
            None => {
                let _ = writeln!(out, "accuracy    not checked (give --policy to check)");
            }
            Some(a) => {
                let verdict = match (a.ok(), a.exact) {
                    (true, _) => "OK: no key over-admitted".to_owned(),
                    (false, true) => {
                        format!(
                            "OVER-ADMISSION: {} key(s) above the allowance",
                            a.over_admitted.len()
                        )
                    }
                    (false, false) => format!(
                        "{} key(s) above the aligned-window bound (approximate algorithm)",
                        a.over_admitted.len()
                    ),
                };
                let _ = writeln!(
                    out,
                    "accuracy    {} over {:.3} s: allowance {} units per key; {} keys, most admitted {} units; {verdict}",
                    a.policy, a.span_secs, a.allowance_per_key, a.keys, a.max_admitted_per_key
                );
                for (key, units) in a.over_admitted.iter().take(10) {
                    let _ = writeln!(out, "  over      {key}: {units} units");
                }
            }
        }
        if let Some(l) = &self.leases {
            let _ = writeln!(
                out,
                "leases      taken {}, units {} (returned {}, forfeited {}), keys {}; store calls {} ({:.4} per request)",
                l.taken,
                l.units,
                l.returned,
                l.forfeited,
                l.keys,
                l.store_calls,
                l.store_calls as f64 / self.requests.max(1) as f64
            );
        }
        if let Some(r) = &self.redis {
            let per = |n: Option<f64>| n.map_or_else(|| "-".to_owned(), |n| format!("{n:.4}"));
            let _ = writeln!(
                out,
                "redis       {} commands ({} script calls): {} ({}) per admitted decision",
                r.commands,
                r.script_calls,
                per(r.commands_per_admitted),
                per(r.script_calls_per_admitted)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_per_algorithm() {
        let p = |text: &str| text.parse::<Policy>().expect("valid");
        let s = 1_000_000;
        // 2.5 s starting mid-window touches windows 10, 11 and 12.
        assert_eq!(
            allowance(&p("fixed_window 10/1s"), 10 * s + s / 2, 13 * s),
            40
        );
        assert_eq!(
            allowance(&p("fixed_window 10/1s"), 10 * s, 10 * s + s / 2),
            10
        );
        assert_eq!(allowance(&p("sliding_log 10/1s"), 0, s / 2), 10);
        assert_eq!(allowance(&p("sliding_log 10/1s"), 0, 2 * s + 1), 30);
        assert_eq!(allowance(&p("token_bucket 10/1s burst 5"), 0, s / 2), 10);
        assert_eq!(allowance(&p("gcra 3/1s"), 0, 1), 4);
    }
}
