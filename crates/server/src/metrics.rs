//! Prometheus metrics, written in the text exposition format by hand: a few
//! counters, one histogram, and gauges read at scrape time need no registry
//! crate, and the label sets are bounded by the configuration (policy names
//! and four outcomes), never by request input.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What happened to one policy's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed by the store.
    Allowed,
    /// Denied (and enforced).
    Denied,
    /// Decided without the shared store (failure mode `open`, `closed` or
    /// `local`).
    Degraded,
    /// Denied by a descriptor in shadow mode: reported, not enforced.
    Shadow,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Allowed,
        Outcome::Denied,
        Outcome::Degraded,
        Outcome::Shadow,
    ];

    const fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Degraded => "degraded",
            Outcome::Shadow => "shadow",
        }
    }
}

/// Upper bounds of the store latency buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// State the server does not own (the resilience layer's), read at scrape
/// time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExternalGauges {
    /// 0 closed, 1 open, 2 half-open.
    pub circuit_state: u8,
    /// Decisions answered by the deny cache.
    pub deny_cache_hits: u64,
    /// Store calls that failed or timed out.
    pub store_errors: u64,
    /// `(entries, evictions)` of the memory store; `None` on Redis.
    pub memory: Option<(usize, u64)>,
    /// `(entries, evictions)` of the `local` fallback's in-memory state.
    pub local: (usize, u64),
    /// Times the circuit breaker opened from closed.
    pub breaker_opened: u64,
    /// The per-second store's (`store.per_second`), if configured: then
    /// every store series carries `store="main"` or `store="per_second"`.
    pub per_second: Option<StoreGauges>,
}

/// One store's state for [`ExternalGauges`], read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// 0 closed, 1 open, 2 half-open.
    pub circuit_state: u8,
    /// Decisions answered by the deny cache.
    pub deny_cache_hits: u64,
    /// Store calls that failed or timed out.
    pub store_errors: u64,
    /// `(entries, evictions)` of a memory store; `None` on Redis.
    pub memory: Option<(usize, u64)>,
    /// `(entries, evictions)` of the `local` fallback's in-memory state.
    pub local: (usize, u64),
    /// Times the circuit breaker opened from closed.
    pub breaker_opened: u64,
}

