//! The targets a bench drives, behind one `send(key, cost)`.

use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate::resilience::{FailureMode, ResilienceOptions, Resilient};
use tollgate::{Limiter, MemoryStore, Policy};
use tollgate_redis::{RedisOptions, RedisStore};

use super::BenchError;
use super::report::{LeaseReport, RequestResult};

/// The name of the policy a `direct` bench configures.
pub const DIRECT_POLICY: &str = "bench";

/// A connected target.
#[derive(Debug)]
pub enum Client {
    /// Limiter instances in this process, used round robin.
    Direct(Vec<DirectLimiter>),
    /// Any HTTP endpoint: 2xx is allowed, 429 denied.
    Http {
        /// The client (one connection pool).
        client: reqwest::Client,
        /// The method.
        method: reqwest::Method,
        /// The URL.
        url: reqwest::Url,
        /// A header carrying the key, if any.
        key_header: Option<reqwest::header::HeaderName>,
    },
    /// The server's JSON API.
    Api {
        /// The client (one connection pool).
        client: reqwest::Client,
        /// The `/v1/check` URL.
        url: reqwest::Url,
        /// The server's name of the policy to check.
        policy: String,
    },
    /// Envoy RLS v3 (`ShouldRateLimit`): one descriptor entry per request.
    Grpc {
        /// The client (one HTTP/2 connection, multiplexed).
        client: RateLimitServiceClient<tonic::transport::Channel>,
        /// The request's `domain`.
        domain: String,
        /// The key of the descriptor's one entry (its value is the bench key).
        descriptor_key: String,
    },
}

/// One limiter instance of a `direct` bench.
#[derive(Debug, Clone)]
pub enum DirectLimiter {
    /// On the memory store (every instance shares one store: one process).
    Memory(Limiter<MemoryStore>),
    /// On its own Redis connection.
    Redis(Limiter<RedisStore>),
    /// A policy that leases, on the memory store: each instance has its own
    /// resilience layer (where leases are held and spent) over the one
    /// shared store.
    LeasedMemory(Limiter<Resilient<MemoryStore>>),
    /// A policy that leases, on its own Redis connection and resilience
    /// layer, subscribed to the store's invalidation feed as a server's is.
    LeasedRedis(Limiter<Resilient<RedisStore>>),
}

impl DirectLimiter {
    /// What this instance's leasing layer did; `None` without leases.
    fn lease_stats(&self) -> Option<(tollgate::resilience::LeaseStats, u64)> {
        let stats = match self {
            DirectLimiter::Memory(_) | DirectLimiter::Redis(_) => return None,
            DirectLimiter::LeasedMemory(l) => l.store().stats(),
            DirectLimiter::LeasedRedis(l) => l.store().stats(),
        };
        Some((stats.leases, stats.calls))
    }
}

/// The resilience layer of a leasing `direct` bench: the defaults (deny
/// cache on), except that a store failure is an error, so that it is
/// counted as one rather than turned into a degraded decision, and that a
/// store call may take the bench's per-request `timeout` (a saturated
/// machine must show up as latency, not as calls abandoned after the
/// default 50 ms and a breaker that opens on them).
fn lease_options(timeout: Duration) -> ResilienceOptions {
    ResilienceOptions::default()
        .failure_mode(FailureMode::Error)
        .timeout(timeout)
}

