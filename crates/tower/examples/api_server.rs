//! The demo API: an axum app rate limited per client IP.
//!
//! ```sh
//! cargo run -p tollgate-tower --example api_server -- --port 3000
//! cargo run -p tollgate-tower --example api_server -- --port 3001 --redis redis://127.0.0.1:6379
//! curl -i http://127.0.0.1:3000/api/resource
//! curl -i -X POST http://127.0.0.1:3000/api/login
//! ```
//!
//! - `GET /api/resource`: `sliding_log 100/1m` per client IP: any 60 s
//!   window admits at most 100 requests of one IP;
//! - `POST /api/login`: `token_bucket 5/1m burst 5` per client IP: 5 at
//!   once, then one every 12 s;
//! - `GET /health`: not limited.
//!
//! On the memory store by default; with `--redis URL` the limits live in
//! Redis, so several instances (on different ports, or machines) enforce one
//! shared limit. If Redis fails, decisions fall back to the failure mode
//! `open` (allowed, marked degraded) after at most 50 ms.
//!
//! With `--trusted-proxy 10.0.0.0/8` (repeatable) the client IP is read from
//! `X-Forwarded-For` when the peer is in one of those networks.
//! `docs/MIDDLEWARE.md` has the Artillery scenario and its expected results.

use std::error::Error;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::json;
use tokio::net::TcpListener;
use tollgate::{Limiter, MemoryStore, PolicyError, ResilienceOptions, Resilient, Store};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_tower::key::{Cidr, ClientIp, PeerIp, ProxyHeader};
use tollgate_tower::{ConfigError, KeyExtractor, RateLimitLayer};

/// Command line flags.
#[derive(Debug, Parser)]
#[command(about = "tollgate demo API: rate limited per client IP")]
pub struct Args {
    /// Port to listen on (on 127.0.0.1).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// A network of trusted proxies whose X-Forwarded-For is honoured
    /// (repeatable); without one, the TCP peer is the client.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<Cidr>,
    /// Keep the limits in Redis (e.g. `redis://127.0.0.1:6379`) instead of
    /// this process's memory, shared by every instance that uses it.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
}

/// The demo's policies, over any store.
pub fn limiter<S: Store>(store: S) -> Result<Limiter<S>, PolicyError> {
    Ok(Limiter::builder(store)
        .policy("resource", "sliding_log 100/1m".parse()?)
        .policy("login", "token_bucket 5/1m burst 5".parse()?)
        .build())
}

/// The app: routes, each with its own layer over the one shared limiter.
/// Behind proxies (`trusted_proxies` not empty) the client IP is read from
/// `X-Forwarded-For`.
pub fn app<S: Store>(limiter: Limiter<S>, trusted_proxies: &[Cidr]) -> Result<Router, ConfigError> {
    let layer = |policy: &str| {
        let client: Box<dyn KeyExtractor> = if trusted_proxies.is_empty() {
            Box::new(PeerIp::new())
        } else {
            Box::new(ClientIp::new(
                ProxyHeader::XForwardedFor,
                trusted_proxies.iter().copied(),
            ))
        };
        RateLimitLayer::builder(limiter.clone())
            .policy(policy)
            .key(client)
            .build()
    };
    Ok(Router::new()
        .route(
            "/api/resource",
            get(|| async { Json(json!({ "resource": "here it is" })) })
                .route_layer(layer("resource")?),
        )
        .route(
            "/api/login",
            post(|| async { Json(json!({ "login": "ok" })) }).route_layer(layer("login")?),
        )
        .route("/health", get(|| async { "ok" })))
}

/// Serves `app` on `listener` until `shutdown` completes. Tests call it
/// with their own listener on port 0 and their own shutdown.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // `ConnectInfo` gives the layer the peer address.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Everything after the store is chosen.
async fn run<S: Store>(store: S, args: &Args) -> Result<(), Box<dyn Error>> {
    let app = app(limiter(store)?, &args.trusted_proxies)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, app, async {
        // If ctrl-c cannot be listened for, run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt::init();
    let args = Args::parse();
    // The one place the store is chosen.
    match &args.redis {
        Some(url) => {
            let store = RedisStore::connect(url, RedisOptions::default()).await?;
            run(
                Resilient::with_invalidations(store, ResilienceOptions::default()),
                &args,
            )
            .await
        }
        None => run(MemoryStore::new(), &args).await,
    }
}
