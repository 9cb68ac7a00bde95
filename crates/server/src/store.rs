//! The stores the server decides on, chosen by configuration: a
//! [`ServerStore`] per configured store (`store:` and, if written,
//! `store.per_second:`), each behind its own resilience layer, and the
//! [`RoutedStore`] that sends each policy to its store.

use std::time::Duration;

use tollgate::resilience::Resilient;
use tollgate::store::{InvalidationSink, Invalidations};
use tollgate::{
    ChargeCall, Check, Decisions, LeaseAnswer, LeaseCall, MemoryStore, Mode, Policy, PolicyRef,
    ReserveCall, SettleAnswer, SettleCall, Store, StoreError,
};
use tollgate_redis::{ConnectError, RedisOptions, RedisStore, SentinelMaster};

use crate::config::{KeyLayout, StoreKind, StoreSettings};
use crate::envoy::envoyproxy_counter_base;

/// The memory store or a Redis store, behind one type so the server is not
/// generic over its store. Cheap to clone; clones share state.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ServerStore {
    /// The embedded memory store.
    Memory(MemoryStore),
    /// Redis, Redis Cluster, or the master Redis Sentinel names.
    Redis(RedisStore),
}

/// The longest a call to Redis made past the resilience layer may take
/// (readiness, the `PING`s that explain a failure, override writes), or
/// `store.timeout` when that is longer: a hung Redis answers them with a
/// timeout rather than holding the request, and its connection, forever.
pub const DIRECT_CALL_BOUND: Duration = Duration::from_secs(1);

impl ServerStore {
    /// Connects to the configured store.
    ///
    /// # Errors
    /// [`ConnectError`] when Redis cannot be reached or its URL or prefix is
    /// invalid (the TLS files of `store.tls_*_file` were read at load).
    pub async fn connect(settings: &StoreSettings) -> Result<ServerStore, ConnectError> {
        // `store.timeout` is the resilience layer's deadline, which wraps
        // every decision. The store's own bound is the backstop for the
        // calls made past that layer (readiness, the PINGs that explain a
        // failure, override writes): never shorter than the deadline, so
        // it cuts no decision.
        let mut options = RedisOptions::default()
            .prefix(settings.prefix.clone())
            .connections(settings.connections)
            .timeout(settings.timeout.max(DIRECT_CALL_BOUND));
        if let Some(tls) = &settings.tls {
            if let Some(ca) = &tls.ca {
                options = options.tls_root_cert(ca.clone());
            }
            if let Some((cert, key)) = &tls.client {
                options = options.tls_client_cert(cert.clone(), key.clone());
            }
        }
        if settings.key_layout == KeyLayout::Envoy {
            options = options.envoy_prefix(settings.envoy_prefix.clone());
        }
        Ok(match settings.kind {
            StoreKind::Memory => ServerStore::Memory(
                MemoryStore::builder()
                    .max_keys(settings.max_keys)
                    .max_reservations(settings.max_reservations)
                    .build(),
            ),
            StoreKind::Redis => {
                let url = settings.urls.first().map_or("", String::as_str);
                ServerStore::Redis(RedisStore::connect(url, options).await?)
            }
            StoreKind::RedisCluster => {
                ServerStore::Redis(RedisStore::connect_cluster(&settings.urls, options).await?)
            }
            StoreKind::RedisSentinel => {
                let sentinel = settings
                    .sentinel
                    .as_ref()
                    .ok_or(ConnectError::NoMasterName)?;
                let mut master =
                    SentinelMaster::new(sentinel.master_name.clone()).tls(sentinel.master_tls);
                if let Some(username) = &sentinel.master_username {
                    master = master.username(username.clone());
                }
                if let Some(password) = &sentinel.master_password {
                    master = master.password(password.clone());
                }
                ServerStore::Redis(
                    RedisStore::connect_sentinel(&settings.urls, master, options).await?,
                )
            }
        })
    }

