//! Overrides: a limit for one (policy, key) that replaces the policy's for
//! that key only — other numbers, `unlimited` or `blocked` — optionally
//! until an instant.
//!
//! An override is a policy change for one key: the store decides the key
//! with the overriding policy under the policy's own name, so the key's
//! live state carries over in absolute units, exactly as when a reload
//! changes the policy for everyone (`docs/ALGORITHMS.md`). `Unlimited`
//! allows without charging; `Blocked` denies without a store call.
//!
//! [`Overrides`] is the table a [`Limiter`](crate::Limiter) consults: two
//! layers, the overrides set at run time (an API, shared through a store by
//! whoever owns the table) and those declared in a file, where a run-time
//! override wins over a declared one for the same (policy, key). Bounded:
//! at most [`Overrides::max_entries`] run-time overrides. A lookup costs
//! nothing while the table is empty, and one hash lookup under a read lock
//! otherwise. `docs/OVERRIDES.md` is the operator's guide.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use hashbrown::HashMap;
use smallvec::SmallVec;

use std::future::Future;

use crate::{Clock, Policy, StoreError, SystemClock};

/// The default cap on run-time overrides ([`Overrides::with_max_entries`]).
pub const DEFAULT_MAX_OVERRIDES: usize = 100_000;

/// What an override sets for its (policy, key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverrideLimit {
    /// Other numbers (the same algorithm as the policy's).
    Policy(Policy),
    /// Every check allowed, nothing charged.
    Unlimited,
    /// Every check denied, nothing charged.
    Blocked,
}

impl OverrideLimit {
    /// Other numbers for `base`, for one key: `limit` units per `period`
    /// (`base`'s period when `None`), with `burst` for a bucket algorithm
    /// (as [`Policy::new`] defaults it when `None`), always `base`'s
    /// algorithm — the one home of what an override's numbers mean, for
    /// every adapter that reads them.
    ///
    /// ```
    /// use tollgate::overrides::OverrideLimit;
    /// let base: tollgate::Policy = "token_bucket 10/1m burst 20".parse()?;
    /// let OverrideLimit::Policy(p) = OverrideLimit::numbers(&base, 100, None, Some(200))? else { panic!() };
    /// assert_eq!((p.algorithm(), p.limit(), p.period(), p.burst()), (base.algorithm(), 100, base.period(), 200));
    /// let window: tollgate::Policy = "fixed_window 10/1m".parse()?;
    /// assert!(OverrideLimit::numbers(&window, 100, None, Some(200)).is_err());
    /// # Ok::<(), tollgate::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Policy::new`]: zero, too large, a burst where the algorithm has
    /// none, not computable exactly.
    pub fn numbers(
        base: &Policy,
        limit: u64,
        period: Option<std::time::Duration>,
        burst: Option<u64>,
    ) -> Result<OverrideLimit, crate::PolicyError> {
        Policy::new(
            base.algorithm(),
            limit,
            period.unwrap_or(base.period()),
            burst,
        )
        .map(OverrideLimit::Policy)
    }
}

/// One override: its limit, and when it ends (Unix microseconds on the
/// table's clock), if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Override {
    /// What replaces the policy for the key.
    pub limit: OverrideLimit,
    /// When the override ends by itself; `None`: when deleted.
    pub expires_at_us: Option<u64>,
}

impl Override {
    /// The override as one line of text, for a store that shares it:
    /// `<kind> <expires_at_us or 0> [<algorithm> <limit> <period_us> <burst>]`
    /// with kind `p` (numbers), `u` (unlimited) or `b` (blocked).
    ///
    /// ```
    /// use tollgate::overrides::{Override, OverrideLimit};
    /// let o = Override { limit: OverrideLimit::Policy("gcra 10/s burst 5".parse()?), expires_at_us: Some(7) };
    /// assert_eq!(o.encode(), "p 7 gcra 10 1000000 5");
    /// assert_eq!(Override::decode(&o.encode()), Some(o));
    /// assert_eq!(Override::decode("b 0"), Some(Override { limit: OverrideLimit::Blocked, expires_at_us: None }));
    /// assert_eq!(Override::decode("p 0 gcra 0 1 1"), None);
    /// # Ok::<(), tollgate::PolicyError>(())
    /// ```
    pub fn encode(&self) -> String {
        let expires = self.expires_at_us.unwrap_or(0);
        match self.limit {
            OverrideLimit::Policy(p) => format!(
                "p {expires} {} {} {} {}",
                p.algorithm(),
                p.limit(),
                p.period_us(),
                p.burst()
            ),
            OverrideLimit::Unlimited => format!("u {expires}"),
            OverrideLimit::Blocked => format!("b {expires}"),
        }
    }

