//! Envoy's rate limit service, `envoy.service.ratelimit.v3.RateLimitService`,
//! with envoyproxy/ratelimit's semantics, so Envoy (or anything built for
//! that service) can point at tollgate unchanged.
//!
//! - Each request descriptor is matched in the request's domain (see
//!   [`crate::envoy`]) and decided on its own, as envoyproxy/ratelimit does;
//!   a descriptor that is denied charges nothing (tollgate's rule), the
//!   others are charged.
//! - `hits_addend`: a descriptor's own value, when set, wins and may be 0,
//!   which checks without charging (a peek); otherwise the request's value,
//!   where 0 means 1.
//! - One `statuses` entry per descriptor, in order: `OK` with no
//!   `current_limit` when nothing matched; `OK` with `limit_remaining`
//!   u32::MAX for `unlimited`; otherwise the limit, what remains and the
//!   time until reset. A limit named in another matched limit's `replaces`
//!   is skipped.
//! - `shadow_mode`: an over-limit descriptor is reported `OK` and counted as
//!   `shadow` in the metrics.
//! - `quota_mode` (per descriptor, or `envoy.quota_mode` for all): a
//!   quota descriptor over the limit is reported `OVER_LIMIT` in its
//!   status, but makes `overall_code` `OVER_LIMIT` only when every quota
//!   descriptor of the request is over the limit; any other descriptor over
//!   the limit makes it `OVER_LIMIT` (envoyproxy/ratelimit's rule: with
//!   `envoy.quota_mode`, descriptors that match nothing count as quota
//!   descriptors that passed).
//! - `envoy.shadow_mode`: an `OVER_LIMIT` overall code becomes `OK` (the
//!   statuses are unchanged), counted in
//!   `ratelimit_service_global_shadow_mode`.
//! - `envoy.stop_cache_key_increment_when_overlimit`: the request's limits
//!   are first checked without charging; if any would deny, none is
//!   charged (the statuses come from those checks).
//! - No Envoy configuration loaded (envoyproxy/ratelimit files refused at
//!   start): every call fails with `UNKNOWN`, as envoyproxy/ratelimit's
//!   does.
//! - envoyproxy/ratelimit's per-descriptor statistics are counted under
//!   each limit's statistics key (see [`crate::metrics`]).
//! - `response_headers_to_add` carries `RateLimit-Policy` and `RateLimit`
//!   for the limits that were decided; with `envoy.response_headers`
//!   enabled, also envoyproxy/ratelimit's three headers (limit, remaining,
//!   reset) of the status nearest to its limit.
//! - A descriptor's `limit` override, in a configured domain, replaces
//!   whatever its entries match: `requests_per_unit` per `unit` in a fixed
//!   window, never shadowed, under the one policy name
//!   [`OVERRIDE_POLICY`](crate::envoy::OVERRIDE_POLICY) (see
//!   [`Domain::find_override`](crate::envoy::Domain::find_override)). A
//!   unit that is not one (`UNKNOWN`, or a number outside the enum) is
//!   `INVALID_ARGUMENT`.
//! - With `envoy.response_dynamic_metadata` (envoyproxy/ratelimit's
//!   `RESPONSE_DYNAMIC_METADATA`), `dynamic_metadata` names the request and
//!   carries the configured `metadata` of the descriptors that passed
//!   ([`crate::envoy::metadata`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit as ProtoUnit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tollgate::answer::{self, Answer, PolicyDecision};
use tollgate::{Mode, PolicyRef};
use tonic::{Request, Response, Status};

use crate::app::{App, Loaded};
use crate::config::ResponseHeaderSettings;
use crate::envoy::metadata::{self, Metadata};
use crate::envoy::{Applied, CompiledRule, Domain, Matched, Unit};
use crate::metrics::EnvoyHits;

/// The gRPC service name, for health checking.
pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// Every name gRPC health answers for: the server as a whole (`""`), the
/// name envoyproxy/ratelimit registers (`ratelimit`) and the service's full
/// name. All three follow the same check.
pub const HEALTH_NAMES: [&str; 3] = ["", "ratelimit", SERVICE_NAME];

/// The most descriptors one request may carry.
pub const MAX_DESCRIPTORS: usize = 64;

