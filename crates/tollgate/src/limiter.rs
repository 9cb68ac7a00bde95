//! The limiter: named policies over a store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hashbrown::HashMap;
use smallvec::SmallVec;
use sync_wrapper::SyncFuture;

use std::time::Duration;

use crate::overrides::{Override, OverrideError, OverrideLimit, Overrides, Page, Source};
use crate::reservation::{MAX_AMOUNT, Reservation, ReservationId};
use crate::store::{
    ChargeCall, Check, Decisions, Mode, PolicyRef, ReserveCall, SettleAnswer, SettleCall, Store,
};
use crate::{Decision, Error, MemoryStore, Policy};

/// The default longest key, in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 1024;

/// Named policies over a shared store. Cheap to clone (one `Arc`); every
/// clone shares the same store, so the budget is the same whichever clone
/// (or task, or service instance under axum) asks.
///
/// ```
/// use tollgate::{Limiter, MemoryStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let limiter = Limiter::builder(MemoryStore::new())
///     .policy("per_second", "10/s".parse()?)
///     .policy("per_hour", "sliding_log 1000/1h".parse()?)
///     .build();
/// let d = limiter.check("per_second", "user-1", 1).await?;
/// assert!(d.allowed);
/// assert_eq!(d.remaining, 9);
///
/// // Both policies at once: charged to both only if both allow.
/// let all = limiter.check_all(&["per_second", "per_hour"], "user-1", 3).await?;
/// assert!(all.allowed);
/// assert_eq!(all.decisions[1].remaining, 997);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Limiter<S = MemoryStore> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Limiter<S> {
    fn clone(&self) -> Self {
        Limiter {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> std::fmt::Debug for Limiter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("policies", &self.inner.policies)
            .finish_non_exhaustive()
    }
}

struct Inner<S> {
    store: S,
    policies: HashMap<Box<str>, Policy>,
    max_key_len: usize,
    overrides: Option<Arc<Overrides>>,
}

/// The result of checking several policies at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// Whether every policy allowed the request (and so each was charged).
    pub allowed: bool,
    /// One decision per policy, in the order the policies were named.
    pub decisions: Decisions,
    /// Which decisions were made under an override
    /// ([`LimiterBuilder::overrides`]): one flag per policy, or empty when
    /// no override applied.
    pub overridden: SmallVec<[bool; 2]>,
}

impl MultiDecision {
    /// The longest `retry_after` among the denials: when the whole request
    /// could pass. `None` if allowed or if some denial can never pass (the
    /// rule of [`answer::retry_after`](crate::answer::retry_after)).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        crate::answer::retry_after(&self.decisions)
    }
}

/// Builds a [`Limiter`].
#[derive(Debug)]
pub struct LimiterBuilder<S> {
    store: S,
    policies: HashMap<Box<str>, Policy>,
    max_key_len: usize,
    overrides: Option<Arc<Overrides>>,
}

impl<S: Store> LimiterBuilder<S> {
    /// Adds (or replaces) the policy called `name`.
    pub fn policy(mut self, name: impl Into<String>, policy: Policy) -> Self {
        self.policies.insert(name.into().into_boxed_str(), policy);
        self
    }

    /// Sets the longest key accepted, in bytes (default
    /// [`DEFAULT_MAX_KEY_LEN`]): longer keys are rejected with
    /// [`Error::KeyTooLong`] instead of being stored.
    pub fn max_key_len(mut self, max: usize) -> Self {
        self.max_key_len = max;
        self
    }

    /// Consults `overrides` on every check: a (policy, key) with an
    /// override is decided under it (see [`crate::overrides`]). Share one
    /// table between limiters (a reload builds a new limiter) with
    /// `Arc::clone`.
    pub fn overrides(mut self, overrides: Arc<Overrides>) -> Self {
        self.overrides = Some(overrides);
        self
    }

    /// Builds the limiter.
    pub fn build(self) -> Limiter<S> {
        Limiter {
            inner: Arc::new(Inner {
                store: self.store,
                policies: self.policies,
                max_key_len: self.max_key_len,
                overrides: self.overrides,
            }),
        }
    }
}

impl<S: Store> Limiter<S> {
    /// Starts building a limiter over `store`.
    pub fn builder(store: S) -> LimiterBuilder<S> {
        LimiterBuilder {
            store,
            policies: HashMap::new(),
            max_key_len: DEFAULT_MAX_KEY_LEN,
            overrides: None,
        }
    }

    /// The overrides this limiter consults, if any.
    pub fn overrides(&self) -> Option<&Arc<Overrides>> {
        self.inner.overrides.as_ref()
    }

