//! Reservations: costs known only afterwards.
//!
//! [`Limiter::reserve`](crate::Limiter::reserve) decides a check of an
//! estimate and, when allowed, leaves a reservation open in the store;
//! [`Limiter::settle`](crate::Limiter::settle) settles it at the actual
//! cost, giving back or charging the difference, once (a retried settle
//! answers what the first did). `docs/RESERVATIONS.md` has the rules and
//! why a policy holds within its limit plus one overdraft.
//!
//! A reservation is named by a [`ReservationId`]: 128 random bits (the
//! secret a settle must present), the identity and the policy names. Its
//! text form is opaque and URL-safe, so it can travel through any API.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use smallvec::SmallVec;

use crate::MultiDecision;

/// How long a reservation stays open when the caller does not say:
/// five minutes (a long streamed response fits).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// The longest a reservation may stay open: one hour.
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// The largest estimate or actual cost: below 2^53, so that the Redis
/// store's Lua twin computes with it exactly.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// Checks a reservation's deadline: above zero, at most [`MAX_DEADLINE`].
/// The one home of the rule, for the limiter and for adapters that check
/// it ahead (the tower layer's builder).
///
/// # Errors
/// [`Error::InvalidReservation`](crate::Error::InvalidReservation).
pub fn check_deadline(deadline: Duration) -> Result<(), crate::Error> {
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        return Err(crate::Error::InvalidReservation(format!(
            "deadline {deadline:?} must be above zero and at most {MAX_DEADLINE:?}"
        )));
    }
    Ok(())
}

/// Checks that the policy `name` can be reserved (or charged after the
/// fact): an algorithm that settles exactly, and a name the reservation's
/// id can carry (at most 255 bytes). The one home of the rule, for the
/// limiter and for adapters that check it ahead.
///
/// ```
/// use tollgate::reservation::check_policy;
/// assert!(check_policy("tokens", &"fixed_window 10/s".parse()?).is_ok());
/// assert!(check_policy("log", &"sliding_log 10/s".parse()?).is_err());
/// # Ok::<(), tollgate::PolicyError>(())
/// ```
///
/// # Errors
/// [`Error::NotReservable`](crate::Error::NotReservable), saying why.
pub fn check_policy(name: &str, policy: &crate::Policy) -> Result<(), crate::Error> {
    let reason = if name.len() > 255 {
        "a reserved policy's name is at most 255 bytes long".to_owned()
    } else if !crate::algorithm::can_reserve(policy.algorithm()) {
        crate::PolicyError::ReserveNotSupported(policy.algorithm()).to_string()
    } else {
        return Ok(());
    };
    Err(crate::Error::NotReservable {
        policy: name.to_owned(),
        reason,
    })
}

/// The version byte of the text form.
const VERSION: u8 = 1;

/// An open reservation's name: what [`Limiter::settle`](crate::Limiter::settle)
/// and [`Limiter::cancel`](crate::Limiter::cancel) take.
///
/// Its text form (`Display`, `FromStr`) is opaque, URL-safe and carries
/// everything a settle needs, so any instance of a fleet sharing the store
/// can settle a reservation another took. Holding it is what allows a
/// settle: keep it as secret as the request it belongs to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReservationId {
    nonce: u128,
    key: Box<[u8]>,
    policies: SmallVec<[Box<str>; 2]>,
}

impl ReservationId {
    /// A new reservation's name, with 128 bits from the operating system's
    /// random source.
    ///
    /// # Errors
    /// [`Error::InvalidReservation`](crate::Error::InvalidReservation) for
    /// more than 255 policies or a name longer than 255 bytes (the text
    /// form counts them in a byte), [`Error::KeyTooLong`](crate::Error::KeyTooLong)
    /// for a key too long for a text form [`FromStr`] reads back beside
    /// those names ([`MAX_TEXT`]: a reservation that could not be settled
    /// is never made), and a store error when the operating
    /// system gives no randomness (a reservation must not be guessable).
    pub(crate) fn draw(key: &[u8], policies: &[&str]) -> Result<ReservationId, crate::Error> {
        // Names were checked by `check_policy`.
        if policies.len() > 255 {
            return Err(crate::Error::InvalidReservation(
                "a reservation names at most 255 policies".into(),
            ));
        }
        // The longest key the id carries beside these names: MAX_TEXT
        // characters decode to MAX_TEXT / 4 * 3 bytes, of which the
        // version, the nonce, the count and each name with its length
        // byte go first. A longer key is too long (the caller refuses it
        // as it refuses a key past the limiter's bound), never a bad
        // reservation: the tower layer lets those pass unlimited.
        let names = policies.iter().map(|p| 1 + p.len()).sum::<usize>();
        let max = (MAX_TEXT / 4 * 3).saturating_sub(HEAD_BYTES + names);
        if key.len() > max {
            return Err(crate::Error::KeyTooLong {
                len: key.len(),
                max,
            });
        }
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| {
            crate::StoreError::Unavailable(format!("no randomness for a reservation: {e}"))
        })?;
        Ok(ReservationId {
            nonce: u128::from_le_bytes(bytes),
            key: key.into(),
            policies: policies.iter().map(|p| Box::<str>::from(*p)).collect(),
        })
    }

    /// The 128 random bits the store keeps the reservation under.
    pub fn nonce(&self) -> u128 {
        self.nonce
    }

    /// The identity reserved for.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The policies reserved, in the order named.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &str> {
        self.policies.iter().map(|p| &**p)
    }
}

