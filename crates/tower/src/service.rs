//! [`RateLimitService`]: decides in `call`, then answers or forwards.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use smallvec::SmallVec;
use tollgate::{Decision, Store};
use tower::Service;

use crate::body::RateLimitBody;
use crate::future::ResponseFuture;
use crate::key::{Key, KeyError};
use crate::layer::{Config, MissingKey, PolicySet, StoreFailure};
use crate::response::{
    self, Denial, PolicyDecision, Protocol, RATELIMIT, RATELIMIT_POLICY, Refusal,
};

/// Rate limits requests to an inner service; made by
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Cloning it clones the inner service and shares the layer's limiter, so
/// every clone charges the same budget.
pub struct RateLimitService<Svc, S> {
    inner: Svc,
    config: Arc<Config<S>>,
}

impl<Svc, S> RateLimitService<Svc, S> {
    pub(crate) fn new(inner: Svc, config: Arc<Config<S>>) -> Self {
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
            let verdict = config.decide(&parts).await;
            let request = Request::from_parts(parts, body);
            match verdict {
                Verdict::Pass => Ok(inner.call(request).await?.map(RateLimitBody::inner)),
                Verdict::Proceed { fields, delay } => {
                    if !delay.is_zero() {
                        // Boxed: a `Sleep` inline would grow every request's
                        // future, delayed or not.
                        Box::pin(tokio::time::sleep(delay)).await;
                    }
                    let mut response = inner.call(request).await?;
                    fields.add_to(response.headers_mut());
                    Ok(response.map(RateLimitBody::inner))
                }
                Verdict::Respond(response) => Ok(response.map(RateLimitBody::written)),
            }
        })
    }
}

