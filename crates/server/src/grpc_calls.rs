//! What gRPC calls in progress may hold, on all connections: the tower
//! layer in front of tonic's routes ([`CallsLayer`]).
//!
//! - **Calls.** At most `server.grpc_max_calls` calls are in progress at
//!   once; one more is answered `RESOURCE_EXHAUSTED` at once, so its stream
//!   closes. A call holds its permit until its response body is done with
//!   (sent, or dropped with its stream), not just until its answer is
//!   ready: a client that never reads its answers holds their streams, and
//!   they must count. `grpc_max_streams` bounds one connection only;
//!   `max_connections` × 256 streams would be millions. Health `Watch`
//!   streams, which live as long as their client wants, take a permit of
//!   their own instead ([`MAX_HEALTH_WATCHES`]), so they cannot crowd out
//!   decisions.
//! - **Request bytes.** Every method served takes one request message, so
//!   the layer reads the whole request body itself (to the end of the
//!   client's stream) before tonic sees any of it, copying it into a buffer that grows (at most doubling) as bytes
//!   arrive; the buffer's growth is counted against the connection's share
//!   ([`GRPC_CONNECTION_BUFFERED_BYTES`]) and `server.grpc_max_buffered_bytes`
//!   *before* it is allocated. A call whose next bytes would pass either
//!   ends with `RESOURCE_EXHAUSTED`; a body longer than one message of
//!   [`MAX_REQUEST_BYTES`] with `OUT_OF_RANGE`. tonic then gets the body
//!   whole. Handing it the frames as they came would let a client make
//!   tonic reserve a message's announced length (up to 1 MiB) from its
//!   5-byte prefix, while only the prefix was counted; and a stream of
//!   headers with no message costs only its HTTP/2 state and a small
//!   waiting future (no buffer) until `grpc_request_timeout` ends it.
//! - The bytes are given back when the call's request body is dropped:
//!   tonic drops it once it has decoded the message, before the handler
//!   runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::grpc::MAX_REQUEST_BYTES;

/// The gRPC message prefix: a compression flag and a 4-byte length.
const MESSAGE_PREFIX_BYTES: usize = 5;

/// The longest request body: one message of [`MAX_REQUEST_BYTES`] and its
/// prefix.
pub const MAX_REQUEST_BODY_BYTES: usize = MAX_REQUEST_BYTES + MESSAGE_PREFIX_BYTES;

/// The most bytes of request messages the calls on one gRPC connection
/// hold at once (four of the longest request bodies), or
/// `server.grpc_max_buffered_bytes` when that is less: one connection
/// cannot take the whole server's allowance.
pub const GRPC_CONNECTION_BUFFERED_BYTES: usize = 4 * MAX_REQUEST_BODY_BYTES;

/// The most health `Watch` streams open at once, on all connections.
pub const MAX_HEALTH_WATCHES: usize = 100;

/// The path of gRPC health's `Watch`.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

/// The methods served, each taking one request message. A call to any
/// other path goes to tonic as it came, which answers `UNIMPLEMENTED` at
/// once: read whole first, a streaming client that waits for an answer
/// before ending its stream would wait for `grpc_request_timeout`.
const SERVED: [&str; 3] = [
    crate::grpc::SHOULD_RATE_LIMIT,
    "/grpc.health.v1.Health/Check",
    HEALTH_WATCH,
];

/// Bytes held by calls in progress against a cap: one per connection, one
/// for the server (`server.grpc_max_buffered_bytes`).
#[derive(Debug)]
pub(crate) struct Buffered {
    held: AtomicUsize,
    cap: usize,
}

impl Buffered {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Buffered {
            held: AtomicUsize::new(0),
            cap,
        })
    }

    /// Holds `n` more bytes, unless that would pass the cap.
    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&total| total <= self.cap)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// What a gRPC connection tells its calls (tonic puts it in each
/// request's extensions): the bytes its calls hold (`None` for a
/// connection without a share: its calls are bounded by the server's cap
/// alone).
#[derive(Debug, Clone)]
pub(crate) struct GrpcConnectInfo {
    pub(crate) buffered: Option<Arc<Buffered>>,
}

