//! What the layer writes: rate limit header fields and its own responses.
//!
//! On every response of a limited request, allowed or denied, the layer adds
//! the header fields of draft-ietf-httpapi-ratelimit-headers-10, one list
//! member per policy checked:
//!
//! ```text
//! RateLimit-Policy: "per_second";q=10;w=1, "per_hour";q=1000;w=3600
//! RateLimit: "per_second";r=7;t=1, "per_hour";r=975;t=3600
//! ```
//!
//! - `q`: the policy's limit ([`Policy::limit`]), units per window;
//! - `w`: the policy's period in whole seconds, rounded up;
//! - `r`: [`Decision::remaining`](tollgate::Decision);
//! - `t`: [`Decision::reset_after`](tollgate::Decision) in whole seconds,
//!   rounded up (the draft's fields are integers, and a client waiting the
//!   rounded-up time is never early).
//!
//! With stacked layers each appends its own field line; a list spread over
//! several lines is one list in HTTP, so clients see every policy.
//! The legacy `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset` (seconds until reset, not a timestamp) are off by
//! default; when on, they describe the most constrained policy (the denying
//! one, else the one with the fewest remaining) and an inner layer's values
//! are kept.
//!
//! A denial is `429 Too Many Requests` with `Retry-After` in whole seconds
//! rounded up (so never `0` for a positive wait), and a body chosen by
//! [`ResponseFormat`]. When the request can never pass (its cost exceeds what
//! the policy can grant at once), `retry_after` is `None`: `Retry-After` is
//! left out, since no wait helps, and `retry_after_ms` is `null`.
//!
//! A gRPC call (the request's `content-type` is `application/grpc`,
//! `application/grpc+<subtype>`, or gRPC-Web's `application/grpc-web[+..]` /
//! `application/grpc-web-text[+..]`) is refused the way a gRPC server
//! refuses one: a *Trailers-Only* response, `200 OK` with an empty body and
//! `grpc-status` and a percent-encoded `grpc-message` among the headers.
//! The codes are `RESOURCE_EXHAUSTED` (8) for a denial, `INVALID_ARGUMENT`
//! (3) for a missing or too long key, `UNAUTHENTICATED` (16) for
//! [`MissingKey::Unauthorized`](crate::MissingKey::Unauthorized) and
//! `UNAVAILABLE` (14) when the store failed and the layer denies. A denial
//! also carries `grpc-retry-pushback-ms` (the wait in milliseconds, `-1`
//! when it can never pass), which gRPC clients with a retry policy obey,
//! besides `Retry-After` and the rate limit fields. This holds for every
//! format except the function of a [`ResponseFormat::Custom`], which writes
//! its own denials ([`Denial::grpc_response`] gives it the default).

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use tollgate::{Decision, Policy};

use crate::key::Key;

/// The `RateLimit-Policy` header field.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header field.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The legacy `X-RateLimit-Limit` header field.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// The legacy `X-RateLimit-Remaining` header field.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// The legacy `X-RateLimit-Reset` header field (seconds until reset).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// gRPC's status code field (a Trailers-Only response carries it among the
/// headers).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC's status message field, percent-encoded.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC's server pushback (gRFC A6): milliseconds until a retry, negative
/// for "do not retry".
const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// A user-supplied writer of 429 responses.
pub type DenialFn = dyn Fn(&Denial<'_>) -> Response<Bytes> + Send + Sync;

/// How the body of a 429 (and of the layer's 400, 401 and 503) is written.
///
/// For a gRPC call every format but a custom function answers a gRPC
/// Trailers-Only response instead (see the [module docs](self)): a JSON
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

/// One policy's decision for a request.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PolicyDecision<'a> {
    /// The policy's name.
    pub name: &'a str,
    /// The policy.
    pub policy: &'a Policy,
    /// Its decision.
    pub decision: Decision,
}

/// Why a request is answered with 429: what a [`ResponseFormat::Custom`]
/// function sees.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Denial<'a> {
    /// The policy that denied (with several, the one whose denial lasts
    /// longest).
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

impl Denial<'_> {
    /// Whether the request is a gRPC call (its `content-type` is
    /// `application/grpc`, `application/grpc+<subtype>`, or gRPC-Web's).
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
    pub fn grpc_response(&self) -> Response<Bytes> {
        let mut response = trailers_only(
            self.protocol,
            GrpcCode::ResourceExhausted,
            &denial_detail(self),
        );
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
}

