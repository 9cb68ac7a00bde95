//! The server: HTTP and gRPC listeners, reload, graceful shutdown.
//!
//! As in mini-redis, [`run`] takes bound listeners and a shutdown future:
//! `main` passes ctrl-c/SIGTERM, tests pass listeners on `127.0.0.1:0` and
//! a future of their own.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::ServingStatus;

use crate::app::App;
use crate::config::ServerSettings;
use crate::conn::{Acceptor, Activity, TimedBody, Tracker, Watched};
use crate::grpc::{HEALTH_NAMES, RateLimitGrpc};
use crate::grpc_calls::CallsLayer;
use crate::grpc_tls::{GrpcIo, GrpcTls};
use crate::listen::{GrpcListener, Peer, Stream};

/// How the server runs besides its listeners.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ServerOptions {
    /// How often the configuration files, and the gRPC port's certificate
    /// and key (`server.grpc_tls`), are checked for changes; `None`
    /// disables watching.
    pub watch_interval: Option<Duration>,
    /// Reload on SIGHUP (installs a process-wide handler).
    pub reload_on_sighup: bool,
    /// How often gRPC health follows store readiness.
    pub health_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            watch_interval: Some(Duration::from_millis(500)),
            reload_on_sighup: true,
            health_interval: Duration::from_secs(5),
        }
    }
}

impl ServerOptions {
    /// Sets the watch interval (`None`: no watching).
    pub fn watch_interval(mut self, interval: Option<Duration>) -> Self {
        self.watch_interval = interval;
        self
    }

    /// Enables or disables reload on SIGHUP.
    pub fn reload_on_sighup(mut self, on: bool) -> Self {
        self.reload_on_sighup = on;
        self
    }
}