impl Client {
    /// `direct`: `instances` limiters with `policy`, over `store`
    /// (`memory`, `redis://...`, `rediss://...` or
    /// `redis-cluster://host:port,host:port`), each with `connections` to
    /// a standalone Redis (`None`: the library's default). A policy that leases
    /// ([`Policy::lease`]) is checked through a [`Resilient`] store per
    /// instance, where leases are held and spent, with `timeout` on every
    /// store call.
    ///
    /// # Errors
    /// [`BenchError::Connect`] when Redis cannot be reached.
    pub async fn direct(
        store: &str,
        instances: usize,
        connections: Option<usize>,
        policy: Policy,
        timeout: Duration,
    ) -> Result<Self, BenchError> {
        let instances = instances.max(1);
        let mut limiters = Vec::with_capacity(instances);
        let leases = policy.lease().is_some();
        if store == "memory" {
            let shared = MemoryStore::new();
            for _ in 0..instances {
                limiters.push(if leases {
                    let store = Resilient::new(shared.clone(), lease_options(timeout));
                    DirectLimiter::LeasedMemory(
                        Limiter::builder(store)
                            .policy(DIRECT_POLICY, policy)
                            .build(),
                    )
                } else {
                    DirectLimiter::Memory(
                        Limiter::builder(shared.clone())
                            .policy(DIRECT_POLICY, policy)
                            .build(),
                    )
                });
            }
        } else {
            let options = || {
                let options = RedisOptions::default().prefix("tollgate-bench");
                match connections {
                    Some(n) => options.connections(n),
                    None => options,
                }
            };
            for _ in 0..instances {
                let redis = if let Some(seeds) = store.strip_prefix("redis-cluster://") {
                    let seeds: Vec<String> =
                        seeds.split(',').map(|s| format!("redis://{s}")).collect();
                    RedisStore::connect_cluster(&seeds, options()).await
                } else {
                    RedisStore::connect(store, options()).await
                }
                .map_err(|e| BenchError::Connect(e.to_string()))?;
                limiters.push(if leases {
                    let store = Resilient::with_invalidations(redis, lease_options(timeout));
                    DirectLimiter::LeasedRedis(
                        Limiter::builder(store)
                            .policy(DIRECT_POLICY, policy)
                            .build(),
                    )
                } else {
                    DirectLimiter::Redis(
                        Limiter::builder(redis)
                            .policy(DIRECT_POLICY, policy)
                            .build(),
                    )
                });
            }
        }
        Ok(Client::Direct(limiters))
    }

    /// `direct` with a policy that leases: what the instances' leasing
    /// layers did, summed; `None` for any other client.
    pub fn lease_report(&self) -> Option<LeaseReport> {
        let Client::Direct(limiters) = self else {
            return None;
        };
        limiters.iter().filter_map(DirectLimiter::lease_stats).fold(
            None,
            |sum: Option<LeaseReport>, (stats, calls)| {
                let sum = sum.unwrap_or_default();
                Some(LeaseReport {
                    taken: sum.taken + stats.taken,
                    units: sum.units + stats.units,
                    returned: sum.returned + stats.returned,
                    forfeited: sum.forfeited + stats.forfeited,
                    keys: sum.keys + stats.keys,
                    store_calls: sum.store_calls + calls,
                })
            },
        )
    }

