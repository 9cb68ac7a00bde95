//! The `serve` and `check` subcommands: their arguments and what they do,
//! so the `tollgate` binary only parses flags and passes a shutdown signal.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::{App, StartError};
use crate::config::env::{EnvoyEnvironment, LogSettings, TRIGGERS};
use crate::config::{Config, ConfigError, ConfigSource, GENERATED_NAME, StoreKind};
use crate::listen::{GrpcListener, ListenAddr};
use crate::server::{Listeners, ServeError, ServerOptions, run};

/// `tollgate serve`: run the HTTP JSON API and Envoy RLS gRPC.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// The configuration file (YAML). Without it: the configuration that
    /// envoyproxy/ratelimit's environment variables describe when any is
    /// set (`RUNTIME_ROOT`, `REDIS_URL`, ...: docs/ENVOY.md), else the
    /// built-in demo configuration on the memory store.
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// envoyproxy/ratelimit configuration, unchanged: a file, or a
    /// directory of files (one domain each, at any depth).
    #[arg(long, value_name = "DIR|FILE")]
    pub envoy_config: Option<PathBuf>,
    /// Skip the envoy directory's entries whose name starts with `.`
    /// (envoyproxy/ratelimit's RUNTIME_IGNOREDOTFILES).
    #[arg(long)]
    pub envoy_ignore_dot_files: bool,
    /// Merge envoy files that name the same domain
    /// (envoyproxy/ratelimit's MERGE_DOMAIN_CONFIG).
    #[arg(long)]
    pub envoy_merge_domains: bool,
    /// Listen for HTTP on ADDR (overrides `server.http`).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Listen for gRPC on ADDR, `IP:PORT` or `unix:PATH` (overrides
    /// `server.grpc`).
    #[arg(long, value_name = "ADDR")]
    pub grpc: Option<ListenAddr>,
}

/// `tollgate check`: validate a configuration and exit.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The configuration file (YAML). Without it: the envoyproxy/ratelimit
    /// files of `--envoy-config` alone, or the configuration that
    /// envoyproxy/ratelimit's environment variables describe, printed.
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// envoyproxy/ratelimit configuration to validate (with `--config`, or
    /// alone).
    #[arg(long, value_name = "DIR|FILE")]
    pub envoy_config: Option<PathBuf>,
    /// As `serve --envoy-ignore-dot-files`.
    #[arg(long)]
    pub envoy_ignore_dot_files: bool,
    /// As `serve --envoy-merge-domains`.
    #[arg(long)]
    pub envoy_merge_domains: bool,
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
        addr: ListenAddr,
        /// The reason.
        source: std::io::Error,
    },
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// An envoyproxy/ratelimit environment variable has an invalid value.
    #[error(transparent)]
    Environment(#[from] crate::config::env::EnvError),
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Does nothing
/// when a subscriber is already installed.
pub fn init_logging() {
    init_logging_with(None);
}

/// Logs to stderr. `RUST_LOG` wins when set; otherwise the level is
/// envoyproxy/ratelimit's `LOG_LEVEL` when `envoy` is given (default
/// `warn`, as there), else `info`. `LOG_FORMAT=json` writes one JSON object
/// per line. Does nothing when a subscriber is already installed.
pub fn init_logging_with(envoy: Option<&LogSettings>) {
    let default = envoy.map_or("info", |log| log.level);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if envoy.is_some_and(|log| log.json) {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// envoyproxy/ratelimit's variables that are set, when a tollgate
/// configuration file is given too (they are then ignored).
fn envoy_variables_set() -> Vec<&'static str> {
    TRIGGERS
        .iter()
        .copied()
        .filter(|name| std::env::var_os(name).is_some())
        .collect()
}

/// Where `serve` and `check` read their configuration: the file when one is
/// given (envoyproxy/ratelimit's variables are then ignored, with a warning
/// returned), else the environment's configuration when it has
/// envoyproxy/ratelimit's variables, else `None`.
fn environment(
    config: Option<&PathBuf>,
) -> Result<(Option<EnvoyEnvironment>, Vec<String>), CliError> {
    if config.is_some() {
        let set = envoy_variables_set();
        let warnings = if set.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "a configuration file is given (--config / TOLLGATE_CONFIG): envoyproxy/ratelimit's variables are ignored: {}",
                set.join(", ")
            )]
        };
        return Ok((None, warnings));
    }
    Ok((EnvoyEnvironment::from_process()?, Vec::new()))
}

