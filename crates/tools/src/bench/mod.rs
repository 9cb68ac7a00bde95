//! `tollgate bench`: load against a target, then latency, outcomes and
//! accuracy.
//!
//! - [`load`]: phases (open model: arrivals on a schedule; closed model:
//!   a fixed number of workers), Artillery YAML, key choice;
//! - [`target`]: the targets (`direct`, `http`, `api`, `grpc`) behind one
//!   `send`;
//! - [`report`]: the collector, the summary, and the allowance a policy
//!   grants one key over the run, against which admissions are checked.
//!
//! In the open model requests start on schedule whatever the latency (each
//! is its own task); when `--max-in-flight` requests are outstanding a new
//! one waits for a slot, and its latency is then measured from the instant
//! it was *due*, so a target that falls behind shows its backlog as latency
//! instead of silently receiving less load (coordinated omission).

pub mod load;
pub mod report;
pub mod target;

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tollgate::Policy;

use load::{KeyPicker, LoadArgs, Model, Plan};
use report::{Collector, RedisCommands, Summary};
use target::Client;

/// Why a bench could not run. A target that answers with errors is not
/// one: errors are counted in the summary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Invalid arguments.
    #[error("{0}")]
    Args(String),
    /// The policy text is invalid.
    #[error("policy: {0}")]
    Policy(#[from] tollgate::PolicyError),
    /// The target is not on this machine and `--allow-remote` was not given.
    #[error("refusing non-loopback target `{0}` (pass --allow-remote to benchmark it)")]
    Remote(String),
    /// The target (or its store) could not be set up.
    #[error("connect: {0}")]
    Connect(String),
    /// Writing the summary failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// Command line of `tollgate bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(about = "Drive load at a target and report throughput, latency and accuracy")]
pub struct BenchArgs {
    /// What to benchmark.
    #[command(subcommand)]
    pub target: TargetArgs,
}

/// The target of a bench.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TargetArgs {
    /// The library in this process, on the memory store or Redis.
    Direct {
        /// `memory`, `redis://host:port[/db]`, `rediss://...`, or
        /// `redis-cluster://host:port,host:port`.
        #[arg(long, default_value = "memory")]
        store: String,
        /// Limiter instances, each with its own store connection (a fleet
        /// in one process); requests go to them in turn. With `memory` they
        /// share one store.
        #[arg(long, default_value_t = 1)]
        instances: usize,
        /// Connections from each instance to a standalone Redis, used in
        /// turn (the server's `store.connections`); default one per core,
        /// at most 4. A Cluster keeps one per node.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=tollgate_redis::pool::MAX_CONNECTIONS as i64), value_name = "N")]
        connections: Option<u16>,
        /// Lease the policy: at most this many units per lease (with
        /// `--lease-ttl`). Each instance then checks through the resilience
        /// layer, where leases are held and spent.
        #[arg(long, requires = "lease_ttl", value_name = "UNITS")]
        lease_max: Option<u64>,
        /// The longest a lease lives (with `--lease-max`), e.g. `100ms`.
        #[arg(long, requires = "lease_max", value_parser = crate::parse_duration, value_name = "DURATION")]
        lease_ttl: Option<Duration>,
        /// Load options.
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Any HTTP endpoint: counts 2xx (allowed), 429 (denied), other
    /// statuses and errors.
    Http {
        /// The URL; without it, `config.target` and the first request of the
        /// `--phases-file`'s first scenario.
        url: Option<String>,
        /// The method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Send the key in this header (e.g. `x-api-key`, or
        /// `x-forwarded-for` with keys as addresses behind a trusted proxy);
        /// without it every request is one key.
        #[arg(long)]
        key_header: Option<String>,
        /// Load options.
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The server's JSON API (`POST /v1/check`).
    Api {
        /// The server (`http://127.0.0.1:8080`) or the full `/v1/check` URL.
        url: String,
        /// The server's name of the policy to check.
        #[arg(long, default_value = "default")]
        policy_name: String,
        /// Load options.
        #[command(flatten)]
        load: LoadArgs,
    },
    /// An Envoy rate limit service (RLS v3 `ShouldRateLimit`, e.g. the
    /// server's gRPC port): OK is allowed, OVER_LIMIT denied.
    Grpc {
        /// The server: `127.0.0.1:8081` or `http://127.0.0.1:8081`.
        addr: String,
        /// The request's domain.
        #[arg(long, default_value = "edge")]
        domain: String,
        /// The key of the request's one descriptor entry; its value is the
        /// bench key, and `hits_addend` the cost.
        #[arg(long, default_value = "remote_address")]
        descriptor_key: String,
        /// Load options.
        #[command(flatten)]
        load: LoadArgs,
    },
}

impl TargetArgs {
    fn load(&self) -> &LoadArgs {
        match self {
            TargetArgs::Direct { load, .. }
            | TargetArgs::Http { load, .. }
            | TargetArgs::Api { load, .. }
            | TargetArgs::Grpc { load, .. } => load,
        }
    }
}

/// What the run needs besides the plan: the target, a description, and
/// the policy admissions are checked against.
struct Setup {
    client: Client,
    description: String,
    policy: Option<Policy>,
}

async fn setup(args: &TargetArgs, artillery: &load::ArtilleryTarget) -> Result<Setup, BenchError> {
    let load = args.load();
    let expected = load
        .policy
        .as_deref()
        .map(str::parse::<Policy>)
        .transpose()?;
    match args {
        TargetArgs::Direct {
            store,
            instances,
            connections,
            lease_max,
            lease_ttl,
            ..
        } => {
            target::check_store_loopback(store, load.allow_remote).await?;
            if connections.is_some() && (store == "memory" || store.starts_with("redis-cluster://"))
            {
                return Err(BenchError::Args(format!(
                    "--connections is {}",
                    tollgate_redis::pool::CONNECTIONS_APPLY_TO
                )));
            }
            let mut policy = match expected {
                Some(p) => p,
                None => "gcra 1000/1s".parse()?,
            };
            let mut description = format!("direct {store} x{instances}, policy {policy}");
            if let (Some(max), Some(ttl)) = (lease_max, lease_ttl) {
                policy = policy.with_lease(tollgate::Lease::new(*max, *ttl)?)?;
                let _ = write!(description, ", lease max {max} ttl {ttl:?}");
            }
            let connections = connections.map(usize::from);
            let client =
                Client::direct(store, *instances, connections, policy, load.timeout).await?;
            Ok(Setup {
                client,
                description,
                policy: Some(policy),
            })
        }
        TargetArgs::Http {
            url,
            method,
            key_header,
            ..
        } => {
            let (method, url) = match (url, artillery) {
                (Some(url), _) => (method.clone(), url.clone()),
                (
                    None,
                    load::ArtilleryTarget {
                        target: Some(base),
                        request,
                    },
                ) => match request {
                    Some((m, path)) => (m.clone(), format!("{}{path}", base.trim_end_matches('/'))),
                    None => (method.clone(), base.clone()),
                },
                (None, _) => {
                    return Err(BenchError::Args(
                        "give a URL, or a --phases-file with config.target".into(),
                    ));
                }
            };
            let url = parse_url(&url, load.allow_remote).await?;
            let method = reqwest::Method::from_bytes(method.as_bytes())
                .map_err(|_| BenchError::Args(format!("invalid method `{method}`")))?;
            let key_header = key_header
                .as_deref()
                .map(|h| reqwest::header::HeaderName::from_bytes(h.as_bytes()))
                .transpose()
                .map_err(|e| BenchError::Args(format!("invalid --key-header: {e}")))?;
            Ok(Setup {
                description: format!("http {method} {url}"),
                client: Client::Http {
                    client: target::http_client(load.timeout)?,
                    method,
                    url,
                    key_header,
                },
                policy: expected,
            })
        }
        TargetArgs::Api {
            url, policy_name, ..
        } => {
            let mut url = parse_url(url, load.allow_remote).await?;
            if url.path() == "/" || url.path().is_empty() {
                url.set_path("/v1/check");
            }
            Ok(Setup {
                description: format!("api {url}, policy `{policy_name}`"),
                client: Client::Api {
                    client: target::http_client(load.timeout)?,
                    url,
                    policy: policy_name.clone(),
                },
                policy: expected,
            })
        }
        TargetArgs::Grpc {
            addr,
            domain,
            descriptor_key,
            ..
        } => {
            if u32::try_from(load.cost).is_err() {
                return Err(BenchError::Args(format!(
                    "--cost {} does not fit gRPC's hits_addend (at most {})",
                    load.cost,
                    u32::MAX
                )));
            }
            if domain.is_empty() {
                return Err(BenchError::Args("--domain must not be empty".into()));
            }
            let uri = grpc_uri(addr, load.allow_remote).await?;
            Ok(Setup {
                description: format!(
                    "grpc {uri}, domain `{domain}`, descriptor key `{descriptor_key}`"
                ),
                client: Client::grpc(&uri, load.timeout, domain.clone(), descriptor_key.clone())?,
                policy: expected,
            })
        }
    }
}

/// `host:port` or `http://host:port` as the URI tonic connects to, after
/// the loopback check. TLS (`https://`) is not supported.
async fn grpc_uri(text: &str, allow_remote: bool) -> Result<String, BenchError> {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let invalid = |why: &str| BenchError::Args(format!("invalid gRPC address `{text}`: {why}"));
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(invalid("only plaintext (http://) is supported"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(invalid("expected host:port"));
    }
    let host = url.host_str().ok_or_else(|| invalid("no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    target::check_loopback(host, port, allow_remote).await?;
    Ok(format!("http://{host}:{port}"))
}

async fn parse_url(text: &str, allow_remote: bool) -> Result<reqwest::Url, BenchError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| BenchError::Args(format!("invalid URL `{text}`: {e}")))?;
    if url.scheme() != "http" {
        return Err(BenchError::Args(format!(
            "`{text}`: only http:// URLs are supported"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| BenchError::Args(format!("URL `{text}` has no host")))?;
    target::check_loopback(
        host,
        url.port_or_known_default().unwrap_or(80),
        allow_remote,
    )
    .await?;
    Ok(url)
}

/// State shared by every request of a run.
struct Shared {
    client: Client,
    collector: Mutex<Collector>,
    /// Requests started, for `--max-requests` and round robin.
    started: AtomicU64,
    /// Requests finished, for the progress line.
    finished: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    failed: AtomicU64,
    key_prefix: String,
    cost: u64,
    max_requests: u64,
    timeout: Duration,
}

impl Shared {
    /// Claims the next request number, or `None` once `--max-requests` is reached.
    fn claim(&self) -> Option<u64> {
        let seq = self.started.fetch_add(1, Ordering::Relaxed);
        (seq < self.max_requests).then_some(seq)
    }

    async fn request(&self, seq: u64, key: u32, since: Instant) {
        let name = format!("{}{key}", self.key_prefix);
        let outcome =
            match tokio::time::timeout(self.timeout, self.client.send(seq, &name, self.cost)).await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    report::RequestResult::Error(format!("timed out after {:?}", self.timeout))
                }
            };
        let latency = since.elapsed();
        let counter = match outcome {
            report::RequestResult::Allowed => &self.allowed,
            report::RequestResult::Denied => &self.denied,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.collector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(key, outcome, latency);
    }
}

/// Runs the bench and returns its summary, printing nothing but the
/// progress bar (on a terminal).
///
/// # Errors
/// [`BenchError`] for invalid arguments or a target that cannot be set up.
pub async fn bench(args: &BenchArgs) -> Result<Summary, BenchError> {
    let load = args.target.load();
    let (plan, artillery) = load.plan()?;
    let Setup {
        client,
        description,
        policy,
    } = setup(&args.target, &artillery).await?;
    let key_prefix = load.key_prefix.clone().unwrap_or_else(|| {
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("bench-{run}-")
    });
    let shared = Arc::new(Shared {
        client,
        collector: Mutex::new(Collector::new()),
        started: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        allowed: AtomicU64::new(0),
        denied: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        key_prefix: key_prefix.clone(),
        cost: load.cost,
        max_requests: load.max_requests.unwrap_or(u64::MAX),
        timeout: load.timeout,
    });
    // `direct` on Redis: the commands Redis runs for the run's requests
    // (connections are set up by now).
    let redis_store = match &args.target {
        TargetArgs::Direct { store, .. } if store != "memory" => Some(store.as_str()),
        _ => None,
    };
    let commands_before = match redis_store {
        Some(store) => target::redis_counts(store).await?,
        None => None,
    };
    let unix_start = unix_us();
    let start = Instant::now();
    let progress = Progress::start(&shared, plan.duration);
    drive(&shared, &plan, load).await;
    let elapsed = start.elapsed();
    let commands_after = match redis_store {
        Some(store) => target::redis_counts(store).await?,
        None => None,
    };
    let unix_end = unix_start + tollgate::clock::micros(elapsed);
    if let Some(progress) = progress {
        progress.finish().await;
    }
    let collector = shared
        .collector
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut summary = Summary::new(
        description,
        plan.phases.iter().map(ToString::to_string).collect(),
        &collector,
        elapsed,
        (unix_start, unix_end),
        policy.as_ref().map(|p| (p, load.cost)),
        &|key| format!("{key_prefix}{key}"),
    );
    summary.leases = shared.client.lease_report();
    if let (Some(before), Some(after)) = (commands_before, commands_after) {
        summary.redis = Some(RedisCommands::new(
            after.commands.saturating_sub(before.commands),
            after.script_calls.saturating_sub(before.script_calls),
            summary.allowed,
        ));
    }
    Ok(summary)
}

fn unix_us() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    tollgate::clock::micros(now)
}

/// Runs the phases in order; returns when every request has finished.
async fn drive(shared: &Arc<Shared>, plan: &Plan, load: &LoadArgs) {
    let run_start = Instant::now();
    let deadline = run_start + plan.duration;
    let mut keys = KeyPicker::new(
        load.keys,
        load.key_distribution,
        load.zipf_exponent,
        load.seed,
    );
    let in_flight = Arc::new(Semaphore::new(load.max_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut phase_start = run_start;
    'phases: for phase in &plan.phases {
        let phase_end = (phase_start + phase.duration).min(deadline);
        match phase.model {
            Model::Open { from, to } => {
                for i in 0.. {
                    let Some(offset) = load::arrival_offset(i, from, to, phase.duration) else {
                        break;
                    };
                    let due = phase_start + offset;
                    if due >= phase_end {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let Some(seq) = shared.claim() else {
                        break 'phases;
                    };
                    let key = keys.next_key();
                    // Latency runs from the actual start, unless the request
                    // had to wait for a slot (the target fell behind): then
                    // from when it was due, so the backlog shows as latency.
                    // (Not from `due` always: the timer wakes up to a
                    // millisecond late, and that lateness is ours.)
                    let (permit, since) = match Arc::clone(&in_flight).try_acquire_owned() {
                        Ok(permit) => (permit, Instant::now()),
                        Err(_) => match Arc::clone(&in_flight).acquire_owned().await {
                            Ok(permit) => (permit, due),
                            Err(_) => break 'phases,
                        },
                    };
                    let shared = Arc::clone(shared);
                    tasks.spawn(async move {
                        shared.request(seq, key, since).await;
                        drop(permit);
                    });
                    // Reap finished tasks so the set stays small.
                    while tasks.try_join_next().is_some() {}
                }
            }
            Model::Closed { workers } => {
                for worker in 0..workers {
                    let shared = Arc::clone(shared);
                    let seed = load
                        .seed
                        .wrapping_add(worker as u64 + 1)
                        .wrapping_mul(0x9E37_79B9);
                    let mut keys =
                        KeyPicker::new(load.keys, load.key_distribution, load.zipf_exponent, seed);
                    tasks.spawn(async move {
                        while Instant::now() < phase_end {
                            let Some(seq) = shared.claim() else { break };
                            let key = keys.next_key();
                            shared.request(seq, key, Instant::now()).await;
                            // A check answered at once (the memory store, a
                            // lease held) never makes this loop wait, so it
                            // would never give its thread back: the tasks
                            // woken meanwhile on that thread (a caller that
                            // waited for another's lease call) would wait
                            // for the phase to end. Spending coop budget
                            // yields every so often.
                            tokio::task::coop::consume_budget().await;
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            }
        }
        if shared.started.load(Ordering::Relaxed) >= shared.max_requests {
            break;
        }
        phase_start = phase_end;
        tokio::time::sleep_until(phase_start.into()).await;
        if phase_start >= deadline {
            break;
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The live progress bar: on stderr, only when stderr is a terminal.
struct Progress {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(shared: &Arc<Shared>, duration: Duration) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        let ticker = {
            let bar = bar.clone();
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                let start = Instant::now();
                // Finished counts of the last second, for the current rate.
                let mut window = std::collections::VecDeque::from([(start, 0u64)]);
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let done = shared.finished.load(Ordering::Relaxed);
                    window.push_back((now, done));
                    while window.len() > 2 && now - window[0].0 > Duration::from_secs(1) {
                        window.pop_front();
                    }
                    let (then, before) = window[0];
                    let rate = (done - before) as f64 / (now - then).as_secs_f64().max(1e-3);
                    bar.set_position(start.elapsed().as_millis() as u64);
                    bar.set_message(format!(
                        "{rate:.0}/s  requests {done}  allowed {}  denied {}  errors {}",
                        shared.allowed.load(Ordering::Relaxed),
                        shared.denied.load(Ordering::Relaxed),
                        shared.failed.load(Ordering::Relaxed),
                    ));
                }
            })
        };
        Some(Progress { bar, ticker })
    }

    async fn finish(self) {
        self.ticker.abort();
        let _ = self.ticker.await;
        self.bar.finish_and_clear();
    }
}

/// Runs `tollgate bench`: prints the summary (or JSON) to stdout.
///
/// # Errors
/// As [`bench`](fn@bench).
pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    let summary = bench(args).await?;
    let text = if args.target.load().json {
        serde_json::to_string_pretty(&summary).map_err(std::io::Error::other)? + "\n"
    } else {
        summary.text()
    };
    use std::io::Write as _;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(summary)
}
