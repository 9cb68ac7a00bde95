//! Reserve and settle behind the layer (`Reserve`), end to end: real axum
//! servers on 127.0.0.1:0, real clients (reqwest, or a raw TCP socket that
//! hangs up mid-stream), a memory store on a manual clock. Settles run in
//! tasks of their own: each test waits for them by polling with a bounded
//! deadline, then asserts what the store holds.

mod support;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Extension;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderName, Response, StatusCode};
use http_body::Frame;
use support::{START_US, limiter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tollgate::{
    Check, Decisions, Limiter, ManualClock, MemoryStore, Policy, PolicyRef, ReserveCall,
    SettleAnswer, SettleCall, Store, StoreError,
};
use tollgate_testkit::serve::Served;
use tollgate_tower::key::{DEFAULT_IPV6_PREFIX, Key};
use tollgate_tower::{ConfigError, RateLimitLayer, Reserve, SettleStats};

/// The longest a test waits for settles to land.
const PATIENCE: Duration = Duration::from_secs(10);

/// The key the layer charges requests from 127.0.0.1.
fn loopback_key() -> Key {
    Key::for_ip([127, 0, 0, 1].into(), DEFAULT_IPV6_PREFIX)
}

fn usage_header() -> HeaderName {
    HeaderName::from_static("x-usage-tokens")
}

/// What remains of `policy` for the loopback key.
async fn remaining(limiter: &Limiter<MemoryStore>, policy: &str) -> u64 {
    limiter
        .peek(policy, loopback_key(), 1)
        .await
        .expect("peek")
        .remaining
}

/// Waits (polling, bounded) until the layer has finished `n` settles of
/// any outcome, and none is running; returns the stats.
async fn settles<S: Store>(layer: &RateLimitLayer<S>, n: u64) -> SettleStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = layer.settle_stats();
        if stats.settled + stats.expired + stats.failed + stats.dropped >= n {
            tokio::time::timeout(PATIENCE, layer.settles_finished())
                .await
                .expect("settles finish");
            return layer.settle_stats();
        }
        assert!(
            Instant::now() < deadline,
            "waited {PATIENCE:?} for {n} settles: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The layer most tests use: `policy` reserved at `cost` per request and
/// settled from the response's usage header.
fn usage_layer<S: Store>(limiter: Limiter<S>, policy: &str, cost: u64) -> RateLimitLayer<S> {
    RateLimitLayer::builder(limiter)
        .policy(policy)
        .cost(cost)
        .reserve(Reserve::header(usage_header()))
        .build()
        .expect("layer")
}

/// A handler reporting the usage the client asks for (`x-use`) in
/// `x-usage-tokens`, verbatim.
async fn reports_usage(headers: HeaderMap) -> impl IntoResponse {
    let mut out = HeaderMap::new();
    if let Some(value) = headers.get("x-use") {
        out.insert(usage_header(), value.clone());
    }
    (out, "done")
}

#[tokio::test]
async fn a_usage_header_settles_each_request_and_a_denied_reservation_is_a_429() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("tokens", "fixed_window 1000/1m")]);
    let layer = usage_layer(limiter.clone(), "tokens", 300);
    let app = Router::new()
        .route("/", get(reports_usage))
        .layer(layer.clone());
    let server = Served::router(app).await;

    // 300 reserved (the fields say so), 100 used: 200 given back.
    let used = server.get_with("/", &[("x-use", "100")]).await;
    assert_eq!(used.status, 200);
    assert_eq!(used.body, "done");
    assert_eq!(used.header("x-usage-tokens").as_deref(), Some("100"));
    assert_eq!(
        used.header("ratelimit").as_deref(),
        Some(r#""tokens";r=700;t=60"#)
    );
    assert_eq!(settles(&layer, 1).await.settled, 1);
    assert_eq!(remaining(&limiter, "tokens").await, 900);

    // No header, or one that is not a plain integer: the estimate stays.
    assert_eq!(server.get("/").await.status, 200);
    assert_eq!(
        server.get_with("/", &[("x-use", "12abc")]).await.status,
        200
    );
    assert_eq!(server.get_with("/", &[("x-use", "+5")]).await.status, 200);
    let stats = settles(&layer, 4).await;
    assert_eq!((stats.settled, stats.unread), (4, 3));
    assert_eq!(remaining(&limiter, "tokens").await, 0);

    // A fresh window; a response using more than its estimate overdraws.
    clock.advance(Duration::from_secs(60));
    assert_eq!(server.get_with("/", &[("x-use", "1200")]).await.status, 200);
    assert_eq!(settles(&layer, 5).await.unpaid_units, 0);
    assert_eq!(remaining(&limiter, "tokens").await, 0);

    // Denied like a check: 429, Retry-After to the window's end, fields,
    // the same body; nothing is reserved, so nothing is settled.
    clock.advance(Duration::from_secs(10));
    let denied = server.get_with("/", &[("x-use", "1")]).await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after").as_deref(), Some("50"));
    assert_eq!(
        denied.body,
        r#"{"error":"rate_limited","policy":"tokens","retry_after_ms":50000}"#
    );
    assert_eq!(
        denied.header("ratelimit-policy").as_deref(),
        Some(r#""tokens";q=1000;w=60"#)
    );
    assert_eq!(
        denied.header("ratelimit").as_deref(),
        Some(r#""tokens";r=0;t=50"#)
    );
    assert_eq!(denied.header("x-usage-tokens"), None);
    assert_eq!(layer.settle_stats().settled, 5);
}

/// A response body fed frame by frame through a channel, counting the
/// data bytes it yields.
struct ChunkBody {
    chunks: mpsc::Receiver<Frame<Bytes>>,
    yielded: Arc<AtomicU64>,
}

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.chunks.poll_recv(cx).map(|frame| {
            frame.map(|frame| {
                if let Some(data) = frame.data_ref() {
                    self.yielded.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
                Ok(frame)
            })
        })
    }
}

/// A data frame of `size` bytes `x`.
fn x_frame(size: usize) -> Frame<Bytes> {
    Frame::data(Bytes::from(vec![b'x'; size]))
}

/// A route streaming `chunks` chunks of `size` bytes (`x`), one at a time.
fn streaming(chunks: usize, size: usize) -> Router {
    Router::new().route(
        "/",
        get(move || async move {
            let (send, receive) = mpsc::channel(1);
            tokio::spawn(async move {
                for _ in 0..chunks {
                    if send.send(x_frame(size)).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(ChunkBody {
                chunks: receive,
                yielded: Arc::new(AtomicU64::new(0)),
            })
        }),
    )
}

#[tokio::test]
async fn a_streamed_body_settles_at_its_bytes_or_at_units_of_them() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(
        &clock,
        &[
            ("bytes", "fixed_window 100000/1m"),
            ("kib", "fixed_window 1000/1m"),
        ],
    );
    let bytes = RateLimitLayer::builder(limiter.clone())
        .policy("bytes")
        .cost(50_000)
        .reserve(Reserve::body_bytes())
        .build()
        .expect("layer");
    let kib = RateLimitLayer::builder(limiter.clone())
        .policy("kib")
        .cost(100)
        .reserve(Reserve::body_fn(|bytes| bytes.div_ceil(1024)))
        .build()
        .expect("layer");
    let by_bytes = Served::router(streaming(25, 400).layer(bytes.clone())).await;
    let by_kib = Served::router(streaming(25, 400).layer(kib.clone())).await;

    let reply = by_bytes.get("/").await;
    assert_eq!((reply.status, reply.body.len()), (200, 10_000));
    assert_eq!(
        reply.header("ratelimit").as_deref(),
        Some(r#""bytes";r=50000;t=60"#)
    );
    assert_eq!(settles(&bytes, 1).await.settled, 1);
    assert_eq!(remaining(&limiter, "bytes").await, 90_000);

    // 10 000 bytes are 10 KiB rounded up.
    assert_eq!(by_kib.get("/").await.body.len(), 10_000);
    assert_eq!(settles(&kib, 1).await.settled, 1);
    assert_eq!(remaining(&limiter, "kib").await, 990);
}

#[tokio::test]
async fn a_client_hanging_up_mid_stream_pays_for_what_was_sent() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("bytes", "fixed_window 10000000/1h")]);
    let layer = RateLimitLayer::builder(limiter.clone())
        .policy("bytes")
        .cost(1_000_000)
        .reserve(Reserve::body_bytes())
        .build()
        .expect("layer");
    // The test feeds the body: one chunk at a time, as long as the server
    // still holds it.
    let (feed, chunks) = mpsc::channel::<Frame<Bytes>>(1);
    let chunks = Arc::new(Mutex::new(Some(chunks)));
    let yielded = Arc::new(AtomicU64::new(0));
    let body = {
        let yielded = Arc::clone(&yielded);
        move || async move {
            let chunks = chunks.lock().unwrap().take().expect("one request");
            Response::new(ChunkBody { chunks, yielded })
        }
    };
    let app = Router::new().route("/", get(body)).layer(layer.clone());
    let server = Served::router(app).await;

    let mut socket = tokio::net::TcpStream::connect(server.address)
        .await
        .expect("connect");
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .expect("request");
    for _ in 0..3 {
        feed.send(x_frame(100)).await.expect("feed");
    }
    // Read until the 300 bytes of body arrived, then hang up.
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            let n = socket.read(&mut buffer).await.expect("read");
            assert!(n > 0, "the server closed first");
            seen.extend_from_slice(&buffer[..n]);
            let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n");
            let body = head_end.map_or(0, |end| {
                seen[end + 4..].iter().filter(|b| **b == b'x').count()
            });
            if body >= 300 {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("300 bytes");
    drop(socket);

    // The server notices when its writes fail, and drops the body: feeding
    // fails then. Bounded: at most 1 000 more chunks, within the patience.
    let feeding = async {
        for _ in 0..1000 {
            if feed.send(x_frame(100)).await.is_err() {
                return true;
            }
        }
        false
    };
    let dropped = tokio::time::timeout(PATIENCE, feeding).await;
    assert_eq!(
        dropped,
        Ok(true),
        "the server kept the body of a closed connection"
    );

    assert_eq!(settles(&layer, 1).await.settled, 1);
    let sent = yielded.load(Ordering::SeqCst);
    assert!((300..1_000_000).contains(&sent), "{sent}");
    assert_eq!(remaining(&limiter, "bytes").await, 10_000_000 - sent);
}

#[tokio::test]
async fn a_usage_trailer_settles_when_the_head_has_no_usage_header() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("tokens", "fixed_window 1000/1m")]);
    let layer = usage_layer(limiter.clone(), "tokens", 300);
    // A streamed completion: text, then its usage in a trailer (`/`), or
    // a malformed one (`/bad`), or none (`/none`).
    let stream = |trailer: Option<&'static str>| {
        move || async move {
            let (send, frames) = mpsc::channel(4);
            tokio::spawn(async move {
                send.send(x_frame(10)).await.expect("body");
                if let Some(value) = trailer {
                    let mut trailers = HeaderMap::new();
                    trailers.insert(usage_header(), value.parse().expect("value"));
                    send.send(Frame::trailers(trailers)).await.expect("body");
                }
            });
            Response::new(ChunkBody {
                chunks: frames,
                yielded: Arc::new(AtomicU64::new(0)),
            })
        }
    };
    let app = Router::new()
        .route("/", get(stream(Some("42"))))
        .route("/bad", get(stream(Some("4 2"))))
        .route("/none", get(stream(None)))
        .layer(layer.clone());
    let server = Served::router(app).await;

    // The client asks for trailers, as a streaming client would.
    let trailers = [("te", "trailers")];
    assert_eq!(server.get_with("/", &trailers).await.body.len(), 10);
    let stats = settles(&layer, 1).await;
    assert_eq!((stats.settled, stats.unread), (1, 0));
    assert_eq!(remaining(&limiter, "tokens").await, 958);

    assert_eq!(server.get_with("/bad", &trailers).await.status, 200);
    assert_eq!(server.get_with("/none", &trailers).await.status, 200);
    let stats = settles(&layer, 3).await;
    assert_eq!((stats.settled, stats.unread), (3, 2));
    assert_eq!(remaining(&limiter, "tokens").await, 358);
}

