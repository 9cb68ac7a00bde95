//! Hello world with and without the rate limit layer, side by side in one
//! process, for `scripts/bench-middleware.sh`:
//!
//! - `GET /plain`: no layer;
//! - `GET /noop`: a `route_layer` that does nothing: what axum's wrapping of
//!   a route costs any middleware (the floor under `/limited`'s ratio);
//! - `GET /limited`: the layer over a memory store, keyed by peer IP, with a
//!   policy that never denies at any rate a benchmark reaches (so every
//!   request pays for a full decision and the header fields, and none is
//!   short-circuited by a 429).
//!
//! ```sh
//! cargo run --release -p tollgate-tower --example bench_server -- --port 3901
//! ```

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::routing::get;
use clap::Parser;
use tollgate::{Limiter, MemoryStore};
use tollgate_tower::RateLimitLayer;

/// Command line flags.
#[derive(Debug, Parser)]
#[command(about = "hello world with and without the tollgate layer")]
struct Args {
    /// Port to listen on (on 127.0.0.1).
    #[arg(long, default_value_t = 3901)]
    port: u16,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let limiter = Limiter::builder(MemoryStore::new())
        // 4e9 per second: never denies, every request is fully decided.
        .policy("never", "gcra 4000000000/s".parse()?)
        .build();
    let layer = RateLimitLayer::builder(limiter).policy("never").build()?;
    let app = Router::new()
        .route("/plain", get(|| async { "hello" }))
        .route(
            "/noop",
            get(|| async { "hello" }).route_layer(tower::layer::layer_fn(|service| service)),
        )
        .route("/limited", get(|| async { "hello" }).route_layer(layer));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
