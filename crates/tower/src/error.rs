//! Errors building a layer. Requests never fail with an error of the
//! layer's own: every outcome is a response (see the crate docs).

/// Why a [`RateLimitLayer`](crate::RateLimitLayer) could not be built.
///
/// Every variant is a configuration mistake found at start-up, so that
/// requests never meet it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A policy name the limiter does not know.
    #[error("the limiter has no policy `{0}`")]
    UnknownPolicy(String),
    /// Neither a default policy nor any route was given.
    #[error("no policy given: name one with `policy` or map a route with `route`")]
    NoPolicy,
    /// A route was mapped to an empty list of policies.
    #[error("route `{0}` names no policy")]
    EmptyRoute(String),
    /// One policy named twice for the same requests.
    #[error("policy `{0}` is named twice for the same requests")]
    DuplicatePolicy(String),
    /// The cost was zero; every request costs at least one unit.
    #[error("cost must be at least 1")]
    ZeroCost,
    /// A policy name that cannot be written in a `RateLimit` header field
    /// (structured-field strings are printable ASCII).
    #[error("policy name `{0}` cannot be sent in RateLimit headers: use printable ASCII")]
    PolicyName(String),
    /// [`reserve`](crate::RateLimitLayerBuilder::reserve) over a store that
    /// keeps no reservations ([`tollgate::Store::reserves`]).
    #[error("the limiter's store keeps no reservations")]
    ReservationsUnsupported,
    /// [`reserve`](crate::RateLimitLayerBuilder::reserve) with a policy
    /// that cannot be reserved (`sliding_log`, `leaky_bucket`).
    #[error("policy `{policy}` cannot be reserved: {reason}")]
    NotReservable {
        /// The policy's name.
        policy: String,
        /// Why, from [`tollgate::PolicyError::ReserveNotSupported`].
        reason: String,
    },
    /// A [`Reserve::deadline`](crate::Reserve::deadline) of zero or past
    /// [`tollgate::reservation::MAX_DEADLINE`].
    #[error("reservation deadline {0:?} must be above zero and at most one hour")]
    ReserveDeadline(std::time::Duration),
    /// [`Reserve::max_pending_settles`](crate::Reserve::max_pending_settles)
    /// of zero.
    #[error("at least one settle must be allowed to run")]
    NoPendingSettles,
}