/// What a handler used, left in the response's extensions.
#[derive(Debug, Clone, Copy)]
struct Usage(u64);

#[tokio::test]
async fn a_function_of_the_response_head_settles() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("rows", "sliding_window 1000/1m")]);
    let layer = RateLimitLayer::builder(limiter.clone())
        .policy("rows")
        .cost(300)
        .reserve(Reserve::response_fn(|response| {
            if response.status.is_server_error() {
                return Some(0);
            }
            response.extensions.get::<Usage>().map(|usage| usage.0)
        }))
        .build()
        .expect("layer");
    let app = Router::new()
        .route("/scan", get(|| async { (Extension(Usage(120)), "rows") }))
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/silent", get(|| async { "no usage" }))
        .layer(layer.clone());
    let server = Served::router(app).await;

    assert_eq!(server.get("/scan").await.status, 200);
    assert_eq!(settles(&layer, 1).await.settled, 1);
    assert_eq!(remaining(&limiter, "rows").await, 880);

    // A failure costs nothing: all 300 go back.
    assert_eq!(server.get("/broken").await.status, 500);
    assert_eq!(settles(&layer, 2).await.settled, 2);
    assert_eq!(remaining(&limiter, "rows").await, 880);

    // No usage: the estimate stays.
    assert_eq!(server.get("/silent").await.status, 200);
    let stats = settles(&layer, 3).await;
    assert_eq!((stats.settled, stats.unread), (3, 1));
    assert_eq!(remaining(&limiter, "rows").await, 580);
}

