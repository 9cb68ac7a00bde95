//! Leases, the local half: units charged in the store and spent here.
//!
//! A check of policies that all lease ([`Policy::lease`]) is served here
//! when this instance holds enough leased units of every one of them — no
//! store call, whatever the store's state, since the units were charged
//! when they were leased. Otherwise the check goes to the store as one
//! [`Store::lease`](crate::Store::lease) call that decides it, gives back
//! what is left of the old leases and takes new ones sized from the key's
//! local arrival rate. `docs/LEASES.md` has the rules and the argument.
//!
//! Bounded: at most `max_keys` (policy, identity) slots, a slot only for a
//! pair checked at least once; a full table leases nothing more until its
//! quiet slots are swept.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, Equivalent, HashMap};
use smallvec::SmallVec;
use tokio::sync::Notify;

use crate::algorithm::decision_from_parts;
use crate::store::{Check, Decisions, Held, LeaseAnswer, LeaseAsk, PolicyRef};
use crate::{Decision, Policy};

/// Shards of the slot table (a power of two).
const SHARDS: usize = 16;

/// A key leases only once this many units were asked of it within a lease's
/// time to live: fewer and its rate is too uncertain to size a lease from,
/// and a key that quiet decides in the store.
const MIN_SAMPLE: u64 = 8;

/// Rounds of waiting for another caller's lease call before deciding in
/// the store without a lease.
pub(crate) const WAIT_ROUNDS: usize = 3;

/// What leasing did, since the wrapper was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseStats {
    /// Leases taken (one per policy that leased units in a store call).
    pub taken: u64,
    /// Units leased.
    pub units: u64,
    /// Units of ended leases given back to the store.
    pub returned: u64,
    /// Units of ended leases neither spent nor given back: expired, revoked
    /// by a reset or a changed policy, refused by the store (too late), or
    /// lost with a failed call.
    pub forfeited: u64,
    /// (policy, identity) pairs tracked now.
    pub keys: usize,
}

#[derive(Default)]
struct Counters {
    taken: AtomicU64,
    units: AtomicU64,
    returned: AtomicU64,
    forfeited: AtomicU64,
}

/// A lease call in progress for a slot: callers that find the slot empty
/// wait for it rather than each taking a lease of their own.
pub(crate) struct Flight {
    notify: Notify,
    landed: AtomicBool,
}

impl Flight {
    /// Waits until the call lands, at most `bound`.
    pub(crate) async fn wait(&self, bound: Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.landed.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(bound, notified).await;
    }

    fn land(&self) {
        self.landed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// The owned key of a slot.
#[derive(PartialEq, Eq)]
struct SlotKey {
    name: Box<str>,
    key: Box<[u8]>,
}

impl Hash for SlotKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrowed(&self.name, &self.key).hash(state);
    }
}

/// A slot's key as a check holds it.
#[derive(Hash)]
struct Borrowed<'a>(&'a str, &'a [u8]);

impl Equivalent<SlotKey> for Borrowed<'_> {
    fn equivalent(&self, owned: &SlotKey) -> bool {
        *owned.name == *self.0 && *owned.key == *self.1
    }
}

struct Slot {
    /// The policy the lease was taken under: a changed one ends it.
    policy: Policy,
    /// Units left to spend.
    units: u64,
    /// The lease's end on the store's clock, given back with the units.
    until: u64,
    /// The lease's end on the local clock (µs): from when the call was
    /// sent, so never later than the store's.
    deadline: u64,
    /// What remained in the store when the lease was taken.
    store_remaining: u64,
    /// When the store's state was to be fresh (local µs), as it said then.
    reset_at: u64,
    /// Start of the arrival sample (local µs) and units asked since.
    since: u64,
    arrivals: u64,
    flight: Option<Arc<Flight>>,
}

impl Slot {
    fn new(policy: Policy, now: u64) -> Slot {
        Slot {
            policy,
            units: 0,
            until: 0,
            deadline: 0,
            store_remaining: 0,
            reset_at: 0,
            since: now,
            arrivals: 0,
            flight: None,
        }
    }

