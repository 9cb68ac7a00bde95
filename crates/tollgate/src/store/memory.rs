//! The in-memory store: the embedded default.
//!
//! State is split over shards, each a hash table behind its own mutex, chosen
//! by a hash of the identity alone, so every policy of one identity lives in
//! one shard and a multi-policy check is atomic under one lock. No check
//! takes a global lock; reservations share one table (its own lock, taken
//! under a shard's for one map operation at a time).
//!
//! A `std::sync::Mutex` rather than an async one: the critical section is a
//! hash lookup and a few integer operations, never held across an `.await`,
//! and an uncontended std mutex costs a single atomic operation.
//!
//! An entry is one 64-byte cache line, since over many keys a decision costs
//! about one memory access per cache line its entry spans: the identity
//! inline up to 20 bytes (on the heap beyond), the policy as a 16-bit index
//! into its shard's table of names (each name held once per shard, counted
//! by its entries and freed with the last), the algorithm's state, and the
//! expiry instant. The hash is not stored; a resize recomputes it from the
//! identity. A shard holds at most 65 535 entries, so its live names always
//! fit the index (a larger cap takes more shards).
//!
//! Entries expire exactly when the Redis store's keys would
//! ([`expires_at`]): a live entry is read under whatever policy is in force
//! (a changed policy carries its state over), an expired one reads as fresh.
//! Each shard sweeps itself when it has doubled in size since its last sweep,
//! so memory stays within about twice the live entries without a background
//! thread (and sweeping follows the store's clock, so tests with a
//! [`ManualClock`](crate::ManualClock) are deterministic).
//! [`MemoryStore::purge_expired`] sweeps every shard on demand.
//!
//! The number of entries is capped ([`MemoryStoreBuilder::max_keys`], one
//! million by default): identities are client input, and without a cap a
//! flood of one-off keys under a long policy grows memory without bound.
//! When a shard is full, expired entries go first; then the eighth of the
//! shard nearest to becoming fresh is evicted — those carry the least
//! information (the least of a limit left to enforce). An evicted identity
//! starts fresh, which can admit it early: evictions are counted
//! ([`MemoryStore::evictions`]) so an operator sees the cap is too small.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::reservations::{Mark, Record, Table};
use super::{
    ChargeCall, Check, Decisions, LeaseAnswer, LeaseCall, Leased, Mode, PolicyRef, ReserveCall,
    SettleAnswer, SettleCall, Settled, Store, all_or_nothing, all_or_nothing_into,
};
use crate::algorithm::{
    State, decide, expires_at, give_back, lease_size, lease_until, lease_want, overdraw,
};
use crate::{Clock, Decision, StoreError, SystemClock};

/// A shard never sweeps below this many entries: sweeping tiny tables often
/// would cost more than the memory it frees.
const MIN_SWEEP_LEN: usize = 1024;

/// The default cap on entries ([`MemoryStoreBuilder::max_keys`]).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// The default cap on open reservations
/// ([`MemoryStoreBuilder::max_reservations`]).
pub const DEFAULT_MAX_RESERVATIONS: usize = 100_000;

/// The most entries one shard holds: an entry names its policy by a 16-bit
/// index into its shard's name table, and a shard never has more live names
/// than entries. A larger cap is split over more shards.
const SHARD_MAX: usize = u16::MAX as usize;

/// The most shards a store has: the shard is chosen by 16 bits of the
/// identity's hash (bits 40 to 55, [`Inner::shard`]), below the 7 top bits
/// the hash table keeps for itself. With [`SHARD_MAX`] entries each, a
/// store holds at most about 4.3 billion entries, whatever `max_keys` says.
const MAX_SHARDS: usize = 1 << 16;

/// Identities up to this many bytes are stored in the entry itself.
const INLINE: usize = 20;

/// The embedded store: concurrent, atomic per key, bounded in memory.
/// Cheap to clone; clones share state.
///
/// ```
/// use tollgate::{Limiter, MemoryStore, ManualClock};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let clock = ManualClock::new(0);
/// let store = MemoryStore::with_clock(clock.clone());
/// let limiter = Limiter::builder(store).policy("api", "fixed_window 1/s".parse()?).build();
/// assert!(limiter.check("api", "alice", 1).await?.allowed);
/// assert!(!limiter.check("api", "alice", 1).await?.allowed);
/// clock.advance_us(1_000_000);
/// assert!(limiter.check("api", "alice", 1).await?.allowed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// Entries a shard may hold: `max_keys / shards`, so the store holds
    /// at most `max_keys`.
    shard_max: usize,
    /// Live entries dropped to stay under the cap.
    evictions: AtomicU64,
    /// Reservations, of every identity: one table, so that its bound holds
    /// for the store whatever the keys (a hot key's reservations all fall
    /// in one shard). Locked only under the identity's shard lock, so a
    /// reservation and the state it charges change atomically, and held for
    /// one table operation at a time (a map lookup or insert): the one lock
    /// every reservation of the store shares, never taken by a check.
    reservations: Mutex<Table>,
    /// The most open reservations ([`MemoryStoreBuilder::max_reservations`]).
    max_reservations: usize,
    /// Open reservations dropped (settled at their estimate) to stay under
    /// the cap.
    reservation_evictions: AtomicU64,
    /// Keyed hashing: identities are user input, and a fixed hash would let
    /// a client aim every key at one bucket.
    hasher: DefaultHashBuilder,
    clock: Arc<dyn Clock>,
}