/// The rate limit service over an [`App`].
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    app: Arc<App>,
}

impl RateLimitGrpc {
    /// The service over `app`.
    pub fn new(app: Arc<App>) -> Self {
        RateLimitGrpc { app }
    }

    /// The tonic server of this service: envoy-types' generated routing,
    /// with a codec that reports a request that does not decode as
    /// `INVALID_ARGUMENT` (see [`RateLimitServer`]).
    pub fn into_server(self) -> RateLimitServer {
        RateLimitServer {
            inner: Arc::new(self),
        }
    }
}

/// The most bytes one request message may take; a request is a handful of
/// short strings, so 1 MiB is generous.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The gRPC server of [`RateLimitGrpc`].
///
/// envoy-types' generated `RateLimitServiceServer` decodes with
/// tonic-prost's codec, which turns every decoding failure into `INTERNAL`
/// (for instance a descriptor value that is not UTF-8: prost refuses it in a
/// `string` field). Such a request is the client's fault, so this server
/// routes `ShouldRateLimit` the way the generated one does but decodes with
/// [`RequestCodec`], whose only error is `INVALID_ARGUMENT`. An `INTERNAL`
/// from anywhere else (the service itself, tonic) is unchanged.
#[derive(Debug, Clone)]
pub struct RateLimitServer {
    inner: Arc<RateLimitGrpc>,
}

impl tonic::server::NamedService for RateLimitServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// The path of the one method.
pub(crate) const SHOULD_RATE_LIMIT: &str =
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// `ShouldRateLimit` as tonic's unary service.
struct ShouldRateLimit(Arc<RateLimitGrpc>);

impl tonic::server::UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = tonic::codegen::BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.should_rate_limit(request).await })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for RateLimitServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SHOULD_RATE_LIMIT {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let method = ShouldRateLimit(Arc::clone(&self.inner));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RequestCodec)
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The protobuf codec of `ShouldRateLimit` (prost, as tonic-prost's), except
/// that a request which does not decode is `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestCodec;

impl tonic::codec::Codec for RequestCodec {
    type Encode = RateLimitResponse;
    type Decode = RateLimitRequest;
    type Encoder = RequestCodec;
    type Decoder = RequestCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RequestCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestCodec
    }
}

impl tonic::codec::Encoder for RequestCodec {
    type Item = RateLimitResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: RateLimitResponse,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        // The buffer grows as needed, so encoding cannot run out of room.
        prost::Message::encode(&item, buf).map_err(|e| Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for RequestCodec {
    type Item = RateLimitRequest;
    type Error = Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<RateLimitRequest>, Status> {
        <RateLimitRequest as prost::Message>::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed RateLimitRequest: {e}")))
    }
}

fn proto_unit(unit: Option<Unit>) -> i32 {
    let unit = match unit {
        None => ProtoUnit::Unknown,
        Some(Unit::Second) => ProtoUnit::Second,
        Some(Unit::Minute) => ProtoUnit::Minute,
        Some(Unit::Hour) => ProtoUnit::Hour,
        Some(Unit::Day) => ProtoUnit::Day,
        Some(Unit::Week) => ProtoUnit::Week,
        Some(Unit::Month) => ProtoUnit::Month,
        Some(Unit::Year) => ProtoUnit::Year,
    };
    unit as i32
}

/// The unit of a descriptor's `limit` override. The field is Envoy's
/// `envoy.type.v3.RateLimitUnit` (1 second .. 6 year); 7 is read as a week,
/// as envoyproxy/ratelimit reads the number in its response enum, where 7 is
/// `WEEK`. `UNKNOWN` (0) and anything else is not a unit.
fn override_unit(unit: i32) -> Option<Unit> {
    match ProtoUnit::try_from(unit).ok()? {
        ProtoUnit::Unknown => None,
        ProtoUnit::Second => Some(Unit::Second),
        ProtoUnit::Minute => Some(Unit::Minute),
        ProtoUnit::Hour => Some(Unit::Hour),
        ProtoUnit::Day => Some(Unit::Day),
        ProtoUnit::Week => Some(Unit::Week),
        ProtoUnit::Month => Some(Unit::Month),
        ProtoUnit::Year => Some(Unit::Year),
    }
}

/// The limit for the `index`th request descriptor and its limiter key:
/// `None` when nothing applies.
///
/// # Errors
/// `INVALID_ARGUMENT` for a `limit` override whose unit is not a unit.
fn find<'a>(
    domain: Option<&'a Domain>,
    index: usize,
    descriptor: &RateLimitDescriptor,
) -> Result<Option<(Matched<'a>, Vec<u8>)>, Status> {
    // envoyproxy/ratelimit: an unknown domain is no limit, override or not.
    let Some(domain) = domain else {
        return Ok(None);
    };
    let entries: Vec<(&str, &str)> = descriptor
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let Some(limit) = descriptor.limit else {
        return Ok(domain.find(&entries));
    };
    let unit = override_unit(limit.unit).ok_or_else(|| {
        Status::invalid_argument(format!(
            "descriptors[{index}].limit.unit {} is not a rate limit unit \
             (SECOND=1, MINUTE=2, HOUR=3, DAY=4, MONTH=5, YEAR=6, WEEK=7)",
            limit.unit
        ))
    })?;
    domain
        .find_override(&entries, unit, limit.requests_per_unit)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("descriptors[{index}].limit: {e}")))
}

