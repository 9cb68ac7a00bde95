//! Per-key overrides in the server: what an override says (the admin API's
//! body and the configuration's `overrides:` entries read the same way),
//! how it is checked against the policy it overrides, and the admin
//! endpoints `/v1/overrides`. The table and its rules are the library's
//! (`tollgate::overrides`); on Redis every instance follows the store's
//! copy, so an override set through one instance is in force on all.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tollgate::Policy;
use tollgate::keyspace::KeySpace;
use tollgate::overrides::{
    Override, OverrideLimit, OverrideStore, Overrides, Source, path_segment, path_segment_bytes,
};
use tollgate_redis::RedisStore;

use crate::app::App;
use crate::config::parse::DurationText;
use crate::http::{Problem, admit_admin_request, check_key, read_body};

/// How often an instance reads the shared overrides' version.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// The most overrides one `GET /v1/overrides` page lists.
pub const MAX_PAGE: usize = 1000;

/// What an override sets, before it is checked against its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// Other numbers: a limit, and optionally a period and a burst (the
    /// policy's period when absent; the burst as `Policy::new` defaults it).
    Numbers {
        /// Units per period.
        limit: u64,
        /// The period; the policy's when absent.
        period: Option<Duration>,
        /// The burst, for bucket algorithms.
        burst: Option<u64>,
    },
    /// Every check allowed, nothing charged.
    Unlimited,
    /// Every check denied, nothing charged.
    Blocked,
}

impl Spec {
    /// Reads the fields an override is written with: `limit` (with
    /// `period` and `burst`), or `unlimited: true`, or `blocked: true`.
    ///
    /// # Errors
    /// A message naming what is wrong: none or several of the three
    /// forms, `false` where only `true` means something, or `period`/
    /// `burst` without a `limit`.
    pub fn from_fields(
        limit: Option<u64>,
        period: Option<Duration>,
        burst: Option<u64>,
        unlimited: Option<bool>,
        blocked: Option<bool>,
    ) -> Result<Spec, String> {
        if unlimited == Some(false) || blocked == Some(false) {
            return Err(
                "`unlimited` and `blocked` can only be `true` (omit them otherwise)".into(),
            );
        }
        let forms = usize::from(limit.is_some())
            + usize::from(unlimited.is_some())
            + usize::from(blocked.is_some());
        if forms != 1 {
            return Err(
                "an override is one of: `limit` (with optional `period` and `burst`), \
                 `unlimited: true`, `blocked: true`"
                    .into(),
            );
        }
        match limit {
            Some(limit) => Ok(Spec::Numbers {
                limit,
                period,
                burst,
            }),
            None if period.is_some() || burst.is_some() => {
                Err("`period` and `burst` go with a `limit`".into())
            }
            None if unlimited.is_some() => Ok(Spec::Unlimited),
            None => Ok(Spec::Blocked),
        }
    }

    /// The override of `base` this spec sets: numbers keep `base`'s
    /// algorithm, and its period when none is given.
    ///
    /// # Errors
    /// The policy's own message when the numbers are not a valid policy
    /// (zero, too large, not exact).
    pub fn resolve(self, base: &Policy) -> Result<OverrideLimit, String> {
        match self {
            Spec::Numbers {
                limit,
                period,
                burst,
            } => OverrideLimit::numbers(base, limit, period, burst).map_err(|e| e.to_string()),
            Spec::Unlimited => Ok(OverrideLimit::Unlimited),
            Spec::Blocked => Ok(OverrideLimit::Blocked),
        }
    }
}

/// The body of `PUT /v1/overrides/{policy}/{key}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    limit: Option<u64>,
    period: Option<DurationText>,
    burst: Option<u64>,
    unlimited: Option<bool>,
    blocked: Option<bool>,
    expires_in: Option<DurationText>,
}

/// One override as the API shows it.
#[derive(Debug, Serialize)]
struct Shown {
    policy: String,
    /// The key as text (bytes that are not UTF-8 shown as U+FFFD).
    key: String,
    /// The key exactly, as the path segment that names it.
    key_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unlimited: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    blocked: bool,
    /// Milliseconds until it ends; absent if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_ms: Option<u64>,
    /// `api` (set at run time) or `file` (the configuration's).
    source: &'static str,
}

