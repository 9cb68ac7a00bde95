//! Key spaces: each adapter that turns outside input into limiter keys owns
//! keys no other adapter can produce.
//!
//! The server's HTTP JSON API, its Envoy gRPC service and the tower
//! middleware all charge policies of one limiter, or of limiters over one
//! shared store, and a policy's state is named by the policy and the key
//! bytes. Were an adapter's keys its input as sent, a client of one adapter
//! could spell another's key and spend or reset that budget (the HTTP key
//! `4:edge4:path6:/login` was the Envoy descriptor `path=/login` of the
//! domain `edge`). So every adapter writes its tag first:
//!
//! | adapter | key |
//! |---|---|
//! | [`KeySpace::HttpJson`] | `http:` then the request's `key`, as sent |
//! | [`KeySpace::EnvoyGrpc`] | `envoy:` then the domain and every entry, length-prefixed |
//! | [`KeySpace::Middleware`] | `tower:` then the extractor's key (`ip:…`, `header:…`, a `key_fn`'s) |
//!
//! Why no input through one adapter can produce another's key: the tags
//! differ in their first byte (`h`, `e`, `t`), and every key an adapter
//! builds starts with its own tag whatever the input, so keys of two
//! adapters differ in their first byte. Within one adapter, the key is the
//! tag followed by an encoding of the input that is itself injective (the
//! HTTP key as it is; Envoy's length-prefixed parts; the middleware's key
//! as it is), so two inputs through the same adapter share a key only if
//! they are the same input. Together, the key determines the adapter and
//! the input: the map is injective across adapters.
//!
//! Programs that call [`Limiter`](crate::Limiter) directly choose their own
//! keys; on a store shared with the server or the middleware, they should
//! not start them with one of these tags.

/// An adapter's key space. See the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeySpace {
    /// The server's HTTP JSON API (`/v1/check`, `/v1/peek`, `/v1/reset`).
    HttpJson,
    /// The server's Envoy RLS v3 gRPC service.
    EnvoyGrpc,
    /// The tower middleware (`tollgate-tower`), every extractor.
    Middleware,
}

impl KeySpace {
    /// Every key space.
    pub const ALL: [KeySpace; 3] = [
        KeySpace::HttpJson,
        KeySpace::EnvoyGrpc,
        KeySpace::Middleware,
    ];

    /// The bytes every key of this space starts with. No tag is a prefix of
    /// another (they differ in the first byte).
    pub const fn tag(self) -> &'static [u8] {
        match self {
            KeySpace::HttpJson => b"http:",
            KeySpace::EnvoyGrpc => b"envoy:",
            KeySpace::Middleware => b"tower:",
        }
    }

    /// The key of `value` in this space: the tag, then `value`.
    ///
    /// ```
    /// use tollgate::keyspace::KeySpace;
    /// assert_eq!(KeySpace::HttpJson.key(b"user-1"), b"http:user-1");
    /// ```
    pub fn key(self, value: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.tag().len() + value.len());
        key.extend_from_slice(self.tag());
        key.extend_from_slice(value);
        key
    }

    /// Which space `key` belongs to, and its value there; `None` for a key
    /// no adapter built.
    ///
    /// ```
    /// use tollgate::keyspace::KeySpace;
    /// let key = KeySpace::Middleware.key(b"ip:192.0.2.1");
    /// assert_eq!(KeySpace::split(&key), Some((KeySpace::Middleware, &b"ip:192.0.2.1"[..])));
    /// assert_eq!(KeySpace::split(b"ip:192.0.2.1"), None);
    /// ```
    pub fn split(key: &[u8]) -> Option<(KeySpace, &[u8])> {
        KeySpace::ALL
            .into_iter()
            .find_map(|space| Some((space, key.strip_prefix(space.tag())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::KeySpace;

    #[test]
    fn tags_are_prefix_free_so_spaces_never_meet() {
        for a in KeySpace::ALL {
            for b in KeySpace::ALL {
                if a != b {
                    assert_ne!(a.tag()[0], b.tag()[0], "{a:?} {b:?}");
                    assert!(!a.tag().starts_with(b.tag()), "{a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn a_value_spelling_another_spaces_key_stays_in_its_own() {
        let values: [&[u8]; 5] = [
            b"",
            b"4:edge4:path6:/login",
            b"envoy:4:edge4:path6:/login",
            b"tower:ip:127.0.0.1",
            b"http:",
        ];
        for space in KeySpace::ALL {
            for value in values {
                let key = space.key(value);
                assert_eq!(KeySpace::split(&key), Some((space, value)));
                for other in KeySpace::ALL.into_iter().filter(|o| *o != space) {
                    for other_value in values {
                        assert_ne!(key, other.key(other_value));
                    }
                }
            }
        }
    }
}