fn proto_duration(d: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A request Envoy's service refuses before matching anything.
fn check_request(request: &RateLimitRequest) -> Result<(), Status> {
    if request.domain.is_empty() {
        return Err(Status::invalid_argument(
            "rate limit domain must not be empty",
        ));
    }
    if request.descriptors.is_empty() {
        return Err(Status::invalid_argument(
            "rate limit descriptor list must not be empty",
        ));
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(Status::invalid_argument(format!(
            "{} descriptors, above the maximum of {MAX_DESCRIPTORS}",
            request.descriptors.len()
        )));
    }
    Ok(())
}

/// What envoyproxy/ratelimit's semantics make of one descriptor, before any
/// store call.
// Plans live for one request, one per descriptor: the size of a `Pass`
// costs less than a box per `Apply` would.
#[allow(clippy::large_enum_variant)]
enum Plan<'a> {
    /// Nothing limits it: no match, or a limit another matched limit
    /// `replaces`.
    Pass,
    /// A limit to apply: its rule and the limiter key.
    Apply(Matched<'a>, Vec<u8>),
}

/// Matches every descriptor (`replaces` looks across all of them) and
/// drops the limits another one replaces.
fn plan<'a>(
    domain: Option<&'a Domain>,
    request: &RateLimitRequest,
) -> Result<Vec<Plan<'a>>, Status> {
    let matched = request
        .descriptors
        .iter()
        .enumerate()
        .map(|(index, descriptor)| find(domain, index, descriptor))
        .collect::<Result<Vec<_>, Status>>()?;
    let replaced: HashSet<String> = matched
        .iter()
        .flatten()
        .flat_map(|(m, _)| m.rule.replaces.iter().cloned())
        .collect();
    Ok(matched
        .into_iter()
        .map(|found| match found {
            // An `unlimited` limit stays unlimited even when another one
            // replaces its name (envoyproxy/ratelimit sets it aside first).
            Some((m, key))
                if m.rule.applied == Applied::Unlimited
                    || !m
                        .rule
                        .name
                        .as_deref()
                        .is_some_and(|name| replaced.contains(name)) =>
            {
                Plan::Apply(m, key)
            }
            _ => Plan::Pass,
        })
        .collect())
}

/// The cost and mode of one descriptor: its own `hits_addend` wins, 0
/// included (a peek); otherwise the request's, where 0 means 1 — except on
/// a descriptor charged after the fact (`settle`), where 0 is a peek too:
/// its request-path call asks whether anything remains, and only the
/// stream-done call brings hits.
fn hits(request: &RateLimitRequest, descriptor: &RateLimitDescriptor, settle: bool) -> (u64, Mode) {
    match descriptor.hits_addend.as_ref().map(|h| h.value) {
        Some(0) => (1, Mode::Peek),
        Some(n) => (n, Mode::Consume),
        None if settle && request.hits_addend == 0 => (1, Mode::Peek),
        None => (u64::from(request.hits_addend.max(1)), Mode::Consume),
    }
}

