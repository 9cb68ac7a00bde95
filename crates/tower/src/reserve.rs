//! Costs known only afterwards: [`Reserve`], the layer option that
//! reserves each request's cost as an estimate before the handler runs and
//! settles it at the actual cost read from the response
//! ([`tollgate::Limiter::reserve`] and [`tollgate::Limiter::settle`]).
//!
//! The estimate is the request's cost as the layer prices it
//! ([`cost`](crate::RateLimitLayerBuilder::cost) or
//! [`cost_fn`](crate::RateLimitLayerBuilder::cost_fn)); the actual comes from
//! one of three places:
//!
//! | option | the actual is | settled when |
//! |---|---|---|
//! | [`Reserve::header`] | the integer in a response header (`x-usage-tokens: 1234`), or else in a trailer of that name | the response head is ready, or else the body ends (or is dropped) |
//! | [`Reserve::response_fn`] | what your function reads from the response head | the response head is ready |
//! | [`Reserve::body_bytes`], [`Reserve::body_fn`] | the body's bytes (or units your function makes of them) | the body ends, fails, or is dropped |
//!
//! Each request's reservation is settled exactly once:
//! - a usage header missing from the head and from the trailers, or not a
//!   plain decimal integer, or a function answering `None`, settles at the
//!   estimate (the charge stays as it was) and is counted in
//!   [`SettleStats::unread`];
//! - a body that fails, or is dropped before its end (the client went
//!   away mid-stream), settles at the bytes handed to the connection so
//!   far;
//! - a request whose response never came (the client went away while the
//!   handler ran, so the response future was dropped, or the inner service
//!   failed) settles at the estimate: the handler may have done the work,
//!   and a client must not get its cost back by hanging up.
//!
//! Settles never hold the response back: each runs in its own tokio task,
//! at most [`Reserve::max_pending_settles`] at a time. One past that bound,
//! or one with no tokio runtime to run on, is dropped: logged at `warn`,
//! counted in [`SettleStats::dropped`], and the store settles that
//! reservation at its estimate at its deadline. A settle the store fails
//! transiently is retried (settles are idempotent), up to
//! [`SETTLE_ATTEMPTS`] tries 100 ms, then 200 ms apart; one that still
//! fails is logged and counted ([`SettleStats::failed`]) the same way. On
//! graceful shutdown, await [`RateLimitLayer::settles_finished`] after the
//! server stopped, before the runtime ends (a runtime's end cancels the
//! settles still running).
//!
//! An LLM endpoint with a budget of tokens per minute per client, reserving
//! 2 000 tokens per completion and settling at what the handler reports:
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{routing::post, Router};
//! use http::HeaderName;
//! use tollgate::{Limiter, MemoryStore};
//! use tollgate_tower::{RateLimitLayer, Reserve};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! # // A manual clock: no minute ends while the example runs.
//! # let store = MemoryStore::with_clock(tollgate::ManualClock::new(1_700_000_040_000_000));
//! # /*
//! let store = MemoryStore::new();
//! # */
//! let limiter = Limiter::builder(store)
//!     .policy("tokens", "fixed_window 100000/1m".parse()?)
//!     .build();
//! let layer = RateLimitLayer::builder(limiter.clone())
//!     .policy("tokens")
//!     .cost(2_000) // the estimate
//!     .reserve(Reserve::header(HeaderName::from_static("x-usage-tokens")))
//!     .build()?;
//!
//! // The handler says what the completion used.
//! let complete = || async { ([("x-usage-tokens", "1234")], "a completion") };
//! let app = Router::new()
//!     .route("/v1/complete", post(complete))
//!     .layer(layer.clone());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = listener.local_addr()?;
//! tokio::spawn(async move {
//!     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! });
//! # let client = reqwest::Client::builder().no_proxy().build()?;
//! # let response = client.post(format!("http://{address}/v1/complete")).send().await?;
//! # assert_eq!(response.status(), 200);
//! // 2 000 were reserved, so the response's fields say 98 000 remain ...
//! # assert_eq!(response.headers()["ratelimit"], r#""tokens";r=98000;t=60"#);
//!
//! // ... and once settled (off the response path: its settle started
//! // before the response was sent), 1 234 are charged.
//! layer.settles_finished().await;
//! let key = tollgate_tower::Key::for_ip("127.0.0.1".parse()?, 64);
//! assert_eq!(limiter.peek("tokens", &key, 1).await?.remaining, 98_766);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
//! ```
//!
//! [`RateLimitLayer::settles_finished`]: crate::RateLimitLayer::settles_finished

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::response::Parts;
use http::{HeaderMap, Response};
use http_body::Frame;
use tokio::sync::Notify;
use tollgate::reservation::{DEFAULT_DEADLINE, MAX_AMOUNT};
use tollgate::{Limiter, ReservationId, Store};

