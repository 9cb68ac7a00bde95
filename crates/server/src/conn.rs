//! Connections: accepting under a cap without spinning on errors, the
//! per-connection header, body and idle timeouts, and closing what is left
//! when shutdown's deadline passes (docs/SERVER.md, "Limits and timeouts").
//!
//! - `Acceptor` waits for a free slot (a semaphore permit, one per open
//!   connection) *before* it accepts: at `max_connections` a port stops
//!   accepting, so further clients wait in the kernel's listen backlog and
//!   are served in order as slots free, and no file descriptor is spent on
//!   a connection that could not be served. Accept errors (`EMFILE`,
//!   `ENFILE`, `ENOBUFS`...) back off from 5 ms to 1 s and are logged at
//!   most once a second.
//! - `Activity` follows one connection: for HTTP, whether a request is in
//!   progress (its headers were complete, its handler has not returned),
//!   when the next request's first byte arrived, and since when the
//!   connection has been idle; for gRPC, when it last sent anything.
//!   `Activity::expired` completes when its timeout passes. Requests only
//!   record what they do (a lock, no wake-up, no timer): the one timer of a
//!   connection wakes at the earliest instant any timeout could pass, and
//!   looks again (see `Activity::expired`).
//! - `Tracker` counts open connections and closes them all at once when
//!   shutdown's deadline passes.
//! - [`TimedBody`] bounds the time to receive a request body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};

use crate::grpc_calls::{Buffered, GrpcConnectInfo};
use crate::listen::{Listener, Peer, Stream};

/// The shortest and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));
/// At most one accept-error log line per this long.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// Accepts connections on one port, at most `max_connections` open at once.
#[derive(Debug)]
pub(crate) struct Acceptor {
    listener: Listener,
    slots: Arc<Semaphore>,
    port: &'static str,
    backoff: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Acceptor {
    /// An acceptor on `listener` (`port` names it in logs).
    pub(crate) fn new(
        listener: impl Into<Listener>,
        max_connections: usize,
        port: &'static str,
    ) -> Self {
        Acceptor {
            listener: listener.into(),
            slots: Arc::new(Semaphore::new(max_connections)),
            port,
            backoff: ACCEPT_BACKOFF.0,
            last_log: None,
            unlogged: 0,
        }
    }

    /// The next connection (TCP with TCP_NODELAY set), its peer and its
    /// slot (released when the permit is dropped). Waits while every slot is
    /// taken; never returns an error: failures are logged and retried after
    /// a pause.
    pub(crate) async fn accept(&mut self) -> (Stream, Peer, OwnedSemaphorePermit) {
        let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff = ACCEPT_BACKOFF.0;
                    return (stream, peer, permit);
                }
                // The one connection failed before it was accepted: nothing
                // to wait for.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    tracing::debug!(port = self.port, %error, "connection failed while accepted");
                }
                // Out of file descriptors or memory: accepting again at
                // once would fail again, in a busy loop.
                Err(error) => {
                    self.log_failure(&error);
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            }
        }
    }

    fn log_failure(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|last| now.duration_since(last) < ACCEPT_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::error!(
            port = self.port,
            %error,
            failures_not_logged = self.unlogged,
            pause_ms = tollgate::clock::millis(self.backoff),
            "cannot accept connections (at most one line a second; raise the open-file limit or lower server.max_connections)"
        );
        self.last_log = Some(now);
        self.unlogged = 0;
    }
}

/// Why a connection was closed by a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request's headers were not complete `header_timeout` after their
    /// first byte.
    Header,
    /// No request in progress (HTTP) or nothing received (gRPC) for
    /// `idle_timeout`.
    Idle,
}

#[derive(Debug)]
struct State {
    /// HTTP requests whose handler has not returned.
    in_flight: usize,
    /// When the first byte of a request whose headers are not complete
    /// yet arrived (HTTP); when the connection opened, until its client
    /// preface is complete (gRPC).
    head_since: Option<Instant>,
    /// Bytes of the HTTP/2 client preface still to come (gRPC).
    preface_left: usize,
    /// gRPC over TLS: the preface is counted in the decrypted bytes
    /// ([`Activity::decrypted`]); the socket's bytes only show the client
    /// is not idle.
    preface_above: bool,
    /// Since when nothing is in progress (HTTP) or nothing was received
    /// (gRPC).
    quiet_since: Instant,
}

/// The HTTP/2 client connection preface (RFC 9113, 3.4): 24 bytes.
const HTTP2_PREFACE_LEN: usize = 24;

