//! Issue 13 against the real binary: a flood of header-only gRPC streams,
//! or of messages never finished, leaves the process's memory bounded and
//! a normal RLS client served, and
//! SIGTERM with stalled clients exits 0 within `shutdown_timeout`, logging
//! how many connections were cut.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use support::{serve_command, tollgate};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tollgate_testkit::files::temp_file;
use tollgate_testkit::process::ServeProcess;

/// `tollgate serve` on ephemeral ports with `server:` settings of a test's
/// own; its log collected when asked.
fn serve(name: &str, server: &str, log: bool) -> ServeProcess {
    serve_with_files(name, server, log, None)
}

/// As [`serve`], with the open-file limit (soft and hard) set to `files`.
fn serve_with_files(name: &str, server: &str, log: bool, files: Option<u32>) -> ServeProcess {
    let config = format!(
        "server:\n{server}policies:\n  - name: api\n    limit: 1000\n    period: 1m\ndomains:\n  - domain: edge\n    descriptors:\n      - key: client\n        rate_limit: {{ unit: minute, requests_per_unit: 1000 }}\n"
    );
    let file = temp_file(name, &config);
    let command = match files {
        None => tollgate(),
        Some(files) => {
            let mut sh = Command::new("sh");
            sh.args([
                "-c",
                &format!("ulimit -n {files} && exec \"$0\" \"$@\""),
                env!("CARGO_BIN_EXE_tollgate"),
            ]);
            sh
        }
    };
    let mut command = serve_command(command, &file);
    command.env("RUST_LOG", "info");
    ServeProcess::start(command, log)
}

/// The process's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A normal client's `ShouldRateLimit` request.
fn rls_request() -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "client".into(),
                value: "normal".into(),
            }],
            limit: None,
            hits_addend: None,
        }],
        hits_addend: 1,
    }
}

async fn normal_rls_call(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let response = client
        .should_rate_limit(rls_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.statuses.len(), 1);
    started.elapsed()
}

/// Calls held open on the gRPC port by a raw HTTP/2 client.
struct HeldCalls {
    /// Each call's response, when the server answers.
    responses: Vec<h2::client::ResponseFuture>,
    /// Each call's request stream, never ended (dropping one resets it).
    streams: Vec<h2::SendStream<Bytes>>,
    /// The connections' tasks.
    connections: Vec<tokio::task::JoinHandle<()>>,
}

