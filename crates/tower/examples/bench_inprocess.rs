//! The layer's cost without a network: drives one route of the router in
//! process, N times, on one thread. `scripts/bench-middleware.sh
//! instructions` runs it under valgrind to count instructions per request,
//! a figure that a noisy machine cannot blur (wall-clock runs on a shared
//! VM vary by more than the layer costs).
//!
//! ```sh
//! cargo run --release -p tollgate-tower --example bench_inprocess -- /limited 100000
//! ```
//!
//! Routes: `/plain` (no layer), `/noop` (a `route_layer` that does nothing:
//! what axum's layering itself costs), `/limited` (the rate limit layer, as
//! in `bench_server`), `/handler` (the same layer put on the handler with
//! axum's `Handler::layer`, which wraps it without a second boxed route).

use std::error::Error;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::handler::Handler;
use axum::routing::get;
use axum::{Router, http};
use tollgate::{Limiter, MemoryStore};
use tollgate_tower::RateLimitLayer;
use tower::ServiceExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "/limited".to_owned());
    let requests: u64 = args.next().map_or(Ok(100_000), |n| n.parse())?;

    let limiter = Limiter::builder(MemoryStore::new())
        .policy("never", "gcra 4000000000/s".parse()?)
        .build();
    let layer = RateLimitLayer::builder(limiter).policy("never").build()?;
    let app = Router::new()
        .route("/plain", get(|| async { "hello" }))
        .route(
            "/noop",
            get(|| async { "hello" }).route_layer(tower::layer::layer_fn(|service| service)),
        )
        .route("/handler", get((|| async { "hello" }).layer(layer.clone())))
        .route("/limited", get(|| async { "hello" }).route_layer(layer));

    let peer = SocketAddr::from(([127, 0, 0, 1], 5555));
    let started = std::time::Instant::now();
    for _ in 0..requests {
        let mut request = http::Request::get(path.as_str()).body(Body::empty())?;
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = app.clone().oneshot(request).await?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("{path} answered {}", response.status()).into());
        }
    }
    let per_request = started.elapsed() / u32::try_from(requests.max(1)).unwrap_or(u32::MAX);
    println!("{path}: {requests} requests, {per_request:?} each");
    Ok(())
}