/// How the layer's own responses are encoded, from the request's
/// `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Anything else: HTTP status codes and a body per [`ResponseFormat`].
    Http,
    /// `application/grpc`, `application/grpc+<subtype>`.
    Grpc,
    /// `application/grpc-web`, `application/grpc-web+<subtype>`.
    GrpcWeb,
    /// `application/grpc-web-text`, `application/grpc-web-text+<subtype>`
    /// (base64 framing, which an empty body does not need).
    GrpcWebText,
}

impl Protocol {
    /// The protocol of a request with these headers. Media types compare
    /// case-insensitively and parameters (`; charset=..`) are ignored. A
    /// type that merely begins with `application/grpc` (`application/grpcx`)
    /// is not gRPC.
    pub(crate) fn of(headers: &HeaderMap) -> Protocol {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return Protocol::Http;
        };
        let media = value.as_bytes().split(|&b| b == b';').next();
        let Some(rest) =
            media.and_then(|m| strip_prefix_ignore_case(m.trim_ascii(), b"application/grpc"))
        else {
            return Protocol::Http;
        };
        // "" or "+<subtype>": the family is all that was left.
        let ends_family = |rest: &[u8]| rest.is_empty() || rest.starts_with(b"+");
        if ends_family(rest) {
            Protocol::Grpc
        } else if strip_prefix_ignore_case(rest, b"-web-text").is_some_and(ends_family) {
            Protocol::GrpcWebText
        } else if strip_prefix_ignore_case(rest, b"-web").is_some_and(ends_family) {
            Protocol::GrpcWeb
        } else {
            Protocol::Http
        }
    }

    /// The `content-type` of a gRPC response to such a request (no body
    /// follows, so the subtype does not matter).
    fn grpc_content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Protocol::Http | Protocol::Grpc => "application/grpc",
            Protocol::GrpcWeb => "application/grpc-web",
            Protocol::GrpcWebText => "application/grpc-web-text",
        })
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = text.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// The gRPC status codes the layer answers with, numbered as in gRPC's list
/// of status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrpcCode {
    InvalidArgument = 3,
    ResourceExhausted = 8,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// A gRPC Trailers-Only response: `200 OK`, the gRPC `content-type`, the
/// status and its message in the headers, and no body (the layer's
/// `RateLimitBody` then ends the stream with the headers).
fn trailers_only(protocol: Protocol, code: GrpcCode, message: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, protocol.grpc_content_type());
    headers.insert(GRPC_STATUS, HeaderValue::from(code as u16));
    headers.insert(GRPC_MESSAGE, grpc_message(message));
    response
}

/// `text` as a `grpc-message` value: UTF-8, then every byte outside
/// printable ASCII, and `%`, as `%XX` (upper-case hex), as gRPC over HTTP/2
/// specifies. A space at either end is encoded too, since HTTP strips
/// whitespace around a field value.
fn grpc_message(text: &str) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let at_edge = i == 0 || i + 1 == bytes.len();
        let plain = matches!(b, 0x20..=0x7e) && b != b'%' && !(b == b' ' && at_edge);
        if plain {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    // Only printable ASCII is left, which a header value always accepts.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Whole milliseconds, rounded up (saturating).
pub(crate) fn ceil_millis(duration: Duration) -> u64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

/// The decimal digits of `n`, written into `buf`: without the formatting
/// machinery, as this runs for every limited request.
pub(crate) fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut rest = n;
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &buf[start..]
}

/// A structured-field string: `"name"`, with `"` and `\` escaped. Policy
/// names are checked to be printable ASCII when the layer is built, which
/// quotes each name once.
pub(crate) fn sf_string(text: &str) -> Box<str> {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out.into_boxed_str()
}

/// Whether `name` can be written as a structured-field string.
pub(crate) fn is_sf_printable(name: &str) -> bool {
    name.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// The `RateLimit-Policy` value of these policies (names already quoted
/// with [`sf_string`]), e.g. `"api";q=100;w=60, "hourly";q=1000;w=3600`.
pub(crate) fn policy_header<'a>(
    policies: impl IntoIterator<Item = (&'a str, &'a Policy)>,
) -> Option<HeaderValue> {
    let mut value = String::new();
    for (i, (quoted, policy)) in policies.into_iter().enumerate() {
        if i > 0 {
            value.push_str(", ");
        }
        value.push_str(quoted);
        // Writing to a String cannot fail.
        let _ = write!(
            value,
            ";q={};w={}",
            policy.limit(),
            ceil_secs(policy.period())
        );
    }
    HeaderValue::try_from(value).ok()
}