/// The sockets the server accepts on.
#[derive(Debug)]
pub struct Listeners {
    /// The HTTP JSON API, `/metrics`, `/healthz`, `/readyz`.
    pub http: TcpListener,
    /// Envoy RLS gRPC and gRPC health, on TCP or a unix socket; `None`
    /// serves no gRPC.
    pub grpc: Option<GrpcListener>,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(tonic::transport::Error),
    /// `server.grpc_tls` could not be put in force (a file missing or not
    /// PEM).
    #[error("server.grpc_tls: {0}")]
    Tls(String),
    /// The Prometheus listener (`server.metrics`) could not be bound or failed.
    #[error("server.metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The most connections open at once on the Prometheus listener
/// (`server.metrics`): scrapers, a handful at most.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// The longest HTTP/1 request head (request line and headers) the HTTP
/// port reads, in bytes: 32 KiB. A longer one is answered `431 Request
/// Header Fields Too Large` and its connection closed. Also what a
/// connection's read buffer is bounded by, so that an idle keep-alive
/// connection holds at most about twice this much (the buffer's
/// allocation doubles as it grows). The longest heads the API
/// itself asks for carry a key in their path: an override's key
/// percent-encoded (three bytes for each of up to
/// [`MAX_LIMITER_KEY`](crate::app::MAX_LIMITER_KEY), 24 KiB) or a listing's
/// cursor (hex, about 16 KiB); 8 KiB is left for the other headers.
pub const MAX_REQUEST_HEAD_BYTES: usize = 3 * crate::app::MAX_LIMITER_KEY + 8 * 1024;

/// Serves `app` on `listeners` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish for up to
/// `server.shutdown_timeout`, closes the connections still open, and
/// returns.
///
/// The connection settings of `server:` (`max_connections`, the timeouts,
/// `grpc_*`) are read once, here: like the listen addresses, a reload that
/// changes them applies at the next start.
///
/// # Errors
/// [`ServeError`] when a listener fails.
pub async fn run(
    app: Arc<App>,
    listeners: Listeners,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let limits = app.current().config.server.clone();
    open_file_limit(&limits, listeners.grpc.is_some());
    // Read before anything starts, so a bad certificate stops the start.
    let tls = match &limits.grpc_tls {
        Some(settings) => Some(GrpcTls::new(settings).map_err(ServeError::Tls)?),
        None => None,
    };
    let metrics_listener = match &limits.metrics {
        Some(metrics) => Some((
            TcpListener::bind(metrics.addr)
                .await
                .map_err(|source| ServeError::Metrics {
                    addr: metrics.addr,
                    source,
                })?,
            metrics.path.clone(),
        )),
        None => None,
    };

    // One shutdown signal for every task: a watch channel each task waits on.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
    });
    let stopped = {
        let stop_rx = stop_rx.clone();
        move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    };

    let watcher = (options.watch_interval.is_some() || options.reload_on_sighup).then(|| {
        tokio::spawn(crate::reload::watch(
            Arc::clone(&app),
            options.watch_interval,
            options.reload_on_sighup,
            stopped(),
        ))
    });

    // Probes the store at start and while it fails (crate::health).
    let store_watch = tokio::spawn(crate::health::watch_store(Arc::clone(&app), stopped()));
    // Samples the dashboard's series once a second (crate::stats); idle
    // while `server.dashboard.enabled` is false.
    let sampler = tokio::spawn(crate::stats::sample(Arc::clone(&app), stopped()));

    let http_open = Tracker::new();
    let grpc_open = Tracker::new();
    let metrics_open = Tracker::new();
    // The Prometheus listener is served as the HTTP port is (the same
    // timeouts, shutdown and cut), with its own small connection cap: it is
    // for scrapers, and a flood there must not take file descriptors from
    // the ports that decide.
    let metrics_stop = stop_rx.clone();
    let metrics = async {
        let Some((listener, path)) = metrics_listener else {
            return Ok(());
        };
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, %path, "Prometheus metrics listener");
        serve_http(
            crate::http::metrics_router(Arc::clone(&app), &path),
            Acceptor::new(listener, METRICS_MAX_CONNECTIONS, "metrics"),
            &limits,
            metrics_stop,
            &metrics_open,
        )
        .await
    };
    let http = serve_http(
        crate::http::router(Arc::clone(&app)),
        Acceptor::new(listeners.http, limits.max_connections, "http"),
        &limits,
        stop_rx,
        &http_open,
    );
    let grpc = async {
        let Some(listener) = listeners.grpc else {
            return Ok(());
        };
        let acceptor = Acceptor::new(listener, limits.max_connections, "grpc");
        let serving = serve_grpc(
            Arc::clone(&app),
            acceptor,
            &limits,
            tls.clone(),
            options,
            &stopped,
            &grpc_open,
        );
        // tonic waits for every connection to close; once the deadline
        // has passed and they were cut, give it a moment, then stop
        // waiting (its connection tasks end with their sockets).
        let give_up = async {
            stopped().await;
            tokio::time::sleep(limits.shutdown_timeout + CUT_GRACE).await;
        };
        tokio::select! {
            result = serving => result,
            () = give_up => {
                tracing::warn!("gRPC server did not stop after its connections were cut");
                Ok(())
            }
        }
    };
    let drain = async {
        stopped().await;
        let deadline = Instant::now() + limits.shutdown_timeout;
        let all_closed = async {
            http_open.closed().await;
            grpc_open.closed().await;
            metrics_open.closed().await;
        };
        if tokio::time::timeout_at(deadline, all_closed).await.is_ok() {
            return;
        }
        let (http, grpc) = (http_open.open(), grpc_open.open());
        http_open.cut();
        grpc_open.cut();
        metrics_open.cut();
        tracing::warn!(
            http,
            grpc,
            timeout_ms = tollgate::clock::millis(limits.shutdown_timeout),
            "shutdown: connections still open at server.shutdown_timeout were closed"
        );
        let _ = tokio::time::timeout(CUT_GRACE, async {
            http_open.closed().await;
            grpc_open.closed().await;
            metrics_open.closed().await;
        })
        .await;
    };

    let (http, grpc, metrics, ()) = tokio::join!(http, grpc, metrics, drain);
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    let _ = store_watch.await;
    let _ = sampler.await;
    if let Err(error) = metrics {
        // A listener error is logged, not fatal.
        tracing::warn!(%error, "metrics listener failed");
    }
    http.map_err(ServeError::Http)?;
    grpc.map_err(ServeError::Grpc)?;
    tracing::info!("stopped");
    Ok(())
}

