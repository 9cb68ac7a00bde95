//! Issue 13, "safe to expose", on the gRPC port: the stream cap is
//! advertised, a call that never finishes its message is ended by
//! `grpc_request_timeout`, an oversized message is refused, a connection
//! that sends nothing is closed after `idle_timeout`, and one that trickles
//! its preface after `header_timeout`. A raw
//! HTTP/2 client (`h2`) does what a well-behaved gRPC client would not.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, CONFIG, TestServer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tollgate_server::{ConfigSource, ServerOptions};

async fn start(server: &str) -> TestServer {
    let server_lines: String = server
        .lines()
        .map(|l| format!("  {}\n", l.trim()))
        .collect();
    TestServer::start_with(
        Backend::memory(),
        &CONFIG.replacen("server:\n", &format!("server:\n{server_lines}"), 1),
        ConfigSource::default(),
        ServerOptions::default()
            .watch_interval(None)
            .reload_on_sighup(false),
    )
    .await
}

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.unwrap()
}

/// A gRPC message frame's 5-byte prefix: not compressed, `len` bytes.
fn message_prefix(len: u32) -> Bytes {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&len.to_be_bytes());
    Bytes::from(prefix)
}

/// The call's `grpc-status`: in the headers (trailers-only) or trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> String {
    let response = response.await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_owned();
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let _ = data;
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_stream_cap_is_advertised() {
    let server = start("grpc_max_streams: 64").await;
    let client = h2_client(server.grpc).await;
    // The server's SETTINGS arrive right after the handshake.
    let deadline = Instant::now() + Duration::from_secs(2);
    while client.current_max_send_streams() == usize::MAX && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.current_max_send_streams(), 64);
}

#[tokio::test]
async fn a_call_that_never_finishes_its_message_is_ended_by_the_request_timeout() {
    let server = start("grpc_request_timeout: 1s").await;
    let mut client = h2_client(server.grpc).await;

    // Headers only: no message at all.
    let (bare, _bare_body) = client
        .send_request(tollgate_testkit::grpc::rls_call(server.grpc), false)
        .unwrap();
    // Half a message: its prefix promises 100 bytes, 10 come.
    let mut client = client.ready().await.unwrap();
    let (half, mut half_body) = client
        .send_request(tollgate_testkit::grpc::rls_call(server.grpc), false)
        .unwrap();
    half_body.send_data(message_prefix(100), false).unwrap();
    half_body
        .send_data(Bytes::from_static(&[0u8; 10]), false)
        .unwrap();
    // Message after message (empty requests), never the end of the stream.
    let mut client = client.ready().await.unwrap();
    let (flood, mut flood_body) = client
        .send_request(tollgate_testkit::grpc::rls_call(server.grpc), false)
        .unwrap();
    let feeding = tokio::spawn(async move {
        loop {
            flood_body.reserve_capacity(4096);
            if flood_body.send_data(message_prefix(0), false).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let started = Instant::now();
    let statuses = tokio::time::timeout(Duration::from_secs(5), async {
        (
            grpc_status(bare).await,
            grpc_status(half).await,
            grpc_status(flood).await,
        )
    })
    .await
    .expect("calls still unanswered 5 s into a 1 s grpc_request_timeout");
    feeding.abort();
    // CANCELLED ("Timeout expired") for the two that never complete a
    // message; the flood is answered or ended, never left hanging.
    assert_eq!(statuses.0, "1", "headers only: {statuses:?}");
    assert_eq!(statuses.1, "1", "half a message: {statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The server is still fine.
    let (status, _) = server
        .post_json("/v1/check", r#"{"policy":"api","key":"k"}"#)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_oversized_message_is_refused() {
    let server = start("grpc_request_timeout: 30s").await;
    let client = h2_client(server.grpc).await;
    let mut client = client.ready().await.unwrap();
    let (response, mut body) = client
        .send_request(tollgate_testkit::grpc::rls_call(server.grpc), false)
        .unwrap();
    // The prefix announces 2 MiB, above the 1 MiB bound; a little follows.
    body.send_data(message_prefix(2 * 1024 * 1024), false)
        .unwrap();
    body.send_data(Bytes::from(vec![0u8; 1024]), false).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), grpc_status(response))
        .await
        .expect("an oversized message was neither refused nor answered");
    // OUT_OF_RANGE: "decoded message length too large".
    assert_eq!(status, "11");
}

/// A call to a method tollgate does not serve is answered UNIMPLEMENTED at
/// once, while the client keeps its stream open, as a streaming client
/// (server reflection, which `grpcurl` tries first) does.
#[tokio::test]
async fn an_unknown_method_is_unimplemented_at_once() {
    let server = start("grpc_request_timeout: 30s").await;
    let client = h2_client(server.grpc).await;
    let mut client = client.ready().await.unwrap();
    let call = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            server.grpc
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(call, false).unwrap();
    body.send_data(message_prefix(0), false).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), grpc_status(response))
        .await
        .expect("an unknown method waited for the end of the client's stream");
    assert_eq!(status, "12", "UNIMPLEMENTED");
}

#[tokio::test]
async fn a_grpc_connection_that_sends_nothing_is_closed_after_idle_timeout() {
    let server = start("idle_timeout: 1s").await;
    let mut silent = TcpStream::connect(server.grpc).await.unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match silent.read(&mut buf).await {
                // The server's SETTINGS, then the end.
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("a silent gRPC connection was still open 5 s into a 1 s idle_timeout");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );

    // A live client that makes no calls stays connected: it answers the
    // server's keepalive pings.
    let client = h2_client(server.grpc).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut client = client
        .ready()
        .await
        .expect("a live quiet client stays connected");
    let (response, mut body) = client
        .send_request(tollgate_testkit::grpc::rls_call(server.grpc), false)
        .unwrap();
    body.send_data(message_prefix(0), true).unwrap();
    // An empty request: INVALID_ARGUMENT, but answered on this connection.
    assert_eq!(grpc_status(response).await, "3");
}

/// A client that trickles the HTTP/2 client preface (a byte every 300 ms)
/// is never idle, and would hold its connection slot for the connection's
/// whole age (30 min): it is cut once `header_timeout` has passed without a
/// complete preface.
#[tokio::test]
async fn a_grpc_client_trickling_its_preface_is_cut_after_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let server = start("header_timeout: 1s\nidle_timeout: 30s").await;
    let (mut reader, mut writer) = TcpStream::connect(server.grpc).await.unwrap().into_split();
    let opened = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("a trickled preface held its connection 5 s into a 1 s header_timeout");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );
    trickle.abort();
}
