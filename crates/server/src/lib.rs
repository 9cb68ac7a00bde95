//! tollgate-server: tollgate as a service. `tollgate serve` runs it; this
//! crate is everything behind that command, so tests (and other binaries)
//! can run it in-process.
//!
//! A tour:
//! - [`config`]: the YAML configuration (server, store, policies, Envoy
//!   domains), validated with line numbers; also envoyproxy/ratelimit files;
//! - [`envoy`]: Envoy descriptor trees and envoyproxy/ratelimit matching;
//! - [`listen`]: what the gRPC port listens on: TCP or a unix socket;
//! - `conn`: connections: the cap, accept back-off, header, body and
//!   idle timeouts, closing what is left at shutdown;
//! - [`app`]: [`App`], the running service: the current configuration and
//!   limiter (swapped whole on reload), failure modes, metrics;
//! - [`http`]: the HTTP JSON API (`/v1/check`, `/v1/peek`, `/v1/reset`,
//!   `/v1/policies`), `/metrics`, `/healthz`, `/readyz`, and
//!   envoyproxy/ratelimit's `/json`, `/healthcheck`, `/rlconfig`;
//! - [`dashboard`]: the dashboard's page (`GET /`), embedded in the binary;
//! - [`json`]: the JSON form of `ShouldRateLimit` that `/json` speaks;
//! - [`grpc_calls`]: what gRPC calls in progress may hold (calls, request
//!   bytes), in front of tonic;
//! - [`grpc`]: Envoy's `RateLimitService` (RLS v3)
//!   (the IETF `RateLimit-Policy`/`RateLimit` fields come from `tollgate::answer`);
//! - [`health`]: the store's health: the background probe that closes the
//!   circuit breaker without traffic, and state-change logging;
//! - [`metrics`]: the Prometheus text;
//! - [`stats`]: the dashboard's data and `GET /v1/stats`: per-policy series
//!   sampled once a second, store and configuration state;
//! - [`hitters`]: the heavy-hitters sketch of the keys denied most;
//! - [`reload`]: SIGHUP and file watching;
//! - [`server`]: [`server::run`], which takes listeners and a shutdown
//!   future (main passes ctrl-c/SIGTERM; tests their own);
//! - [`store`]: the stores chosen by configuration (and the per-second
//!   store, `store.per_second`), each policy routed to its store;
//! - [`cli`]: the `serve` and `check` subcommands.
//!
//! ```
//! use std::sync::Arc;
//! use tollgate_server::{App, Config, ConfigSource, ServerStore, Listeners, ServerOptions};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let config = Config::demo()?;
//! let app = Arc::new(App::new(ConfigSource::default(), config, ServerStore::Memory(Default::default())));
//! let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = http.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(tollgate_server::server::run(
//!     app,
//!     Listeners { http, grpc: None },
//!     ServerOptions::default().watch_interval(None).reload_on_sighup(false),
//!     async { let _ = stopped.await; },
//! ));
//! // ... POST http://{address}/v1/check {"policy": "api", "key": "user-1"} ...
//! # let _ = address;
//! let _ = stop.send(());
//! server.await??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

// Proving the HTTP router's handler futures `Send` once every route has a
// method-not-allowed fallback (`http::router`) nests deeper than the
// default limit of 128.
#![recursion_limit = "256"]

pub mod app;
pub mod cli;
pub mod config;
mod conn;
pub mod dashboard;
pub mod envoy;
pub mod grpc;
pub mod grpc_calls;
mod grpc_tls;
pub mod health;
pub mod hitters;
pub mod http;
pub mod json;
pub mod listen;
pub mod metrics;
pub mod overrides;
pub mod reload;
pub mod server;
pub mod stats;
pub mod store;

pub use app::{App, Loaded, StartError};
pub use config::{Config, ConfigError, ConfigSource};
pub use listen::{GrpcListener, ListenAddr};
pub use server::{Listeners, ServeError, ServerOptions, run, shutdown_signal};
pub use store::ServerStore;
