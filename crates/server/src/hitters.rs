//! Heavy hitters: per policy, the keys denied most in the last minute, for
//! the dashboard (`GET /v1/stats`, `top_denied`).
//!
//! Each policy has a [`Windowed`] sketch: [`WINDOWS`] space-saving sketches
//! ([`SpaceSaving`], [`SLOTS`] slots each) of [`WINDOW_SECS`] seconds each,
//! in a ring; a denial is offered to the current one, and a read merges
//! those of the last minute. Everything is allocated when a policy is
//! first denied: a denial costs one keyed hash of the key, one mutex and a
//! scan of at most [`SLOTS`] slots, and allocates nothing.
//!
//! Keys are kept as a keyed 64-bit hash (SipHash with a key drawn at
//! random when the process starts: stable while it runs, and not reversible
//! by hashing a dictionary of likely keys elsewhere); their first
//! [`KEY_BYTES`] bytes are copied only with `server.dashboard.show_keys`.
//!
//! The space-saving guarantee (Metwally, Agrawal, El Abbadi, 2005): with `k`
//! slots and `N` denials offered, every key denied more than `N / k` times
//! holds a slot, and each slot's count never under-estimates its key's
//! count, by at most the slot's `error`. Merging keeps both: a key absent
//! from a full sketch was denied there at most that sketch's smallest
//! count, which the merge adds.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

/// Slots of one space-saving sketch.
pub const SLOTS: usize = 32;
/// The most bytes of a key kept (with `show_keys`).
pub const KEY_BYTES: usize = 64;
/// Seconds one sketch of the ring covers.
pub const WINDOW_SECS: u64 = 10;
/// Sketches in the ring: the current one and six full ones, so a read
/// covers the last 60 to 70 seconds.
pub const WINDOWS: usize = 7;
/// The most policies with a sketch (each is about 22 KiB); denials of
/// further policies are not tracked. Policy names come from the
/// configuration, so this is only reached by one with thousands of Envoy
/// descriptors.
pub const MAX_POLICIES: usize = 1000;

/// One slot: a key (by hash, and its first bytes when kept) and its count.
#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    count: u64,
    /// How much of `count` may belong to keys this slot held before.
    error: u64,
    /// Bytes of `key` in use (0 when keys are not kept).
    key_len: u8,
    /// Whether the key was longer than [`KEY_BYTES`].
    truncated: bool,
    key: [u8; KEY_BYTES],
}

impl Slot {
    const EMPTY: Slot = Slot {
        hash: 0,
        count: 0,
        error: 0,
        key_len: 0,
        truncated: false,
        key: [0; KEY_BYTES],
    };

    fn hold(&mut self, hash: u64, key: Option<&[u8]>, count: u64, error: u64) {
        self.hash = hash;
        self.count = count;
        self.error = error;
        let key = key.unwrap_or_default();
        let kept = key.len().min(KEY_BYTES);
        self.key[..kept].copy_from_slice(&key[..kept]);
        self.key_len = u8::try_from(kept).unwrap_or(u8::MAX);
        self.truncated = key.len() > KEY_BYTES;
    }
}

/// A space-saving sketch of [`SLOTS`] slots: fixed size, bounded work per
/// offer, no allocation after it is built.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    slots: [Slot; SLOTS],
    used: usize,
    total: u64,
}

impl Default for SpaceSaving {
    fn default() -> Self {
        SpaceSaving {
            slots: [Slot::EMPTY; SLOTS],
            used: 0,
            total: 0,
        }
    }
}

/// One key of a sketch or of a merge: an upper bound of its count, and how
/// far above the true count that bound may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hitter {
    /// The key's keyed hash.
    pub hash: u64,
    /// At least the key's count (never under-estimated).
    pub count: u64,
    /// `count - error` is at most the key's count.
    pub error: u64,
    /// The key's first bytes, when kept (empty otherwise).
    pub key: Vec<u8>,
    /// Whether the key was longer than what is kept.
    pub truncated: bool,
}