use crate::body::RateLimitBody;
use crate::error::ConfigError;

/// How many settles may run at once by default (see
/// [`Reserve::max_pending_settles`]).
pub const DEFAULT_MAX_PENDING_SETTLES: usize = 1024;

/// How many times a settle is tried when the store fails transiently
/// ([`tollgate::Error::is_transient`]).
pub const SETTLE_ATTEMPTS: u32 = 3;

/// The wait before a settle's first retry; it doubles for each next one.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest decimal header value read: `u64::MAX` has 20 digits.
const MAX_DIGITS: usize = 20;

/// Makes a layer reserve each request's cost as an estimate and settle it
/// at the actual cost read from the response; give it to
/// [`RateLimitLayerBuilder::reserve`](crate::RateLimitLayerBuilder::reserve).
/// The module docs ([`crate::reserve`]) say when each settle happens.
///
/// ```
/// use http::HeaderName;
/// use tollgate::{Limiter, MemoryStore};
/// use tollgate_tower::{RateLimitLayer, Reserve};
///
/// let limiter = Limiter::builder(MemoryStore::new())
///     .policy("tokens", "fixed_window 100000/1m".parse().unwrap())
///     .build();
/// // Reserve 2 000 tokens per completion; the handler reports what it used.
/// let layer = RateLimitLayer::builder(limiter)
///     .policy("tokens")
///     .cost(2_000)
///     .reserve(Reserve::header(HeaderName::from_static("x-usage-tokens")))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct Reserve {
    pub(crate) from: SettleFrom,
    pub(crate) deadline: Duration,
    pub(crate) max_pending: usize,
}

/// Where the actual cost is read.
#[derive(Clone)]
pub(crate) enum SettleFrom {
    /// A response header holding a decimal integer.
    Header(HeaderName),
    /// A function of the response head.
    Response(ActualOf),
    /// The body's bytes, through a function or as they are.
    Body(Option<BytesToUnits>),
}

/// A function reading the actual cost from a response head.
pub(crate) type ActualOf = Arc<dyn Fn(&Parts) -> Option<u64> + Send + Sync>;

/// A function from a body's bytes to units.
pub(crate) type BytesToUnits = Arc<dyn Fn(u64) -> u64 + Send + Sync>;

impl Reserve {
    fn new(from: SettleFrom) -> Reserve {
        Reserve {
            from,
            deadline: DEFAULT_DEADLINE,
            max_pending: DEFAULT_MAX_PENDING_SETTLES,
        }
    }

    /// Settles at the integer in the response header `name` (the handler
    /// sets it, e.g. `x-usage-tokens: 1234`) as soon as the head is ready.
    /// A response whose head has no such field is read to its end for a
    /// trailer of that name instead: a streamed completion (or a gRPC
    /// call's trailing metadata) reports its usage last. The value must be
    /// one field of ASCII digits only; a field that is malformed or
    /// repeated, or missing from both head and trailers, settles at the
    /// estimate, and so does a body dropped before its trailers (a client
    /// that went away). A value above [`MAX_AMOUNT`] settles at
    /// `MAX_AMOUNT` (the policy's overdraft bounds what that charges). The
    /// field is passed on to the client as the handler set it.
    pub fn header(name: HeaderName) -> Reserve {
        Reserve::new(SettleFrom::Header(name))
    }