/// The bytes one call holds, counted on its connection and the server;
/// given back when dropped.
#[derive(Debug)]
struct Held {
    connection: Arc<Buffered>,
    server: Arc<Buffered>,
    bytes: usize,
}

impl Held {
    /// Counts `n` more bytes for the call, or says which cap it would pass.
    fn take(&mut self, n: usize) -> Result<(), tonic::Status> {
        if !self.connection.take(n) {
            return Err(refusal(format!(
                "request messages in progress on this connection are over {} bytes",
                self.connection.cap
            )));
        }
        if !self.server.take(n) {
            self.connection.give_back(n);
            return Err(refusal(format!(
                "request messages in progress on all connections are over {} bytes (server.grpc_max_buffered_bytes)",
                self.server.cap
            )));
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.connection.give_back(self.bytes);
        self.server.give_back(self.bytes);
    }
}

/// A gRPC call refused for what calls in progress hold: `RESOURCE_EXHAUSTED`
/// with `why`, logged at most once a second (with how many refusals were
/// not).
fn refusal(why: String) -> tonic::Status {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u64)>> = std::sync::Mutex::new(None);
    let now = std::time::Instant::now();
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &mut *last {
        Some((at, unlogged)) if now.duration_since(*at) < std::time::Duration::from_secs(1) => {
            *unlogged += 1;
        }
        _ => {
            let unlogged = last.map_or(0, |(_, n)| n);
            tracing::warn!(
                refusals_not_logged = unlogged,
                "gRPC call refused (RESOURCE_EXHAUSTED): {why} (at most one line a second)"
            );
            *last = Some((now, 0));
        }
    }
    tonic::Status::resource_exhausted(why)
}

/// The tower layer of this module, in front of tonic's routes.
#[derive(Debug, Clone)]
pub struct CallsLayer {
    server: Arc<Buffered>,
    calls: Arc<Semaphore>,
    max_calls: usize,
    watches: Arc<Semaphore>,
}

impl CallsLayer {
    /// The layer, with at most `max_calls` calls in progress and
    /// `max_buffered_bytes` of request messages held at once by all calls.
    pub(crate) fn new(max_calls: usize, max_buffered_bytes: usize) -> Self {
        CallsLayer {
            server: Buffered::new(max_buffered_bytes),
            calls: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            watches: Arc::new(Semaphore::new(MAX_HEALTH_WATCHES)),
        }
    }