/// `connections` HTTP/2 connections to `addr` with up to `streams`
/// `ShouldRateLimit` calls each (fewer if the server stops taking them),
/// every call sending `data` and never the end of its message.
async fn hold_calls(
    addr: SocketAddr,
    connections: usize,
    streams: usize,
    data: &[Bytes],
) -> HeldCalls {
    let mut held = HeldCalls {
        responses: Vec::new(),
        streams: Vec::new(),
        connections: Vec::new(),
    };
    for _ in 0..connections {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        held.connections.push(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let mut client = client.ready().await.unwrap();
        for _ in 0..streams {
            let Ok((response, mut stream)) =
                client.send_request(tollgate_testkit::grpc::rls_call(addr), false)
            else {
                break;
            };
            for part in data {
                let _ = stream.send_data(part.clone(), false);
            }
            held.responses.push(response);
            held.streams.push(stream);
            client = match client.ready().await {
                Ok(client) => client,
                Err(_) => break,
            };
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_grpc_streams_leave_memory_bounded_and_a_normal_client_served() {
    const CONNECTIONS: usize = 80;
    const STREAMS_PER_CONNECTION: usize = 250;
    // Room for them all under `grpc_max_calls` (its own test is below):
    // this one measures what each costs.
    let server = serve(
        "rss.yaml",
        "  grpc_request_timeout: 5s\n  grpc_max_calls: 25000\n",
        false,
    );
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    normal_rls_call(server.grpc()).await;
    let idle = rss_kib(pid);

    // 20,000 streams: headers, and never a message.
    let held = hold_calls(server.grpc(), CONNECTIONS, STREAMS_PER_CONNECTION, &[])
        .await
        .streams;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let loaded = rss_kib(pid);
    let took = normal_rls_call(server.grpc()).await;
    let grown_mib = loaded.saturating_sub(idle) / 1024;
    eprintln!(
        "idle {} MiB, with {} header-only streams {} MiB (+{grown_mib} MiB); a normal call took {took:?}",
        idle / 1024,
        held.len(),
        loaded / 1024
    );
    assert!(held.len() >= CONNECTIONS * STREAMS_PER_CONNECTION / 2);
    assert!(
        grown_mib < 100,
        "RSS grew by {grown_mib} MiB with {} header-only streams",
        held.len()
    );
    assert!(took < Duration::from_secs(2), "a normal call took {took:?}");
    drop(held);
}

/// At `grpc_max_calls` calls in progress on all connections (here streams
/// that never send their message), one more call is answered
/// `RESOURCE_EXHAUSTED` at once; once they end, calls are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_grpc_max_calls_are_refused_until_some_end() {
    const CONNECTIONS: usize = 2;
    const STREAMS_PER_CONNECTION: usize = 200;
    let server = serve(
        "max-calls.yaml",
        "  grpc_max_calls: 400\n  grpc_request_timeout: 30s\n",
        false,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    normal_rls_call(server.grpc()).await;
    let held = hold_calls(server.grpc(), CONNECTIONS, STREAMS_PER_CONNECTION, &[]).await;
    assert_eq!(held.streams.len(), CONNECTIONS * STREAMS_PER_CONNECTION);
    // Every call counts once its headers are in; give them a moment.
    let refused = async {
        let mut client = RateLimitServiceClient::connect(format!("http://{}", server.grpc()))
            .await
            .unwrap();
        client.should_rate_limit(rls_request()).await
    };
    let started = Instant::now();
    let mut outcome = refused.await;
    while outcome.is_ok() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut client = RateLimitServiceClient::connect(format!("http://{}", server.grpc()))
            .await
            .unwrap();
        outcome = client.should_rate_limit(rls_request()).await;
    }
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("server.grpc_max_calls"),
        "{status:?}"
    );
    // The held calls end with their connections: served again.
    for connection in &held.connections {
        connection.abort();
    }
    drop(held);
    let started = Instant::now();
    loop {
        let mut client = RateLimitServiceClient::connect(format!("http://{}", server.grpc()))
            .await
            .unwrap();
        match client.should_rate_limit(rls_request()).await {
            Ok(_) => break,
            Err(status) if started.elapsed() < Duration::from_secs(5) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("still refused after the held calls ended: {status:?}"),
        }
    }
}

/// Streams that each send most of a large message and never the rest:
/// tonic would buffer each until `grpc_request_timeout` (256 MiB a
/// connection). The calls past a connection's share of held bytes end at
/// once with `RESOURCE_EXHAUSTED`, the memory stays bounded, and a normal
/// client on its own connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_grpc_messages_leave_memory_bounded_and_a_normal_client_served() {
    const CONNECTIONS: usize = 2;
    const STREAMS_PER_CONNECTION: usize = 250;
    const ANNOUNCED: u32 = 1_000_000;
    const SENT: usize = 900_000;
    let server = serve("unfinished.yaml", "  grpc_request_timeout: 20s\n", false);
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    normal_rls_call(server.grpc()).await;
    let idle = rss_kib(pid);

    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&ANNOUNCED.to_be_bytes());
    let data = [Bytes::from(prefix), Bytes::from(vec![7u8; SENT])];
    let HeldCalls {
        responses,
        streams: held,
        ..
    } = hold_calls(server.grpc(), CONNECTIONS, STREAMS_PER_CONNECTION, &data).await;
    // Refused streams answer at once (headers only, `grpc-status: 8`,
    // RESOURCE_EXHAUSTED); those within the share wait for the rest of
    // their message.
    let mut refused = 0;
    for response in responses {
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_millis(100), response).await {
            let status = response.headers().get("grpc-status");
            assert_eq!(
                status.map(|s| s.as_bytes()),
                Some(&b"8"[..]),
                "{response:?}"
            );
            refused += 1;
        }
    }
    let loaded = rss_kib(pid);
    let took = normal_rls_call(server.grpc()).await;
    let grown_mib = loaded.saturating_sub(idle) / 1024;
    eprintln!(
        "idle {} MiB, with {} unfinished messages {} MiB (+{grown_mib} MiB), {refused} refused; a normal call took {took:?}",
        idle / 1024,
        held.len(),
        loaded / 1024
    );
    assert_eq!(held.len(), CONNECTIONS * STREAMS_PER_CONNECTION);
    // A connection's 4 MiB holds four messages of 900 kB; a few more
    // streams may still wait for flow-control window to send theirs.
    assert!(
        refused >= CONNECTIONS * (STREAMS_PER_CONNECTION - 10),
        "{refused} refused"
    );
    assert!(
        grown_mib < 100,
        "RSS grew by {grown_mib} MiB with {} unfinished messages",
        held.len()
    );
    assert!(took < Duration::from_secs(2), "a normal call took {took:?}");
    drop(held);
}

