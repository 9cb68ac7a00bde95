//! Real servers on a loopback listener (127.0.0.1:0) for tests, each with
//! a shutdown handle: an axum [`Router`] with or without `ConnectInfo`, or
//! whatever a test serves itself on the listener it is given.
//!
//! ```no_run
//! # async fn example() {
//! use axum::Router;
//! use axum::routing::get;
//! use tollgate_testkit::serve::Served;
//!
//! let served = Served::router(Router::new().route("/", get(|| async { "hello" }))).await;
//! let reply = served.get("/").await; // `Served` is a `Client` of itself
//! assert_eq!((reply.status, reply.body.as_str()), (200, "hello"));
//! drop(served); // stops the server
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::http::Client;

/// A listener on 127.0.0.1 at a port the kernel picks, and its address.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    (listener, address)
}

/// A shutdown signal and the future a server waits on for it: the future
/// completes when the [`Stop`] is fired or dropped.
pub fn shutdown() -> (Stop, Shutdown) {
    let (stop, stopped) = oneshot::channel();
    (Stop(stop), Shutdown(stopped))
}

/// Fires [`Shutdown`], explicitly or when dropped.
#[derive(Debug)]
pub struct Stop(oneshot::Sender<()>);

impl Stop {
    /// Fires the shutdown now.
    pub fn fire(self) {
        let _ = self.0.send(());
    }
}

/// Completes when its [`Stop`] fires or is dropped: pass it as a server's
/// graceful shutdown.
#[derive(Debug)]
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A server running on a loopback listener until dropped; a [`Client`]
/// of it (through `Deref`), so `served.get("/")` makes a request.
#[derive(Debug)]
pub struct Served {
    /// A client of the server, on its address.
    pub client: Client,
    _stop: Stop,
}

impl Served {
    /// Serves `app` with `ConnectInfo<SocketAddr>` (as every real
    /// deployment of a limit keyed on the peer must).
    pub async fn router(app: Router) -> Served {
        Served::start(|listener, shutdown| async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
            .expect("server");
        })
        .await
    }

    /// Serves `app` without `ConnectInfo`.
    pub async fn router_without_connect_info(app: Router) -> Served {
        Served::start(|listener, shutdown| async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .expect("server");
        })
        .await
    }

    /// Spawns `serve` on a fresh [`loopback`] listener and the
    /// [`Shutdown`] it should stop on.
    pub async fn start<F, S>(serve: F) -> Served
    where
        F: FnOnce(TcpListener, Shutdown) -> S,
        S: Future + Send + 'static,
        S::Output: Send + 'static,
    {
        let (listener, address) = loopback().await;
        let (stop, shutdown) = shutdown();
        tokio::spawn(serve(listener, shutdown));
        Served {
            client: Client::new(address),
            _stop: stop,
        }
    }
}

impl Deref for Served {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}