struct Shard {
    table: HashTable<Entry>,
    /// The policy names of this shard's entries.
    names: Names,
    /// Sweep when the table reaches this length.
    sweep_at: usize,
}

/// One `(policy name, identity)` state, in one 64-byte cache line: a busy
/// limiter holds one per active client and policy, and a decision on a key
/// not in cache costs one memory access rather than two. The policy name is
/// not repeated in every entry (the shard's [`Names`] holds it once), and
/// the hash is not stored (a resize recomputes it from the identity).
#[repr(align(64))]
struct Entry {
    key: Key,
    /// When the entry is dropped: [`expires_at`] of the state's freshness
    /// under the policy of the last charge, pushed later (never earlier) by
    /// any decision under a policy that keeps the state longer.
    expires_at: u64,
    state: State,
}

/// An entry's policy (an index into its shard's [`Names`]) and identity:
/// inline up to [`INLINE`] bytes (`http:` and an IPv4 address fit),
/// so most keys cost no allocation of their own. 24 bytes.
enum Key {
    Inline {
        name: [u8; 2],
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap {
        name: [u8; 2],
        bytes: Box<[u8]>,
    },
}

impl Key {
    fn new(name: u16, identity: &[u8]) -> Key {
        let name = name.to_le_bytes();
        match u8::try_from(identity.len()) {
            Ok(len) if identity.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..identity.len()].copy_from_slice(identity);
                Key::Inline { name, len, bytes }
            }
            _ => Key::Heap {
                name,
                bytes: identity.into(),
            },
        }
    }

    fn name(&self) -> u16 {
        match self {
            Key::Inline { name, .. } | Key::Heap { name, .. } => u16::from_le_bytes(*name),
        }
    }

    fn identity(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes, .. } => &bytes[..usize::from(*len)],
            Key::Heap { bytes, .. } => bytes,
        }
    }
}

impl Entry {
    #[inline]
    fn is(&self, name: u16, identity: &[u8]) -> bool {
        self.key.name() == name && same_bytes(self.key.identity(), identity)
    }
}

/// `a == b`, without a call to `memcmp` for the short slices that policy
/// names and most identities are: every decision compares a name and an
/// identity, and for a few bytes the call costs more than the comparison.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Two loads that overlap when `n` is below twice their width cover
    // every byte.
    if (8..=16).contains(&n) {
        let word =
            |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    if (4..8).contains(&n) {
        let word =
            |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().unwrap_or([0; 4]));
        return word(a, 0) == word(b, 0) && word(a, n - 4) == word(b, n - 4);
    }
    if n < 4 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    a == b
}

/// A shard's policy names, each held once and referred to by index from
/// its entries. A name is counted by its entries and its index freed with
/// the last of them, so a shard holds no more names than entries (names
/// come from configuration, but a reloaded configuration must not grow
/// this forever).
#[derive(Default)]
struct Names {
    /// By index: the name and how many entries use it (0: a free index).
    slots: Vec<(Box<str>, u32)>,
    /// Indexes whose name is gone, to reuse.
    free: Vec<u16>,
    /// Name to index, for shards with many names (a few are scanned).
    index: HashMap<Box<str>, u16>,
}

/// Up to this many names, a scan finds a name faster than a hash lookup.
const SCAN_NAMES: usize = 8;

impl Names {
    /// The index of `name`, if an entry uses it.
    #[inline]
    fn find(&self, name: &str) -> Option<u16> {
        if self.slots.len() <= SCAN_NAMES {
            let i = self
                .slots
                .iter()
                .position(|(n, count)| *count > 0 && same_bytes(n.as_bytes(), name.as_bytes()))?;
            // At most SCAN_NAMES.
            return Some(i as u16);
        }
        self.index.get(name).copied()
    }

