//! Redis key names: `<prefix>:{<identity>}:<policy>:<algorithm>`.
//!
//! The `{...}` hash tag makes every key of one identity hash to the same
//! Cluster slot, so a multi-policy script never fails with `CROSSSLOT`.
//! Identities are user input, so they are escaped: `%`, `{` and `}` become
//! `%25`, `%7B` and `%7D`. With no brace inside, the tag is always the whole
//! identity — a client cannot end the tag early to pick its own slot — and
//! the escaping is injective, so two identities never share a key. The
//! algorithm in the name gives a policy whose algorithm changes a fresh
//! state instead of a type error.

/// Why a key prefix was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid key prefix `{0}`: it must be non-empty and contain no `{{` or `}}` (they would change the Cluster hash tag)"
)]
pub struct InvalidPrefix(pub String);

/// Checks a key prefix.
///
/// # Errors
/// [`InvalidPrefix`] when it is empty or contains a brace.
pub fn validate_prefix(prefix: &str) -> Result<(), InvalidPrefix> {
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err(InvalidPrefix(prefix.to_owned()));
    }
    Ok(())
}

/// Appends `identity`, escaped, to `out`. The empty identity becomes a lone
/// `%` (which escaping never produces otherwise): an empty tag `{}` would be
/// ignored by Redis and scatter the identity's keys over several slots.
pub fn escape_identity(identity: &[u8], out: &mut Vec<u8>) {
    if identity.is_empty() {
        out.push(b'%');
    }
    for &b in identity {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'{' => out.extend_from_slice(b"%7B"),
            b'}' => out.extend_from_slice(b"%7D"),
            _ => out.push(b),
        }
    }
}

/// The key holding `identity`'s state for one policy.
///
/// ```
/// let key = tollgate_redis::keys::state_key("tollgate", b"user:{1}", "api", tollgate::Algorithm::Gcra);
/// assert_eq!(key, b"tollgate:{user:%7B1%7D}:api:gcra");
/// ```
pub fn state_key(
    prefix: &str,
    identity: &[u8],
    policy: &str,
    algorithm: tollgate::Algorithm,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + identity.len() + policy.len() + 20);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(b":{");
    escape_identity(identity, &mut key);
    key.extend_from_slice(b"}:");
    key.extend_from_slice(policy.as_bytes());
    key.push(b':');
    key.extend_from_slice(algorithm.name().as_bytes());
    key
}

/// What follows the hash tag in a reservation's record key, before the
/// nonce.
const RESERVATION_TAG: &[u8] = b"}:%r:";

/// The key of the record of reservation `nonce` of `identity`
/// (`Store::reserve`): in the identity's slot, so that one call reads and
/// writes it with the states it charges. It ends with the nonce in 32
/// lowercase hex digits, where a state key ends with an algorithm's name
/// (never 32 hex digits), so no policy name makes the two equal; and its
/// tag is an escaped identity, which the overrides' `{%overrides}` never
/// is.
///
/// ```
/// let key = tollgate_redis::keys::reservation_key("tollgate", b"user:{1}", 0xab);
/// assert_eq!(key, b"tollgate:{user:%7B1%7D}:%r:000000000000000000000000000000ab");
/// ```
pub fn reservation_key(prefix: &str, identity: &[u8], nonce: u128) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + identity.len() + 40);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(b":{");
    escape_identity(identity, &mut key);
    key.extend_from_slice(RESERVATION_TAG);
    key.extend_from_slice(format!("{nonce:032x}").as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::Algorithm::Gcra;

    /// The Cluster hash tag as Redis computes it: the text between the first
    /// `{` and the first `}` after it, if not empty; otherwise the whole key.
    fn hash_tag(key: &[u8]) -> &[u8] {
        if let Some(open) = key.iter().position(|&b| b == b'{') {
            if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
                if len > 0 {
                    return &key[open + 1..open + 1 + len];
                }
            }
        }
        key
    }

    #[test]
    fn identities_cannot_collide_or_pick_their_slot() {
        let identities: Vec<&[u8]> = vec![
            b"a",
            b"a}",
            b"a%7D",
            b"%7D",
            b"}",
            b"{",
            b"a}:{b",
            b"a:b",
            b"a}:api:gcra",
            b"",
            b"\xff\x00{",
        ];
        let keys: Vec<Vec<u8>> = identities
            .iter()
            .map(|i| state_key("t", i, "api", Gcra))
            .collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // The tag is always the whole escaped identity.
        for identity in &identities {
            let key = state_key("t", identity, "api", Gcra);
            let mut escaped = Vec::new();
            escape_identity(identity, &mut escaped);
            assert_eq!(
                hash_tag(&key),
                &escaped[..],
                "{:?}",
                String::from_utf8_lossy(identity)
            );
        }
        // "a}" cannot hash like "a": the brace is escaped, not a tag end.
        assert_ne!(hash_tag(&state_key("t", b"a}x", "api", Gcra)), b"a");
    }

    #[test]
    fn a_reservation_key_is_never_a_state_or_overrides_key() {
        use tollgate::Algorithm;
        let nonces = [0, 1, 0xab, u128::MAX, 0x6763_7261];
        let identities: Vec<&[u8]> = vec![b"a", b"", b"%", b"a}:%r:0", b"{", b"%overrides"];
        // Policy names that try to end like a record key, or to take the
        // record's place after the tag.
        let mut names: Vec<String> = vec!["api".into(), "%r".into(), "".into(), ":".into()];
        for nonce in nonces {
            names.push(format!("%r:{nonce:032x}"));
            names.push(format!("%r:{:030x}", nonce));
        }
        for identity in &identities {
            for nonce in nonces {
                let record = reservation_key("t", identity, nonce);
                let mut escaped = Vec::new();
                escape_identity(identity, &mut escaped);
                // The identity's slot.
                assert_eq!(hash_tag(&record), &escaped[..]);
                assert_eq!(
                    hash_tag(&record),
                    hash_tag(&state_key("t", identity, "api", Gcra))
                );
                // Never a state key of any identity, policy, algorithm.
                for other in &identities {
                    for name in &names {
                        for algorithm in Algorithm::ALL {
                            assert_ne!(record, state_key("t", other, name, algorithm));
                        }
                    }
                }
                // Never the overrides' keys (whose tag escaping never makes).
                assert_ne!(hash_tag(&record), b"%overrides");
                assert_ne!(record, b"t:{%overrides}");
                assert_ne!(record, b"t:{%overrides}:version");
                // One key per nonce and identity.
                for other in nonces.iter().filter(|&&n| n != nonce) {
                    assert_ne!(record, reservation_key("t", identity, *other));
                }
            }
        }
        // The suffix cannot end like a state key: 32 hex digits, never an
        // algorithm's name.
        for algorithm in Algorithm::ALL {
            assert!(!algorithm.name().bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn prefixes_with_braces_are_rejected() {
        assert!(validate_prefix("tollgate").is_ok());
        assert!(validate_prefix("app:limits").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a{b").is_err());
        assert!(validate_prefix("a}").is_err());
    }
}
