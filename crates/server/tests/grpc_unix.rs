//! gRPC on a unix domain socket (`server.grpc: unix:PATH`,
//! envoyproxy/ratelimit's `GRPC_UDS`): served as on TCP, with the same
//! connection bounds; a socket file left by a process that is gone is
//! replaced, a live one or any other file is never taken, and the file is
//! removed at shutdown unless someone else's socket is there by then.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::descriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tollgate_server::{
    App, Config, ConfigSource, GrpcListener, ListenAddr, Listeners, ServeError, ServerOptions,
    ServerStore,
};
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::serve::{Stop, loopback, shutdown};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// One domain, `uds`, with a limit of 3 an hour per user.
fn config(server: &str) -> String {
    format!(
        "server:\n{server}domains:\n  - domain: uds\n    descriptors:\n      - key: user\n        rate_limit: {{ unit: hour, requests_per_unit: 3 }}\n"
    )
}

/// `tollgate_server::run` with gRPC on `grpc`, on the memory store.
struct UnixServer {
    stop: Option<Stop>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl UnixServer {
    async fn start(server: &str, grpc: &ListenAddr) -> UnixServer {
        let config = Config::parse(&config(server), "test.yaml").unwrap();
        let app = Arc::new(App::new(
            ConfigSource::default(),
            config,
            ServerStore::Memory(Default::default()),
        ));
        let (http, _) = loopback().await;
        let grpc = GrpcListener::bind(grpc).await.unwrap();
        let (stop, stopped) = shutdown();
        let task = tokio::spawn(tollgate_server::run(
            app,
            Listeners {
                http,
                grpc: Some(grpc),
            },
            ServerOptions::default()
                .watch_interval(None)
                .reload_on_sighup(false),
            stopped,
        ));
        UnixServer {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().fire();
        self.task.await.unwrap().unwrap();
    }
}

/// A gRPC channel over the unix socket at `path` (or the abstract name
/// after `@`).
async fn channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move { connect(&path).await.map(TokioIo::new) }
        }))
        .await
        .unwrap()
}

async fn connect(path: &Path) -> std::io::Result<UnixStream> {
    #[cfg(target_os = "linux")]
    if let Some(name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        stream.set_nonblocking(true)?;
        return UnixStream::from_std(stream);
    }
    UnixStream::connect(path).await
}