/// The status of a limit, from what it reports and whether it is over.
fn limit_status(
    rule: &CompiledRule,
    over: bool,
    requests_per_unit: u32,
    unit: Option<Unit>,
    remaining: u64,
    reset_after: Duration,
) -> DescriptorStatus {
    DescriptorStatus {
        code: if over { Code::OverLimit } else { Code::Ok } as i32,
        current_limit: Some(RateLimit {
            name: rule.name.clone().unwrap_or_default(),
            requests_per_unit,
            unit: proto_unit(unit),
        }),
        limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(proto_duration(reset_after)),
        ..DescriptorStatus::default()
    }
}

/// `RateLimit-Policy` and `RateLimit` for the limits that were decided.
fn rate_limit_headers(decided: &[PolicyDecision<'_>]) -> Vec<HeaderValue> {
    if decided.is_empty() {
        return Vec::new();
    }
    let header = |key: &str, value: String| HeaderValue {
        key: key.to_owned(),
        value,
        ..HeaderValue::default()
    };
    vec![
        header(
            "RateLimit-Policy",
            answer::policy_field(decided.iter().map(|d| (d.name, d.policy))),
        ),
        header("RateLimit", Answer::new(decided).ratelimit_field()),
    ]
}

/// envoyproxy/ratelimit's `LIMIT_RESPONSE_HEADERS_ENABLED` headers: the
/// limit, what remains and the seconds until reset of one status: the
/// last one that is over the limit, or else the first with the least
/// remaining among those with a `current_limit`. `None` when no status has
/// a limit.
fn limit_headers(
    settings: &ResponseHeaderSettings,
    statuses: &[DescriptorStatus],
) -> Option<[HeaderValue; 3]> {
    let mut chosen: Option<&DescriptorStatus> = None;
    let mut over = false;
    for status in statuses.iter().filter(|s| s.current_limit.is_some()) {
        if status.code == Code::OverLimit as i32 {
            chosen = Some(status);
            over = true;
        } else if !over && chosen.is_none_or(|c| status.limit_remaining < c.limit_remaining) {
            chosen = Some(status);
        }
    }
    let status = chosen?;
    let limit = status.current_limit.as_ref()?;
    let reset = status.duration_until_reset.as_ref().map_or(0, |d| {
        // Whole seconds, rounded up: a client waiting this long finds the
        // window reset.
        d.seconds.max(0) + i64::from(d.nanos > 0)
    });
    let header = |key: &str, value: String| HeaderValue {
        key: key.to_owned(),
        value,
        ..HeaderValue::default()
    };
    Some([
        header(&settings.limit, limit.requests_per_unit.to_string()),
        header(&settings.remaining, status.limit_remaining.to_string()),
        header(&settings.reset, reset.to_string()),
    ])
}

/// envoyproxy/ratelimit's statistics of one decision of `hits` hits (0
/// for a peek) against a limit of `limit` that left `remaining`; `charged`
/// whether the hits were taken from `remaining` (not when they were only
/// checked). A denied decision charged nothing (tollgate's rule), so all
/// its hits are over the limit; an allowed one counts the hits that took
/// the count above `near_ratio` of the limit as near it, as
/// envoyproxy/ratelimit's base limiter does.
fn envoy_hits(
    hits: u64,
    allowed: bool,
    shadow: bool,
    limit: u64,
    remaining: u64,
    charged: bool,
    near_ratio: f64,
) -> EnvoyHits {
    let mut out = EnvoyHits {
        total_hits: hits,
        ..EnvoyHits::default()
    };
    if !allowed {
        out.over_limit = hits;
        if shadow {
            out.shadow_mode = hits;
        }
        return out;
    }
    out.within_limit = hits;
    let used_after = limit
        .saturating_sub(remaining)
        .saturating_add(if charged { 0 } else { hits });
    let used_before = used_after.saturating_sub(hits);
    // As envoyproxy/ratelimit computes it, in 32-bit floating point:
    // floor(limit * ratio), so the threshold is the same to the unit.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let near = ((limit as f32) * (near_ratio as f32)).floor() as u64;
    if used_after > near {
        out.near_limit = used_after - near.max(used_before);
    }
    out
}

/// envoyproxy/ratelimit's overall code: `OVER_LIMIT` when a descriptor
/// that is not a quota descriptor is over its limit, or when every quota
/// descriptor is (quota mode). A shadowed descriptor over its limit reports
/// `OK`, so it counts as passed.
#[derive(Debug, Default)]
struct Overall {
    failed_rate_limits: usize,
    failed_quotas: usize,
    quotas: usize,
}

impl Overall {
    /// Counts one descriptor's status: over its limit (as reported) or not,
    /// and whether it is a quota descriptor.
    fn add(&mut self, over: bool, quota: bool) {
        match (over, quota) {
            (true, true) => self.failed_quotas += 1,
            (true, false) => self.failed_rate_limits += 1,
            (false, _) => {}
        }
        if quota {
            self.quotas += 1;
        }
    }

    fn over(&self) -> bool {
        self.failed_rate_limits > 0 || (self.quotas > 0 && self.quotas == self.failed_quotas)
    }
}

/// The configured `metadata` of the descriptors that passed, in request
/// order: envoyproxy/ratelimit's passed descriptors are those whose status
/// is not `OVER_LIMIT`, less the `unlimited` ones; only a configured limit
/// has metadata (see [`crate::envoy::metadata`]).
fn passed_metadata<'a>(
    plans: &'a [Plan<'_>],
    statuses: &'a [DescriptorStatus],
) -> impl Iterator<Item = &'a Metadata> {
    plans
        .iter()
        .zip(statuses)
        .filter_map(|(plan, status)| match plan {
            Plan::Apply(m, _)
                if m.rule.applied != Applied::Unlimited
                    && status.code != Code::OverLimit as i32 =>
            {
                m.metadata
            }
            _ => None,
        })
}

