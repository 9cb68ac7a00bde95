//! [`RateLimitService`]: in `call` (never in `poll_ready`) it extracts the
//! request's key, asks the limiter, and translates the check's
//! [`Answer`] into forwarding, waiting, or a response of its own.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use smallvec::SmallVec;
use tollgate::answer::{Answer, PolicyDecision, Verdict};
use tollgate::reservation::MAX_AMOUNT;
use tollgate::{Decision, Store};
use tower::Service;

use crate::body::RateLimitBody;
use crate::config::{LayerConfig, MissingKey, PolicySet};
use crate::future::ResponseFuture;
use crate::key::{Key, KeyError};
use crate::reserve::{Reserving, Settler};
use crate::response::{self, Denial, LimitFields, Protocol, Refusal};

/// Rate limits requests to an inner service; made by
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Cloning it clones the inner service and shares the layer's limiter, so
/// every clone charges the same budget.
pub struct RateLimitService<Svc, S> {
    inner: Svc,
    config: Arc<LayerConfig<S>>,
}

impl<Svc, S> RateLimitService<Svc, S> {
    pub(crate) fn new(inner: Svc, config: Arc<LayerConfig<S>>) -> Self {
        RateLimitService { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// Consumes the rate limiter, returning the inner service.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

impl<Svc: Clone, S> Clone for RateLimitService<Svc, S> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<Svc: fmt::Debug, S> fmt::Debug for RateLimitService<Svc, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<Svc, S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<Svc, S>
where
    S: Store,
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = Svc::Error;
    type Future = ResponseFuture<ResBody, Svc::Error>;

    /// Ready when the inner service is: the decision needs no readiness, and
    /// waiting here for budget would stall every clone (tower's own
    /// `RateLimit` does that, with a budget per clone).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // `self.inner` is the instance `poll_ready` readied: it goes into the
        // future, and a fresh clone stays for the next `poll_ready`.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        let (parts, body) = request.into_parts();
        ResponseFuture::new(respond(config, inner, parts, body))
    }
}

/// The response to a request: decide, wait when a leaky bucket says so,
/// forward, add the header fields and settle.
///
/// Its future is the one boxed per request, so what it keeps across an
/// await is kept small (`tests::the_response_future_is_small`): the request
/// is put back together only where it is forwarded, and the decision's
/// [`Action`] is taken apart before the next await.
#[allow(clippy::manual_async_fn)] // see the comment in the body
fn respond<S, Svc, ReqBody, ResBody>(
    config: Arc<LayerConfig<S>>,
    mut inner: Svc,
    parts: Parts,
    body: ReqBody,
) -> impl Future<Output = Result<Response<RateLimitBody<ResBody>>, Svc::Error>>
where
    S: Store,
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    // A block, not an `async fn`: an `async fn` keeps a second copy of
    // its arguments (the request's parts twice).
    async move {
        let (fields, delay, settler) = match act(&config, &parts).await {
            Action::Pass => (None, Duration::ZERO, None),
            Action::Proceed {
                fields,
                delay,
                settler,
            } => (Some(fields), delay, settler),
            Action::Respond(response) => return Ok(response.map(RateLimitBody::written)),
        };
        if !delay.is_zero() {
            // Boxed: a `Sleep` inline would grow every request's future,
            // delayed or not.
            Box::pin(tokio::time::sleep(delay)).await;
        }
        // An open reservation's settler lives across the call: dropped with
        // this future or by an error, it settles at the estimate.
        let mut response = inner.call(Request::from_parts(parts, body)).await?;
        let Some(fields) = fields else {
            // Not limited: nothing to add.
            return Ok(response.map(RateLimitBody::inner));
        };
        fields.add_to(response.headers_mut());
        Ok(match (settler, &config.reserve) {
            (Some(settler), Some(reserving)) => reserving.finish(*settler, response),
            _ => response.map(RateLimitBody::inner),
        })
    }
}

/// What the service does with a request.
enum Action {
    /// Not limited (no policy for it, allowlisted, skipped, or the limiter
    /// could not decide and the layer fails open): forward, add nothing.
    Pass,
    /// Allowed (or shadowed): wait `delay`, forward, add `fields`, and
    /// settle the request's reservation, if one is open, from the response.
    Proceed {
        fields: LimitFields,
        delay: Duration,
        /// Boxed: only a reserving layer has one, and it is kept across
        /// the inner service's call.
        settler: Option<Box<Settler>>,
    },
    /// Answered by the layer.
    Respond(Response<Bytes>),
}

/// What to do when the extractor found no key.
enum NoKey {
    /// Charge this key instead.
    Fallback(Key),
    /// Forward unlimited.
    Pass,
    /// Answer with this.
    Refuse(Refusal),
}