/// `ShouldRateLimit` for `user` in domain `uds`: the overall code.
async fn decide(channel: Channel, user: &str) -> i32 {
    RateLimitServiceClient::new(channel)
        .should_rate_limit(RateLimitRequest {
            domain: "uds".into(),
            descriptors: vec![descriptor(&[("user", user)], None)],
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .overall_code
}

const OK: i32 = 1;
const OVER_LIMIT: i32 = 2;

/// A socket path in a fresh directory of its own, and the directory.
fn socket_path(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    (dir.join("rls.sock"), dir)
}

#[tokio::test]
async fn envoys_api_and_health_are_served_on_a_unix_socket_and_its_file_removed_at_shutdown() {
    let (path, dir) = socket_path("grpc-unix");
    let server = UnixServer::start("  idle_timeout: 30s\n", &ListenAddr::Unix(path.clone())).await;
    let channel = channel(&path).await;
    let codes = [
        decide(channel.clone(), "ann").await,
        decide(channel.clone(), "ann").await,
        decide(channel.clone(), "ann").await,
        decide(channel.clone(), "ann").await,
        decide(channel.clone(), "bob").await,
    ];
    assert_eq!(codes, [OK, OK, OK, OVER_LIMIT, OK]);
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "envoy.service.ratelimit.v3.RateLimitService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    assert!(path.exists());
    server.stop().await;
    assert!(!path.exists(), "the socket file outlived the server");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A server killed without closing leaves its socket file behind; the next
/// one replaces it rather than failing with "address in use".
#[tokio::test]
async fn a_socket_file_no_process_listens_on_is_replaced() {
    let (path, dir) = socket_path("grpc-unix-stale");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a closed listener leaves its file");
    let server = UnixServer::start("", &ListenAddr::Unix(path.clone())).await;
    assert_eq!(decide(channel(&path).await, "ann").await, OK);
    server.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A socket another process listens on, and a path that is not a socket,
/// are refused and left as they are.
#[tokio::test]
async fn a_live_socket_or_another_file_is_never_taken() {
    let (path, dir) = socket_path("grpc-unix-taken");
    let live = tokio::net::UnixListener::bind(&path).unwrap();
    let error = GrpcListener::bind(&ListenAddr::Unix(path.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
    assert!(error.to_string().contains("another process is listening"));
    // The other server keeps its socket: a new client reaches it.
    let _client = UnixStream::connect(&path).await.unwrap();
    live.accept().await.unwrap();
    drop(live);

    let file = dir.join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let error = GrpcListener::bind(&ListenAddr::Unix(file.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AlreadyExists, "{error}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A live server whose backlog is full answers no probe: it is still
/// live, and its socket is left alone.
#[tokio::test]
async fn a_live_socket_with_a_full_backlog_is_never_taken() {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let (path, dir) = socket_path("grpc-unix-backlog");
    let address = SocketAddrUnix::new(&path).unwrap();
    let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&listener, &address).unwrap();
    rustix::net::listen(&listener, 0).unwrap();
    let mut waiting = Vec::new();
    loop {
        let client = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        match rustix::net::connect(&client, &address) {
            Ok(()) => waiting.push(client),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(error) => panic!("{error}"),
        }
        assert!(waiting.len() < 100, "the backlog never filled");
    }
    let error = GrpcListener::bind(&ListenAddr::Unix(path.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
    assert!(path.exists());
    drop((waiting, listener));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Two tollgates on one path: the second stops at the first's lock, before
/// any probe, and the first keeps its socket.
#[tokio::test]
async fn a_second_tollgate_on_the_same_path_stops_at_the_lock() {
    let (path, dir) = socket_path("grpc-unix-lock");
    let server = UnixServer::start("", &ListenAddr::Unix(path.clone())).await;
    let error = GrpcListener::bind(&ListenAddr::Unix(path.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
    assert!(error.to_string().contains("another tollgate"), "{error}");
    assert_eq!(decide(channel(&path).await, "ann").await, OK);
    server.stop().await;
    // Once the first has stopped, the path is free again.
    let again = GrpcListener::bind(&ListenAddr::Unix(path.clone())).await;
    assert!(again.is_ok(), "{again:?}");
    drop(again);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A server that stops after another bound the path (its file replaced)
/// leaves the other's socket in place.
#[tokio::test]
async fn shutdown_removes_only_its_own_socket_file() {
    let (path, dir) = socket_path("grpc-unix-successor");
    let server = UnixServer::start("", &ListenAddr::Unix(path.clone())).await;
    std::fs::remove_file(&path).unwrap();
    let successor = tokio::net::UnixListener::bind(&path).unwrap();
    server.stop().await;
    assert!(path.exists(), "the successor's socket was removed");
    drop(successor);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The Linux abstract namespace (`unix:@name`, as Go reads `GRPC_UDS`):
/// served, and no file anywhere.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_abstract_socket_is_served() {
    let name = PathBuf::from(format!("@tollgate-test-{}", std::process::id()));
    let server = UnixServer::start("", &ListenAddr::Unix(name.clone())).await;
    assert_eq!(decide(channel(&name).await, "ann").await, OK);
    assert!(!name.exists());
    server.stop().await;
}

/// A unix socket's clients are bounded as TCP ones are: one that sends no
/// HTTP/2 preface is closed at `header_timeout`, and at `max_connections`
/// the next client waits until a slot frees.
#[tokio::test]
async fn unix_socket_clients_have_the_same_bounds() {
    let (path, dir) = socket_path("grpc-unix-bounds");
    let server = UnixServer::start(
        "  header_timeout: 1s\n  idle_timeout: 30s\n  max_connections: 1\n",
        &ListenAddr::Unix(path.clone()),
    )
    .await;
    // Silent: closed by the header timeout.
    let mut silent = UnixStream::connect(&path).await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a silent client was never closed");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // One slot: a second client waits while the first holds it.
    let first = channel(&path).await;
    assert_eq!(decide(first.clone(), "ann").await, OK);
    let second = tokio::spawn({
        let path = path.clone();
        async move { decide(channel(&path).await, "bob").await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !second.is_finished(),
        "a second client was served past max_connections"
    );
    drop(first);
    let code = tokio::time::timeout(Duration::from_secs(5), second).await;
    assert_eq!(code.unwrap().unwrap(), OK);
    server.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// The HTTP/2 client preface, so a raw client is past the header timeout.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A unix socket client that sent its preface and then nothing is closed at
/// `idle_timeout`; one still open at shutdown is cut at `shutdown_timeout`.
#[tokio::test]
async fn unix_socket_clients_are_closed_when_idle_and_cut_at_shutdown() {
    use tokio::io::AsyncWriteExt;
    let (path, dir) = socket_path("grpc-unix-idle");
    let server = UnixServer::start("  idle_timeout: 1s\n", &ListenAddr::Unix(path.clone())).await;
    let mut quiet = UnixStream::connect(&path).await.unwrap();
    quiet.write_all(PREFACE).await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), quiet.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle client was never closed");
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.stop().await;

    let server = UnixServer::start(
        "  idle_timeout: 30s\n  shutdown_timeout: 1s\n",
        &ListenAddr::Unix(path.clone()),
    )
    .await;
    let mut held = UnixStream::connect(&path).await.unwrap();
    held.write_all(PREFACE).await.unwrap();
    // Served: the server's SETTINGS arrive.
    let mut settings = [0u8; 9];
    held.read_exact(&mut settings).await.unwrap();
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), server.stop())
        .await
        .expect("shutdown waited for a client that never closes");
    assert!(stopping.elapsed() >= Duration::from_millis(900));
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(2), held.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "the client was not cut");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `server.grpc_tls` on a unix socket: the handshake runs there too, and a
/// plaintext client is not served.
#[tokio::test]
async fn grpc_tls_is_served_on_a_unix_socket() {
    use tollgate_testkit::tls::Certificates;
    use tonic::transport::{Certificate, ClientTlsConfig};
    let (path, dir) = socket_path("grpc-unix-tls");
    let certificates = Certificates::create(&dir);
    let server = UnixServer::start(
        &format!(
            "  grpc_tls: {{ cert: {}, key: {} }}\n",
            certificates.server_cert.display(),
            certificates.server_key.display()
        ),
        &ListenAddr::Unix(path.clone()),
    )
    .await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(&certificates.ca).unwrap(),
        ))
        .domain_name("127.0.0.1");
    let connector_path = path.clone();
    let secure = Endpoint::from_static("https://127.0.0.1")
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = connector_path.clone();
            async move { connect(&path).await.map(TokioIo::new) }
        }))
        .await
        .unwrap();
    assert_eq!(decide(secure, "ann").await, OK);
    let plain = RateLimitServiceClient::new(channel(&path).await)
        .should_rate_limit(RateLimitRequest {
            domain: "uds".into(),
            descriptors: vec![descriptor(&[("user", "bob")], None)],
            hits_addend: 0,
        })
        .await;
    assert!(plain.is_err(), "a plaintext client was served: {plain:?}");
    server.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}
