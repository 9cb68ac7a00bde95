//! Prometheus metrics, written in the text exposition format by hand: a few
//! counters, one histogram, and gauges read at scrape time need no registry
//! crate, and the label sets are bounded by the configuration (policy names
//! and four outcomes), never by request input.
//!
//! Beside tollgate's own, envoyproxy/ratelimit's per-descriptor statistics
//! (`ratelimit_service_rate_limit_*`), named and labelled as its Prometheus
//! exporter names them (see `EnvoyStats`): their label values may come
//! from requests, so their number is capped by `envoy.stats_max_series`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tollgate::resilience::LeaseStats;

use crate::config::{DEFAULT_STATS_MAX_SERIES, EnvoySettings};

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
pub(crate) const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// State the server does not own (the resilience layer's), read at scrape
/// time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExternalGauges {
    /// The store (`store:`).
    pub main: StoreGauges,
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
    /// Decisions that consulted the deny cache.
    pub deny_cache_lookups: u64,
    /// Store calls that failed or timed out.
    pub store_errors: u64,
    /// `(entries, evictions)` of a memory store; `None` on Redis.
    pub memory: Option<(usize, u64)>,
    /// `(open reservations, reservations evicted)` of a memory store;
    /// `None` on Redis.
    pub reservations: Option<(usize, u64)>,
    /// `(entries, evictions)` of the `local` fallback's in-memory state.
    pub local: (usize, u64),
    /// Times the circuit breaker opened from closed.
    pub breaker_opened: u64,
    /// What leasing did (leased policies only; all zero without them).
    pub leases: LeaseStats,
}

/// The server's metrics. Every update is one or two atomic operations; the
/// per-policy map takes a read lock except the first time a policy is seen.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per policy: each outcome's count, then each outcome's count under
    /// an override.
    decisions: RwLock<HashMap<String, [AtomicU64; 8]>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// Configurations loaded (at start and by reloads): `[success, error]`.
    config_loads: [AtomicU64; 2],
    envoy: EnvoyStats,
    /// Per policy: reservations allowed, denied; units returned, charged,
    /// unpaid by settles.
    reservations: RwLock<HashMap<String, [AtomicU64; 5]>>,
    /// Settles (and cancels) by [`SettleResult`].
    settles: [AtomicU64; 3],
}

/// What a settle (or a cancel) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleResult {
    /// An open reservation, settled now.
    Settled,
    /// A reservation settled before: nothing changed.
    Replayed,
    /// No such reservation (never made, or past its deadline).
    Unknown,
}

impl SettleResult {
    const ALL: [SettleResult; 3] = [
        SettleResult::Settled,
        SettleResult::Replayed,
        SettleResult::Unknown,
    ];

    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            SettleResult::Settled => "settled",
            SettleResult::Replayed => "replayed",
            SettleResult::Unknown => "unknown",
        }
    }
}

/// The per-policy reservation series: `(family, label name, label value)`
/// of each counter, in their order.
const RESERVATION_SERIES: [(&str, &str, &str); 5] = [
    ("tollgate_reservations_total", "outcome", "allowed"),
    ("tollgate_reservations_total", "outcome", "denied"),
    ("tollgate_settle_units_total", "units", "returned"),
    ("tollgate_settle_units_total", "units", "charged"),
    ("tollgate_settle_units_total", "units", "unpaid"),
];

impl Metrics {
    /// Counts one decision of `policy`.
    pub fn decision(&self, policy: &str, outcome: Outcome) {
        self.decision_of(policy, outcome, false);
    }

