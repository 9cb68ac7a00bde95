//! The `serve` and `check` subcommands: their arguments and what they do,
//! so the `tollgate` binary only parses flags and passes a shutdown signal.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::{App, StartError};
use crate::config::{Config, ConfigError, ConfigSource, StoreKind};
use crate::server::{Listeners, ServeError, ServerOptions, run};

/// `tollgate serve`: run the HTTP JSON API and Envoy RLS gRPC.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// The configuration file (YAML). Without it: the built-in demo
    /// configuration on the memory store.
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// envoyproxy/ratelimit configuration, unchanged: a file, or a
    /// directory of `*.yaml` files (one domain each).
    #[arg(long, value_name = "DIR|FILE")]
    pub envoy_config: Option<PathBuf>,
    /// Listen for HTTP on ADDR (overrides `server.http`).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Listen for gRPC on ADDR (overrides `server.grpc`).
    #[arg(long, value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
}

/// `tollgate check`: validate a configuration and exit.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The configuration file (YAML).
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// envoyproxy/ratelimit configuration to validate with it.
    #[arg(long, value_name = "DIR|FILE")]
    pub envoy_config: Option<PathBuf>,
}

/// Why `serve` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The service could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        source: std::io::Error,
    },
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Does nothing
/// when a subscriber is already installed.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `tollgate serve` until `shutdown` completes.
///
/// # Errors
/// [`CliError`]: invalid configuration, unreachable store, address in use.
pub async fn run_serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    init_logging();
    let source = ConfigSource {
        config: args.config,
        envoy: args.envoy_config,
    };
    let app = Arc::new(App::start(source).await?);
    let loaded = app.current();
    let http_addr = args.http.unwrap_or(loaded.config.server.http);
    let grpc_addr = args.grpc.unwrap_or(loaded.config.server.grpc);
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| CliError::Bind { addr, source })
    };
    let http = bind(http_addr).await?;
    let grpc = bind(grpc_addr).await?;
    let http_addr = http.local_addr().unwrap_or(http_addr);
    let grpc_addr = grpc.local_addr().unwrap_or(grpc_addr);
    println!("{}", banner(&app, http_addr, grpc_addr));
    drop(loaded);
    run(
        app,
        Listeners {
            http,
            grpc: Some(grpc),
        },
        ServerOptions::default(),
        shutdown,
    )
    .await?;
    Ok(())
}

/// What `serve` prints when it starts.
fn banner(app: &App, http: SocketAddr, grpc: SocketAddr) -> String {
    let loaded = app.current();
    let config = &loaded.config;
    let mut out = String::new();
    let _ = writeln!(out, "tollgate serving");
    let _ = writeln!(
        out,
        "  HTTP   http://{http}  POST /v1/check /v1/peek /v1/reset; GET /v1/policies /metrics /healthz /readyz"
    );
    let _ = writeln!(
        out,
        "  gRPC   {grpc}  envoy.service.ratelimit.v3.RateLimitService, grpc.health.v1.Health"
    );
    let store = match config.store.kind {
        StoreKind::Memory => "memory (this process only)".to_owned(),
        StoreKind::Redis | StoreKind::RedisCluster | StoreKind::RedisSentinel => format!(
            "{} {} (on failure: {:?})",
            app.store().get_ref().describe(),
            // Without passwords: the banner is logged.
            config
                .store
                .urls
                .iter()
                .map(|url| tollgate_redis::store::redact(url))
                .collect::<Vec<_>>()
                .join(", "),
            config.store.on_failure
        ),
    };
    let _ = writeln!(out, "  store  {store}");
    let _ = match &app.source().config {
        Some(path) => writeln!(
            out,
            "  config {} (reloaded on change and on SIGHUP)",
            path.display()
        ),
        None => writeln!(
            out,
            "  config built-in demo (use --config FILE for your own)"
        ),
    };
    for (name, policy) in &config.policies {
        let _ = writeln!(out, "  policy {name}: {policy}");
    }
    let mut domains: Vec<&str> = config.domains.keys().map(String::as_str).collect();
    domains.sort_unstable();
    if !domains.is_empty() {
        let _ = writeln!(out, "  envoy domains: {}", domains.join(", "));
    }
    if let Some(name) = config.policies.keys().next() {
        let _ = write!(
            out,
            "  try:   curl -s -XPOST http://{http}/v1/check -d '{{\"policy\":\"{name}\",\"key\":\"me\"}}'"
        );
    }
    out
}

/// Runs `tollgate check`: loads and validates the configuration, and
/// returns a summary of what it defines.
///
/// # Errors
/// The first [`ConfigError`], naming file, line and field.
pub fn run_check(args: &CheckArgs) -> Result<String, ConfigError> {
    let source = ConfigSource {
        config: Some(args.config.clone()),
        envoy: args.envoy_config.clone(),
    };
    let config: Config = source.load()?;
    let inline = config
        .domains
        .values()
        .map(|d| d.inline_policies().count())
        .sum::<usize>();
    Ok(format!(
        "{}: ok ({} policies, {} envoy domains with {} inline limits, store {:?})",
        args.config.display(),
        config.policies.len(),
        config.domains.len(),
        inline,
        config.store.kind
    ))
}