/// What to do with a request.
pub(crate) enum Verdict {
    /// Not limited (no policy for it, allowlisted, skipped, or the limiter
    /// could not decide and the layer fails open): forward, add nothing.
    Pass,
    /// Allowed (or shadowed): wait `delay`, forward, add `fields`.
    Proceed {
        fields: LimitFields,
        delay: Duration,
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

/// The rate limit header fields of one decision.
/// The header [`RateLimitLayerBuilder::degraded_header`](crate::RateLimitLayerBuilder::degraded_header)
/// adds (the same as `tollgate serve`'s).
pub const TOLLGATE_DEGRADED: HeaderName = HeaderName::from_static("tollgate-degraded");

pub(crate) struct LimitFields {
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
    // Boxed: off by default, and a verdict is moved through a future.
    legacy: Option<Box<[(HeaderName, HeaderValue); 3]>>,
    /// Some decision was made without the shared store.
    degraded: bool,
}

impl LimitFields {
    /// Appends the standard fields (stacked layers each add their list
    /// members) and sets the legacy ones unless an inner layer did.
    fn add_to(self, headers: &mut HeaderMap) {
        if let Some(value) = self.policy {
            headers.append(RATELIMIT_POLICY, value);
        }
        if let Some(value) = self.ratelimit {
            headers.append(RATELIMIT, value);
        }
        for (name, value) in self.legacy.into_iter().flat_map(|fields| *fields) {
            if !headers.contains_key(&name) {
                headers.insert(name, value);
            }
        }
        if self.degraded {
            headers.insert(TOLLGATE_DEGRADED, HeaderValue::from_static("true"));
        }
    }
}

impl<S: Store> Config<S> {
    /// Decides what to do with `request`.
    pub(crate) async fn decide(&self, request: &Parts) -> Verdict {
        let Some(set) = self.policies.for_request(request) else {
            return Verdict::Pass;
        };
        let key = match self.key.extract(request) {
            Ok(key) => key,
            Err(error) => match self.missing_key(request, &error) {
                NoKey::Fallback(key) => key,
                NoKey::Pass => return Verdict::Pass,
                NoKey::Refuse(refusal) => return self.refuse(request, refusal),
            },
        };
        if self.allowlist.contains(key.as_bytes()) {
            return Verdict::Pass;
        }
        let cost = self.cost.of(request);
        if cost == 0 {
            // Priced free by the cost function: nothing to check or charge.
            return Verdict::Pass;
        }
        // One policy (the common case) skips `check_all`'s bookkeeping.
        let decided = match set.entries.as_slice() {
            [(name, _)] => self.limiter.check(name, &key, cost).await.map(|d| {
                let mut one = tollgate::Decisions::new();
                one.push(d);
                one
            }),
            entries => {
                let names: SmallVec<[&str; 4]> = entries.iter().map(|(name, _)| &**name).collect();
                (self.limiter.check_all(&names, &key, cost).await).map(|all| all.decisions)
            }
        };
        match decided {
            Ok(decisions) => self.judge(request, set, &key, cost, &decisions),
            Err(error) => self.failed(request, error, &key),
        }
    }

    /// What to charge when the extractor found no key.
    fn missing_key(&self, request: &Parts, error: &KeyError) -> NoKey {
        log_key_error(error);
        match &self.missing_key {
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
    fn refuse(&self, request: &Parts, refusal: Refusal) -> Verdict {
        let challenge = match &self.missing_key {
            MissingKey::Unauthorized(challenge) => challenge.as_ref(),
            _ => None,
        };
        let protocol = Protocol::of(&request.headers);
        Verdict::Respond(response::refusal(
            &self.format,
            protocol,
            refusal,
            challenge,
        ))
    }

    /// The verdict on the store's decisions for `request`.
    fn judge(
        &self,
        request: &Parts,
        set: &PolicySet,
        key: &Key,
        cost: u64,
        decisions: &[Decision],
    ) -> Verdict {
        let views: SmallVec<[PolicyDecision<'_>; 4]> = set
            .entries
            .iter()
            .zip(decisions)
            .map(|((name, policy), decision)| PolicyDecision {
                name,
                policy,
                decision: *decision,
            })
            .collect();
        // The denial that lasts longest names the policy; "never" is longest.
        let denying = views
            .iter()
            .filter(|v| !v.decision.allowed)
            .max_by_key(|v| v.decision.retry_after.unwrap_or(Duration::MAX));
        if let Some(denying) = denying {
            if self.shadow {
                tracing::info!(key = %key, policy = denying.name, "shadow mode: would deny");
                return Verdict::Proceed {
                    fields: self.fields(set, &views, None),
                    delay: Duration::ZERO,
                };
            }
            tracing::debug!(key = %key, policy = denying.name, "rate limited");
            return self.reject(
                set,
                &Denial {
                    policy: denying.name,
                    retry_after: denying.decision.retry_after,
                    key,
                    decisions: &views,
                    queued_too_long: false,
                    // Read only on the way to a refusal, never per request.
                    protocol: Protocol::of(&request.headers),
                },
            );
        }
        let slowest = views.iter().max_by_key(|v| v.decision.delay);
        let fields = self.fields(set, &views, None);
        let delay = match slowest {
            Some(slowest) if !self.shadow && !slowest.decision.delay.is_zero() => slowest,
            _ => {
                return Verdict::Proceed {
                    fields,
                    delay: Duration::ZERO,
                };
            }
        };
        if delay.decision.delay <= self.max_delay {
            return Verdict::Proceed {
                fields,
                delay: delay.decision.delay,
            };
        }
        // A retry queues behind this request too: it waits no longer than
        // the maximum once the queue has drained `delay - max` plus this
        // request's own units.
        let own_units_us = u128::from(cost) * u128::from(delay.policy.period_us());
        let own_units_us = own_units_us.div_ceil(u128::from(delay.policy.limit()));
        let own_units = Duration::from_micros(u64::try_from(own_units_us).unwrap_or(u64::MAX));
        let retry_after = delay
            .decision
            .delay
            .saturating_sub(self.max_delay)
            .saturating_add(own_units);
        tracing::debug!(key = %key, policy = delay.name, "queued longer than the maximum delay");
        self.reject(
            set,
            &Denial {
                policy: delay.name,
                retry_after: Some(retry_after),
                key,
                decisions: &views,
                queued_too_long: true,
                protocol: Protocol::of(&request.headers),
            },
        )
    }

    /// The 429 for `denial`, with every field.
    fn reject(&self, set: &PolicySet, denial: &Denial<'_>) -> Verdict {
        let mut response = response::too_many_requests(&self.format, denial);
        self.fields(set, denial.decisions, Some(denial.policy))
            .add_to(response.headers_mut());
        Verdict::Respond(response)
    }

    fn fields(
        &self,
        set: &PolicySet,
        views: &[PolicyDecision<'_>],
        denying: Option<&str>,
    ) -> LimitFields {
        let standard = self.standard_headers;
        LimitFields {
            policy: set.header.clone().filter(|_| standard),
            ratelimit: standard
                .then(|| response::ratelimit_header(&set.quoted, views))
                .flatten(),
            legacy: self
                .legacy_headers
                .then(|| response::legacy_headers(views, denying))
                .flatten()
                .map(Box::new),
            degraded: self.degraded_header && views.iter().any(|v| v.decision.degraded),
        }
    }

    /// The verdict when the limiter could not decide.
    fn failed(&self, request: &Parts, error: tollgate::Error, key: &Key) -> Verdict {
        match error {
            tollgate::Error::KeyTooLong { len, max } => {
                tracing::debug!(len, max, "rate limiting key too long");
                self.refuse(request, Refusal::KeyTooLong)
            }
            // `build` checked names and cost, so these mean a bug, not a
            // bad request: say so loudly, and do not punish the client.
            tollgate::Error::UnknownPolicy(_)
            | tollgate::Error::ZeroCost
            | tollgate::Error::NoPolicy
            | tollgate::Error::DuplicatePolicy(_) => {
                tracing::error!(%error, key = %key, "rate limit layer misconfigured; request not limited");
                Verdict::Pass
            }
            // The store failed (or a failure this version does not know).
            error => {
                tracing::warn!(%error, key = %key, transient = error.is_transient(), "rate limit store failed");
                match self.store_failure {
                    StoreFailure::Allow => Verdict::Pass,
                    StoreFailure::Deny => self.refuse(request, Refusal::Unavailable),
                }
            }
        }
    }
}

fn log_key_error(error: &KeyError) {
    match error {
        KeyError::NoPeerAddress => tracing::warn!(%error, "no rate limiting key"),
        error => tracing::debug!(%error, "no rate limiting key"),
    }
}
