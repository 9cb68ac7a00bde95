//! Stores: where state lives and where a decision is made atomically.
//!
//! A [`Store`] applies one algorithm, or several at once, to one key. The
//! [`memory`] store is the embedded default; the Redis store lives in the
//! `tollgate-redis` crate and implements the same trait.

pub mod invalidation;
pub mod memory;
mod reservations;

pub use invalidation::{Invalidation, InvalidationReceiver, InvalidationSink, Invalidations};

use std::future::Future;

use smallvec::SmallVec;

use crate::{Decision, Policy, StoreError};

/// One policy applied to a key: its configured name (part of the state's
/// identity) and its parameters.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRef<'a> {
    /// The policy's name, e.g. `api`.
    pub name: &'a str,
    /// The policy.
    pub policy: &'a Policy,
}

/// One check asked of a store: may `key` spend `cost` units of every
/// policy in `policies` — charged, in [`Mode::Consume`], only if all allow.
/// What every layer from the limiter down passes along, whole.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The identity, as its adapter wrote it (see [`crate::keyspace`]).
    pub key: &'a [u8],
    /// The policies, at least one, each under its configured name.
    pub policies: &'a [PolicyRef<'a>],
    /// Units, at least 1.
    pub cost: u64,
    /// Whether an allowed check is charged.
    pub mode: Mode,
}

impl<'a> Check<'a> {
    /// A check of `cost` units of `policies` for `key`.
    pub const fn new(key: &'a [u8], policies: &'a [PolicyRef<'a>], cost: u64, mode: Mode) -> Self {
        Check {
            key,
            policies,
            cost,
            mode,
        }
    }
}

/// Decisions of one store call, one per policy, in the order given.
pub type Decisions = SmallVec<[Decision; 2]>;

/// Units of a lease not spent, handed back to the store: how many, and the
/// instant (store microseconds, [`Leased::until`]) the lease was valid
/// until. The store takes them only while the lease is valid, and only
/// into a window's counter: a bucket forfeits them (see
/// [`give_back`](crate::algorithm::give_back) for why).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Units not spent.
    pub units: u64,
    /// The lease's end, as the store granted it.
    pub until: u64,
}

/// What a lease call asks of one policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseAsk {
    /// Units wanted beyond the request's own cost (0: take no lease).
    pub want: u64,
    /// The longest the lease may live, in microseconds.
    pub ttl_us: u64,
    /// A previous lease's unspent units, given back first.
    pub held: Held,
}

/// A check that may also take leases: the check is decided as
/// [`Store::apply`] decides it (always [`Mode::Consume`]), and when it is
/// allowed each policy with a `want` takes a lease of up to that many more
/// units. See [`Store::lease`].
#[derive(Debug, Clone, Copy)]
pub struct LeaseCall<'a> {
    /// The check; its mode must be [`Mode::Consume`].
    pub check: Check<'a>,
    /// One per policy of the check, in its order.
    pub asks: &'a [LeaseAsk],
}

/// What a lease call did for one policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leased {
    /// Units leased (charged in the store, to be spent by the caller).
    pub units: u64,
    /// Until when they may be spent (store microseconds): given back with
    /// them in [`Held::until`].
    pub until: u64,
    /// `until` minus the store's time of the call: how long the lease is
    /// valid, for a caller that does not share the store's clock.
    pub valid_us: u64,
    /// Units of [`LeaseAsk::held`] the store took back.
    pub returned: u64,
}

/// The outcome of a [`LeaseCall`]: the check's decisions — each
/// `remaining` counting what is left in the store after the lease — and
/// one [`Leased`] per policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseAnswer {
    /// The check's decisions, one per policy.
    pub decisions: Decisions,
    /// What each policy leased and took back.
    pub leased: SmallVec<[Leased; 2]>,
}

impl LeaseAnswer {
    /// The answer of a lease call decided as a plain check: `decisions`,
    /// nothing leased, nothing taken back (held units are forfeited, which
    /// is always exact). What a store that cannot lease answers
    /// ([`Store::lease`]'s default).
    pub fn unleased(decisions: Decisions) -> Self {
        let leased = decisions.iter().map(|_| Leased::default()).collect();
        LeaseAnswer { decisions, leased }
    }
}

/// A reservation asked of a store: its check (the estimate as the cost,
/// always [`Mode::Consume`]) and what the store records when it is allowed.
/// See [`Store::reserve`].
#[derive(Debug, Clone, Copy)]
pub struct ReserveCall<'a> {
    /// The check of the estimate.
    pub check: Check<'a>,
    /// The reservation's identity: 128 bits drawn at random by the caller,
    /// the secret a settle must present.
    pub nonce: u128,
    /// How long the store keeps the reservation, in microseconds; past it
    /// the reservation is settled at its estimate (forgotten).
    pub deadline_us: u64,
}

