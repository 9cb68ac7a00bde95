//! The HTTP JSON API, `/metrics`, `/healthz` and `/readyz`; and
//! envoyproxy/ratelimit's `POST /json`, `GET /healthcheck` and
//! `GET /rlconfig`; and the dashboard's page ([`crate::dashboard`]).
//!
//! Every body is read through a size limit before it is parsed, and every
//! error is an RFC 9457 `application/problem+json` document with its own
//! status, so nothing a client sends can crash the server or make it
//! allocate beyond the limit.
//!
//! A request's `key` is charged in the HTTP API's own key space
//! ([`KeySpace::HttpJson`]): no key a client sends here names a counter of
//! an Envoy descriptor or of the middleware (docs/SERVER.md, "Key spaces").

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use tollgate::answer::{self, Answer, PolicyDecision, ceil_millis};
use tollgate::keyspace::KeySpace;
use tollgate::reservation::{DEFAULT_DEADLINE, MAX_AMOUNT, MAX_DEADLINE};
use tollgate::{Decision, Error, Mode, MultiDecision, Policy, ReservationId, StoreError};

use crate::app::{App, Loaded};
use crate::overrides;

/// The most policies one multi-policy check may name.
pub const MAX_POLICIES_PER_CHECK: usize = 16;

/// The router of the HTTP API over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/check", post(check))
        .route("/v1/peek", post(peek))
        .route("/v1/reserve", post(reserve))
        .route("/v1/settle", post(settle))
        .route("/v1/cancel", post(cancel))
        .route("/v1/reset", post(reset))
        .route("/v1/policies", get(policies))
        .route("/v1/overrides", get(overrides::list))
        .route(
            "/v1/overrides/{*target}",
            put(overrides::put)
                .get(overrides::get_one)
                .delete(overrides::delete),
        )
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(crate::stats::stats))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/json", post(envoy_json))
        .route("/healthcheck", get(healthcheck))
        .route("/rlconfig", get(rlconfig))
        .merge(crate::dashboard::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(app)
}

/// The router of the Prometheus listener (`server.metrics`): the
/// `/metrics` text at `path`, and `404` everywhere else.
pub fn metrics_router(app: Arc<App>, path: &str) -> Router {
    Router::new()
        .route(path, get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(app)
}

/// An RFC 9457 problem: the status and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A human-readable explanation of this occurrence.
    pub detail: String,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            detail: detail.into(),
        }
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    pub(crate) fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, detail)
    }

    pub(crate) fn unavailable(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // Only the admin endpoints answer 401, and they take a bearer token.
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The body of `/v1/check` and `/v1/peek`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// One policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// Several policies, all-or-nothing.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// Who is charged.
    pub key: String,
    /// Units to spend; default 1.
    #[serde(default)]
    pub cost: Option<serde_json::Number>,
}

/// A check request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCheck {
    /// The policies, at least one, no duplicates.
    pub policies: Vec<String>,
    /// Whether the request named one `policy` (the response is flat) or a
    /// `policies` list (the response lists each).
    pub single: bool,
    /// The key.
    pub key: String,
    /// The cost, 1 to u32::MAX.
    pub cost: u64,
}

/// The body of `/v1/reset`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The policy.
    pub policy: String,
    /// The key whose state is forgotten.
    pub key: String,
}

/// Decodes and validates a check request body: what the HTTP API does
/// before anything touches the store (also the JSON fuzz target's entry).
///
/// # Errors
/// A `400` [`Problem`] naming what is wrong.
pub fn decode_check(body: &[u8], max_key_bytes: usize) -> Result<ValidCheck, Problem> {
    let request: CheckRequest = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("invalid request body: {e}")))?;
    let (policies, single) = named_policies(request.policy, request.policies)?;
    check_key(request.key.as_bytes(), max_key_bytes)?;
    let cost = match request.cost {
        None => 1,
        Some(n) => whole("cost", &n, 1, u64::from(u32::MAX))?,
    };
    Ok(ValidCheck {
        policies,
        single,
        key: request.key,
        cost,
    })
}