    /// Reads [`encode`](Self::encode)'s text back; `None` if it is not
    /// one (another version's, or damaged): such an entry is ignored.
    pub fn decode(text: &str) -> Option<Override> {
        let mut words = text.split(' ');
        let kind = words.next()?;
        let expires: u64 = words.next()?.parse().ok()?;
        let limit = match kind {
            "u" => OverrideLimit::Unlimited,
            "b" => OverrideLimit::Blocked,
            "p" => {
                let algorithm: crate::Algorithm = words.next()?.parse().ok()?;
                let limit: u64 = words.next()?.parse().ok()?;
                let period: u64 = words.next()?.parse().ok()?;
                let burst: u64 = words.next()?.parse().ok()?;
                let burst = algorithm.has_burst().then_some(burst);
                OverrideLimit::Policy(
                    Policy::new(
                        algorithm,
                        limit,
                        std::time::Duration::from_micros(period),
                        burst,
                    )
                    .ok()?,
                )
            }
            _ => return None,
        };
        if words.next().is_some() {
            return None;
        }
        Some(Override {
            limit,
            expires_at_us: (expires > 0).then_some(expires),
        })
    }

    /// Whether the override is in force at `now_us`.
    pub const fn live(&self, now_us: u64) -> bool {
        match self.expires_at_us {
            Some(at) => now_us < at,
            None => true,
        }
    }
}

/// Where an override came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Set at run time (an API, a CLI); wins over a declared one.
    Runtime,
    /// Declared in a configuration file.
    File,
}

/// Why an override was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OverrideError {
    /// The policy is unknown.
    #[error("unknown policy `{0}`")]
    UnknownPolicy(String),
    /// The override's numbers are for another algorithm.
    #[error("an override of `{policy}` must keep its algorithm {expected}, not {given}")]
    OtherAlgorithm {
        /// The policy.
        policy: String,
        /// Its algorithm.
        expected: crate::Algorithm,
        /// The override's.
        given: crate::Algorithm,
    },
    /// The table is full.
    #[error("at most {0} overrides may be set at run time")]
    Full(usize),
    /// The limiter has no override table ([`LimiterBuilder::overrides`]).
    ///
    /// [`LimiterBuilder::overrides`]: crate::LimiterBuilder::overrides
    #[error("this limiter has no override table")]
    NoTable,
    /// The policy's name is longer than an override can name (65 535 bytes).
    #[error("policy name of {0} bytes is too long for an override")]
    NameTooLong(usize),
    /// The key is longer than the limiter accepts.
    #[error("key of {len} bytes is longer than the limit of {max}")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The most accepted.
        max: usize,
    },
}

/// Both layers of one (policy, key).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    runtime: Option<Override>,
    file: Option<Override>,
}

impl Slot {
    fn effective(&self) -> Option<(Override, Source)> {
        self.runtime
            .map(|o| (o, Source::Runtime))
            .or(self.file.map(|o| (o, Source::File)))
    }
}

/// The composite key of a slot: the policy name's length (2 bytes), the
/// name, then the identity — so that no two (name, key) pairs meet.
pub type Composite = SmallVec<[u8; 96]>;

/// The bytes that name (`policy`, `key`) in an override table or store:
/// the name's length (2 bytes, big-endian), the name, the identity.
///
/// A name longer than 65 535 bytes has no composite: [`Overrides::set`]
/// refuses it, and [`Overrides::lookup`] finds nothing for it.
pub fn composite(policy: &str, key: &[u8]) -> Composite {
    let len = u16::try_from(policy.len()).unwrap_or(u16::MAX);
    let mut c = Composite::with_capacity(2 + policy.len() + key.len());
    c.extend_from_slice(&len.to_be_bytes());
    c.extend_from_slice(policy.as_bytes());
    c.extend_from_slice(key);
    c
}

/// (policy, key) of a [`composite`]; `None` if it is not one.
pub fn split(composite: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes([
        *composite.first()?,
        *composite.get(1)?,
    ]));
    let name = std::str::from_utf8(composite.get(2..2 + len)?).ok()?;
    Some((name, &composite[2 + len..]))
}