    /// `(entries held, entries evicted)` of the memory store; `None` on Redis.
    pub fn memory_usage(&self) -> Option<(usize, u64)> {
        match self {
            ServerStore::Memory(store) => Some((store.len(), store.evictions())),
            ServerStore::Redis(_) => None,
        }
    }

    /// Why this store cannot keep a reservation of `policies` for `key`:
    /// a limit kept on envoyproxy/ratelimit's counter; `None` when it can.
    pub fn refuses_reservation(
        &self,
        key: &[u8],
        policies: &[PolicyRef<'_>],
    ) -> Option<StoreError> {
        match self {
            ServerStore::Redis(store) if envoy_counter(store, key, policies).is_some() => {
                Some(NOT_ON_ENVOY_COUNTERS)
            }
            _ => None,
        }
    }

    /// `(open reservations, reservations evicted)` of the memory store;
    /// `None` on Redis.
    pub fn reservation_usage(&self) -> Option<(usize, u64)> {
        match self {
            ServerStore::Memory(store) => {
                Some((store.reservations(), store.reservation_evictions()))
            }
            ServerStore::Redis(_) => None,
        }
    }

    /// Why the store fails, as precisely as it can tell: a failed decision
    /// may only say `broken pipe` where Redis answers `PING` with the reason
    /// (`NOAUTH`, `LOADING`...). Returns `error` with `PING`'s error added
    /// when that differs. Takes at most [`DIRECT_CALL_BOUND`] in all,
    /// however many connections there are: past it, `error` alone.
    pub async fn explain(&self, error: &StoreError) -> String {
        match self {
            ServerStore::Memory(_) => error.to_string(),
            ServerStore::Redis(store) => {
                // A connection Redis has just closed fails the first PING
                // with the closing; the reconnected one gets the answer.
                // Each PING takes the store's next connection, and every
                // one of them may have been closed.
                let pings = async {
                    let mut ping = store.ping().await;
                    for _ in 0..store.connections() {
                        if !matches!(ping, Err(StoreError::Unavailable(_))) {
                            break;
                        }
                        ping = store.ping().await;
                    }
                    ping
                };
                match tokio::time::timeout(DIRECT_CALL_BOUND, pings).await {
                    Ok(Err(ping)) if ping != *error => format!("{error} (PING: {ping})"),
                    _ => error.to_string(),
                }
            }
        }
    }

    /// What the store is, for logs: `memory`, or the Redis store's topology,
    /// prefix (and, on Sentinel, the master in use).
    pub fn describe(&self) -> String {
        match self {
            ServerStore::Memory(_) => "memory".to_owned(),
            ServerStore::Redis(store) => format!("{store:?}"),
        }
    }
}

/// Reset notices: the Redis store's pub/sub feed; the memory store is
/// private to the process and has none (it is wrapped without one).
impl Invalidations for ServerStore {
    fn subscribe(&self, sink: InvalidationSink) {
        match self {
            ServerStore::Memory(_) => drop(sink),
            ServerStore::Redis(store) => store.subscribe(sink),
        }
    }
}

/// On a Redis store with `key_layout: envoy` (an envoy prefix), a check of
/// one inline Envoy descriptor limit in fixed windows is decided on
/// envoyproxy/ratelimit's counter ([`envoyproxy_counter_base`] says which);
/// everything else in tollgate's layout. Leases are the store's own; a
/// check kept on envoyproxy/ratelimit's counter leases nothing (that
/// layout has no lease: the check is decided as a plain one).
impl Store for ServerStore {
    async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        match self {
            ServerStore::Memory(store) => store.apply(check).await,
            ServerStore::Redis(store) => match envoy_counter(store, check.key, check.policies) {
                Some((base, policy)) => {
                    let decision = store
                        .apply_envoy_counter(&base, policy, check.cost, check.mode)
                        .await?;
                    Ok(std::iter::once(decision).collect())
                }
                None => store.apply(check).await,
            },
        }
    }

