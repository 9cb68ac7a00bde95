//! Errors. A denial is a [`Decision`](crate::Decision), never an error: these
//! are for requests that cannot be decided at all.
//!
//! Precise enums rather than a boxed error: callers (the middleware, the
//! server) map each variant to a different response, and must know whether
//! retrying can help.

/// Why a store could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within its timeout.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store could not be reached or failed to execute the request.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something this version does not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
    /// The store cannot do what was asked (e.g. reservations, of a store
    /// that does not keep them).
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// Whether retrying later may succeed (the store is slow or down, rather
    /// than incompatible).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Timeout(_) | StoreError::Unavailable(_))
    }
}

/// Why the limiter could not decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No policy of that name is configured.
    #[error("unknown policy `{0}`")]
    UnknownPolicy(String),
    /// The cost was zero; every check costs at least one unit.
    #[error("cost must be at least 1")]
    ZeroCost,
    /// The key is longer than the limiter's maximum, or, for a
    /// reservation, than its id can carry beside the policies' names
    /// (about 12 KiB; `max` says how long).
    #[error("key is {len} bytes long, above the maximum of {max}")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The maximum that applies.
        max: usize,
    },
    /// A multi-policy check named no policy.
    #[error("no policy given")]
    NoPolicy,
    /// A multi-policy check named this policy more than once. Nothing was
    /// decided or charged: a policy named twice would be charged twice, or
    /// reported denied while charged, so the request is refused instead.
    #[error("policy `{0}` is named twice")]
    DuplicatePolicy(String),
    /// A reservation was asked of a policy whose algorithm cannot be
    /// reserved (`sliding_log`, `leaky_bucket`: the message says why).
    #[error("policy `{policy}`: {reason}")]
    NotReservable {
        /// The policy's name.
        policy: String,
        /// Why, from [`PolicyError::ReserveNotSupported`](crate::PolicyError::ReserveNotSupported).
        reason: String,
    },
    /// A reservation or settle out of bounds: a deadline past
    /// [`MAX_DEADLINE`](crate::reservation::MAX_DEADLINE), an amount past
    /// [`MAX_AMOUNT`](crate::reservation::MAX_AMOUNT), names too long to
    /// name in a reservation.
    #[error("invalid reservation: {0}")]
    InvalidReservation(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_transient())
    }
}
