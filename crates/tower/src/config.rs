//! A layer's configuration, shared by every service it makes: which
//! policies apply to a request, what it costs, what it is keyed by, and the
//! public choices [`MissingKey`] and [`StoreFailure`]. Data and the
//! lookups on it: the builder (`layer.rs`) makes it, the service
//! (`service.rs`) acts on it, so neither needs the other.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use http::HeaderValue;
use http::request::Parts;
use tollgate::{Limiter, Policy};

use crate::key::{KeyExtractor, PeerIp, percent_decode};
use crate::reserve::Reserving;
use crate::response::{FieldSwitches, Refusal, ResponseFormat};

/// What the layer does with a request it cannot read a key from.
///
/// Whatever the choice, it is never a 500. The reason is logged: at `warn`
/// when the server is set up wrong ([`KeyError::NoPeerAddress`]), at `debug`
/// when the client left something out.
///
/// [`KeyError::NoPeerAddress`]: crate::key::KeyError::NoPeerAddress
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Answer `400 Bad Request` (`{"error":"missing_key"}`; a gRPC call
    /// gets `INVALID_ARGUMENT`). The default: a server started without
    /// `ConnectInfo` fails loudly on its first request rather than silently
    /// limiting nothing.
    #[default]
    BadRequest,
    /// Answer `401 Unauthorized`, with this `WWW-Authenticate` challenge if
    /// given (e.g. `Bearer`): for keys that are credentials. A gRPC call
    /// gets `UNAUTHENTICATED` (and the challenge as metadata).
    Unauthorized(Option<HeaderValue>),
    /// Charge the key of another extractor instead, e.g.
    /// [`MissingKey::peer_ip`]; if that fails too, answer 400.
    Fallback(Arc<dyn KeyExtractor>),
    /// Let the request through unlimited, without rate limit fields. Only
    /// for keys a client cannot simply leave out to escape the limit.
    Skip,
}

impl MissingKey {
    /// Fall back to the peer's IP address ([`PeerIp`] with its defaults).
    /// Behind a proxy, fall back to a [`ClientIp`](crate::key::ClientIp)
    /// with [`MissingKey::Fallback`] instead, or every such request is
    /// charged to the proxy.
    pub fn peer_ip() -> Self {
        MissingKey::Fallback(Arc::new(PeerIp::new()))
    }

    /// Fall back to the key of `extractor`.
    pub fn fallback(extractor: impl KeyExtractor) -> Self {
        MissingKey::Fallback(Arc::new(extractor))
    }
}

impl fmt::Debug for MissingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingKey::BadRequest => f.write_str("BadRequest"),
            MissingKey::Unauthorized(challenge) => {
                f.debug_tuple("Unauthorized").field(challenge).finish()
            }
            MissingKey::Fallback(_) => f.write_str("Fallback(..)"),
            MissingKey::Skip => f.write_str("Skip"),
        }
    }
}

/// How the layer answers a store error that reaches it
/// ([`tollgate::Error::Store`]: Redis down, a timeout) instead of a
/// decision.
///
/// Failure modes belong to [`tollgate::Resilient`]: over a store wrapped in
/// it (open, closed or local fallback, with timeouts and a circuit breaker)
/// the layer sees decisions marked `degraded`, never an error, and this
/// setting is not consulted. It only translates the error of a bare store
/// (or of `Resilient` with `FailureMode::Error`) into a response. Either way
/// the failure is logged with `tracing::warn!`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreFailure {
    /// Let the request through, without rate limit fields (the default: an
    /// outage of the limiter should not become an outage of the service).
    #[default]
    Allow,
    /// Answer `503 Service Unavailable`
    /// (`{"error":"rate_limiter_unavailable"}`; a gRPC call gets
    /// `UNAVAILABLE`).
    Deny,
}

