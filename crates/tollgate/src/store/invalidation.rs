//! Invalidations: how a reset made through one instance reaches the deny
//! caches of every instance.
//!
//! A store shared by several processes implements [`Invalidations`]: it
//! delivers an [`Invalidation::Reset`] for every reset made through any
//! instance (the Redis store publishes on a pub/sub channel), and says when
//! its feed is connected ([`Invalidation::Live`]) or lost
//! ([`Invalidation::Lost`]). The memory store, private to one process, needs
//! none: the wrapper invalidates its own cache on its own resets.
//!
//! The feed is a capability of a store, so it lives here; what receives it
//! (the deny cache of [`Resilient`](crate::resilience::Resilient)) is an
//! [`InvalidationReceiver`] behind the sink, which the store never sees.

use std::sync::Weak;

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

/// What a feed's notices are for: a cache in front of a store.
pub trait InvalidationReceiver: Send + Sync {
    /// Applies one notice.
    fn receive(&self, notice: Invalidation);
}

/// Where a feed delivers its notices. Cheap to clone; it does not keep the
/// receiver alive.
#[derive(Clone)]
pub struct InvalidationSink {
    target: Weak<dyn InvalidationReceiver>,
}

impl std::fmt::Debug for InvalidationSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvalidationSink")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl InvalidationSink {
    /// A sink delivering to `target` for as long as it lives.
    pub fn new(target: Weak<dyn InvalidationReceiver>) -> Self {
        InvalidationSink { target }
    }

    /// Applies `notice` to the receiver. Returns `false` once the receiver
    /// is gone: the feed should then stop.
    pub fn deliver(&self, notice: Invalidation) -> bool {
        let Some(target) = self.target.upgrade() else {
            return false;
        };
        target.receive(notice);
        true
    }

    /// Whether the receiver is gone (the feed should stop).
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