/// How long closed connections get to end once cut at shutdown's deadline.
const CUT_GRACE: Duration = Duration::from_secs(2);
/// The default age past which a gRPC connection is asked to go away
/// (GOAWAY), so long-lived clients reconnect and spread over instances and
/// no connection lives forever: `server.grpc_max_connection_age`.
pub const GRPC_MAX_CONNECTION_AGE: Duration = crate::config::DEFAULT_GRPC_MAX_CONNECTION_AGE;
/// The most time between HTTP/2 keepalive pings on a gRPC connection that
/// is quiet (they are sent at half `idle_timeout` when that is shorter).
pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A keepalive ping not answered within this long (or half `idle_timeout`
/// when that is shorter) closes the connection.
pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Raises the soft open-file limit to the hard one and logs it, with a
/// warning when it is too low for `max_connections` on every port.
fn open_file_limit(limits: &ServerSettings, grpc: bool) {
    let Some(limit) = crate::conn::raise_open_file_limit() else {
        return;
    };
    let ports = if grpc { 2 } else { 1 };
    // Each connection is a descriptor; the rest (listeners, Redis, the
    // configuration files, the runtime) fit in a few dozen.
    let needed = u64::try_from(limits.max_connections * ports)
        .unwrap_or(u64::MAX)
        .saturating_add(64);
    if limit < needed {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = limits.max_connections,
            ports,
            needed,
            "the open-file limit is below max_connections on every port: at the limit accepts fail (and are retried) before the cap is reached"
        );
    } else {
        tracing::info!(
            open_file_limit = limit,
            max_connections = limits.max_connections,
            "open-file limit"
        );
    }
}

/// The HTTP port: accepts until shutdown, one task per connection.
async fn serve_http(
    router: axum::Router,
    mut acceptor: Acceptor,
    limits: &ServerSettings,
    stop: watch::Receiver<bool>,
    open: &Tracker,
) -> Result<(), std::io::Error> {
    let mut stopping = stop.clone();
    let stopped = stopping.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    loop {
        let (stream, peer, slot) = tokio::select! {
            biased;
            _ = &mut stopped => break,
            accepted = acceptor.accept() => accepted,
        };
        tokio::spawn(http_connection(
            stream,
            peer,
            slot,
            HttpService {
                router: router.clone(),
                activity: Activity::http(limits.header_timeout, limits.idle_timeout),
                body_timeout: limits.body_timeout,
            },
            stop.clone(),
            open.watch(),
        ));
    }
    // The listener closes here: new connections are refused.
    drop(acceptor);
    Ok(())
}

