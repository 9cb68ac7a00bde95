//! What the layer writes: rate limit header fields and its own responses,
//! all translated from the check's [`Answer`](tollgate::answer::Answer)
//! (the rules of which policy decides, how long to wait and how the field
//! values are written live in `tollgate::answer`, shared with
//! `tollgate serve`).
//!
//! - `headers.rs`: the header fields ([`RATELIMIT_POLICY`], [`RATELIMIT`],
//!   the legacy ones, [`TOLLGATE_DEGRADED`]);
//! - `http.rs`: the 429 and the 400, 401 and 503 bodies;
//! - `grpc.rs`: gRPC calls, refused with Trailers-Only responses;
//! - `json.rs`: the JSON writer of the bodies;
//! - `format.rs` and `denial.rs`: the public [`ResponseFormat`] and
//!   [`Denial`].
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
//! - `q`: the policy's limit ([`Policy::limit`](tollgate::Policy::limit)), units per window;
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
//! A gRPC call (a `POST` whose `content-type` is `application/grpc`,
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

mod denial;
mod format;
mod grpc;
mod headers;
mod http;
mod json;

pub use denial::Denial;
pub use format::{DenialFn, ResponseFormat};
pub use headers::{
    RATELIMIT, RATELIMIT_POLICY, TOLLGATE_DEGRADED, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
};
pub use tollgate::answer::PolicyDecision;

pub(crate) use self::http::{Refusal, refusal, too_many_requests};
pub(crate) use grpc::Protocol;
pub(crate) use headers::{FieldSwitches, LimitFields};