impl SpaceSaving {
    /// Counts `n` occurrences of the key whose hash is `hash`; `key` is
    /// copied (its first [`KEY_BYTES`]) when the key takes a slot.
    pub fn offer(&mut self, hash: u64, key: Option<&[u8]>, n: u64) {
        self.total = self.total.saturating_add(n);
        let used = &mut self.slots[..self.used];
        if let Some(slot) = used.iter_mut().find(|s| s.hash == hash) {
            slot.count = slot.count.saturating_add(n);
            return;
        }
        if self.used < SLOTS {
            self.slots[self.used].hold(hash, key, n, 0);
            self.used += 1;
            return;
        }
        // Full: the key takes the smallest slot's place and inherits its
        // count as its possible error.
        let min = self
            .slots
            .iter_mut()
            .min_by_key(|s| s.count)
            .expect("SLOTS > 0");
        let error = min.count;
        min.hold(hash, key, error.saturating_add(n), error);
    }

    /// The smallest count when every slot is taken (a key without a slot
    /// occurred at most this often), else 0.
    pub fn floor(&self) -> u64 {
        if self.used < SLOTS {
            return 0;
        }
        self.slots.iter().map(|s| s.count).min().unwrap_or(0)
    }

    /// Occurrences offered in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The keys held, in no order.
    pub fn hitters(&self) -> impl Iterator<Item = Hitter> + '_ {
        self.slots[..self.used].iter().map(|s| Hitter {
            hash: s.hash,
            count: s.count,
            error: s.error,
            key: s.key[..usize::from(s.key_len)].to_vec(),
            truncated: s.truncated,
        })
    }

    fn clear(&mut self) {
        self.used = 0;
        self.total = 0;
    }
}

/// A ring of [`WINDOWS`] sketches of [`WINDOW_SECS`] seconds each: the
/// keys denied most over the last minute.
#[derive(Debug, Clone, Default)]
pub struct Windowed {
    /// Each sketch with the epoch (time / [`WINDOW_SECS`]) it counts.
    ring: [(u64, SpaceSaving); WINDOWS],
}

impl Windowed {
    /// Counts one occurrence in epoch `epoch` (a sketch of an older epoch
    /// in its place of the ring is cleared first).
    pub fn offer(&mut self, epoch: u64, hash: u64, key: Option<&[u8]>) {
        let (at, sketch) = &mut self.ring[ring_index(epoch)];
        if *at != epoch {
            sketch.clear();
            *at = epoch;
        }
        sketch.offer(hash, key, 1);
    }

    /// The `n` keys with the largest counts over the epochs
    /// `epoch - WINDOWS + 1 ..= epoch`, largest first (ties by hash).
    pub fn top(&self, epoch: u64, n: usize) -> Vec<Hitter> {
        let live: Vec<&SpaceSaving> = self
            .ring
            .iter()
            .filter(|(at, s)| *at <= epoch && epoch - *at < WINDOWS as u64 && s.total() > 0)
            .map(|(_, s)| s)
            .collect();
        merge(&live, n)
    }
}

fn ring_index(epoch: u64) -> usize {
    // WINDOWS is small: the cast cannot truncate.
    (epoch % WINDOWS as u64) as usize
}

/// The `n` largest of the merge of `sketches`: each key's counts summed,
/// and for a sketch where it has no slot, that sketch's floor added to its
/// count and error (it occurred there at most that often).
pub fn merge(sketches: &[&SpaceSaving], n: usize) -> Vec<Hitter> {
    // Which sketches hold each key, as a bit mask (at most WINDOWS).
    let mut merged: HashMap<u64, (Hitter, u32)> = HashMap::new();
    for (i, sketch) in sketches.iter().enumerate() {
        for hitter in sketch.hitters() {
            let entry = merged.entry(hitter.hash).or_insert_with(|| {
                (
                    Hitter {
                        count: 0,
                        error: 0,
                        ..hitter.clone()
                    },
                    0,
                )
            });
            entry.0.count = entry.0.count.saturating_add(hitter.count);
            entry.0.error = entry.0.error.saturating_add(hitter.error);
            if entry.0.key.is_empty() {
                entry.0.key = hitter.key;
                entry.0.truncated = hitter.truncated;
            }
            entry.1 |= 1 << (i % 32);
        }
    }
    let mut all: Vec<Hitter> = merged
        .into_values()
        .map(|(mut hitter, held)| {
            for (i, sketch) in sketches.iter().enumerate() {
                if held & (1 << (i % 32)) == 0 {
                    let floor = sketch.floor();
                    hitter.count = hitter.count.saturating_add(floor);
                    hitter.error = hitter.error.saturating_add(floor);
                }
            }
            hitter
        })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then(a.hash.cmp(&b.hash)));
    all.truncate(n);
    all
}

