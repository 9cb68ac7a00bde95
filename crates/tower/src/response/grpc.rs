//! gRPC's side of the layer's answers: telling a gRPC call from an HTTP
//! request, and refusing it the way a gRPC server does, with a
//! *Trailers-Only* response (`200 OK`, no body, the status among the
//! headers).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};

/// gRPC's status code field (a Trailers-Only response carries it among the
/// headers).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC's status message field, percent-encoded.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC's server pushback (gRFC A6): milliseconds until a retry, negative
/// for "do not retry".
pub(crate) const GRPC_RETRY_PUSHBACK_MS: HeaderName =
    HeaderName::from_static("grpc-retry-pushback-ms");

/// How the layer's own responses are encoded, from the request's
/// `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Anything else: HTTP status codes and a body per
    /// [`ResponseFormat`](super::ResponseFormat).
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
    /// The protocol of a request with this method and these headers.
    /// Media types compare case-insensitively and parameters
    /// (`; charset=..`) are ignored. A type that merely begins with
    /// `application/grpc` (`application/grpcx`) is not gRPC, and neither is
    /// a request other than `POST`, whatever its type: every gRPC and
    /// gRPC-Web call is a `POST`, and a `GET` answered `200 OK` with an
    /// empty body is a response a shared cache may store for that URL.
    pub(crate) fn of(method: &Method, headers: &HeaderMap) -> Protocol {
        if method != Method::POST {
            return Protocol::Http;
        }
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
pub(crate) enum GrpcCode {
    InvalidArgument = 3,
    ResourceExhausted = 8,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// A gRPC Trailers-Only response: `200 OK`, the gRPC `content-type`, the
/// status and its message in the headers, and no body (the layer's
/// `RateLimitBody` then ends the stream with the headers).
pub(crate) fn trailers_only(protocol: Protocol, code: GrpcCode, message: &str) -> Response<Bytes> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            Protocol::of(&Method::POST, &headers)
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
        assert_eq!(
            Protocol::of(&Method::POST, &HeaderMap::new()),
            Protocol::Http
        );
    }

    /// Every gRPC call is a `POST`: a `GET` with a gRPC type is HTTP, so
    /// it is never refused `200 OK` with an empty body (which a cache in
    /// front could keep for everybody).
    #[test]
    fn a_request_other_than_post_is_never_a_grpc_call() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        for method in [Method::GET, Method::HEAD, Method::PUT, Method::OPTIONS] {
            assert_eq!(Protocol::of(&method, &headers), Protocol::Http, "{method}");
        }
    }
}