    async fn lease(&self, call: LeaseCall<'_>) -> Result<LeaseAnswer, StoreError> {
        match self {
            ServerStore::Memory(store) => store.lease(call).await,
            ServerStore::Redis(store) => {
                if envoy_counter(store, call.check.key, call.check.policies).is_some() {
                    let check = Check {
                        mode: Mode::Consume,
                        ..call.check
                    };
                    return Ok(LeaseAnswer::unleased(self.apply(check).await?));
                }
                store.lease(call).await
            }
        }
    }

    /// Both stores lease (a check kept on envoyproxy/ratelimit's counter is
    /// decided without one: only inline Envoy limits are, and they carry
    /// no lease).
    fn leases(&self) -> bool {
        true
    }

    /// The store's own reservation; refused for a limit kept on
    /// envoyproxy/ratelimit's counter, whose layout has no room for one.
    async fn reserve(&self, call: ReserveCall<'_>) -> Result<Decisions, StoreError> {
        match self {
            ServerStore::Memory(store) => store.reserve(call).await,
            ServerStore::Redis(store) => {
                if envoy_counter(store, call.check.key, call.check.policies).is_some() {
                    return Err(NOT_ON_ENVOY_COUNTERS);
                }
                store.reserve(call).await
            }
        }
    }

    /// The store's own settle (see [`reserve`](Store::reserve)).
    async fn settle(&self, call: SettleCall<'_>) -> Result<Option<SettleAnswer>, StoreError> {
        match self {
            ServerStore::Memory(store) => store.settle(call).await,
            ServerStore::Redis(store) => {
                if envoy_counter(store, call.key, call.policies).is_some() {
                    // Never reserved there: no such reservation.
                    return Ok(None);
                }
                store.settle(call).await
            }
        }
    }

    /// The store's own charge (see [`reserve`](Store::reserve)).
    async fn charge(&self, call: ChargeCall<'_>) -> Result<SettleAnswer, StoreError> {
        match self {
            ServerStore::Memory(store) => store.charge(call).await,
            ServerStore::Redis(store) => {
                if envoy_counter(store, call.key, call.policies).is_some() {
                    return Err(NOT_ON_ENVOY_COUNTERS);
                }
                store.charge(call).await
            }
        }
    }

    fn reserves(&self) -> bool {
        match self {
            ServerStore::Memory(store) => store.reserves(),
            ServerStore::Redis(store) => store.reserves(),
        }
    }

    async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        match self {
            ServerStore::Memory(store) => store.reset(key, policies).await,
            ServerStore::Redis(store) => {
                let mut own: Vec<PolicyRef<'_>> = Vec::new();
                for policy in policies {
                    match envoy_counter(store, key, std::slice::from_ref(policy)) {
                        Some((base, policy)) => {
                            store.reset_envoy_counter(&base, policy, key).await?
                        }
                        None => own.push(*policy),
                    }
                }
                if own.is_empty() {
                    return Ok(());
                }
                store.reset(key, &own).await
            }
        }
    }
}

/// Why a limit kept on envoyproxy/ratelimit's counter cannot be reserved.
const NOT_ON_ENVOY_COUNTERS: StoreError = StoreError::Unsupported(
    "reservations of a limit kept on envoyproxy/ratelimit's counter (store.key_layout: envoy), \
     a plain count with no room for a reservation",
);

/// Why a reservation naming policies of both stores is refused.
const NOT_ACROSS_STORES: StoreError = StoreError::Unsupported(
    "reservations naming policies of both the main and the per-second store (store.per_second): \
     a reservation is one atomic step in one store; reserve the one-second policies and the \
     others separately",
);

/// Why a store that keeps no reservations is not asked for one.
const NO_RESERVATIONS: StoreError = StoreError::Unsupported("reservations: this store keeps none");

/// The envoyproxy/ratelimit counter a check on `store` is kept in, and its
/// policy: `None` for tollgate's layout.
fn envoy_counter<'p>(
    store: &RedisStore,
    key: &[u8],
    policies: &[PolicyRef<'p>],
) -> Option<(Vec<u8>, &'p Policy)> {
    store.envoy_prefix()?;
    let base = envoyproxy_counter_base(key, policies)?;
    Some((base, policies.first()?.policy))
}