/// Whether a descriptor is a quota descriptor: envoyproxy/ratelimit drops an
/// unlimited limit before it counts them, so an unlimited one is (a quota
/// descriptor that passed) only under the global switch, as is one that
/// matched nothing (`m` `None`).
fn is_quota(global: bool, m: Option<&Matched<'_>>) -> bool {
    global || m.is_some_and(|m| m.quota && m.rule.applied != Applied::Unlimited)
}

/// Whether the request would be answered `OVER_LIMIT` now, from peeks
/// (nothing is charged or counted): `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`
/// charges a request only when it would not. Unlike envoyproxy/ratelimit,
/// which stops charging when any limit is over, a shadowed or quota limit
/// over its limit stops nothing while the request is answered `OK` (or
/// under the global shadow mode): the request is then admitted, and
/// admitting it uncharged would let it through again and again. A store
/// failure is left to the decisions that follow, which apply the failure
/// mode.
async fn would_be_over(loaded: &Loaded, request: &RateLimitRequest, plans: &[Plan<'_>]) -> bool {
    let envoy = &loaded.config.envoy;
    if envoy.shadow_mode {
        return false;
    }
    let mut overall = Overall::default();
    for (descriptor, plan) in request.descriptors.iter().zip(plans) {
        let Plan::Apply(m, key) = plan else {
            overall.add(false, is_quota(envoy.quota_mode, None));
            continue;
        };
        let denied = match &m.rule.applied {
            Applied::Unlimited => false,
            Applied::DenyAll { .. } => true,
            Applied::Policy { name, policy, .. } => {
                let (cost, mode) = hits(request, descriptor, m.settle);
                let refs = [PolicyRef { name, policy }];
                // Hits charged after the fact are never over: they are
                // charged whatever remains.
                !(m.settle && mode == Mode::Consume)
                    && matches!(
                        loaded.limiter.apply(&refs, key, cost, Mode::Peek).await,
                        Ok(d) if d.decisions.first().is_some_and(|d| !d.allowed)
                    )
            }
        };
        overall.add(denied && !m.shadow, is_quota(envoy.quota_mode, Some(m)));
    }
    overall.over()
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.into_inner()).await.map(Response::new)
    }
}

