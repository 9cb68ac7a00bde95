//! What the dashboard shows, and `GET /v1/stats`, the JSON behind it
//! (docs/DASHBOARD.md).
//!
//! Nothing here is on the path of a decision except [`Hitters::denied`]
//! (called by [`App`] for each enforced denial): the per-policy series are
//! sampled once a second from the counters `/metrics` serves, by
//! [`sample`], a background task, into fixed rings; store latency
//! percentiles come from the deltas of the latency histogram's buckets over
//! the last minute. Everything is bounded by the configuration's policies
//! (at most [`MAX_POLICIES`]), [`SERIES_LEN`] samples and [`TOP_DENIED`]
//! keys of at most [`KEY_BYTES`] bytes each.
//!
//! Access follows one rule for `/metrics` and `/v1/stats`:
//! [`admit_reader`]. The page (`crate::dashboard`) holds no figures and is
//! served to anyone while the dashboard is enabled ([`dashboard_enabled`]);
//! it asks for the token when `/v1/stats` does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use tollgate::Policy;
use tollgate::answer::ceil_millis;

use crate::app::{App, Loaded};
use crate::config::{Config, ConfigSource, ServerSettings, StoreKind};
use crate::hitters::{Hitter, Hitters, WINDOW_SECS};
pub use crate::hitters::{KEY_BYTES, MAX_POLICIES};
use crate::http::{Problem, admit_admin_request};
use crate::metrics::{LATENCY_BUCKETS_US, Outcome};

/// The time between two samples of the series (`interval_ms`).
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept per series: five minutes.
pub const SERIES_LEN: usize = 300;
/// Keys listed per policy in `top_denied`.
pub const TOP_DENIED: usize = 10;
/// Latency snapshots kept: a minute of deltas.
const LATENCY_SNAPSHOTS: usize = 61;

/// The one access rule of everything that reads the server's state:
/// `/metrics` (on the HTTP port and on `server.metrics`'s listener) and
/// `GET /v1/stats` (the dashboard's figures). Open by default, as `/metrics`
/// always was; with `server.metrics_auth: true`, `Authorization: Bearer
/// <admin_token>` as the admin endpoints take it (`401` otherwise).
///
/// # Errors
/// The [`Problem`] to answer.
pub fn admit_reader(server: &ServerSettings, headers: &HeaderMap) -> Result<(), Problem> {
    if !server.metrics_auth {
        return Ok(());
    }
    admit_admin_request(server.admin_token.as_deref(), headers, false)
}

/// Whether the dashboard is on: `404` when `server.dashboard.enabled` is
/// `false`, for `/v1/stats` and for the page and its files alike.
///
/// # Errors
/// The [`Problem`] to answer.
pub fn dashboard_enabled(loaded: &Loaded) -> Result<(), Problem> {
    if loaded.config.server.dashboard.enabled {
        Ok(())
    } else {
        Err(Problem::not_found(
            "the dashboard is disabled (server.dashboard.enabled: false)",
        ))
    }
}

/// Admits a request to `/v1/stats`: [`dashboard_enabled`], then
/// [`admit_reader`]. Returns the configuration in force.
///
/// # Errors
/// The [`Problem`] to answer.
pub fn admit_dashboard(app: &App, headers: &HeaderMap) -> Result<Arc<Loaded>, Problem> {
    let loaded = app.current();
    dashboard_enabled(&loaded)?;
    admit_reader(&loaded.config.server, headers)?;
    Ok(loaded)
}