    /// Sends request number `seq` for `key`.
    pub async fn send(&self, seq: u64, key: &str, cost: u64) -> RequestResult {
        match self {
            Client::Direct(limiters) => {
                let limiter = &limiters[(seq % limiters.len() as u64) as usize];
                let decision = match limiter {
                    DirectLimiter::Memory(l) => l.check(DIRECT_POLICY, key, cost).await,
                    DirectLimiter::Redis(l) => l.check(DIRECT_POLICY, key, cost).await,
                    DirectLimiter::LeasedMemory(l) => l.check(DIRECT_POLICY, key, cost).await,
                    DirectLimiter::LeasedRedis(l) => l.check(DIRECT_POLICY, key, cost).await,
                };
                match decision {
                    Ok(d) if d.allowed => RequestResult::Allowed,
                    Ok(_) => RequestResult::Denied,
                    Err(e) => RequestResult::Error(e.to_string()),
                }
            }
            Client::Http {
                client,
                method,
                url,
                key_header,
            } => {
                let mut request = client.request(method.clone(), url.clone());
                if let Some(header) = key_header {
                    request = request.header(header.clone(), key);
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        // Read the body so the connection returns to the pool.
                        let _ = response.bytes().await;
                        http_outcome(status.as_u16())
                    }
                    Err(e) => RequestResult::Error(error_text(&e)),
                }
            }
            Client::Api {
                client,
                url,
                policy,
            } => {
                let body = serde_json::json!({ "policy": policy, "key": key, "cost": cost });
                match client.post(url.clone()).json(&body).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.json::<serde_json::Value>().await {
                            Ok(value) if (200..300).contains(&status) || status == 429 => {
                                match value.get("allowed").and_then(serde_json::Value::as_bool) {
                                    Some(true) => RequestResult::Allowed,
                                    Some(false) => RequestResult::Denied,
                                    None => http_outcome(status),
                                }
                            }
                            _ => http_outcome(status),
                        }
                    }
                    Err(e) => RequestResult::Error(error_text(&e)),
                }
            }
            Client::Grpc {
                client,
                domain,
                descriptor_key,
            } => {
                let request = RateLimitRequest {
                    domain: domain.clone(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![Entry {
                            key: descriptor_key.clone(),
                            value: key.to_owned(),
                        }],
                        limit: None,
                        hits_addend: None,
                    }],
                    // `setup` refuses a cost above u32::MAX.
                    hits_addend: u32::try_from(cost).unwrap_or(u32::MAX),
                };
                match client.clone().should_rate_limit(request).await {
                    Ok(response) => {
                        let code = response.into_inner().overall_code;
                        match Code::try_from(code) {
                            Ok(Code::Ok) => RequestResult::Allowed,
                            Ok(Code::OverLimit) => RequestResult::Denied,
                            Ok(other) => RequestResult::Error(format!(
                                "overall_code {}",
                                other.as_str_name()
                            )),
                            Err(_) => RequestResult::Error(format!("overall_code {code}")),
                        }
                    }
                    Err(status) => RequestResult::Error(status_text(&status)),
                }
            }
        }
    }

    /// `grpc`: a client of `uri` (`http://host:port`), connecting on first
    /// use (so an unreachable server shows up as errors, as for `http`).
    ///
    /// # Errors
    /// [`BenchError::Args`] for an invalid URI.
    pub fn grpc(
        uri: &str,
        timeout: Duration,
        domain: String,
        descriptor_key: String,
    ) -> Result<Self, BenchError> {
        let channel = tonic::transport::Endpoint::from_shared(uri.to_owned())
            .map_err(|e| BenchError::Args(format!("invalid gRPC address `{uri}`: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Client::Grpc {
            client: RateLimitServiceClient::new(channel),
            domain,
            descriptor_key,
        })
    }
}

/// A gRPC status as one line: the code, the message, and for transport
/// failures their causes.
fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(": ");
        text.push_str(status.message());
    }
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_text(source));
    }
    text
}

fn http_outcome(status: u16) -> RequestResult {
    match status {
        200..=299 => RequestResult::Allowed,
        429 => RequestResult::Denied,
        other => RequestResult::Status(other),
    }
}

/// The error with its causes: reqwest's own message is only "error sending
/// request".
fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An HTTP client for benchmarking: no proxy (targets are usually on
/// loopback), a pool as large as the load needs, a per-request timeout.
///
/// # Errors
/// [`BenchError::Connect`] if the client cannot be built.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| BenchError::Connect(error_text(&e)))
}

/// Refuses a host that is not this machine, unless `allow_remote`. Names
/// are resolved and every address must be loopback.
///
/// # Errors
/// [`BenchError::Remote`] naming the host.
pub async fn check_loopback(host: &str, port: u16, allow_remote: bool) -> Result<(), BenchError> {
    if allow_remote {
        return Ok(());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let remote = || BenchError::Remote(host.to_owned());
    if let Ok(ip) = host.parse::<IpAddr>() {
        return if ip.is_loopback() {
            Ok(())
        } else {
            Err(remote())
        };
    }
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| BenchError::Connect(format!("resolving {host}: {e}")))?
        .collect();
    if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) {
        Ok(())
    } else {
        Err(remote())
    }
}