    /// Settles at what `actual` reads from the response head (status,
    /// headers, extensions: a handler can leave a typed usage record in the
    /// extensions); `None` settles at the estimate.
    ///
    /// ```
    /// use tollgate_tower::Reserve;
    ///
    /// /// What the handler used, left in the response's extensions.
    /// #[derive(Clone, Copy)]
    /// struct Usage(u64);
    ///
    /// // Failed responses cost nothing; others what the handler recorded.
    /// let reserve = Reserve::response_fn(|response| {
    ///     if !response.status.is_success() {
    ///         return Some(0);
    ///     }
    ///     response.extensions.get::<Usage>().map(|usage| usage.0)
    /// });
    /// # let _ = reserve;
    /// ```
    pub fn response_fn(actual: impl Fn(&Parts) -> Option<u64> + Send + Sync + 'static) -> Reserve {
        Reserve::new(SettleFrom::Response(Arc::new(actual)))
    }

    /// Settles at the number of body bytes sent, one unit per byte: when
    /// the body ends, fails, or is dropped (then at the bytes handed to the
    /// connection so far). For a download budget in bytes.
    pub fn body_bytes() -> Reserve {
        Reserve::new(SettleFrom::Body(None))
    }

    /// Settles at `units(bytes)` when the body ends, fails or is dropped,
    /// `bytes` being the body bytes sent until then: e.g. a budget in KiB,
    /// `|bytes| bytes.div_ceil(1024)`. It runs once per response, possibly
    /// while the body is dropped, so it must not panic.
    pub fn body_fn(units: impl Fn(u64) -> u64 + Send + Sync + 'static) -> Reserve {
        Reserve::new(SettleFrom::Body(Some(Arc::new(units))))
    }

    /// How long a reservation stays open (default five minutes,
    /// [`DEFAULT_DEADLINE`]; at most one hour, [`MAX_DEADLINE`](tollgate::reservation::MAX_DEADLINE)). A
    /// response still streaming at its deadline is settled at its estimate
    /// by the store; the settle at its end then finds nothing (counted in
    /// [`SettleStats::expired`]). Make it longer than your longest
    /// response.
    pub fn deadline(mut self, deadline: Duration) -> Reserve {
        self.deadline = deadline;
        self
    }

    /// How many settles may run at once (default
    /// [`DEFAULT_MAX_PENDING_SETTLES`], at least 1): the bound on the tasks
    /// and memory a slow store can make settles pile up into.
    pub fn max_pending_settles(mut self, max: usize) -> Reserve {
        self.max_pending = max;
        self
    }

