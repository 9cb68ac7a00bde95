//! Key extractors: which identity a request is charged to.
//!
//! A [`KeyExtractor`] reads the request's head ([`http::request::Parts`]:
//! method, URI, headers, extensions) and returns the [`Key`] the limiter
//! charges. The built-in extractors:
//!
//! | extractor | key | reads |
//! |---|---|---|
//! | [`PeerIp`] (the default) | `ip:203.0.113.7`, `ip:2001:db8:1:2::/64` | axum's `ConnectInfo<SocketAddr>` |
//! | [`ClientIp`] | same as `PeerIp` | one proxy header, honoured only from trusted proxies |
//! | [`HeaderKey`] | `header:<value>` | one request header (an API key) |
//! | [`Identity`] | `user:<id>` | a user type placed in the extensions by your authentication |
//! | [`RouteParam`] | `param:<value>` | a path parameter of the matched axum route |
//! | [`key_fn`] | whatever the closure returns | anything in the head |
//!
//! The prefixes keep kinds apart: with [`MissingKey::Fallback`] one policy
//! may see both API keys and IPs, and a client sending the API key
//! `203.0.113.7` must not spend the budget of the host `203.0.113.7`. Keys
//! returned by [`key_fn`] are used as they are.
//!
//! Every [`Key`], however built, is charged in the middleware's own key
//! space (the tag `tower:` in front, see [`Key::identity`]), so a limiter
//! whose store the server shares cannot be reached through the server's
//! HTTP API or Envoy service, nor theirs through the middleware
//! (docs/SERVER.md, "Key spaces").
//!
//! Why the head and not `&Request<B>`: the trait stays object safe and
//! closures need no body type, so one extractor serves axum, hyper and tonic
//! alike. The service splits the request into parts and back, which moves
//! nothing but pointers.
//!
//! [`MissingKey::Fallback`]: crate::MissingKey::Fallback

mod ip;
mod route;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use smallvec::SmallVec;
use tollgate::keyspace::KeySpace;

pub use ip::{Cidr, CidrError, ClientIp, DEFAULT_IPV6_PREFIX, PeerIp, ProxyHeader};
pub use route::RouteParam;
pub(crate) use route::percent_decode;

/// The identity a request is charged to: bytes, usually text.
///
/// Built-in extractors prefix their keys by kind (`ip:`, `header:`, `user:`,
/// `param:`); build the same key with [`Key::for_ip`] or `Key::from` to name
/// a key in an allowlist or in [`tollgate::Limiter::reset`].
///
/// Every key lives in the middleware's key space
/// ([`KeySpace::Middleware`]): the limiter is given the space's tag and
/// then the key ([`identity`](Key::identity), which is also what
/// `AsRef<[u8]>` gives), so no key an extractor or a [`key_fn`] returns can
/// name a counter of the server's HTTP API or Envoy service on a shared
/// store. [`as_bytes`](Key::as_bytes) and `Display` show the key without
/// the tag. `Limiter::reset(policy, &key)` and `Limiter::check(policy,
/// &key, cost)` therefore name exactly the state the layer charges.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(
    // The tag, then the key. Inline up to 56 bytes: every IP key (the tag,
    // `ip:` and at most 43 more) is built without touching the heap.
    SmallVec<[u8; 56]>,
);

/// The middleware's key space tag, in front of every key.
const TAG: &[u8] = KeySpace::Middleware.tag();

impl Key {
    /// A key of exactly these bytes (in the middleware's key space).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Key::from(&bytes.into()[..])
    }

    /// The key [`PeerIp`] and [`ClientIp`] give the address `ip`: IPv4 (and
    /// IPv4-mapped IPv6) as the address, other IPv6 addresses as their
    /// network of `ipv6_prefix` bits (at most 128).
    ///
    /// ```
    /// use tollgate_tower::key::Key;
    /// let ip = "2001:db8:1:2:aaaa::1".parse()?;
    /// assert_eq!(Key::for_ip(ip, 64), Key::from("ip:2001:db8:1:2::/64"));
    /// let mapped = "::ffff:192.0.2.1".parse()?;
    /// assert_eq!(Key::for_ip(mapped, 64), Key::from("ip:192.0.2.1"));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn for_ip(ip: std::net::IpAddr, ipv6_prefix: u8) -> Self {
        ip::ip_key(ip, ipv6_prefix)
    }

    /// A key made of a kind prefix and a value: `<prefix>:<value>`.
    pub(crate) fn prefixed(prefix: &str, value: &[u8]) -> Self {
        let mut bytes = SmallVec::with_capacity(TAG.len() + prefix.len() + 1 + value.len());
        bytes.extend_from_slice(TAG);
        bytes.extend_from_slice(prefix.as_bytes());
        bytes.push(b':');
        bytes.extend_from_slice(value);
        Key(bytes)
    }

    /// The key's bytes, as the extractor wrote them (`ip:192.0.2.1`),
    /// without the key space's tag.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[TAG.len()..]
    }

    /// The key's bytes, owned, as [`as_bytes`](Key::as_bytes) gives them.
    pub fn into_bytes(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    /// What the limiter is given: the middleware key space's tag, then the
    /// key (`tower:ip:192.0.2.1`). Also what `AsRef<[u8]>` gives.
    ///
    /// ```
    /// use tollgate_tower::key::Key;
    /// let key = Key::from("ip:192.0.2.1");
    /// assert_eq!(key.as_bytes(), b"ip:192.0.2.1");
    /// assert_eq!(key.identity(), b"tower:ip:192.0.2.1");
    /// ```
    pub fn identity(&self) -> &[u8] {
        &self.0
    }
}