/// One HTTP/1.1 connection: served by hyper until it ends, expires (header
/// or idle timeout), or is cut at shutdown's deadline. On shutdown it
/// finishes the request in progress and closes.
async fn http_connection(
    stream: Stream,
    peer: Peer,
    _slot: OwnedSemaphorePermit,
    service: HttpService,
    mut stop: watch::Receiver<bool>,
    cut: watch::Receiver<bool>,
) {
    let activity = Arc::clone(&service.activity);
    let io = TokioIo::new(Watched::http(stream, peer, Arc::clone(&activity)));
    // hyper's own header timeout runs from the moment it waits for a
    // request, so it would also close idle keep-alive connections;
    // `Activity` times headers from their first byte instead.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        // The head's own bound, exact. The read buffer grows to fit a
        // request's head and keeps that size for the connection's life:
        // hyper's default (about 400 KiB) let idle keep-alive connections
        // hold that much each. Bounded here, it may still reach about twice
        // this (its allocation doubles), and lets a head a little over the
        // cap in, which `max_header_size` then refuses.
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let expired = activity.expired();
    tokio::pin!(expired);
    let cut = crate::conn::cut(cut);
    tokio::pin!(cut);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                }
                return;
            }
            why = &mut expired => {
                // Dropping the connection closes the socket.
                tracing::debug!(%peer, ?why, "HTTP connection closed: timeout");
                return;
            }
            () = &mut cut => {
                tracing::debug!(%peer, "HTTP connection cut at shutdown");
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The HTTP API for one connection: marks each request in progress and
/// bounds the time to receive its body.
#[derive(Clone)]
struct HttpService {
    router: axum::Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for HttpService {
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let timeout = self.body_timeout;
        let request = request.map(|body| axum::body::Body::new(TimedBody::new(body, timeout)));
        let mut router = self.router.clone();
        Box::pin(async move {
            let mut response = tower::Service::call(&mut router, request).await?;
            drop(in_flight);
            // The rest of a body that timed out may still be on its way:
            // the connection cannot carry another request.
            if response.status() == StatusCode::REQUEST_TIMEOUT {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}

/// The gRPC port: tonic over the accepted connections, until shutdown.
async fn serve_grpc<S, F>(
    app: Arc<App>,
    mut acceptor: Acceptor,
    limits: &ServerSettings,
    tls: Option<GrpcTls>,
    options: ServerOptions,
    stopped: &S,
    open: &Tracker,
) -> Result<(), tonic::transport::Error>
where
    S: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in HEALTH_NAMES {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let health_app = Arc::clone(&app);
    let health_stop = stopped();
    let interval = options.health_interval;
    let mut store_status = app.store_status();
    tokio::spawn(async move {
        tokio::pin!(health_stop);
        loop {
            let status = if health_app.healthy().await.is_ok() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in HEALTH_NAMES {
                reporter.set_service_status(name, status).await;
            }
            // Re-checked every interval, and at once when the store's
            // health changes.
            tokio::select! {
                () = &mut health_stop => return,
                () = tokio::time::sleep(interval) => {}
                Ok(()) = store_status.changed() => {}
            }
        }
    });

    if let (Some(tls), Some(every)) = (&tls, options.watch_interval) {
        // Certificates rotated on disk are served from the next
        // connection on (crate::grpc_tls).
        let (tls, reload_stop) = (tls.clone(), stopped());
        tokio::spawn(async move {
            tokio::pin!(reload_stop);
            loop {
                tokio::select! {
                    () = &mut reload_stop => return,
                    () = tokio::time::sleep(every) => {
                        // Files are read on a thread of their own, as the
                        // configuration's are.
                        let tls = tls.clone();
                        let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
                    }
                }
            }
        });
    }
    let (incoming, connections) = mpsc::channel::<std::io::Result<GrpcIo>>(1);
    let timeouts = (limits.header_timeout, limits.idle_timeout);
    let calls = CallsLayer::new(limits.grpc_max_calls, limits.grpc_max_buffered_bytes);
    let shares = calls.clone();
    let accept_stop = stopped();
    let accepting = async move {
        tokio::pin!(accept_stop);
        loop {
            let (stream, peer, slot) = tokio::select! {
                biased;
                () = &mut accept_stop => break,
                // tonic is gone: nothing would take the connection.
                () = incoming.closed() => break,
                accepted = acceptor.accept() => accepted,
            };
            let io = Watched::grpc(
                stream,
                peer,
                slot,
                timeouts,
                shares.connection_share(),
                open.watch(),
            );
            let Some(tls) = &tls else {
                if incoming.send(Ok(GrpcIo::Plain(io))).await.is_err() {
                    break;
                }
                continue;
            };
            // Each handshake in a task of its own, within the header
            // timeout: a client that never finishes one holds up no other.
            // Shutdown ends it too, handing over included: a stalled
            // handshake must not hold it up.
            let (tls, incoming) = (tls.clone(), incoming.clone());
            let (handshake_timeout, stop) = (timeouts.0, stopped());
            tokio::spawn(async move {
                let handshake = async {
                    match tokio::time::timeout(handshake_timeout, tls.accept(io)).await {
                        Ok(Ok(stream)) => {
                            let _ = incoming.send(Ok(GrpcIo::Tls(Box::new(stream)))).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "gRPC TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                    }
                };
                tokio::select! {
                    biased;
                    () = stop => {}
                    () = handshake => {}
                }
            });
        }
    };
    // Pings keep a live but quiet client from looking idle: it answers.
    let keepalive = GRPC_KEEPALIVE_INTERVAL.min(limits.idle_timeout / 2);
    let serving = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.grpc_max_streams)
        .timeout(limits.grpc_request_timeout)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT.min(limits.idle_timeout / 2)))
        .max_connection_age(limits.grpc_max_connection_age)
        .max_connection_age_grace(limits.grpc_max_connection_age_grace)
        .layer(calls)
        .add_service(health)
        .add_service(RateLimitGrpc::new(app).into_server())
        .serve_with_incoming_shutdown(ReceiverStream::new(connections), stopped());
    let ((), result) = tokio::join!(accepting, serving);
    result
}

/// Completes on ctrl-c (SIGINT) or SIGTERM: what `main` passes to [`run`].
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
