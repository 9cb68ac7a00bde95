//! The layer on a plain hyper server, without axum's router: any
//! `Service<http::Request<B>>` can be limited.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use support::{START_US, limiter};
use tollgate::ManualClock;
use tollgate_testkit::serve::Served;
use tollgate_tower::RateLimitLayer;
use tower::{Layer, ServiceExt, service_fn};

#[tokio::test]
async fn limits_a_plain_hyper_service() {
    let clock = ManualClock::new(START_US);
    let layer = RateLimitLayer::builder(limiter(&clock, &[("api", "sliding_log 1/1m")]))
        .policy("api")
        .build()
        .expect("layer");
    let hello = service_fn(|_request: http::Request<Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(String::from("hello")))
    });
    let limited = layer.layer(hello);

    let served = Served::start(|listener, _shutdown| async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            // Without axum's `into_make_service_with_connect_info`, the
            // server inserts the peer address itself.
            let service =
                limited
                    .clone()
                    .map_request(move |mut request: http::Request<Incoming>| {
                        request
                            .extensions_mut()
                            .insert(ConnectInfo::<SocketAddr>(peer));
                        request
                    });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
            );
        }
    })
    .await;

    let first = served.get("/").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["ratelimit"], r#""api";r=0;t=60"#);
    assert_eq!(first.body, "hello");
    let second = served.get("/").await;
    assert_eq!(second.status, 429);
    assert_eq!(second.headers["retry-after"], "60");
}