    /// A new connection's counter of the bytes its calls hold: its share,
    /// [`GRPC_CONNECTION_BUFFERED_BYTES`] or the server's cap when that is
    /// less.
    pub(crate) fn connection_share(&self) -> Arc<Buffered> {
        Buffered::new(GRPC_CONNECTION_BUFFERED_BYTES.min(self.server.cap))
    }
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`CallsLayer`].
#[derive(Debug, Clone)]
pub struct Calls<S> {
    inner: S,
    layer: CallsLayer,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Calls<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if !SERVED.contains(&request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let permit = if request.uri().path() == HEALTH_WATCH {
            Arc::clone(&self.layer.watches)
                .try_acquire_owned()
                .map_err(|_| format!("{MAX_HEALTH_WATCHES} health Watch streams open"))
        } else {
            Arc::clone(&self.layer.calls)
                .try_acquire_owned()
                .map_err(|_| {
                    format!(
                        "{} calls in progress on all connections (server.grpc_max_calls)",
                        self.layer.max_calls
                    )
                })
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err(why) => {
                let refused = refusal(why);
                return Box::pin(async move { Ok(refused.into_http()) });
            }
        };
        // The clone is not ready; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let connection = request
            .extensions()
            .get::<GrpcConnectInfo>()
            .and_then(|info| info.buffered.clone())
            .unwrap_or_else(|| Buffered::new(usize::MAX));
        let held = Held {
            connection,
            server: Arc::clone(&self.layer.server),
            bytes: 0,
        };
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = match Collected::read(body, held).await {
                Ok(body) => body,
                Err(status) => return Ok(status.into_http()),
            };
            let response = inner
                .call(http::Request::from_parts(
                    parts,
                    tonic::body::Body::new(body),
                ))
                .await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Permitted {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A request body read whole: its data in one frame, then its trailers.
struct Collected {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    /// Its bytes, counted until it is dropped.
    _held: Held,
}

impl Collected {
    /// Reads `body` to its end, counting the buffer's growth in `held`
    /// before each allocation.
    async fn read(mut body: tonic::body::Body, mut held: Held) -> Result<Self, tonic::Status> {
        let mut buffer: Vec<u8> = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = match frame?.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            let needed = buffer.len() + frame.len();
            if needed > MAX_REQUEST_BODY_BYTES {
                return Err(tonic::Status::out_of_range(format!(
                    "the request is longer than one message of at most {MAX_REQUEST_BYTES} bytes"
                )));
            }
            if needed > buffer.capacity() {
                let grown = needed
                    .max(buffer.capacity().saturating_mul(2))
                    .min(MAX_REQUEST_BODY_BYTES);
                held.take(grown - buffer.capacity())?;
                buffer.reserve_exact(grown - buffer.len());
                // `reserve_exact` may give more than asked: count it too.
                if buffer.capacity() > grown {
                    held.take(buffer.capacity() - grown)?;
                }
            }
            let had = buffer.len();
            buffer.extend_from_slice(&frame);
            // A message announced longer than allowed is refused as soon
            // as its prefix is in, as tonic refuses it.
            if had < MESSAGE_PREFIX_BYTES && buffer.len() >= MESSAGE_PREFIX_BYTES {
                let announced = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
                if usize::try_from(announced).map_or(true, |n| n > MAX_REQUEST_BYTES) {
                    return Err(tonic::Status::out_of_range(format!(
                        "decoded message length too large: found {announced} bytes, the limit is: {MAX_REQUEST_BYTES} bytes"
                    )));
                }
            }
        }
        Ok(Collected {
            data: (!buffer.is_empty()).then(|| Bytes::from(buffer)),
            trailers,
            _held: held,
        })
    }
}

impl Body for Collected {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A response body holding its call's permit until it is dropped.
struct Permitted {
    body: tonic::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl Body for Permitted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(connection: &Arc<Buffered>, server: &Arc<Buffered>) -> Held {
        Held {
            connection: Arc::clone(connection),
            server: Arc::clone(server),
            bytes: 0,
        }
    }

    /// A call's bytes count on its connection and on the server; one that
    /// would pass either cap is refused, naming which, and counts nothing;
    /// a call's bytes are given back when it ends.
    #[test]
    fn held_bytes_are_capped_per_connection_and_for_the_server() {
        let server = Buffered::new(100);
        let (one, two) = (Buffered::new(60), Buffered::new(60));
        let mut a = held(&one, &server);
        let mut b = held(&one, &server);
        a.take(40).unwrap();
        b.take(20).unwrap();
        // The connection's 60 are used: refused there, nothing counted.
        let refused = b.take(1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("on this connection"),
            "{refused:?}"
        );
        assert_eq!((one.held(), server.held()), (60, 60));
        // Another connection takes the server's last 40, not 41.
        let mut c = held(&two, &server);
        let refused = c.take(41).unwrap_err();
        assert!(
            refused.message().contains("server.grpc_max_buffered_bytes"),
            "{refused:?}"
        );
        assert_eq!((two.held(), server.held()), (0, 60));
        c.take(40).unwrap();
        assert_eq!(server.held(), 100);
        // Calls that end give their bytes back.
        drop(a);
        assert_eq!((one.held(), server.held()), (20, 60));
        drop((b, c));
        assert_eq!((one.held(), two.held(), server.held()), (0, 0, 0));
    }

    /// A request body of `frames`, then its end.
    fn body(frames: &[&'static [u8]]) -> tonic::body::Body {
        let frames: Vec<_> = frames
            .iter()
            .map(|data| Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(data))))
            .collect();
        tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
    }

    /// A body is read whole into one frame, counted as its buffer grows;
    /// the bytes are given back when it is dropped.
    #[tokio::test]
    async fn a_body_is_read_whole_and_counted_until_dropped() {
        let (connection, server) = (Buffered::new(1000), Buffered::new(1000));
        let mut collected = Collected::read(
            body(&[b"\0\0\0\0\x06", b"abc", b"def"]),
            held(&connection, &server),
        )
        .await
        .unwrap();
        // The buffer doubled as it grew: 5, then 10, then 20 bytes.
        assert_eq!((connection.held(), server.held()), (20, 20));
        let frame = collected.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), &b"\0\0\0\0\x06abcdef"[..]);
        assert!(collected.frame().await.is_none());
        drop(collected);
        assert_eq!((connection.held(), server.held()), (0, 0));
    }