/// A client that never reads its answers (an HTTP/2 window of 0) keeps
/// their streams, and so their calls: each holds its permit until its
/// answer is sent, and past `grpc_max_calls` further calls are refused, so
/// such answers cannot pile up beyond the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_answers_count_against_grpc_max_calls() {
    use prost::Message;
    const CAP: usize = 40;
    let server = serve(
        "unread.yaml",
        &format!("  grpc_max_calls: {CAP}\n  grpc_request_timeout: 1s\n"),
        false,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let message = rls_request().encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&message);
    let body = Bytes::from(body);
    let tcp = TcpStream::connect(server.grpc()).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut responses = Vec::new();
    for _ in 0..CAP + 10 {
        let (response, mut stream) = client
            .send_request(tollgate_testkit::grpc::rls_call(server.grpc()), false)
            .unwrap();
        stream.send_data(body.clone(), true).unwrap();
        responses.push(response);
        client = client.ready().await.unwrap();
    }
    let (mut answered, mut refused) = (Vec::new(), 0);
    for response in responses {
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("no answer's head")
            .unwrap();
        match response.headers().get("grpc-status") {
            // Trailers-only: refused.
            Some(status) => {
                assert_eq!(status, "8", "{response:?}");
                refused += 1;
            }
            // An answer whose body waits for window; kept unread (dropping
            // it would cancel its stream).
            None => answered.push(response),
        }
    }
    assert_eq!((answered.len(), refused), (CAP, 10));
    // Past grpc_request_timeout the unsent answers still hold their calls.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut client = RateLimitServiceClient::connect(format!("http://{}", server.grpc()))
        .await
        .unwrap();
    let status = client.should_rate_limit(rls_request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Read at last (or cancelled), they end: calls are served again.
    drop(answered);
    let started = Instant::now();
    while client.should_rate_limit(rls_request()).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(5), "still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `server.grpc_max_buffered_bytes` bounds the bytes held on all
/// connections together: with room for two unfinished messages, a third on
/// a connection of its own is refused, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_wide_byte_cap_holds_across_connections() {
    let server = serve(
        "server-cap.yaml",
        "  grpc_max_buffered_bytes: 2097162\n  grpc_request_timeout: 20s\n",
        false,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    normal_rls_call(server.grpc()).await;
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&1_000_000u32.to_be_bytes());
    let data = [Bytes::from(prefix), Bytes::from(vec![7u8; 900_000])];
    let mut first_two = Vec::new();
    for _ in 0..2 {
        let mut held = hold_calls(server.grpc(), 1, 1, &data).await;
        let response = held.responses.pop().unwrap();
        // Within the cap: waiting for the rest of its message.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), response)
                .await
                .is_err(),
            "a message within the cap was answered"
        );
        first_two.push(held);
    }
    let mut third = hold_calls(server.grpc(), 1, 1, &data).await;
    let response = tokio::time::timeout(Duration::from_secs(5), third.responses.pop().unwrap())
        .await
        .expect("the third message was not refused")
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "8", "{response:?}");
    let message = response.headers()["grpc-message"].to_str().unwrap();
    assert!(
        message.contains("server.grpc_max_buffered_bytes"),
        "{message}"
    );
    drop(first_two);
}

/// What one HTTP request with a head of `pad` bytes of header value gets:
/// the status line, or `None` if the connection was closed or reset before
/// one came (the server may close on a head it refuses while the client is
/// still sending it). The connection is returned, kept open.
async fn http_head(addr: SocketAddr, pad: usize) -> (Option<String>, TcpStream) {
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(pad)
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(head.as_bytes()).await;
    let mut buf = [0; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
    )
    .await
    .expect("an answer or a close within 5 s");
    let line = match read {
        Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .map(str::to_owned),
        _ => None,
    };
    (line, stream)
}

