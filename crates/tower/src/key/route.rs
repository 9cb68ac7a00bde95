//! Keys from path parameters of the matched axum route.

use axum::extract::{MatchedPath, OriginalUri};
use http::request::Parts;

use super::{Key, KeyError, KeyExtractor};

/// A path parameter of the matched axum route, percent-decoded:
/// `param:<value>`. For `/tenants/{tenant}/items` and the request
/// `/tenants/acme/items`, `RouteParam::new("tenant")` gives `param:acme`.
///
/// It reads axum's `MatchedPath` extension, set by the router before any
/// route layer or `Router::layer` middleware runs, and matches the template
/// against the request path segment by segment (`{name}` and the catch-all
/// `{*name}`). Without a `MatchedPath` (outside axum, or under
/// `Router::nest_service`) the key is [`KeyError::Missing`].
///
/// Values are percent-decoded so that `/users/%34%32` and `/users/42`, which
/// reach the same handler, are also charged to the same key.
#[derive(Debug, Clone)]
pub struct RouteParam {
    name: Box<str>,
}

impl RouteParam {
    /// Keys requests by the route parameter `name` (without braces).
    pub fn new(name: impl Into<String>) -> Self {
        RouteParam {
            name: name.into().into_boxed_str(),
        }
    }
}

impl KeyExtractor for RouteParam {
    fn extract(&self, request: &Parts) -> Result<Key, KeyError> {
        let missing = || KeyError::Missing(format!("route parameter {}", self.name).into());
        let template = request
            .extensions
            .get::<MatchedPath>()
            .ok_or_else(missing)?
            .as_str();
        // Nested routers see the path without their prefix, while the
        // matched path keeps it: try the original path first.
        let original = request
            .extensions
            .get::<OriginalUri>()
            .map(|uri| uri.0.path());
        let value = original
            .into_iter()
            .chain([request.uri.path()])
            .find_map(|path| param_value(template, path, &self.name))
            .filter(|value| !value.is_empty())
            .ok_or_else(missing)?;
        Ok(Key::prefixed("param", &percent_decode(value)))
    }
}

/// The raw value of `{name}` (or `{*name}`) when `path` matches `template`.
fn param_value<'p>(template: &str, path: &'p str, name: &str) -> Option<&'p str> {
    let mut rest = path.strip_prefix('/')?;
    let mut segments = template.strip_prefix('/')?.split('/').peekable();
    while let Some(segment) = segments.next() {
        let (here, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(param) = segment.strip_prefix("{*").and_then(|s| s.strip_suffix('}')) {
            return (param == name).then_some(rest);
        }
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            // `{{` opens a literal brace, not a parameter.
            Some(param) if !param.starts_with('{') => {
                if param == name {
                    return Some(here);
                }
            }
            _ => {
                if segment.replace("{{", "{").replace("}}", "}") != here {
                    return None;
                }
            }
        }
        if segments.peek().is_some() && !rest.contains('/') {
            return None;
        }
        rest = tail;
    }
    None
}

/// Percent-decodes `text`; malformed escapes are kept as they are.
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex(hi).zip(hex(lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_parameters_in_templates() {
        let t = "/tenants/{tenant}/items/{id}";
        assert_eq!(
            param_value(t, "/tenants/acme/items/7", "tenant"),
            Some("acme")
        );
        assert_eq!(param_value(t, "/tenants/acme/items/7", "id"), Some("7"));
        assert_eq!(param_value(t, "/tenants/acme/items/7", "nope"), None);
        assert_eq!(param_value(t, "/other/acme/items/7", "id"), None);
        assert_eq!(param_value(t, "/tenants/acme", "id"), None);
        assert_eq!(
            param_value("/files/{*path}", "/files/a/b/c", "path"),
            Some("a/b/c")
        );
        assert_eq!(param_value("/{{x}}/{id}", "/{x}/5", "id"), Some("5"));
        assert_eq!(param_value("/users/{id}", "users/5", "id"), None);
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("%34%32"), b"42");
        assert_eq!(percent_decode("a%2Fb"), b"a/b");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café".as_bytes());
    }
}
