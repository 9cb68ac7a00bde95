//! tollgate-tower: rate limiting for axum, hyper and tonic services, as a
//! tower layer over a shared [`tollgate::Limiter`].
//!
//! Add [`RateLimitLayer`] to a router and every request is charged to a key
//! (the client's IP by default) against one or several named policies of the
//! limiter. Allowed requests go through with `RateLimit-Policy` and
//! `RateLimit` header fields; denied ones get `429 Too Many Requests`, a
//! `Retry-After` and a JSON body, or, for a gRPC call, gRPC's own
//! `RESOURCE_EXHAUSTED` status. The budget lives in the limiter, so every
//! clone of the service, every route sharing the limiter and (with the Redis
//! store) every instance of the service draws from the same one.
//!
//! A tour:
//! - [`layer`]: [`RateLimitLayer`] and its builder: policies per layer or
//!   per route, [`MissingKey`], [`StoreFailure`], shadow mode, allowlist,
//!   leaky bucket delays;
//! - [`service`]: [`RateLimitService`], which in `call` (never in
//!   `poll_ready`) extracts the key, asks the limiter and translates the
//!   check's [`Answer`](tollgate::answer::Answer) (verdict, deciding policy,
//!   waits and header values, decided by the core's rules, shared with
//!   `tollgate serve`) into forwarding or a response;
//! - [`key`]: who a request is charged to: [`PeerIp`](key::PeerIp),
//!   [`ClientIp`](key::ClientIp) behind trusted proxies,
//!   [`HeaderKey`](key::HeaderKey), [`Identity`](key::Identity),
//!   [`RouteParam`](key::RouteParam), or any closure ([`key::key_fn`]);
//! - [`response`]: the header fields and the layer's own responses
//!   ([`ResponseFormat`]: JSON, RFC 9457 problem details, or your function;
//!   gRPC Trailers-Only replies for gRPC calls);
//! - [`reserve`]: [`Reserve`], for costs known only afterwards (LLM
//!   tokens, bytes sent): reserve an estimate before the handler, settle at
//!   the actual cost from a response header or trailer, the response head,
//!   or the body's bytes;
//! - [`future`] and [`body`]: the service's future and response body;
//! - [`error`]: [`ConfigError`], the only error: found when the layer is
//!   built, never while serving.
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//! use tollgate::{Limiter, MemoryStore};
//! use tollgate_tower::RateLimitLayer;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = Limiter::builder(MemoryStore::new())
//!     .policy("api", "100/1m".parse()?)
//!     .build();
//!
//! // Each client IP may make 100 requests a minute; the 101st gets a 429.
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(RateLimitLayer::builder(limiter).policy("api").build()?);
//!
//! // The client IP comes from axum's `ConnectInfo`: serve with it.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let address = listener.local_addr()?;
//! # tokio::spawn(async move {
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # });
//! # let client = reqwest::Client::builder().no_proxy().build()?;
//! # let response = client.get(format!("http://{address}/")).send().await?;
//! # assert_eq!(response.status(), 200);
//! # assert_eq!(response.headers()["ratelimit-policy"], r#""api";q=100;w=60"#);
//! # assert_eq!(response.headers()["ratelimit"], r#""api";r=99;t=1"#);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
//! ```
//!
//! Next steps, all on [`RateLimitLayerBuilder`]: behind a proxy, key by
//! [`ClientIp`](key::ClientIp) with your proxies' networks; limit routes
//! differently with one layer per route (`route_layer`) or with
//! [`route`](RateLimitLayerBuilder::route); charge API keys or users with
//! [`HeaderKey`](key::HeaderKey) or [`Identity`](key::Identity).
//! `docs/MIDDLEWARE.md` in the repository walks through each, with a demo
//! server.
//!
//! # What the layer answers
//!
//! | situation | response |
//! |---|---|
//! | allowed | the inner service's, plus `RateLimit-Policy` and `RateLimit` |
//! | allowed, with [`Reserve`] | as allowed; the reservation is settled from the response ([`reserve`]) |
//! | denied | 429, `Retry-After` (unless it can never pass), the fields, a body per [`ResponseFormat`] |
//! | `leaky_bucket` says wait | waits (`tokio::time::sleep`) up to the maximum delay, then as allowed; longer: 429 |
//! | shadow mode | as allowed, whatever the decision |
//! | key allowlisted, or route without policy | the inner service's, untouched |
//! | no key | per [`MissingKey`]: 400, 401, another key, or untouched |
//! | key longer than the limiter accepts | 400 `{"error":"key_too_long"}` |
//! | store failed | per [`StoreFailure`]: untouched (logged), or 503 |
//! | unknown policy (impossible after [`build`](RateLimitLayerBuilder::build)) | untouched, logged as an error |
//!
//! The layer never answers 500, and no request input can make it panic.
//!
//! A gRPC call (`content-type: application/grpc[+..]`, or gRPC-Web's) is
//! refused the gRPC way instead: `200 OK`, no body, and `grpc-status`
//! `RESOURCE_EXHAUSTED` for a denial (unless a [`ResponseFormat::Custom`]
//! writes denials), `INVALID_ARGUMENT` for a missing or too long key,
//! `UNAUTHENTICATED` in place of 401 and `UNAVAILABLE` in place of 503,
//! with the same header fields (see [`response`]).

pub mod body;
mod config;
pub mod error;
pub mod future;
pub mod key;
pub mod layer;
pub mod reserve;
pub mod response;
pub mod service;

pub use body::RateLimitBody;
pub use error::ConfigError;
pub use future::ResponseFuture;
pub use key::{Key, KeyError, KeyExtractor};
pub use layer::{MissingKey, RateLimitLayer, RateLimitLayerBuilder, StoreFailure};
pub use reserve::{Reserve, SettleStats};
pub use response::TOLLGATE_DEGRADED;
pub use response::{Denial, PolicyDecision, ResponseFormat};
pub use service::RateLimitService;