/// What to do with `request`: find its policies and key, check them, and
/// translate the answer.
async fn act<S: Store>(config: &LayerConfig<S>, request: &Parts) -> Action {
    let Some(set) = config.policies.for_request(request) else {
        return Action::Pass;
    };
    let key = match config.key.extract(request) {
        Ok(key) => key,
        Err(error) => match missing_key(config, request, &error) {
            NoKey::Fallback(key) => key,
            NoKey::Pass => return Action::Pass,
            NoKey::Refuse(refusal) => return refuse(config, request, refusal),
        },
    };
    if config.allowlist.contains(key.as_bytes()) {
        return Action::Pass;
    }
    let cost = config.cost.of(request);
    if cost == 0 {
        // Priced free by the cost function: nothing to check or charge.
        return Action::Pass;
    }
    if let Some(reserving) = &config.reserve {
        // Boxed: a reservation's state is larger than a check's, and
        // inline it would grow every request's future, reserving or not.
        return Box::pin(reserve(config, reserving, request, set, &key, cost)).await;
    }
    // One policy (the common case) skips `check_all`'s bookkeeping.
    let limiter = &config.limiter;
    let decided = match set.entries.as_slice() {
        [(name, _)] => limiter.check(name, &key, cost).await.map(|d| {
            let mut one = tollgate::Decisions::new();
            one.push(d);
            one
        }),
        entries => {
            let names: SmallVec<[&str; 4]> = entries.iter().map(|(name, _)| &**name).collect();
            (limiter.check_all(&names, &key, cost).await).map(|all| all.decisions)
        }
    };
    match decided {
        Ok(decisions) => translate(config, request, set, &key, cost, &decisions),
        Err(error) => failed(config, request, error, &key),
    }
}

/// Reserves `cost` as the estimate for `request` and translates the
/// decision as a check's; an allowed reservation goes with the request, to
/// be settled from its response.
async fn reserve<S: Store>(
    config: &LayerConfig<S>,
    reserving: &Reserving,
    request: &Parts,
    set: &PolicySet,
    key: &Key,
    cost: u64,
) -> Action {
    let estimate = cost.min(MAX_AMOUNT);
    let names: SmallVec<[&str; 4]> = set.entries.iter().map(|(name, _)| &**name).collect();
    let reservation = match (config.limiter)
        .reserve(&names, key, estimate, reserving.deadline)
        .await
    {
        Ok(reservation) => reservation,
        Err(error) => return failed(config, request, error, key),
    };
    let decisions = &reservation.decision.decisions;
    match (
        translate(config, request, set, key, estimate, decisions),
        reservation.id,
    ) {
        (Action::Proceed { fields, delay, .. }, Some(id)) => Action::Proceed {
            fields,
            delay,
            settler: Some(Box::new(reserving.settler(id, estimate))),
        },
        // Reservable policies never delay, so an allowed reservation is
        // always forwarded; were it not, nothing was served: give it back.
        (action, Some(id)) => {
            reserving.settler(id, estimate).cancel();
            action
        }
        (action, None) => action,
    }
}

/// What to charge when the extractor found no key.
fn missing_key<S>(config: &LayerConfig<S>, request: &Parts, error: &KeyError) -> NoKey {
    log_key_error(error);
    match &config.missing_key {
        MissingKey::BadRequest => NoKey::Refuse(Refusal::MissingKey),
        MissingKey::Unauthorized(_) => NoKey::Refuse(Refusal::Unauthenticated),
        MissingKey::Fallback(extractor) => match extractor.extract(request) {
            Ok(key) => NoKey::Fallback(key),
            Err(error) => {
                log_key_error(&error);
                NoKey::Refuse(Refusal::MissingKey)
            }
        },
        MissingKey::Skip => NoKey::Pass,
    }
}

/// The layer's own answer (not a 429): in gRPC's terms to a gRPC call.
fn refuse<S>(config: &LayerConfig<S>, request: &Parts, refusal: Refusal) -> Action {
    let challenge = match &config.missing_key {
        MissingKey::Unauthorized(challenge) => challenge.as_ref(),
        _ => None,
    };
    let protocol = Protocol::of(&request.method, &request.headers);
    Action::Respond(response::refusal(
        &config.format,
        protocol,
        refusal,
        challenge,
    ))
}