/// One configured store behind its resilience layer (deadline, circuit
/// breaker, deny cache, failure mode).
pub type ResilientStore = Resilient<ServerStore>;

/// Whether `policy` is decided on the per-second store, when there is one:
/// its period is exactly one second, whatever its algorithm or where it is
/// written (envoyproxy/ratelimit sends every limit of unit `SECOND` to its
/// `REDIS_PERSECOND` Redis).
pub fn is_per_second(policy: &Policy) -> bool {
    policy.period() == Duration::from_secs(1)
}

/// The store every check goes through: the main store, and the per-second
/// store for the policies [`is_per_second`] picks, each with its own
/// resilience layer, so a failure of one degrades only the policies on it.
/// Cheap to clone; clones share everything.
///
/// A check whose policies are all on one store is that store's check,
/// atomic and all-or-nothing as ever. A check with policies on both cannot
/// be atomic across two Redis servers. It is decided on the per-second
/// store first (all-or-nothing among its policies); only if that allows is
/// it decided on the main store (likewise), and otherwise the main store's
/// policies are only looked at (a peek). So a check is allowed only when
/// both stores allowed and charged it: never more than the limits. The
/// price: when the per-second store allows and the main store then denies,
/// the per-second charge stays for a check that was denied — at most
/// `cost` of a one-second limit, gone when its window (or bucket) moves
/// on. Per-second first because that is the cheaper loss: the reverse
/// order would let every burst the per-second limit denies spend the
/// longer limits' quota. Peeks go to both stores at once.
///
/// Leases likewise: a lease call whose policies are all on one store is
/// that store's lease call. One with policies on both cannot take its
/// leases atomically with its check (nor give held units back to two
/// servers in one step), so it is decided as a plain check, as above, and
/// leases nothing: its held units are forfeited, which is always exact.
#[derive(Clone, Debug)]
pub struct RoutedStore {
    main: ResilientStore,
    per_second: Option<ResilientStore>,
}

impl RoutedStore {
    /// Routes to `main`, and to `per_second` for the policies
    /// [`is_per_second`] picks when it is given.
    pub fn new(main: ResilientStore, per_second: Option<ResilientStore>) -> Self {
        RoutedStore { main, per_second }
    }

    /// The main store.
    pub fn main(&self) -> &ResilientStore {
        &self.main
    }

    /// The per-second store, if configured.
    pub fn per_second(&self) -> Option<&ResilientStore> {
        self.per_second.as_ref()
    }

    /// Forgets every cached denial, on both stores.
    pub fn clear_deny_cache(&self) {
        self.main.clear_deny_cache();
        if let Some(store) = &self.per_second {
            store.clear_deny_cache();
        }
    }

    /// Puts per-policy failure modes in force on both stores.
    pub fn set_policy_modes(&self, modes: &[(String, tollgate::resilience::FailureMode)]) {
        self.main.set_policy_modes(modes.iter().cloned());
        if let Some(store) = &self.per_second {
            store.set_policy_modes(modes.iter().cloned());
        }
    }

    /// The one store that holds every policy of a reservation of `key`, if
    /// it can keep it.
    fn reserving_store(
        &self,
        key: &[u8],
        policies: &[PolicyRef<'_>],
    ) -> Result<&ResilientStore, StoreError> {
        let store = match self.split(policies) {
            None => &self.main,
            Some((_, split)) if split.main.is_empty() => {
                self.per_second.as_ref().unwrap_or(&self.main)
            }
            Some((_, split)) if split.per_second.is_empty() => &self.main,
            Some(_) => return Err(NOT_ACROSS_STORES),
        };
        if !store.reserves() {
            return Err(NO_RESERVATIONS);
        }
        match store.get_ref().refuses_reservation(key, policies) {
            Some(refused) => Err(refused),
            None => Ok(store),
        }
    }

    /// The per-second store and `policies` split between the two stores
    /// (each with its index); `None` without a per-second store.
    fn split<'a>(&self, policies: &[PolicyRef<'a>]) -> Option<(&ResilientStore, Split<'a>)> {
        let per_second = self.per_second.as_ref()?;
        let mut split = Split::default();
        for (i, policy) in policies.iter().enumerate() {
            if is_per_second(policy.policy) {
                split.per_second.push((i, *policy));
            } else {
                split.main.push((i, *policy));
            }
        }
        Some((per_second, split))
    }
}