/// `GET /v1/stats`.
pub async fn stats(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let loaded = match admit_dashboard(&app, &headers) {
        Ok(loaded) => loaded,
        Err(problem) => return problem.into_response(),
    };
    match app.dashboard().document(&app, &loaded) {
        Ok(body) => (
            [
                (CONTENT_TYPE, "application/json"),
                (CACHE_CONTROL, "no-store"),
                (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body.to_string(),
        )
            .into_response(),
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The fields every description of a policy shares (`/v1/policies`,
/// `/v1/stats`): `name`, `algorithm`, `limit`, `period_ms`, `burst` (for
/// the algorithms that have one) and `lease`.
pub fn policy_fields(name: &str, policy: &Policy) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(fields) = serde_json::json!({
        "name": name,
        "algorithm": policy.algorithm().name(),
        "limit": policy.limit(),
        "period_ms": ceil_millis(policy.period()),
        "burst": policy.algorithm().has_burst().then(|| policy.burst()),
        "lease": policy.lease().map(|l| serde_json::json!({
            "max": l.max(),
            "ttl_ms": ceil_millis(l.ttl()),
        })),
        // `null`: the algorithm cannot be reserved.
        "max_overdraft": tollgate::algorithm::can_reserve(policy.algorithm())
            .then(|| policy.max_overdraft()),
    }) else {
        unreachable!("a json! object is an object")
    };
    fields
}

/// The policies the dashboard shows, in order: the named ones by name,
/// then each Envoy domain's inline limits (domains by name), under the
/// names `/metrics` counts them by; at most [`MAX_POLICIES`]. The second
/// value is how many more there are.
fn shown_policies(config: &Config) -> (Vec<(&str, &Policy, bool)>, usize) {
    let mut domains: Vec<_> = config.domains.values().collect();
    domains.sort_by(|a, b| a.name().cmp(b.name()));
    let all = config
        .policies
        .iter()
        .map(|(name, policy)| (name.as_str(), policy, false))
        .chain(domains.into_iter().flat_map(|d| {
            d.inline_policies()
                .map(|(name, policy)| (name, policy, config.envoy.shadow_mode || d.shadows(name)))
        }));
    let mut shown = Vec::new();
    let mut more = 0;
    for policy in all {
        if shown.len() < MAX_POLICIES {
            shown.push(policy);
        } else {
            more += 1;
        }
    }
    (shown, more)
}

/// One policy's series: decisions per second by outcome, oldest first.
#[derive(Debug)]
struct Ring {
    /// The totals at the latest sample.
    last: [u64; 4],
    samples: VecDeque<[u32; 4]>,
}

#[derive(Debug, Default)]
struct Series {
    /// Samples in every ring (rings of policies added later are padded
    /// with zeros, so every series of a response has the same length).
    len: usize,
    by_policy: HashMap<String, Ring>,
    /// Latency bucket counts (and the total) as of each sample.
    latency: VecDeque<[u64; LATENCY_BUCKETS_US.len() + 1]>,
    /// Whether a sample was ever taken (kept when the dashboard is turned
    /// off): only the process's first sample counts from the start.
    sampled_before: bool,
}

/// When the configuration was loaded and the last error.
#[derive(Debug, Default, Clone)]
struct ConfigStatus {
    loaded_ms: u64,
    last_error: Option<String>,
    last_error_ms: Option<u64>,
}

/// The dashboard's state: the heavy-hitters sketches, the series, and the
/// configuration's load history. One per [`App`].
#[derive(Debug)]
pub struct Dashboard {
    /// The keys denied most, per policy (written on the decision path).
    hitters: Hitters,
    /// Since when the sketches' epochs count.
    started: Instant,
    started_ms: u64,
    /// Written by the sampler once a second, read by `/v1/stats`.
    series: Mutex<Series>,
    config: Mutex<ConfigStatus>,
    /// Moves with every sample and configuration load: what the document
    /// is built from changed.
    generation: AtomicU64,
    /// The latest document, with the generation and configuration it was
    /// built from: `/v1/stats` builds one at most once per sample
    /// (building one for 1000 policies takes milliseconds), however often
    /// clients ask.
    document: Mutex<Option<Built>>,
}

/// A `/v1/stats` document and what it was built from.
#[derive(Debug)]
struct Built {
    generation: u64,
    /// The configuration in force then (compared by address: a reload
    /// installs a new one).
    config: usize,
    body: Arc<str>,
}

impl Default for Dashboard {
    fn default() -> Self {
        let now = unix_ms();
        Dashboard {
            hitters: Hitters::default(),
            started: Instant::now(),
            started_ms: now,
            series: Mutex::new(Series::default()),
            config: Mutex::new(ConfigStatus {
                loaded_ms: now,
                ..ConfigStatus::default()
            }),
            generation: AtomicU64::new(0),
            document: Mutex::new(None),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, tollgate::clock::millis)
}

impl Dashboard {
    /// The heavy-hitters sketches.
    pub fn hitters(&self) -> &Hitters {
        &self.hitters
    }

    /// Records a configuration load (at start or by a reload): when it
    /// succeeded, or why it failed.
    pub fn config_loaded(&self, result: Result<(), String>) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        let mut status = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => status.loaded_ms = unix_ms(),
            Err(error) => {
                status.last_error = Some(error);
                status.last_error_ms = Some(unix_ms());
            }
        }
    }

    /// Takes one sample: each policy's decisions since the last one, the
    /// latency histogram, and the sketches' epoch. With the dashboard
    /// disabled, drops everything instead.
    pub fn tick(&self, app: &App) {
        let loaded = app.current();
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::Relaxed);
        if !loaded.config.server.dashboard.enabled {
            // A tick while off still counts as the process's first: a
            // dashboard first turned on by a reload counts from then, not
            // everything since the start as one second.
            *series = Series {
                sampled_before: true,
                ..Series::default()
            };
            self.hitters.retain(|_| false);
            return;
        }
        self.hitters
            .set_epoch(self.started.elapsed().as_secs() / WINDOW_SECS);
        let totals = app.metrics().decision_totals();
        let (shown, _) = shown_policies(&loaded.config);
        let names: HashSet<&str> = shown.iter().map(|(name, _, _)| *name).collect();
        let series = &mut *series;
        // The process's first sample counts everything since the start; a
        // policy that appears later (by a reload, or the dashboard turned
        // on again) counts from now, whatever was decided before.
        let first = !series.sampled_before;
        series.sampled_before = true;
        series.len = (series.len + 1).min(SERIES_LEN);
        for (name, _, _) in &shown {
            let now = totals.get(*name).copied().unwrap_or_default();
            let ring = series
                .by_policy
                .entry((*name).to_owned())
                .or_insert_with(|| Ring {
                    last: if first { [0; 4] } else { now },
                    samples: VecDeque::with_capacity(SERIES_LEN),
                });
            let delta: [u32; 4] = std::array::from_fn(|i| {
                u32::try_from(now[i].saturating_sub(ring.last[i])).unwrap_or(u32::MAX)
            });
            ring.last = now;
            while ring.samples.len() + 1 < series.len {
                ring.samples.push_back([0; 4]);
            }
            ring.samples.push_back(delta);
            while ring.samples.len() > SERIES_LEN {
                ring.samples.pop_front();
            }
        }
        series
            .by_policy
            .retain(|name, _| names.contains(name.as_str()));
        self.hitters.retain(|name| names.contains(name));
        series.latency.push_back(app.metrics().latency_counts());
        while series.latency.len() > LATENCY_SNAPSHOTS {
            series.latency.pop_front();
        }
    }

    /// The `/v1/stats` document as JSON: the one built since the latest
    /// sample and configuration load if there is one, else a new one.
    /// Requests in between get the same document (its `now_ms` included).
    ///
    /// # Errors
    /// When the document cannot be written as JSON (never in practice).
    pub fn document(&self, app: &App, loaded: &Arc<Loaded>) -> Result<Arc<str>, serde_json::Error> {
        let config = Arc::as_ptr(loaded) as usize;
        // Held while building: concurrent requests wait for the one build
        // instead of each making their own.
        let mut built = self.document.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.generation.load(Ordering::Relaxed);
        if let Some(b) = built
            .as_ref()
            .filter(|b| b.generation == generation && b.config == config)
        {
            return Ok(Arc::clone(&b.body));
        }
        let body: Arc<str> = serde_json::to_string(&self.snapshot(app, loaded))?.into();
        *built = Some(Built {
            generation,
            config,
            body: Arc::clone(&body),
        });
        Ok(body)
    }

    /// The document `/v1/stats` answers, built now.
    pub fn snapshot(&self, app: &App, loaded: &Loaded) -> Stats {
        let config = &loaded.config;
        let show_keys = config.server.dashboard.show_keys;
        let (shown, omitted) = shown_policies(config);
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let policies = shown
            .iter()
            .map(|(name, policy, shadow)| {
                let samples = series.by_policy.get(*name).map(|r| &r.samples);
                let outcome = |o: Outcome| -> Vec<u32> {
                    samples.map_or_else(Vec::new, |s| s.iter().map(|c| c[o as usize]).collect())
                };
                PolicyStats {
                    fields: policy_fields(name, policy),
                    shadow: *shadow,
                    series: OutcomeSeries {
                        allowed: outcome(Outcome::Allowed),
                        denied: outcome(Outcome::Denied),
                        degraded: outcome(Outcome::Degraded),
                        shadow: outcome(Outcome::Shadow),
                    },
                    top_denied: self
                        .hitters
                        .top(name, TOP_DENIED)
                        .into_iter()
                        .map(|h| TopKey::new(h, show_keys))
                        .collect(),
                }
            })
            .collect();
        let latency = latency_ms(
            series.latency.front().copied().unwrap_or_default(),
            app.metrics().latency_counts(),
        );
        drop(series);
        let mut stores = app.store_health().map(|(name, store, cause)| {
            let stats = store.stats();
            let kind = match name {
                "per_second" => config.store.per_second.as_ref().map(|s| s.kind),
                _ => None,
            }
            .unwrap_or(config.store.kind);
            let breaker = stats.breaker.name();
            StoreStats {
                kind: match kind {
                    StoreKind::Memory => "memory",
                    StoreKind::Redis => "redis",
                    StoreKind::RedisCluster => "cluster",
                    StoreKind::RedisSentinel => "sentinel",
                },
                reachable: cause.is_none() && breaker == "closed",
                error: cause.or_else(|| {
                    (breaker != "closed").then(|| format!("circuit breaker {breaker}"))
                }),
                breaker,
                latency_ms: latency,
                deny_cache: DenyCacheStats {
                    hits: stats.deny_cache_hits,
                    lookups: stats.deny_cache_lookups,
                    hit_ratio: (stats.deny_cache_lookups > 0)
                        .then(|| stats.deny_cache_hits as f64 / stats.deny_cache_lookups as f64),
                },
                leases: (stats.leases != Default::default()).then_some(LeaseStats {
                    taken: stats.leases.taken,
                    units: stats.leases.units,
                    returned: stats.leases.returned,
                    forfeited: stats.leases.forfeited,
                    keys: stats.leases.keys,
                }),
            }
        });
        let store = stores.next().expect("the main store");
        let per_second_store = stores.next();
        let status = self
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (reloads, reload_failures) = app.metrics().reloads();
        Stats {
            version: env!("CARGO_PKG_VERSION"),
            now_ms: unix_ms(),
            started_ms: self.started_ms,
            interval_ms: tollgate::clock::millis(INTERVAL),
            policies,
            policies_omitted: omitted,
            store,
            per_second_store,
            config: ConfigStats {
                source: describe_source(app.source()),
                loaded_ms: status.loaded_ms,
                reloads,
                reload_failures,
                last_error: status.last_error,
                last_error_ms: status.last_error_ms,
            },
        }
    }
}

/// Where the configuration comes from, for people.
fn describe_source(source: &ConfigSource) -> String {
    let mut text = match (&source.config, &source.generated, &source.envoy) {
        (Some(path), _, _) => path.display().to_string(),
        (None, Some(_), _) => "environment variables".to_owned(),
        (None, None, Some(_)) => String::new(),
        (None, None, None) => "built-in demo".to_owned(),
    };
    if let Some(envoy) = &source.envoy {
        if !text.is_empty() {
            text.push_str(" + ");
        }
        let _ = write!(text, "envoy: {}", envoy.display());
    }
    text
}

/// p50 and p99 of the calls between two cumulative snapshots, in
/// milliseconds, interpolated within a bucket as Prometheus'
/// `histogram_quantile` does; `None` without calls.
fn latency_ms(
    from: [u64; LATENCY_BUCKETS_US.len() + 1],
    to: [u64; LATENCY_BUCKETS_US.len() + 1],
) -> Option<LatencyStats> {
    let count: [u64; LATENCY_BUCKETS_US.len() + 1] =
        std::array::from_fn(|i| to[i].saturating_sub(from[i]));
    let total = count[LATENCY_BUCKETS_US.len()];
    if total == 0 {
        return None;
    }
    let quantile = |q: f64| {
        let rank = q * total as f64;
        let mut below = 0u64;
        let mut lower = 0u64;
        for (bound, n) in LATENCY_BUCKETS_US.iter().zip(&count) {
            if *n > 0 && (below + n) as f64 >= rank {
                let within = (rank - below as f64) / *n as f64;
                let us = lower as f64 + (bound - lower) as f64 * within;
                return us / 1000.0;
            }
            below += n;
            lower = *bound;
        }
        // Above the largest bound: that bound, as histogram_quantile says.
        lower as f64 / 1000.0
    };
    Some(LatencyStats {
        p50: quantile(0.5),
        p99: quantile(0.99),
    })
}

/// Takes a sample every [`INTERVAL`] until `stopped` completes (started
/// by [`crate::server::run`]).
pub async fn sample(app: Arc<App>, stopped: impl Future<Output = ()>) {
    let mut interval = tokio::time::interval(INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = interval.tick() => app.dashboard().tick(&app),
        }
    }
}

/// The `/v1/stats` document (docs/DASHBOARD.md).
#[derive(Debug, Serialize)]
pub struct Stats {
    version: &'static str,
    now_ms: u64,
    started_ms: u64,
    interval_ms: u64,
    policies: Vec<PolicyStats>,
    /// Policies past [`MAX_POLICIES`], not listed.
    policies_omitted: usize,
    store: StoreStats,
    /// The per-second store's (`store.per_second`), or `null`.
    per_second_store: Option<StoreStats>,
    config: ConfigStats,
}

#[derive(Debug, Serialize)]
struct PolicyStats {
    #[serde(flatten)]
    fields: serde_json::Map<String, serde_json::Value>,
    shadow: bool,
    series: OutcomeSeries,
    top_denied: Vec<TopKey>,
}

#[derive(Debug, Serialize)]
struct OutcomeSeries {
    allowed: Vec<u32>,
    denied: Vec<u32>,
    degraded: Vec<u32>,
    shadow: Vec<u32>,
}

#[derive(Debug, Serialize)]
struct TopKey {
    key: String,
    hashed: bool,
    denied: u64,
    /// `denied - error` is a lower bound of the key's denials.
    error: u64,
    /// The key was longer than the [`KEY_BYTES`] shown.
    truncated: bool,
}

impl TopKey {
    fn new(hitter: Hitter, show_keys: bool) -> TopKey {
        let shown = show_keys && !hitter.key.is_empty();
        TopKey {
            key: if shown {
                String::from_utf8_lossy(&hitter.key).into_owned()
            } else {
                format!("{:016x}", hitter.hash)
            },
            hashed: !shown,
            denied: hitter.count,
            error: hitter.error,
            truncated: shown && hitter.truncated,
        }
    }
}

#[derive(Debug, Serialize)]
struct StoreStats {
    kind: &'static str,
    reachable: bool,
    error: Option<String>,
    breaker: &'static str,
    latency_ms: Option<LatencyStats>,
    deny_cache: DenyCacheStats,
    leases: Option<LeaseStats>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct LatencyStats {
    p50: f64,
    p99: f64,
}

#[derive(Debug, Serialize)]
struct DenyCacheStats {
    hits: u64,
    lookups: u64,
    hit_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct LeaseStats {
    taken: u64,
    units: u64,
    returned: u64,
    forfeited: u64,
    keys: usize,
}

#[derive(Debug, Serialize)]
struct ConfigStats {
    source: String,
    loaded_ms: u64,
    reloads: u64,
    reload_failures: u64,
    last_error: Option<String>,
    last_error_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_interpolate_within_buckets() {
        let mut to = [0u64; LATENCY_BUCKETS_US.len() + 1];
        // 100 calls in (100, 250] us.
        to[2] = 100;
        to[LATENCY_BUCKETS_US.len()] = 100;
        let stats = latency_ms([0; LATENCY_BUCKETS_US.len() + 1], to).expect("calls");
        assert!((stats.p50 - 0.175).abs() < 1e-9, "{stats:?}");
        assert!((stats.p99 - 0.2485).abs() < 1e-9, "{stats:?}");
        // Only the delta counts: the same snapshot twice is no calls.
        assert!(latency_ms(to, to).is_none());
        // Calls above the largest bound: that bound.
        let mut slow = to;
        slow[LATENCY_BUCKETS_US.len()] = 1000;
        let stats = latency_ms(to, slow).expect("calls");
        assert!((stats.p99 - 1000.0).abs() < 1e-9, "{stats:?}");
    }

    /// However often clients ask, a document is built once per sample
    /// (and per configuration load).
    #[tokio::test]
    async fn the_document_is_built_once_per_sample() {
        let app = App::new(
            ConfigSource::default(),
            Config::demo().expect("demo"),
            crate::ServerStore::Memory(Default::default()),
        );
        let dashboard = app.dashboard();
        let loaded = app.current();
        let first = dashboard.document(&app, &loaded).expect("json");
        let again = dashboard.document(&app, &loaded).expect("json");
        assert!(Arc::ptr_eq(&first, &again));
        dashboard.tick(&app);
        let sampled = dashboard.document(&app, &loaded).expect("json");
        assert!(!Arc::ptr_eq(&first, &sampled));
        dashboard.config_loaded(Err("t.yaml:1:1: broken".to_owned()));
        let failed = dashboard.document(&app, &loaded).expect("json");
        assert!(failed.contains("t.yaml:1:1: broken"), "{failed}");
    }

    #[test]
    fn sources_are_described() {
        assert_eq!(describe_source(&ConfigSource::default()), "built-in demo");
        let source = ConfigSource {
            config: Some("t.yaml".into()),
            envoy: Some("/etc/ratelimit".into()),
            ..ConfigSource::default()
        };
        assert_eq!(describe_source(&source), "t.yaml + envoy: /etc/ratelimit");
        let source = ConfigSource {
            generated: Some(String::new()),
            ..ConfigSource::default()
        };
        assert_eq!(describe_source(&source), "environment variables");
    }
}