/// The server's metrics. Every update is one or two atomic operations; the
/// per-policy map takes a read lock except the first time a policy is seen.
#[derive(Debug, Default)]
pub struct Metrics {
    decisions: RwLock<HashMap<String, [AtomicU64; 4]>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl Metrics {
    /// Counts one decision of `policy`.
    pub fn decision(&self, policy: &str, outcome: Outcome) {
        {
            let map = self.decisions.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counters) = map.get(policy) {
                counters[outcome.index()].fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self.decisions.write().unwrap_or_else(|e| e.into_inner());
        map.entry(policy.to_owned()).or_default()[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the latency of one store call.
    pub fn store_latency(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts one configuration reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The number of decisions of `policy` with `outcome` so far.
    pub fn decisions(&self, policy: &str, outcome: Outcome) -> u64 {
        let map = self.decisions.read().unwrap_or_else(|e| e.into_inner());
        map.get(policy)
            .map_or(0, |c| c[outcome.index()].load(Ordering::Relaxed))
    }

    /// `(successful, failed)` reloads so far.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reload_failures.load(Ordering::Relaxed),
        )
    }

    /// The metrics in Prometheus text format (version 0.0.4).
    pub fn render(&self, external: ExternalGauges) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP tollgate_decisions_total Decisions by policy and outcome.\n\
             # TYPE tollgate_decisions_total counter\n",
        );
        {
            let map = self.decisions.read().unwrap_or_else(|e| e.into_inner());
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            for name in names {
                for outcome in Outcome::ALL {
                    let n = map[name][outcome.index()].load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "tollgate_decisions_total{{policy=\"{}\",outcome=\"{}\"}} {n}",
                        escape_label(name),
                        outcome.label()
                    );
                }
            }
        }
        out.push_str(
            "# HELP tollgate_store_latency_seconds Latency of store calls.\n\
             # TYPE tollgate_store_latency_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS_US.iter().zip(&self.latency_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "tollgate_store_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
                seconds(*bound)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "tollgate_store_latency_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             tollgate_store_latency_seconds_sum {}\n\
             tollgate_store_latency_seconds_count {count}",
            seconds(self.latency_sum_us.load(Ordering::Relaxed))
        );
        let (reloads, failures) = self.reloads();
        // One series per store; labelled only when there are two, so a
        // single store's series are as they always were.
        let main = StoreGauges {
            circuit_state: external.circuit_state,
            deny_cache_hits: external.deny_cache_hits,
            store_errors: external.store_errors,
            memory: external.memory,
            local: external.local,
            breaker_opened: external.breaker_opened,
        };
        let mut stores = vec![("main", main)];
        if let Some(per_second) = external.per_second {
            stores.push(("per_second", per_second));
        }
        let labelled = stores.len() > 1;
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&StoreGauges) -> u64,
        );
        let families: [Family; 4] = [
            (
                "tollgate_store_errors_total",
                "Store calls that failed (timeouts included).",
                "counter",
                |s| s.store_errors,
            ),
            (
                "tollgate_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                "gauge",
                |s| u64::from(s.circuit_state),
            ),
            (
                "tollgate_circuit_breaker_opened_total",
                "Times the circuit breaker opened from closed.",
                "counter",
                |s| s.breaker_opened,
            ),
            (
                "tollgate_deny_cache_hits_total",
                "Decisions answered by the local deny cache.",
                "counter",
                |s| s.deny_cache_hits,
            ),
        ];
        for (name, help, kind, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (store, gauges) in &stores {
                let labels = if labelled {
                    format!("{{store=\"{store}\"}}")
                } else {
                    String::new()
                };
                let _ = writeln!(out, "{name}{labels} {}", value(gauges));
            }
        }
        let _ = write!(
            out,
            "# HELP tollgate_config_reloads_total Configuration reloads by result.\n\
             # TYPE tollgate_config_reloads_total counter\n\
             tollgate_config_reloads_total{{result=\"success\"}} {reloads}\n\
             tollgate_config_reloads_total{{result=\"failure\"}} {failures}\n",
        );
        // Memory held against `store.max_keys`, per in-memory state.
        let mut memory = vec![("local", external.local)];
        if let Some(main) = external.memory {
            memory.insert(0, ("memory", main));
        }
        if let Some(per_second) = &external.per_second {
            if let Some(held) = per_second.memory {
                memory.push(("per_second_memory", held));
            }
            memory.push(("per_second_local", per_second.local));
        }
        out.push_str(
            "# HELP tollgate_memory_store_keys Entries held in memory, by store (memory: the store; local: the fallback's state); at most store.max_keys each.\n\
             # TYPE tollgate_memory_store_keys gauge\n",
        );
        for (store, (keys, _)) in &memory {
            let _ = writeln!(
                out,
                "tollgate_memory_store_keys{{store=\"{store}\"}} {keys}"
            );
        }
        out.push_str(
            "# HELP tollgate_memory_store_evictions_total Live entries evicted to stay under store.max_keys (each such identity starts fresh).\n\
             # TYPE tollgate_memory_store_evictions_total counter\n",
        );
        for (store, (_, evictions)) in &memory {
            let _ = writeln!(
                out,
                "tollgate_memory_store_evictions_total{{store=\"{store}\"}} {evictions}"
            );
        }
        out
    }
}

/// Microseconds as decimal seconds, exactly.
fn seconds(us: u64) -> String {
    let text = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let metrics = Metrics::default();
        metrics.decision("api", Outcome::Allowed);
        metrics.decision("api", Outcome::Allowed);
        metrics.decision("a\"b", Outcome::Denied);
        metrics.store_latency(Duration::from_micros(300));
        metrics.reload(true);
        metrics.reload(false);
        let text = metrics.render(ExternalGauges::default());
        assert!(text.contains("tollgate_decisions_total{policy=\"api\",outcome=\"allowed\"} 2\n"));
        assert!(
            text.contains("tollgate_decisions_total{policy=\"a\\\"b\",outcome=\"denied\"} 1\n")
        );
        assert!(text.contains("tollgate_store_latency_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text.contains("tollgate_store_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("tollgate_store_latency_seconds_sum 0.0003\n"));
        assert!(text.contains("tollgate_store_latency_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("tollgate_config_reloads_total{result=\"failure\"} 1\n"));
        assert_eq!(seconds(0), "0");
    }
}