#[tokio::test]
async fn a_request_whose_response_never_comes_settles_at_its_estimate_once() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("tokens", "fixed_window 1000/1m")]);
    let layer = usage_layer(limiter.clone(), "tokens", 300);
    let (entered, mut inside) = mpsc::channel::<()>(1);
    let app = Router::new()
        .route(
            "/",
            get(move || async move {
                entered.send(()).await.expect("test listens");
                std::future::pending::<&'static str>().await
            }),
        )
        .layer(layer.clone());
    let server = Served::router(app).await;

    // The handler runs (300 reserved), then the client gives up.
    let request = tokio::spawn({
        let client = server.client.clone();
        async move { client.get("/").await }
    });
    tokio::time::timeout(PATIENCE, inside.recv())
        .await
        .expect("handler entered");
    request.abort();

    // The server drops the handler's future: settled once, at 300.
    let stats = settles(&layer, 1).await;
    assert_eq!((stats.settled, stats.unread), (1, 0));
    assert_eq!(remaining(&limiter, "tokens").await, 700);
}

#[tokio::test]
async fn concurrent_requests_get_exactly_the_budget_their_actual_costs_leave() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(&clock, &[("tokens", "fixed_window 1000/1m")]);
    let layer = usage_layer(limiter.clone(), "tokens", 100);
    let admitted = Arc::new(AtomicU64::new(0));
    let app = {
        let admitted = Arc::clone(&admitted);
        Router::new()
            .route(
                "/",
                get(move |headers: HeaderMap| {
                    admitted.fetch_add(1, Ordering::SeqCst);
                    reports_usage(headers)
                }),
            )
            .layer(layer.clone())
    };
    let server = Served::router(app).await;

    // Waves of 40 at once, each using 40 of its 100: every settle gives 60
    // back exactly, so the waves admit 10, 6, 3, 2, 1, 1 (23 in all,
    // 920 used) and then nobody: 80 remain, below an estimate.
    for _ in 0..8 {
        let wave: Vec<_> = (0..40)
            .map(|_| {
                let client = server.client.clone();
                tokio::spawn(async move { client.get_with("/", &[("x-use", "40")]).await.status })
            })
            .collect();
        for request in wave {
            let status = request.await.expect("request");
            assert!(status == 200 || status == 429, "{status}");
        }
        settles(&layer, admitted.load(Ordering::SeqCst)).await;
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 23);
    assert_eq!(remaining(&limiter, "tokens").await, 80);
}

