//! Issue 13, "safe to expose", on the HTTP port: idle and slowloris
//! connections are closed by `idle_timeout` and `header_timeout` while a
//! normal client is served; a stalled body gets `408` from `body_timeout`;
//! `max_connections` holds further clients until a slot frees; shutdown
//! closes what is left after `shutdown_timeout`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, CONFIG, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_testkit::http::Client;

/// The shared test configuration with `server:` settings of a test's own.
fn config(server: &str) -> String {
    CONFIG.replacen("server:\n", &format!("server:\n{}", textwrap(server)), 1)
}

fn textwrap(lines: &str) -> String {
    lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  {}\n", l.trim()))
        .collect()
}

async fn start(server: &str) -> TestServer {
    TestServer::start_text(Backend::memory(), &config(server)).await
}

/// Waits until the server closes `stream` (end of stream or a reset),
/// reading and discarding anything before; `None` if it is still open after
/// `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Whether the server has closed `stream` (without waiting).
fn is_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    !matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn check(server: &TestServer, key: &str) -> (u16, Duration) {
    let start = Instant::now();
    let (status, _) = server
        .post_json("/v1/check", &format!(r#"{{"policy":"api","key":"{key}"}}"#))
        .await;
    (status, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_and_a_normal_client_is_served() {
    const IDLE: usize = 2000;
    const SLOWLORIS: usize = 300;
    let server = start("header_timeout: 1s\nidle_timeout: 4s").await;

    let opened = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(server.http).await.unwrap());
    }
    // Slowloris: a request line and then one header line every 200 ms,
    // never the blank line that ends the headers.
    let mut slow = tokio::task::JoinSet::new();
    for i in 0..SLOWLORIS {
        let stream = TcpStream::connect(server.http).await.unwrap();
        slow.spawn(async move {
            let (mut read, mut write) = stream.into_split();
            let started = Instant::now();
            let trickle = async {
                let _ = write
                    .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\n")
                    .await;
                for n in 0.. {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if write
                        .write_all(format!("x-{i}-{n}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            };
            let mut buf = [0u8; 1024];
            let closed = async {
                loop {
                    match read.read(&mut buf).await {
                        Ok(0) | Err(_) => return started.elapsed(),
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                () = trickle => unreachable!(),
                after = closed => Some(after),
                () = tokio::time::sleep(Duration::from_secs(10)) => None,
            }
        });
    }

    // All 2,300 open at once: a normal client is answered as usual.
    for n in 0..5 {
        let (status, took) = check(&server, &format!("normal-{n}")).await;
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_secs(2),
            "a normal check took {took:?} among idle and slowloris connections"
        );
    }

    // Slowloris sockets: closed by header_timeout (1 s after their first
    // byte), long before idle_timeout (4 s), although they keep sending.
    while let Some(result) = slow.join_next().await {
        let after = result
            .unwrap()
            .expect("a slowloris connection was still open after 10 s");
        assert!(
            after < Duration::from_millis(3500),
            "a slowloris connection was closed only after {after:?}"
        );
    }

    // Idle sockets: still open before idle_timeout, closed after it.
    let before_idle = Duration::from_secs(4).saturating_sub(opened.elapsed());
    if before_idle > Duration::from_millis(500) {
        let open = idle.iter().filter(|s| !is_closed(s)).count();
        assert!(
            open > IDLE * 9 / 10,
            "only {open} of {IDLE} idle connections were open before idle_timeout"
        );
    }
    for stream in &mut idle {
        let closed_at = closed_within(stream, Duration::from_secs(10))
            .await
            .expect("an idle connection was still open 10 s after idle_timeout");
        assert!(
            closed_at.duration_since(opened) >= Duration::from_millis(3900),
            "an idle connection was closed after {:?}, before idle_timeout",
            closed_at.duration_since(opened)
        );
    }

    // And still served afterwards.
    let (status, _) = check(&server, "after").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn keep_alive_connections_serve_many_requests_until_idle_timeout() {
    let server = start("header_timeout: 300ms\nidle_timeout: 1s").await;
    let mut stream = TcpStream::connect(server.http).await.unwrap();
    // Requests spaced wider than header_timeout but within idle_timeout:
    // the header clock starts at a request's first byte, not at the end of
    // the previous response.
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let read = stream.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..read]);
        assert!(text.starts_with("HTTP/1.1 200"), "request {n}: {text}");
    }
    let quiet = Instant::now();
    let closed = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("idle keep-alive connection closed");
    let after = closed.duration_since(quiet);
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?} of quiet, before idle_timeout"
    );
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    let server = start("body_timeout: 1s\nidle_timeout: 30s").await;
    let body = br#"{"policy": "api", "key": "stalled"}"#;
    let mut stream = TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("a stalled body was neither answered nor closed within 5 s")
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(took >= Duration::from_millis(900), "408 after {took:?}");
    // Nothing was charged.
    let (_, body) = server
        .post_json("/v1/peek", r#"{"policy":"api","key":"stalled"}"#)
        .await;
    assert_eq!(body["remaining"], 100, "{body}");
}

#[tokio::test]
async fn the_connection_cap_holds_further_clients_until_a_slot_frees() {
    const CAP: usize = 20;
    let mut server = start(&format!("max_connections: {CAP}\nidle_timeout: 60s")).await;
    // TestServer::start's probe connection, kept alive in the client's
    // pool, holds a slot: close it, so the cap is ours.
    server.client = Client::new(server.http);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for n in 0..CAP {
        let mut stream = TcpStream::connect(server.http).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection {n} below the cap was not served"))
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..read]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // One more: the kernel completes the handshake (listen backlog), the
    // server does not accept it while the cap is reached.
    let mut waiting = TcpStream::connect(server.http).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), waiting.read(&mut buf))
            .await
            .is_err(),
        "a connection above max_connections was served"
    );
    // The gRPC port has its own cap: Envoy is not locked out by an HTTP flood.
    let channel = server.grpc_channel().await;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    // A slot frees: the waiting client is served, promptly.
    drop(held.pop());
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(2), waiting.read(&mut buf))
        .await
        .expect("the waiting client was not served once a slot freed")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..read])
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The Prometheus listener (`server.metrics`) is served as the HTTP port
/// is: it holds at most 64 connections (a 65th waits for a slot) and
/// closes idle ones at `idle_timeout`, so a flood there cannot hold file
/// descriptors; a scrape is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_is_capped_and_closes_idle_connections() {
    let port = tollgate_testkit::ports::free_port();
    let _server = start(&format!(
        "header_timeout: 1s\nidle_timeout: 2s\nmetrics: {{ addr: \"127.0.0.1:{port}\", path: /prom }}"
    ))
    .await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let scrape = |mut stream: TcpStream| async move {
        stream
            .write_all(b"GET /prom HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    };
    // Served at all (the listener is up before `start` returns).
    let reply = scrape(TcpStream::connect(addr).await.unwrap()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("tollgate_decisions_total"), "{reply}");

    let mut idle = Vec::new();
    for _ in 0..tollgate_server::server::METRICS_MAX_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // The 65th is accepted by the kernel, not served: no slot.
    let waiting = tokio::spawn(scrape(TcpStream::connect(addr).await.unwrap()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served beyond the cap");
    // The idle ones are closed at idle_timeout; then the 65th is served.
    for stream in &mut idle {
        assert!(
            closed_within(stream, Duration::from_secs(15))
                .await
                .is_some(),
            "an idle metrics connection was still open 15 s after idle_timeout"
        );
    }
    let reply = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the waiting scrape was not served once slots freed")
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