    /// The index of `name` for one more entry. The shard holds fewer than
    /// [`SHARD_MAX`] entries, so fewer names, so an index is always free.
    fn acquire(&mut self, name: &str) -> u16 {
        if let Some(i) = self.find(name) {
            self.slots[usize::from(i)].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[usize::from(i)] = (name.into(), 1);
                i
            }
            None => {
                self.slots.push((name.into(), 1));
                u16::try_from(self.slots.len() - 1).unwrap_or(u16::MAX)
            }
        };
        self.index.insert(name.into(), i);
        i
    }

    /// One entry less uses index `i`.
    fn release(&mut self, i: u16) {
        let slot = &mut self.slots[usize::from(i)];
        slot.1 -= 1;
        if slot.1 == 0 {
            self.index.remove(&slot.0);
            slot.0 = Box::default();
            self.free.push(i);
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field("len", &self.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store on the system clock, with a shard count suited to this
    /// machine and the default cap of [`DEFAULT_MAX_KEYS`] entries.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A store on `clock`.
    pub fn with_clock(clock: impl Clock) -> Self {
        Self::builder().clock(clock).build()
    }

    /// A store on `clock` with `shards` shards (rounded up to a power of two).
    pub fn with_clock_and_shards(clock: impl Clock, shards: usize) -> Self {
        Self::builder().clock(clock).shards(shards).build()
    }

    /// A builder, to choose the clock, the shards and the cap on entries.
    ///
    /// ```
    /// use tollgate::MemoryStore;
    /// let store = MemoryStore::builder().max_keys(10_000).build();
    /// assert!(store.is_empty());
    /// ```
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            clock: None,
            shards: None,
            max_keys: DEFAULT_MAX_KEYS,
            max_reservations: DEFAULT_MAX_RESERVATIONS,
        }
    }

    /// Live entries evicted so far to stay under the cap on entries.
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.load(Ordering::Relaxed)
    }

    /// Reservations held: open ones, settled ones kept until their deadline
    /// to answer a retried settle, and those past their deadline not yet
    /// dropped.
    pub fn reservations(&self) -> usize {
        lock_table(&self.inner.reservations).len()
    }

    /// Open reservations evicted so far (settled at their estimate) to
    /// stay under [`MemoryStoreBuilder::max_reservations`].
    pub fn reservation_evictions(&self) -> u64 {
        self.inner.reservation_evictions.load(Ordering::Relaxed)
    }

    /// The number of entries held, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of entry slots allocated, a proxy for memory held.
    pub fn capacity(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).table.capacity())
            .sum()
    }

    /// Drops every entry whose state is fresh again, in every shard, and
    /// releases the memory of shards that shrank.
    pub fn purge_expired(&self) {
        for shard in self.inner.shards.iter() {
            let now = self.inner.clock.now_us();
            lock(shard).sweep(&self.inner, now);
        }
    }

    /// Decides synchronously: the memory store never waits, so callers
    /// outside async code (and benchmarks) can skip the future.
    #[inline]
    pub fn apply_sync(&self, check: Check<'_>) -> Decisions {
        // Built where the caller receives it: returned from under the lock,
        // the decisions were copied (a 152-byte memcpy in the profile).
        let mut decisions = Decisions::new();
        self.apply_into(check, &mut decisions);
        decisions
    }

    /// Locks `key`'s shard and reads the clock under the lock, so that
    /// decisions on one shard see time in the order they are made.
    #[inline(always)]
    fn lock_at<'k>(&self, key: &'k [u8]) -> (MutexGuard<'_, Shard>, At<'k>) {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let shard = inner.shard(hash);
        let at = At {
            key,
            hash,
            now: inner.clock.now_us(),
        };
        (shard, at)
    }

    #[inline(always)]
    fn apply_into(&self, check: Check<'_>, decisions: &mut Decisions) {
        let inner = &*self.inner;
        let (mut shard, at) = self.lock_at(check.key);
        all_or_nothing_into(decisions, check.policies.len(), check.mode, |i, mode| {
            shard.decide_policy(inner, check.policies[i], at, check.cost, mode)
        });
        if shard.table.len() >= shard.sweep_at {
            shard.sweep(inner, at.now);
        }
    }

    /// As [`apply_sync`](Self::apply_sync), where some policies are already
    /// decided elsewhere ([`Step::Decided`]): those take part in the
    /// all-or-nothing rule but are never charged here. What the `local`
    /// failure mode uses, next to policies in the `open` and `closed` modes.
    pub(crate) fn apply_steps(
        &self,
        key: &[u8],
        steps: &[Step<'_>],
        cost: u64,
        mode: Mode,
    ) -> Decisions {
        let inner = &*self.inner;
        let (mut shard, at) = self.lock_at(key);
        all_or_nothing(steps.len(), mode, |i, mode| match steps[i] {
            Step::Stored(policy) => shard.decide_policy(inner, policy, at, cost, mode),
            Step::Decided(decision) => decision,
        })
    }

    /// [`Store::lease`], synchronously: every step under the identity's
    /// shard lock, so the whole call is atomic like a check.
    pub fn lease_sync(&self, call: LeaseCall<'_>) -> LeaseAnswer {
        let LeaseCall { check, asks } = call;
        let inner = &*self.inner;
        let (mut shard, at) = self.lock_at(check.key);
        let now = at.now;
        let mut answer = LeaseAnswer::default();
        // Given back first, then each lease's end read before the check
        // charges anything.
        let mut until = smallvec::SmallVec::<[u64; 2]>::new();
        // A policy without an ask (a caller's mistake) asks for nothing.
        let ask_of = |i: usize| asks.get(i).copied().unwrap_or_default();
        for (i, &p) in check.policies.iter().enumerate() {
            let ask = ask_of(i);
            let returned = shard.update(p, at, |state| {
                give_back(p.policy, state, now, ask.held.units, ask.held.until)
            });
            answer.leased.push(Leased {
                returned,
                ..Leased::default()
            });
            until.push(if ask.want > 0 {
                let end = shard.read(p, at, |state| lease_until(p.policy, state, now));
                end.min(now.saturating_add(ask.ttl_us))
            } else {
                now
            });
        }
        all_or_nothing_into(
            &mut answer.decisions,
            check.policies.len(),
            Mode::Consume,
            |i, mode| shard.decide_policy(inner, check.policies[i], at, check.cost, mode),
        );
        if answer.decisions.iter().all(|d| d.allowed) {
            for (i, &p) in check.policies.iter().enumerate() {
                let decision = &mut answer.decisions[i];
                let ask = ask_of(i);
                let want = lease_want(ask.want, until[i].saturating_sub(now), ask.ttl_us);
                let units = lease_size(want, decision.remaining);
                if units == 0 {
                    continue;
                }
                let after = shard.decide_policy(inner, p, at, units, Mode::Consume);
                debug_assert!(after.allowed, "a lease takes only what remains");
                decision.remaining = after.remaining;
                decision.reset_after = after.reset_after;
                let leased = &mut answer.leased[i];
                (leased.units, leased.until, leased.valid_us) = (units, until[i], until[i] - now);
            }
        }
        if shard.table.len() >= shard.sweep_at {
            shard.sweep(inner, now);
        }
        answer
    }

    /// A keyed hash of a reservation's key and policy names: what a settle
    /// must match to find it.
    fn reservation_check(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = self.inner.hasher.build_hasher();
        key.hash(&mut hasher);
        for p in policies {
            p.name.hash(&mut hasher);
        }
        hasher.finish()
    }

    /// [`Store::reserve`], synchronously: the reference of one reservation
    /// step, atomic under the identity's shard lock.
    pub fn reserve_sync(&self, call: ReserveCall<'_>) -> Decisions {
        let ReserveCall {
            check,
            nonce,
            deadline_us,
        } = call;
        let record_check = self.reservation_check(check.key, check.policies);
        let inner = &*self.inner;
        let (mut shard, at) = self.lock_at(check.key);
        let now = at.now;
        let marks: smallvec::SmallVec<[Mark; 2]> = check
            .policies
            .iter()
            .map(|&p| Mark {
                until: shard.read(p, at, |state| lease_until(p.policy, state, now)),
                algorithm: p.policy.algorithm(),
                period_us: p.policy.period_us(),
            })
            .collect();
        let mut decisions = Decisions::new();
        all_or_nothing_into(
            &mut decisions,
            check.policies.len(),
            Mode::Consume,
            |i, mode| shard.decide_policy(inner, check.policies[i], at, check.cost, mode),
        );
        if decisions.iter().all(|d| d.allowed) {
            let record = Record {
                check: record_check,
                identity: at.hash,
                deadline: now.saturating_add(deadline_us),
                estimate: check.cost,
                marks,
                settled: None,
            };
            let evicted =
                lock_table(&inner.reservations).insert(nonce, record, now, inner.max_reservations);
            inner
                .reservation_evictions
                .fetch_add(evicted, Ordering::Relaxed);
        }
        decisions
    }

    /// [`Store::settle`], synchronously: the reference of one settle step,
    /// atomic under the identity's shard lock.
    pub fn settle_sync(&self, call: SettleCall<'_>) -> Option<SettleAnswer> {
        let SettleCall {
            key,
            policies,
            nonce,
            actual,
        } = call;
        let record_check = self.reservation_check(key, policies);
        let inner = &*self.inner;
        let (mut shard, at) = self.lock_at(key);
        let now = at.now;
        // The table is locked twice, briefly: to read the record, then to
        // mark it settled. The shard's lock, held throughout, keeps any
        // other settle of it (same key, same shard) out in between.
        let (estimate, marks, replay) = {
            let mut table = lock_table(&inner.reservations);
            let record = table
                .get_mut(nonce, now)
                .filter(|r| r.check == record_check && r.marks.len() == policies.len())?;
            (
                record.estimate,
                record.marks.clone(),
                record.settled.clone(),
            )
        };
        let mut answer = SettleAnswer {
            estimate,
            ..SettleAnswer::default()
        };
        if let Some((first, settled)) = replay {
            (answer.actual, answer.replayed, answer.settled) = (first, true, settled);
        } else {
            for (&p, mark) in policies.iter().zip(&marks) {
                let mut settled = Settled::default();
                let same_numbers = p.policy.algorithm() == mark.algorithm
                    && p.policy.period_us() == mark.period_us;
                if actual < estimate && same_numbers {
                    settled.returned = shard.update(p, at, |state| {
                        give_back(p.policy, state, now, estimate - actual, mark.until)
                    });
                } else if actual > estimate {
                    let extra = actual - estimate;
                    settled.charged = shard.upsert(inner, p, at, |state| {
                        overdraw(p.policy, state, now, extra, p.policy.max_overdraft())
                    });
                    settled.unpaid = extra - settled.charged;
                }
                answer.settled.push(settled);
            }
            answer.actual = actual;
            lock_table(&inner.reservations).settle(nonce, actual, answer.settled.clone());
        }
        for &p in policies {
            let decision = shard.decide_policy(inner, p, at, 1, Mode::Peek);
            answer.decisions.push(decision);
        }
        Some(answer)
    }

    /// [`Store::charge`], synchronously: the reference of one charge step,
    /// atomic under the identity's shard lock.
    pub fn charge_sync(&self, call: ChargeCall<'_>) -> SettleAnswer {
        let ChargeCall {
            key,
            policies,
            units,
        } = call;
        let inner = &*self.inner;
        let (mut shard, at) = self.lock_at(key);
        let now = at.now;
        let mut answer = SettleAnswer {
            actual: units,
            ..SettleAnswer::default()
        };
        for &p in policies {
            let charged = shard.upsert(inner, p, at, |state| {
                overdraw(p.policy, state, now, units, p.policy.max_overdraft())
            });
            answer.settled.push(Settled {
                returned: 0,
                charged,
                unpaid: units - charged,
            });
        }
        for &p in policies {
            let decision = shard.decide_policy(inner, p, at, 1, Mode::Peek);
            answer.decisions.push(decision);
        }
        answer
    }

    fn reset_sync(&self, key: &[u8], policies: &[PolicyRef<'_>]) {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let mut shard = inner.shard(hash);
        for policy in policies {
            let Some(name) = shard.names.find(policy.name) else {
                continue;
            };
            if let Ok(entry) = shard.table.find_entry(hash, |e| e.is(name, key)) {
                entry.remove();
                shard.names.release(name);
            }
        }
    }
}

/// Which identity a decision is for, and when: what every policy of one
/// check shares.
#[derive(Clone, Copy)]
struct At<'a> {
    key: &'a [u8],
    /// The identity's hash (its shard and table slot).
    hash: u64,
    /// The store's clock, read once under the shard lock.
    now: u64,
}