    /// Checks the option against the limiter and its policies, for
    /// [`build`](crate::RateLimitLayerBuilder::build).
    pub(crate) fn validate<'a, S: Store>(
        &self,
        limiter: &Limiter<S>,
        policies: impl IntoIterator<Item = (&'a str, &'a tollgate::Policy)>,
    ) -> Result<(), ConfigError> {
        if !limiter.store().reserves() {
            return Err(ConfigError::ReservationsUnsupported);
        }
        if tollgate::reservation::check_deadline(self.deadline).is_err() {
            return Err(ConfigError::ReserveDeadline(self.deadline));
        }
        if self.max_pending == 0 {
            return Err(ConfigError::NoPendingSettles);
        }
        for (name, policy) in policies {
            if let Err(tollgate::Error::NotReservable { policy, reason }) =
                tollgate::reservation::check_policy(name, policy)
            {
                return Err(ConfigError::NotReservable { policy, reason });
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = match &self.from {
            SettleFrom::Header(name) => format!("header {name}"),
            SettleFrom::Response(_) => "response function".to_owned(),
            SettleFrom::Body(None) => "body bytes".to_owned(),
            SettleFrom::Body(Some(_)) => "body function".to_owned(),
        };
        f.debug_struct("Reserve")
            .field("from", &from)
            .field("deadline", &self.deadline)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

/// What a layer's settles did so far: [`RateLimitLayer::settle_stats`]
/// (for a metric; every count only grows).
///
/// [`RateLimitLayer::settle_stats`]: crate::RateLimitLayer::settle_stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettleStats {
    /// Settles the store carried out (a replay included).
    pub settled: u64,
    /// Responses whose actual could not be read (header missing or
    /// malformed, [`Reserve::response_fn`] answered `None`): settled at the
    /// estimate.
    pub unread: u64,
    /// Units of actual costs past the estimates that were not charged,
    /// summed: past what remained plus the policy's `max_overdraft`
    /// ([`tollgate::Settled::unpaid`]; with several policies, the most
    /// any one left unpaid).
    pub unpaid_units: u64,
    /// Settles the store found no reservation for: its deadline had passed,
    /// so it was settled at its estimate.
    pub expired: u64,
    /// Settles the store failed, [`SETTLE_ATTEMPTS`] times when the error
    /// was transient, else once (logged at `warn`): the reservation settles
    /// at its estimate at its deadline.
    pub failed: u64,
    /// Attempts retried after a transient store error (logged at `debug`).
    pub retried: u64,
    /// Settles never carried out: past [`Reserve::max_pending_settles`],
    /// with no tokio runtime, or cancelled when their runtime ended
    /// (logged at `warn`): the reservation settles at its estimate at its
    /// deadline.
    pub dropped: u64,
}

/// A layer's reservation machinery, shared by its services.
pub(crate) struct Reserving {
    pub(crate) from: SettleFrom,
    pub(crate) deadline: Duration,
    pub(crate) queue: Arc<dyn Settles>,
}

impl Reserving {
    pub(crate) fn new<S: Store>(reserve: Reserve, limiter: Limiter<S>) -> Reserving {
        Reserving {
            from: reserve.from,
            deadline: reserve.deadline,
            queue: Arc::new(Queue {
                limiter,
                max_pending: reserve.max_pending,
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
                counts: Counts::default(),
            }),
        }
    }

    /// The settler of the open reservation `id` of `estimate` units.
    pub(crate) fn settler(&self, id: ReservationId, estimate: u64) -> Settler {
        Settler {
            queue: Arc::clone(&self.queue),
            open: Some(id),
            estimate,
        }
    }

    /// `response` with its reservation settled, or set to be settled by its
    /// body.
    pub(crate) fn finish<B>(
        &self,
        mut settler: Settler,
        response: Response<B>,
    ) -> Response<RateLimitBody<B>> {
        match &self.from {
            SettleFrom::Header(name) => match read_header(response.headers(), name) {
                Some(actual) => {
                    settler.settle(actual);
                    response.map(RateLimitBody::inner)
                }
                // Not in the head: perhaps in the trailers, at the end.
                None => {
                    let meter = Meter::new(settler, Measure::Trailer(name.clone()));
                    response.map(|body| RateLimitBody::metered(body, meter))
                }
            },
            SettleFrom::Response(actual_of) => {
                let (parts, body) = response.into_parts();
                settler.settle_or_estimate(actual_of(&parts));
                Response::from_parts(parts, RateLimitBody::inner(body))
            }
            SettleFrom::Body(units) => {
                let meter = Meter::new(settler, Measure::Bytes(units.clone()));
                response.map(|body| RateLimitBody::metered(body, meter))
            }
        }
    }
}

/// The integer in the one `name` field of `headers`: ASCII digits only,
/// capped at [`MAX_AMOUNT`]; `None` when missing, repeated or malformed.
fn read_header(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?.as_bytes();
    if values.next().is_some()
        || value.is_empty()
        || value.len() > MAX_DIGITS
        || !value.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // At most 20 digits: the sum saturates rather than overflows.
    Some(value.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Settles reservations off the response path: the half of [`Reserving`]
/// that knows the limiter's store type, behind a trait object so that
/// response bodies need not.
pub(crate) trait Settles: Send + Sync {
    /// Starts settling `id` at `actual` (never waits).
    fn settle(self: Arc<Self>, id: ReservationId, actual: u64);
    /// Counts a response whose actual could not be read.
    fn unread(&self);
    /// The counts so far.
    fn stats(&self) -> SettleStats;
    /// Completes when no settle is running.
    fn finished(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

#[derive(Default)]
struct Counts {
    settled: AtomicU64,
    unpaid_units: AtomicU64,
    unread: AtomicU64,
    expired: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
}

struct Queue<S> {
    limiter: Limiter<S>,
    max_pending: usize,
    /// Settles started and not finished.
    pending: AtomicUsize,
    /// Woken when `pending` drops to zero.
    idle: Notify,
    counts: Counts,
}

/// One running settle: counted in `pending` until dropped (finished, or
/// cancelled with its runtime: then counted as dropped).
struct Running<S> {
    queue: Arc<Queue<S>>,
    done: bool,
}

impl<S> Running<S> {
    /// The settle ran to its end (whatever the store answered).
    fn complete(&mut self) {
        self.done = true;
    }
}

impl<S> Drop for Running<S> {
    fn drop(&mut self) {
        if !self.done {
            self.queue.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "settle cancelled (its runtime ended): the reservation settles at its estimate at its deadline"
            );
        }
        if self.queue.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.queue.idle.notify_waiters();
        }
    }
}

impl<S: Store> Settles for Queue<S> {
    fn settle(self: Arc<Self>, id: ReservationId, actual: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                reservation = ?id,
                actual,
                "no tokio runtime to settle on: the reservation settles at its estimate at its deadline"
            );
            return;
        };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                reservation = ?id,
                actual,
                max = self.max_pending,
                "too many settles pending: the reservation settles at its estimate at its deadline"
            );
            return;
        }
        let mut running = Running {
            queue: self,
            done: false,
        };
        runtime.spawn(async move {
            let queue = &running.queue;
            let counts = &queue.counts;
            let actual = actual.min(MAX_AMOUNT);
            let mut wait = FIRST_RETRY;
            let mut attempt = 1;
            // A settle is idempotent: retrying one that may have run (a
            // timeout) answers what it did.
            let outcome = loop {
                match queue.limiter.settle(&id, actual).await {
                    Err(error) if error.is_transient() && attempt < SETTLE_ATTEMPTS => {
                        counts.retried.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%error, reservation = ?id, attempt, "settle failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                        attempt += 1;
                    }
                    outcome => break outcome,
                }
            };
            match outcome {
                Ok(Some(answer)) => {
                    counts.settled.fetch_add(1, Ordering::Relaxed);
                    // A replay here can only answer this settle's own
                    // earlier attempt: its unpaid units count once.
                    let unpaid = answer.settled.iter().map(|s| s.unpaid).max().unwrap_or(0);
                    if unpaid > 0 {
                        counts.unpaid_units.fetch_add(unpaid, Ordering::Relaxed);
                        tracing::debug!(reservation = ?id, actual, unpaid, "settled past the overdraft: units left unpaid");
                    }
                }
                Ok(None) => {
                    counts.expired.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(reservation = ?id, actual, "reservation expired before its settle: it was settled at its estimate");
                }
                Err(error) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, reservation = ?id, actual, "settle failed: the reservation settles at its estimate at its deadline");
                }
            }
            running.complete();
        });
    }

    fn unread(&self) {
        self.counts.unread.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> SettleStats {
        let c = &self.counts;
        SettleStats {
            settled: c.settled.load(Ordering::Relaxed),
            unpaid_units: c.unpaid_units.load(Ordering::Relaxed),
            unread: c.unread.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    fn finished(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                // Registered before the check: a settle finishing in
                // between still wakes this one.
                idle.as_mut().enable();
                if self.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
    }
}

/// One request's open reservation: settled exactly once, at the estimate
/// when dropped unsettled (the response never came).
pub(crate) struct Settler {
    queue: Arc<dyn Settles>,
    open: Option<ReservationId>,
    estimate: u64,
}

impl Settler {
    /// Settles at `actual` (once; later calls do nothing).
    fn settle(&mut self, actual: u64) {
        if let Some(id) = self.open.take() {
            Arc::clone(&self.queue).settle(id, actual);
        }
    }

    /// Gives the whole estimate back: nothing was served.
    pub(crate) fn cancel(mut self) {
        self.settle(0);
    }

    /// Settles at `actual`, or at the estimate (counted as unread) when
    /// there is none.
    fn settle_or_estimate(&mut self, actual: Option<u64>) {
        let actual = actual.unwrap_or_else(|| {
            self.queue.unread();
            tracing::debug!(
                estimate = self.estimate,
                "no actual cost in the response: settled at the estimate"
            );
            self.estimate
        });
        self.settle(actual);
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        if self.open.is_some() {
            tracing::debug!(
                estimate = self.estimate,
                "no response (dropped or failed): settled at the estimate"
            );
            self.settle(self.estimate);
        }
    }
}

impl fmt::Debug for Settler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settler")
            .field("open", &self.open)
            .field("estimate", &self.estimate)
            .finish_non_exhaustive()
    }
}