/// What one connection is doing, for its timeouts.
#[derive(Debug)]
pub(crate) struct Activity {
    state: Mutex<State>,
    /// HTTP (requests, headers) or gRPC (bytes received).
    http: bool,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Activity {
    /// An HTTP/1.1 connection's activity.
    pub(crate) fn http(header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Self::new(true, header_timeout, idle_timeout)
    }

    /// A gRPC (HTTP/2) connection's activity: idle when it sends nothing,
    /// and cut when its client preface is not complete `header_timeout`
    /// after it connected (a client trickling it would hold a slot).
    pub(crate) fn grpc(header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        let activity = Self::new(false, header_timeout, idle_timeout);
        let mut state = activity.state();
        state.head_since = Some(Instant::now());
        state.preface_left = HTTP2_PREFACE_LEN;
        drop(state);
        activity
    }

    fn new(http: bool, header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(State {
                in_flight: 0,
                head_since: None,
                preface_left: 0,
                preface_above: false,
                quiet_since: Instant::now(),
            }),
            http,
            header_timeout,
            idle_timeout,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// gRPC over TLS: from now on the client preface is counted by
    /// [`decrypted`](Self::decrypted), so the TLS handshake and the
    /// preface inside it are timed together by `header_timeout`.
    pub(crate) fn count_preface_above(&self) {
        self.state().preface_above = true;
    }

    /// gRPC over TLS: `n` bytes of the HTTP/2 stream were decrypted.
    pub(crate) fn decrypted(&self, n: usize) {
        let mut state = self.state();
        Self::count_preface(&mut state, n);
    }

    fn count_preface(state: &mut State, n: usize) {
        if state.preface_left > 0 {
            state.preface_left = state.preface_left.saturating_sub(n);
            if state.preface_left == 0 {
                // The handshake's clock stops.
                state.head_since = None;
            }
        }
    }

    /// `n` bytes arrived from the client.
    fn received(&self, n: usize) {
        let mut state = self.state();
        if !self.http {
            state.quiet_since = Instant::now();
            if !state.preface_above {
                Self::count_preface(&mut state, n);
            }
        } else if state.in_flight == 0 && state.head_since.is_none() {
            // The first byte of the next request: its headers' clock starts.
            state.head_since = Some(Instant::now());
        }
    }

    /// A request's headers are complete and its handler starts; the
    /// returned guard marks its end when dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.head_since = None;
        drop(state);
        InFlight(Arc::clone(self))
    }

    /// When the connection expires and why; `None` while a request is in
    /// progress.
    fn deadline(&self) -> Option<(Instant, Expiry)> {
        let state = self.state();
        if state.in_flight > 0 {
            None
        } else if let Some(since) = state.head_since {
            let header = (since + self.header_timeout, Expiry::Header);
            // gRPC: a silent connection is also idle meanwhile.
            let idle = (state.quiet_since + self.idle_timeout, Expiry::Idle);
            Some(if !self.http && idle.0 < header.0 {
                idle
            } else {
                header
            })
        } else {
            Some((state.quiet_since + self.idle_timeout, Expiry::Idle))
        }
    }

    /// Completes when the connection has expired.
    ///
    /// Nothing wakes it when a request starts or ends: every change of
    /// state moves the deadline to at least `min(header_timeout,
    /// idle_timeout)` after the change (a request's headers start their
    /// clock, a request ends and the idle clock starts, bytes arrive), never
    /// earlier. So the one timer is set to the deadline or to that long
    /// from now, whichever comes first, and when it fires the state is read
    /// again: each timeout passes exactly when it did with a wake-up per
    /// change, at the cost of a timer firing every `min(header_timeout,
    /// idle_timeout)` on a busy connection rather than two wake-ups and two
    /// timers per request.
    pub(crate) async fn expired(&self) -> Expiry {
        let shortest = self
            .header_timeout
            .min(self.idle_timeout)
            .max(Duration::from_millis(1));
        let next = |deadline: Option<(Instant, Expiry)>, now: Instant| {
            let soonest = now + shortest;
            deadline.map_or(soonest, |(at, _)| at.min(soonest))
        };
        let sleep = tokio::time::sleep_until(next(self.deadline(), Instant::now()));
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            let deadline = self.deadline();
            match deadline {
                Some((at, why)) if at <= now => return why,
                _ => sleep.as_mut().reset(next(deadline, now)),
            }
        }
    }
}

/// An HTTP request in progress; its end when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.quiet_since = Instant::now();
        }
    }
}

/// The open connections of one port: each holds a [`Tracker::watch`]er;
/// [`Tracker::cut`] tells them all to close.
#[derive(Debug)]
pub(crate) struct Tracker(watch::Sender<bool>);

impl Tracker {
    /// No connections yet.
    pub(crate) fn new() -> Self {
        Tracker(watch::channel(false).0)
    }