/// One policy of a check on [`MemoryStore::apply_steps`].
#[derive(Clone, Copy)]
pub(crate) enum Step<'a> {
    /// Decided on the store's state.
    Stored(PolicyRef<'a>),
    /// Already decided; never charged here.
    Decided(Decision),
}

/// Builds a [`MemoryStore`]: see [`MemoryStore::builder`].
#[must_use]
pub struct MemoryStoreBuilder {
    clock: Option<Arc<dyn Clock>>,
    shards: Option<usize>,
    max_keys: usize,
    max_reservations: usize,
}

impl std::fmt::Debug for MemoryStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStoreBuilder")
            .field("shards", &self.shards)
            .field("max_keys", &self.max_keys)
            .field("max_reservations", &self.max_reservations)
            .finish_non_exhaustive()
    }
}

impl MemoryStoreBuilder {
    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The number of shards, rounded up to a power of two (default: 16 per
    /// core). A small cap lowers it, so that every shard holds at least 16
    /// entries; a cap above 65 535 entries per shard raises it.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The most entries (one per identity and policy) the store holds; at
    /// least 1, at most 65 536 × 65 535 (about 4.3 billion; larger values,
    /// `usize::MAX` included, mean that). Default [`DEFAULT_MAX_KEYS`].
    /// Past it, the entries nearest to becoming fresh are evicted (see the
    /// [module documentation](self)).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.clamp(1, MAX_SHARDS * SHARD_MAX);
        self
    }