/// A check's policies split between the two stores, each with its index in
/// the check.
#[derive(Default)]
struct Split<'a> {
    main: Vec<(usize, PolicyRef<'a>)>,
    per_second: Vec<(usize, PolicyRef<'a>)>,
}

fn refs<'a>(part: &[(usize, PolicyRef<'a>)]) -> Vec<PolicyRef<'a>> {
    part.iter().map(|(_, p)| *p).collect()
}

/// Puts the two stores' decisions back in the check's order.
fn merge(
    n: usize,
    split: &Split<'_>,
    main: Decisions,
    per_second: Decisions,
) -> Result<Decisions, StoreError> {
    let mut slots: Vec<Option<tollgate::Decision>> = vec![None; n];
    for ((i, _), d) in split.main.iter().zip(main) {
        slots[*i] = Some(d);
    }
    for ((i, _), d) in split.per_second.iter().zip(per_second) {
        slots[*i] = Some(d);
    }
    slots
        .into_iter()
        .map(|d| d.ok_or_else(|| StoreError::Protocol("a store returned too few decisions".into())))
        .collect()
}

impl Store for RoutedStore {
    async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        let Some((per_second, split)) = self.split(check.policies) else {
            return self.main.apply(check).await;
        };
        if split.per_second.is_empty() {
            return self.main.apply(check).await;
        }
        if split.main.is_empty() {
            return per_second.apply(check).await;
        }
        let (main_refs, second_refs) = (refs(&split.main), refs(&split.per_second));
        let part = |refs, mode| Check::new(check.key, refs, check.cost, mode);
        let (main, second) = match check.mode {
            Mode::Peek => {
                let (main, second) = tokio::join!(
                    self.main.apply(part(&main_refs, Mode::Peek)),
                    per_second.apply(part(&second_refs, Mode::Peek)),
                );
                (main?, second?)
            }
            Mode::Consume => {
                let second = per_second.apply(part(&second_refs, Mode::Consume)).await?;
                let mode = if second.iter().all(|d| d.allowed) {
                    Mode::Consume
                } else {
                    Mode::Peek
                };
                (self.main.apply(part(&main_refs, mode)).await?, second)
            }
        };
        merge(check.policies.len(), &split, main, second)
    }

    /// The store of every policy of the call, when they share one; else a
    /// consumed check across both stores ([`apply`](Store::apply)), with
    /// no lease (see the type's documentation).
    async fn lease(&self, call: LeaseCall<'_>) -> Result<LeaseAnswer, StoreError> {
        let Some((per_second, split)) = self.split(call.check.policies) else {
            return self.main.lease(call).await;
        };
        if split.per_second.is_empty() {
            return self.main.lease(call).await;
        }
        if split.main.is_empty() {
            return per_second.lease(call).await;
        }
        let check = Check {
            mode: Mode::Consume,
            ..call.check
        };
        Ok(LeaseAnswer::unleased(self.apply(check).await?))
    }

    /// The store of every policy of the reservation; refused
    /// ([`StoreError::Unsupported`]) when they are on both stores (a
    /// reservation is one atomic step in one store), when that store keeps
    /// no reservations, and on envoyproxy/ratelimit's counters — refused
    /// here, before its resilience layer, so that a refusal never counts as
    /// a store failure towards opening the circuit breaker.
    async fn reserve(&self, call: ReserveCall<'_>) -> Result<Decisions, StoreError> {
        self.reserving_store(call.check.key, call.check.policies)?
            .reserve(call)
            .await
    }

    /// The store of every policy of the reservation, as
    /// [`reserve`](Store::reserve) picks it. Policies no store could have
    /// reserved together (a forged id) name no reservation: `None`, as
    /// for any unknown one, saying nothing of the stores' layout.
    async fn settle(&self, call: SettleCall<'_>) -> Result<Option<SettleAnswer>, StoreError> {
        match self.reserving_store(call.key, call.policies) {
            Ok(store) => store.settle(call).await,
            Err(_) => Ok(None),
        }
    }

    /// The store of every policy of the charge, as
    /// [`reserve`](Store::reserve) picks it.
    async fn charge(&self, call: ChargeCall<'_>) -> Result<SettleAnswer, StoreError> {
        self.reserving_store(call.key, call.policies)?
            .charge(call)
            .await
    }

    fn reserves(&self) -> bool {
        self.main.reserves() && self.per_second.as_ref().is_none_or(Store::reserves)
    }

    /// Resets the policies on each store; both are tried, and the first
    /// failure is returned.
    async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        let Some((per_second, split)) = self.split(policies) else {
            return self.main.reset(key, policies).await;
        };
        let (main_refs, second_refs) = (refs(&split.main), refs(&split.per_second));
        let main = async {
            if main_refs.is_empty() {
                Ok(())
            } else {
                self.main.reset(key, &main_refs).await
            }
        };
        let second = async {
            if second_refs.is_empty() {
                Ok(())
            } else {
                per_second.reset(key, &second_refs).await
            }
        };
        let (main, second) = tokio::join!(main, second);
        main.and(second)
    }
}