impl StoreFailure {
    /// The layer's own answer to a store error: `None` to forward the
    /// request untouched.
    pub(crate) fn refusal(self) -> Option<Refusal> {
        match self {
            StoreFailure::Allow => None,
            StoreFailure::Deny => Some(Refusal::Unavailable),
        }
    }
}

/// The policies of one group of requests, checked together.
pub(crate) struct PolicySet {
    /// Names and policies, in the order given.
    pub(crate) entries: Vec<(Box<str>, Policy)>,
    /// The `RateLimit-Policy` value: it never changes, so it is written once.
    pub(crate) header: Option<HeaderValue>,
}

/// Which policies apply to a request.
pub(crate) enum Policies {
    /// The same for every request.
    Fixed(PolicySet),
    /// By route template (axum's `MatchedPath`) or request path.
    Routes {
        routes: HashMap<Box<str>, PolicySet>,
        default: Option<PolicySet>,
    },
}

impl Policies {
    /// Every policy any request may be checked against, with its name.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &Policy)> {
        let sets: Vec<&PolicySet> = match self {
            Policies::Fixed(set) => vec![set],
            Policies::Routes { routes, default } => routes.values().chain(default).collect(),
        };
        sets.into_iter()
            .flat_map(|set| set.entries.iter().map(|(name, policy)| (&**name, policy)))
    }

    /// The policies for `request`; `None` when it is not limited.
    pub(crate) fn for_request(&self, request: &Parts) -> Option<&PolicySet> {
        match self {
            Policies::Fixed(set) => Some(set),
            Policies::Routes { routes, default } => request
                .extensions
                .get::<MatchedPath>()
                .and_then(|matched| routes.get(matched.as_str()))
                .or_else(|| literal(routes, request.uri.path()))
                .or(default.as_ref()),
        }
    }
}

/// The set of the literal request `path`, as sent or percent-decoded: the
/// handler behind a template (`/files/{name}`) or a file server decodes
/// `/files/%61.pdf` into `/files/a.pdf`, so a client must not escape the
/// policies of `/files/a.pdf` by encoding a character.
fn literal<'r>(routes: &'r HashMap<Box<str>, PolicySet>, path: &str) -> Option<&'r PolicySet> {
    routes.get(path).or_else(|| {
        if !path.contains('%') {
            return None;
        }
        let decoded = percent_decode(path);
        routes.get(std::str::from_utf8(&decoded).ok()?)
    })
}

/// What a request costs: a constant, or a function of the request head.
#[derive(Clone)]
pub(crate) enum Cost {
    Fixed(u64),
    PerRequest(Arc<dyn Fn(&Parts) -> u64 + Send + Sync>),
}

impl Cost {
    /// The units `request` costs; 0 means free (not checked).
    pub(crate) fn of(&self, request: &Parts) -> u64 {
        match self {
            Cost::Fixed(cost) => *cost,
            Cost::PerRequest(cost_of) => cost_of(request),
        }
    }
}

impl fmt::Debug for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cost::Fixed(cost) => write!(f, "{cost}"),
            Cost::PerRequest(_) => f.write_str("per request"),
        }
    }
}

/// Everything a layer's services share: built once by
/// [`RateLimitLayerBuilder::build`](crate::RateLimitLayerBuilder::build),
/// behind one `Arc`.
pub(crate) struct LayerConfig<S> {
    /// The budget: shared by every clone of every service of the layer, and
    /// by anything else holding the same limiter.
    pub(crate) limiter: Limiter<S>,
    pub(crate) policies: Policies,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) missing_key: MissingKey,
    pub(crate) store_failure: StoreFailure,
    pub(crate) cost: Cost,
    pub(crate) format: ResponseFormat,
    pub(crate) fields: FieldSwitches,
    pub(crate) max_delay: Duration,
    pub(crate) shadow: bool,
    pub(crate) allowlist: HashSet<Box<[u8]>>,
    /// Reserve each request's cost and settle it from the response,
    /// instead of checking it.
    pub(crate) reserve: Option<Reserving>,
}
