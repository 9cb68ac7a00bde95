//! The running service: the current configuration and limiter, swapped
//! whole on reload, and the decisions both protocols share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tollgate::overrides::Overrides;
use tollgate::resilience::{BreakerState, ResilienceOptions, Resilient};
use tollgate::{
    Algorithm, Error, Limiter, Mode, MultiDecision, Policy, PolicyRef, Reservation, ReservationId,
    SettleAnswer, Store,
};

use crate::config::{
    Config, ConfigError, ConfigSource, ConfigText, FailureMode, StoreKind, StoreSettings,
};
use crate::health::{Context, StoreHealth};
use crate::metrics::{ExternalGauges, Metrics, Outcome, SettleResult, StoreGauges};
use crate::stats::Dashboard;
use crate::store::{ResilientStore, RoutedStore, ServerStore};

/// The longest key the limiter accepts. The HTTP API applies the
/// configured (smaller) `max_key_bytes` itself; Envoy descriptors encode
/// the domain and every entry into the key, so they get more room.
pub const MAX_LIMITER_KEY: usize = 8 * 1024;

/// What [`App::charge_after`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterTheFact {
    /// Units charged.
    pub charged: u64,
    /// Units not charged: past what remained plus `max_overdraft`.
    pub unpaid: u64,
    /// What the next request finds (a one-unit peek).
    pub decision: tollgate::Decision,
}

/// One configuration and everything built from it. Requests take an `Arc`
/// of the current one, so a reload never changes the rules under a request
/// in flight.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Every policy (named and inline Envoy ones) over the shared store,
    /// through the resilience layer.
    pub limiter: Limiter<AppStore>,
}

/// The store requests go through: each configured store wrapped in
/// [`Resilient`] (timeout, circuit breaker, deny cache, failure mode), and
/// each policy sent to its store (see [`RoutedStore`]).
pub type AppStore = RoutedStore;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be reached.
    #[error("store: {0}")]
    Store(#[from] tollgate_redis::ConnectError),
    /// The per-second store (`store.per_second`) could not be reached.
    #[error("store.per_second: {0}")]
    PerSecondStore(tollgate_redis::ConnectError),
}

/// One configured store as the server watches it: its own breaker, health
/// and log lines.
#[derive(Debug)]
struct Watched {
    /// `main` or `per_second`, in log lines and readiness messages.
    name: &'static str,
    store: ResilientStore,
    /// Its failure mode, for log lines.
    on_failure: FailureMode,
    /// Whether it is failing, and what was logged about it: breaker state
    /// changes, rate-limited, never one line per decision.
    health: StoreHealth,
}

impl Watched {
    fn context(&self) -> Context<'static> {
        Context {
            store: self.name,
            on_failure: self.on_failure,
            breaker: self.store.breaker_state().name(),
        }
    }
}

/// The service behind both protocols. Shared as `Arc<App>`.
#[derive(Debug)]
pub struct App {
    /// The configuration in force and its limiter; replaced atomically by
    /// a reload, read without locking by every request.
    current: ArcSwap<Loaded>,
    /// Connected once at start: a reload builds a new limiter over the same
    /// stores (and the same breakers, deny caches and local fallbacks), so
    /// rate limiting state survives reloads.
    store: AppStore,
    /// The main store, then the per-second store if there is one.
    watched: Vec<Watched>,
    /// Where the configuration is read from again on reload.
    source: ConfigSource,
    /// The store section the store was built with: it stays in force until
    /// a restart, whatever later reloads say, so reloads compare with it.
    store_settings: StoreSettings,
    /// Counters and the latency histogram served at `/metrics`.
    metrics: Metrics,
    /// The overrides every limiter consults, shared across reloads (and on
    /// Redis followed from the store).
    overrides: crate::overrides::Shared,
    /// What the dashboard and `/v1/stats` show: fed by denials (the
    /// heavy-hitters sketch) and by its sampler.
    dashboard: Dashboard,
}