/// The `RateLimit` value of these decisions, e.g. `"api";r=42;t=17`;
/// `quoted` holds each policy's name as [`sf_string`] wrote it.
///
/// Written by hand into a stack buffer (this runs for every limited
/// request): each member takes at most its quoted name plus 48 bytes
/// (`, `, `;r=`, `;t=` and two 20-digit numbers).
pub(crate) fn ratelimit_header(
    quoted: &[Box<str>],
    decisions: &[PolicyDecision<'_>],
) -> Option<HeaderValue> {
    let bound: usize = quoted.iter().map(|name| name.len() + 48).sum();
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf = if bound <= stack.len() {
        &mut stack[..]
    } else {
        heap.resize(bound, 0);
        &mut heap[..]
    };
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        buf[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    let mut digits = [0; 20];
    for (i, (name, d)) in quoted.iter().zip(decisions).enumerate() {
        if i > 0 {
            put(b", ");
        }
        put(name.as_bytes());
        put(b";r=");
        put(decimal(d.decision.remaining, &mut digits));
        put(b";t=");
        put(decimal(ceil_secs(d.decision.reset_after), &mut digits));
    }
    let written = &buf[..len];
    HeaderValue::from_bytes(written).ok()
}

/// The legacy fields for the most constrained of `decisions`.
pub(crate) fn legacy_headers(
    decisions: &[PolicyDecision<'_>],
    denying: Option<&str>,
) -> Option<[(HeaderName, HeaderValue); 3]> {
    let tightest = match denying {
        Some(name) => decisions.iter().find(|d| d.name == name),
        None => decisions.iter().min_by_key(|d| {
            (
                d.decision.remaining,
                std::cmp::Reverse(d.decision.reset_after),
            )
        }),
    }?;
    Some([
        (
            X_RATELIMIT_LIMIT,
            HeaderValue::from(tightest.policy.limit()),
        ),
        (
            X_RATELIMIT_REMAINING,
            HeaderValue::from(tightest.decision.remaining),
        ),
        (
            X_RATELIMIT_RESET,
            HeaderValue::from(ceil_secs(tightest.decision.reset_after)),
        ),
    ])
}

/// A JSON string literal.
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// What went wrong, in words: the problem's `detail`, the gRPC message.
fn denial_detail(denial: &Denial<'_>) -> String {
    match (denial.queued_too_long, denial.retry_after.map(ceil_millis)) {
        (true, Some(ms)) => format!(
            "the request would wait longer than allowed in the queue of policy \"{}\"; retry in {ms} ms",
            denial.policy
        ),
        (false, Some(ms)) => format!(
            "rate limit of policy \"{}\" exceeded; retry in {ms} ms",
            denial.policy
        ),
        (_, None) => format!(
            "the request costs more than policy \"{}\" can ever grant",
            denial.policy
        ),
    }
}

/// The 429 for `denial`, with `Retry-After` (the rate limit fields are added
/// by the caller).
pub(crate) fn too_many_requests(format: &ResponseFormat, denial: &Denial<'_>) -> Response<Bytes> {
    let retry_json = denial
        .retry_after
        .map_or_else(|| "null".to_owned(), |wait| ceil_millis(wait).to_string());
    let mut response = match format {
        // The user's explicit choice, gRPC calls included.
        ResponseFormat::Custom(f) => f(denial),
        _ if denial.is_grpc() => denial.grpc_response(),
        ResponseFormat::Json => {
            let mut body = String::from(r#"{"error":"rate_limited","policy":"#);
            json_string(&mut body, denial.policy);
            let _ = write!(body, r#","retry_after_ms":{retry_json}}}"#);
            json_response(StatusCode::TOO_MANY_REQUESTS, "application/json", body)
        }
        ResponseFormat::ProblemJson => {
            let mut body = String::from(
                r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"#,
            );
            json_string(&mut body, &denial_detail(denial));
            body.push_str(r#","policy":"#);
            json_string(&mut body, denial.policy);
            let _ = write!(body, r#","retry_after_ms":{retry_json}}}"#);
            json_response(
                StatusCode::TOO_MANY_REQUESTS,
                "application/problem+json",
                body,
            )
        }
    };
    if let Some(wait) = denial.retry_after {
        if !response.headers().contains_key(RETRY_AFTER) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
        }
    }
    response
}

/// Why the layer answers a request itself, other than a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No key and the layer rejects with 400.
    MissingKey,
    /// No key and the layer rejects with 401.
    Unauthenticated,
    /// The key is longer than the limiter accepts.
    KeyTooLong,
    /// The store failed and the layer denies.
    Unavailable,
}

/// The response for `refusal`, to a request of `protocol`.
pub(crate) fn refusal(
    format: &ResponseFormat,
    protocol: Protocol,
    refusal: Refusal,
    challenge: Option<&HeaderValue>,
) -> Response<Bytes> {
    let (status, grpc_code, code, detail) = match refusal {
        Refusal::MissingKey => (
            StatusCode::BAD_REQUEST,
            GrpcCode::InvalidArgument,
            "missing_key",
            "the request does not carry what it is rate limited by",
        ),
        Refusal::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            GrpcCode::Unauthenticated,
            "missing_key",
            "the request does not carry the credentials it is rate limited by",
        ),
        Refusal::KeyTooLong => (
            StatusCode::BAD_REQUEST,
            GrpcCode::InvalidArgument,
            "key_too_long",
            "the request's rate limiting key is too long",
        ),
        Refusal::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::Unavailable,
            "rate_limiter_unavailable",
            "the rate limiter cannot decide right now",
        ),
    };
    let mut response = match format {
        // Whatever the format: only a custom function's 429s are the user's.
        _ if protocol != Protocol::Http => trailers_only(protocol, grpc_code, detail),
        ResponseFormat::ProblemJson => {
            let mut body = String::from(r#"{"type":"about:blank","title":"#);
            json_string(&mut body, status.canonical_reason().unwrap_or_default());
            let _ = write!(body, r#","status":{},"detail":"#, status.as_u16());
            json_string(&mut body, detail);
            body.push('}');
            json_response(status, "application/problem+json", body)
        }
        ResponseFormat::Json | ResponseFormat::Custom(_) => {
            let body = format!(r#"{{"error":"{code}"}}"#);
            json_response(status, "application/json", body)
        }
    };
    if let (Refusal::Unauthenticated, Some(challenge)) = (refusal, challenge) {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, challenge.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        text.parse().expect("policy")
    }

    #[test]
    fn rounds_up_to_whole_seconds_and_millis() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(17)), 17);
        assert_eq!(ceil_secs(Duration::from_millis(16_001)), 17);
        assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(Duration::from_micros(59_500_000)), 59_500);
        assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn policy_and_ratelimit_fields_are_structured_field_lists() {
        let api = policy("100/1m");
        let fast = policy("10/500ms");
        let (api_name, fast_name) = (sf_string("api"), sf_string("fa\"st"));
        let header = policy_header([(&*api_name, &api), (&*fast_name, &fast)]).expect("header");
        assert_eq!(header, r#""api";q=100;w=60, "fa\"st";q=10;w=1"#);
        let decision = Decision {
            allowed: true,
            limit: 100,
            remaining: 42,
            reset_after: Duration::from_millis(16_200),
            retry_after: None,
            delay: Duration::ZERO,
            degraded: false,
        };
        let decisions = [PolicyDecision {
            name: "api",
            policy: &api,
            decision,
        }];
        let header = ratelimit_header(&[api_name], &decisions).expect("header");
        assert_eq!(header, r#""api";r=42;t=17"#);
        let mut digits = [0; 20];
        for n in [0, 7, 10, 12_345, u64::MAX] {
            assert_eq!(decimal(n, &mut digits), n.to_string().as_bytes());
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        // Printable ASCII stays, quotes included; `%`, control bytes and
        // every byte of a non-ASCII character become `%XX`.
        let cases = [
            (r#"policy "api" exceeded"#, r#"policy "api" exceeded"#),
            ("100% used", "100%25 used"),
            ("café ☕", "caf%C3%A9 %E2%98%95"),
            ("two\nlines\t", "two%0Alines%09"),
            ("\u{7f}~", "%7F~"),
            (" padded ", "%20padded%20"),
            (" ", "%20"),
            ("", ""),
        ];
        for (text, encoded) in cases {
            assert_eq!(grpc_message(text), encoded, "{text:?}");
        }
    }

    #[test]
    fn grpc_calls_are_told_apart_by_content_type() {
        let of = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, content_type.parse().expect("value"));
            Protocol::of(&headers)
        };
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "Application/GRPC+proto",
            "application/grpc; charset=utf-8",
        ] {
            assert_eq!(of(grpc), Protocol::Grpc, "{grpc}");
        }
        for web in ["application/grpc-web", "application/grpc-web+proto"] {
            assert_eq!(of(web), Protocol::GrpcWeb, "{web}");
        }
        for text in [
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ] {
            assert_eq!(of(text), Protocol::GrpcWebText, "{text}");
        }
        for http in [
            "application/json",
            "application/grpcx",
            "application/grpc-webx",
            "application/grpc-web-textual",
            "text/plain; x=application/grpc",
            "",
        ] {
            assert_eq!(of(http), Protocol::Http, "{http}");
        }
        assert_eq!(Protocol::of(&HeaderMap::new()), Protocol::Http);
    }

    fn header<'r>(response: &'r Response<Bytes>, name: &str) -> Option<&'r str> {
        let value = response.headers().get(name)?;
        Some(value.to_str().expect("text header"))
    }

    #[test]
    fn a_grpc_denial_is_trailers_only_resource_exhausted() {
        let key = Key::from("header:k1");
        let denial = |retry_after, protocol| Denial {
            policy: "api",
            retry_after,
            key: &key,
            decisions: &[],
            queued_too_long: false,
            protocol,
        };
        for format in [ResponseFormat::Json, ResponseFormat::ProblemJson] {
            let wait = Some(Duration::from_micros(59_500_001));
            let response = too_many_requests(&format, &denial(wait, Protocol::Grpc));
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.body().is_empty());
            assert_eq!(header(&response, "content-type"), Some("application/grpc"));
            assert_eq!(header(&response, "grpc-status"), Some("8"));
            assert_eq!(
                header(&response, "grpc-message"),
                Some(r#"rate limit of policy "api" exceeded; retry in 59501 ms"#)
            );
            assert_eq!(header(&response, "grpc-retry-pushback-ms"), Some("59501"));
            assert_eq!(header(&response, "retry-after"), Some("60"));

            // No wait helps: tell a retrying client not to.
            let never = too_many_requests(&format, &denial(None, Protocol::GrpcWebText));
            assert_eq!(
                header(&never, "content-type"),
                Some("application/grpc-web-text")
            );
            assert_eq!(header(&never, "grpc-retry-pushback-ms"), Some("-1"));
            assert_eq!(header(&never, "retry-after"), None);
            assert_eq!(
                header(&never, "grpc-message"),
                Some(r#"the request costs more than policy "api" can ever grant"#)
            );

            // Pushback is a signed 32-bit count of milliseconds.
            let long = Some(Duration::from_secs(100 * 86_400));
            let long = too_many_requests(&format, &denial(long, Protocol::GrpcWeb));
            assert_eq!(
                header(&long, "grpc-retry-pushback-ms"),
                Some(i32::MAX.to_string().as_str())
            );

            // Plain HTTP is untouched.
            let http = too_many_requests(&format, &denial(wait, Protocol::Http));
            assert_eq!(http.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(header(&http, "grpc-status"), None);
        }

        // A custom function writes denials, gRPC or not.
        let custom = ResponseFormat::custom(|denial| {
            let mut response = Response::new(Bytes::from_static(b"custom"));
            *response.status_mut() = if denial.is_grpc() {
                StatusCode::IM_A_TEAPOT
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            response
        });
        let response = too_many_requests(&custom, &denial(None, Protocol::Grpc));
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(header(&response, "grpc-status"), None);
    }

    #[test]
    fn grpc_refusals_carry_the_closest_status_code() {
        let challenge = HeaderValue::from_static("Bearer");
        let cases = [
            (Refusal::MissingKey, "3"),
            (Refusal::Unauthenticated, "16"),
            (Refusal::KeyTooLong, "3"),
            (Refusal::Unavailable, "14"),
        ];
        let custom = ResponseFormat::custom(|_| Response::new(Bytes::new()));
        for format in [ResponseFormat::Json, ResponseFormat::ProblemJson, custom] {
            for (refused, code) in cases {
                let response = refusal(&format, Protocol::Grpc, refused, Some(&challenge));
                assert_eq!(response.status(), StatusCode::OK, "{refused:?}");
                assert!(response.body().is_empty());
                assert_eq!(header(&response, "content-type"), Some("application/grpc"));
                assert_eq!(header(&response, "grpc-status"), Some(code), "{refused:?}");
                assert!(header(&response, "grpc-message").is_some_and(|m| m.starts_with("the ")));
                assert_eq!(header(&response, "grpc-retry-pushback-ms"), None);
                let www = header(&response, "www-authenticate");
                assert_eq!(www.is_some(), refused == Refusal::Unauthenticated);
            }
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\u{1}é");
        assert_eq!(out, r#""a\"b\\c\u0001é""#);
        assert!(is_sf_printable("api v2"));
        assert!(!is_sf_printable("café"));
        assert!(!is_sf_printable("tab\t"));
    }
}