    /// For a new connection: holding it counts the connection as open;
    /// it changes to `true` when the connection must close.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.0.receiver_count()
    }

    /// Tells every open connection to close now.
    pub(crate) fn cut(&self) {
        self.0.send_replace(true);
    }

    /// Completes when no connection is open.
    pub(crate) async fn closed(&self) {
        self.0.closed().await;
    }
}

/// Completes when `cut` turns `true`.
pub(crate) async fn cut(mut cut: watch::Receiver<bool>) {
    if cut.wait_for(|cut| *cut).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A socket that tells its [`Activity`] when bytes arrive. For gRPC it
/// also closes itself (reads end, writes fail) when its connection
/// expires or is cut, since tonic owns the connection's task.
pub(crate) struct Watched {
    stream: Stream,
    activity: Arc<Activity>,
    /// gRPC: completes when the connection must close.
    doom: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    doomed: bool,
    peer: Peer,
    _slot: Option<OwnedSemaphorePermit>,
    /// gRPC: the bytes of request messages its calls hold.
    buffered: Option<Arc<Buffered>>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("peer", &self.peer)
            .field("doomed", &self.doomed)
            .finish_non_exhaustive()
    }
}

impl Watched {
    /// An HTTP connection's socket (its task enforces the timeouts).
    pub(crate) fn http(stream: Stream, peer: Peer, activity: Arc<Activity>) -> Self {
        Watched {
            stream,
            activity,
            doom: None,
            doomed: false,
            peer,
            _slot: None,
            buffered: None,
        }
    }

    /// A gRPC connection's socket, holding its slot and closing itself
    /// when idle for `idle_timeout` or when `cut` turns `true`; its calls
    /// count the request bytes they hold in `buffered`
    /// ([`CallsLayer::connection_share`](crate::grpc_calls::CallsLayer::connection_share)).
    pub(crate) fn grpc(
        stream: Stream,
        peer: Peer,
        slot: OwnedSemaphorePermit,
        (header_timeout, idle_timeout): (Duration, Duration),
        buffered: Arc<Buffered>,
        cut_signal: watch::Receiver<bool>,
    ) -> Self {
        let activity = Activity::grpc(header_timeout, idle_timeout);
        let watcher = Arc::clone(&activity);
        let doom = Box::pin(async move {
            tokio::select! {
                () = cut(cut_signal) => tracing::debug!(%peer, "gRPC connection cut at shutdown"),
                why = watcher.expired() => tracing::debug!(%peer, ?why, "gRPC connection closed: idle or handshake too slow"),
            }
        });
        Watched {
            stream,
            activity,
            doom: Some(doom),
            doomed: false,
            peer,
            _slot: Some(slot),
            buffered: Some(buffered),
        }
    }

    /// The connection's activity.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Whether the connection must close now (gRPC).
    fn poll_doom(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(doom) = &mut self.doom {
            if doom.as_mut().poll(cx).is_ready() {
                self.doomed = true;
                self.doom = None;
            }
        }
        self.doomed
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.poll_doom(cx) {
            // End of stream: the HTTP/2 connection ends.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received(buf.filled().len() - before);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.poll_doom(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.poll_doom(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.poll_doom(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Watched {
    type ConnectInfo = GrpcConnectInfo;

    fn connect_info(&self) -> GrpcConnectInfo {
        GrpcConnectInfo {
            buffered: self.buffered.clone(),
        }
    }
}

/// The error a request body gives when it was not received within
/// `server.body_timeout` of its headers; the HTTP API answers `408`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// The [`BodyTimeout`] in `error` or its sources, if any.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
                return Some(timeout);
            }
            next = error.source();
        }
        None
    }
}

/// A request body that fails with [`BodyTimeout`] unless it ends within
/// `timeout` of its creation (when the request's headers were complete).
#[derive(Debug)]
pub struct TimedBody<B> {
    inner: B,
    deadline: Instant,
    timeout: Duration,
    /// Created at the first wait, so a body that is already complete costs
    /// no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    /// `inner`, which must end within `timeout` from now.
    pub fn new(inner: B, timeout: Duration) -> Self {
        TimedBody {
            inner,
            deadline: Instant::now() + timeout,
            timeout,
            sleep: None,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tower::BoxError>,
{
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises the soft open-file limit to the hard limit and returns the
/// resulting soft limit (`None` where there is no such limit). Every
/// connection is a file descriptor; the usual soft default, 1024, is far
/// below `max_connections`.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(error) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(%error, soft = ?limit.current, hard = ?limit.maximum, "cannot raise the open-file limit");
            }
        }
        // `None` in an rlimit means unlimited.
        Some(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}
