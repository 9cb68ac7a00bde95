//! The targets a bench drives, behind one `send(key, cost)`.

use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate::{Limiter, MemoryStore, Policy};
use tollgate_redis::{RedisOptions, RedisStore};

use super::BenchError;
use super::report::RequestResult;

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
}

impl Client {
    /// `direct`: `instances` limiters with `policy`, over `store`
    /// (`memory`, `redis://...`, `rediss://...` or
    /// `redis-cluster://host:port,host:port`).
    ///
    /// # Errors
    /// [`BenchError::Connect`] when Redis cannot be reached.
    pub async fn direct(store: &str, instances: usize, policy: Policy) -> Result<Self, BenchError> {
        let instances = instances.max(1);
        let mut limiters = Vec::with_capacity(instances);
        if store == "memory" {
            let shared = MemoryStore::new();
            for _ in 0..instances {
                let limiter = Limiter::builder(shared.clone())
                    .policy(DIRECT_POLICY, policy)
                    .build();
                limiters.push(DirectLimiter::Memory(limiter));
            }
        } else {
            let options = || RedisOptions::default().prefix("tollgate-bench");
            for _ in 0..instances {
                let redis = if let Some(seeds) = store.strip_prefix("redis-cluster://") {
                    let seeds: Vec<String> =
                        seeds.split(',').map(|s| format!("redis://{s}")).collect();
                    RedisStore::connect_cluster(&seeds, options()).await
                } else {
                    RedisStore::connect(store, options()).await
                }
                .map_err(|e| BenchError::Connect(e.to_string()))?;
                let limiter = Limiter::builder(redis)
                    .policy(DIRECT_POLICY, policy)
                    .build();
                limiters.push(DirectLimiter::Redis(limiter));
            }
        }
        Ok(Client::Direct(limiters))
    }

    /// Sends request number `seq` for `key`.
    pub async fn send(&self, seq: u64, key: &str, cost: u64) -> RequestResult {
        match self {
            Client::Direct(limiters) => {
                let limiter = &limiters[(seq % limiters.len() as u64) as usize];
                let decision = match limiter {
                    DirectLimiter::Memory(l) => l.check(DIRECT_POLICY, key, cost).await,
                    DirectLimiter::Redis(l) => l.check(DIRECT_POLICY, key, cost).await,
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