/// A settle asked of a store: the reservation's key, policies and nonce
/// (as reserved), and the cost actually spent. See [`Store::settle`].
#[derive(Debug, Clone, Copy)]
pub struct SettleCall<'a> {
    /// The identity, as reserved.
    pub key: &'a [u8],
    /// The policies, as reserved (same names, same order); each with the
    /// numbers in force now.
    pub policies: &'a [PolicyRef<'a>],
    /// The reservation's nonce.
    pub nonce: u128,
    /// Units actually spent (0: cancel, give back the whole estimate).
    pub actual: u64,
}

/// A cost charged after the fact, with no reservation: `units` charged to
/// every policy whether or not they fit, each overdrawn by at most its
/// [`Policy::max_overdraft`]. See [`Store::charge`].
#[derive(Debug, Clone, Copy)]
pub struct ChargeCall<'a> {
    /// The identity.
    pub key: &'a [u8],
    /// The policies, each with the numbers in force now.
    pub policies: &'a [PolicyRef<'a>],
    /// Units spent.
    pub units: u64,
}

/// What settling did to one policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Units of the estimate given back (`actual` below it).
    pub returned: u64,
    /// Units charged beyond the estimate (`actual` above it).
    pub charged: u64,
    /// Units beyond the estimate not charged: past what remained plus
    /// [`Policy::max_overdraft`].
    pub unpaid: u64,
}

/// The outcome of a settle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettleAnswer {
    /// The estimate the reservation charged.
    pub estimate: u64,
    /// The actual cost the reservation was settled at: this call's, or
    /// the first settle's when `replayed`.
    pub actual: u64,
    /// Whether the reservation had already been settled: nothing was
    /// charged or given back by this call, and `settled` repeats what the
    /// first settle did.
    pub replayed: bool,
    /// What settling did, one per policy.
    pub settled: SmallVec<[Settled; 2]>,
    /// Each policy's state after settling, as a one-unit peek: what the
    /// next request finds (`retry_after` says how long an overdraft holds
    /// it back).
    pub decisions: Decisions,
}

/// Whether a call charges the cost or only looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Charge the cost when every policy allows it.
    Consume,
    /// Decide without charging anything.
    Peek,
}

/// The all-or-nothing rule of a check, in its one home (the Lua script's
/// `main.lua` is its twin): a check of one policy is decided in `mode`; a
/// check of several is first decided without charging anything, and charged
/// only if every policy allows — so a denial anywhere charges nothing
/// anywhere. `decide(i, mode)` decides policy `i`; stores call this under
/// whatever makes the whole check atomic (the memory store: its shard lock).
///
/// ```
/// use tollgate::{Decision, Mode, store::all_or_nothing};
/// let allow = |limit| Decision { allowed: true, limit, remaining: 0,
///     reset_after: Default::default(), retry_after: None,
///     delay: Default::default(), degraded: false };
/// let mut charged = Vec::new();
/// let decisions = all_or_nothing(2, Mode::Consume, |i, mode| {
///     if mode == Mode::Consume { charged.push(i) }
///     Decision { allowed: i == 0, ..allow(1) }
/// });
/// assert!(!decisions[1].allowed);
/// assert!(charged.is_empty(), "policy 1 denies: nothing is charged");
/// ```
#[inline]
pub fn all_or_nothing(
    n: usize,
    mode: Mode,
    decide: impl FnMut(usize, Mode) -> Decision,
) -> Decisions {
    let mut decisions = Decisions::new();
    all_or_nothing_into(&mut decisions, n, mode, decide);
    decisions
}

/// [`all_or_nothing`], writing into `decisions` (empty): the memory store's
/// hot path, where returning the decisions by value showed in the profile
/// as a 152-byte `memcpy` per check. Inlined, and one push for the single
/// policy (a call and SmallVec's `extend` showed as copies too).
#[inline(always)]
pub(crate) fn all_or_nothing_into(
    decisions: &mut Decisions,
    n: usize,
    mode: Mode,
    mut decide: impl FnMut(usize, Mode) -> Decision,
) {
    if n == 1 {
        decisions.push(decide(0, mode));
        return;
    }
    decisions.extend((0..n).map(|i| decide(i, Mode::Peek)));
    if mode == Mode::Consume && decisions.iter().all(|d| d.allowed) {
        for (i, decision) in decisions.iter_mut().enumerate() {
            *decision = decide(i, Mode::Consume);
        }
    }
}

