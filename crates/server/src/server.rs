//! The server: HTTP and gRPC listeners, reload, graceful shutdown.
//!
//! As in mini-redis, [`run`] takes bound listeners and a shutdown future:
//! `main` passes ctrl-c/SIGTERM, tests pass listeners on `127.0.0.1:0` and
//! a future of their own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::app::App;
use crate::grpc::{RateLimitGrpc, SERVICE_NAME};

/// How the server runs besides its listeners.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ServerOptions {
    /// How often the configuration files are checked for changes; `None`
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
    /// Envoy RLS gRPC and gRPC health; `None` serves no gRPC.
    pub grpc: Option<TcpListener>,
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
}

/// Serves `app` on `listeners` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish, and returns.
///
/// # Errors
/// [`ServeError`] when a listener fails.
pub async fn run(
    app: Arc<App>,
    listeners: Listeners,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // One shutdown signal for every task: a watch channel each task waits on.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
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

    // TCP_NODELAY on every accepted connection, HTTP and gRPC: a decision
    // is a small write, and Nagle's algorithm meeting the client's delayed
    // ACK would hold some of them for 40 ms (seen as the gRPC p99 before).
    let http = axum::serve(
        listeners.http.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        }),
        crate::http::router(Arc::clone(&app)).into_make_service(),
    )
    .with_graceful_shutdown(stopped());

    let grpc = async {
        let Some(listener) = listeners.grpc else {
            return Ok(());
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        let health_app = Arc::clone(&app);
        let health_stop = stopped();
        let interval = options.health_interval;
        let mut store_status = app.store_status();
        tokio::spawn(async move {
            tokio::pin!(health_stop);
            loop {
                let status = if health_app.ready().await.is_ok() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status(SERVICE_NAME, status).await;
                reporter.set_service_status("", status).await;
                // Re-checked every interval, and at once when the store's
                // health changes.
                tokio::select! {
                    () = &mut health_stop => return,
                    () = tokio::time::sleep(interval) => {}
                    Ok(()) = store_status.changed() => {}
                }
            }
        });
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(RateLimitGrpc::new(Arc::clone(&app)).into_server())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped(),
            )
            .await
    };

    let (http, grpc) = tokio::join!(http, grpc);
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    let _ = store_watch.await;
    http.map_err(ServeError::Http)?;
    grpc.map_err(ServeError::Grpc)?;
    tracing::info!("stopped");
    Ok(())
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
