//! [`RateLimitService`]: in `call` (never in `poll_ready`) it extracts the
//! request's key, asks the limiter, and translates the check's
//! [`Answer`] into forwarding, waiting, or a response of its own.

use std::fmt;
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
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        ResponseFuture::new(async move {
            let (parts, body) = request.into_parts();
            let action = act(&config, &parts).await;
            let request = Request::from_parts(parts, body);
            match action {
                Action::Pass => Ok(inner.call(request).await?.map(RateLimitBody::inner)),
                Action::Proceed {
                    fields,
                    delay,
                    settler,
                } => {
                    if !delay.is_zero() {
                        // Boxed: a `Sleep` inline would grow every request's
                        // future, delayed or not.
                        Box::pin(tokio::time::sleep(delay)).await;
                    }
                    // An open reservation's settler lives across the call:
                    // dropped with this future or by an error, it settles
                    // at the estimate.
                    let mut response = inner.call(request).await?;
                    fields.add_to(response.headers_mut());
                    Ok(match (settler, &config.reserve) {
                        (Some(settler), Some(reserving)) => reserving.finish(settler, response),
                        _ => response.map(RateLimitBody::inner),
                    })
                }
                Action::Respond(response) => Ok(response.map(RateLimitBody::written)),
            }
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
        settler: Option<Settler>,
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
        return reserve(config, reserving, request, set, &key, cost).await;
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
            settler: Some(reserving.settler(id, estimate)),
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
    let protocol = Protocol::of(&request.headers);
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
            let denial = Denial::new(&answer, key, Protocol::of(&request.headers));
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