    /// Counts one decision of `policy`, made under an override of it when
    /// `overridden` (counted in a series of its own, `override="true"`).
    pub fn decision_of(&self, policy: &str, outcome: Outcome, overridden: bool) {
        let i = outcome.index() + if overridden { Outcome::ALL.len() } else { 0 };
        {
            let map = self.decisions.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counters) = map.get(policy) {
                counters[i].fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self.decisions.write().unwrap_or_else(|e| e.into_inner());
        map.entry(policy.to_owned()).or_default()[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one reservation of `policy`, allowed (its estimate charged) or
    /// denied.
    pub fn reservation(&self, policy: &str, allowed: bool) {
        self.reservation_add(policy, usize::from(!allowed), 1);
    }

    /// Counts one settle or cancel by what it found.
    pub fn settle(&self, result: SettleResult) {
        self.settles[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what a settle did to `policy`: units of the estimate given
    /// back, units charged beyond it, units beyond it not charged.
    pub fn settled_units(&self, policy: &str, settled: &tollgate::Settled) {
        for (i, units) in [settled.returned, settled.charged, settled.unpaid]
            .into_iter()
            .enumerate()
        {
            if units > 0 {
                self.reservation_add(policy, 2 + i, units);
            }
        }
    }

    fn reservation_add(&self, policy: &str, i: usize, n: u64) {
        {
            let map = self.reservations.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counters) = map.get(policy) {
                counters[i].fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self.reservations.write().unwrap_or_else(|e| e.into_inner());
        map.entry(policy.to_owned()).or_default()[i].fetch_add(n, Ordering::Relaxed);
    }

    /// `[settled, replayed, unknown]` settles so far.
    pub fn settles(&self) -> [u64; 3] {
        SettleResult::ALL.map(|r| self.settles[r as usize].load(Ordering::Relaxed))
    }

    /// Writes the reservation families: per policy (names from the
    /// configuration) and settles by result.
    fn render_reservations(&self, out: &mut String) {
        let map = self.reservations.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        for (family, help) in [
            (
                "tollgate_reservations_total",
                "Reservations by policy and outcome (allowed: the estimate was charged; denied: nothing was).",
            ),
            (
                "tollgate_settle_units_total",
                "Units settled by policy: returned (estimate not spent, given back), charged (spent beyond the estimate), unpaid (beyond the estimate and past what remained plus max_overdraft: not charged).",
            ),
        ] {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            for name in &names {
                for (i, (series, label, value)) in RESERVATION_SERIES.iter().enumerate() {
                    if *series == family {
                        let n = map[*name][i].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{family}{{policy=\"{}\",{label}=\"{value}\"}} {n}",
                            escape_label(name)
                        );
                    }
                }
            }
        }
        out.push_str(
            "# HELP tollgate_settles_total Settles and cancels by result: settled, replayed (settled before: nothing changed), unknown (no such reservation, or past its deadline).\n\
             # TYPE tollgate_settles_total counter\n",
        );
        for result in SettleResult::ALL {
            let _ = writeln!(
                out,
                "tollgate_settles_total{{result=\"{}\"}} {}",
                result.label(),
                self.settles[result as usize].load(Ordering::Relaxed)
            );
        }
    }

    /// Records the latency of one store call.
    pub fn store_latency(&self, elapsed: Duration) {
        let us = tollgate::clock::micros(elapsed);
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
        self.config_load(ok);
    }

    /// Counts one configuration load, the first included (a reload counts
    /// itself, see [`reload`](Self::reload)).
    pub fn config_load(&self, ok: bool) {
        self.config_loads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Puts the `envoy:` section's bound on statistics in force.
    pub fn envoy_config(&self, settings: &EnvoySettings) {
        self.envoy
            .max_series
            .store(settings.stats_max_series, Ordering::Relaxed);
    }

    /// Counts the hits of one Envoy descriptor under envoyproxy/ratelimit's
    /// statistics key `stat_key` (see [`crate::envoy::Matched::stat_key`]).
    pub fn envoy_hits(&self, stat_key: &str, hits: EnvoyHits) {
        self.envoy.add(stat_key, hits);
    }

    /// Counts one request that global shadow mode answered `OK` although it
    /// was over the limit.
    pub fn envoy_global_shadow(&self) {
        self.envoy
            .global_shadow_mode
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of the series `stat_key` falls in (the overflow series'
    /// when it has none), for tests and tools.
    pub fn envoy_series(&self, stat_key: &str) -> EnvoyHits {
        self.envoy.get(&EnvoyLabels::of(stat_key))
    }

    /// The counters of the overflow series.
    pub fn envoy_overflow(&self) -> EnvoyHits {
        EnvoyHits::load(&self.envoy.overflow)
    }

    /// The number of per-descriptor series (the overflow one not counted).
    pub fn envoy_series_count(&self) -> usize {
        self.envoy
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_labels
            .len()
    }

    /// The number of decisions of `policy` with `outcome` so far, under an
    /// override or not.
    pub fn decisions(&self, policy: &str, outcome: Outcome) -> u64 {
        let map = self.decisions.read().unwrap_or_else(|e| e.into_inner());
        map.get(policy).map_or(0, |c| {
            c[outcome.index()].load(Ordering::Relaxed)
                + c[outcome.index() + Outcome::ALL.len()].load(Ordering::Relaxed)
        })
    }

    /// Every policy's decisions so far by outcome (in [`Outcome`] order),
    /// under an override or not: what the dashboard samples.
    pub fn decision_totals(&self) -> HashMap<String, [u64; 4]> {
        let map = self.decisions.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(name, c)| {
                let total = std::array::from_fn(|i| {
                    c[i].load(Ordering::Relaxed) + c[i + Outcome::ALL.len()].load(Ordering::Relaxed)
                });
                (name.clone(), total)
            })
            .collect()
    }

    /// The store latency histogram: each bucket's count (not cumulative,
    /// in the order of its bounds), then the count of all calls (those
    /// above the largest bound included).
    pub fn latency_counts(&self) -> [u64; LATENCY_BUCKETS_US.len() + 1] {
        std::array::from_fn(|i| match self.latency_buckets.get(i) {
            Some(bucket) => bucket.load(Ordering::Relaxed),
            None => self.latency_count.load(Ordering::Relaxed),
        })
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
            "# HELP tollgate_decisions_total Decisions by policy and outcome; those made under a per-key override in series of their own, labelled override=\"true\".\n\
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
                // Only once a decision was made under an override: a
                // policy's series stay four until then (at most eight).
                let overridden = &map[name][Outcome::ALL.len()..];
                if overridden.iter().any(|c| c.load(Ordering::Relaxed) > 0) {
                    for outcome in Outcome::ALL {
                        let n = overridden[outcome.index()].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "tollgate_decisions_total{{policy=\"{}\",outcome=\"{}\",override=\"true\"}} {n}",
                            escape_label(name),
                            outcome.label()
                        );
                    }
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
        let mut stores = vec![("main", external.main)];
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
        let families: [Family; 10] = [
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
            (
                "tollgate_deny_cache_lookups_total",
                "Decisions that consulted the local deny cache (hits / lookups: its hit ratio).",
                "counter",
                |s| s.deny_cache_lookups,
            ),
            (
                "tollgate_leases_taken_total",
                "Leases taken from the store (one per policy that leased units in a store call).",
                "counter",
                |s| s.leases.taken,
            ),
            (
                "tollgate_lease_units_total",
                "Units leased from the store.",
                "counter",
                |s| s.leases.units,
            ),
            (
                "tollgate_lease_units_returned_total",
                "Units of ended leases given back to the store.",
                "counter",
                |s| s.leases.returned,
            ),
            (
                "tollgate_lease_units_forfeited_total",
                "Units of ended leases neither spent nor given back (expired, revoked, refused or lost with a failed call).",
                "counter",
                |s| s.leases.forfeited,
            ),
            (
                "tollgate_lease_keys",
                "(policy, identity) pairs tracked for leasing.",
                "gauge",
                |s| s.leases.keys as u64,
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
        self.envoy.render(&mut out, &self.config_loads);
        self.render_reservations(&mut out);
        // Memory held against `store.max_keys`, per in-memory state.
        let mut memory = vec![("local", external.main.local)];
        if let Some(main) = external.main.memory {
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
        // Open reservations held against `store.max_reservations`.
        let mut reservations = Vec::new();
        if let Some(held) = external.main.reservations {
            reservations.push(("memory", held));
        }
        if let Some(held) = external.per_second.and_then(|s| s.reservations) {
            reservations.push(("per_second_memory", held));
        }
        if !reservations.is_empty() {
            out.push_str(
                "# HELP tollgate_memory_store_reservations Open reservations held by the memory store (settled ones kept for replays until their deadline included); at most store.max_reservations.\n\
                 # TYPE tollgate_memory_store_reservations gauge\n",
            );
            for (store, (held, _)) in &reservations {
                let _ = writeln!(
                    out,
                    "tollgate_memory_store_reservations{{store=\"{store}\"}} {held}"
                );
            }
            out.push_str(
                "# HELP tollgate_memory_store_reservation_evictions_total Open reservations forgotten early (settled at their estimate) to stay under store.max_reservations.\n\
                 # TYPE tollgate_memory_store_reservation_evictions_total counter\n",
            );
            for (store, (_, evicted)) in &reservations {
                let _ = writeln!(
                    out,
                    "tollgate_memory_store_reservation_evictions_total{{store=\"{store}\"}} {evicted}"
                );
            }
        }
        out
    }
}

/// The hits of one descriptor, by envoyproxy/ratelimit's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvoyHits {
    /// Hits of a matched limit (`unlimited` ones excepted).
    pub total_hits: u64,
    /// Hits over the limit (shadow mode included).
    pub over_limit: u64,
    /// Hits allowed that brought the count above `near_limit_ratio` of
    /// the limit.
    pub near_limit: u64,
    /// Hits allowed.
    pub within_limit: u64,
    /// Hits over the limit of a descriptor in shadow mode.
    pub shadow_mode: u64,
}

impl EnvoyHits {
    /// The statistics in the order of [`ENVOY_STATS`].
    fn values(self) -> [u64; 5] {
        [
            self.total_hits,
            self.over_limit,
            self.near_limit,
            self.within_limit,
            self.shadow_mode,
        ]
    }

    fn load(counters: &[AtomicU64; 5]) -> EnvoyHits {
        let [
            total_hits,
            over_limit,
            near_limit,
            within_limit,
            shadow_mode,
        ] = std::array::from_fn(|i| counters[i].load(Ordering::Relaxed));
        EnvoyHits {
            total_hits,
            over_limit,
            near_limit,
            within_limit,
            shadow_mode,
        }
    }
}

/// envoyproxy/ratelimit's per-descriptor statistics, by their Prometheus
/// names (its exporter's default mapping).
const ENVOY_STATS: [(&str, &str); 5] = [
    (
        "ratelimit_service_rate_limit_total_hits",
        "Hits of Envoy descriptors that matched a limit (envoyproxy/ratelimit's total_hits).",
    ),
    (
        "ratelimit_service_rate_limit_over_limit",
        "Hits of Envoy descriptors over their limit, shadow mode included (over_limit).",
    ),
    (
        "ratelimit_service_rate_limit_near_limit",
        "Allowed hits of Envoy descriptors above envoy.near_limit_ratio of their limit (near_limit).",
    ),
    (
        "ratelimit_service_rate_limit_within_limit",
        "Allowed hits of Envoy descriptors (within_limit).",
    ),
    (
        "ratelimit_service_rate_limit_shadow_mode",
        "Hits over the limit of Envoy descriptors in shadow mode (shadow_mode).",
    ),
];

/// The most bytes of label values one per-descriptor series may hold: a
/// series beyond it is counted in the overflow series, so the statistics
/// hold at most `envoy.stats_max_series` times this many bytes of labels
/// (and as many of raw statistics keys, see `Series::by_key`).
pub const ENVOY_MAX_LABEL_BYTES: usize = 1024;

/// The label value of the overflow series, in `domain` and `key1`.
pub const ENVOY_OVERFLOW_LABEL: &str = "tollgate_overflow";

/// The labels envoyproxy/ratelimit's Prometheus exporter gives a
/// statistics key: it sanitises the key (`:` and `|` become `_`, and so do
/// the dots of anything shaped like an IPv4 address), splits it at dots, and
/// labels the first part `domain`, the second `key1` and, when there are
/// more, the third `key2` (the rest is not a label).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EnvoyLabels {
    domain: String,
    key1: String,
    key2: Option<String>,
}

impl EnvoyLabels {
    fn of(stat_key: &str) -> EnvoyLabels {
        let sanitised = sanitise_stat_name(stat_key);
        let mut parts = sanitised.split('.');
        EnvoyLabels {
            domain: parts.next().unwrap_or_default().to_owned(),
            key1: parts.next().unwrap_or_default().to_owned(),
            key2: parts.next().map(str::to_owned),
        }
    }
}

/// envoyproxy/ratelimit's statistics name sanitising: `:` and `|` become
/// `_`, and so do the dots of every run shaped like an IPv4 address
/// (`\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}`, leftmost first).
fn sanitise_stat_name(name: &str) -> String {
    let bytes: Vec<u8> = name
        .bytes()
        .map(|b| if b == b':' || b == b'|' { b'_' } else { b })
        .collect();
    let mut out = bytes.clone();
    let mut i = 0;
    while i < bytes.len() {
        match ipv4_at(&bytes[i..], 0) {
            Some(len) => {
                for b in &mut out[i..i + len] {
                    if *b == b'.' {
                        *b = b'_';
                    }
                }
                i += len;
            }
            None => i += 1,
        }
    }
    // Only ASCII bytes were replaced by ASCII bytes.
    String::from_utf8(out).unwrap_or_else(|_| name.to_owned())
}

/// The length of the IPv4-shaped run at the start of `text`, groups
/// `group..4` still to match, trying longer runs of digits first (as a
/// backtracking greedy `\d{1,3}` does).
fn ipv4_at(text: &[u8], group: usize) -> Option<usize> {
    let digits = text
        .iter()
        .take(3)
        .take_while(|b| b.is_ascii_digit())
        .count();
    for len in (1..=digits).rev() {
        if group == 3 {
            return Some(len);
        }
        if text.get(len) == Some(&b'.') {
            if let Some(rest) = ipv4_at(&text[len + 1..], group + 1) {
                return Some(len + 1 + rest);
            }
        }
    }
    None
}

/// envoyproxy/ratelimit's per-descriptor statistics, with at most
/// `max_series` label sets; hits of further ones go to `overflow`.
#[derive(Debug)]
struct EnvoyStats {
    max_series: AtomicUsize,
    series: RwLock<Series>,
    overflow: [AtomicU64; 5],
    global_shadow_mode: AtomicU64,
}

/// The series by their labels, and the same counters by the raw statistics
/// keys seen so far: a hit whose key was seen before costs one lookup and
/// no allocation (sanitising a key into labels allocates).
#[derive(Debug, Default)]
struct Series {
    by_labels: HashMap<EnvoyLabels, Arc<[AtomicU64; 5]>>,
    /// Several keys may share a series (`:` and `|` both become `_`, parts
    /// after the third are not labels), so this map has its own cap,
    /// `max_series`, and holds only keys of at most
    /// [`ENVOY_MAX_LABEL_BYTES`]: a key it cannot hold is still counted,
    /// through its labels.
    by_key: HashMap<Box<str>, Arc<[AtomicU64; 5]>>,
}

impl Default for EnvoyStats {
    fn default() -> Self {
        EnvoyStats {
            max_series: AtomicUsize::new(DEFAULT_STATS_MAX_SERIES),
            series: RwLock::default(),
            overflow: Default::default(),
            global_shadow_mode: AtomicU64::default(),
        }
    }
}

impl EnvoyStats {
    fn add(&self, stat_key: &str, hits: EnvoyHits) {
        let bump = |counters: &[AtomicU64; 5]| {
            for (counter, n) in counters.iter().zip(hits.values()) {
                if n > 0 {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
            }
        };
        let max_series = self.max_series.load(Ordering::Relaxed);
        let labels = {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counters) = series.by_key.get(stat_key) {
                bump(counters);
                return;
            }
            let labels = EnvoyLabels::of(stat_key);
            // Whatever needs no new entry is counted under the read lock,
            // so request values a client varies (a key the raw-key map is
            // full for, a series past the cap) never contend for the
            // write lock: a known series whose key cannot be remembered,
            // and a new series that cannot be kept (the overflow).
            let keep_key =
                series.by_key.len() < max_series && stat_key.len() <= ENVOY_MAX_LABEL_BYTES;
            match series.by_labels.get(&labels) {
                Some(counters) if !keep_key => {
                    bump(counters);
                    return;
                }
                Some(_) => {}
                None if series.by_labels.len() >= max_series
                    || labels.len() > ENVOY_MAX_LABEL_BYTES =>
                {
                    bump(&self.overflow);
                    return;
                }
                None => {}
            }
            labels
        };
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        let Series { by_labels, by_key } = &mut *series;
        // Checked again: another thread may have filled the map meanwhile.
        let counters = match by_labels.get(&labels) {
            Some(counters) => Arc::clone(counters),
            None if by_labels.len() >= max_series => {
                bump(&self.overflow);
                return;
            }
            None => Arc::clone(by_labels.entry(labels).or_default()),
        };
        bump(&counters);
        if by_key.len() < max_series && stat_key.len() <= ENVOY_MAX_LABEL_BYTES {
            by_key.insert(stat_key.into(), counters);
        }
    }

    fn get(&self, labels: &EnvoyLabels) -> EnvoyHits {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        EnvoyHits::load(series.by_labels.get(labels).map_or(&self.overflow, |c| c))
    }

    fn render(&self, out: &mut String, config_loads: &[AtomicU64; 2]) {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut series: Vec<(&EnvoyLabels, &[AtomicU64; 5])> =
            map.by_labels.iter().map(|(l, c)| (l, &**c)).collect();
        series.sort_by(|a, b| a.0.cmp_key().cmp(&b.0.cmp_key()));
        let overflow = EnvoyLabels {
            domain: ENVOY_OVERFLOW_LABEL.to_owned(),
            key1: ENVOY_OVERFLOW_LABEL.to_owned(),
            key2: None,
        };
        let overflowed = self.overflow[0].load(Ordering::Relaxed) > 0;
        for (i, (name, help)) in ENVOY_STATS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let all = series
                .iter()
                .copied()
                .chain(overflowed.then_some((&overflow, &self.overflow)));
            for (labels, counters) in all {
                let _ = write!(
                    out,
                    "{name}{{domain=\"{}\",key1=\"{}\"",
                    escape_label(&labels.domain),
                    escape_label(&labels.key1)
                );
                if let Some(key2) = &labels.key2 {
                    let _ = write!(out, ",key2=\"{}\"", escape_label(key2));
                }
                let _ = writeln!(out, "}} {}", counters[i].load(Ordering::Relaxed));
            }
        }
        let _ = write!(
            out,
            "# HELP ratelimit_service_global_shadow_mode Envoy requests over the limit answered OK by envoy.shadow_mode.\n\
             # TYPE ratelimit_service_global_shadow_mode counter\n\
             ratelimit_service_global_shadow_mode {}\n\
             # HELP ratelimit_service_config_load_success Configurations loaded, at start and by reloads.\n\
             # TYPE ratelimit_service_config_load_success counter\n\
             ratelimit_service_config_load_success {}\n\
             # HELP ratelimit_service_config_load_error Configurations refused, at start and by reloads.\n\
             # TYPE ratelimit_service_config_load_error counter\n\
             ratelimit_service_config_load_error {}\n",
            self.global_shadow_mode.load(Ordering::Relaxed),
            config_loads[0].load(Ordering::Relaxed),
            config_loads[1].load(Ordering::Relaxed),
        );
    }
}

impl EnvoyLabels {
    /// The bytes of its label values.
    fn len(&self) -> usize {
        self.domain.len() + self.key1.len() + self.key2.as_ref().map_or(0, String::len)
    }

    fn cmp_key(&self) -> (&str, &str, Option<&str>) {
        (&self.domain, &self.key1, self.key2.as_deref())
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
        assert!(text.contains(
            "# TYPE tollgate_deny_cache_lookups_total counter\ntollgate_deny_cache_lookups_total 0\n"
        ));
        assert_eq!(seconds(0), "0");
    }

    #[test]
    fn renders_the_reservation_families() {
        let metrics = Metrics::default();
        metrics.reservation("tokens", true);
        metrics.reservation("tokens", true);
        metrics.reservation("tokens", false);
        metrics.settle(SettleResult::Settled);
        metrics.settle(SettleResult::Unknown);
        metrics.settle(SettleResult::Unknown);
        let settled = tollgate::Settled {
            returned: 5,
            charged: 7,
            unpaid: 2,
        };
        metrics.settled_units("tokens", &settled);
        metrics.settled_units("tokens", &settled);
        let gauges = StoreGauges {
            memory: Some((0, 0)),
            reservations: Some((3, 1)),
            ..StoreGauges::default()
        };
        let text = metrics.render(ExternalGauges {
            main: gauges,
            per_second: None,
        });
        for line in [
            "# TYPE tollgate_reservations_total counter\n",
            "tollgate_reservations_total{policy=\"tokens\",outcome=\"allowed\"} 2\n",
            "tollgate_reservations_total{policy=\"tokens\",outcome=\"denied\"} 1\n",
            "tollgate_settle_units_total{policy=\"tokens\",units=\"returned\"} 10\n",
            "tollgate_settle_units_total{policy=\"tokens\",units=\"charged\"} 14\n",
            "tollgate_settle_units_total{policy=\"tokens\",units=\"unpaid\"} 4\n",
            "tollgate_settles_total{result=\"settled\"} 1\n",
            "tollgate_settles_total{result=\"replayed\"} 0\n",
            "tollgate_settles_total{result=\"unknown\"} 2\n",
            "tollgate_memory_store_reservations{store=\"memory\"} 3\n",
            "tollgate_memory_store_reservation_evictions_total{store=\"memory\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert_eq!(metrics.settles(), [1, 0, 2]);
        // A family's TYPE line appears once, whatever the policies.
        assert_eq!(
            text.matches("# TYPE tollgate_settle_units_total").count(),
            1
        );
        // Redis has no reservation gauges.
        let redis = metrics.render(ExternalGauges::default());
        assert!(!redis.contains("tollgate_memory_store_reservations"));
    }

    /// The lease series from a real leasing layer (the library's
    /// `Resilient` over a memory store): a hot key takes leases, a check
    /// costing more than the lease holds gives the rest back, and an
    /// expired lease is forfeited.
    #[tokio::test]
    async fn lease_counters_come_from_the_leasing_layer() {
        use tollgate::resilience::{ResilienceOptions, Resilient};
        use tollgate::{Lease, Limiter, ManualClock, MemoryStore, Policy};

        let clock = ManualClock::new(1_000_000);
        let store = Resilient::new(
            MemoryStore::builder().clock(clock.clone()).build(),
            ResilienceOptions::default().clock(clock.clone()),
        );
        let policy = "fixed_window 100000/1h"
            .parse::<Policy>()
            .expect("valid")
            .with_lease(Lease::new(100, Duration::from_secs(1)).expect("valid"))
            .expect("leases");
        let limiter = Limiter::builder(store).policy("hot", policy).build();
        let check = |cost| limiter.check("hot", "k", cost);
        for _ in 0..200 {
            clock.advance(Duration::from_micros(10));
            assert!(check(1).await.expect("decides").allowed);
        }
        // More than any lease holds: a store call that gives the rest back.
        assert!(check(500).await.expect("decides").allowed);
        for _ in 0..200 {
            clock.advance(Duration::from_micros(10));
            assert!(check(1).await.expect("decides").allowed);
        }
        // The lease held now outlives its ttl: the next store call forfeits it.
        clock.advance(Duration::from_secs(2));
        assert!(check(500).await.expect("decides").allowed);
        let leases = limiter.store().stats().leases;
        assert!(leases.taken > 0, "{leases:?}");
        assert!(leases.returned > 0, "{leases:?}");
        assert!(leases.forfeited > 0, "{leases:?}");
        assert!(leases.keys > 0, "{leases:?}");
        let text = Metrics::default().render(ExternalGauges {
            main: StoreGauges {
                leases,
                ..StoreGauges::default()
            },
            per_second: None,
        });
        for (name, kind, value) in [
            ("tollgate_leases_taken_total", "counter", leases.taken),
            ("tollgate_lease_units_total", "counter", leases.units),
            (
                "tollgate_lease_units_returned_total",
                "counter",
                leases.returned,
            ),
            (
                "tollgate_lease_units_forfeited_total",
                "counter",
                leases.forfeited,
            ),
            ("tollgate_lease_keys", "gauge", leases.keys as u64),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n{name} {value}\n")),
                "{name}:\n{text}"
            );
        }
    }

    #[test]
    fn renders_lease_counters_per_store() {
        let mut main = StoreGauges::default();
        main.leases.taken = 3;
        main.leases.units = 40;
        main.leases.returned = 5;
        main.leases.forfeited = 7;
        main.leases.keys = 2;
        let metrics = Metrics::default();
        let text = metrics.render(ExternalGauges {
            main,
            per_second: None,
        });
        for line in [
            "# TYPE tollgate_leases_taken_total counter\ntollgate_leases_taken_total 3\n",
            "# TYPE tollgate_lease_units_total counter\ntollgate_lease_units_total 40\n",
            "tollgate_lease_units_returned_total 5\n",
            "tollgate_lease_units_forfeited_total 7\n",
            "# TYPE tollgate_lease_keys gauge\ntollgate_lease_keys 2\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        // With a per-second store, one series per store.
        let text = metrics.render(ExternalGauges {
            main,
            per_second: Some(StoreGauges::default()),
        });
        for line in [
            "tollgate_leases_taken_total{store=\"main\"} 3\n",
            "tollgate_leases_taken_total{store=\"per_second\"} 0\n",
            "tollgate_lease_keys{store=\"per_second\"} 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn statistics_keys_become_envoyproxy_ratelimit_s_labels() {
        // `:` and `|` become `_`; so do the dots of IPv4-shaped runs,
        // found leftmost first with backtracking digits, and nothing else.
        assert_eq!(sanitise_stat_name("d.k_a:b|c"), "d.k_a_b_c");
        assert_eq!(sanitise_stat_name("d.ip_10.0.0.1.x"), "d.ip_10_0_0_1.x");
        assert_eq!(sanitise_stat_name("d.v_1234.5.6.7"), "d.v_1234_5_6_7");
        assert_eq!(sanitise_stat_name("d.v_1.2.3"), "d.v_1.2.3");
        assert_eq!(
            sanitise_stat_name("d.v_1.2.3.4.5.6.7.8"),
            "d.v_1_2_3_4.5_6_7_8"
        );
        assert_eq!(sanitise_stat_name("d.é.1.2.3.4"), "d.é.1_2_3_4");
        let labels = EnvoyLabels::of("dom.a_1.b_2.c_3");
        assert_eq!(
            (
                labels.domain.as_str(),
                labels.key1.as_str(),
                labels.key2.as_deref()
            ),
            ("dom", "a_1", Some("b_2"))
        );
        assert_eq!(EnvoyLabels::of("dom.a").key2, None);
    }

    /// Metrics that keep at most two Envoy series (and two raw keys).
    fn two_envoy_series() -> Metrics {
        let metrics = Metrics::default();
        metrics.envoy_config(&EnvoySettings {
            stats_max_series: 2,
            ..EnvoySettings::default()
        });
        metrics
    }

    #[test]
    fn a_known_series_counts_every_raw_key_once_the_raw_key_map_is_full() {
        let metrics = two_envoy_series();
        let hit = EnvoyHits {
            total_hits: 1,
            ..EnvoyHits::default()
        };
        // Parts after the third are not labels: one series, many raw keys,
        // as a client varying a later descriptor entry makes them.
        for i in 0..3 {
            metrics.envoy_hits(&format!("d.k1_v1.k2_v2.k3_{i}"), hit);
        }
        // From now on no raw key is new to the map's cap: every hit is
        // counted under the read lock, so a reader holding it (here: this
        // test) never makes a hit wait.
        let metrics = std::sync::Arc::new(metrics);
        let reader = metrics.envoy.series.read().expect("lock");
        let (done, finished) = std::sync::mpsc::channel();
        let writer = std::sync::Arc::clone(&metrics);
        let hits = std::thread::spawn(move || {
            for i in 3..10 {
                writer.envoy_hits(&format!("d.k1_v1.k2_v2.k3_{i}"), hit);
            }
            done.send(()).expect("send");
        });
        let counted = finished.recv_timeout(std::time::Duration::from_secs(5));
        drop(reader);
        hits.join().expect("hits");
        assert!(counted.is_ok(), "a hit waited for the write lock");
        assert_eq!(metrics.envoy_series_count(), 1);
        assert_eq!(metrics.envoy_series("d.k1_v1.k2_v2").total_hits, 10);
        assert_eq!(metrics.envoy_overflow().total_hits, 0);
        let series = metrics.envoy.series.read().expect("lock");
        assert_eq!(series.by_key.len(), 2, "the raw-key map keeps its cap");
    }

    #[test]
    fn envoy_series_are_capped_and_the_rest_overflows() {
        let metrics = two_envoy_series();
        let hit = EnvoyHits {
            total_hits: 1,
            within_limit: 1,
            ..EnvoyHits::default()
        };
        let long = format!("d.{}", "x".repeat(ENVOY_MAX_LABEL_BYTES));
        for key in [long.as_str(), "d.a", "d.b", "d.c", "d.a", "d.d"] {
            metrics.envoy_hits(key, hit);
        }
        assert_eq!(metrics.envoy_series_count(), 2);
        assert_eq!(metrics.envoy_series("d.a").total_hits, 2);
        // The over-long one, then two past the cap.
        assert_eq!(metrics.envoy_overflow().total_hits, 3);
        let text = metrics.render(ExternalGauges::default());
        assert!(text.contains(
            "ratelimit_service_rate_limit_within_limit{domain=\"tollgate_overflow\",key1=\"tollgate_overflow\"} 3\n"
        ));
    }
}