    /// Units wanted for the next lease: the arrival rate over the sample
    /// times the lease's time to live, at most its `max`; none until the
    /// sample holds [`MIN_SAMPLE`] units, and a sample that took longer
    /// than a time to live to fill starts again (a quiet key).
    fn want(&mut self, now: u64) -> u64 {
        let Some(lease) = self.policy.lease() else {
            return 0;
        };
        let elapsed = now.saturating_sub(self.since);
        if self.arrivals < MIN_SAMPLE {
            if elapsed >= lease.ttl_us() {
                (self.since, self.arrivals) = (now, 0);
            }
            return 0;
        }
        let rate_ttl =
            u128::from(self.arrivals) * u128::from(lease.ttl_us()) / u128::from(elapsed.max(1));
        (self.since, self.arrivals) = (now, 0);
        u64::try_from(rate_ttl).unwrap_or(u64::MAX).min(lease.max())
    }
}

/// What the table says of a check.
pub(crate) enum Serve {
    /// Served from leases held.
    Served(Decisions),
    /// Another caller's lease call may bring units: wait for it.
    Wait(Arc<Flight>),
    /// Not served here.
    Miss,
}

/// How a lease call ended, for [`Leases::land`].
pub(crate) enum Landed<'a> {
    /// The store answered.
    Answer(&'a LeaseAnswer),
    /// The call failed, timed out or was dropped: the store may or may not
    /// have run it.
    Failed,
    /// The call was never sent (the breaker was open).
    NotSent,
}

/// What a check that missed asks of the store.
pub(crate) enum Ask {
    /// A lease call, with its flight.
    Lease(SmallVec<[LeaseAsk; 2]>, Arc<Flight>),
    /// Nothing to lease or give back: decide as a plain check.
    Plain,
    /// Another caller's lease call started meanwhile.
    Wait(Arc<Flight>),
}

pub(crate) struct Leases {
    shards: Box<[Mutex<HashMap<SlotKey, Slot>>]>,
    shard_max: usize,
    hasher: DefaultHashBuilder,
    counters: Counters,
}