#[tokio::test]
async fn concurrent_overdrafts_stay_within_one_overdraft_of_the_limit() {
    let policy: Policy = "fixed_window 1000/1m".parse().expect("policy");
    let policy = policy.with_max_overdraft(150).expect("overdraft");
    let limiter = Limiter::builder(MemoryStore::with_clock(ManualClock::new(START_US)))
        .policy("tokens", policy)
        .build();
    let layer = usage_layer(limiter.clone(), "tokens", 100);
    let used = Arc::new(AtomicU64::new(0));
    let app = {
        let used = Arc::clone(&used);
        Router::new()
            .route(
                "/",
                get(move |headers: HeaderMap| {
                    let actual: u64 = headers["x-use"].to_str().unwrap().parse().unwrap();
                    used.fetch_add(actual, Ordering::SeqCst);
                    reports_usage(headers)
                }),
            )
            .layer(layer.clone())
    };
    let server = Served::router(app).await;

    // Waves of 30 at once, each using 400 of its estimate of 100: the
    // store charges 300 more per settle while the policy owes at most 150
    // past its limit, and reports the rest unpaid. Whatever the
    // interleaving, what it charged (the actual costs admitted less what
    // it reported unpaid) ends above 900 (no estimate fits any more) and
    // at most the limit plus one overdraft.
    let mut requests = 0;
    for _ in 0..3 {
        let wave: Vec<_> = (0..30)
            .map(|_| {
                let client = server.client.clone();
                tokio::spawn(async move { client.get_with("/", &[("x-use", "400")]).await.status })
            })
            .collect();
        for request in wave {
            let status = request.await.expect("request");
            assert!(status == 200 || status == 429, "{status}");
            if status == 200 {
                requests += 1;
            }
        }
        settles(&layer, requests).await;
    }
    let stats = layer.settle_stats();
    let charged = used.load(Ordering::SeqCst) - stats.unpaid_units;
    assert_eq!(used.load(Ordering::SeqCst), 400 * requests);
    assert!(
        charged > 900 && charged <= 1000 + 150,
        "charged {charged}: {stats:?}"
    );
    assert!(stats.unpaid_units > 0, "{stats:?}");
    assert_eq!(remaining(&limiter, "tokens").await, 0);
}