    /// Sets the run-time override of `policy` for `key` in this limiter's
    /// table: `limit` replaces the policy for that key only, until
    /// `expires_in` has passed if given. Overriding numbers keep the
    /// policy's algorithm and lease.
    ///
    /// A table that follows a store ([`crate::overrides::follow`]) is
    /// replaced by the store's copy at its next change: write such
    /// overrides through the store ([`crate::overrides::OverrideStore`]),
    /// then here, as the server does.
    ///
    /// # Errors
    /// When the limiter has no override table, the policy is unknown, the
    /// numbers are for another algorithm, the key is too long, or the
    /// table is full.
    pub fn set_override(
        &self,
        policy: &str,
        key: impl AsRef<[u8]>,
        limit: OverrideLimit,
        expires_in: Option<std::time::Duration>,
    ) -> Result<(), OverrideError> {
        let key = key.as_ref();
        let table = self
            .inner
            .overrides
            .as_ref()
            .ok_or(OverrideError::Full(0))?;
        let limit = self.check_override(policy, key, limit)?;
        let expires_at_us =
            expires_in.map(|d| table.now_us().saturating_add(crate::clock::micros(d)));
        table.set(
            policy,
            key,
            Override {
                limit,
                expires_at_us,
            },
        )
    }

    /// The override in force for `policy` and `key`, and its layer.
    pub fn override_of(&self, policy: &str, key: impl AsRef<[u8]>) -> Option<(Override, Source)> {
        self.inner.overrides.as_ref()?.lookup(policy, key.as_ref())
    }

    /// Deletes the run-time override of `policy` for `key`; whether there
    /// was one. A declared one is in force again.
    pub fn remove_override(&self, policy: &str, key: impl AsRef<[u8]>) -> bool {
        self.inner
            .overrides
            .as_ref()
            .is_some_and(|t| t.remove(policy, key.as_ref()))
    }

