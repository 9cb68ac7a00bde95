//! A tiny blocking HTTP/1.1 client for tests that talk to a server as a
//! plain socket would: one request per connection, bounded in time, no
//! proxy, no pooling, nothing parsed but the status and the body.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let address = "127.0.0.1:8080".parse().unwrap();
//! let (status, body) = tollgate_testkit::http::request(
//!     address,
//!     "POST",
//!     "/v1/check",
//!     &[("content-type", "application/json")],
//!     r#"{"policy":"api","key":"me"}"#,
//!     Duration::from_secs(10),
//! )
//! .unwrap();
//! assert_eq!(status, 200, "{body}");
//! ```

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends one request on a new connection (`connection: close`, with a
/// `content-length`), each read and write bounded by `timeout`: the status
/// (0 when the response has none) and the body as text, or the I/O error.
///
/// # Errors
/// Whatever connecting, writing or reading fails with.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
