//! The deny cache: a check the store denied until instant `T` is denied
//! locally until `T`, without a round trip.
//!
//! Why this is exact. Say the store denied cost `c` of a policy set for a
//! key, answering `retry_after = r` to a call sent at local instant `s`.
//! The store decided at some instant `d >= s` that the same request passes
//! at `d + r` if nothing else happens, and not a microsecond earlier. Until
//! then:
//! - nothing else happening, it stays denied (that is what `retry_after`
//!   means, for every algorithm);
//! - other requests can only consume more, which makes it pass later, never
//!   sooner;
//! - a larger cost needs at least as long (every algorithm is monotonic in
//!   the cost) — but its exact `retry_after` depends on the cost, so the
//!   cache answers a larger cost only when every policy is a fixed window
//!   that denied (it passes when its window ends, whatever the cost); any
//!   other larger cost goes to the store;
//! - only a reset makes it pass sooner, and every reset is broadcast
//!   ([`Invalidation`](super::Invalidation)) and drops the entry;
//! - or a charge under another version of one of its policies (same name,
//!   other numbers: a policy changed under a live key), which can leave the
//!   state less used as the cached version reads it; such a charge through
//!   this instance drops the entry. Across instances running different
//!   versions at once (a rolling reload) it cannot be seen: a cached denial
//!   may then outlast the store's by at most its own `retry_after` — a
//!   denial, never an admission.
//!
//! So the cache denies cost `>= c` until `s + r <= d + r`: measured from when
//! the call was *sent*, it expires no later than the store's own instant,
//! and never denies what the store would allow. For several policies at
//! once, it holds until the earliest `retry_after` among the denials (each
//! denied policy is then still denied, so every field it returns is exact).
//!
//! The same holds for the denial that follows an allow which left less
//! than its cost (see [`derived_denial`]): the allow's own fields tell,
//! for `fixed_window` and the buckets, a lower bound of when the same
//! request passes, and it is cached from when the allow was sent.
//!
//! Memory is bounded: at most `capacity` identities (split over shards),
//! dropping expired entries first, then those expiring soonest.
//!
//! **Single flight.** When an entry expires, a flood of callers would all
//! miss it at once and all call the store (one is allowed, the others are
//! denied and re-cache). Instead, an expired entry is kept as an *anchor*:
//! the first caller to meet it leads a [`Flight`] to the store, and the
//! others wait for it ([`Lookup::Wait`]), then look up again. If the leader
//! was denied, or allowed with no room left and a derivable denial, that
//! denial is cached and answers them; otherwise nothing is reused (every
//! allowed request is charged by the store): the waiters go to the store
//! themselves — one at a time through the anchor when the allow left less
//! room than its cost but no denial could be derived (the next one is
//! probably denied), all at once when there was room. Exactness is
//! untouched: only denials the store made, or that follow from an allow it
//! made, are ever served.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashMap};
use smallvec::SmallVec;

use crate::algorithm::next_allowed_after;
use crate::store::{Check, Decisions, Mode, PolicyRef};
use crate::{Algorithm, Decision, Policy};

/// Shards: enough that 20-odd tasks flooding hot keys rarely meet on a lock.
const SHARDS: usize = 16;

pub(crate) struct DenyCache {
    shards: Box<[Mutex<Shard>]>,
    /// Keyed: identities are user input.
    hasher: DefaultHashBuilder,
    per_shard: usize,
    /// Bumped by every invalidation. A denial is cached only if no
    /// invalidation happened while its call was in flight: otherwise a call
    /// that read the state before a reset could cache a stale denial after
    /// the reset's notice was applied.
    epoch: AtomicU64,
}

#[derive(Default)]
struct Shard {
    identities: HashMap<Box<[u8]>, SmallVec<[Entry; 1]>>,
}