/// Every policy's [`Windowed`] sketch of denied keys, and the hash key.
#[derive(Debug)]
pub struct Hitters {
    /// SipHash keyed at random once per process.
    hasher: std::collections::hash_map::RandomState,
    /// Seconds since start / [`WINDOW_SECS`], advanced by the dashboard's
    /// sampler, so a denial reads no clock.
    epoch: AtomicU64,
    /// By policy name (bounded by the configuration, and by
    /// [`MAX_POLICIES`]).
    by_policy: RwLock<HashMap<String, Box<Mutex<Windowed>>>>,
}

impl Default for Hitters {
    fn default() -> Self {
        Hitters {
            hasher: std::collections::hash_map::RandomState::new(),
            epoch: AtomicU64::new(0),
            by_policy: RwLock::new(HashMap::new()),
        }
    }
}

impl Hitters {
    /// The keyed hash of `key`, stable while the process runs.
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Counts one denial of `key` by `policy`; keeps the key's first bytes
    /// only when `keep_key`. The first denial of a policy allocates its
    /// sketch; nothing else allocates.
    pub fn denied(&self, policy: &str, hash: u64, key: &[u8], keep_key: bool) {
        let epoch = self.epoch.load(Ordering::Relaxed);
        let key = keep_key.then_some(key);
        {
            let map = self
                .by_policy
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(sketch) = map.get(policy) {
                let mut sketch = sketch.lock().unwrap_or_else(PoisonError::into_inner);
                sketch.offer(epoch, hash, key);
                return;
            }
            if map.len() >= MAX_POLICIES {
                return;
            }
        }
        let mut map = self
            .by_policy
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_POLICIES && !map.contains_key(policy) {
            return;
        }
        map.entry(policy.to_owned())
            .or_default()
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .offer(epoch, hash, key);
    }

    /// Moves "now" to `epoch` (seconds since start / [`WINDOW_SECS`]).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// The `n` keys `policy` denied most in the last minute.
    pub fn top(&self, policy: &str, n: usize) -> Vec<Hitter> {
        let epoch = self.epoch.load(Ordering::Relaxed);
        // Copied (a few KiB) under the locks and merged outside them, so a
        // reader never makes a denial wait for a merge.
        let ring = {
            let map = self
                .by_policy
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match map.get(policy) {
                Some(sketch) => sketch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
                None => return Vec::new(),
            }
        };
        ring.top(epoch, n)
    }