impl RateLimitGrpc {
    /// `ShouldRateLimit`: what both the gRPC method and `POST /json` answer.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a request envoyproxy/ratelimit refuses (empty
    /// domain or descriptors, too many, an invalid override unit);
    /// `UNKNOWN` while no Envoy configuration is loaded (envoyproxy/ratelimit
    /// files refused at start, until a reload loads them).
    pub async fn decide(&self, request: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        check_request(&request)?;
        let loaded = self.app.current();
        if loaded.config.envoy_unloaded.is_some() {
            // envoyproxy/ratelimit with no configuration loaded.
            return Err(Status::unknown("no rate limit configuration loaded"));
        }
        let envoy = &loaded.config.envoy;
        let metrics = self.app.metrics();
        let plans = plan(loaded.config.domains.get(&request.domain), &request)?;
        let charge = !envoy.stop_cache_key_increment_when_overlimit
            || !would_be_over(&loaded, &request, &plans).await;
        let mut statuses = Vec::with_capacity(plans.len());
        let mut decided = Vec::new();
        // envoyproxy/ratelimit's quota mode: descriptors over the limit in
        // quota mode make the request over the limit only when all of its
        // quota descriptors are.
        let mut overall = Overall::default();
        for (descriptor, plan) in request.descriptors.iter().zip(&plans) {
            let (status, quota) = match plan {
                Plan::Pass => (
                    DescriptorStatus {
                        code: Code::Ok as i32,
                        ..DescriptorStatus::default()
                    },
                    is_quota(envoy.quota_mode, None),
                ),
                Plan::Apply(m, key) => {
                    let status = self
                        .decide_descriptor(
                            &loaded,
                            &request,
                            descriptor,
                            m,
                            key,
                            charge,
                            &mut decided,
                        )
                        .await?;
                    (status, is_quota(envoy.quota_mode, Some(m)))
                }
            };
            overall.add(status.code == Code::OverLimit as i32, quota);
            statuses.push(status);
        }
        let mut over = overall.over();
        if over && envoy.shadow_mode {
            over = false;
            metrics.envoy_global_shadow();
        }
        let mut headers = rate_limit_headers(&decided);
        let settings = &envoy.response_headers;
        if settings.enabled {
            headers.extend(limit_headers(settings, &statuses).into_iter().flatten());
        }
        let dynamic_metadata = envoy
            .response_dynamic_metadata
            .then(|| metadata::response(&request, passed_metadata(&plans, &statuses)));
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add: headers,
            dynamic_metadata,
            ..RateLimitResponse::default()
        })
    }

    /// Decides one matched descriptor (charging it only if `charge`),
    /// counts its statistics, and returns its status; the decision joins
    /// `decided` for the headers.
    #[allow(clippy::too_many_arguments)]
    async fn decide_descriptor<'a>(
        &self,
        loaded: &'a Loaded,
        request: &RateLimitRequest,
        descriptor: &RateLimitDescriptor,
        m: &'a Matched<'_>,
        key: &[u8],
        charge: bool,
        decided: &mut Vec<PolicyDecision<'a>>,
    ) -> Result<DescriptorStatus, Status> {
        let near_ratio = loaded.config.envoy.near_limit_ratio;
        let metrics = self.app.metrics();
        let (cost, mode) = hits(request, descriptor, m.settle);
        let counted = if mode == Mode::Peek { 0 } else { cost };
        match &m.rule.applied {
            Applied::Unlimited => Ok(DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: u32::MAX,
                ..DescriptorStatus::default()
            }),
            Applied::DenyAll { unit } => {
                metrics.envoy_hits(
                    &m.stat_key,
                    envoy_hits(counted, false, m.shadow, 0, 0, false, near_ratio),
                );
                Ok(limit_status(
                    &m.rule,
                    !m.shadow,
                    0,
                    Some(*unit),
                    0,
                    unit.duration(),
                ))
            }
            Applied::Policy {
                name,
                policy,
                unit,
                requests_per_unit,
            } if m.settle && mode == Mode::Consume => {
                // Charged after the fact, whatever the request's other
                // descriptors say (`charge` included): the response is done.
                // A boxed trait object: two store calls nested in this
                // future make its type too deep for the compiler to prove
                // the service's future `Send` otherwise.
                let after: std::pin::Pin<
                    Box<dyn Future<Output = Result<_, tollgate::Error>> + Send + '_>,
                > = Box::pin(self.app.charge_after(loaded, name, key, cost));
                let after = after.await.map_err(status_of)?;
                let d = after.decision;
                metrics.envoy_hits(
                    &m.stat_key,
                    EnvoyHits {
                        total_hits: cost,
                        within_limit: after.charged,
                        over_limit: after.unpaid,
                        ..EnvoyHits::default()
                    },
                );
                decided.push(PolicyDecision::new(name, policy, d));
                // Never over: Envoy makes this call when the stream is done
                // and does not read the answer.
                Ok(limit_status(
                    &m.rule,
                    false,
                    *requests_per_unit,
                    *unit,
                    d.remaining,
                    d.reset_after,
                ))
            }
            Applied::Policy {
                name,
                policy,
                unit,
                requests_per_unit,
            } => {
                let mode = if charge { mode } else { Mode::Peek };
                let refs = [PolicyRef { name, policy }];
                let decision = self
                    .app
                    .decide_policies(loaded, &refs, key, cost, mode, m.shadow)
                    .await
                    .map_err(status_of)?;
                let Some(d) = decision.decisions.first().copied() else {
                    return Err(Status::internal("no decision"));
                };
                metrics.envoy_hits(
                    &m.stat_key,
                    envoy_hits(
                        counted,
                        d.allowed,
                        m.shadow,
                        d.limit,
                        d.remaining,
                        mode == Mode::Consume,
                        near_ratio,
                    ),
                );
                decided.push(PolicyDecision::new(name, policy, d));
                Ok(limit_status(
                    &m.rule,
                    !d.allowed && !m.shadow,
                    *requests_per_unit,
                    *unit,
                    d.remaining,
                    d.reset_after,
                ))
            }
        }
    }
}