struct Entry {
    policies: SmallVec<[(Box<str>, Policy); 1]>,
    /// The smallest cost known denied.
    cost: u64,
    /// Denied until this local instant (µs).
    until_us: u64,
    decisions: Decisions,
    /// Per decision: the local instant its `retry_after` points to.
    retry_at_us: SmallVec<[u64; 2]>,
    /// Per decision: the local instant its `reset_after` points to.
    reset_at_us: SmallVec<[u64; 2]>,
    /// Once expired: the call refreshing it, if one is in flight.
    flight: Option<Arc<Flight>>,
}

/// One caller's store call for an expired entry, which others wait for.
#[derive(Default)]
pub(crate) struct Flight {
    done: AtomicBool,
    outcome: AtomicU8,
    notify: tokio::sync::Notify,
}

/// How a flight ended, for its waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlightEnd {
    /// The store decided, or the leader gave up: look up again.
    Decided,
    /// The store failed (error, timeout, breaker open): decide by the
    /// failure mode without calling it again.
    Failed,
}

impl Flight {
    /// Waits until the flight ends, at most `bound`; `None` if it did not.
    pub(crate) async fn wait(&self, bound: std::time::Duration) -> Option<FlightEnd> {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.done.load(Ordering::Acquire)
            && tokio::time::timeout(bound, notified).await.is_err()
        {
            return None;
        }
        Some(if self.outcome.load(Ordering::Acquire) == 1 {
            FlightEnd::Failed
        } else {
            FlightEnd::Decided
        })
    }

    fn end(&self, outcome: FlightEnd) {
        self.outcome
            .store(u8::from(outcome == FlightEnd::Failed), Ordering::Release);
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A cached denial: the answer.
    Hit(Decisions),
    /// Nothing usable: call the store.
    Miss,
    /// An expired entry: call the store, then [`DenyCache::land`].
    Lead(Arc<Flight>),
    /// An expired entry another caller is refreshing: wait for it.
    Wait(Arc<Flight>),
}

/// How a leader's call ended, for [`DenyCache::land`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landing {
    /// Allowed with room left for another request of the same cost: the
    /// waiters go to the store all at once.
    AllowedWithRoom,
    /// Allowed with less room than the cost (or denied without being
    /// cached): the waiters go one at a time.
    Tight,
    /// The store failed.
    Failed,
    /// The leader was cancelled: another waiter leads.
    Cancelled,
}