/// A place where rate limiting state lives, making decisions atomically.
///
/// Contract, checked by the conformance suite every store must pass:
/// - `apply` decides `cost` for every policy against `key`'s state at the
///   store's current time, atomically with respect to every other call;
/// - with [`Mode::Consume`] the cost is charged to every policy only if all
///   of them allow it (all-or-nothing); a denied call changes nothing;
/// - with [`Mode::Peek`] nothing changes;
/// - the state of `(policy name, key)` is independent of every other pair;
/// - `reset` returns the named states of `key` to fresh.
pub trait Store: Send + Sync + 'static {
    /// Decides `check.cost` units against every policy of the check for
    /// its key.
    ///
    /// The policies are not empty and the cost is at least 1 (the limiter
    /// checks).
    fn apply(&self, check: Check<'_>)
    -> impl Future<Output = Result<Decisions, StoreError>> + Send;

    /// Decides `call.check` as [`apply`](Self::apply) does (charging it
    /// when every policy allows), and, in the same atomic step:
    ///
    /// 1. first gives back each policy's [`LeaseAsk::held`] units
    ///    ([`give_back`](crate::algorithm::give_back));
    /// 2. then, when the check is allowed, leases to each policy with a
    ///    `want` more units, charged now and valid until
    ///    [`lease_until`](crate::algorithm::lease_until) of the state before
    ///    this call charged anything, capped at the ask's time to live: as
    ///    many as [`lease_size`](crate::algorithm::lease_size) lets of what
    ///    remains, asking [`lease_want`](crate::algorithm::lease_want) — the
    ///    want scaled to how long the lease can live.
    ///
    /// The default decides the check with [`apply`](Self::apply), leases
    /// nothing and takes nothing back (the held units are forfeited):
    /// exact. A store that implements this says so with
    /// [`leases`](Self::leases).
    fn lease(
        &self,
        call: LeaseCall<'_>,
    ) -> impl Future<Output = Result<LeaseAnswer, StoreError>> + Send {
        async move { Ok(LeaseAnswer::unleased(self.apply(call.check).await?)) }
    }

    /// Whether [`lease`](Self::lease) grants leases: without it, the
    /// resilience layer decides every check of a leasing policy as a plain
    /// check (asking a store that cannot lease would only make callers
    /// wait for calls that bring nothing).
    fn leases(&self) -> bool {
        false
    }

    /// Decides `call.check` (its cost is the estimate) as
    /// [`apply`](Self::apply) does in [`Mode::Consume`], and when it is
    /// allowed records, in the same atomic step, a reservation under
    /// `call.nonce` for `call.deadline_us`: the estimate, and for each
    /// policy until when units may be given back
    /// ([`lease_until`](crate::algorithm::lease_until) of the state before
    /// the charge). A denied reservation records nothing.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a store that
    /// implements this says so with [`reserves`](Self::reserves).
    fn reserve(
        &self,
        call: ReserveCall<'_>,
    ) -> impl Future<Output = Result<Decisions, StoreError>> + Send {
        let _ = call;
        async { Err(StoreError::Unsupported("reservations")) }
    }

    /// Settles the reservation `call.nonce` of `call.key` and
    /// `call.policies` at `call.actual`, in one atomic step: for each
    /// policy, gives back `estimate - actual`
    /// ([`give_back`](crate::algorithm::give_back)) or charges
    /// `actual - estimate` ([`overdraw`](crate::algorithm::overdraw)), and
    /// marks the reservation settled, so that a settle retried (with any
    /// `actual`) changes nothing and answers what the first did, with
    /// `replayed` set. `None` when there is no such reservation: never
    /// made, made for another key or other policies, or past its deadline.
    ///
    /// The default refuses ([`StoreError::Unsupported`]).
    fn settle(
        &self,
        call: SettleCall<'_>,
    ) -> impl Future<Output = Result<Option<SettleAnswer>, StoreError>> + Send {
        let _ = call;
        async { Err(StoreError::Unsupported("reservations")) }
    }

    /// Charges `call.units` to each policy of `call.key` in one atomic step,
    /// whether or not they fit: a cost known only afterwards, with nothing
    /// reserved ahead (Envoy's stream-done hits). Each policy is overdrawn
    /// ([`overdraw`](crate::algorithm::overdraw)) by at most its
    /// `max_overdraft`; what does not fit is reported unpaid. Answers as a
    /// settle of a reservation of 0 at `units` would: `estimate` 0,
    /// `actual` the units, per policy what was charged and unpaid, and the
    /// one-unit peek of each policy after.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a store that
    /// implements [`reserve`](Self::reserve) implements this too.
    fn charge(
        &self,
        call: ChargeCall<'_>,
    ) -> impl Future<Output = Result<SettleAnswer, StoreError>> + Send {
        let _ = call;
        async { Err(StoreError::Unsupported("charges after the fact")) }
    }

    /// Whether [`reserve`](Self::reserve), [`settle`](Self::settle) and
    /// [`charge`](Self::charge) are implemented.
    fn reserves(&self) -> bool {
        false
    }

    /// Forgets `key`'s state for each policy.
    fn reset(
        &self,
        key: &[u8],
        policies: &[PolicyRef<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