    /// A page of the overrides in force ([`Overrides::list`]).
    pub fn list_overrides(
        &self,
        policy: Option<&str>,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Page {
        match &self.inner.overrides {
            Some(table) => table.list(policy, cursor, limit),
            None => Page {
                items: Vec::new(),
                next: None,
            },
        }
    }

    /// Checks an override against the policy it overrides: the policy is
    /// known, the numbers keep its algorithm (and take its lease), the key
    /// is not too long. Returns the override as it will apply.
    ///
    /// # Errors
    /// As [`set_override`](Self::set_override).
    pub fn check_override(
        &self,
        policy: &str,
        key: &[u8],
        limit: OverrideLimit,
    ) -> Result<OverrideLimit, OverrideError> {
        let base = self
            .policy(policy)
            .ok_or_else(|| OverrideError::UnknownPolicy(policy.to_owned()))?;
        if key.len() > self.inner.max_key_len {
            return Err(OverrideError::KeyTooLong {
                len: key.len(),
                max: self.inner.max_key_len,
            });
        }
        Ok(match limit {
            OverrideLimit::Policy(p) if p.algorithm() != base.algorithm() => {
                return Err(OverrideError::OtherAlgorithm {
                    policy: policy.to_owned(),
                    expected: base.algorithm(),
                    given: p.algorithm(),
                });
            }
            OverrideLimit::Policy(p) => OverrideLimit::Policy(p.without_lease()),
            other => other,
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The policy called `name`.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.inner.policies.get(name)
    }

    /// Every policy, by name, in no particular order.
    pub fn policies(&self) -> impl Iterator<Item = (&str, &Policy)> {
        self.inner.policies.iter().map(|(k, v)| (&**k, v))
    }

    /// Spends `cost` units of `policy` for `key` if the policy allows it.
    ///
    /// # Errors
    /// [`Error::UnknownPolicy`], [`Error::ZeroCost`], [`Error::KeyTooLong`],
    /// or [`Error::Store`] when the store fails. A denial is `Ok`.
    pub async fn check(
        &self,
        policy: &str,
        key: impl AsRef<[u8]>,
        cost: u64,
    ) -> Result<Decision, Error> {
        self.one(policy, key.as_ref(), cost, Mode::Consume).await
    }

    /// Decides like [`check`](Self::check) without spending anything.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub async fn peek(
        &self,
        policy: &str,
        key: impl AsRef<[u8]>,
        cost: u64,
    ) -> Result<Decision, Error> {
        self.one(policy, key.as_ref(), cost, Mode::Peek).await
    }

    /// Checks several policies for one key at once, all-or-nothing: the cost
    /// is charged to every policy only if every policy allows it.
    ///
    /// # Errors
    /// As [`check`](Self::check), [`Error::NoPolicy`] for an empty list, and
    /// [`Error::DuplicatePolicy`] for a list that names a policy twice
    /// (checked before the store is asked, so nothing is charged).
    pub async fn check_all(
        &self,
        policies: &[&str],
        key: impl AsRef<[u8]>,
        cost: u64,
    ) -> Result<MultiDecision, Error> {
        self.many(policies, key.as_ref(), cost, Mode::Consume).await
    }

    /// Decides like [`check_all`](Self::check_all) without spending anything.
    ///
    /// # Errors
    /// As [`check_all`](Self::check_all).
    pub async fn peek_all(
        &self,
        policies: &[&str],
        key: impl AsRef<[u8]>,
        cost: u64,
    ) -> Result<MultiDecision, Error> {
        self.many(policies, key.as_ref(), cost, Mode::Peek).await
    }

    /// Decides `cost` for `key` against policies passed by value instead of
    /// registered by name, all-or-nothing as [`check_all`](Self::check_all)
    /// (with [`Mode::Consume`]) or [`peek_all`](Self::peek_all) (with
    /// [`Mode::Peek`]) do. For limits that exist only per request and so
    /// cannot be registered ahead, such as an Envoy descriptor's `limit`
    /// override.
    ///
    /// A policy's name is part of its state's identity exactly as for a
    /// registered policy: a name that is also registered shares that state,
    /// so callers pick names no registered policy uses unless sharing is
    /// what they mean.
    ///
    /// # Errors
    /// [`Error::NoPolicy`] for an empty list, [`Error::DuplicatePolicy`]
    /// for a name given twice (nothing is charged), [`Error::ZeroCost`],
    /// [`Error::KeyTooLong`], or [`Error::Store`] when the store fails.
    pub async fn apply(
        &self,
        policies: &[PolicyRef<'_>],
        key: impl AsRef<[u8]>,
        cost: u64,
        mode: Mode,
    ) -> Result<MultiDecision, Error> {
        let key = key.as_ref();
        if policies.is_empty() {
            return Err(Error::NoPolicy);
        }
        distinct(policies.iter().map(|p| p.name))?;
        self.validate_request(key, cost)?;
        self.apply_checked(Check::new(key, policies, cost, mode))
            .await
    }

    /// Reserves `estimate` units of every policy in `policies` for `key`,
    /// for a cost known only afterwards: decided like
    /// [`check_all`](Self::check_all) of `estimate` (all-or-nothing), and
    /// when allowed a reservation stays open in the store for `deadline`,
    /// to be settled with [`settle`](Self::settle) at the actual cost or
    /// given back with [`cancel`](Self::cancel). Not settled by its
    /// deadline, it settles at its estimate. `docs/RESERVATIONS.md` has
    /// the rules.
    ///
    /// Overrides apply as to a check: a blocked policy denies, an
    /// unlimited one is not reserved (nothing to settle), numbers replace
    /// the policy's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Limiter, MemoryStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = Limiter::builder(MemoryStore::new())
    ///     .policy("tokens", "fixed_window 10000/1m".parse()?)
    ///     .build();
    /// let reservation = limiter.reserve(&["tokens"], "alice", 2_000, Duration::from_secs(60)).await?;
    /// assert!(reservation.allowed());
    /// let id = reservation.id.expect("allowed");
    /// // The response used 1 200 tokens: 800 go back.
    /// let settled = limiter.settle(&id, 1_200).await?.expect("open");
    /// assert_eq!(settled.settled[0].returned, 800);
    /// assert_eq!(limiter.peek("tokens", "alice", 1).await?.remaining, 8_800);
    /// // A retried settle changes nothing.
    /// assert!(limiter.settle(&id, 1_200).await?.expect("kept").replayed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// As [`check_all`](Self::check_all) (with `estimate` as the cost),
    /// [`Error::NotReservable`] for a `sliding_log` or `leaky_bucket`
    /// policy, [`Error::InvalidReservation`] for a deadline past
    /// [`MAX_DEADLINE`](crate::reservation::MAX_DEADLINE) or of zero, or an estimate past [`MAX_AMOUNT`],
    /// [`Error::KeyTooLong`] also for a key the limiter takes but the
    /// reservation's id cannot carry (its text form is at most 16 KiB: a
    /// key of up to 12 KiB, less the policies' names), and
    /// [`Error::Store`] with [`StoreError::Unsupported`](crate::StoreError::Unsupported)
    /// from a store that keeps no reservations.
    pub async fn reserve(
        &self,
        policies: &[&str],
        key: impl AsRef<[u8]>,
        estimate: u64,
        deadline: Duration,
    ) -> Result<Reservation, Error> {
        let key = key.as_ref();
        crate::reservation::check_deadline(deadline)?;
        let refs = self.reservable(policies, key, estimate, "estimate")?;
        let overridden = self.resolve_overrides(key, &refs);
        let blocked = overridden.iter().any(|o| matches!(o, Resolved::Blocked));
        let stored = charged_refs(&refs, &overridden);
        if blocked || stored.is_empty() {
            // Decided as a check is (nothing reserved): a block denies with
            // nothing charged, unlimited policies pass without a store.
            let decision = self
                .apply_checked(Check::new(key, &refs, estimate, Mode::Peek))
                .await?;
            return Ok(Reservation {
                decision: MultiDecision {
                    allowed: decision.allowed && !blocked,
                    ..decision
                },
                id: None,
            });
        }
        let names: SmallVec<[&str; 2]> = stored.iter().map(|p| p.name).collect();
        let id = ReservationId::draw(key, &names)?;
        let decided = self
            .inner
            .store
            .reserve(ReserveCall {
                check: Check::new(key, &stored, estimate, Mode::Consume),
                nonce: id.nonce(),
                deadline_us: crate::clock::micros(deadline),
            })
            .await?;
        if decided.len() != stored.len() {
            return Err(crate::StoreError::Protocol(format!(
                "store returned {} decisions for {} policies",
                decided.len(),
                stored.len()
            ))
            .into());
        }
        let mut decided = decided.into_iter();
        let decisions: Decisions = refs
            .iter()
            .zip(&overridden)
            .map(|(p, o)| match o {
                Resolved::Unlimited => unlimited(p.policy),
                _ => decided.next().unwrap_or_else(|| unlimited(p.policy)),
            })
            .collect();
        let allowed = decisions.iter().all(|d| d.allowed);
        Ok(Reservation {
            decision: MultiDecision {
                allowed,
                decisions,
                overridden: if overridden.iter().all(|o| matches!(o, Resolved::Registered)) {
                    SmallVec::new()
                } else {
                    overridden
                        .iter()
                        .map(|o| !matches!(o, Resolved::Registered))
                        .collect()
                },
            },
            id: allowed.then_some(id),
        })
    }

    /// Settles the reservation `id` at `actual` units: gives back
    /// `estimate - actual` where the algorithm allows it exactly, or
    /// charges `actual - estimate` more, overdrawing each policy by at
    /// most its [`Policy::max_overdraft`] (what is not charged is reported
    /// as [`Settled::unpaid`](crate::Settled::unpaid)). Once: a settle
    /// retried, with any `actual`, changes nothing and answers what the
    /// first did (`replayed`). `Ok(None)` when the store holds no such
    /// reservation (past its deadline, and so settled at its estimate, or
    /// never made).
    ///
    /// Each policy is settled with the numbers in force now (an override's
    /// or the registered policy's).
    ///
    /// # Errors
    /// [`Error::UnknownPolicy`] for a policy no longer configured (the
    /// reservation then settles at its estimate at its deadline),
    /// [`Error::KeyTooLong`], [`Error::InvalidReservation`] for an actual
    /// past [`MAX_AMOUNT`], or [`Error::Store`].
    pub async fn settle(
        &self,
        id: &ReservationId,
        actual: u64,
    ) -> Result<Option<SettleAnswer>, Error> {
        if actual > MAX_AMOUNT {
            return Err(Error::InvalidReservation(format!(
                "actual {actual} is above the maximum of {MAX_AMOUNT}"
            )));
        }
        let key = id.key();
        self.validate_key(key)?;
        let names: SmallVec<[&str; 2]> = id.policies().collect();
        let refs = names
            .iter()
            .map(|name| {
                Ok(PolicyRef {
                    name,
                    policy: self.lookup(name)?,
                })
            })
            .collect::<Result<SmallVec<[PolicyRef<'_>; 2]>, Error>>()?;
        let overridden = self.resolve_overrides(key, &refs);
        let refs: SmallVec<[PolicyRef<'_>; 2]> = refs
            .iter()
            .zip(&overridden)
            .map(|(p, o)| match o {
                Resolved::Policy(policy) => PolicyRef {
                    name: p.name,
                    policy,
                },
                _ => *p,
            })
            .collect();
        Ok(self
            .inner
            .store
            .settle(SettleCall {
                key,
                policies: &refs,
                nonce: id.nonce(),
                actual,
            })
            .await?)
    }

    /// Charges `units` to every policy in `policies` for `key`, after the
    /// fact and with nothing reserved: whether or not they fit, each policy
    /// overdrawn by at most its [`Policy::max_overdraft`] (what does not fit
    /// is reported unpaid). For a cost known only when a response is done
    /// where nothing could be reserved before it (Envoy's stream-done
    /// hits); the request itself should have been admitted by a check or a
    /// peek. Overrides apply as to a settle: an unlimited or blocked policy
    /// is charged nothing.
    ///
    /// # Errors
    /// [`Error::UnknownPolicy`], [`Error::NoPolicy`],
    /// [`Error::DuplicatePolicy`], [`Error::ZeroCost`],
    /// [`Error::KeyTooLong`], [`Error::NotReservable`], or
    /// [`Error::Store`]. Units past [`MAX_AMOUNT`] are not an error: they
    /// are reported unpaid.
    pub async fn charge(
        &self,
        policies: &[&str],
        key: impl AsRef<[u8]>,
        units: u64,
    ) -> Result<SettleAnswer, Error> {
        let key = key.as_ref();
        // Units past what the store computes exactly are charged as the
        // most it can, the rest unpaid: never refused, which would charge
        // nothing for a usage reported after the fact.
        let beyond = units.saturating_sub(MAX_AMOUNT);
        let charged = units - beyond;
        let refs = self.reservable(policies, key, charged, "units")?;
        let overridden = self.resolve_overrides(key, &refs);
        let refs = charged_refs(&refs, &overridden);
        if refs.is_empty() {
            return Ok(SettleAnswer {
                actual: units,
                ..SettleAnswer::default()
            });
        }
        let mut answer = self
            .inner
            .store
            .charge(ChargeCall {
                key,
                policies: &refs,
                units: charged,
            })
            .await?;
        answer.actual = units;
        for settled in &mut answer.settled {
            settled.unpaid += beyond;
        }
        Ok(answer)
    }

    /// Cancels the reservation `id`: settles it at zero, giving back its
    /// whole estimate where the algorithm allows it exactly.
    ///
    /// # Errors
    /// As [`settle`](Self::settle).
    pub async fn cancel(&self, id: &ReservationId) -> Result<Option<SettleAnswer>, Error> {
        self.settle(id, 0).await
    }

    /// The policies of a reservation or a charge of `amount` (the
    /// `what` of an error), validated: named, distinct, each reservable,
    /// the key and the amount within bounds.
    fn reservable<'a>(
        &'a self,
        policies: &[&'a str],
        key: &[u8],
        amount: u64,
        what: &str,
    ) -> Result<SmallVec<[PolicyRef<'a>; 2]>, Error> {
        if policies.is_empty() {
            return Err(Error::NoPolicy);
        }
        distinct(policies.iter().copied())?;
        self.validate_request(key, amount)?;
        if amount > MAX_AMOUNT {
            return Err(Error::InvalidReservation(format!(
                "{what} {amount} is above the maximum of {MAX_AMOUNT}"
            )));
        }
        policies
            .iter()
            .map(|name| {
                let policy = self.lookup(name)?;
                crate::reservation::check_policy(name, policy)?;
                Ok(PolicyRef { name, policy })
            })
            .collect()
    }

    /// Each policy's override for `key`, as a reservation or a settle
    /// uses it.
    fn resolve_overrides(&self, key: &[u8], refs: &[PolicyRef<'_>]) -> SmallVec<[Resolved; 2]> {
        let table = self.inner.overrides.as_ref().filter(|t| !t.is_empty());
        refs.iter()
            .map(|p| {
                let Some(table) = table else {
                    return Resolved::Registered;
                };
                match table.lookup(p.name, key).map(|(o, _)| o) {
                    Some(o) => match o.limit {
                        OverrideLimit::Policy(numbers)
                            if numbers.algorithm() == p.policy.algorithm() =>
                        {
                            Resolved::Policy(
                                with_lease_of(numbers, p.policy).with_max_overdraft_of(p.policy),
                            )
                        }
                        OverrideLimit::Policy(_) => Resolved::Registered,
                        OverrideLimit::Unlimited => Resolved::Unlimited,
                        OverrideLimit::Blocked => Resolved::Blocked,
                    },
                    None => Resolved::Registered,
                }
            })
            .collect()
    }

    /// Returns `key`'s state for `policy` to fresh.
    ///
    /// # Errors
    /// [`Error::UnknownPolicy`], [`Error::KeyTooLong`] or [`Error::Store`].
    pub async fn reset(&self, policy: &str, key: impl AsRef<[u8]>) -> Result<(), Error> {
        let key = key.as_ref();
        self.validate_key(key)?;
        let refs = [PolicyRef {
            name: policy,
            policy: self.lookup(policy)?,
        }];
        Ok(self.inner.store.reset(key, &refs).await?)
    }

    // `one`, `many`, `apply_checked` and `apply_store` return `async`
    // blocks rather than being `async fn`s: an `async fn` keeps a second
    // copy of its arguments in its future, and each of these futures is
    // nested in every check's (and the tower layer boxes one per request).
    #[allow(clippy::manual_async_fn)]
    fn one<'a>(
        &'a self,
        name: &'a str,
        key: &'a [u8],
        cost: u64,
        mode: Mode,
    ) -> impl Future<Output = Result<Decision, Error>> + 'a {
        async move {
            let refs = [self.prepare(name, key, cost)?];
            let check = Check::new(key, &refs, cost, mode);
            if let Some(overridden) = self.overridden(check) {
                return Ok(overridden.await?.decisions[0]);
            }
            let decisions = self.inner.store.apply(check).await?;
            one_per_policy(&decisions, &check)?;
            Ok(decisions[0])
        }
    }

    #[allow(clippy::manual_async_fn)] // not `async fn`: see `one`
    fn many<'a>(
        &'a self,
        names: &'a [&'a str],
        key: &'a [u8],
        cost: u64,
        mode: Mode,
    ) -> impl Future<Output = Result<MultiDecision, Error>> + 'a {
        async move {
            if names.is_empty() {
                return Err(Error::NoPolicy);
            }
            distinct(names.iter().copied())?;
            let refs = names
                .iter()
                .map(|name| self.prepare(name, key, cost))
                .collect::<Result<SmallVec<[PolicyRef<'_>; 2]>, Error>>()?;
            self.apply_checked(Check::new(key, &refs, cost, mode)).await
        }
    }

    /// One store call for a validated check.
    #[allow(clippy::manual_async_fn)] // not `async fn`: see `one`
    fn apply_checked<'a>(
        &'a self,
        check: Check<'a>,
    ) -> impl Future<Output = Result<MultiDecision, Error>> + 'a {
        async move {
            if let Some(overridden) = self.overridden(check) {
                return overridden.await;
            }
            self.apply_store(check).await
        }
    }

