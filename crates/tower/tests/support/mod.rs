//! Shared by the end-to-end tests: a real axum server on 127.0.0.1:0 and a
//! real HTTP client.

#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tollgate::{Limiter, ManualClock, MemoryStore};

/// A start time on a whole minute, so fixed windows start with the test.
pub const START_US: u64 = 1_700_000_040_000_000;

/// A server running an app until dropped.
pub struct Server {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

impl Server {
    /// Serves `app` with `ConnectInfo` (as every real deployment must).
    pub async fn start(app: Router) -> Server {
        Self::start_with(app, true).await
    }

    /// Serves `app`, with or without `ConnectInfo`.
    pub async fn start_with(app: Router, connect_info: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let stop = async move {
            let _ = stop.await;
        };
        tokio::spawn(async move {
            let result = if connect_info {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stop)
                .await
            } else {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            };
            result.expect("server");
        });
        Server {
            address,
            client: client(),
            _shutdown: shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::of(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("response"),
        )
        .await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::of(request.send().await.expect("response")).await
    }
}

/// A client that never goes through a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
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
}

/// A limiter over a memory store on `clock`, with `policies` (name, text).
pub fn limiter(clock: &ManualClock, policies: &[(&str, &str)]) -> Limiter<MemoryStore> {
    let mut builder = Limiter::builder(MemoryStore::with_clock(clock.clone()));
    for (name, text) in policies {
        builder = builder.policy(*name, text.parse().expect("policy"));
    }
    builder.build()
}
