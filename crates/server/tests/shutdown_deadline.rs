//! Issue 13: shutdown has a deadline. A client stalled mid-body and a gRPC
//! call that never sends its message cannot keep the server alive past
//! `server.shutdown_timeout`: what is left is closed and `run` returns Ok.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, CONFIG, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn shutdown_closes_stalled_connections_after_shutdown_timeout() {
    // Every other timeout is far away: only the shutdown deadline can end
    // these two.
    let text = CONFIG.replacen(
        "server:\n",
        "server:\n  shutdown_timeout: 1s\n  body_timeout: 60s\n  idle_timeout: 60s\n  grpc_request_timeout: 60s\n",
        1,
    );
    let mut server = TestServer::start_text(Backend::memory(), &text).await;

    // HTTP: headers and 10 bytes of a 100-byte body.
    let mut stalled = TcpStream::connect(server.http).await.unwrap();
    stalled
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // gRPC: a call whose message never comes.
    let tcp = TcpStream::connect(server.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            server.grpc
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (_response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 100]), false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.trigger_stop();
    let stopping = Instant::now();
    let task = server.take_task();
    let result = tokio::time::timeout(Duration::from_secs(4), task)
        .await
        .expect("the server was still running 4 s after the signal with shutdown_timeout 1s")
        .unwrap();
    let took = stopping.elapsed();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        took >= Duration::from_millis(900),
        "stopped after {took:?}: it must drain for shutdown_timeout first"
    );
    // The stalled client sees its connection closed.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), stalled.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the stalled connection is still open"
    );
}