/// The policies a request names: one `policy` (`single`) or a `policies`
/// list, bounded, without duplicates.
fn named_policies(
    policy: Option<String>,
    list: Option<Vec<String>>,
) -> Result<(Vec<String>, bool), Problem> {
    let (policies, single) = match (policy, list) {
        (Some(p), None) => (vec![p], true),
        (None, Some(list)) => (list, false),
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "give either `policy` or `policies`, not both",
            ));
        }
        (None, None) => {
            return Err(Problem::bad_request(
                "missing `policy` (or `policies` for a multi-policy check)",
            ));
        }
    };
    if policies.is_empty() {
        return Err(Problem::bad_request("`policies` must not be empty"));
    }
    if policies.len() > MAX_POLICIES_PER_CHECK {
        return Err(Problem::bad_request(format!(
            "`policies` names {} policies, above the maximum of {MAX_POLICIES_PER_CHECK}",
            policies.len()
        )));
    }
    // The library's rule, checked here too so that a list naming a policy
    // twice is a 400 before an unknown name in it is a 404.
    if let Some(name) = tollgate::limiter::duplicate_policy(policies.iter().map(String::as_str)) {
        let error = Error::DuplicatePolicy(name.to_owned());
        return Err(Problem::bad_request(error.to_string()));
    }
    Ok((policies, single))
}

/// The JSON number `n` of the field `name` as a whole number from `min` to
/// `max`; otherwise a `400` saying which bound it misses.
fn whole(name: &str, n: &serde_json::Number, min: u64, max: u64) -> Result<u64, Problem> {
    match (n.as_u64(), n.as_i64()) {
        (Some(v), _) if v < min => Err(Problem::bad_request(format!(
            "`{name}` must be at least {min}"
        ))),
        (Some(v), _) if v > max => Err(Problem::bad_request(format!(
            "`{name}` {v} is above the maximum of {max}"
        ))),
        (Some(v), _) => Ok(v),
        (None, Some(_)) => Err(Problem::bad_request(format!(
            "`{name}` must be at least {min}, not {n}"
        ))),
        (None, None) => Err(Problem::bad_request(format!(
            "`{name}` must be a whole number from {min} to {max}, not {n}"
        ))),
    }
}

/// The body of `/v1/reserve`: `/v1/check`'s, with `estimate` in place of
/// `cost`, and a deadline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// One policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// Several policies, all-or-nothing.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// Who is charged.
    pub key: String,
    /// Units reserved: 1 to [`MAX_AMOUNT`].
    pub estimate: serde_json::Number,
    /// How long the reservation stays open, in milliseconds: 1 to
    /// [`MAX_DEADLINE`]'s; default [`DEFAULT_DEADLINE`]'s.
    #[serde(default)]
    pub deadline_ms: Option<serde_json::Number>,
}

/// A reserve request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidReserve {
    /// The policies, at least one, no duplicates.
    pub policies: Vec<String>,
    /// Whether the request named one `policy` (the response is flat).
    pub single: bool,
    /// The key.
    pub key: String,
    /// The estimate, 1 to [`MAX_AMOUNT`].
    pub estimate: u64,
    /// How long the reservation stays open.
    pub deadline: Duration,
}

/// Decodes and validates a `/v1/reserve` body.
///
/// # Errors
/// A `400` [`Problem`] naming what is wrong.
pub fn decode_reserve(body: &[u8], max_key_bytes: usize) -> Result<ValidReserve, Problem> {
    let request: ReserveRequest = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("invalid request body: {e}")))?;
    let (policies, single) = named_policies(request.policy, request.policies)?;
    check_key(request.key.as_bytes(), max_key_bytes)?;
    let estimate = whole("estimate", &request.estimate, 1, MAX_AMOUNT)?;
    let max_ms = u64::try_from(MAX_DEADLINE.as_millis()).unwrap_or(u64::MAX);
    let deadline = match &request.deadline_ms {
        None => DEFAULT_DEADLINE,
        Some(n) => Duration::from_millis(whole("deadline_ms", n, 1, max_ms)?),
    };
    Ok(ValidReserve {
        policies,
        single,
        key: request.key,
        estimate,
        deadline,
    })
}