    /// The most open reservations the store keeps (at least one). Default [`DEFAULT_MAX_RESERVATIONS`]. Past it, the
    /// reservations nearest their deadline are forgotten early: settled at
    /// their estimate, as their deadline would have done (a later settle
    /// finds nothing).
    pub fn max_reservations(mut self, max: usize) -> Self {
        self.max_reservations = max.max(1);
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        let shards = self
            .shards
            .unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
                cores * 16
            })
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        // Every shard holds at least 16 entries, or a cap split over many
        // shards would evict while most of it is unused.
        let fit = (self.max_keys / 16).max(1);
        let shards = if shards > fit {
            // The largest power of two not above `fit`.
            1 << (usize::BITS - 1 - fit.leading_zeros())
        } else {
            shards
        };
        // And at most SHARD_MAX: a larger cap takes more shards.
        let shards = shards.max(self.max_keys.div_ceil(SHARD_MAX).next_power_of_two());
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| {
                        Mutex::new(Shard {
                            table: HashTable::new(),
                            names: Names::default(),
                            sweep_at: MIN_SWEEP_LEN,
                        })
                    })
                    .collect(),
                shard_max: (self.max_keys / shards).clamp(1, SHARD_MAX),
                evictions: AtomicU64::new(0),
                reservations: Mutex::new(Table::default()),
                max_reservations: self.max_reservations,
                reservation_evictions: AtomicU64::new(0),
                hasher: DefaultHashBuilder::default(),
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
            }),
        }
    }
}