impl App {
    /// Loads the configuration from `source` and connects to its store.
    ///
    /// envoyproxy/ratelimit files that are refused do not stop the start, as
    /// they do not stop envoyproxy/ratelimit: the error is logged and
    /// counted, and the service runs with no Envoy configuration (every
    /// `ShouldRateLimit` fails) until a reload loads them
    /// ([`ConfigSource::load_or_unloaded`]).
    ///
    /// # Errors
    /// [`StartError`] for an invalid tollgate configuration or an
    /// unreachable store.
    pub async fn start(source: ConfigSource) -> Result<App, StartError> {
        let config = source.load_or_unloaded()?;
        if let Some(error) = &config.envoy_unloaded {
            tracing::error!(
                %error,
                "envoy configuration refused; serving without it (every ShouldRateLimit fails) until a reload loads it"
            );
        }
        let store = ServerStore::connect(&config.store).await?;
        let per_second = match &config.store.per_second {
            Some(settings) => Some(
                ServerStore::connect(settings)
                    .await
                    .map_err(StartError::PerSecondStore)?,
            ),
            None => None,
        };
        Ok(App::with_stores(source, config, store, per_second))
    }

    /// A service over an already loaded configuration and store (tests use
    /// it to bring their own store). Every policy is decided on `store`,
    /// even when the configuration has a `store.per_second` section: see
    /// [`with_stores`](Self::with_stores).
    pub fn new(source: ConfigSource, config: Config, store: ServerStore) -> App {
        App::with_stores(source, config, store, None)
    }

    /// A service over an already loaded configuration and its stores: the
    /// policies whose period is one second on `per_second` when it is given
    /// (configured by `store.per_second`, else by `store:`), the others on
    /// `store`.
    pub fn with_stores(
        source: ConfigSource,
        config: Config,
        store: ServerStore,
        per_second: Option<ServerStore>,
    ) -> App {
        let status = tokio::sync::watch::Sender::new(false);
        let mut watched = vec![Watched {
            name: "main",
            store: resilient(store, &config.store),
            on_failure: config.store.on_failure,
            health: StoreHealth::new(status.clone()),
        }];
        if let Some(per_second) = per_second {
            let settings = config.store.per_second.as_deref().unwrap_or(&config.store);
            watched.push(Watched {
                name: "per_second",
                store: resilient(per_second, settings),
                on_failure: settings.on_failure,
                health: StoreHealth::new(status),
            });
        }
        let store = RoutedStore::new(
            watched[0].store.clone(),
            watched.get(1).map(|w| w.store.clone()),
        );
        let shared_overrides = match watched[0].store.get_ref() {
            ServerStore::Redis(redis) => Some(redis.clone()),
            ServerStore::Memory(_) => None,
        };
        let overrides = crate::overrides::Shared::new(shared_overrides);
        let store_settings = config.store.clone();
        let metrics = Metrics::default();
        metrics.envoy_config(&config.envoy);
        metrics.config_load(config.envoy_unloaded.is_none());
        let dashboard = Dashboard::default();
        if let Some(error) = &config.envoy_unloaded {
            dashboard.config_loaded(Err(error.clone()));
        }
        let loaded = build(config, &store, &overrides.table);
        App {
            current: ArcSwap::from_pointee(loaded),
            store,
            watched,
            source,
            store_settings,
            metrics,
            overrides,
            dashboard,
        }
    }

    /// The overrides every limiter consults, and where they are shared.
    pub fn overrides(&self) -> &crate::overrides::Shared {
        &self.overrides
    }

    /// The configuration in force and its limiter.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// The main store, with its resilience layer (every policy's store
    /// unless a per-second store is configured).
    pub fn store(&self) -> &ResilientStore {
        self.store.main()
    }

    /// The per-second store, with its resilience layer, if configured.
    pub fn per_second_store(&self) -> Option<&ResilientStore> {
        self.store.per_second()
    }