/// The [`identity`](Key::identity): the key in the middleware's key space,
/// as the limiter is given it.
impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.identity()
    }
}

impl From<String> for Key {
    fn from(key: String) -> Self {
        Key::from(key.as_bytes())
    }
}

impl From<&str> for Key {
    fn from(key: &str) -> Self {
        Key::from(key.as_bytes())
    }
}

impl From<Vec<u8>> for Key {
    fn from(key: Vec<u8>) -> Self {
        Key::from(&key[..])
    }
}

impl From<&[u8]> for Key {
    fn from(key: &[u8]) -> Self {
        let mut bytes = SmallVec::with_capacity(TAG.len() + key.len());
        bytes.extend_from_slice(TAG);
        bytes.extend_from_slice(key);
        Key(bytes)
    }
}

/// Shows the key as text (without the key space's tag), escaping bytes that
/// are not printable ASCII (keys may come from request headers: logs must
/// not carry raw bytes).
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_bytes().escape_ascii())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(\"{}\")", self.as_bytes().escape_ascii())
    }
}

/// Why no key could be read from a request. What the layer then does is
/// configured with [`MissingKey`](crate::MissingKey); it is never a 500.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The request carries no peer address: the server was not started with
    /// `into_make_service_with_connect_info::<SocketAddr>()` (a setup bug,
    /// logged as a warning).
    #[error(
        "no peer address in the request: serve the app with \
         `into_make_service_with_connect_info::<SocketAddr>()`"
    )]
    NoPeerAddress,
    /// The request lacks what the key is made of (a header, an identity, a
    /// route parameter).
    #[error("missing {0}")]
    Missing(Cow<'static, str>),
    /// What the key is made of is present but unusable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was read, e.g. `header x-forwarded-for`.
        what: Cow<'static, str>,
        /// Why it is unusable.
        reason: Cow<'static, str>,
    },
}

/// Reads the key a request is charged to.
///
/// Implemented by the built-in extractors, by [`KeyFn`] (see [`key_fn`]),
/// and by `Arc`/`Box` of any extractor.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key for this request.
    ///
    /// # Errors
    /// A [`KeyError`] when the request carries no usable key; the layer then
    /// applies its [`MissingKey`](crate::MissingKey) behaviour.
    fn extract(&self, request: &Parts) -> Result<Key, KeyError>;
}

impl<K: KeyExtractor + ?Sized> KeyExtractor for Arc<K> {
    fn extract(&self, request: &Parts) -> Result<Key, KeyError> {
        (**self).extract(request)
    }
}

impl<K: KeyExtractor + ?Sized> KeyExtractor for Box<K> {
    fn extract(&self, request: &Parts) -> Result<Key, KeyError> {
        (**self).extract(request)
    }
}

/// A closure as a key extractor; made by [`key_fn`].
#[derive(Clone)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn(..)")
    }
}

/// Makes a key extractor of a closure over the request's head.
///
/// ```
/// use http::request::Parts;
/// use tollgate_tower::key::{key_fn, Key, KeyError};
///
/// // Charge per tenant, named by a subdomain: `acme.example.com`.
/// let tenant = key_fn(|request: &Parts| {
///     let host = request.headers.get(http::header::HOST)
///         .and_then(|h| h.to_str().ok())
///         .ok_or(KeyError::Missing("host header".into()))?;
///     let tenant = host.split('.').next().unwrap_or_default();
///     Ok(Key::from(format!("tenant:{tenant}")))
/// });
/// # let _ = tenant;
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F>
where
    F: Fn(&Parts) -> Result<Key, KeyError> + Send + Sync + 'static,
{
    KeyFn(f)
}

