//! [`RateLimitLayer`] and its builder: the one place a layer is configured
//! and checked (every mistake is a [`ConfigError`] from
//! [`build`](RateLimitLayerBuilder::build), never a failed request).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::request::Parts;
use tollgate::answer;
use tollgate::{Limiter, MemoryStore, Policy, Store};
use tower::Layer;

use crate::config::{Cost, LayerConfig, Policies, PolicySet};
pub use crate::config::{MissingKey, StoreFailure};
use crate::error::ConfigError;
use crate::key::{Key, KeyExtractor, PeerIp};
use crate::reserve::{Reserve, Reserving, SettleStats};
use crate::response::{FieldSwitches, ResponseFormat};
use crate::service::RateLimitService;

/// The default longest a request waits in a `leaky_bucket` queue before the
/// layer answers 429 instead (see [`RateLimitLayerBuilder::max_delay`]).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);

/// A tower [`Layer`] that rate limits requests with a shared
/// [`tollgate::Limiter`].
///
/// The budget lives in the limiter: every service this layer makes, and
/// every clone axum makes of them, charges the same state. The decision is
/// made when the request is called; `poll_ready` only asks the inner
/// service. Build one with [`RateLimitLayer::builder`]; the crate docs show
/// the whole flow.
pub struct RateLimitLayer<S = MemoryStore> {
    config: Arc<LayerConfig<S>>,
}

impl<S> Clone for RateLimitLayer<S> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for RateLimitLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("RateLimitLayer")
            .field("limiter", &c.limiter)
            .field("missing_key", &c.missing_key)
            .field("store_failure", &c.store_failure)
            .field("cost", &c.cost)
            .field("format", &c.format)
            .field("shadow", &c.shadow)
            .field("reserve", &c.reserve.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Store> RateLimitLayer<S> {
    /// Starts building a layer over `limiter` (a clone shares its budget).
    pub fn builder(limiter: Limiter<S>) -> RateLimitLayerBuilder<S> {
        RateLimitLayerBuilder {
            limiter,
            default: Vec::new(),
            routes: Vec::new(),
            key: Arc::new(PeerIp::new()),
            missing_key: MissingKey::default(),
            store_failure: StoreFailure::default(),
            cost: Cost::Fixed(1),
            format: ResponseFormat::default(),
            fields: FieldSwitches {
                standard: true,
                legacy: false,
                degraded: false,
            },
            max_delay: DEFAULT_MAX_DELAY,
            shadow: false,
            allowlist: HashSet::new(),
            reserve: None,
        }
    }
}

impl<S> RateLimitLayer<S> {
    /// The limiter the layer charges.
    pub fn limiter(&self) -> &Limiter<S> {
        &self.config.limiter
    }

    /// What the layer's settles did so far (all zero without
    /// [`reserve`](RateLimitLayerBuilder::reserve)).
    pub fn settle_stats(&self) -> SettleStats {
        self.config
            .reserve
            .as_ref()
            .map_or_else(SettleStats::default, |r| r.queue.stats())
    }

    /// Completes when none of the layer's settles is running (at once
    /// without [`reserve`](RateLimitLayerBuilder::reserve)). Await it on
    /// graceful shutdown, after the server stopped and so no response is
    /// left to settle, before the runtime ends: ending the runtime cancels
    /// the settles still running (their reservations then settle at their
    /// estimates at their deadlines).
    pub async fn settles_finished(&self) {
        if let Some(reserving) = &self.config.reserve {
            reserving.queue.finished().await;
        }
    }
}

impl<Svc, S> Layer<Svc> for RateLimitLayer<S> {
    type Service = RateLimitService<Svc, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        RateLimitService::new(inner, Arc::clone(&self.config))
    }
}

/// Builds a [`RateLimitLayer`]: which policies, keyed by what, answering
/// how. Only the policies are required.
pub struct RateLimitLayerBuilder<S> {
    limiter: Limiter<S>,
    default: Vec<String>,
    routes: Vec<(String, Vec<String>)>,
    key: Arc<dyn KeyExtractor>,
    missing_key: MissingKey,
    store_failure: StoreFailure,
    cost: Cost,
    format: ResponseFormat,
    fields: FieldSwitches,
    max_delay: Duration,
    shadow: bool,
    allowlist: HashSet<Box<[u8]>>,
    reserve: Option<Reserve>,
}

impl<S> fmt::Debug for RateLimitLayerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("default", &self.default)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl<S: Store> RateLimitLayerBuilder<S> {
    /// Adds a policy checked for every request (or, with routes, for every
    /// request no route names). Several policies are checked together, all
    /// or nothing ([`Limiter::check_all`]): a request is charged to each
    /// only if each allows it.
    pub fn policy(mut self, name: impl Into<String>) -> Self {
        self.default.push(name.into());
        self
    }

