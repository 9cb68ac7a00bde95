//! Invalidations: how a reset made through one instance reaches the deny
//! caches of every instance.
//!
//! A store shared by several processes implements [`Invalidations`]: it
//! delivers an [`Invalidation::Reset`] for every reset made through any
//! instance (the Redis store publishes on a pub/sub channel), and says when
//! its feed is connected ([`Invalidation::Live`]) or lost
//! ([`Invalidation::Lost`]). The memory store, private to one process, needs
//! none: the wrapper invalidates its own cache on its own resets.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use super::Shared;

/// One notice of the invalidation feed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// The feed is (re)connected: every notice published from now on will
    /// be delivered. Notices may have been missed before, so everything
    /// cached is forgotten.
    Live,
    /// The feed is lost: notices may be missed until the next
    /// [`Live`](Invalidation::Live).
    Lost,
    /// The state of this identity (for some policies) was reset.
    Reset(Vec<u8>),
}

/// Where a feed delivers its notices: the deny cache of one
/// [`Resilient`](super::Resilient) store. Cheap to clone; it does not keep
/// the store alive.
#[derive(Clone)]
pub struct InvalidationSink {
    pub(crate) target: Weak<Shared>,
}

impl std::fmt::Debug for InvalidationSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvalidationSink")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl InvalidationSink {
    /// Applies `notice` to the cache. Returns `false` once the wrapper is
    /// gone: the feed should then stop.
    pub fn deliver(&self, notice: Invalidation) -> bool {
        let Some(shared) = self.target.upgrade() else {
            return false;
        };
        match notice {
            Invalidation::Live => {
                shared.feed_live.store(true, Ordering::Release);
                if let Some(cache) = &shared.deny_cache {
                    cache.clear();
                }
            }
            Invalidation::Lost => shared.feed_live.store(false, Ordering::Release),
            Invalidation::Reset(identity) => {
                shared
                    .counters
                    .invalidations
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(cache) = &shared.deny_cache {
                    cache.invalidate(&identity);
                }
            }
        }
        true
    }

    /// Whether the wrapper is gone (the feed should stop).
    pub fn is_closed(&self) -> bool {
        self.target.strong_count() == 0
    }
}

/// A store that tells every instance about resets made through any of them.
pub trait Invalidations {
    /// Starts delivering notices to `sink` in the background, until
    /// [`InvalidationSink::deliver`] returns `false` or
    /// [`InvalidationSink::is_closed`] is true. Deliver
    /// [`Invalidation::Live`] each time the feed (re)connects and
    /// [`Invalidation::Lost`] each time it drops.
    ///
    /// # Panics
    /// Implementations may require a running async runtime (the Redis store
    /// spawns a tokio task).
    fn subscribe(&self, sink: InvalidationSink);
}