#[cfg(test)]
mod tests {
    use tollgate::resilience::ResilienceOptions;
    use tollgate::{Clock, Held, LeaseAsk, Leased, ManualClock};

    use super::*;

    /// A router over two memory stores on `clock`, behind their resilience
    /// layers as the server builds them.
    fn routed(clock: &ManualClock) -> RoutedStore {
        let store = || {
            Resilient::new(
                ServerStore::Memory(MemoryStore::with_clock(clock.clone())),
                ResilienceOptions::default().clock(clock.clone()),
            )
        };
        RoutedStore::new(store(), Some(store()))
    }

    fn policy(text: &str) -> Policy {
        text.parse().expect("a valid policy")
    }

    /// Remaining units of `policy` for `key` (a peek of one unit).
    async fn remaining(store: &RoutedStore, key: &[u8], policy: PolicyRef<'_>) -> u64 {
        let refs = [policy];
        store
            .apply(Check::new(key, &refs, 1, Mode::Peek))
            .await
            .expect("memory")[0]
            .remaining
    }

    #[tokio::test]
    async fn a_lease_call_across_both_stores_is_a_plain_check_that_leases_nothing() {
        let clock = ManualClock::new(1_790_000_000_000_000);
        let store = routed(&clock);
        let (second, hour) = (policy("fixed_window 100/1s"), policy("fixed_window 100/1h"));
        let refs = [
            PolicyRef {
                name: "second",
                policy: &second,
            },
            PolicyRef {
                name: "hour",
                policy: &hour,
            },
        ];
        let ask = LeaseAsk {
            want: 50,
            ttl_us: 10_000_000,
            held: Held {
                units: 3,
                until: clock.now_us() + 500_000,
            },
        };
        let call = LeaseCall {
            check: Check::new(b"k", &refs, 2, Mode::Consume),
            asks: &[ask, ask],
        };
        let answer = store.lease(call).await.expect("memory");
        assert!(answer.decisions.iter().all(|d| d.allowed), "{answer:?}");
        assert_eq!(answer.leased.as_slice(), [Leased::default(); 2]);
        // Both charged the check's cost, and nothing more.
        for policy in refs {
            assert_eq!(remaining(&store, b"k", policy).await, 98, "{}", policy.name);
        }
        // Denied on the per-second store: the main store is not charged.
        let call = LeaseCall {
            check: Check::new(b"k", &refs, 99, Mode::Consume),
            asks: &[ask, ask],
        };
        let denied = store.lease(call).await.expect("memory");
        assert!(!denied.decisions[0].allowed, "{denied:?}");
        assert_eq!(denied.leased.as_slice(), [Leased::default(); 2]);
        assert_eq!(remaining(&store, b"k", refs[1]).await, 98);
    }