impl Leases {
    pub(crate) fn new(max_keys: usize) -> Leases {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_max: max_keys.div_ceil(SHARDS).max(1),
            hasher: DefaultHashBuilder::default(),
            counters: Counters::default(),
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, HashMap<SlotKey, Slot>> {
        let i = self.hasher.hash_one(key) as usize & (SHARDS - 1);
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forfeit(&self, units: u64) {
        if units > 0 {
            self.counters.forfeited.fetch_add(units, Ordering::Relaxed);
        }
    }

    /// Brings a slot up to `now` under `policy`: a changed policy or an
    /// expired lease forfeits what was left.
    fn refresh(&self, slot: &mut Slot, policy: &Policy, now: u64) {
        if slot.policy != *policy {
            self.forfeit(slot.units);
            *slot = Slot {
                flight: slot.flight.take(),
                ..Slot::new(*policy, now)
            };
        } else if slot.units > 0 && now >= slot.deadline {
            self.forfeit(slot.units);
            slot.units = 0;
        }
    }

    /// Serves `check` from the leases held, if each of its policies holds
    /// enough units; counts the arrival either way.
    pub(crate) fn serve(&self, check: Check<'_>, now: u64) -> Serve {
        let mut shard = self.shard(check.key);
        let mut covered = true;
        let mut flight = None;
        for p in check.policies {
            let Some(slot) = shard.get_mut(&Borrowed(p.name, check.key)) else {
                covered = false;
                continue;
            };
            self.refresh(slot, p.policy, now);
            covered &= slot.units >= check.cost;
            if slot.units < check.cost && flight.is_none() {
                flight.clone_from(&slot.flight);
            }
        }
        if !covered {
            return flight.map_or(Serve::Miss, Serve::Wait);
        }
        let decisions = check
            .policies
            .iter()
            .map(|p| {
                let slot = shard
                    .get_mut(&Borrowed(p.name, check.key))
                    .expect("covered: every slot is there");
                slot.units -= check.cost;
                slot.arrivals = slot.arrivals.saturating_add(check.cost);
                served(p, slot, now)
            })
            .collect();
        Serve::Served(decisions)
    }

    /// Prepares the store call of a check that was not served: each policy's
    /// want and the units it gives back, and a flight others wait on. `Plain`
    /// when nothing is wanted or given back, or the table is full.
    pub(crate) fn ask(&self, check: Check<'_>, now: u64) -> Ask {
        let mut shard = self.shard(check.key);
        let missing = check
            .policies
            .iter()
            .filter(|p| !shard.contains_key(&Borrowed(p.name, check.key)))
            .count();
        if shard.len() + missing > self.shard_max {
            // Full: sweep the slots holding nothing live.
            shard.retain(|_, slot| {
                let keep = slot.flight.is_some() || (slot.units > 0 && now < slot.deadline);
                if !keep {
                    self.forfeit(slot.units);
                }
                keep
            });
            if shard.len() + missing > self.shard_max {
                return Ask::Plain;
            }
        }
        let mut asks: SmallVec<[LeaseAsk; 2]> = SmallVec::new();
        for p in check.policies {
            let slot = shard
                .entry(SlotKey {
                    name: p.name.into(),
                    key: check.key.into(),
                })
                .or_insert_with(|| Slot::new(*p.policy, now));
            self.refresh(slot, p.policy, now);
            if let Some(flight) = &slot.flight {
                return Ask::Wait(Arc::clone(flight));
            }
            slot.arrivals = slot.arrivals.saturating_add(check.cost);
            // A lease that could serve this cost keeps its units (the store
            // charges the cost there too, all-or-nothing with the others);
            // one that cannot gives them back and asks for more.
            asks.push(if slot.units >= check.cost {
                LeaseAsk::default()
            } else {
                LeaseAsk {
                    want: slot.want(now),
                    ttl_us: p.policy.lease().map_or(0, |l| l.ttl_us()),
                    held: Held {
                        units: slot.units,
                        until: slot.until,
                    },
                }
            });
        }
        if asks.iter().all(|a| a.want == 0 && a.held.units == 0) {
            return Ask::Plain;
        }
        let flight = Arc::new(Flight {
            notify: Notify::new(),
            landed: AtomicBool::new(false),
        });
        for (p, ask) in check.policies.iter().zip(&asks) {
            if let Some(slot) = shard.get_mut(&Borrowed(p.name, check.key)) {
                slot.units -= ask.held.units;
                slot.flight = Some(Arc::clone(&flight));
            }
        }
        Ask::Lease(asks, flight)
    }

    /// Records the outcome of a lease call sent at `sent` (local µs): the
    /// new leases, what the store took back, and the end of the flight.
    /// Returns, per policy, the units leased that this instance kept (a
    /// lease revoked while in flight is forfeited at once).
    pub(crate) fn land(
        &self,
        check: Check<'_>,
        asks: &[LeaseAsk],
        flight: &Arc<Flight>,
        sent: u64,
        landed: Landed<'_>,
    ) -> SmallVec<[u64; 2]> {
        let c = &self.counters;
        let mut kept = SmallVec::new();
        let mut shard = self.shard(check.key);
        for (i, p) in check.policies.iter().enumerate() {
            let held = asks.get(i).map_or(Held::default(), |a| a.held);
            let slot = shard
                .get_mut(&Borrowed(p.name, check.key))
                .filter(|slot| slot.flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight)));
            let answer = match landed {
                Landed::Answer(answer) => answer,
                Landed::NotSent => {
                    // Never left: the units go back to the lease (the same
                    // one: its `until` and deadline were kept), unless it
                    // was revoked or ended meanwhile.
                    match slot {
                        Some(slot) if slot.policy == *p.policy && slot.until == held.until => {
                            slot.units += held.units;
                            slot.flight = None;
                        }
                        Some(slot) => {
                            slot.flight = None;
                            self.forfeit(held.units);
                        }
                        None => self.forfeit(held.units),
                    }
                    kept.push(0);
                    continue;
                }
                Landed::Failed => {
                    // The store may or may not have taken them back.
                    self.forfeit(held.units);
                    if let Some(slot) = slot {
                        slot.flight = None;
                    }
                    kept.push(0);
                    continue;
                }
            };
            let (Some(leased), Some(decision)) = (answer.leased.get(i), answer.decisions.get(i))
            else {
                kept.push(0);
                continue;
            };
            c.returned.fetch_add(leased.returned, Ordering::Relaxed);
            self.forfeit(held.units.saturating_sub(leased.returned));
            if leased.units > 0 {
                c.taken.fetch_add(1, Ordering::Relaxed);
                c.units.fetch_add(leased.units, Ordering::Relaxed);
            }
            match slot {
                // Taken under the policy this slot holds: spent here. Units
                // the slot kept (it could serve the cost) stay with their
                // own lease; a slot that asked held none.
                Some(slot) if slot.policy == *p.policy => {
                    slot.flight = None;
                    if leased.units > 0 {
                        self.forfeit(slot.units);
                        slot.units = leased.units;
                        slot.until = leased.until;
                        slot.deadline = sent.saturating_add(leased.valid_us);
                        slot.store_remaining = decision.remaining;
                        slot.reset_at =
                            sent.saturating_add(crate::clock::micros(decision.reset_after));
                    }
                    kept.push(leased.units);
                }
                Some(slot) => {
                    slot.flight = None;
                    self.forfeit(leased.units);
                    kept.push(0);
                }
                // Revoked while in flight (a reset): never spent.
                None => {
                    self.forfeit(leased.units);
                    kept.push(0);
                }
            }
        }
        drop(shard);
        flight.land();
        kept
    }