    /// The decision of `check` under its key's overrides, when it has one.
    ///
    /// Boxed: the overridden path keeps several times a plain check's state
    /// across its store call. Inline, it would grow every check's future
    /// (and every future awaiting one) for the few keys that have an
    /// override. What is returned is only the box, so that nothing of the
    /// lookup is kept across the await either.
    fn overridden<'a>(&'a self, check: Check<'a>) -> Option<Overridden<'a>> {
        let (table, found) = self.overrides_of(check)?;
        Some(SyncFuture::new(Box::pin(
            self.apply_overridden(check, table, found),
        )))
    }

    /// The override of each of `check`'s policies for its key, with the
    /// table, when at least one has one. An override whose numbers are for
    /// another algorithm than the policy's (the policy changed by a reload
    /// since) is ignored.
    fn overrides_of(
        &self,
        check: Check<'_>,
    ) -> Option<(&Overrides, SmallVec<[Option<Override>; 2]>)> {
        let table = self.inner.overrides.as_ref().filter(|t| !t.is_empty())?;
        let found: SmallVec<[Option<Override>; 2]> = check
            .policies
            .iter()
            .map(|p| {
                table
                    .lookup(p.name, check.key)
                    .map(|(o, _)| o)
                    .filter(|o| match o.limit {
                        OverrideLimit::Policy(numbers) => {
                            numbers.algorithm() == p.policy.algorithm()
                        }
                        _ => true,
                    })
            })
            .collect();
        found
            .iter()
            .any(Option::is_some)
            .then_some((&**table, found))
    }