impl Inner {
    /// The shard of an identity: every policy of one identity in one shard.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // High bits pick the shard; the table uses the low ones.
        lock(&self.shards[(hash >> 40) as usize & (self.shards.len() - 1)])
    }
}

impl Inner {
    /// An entry's hash, for a resize: its identity's.
    fn rehash(&self, entry: &Entry) -> u64 {
        self.hasher.hash_one(entry.key.identity())
    }
}

impl Shard {
    /// Decides one policy for one identity. A live entry is read whatever
    /// policy wrote it; a charge sets its expiry from the policy in force,
    /// and any other decision only pushes the expiry later — the Lua
    /// script's twin rule (`extend`), so both stores forget state together.
    fn decide_policy(
        &mut self,
        store: &Inner,
        p: PolicyRef<'_>,
        at: At<'_>,
        cost: u64,
        mode: Mode,
    ) -> Decision {
        let At { key, hash, now } = at;
        let Some(name) = self.names.find(p.name) else {
            return self.decide_absent(store, p, at, cost, mode);
        };
        if let Ok(found) = self.table.find_entry(hash, |e| e.is(name, key)) {
            if found.get().expires_at <= now {
                // Gone, as an expired Redis key is: a clock that steps back
                // later must not find it again.
                found.remove();
                self.names.release(name);
                return self.decide_absent(store, p, at, cost, mode);
            }
            let entry = found.into_mut();
            let decision = decide(p.policy, &mut entry.state, now, cost, mode);
            if decision.allowed && mode == Mode::Consume {
                entry.expires_at = expires_at(entry.state.fresh_at(p.policy));
            } else if entry.expires_at > now && decision.reset_after > Duration::ZERO {
                let fresh_at = now + crate::clock::micros(decision.reset_after);
                entry.expires_at = entry.expires_at.max(expires_at(fresh_at));
            }
            return decision;
        }
        self.decide_absent(store, p, at, cost, mode)
    }

    /// Reads the live state of `p` for the identity (a fresh one when
    /// there is none).
    fn read<R>(&mut self, p: PolicyRef<'_>, at: At<'_>, f: impl FnOnce(&State) -> R) -> R {
        let At { key, hash, now } = at;
        let live = self.names.find(p.name).and_then(|name| {
            self.table
                .find(hash, |e| e.is(name, key))
                .filter(|e| e.expires_at > now)
        });
        match live {
            Some(entry) => f(&entry.state),
            None => f(&State::fresh(p.policy, now)),
        }
    }

    /// Changes the live state of `p` for the identity with `f`, which
    /// returns how much it changed (0: nothing), then sets its expiry from
    /// the state: exactly when it is fresh, as the Lua script does. An
    /// identity with no live state is left alone (`f` is not called).
    fn update(&mut self, p: PolicyRef<'_>, at: At<'_>, f: impl FnOnce(&mut State) -> u64) -> u64 {
        let At { key, hash, now } = at;
        let Some(name) = self.names.find(p.name) else {
            return 0;
        };
        let Some(entry) = self
            .table
            .find_mut(hash, |e| e.is(name, key))
            .filter(|e| e.expires_at > now)
        else {
            return 0;
        };
        let changed = f(&mut entry.state);
        if changed > 0 {
            entry.expires_at = expires_at(entry.state.fresh_at(p.policy));
        }
        changed
    }

    /// As [`update`](Self::update), on a fresh state (inserted if `f`
    /// changes it) when the identity has no live one.
    fn upsert(
        &mut self,
        store: &Inner,
        p: PolicyRef<'_>,
        at: At<'_>,
        f: impl FnOnce(&mut State) -> u64,
    ) -> u64 {
        let At { key, hash, now } = at;
        let live = self.names.find(p.name).is_some_and(|name| {
            self.table
                .find(hash, |e| e.is(name, key))
                .is_some_and(|e| e.expires_at > now)
        });
        if live {
            return self.update(p, at, f);
        }
        let mut state = State::fresh(p.policy, now);
        let changed = f(&mut state);
        if changed > 0 {
            // An expired entry of the same identity and policy goes first.
            if let Some(name) = self.names.find(p.name) {
                if let Ok(old) = self.table.find_entry(hash, |e| e.is(name, key)) {
                    old.remove();
                    self.names.release(name);
                }
            }
            if self.table.len() >= store.shard_max {
                self.make_room(store, now);
            }
            let entry = Entry {
                key: Key::new(self.names.acquire(p.name), key),
                expires_at: expires_at(state.fresh_at(p.policy)),
                state,
            };
            self.table.insert_unique(hash, entry, |e| store.rehash(e));
        }
        changed
    }