    /// Drops the sketches of policies for which `keep` is false (policies
    /// a reload removed), or every sketch.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        // Checked under the read lock first: the sampler calls this every
        // second, and denials need not wait for a write lock that drops
        // nothing.
        let drop_some = self
            .by_policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .any(|name| !keep(name));
        if drop_some {
            self.by_policy
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|name, _| keep(name));
        }
    }

    /// Policies with a sketch.
    pub fn len(&self) -> usize {
        self.by_policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no policy has a sketch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Exact counts of a stream.
    fn exact(stream: &[u64]) -> HashMap<u64, u64> {
        let mut counts = HashMap::new();
        for key in stream {
            *counts.entry(*key).or_insert(0) += 1;
        }
        counts
    }

    /// Both halves of the guarantee, for one sketch or a merge: every key
    /// counted more than `total / SLOTS` times is present, and every
    /// present key's count is an upper bound within its error.
    fn assert_guarantee(hitters: &[Hitter], counts: &HashMap<u64, u64>, total: u64) {
        for hitter in hitters {
            let truth = counts.get(&hitter.hash).copied().unwrap_or(0);
            assert!(hitter.count >= truth, "{hitter:?} under {truth}");
            assert!(hitter.count - hitter.error <= truth, "{hitter:?} {truth}");
        }
        for (key, count) in counts {
            if *count > total / SLOTS as u64 {
                assert!(
                    hitters.iter().any(|h| h.hash == *key),
                    "key {key} with {count} of {total} is missing"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn one_sketch_keeps_the_space_saving_guarantee(
            stream in prop::collection::vec(0u64..200, 0..3000)
        ) {
            let mut sketch = SpaceSaving::default();
            for key in &stream {
                sketch.offer(*key, None, 1);
            }
            let hitters: Vec<Hitter> = sketch.hitters().collect();
            assert!(hitters.len() <= SLOTS);
            assert_guarantee(&hitters, &exact(&stream), stream.len() as u64);
        }

        #[test]
        fn a_merge_keeps_the_guarantee(
            parts in prop::collection::vec(
                prop::collection::vec(0u64..120, 0..800), 1..=WINDOWS
            )
        ) {
            let sketches: Vec<SpaceSaving> = parts
                .iter()
                .map(|part| {
                    let mut sketch = SpaceSaving::default();
                    for key in part {
                        sketch.offer(*key, None, 1);
                    }
                    sketch
                })
                .collect();
            let refs: Vec<&SpaceSaving> = sketches.iter().collect();
            let merged = merge(&refs, usize::MAX);
            let all: Vec<u64> = parts.concat();
            assert_guarantee(&merged, &exact(&all), all.len() as u64);
        }
    }

    #[test]
    fn a_heavy_key_survives_a_flood_of_distinct_keys() {
        // A hostile client sends one-off keys to push the real hitter out:
        // it cannot, once the hitter's share is above 1 / SLOTS.
        let mut sketch = SpaceSaving::default();
        for i in 0..100_000u64 {
            sketch.offer(1_000_000 + i, None, 1);
            if i % 16 == 0 {
                sketch.offer(7, Some(b"the-hitter"), 1);
            }
        }
        let top = merge(&[&sketch], 1);
        assert_eq!(top[0].hash, 7);
        assert!(top[0].count >= 6250);
    }

    #[test]
    fn keys_are_kept_to_their_first_bytes() {
        let mut sketch = SpaceSaving::default();
        let long = vec![b'x'; KEY_BYTES * 4];
        sketch.offer(1, Some(&long), 1);
        sketch.offer(2, Some(b"short"), 1);
        sketch.offer(3, None, 1);
        let mut hitters: Vec<Hitter> = sketch.hitters().collect();
        hitters.sort_by_key(|h| h.hash);
        assert_eq!(hitters[0].key, vec![b'x'; KEY_BYTES]);
        assert!(hitters[0].truncated);
        assert_eq!(hitters[1].key, b"short");
        assert!(!hitters[1].truncated);
        assert!(hitters[2].key.is_empty());
    }

    #[test]
    fn the_ring_forgets_what_is_older_than_a_minute() {
        let mut ring = Windowed::default();
        for _ in 0..50 {
            ring.offer(0, 1, None);
        }
        for _ in 0..10 {
            ring.offer(3, 2, None);
        }
        let top = ring.top(3, 10);
        assert_eq!(
            top.iter().map(|h| (h.hash, h.count)).collect::<Vec<_>>(),
            [(1, 50), (2, 10)]
        );
        // Epoch 6 still covers epoch 0 (7 windows); epoch 7 does not.
        assert_eq!(ring.top(6, 10).len(), 2);
        let top = ring.top(7, 10);
        assert_eq!(
            top.iter().map(|h| (h.hash, h.count)).collect::<Vec<_>>(),
            [(2, 10)]
        );
        // Epoch 7 reuses epoch 0's place: cleared before it counts.
        ring.offer(7, 3, None);
        let top = ring.top(7, 10);
        assert_eq!(
            top.iter().map(|h| (h.hash, h.count)).collect::<Vec<_>>(),
            [(2, 10), (3, 1)]
        );
    }

    #[test]
    fn policies_past_the_cap_are_not_tracked() {
        let hitters = Hitters::default();
        for i in 0..MAX_POLICIES + 5 {
            hitters.denied(&format!("p{i}"), 1, b"k", false);
        }
        assert_eq!(hitters.len(), MAX_POLICIES);
        assert!(hitters.top(&format!("p{}", MAX_POLICIES + 1), 5).is_empty());
        assert_eq!(hitters.top("p0", 5).len(), 1);
        hitters.retain(|name| name == "p0");
        assert_eq!(hitters.len(), 1);
    }

    #[test]
    fn hashes_are_stable_within_a_process_and_keyed() {
        let hitters = Hitters::default();
        assert_eq!(hitters.hash(b"user-1"), hitters.hash(b"user-1"));
        assert_ne!(hitters.hash(b"user-1"), hitters.hash(b"user-2"));
        // Another process (another key) hashes differently.
        assert_ne!(Hitters::default().hash(b"user-1"), hitters.hash(b"user-1"));
    }
}
