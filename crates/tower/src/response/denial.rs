//! [`Denial`]: a 429 as a [`ResponseFormat::Custom`](super::ResponseFormat::Custom)
//! function sees it, made from the check's
//! [`Answer`](tollgate::answer::Answer), and the gRPC reply the built-in
//! formats send for it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response};
use tollgate::answer::{Answer, PolicyDecision, ceil_millis};

use super::grpc::{GRPC_RETRY_PUSHBACK_MS, GrpcCode, Protocol, trailers_only};
use crate::key::Key;

/// Why a request is answered with 429: what a [`ResponseFormat::Custom`]
/// function sees.
///
/// [`ResponseFormat::Custom`]: super::ResponseFormat::Custom
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Denial<'a> {
    /// The policy that denied (with several, the one whose denial lasts
    /// longest: [`tollgate::answer::denying`]).
    pub policy: &'a str,
    /// When the same request would pass if nothing else happens; `None`
    /// when it never can.
    pub retry_after: Option<Duration>,
    /// The key the request was charged to.
    pub key: &'a Key,
    /// Every policy's decision, in the order the layer names them.
    pub decisions: &'a [PolicyDecision<'a>],
    /// The request was admitted by a `leaky_bucket` policy but would have
    /// had to wait longer than the layer's maximum delay (its place in the
    /// queue is spent: it drains at the policy's rate).
    pub queued_too_long: bool,
    /// How the request is answered: from its `content-type`.
    pub(crate) protocol: Protocol,
}

impl<'a> Denial<'a> {
    /// The denial `answer` (a [`Verdict::Deny`](tollgate::answer::Verdict))
    /// says, for `key`, to a request of `protocol`.
    pub(crate) fn new(answer: &Answer<'a>, key: &'a Key, protocol: Protocol) -> Self {
        Denial {
            policy: answer.deciding().map_or("", |d| d.name),
            retry_after: answer.retry_after(),
            key,
            decisions: answer.decisions(),
            queued_too_long: answer.queued_too_long(),
            protocol,
        }
    }

    /// Whether the request is a gRPC call (a `POST` whose `content-type`
    /// is `application/grpc`, `application/grpc+<subtype>`, or gRPC-Web's).
    pub fn is_grpc(&self) -> bool {
        self.protocol != Protocol::Http
    }

    /// The response the built-in formats send a gRPC call for this denial:
    /// `200 OK`, an empty body, `grpc-status: 8` (`RESOURCE_EXHAUSTED`), a
    /// percent-encoded `grpc-message` naming the policy and the wait, and
    /// `grpc-retry-pushback-ms`. For a [`ResponseFormat::custom`] function
    /// that writes its own HTTP responses but keeps gRPC's:
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Response, StatusCode};
    /// use tollgate_tower::ResponseFormat;
    ///
    /// let format = ResponseFormat::custom(|denial| {
    ///     if denial.is_grpc() {
    ///         return denial.grpc_response();
    ///     }
    ///     let mut response = Response::new(Bytes::from_static(b"<h1>Slow down</h1>"));
    ///     *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    ///     response
    /// });
    /// # let _ = format;
    /// ```
    ///
    /// [`ResponseFormat::custom`]: super::ResponseFormat::custom
    pub fn grpc_response(&self) -> Response<Bytes> {
        let mut response =
            trailers_only(self.protocol, GrpcCode::ResourceExhausted, &self.detail());
        // gRFC A6: a signed 32-bit count of milliseconds; negative means
        // "do not retry", which is right when no wait helps.
        let pushback = self.retry_after.map_or(-1, |wait| {
            i32::try_from(ceil_millis(wait)).unwrap_or(i32::MAX)
        });
        response
            .headers_mut()
            .insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from(pushback));
        response
    }

    /// What went wrong, in words: the problem's `detail`, the gRPC message.
    pub(crate) fn detail(&self) -> String {
        match (self.queued_too_long, self.retry_after.map(ceil_millis)) {
            (true, Some(ms)) => format!(
                "the request would wait longer than allowed in the queue of policy \"{}\"; retry in {ms} ms",
                self.policy
            ),
            (false, Some(ms)) => format!(
                "rate limit of policy \"{}\" exceeded; retry in {ms} ms",
                self.policy
            ),
            (_, None) => format!(
                "the request costs more than policy \"{}\" can ever grant",
                self.policy
            ),
        }
    }
}
