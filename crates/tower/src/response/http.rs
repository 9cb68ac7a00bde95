//! The layer's own HTTP responses: the 429 of a denial (`Retry-After` and
//! a body per [`ResponseFormat`]), and the 400, 401 and 503 of a
//! [`Refusal`]; to a gRPC call, their gRPC equivalents.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use tollgate::answer::{ceil_millis, ceil_seconds};

use super::denial::Denial;
use super::format::ResponseFormat;
use super::grpc::{GrpcCode, Protocol, trailers_only};
use super::json::{json_response, json_string};

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
            json_string(&mut body, &denial.detail());
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
                .insert(RETRY_AFTER, HeaderValue::from(ceil_seconds(wait)));
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
    use std::time::Duration;

    use super::*;
    use crate::key::Key;

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
}