/// A request head over `MAX_REQUEST_HEAD_BYTES` is refused (`431`) and its
/// connection closed, so that idle keep-alive connections hold small read
/// buffers: before, hyper's buffer grew to fit a head of up to 400 KiB and
/// kept that size for the connection's life (300 connections after one
/// 300 KB head each held about 57 MiB). A head under the cap is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_request_heads_are_refused_and_leave_no_buffer_behind() {
    const CONNECTIONS: usize = 300;
    let server = serve("heads.yaml", "", false);
    let pid = server.pid();
    let cap = tollgate_server::server::MAX_REQUEST_HEAD_BYTES;
    let (line, _kept) = http_head(server.http, cap - 1024).await;
    assert_eq!(
        line.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "a head under the cap"
    );
    let (line, _) = http_head(server.http, cap + 1024).await;
    assert!(
        line.as_ref().is_none_or(|l| l.starts_with("HTTP/1.1 431")),
        "a head over the cap: {line:?}"
    );
    let idle = rss_kib(pid);
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let (line, stream) = http_head(server.http, 300_000).await;
        assert!(
            line.as_ref().is_none_or(|l| l.starts_with("HTTP/1.1 431")),
            "a 300 KB head: {line:?}"
        );
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_kib = rss_kib(pid).saturating_sub(idle);
    eprintln!("{CONNECTIONS} connections after a 300 KB head each: +{grown_kib} KiB");
    assert!(
        grown_kib < 16 * 1024,
        "RSS grew by {grown_kib} KiB after {CONNECTIONS} refused heads"
    );
    drop(held);
}

#[test]
fn sigterm_with_stalled_clients_exits_zero_within_shutdown_timeout() {
    let server = serve(
        "stalled.yaml",
        "  shutdown_timeout: 1s\n  body_timeout: 60s\n  idle_timeout: 60s\n  grpc_request_timeout: 60s\n",
        true,
    );
    let mut server = server;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (http, grpc) = (server.http, server.grpc());
    // Kept open by the runtime's tasks until the server closes them.
    let _held = runtime.block_on(async move {
        let mut stalled = TcpStream::connect(http).await.unwrap();
        stalled
            .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123")
            .await
            .unwrap();
        let tcp = TcpStream::connect(grpc).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        let (response, mut body) = client
            .send_request(tollgate_testkit::grpc::rls_call(grpc), false)
            .unwrap();
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 100]), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        (stalled, client, response, body)
    });

    let (exit, took) = server
        .terminate_within(Duration::from_secs(5))
        .expect("still running 5 s after SIGTERM with shutdown_timeout 1s");
    assert_eq!(exit.code(), Some(0), "exits 0");
    assert!(took >= Duration::from_millis(900), "exited after {took:?}");
    let log = server.log().join("\n");
    let cut = log
        .lines()
        .find(|l| l.contains("shutdown_timeout were closed"))
        .unwrap_or_else(|| panic!("no line on the connections cut:\n{log}"));
    assert!(cut.contains("http=1") && cut.contains("grpc=1"), "{cut}");
}

#[test]
fn out_of_file_descriptors_the_server_backs_off_logs_rarely_and_recovers() {
    // 128 descriptors, soft and hard: 200 idle connections exhaust them.
    let mut server = serve_with_files(
        "emfile.yaml",
        "  idle_timeout: 2s\n  max_connections: 1000\n",
        true,
        Some(128),
    );
    let http = server.http;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let served = runtime.block_on(async move {
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(TcpStream::connect(http).await.unwrap());
        }
        // The idle ones are closed after idle_timeout; the ones the server
        // could not accept yet are accepted as descriptors free, and closed
        // in their turn. A normal request gets through.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                let mut stream = TcpStream::connect(http).await.ok()?;
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .ok()?;
                let mut buf = [0u8; 256];
                let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
                    .await
                    .ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"))
            })
            .await;
            if matches!(attempt, Ok(Some(true))) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    });
    let elapsed = started.elapsed();
    assert!(
        served,
        "no normal request was served within 15 s of running out of descriptors"
    );
    let _ = server.terminate_within(Duration::from_secs(20));
    let log = server.log().join("\n");
    assert!(log.contains("open_file_limit=128"), "{log}");
    let failures = log.matches("cannot accept connections").count();
    assert!(
        failures >= 1,
        "running out of descriptors was not logged:\n{log}"
    );
    // At most one line a second (and one to start with): no busy loop.
    let bound = usize::try_from(elapsed.as_secs()).unwrap() + 2;
    assert!(
        failures <= bound,
        "{failures} accept-error lines in {elapsed:?}:\n{log}"
    );
}