/// Runs `tollgate serve` until `shutdown` completes.
///
/// # Errors
/// [`CliError`]: invalid configuration, unreachable store, address in use.
pub async fn run_serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let (environment, mut warnings) = match environment(args.config.as_ref()) {
        Ok(found) => found,
        Err(error) => {
            init_logging();
            return Err(error);
        }
    };
    init_logging_with(environment.as_ref().map(|e| &e.log));
    let source = match environment {
        Some(environment) => {
            tracing::info!(
                variables = %environment.variables.join(","),
                "configured from envoyproxy/ratelimit's environment variables"
            );
            warnings.extend(environment.warnings);
            let mut source = environment.source;
            if args.envoy_config.is_some() {
                source.envoy = args.envoy_config;
            }
            source
        }
        None => ConfigSource {
            config: args.config,
            envoy: args.envoy_config,
            ..ConfigSource::default()
        },
    };
    let source = ConfigSource {
        ignore_dot_files: source.ignore_dot_files || args.envoy_ignore_dot_files,
        merge_domains: source.merge_domains || args.envoy_merge_domains,
        ..source
    };
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let app = Arc::new(App::start(source).await?);
    let loaded = app.current();
    let http_addr = args.http.unwrap_or(loaded.config.server.http);
    let grpc_addr = args
        .grpc
        .unwrap_or_else(|| loaded.config.server.grpc.clone());
    let http = TcpListener::bind(http_addr)
        .await
        .map_err(|source| CliError::Bind {
            addr: http_addr.into(),
            source,
        })?;
    let grpc = GrpcListener::bind(&grpc_addr)
        .await
        .map_err(|source| CliError::Bind {
            addr: grpc_addr.clone(),
            source,
        })?;
    let http_addr = http.local_addr().unwrap_or(http_addr);
    let grpc_addr = grpc.local_addr().unwrap_or(grpc_addr);
    println!("{}", banner(&app, http_addr, &grpc_addr));
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
fn banner(app: &App, http: SocketAddr, grpc: &ListenAddr) -> String {
    let loaded = app.current();
    let config = &loaded.config;
    let mut out = String::new();
    let _ = writeln!(out, "tollgate serving");
    let _ = writeln!(
        out,
        "  HTTP   http://{http}  POST /v1/check /v1/peek /v1/reserve /v1/settle /v1/cancel /v1/reset /json; GET / (dashboard) /v1/policies /v1/stats /metrics /healthz /readyz /healthcheck /rlconfig; PUT GET DELETE /v1/overrides"
    );
    let _ = writeln!(
        out,
        "  gRPC   {grpc}  envoy.service.ratelimit.v3.RateLimitService, grpc.health.v1.Health"
    );
    if let Some(metrics) = &config.server.metrics {
        let _ = writeln!(
            out,
            "  metrics http://{}{}  Prometheus (also GET /metrics on HTTP)",
            metrics.addr, metrics.path
        );
    }
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
    if let (Some(settings), Some(per_second)) = (&config.store.per_second, app.per_second_store()) {
        let _ = writeln!(
            out,
            "  store  per_second: {} {} (policies whose period is 1s; on failure: {:?})",
            per_second.get_ref().describe(),
            settings
                .urls
                .iter()
                .map(|url| tollgate_redis::store::redact(url))
                .collect::<Vec<_>>()
                .join(", "),
            settings.on_failure
        );
    }
    let source = app.source();
    let _ = match (&source.config, &source.generated, &source.envoy) {
        (Some(path), _, _) => writeln!(
            out,
            "  config {} (reloaded on change and on SIGHUP)",
            path.display()
        ),
        (None, Some(_), Some(directory)) => writeln!(
            out,
            "  config envoyproxy/ratelimit's environment variables; files in {} (reloaded on change and on SIGHUP)",
            directory.display()
        ),
        (None, _, Some(directory)) => writeln!(
            out,
            "  config envoyproxy/ratelimit files in {} (reloaded on change and on SIGHUP)",
            directory.display()
        ),
        (None, _, None) => writeln!(
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

/// Runs `tollgate check`: loads and validates the configuration, logs its
/// warnings to stderr, and returns a summary of what it defines. Without
/// `--config` or `--envoy-config`, the configuration envoyproxy/ratelimit's
/// variables give: its warnings and document are printed to stdout first.
///
/// # Errors
/// The first [`ConfigError`], naming file, line and field.
pub fn run_check(args: &CheckArgs) -> Result<String, ConfigError> {
    // Warnings (what an envoyproxy/ratelimit file holds that is ignored)
    // go to stderr.
    init_logging();
    let as_config_error = |error: CliError| ConfigError::Invalid {
        file: GENERATED_NAME.to_owned(),
        line: None,
        column: None,
        message: error.to_string(),
    };
    let (environment, warnings) = environment(args.config.as_ref()).map_err(as_config_error)?;
    let mut out = String::new();
    for warning in &warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    let (source, name) = match environment {
        Some(environment) => {
            for warning in &environment.warnings {
                let _ = writeln!(out, "warning: {warning}");
            }
            let _ = writeln!(
                out,
                "envoyproxy/ratelimit environment variables: {}",
                environment.variables.join(", ")
            );
            let _ = writeln!(out, "{}", environment.redacted_document().trim_end());
            // Printed now, so the document is shown even when loading
            // what it names fails.
            print!("{out}");
            out.clear();
            let mut source = environment.source;
            if args.envoy_config.is_some() {
                source.envoy.clone_from(&args.envoy_config);
            }
            let name = format!(
                "{GENERATED_NAME} + {}",
                source
                    .envoy
                    .as_ref()
                    .map_or_else(String::new, |d| d.display().to_string())
            );
            (source, name)
        }
        None => {
            let Some(path) = args.config.as_ref().or(args.envoy_config.as_ref()) else {
                return Err(ConfigError::Invalid {
                    file: "<none>".to_owned(),
                    line: None,
                    column: None,
                    message: "no configuration: give --config FILE (or TOLLGATE_CONFIG) or --envoy-config DIR|FILE, or set envoyproxy/ratelimit's variables (RUNTIME_ROOT, REDIS_URL, ...)".to_owned(),
                });
            };
            let name = path.display().to_string();
            (
                ConfigSource {
                    config: args.config.clone(),
                    envoy: args.envoy_config.clone(),
                    ..ConfigSource::default()
                },
                name,
            )
        }
    };
    let source = ConfigSource {
        ignore_dot_files: source.ignore_dot_files || args.envoy_ignore_dot_files,
        merge_domains: source.merge_domains || args.envoy_merge_domains,
        ..source
    };
    let config: Config = source.load()?;
    let inline = config
        .domains
        .values()
        .map(|d| d.inline_policies().count())
        .sum::<usize>();
    let _ = write!(
        out,
        "{name}: ok ({} policies, {} envoy domains with {} inline limits, store {:?})",
        config.policies.len(),
        config.domains.len(),
        inline,
        config.store.kind
    );
    Ok(out)
}