    /// A check where some (policy, key) has an override (`found`, from
    /// [`overrides_of`](Self::overrides_of)): unlimited policies are
    /// allowed here (nothing charged), a blocked one denies the whole check
    /// (the others are only looked at, as a denial anywhere leaves them, so
    /// nothing is charged), and the rest go to the store, each under its
    /// overriding numbers.
    async fn apply_overridden(
        &self,
        check: Check<'_>,
        table: &Overrides,
        found: SmallVec<[Option<Override>; 2]>,
    ) -> Result<MultiDecision, Error> {
        let now = table.now_us();
        let limit_of = |i: usize| found[i].map(|o| o.limit);
        let blocked = (0..found.len()).any(|i| limit_of(i) == Some(OverrideLimit::Blocked));
        let mode = if blocked { Mode::Peek } else { check.mode };
        // The override's numbers, with the policy's lease (a store's copy
        // holds numbers only).
        let numbers: SmallVec<[Option<Policy>; 2]> = (0..found.len())
            .map(|i| match limit_of(i) {
                Some(OverrideLimit::Policy(p)) => Some(with_lease_of(p, check.policies[i].policy)),
                _ => None,
            })
            .collect();
        let stored: SmallVec<[(usize, PolicyRef<'_>); 2]> = check
            .policies
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                !matches!(
                    limit_of(*i),
                    Some(OverrideLimit::Unlimited | OverrideLimit::Blocked)
                )
            })
            .map(|(i, p)| {
                let policy = numbers[i].as_ref().unwrap_or(p.policy);
                (
                    i,
                    PolicyRef {
                        name: p.name,
                        policy,
                    },
                )
            })
            .collect();
        let refs: SmallVec<[PolicyRef<'_>; 2]> = stored.iter().map(|(_, p)| *p).collect();
        let mut by_policy: SmallVec<[Option<Decision>; 2]> = smallvec::smallvec![None; found.len()];
        if !refs.is_empty() {
            // One store decision per stored policy (`apply_store` checks).
            let decided = self
                .apply_store(Check::new(check.key, &refs, check.cost, mode))
                .await?
                .decisions;
            for ((i, _), d) in stored.iter().zip(decided) {
                by_policy[*i] = Some(d);
            }
        }
        let decisions: Decisions = check
            .policies
            .iter()
            .zip(&found)
            .zip(by_policy)
            .map(|((p, o), stored)| {
                let capacity = p.policy.capacity();
                let fixed = |allowed, remaining, retry_after| Decision {
                    allowed,
                    limit: capacity,
                    remaining,
                    reset_after: Duration::ZERO,
                    retry_after,
                    delay: Duration::ZERO,
                    degraded: false,
                };
                match o.map(|o| (o.limit, o.expires_at_us)) {
                    Some((OverrideLimit::Unlimited, _)) => fixed(true, capacity, None),
                    // Until the block ends; never, if it does not.
                    Some((OverrideLimit::Blocked, until)) => fixed(
                        false,
                        0,
                        until.map(|at| Duration::from_micros(at.saturating_sub(now))),
                    ),
                    _ => stored.unwrap_or_else(|| fixed(false, 0, None)),
                }
            })
            .collect();
        Ok(MultiDecision {
            allowed: !blocked && decisions.iter().all(|d| d.allowed),
            decisions,
            overridden: found.iter().map(Option::is_some).collect(),
        })
    }

    #[allow(clippy::manual_async_fn)] // not `async fn`: see `one`
    fn apply_store<'a>(
        &'a self,
        check: Check<'a>,
    ) -> impl Future<Output = Result<MultiDecision, Error>> + 'a {
        async move {
            let decisions = self.inner.store.apply(check).await?;
            one_per_policy(&decisions, &check)?;
            Ok(MultiDecision {
                allowed: decisions.iter().all(|d| d.allowed),
                decisions,
                overridden: SmallVec::new(),
            })
        }
    }

    fn prepare<'a>(&'a self, name: &'a str, key: &[u8], cost: u64) -> Result<PolicyRef<'a>, Error> {
        self.validate_request(key, cost)?;
        Ok(PolicyRef {
            name,
            policy: self.lookup(name)?,
        })
    }

    fn validate_request(&self, key: &[u8], cost: u64) -> Result<(), Error> {
        if cost == 0 {
            return Err(Error::ZeroCost);
        }
        self.validate_key(key)
    }

    fn lookup(&self, name: &str) -> Result<&Policy, Error> {
        self.inner
            .policies
            .get(name)
            .ok_or_else(|| Error::UnknownPolicy(name.to_owned()))
    }

    fn validate_key(&self, key: &[u8]) -> Result<(), Error> {
        if key.len() > self.inner.max_key_len {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: self.inner.max_key_len,
            });
        }
        Ok(())
    }
}