/// The body of `/v1/settle`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    /// The reservation, as `/v1/reserve` answered it.
    pub reservation: String,
    /// Units actually spent: 0 to [`MAX_AMOUNT`].
    pub actual: serde_json::Number,
}

/// The body of `/v1/cancel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// The reservation, as `/v1/reserve` answered it.
    pub reservation: String,
}

/// Decodes and validates a `/v1/settle` body (`cancel`: a `/v1/cancel`
/// body, settled at 0): the reservation and the actual cost.
///
/// # Errors
/// A `400` [`Problem`] naming what is wrong.
pub fn decode_settle(body: &[u8], cancel: bool) -> Result<(ReservationId, u64), Problem> {
    let invalid = |e: serde_json::Error| Problem::bad_request(format!("invalid request body: {e}"));
    let (text, actual) = if cancel {
        let request: CancelRequest = serde_json::from_slice(body).map_err(invalid)?;
        (request.reservation, 0)
    } else {
        let request: SettleRequest = serde_json::from_slice(body).map_err(invalid)?;
        let actual = whole("actual", &request.actual, 0, MAX_AMOUNT)?;
        (request.reservation, actual)
    };
    let id = text.parse::<ReservationId>().map_err(|_| {
        Problem::bad_request(
            "`reservation` is not a reservation id (the opaque text `/v1/reserve` answered)",
        )
    })?;
    Ok((id, actual))
}

/// The longest HTTP `key` (a check's, a reservation's, a reset's, an
/// override's, whether set through the API or declared in the file):
/// `max_key_bytes`, or what the limiter takes once the HTTP API's tag is
/// in front of it ([`MAX_LIMITER_KEY`](crate::app::MAX_LIMITER_KEY)) if
/// that is less.
pub(crate) fn key_bound(max_key_bytes: usize) -> usize {
    max_key_bytes.min(crate::app::MAX_LIMITER_KEY - KeySpace::HttpJson.tag().len())
}

/// Refuses a `key` longer than `max` (`server.max_key_bytes`) or than
/// the limiter takes once the HTTP API's tag is in front of it
/// ([`MAX_LIMITER_KEY`](crate::app::MAX_LIMITER_KEY)), naming the bound
/// that applies: `400`.
pub(crate) fn check_key(key: &[u8], max: usize) -> Result<(), Problem> {
    let max = key_bound(max);
    if key.len() > max {
        return Err(Problem::bad_request(format!(
            "`key` is {} bytes long, above the maximum of {max}",
            key.len()
        )));
    }
    Ok(())
}

/// Reads a body of at most `max` bytes. The server bounds the time it
/// takes (`server.body_timeout`, [`crate::conn::TimedBody`]): past it, `408`
/// (and the server closes the connection).
pub(crate) async fn read_body(body: Body, max: usize) -> Result<bytes::Bytes, Problem> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max} bytes"),
        )),
        Err(e) if crate::conn::BodyTimeout::find(&*e).is_some() => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            crate::conn::BodyTimeout::find(&*e)
                .map(ToString::to_string)
                .unwrap_or_default(),
        )),
        Err(e) => Err(Problem::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Response header present (`true`) when a decision was made without the
/// shared store (failure mode `open` or `local`).
pub const TOLLGATE_DEGRADED: &str = answer::TOLLGATE_DEGRADED;

/// Response header: for an allowed `leaky_bucket` request, how long to wait
/// before proceeding, in whole milliseconds rounded up.
pub const TOLLGATE_DELAY_MS: &str = "tollgate-delay-ms";

/// One policy's decision as JSON.
#[derive(Debug, Serialize)]
struct DecisionBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_after_ms: u64,
    retry_after_ms: Option<u64>,
    /// Present, `true`, when the decision was made under an override of
    /// the policy for this key.
    #[serde(rename = "override", skip_serializing_if = "std::ops::Not::not")]
    overridden: bool,
}

impl<'a> DecisionBody<'a> {
    fn new(policy: Option<&'a str>, d: &Decision, overridden: bool) -> Self {
        DecisionBody {
            overridden,
            policy,
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_after_ms: ceil_millis(d.reset_after),
            retry_after_ms: d.retry_after.map(ceil_millis),
        }
    }
}