    /// Decides for an identity with no live state, inserting one if charged
    /// (making room first when the shard is full).
    fn decide_absent(
        &mut self,
        store: &Inner,
        p: PolicyRef<'_>,
        at: At<'_>,
        cost: u64,
        mode: Mode,
    ) -> Decision {
        let At { key, hash, now } = at;
        let mut state = State::fresh(p.policy, now);
        let decision = decide(p.policy, &mut state, now, cost, mode);
        if decision.allowed && mode == Mode::Consume {
            if self.table.len() >= store.shard_max {
                self.make_room(store, now);
            }
            let entry = Entry {
                key: Key::new(self.names.acquire(p.name), key),
                expires_at: expires_at(state.fresh_at(p.policy)),
                state,
            };
            self.table.insert_unique(hash, entry, |e| store.rehash(e));
        }
        decision
    }

    /// Drops expired entries; if the shard is still at its cap, evicts the
    /// eighth of it nearest to becoming fresh (at least one entry), so the
    /// cost of making room is spread over the inserts that follow.
    fn make_room(&mut self, store: &Inner, now: u64) {
        self.sweep(store, now);
        let len = self.table.len();
        if len < store.shard_max {
            return;
        }
        let evict = (len / 8).max(1);
        let mut expiries: Vec<u64> = self.table.iter().map(|e| e.expires_at).collect();
        let (_, &mut threshold, _) = expiries.select_nth_unstable(evict - 1);
        // Everything before the threshold goes, then ties until `evict`.
        let mut left = evict;
        self.retain(|e| {
            let go = e.expires_at < threshold;
            left -= usize::from(go);
            !go
        });
        self.retain(|e| {
            let go = left > 0 && e.expires_at == threshold;
            left -= usize::from(go);
            !go
        });
        store.evictions.fetch_add(evict as u64, Ordering::Relaxed);
    }

    fn sweep(&mut self, store: &Inner, now: u64) {
        self.retain(|e| e.expires_at > now);
        let len = self.table.len();
        if self.table.capacity() > 4 * len.max(MIN_SWEEP_LEN) {
            self.table.shrink_to_fit(|e| store.rehash(e));
        }
        self.sweep_at = (2 * len).max(MIN_SWEEP_LEN);
    }

    /// Keeps the entries `keep` says to keep, releasing the names of the others.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let names = &mut self.names;
        self.table.retain(|e| {
            let kept = keep(e);
            if !kept {
                names.release(e.key.name());
            }
            kept
        });
    }
}