/// What an override makes of one policy of a reservation.
#[derive(Debug, Clone, Copy)]
enum Resolved {
    /// No override: the registered policy.
    Registered,
    /// The override's numbers.
    Policy(Policy),
    /// Unlimited: not reserved.
    Unlimited,
    /// Blocked.
    Blocked,
}

/// The policies a reservation or a charge goes to the store with: each
/// under its override's numbers, or its own; none unlimited or blocked.
fn charged_refs<'a>(
    refs: &[PolicyRef<'a>],
    overridden: &'a [Resolved],
) -> SmallVec<[PolicyRef<'a>; 2]> {
    refs.iter()
        .zip(overridden)
        .filter_map(|(p, o)| match o {
            Resolved::Policy(policy) => Some(PolicyRef {
                name: p.name,
                policy,
            }),
            Resolved::Registered => Some(*p),
            Resolved::Unlimited | Resolved::Blocked => None,
        })
        .collect()
}

/// The decision of a policy unlimited by an override.
fn unlimited(policy: &Policy) -> Decision {
    Decision {
        allowed: true,
        limit: policy.capacity(),
        remaining: policy.capacity(),
        reset_after: Duration::ZERO,
        retry_after: None,
        delay: Duration::ZERO,
        degraded: false,
    }
}

/// `numbers` leasing as `base` does.
fn with_lease_of(numbers: Policy, base: &Policy) -> Policy {
    match base.lease() {
        Some(lease) => numbers.with_lease(lease).unwrap_or(numbers),
        None => numbers.without_lease(),
    }
}

