//! [`ResponseFormat`]: how the layer writes the bodies of its own
//! responses, chosen on the builder.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use super::denial::Denial;

/// A user-supplied writer of 429 responses.
pub type DenialFn = dyn Fn(&Denial<'_>) -> Response<Bytes> + Send + Sync;

/// How the body of a 429 (and of the layer's 400, 401 and 503) is written.
///
/// For a gRPC call every format but a custom function answers a gRPC
/// Trailers-Only response instead (see the [module docs](super)): a JSON
/// body is never what a gRPC client can read.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ResponseFormat {
    /// `application/json`:
    /// `{"error":"rate_limited","policy":"api","retry_after_ms":1500}`
    /// (`retry_after_ms` is `null` when the request can never pass). The
    /// layer's other responses are `{"error":"missing_key"}`,
    /// `{"error":"key_too_long"}` and `{"error":"rate_limiter_unavailable"}`.
    #[default]
    Json,
    /// `application/problem+json` (RFC 9457): `type` (`about:blank`),
    /// `title`, `status`, `detail`, plus `policy` and `retry_after_ms` on a
    /// 429.
    ProblemJson,
    /// A function of the [`Denial`] writes 429s, gRPC calls included (see
    /// [`Denial::is_grpc`] and [`Denial::grpc_response`]); the layer adds
    /// the rate limit fields, and `Retry-After` unless the function set it.
    /// The layer's other responses are written as [`Json`](Self::Json)
    /// writes them.
    Custom(Arc<DenialFn>),
}

impl ResponseFormat {
    /// A function writing 429 responses.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Response, StatusCode};
    /// use tollgate_tower::ResponseFormat;
    ///
    /// let format = ResponseFormat::custom(|denial| {
    ///     let mut response = Response::new(Bytes::from(format!("slow down ({})", denial.policy)));
    ///     *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    ///     response
    /// });
    /// # let _ = format;
    /// ```
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&Denial<'_>) -> Response<Bytes> + Send + Sync + 'static,
    {
        ResponseFormat::Custom(Arc::new(f))
    }
}

impl fmt::Debug for ResponseFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseFormat::Json => f.write_str("Json"),
            ResponseFormat::ProblemJson => f.write_str("ProblemJson"),
            ResponseFormat::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}