    /// A check kept on envoyproxy/ratelimit's counter cannot lease: the
    /// call is that check, charged on the counter, and leases nothing.
    #[tokio::test]
    async fn a_lease_call_on_an_envoy_counter_is_a_plain_check_that_leases_nothing() {
        let server = tollgate_testkit::redis::RedisServer::start();
        let options = RedisOptions::default()
            .prefix(tollgate_testkit::redis::unique_prefix())
            .envoy_prefix("lease_")
            .timeout(Duration::from_secs(5));
        let store = ServerStore::Redis(
            RedisStore::connect(&server.url(), options)
                .await
                .expect("connect"),
        );
        let limit = policy("fixed_window 100/1s");
        let refs = [PolicyRef {
            name: "envoy/domain/key",
            policy: &limit,
        }];
        let ask = LeaseAsk {
            want: 50,
            ttl_us: 10_000_000,
            held: Held::default(),
        };
        let call = LeaseCall {
            check: Check::new(b"envoy:6:domain3:key5:value", &refs, 3, Mode::Consume),
            asks: &[ask],
        };
        let answer = store.lease(call).await.expect("redis");
        assert!(answer.decisions[0].allowed, "{answer:?}");
        assert_eq!(answer.decisions[0].remaining, 97, "{answer:?}");
        assert_eq!(answer.leased.as_slice(), [Leased::default()]);
        let counters = server.cli(&["KEYS", "lease_domain_key_value_*"]);
        let counter = counters.lines().next().expect("the counter");
        assert_eq!(server.cli(&["GET", counter]), "3");
    }

    /// A limit kept on envoyproxy/ratelimit's counter cannot be reserved:
    /// refused, saying why, and the counter is not touched.
    #[tokio::test]
    async fn a_reservation_on_an_envoy_counter_is_refused() {
        let server = tollgate_testkit::redis::RedisServer::start();
        let options = RedisOptions::default()
            .prefix(tollgate_testkit::redis::unique_prefix())
            .envoy_prefix("res_")
            .timeout(Duration::from_secs(5));
        let store = ServerStore::Redis(
            RedisStore::connect(&server.url(), options)
                .await
                .expect("connect"),
        );
        let limit = policy("fixed_window 100/1m");
        let refs = [PolicyRef {
            name: "envoy/domain/key",
            policy: &limit,
        }];
        let key = b"envoy:6:domain3:key5:value";
        let error = store
            .reserve(ReserveCall {
                check: Check::new(key, &refs, 3, Mode::Consume),
                nonce: 1,
                deadline_us: 1_000_000,
            })
            .await
            .expect_err("refused");
        assert!(
            error.to_string().contains("envoyproxy/ratelimit's counter"),
            "{error}"
        );
        let settle = store
            .settle(SettleCall {
                key,
                policies: &refs,
                nonce: 1,
                actual: 5,
            })
            .await;
        // Never reserved there: no such reservation.
        assert_eq!(settle, Ok(None));
        // Through the server's router: refused before the resilience
        // layer, so never a store failure towards the breaker.
        let routed = RoutedStore::new(
            Resilient::new(store, tollgate::resilience::ResilienceOptions::default()),
            None,
        );
        for _ in 0..10 {
            let refused = routed
                .reserve(ReserveCall {
                    check: Check::new(key, &refs, 3, Mode::Consume),
                    nonce: 2,
                    deadline_us: 1_000_000,
                })
                .await;
            assert!(
                matches!(refused, Err(StoreError::Unsupported(_))),
                "{refused:?}"
            );
        }
        assert_eq!(routed.main().stats().failures, 0);
        assert_eq!(server.cli(&["KEYS", "res_*"]), "");
    }
}