impl Entry {
    /// Whether this entry holds another version (same name, other numbers)
    /// of one of `policies`. A charge under one version of a policy can
    /// leave another version of it *less* used than before — a window that
    /// rolled under a shorter period, tokens refilled at a faster rate — so
    /// a denial cached under the other version may be stale. (Charges under
    /// the same version only consume more, which keeps every cached denial
    /// true.)
    fn is_other_version(&self, policies: &[PolicyRef<'_>]) -> bool {
        self.policies.iter().any(|(name, policy)| {
            policies
                .iter()
                .any(|p| *p.name == **name && p.policy != policy)
        })
    }

    fn is_for(&self, policies: &[PolicyRef<'_>]) -> bool {
        self.policies.len() == policies.len()
            && self
                .policies
                .iter()
                .zip(policies)
                .all(|((name, policy), p)| **name == *p.name && policy == p.policy)
    }
}

impl DenyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        DenyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: DefaultHashBuilder::default(),
            per_shard: capacity.div_ceil(SHARDS),
            epoch: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // Whole-value updates only: a poisoned shard is still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current epoch, read before calling the store.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The cached denial of `cost` for `policies` of `key` at `now_us`, if
    /// any (no single flight).
    #[cfg(test)]
    pub(crate) fn lookup(
        &self,
        key: &[u8],
        policies: &[PolicyRef<'_>],
        cost: u64,
        now_us: u64,
    ) -> Option<Decisions> {
        match self.lookup_or_join(Check::new(key, policies, cost, Mode::Peek), now_us, false) {
            Lookup::Hit(decisions) => Some(decisions),
            _ => None,
        }
    }

    /// The cached denial of `cost` for `policies` of `key` at `now_us`; or,
    /// if the entry expired and `join` is set, a flight to lead or wait for.
    pub(crate) fn lookup_or_join(&self, check: Check<'_>, now_us: u64, join: bool) -> Lookup {
        let Check {
            key,
            policies,
            cost,
            ..
        } = check;
        // A cost above some capacity is denied with no retry_after: leave it
        // to the store, which says so exactly.
        if policies.iter().any(|p| cost > p.policy.capacity()) {
            return Lookup::Miss;
        }
        let mut shard = self.shard(key);
        let Some(entries) = shard.identities.get_mut(key) else {
            return Lookup::Miss;
        };
        let Some(index) = entries.iter().position(|e| e.is_for(policies)) else {
            return Lookup::Miss;
        };
        let entry = &mut entries[index];
        if now_us >= entry.until_us {
            if join {
                return match &entry.flight {
                    Some(flight) => Lookup::Wait(Arc::clone(flight)),
                    None => {
                        let flight = Arc::new(Flight::default());
                        entry.flight = Some(Arc::clone(&flight));
                        Lookup::Lead(flight)
                    }
                };
            }
            if entry.flight.is_none() {
                entries.swap_remove(index);
                if entries.is_empty() {
                    shard.identities.remove(key);
                }
            }
            return Lookup::Miss;
        }
        // A larger cost is denied too, but its exact `retry_after` (and the
        // verdict of a policy that had room) depends on the cost: only a
        // fixed window's denial is the same whatever the cost (it passes
        // when the window ends).
        let same_for_larger = || {
            entry
                .policies
                .iter()
                .zip(&entry.decisions)
                .all(|((_, p), d)| !d.allowed && p.algorithm() == Algorithm::FixedWindow)
        };
        if cost < entry.cost || (cost > entry.cost && !same_for_larger()) {
            return Lookup::Miss;
        }
        Lookup::Hit(
            entry
                .decisions
                .iter()
                .zip(entry.retry_at_us.iter().zip(&entry.reset_at_us))
                .map(|(d, (&retry_at, &reset_at))| Decision {
                    // Only an allowed request waits (a policy with room in a
                    // denied several-policy check is not admitted either).
                    delay: Duration::ZERO,
                    retry_after: (!d.allowed)
                        .then(|| Duration::from_micros(retry_at.saturating_sub(now_us))),
                    reset_after: Duration::from_micros(reset_at.saturating_sub(now_us)),
                    degraded: false,
                    ..*d
                })
                .collect(),
        )
    }

    /// Ends a flight led after [`Lookup::Lead`], once the answer (if any) was
    /// [`record`](Self::record)ed, and wakes its waiters. If a new denial
    /// replaced the anchor, they find it; otherwise the anchor is kept
    /// (without a flight) for the next leader when the waiters should go one
    /// at a time, and dropped when they may all go.
    pub(crate) fn land(
        &self,
        key: &[u8],
        policies: &[PolicyRef<'_>],
        flight: &Arc<Flight>,
        landing: Landing,
    ) {
        {
            let mut shard = self.shard(key);
            if let Some(entries) = shard.identities.get_mut(key) {
                let ours = entries.iter().position(|e| {
                    e.is_for(policies) && e.flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight))
                });
                if let Some(i) = ours {
                    match landing {
                        Landing::Tight | Landing::Cancelled => entries[i].flight = None,
                        Landing::AllowedWithRoom | Landing::Failed => {
                            entries.swap_remove(i);
                        }
                    }
                    if entries.is_empty() {
                        shard.identities.remove(key);
                    }
                }
            }
        }
        flight.end(if landing == Landing::Failed {
            FlightEnd::Failed
        } else {
            FlightEnd::Decided
        });
    }

    /// Records the store's answer to a call sent at `sent_us` (local), when
    /// the epoch was `epoch`: a denial is cached; so is the denial that
    /// follows a `consumed` allow which left less than `cost` (see
    /// [`derived_denial`]); any other allow of at least the cached cost drops
    /// a stale entry.
    pub(crate) fn record(&self, check: Check<'_>, decisions: &Decisions, sent_us: u64, epoch: u64) {
        let Check {
            key,
            policies,
            cost,
            mode,
        } = check;
        let consumed = mode == Mode::Consume;
        if decisions.len() != policies.len() || self.per_shard == 0 {
            return;
        }
        // A charge under another version of a policy can leave a denial
        // cached under this key stale (`Entry::is_other_version`): such
        // entries go, under the one shard lock this call takes anyway.
        let charged = consumed && decisions.iter().all(|d| d.allowed);
        let derived;
        let decisions = if decisions.iter().all(|d| d.allowed) {
            match consumed
                .then(|| derived_denial(policies, cost, decisions))
                .flatten()
            {
                Some(denial) => {
                    derived = denial;
                    &derived
                }
                None => {
                    self.forget_if_stale(key, policies, cost, sent_us, charged);
                    return;
                }
            }
        } else {
            decisions
        };
        // The earliest instant one of the denials would pass; a denial that
        // can never pass (cost above capacity) is not cached.
        let mut until_us = u64::MAX;
        for d in decisions.iter().filter(|d| !d.allowed) {
            let Some(retry) = d.retry_after else { return };
            let retry_us = crate::clock::micros(retry);
            until_us = until_us.min(sent_us.saturating_add(retry_us));
        }
        if until_us <= sent_us {
            return;
        }
        let micros = crate::clock::micros;
        let entry = Entry {
            policies: policies
                .iter()
                .map(|p| (Box::from(p.name), *p.policy))
                .collect(),
            cost,
            until_us,
            decisions: decisions.clone(),
            retry_at_us: decisions
                .iter()
                .map(|d| sent_us.saturating_add(d.retry_after.map_or(0, micros)))
                .collect(),
            reset_at_us: decisions
                .iter()
                .map(|d| sent_us.saturating_add(micros(d.reset_after)))
                .collect(),
            flight: None,
        };
        let mut shard = self.shard(key);
        // Checked under the shard lock: an invalidation bumps the epoch
        // before it takes this lock to remove entries, so either we see its
        // bump here, or it removes what we insert.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if let Some(entries) = shard.identities.get_mut(key) {
            if charged {
                entries.retain(|e| !e.is_other_version(policies));
            }
            match entries.iter().position(|e| e.is_for(policies)) {
                Some(i) => entries[i] = entry,
                None => entries.push(entry),
            }
            return;
        }
        if shard.identities.len() >= self.per_shard {
            shard.evict(sent_us, self.per_shard);
        }
        let mut entries = SmallVec::new();
        entries.push(entry);
        shard.identities.insert(Box::from(key), entries);
    }