/// `bytes` as one URL path segment: every byte but the unreserved ASCII
/// characters (letters, digits, `-._~`) percent-encoded. How a key of any
/// bytes travels in `/v1/overrides/{policy}/{key}`.
///
/// ```
/// assert_eq!(tollgate::overrides::path_segment(b"a b/\xff~"), "a%20b%2F%FF~");
/// ```
pub fn path_segment(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// The bytes a [`path_segment`] names: every `%XX` (two hex digits)
/// decoded, every other byte as it is; `None` for a `%` not followed by
/// two hex digits.
///
/// ```
/// use tollgate::overrides::{path_segment, path_segment_bytes};
/// assert_eq!(path_segment_bytes(&path_segment(b"a b/\xff")).as_deref(), Some(&b"a b/\xff"[..]));
/// assert_eq!(path_segment_bytes("caf%C3%A9"), Some("café".as_bytes().to_vec()));
/// assert_eq!(path_segment_bytes("%zz"), None);
/// assert_eq!(path_segment_bytes("%+f"), None);
/// ```
pub fn path_segment_bytes(text: &str) -> Option<Vec<u8>> {
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let high = hex(*bytes.get(i + 1)?)?;
            let low = hex(*bytes.get(i + 2)?)?;
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// One override as listed: its (policy, key), what it sets and where it
/// came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The policy's name.
    pub policy: String,
    /// The identity.
    pub key: Vec<u8>,
    /// The override in force.
    pub value: Override,
    /// Its layer.
    pub source: Source,
}

/// A page of [`Overrides::list`]: up to `limit` overrides in (policy, key)
/// order (by bytes), and the cursor of the next page if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The overrides.
    pub items: Vec<Listed>,
    /// Pass it to get the next page; `None` on the last.
    pub next: Option<Vec<u8>>,
}

/// An override on its way to a page of [`Overrides::list`], ordered by
/// its (policy, key) alone: borrowed from the table while it is scanned.
struct Candidate<'a> {
    at: (&'a str, &'a [u8]),
    value: Override,
    source: Source,
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Candidate<'_> {}

impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The overrides a limiter consults (see the [module docs](self)).
pub struct Overrides {
    slots: RwLock<HashMap<Box<[u8]>, Slot>>,
    /// Whether any slot exists: the hot path's only cost when none does.
    any: AtomicBool,
    runtime_len: AtomicU64,
    max_entries: usize,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("runtime", &self.runtime_len.load(Ordering::Relaxed))
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides::new()
    }
}

impl Overrides {
    /// An empty table on the system clock.
    pub fn new() -> Overrides {
        Overrides::with_clock(SystemClock::new())
    }

    /// An empty table on `clock` (expiries are read on it).
    pub fn with_clock(clock: impl Clock) -> Overrides {
        Overrides {
            slots: RwLock::default(),
            any: AtomicBool::new(false),
            runtime_len: AtomicU64::new(0),
            max_entries: DEFAULT_MAX_OVERRIDES,
            clock: Arc::new(clock),
        }
    }

    /// Caps the run-time overrides (default [`DEFAULT_MAX_OVERRIDES`]):
    /// setting one more is refused ([`OverrideError::Full`]).
    #[must_use]
    pub fn with_max_entries(mut self, max: usize) -> Overrides {
        self.max_entries = max;
        self
    }

    /// The cap on run-time overrides.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Whether no override is set (in either layer).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// The table's time, Unix microseconds.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// The override in force for `policy` and `key` now, if any, and its
    /// layer. The hot path: free while the table is empty.
    #[inline]
    pub fn lookup(&self, policy: &str, key: &[u8]) -> Option<(Override, Source)> {
        if !self.any.load(Ordering::Acquire) || policy.len() > usize::from(u16::MAX) {
            return None;
        }
        let c = composite(policy, key);
        let found = self.read().get(c.as_slice()).and_then(Slot::effective)?;
        found.0.live(self.clock.now_us()).then_some(found)
    }