/// The check's [`Answer`] for `request`, in the layer's terms: the rules
/// (which policy decides, how long to wait, the field values) are the
/// core's; shadow mode and the maximum delay are the layer's settings.
fn translate<S>(
    config: &LayerConfig<S>,
    request: &Parts,
    set: &PolicySet,
    key: &Key,
    cost: u64,
    decisions: &[Decision],
) -> Action {
    let views: SmallVec<[PolicyDecision<'_>; 4]> = set
        .entries
        .iter()
        .zip(decisions)
        .map(|((name, policy), decision)| PolicyDecision::new(name, policy, *decision))
        .collect();
    let answer = Answer::new(&views);
    let answer = if config.shadow {
        if answer.verdict() == Verdict::Deny {
            tracing::info!(key = %key, policy = deciding(&answer), "shadow mode: would deny");
        }
        answer.shadowed()
    } else {
        answer.within_max_delay(config.max_delay, cost)
    };
    let fields = LimitFields::new(&answer, set.header.as_ref(), config.fields);
    match answer.verdict() {
        Verdict::Allow | Verdict::Delay => Action::Proceed {
            fields,
            delay: answer.delay(),
            settler: None,
        },
        Verdict::Deny => {
            if answer.queued_too_long() {
                tracing::debug!(key = %key, policy = deciding(&answer), "queued longer than the maximum delay");
            } else {
                tracing::debug!(key = %key, policy = deciding(&answer), "rate limited");
            }
            // The protocol is read only on the way to a refusal, never per
            // request.
            let denial = Denial::new(
                &answer,
                key,
                Protocol::of(&request.method, &request.headers),
            );
            let mut response = response::too_many_requests(&config.format, &denial);
            fields.add_to(response.headers_mut());
            Action::Respond(response)
        }
    }
}

/// What to do when the limiter could not decide.
fn failed<S>(
    config: &LayerConfig<S>,
    request: &Parts,
    error: tollgate::Error,
    key: &Key,
) -> Action {
    match error {
        tollgate::Error::KeyTooLong { len, max } => {
            tracing::debug!(len, max, "rate limiting key too long");
            refuse(config, request, Refusal::KeyTooLong)
        }
        // `build` checked names and cost, so these mean a bug, not a
        // bad request: say so loudly, and do not punish the client.
        tollgate::Error::UnknownPolicy(_)
        | tollgate::Error::ZeroCost
        | tollgate::Error::NoPolicy
        | tollgate::Error::DuplicatePolicy(_)
        | tollgate::Error::NotReservable { .. }
        | tollgate::Error::InvalidReservation(_) => {
            tracing::error!(%error, key = %key, "rate limit layer misconfigured; request not limited");
            Action::Pass
        }
        // The store failed (or a failure this version does not know).
        error => {
            tracing::warn!(%error, key = %key, transient = error.is_transient(), "rate limit store failed");
            match config.store_failure.refusal() {
                None => Action::Pass,
                Some(refusal) => refuse(config, request, refusal),
            }
        }
    }
}

/// The deciding policy's name, for the log.
fn deciding<'a>(answer: &Answer<'a>) -> &'a str {
    answer.deciding().map_or("", |d| d.name)
}

fn log_key_error(error: &KeyError) {
    match error {
        KeyError::NoPeerAddress => tracing::warn!(%error, "no rate limiting key"),
        error => tracing::debug!(%error, "no rate limiting key"),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tollgate::{Limiter, MemoryStore};

    use super::*;
    use crate::RateLimitLayer;

    /// glibc serves allocations of up to 1 032 bytes from a per-thread
    /// cache; larger ones take an arena's lock, which the workers of a
    /// loaded server then contend for (the boxed future is freed on
    /// whichever worker finishes the request).
    const THREAD_CACHE_MAX: usize = 1032;

    /// The future boxed per request, over an inner service whose future is
    /// as large as an axum route's (320 bytes), fits the allocator's
    /// per-thread cache: docs/BENCHMARKS.md, "The tower layer".
    #[test]
    fn the_response_future_is_small() {
        let limiter = Limiter::builder(MemoryStore::new())
            .policy("api", "gcra 10/s".parse().expect("valid policy"))
            .build();
        let layer = RateLimitLayer::builder(limiter)
            .policy("api")
            .build()
            .expect("valid layer");
        let inner = tower::service_fn(|_: Request<()>| async {
            let route = [0u8; 304];
            tokio::task::yield_now().await;
            std::hint::black_box(&route);
            Ok::<_, Infallible>(Response::new(()))
        });
        let inner_size =
            std::mem::size_of_val(&tower::Service::call(&mut inner.clone(), Request::new(())));
        assert!(inner_size >= 304, "{inner_size}");
        let service = tower::Layer::layer(&layer, inner);
        let (parts, body) = Request::new(()).into_parts();
        let future = respond(Arc::clone(&service.config), service.inner, parts, body);
        let size = std::mem::size_of_val(&future);
        assert!(
            size <= THREAD_CACHE_MAX,
            "the layer's response future is {size} bytes over an inner future of {inner_size}: more than the allocator's thread cache takes"
        );
    }
}