/// Checks every host of a `--store` value (see [`check_loopback`]).
///
/// # Errors
/// As [`check_loopback`], and [`BenchError::Args`] for a URL without host.
pub async fn check_store_loopback(store: &str, allow_remote: bool) -> Result<(), BenchError> {
    if store == "memory" {
        return Ok(());
    }
    let urls: Vec<String> = match store.strip_prefix("redis-cluster://") {
        Some(seeds) => seeds.split(',').map(|s| format!("redis://{s}")).collect(),
        None => vec![store.to_owned()],
    };
    for url in urls {
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| BenchError::Args(format!("invalid store URL `{url}`: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| BenchError::Args(format!("store URL `{url}` has no host")))?;
        check_loopback(host, parsed.port().unwrap_or(6379), allow_remote).await?;
    }
    Ok(())
}

/// What a Redis store has run so far, from `INFO commandstats`, summed over
/// the standalone server or every master of a cluster (`store` as for
/// [`Client::direct`]; `None` for `memory`).
///
/// # Errors
/// [`BenchError::Connect`] when a node cannot be reached or answers
/// something else than `INFO` does.
pub async fn redis_counts(store: &str) -> Result<Option<RedisCounts>, BenchError> {
    if store == "memory" {
        return Ok(None);
    }
    let fail = |e: redis::RedisError| BenchError::Connect(format!("INFO commandstats: {e}"));
    let nodes = match store.strip_prefix("redis-cluster://") {
        None => vec![store.to_owned()],
        Some(seeds) => {
            let seed = seeds.split(',').next().unwrap_or_default();
            let mut seed = connection(&format!("redis://{seed}")).await.map_err(fail)?;
            let table: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut seed)
                .await
                .map_err(fail)?;
            cluster_masters(&table)
                .into_iter()
                .map(|address| format!("redis://{address}"))
                .collect()
        }
    };
    let mut total = RedisCounts::default();
    for node in nodes {
        let mut connection = connection(&node).await.map_err(fail)?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connection)
            .await
            .map_err(fail)?;
        let counts = RedisCounts::of(&info);
        total.commands += counts.commands;
        total.script_calls += counts.script_calls;
    }
    Ok(Some(total))
}

/// Counts read from `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisCounts {
    /// Every command run, those run by scripts included, but `INFO` and
    /// `CLUSTER` (this count's own).
    pub commands: u64,
    /// Script calls (`FCALL`, `EVALSHA`, `EVAL` and their `_RO` forms): the
    /// decisions and lease calls a store sent.
    pub script_calls: u64,
}

impl RedisCounts {
    /// The counts in one node's `INFO commandstats`.
    fn of(info: &str) -> RedisCounts {
        let mut counts = RedisCounts::default();
        for line in info.lines() {
            let Some((command, stats)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let Some(calls) = stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let name = command
                .split('|')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            match name.as_str() {
                "info" | "cluster" => {}
                "fcall" | "fcall_ro" | "evalsha" | "evalsha_ro" | "eval" | "eval_ro" => {
                    counts.commands += calls;
                    counts.script_calls += calls;
                }
                _ => counts.commands += calls,
            }
        }
        counts
    }
}

async fn connection(url: &str) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// The addresses (`host:port`) of the masters in a `CLUSTER NODES` table
/// that are not marked failed.
fn cluster_masters(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?.split(',').collect::<Vec<_>>();
            let usable = flags.contains(&"master") && !flags.iter().any(|f| f.starts_with("fail"));
            // `host:port@cport[,hostname]`
            let address = address.split(['@', ',']).next()?;
            (usable && !address.starts_with(':')).then(|| address.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_count_every_command_but_the_count_s_own() {
        let info = "# Commandstats\r\n\
                    cmdstat_fcall:calls=120,usec=900,usec_per_call=7.50,rejected_calls=0,failed_calls=1\r\n\
                    cmdstat_get:calls=120,usec=40,usec_per_call=0.33,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_info:calls=4,usec=80,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_cluster|nodes:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_function|load:calls=1,usec=498,usec_per_call=498.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_evalsha:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(
            RedisCounts::of(info),
            RedisCounts {
                commands: 244,
                script_calls: 123
            }
        );
    }

    #[test]
    fn cluster_masters_are_the_live_masters() {
        let table = "\
            07c3 127.0.0.1:30004@31004,host4 slave e7d1 0 1426238317239 4 connected\n\
            67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922\n\
            292f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected\n\
            e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460\n";
        assert_eq!(
            cluster_masters(table),
            vec!["127.0.0.1:30002".to_owned(), "127.0.0.1:30001".to_owned()]
        );
    }
}