/// A memory store whose settles wait for the test to let them through
/// (a permit each), and whose reserves or settles fail on demand.
struct GatedStore {
    inner: MemoryStore,
    gate: Arc<Semaphore>,
    fail_reserves: Arc<std::sync::atomic::AtomicBool>,
    /// How many of the next settles fail.
    fail_settles: Arc<AtomicU64>,
}

impl Store for GatedStore {
    async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        self.inner.apply(check).await
    }

    async fn reserve(&self, call: ReserveCall<'_>) -> Result<Decisions, StoreError> {
        if self.fail_reserves.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.inner.reserve(call).await
    }

    async fn settle(&self, call: SettleCall<'_>) -> Result<Option<SettleAnswer>, StoreError> {
        self.gate.acquire().await.expect("gate").forget();
        let fail = self
            .fail_settles
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if fail.is_ok() {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.inner.settle(call).await
    }

    fn reserves(&self) -> bool {
        true
    }

    async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        self.inner.reset(key, policies).await
    }
}

#[tokio::test]
async fn settles_never_hold_responses_back_are_bounded_and_every_outcome_is_counted() {
    let clock = ManualClock::new(START_US);
    let gate = Arc::new(Semaphore::new(0));
    let fail_reserves = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fail_settles = Arc::new(AtomicU64::new(0));
    let store = GatedStore {
        inner: MemoryStore::with_clock(clock.clone()),
        gate: Arc::clone(&gate),
        fail_reserves: Arc::clone(&fail_reserves),
        fail_settles: Arc::clone(&fail_settles),
    };
    let limiter = Limiter::builder(store)
        .policy("tokens", "fixed_window 1000/1m".parse().expect("policy"))
        .build();
    let layer = RateLimitLayer::builder(limiter.clone())
        .policy("tokens")
        .cost(100)
        .on_store_failure(tollgate_tower::StoreFailure::Deny)
        .reserve(Reserve::header(usage_header()).max_pending_settles(1))
        .build()
        .expect("layer");
    let app = Router::new()
        .route("/", get(reports_usage))
        .layer(layer.clone());
    let server = Served::router(app).await;
    let remaining = || async {
        limiter
            .peek("tokens", loopback_key(), 1)
            .await
            .expect("peek")
            .remaining
    };

    // The first settle is stuck in the store; its response is not.
    assert_eq!(server.get_with("/", &[("x-use", "10")]).await.status, 200);
    // The second finds the one settle allowed running: dropped (counted
    // before its response was sent), its estimate stays charged.
    assert_eq!(server.get_with("/", &[("x-use", "10")]).await.status, 200);
    assert_eq!(layer.settle_stats().dropped, 1);
    assert_eq!(layer.settle_stats().settled, 0);
    assert_eq!(remaining().await, 800);

    gate.add_permits(1);
    let stats = settles(&layer, 2).await;
    assert_eq!((stats.settled, stats.dropped), (1, 1));
    assert_eq!(remaining().await, 890);

    // A settle the store fails once is retried, and lands.
    fail_settles.store(1, Ordering::SeqCst);
    gate.add_permits(2);
    assert_eq!(server.get_with("/", &[("x-use", "10")]).await.status, 200);
    let stats = settles(&layer, 3).await;
    assert_eq!((stats.settled, stats.retried, stats.failed), (2, 1, 0));
    assert_eq!(remaining().await, 880);

    // One the store fails at every attempt is counted; the estimate stays.
    fail_settles.store(3, Ordering::SeqCst);
    gate.add_permits(3);
    assert_eq!(server.get_with("/", &[("x-use", "10")]).await.status, 200);
    let stats = settles(&layer, 4).await;
    assert_eq!((stats.settled, stats.retried, stats.failed), (2, 3, 1));
    assert_eq!(remaining().await, 780);

    // A settle arriving after the reservation's deadline finds nothing: it
    // was settled at its estimate.
    assert_eq!(server.get_with("/", &[("x-use", "10")]).await.status, 200);
    clock.advance(Duration::from_secs(301));
    gate.add_permits(1);
    let stats = settles(&layer, 5).await;
    assert_eq!(
        (stats.settled, stats.expired, stats.failed, stats.dropped),
        (2, 1, 1, 1)
    );

    // A reserve the store fails follows `on_store_failure`: here 503.
    fail_reserves.store(true, Ordering::SeqCst);
    let refused = server.get_with("/", &[("x-use", "10")]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body, r#"{"error":"rate_limiter_unavailable"}"#);
    assert_eq!(layer.settle_stats().settled, 2);
}

#[test]
fn a_settle_cancelled_with_its_runtime_is_counted() {
    use tower::{Service, ServiceExt};

    let gate = Arc::new(Semaphore::new(0));
    let store = GatedStore {
        inner: MemoryStore::with_clock(ManualClock::new(START_US)),
        gate: Arc::clone(&gate),
        fail_reserves: Arc::default(),
        fail_settles: Arc::default(),
    };
    let limiter = Limiter::builder(store)
        .policy("tokens", "fixed_window 1000/1m".parse().expect("policy"))
        .build();
    let layer = usage_layer(limiter, "tokens", 100);
    let handler = tower::service_fn(|_request: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .header("x-usage-tokens", "5")
                .body(String::from("ok"))
                .expect("response"),
        )
    });
    let mut service = tower::Layer::layer(&layer, handler);
    let request = http::Request::builder()
        .uri("/")
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40_000,
        ))))
        .body(())
        .expect("request");

    // The settle starts on a runtime that ends while the store holds it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let response = runtime.block_on(async {
        service.ready().await.expect("ready");
        service.call(request).await.expect("response")
    });
    assert_eq!(response.status(), 200);
    drop(runtime);

    assert_eq!(layer.settle_stats().dropped, 1);
    assert_eq!(layer.settle_stats().settled, 0);
    // Nothing is left running: waiting for the settles ends at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::timeout(PATIENCE, layer.settles_finished())
            .await
            .expect("no settle left");
    });
}