    /// Every store: the main one, then the per-second one if configured.
    pub fn stores(&self) -> impl Iterator<Item = &ResilientStore> {
        self.watched.iter().map(|w| &w.store)
    }

    /// The store the limiter decides on: each policy routed to its store.
    pub fn routed_store(&self) -> &AppStore {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The dashboard's state.
    pub fn dashboard(&self) -> &Dashboard {
        &self.dashboard
    }

    /// Each store (`main`, then `per_second` if configured) with why it is
    /// failing, or `None` while it is believed healthy.
    pub fn store_health(
        &self,
    ) -> impl Iterator<Item = (&'static str, &ResilientStore, Option<String>)> {
        self.watched
            .iter()
            .map(|w| (w.name, &w.store, w.health.cause()))
    }

    /// Where the configuration comes from.
    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// The metrics text served at `/metrics`.
    pub fn render_metrics(&self) -> String {
        let gauges = |store: &ResilientStore| {
            let stats = store.stats();
            StoreGauges {
                circuit_state: match stats.breaker {
                    BreakerState::Closed => 0,
                    BreakerState::Open => 1,
                    BreakerState::HalfOpen => 2,
                },
                deny_cache_hits: stats.deny_cache_hits,
                deny_cache_lookups: stats.deny_cache_lookups,
                store_errors: stats.failures,
                memory: store.get_ref().memory_usage(),
                reservations: store.get_ref().reservation_usage(),
                local: (stats.local_keys, stats.local_evictions),
                breaker_opened: stats.breaker_opened,
                leases: stats.leases,
            }
        };
        self.metrics.render(ExternalGauges {
            main: gauges(self.store.main()),
            per_second: self.store.per_second().map(gauges),
        })
    }

    /// Reads the configuration again and, if it is valid, swaps it in;
    /// otherwise the running one stays and the error is returned (and
    /// logged). A tollgate file with nothing but whitespace and comments in
    /// it is refused too (`{}` is the empty configuration on reload).
    /// Requests in flight finish on the configuration they started
    /// with. Store settings cannot change without a restart: a changed
    /// store section is logged and ignored.
    ///
    /// This reads and parses on the calling thread; on a runtime use
    /// [`reload_off_runtime`](Self::reload_off_runtime).
    ///
    /// # Errors
    /// The [`ConfigError`] of the new configuration.
    pub fn reload(&self) -> Result<(), ConfigError> {
        self.install(self.source.read().and_then(|text| text.parse_for_reload()))
    }

    /// [`reload`](Self::reload), with the files read, parsed and validated
    /// on a thread of their own, so that no request waits for them (a file
    /// is bounded, see [`crate::config::MAX_CONFIG_FILE_BYTES`], but a
    /// large one still takes a while to parse). Only the swap happens here.
    ///
    /// If this future is dropped (the server is shutting down), the thread
    /// finishes on its own and its result is dropped: nothing waits for it,
    /// and it does not keep the process alive.
    ///
    /// # Errors
    /// The [`ConfigError`] of the new configuration.
    pub async fn reload_off_runtime(&self) -> Result<(), ConfigError> {
        let source = self.source.clone();
        let loaded = self
            .off_runtime(move || source.read()?.parse_for_reload())
            .await;
        self.install(loaded)
    }

    /// Reads the configuration's files, without parsing them, on a thread
    /// of their own (the file watcher compares two reads, see
    /// [`crate::reload`]).
    pub(crate) async fn read_off_runtime(&self) -> Result<ConfigText, ConfigError> {
        let source = self.source.clone();
        self.off_runtime(move || source.read()).await
    }

    /// [`reload_off_runtime`](Self::reload_off_runtime) of files already
    /// read.
    pub(crate) async fn reload_read_off_runtime(
        &self,
        read: Result<ConfigText, ConfigError>,
    ) -> Result<(), ConfigError> {
        let loaded = self.off_runtime(move || read?.parse_for_reload()).await;
        self.install(loaded)
    }

    /// `work` on a thread of its own; dropped, this future leaves the
    /// thread to finish alone.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ConfigError> + Send + 'static,
    ) -> Result<T, ConfigError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("tollgate-config".to_owned())
            .spawn(move || {
                let _ = done.send(work());
            });
        match spawned {
            Ok(_) => result
                .await
                .unwrap_or_else(|_| Err(self.reload_error("the configuration thread panicked"))),
            Err(error) => Err(self.reload_error(&format!(
                "cannot start a thread to read the configuration: {error}"
            ))),
        }
    }

    fn reload_error(&self, message: &str) -> ConfigError {
        let file = self
            .source
            .config
            .as_ref()
            .or(self.source.envoy.as_ref())
            .map_or_else(|| "<config>".to_owned(), |p| p.display().to_string());
        ConfigError::Invalid {
            file,
            line: None,
            column: None,
            message: message.to_owned(),
        }
    }

    /// Swaps in a configuration that loaded, or logs and counts one that
    /// did not.
    fn install(&self, loaded: Result<Config, ConfigError>) -> Result<(), ConfigError> {
        match loaded {
            Ok(config) => {
                let old = self.current();
                if config.store != self.store_settings {
                    tracing::warn!(
                        "config reload: the store section differs from the one the server started with; store settings apply only after a restart"
                    );
                }
                let policies = |c: &Config| -> BTreeMap<String, Policy> {
                    c.limiter_policies()
                        .map(|(name, policy)| (name.to_owned(), *policy))
                        .collect()
                };
                if policies(&config) != policies(&old.config) {
                    // Cached denials were made under the old parameters; if
                    // those came back later they could outlast the state.
                    self.store.clear_deny_cache();
                }
                if config.server.http != old.config.server.http
                    || config.server.grpc != old.config.server.grpc
                {
                    tracing::warn!(
                        "config reload: listen addresses changed; they apply only after a restart"
                    );
                }
                let policies = config.policies.len();
                let domains = config.domains.len();
                self.metrics.envoy_config(&config.envoy);
                self.current
                    .store(Arc::new(build(config, &self.store, &self.overrides.table)));
                self.metrics.reload(true);
                self.dashboard.config_loaded(Ok(()));
                tracing::info!(policies, domains, "config reloaded");
                Ok(())
            }
            Err(error) => {
                self.metrics.reload(false);
                self.dashboard.config_loaded(Err(error.to_string()));
                tracing::error!(%error, "config reload failed; keeping the running configuration");
                Err(error)
            }
        }
    }

    /// Decides `cost` for `key` against the named policies of `loaded`,
    /// all-or-nothing, and counts the outcome of each policy. When the store
    /// fails, the resilience layer decides by the failure mode (marked
    /// `degraded`). A denial from a `shadow` caller is counted as `shadow`.
    ///
    /// # Errors
    /// Unknown policy, zero cost, key too long.
    pub async fn decide(
        &self,
        loaded: &Loaded,
        names: &[&str],
        key: &[u8],
        cost: u64,
        mode: Mode,
        shadow: bool,
    ) -> Result<MultiDecision, Error> {
        let started = Instant::now();
        let result = match mode {
            Mode::Consume => loaded.limiter.check_all(names, key, cost).await,
            Mode::Peek => loaded.limiter.peek_all(names, key, cost).await,
        };
        self.record(loaded, names.iter().copied(), key, started, result, shadow)
    }

    /// Decides like [`decide`](Self::decide) against policies given by
    /// value rather than by name (Envoy descriptors carry theirs, and a
    /// `limit` override exists only in its request); each is counted under
    /// its name, so names must be bounded by the configuration.
    ///
    /// # Errors
    /// Zero cost, key too long.
    pub async fn decide_policies(
        &self,
        loaded: &Loaded,
        policies: &[PolicyRef<'_>],
        key: &[u8],
        cost: u64,
        mode: Mode,
        shadow: bool,
    ) -> Result<MultiDecision, Error> {
        let started = Instant::now();
        let result = loaded.limiter.apply(policies, key, cost, mode).await;
        let names = policies.iter().map(|p| p.name);
        self.record(loaded, names, key, started, result, shadow)
    }

    /// Reserves `estimate` units of the named policies of `loaded` for
    /// `key` until `deadline` ([`Limiter::reserve`]), and counts it: as a
    /// decision of each policy, and as a reservation allowed or denied.
    ///
    /// # Errors
    /// As [`Limiter::reserve`]: unknown policy, a policy that cannot be
    /// reserved, out-of-bounds amounts or deadline, a store that keeps no
    /// reservations or fails (a reservation is never decided by the
    /// failure mode: a settle elsewhere must find it in the store).
    pub async fn reserve(
        &self,
        loaded: &Loaded,
        names: &[&str],
        key: &[u8],
        estimate: u64,
        deadline: Duration,
    ) -> Result<Reservation, Error> {
        let started = Instant::now();
        let reservation = match loaded.limiter.reserve(names, key, estimate, deadline).await {
            Ok(reservation) => reservation,
            Err(error) => {
                self.metrics.store_latency(started.elapsed());
                return Err(error);
            }
        };
        let Reservation { decision, id } = reservation;
        let decision = self.record(
            loaded,
            names.iter().copied(),
            key,
            started,
            Ok(decision),
            false,
        )?;
        for name in names {
            self.metrics.reservation(name, decision.allowed);
        }
        Ok(Reservation { decision, id })
    }

    /// Settles the reservation `id` at `actual` units ([`Limiter::settle`];
    /// 0 cancels it), and counts what the settle found and what it did to
    /// each policy.
    ///
    /// # Errors
    /// As [`Limiter::settle`].
    pub async fn settle(
        &self,
        loaded: &Loaded,
        id: &ReservationId,
        actual: u64,
    ) -> Result<Option<SettleAnswer>, Error> {
        let started = Instant::now();
        let result = loaded.limiter.settle(id, actual).await;
        self.metrics.store_latency(started.elapsed());
        match &result {
            Ok(None) | Err(Error::UnknownPolicy(_)) => self.metrics.settle(SettleResult::Unknown),
            Ok(Some(answer)) if answer.replayed => self.metrics.settle(SettleResult::Replayed),
            Ok(Some(answer)) => {
                self.metrics.settle(SettleResult::Settled);
                // The store found the reservation: its names are policies
                // of the configuration, a bounded set.
                for (name, settled) in id.policies().zip(&answer.settled) {
                    self.metrics.settled_units(name, settled);
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Charges `units` of the policy `name` to `key` after the fact (an
    /// Envoy descriptor with `settle: true`, on the call Envoy makes when
    /// the stream is done): charged whether or not they fit, overdrawing
    /// the policy by at most its `max_overdraft`, the rest unpaid, in one
    /// atomic step of the store ([`Limiter::charge`], which reports units
    /// past what the store computes exactly as unpaid too). Counted as
    /// units charged and unpaid.
    ///
    /// # Errors
    /// As [`Limiter::charge`].
    pub async fn charge_after(
        &self,
        loaded: &Loaded,
        name: &str,
        key: &[u8],
        units: u64,
    ) -> Result<AfterTheFact, Error> {
        let started = Instant::now();
        let result = loaded.limiter.charge(&[name], key, units).await;
        self.metrics.store_latency(started.elapsed());
        let answer = result?;
        let settled = answer.settled.first().copied().unwrap_or_default();
        self.metrics.settled_units(name, &settled);
        let decision = match answer.decisions.first() {
            Some(decision) => *decision,
            // Unlimited by an override: nothing charged, nothing owed.
            None => loaded.limiter.peek(name, key, 1).await?,
        };
        Ok(AfterTheFact {
            charged: settled.charged,
            unpaid: settled.unpaid,
            decision,
        })
    }

    /// Records a decision of `key` started at `started`: latency, the
    /// breaker opening, each policy's outcome, and (with the dashboard
    /// enabled) each enforced denial in the heavy-hitters sketch.
    fn record<'a>(
        &self,
        loaded: &Loaded,
        names: impl Iterator<Item = &'a str>,
        key: &[u8],
        started: Instant,
        result: Result<MultiDecision, Error>,
        shadow: bool,
    ) -> Result<MultiDecision, Error> {
        self.metrics.store_latency(started.elapsed());
        let result = result?;
        // Two atomic loads per store: a breaker that opened during this
        // decision is a change of state (logged, rate-limited); recovery is
        // the probe's to find (`health::watch_store`).
        for watched in &self.watched {
            if !watched.health.is_failing() && watched.store.breaker_state() != BreakerState::Closed
            {
                let cause = watched.store.last_error().map(|e| e.to_string());
                watched.health.failed(cause, watched.context());
            }
        }
        let dashboard = loaded.config.server.dashboard;
        // Hashed once per decision, only if a policy denied.
        let mut key_hash = None;
        for (i, (name, decision)) in names.zip(&result.decisions).enumerate() {
            let outcome = match (decision.degraded, decision.allowed, shadow) {
                (true, _, _) => Outcome::Degraded,
                (false, true, _) => Outcome::Allowed,
                (false, false, true) => Outcome::Shadow,
                (false, false, false) => Outcome::Denied,
            };
            let overridden = result.overridden.get(i).copied().unwrap_or(false);
            self.metrics.decision_of(name, outcome, overridden);
            if outcome == Outcome::Denied && dashboard.enabled {
                let hitters = self.dashboard.hitters();
                let hash = *key_hash.get_or_insert_with(|| hitters.hash(key));
                hitters.denied(name, hash, key, dashboard.show_keys);
            }
        }
        Ok(result)
    }

    /// Every change of a store's health (`true`: the store that changed is
    /// failing), as the background probe and decisions find it; gRPC health
    /// waits on it.
    pub fn store_status(&self) -> tokio::sync::watch::Receiver<bool> {
        self.watched[0].health.subscribe()
    }

    /// Probes each store (the main one, and the per-second one if
    /// configured) through its circuit breaker ([`Resilient::probe`], one
    /// peek at a probe key) if `always`, or if that store is failing or its
    /// breaker is not closed, and records what it found; logs the state
    /// reached if an earlier change was held back by the rate limit. Run at
    /// start and every cool-down by [`crate::health::watch_store`].
    pub async fn probe_store(&self, always: bool) {
        for watched in &self.watched {
            probe(watched, always).await;
        }
    }

    /// Whether the service is healthy: [`ready`](Self::ready), and, with
    /// `server.healthy_needs_domains`, at least one Envoy domain loaded.
    /// `/healthcheck`, `/readyz` and gRPC health all follow it.
    ///
    /// # Errors
    /// Why it is not healthy.
    pub async fn healthy(&self) -> Result<(), String> {
        let loaded = self.current();
        if loaded.config.server.healthy_needs_domains && loaded.config.domains.is_empty() {
            return Err(
                "no rate limit configuration loaded (server.healthy_needs_domains)".to_owned(),
            );
        }
        drop(loaded);
        self.ready().await
    }

    /// Whether every store answers (one peek each, which writes nothing, at a
    /// probe key, past the resilience layer) and its circuit breaker is
    /// closed. A per-second store's cause is named `per_second store: ...`.
    ///
    /// # Errors
    /// Why the store is not ready.
    pub async fn ready(&self) -> Result<(), String> {
        let policy = probe_policy().map_err(|e| e.to_string())?;
        let refs = [PolicyRef {
            name: "tollgate-readyz",
            policy: &policy,
        }];
        for watched in &self.watched {
            let named = |cause: String| match watched.name {
                "main" => cause,
                name => format!("{name} store: {cause}"),
            };
            let store = watched.store.get_ref();
            if let Err(error) = store
                .apply(tollgate::Check::new(
                    b"tollgate-readyz",
                    &refs,
                    1,
                    Mode::Peek,
                ))
                .await
            {
                return Err(named(store.explain(&error).await));
            }
            match watched.store.breaker_state() {
                BreakerState::Closed => {}
                state => return Err(named(format!("circuit breaker {}", state.name()))),
            }
        }
        Ok(())
    }
}

/// Probes one store through its circuit breaker ([`Resilient::probe`], one
/// peek at a probe key) if `always`, or if it is failing or its breaker is
/// not closed, and records what it found; logs the state reached if an
/// earlier change was held back by the rate limit.
async fn probe(watched: &Watched, always: bool) {
    let Watched { store, health, .. } = watched;
    let needed = always || health.is_failing() || store.breaker_state() != BreakerState::Closed;
    if needed {
        let policy = probe_policy();
        let outcome = match &policy {
            Ok(policy) => {
                let refs = [PolicyRef {
                    name: "tollgate-readyz",
                    policy,
                }];
                store.probe(b"tollgate-readyz", &refs).await
            }
            Err(_) => None,
        };
        match outcome {
            Some(Ok(())) if store.breaker_state() == BreakerState::Closed => {
                health.recovered(watched.context());
            }
            Some(Err(error)) => {
                let cause = if health.wants_cause() {
                    store.get_ref().explain(&error).await
                } else {
                    error.to_string()
                };
                health.failed(Some(cause), watched.context());
            }
            Some(Ok(())) | None => {}
        }
    }
    health.flush(watched.context());
}

fn probe_policy() -> Result<Policy, tollgate::PolicyError> {
    Policy::new(Algorithm::FixedWindow, 1, Duration::from_secs(1), None)
}

/// Wraps the store in the resilience layer configured by `settings`. A
/// shared (Redis) store subscribes to reset notices, so a reset through any
/// instance clears every instance's deny cache.
fn resilient(store: ServerStore, settings: &StoreSettings) -> ResilientStore {
    let options = ResilienceOptions::default()
        .failure_mode(settings.on_failure)
        .local_share(settings.local_share)
        .timeout(settings.timeout)
        .breaker_failures(settings.breaker.failures)
        .breaker_cooldown(settings.breaker.cooldown)
        .half_open_probes(settings.breaker.half_open_probes)
        .deny_cache(settings.deny_cache.enabled)
        .deny_cache_capacity(settings.deny_cache.capacity)
        .local_max_keys(settings.max_keys);
    match settings.kind {
        StoreKind::Memory => Resilient::new(store, options),
        StoreKind::Redis | StoreKind::RedisCluster | StoreKind::RedisSentinel => {
            Resilient::with_invalidations(store, options)
        }
    }
}

/// The limiter of `config` over `store`; also puts the configuration's
/// per-policy failure modes in force (the store is shared across reloads).
fn build(config: Config, store: &AppStore, overrides: &Arc<Overrides>) -> Loaded {
    let modes: Vec<(String, FailureMode)> = config
        .failure_modes
        .iter()
        .map(|(name, mode)| (name.clone(), *mode))
        .collect();
    store.set_policy_modes(&modes);
    // The file's overrides, replaced whole; those set through the API stay
    // (and win where both name one key).
    overrides.replace_file(config.overrides.iter().map(|(policy, key, limit)| {
        let key = tollgate::keyspace::KeySpace::HttpJson.key(key.as_bytes());
        let value = tollgate::overrides::Override {
            limit: *limit,
            expires_at_us: None,
        };
        (policy.clone(), key, value)
    }));
    let mut builder = Limiter::builder(store.clone())
        .max_key_len(MAX_LIMITER_KEY)
        .overrides(Arc::clone(overrides));
    for (name, policy) in config.limiter_policies() {
        builder = builder.policy(name, *policy);
    }
    Loaded {
        limiter: builder.build(),
        config,
    }
}