async fn check(State(app): State<Arc<App>>, body: Body) -> Response {
    answer_check(app, body, Mode::Consume).await
}

async fn peek(State(app): State<Arc<App>>, body: Body) -> Response {
    answer_check(app, body, Mode::Peek).await
}

async fn answer_check(app: Arc<App>, body: Body, mode: Mode) -> Response {
    match try_decide(&app, body, mode).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn try_decide(app: &App, body: Body, mode: Mode) -> Result<Response, Problem> {
    let loaded = app.current();
    let server = &loaded.config.server;
    let body = read_body(body, server.max_body_bytes).await?;
    let request = decode_check(&body, server.max_key_bytes)?;
    let policies = configured(&loaded, &request.policies)?;
    let names: Vec<&str> = policies.iter().map(|(n, _)| *n).collect();
    let key = KeySpace::HttpJson.key(request.key.as_bytes());
    let result = app
        .decide(&loaded, &names, &key, request.cost, mode, false)
        .await
        .map_err(limiter_problem)?;
    decision_response(&policies, &result, request.single, None)
}

/// The named policies of the `policies:` section, or `404` for the first
/// name that is not there. Only that section is addressable over HTTP;
/// inline Envoy policies belong to their descriptors.
fn configured<'a>(
    loaded: &'a Loaded,
    names: &'a [String],
) -> Result<Vec<(&'a str, &'a Policy)>, Problem> {
    names
        .iter()
        .map(|name| {
            let policy = loaded.config.policies.get(name).ok_or_else(|| {
                Problem::new(StatusCode::NOT_FOUND, format!("unknown policy `{name}`"))
            })?;
            Ok((name.as_str(), policy))
        })
        .collect()
}