#[tokio::test]
async fn reserve_is_refused_at_build_where_it_cannot_work() {
    let clock = ManualClock::new(START_US);
    let limiter = limiter(
        &clock,
        &[
            ("log", "sliding_log 10/1m"),
            ("window", "fixed_window 10/1m"),
        ],
    );
    let refused = RateLimitLayer::builder(limiter.clone())
        .policy("log")
        .reserve(Reserve::body_bytes())
        .build();
    assert!(
        matches!(refused, Err(ConfigError::NotReservable { ref policy, .. }) if policy == "log"),
        "{refused:?}"
    );
    for (reserve, error) in [
        (
            Reserve::body_bytes().deadline(Duration::ZERO),
            ConfigError::ReserveDeadline(Duration::ZERO),
        ),
        (
            Reserve::body_bytes().deadline(Duration::from_secs(3601)),
            ConfigError::ReserveDeadline(Duration::from_secs(3601)),
        ),
        (
            Reserve::body_bytes().max_pending_settles(0),
            ConfigError::NoPendingSettles,
        ),
    ] {
        let built = RateLimitLayer::builder(limiter.clone())
            .policy("window")
            .reserve(reserve)
            .build();
        assert_eq!(built.err(), Some(error));
    }
    // A route's policies are checked too.
    let routed = RateLimitLayer::builder(limiter)
        .policy("window")
        .route("/logs", ["log"])
        .reserve(Reserve::body_bytes())
        .build();
    assert!(matches!(routed, Err(ConfigError::NotReservable { .. })));
}