    /// Adds several policies, as [`policy`](Self::policy) does.
    pub fn policies<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.default.extend(names.into_iter().map(Into::into));
        self
    }

    /// Checks `policies` (all or nothing) for requests to `route`: an axum
    /// route template as written in `Router::route` (`/users/{id}`), matched
    /// against the `MatchedPath` extension, or else a literal request path
    /// (as sent or percent-decoded, so encoding a character escapes nothing;
    /// not normalised: `/a/./b` and `/a//b` are other paths than `/a/b`,
    /// which a file server may serve alike, so map such routes by their
    /// template).
    /// Requests matching no route get the default policies, or pass
    /// unlimited when there are none. Naming a route again replaces it.
    ///
    /// The alternative is one layer per route with axum's `route_layer`;
    /// both charge the same limiter.
    pub fn route<I>(mut self, route: impl Into<String>, policies: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let policies = policies.into_iter().map(Into::into).collect();
        self.routes.push((route.into(), policies));
        self
    }

    /// Sets what requests are charged to (default: [`PeerIp`]).
    pub fn key(mut self, extractor: impl KeyExtractor) -> Self {
        self.key = Arc::new(extractor);
        self
    }

    /// Sets what happens when no key can be read (default
    /// [`MissingKey::BadRequest`]).
    pub fn on_missing_key(mut self, behaviour: MissingKey) -> Self {
        self.missing_key = behaviour;
        self
    }

    /// Sets what happens when the store fails (default
    /// [`StoreFailure::Allow`]).
    pub fn on_store_failure(mut self, behaviour: StoreFailure) -> Self {
        self.store_failure = behaviour;
        self
    }

    /// Sets the units each request costs (default 1).
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Cost::Fixed(cost);
        self
    }

    /// Prices each request with `cost_of` instead of a constant: a batch
    /// endpoint by its item count, an upload by its declared length, an
    /// expensive query by a header. It reads the request head only (the
    /// body has not arrived when the decision is made).
    ///
    /// A request it prices at 0 is free: it is forwarded without a check,
    /// a charge or rate limit fields, like an allowlisted key (a check
    /// always costs at least one unit). A price above what a policy can
    /// ever grant is denied with no `Retry-After`, since no wait helps.
    ///
    /// ```
    /// use tollgate::{Limiter, MemoryStore};
    /// use tollgate_tower::RateLimitLayer;
    ///
    /// let limiter = Limiter::builder(MemoryStore::new())
    ///     .policy("items", "1000/1m".parse().unwrap())
    ///     .build();
    /// // Clients say how many items a batch holds; at least 1, at most 100.
    /// let layer = RateLimitLayer::builder(limiter)
    ///     .policy("items")
    ///     .cost_fn(|request| {
    ///         request
    ///             .headers
    ///             .get("x-batch-size")
    ///             .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    ///             .map_or(1, |n| n.clamp(1, 100))
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn cost_fn(mut self, cost_of: impl Fn(&Parts) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Cost::PerRequest(Arc::new(cost_of));
        self
    }

    /// Sets how 429s (and the layer's other responses) are written (default
    /// [`ResponseFormat::Json`]). gRPC calls get gRPC status codes whatever
    /// the format, except for the denials a custom function writes.
    pub fn response_format(mut self, format: ResponseFormat) -> Self {
        self.format = format;
        self
    }

    /// Whether to send `RateLimit-Policy` and `RateLimit` (default on).
    pub fn ratelimit_headers(mut self, on: bool) -> Self {
        self.fields.standard = on;
        self
    }

    /// Whether to also send the legacy `X-RateLimit-Limit`,
    /// `X-RateLimit-Remaining` and `X-RateLimit-Reset` (default off).
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.fields.legacy = on;
        self
    }

    /// Whether to send `Tollgate-Degraded: true` on responses whose decision
    /// was made without the shared store (the store failed and a
    /// [`tollgate::Resilient`] failure mode decided). Default off.
    pub fn degraded_header(mut self, on: bool) -> Self {
        self.fields.degraded = on;
        self
    }

    /// Sets the longest a request waits when a `leaky_bucket` policy tells
    /// it to (default [`DEFAULT_MAX_DELAY`]). A longer wait is answered 429
    /// at once; its place in the queue is spent, as the store admitted it.
    /// With `leaky_bucket L/P burst B`, waits reach `(B - cost) * P / L`:
    /// a maximum at least that long means the layer never refuses what the
    /// store admitted. `Duration::ZERO` refuses every wait.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Shadow mode: decide, charge and send the rate limit fields, but never
    /// reject nor delay; a would-be denial is logged at `info`. For trying a
    /// policy on real traffic before enforcing it.
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// Adds keys that bypass the limit entirely (no charge, no fields), as
    /// the extractor writes them, e.g. `Key::for_ip(addr, 64)` or
    /// `"header:internal-monitoring"`.
    pub fn allow_keys<I>(mut self, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Key>,
    {
        let keys = keys.into_iter().map(|k| k.into().into_bytes().into());
        self.allowlist.extend(keys);
        self
    }

    /// Reserves each request's cost instead of charging it, and settles
    /// the reservation at the actual cost read from the response (a
    /// header, the head, or the body's bytes: [`Reserve`]). The request's
    /// cost ([`cost`](Self::cost), [`cost_fn`](Self::cost_fn)) is the
    /// estimate, decided like a check of it: a denied reservation is
    /// answered exactly like a denied check (429, `Retry-After`, the
    /// fields), a store error per [`StoreFailure`]; the fields of an allowed
    /// response say what remained after the estimate was charged. Estimates
    /// above [`tollgate::reservation::MAX_AMOUNT`] are reserved as that.
    ///
    /// The store must keep reservations (the memory store does) and every
    /// policy must be reservable (not `sliding_log` nor `leaky_bucket`):
    /// [`build`](Self::build) checks both. `docs/MIDDLEWARE.md` and
    /// [`crate::reserve`] say when each reservation is settled.
    ///
    /// ```
    /// use tollgate::{Limiter, MemoryStore};
    /// use tollgate_tower::{RateLimitLayer, Reserve};
    ///
    /// let limiter = Limiter::builder(MemoryStore::new())
    ///     .policy("download", "fixed_window 1000000000/1h".parse().unwrap())
    ///     .build();
    /// // Downloads reserve 10 MB, then pay for the bytes sent.
    /// let layer = RateLimitLayer::builder(limiter)
    ///     .policy("download")
    ///     .cost(10_000_000)
    ///     .reserve(Reserve::body_bytes())
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn reserve(mut self, reserve: Reserve) -> Self {
        self.reserve = Some(reserve);
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// A [`ConfigError`] when no policy is named, a name is unknown to the
    /// limiter or not printable ASCII, a policy is named twice for the same
    /// requests, a route names no policy, or the cost is zero; with
    /// [`reserve`](Self::reserve), when the store keeps no reservations, a
    /// policy cannot be reserved, or the [`Reserve`] is out of bounds.
    /// Checking here is what makes an unknown policy impossible while
    /// serving.
    pub fn build(self) -> Result<RateLimitLayer<S>, ConfigError> {
        if let Cost::Fixed(0) = self.cost {
            return Err(ConfigError::ZeroCost);
        }
        let policies = if self.routes.is_empty() {
            if self.default.is_empty() {
                return Err(ConfigError::NoPolicy);
            }
            Policies::Fixed(policy_set(&self.limiter, &self.default)?)
        } else {
            let mut routes = HashMap::new();
            for (route, names) in &self.routes {
                if names.is_empty() {
                    return Err(ConfigError::EmptyRoute(route.clone()));
                }
                let set = policy_set(&self.limiter, names)?;
                routes.insert(route.clone().into_boxed_str(), set);
            }
            let default = if self.default.is_empty() {
                None
            } else {
                Some(policy_set(&self.limiter, &self.default)?)
            };
            Policies::Routes { routes, default }
        };
        let reserve = match self.reserve {
            None => None,
            Some(reserve) => {
                reserve.validate(&self.limiter, policies.entries())?;
                Some(Reserving::new(reserve, self.limiter.clone()))
            }
        };
        Ok(RateLimitLayer {
            config: Arc::new(LayerConfig {
                limiter: self.limiter,
                policies,
                key: self.key,
                missing_key: self.missing_key,
                store_failure: self.store_failure,
                cost: self.cost,
                format: self.format,
                fields: self.fields,
                max_delay: self.max_delay,
                shadow: self.shadow,
                allowlist: self.allowlist,
                reserve,
            }),
        })
    }
}

fn policy_set<S: Store>(limiter: &Limiter<S>, names: &[String]) -> Result<PolicySet, ConfigError> {
    let mut entries: Vec<(Box<str>, Policy)> = Vec::with_capacity(names.len());
    for name in names {
        let policy = limiter
            .policy(name)
            .ok_or_else(|| ConfigError::UnknownPolicy(name.clone()))?;
        if !answer::is_sf_printable(name) {
            return Err(ConfigError::PolicyName(name.clone()));
        }
        entries.push((name.clone().into_boxed_str(), *policy));
    }
    // The limiter's own rule, found here at build time rather than as an
    // error on every request.
    if let Some(name) = tollgate::limiter::duplicate_policy(names.iter().map(String::as_str)) {
        return Err(ConfigError::DuplicatePolicy(name.to_owned()));
    }
    let field = answer::policy_field(entries.iter().map(|(name, policy)| (&**name, policy)));
    Ok(PolicySet {
        header: HeaderValue::try_from(field).ok(),
        entries,
    })
}