/// The answer of a check (and of a reservation, whose `extra` field is
/// added to the body): `200` with the decision (flat for a `single`
/// policy, per policy otherwise) and the `RateLimit` header fields.
fn decision_response(
    policies: &[(&str, &Policy)],
    result: &MultiDecision,
    single: bool,
    extra: Option<(&str, serde_json::Value)>,
) -> Result<Response, Problem> {
    let internal =
        |e: serde_json::Error| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    // What every adapter needs from the decisions, in one place.
    let views: Vec<PolicyDecision<'_>> = policies
        .iter()
        .zip(&result.decisions)
        .map(|((name, policy), d)| PolicyDecision::new(name, policy, *d))
        .collect();
    let answer = Answer::new(&views);
    let mut body = if single {
        let d = result
            .decisions
            .first()
            .ok_or_else(|| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "no decision"))?;
        let overridden = result.overridden.first().copied().unwrap_or(false);
        serde_json::to_value(DecisionBody::new(None, d, overridden)).map_err(internal)?
    } else {
        serde_json::json!({
            "allowed": result.allowed,
            "retry_after_ms": answer.retry_after().map(ceil_millis),
            "policies": policies
                .iter()
                .zip(&result.decisions)
                .enumerate()
                .map(|(i, ((name, _), d))| {
                    let overridden = result.overridden.get(i).copied().unwrap_or(false);
                    DecisionBody::new(Some(name), d, overridden)
                })
                .collect::<Vec<_>>(),
        })
    };
    if let (Some((name, value)), Some(object)) = (extra, body.as_object_mut()) {
        object.insert(name.to_owned(), value);
    }
    let body = serde_json::to_string(&body).map_err(internal)?;
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in [
        (
            answer::RATELIMIT_POLICY,
            answer::policy_field(views.iter().map(|d| (d.name, d.policy))),
        ),
        (answer::RATELIMIT, answer.ratelimit_field()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    // The JSON body keeps exactly the documented fields; what only some
    // callers need travels in headers: a decision made without the shared
    // store, and a leaky bucket's wait before proceeding.
    if answer.degraded() {
        headers.insert(TOLLGATE_DEGRADED, HeaderValue::from_static("true"));
    }
    if !answer.delay().is_zero() {
        headers.insert(
            TOLLGATE_DELAY_MS,
            HeaderValue::from(ceil_millis(answer.delay())),
        );
    }
    Ok(response)
}

async fn reserve(State(app): State<Arc<App>>, body: Body) -> Response {
    try_reserve(&app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/reserve`: decided as `/v1/check` of the estimate, answered
/// as it, plus `reservation`: the opaque id to settle, `null` when denied
/// (or when every policy is unlimited by an override: nothing to settle).
async fn try_reserve(app: &App, body: Body) -> Result<Response, Problem> {
    let loaded = app.current();
    let server = &loaded.config.server;
    let body = read_body(body, server.max_body_bytes).await?;
    let request = decode_reserve(&body, server.max_key_bytes)?;
    let policies = configured(&loaded, &request.policies)?;
    let names: Vec<&str> = policies.iter().map(|(n, _)| *n).collect();
    let key = KeySpace::HttpJson.key(request.key.as_bytes());
    let reservation = app
        .reserve(&loaded, &names, &key, request.estimate, request.deadline)
        .await
        .map_err(limiter_problem)?;
    let id = reservation
        .id
        .as_ref()
        .map_or(serde_json::Value::Null, |id| id.to_string().into());
    decision_response(
        &policies,
        &reservation.decision,
        request.single,
        Some(("reservation", id)),
    )
}

async fn settle(State(app): State<Arc<App>>, body: Body) -> Response {
    try_settle(&app, body, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn cancel(State(app): State<Arc<App>>, body: Body) -> Response {
    try_settle(&app, body, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// What a settle did to one policy, as JSON.
#[derive(Debug, Serialize)]
struct SettledBody<'a> {
    policy: &'a str,
    returned: u64,
    charged: u64,
    unpaid: u64,
    limit: u64,
    remaining: u64,
    reset_after_ms: u64,
    retry_after_ms: Option<u64>,
}

/// `POST /v1/settle` (`cancel`: `POST /v1/cancel`, a settle at 0). A
/// reservation is looked for only when its id names the HTTP API's key
/// space and policies of the `policies:` section: an id naming anything
/// else was not made here, and touches nothing.
async fn try_settle(app: &App, body: Body, cancel: bool) -> Result<Response, Problem> {
    let loaded = app.current();
    let body = read_body(body, loaded.config.server.max_body_bytes).await?;
    let (id, actual) = decode_settle(&body, cancel)?;
    let unknown = || Problem::not_found("unknown or expired reservation");
    if !matches!(KeySpace::split(id.key()), Some((KeySpace::HttpJson, _))) {
        app.metrics().settle(crate::metrics::SettleResult::Unknown);
        return Err(unknown());
    }
    if let Some(name) = id
        .policies()
        .find(|name| !loaded.config.policies.contains_key(*name))
    {
        app.metrics().settle(crate::metrics::SettleResult::Unknown);
        return Err(Problem::not_found(format!(
            "unknown or expired reservation: it names policy `{name}`, not configured (a \
             reservation of a policy since removed settles at its estimate at its deadline)"
        )));
    }
    let answer = app
        .settle(&loaded, &id, actual)
        .await
        .map_err(limiter_problem)?
        .ok_or_else(unknown)?;
    if answer.replayed && answer.actual != actual {
        return Err(Problem::conflict(format!(
            "the reservation was already settled at an actual of {} (this {} asked {actual}): \
             nothing changed",
            answer.actual,
            if cancel { "cancel" } else { "settle" },
        )));
    }
    let policies: Vec<SettledBody<'_>> = id
        .policies()
        .zip(answer.settled.iter().zip(&answer.decisions))
        .map(|(policy, (settled, decision))| SettledBody {
            policy,
            returned: settled.returned,
            charged: settled.charged,
            unpaid: settled.unpaid,
            limit: decision.limit,
            remaining: decision.remaining,
            reset_after_ms: ceil_millis(decision.reset_after),
            retry_after_ms: decision.retry_after.map(ceil_millis),
        })
        .collect();
    let body = serde_json::json!({
        "estimate": answer.estimate,
        "actual": answer.actual,
        "replayed": answer.replayed,
        "policies": policies,
    });
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

fn limiter_problem(error: Error) -> Problem {
    match error {
        Error::UnknownPolicy(name) => {
            Problem::new(StatusCode::NOT_FOUND, format!("unknown policy `{name}`"))
        }
        // Only reservations ask what a store may not do.
        Error::Store(e @ StoreError::Unsupported(_)) => {
            Problem::new(StatusCode::NOT_IMPLEMENTED, format!("cannot reserve: {e}"))
        }
        Error::Store(e) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("rate limiter unavailable: {e}"),
        ),
        other => Problem::bad_request(other.to_string()),
    }
}

/// Compares in time independent of where the first difference is.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn reset(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match try_reset(&app, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Admits a request to an admin endpoint (`/v1/reset`, `/v1/overrides`),
/// or says why not: `403` when `server.admin_token` is not set (admin
/// endpoints are closed by default), `401` without `Authorization: Bearer
/// <admin_token>` (the scheme in any case, RFC 9110 §11.1), and for a
/// request with a body (`with_body`), `415` unless it is declared
/// `application/json`. The last rule keeps browsers out: a cross-origin
/// page can POST `text/plain` without a preflight, never
/// `application/json`; a request without a body is a `GET` (which a page
/// can send, but never with the token) or a `DELETE` (never without a
/// preflight).
pub(crate) fn admit_admin_request(
    admin_token: Option<&str>,
    headers: &HeaderMap,
    with_body: bool,
) -> Result<(), Problem> {
    let Some(token) = admin_token else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled: set `server.admin_token` in the configuration \
             (a reload is enough) and send `Authorization: Bearer <admin_token>`",
        ));
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    if !given.is_some_and(|g| same_token(g, token.as_bytes())) {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer <admin_token>`",
        ));
    }
    if !with_body {
        return Ok(());
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be sent as `Content-Type: application/json`",
        ));
    }
    Ok(())
}

/// The token of an `Authorization: Bearer <token>` value: the scheme is
/// case-insensitive and followed by one or more spaces (RFC 9110 §11.4).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

async fn try_reset(app: &App, headers: &HeaderMap, body: Body) -> Result<(), Problem> {
    let loaded = app.current();
    let server = &loaded.config.server;
    admit_admin_request(server.admin_token.as_deref(), headers, true)?;
    let body = read_body(body, server.max_body_bytes).await?;
    let request: ResetRequest = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("invalid request body: {e}")))?;
    check_key(request.key.as_bytes(), server.max_key_bytes)?;
    if !loaded.config.policies.contains_key(&request.policy) {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("unknown policy `{}`", request.policy),
        ));
    }
    loaded
        .limiter
        .reset(
            &request.policy,
            KeySpace::HttpJson.key(request.key.as_bytes()),
        )
        .await
        .map_err(limiter_problem)?;
    tracing::info!(policy = %request.policy, "key reset");
    Ok(())
}

async fn policies(State(app): State<Arc<App>>) -> Response {
    let loaded = app.current();
    let list: Vec<serde_json::Value> = loaded
        .config
        .policies
        .iter()
        .map(|(name, p)| {
            let mut fields = crate::stats::policy_fields(name, p);
            fields.insert("policy".to_owned(), p.to_string().into());
            serde_json::Value::Object(fields)
        })
        .collect();
    let body = serde_json::json!({ "policies": list }).to_string();
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(problem) = crate::stats::admit_reader(&app.current().config.server, &headers) {
        return problem.into_response();
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.render_metrics(),
    )
        .into_response()
}

async fn healthz() -> Response {
    ([(CONTENT_TYPE, "text/plain")], "ok\n").into_response()
}

/// `POST /json`: envoyproxy/ratelimit's JSON form of `ShouldRateLimit`
/// ([`crate::json`]), decided by the gRPC service's own code. `200` with
/// the response; `429` when the overall code is `OVER_LIMIT` (as
/// envoyproxy/ratelimit answers); `400` (problem+json) for a body that
/// does not read or a request the service refuses; `413` past
/// `server.max_body_bytes`.
async fn envoy_json(State(app): State<Arc<App>>, body: Body) -> Response {
    let max = app.current().config.server.max_body_bytes;
    let body = match read_body(body, max).await {
        Ok(body) => body,
        Err(problem) => return problem.into_response(),
    };
    let request = match crate::json::decode_request(&body) {
        Ok(request) => request,
        Err(detail) => {
            return Problem::bad_request(format!("invalid RateLimitRequest: {detail}"))
                .into_response();
        }
    };
    let response = match crate::grpc::RateLimitGrpc::new(Arc::clone(&app))
        .decide(request)
        .await
    {
        Ok(response) => response,
        Err(status) => return Problem::bad_request(status.message().to_owned()).into_response(),
    };
    let status = match response.overall_code {
        1 => StatusCode::OK,
        2 => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = crate::json::encode_response(&response).to_string();
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /healthcheck`, as envoyproxy/ratelimit answers it: `200 OK` when
/// healthy ([`App::healthy`]: the store answers, the breaker is closed,
/// and with `server.healthy_needs_domains` a domain is loaded); otherwise
/// `500` (its body says why, where envoyproxy/ratelimit's is empty).
async fn healthcheck(State(app): State<Arc<App>>) -> Response {
    match app.healthy().await {
        Ok(()) => ([(CONTENT_TYPE, "text/plain")], "OK").into_response(),
        Err(reason) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(CONTENT_TYPE, "text/plain")],
            format!("{reason}\n"),
        )
            .into_response(),
    }
}

/// `GET /rlconfig`: the Envoy domains in force as text, one line per limit
/// ([`crate::envoy::Domain::dump`]), domains sorted by name.
async fn rlconfig(State(app): State<Arc<App>>) -> Response {
    let loaded = app.current();
    let mut domains: Vec<_> = loaded.config.domains.values().collect();
    domains.sort_by(|a, b| a.name().cmp(b.name()));
    let text: String = domains.iter().map(|d| d.dump()).collect();
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.healthy().await {
        Ok(()) => ([(CONTENT_TYPE, "text/plain")], "ready\n").into_response(),
        Err(reason) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not reachable: {reason}"),
        )
        .into_response(),
    }
}

