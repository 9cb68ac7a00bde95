//! The limiter: named policies over a store.

use std::sync::Arc;

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::store::{Decisions, Mode, PolicyRef, Store};
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
}

/// The result of checking several policies at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// Whether every policy allowed the request (and so each was charged).
    pub allowed: bool,
    /// One decision per policy, in the order the policies were named.
    pub decisions: Decisions,
}

impl MultiDecision {
    /// The longest `retry_after` among the denials: when the whole request
    /// could pass. `None` if allowed or if some denial can never pass.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let denied = self.decisions.iter().filter(|d| !d.allowed);
        denied.map(|d| d.retry_after).try_fold(None, |acc, r| {
            r.map(|r| Some(acc.map_or(r, |a: std::time::Duration| a.max(r))))
        })?
    }
}

/// Builds a [`Limiter`].
#[derive(Debug)]
pub struct LimiterBuilder<S> {
    store: S,
    policies: HashMap<Box<str>, Policy>,
    max_key_len: usize,
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

    /// Builds the limiter.
    pub fn build(self) -> Limiter<S> {
        Limiter {
            inner: Arc::new(Inner {
                store: self.store,
                policies: self.policies,
                max_key_len: self.max_key_len,
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
        }
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
    /// As [`check`](Self::check), and [`Error::NoPolicy`] for an empty list.
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
    /// [`Error::NoPolicy`] for an empty list, [`Error::ZeroCost`],
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
        self.validate_request(key, cost)?;
        self.decide(policies, key, cost, mode).await
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

    async fn one(&self, name: &str, key: &[u8], cost: u64, mode: Mode) -> Result<Decision, Error> {
        let refs = [self.prepare(name, key, cost)?];
        let decisions = self.inner.store.apply(key, &refs, cost, mode).await?;
        decisions
            .into_iter()
            .next()
            .ok_or_else(|| crate::StoreError::Protocol("store returned no decision".into()).into())
    }

    async fn many(
        &self,
        names: &[&str],
        key: &[u8],
        cost: u64,
        mode: Mode,
    ) -> Result<MultiDecision, Error> {
        if names.is_empty() {
            return Err(Error::NoPolicy);
        }
        let refs = names
            .iter()
            .map(|name| self.prepare(name, key, cost))
            .collect::<Result<SmallVec<[PolicyRef<'_>; 2]>, Error>>()?;
        self.decide(&refs, key, cost, mode).await
    }

    /// One store call for validated `refs`.
    async fn decide(
        &self,
        refs: &[PolicyRef<'_>],
        key: &[u8],
        cost: u64,
        mode: Mode,
    ) -> Result<MultiDecision, Error> {
        let decisions = self.inner.store.apply(key, refs, cost, mode).await?;
        if decisions.len() != refs.len() {
            return Err(crate::StoreError::Protocol(format!(
                "store returned {} decisions for {} policies",
                decisions.len(),
                refs.len()
            ))
            .into());
        }
        Ok(MultiDecision {
            allowed: decisions.iter().all(|d| d.allowed),
            decisions,
        })
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
