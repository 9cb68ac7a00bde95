//! Graceful shutdown: requests in flight finish, new connections are
//! refused, and the server returns Ok.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Backend, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let mut server = TestServer::start(Backend::memory()).await;
    let body = br#"{"policy": "api", "key": "in-flight"}"#;
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
        // Headers and half the body: the request is in flight.
        let head = format!(
            "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..10]).await.unwrap();
        in_flight.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.trigger_stop();
    let task = server.take_task();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !task.is_finished(),
        "the server must wait for requests in flight"
    );

    // No new connections once shutting down.
    let refused = match tokio::net::TcpStream::connect(server.http).await {
        Err(_) => true,
        Ok(mut stream) => {
            let _ = stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            matches!(
                tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
    };
    assert!(refused, "a new connection was served during shutdown");

    for (i, mut stream) in in_flight.into_iter().enumerate() {
        stream.write_all(&body[10..]).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.contains(&format!("\"remaining\":{}", 99 - i)),
            "{text}"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server stops once requests are done")
        .unwrap()
        .unwrap();
}