    /// Sets (or replaces) the run-time override of `policy` for `key`. The
    /// caller has checked it against the policy ([`Limiter::set_override`]
    /// does).
    ///
    /// # Errors
    /// [`OverrideError::Full`] when the table holds its cap of run-time
    /// overrides and this is a new one (expired ones are swept first);
    /// [`OverrideError::NameTooLong`] for a policy name above 65 535 bytes.
    ///
    /// [`Limiter::set_override`]: crate::Limiter::set_override
    pub fn set(&self, policy: &str, key: &[u8], value: Override) -> Result<(), OverrideError> {
        if policy.len() > usize::from(u16::MAX) {
            return Err(OverrideError::NameTooLong(policy.len()));
        }
        let c = composite(policy, key);
        let mut slots = self.write();
        let exists = slots.get(c.as_slice()).is_some_and(|s| s.runtime.is_some());
        if !exists && self.runtime_len.load(Ordering::Relaxed) >= self.max_entries as u64 {
            self.sweep(&mut slots);
            if self.runtime_len.load(Ordering::Relaxed) >= self.max_entries as u64 {
                return Err(OverrideError::Full(self.max_entries));
            }
        }
        let slot = slots.entry(c.as_slice().into()).or_default();
        if slot.runtime.replace(value).is_none() {
            self.runtime_len.fetch_add(1, Ordering::Relaxed);
        }
        self.any.store(true, Ordering::Release);
        Ok(())
    }

    /// The override of `policy` for `key` in `source`'s layer, live or not.
    pub fn get(&self, policy: &str, key: &[u8], source: Source) -> Option<Override> {
        let c = composite(policy, key);
        let slots = self.read();
        let slot = slots.get(c.as_slice())?;
        match source {
            Source::Runtime => slot.runtime,
            Source::File => slot.file,
        }
    }

    /// Deletes the run-time override of `policy` for `key`; returns
    /// whether there was one. A declared one, if any, is in force again.
    pub fn remove(&self, policy: &str, key: &[u8]) -> bool {
        let c = composite(policy, key);
        let mut slots = self.write();
        let Some(slot) = slots.get_mut(c.as_slice()) else {
            return false;
        };
        let had = slot.runtime.take().is_some();
        if had {
            self.runtime_len.fetch_sub(1, Ordering::Relaxed);
        }
        if slot.file.is_none() {
            slots.remove(c.as_slice());
        }
        self.any.store(!slots.is_empty(), Ordering::Release);
        had
    }

    /// Replaces every run-time override with `entries` (a store's copy,
    /// read whole): what a process that shares its overrides through a
    /// store calls when the store's version moved. Entries beyond the cap
    /// are dropped (the store enforces the same cap when they are set).
    pub fn replace_runtime(&self, entries: impl IntoIterator<Item = (String, Vec<u8>, Override)>) {
        self.replace(entries, Source::Runtime);
    }

    /// Replaces every declared override with `entries` (a configuration
    /// reload).
    pub fn replace_file(&self, entries: impl IntoIterator<Item = (String, Vec<u8>, Override)>) {
        self.replace(entries, Source::File);
    }

    fn replace(
        &self,
        entries: impl IntoIterator<Item = (String, Vec<u8>, Override)>,
        source: Source,
    ) {
        fn layer(slot: &mut Slot, source: Source) -> &mut Option<Override> {
            match source {
                Source::Runtime => &mut slot.runtime,
                Source::File => &mut slot.file,
            }
        }
        // Built beside the table, then swapped in: checks wait on the lock
        // only for the swap, never for the build.
        let mut next: HashMap<Box<[u8]>, Slot> = HashMap::new();
        let mut count = 0u64;
        for (policy, key, value) in entries {
            if policy.len() > usize::from(u16::MAX)
                || (source == Source::Runtime && count >= self.max_entries as u64)
            {
                continue;
            }
            let c = composite(&policy, &key);
            let slot = next.entry(c.as_slice().into()).or_default();
            if layer(slot, source).replace(value).is_none() {
                count += 1;
            }
        }
        let mut slots = self.write();
        // The other layer, as it is now.
        for (c, slot) in slots.iter() {
            let other = match source {
                Source::Runtime => slot.file.map(|o| (o, Source::File)),
                Source::File => slot.runtime.map(|o| (o, Source::Runtime)),
            };
            if let Some((value, other)) = other {
                *layer(next.entry(c.clone()).or_default(), other) = Some(value);
            }
        }
        let old = std::mem::replace(&mut *slots, next);
        let runtime = slots.values().filter(|s| s.runtime.is_some()).count() as u64;
        self.runtime_len.store(runtime, Ordering::Relaxed);
        self.any.store(!slots.is_empty(), Ordering::Release);
        drop(slots);
        drop(old);
    }