/// Locks the reservations (see [`lock`] on poisoning).
fn lock_table(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks a shard. A panic while holding the lock cannot leave a shard
/// half-updated (every update is a whole-value assignment), so a poisoned
/// lock is used as is rather than propagating the panic to every caller.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store for MemoryStore {
    async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        Ok(self.apply_sync(check))
    }

    async fn lease(&self, call: LeaseCall<'_>) -> Result<LeaseAnswer, StoreError> {
        Ok(self.lease_sync(call))
    }

    fn leases(&self) -> bool {
        true
    }

    async fn reserve(&self, call: ReserveCall<'_>) -> Result<Decisions, StoreError> {
        Ok(self.reserve_sync(call))
    }

    async fn settle(&self, call: SettleCall<'_>) -> Result<Option<SettleAnswer>, StoreError> {
        Ok(self.settle_sync(call))
    }

    async fn charge(&self, call: ChargeCall<'_>) -> Result<SettleAnswer, StoreError> {
        Ok(self.charge_sync(call))
    }

    fn reserves(&self) -> bool {
        true
    }

    async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        self.reset_sync(key, policies);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{MemoryStore, lock, same_bytes};
    use crate::{Check, ManualClock, Mode, Policy, PolicyRef};

    /// `same_bytes` is `==` for every length it treats apart (0 to 3, 4 to
    /// 7, 8 to 16, longer), with one byte changed at every position, and
    /// across lengths.
    #[test]
    fn same_bytes_is_equality() {
        for len in 0..=40usize {
            let a: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            assert!(same_bytes(&a, &a.clone()), "len {len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!same_bytes(&a, &b), "len {len}, byte {at} changed");
            }
            let longer: Vec<u8> = a.iter().copied().chain([0]).collect();
            assert!(!same_bytes(&a, &longer), "len {len} against {}", len + 1);
            assert!(!same_bytes(&longer, &a), "len {} against {len}", len + 1);
        }
    }

    /// Charges one unit of `policy` under `name` to `key`: allowed?
    fn charge(store: &MemoryStore, name: &str, key: &[u8], policy: &Policy) -> bool {
        let refs = [PolicyRef { name, policy }];
        store.apply_sync(Check::new(key, &refs, 1, Mode::Consume))[0].allowed
    }

    /// Live names of the one shard of `store`.
    fn live_names(store: &MemoryStore) -> Vec<String> {
        let shard = lock(&store.inner.shards[0]);
        let live: Vec<String> = shard
            .names
            .slots
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(name, _)| name.to_string())
            .collect();
        assert_eq!(shard.names.index.len(), live.len());
        live
    }

    #[test]
    fn names_are_held_once_and_freed_with_their_last_entry() {
        let clock = ManualClock::new(0);
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .shards(1)
            .max_keys(1000)
            .build();
        let policy: Policy = "fixed_window 1/s".parse().expect("valid");
        // More names than a scan covers: the index finds them.
        let names: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
        for key in [&b"alice"[..], b"a key longer than twenty bytes"] {
            for name in &names {
                assert!(charge(&store, name, key, &policy), "{name}");
            }
            for name in &names {
                assert!(!charge(&store, name, key, &policy), "{name}");
            }
        }
        assert_eq!(live_names(&store).len(), 20, "each name held once");
        store.reset_sync(
            b"alice",
            &[PolicyRef {
                name: "p3",
                policy: &policy,
            }],
        );
        assert!(charge(&store, "p3", b"alice", &policy), "reset");
        clock.advance_us(3_000_000);
        store.purge_expired();
        assert!(live_names(&store).is_empty(), "freed with their entries");
        // Freed indexes are reused by other names, which start fresh.
        assert!(charge(&store, "q", b"alice", &policy));
        assert!(!charge(&store, "q", b"alice", &policy));
        assert!(charge(&store, "p0", b"alice", &policy));
        assert_eq!(live_names(&store).len(), 2);
    }

    #[test]
    fn the_largest_cap_builds_a_store_of_at_most_max_shards() {
        let store = MemoryStore::builder().max_keys(usize::MAX).build();
        assert_eq!(store.inner.shards.len(), super::MAX_SHARDS);
        assert_eq!(store.inner.shard_max, super::SHARD_MAX);
        let store = MemoryStore::builder().shards(usize::MAX).build();
        assert!(store.inner.shards.len() <= super::MAX_SHARDS);
    }

    #[test]
    fn a_shard_never_holds_more_entries_than_names_can_index() {
        let store = MemoryStore::builder().shards(1).max_keys(1 << 20).build();
        assert!(store.inner.shards.len() >= 16);
        assert!(store.inner.shard_max <= super::SHARD_MAX);
    }

    #[test]
    fn entries_stay_small() {
        // One cache line: a decision on a key not in cache is one miss.
        assert_eq!(size_of::<super::Entry>(), 64);
        assert_eq!(size_of::<super::Key>(), 24);
        assert!(
            size_of::<super::Shard>() <= 128,
            "{}",
            size_of::<super::Shard>()
        );
        assert!(size_of::<crate::algorithm::State>() <= 32);
    }

    const S: u64 = 1_000_000;

    /// Admitted units out of `n` single-unit checks of `policy` under `api`.
    fn admitted(store: &MemoryStore, key: &[u8], policy: &Policy, n: u64) -> u64 {
        (0..n).filter(|_| charge(store, "api", key, policy)).count() as u64
    }

    /// A charge under a longer period that is not a multiple of the
    /// shorter one sets the key to expire when the longer window ends,
    /// inside the shorter one: the shorter period starts it afresh at its
    /// own start, which the next charge under the longer period finds in
    /// an ended window and restarts again. Three times the limit in one
    /// 7 s window, the bound `docs/ALGORITHMS.md` gives.
    #[test]
    fn an_expiry_restarts_the_shorter_window_a_third_time() {
        for (a, want) in [("fixed_window", 29), ("sliding_window", 15)] {
            let clock = ManualClock::new(7 * S);
            let store = MemoryStore::builder()
                .clock(clock.clone())
                .shards(1)
                .build();
            let short: Policy = format!("{a} 10/7s").parse().expect("valid");
            let long: Policy = format!("{a} 1000/10s").parse().expect("valid");
            // The 7 s window [7 s, 14 s) holds the 10 s window start 10 s.
            let mut own = admitted(&store, b"k", &short, 10);
            clock.set_us(8 * S);
            assert!(charge(&store, "api", b"k", &long), "{a}");
            clock.set_us(10 * S + S / 2);
            own += admitted(&store, b"k", &short, 10);
            clock.set_us(11 * S);
            assert!(charge(&store, "api", b"k", &long), "{a}");
            clock.set_us(11 * S + S / 2);
            own += admitted(&store, b"k", &short, 10);
            assert_eq!(own, want, "{a}: admitted under 10/7s in [7 s, 14 s)");
        }
    }
}