async fn not_found() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "no such endpoint").into_response()
}

/// A known path with another method: `405` as a problem, like every other
/// error (axum adds the `Allow` header naming the methods it has).
async fn method_not_allowed() -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint (the Allow header names those that are)",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_check_validates_every_field() {
        let ok = decode_check(br#"{"policy":"api","key":"k"}"#, 10).unwrap();
        assert_eq!(ok.cost, 1);
        assert!(ok.single);
        let ok =
            decode_check(br#"{"policies":["a","b"],"key":"k","cost":4294967295}"#, 10).unwrap();
        assert_eq!((ok.cost, ok.single), (4_294_967_295, false));
        for (body, expected) in [
            (r#"{"policy":"api","key":"k","cost":0}"#, "at least 1"),
            (r#"{"policy":"api","key":"k","cost":-1}"#, "at least 1"),
            (
                r#"{"policy":"api","key":"k","cost":4294967296}"#,
                "above the maximum",
            ),
            (r#"{"policy":"api","key":"k","cost":1.5}"#, "whole number"),
            (
                r#"{"policy":"api","key":"k","cost":1e400}"#,
                "invalid request body",
            ),
            (
                r#"{"policy":"api","key":"k","cost":"1"}"#,
                "invalid request body",
            ),
            (
                r#"{"policy":"api","key":"01234567890"}"#,
                "above the maximum of 10",
            ),
            (r#"{"key":"k"}"#, "missing `policy`"),
            (r#"{"policy":"a","policies":["a"],"key":"k"}"#, "not both"),
            (r#"{"policies":[],"key":"k"}"#, "must not be empty"),
            (r#"{"policies":["a","a"],"key":"k"}"#, "named twice"),
            (r#"{"policy":"a","key":"k","extra":1}"#, "unknown field"),
            (r#"{"policy":"a""#, "invalid request body"),
            (r#"{"policy":1,"key":"k"}"#, "invalid type"),
        ] {
            let problem = decode_check(body.as_bytes(), 10).expect_err(body);
            assert_eq!(problem.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(
                problem.detail.contains(expected),
                "{body}: {}",
                problem.detail
            );
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bEaReR   abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token(b"secret", b"secret"));
        assert!(!same_token(b"secreT", b"secret"));
        assert!(!same_token(b"secret1", b"secret"));
    }
}