    /// Drops every lease of `key` (a reset): its units are forfeited.
    pub(crate) fn revoke(&self, key: &[u8]) {
        let mut shard = self.shard(key);
        shard.retain(|k, slot| {
            let keep = *k.key != *key;
            if !keep {
                self.forfeit(slot.units);
                if let Some(flight) = slot.flight.take() {
                    flight.land();
                }
            }
            keep
        });
    }

    /// Drops every lease (the invalidation feed was lost or reconnected:
    /// resets may have been missed).
    pub(crate) fn revoke_all(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (_, slot) in shard.drain() {
                self.forfeit(slot.units);
                if let Some(flight) = slot.flight {
                    flight.land();
                }
            }
        }
    }

    pub(crate) fn stats(&self) -> LeaseStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        LeaseStats {
            taken: load(&c.taken),
            units: load(&c.units),
            returned: load(&c.returned),
            forfeited: load(&c.forfeited),
            keys: self
                .shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
                .sum(),
        }
    }
}

/// The decision of a check served from a lease, never promising more than
/// the store did when the lease was taken: `remaining` is the units left in
/// this lease plus what remained in the store then, `reset_after` what the
/// store said then, less the time since.
fn served(p: &PolicyRef<'_>, slot: &Slot, now: u64) -> Decision {
    let remaining = slot
        .units
        .saturating_add(slot.store_remaining)
        .min(p.policy.capacity());
    decision_from_parts(
        p.policy,
        1,
        true,
        remaining,
        slot.reset_at.saturating_sub(now),
        0,
        0,
    )
}

/// The caller's view of a lease call's decisions: each `remaining` counts
/// the units this instance kept in its new lease ([`Leases::land`]), as
/// the store's remaining did before it leased them.
pub(crate) fn with_leased(answer: &LeaseAnswer, kept: &[u64]) -> Decisions {
    answer
        .decisions
        .iter()
        .zip(kept)
        .map(|(d, units)| Decision {
            remaining: d.remaining.saturating_add(*units),
            ..*d
        })
        .collect()
}