/// The layer over a real Redis and a real 3-master Cluster: concurrent
/// requests reserve, their responses report usage, and the settles give
/// back and overdraw in the shared store exactly as on the memory store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_reserves_and_settles_on_redis_and_a_cluster() {
    use tollgate_redis::{RedisOptions, RedisStore};
    use tollgate_testkit::redis::{RedisCluster, RedisServer, unique_prefix};

    let server = RedisServer::start();
    let cluster = RedisCluster::start(3, 0);
    let options = || {
        RedisOptions::default()
            .prefix(unique_prefix())
            .timeout(Duration::from_secs(5))
    };
    let stores = [
        RedisStore::connect(&server.url(), options())
            .await
            .expect("redis"),
        RedisStore::connect_cluster(&cluster.urls(), options())
            .await
            .expect("cluster"),
    ];
    for store in stores {
        // An hour's window: a test never straddles two of them but once an
        // hour, and then only gives back less (never more) than asserted.
        let policy: Policy = "fixed_window 1000/1h".parse().expect("policy");
        let limiter = Limiter::builder(store)
            .policy("tokens", policy.with_max_overdraft(50).expect("overdraft"))
            .build();
        let layer = usage_layer(limiter.clone(), "tokens", 100);
        let app = Router::new()
            .route("/", get(reports_usage))
            .layer(layer.clone());
        let served = Served::router(app).await;
        // Eight at once, each using 30 of its 100: 560 given back.
        let wave: Vec<_> = (0..8)
            .map(|_| {
                let client = served.client.clone();
                tokio::spawn(async move { client.get_with("/", &[("x-use", "30")]).await.status })
            })
            .collect();
        for request in wave {
            assert_eq!(request.await.expect("request"), 200);
        }
        assert_eq!(settles(&layer, 8).await.settled, 8);
        let left = |limiter: Limiter<RedisStore>| async move {
            limiter
                .peek("tokens", loopback_key(), 1)
                .await
                .expect("peek")
                .remaining
        };
        assert_eq!(left(limiter.clone()).await, 1000 - 8 * 30);
        // One response overdraws: 100 reserved (660 remain), 900 used: of
        // the 800 more, 710 are charged (to an overdraft of 50), 90 unpaid.
        assert_eq!(served.get_with("/", &[("x-use", "900")]).await.status, 200);
        let stats = settles(&layer, 9).await;
        assert_eq!(stats.unpaid_units, 90, "{stats:?}");
        assert_eq!(left(limiter.clone()).await, 0);
        assert_eq!(served.get("/").await.status, 429);
    }
}

/// A key too long for a reservation's id (the limiter may take longer
/// keys than an id carries: its `max_key_len` is the application's) is
/// refused as too long, like a key past the limiter's bound: it was taken
/// for a misconfiguration and the request passed unlimited, so a client
/// escaped the limit by sending a long key.
#[tokio::test]
async fn a_key_too_long_for_a_reservation_is_refused_not_let_through() {
    let clock = ManualClock::new(START_US);
    let limiter = Limiter::builder(MemoryStore::with_clock(clock.clone()))
        .max_key_len(64 * 1024)
        .policy("tokens", "fixed_window 1/1m".parse().expect("policy"))
        .build();
    let layer = RateLimitLayer::builder(limiter)
        .policy("tokens")
        .key(tollgate_tower::key::HeaderKey::new(
            HeaderName::from_static("x-user"),
        ))
        .reserve(Reserve::header(usage_header()))
        .build()
        .expect("layer");
    let app = Router::new()
        .route("/", get(reports_usage))
        .layer(layer.clone());
    let server = Served::router(app).await;
    let long = "u".repeat(13_000);
    for _ in 0..2 {
        let reply = server.get_with("/", &[("x-user", long.as_str())]).await;
        assert_ne!(reply.status, 200, "a key of 13000 bytes passed unlimited");
    }
    // A key that fits is reserved and limited as ever.
    let short = "u".repeat(12_000);
    assert_eq!(
        server
            .get_with("/", &[("x-user", short.as_str())])
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .get_with("/", &[("x-user", short.as_str())])
            .await
            .status,
        429
    );
}