/// Watches a response body to settle its reservation: from its bytes, or
/// from a header among its trailers.
pub(crate) struct Meter {
    settler: Settler,
    bytes: u64,
    measure: Measure,
}

/// What a [`Meter`] settles from.
enum Measure {
    /// The data bytes (through a function, or as they are), at the end.
    Bytes(Option<BytesToUnits>),
    /// The trailer field of this name; the estimate when the body ends
    /// without it.
    Trailer(HeaderName),
}

impl Meter {
    fn new(settler: Settler, measure: Measure) -> Meter {
        Meter {
            settler,
            bytes: 0,
            measure,
        }
    }

    /// A frame of the body went out.
    pub(crate) fn frame(&mut self, frame: &Frame<Bytes>) {
        match &self.measure {
            Measure::Bytes(_) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes = self.bytes.saturating_add(data.len() as u64);
                }
            }
            Measure::Trailer(name) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.settler.settle_or_estimate(read_header(trailers, name));
                }
            }
        }
    }

    /// The body ended, failed or is dropped: settles (once) at the bytes
    /// so far, or at the estimate when no trailer said otherwise.
    pub(crate) fn finish(&mut self) {
        if self.settler.open.is_none() {
            return;
        }
        match &self.measure {
            Measure::Bytes(units) => {
                let actual = units.as_ref().map_or(self.bytes, |units| units(self.bytes));
                self.settler.settle(actual);
            }
            Measure::Trailer(_) => self.settler.settle_or_estimate(None),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish();
    }
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter")
            .field("settler", &self.settler)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_read_only_when_it_is_one_plain_integer() {
        let name = HeaderName::from_static("x-usage-tokens");
        let read = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(&name, v.parse().unwrap());
            }
            read_header(&headers, &name)
        };
        assert_eq!(read(&["1234"]), Some(1234));
        assert_eq!(read(&["0"]), Some(0));
        assert_eq!(read(&["007"]), Some(7));
        assert_eq!(read(&["18446744073709551615"]), Some(u64::MAX));
        assert_eq!(read(&["99999999999999999999"]), Some(u64::MAX));
        for bad in [
            "",
            "+5",
            "-5",
            "5 ",
            "1e3",
            "0x10",
            "12.0",
            "123456789012345678901",
        ] {
            assert_eq!(read(&[bad]), None, "{bad:?}");
        }
        assert_eq!(read(&[]), None);
        assert_eq!(read(&["1", "2"]), None);
    }
}
