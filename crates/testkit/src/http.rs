//! HTTP clients for tests that talk to a real server.
//!
//! - [`Client`]: an async client (reqwest, never through a proxy from the
//!   environment) bound to one server's address, for JSON and text
//!   requests, its responses read whole into a [`Reply`].
//! - [`request`]: a tiny blocking HTTP/1.1 client for tests that talk to a
//!   server as a plain socket would: one request per connection, bounded
//!   in time, no proxy, no pooling, nothing parsed but the status and the
//!   body.
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
//!
//! # async fn example(address: std::net::SocketAddr) {
//! let client = tollgate_testkit::http::Client::new(address);
//! client.wait_until_up("/healthz").await;
//! let (status, body) = client
//!     .post_json("/v1/check", r#"{"policy":"api","key":"me"}"#)
//!     .await;
//! assert_eq!((status, body["allowed"].as_bool()), (200, Some(true)));
//! # }
//! ```

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Pause between attempts of [`Client::wait_until_up`].
const UP_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// A reqwest client that never goes through a proxy from the environment.
///
/// # Panics
/// When the client cannot be built.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// An async client of the server at one address. Requests panic when they
/// get no response: tests assert on responses.
#[derive(Debug, Clone)]
pub struct Client {
    /// The server's address.
    pub address: SocketAddr,
    /// The reqwest client (see [`client`]), for requests the methods here
    /// do not build.
    pub reqwest: reqwest::Client,
}

impl Client {
    /// A client of the server at `address`.
    pub fn new(address: SocketAddr) -> Client {
        Client {
            address,
            reqwest: client(),
        }
    }

    /// The URL of `path` (which starts with `/`) on the server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Waits until a GET of `path` gets a response (of any status): the
    /// server is up.
    pub async fn wait_until_up(&self, path: &str) {
        while self.reqwest.get(self.url(path)).send().await.is_err() {
            tokio::time::sleep(UP_POLL_INTERVAL).await;
        }
    }

    /// A `method` request of `path`, its response read whole.
    pub async fn send(&self, method: reqwest::Method, path: &str) -> Reply {
        let request = self.reqwest.request(method, self.url(path));
        Reply::of(request.send().await.expect("response")).await
    }

    /// A GET of `path`, its response read whole.
    pub async fn get(&self, path: &str) -> Reply {
        self.get_with(path, &[]).await
    }

    /// A GET of `path` with `headers` (name, value), its response read
    /// whole.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.reqwest.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::of(request.send().await.expect("response")).await
    }

    /// A GET of `path`: the status and the body as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let reply = self.get(path).await;
        (reply.status, reply.body)
    }

    /// A POST of the JSON text `body` to `path`, with `headers` (name,
    /// value) besides its `content-type`: the response, unread.
    pub async fn post_with(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .reqwest
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("response")
    }

    /// A POST of the JSON text `body` to `path`: the response, unread.
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.post_with(path, body, &[]).await
    }

    /// A POST of the JSON text `body` to `path`: the status and the body
    /// as JSON (`Null` when empty).
    ///
    /// # Panics
    /// When the body is not JSON (the message quotes it).
    pub async fn post_json(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let reply = Reply::of(self.post(path, body).await).await;
        (reply.status, reply.json())
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The header fields.
    pub headers: reqwest::header::HeaderMap,
    /// The body, as text.
    pub body: String,
}

impl Reply {
    /// Reads `response` whole.
    pub async fn of(response: reqwest::Response) -> Reply {
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("body"),
        }
    }

    /// The header `name`: every field line joined with ", ", as HTTP
    /// combines list fields; `None` when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text header"))
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// The body as JSON; `Null` when empty.
    ///
    /// # Panics
    /// When the body is not JSON (the message quotes it).
    pub fn json(&self) -> serde_json::Value {
        if self.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
        }
    }
}

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