impl<F> KeyExtractor for KeyFn<F>
where
    F: Fn(&Parts) -> Result<Key, KeyError> + Send + Sync + 'static,
{
    fn extract(&self, request: &Parts) -> Result<Key, KeyError> {
        (self.0)(request)
    }
}

/// The value of one request header, e.g. an API key: `header:<value>`.
///
/// The client chooses this value. Use it for keys your service verifies
/// (before or after the limit), or a client can spread its requests over
/// made-up keys; [`Identity`] charges what authentication established.
/// A header sent more than once is [`KeyError::Invalid`] (which key would
/// it be?); an empty one is [`KeyError::Missing`].
///
/// The value becomes part of the store key as it is: if it is a secret and
/// the store is shared (Redis), consider hashing it in a [`key_fn`].
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys requests by the header `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }
}

impl KeyExtractor for HeaderKey {
    fn extract(&self, request: &Parts) -> Result<Key, KeyError> {
        let mut values = request.headers.get_all(&self.name).iter();
        let value = values
            .next()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| KeyError::Missing(format!("header {}", self.name).into()))?;
        if values.next().is_some() {
            return Err(KeyError::Invalid {
                what: format!("header {}", self.name).into(),
                reason: "sent more than once".into(),
            });
        }
        Ok(Key::prefixed("header", value.as_bytes()))
    }
}

/// An authenticated identity: a value of type `T` that your authentication
/// middleware placed in the request's extensions, turned into `user:<id>`.
///
/// The authentication layer must run before the rate limit: in axum, add it
/// *after* (outside) the rate limit layer, `.layer(rate_limit).layer(auth)`.
///
/// ```
/// use tollgate_tower::key::Identity;
///
/// #[derive(Clone)]
/// struct User { id: u64 }
///
/// let by_user = Identity::new(|user: &User| user.id.to_string());
/// # let _ = by_user;
/// ```
pub struct Identity<T, F> {
    id: F,
    // `fn() -> T`: the extractor holds no `T`, so it is Send + Sync whatever `T` is.
    _identity: PhantomData<fn() -> T>,
}

impl<T, F: Clone> Clone for Identity<T, F> {
    fn clone(&self) -> Self {
        Identity {
            id: self.id.clone(),
            _identity: PhantomData,
        }
    }
}

impl<T, F> fmt::Debug for Identity<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T, F, Id> Identity<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Id + Send + Sync + 'static,
    Id: AsRef<[u8]>,
{
    /// Keys requests by `id(identity)` of the `T` in the extensions.
    pub fn new(id: F) -> Self {
        Identity {
            id,
            _identity: PhantomData,
        }
    }
}

impl<T, F, Id> KeyExtractor for Identity<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Id + Send + Sync + 'static,
    Id: AsRef<[u8]>,
{
    fn extract(&self, request: &Parts) -> Result<Key, KeyError> {
        let identity = request
            .extensions
            .get::<T>()
            .ok_or(KeyError::Missing("authenticated identity".into()))?;
        Ok(Key::prefixed("user", (self.id)(identity).as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_in_the_middleware_key_space() {
        let keys = [
            Key::new(b"a".to_vec()),
            Key::from("a"),
            Key::from("a".to_owned()),
            Key::from(&b"a"[..]),
            Key::from(b"a".to_vec()),
        ];
        for key in keys {
            assert_eq!(key.identity(), b"tower:a");
            assert_eq!(key.as_ref(), b"tower:a");
            assert_eq!(key.as_bytes(), b"a");
            assert_eq!(key.to_string(), "a");
            assert_eq!(key.clone().into_bytes(), b"a");
            let split = KeySpace::split(key.as_ref());
            assert_eq!(split, Some((KeySpace::Middleware, &b"a"[..])));
        }
        let header = Key::prefixed("header", b"http:x");
        assert_eq!(header.identity(), b"tower:header:http:x");
        // A key spelling another adapter's key stays in the middleware's.
        let spelled = Key::from("envoy:4:edge4:path6:/login");
        assert_eq!(spelled.identity(), b"tower:envoy:4:edge4:path6:/login");
    }

    #[test]
    fn ip_keys_stay_inline() {
        let widest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        for key in [
            Key::for_ip(widest, 127),
            Key::for_ip(widest, 128),
            Key::for_ip("255.255.255.255".parse().unwrap(), 64),
        ] {
            assert!(!key.0.spilled(), "{key} ({} bytes)", key.identity().len());
        }
    }
}