    /// Up to `limit` overrides in force (live, either layer; at least one
    /// whatever `limit` says, so that a page with a next one moves on), of
    /// `policy` if given, in (policy, key) order, starting after `cursor`
    /// (the `next` of the previous page). A cursor that names no (policy,
    /// key), which no page hands out, gives an empty last page: a client
    /// paging with it ends, rather than starting over for ever.
    ///
    /// A page holds and copies out only its own overrides (and the one
    /// that tells whether there is a next page), whatever the table holds:
    /// the first `limit + 1` are kept in a bounded heap of references
    /// while the table is scanned under its read lock, so the scan
    /// allocates nothing per override it passes.
    pub fn list(&self, policy: Option<&str>, cursor: Option<&[u8]>, limit: usize) -> Page {
        let now = self.clock.now_us();
        let after = match cursor.map(split) {
            Some(None) => {
                return Page {
                    items: Vec::new(),
                    next: None,
                };
            }
            Some(after) => after,
            None => None,
        };
        let limit = limit.max(1);
        let keep = limit.saturating_add(1);
        let mut items: Vec<Listed> = {
            let slots = self.read();
            // A max-heap: its top is the last of the page so far, dropped
            // when a smaller one comes.
            let mut first: BinaryHeap<Candidate<'_>> = BinaryHeap::new();
            for (c, slot) in slots.iter() {
                let Some((name, key)) = split(c) else {
                    continue;
                };
                if policy.is_some_and(|p| p != name) || after.is_some_and(|a| (name, key) <= a) {
                    continue;
                }
                if first.len() == keep && first.peek().is_some_and(|top| (name, key) >= top.at) {
                    continue;
                }
                let Some((value, source)) = slot.effective().filter(|(o, _)| o.live(now)) else {
                    continue;
                };
                first.push(Candidate {
                    at: (name, key),
                    value,
                    source,
                });
                if first.len() > keep {
                    first.pop();
                }
            }
            first
                .into_sorted_vec()
                .into_iter()
                .map(|c| Listed {
                    policy: c.at.0.to_owned(),
                    key: c.at.1.to_vec(),
                    value: c.value,
                    source: c.source,
                })
                .collect()
        };
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more {
            items.last().map(|l| composite(&l.policy, &l.key).to_vec())
        } else {
            None
        };
        Page { items, next }
    }

    /// Run-time overrides set now (expired ones included until swept).
    pub fn runtime_len(&self) -> usize {
        usize::try_from(self.runtime_len.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    fn sweep(&self, slots: &mut HashMap<Box<[u8]>, Slot>) {
        let now = self.clock.now_us();
        let mut removed = 0;
        slots.retain(|_, slot| {
            if slot.runtime.is_some_and(|o| !o.live(now)) {
                slot.runtime = None;
                removed += 1;
            }
            slot.runtime.is_some() || slot.file.is_some()
        });
        self.runtime_len.fetch_sub(removed, Ordering::Relaxed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<[u8]>, Slot>> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<[u8]>, Slot>> {
        self.slots.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where run-time overrides are shared between instances (the Redis
/// store): every instance writes there and follows it ([`follow`]).
pub trait OverrideStore: Send + Sync + 'static {
    /// Sets the override of (`policy`, `key`), unless the store holds
    /// `max` others already: `Ok(false)` then.
    fn put_override(
        &self,
        policy: &str,
        key: &[u8],
        value: &Override,
        max: usize,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the override of (`policy`, `key`); whether there was one.
    fn delete_override(
        &self,
        policy: &str,
        key: &[u8],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A number that changes whenever an override is set or deleted.
    fn override_version(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every override the store holds (entries it cannot read are left
    /// out).
    fn load_overrides(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>, Override)>, StoreError>> + Send;
}

/// Keeps `table`'s run-time layer equal to `store`'s overrides: reads the
/// store's version every `every`, and everything when it moved. Returns
/// when the table is dropped. A change made through any instance is in
/// force everywhere within `every` plus one read; a failed read is tried
/// again at the next tick (the table keeps what it had).
pub async fn follow<S: OverrideStore>(
    table: std::sync::Weak<Overrides>,
    store: S,
    every: std::time::Duration,
) {
    let mut seen = None;
    loop {
        if table.strong_count() == 0 {
            return;
        }
        if let Ok(version) = store.override_version().await {
            if seen != Some(version) {
                if let Ok(entries) = store.load_overrides().await {
                    let Some(table) = table.upgrade() else {
                        return;
                    };
                    table.replace_runtime(entries);
                    seen = Some(version);
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