impl Shown {
    fn new(policy: &str, key: &[u8], value: &Override, source: Source, now_us: u64) -> Shown {
        let numbers = match value.limit {
            OverrideLimit::Policy(p) => Some(p),
            _ => None,
        };
        Shown {
            policy: policy.to_owned(),
            key: String::from_utf8_lossy(key).into_owned(),
            key_path: path_segment(key),
            limit: numbers.map(|p| p.limit()),
            period_ms: numbers.map(|p| p.period_us() / 1000),
            burst: numbers
                .filter(|p| p.algorithm().has_burst())
                .map(|p| p.burst()),
            unlimited: value.limit == OverrideLimit::Unlimited,
            blocked: value.limit == OverrideLimit::Blocked,
            expires_in_ms: value
                .expires_at_us
                .map(|at| at.saturating_sub(now_us).div_ceil(1000)),
            source: match source {
                Source::Runtime => "api",
                Source::File => "file",
            },
        }
    }
}

/// Query of `GET /v1/overrides`.
#[derive(Debug, Default)]
struct ListQuery {
    policy: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl ListQuery {
    /// Reads `policy`, `cursor` and `limit` (percent-encoded values);
    /// anything else is an error.
    fn parse(query: Option<&str>) -> Result<ListQuery, Problem> {
        let mut out = ListQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = String::from_utf8(percent_decode(value)?)
                .map_err(|_| Problem::bad_request(format!("`{name}` is not UTF-8")))?;
            match name {
                "policy" => out.policy = Some(value),
                "cursor" => out.cursor = Some(value),
                "limit" => {
                    out.limit = Some(value.parse().map_err(|_| {
                        Problem::bad_request(format!("limit `{value}` is not a number"))
                    })?);
                }
                other => {
                    return Err(Problem::bad_request(format!(
                        "unknown parameter `{other}` (expected policy, cursor, limit)"
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// Where run-time overrides live: the process's table, and on Redis the
/// store every instance follows.
#[derive(Debug)]
pub struct Shared {
    /// The table every limiter of the server consults (across reloads).
    pub table: Arc<Overrides>,
    /// The Redis store holding the fleet's copy, if the store is Redis.
    pub store: Option<RedisStore>,
}

impl Shared {
    /// The table, followed from `store` when there is one (the task ends
    /// with the table).
    pub fn new(store: Option<RedisStore>) -> Shared {
        let table = Arc::new(Overrides::new());
        if let Some(store) = &store {
            tokio::spawn(tollgate::overrides::follow(
                Arc::downgrade(&table),
                store.clone(),
                FOLLOW_EVERY,
            ));
        }
        Shared { table, store }
    }
}

/// The (policy, key) of `/v1/overrides/{policy}/{key}`, the key
/// percent-decoded to bytes (it may be any bytes).
fn target(path: &str) -> Result<(String, Vec<u8>), Problem> {
    let rest = path
        .strip_prefix("/v1/overrides/")
        .ok_or_else(|| Problem::not_found("expected /v1/overrides/{policy}/{key}"))?;
    let (policy, key) = rest
        .split_once('/')
        .ok_or_else(|| Problem::not_found("expected /v1/overrides/{policy}/{key}"))?;
    let policy = String::from_utf8(percent_decode(policy)?)
        .map_err(|_| Problem::bad_request("the policy name is not UTF-8"))?;
    Ok((policy, percent_decode(key)?))
}

/// Decodes `%XX` escapes ([`path_segment_bytes`]); anything else is taken
/// as it is.
fn percent_decode(text: &str) -> Result<Vec<u8>, Problem> {
    path_segment_bytes(text)
        .ok_or_else(|| Problem::bad_request("a `%` in the path is not followed by two hex digits"))
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let mut response = (status, serde_json::to_string(body).unwrap_or_default()).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn answer(result: Result<Response, Problem>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A write to the shared store that failed: `503`. One that timed out or
/// lost its connection may have been applied, and then reaches every
/// instance as any change does; sending it again is safe (a `PUT` sets, a
/// `DELETE` deletes).
fn write_failed(error: tollgate::StoreError) -> Problem {
    let maybe = if error.is_transient() {
        " (it may have been applied all the same: send it again to be sure)"
    } else {
        ""
    };
    Problem::unavailable(format!("the store is unavailable: {error}{maybe}"))
}

/// `PUT /v1/overrides/{policy}/{key}`.
pub(crate) async fn put(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(try_put(&app, uri.path(), &headers, body).await)
}

async fn try_put(
    app: &App,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let loaded = app.current();
    let server = &loaded.config.server;
    admit_admin_request(server.admin_token.as_deref(), headers, true)?;
    let (policy, key) = target(path)?;
    let base = loaded
        .config
        .policies
        .get(&policy)
        .ok_or_else(|| Problem::not_found(format!("unknown policy `{policy}`")))?;
    check_key(&key, server.max_key_bytes)?;
    let body = read_body(body, server.max_body_bytes).await?;
    let body: PutBody = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("invalid request body: {e}")))?;
    let spec = Spec::from_fields(
        body.limit,
        body.period.map(|d| d.0),
        body.burst,
        body.unlimited,
        body.blocked,
    )
    .map_err(Problem::bad_request)?;
    let limit = spec.resolve(base).map_err(Problem::bad_request)?;
    let expires_in = body.expires_in.map(|d| d.0);
    if expires_in.is_some_and(|d| d.is_zero() || d > tollgate::policy::MAX_PERIOD) {
        return Err(Problem::bad_request(
            "expires_in must be between 1 microsecond and 366 days",
        ));
    }
    let shared = app.overrides();
    let full_key = KeySpace::HttpJson.key(&key);
    let value = Override {
        limit,
        expires_at_us: expires_in.map(|d| {
            shared
                .table
                .now_us()
                .saturating_add(tollgate::clock::micros(d))
        }),
    };
    let max = shared.table.max_entries();
    if let Some(store) = &shared.store {
        let stored = store
            .put_override(&policy, &full_key, &value, max)
            .await
            .map_err(write_failed)?;
        if !stored {
            return Err(Problem::conflict(format!(
                "at most {max} overrides may be set"
            )));
        }
    }
    shared
        .table
        .set(&policy, &full_key, value)
        .map_err(|e| Problem::conflict(e.to_string()))?;
    tracing::info!(%policy, "override set");
    let shown = Shown::new(
        &policy,
        &key,
        &value,
        Source::Runtime,
        shared.table.now_us(),
    );
    Ok(json(StatusCode::OK, &shown))
}

/// `GET /v1/overrides/{policy}/{key}`: the override in force, either layer.
pub(crate) async fn get_one(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    answer(try_get_one(&app, uri.path(), &headers))
}

fn try_get_one(app: &App, path: &str, headers: &HeaderMap) -> Result<Response, Problem> {
    let loaded = app.current();
    admit_admin_request(loaded.config.server.admin_token.as_deref(), headers, false)?;
    let (policy, key) = target(path)?;
    let table = &app.overrides().table;
    let (value, source) = table
        .lookup(&policy, &KeySpace::HttpJson.key(&key))
        .ok_or_else(|| Problem::not_found(format!("no override of `{policy}` for this key")))?;
    Ok(json(
        StatusCode::OK,
        &Shown::new(&policy, &key, &value, source, table.now_us()),
    ))
}

/// `DELETE /v1/overrides/{policy}/{key}`: the run-time override; a
/// declared one is in force again.
pub(crate) async fn delete(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    answer(try_delete(&app, uri.path(), &headers).await)
}

async fn try_delete(app: &App, path: &str, headers: &HeaderMap) -> Result<Response, Problem> {
    let loaded = app.current();
    admit_admin_request(loaded.config.server.admin_token.as_deref(), headers, false)?;
    let (policy, key) = target(path)?;
    let full_key = KeySpace::HttpJson.key(&key);
    let shared = app.overrides();
    let mut existed = false;
    if let Some(store) = &shared.store {
        existed = store
            .delete_override(&policy, &full_key)
            .await
            .map_err(write_failed)?;
    }
    existed |= shared.table.remove(&policy, &full_key);
    if !existed {
        return Err(Problem::not_found(format!(
            "no override of `{policy}` for this key was set through the API"
        )));
    }
    tracing::info!(%policy, "override deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/overrides?policy=..&cursor=..&limit=..`: a page of the
/// overrides in force, in (policy, key) order.
pub(crate) async fn list(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    answer(try_list(&app, &headers, uri.query()))
}

fn try_list(app: &App, headers: &HeaderMap, query: Option<&str>) -> Result<Response, Problem> {
    let loaded = app.current();
    admit_admin_request(loaded.config.server.admin_token.as_deref(), headers, false)?;
    let query = ListQuery::parse(query)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    // A cursor names a (policy, key): one that does not (cut short, made
    // up) is refused, never read as the start, which would send a client
    // paging through the list round forever.
    let cursor = query
        .cursor
        .as_deref()
        .map(|c| {
            hex_decode(c)
                .filter(|bytes| tollgate::overrides::split(bytes).is_some())
                .ok_or_else(|| Problem::bad_request("invalid cursor"))
        })
        .transpose()?;
    let table = &app.overrides().table;
    let now = table.now_us();
    let page = table.list(query.policy.as_deref(), cursor.as_deref(), limit);
    let items: Vec<Shown> = page
        .items
        .iter()
        .filter_map(|l| {
            let key = l.key.strip_prefix(KeySpace::HttpJson.tag())?;
            Some(Shown::new(&l.policy, key, &l.value, l.source, now))
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "overrides": items,
            "next_cursor": page.next.as_deref().map(hex_encode),
        }),
    ))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    // A cursor names one (policy, key): the name's length, a name of at
    // most 128 bytes, the key space's tag and a key the limiter takes.
    const MAX_CURSOR_BYTES: usize = 2 + 128 + 16 + crate::app::MAX_LIMITER_KEY;
    if text.len() % 2 != 0 || text.len() > 2 * MAX_CURSOR_BYTES {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A key as the path of its override: `/v1/overrides/{policy}/{key}`.
pub fn path(policy: &str, key: &[u8]) -> String {
    format!(
        "/v1/overrides/{}/{}",
        path_segment(policy.as_bytes()),
        path_segment(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_exactly_one_form() {
        let numbers = Spec::from_fields(Some(5), None, None, None, None);
        assert!(matches!(numbers, Ok(Spec::Numbers { limit: 5, .. })));
        assert_eq!(
            Spec::from_fields(None, None, None, Some(true), None),
            Ok(Spec::Unlimited)
        );
        assert_eq!(
            Spec::from_fields(None, None, None, None, Some(true)),
            Ok(Spec::Blocked)
        );
        for bad in [
            Spec::from_fields(None, None, None, None, None),
            Spec::from_fields(Some(1), None, None, Some(true), None),
            Spec::from_fields(None, None, None, Some(false), None),
            Spec::from_fields(None, Some(Duration::from_secs(1)), None, None, Some(true)),
        ] {
            assert!(bad.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_keep_the_algorithm_and_default_to_its_period() {
        let base: Policy = "token_bucket 10/1m burst 20".parse().expect("valid");
        let spec = Spec::Numbers {
            limit: 100,
            period: None,
            burst: Some(200),
        };
        let OverrideLimit::Policy(p) = spec.resolve(&base).expect("valid") else {
            panic!("numbers");
        };
        assert_eq!(
            (p.algorithm(), p.limit(), p.period(), p.burst()),
            (base.algorithm(), 100, base.period(), 200)
        );
        let window: Policy = "fixed_window 10/1m".parse().expect("valid");
        assert!(spec.resolve(&window).is_err(), "no burst for a window");
        let zero = Spec::Numbers {
            limit: 0,
            period: None,
            burst: None,
        };
        assert!(zero.resolve(&window).is_err());
    }

    #[test]
    fn keys_travel_percent_encoded_as_any_bytes() {
        let key = b"caf\xc3\xa9/\xff x%";
        let path = path("api", key);
        assert_eq!(
            target(&path).expect("valid"),
            ("api".to_owned(), key.to_vec())
        );
        assert!(target("/v1/overrides/api/%zz").is_err());
        assert!(target("/v1/overrides/api").is_err());
        assert_eq!(
            hex_decode(&hex_encode(b"\x00\x01ab")),
            Some(b"\x00\x01ab".to_vec())
        );
        assert_eq!(hex_decode("abc"), None);
    }
}