impl fmt::Debug for ReservationId {
    // The nonce is a secret: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReservationId")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // version, nonce, policy count, (name length, name)*, key.
        let mut bytes = Vec::with_capacity(HEAD_BYTES + self.key.len() + 16 * self.policies.len());
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.nonce.to_le_bytes());
        bytes.push(self.policies.len() as u8);
        for name in &self.policies {
            bytes.push(name.len() as u8);
            bytes.extend_from_slice(name.as_bytes());
        }
        bytes.extend_from_slice(&self.key);
        f.write_str(&URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// Why a text is not a [`ReservationId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a reservation id")]
pub struct InvalidReservationId;

/// The bytes of an id before its names and key: the version, the nonce
/// and the count of policies.
const HEAD_BYTES: usize = 1 + 16 + 1;

/// The longest text form accepted (and made: [`ReservationId::draw`]
/// refuses a longer one): a key of up to 8 KiB, the longest the server's
/// limiter takes, and 16 policy names of 128 bytes fit; the limiter checks
/// the key against its own maximum afterwards.
const MAX_TEXT: usize = 16 * 1024;

impl FromStr for ReservationId {
    type Err = InvalidReservationId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > MAX_TEXT {
            return Err(InvalidReservationId);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| InvalidReservationId)?;
        let mut rest: &[u8] = &bytes;
        let mut take = |n: usize| -> Result<&[u8], InvalidReservationId> {
            if rest.len() < n {
                return Err(InvalidReservationId);
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(1)? != [VERSION] {
            return Err(InvalidReservationId);
        }
        let nonce = u128::from_le_bytes(take(16)?.try_into().map_err(|_| InvalidReservationId)?);
        let count = take(1)?[0];
        if count == 0 {
            return Err(InvalidReservationId);
        }
        let mut policies = SmallVec::new();
        for _ in 0..count {
            let len = take(1)?[0] as usize;
            let name = std::str::from_utf8(take(len)?).map_err(|_| InvalidReservationId)?;
            if name.is_empty() {
                return Err(InvalidReservationId);
            }
            policies.push(Box::from(name));
        }
        Ok(ReservationId {
            nonce,
            key: rest.into(),
            policies,
        })
    }
}

/// The outcome of [`Limiter::reserve`](crate::Limiter::reserve): the
/// decisions of the estimate, and the reservation's name when allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The check of the estimate, as [`Limiter::check_all`](crate::Limiter::check_all)
    /// would answer it.
    pub decision: MultiDecision,
    /// The reservation to settle; `None` when denied (nothing was charged)
    /// or when no policy was charged (each is unlimited by an override).
    pub id: Option<ReservationId>,
}

impl Reservation {
    /// Whether the estimate was allowed (and charged).
    pub fn allowed(&self) -> bool {
        self.decision.allowed
    }
}

#[cfg(test)]
mod tests {
    use super::{InvalidReservationId, ReservationId};

    #[test]
    fn the_text_form_round_trips_and_is_url_safe() {
        let id = ReservationId::draw(b"user:\x00\xff{1}", &["tokens", "requests"]).unwrap();
        let text = id.to_string();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{text}"
        );
        let back: ReservationId = text.parse().unwrap();
        assert_eq!(back, id);
        assert_eq!(back.key(), b"user:\x00\xff{1}");
        assert_eq!(back.policies().collect::<Vec<_>>(), ["tokens", "requests"]);
    }

    #[test]
    fn every_id_made_reads_back() {
        let key = vec![b'k'; 8192];
        let name = "n".repeat(128);
        let names = [name.as_str(); 16];
        let id = ReservationId::draw(&key, &names).unwrap();
        assert_eq!(id.to_string().parse::<ReservationId>(), Ok(id));
        let longer = vec![b'k'; super::MAX_TEXT];
        assert!(matches!(
            ReservationId::draw(&longer, &["p"]),
            Err(crate::Error::KeyTooLong { .. })
        ));
        // At the bound: the longest key beside one name of one byte reads
        // back; one byte more is too long, naming that bound.
        let longest = vec![b'k'; super::MAX_TEXT / 4 * 3 - 20];
        let id = ReservationId::draw(&longest, &["p"]).unwrap();
        assert_eq!(id.to_string().len(), super::MAX_TEXT);
        assert_eq!(id.to_string().parse::<ReservationId>(), Ok(id));
        let over = vec![b'k'; longest.len() + 1];
        assert!(matches!(
            ReservationId::draw(&over, &["p"]),
            Err(crate::Error::KeyTooLong { len, max }) if len == max + 1
        ));
    }

    #[test]
    fn two_reservations_never_share_a_nonce() {
        let a = ReservationId::draw(b"k", &["p"]).unwrap();
        let b = ReservationId::draw(b"k", &["p"]).unwrap();
        assert_ne!(a.nonce(), b.nonce());
        assert!(!format!("{a:?}").contains(&a.nonce().to_string()));
    }

    #[test]
    fn malformed_texts_are_refused() {
        let good = ReservationId::draw(b"k", &["p"]).unwrap().to_string();
        for bad in [
            "",
            "!!!",
            &good[..good.len() - 4],
            &"A".repeat(9000),
            "AQ",                       // a version and nothing else
            "AgAAAAAAAAAAAAAAAAAAAAAB", // version 2
        ] {
            assert_eq!(
                bad.parse::<ReservationId>(),
                Err(InvalidReservationId),
                "{bad}"
            );
        }
    }
}