/// The gRPC status of a limiter error: the store failing is
/// `UNAVAILABLE`; a store that cannot keep a reservation (a limit charged
/// after the fact on envoyproxy/ratelimit's counters, or on a store that
/// keeps none) `UNIMPLEMENTED`; anything else `INVALID_ARGUMENT`.
fn status_of(error: tollgate::Error) -> Status {
    match error {
        tollgate::Error::Store(e @ tollgate::StoreError::Unsupported(_)) => {
            Status::unimplemented(e.to_string())
        }
        tollgate::Error::Store(e) => Status::unavailable(e.to_string()),
        other => Status::invalid_argument(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, limit: Option<u32>, remaining: u32, reset_ms: u64) -> DescriptorStatus {
        DescriptorStatus {
            code: code as i32,
            current_limit: limit.map(|requests_per_unit| RateLimit {
                name: String::new(),
                requests_per_unit,
                unit: ProtoUnit::Minute as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(proto_duration(Duration::from_millis(reset_ms))),
            ..DescriptorStatus::default()
        }
    }

    fn values(statuses: &[DescriptorStatus]) -> Option<[String; 3]> {
        let settings = ResponseHeaderSettings::default();
        limit_headers(&settings, statuses).map(|h| h.map(|h| h.value))
    }

    #[test]
    fn limit_headers_pick_envoyproxys_descriptor() {
        // The least remaining, first among equals; no limit is never picked.
        let statuses = [
            status(Code::Ok, None, u32::MAX, 0),
            status(Code::Ok, Some(10), 4, 1_000),
            status(Code::Ok, Some(20), 4, 2_000),
            status(Code::Ok, Some(30), 7, 3_000),
        ];
        assert_eq!(
            values(&statuses),
            Some(["10".into(), "4".into(), "1".into()])
        );
        // Over the limit wins over any remaining count; the last one over.
        let statuses = [
            status(Code::OverLimit, Some(5), 0, 500),
            status(Code::Ok, Some(10), 0, 1_000),
            status(Code::OverLimit, Some(6), 0, 59_001),
        ];
        assert_eq!(
            values(&statuses),
            Some(["6".into(), "0".into(), "60".into()])
        );
        assert_eq!(values(&[status(Code::Ok, None, u32::MAX, 0)]), None);
        assert_eq!(values(&[]), None);
    }
}