/// Above this many names, [`duplicate_policy`] hashes instead of comparing
/// every pair.
const PAIRWISE_MAX: usize = 16;

/// The first policy name that `names` repeats, if any: the rule of every
/// multi-policy check ([`Limiter::check_all`], [`Limiter::peek_all`],
/// [`Limiter::apply`]), which refuse such a list with
/// [`Error::DuplicatePolicy`] before anything reaches the store. Adapters
/// that validate a request before deciding it (the server's HTTP API, the
/// tower layer's builder) ask it too, so the rule has one home.
///
/// Comparing every pair allocates nothing, and a check names one to three
/// policies; longer lists are hashed, so the cost stays linear whatever a
/// caller passes.
///
/// ```
/// use tollgate::limiter::duplicate_policy;
/// assert_eq!(duplicate_policy(["a", "b"]), None);
/// assert_eq!(duplicate_policy(["a", "b", "b", "a"]), Some("b"));
/// ```
pub fn duplicate_policy<'a, I>(names: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: Clone,
{
    let mut names = names.into_iter();
    if names.clone().nth(PAIRWISE_MAX).is_none() {
        names
            .clone()
            .enumerate()
            .find(|&(i, name)| names.clone().take(i).any(|seen| seen == name))
            .map(|(_, name)| name)
    } else {
        let mut seen = hashbrown::HashSet::new();
        names.find(|name| !seen.insert(*name))
    }
}