    /// The frame whose bytes would pass a cap ends the call with
    /// `RESOURCE_EXHAUSTED`, and nothing stays counted.
    #[tokio::test]
    async fn a_body_over_its_share_is_refused() {
        let (connection, server) = (Buffered::new(10), Buffered::new(1000));
        let refused = Collected::read(
            body(&[b"\0\0\0\0\x06abc", b"def"]),
            held(&connection, &server),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!((connection.held(), server.held()), (0, 0));
        // More than one message's worth: OUT_OF_RANGE, before any count.
        let long: &'static [u8] =
            Box::leak(vec![0u8; MAX_REQUEST_BODY_BYTES + 1].into_boxed_slice());
        let (connection, server) = (Buffered::new(usize::MAX), Buffered::new(usize::MAX));
        let refused = Collected::read(body(&[long]), held(&connection, &server))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.code(), tonic::Code::OutOfRange);
        assert_eq!(server.held(), 0);
        // A prefix announcing more than one message may hold: refused at
        // once, without waiting for the rest.
        let (connection, server) = (Buffered::new(usize::MAX), Buffered::new(usize::MAX));
        let pending = pending_after(&[b"\0\0\x10\0\x01", b"abc"]);
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            Collected::read(pending, held(&connection, &server)),
        )
        .await
        .expect("an oversized announcement waited for the rest")
        .err()
        .unwrap();
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    }

    /// A request body of `frames` that then never ends.
    fn pending_after(frames: &[&'static [u8]]) -> tonic::body::Body {
        let frames: Vec<_> = frames
            .iter()
            .map(|data| Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(data))))
            .collect();
        let stream =
            tokio_stream::StreamExt::chain(tokio_stream::iter(frames), tokio_stream::pending());
        tonic::body::Body::new(http_body_util::StreamBody::new(stream))
    }

    /// A message of exactly the largest size is read whole; four such
    /// requests fill a connection's share, and a fifth is refused.
    #[tokio::test]
    async fn a_connection_holds_four_requests_of_the_largest_size() {
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&u32::try_from(MAX_REQUEST_BYTES).unwrap().to_be_bytes());
        let prefix: &'static [u8] = Box::leak(prefix.into_boxed_slice());
        let message: &'static [u8] = Box::leak(vec![7u8; MAX_REQUEST_BYTES].into_boxed_slice());
        let connection = Buffered::new(GRPC_CONNECTION_BUFFERED_BYTES);
        let server = Buffered::new(usize::MAX);
        let mut held_requests = Vec::new();
        for _ in 0..4 {
            let mut collected =
                Collected::read(body(&[prefix, message]), held(&connection, &server))
                    .await
                    .unwrap();
            let data = collected
                .frame()
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap();
            assert_eq!(data.len(), MAX_REQUEST_BODY_BYTES);
            held_requests.push(collected);
        }
        let refused = Collected::read(body(&[prefix, message]), held(&connection, &server))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    }

    /// A request's trailers reach tonic after its message; a body that
    /// fails (the client reset it) fails the read with its status.
    #[tokio::test]
    async fn trailers_pass_and_errors_fail_the_read() {
        let (connection, server) = (Buffered::new(1000), Buffered::new(1000));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-end", http::HeaderValue::from_static("yes"));
        let frames = vec![
            Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"\0\0\0\0\x01a"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let with_trailers =
            tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)));
        let mut collected = Collected::read(with_trailers, held(&connection, &server))
            .await
            .unwrap();
        assert!(collected.frame().await.unwrap().unwrap().is_data());
        let last = collected.frame().await.unwrap().unwrap();
        assert_eq!(last.into_trailers().unwrap(), trailers);
        assert!(collected.frame().await.is_none());
        drop(collected);

        let frames = vec![
            Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"\0\0\0"))),
            Err(tonic::Status::cancelled("reset by the client")),
        ];
        let failing =
            tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)));
        let error = Collected::read(failing, held(&connection, &server))
            .await
            .err()
            .unwrap();
        assert_eq!(error.code(), tonic::Code::Cancelled);
        assert_eq!(server.held(), 0);
    }

    /// What the inner service saw of one call.
    #[derive(Clone, Default)]
    struct Seen(Arc<std::sync::Mutex<Vec<Vec<Bytes>>>>);

    impl tower::Service<http::Request<tonic::body::Body>> for Seen {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            let seen = Arc::clone(&self.0);
            Box::pin(async move {
                let mut body = request.into_body();
                let mut frames = Vec::new();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        frames.push(data);
                    }
                }
                seen.lock().unwrap().push(frames);
                // An answer still to send (an empty one is dropped at once).
                let answer = http_body_util::Full::new(Bytes::from_static(b"answer"));
                Ok(http::Response::new(tonic::body::Body::new(answer)))
            })
        }
    }

    fn call(path: &str, frames: &[&'static [u8]]) -> http::Request<tonic::body::Body> {
        http::Request::builder()
            .uri(path)
            .body(body(frames))
            .unwrap()
    }

    /// The layer hands its service one frame holding the whole message, and
    /// refuses, without calling it, a call over the caps or past
    /// `grpc_max_calls`; a call's permit is held until its response body
    /// is dropped.
    #[tokio::test]
    async fn the_service_sees_whole_messages_within_the_caps() {
        use tower::{Layer, Service, ServiceExt};
        let layer = CallsLayer::new(1, 16);
        let seen = Seen::default();
        let mut service = layer.layer(seen.clone());
        let path = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
        let response = service
            .ready()
            .await
            .unwrap()
            .call(call(path, &[b"\0\0\0\0\x03", b"a", b"bc"]))
            .await
            .unwrap();
        assert_eq!(
            seen.0.lock().unwrap().pop(),
            Some(vec![Bytes::from_static(b"\0\0\0\0\x03abc")])
        );
        // Its response body not yet dropped: the one permit is taken.
        let refused = service.call(call(path, &[b"x"])).await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "8");
        assert!(
            refused.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("grpc_max_calls")
        );
        drop(response);
        assert_eq!(layer.calls.available_permits(), 1);
        // Over the server's 16 bytes: refused, the service never called.
        let refused = service
            .call(call(path, &[b"\0\0\0\0\x0f01234", b"56789abcde"]))
            .await
            .unwrap();
        assert_eq!(refused.headers()["grpc-status"], "8");
        assert!(seen.0.lock().unwrap().is_empty());
        // Another path goes to the service as it came, unread and without
        // a permit (tonic answers UNIMPLEMENTED at once).
        let other = service
            .call(call(
                "/envoy.service.ratelimit.v3.RateLimitService/Nope",
                &[b"\0"],
            ))
            .await
            .unwrap();
        assert!(other.headers().get("grpc-status").is_none());
        assert_eq!(
            seen.0.lock().unwrap().pop(),
            Some(vec![Bytes::from_static(b"\0")])
        );
        // Watch streams take their own permits.
        let watch = service.call(call(HEALTH_WATCH, &[])).await.unwrap();
        assert!(watch.headers().get("grpc-status").is_none(), "{watch:?}");
        assert_eq!(layer.calls.available_permits(), 1);
        assert_eq!(layer.watches.available_permits(), MAX_HEALTH_WATCHES - 1);
    }
}
