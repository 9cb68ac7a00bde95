//! Raw gRPC requests for tests that speak HTTP/2 themselves (with the `h2`
//! crate) to do what a well-behaved gRPC client would not: open streams and
//! never send their message, trickle a message, announce an oversized one.

use std::net::SocketAddr;

/// The path of Envoy's `ShouldRateLimit` call.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The head of a `ShouldRateLimit` call to the server at `addr`: POST, the
/// gRPC content type and `te: trailers`, no body.
///
/// ```
/// let call = tollgate_testkit::grpc::rls_call("127.0.0.1:8081".parse().unwrap());
/// assert_eq!(call.method(), "POST");
/// assert_eq!(call.headers()["content-type"], "application/grpc");
/// ```
///
/// # Panics
/// Never for a socket address (the request is always well formed).
pub fn rls_call(addr: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{SHOULD_RATE_LIMIT}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a well-formed request")
}