    fn forget_if_stale(
        &self,
        key: &[u8],
        policies: &[PolicyRef<'_>],
        cost: u64,
        sent_us: u64,
        charged: bool,
    ) {
        let mut shard = self.shard(key);
        if let Some(entries) = shard.identities.get_mut(key) {
            // The store allowed what we hold as denied: the entry is stale (a
            // reset whose notice we missed). Drop it. An entry already expired
            // when the call was sent is not stale but an anchor for single
            // flight ([`land`](Self::land) decides its fate).
            entries.retain(|e| {
                let stale = e.is_for(policies) && cost >= e.cost && e.until_us > sent_us;
                !(stale || (charged && e.is_other_version(policies)))
            });
            if entries.is_empty() {
                shard.identities.remove(key);
            }
        }
    }

    /// Forgets everything cached for `key` (its state was reset).
    pub(crate) fn invalidate(&self, key: &[u8]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.shard(key).identities.remove(key);
    }

    /// Forgets everything (notices may have been missed).
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.identities.clear();
            shard.identities.shrink_to_fit();
        }
    }

    /// The number of identities held (expired ones included until swept).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).identities.len())
            .sum()
    }
}

/// The denial that follows an allowed, consumed request of `cost` which
/// left less than `cost` in at least one policy: that policy denies the same
/// request until [`next_allowed_after`] (a lower bound of the store's own
/// answer, so caching it is as exact as caching a denial the store made),
/// reported as the store would report it then (`remaining` and `reset_after`
/// as of the allow). `None` when every policy has room, or when a policy
/// without room cannot say when it has some again (`sliding_window`,
/// `sliding_log`): single flight then serialises the next call instead.
fn derived_denial(policies: &[PolicyRef<'_>], cost: u64, allowed: &Decisions) -> Option<Decisions> {
    // Most allows leave room: decide that before copying anything.
    if allowed.iter().all(|d| d.remaining >= cost) {
        return None;
    }
    policies
        .iter()
        .zip(allowed)
        .map(|(p, d)| {
            if d.remaining >= cost {
                return Some(*d);
            }
            let wait = next_allowed_after(p.policy, cost, d)?;
            Some(Decision {
                allowed: false,
                retry_after: Some(wait),
                // A leaky bucket's wait belongs to the admitted request.
                delay: Duration::ZERO,
                ..*d
            })
        })
        .collect()
}

impl Shard {
    /// Makes room for one identity: drops expired entries, then, if still
    /// full, the identity whose entries expire soonest.
    fn evict(&mut self, now_us: u64, per_shard: usize) {
        self.identities.retain(|_, entries| {
            entries.retain(|e| e.until_us > now_us || e.flight.is_some());
            !entries.is_empty()
        });
        while self.identities.len() >= per_shard {
            let soonest = self
                .identities
                .iter()
                .min_by_key(|(_, entries)| entries.iter().map(|e| e.until_us).max())
                .map(|(k, _)| k.clone());
            match soonest {
                Some(k) => {
                    self.identities.remove(&k);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::decision_from_parts;

    fn denial(policy: &Policy, retry_us: u64) -> Decisions {
        [decision_from_parts(
            policy, 1, false, 0, 5_000_000, retry_us, 0,
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn denies_until_the_instant_then_forgets() {
        let cache = DenyCache::new(100);
        let policy: Policy = "fixed_window 5/s".parse().expect("valid");
        let refs = [PolicyRef {
            name: "api",
            policy: &policy,
        }];
        cache.record(
            Check::new(b"k", &refs, 2, Mode::Consume),
            &denial(&policy, 0),
            1_000,
            0,
        );
        assert!(
            cache.lookup(b"k", &refs, 2, 1_000).is_none(),
            "retry 0: not cached"
        );
        cache.record(
            Check::new(b"k", &refs, 1, Mode::Consume),
            &denial(&policy, 400_000),
            1_000,
            0,
        );
        let hit = cache.lookup(b"k", &refs, 1, 101_000).expect("cached");
        assert_eq!(hit[0].retry_after, Some(Duration::from_micros(300_000)));
        assert!(!hit[0].allowed && !hit[0].degraded);
        assert!(
            cache.lookup(b"k", &refs, 2, 101_000).is_some(),
            "larger cost"
        );
        assert!(cache.lookup(b"k", &refs, 1, 400_999).is_some());
        assert!(
            cache.lookup(b"k", &refs, 1, 401_000).is_none(),
            "exactly at T"
        );
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn other_policy_sets_smaller_costs_and_stale_epochs_miss() {
        let cache = DenyCache::new(100);
        let policy: Policy = "sliding_log 5/s".parse().expect("valid");
        let other: Policy = "sliding_log 6/s".parse().expect("valid");
        let refs = [PolicyRef {
            name: "api",
            policy: &policy,
        }];
        cache.record(
            Check::new(b"k", &refs, 3, Mode::Consume),
            &denial(&policy, 1_000),
            0,
            0,
        );
        assert!(cache.lookup(b"k", &refs, 2, 0).is_none());
        let changed = [PolicyRef {
            name: "api",
            policy: &other,
        }];
        assert!(cache.lookup(b"k", &changed, 3, 0).is_none());
        cache.invalidate(b"k");
        assert!(cache.lookup(b"k", &refs, 3, 0).is_none());
        cache.record(
            Check::new(b"k", &refs, 3, Mode::Consume),
            &denial(&policy, 1_000),
            0,
            0,
        );
        assert!(cache.lookup(b"k", &refs, 3, 0).is_none(), "epoch moved on");
    }

    #[test]
    fn a_tight_allow_caches_the_denial_that_follows_it() {
        use crate::Mode;
        use crate::algorithm::{State, decide};
        let cache = DenyCache::new(100);
        let gcra: Policy = "gcra 10/s burst 2".parse().expect("valid");
        let daily: Policy = "fixed_window 1000/1d".parse().expect("valid");
        let log: Policy = "sliding_log 2/s".parse().expect("valid");
        let both = [
            PolicyRef {
                name: "rate",
                policy: &gcra,
            },
            PolicyRef {
                name: "daily",
                policy: &daily,
            },
        ];
        let (mut g, mut f) = (State::fresh(&gcra, 0), State::fresh(&daily, 0));
        let mut allow = |now| -> Decisions {
            [
                decide(&gcra, &mut g, now, 1, Mode::Consume),
                decide(&daily, &mut f, now, 1, Mode::Consume),
            ]
            .into_iter()
            .collect()
        };
        // One token left: nothing to derive.
        cache.record(Check::new(b"k", &both, 1, Mode::Consume), &allow(0), 0, 0);
        assert_eq!(cache.len(), 0);
        // None left: the rate policy denies until its next token, 100 ms
        // on; the daily one, with room, is reported as it stands.
        let tight = allow(0);
        cache.record(Check::new(b"k", &both, 1, Mode::Peek), &tight, 0, 0);
        assert_eq!(cache.len(), 0, "a peek's fields describe the state before");
        cache.record(Check::new(b"k", &both, 1, Mode::Consume), &tight, 0, 0);
        let hit = cache.lookup(b"k", &both, 1, 40_000).expect("derived");
        assert!(!hit[0].allowed && hit[1].allowed);
        assert_eq!(hit[0].retry_after, Some(Duration::from_millis(60)));
        assert_eq!((hit[0].remaining, hit[1].remaining), (0, 998));
        assert!(cache.lookup(b"k", &both, 1, 99_999).is_some());
        assert!(
            cache.lookup(b"k", &both, 1, 100_000).is_none(),
            "the next token"
        );
        // A sliding log cannot tell when its oldest entry leaves: not cached.
        let mut l = State::fresh(&log, 0);
        let refs = [PolicyRef {
            name: "log",
            policy: &log,
        }];
        decide(&log, &mut l, 0, 1, Mode::Consume);
        let last: Decisions = [decide(&log, &mut l, 10, 1, Mode::Consume)]
            .into_iter()
            .collect();
        assert!(last[0].allowed && last[0].remaining == 0);
        cache.record(Check::new(b"log", &refs, 1, Mode::Consume), &last, 10, 0);
        assert!(cache.lookup(b"log", &refs, 1, 11).is_none());
    }

    #[test]
    fn stays_within_capacity() {
        let cache = DenyCache::new(32);
        let policy: Policy = "fixed_window 1/s".parse().expect("valid");
        let refs = [PolicyRef {
            name: "api",
            policy: &policy,
        }];
        for i in 0..10_000u64 {
            cache.record(
                Check::new(&i.to_le_bytes(), &refs, 1, Mode::Consume),
                &denial(&policy, 1_000 + i),
                0,
                0,
            );
        }
        assert!(cache.len() <= 32, "{}", cache.len());
    }
}