/// A check's decision under its key's overrides, boxed
/// ([`Limiter::overridden`]). In a [`SyncFuture`]: a boxed `dyn Future`
/// is not `Sync`, and held across an await it would take `Sync` from every
/// check's future.
type Overridden<'a> =
    SyncFuture<Pin<Box<dyn Future<Output = Result<MultiDecision, Error>> + Send + 'a>>>;

/// A protocol error unless the store answered `check` with one decision
/// per policy.
fn one_per_policy(decisions: &[Decision], check: &Check<'_>) -> Result<(), Error> {
    if decisions.len() == check.policies.len() {
        return Ok(());
    }
    Err(crate::StoreError::Protocol(format!(
        "store returned {} decisions for {} policies",
        decisions.len(),
        check.policies.len()
    ))
    .into())
}

/// [`Error::DuplicatePolicy`] when `names` repeats a policy.
fn distinct<'a, I>(names: I) -> Result<(), Error>
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: Clone,
{
    match duplicate_policy(names) {
        Some(name) => Err(Error::DuplicatePolicy(name.to_owned())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Limiter, PAIRWISE_MAX, PolicyRef, duplicate_policy};
    use crate::{MemoryStore, Mode};

    /// A memory store's futures are `Send` and `Sync` (checked when this
    /// compiles): the boxed path of a key with an override must not take
    /// `Sync` from them.
    #[test]
    fn a_memory_stores_futures_are_send_and_sync() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        let policy = "gcra 10/s".parse().expect("valid policy");
        let limiter = Limiter::builder(MemoryStore::new())
            .policy("api", policy)
            .build();
        let refs = [PolicyRef {
            name: "api",
            policy: &policy,
        }];
        send_sync(&limiter.check("api", "k", 1));
        send_sync(&limiter.peek("api", "k", 1));
        send_sync(&limiter.check_all(&["api"], "k", 1));
        send_sync(&limiter.peek_all(&["api"], "k", 1));
        send_sync(&limiter.apply(&refs, "k", 1, Mode::Consume));
        send_sync(&limiter.reserve(&["api"], "k", 1, Duration::from_secs(1)));
    }

    #[test]
    fn duplicates_are_found_in_short_and_long_lists() {
        assert_eq!(duplicate_policy([]), None);
        assert_eq!(duplicate_policy(["a"]), None);
        assert_eq!(duplicate_policy(["a", "a"]), Some("a"));
        assert_eq!(duplicate_policy(["a", "b", "c", "b"]), Some("b"));
        // Past the pairwise limit, the hashed path gives the same answers.
        let names: Vec<String> = (0..=PAIRWISE_MAX * 2).map(|i| format!("p{i}")).collect();
        let mut long: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(duplicate_policy(long.iter().copied()), None);
        long.push("p3");
        long.push("p1");
        assert_eq!(duplicate_policy(long.iter().copied()), Some("p3"));
    }
}
