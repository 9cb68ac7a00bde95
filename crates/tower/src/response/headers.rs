//! The rate limit header fields, translated from a check's
//! [`Answer`]: the values are the core's (`tollgate::answer`), this file
//! only names the fields and adds them to a response.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate::answer::{self, Answer};

/// The `RateLimit-Policy` header field.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static(answer::RATELIMIT_POLICY);
/// The `RateLimit` header field.
pub const RATELIMIT: HeaderName = HeaderName::from_static(answer::RATELIMIT);
/// The legacy `X-RateLimit-Limit` header field.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static(answer::X_RATELIMIT_LIMIT);
/// The legacy `X-RateLimit-Remaining` header field.
pub const X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static(answer::X_RATELIMIT_REMAINING);
/// The legacy `X-RateLimit-Reset` header field (seconds until reset).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static(answer::X_RATELIMIT_RESET);
/// The header [`RateLimitLayerBuilder::degraded_header`](crate::RateLimitLayerBuilder::degraded_header)
/// adds (the same as `tollgate serve`'s).
pub const TOLLGATE_DEGRADED: HeaderName = HeaderName::from_static(answer::TOLLGATE_DEGRADED);

/// Which of the fields a layer sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldSwitches {
    /// `RateLimit-Policy` and `RateLimit`.
    pub(crate) standard: bool,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    pub(crate) legacy: bool,
    /// `Tollgate-Degraded: true` on a degraded answer.
    pub(crate) degraded: bool,
}

/// The rate limit header fields of one answer.
pub(crate) struct LimitFields {
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
    // Boxed: off by default, and the fields are moved through a future.
    legacy: Option<Box<[(HeaderName, HeaderValue); 3]>>,
    /// Some decision was made without the shared store.
    degraded: bool,
}

impl LimitFields {
    /// The fields `on` selects for `answer`; `policy_field` is the
    /// `RateLimit-Policy` value of its policies, written once per layer.
    pub(crate) fn new(
        answer: &Answer<'_>,
        policy_field: Option<&HeaderValue>,
        on: FieldSwitches,
    ) -> Self {
        let legacy = on.legacy.then(|| answer.legacy_fields()).flatten();
        LimitFields {
            policy: policy_field.filter(|_| on.standard).cloned(),
            ratelimit: on.standard.then(|| ratelimit_value(answer)).flatten(),
            legacy: legacy.map(|fields| {
                Box::new([
                    (X_RATELIMIT_LIMIT, HeaderValue::from(fields.limit)),
                    (X_RATELIMIT_REMAINING, HeaderValue::from(fields.remaining)),
                    (X_RATELIMIT_RESET, HeaderValue::from(fields.reset)),
                ])
            }),
            degraded: on.degraded && answer.degraded(),
        }
    }

    /// Appends the standard fields (stacked layers each add their list
    /// members) and sets the legacy ones unless an inner layer did.
    pub(crate) fn add_to(self, headers: &mut HeaderMap) {
        if let Some(value) = self.policy {
            headers.append(RATELIMIT_POLICY, value);
        }
        if let Some(value) = self.ratelimit {
            headers.append(RATELIMIT, value);
        }
        for (name, value) in self.legacy.into_iter().flat_map(|fields| *fields) {
            if !headers.contains_key(&name) {
                headers.insert(name, value);
            }
        }
        if self.degraded {
            headers.insert(TOLLGATE_DEGRADED, HeaderValue::from_static("true"));
        }
    }
}

/// The `RateLimit` value of `answer`, in one allocation: a boxed string
/// becomes `Bytes` as it is, where a `String` with spare capacity would
/// cost `Bytes` a second one (this runs for every limited request).
fn ratelimit_value(answer: &Answer<'_>) -> Option<HeaderValue> {
    let value = answer.ratelimit_field().into_boxed_str().into_boxed_bytes();
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}
