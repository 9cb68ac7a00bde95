//! Envoy rate limit domains: descriptors as envoyproxy/ratelimit configures
//! and matches them.
//!
//! A domain is a tree of descriptor entries. A request descriptor (a list
//! of `key`/`value` entries) walks the tree one entry per level, preferring
//! at each level an entry with the same key and value, then the first
//! value with wildcards that matches (`value: "/api/*"`, `"/api/*/users"`:
//! each `*` matches any text), then an entry with the key and
//! no value (which matches any value). The limit applies only when the walk
//! consumes every request entry and the last node has a limit: exactly
//! envoyproxy/ratelimit's `GetLimit`.
//!
//! Each matched limit is a policy of the limiter: a `policy:` reference
//! uses the named policy, an inline `rate_limit` becomes the policy
//! `envoy/<domain>/<key[=value]/...>` (algorithm `fixed_window` unless the
//! descriptor says `algorithm:`). The key the limiter charges is the
//! Envoy key space's tag ([`KeySpace::EnvoyGrpc`], so no HTTP or middleware
//! key can be one), then the domain and every request entry, length-prefixed
//! so no two descriptors can collide; a wildcard's value is therefore part
//! of the key.
//!
//! A request descriptor may carry its own limit (Envoy's `limit` override):
//! in a configured domain it applies whatever the descriptors say, as
//! envoyproxy/ratelimit does, as a `fixed_window` policy under the one
//! limiter name [`OVERRIDE_POLICY`]; see [`Domain::find_override`].
//!
//! `schema` (beside this file) is how descriptors are written and
//! validated, in the tollgate configuration and in envoyproxy/ratelimit
//! files alike.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tollgate::keyspace::KeySpace;
use tollgate::{Algorithm, Policy, PolicyError};

use self::metadata::Metadata;

pub mod metadata;
mod schema;

pub(crate) use schema::{DomainSpec, Leaves, RawDomain};

/// The limiter policy name (and metric label) of every descriptor `limit`
/// override. No configured policy can have it: named policies may not start
/// with `envoy/`, and inline ones are `envoy/<domain>/<descriptor>`, with
/// two slashes at least.
pub const OVERRIDE_POLICY: &str = "envoy/override";

/// A rate limit unit of envoyproxy/ratelimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day.
    Day,
    /// Seven days.
    Week,
    /// Thirty days (as envoyproxy/ratelimit counts it).
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// Parses a unit name, case-insensitively (envoyproxy/ratelimit
    /// upper-cases it).
    pub fn parse(text: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(text))
    }

    /// The unit's name in configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The unit's length.
    pub const fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Month => 2_592_000,
            Unit::Year => 31_536_000,
        })
    }

    /// The unit whose length is exactly `period`.
    pub fn from_period(period: Duration) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.duration() == period)
    }
}

/// What a matched descriptor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// `unlimited: true`: always OK.
    Unlimited,
    /// `requests_per_unit: 0`: always over the limit.
    DenyAll {
        /// The configured unit.
        unit: Unit,
    },
    /// An inline `rate_limit`.
    Inline {
        /// The policy built from it.
        policy: Policy,
        /// The configured unit.
        unit: Unit,
        /// The configured count.
        requests_per_unit: u32,
    },
    /// `policy: <name>`.
    Named(String),
}

impl Limit {
    /// A `rate_limit` of `requests_per_unit` per `unit`, counted by
    /// `algorithm`: [`Limit::DenyAll`] for 0 (always over the limit, as
    /// envoyproxy/ratelimit compares), an inline policy otherwise.
    ///
    /// # Errors
    /// When `algorithm` cannot make that policy (a `sliding_log` above its
    /// largest limit).
    pub fn rate(
        unit: Unit,
        requests_per_unit: u32,
        algorithm: Algorithm,
    ) -> Result<Limit, PolicyError> {
        if requests_per_unit == 0 {
            return Ok(Limit::DenyAll { unit });
        }
        let policy = Policy::new(
            algorithm,
            u64::from(requests_per_unit),
            unit.duration(),
            None,
        )?;
        Ok(Limit::Inline {
            policy,
            unit,
            requests_per_unit,
        })
    }
}

/// A descriptor's limit with its envoyproxy/ratelimit `name`/`replaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `rate_limit.name`: what other limits' `replaces` refer to.
    pub name: Option<String>,
    /// Names of limits this one replaces when both match a request.
    pub replaces: Vec<String>,
    /// The limit.
    pub limit: Limit,
}

/// One descriptor entry as configured, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The entry's key.
    pub key: String,
    /// The value; `None` matches any value; each `*` in it matches any text.
    pub value: Option<String>,
    /// The limit at this node, if any.
    pub rule: Option<Rule>,
    /// Nested entries.
    pub children: Vec<Descriptor>,
    /// Over-limit decisions are reported but not enforced.
    pub shadow_mode: bool,
    /// Over the limit alone does not make the request over the limit
    /// unless every quota descriptor of the request is (see
    /// [`crate::grpc`]).
    pub quota_mode: bool,
    /// With a wildcard value: every matching value shares one counter.
    pub share_threshold: bool,
    /// The statistics of this limit are kept per request value
    /// (envoyproxy/ratelimit's `detailed_metric`).
    pub detailed_metric: bool,
    /// The statistics name this entry by the request's value when it was
    /// matched by a wildcard or by key alone (`value_to_metric`).
    pub value_to_metric: bool,
    /// tollgate's `settle: true`: the limit is charged after the fact, by
    /// the call Envoy makes when the stream is done
    /// (`apply_on_stream_done`): a call with hits (the descriptor's
    /// `hits_addend`, else the request's) charges them whether or not they
    /// fit, overdrawing at most the policy's `max_overdraft`, and is
    /// answered `OK`; a call without (0) only looks, `OVER_LIMIT` when
    /// nothing remains. See [`crate::grpc`].
    pub settle: bool,
    /// `metadata`: sent in the answer's dynamic metadata when this
    /// descriptor's limit passes (see [`metadata`]); only a descriptor with
    /// a limit has it to send.
    pub metadata: Option<Arc<Metadata>>,
}

impl Descriptor {
    /// Every named policy this descriptor and its children reference.
    pub fn references(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_references(&mut out);
        out
    }

    fn collect_references<'a>(&'a self, out: &mut Vec<&'a str>) {
        if let Some(Rule {
            limit: Limit::Named(name),
            ..
        }) = &self.rule
        {
            out.push(name);
        }
        for child in &self.children {
            child.collect_references(out);
        }
    }

    /// The first descriptor of `descriptors` (and their children) with
    /// `settle: true` that cannot be reserved, with the reason: a named
    /// policy (`named` resolves `policy:`) whose algorithm cannot, or, with
    /// `envoy_layout` (`store.key_layout: envoy`), an inline limit in fixed
    /// windows, which that layout keeps on envoyproxy/ratelimit's counter,
    /// a plain count with no room for a reservation. (An inline limit's
    /// algorithm is checked where it is written.)
    pub(crate) fn unsettleable(
        descriptors: &[Descriptor],
        named: &BTreeMap<String, Policy>,
        envoy_layout: bool,
    ) -> Option<String> {
        descriptors.iter().find_map(|d| {
            let refused = match &d.rule {
                Some(Rule {
                    limit: Limit::Named(name),
                    ..
                }) if d.settle => named
                    .get(name)
                    .filter(|p| !tollgate::algorithm::can_reserve(p.algorithm()))
                    .map(|p| {
                        format!(
                            "descriptor `{}`: `settle: true`: policy `{name}`: {}",
                            d.label(),
                            PolicyError::ReserveNotSupported(p.algorithm())
                        )
                    }),
                Some(Rule {
                    limit: Limit::Inline { policy, .. },
                    ..
                }) if d.settle && envoy_layout && policy.algorithm() == Algorithm::FixedWindow => {
                    Some(format!(
                        "descriptor `{}`: `settle: true`: with store.key_layout: envoy an inline \
                         fixed_window limit is kept on envoyproxy/ratelimit's counter, a plain count \
                         with no room for a charge after the fact; give it another `algorithm:` \
                         (e.g. sliding_window) or a `policy:`, or use key_layout: tollgate",
                        d.label()
                    ))
                }
                _ => None,
            };
            refused.or_else(|| Descriptor::unsettleable(&d.children, named, envoy_layout))
        })
    }

    fn label(&self) -> String {
        match &self.value {
            Some(v) => format!("{}={v}", self.key),
            None => self.key.clone(),
        }
    }
}

/// Rejects two siblings with the same key and value, as
/// envoyproxy/ratelimit does.
pub(crate) fn check_siblings<'a>(
    siblings: impl Iterator<Item = &'a Descriptor>,
) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for d in siblings {
        if !seen.insert((&d.key, &d.value)) {
            return Err(format!("duplicate descriptor `{}`", d.label()));
        }
    }
    Ok(())
}

/// A compiled limit: what the server applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Always OK, reported with `limit_remaining` = u32::MAX.
    Unlimited,
    /// Always over the limit.
    DenyAll {
        /// The unit reported.
        unit: Unit,
    },
    /// Decided by the limiter.
    Policy {
        /// The limiter's policy name.
        name: String,
        /// The policy.
        policy: Policy,
        /// The unit reported in `current_limit` (`None`: UNKNOWN, when the
        /// policy's period is not one unit).
        unit: Option<Unit>,
        /// `requests_per_unit` reported in `current_limit`.
        requests_per_unit: u32,
    },
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// `rate_limit.name`.
    pub name: Option<String>,
    /// Names of limits this one replaces.
    pub replaces: Vec<String>,
    /// What to apply.
    pub applied: Applied,
}

#[derive(Debug, Clone, Default)]
struct Level {
    keys: HashMap<String, KeyNodes>,
}

#[derive(Debug, Clone, Default)]
struct KeyNodes {
    exact: HashMap<String, Node>,
    /// Values with a `*`, in configuration order: the first match wins.
    wildcards: Vec<(Wildcard, Node)>,
    any: Option<Box<Node>>,
}

/// A value with `*` wildcards: each `*` matches any run of characters,
/// the empty one included (envoyproxy/ratelimit's `wildcardMatch`).
#[derive(Debug, Clone)]
struct Wildcard {
    /// The value as written.
    pattern: String,
    /// The text between the `*`s (split once, when the domain is built).
    parts: Vec<String>,
}

impl Wildcard {
    fn new(pattern: &str) -> Wildcard {
        Wildcard {
            pattern: pattern.to_owned(),
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    /// Whether `value` matches: it starts with the first part, ends with
    /// the last, and holds the others in order, without overlap, between.
    /// Linear in the value's length times the number of parts.
    fn matches(&self, value: &str) -> bool {
        let (first, last) = match (self.parts.first(), self.parts.last()) {
            (Some(first), Some(last)) if self.parts.len() > 1 => (first, last),
            _ => return self.pattern == value,
        };
        let fixed: usize = self.parts.iter().map(String::len).sum();
        if value.len() < fixed
            || !value.starts_with(first.as_str())
            || !value.ends_with(last.as_str())
        {
            return false;
        }
        // In bounds and on character boundaries: both ends matched, and
        // they do not overlap (`fixed` counts them both).
        let mut rest = &value[first.len()..value.len() - last.len()];
        for part in &self.parts[1..self.parts.len() - 1] {
            match rest.find(part.as_str()) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[derive(Debug, Clone)]
struct Node {
    rule: Option<CompiledRule>,
    settle: bool,
    shadow_mode: bool,
    quota_mode: bool,
    detailed_metric: bool,
    value_to_metric: bool,
    /// For a shared wildcard: the pattern replaces the value in the key.
    shared_pattern: Option<String>,
    metadata: Option<Arc<Metadata>>,
    children: Level,
}

/// How one request entry matched a configured entry.
#[derive(Clone, Copy)]
enum How<'a> {
    /// The same key and value.
    Exact,
    /// The key and a wildcard value (the pattern).
    Wildcard(&'a str),
    /// The key alone.
    Any,
}

/// One domain, compiled for matching.
#[derive(Debug, Clone)]
pub struct Domain {
    name: String,
    root: Level,
    /// Policies written inline, by limiter name.
    inline: BTreeMap<String, Policy>,
    /// The inline policies whose descriptor is in `shadow_mode`.
    shadowed: BTreeSet<String>,
    /// The descriptors it was built from, to merge another file's into
    /// (`ConfigSource::merge_domains`).
    descriptors: Vec<Descriptor>,
}

/// A request descriptor matched to a limit.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    /// The limit: configured, or made for the request by an override.
    pub rule: Cow<'a, CompiledRule>,
    /// Whether over-limit decisions are only reported.
    pub shadow: bool,
    /// Whether the descriptor is in quota mode (`quota_mode: true`).
    pub quota: bool,
    /// Whether the limit is charged after the fact (`settle: true`, see
    /// [`Descriptor::settle`]).
    pub settle: bool,
    /// envoyproxy/ratelimit's statistics key of this limit
    /// (`<domain>.<key>[_<value>]...`, before its sanitising), following
    /// `detailed_metric`, `value_to_metric` and `share_threshold` as it
    /// does. Parts of it may come from the request: whoever keeps
    /// statistics by it must bound their number.
    pub stat_key: String,
    /// The configured `metadata` of the descriptor that matched (never
    /// for an override).
    pub metadata: Option<&'a Metadata>,
}

impl Domain {
    /// Compiles validated descriptors; `named` resolves `policy:` references
    /// (already checked to exist).
    pub(crate) fn build(
        name: &str,
        descriptors: Vec<Descriptor>,
        named: &BTreeMap<String, Policy>,
    ) -> Domain {
        let mut inline = BTreeMap::new();
        let mut shadowed = BTreeSet::new();
        let root = build_level(
            descriptors.clone(),
            &format!("envoy/{name}"),
            named,
            &mut (&mut inline, &mut shadowed),
        );
        Domain {
            name: name.to_owned(),
            root,
            inline,
            shadowed,
            descriptors,
        }
    }

    /// This domain with `more` top-level descriptors (another file's, for
    /// the same domain), as envoyproxy/ratelimit merges them with
    /// `MERGE_DOMAIN_CONFIG`.
    ///
    /// # Errors
    /// A descriptor of `more` with the key and value of one already here.
    pub(crate) fn merged(
        &self,
        more: Vec<Descriptor>,
        named: &BTreeMap<String, Policy>,
    ) -> Result<Domain, String> {
        let mut descriptors = self.descriptors.clone();
        descriptors.extend(more);
        check_siblings(descriptors.iter())?;
        Ok(Domain::build(&self.name, descriptors, named))
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the inline policy `name` belongs to a descriptor in
    /// `shadow_mode`.
    pub fn shadows(&self, name: &str) -> bool {
        self.shadowed.contains(name)
    }

    /// Policies written inline in this domain's descriptors.
    pub fn inline_policies(&self) -> impl Iterator<Item = (&str, &Policy)> {
        self.inline.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// Finds the limit for a request descriptor, as envoyproxy/ratelimit's
    /// `GetLimit` does, and returns it with the limiter key; `None` when no
    /// limit applies. At each level the same value wins, then the first
    /// wildcard value that matches, then the key alone.
    pub fn find<'a, K, V>(&'a self, entries: &[(K, V)]) -> Option<(Matched<'a>, Vec<u8>)>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut level = &self.root;
        let mut found = None;
        let mut path: Vec<(How<'a>, &'a Node)> = Vec::with_capacity(entries.len());
        let mut key = Vec::with_capacity(64);
        key.extend_from_slice(KeySpace::EnvoyGrpc.tag());
        push_part(&mut key, self.name.as_bytes());
        for (i, (k, v)) in entries.iter().enumerate() {
            let (k, v) = (k.as_ref(), v.as_ref());
            let Some(nodes) = level.keys.get(k) else {
                break;
            };
            let matched = nodes
                .exact
                .get(v)
                .map(|n| (How::Exact, n))
                .or_else(|| {
                    nodes
                        .wildcards
                        .iter()
                        .find(|(w, _)| w.matches(v))
                        .map(|(w, n)| (How::Wildcard(w.pattern.as_str()), n))
                })
                .or_else(|| nodes.any.as_deref().map(|n| (How::Any, n)));
            let Some((how, node)) = matched else {
                break;
            };
            path.push((how, node));
            push_part(&mut key, k.as_bytes());
            push_part(
                &mut key,
                node.shared_pattern.as_deref().unwrap_or(v).as_bytes(),
            );
            if let Some(rule) = &node.rule {
                if i + 1 == entries.len() {
                    found = Some((rule, node));
                }
            }
            if node.children.keys.is_empty() {
                break;
            }
            level = &node.children;
        }
        let (rule, node) = found?;
        let matched = Matched {
            rule: Cow::Borrowed(rule),
            shadow: node.shadow_mode,
            quota: node.quota_mode,
            settle: node.settle,
            stat_key: self.stat_key(entries, &path, node.detailed_metric),
            metadata: node.metadata.as_deref(),
        };
        Some((matched, key))
    }

    /// envoyproxy/ratelimit's statistics key for a limit found along
    /// `path` (one step per request entry).
    fn stat_key<K, V>(
        &self,
        entries: &[(K, V)],
        path: &[(How<'_>, &Node)],
        detailed: bool,
    ) -> String
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let shared = |how: How<'_>, node: &Node| match how {
            How::Wildcard(pattern) if node.shared_pattern.is_some() => Some(pattern.to_owned()),
            _ => None,
        };
        let any_shared = path.iter().any(|(how, node)| shared(*how, node).is_some());
        let mut out = self.name.clone();
        for ((k, v), (how, node)) in entries.iter().zip(path) {
            let (k, v) = (k.as_ref(), v.as_ref());
            out.push('.');
            out.push_str(k);
            let value: Option<&str> = if detailed {
                match shared(*how, node) {
                    Some(_) => Some(match how {
                        How::Wildcard(p) => p,
                        _ => v,
                    }),
                    // With a shared entry elsewhere an empty value is left
                    // out; without, `_` is always written (as it does).
                    None if any_shared && v.is_empty() => None,
                    None => Some(v),
                }
            } else {
                match how {
                    How::Exact => Some(v),
                    How::Wildcard(p) if node.shared_pattern.is_some() => Some(p),
                    How::Wildcard(_) if node.value_to_metric => Some(v).filter(|v| !v.is_empty()),
                    How::Wildcard(p) => Some(p),
                    How::Any if node.value_to_metric => Some(v).filter(|v| !v.is_empty()),
                    How::Any => None,
                }
            };
            if let Some(value) = value {
                out.push('_');
                out.push_str(value);
            }
        }
        out
    }

    /// The limit for a request descriptor that carries its own `limit`
    /// (Envoy's `RateLimitOverride`), with the limiter key, as
    /// envoyproxy/ratelimit's `GetLimit` treats it: the configured
    /// descriptors are not consulted (a match is not needed, and
    /// `unlimited`, `shadow_mode`, `name` and `replaces` of a matching node
    /// do not apply); the limit is `requests_per_unit` per `unit` in a fixed
    /// window ([`Limit::rate`], 0 = always over the limit).
    ///
    /// Every override is the limiter policy [`OVERRIDE_POLICY`], so the key
    /// holds what tells counters apart: after the Envoy key space's tag, the
    /// domain, the unit, the count and every request entry, length-prefixed.
    /// Two different overrides of one descriptor therefore never share a
    /// counter (envoyproxy/ratelimit shares one per unit across counts;
    /// tollgate's stores only read a state with the policy that wrote it,
    /// see docs/SERVER.md).
    ///
    /// # Errors
    /// None for the units and counts Envoy can send; the policy's error
    /// otherwise.
    pub fn find_override<K, V>(
        &self,
        entries: &[(K, V)],
        unit: Unit,
        requests_per_unit: u32,
    ) -> Result<(Matched<'static>, Vec<u8>), PolicyError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let limit = Limit::rate(unit, requests_per_unit, Algorithm::FixedWindow)?;
        let rule = CompiledRule {
            name: None,
            replaces: Vec::new(),
            applied: compile_limit(limit, OVERRIDE_POLICY, &BTreeMap::new()),
        };
        let mut key = Vec::with_capacity(64);
        key.extend_from_slice(KeySpace::EnvoyGrpc.tag());
        push_part(&mut key, self.name.as_bytes());
        push_part(&mut key, unit.name().as_bytes());
        push_part(&mut key, requests_per_unit.to_string().as_bytes());
        for (k, v) in entries {
            push_part(&mut key, k.as_ref().as_bytes());
            push_part(&mut key, v.as_ref().as_bytes());
        }
        let mut stat_key = self.name.clone();
        for (k, v) in entries {
            stat_key.push('.');
            stat_key.push_str(k.as_ref());
            if !v.as_ref().is_empty() {
                stat_key.push('_');
                stat_key.push_str(v.as_ref());
            }
        }
        let matched = Matched {
            rule: Cow::Owned(rule),
            shadow: false,
            quota: false,
            settle: false,
            stat_key,
            metadata: None,
        };
        Ok((matched, key))
    }
}

impl Domain {
    /// The domain's limits as text, one line per descriptor with a limit,
    /// for `GET /rlconfig`: envoyproxy/ratelimit's dump format
    /// (`<domain>.<key>[_<value>].<key>...: unit=MINUTE requests_per_unit=3,
    /// shadow_mode: false, quota_mode: false`), with `unlimited: true`, a named policy
    /// (`policy=<name> <policy>`) or a non-fixed-window algorithm written
    /// out. Keys and values are sorted; wildcards keep their order.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        dump_level(&self.root, &self.name, &mut out);
        out
    }
}

fn dump_level(level: &Level, path: &str, out: &mut String) {
    let mut keys: Vec<(&String, &KeyNodes)> = level.keys.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, nodes) in keys {
        let mut exact: Vec<(&String, &Node)> = nodes.exact.iter().collect();
        exact.sort_by(|a, b| a.0.cmp(b.0));
        for (value, node) in exact {
            dump_node(node, &format!("{path}.{key}_{value}"), out);
        }
        for (wildcard, node) in &nodes.wildcards {
            dump_node(node, &format!("{path}.{key}_{}", wildcard.pattern), out);
        }
        if let Some(node) = &nodes.any {
            dump_node(node, &format!("{path}.{key}"), out);
        }
    }
}

fn dump_node(node: &Node, path: &str, out: &mut String) {
    use std::fmt::Write as _;
    if let Some(rule) = &node.rule {
        let unit_name = |unit: Option<Unit>| {
            unit.map_or_else(|| "UNKNOWN".to_owned(), |u| u.name().to_ascii_uppercase())
        };
        let limit = match &rule.applied {
            Applied::Unlimited => "unit=UNKNOWN requests_per_unit=0, unlimited: true".to_owned(),
            Applied::DenyAll { unit } => {
                format!("unit={} requests_per_unit=0", unit_name(Some(*unit)))
            }
            Applied::Policy {
                name,
                policy,
                unit,
                requests_per_unit,
            } => {
                let mut text = format!(
                    "unit={} requests_per_unit={requests_per_unit}",
                    unit_name(*unit)
                );
                if !name.starts_with("envoy/") {
                    let _ = write!(text, ", policy={name} {policy}");
                } else if policy.algorithm() != tollgate::Algorithm::FixedWindow {
                    let _ = write!(text, ", algorithm={}", policy.algorithm().name());
                }
                text
            }
        };
        let _ = writeln!(
            out,
            "{path}: {limit}, shadow_mode: {}, quota_mode: {}",
            node.shadow_mode, node.quota_mode
        );
    }
    dump_level(&node.children, path, out);
}

/// Appends `part` with its length in front, so no two sequences of parts
/// encode to the same bytes.
fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    key.extend_from_slice(part.len().to_string().as_bytes());
    key.push(b':');
    key.extend_from_slice(part);
}

/// The parts `push_part` wrote, in order; `None` if `key` is not such a
/// sequence.
fn split_parts(mut key: &[u8]) -> Option<Vec<&[u8]>> {
    let mut parts = Vec::new();
    while !key.is_empty() {
        let colon = key.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&key[..colon]).ok()?.parse().ok()?;
        let rest = &key[colon + 1..];
        if rest.len() < len {
            return None;
        }
        parts.push(&rest[..len]);
        key = &rest[len..];
    }
    Some(parts)
}

/// For `store.key_layout: envoy`: the part of envoyproxy/ratelimit's
/// counter key (`src/limiter/cache_key.go`) between its prefix and its
/// window start, `<domain>_<key1>_<value1>_<key2>_<value2>_`, for a check
/// of `policies` on the limiter `key` — when the check is what that layout
/// holds: one inline descriptor limit (`envoy/<domain>/...`, not an
/// override) counted in fixed windows, on a key [`Domain::find`] built.
/// A shared wildcard's value is its pattern, as there. `None` otherwise:
/// the check keeps tollgate's layout.
///
/// The limiter key is length-prefixed and so injective; this text is not
/// (a `_` inside a domain, key or value can make two descriptors spell the
/// same counter): it is envoyproxy/ratelimit's, collisions included.
pub fn envoyproxy_counter_base(
    key: &[u8],
    policies: &[tollgate::PolicyRef<'_>],
) -> Option<Vec<u8>> {
    let [policy] = policies else {
        return None;
    };
    if !policy.name.starts_with("envoy/")
        || policy.name == OVERRIDE_POLICY
        || policy.policy.algorithm() != Algorithm::FixedWindow
    {
        return None;
    }
    let parts = split_parts(key.strip_prefix(KeySpace::EnvoyGrpc.tag())?)?;
    let (domain, entries) = parts.split_first()?;
    if entries.is_empty() || entries.len() % 2 != 0 {
        return None;
    }
    let mut base = Vec::with_capacity(key.len());
    base.extend_from_slice(domain);
    base.push(b'_');
    for part in entries {
        base.extend_from_slice(part);
        base.push(b'_');
    }
    Some(base)
}

/// What `limit` applies; an inline limit is the limiter policy `name`.
fn compile_limit(limit: Limit, name: &str, named: &BTreeMap<String, Policy>) -> Applied {
    match limit {
        Limit::Unlimited => Applied::Unlimited,
        Limit::DenyAll { unit } => Applied::DenyAll { unit },
        Limit::Inline {
            policy,
            unit,
            requests_per_unit,
        } => Applied::Policy {
            name: name.to_owned(),
            policy,
            unit: Some(unit),
            requests_per_unit,
        },
        Limit::Named(name) => match named.get(&name) {
            Some(policy) => Applied::Policy {
                unit: Unit::from_period(policy.period()),
                requests_per_unit: u32::try_from(policy.limit()).unwrap_or(u32::MAX),
                policy: *policy,
                name,
            },
            // Checked while parsing; unreachable, but never panic.
            None => Applied::Unlimited,
        },
    }
}

fn build_level(
    descriptors: Vec<Descriptor>,
    path: &str,
    named: &BTreeMap<String, Policy>,
    inline: &mut (&mut BTreeMap<String, Policy>, &mut BTreeSet<String>),
) -> Level {
    let mut level = Level::default();
    for d in descriptors {
        let path = format!("{path}/{}", d.label());
        let rule = d.rule.map(|rule| {
            if let Limit::Inline { policy, .. } = &rule.limit {
                inline.0.insert(path.clone(), *policy);
                if d.shadow_mode {
                    inline.1.insert(path.clone());
                }
            }
            CompiledRule {
                name: rule.name,
                replaces: rule.replaces,
                applied: compile_limit(rule.limit, &path, named),
            }
        });
        let node = Node {
            rule,
            settle: d.settle,
            shadow_mode: d.shadow_mode,
            quota_mode: d.quota_mode,
            detailed_metric: d.detailed_metric,
            value_to_metric: d.value_to_metric,
            shared_pattern: if d.share_threshold {
                d.value.clone()
            } else {
                None
            },
            metadata: d.metadata,
            children: build_level(d.children, &path, named, inline),
        };
        let nodes = level.keys.entry(d.key).or_default();
        match d.value {
            Some(value) if value.contains('*') => {
                nodes.wildcards.push((Wildcard::new(&value), node));
            }
            Some(value) => {
                nodes.exact.insert(value, node);
            }
            None => nodes.any = Some(Box::new(node)),
        }
    }
    level
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, DEMO_CONFIG};

    /// The demo's configuration with wildcard, shared and nested
    /// descriptors added to its `edge` domain (its last section).
    fn config() -> Config {
        let text = format!("{DEMO_CONFIG}{MORE_EDGE_DESCRIPTORS}");
        Config::parse(&text, "t.yaml").unwrap()
    }

    const MORE_EDGE_DESCRIPTORS: &str = r#"      - key: path
        value: /api/*
        rate_limit: { unit: minute, requests_per_unit: 100 }
      - key: path
        value: /shared/*
        share_threshold: true
        rate_limit: { unit: minute, requests_per_unit: 100 }
      - key: user
        descriptors:
          - key: plan
            value: free
            rate_limit: { unit: hour, requests_per_unit: 3 }
          - key: plan
            rate_limit: { unlimited: true }
"#;

    fn entries<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        pairs.to_vec()
    }

    #[test]
    fn matching_follows_envoyproxy_ratelimit() {
        let config = config();
        let edge = &config.domains["edge"];
        let name = |pairs: &[(&str, &str)]| {
            edge.find(&entries(pairs))
                .map(|(m, _)| match &m.rule.applied {
                    super::Applied::Policy { name, .. } => name.clone(),
                    other => format!("{other:?}"),
                })
        };
        assert_eq!(
            name(&[("remote_address", "10.0.0.1")]).as_deref(),
            Some("envoy/edge/remote_address")
        );
        assert_eq!(name(&[("path", "/login")]).as_deref(), Some("login"));
        assert_eq!(
            name(&[("path", "/api/v1")]).as_deref(),
            Some("envoy/edge/path=/api/*")
        );
        assert_eq!(name(&[("path", "/other")]), None);
        // More request entries than the configured depth: no limit.
        assert_eq!(name(&[("remote_address", "a"), ("path", "/login")]), None);
        // Nested: the exact value wins over the wildcard.
        assert_eq!(
            name(&[("user", "u1"), ("plan", "free")]).as_deref(),
            Some("envoy/edge/user/plan=free")
        );
        assert_eq!(
            name(&[("user", "u1"), ("plan", "pro")]).as_deref(),
            Some("Unlimited")
        );
        // The parent has no limit of its own.
        assert_eq!(name(&[("user", "u1")]), None);
    }

    #[test]
    fn keys_are_in_the_envoy_key_space() {
        let config = config();
        let edge = &config.domains["edge"];
        let (_, key) = edge.find(&[("path", "/login")]).unwrap();
        assert_eq!(key, b"envoy:4:edge4:path6:/login");
        let (_, key) = edge
            .find_override(&[("path", "/login")], super::Unit::Minute, 3)
            .unwrap();
        assert_eq!(key, b"envoy:4:edge6:minute1:34:path6:/login");
    }

    #[test]
    fn envoyproxy_counter_keys_are_its_cache_keys_without_prefix_and_window() {
        use super::{OVERRIDE_POLICY, Unit, envoyproxy_counter_base};
        use tollgate::{Algorithm, Policy, PolicyRef};
        let config = config();
        let edge = &config.domains["edge"];
        let base = |pairs: &[(&str, &str)]| {
            let (m, key) = edge.find(&entries(pairs)).unwrap();
            let super::Applied::Policy { name, policy, .. } = &m.rule.applied else {
                panic!("no policy for {pairs:?}");
            };
            envoyproxy_counter_base(&key, &[PolicyRef { name, policy }])
                .map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(
            base(&[("remote_address", "10.0.0.1")]).as_deref(),
            Some("edge_remote_address_10.0.0.1_")
        );
        assert_eq!(
            base(&[("user", "u_1"), ("plan", "free")]).as_deref(),
            Some("edge_user_u_1_plan_free_")
        );
        // A wildcard's value, unless shared: then its pattern.
        assert_eq!(
            base(&[("path", "/api/v1")]).as_deref(),
            Some("edge_path_/api/v1_")
        );
        assert_eq!(
            base(&[("path", "/shared/a")]).as_deref(),
            Some("edge_path_/shared/*_")
        );
        // A named policy (here a token bucket) keeps tollgate's layout.
        assert_eq!(base(&[("path", "/login")]), None);
        // So do overrides, other algorithms and several policies.
        let (_, key) = edge
            .find_override(&[("path", "/login")], Unit::Minute, 3)
            .unwrap();
        let window = Policy::new(Algorithm::FixedWindow, 3, Unit::Minute.duration(), None).unwrap();
        let refs = [PolicyRef {
            name: OVERRIDE_POLICY,
            policy: &window,
        }];
        assert_eq!(envoyproxy_counter_base(&key, &refs), None);
        let (_, key) = edge.find(&[("remote_address", "a")]).unwrap();
        let gcra = Policy::new(Algorithm::Gcra, 3, Unit::Minute.duration(), None).unwrap();
        let inline = "envoy/edge/remote_address";
        assert_eq!(
            envoyproxy_counter_base(
                &key,
                &[PolicyRef {
                    name: inline,
                    policy: &gcra
                }]
            ),
            None
        );
        let two = [
            PolicyRef {
                name: inline,
                policy: &window,
            },
            PolicyRef {
                name: inline,
                policy: &window,
            },
        ];
        assert_eq!(envoyproxy_counter_base(&key, &two), None);
        assert!(envoyproxy_counter_base(&key, &two[..1]).is_some());
        // Not a key `find` built.
        assert_eq!(envoyproxy_counter_base(b"http:4:edge", &two[..1]), None);
        assert_eq!(envoyproxy_counter_base(b"envoy:9:edge", &two[..1]), None);
        assert_eq!(envoyproxy_counter_base(b"envoy:4:edge", &two[..1]), None);
    }

    #[test]
    fn wildcard_values_are_part_of_the_key_unless_shared() {
        let config = config();
        let edge = &config.domains["edge"];
        let key = |pairs: &[(&str, &str)]| edge.find(&entries(pairs)).map(|(_, k)| k);
        assert_ne!(
            key(&[("remote_address", "a")]),
            key(&[("remote_address", "b")])
        );
        assert_ne!(key(&[("path", "/api/a")]), key(&[("path", "/api/b")]));
        assert_eq!(key(&[("path", "/shared/a")]), key(&[("path", "/shared/b")]));
    }

    #[test]
    fn an_override_ignores_the_configuration_and_keys_its_own_counter() {
        use super::{Applied, OVERRIDE_POLICY, Unit};
        use tollgate::{Algorithm, Policy};
        let config = config();
        let edge = &config.domains["edge"];
        let address = [("remote_address", "10.0.0.1")];
        let (configured, configured_key) = edge.find(&address).unwrap();
        let over = |entries: &[(&str, &str)], unit, count| {
            edge.find_override(entries, unit, count).unwrap()
        };
        let (m, key) = over(&address, Unit::Minute, 3);
        let minute = Policy::new(Algorithm::FixedWindow, 3, Unit::Minute.duration(), None);
        let expected = Applied::Policy {
            name: OVERRIDE_POLICY.to_owned(),
            policy: minute.unwrap(),
            unit: Some(Unit::Minute),
            requests_per_unit: 3,
        };
        assert_eq!(m.rule.applied, expected);
        assert!(m.rule.name.is_none() && m.rule.replaces.is_empty() && !m.shadow);
        // Its own counter: not the configured one, and one per unit and count.
        assert!(
            matches!(&configured.rule.applied, Applied::Policy { name, .. } if name != OVERRIDE_POLICY)
        );
        assert_ne!(key, configured_key);
        assert_ne!(key, over(&address, Unit::Hour, 3).1);
        assert_ne!(key, over(&address, Unit::Minute, 4).1);
        assert_ne!(
            key,
            over(&[("remote_address", "10.0.0.2")], Unit::Minute, 3).1
        );
        assert_eq!(key, over(&address, Unit::Minute, 3).1);
        // No configured match needed; 0 is always over the limit.
        let (m, _) = over(&[("nothing", "here"), ("at", "all")], Unit::Day, 0);
        assert_eq!(m.rule.applied, Applied::DenyAll { unit: Unit::Day });
        // unlimited and shadow_mode nodes are overridden too.
        let (m, _) = over(&[("user", "u1"), ("plan", "pro")], Unit::Second, 1);
        assert!(matches!(m.rule.applied, Applied::Policy { .. }));
    }

    /// A domain of an envoyproxy/ratelimit file `text`.
    fn domain(text: &str) -> super::Domain {
        let mut config = Config::parse("", "<empty>").unwrap();
        config.add_envoy_file(text, "d.yaml", false).unwrap();
        config.domains.into_values().next().unwrap()
    }

    fn limit_name(domain: &super::Domain, pairs: &[(&str, &str)]) -> Option<String> {
        domain.find(pairs).map(|(m, _)| match &m.rule.applied {
            super::Applied::Policy { name, .. } => name.clone(),
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn wildcards_match_anywhere_in_a_value() {
        let d = domain(
            "domain: w
descriptors:
  - key: path
    value: /v*/orders/*/items
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: path
    value: /v1/orders/*
    rate_limit: { unit: second, requests_per_unit: 2 }
  - key: path
    value: '*.png'
    rate_limit: { unit: second, requests_per_unit: 3 }
  - key: path
    value: /exact
    rate_limit: { unit: second, requests_per_unit: 4 }
  - key: path
    value: 'x*y*x'
    rate_limit: { unit: second, requests_per_unit: 5 }
  - key: host
    value: '*'
    rate_limit: { unit: second, requests_per_unit: 6 }
  - key: host
    value: static
    rate_limit: { unlimited: true }
  - key: path
    rate_limit: { unit: second, requests_per_unit: 7 }
",
        );
        let name = |value: &str| limit_name(&d, &[("path", value)]);
        assert_eq!(
            name("/v1/orders/9/items").as_deref(),
            Some("envoy/w/path=/v*/orders/*/items")
        );
        assert_eq!(
            name("/v22/orders//items").as_deref(),
            Some("envoy/w/path=/v*/orders/*/items")
        );
        // The first wildcard in configuration order wins.
        assert_eq!(
            name("/v1/orders/9").as_deref(),
            Some("envoy/w/path=/v1/orders/*")
        );
        assert_eq!(name("logo.png").as_deref(), Some("envoy/w/path=*.png"));
        assert_eq!(name(".png").as_deref(), Some("envoy/w/path=*.png"));
        // The same value wins over a wildcard; the key alone comes last.
        assert_eq!(name("/exact").as_deref(), Some("envoy/w/path=/exact"));
        assert_eq!(name("/v2/orders/9/item").as_deref(), Some("envoy/w/path"));
        // Parts may not overlap: `x*y*x` needs two x's around a y.
        assert_eq!(name("xyx").as_deref(), Some("envoy/w/path=x*y*x"));
        assert_eq!(name("xy").as_deref(), Some("envoy/w/path"));
        assert_eq!(name("xyyx").as_deref(), Some("envoy/w/path=x*y*x"));
        assert_eq!(name("yx").as_deref(), Some("envoy/w/path"));
        // `*` alone matches any value, the empty one too.
        assert_eq!(
            limit_name(&d, &[("host", "")]).as_deref(),
            Some("envoy/w/host=*")
        );
        assert_eq!(
            limit_name(&d, &[("host", "static")]).as_deref(),
            Some("Unlimited")
        );
        // Multi-byte text is matched by bytes without splitting a character.
        assert_eq!(
            name("/vé/orders/ü/items").as_deref(),
            Some("envoy/w/path=/v*/orders/*/items")
        );
    }

    #[test]
    fn share_threshold_with_a_middle_wildcard_shares_one_counter() {
        let d = domain(
            "domain: s
descriptors:
  - key: path
    value: /api*v1
    share_threshold: true
    rate_limit: { unit: minute, requests_per_unit: 5 }
  - key: path
    value: /own*v2
    rate_limit: { unit: minute, requests_per_unit: 5 }
",
        );
        let key = |v: &str| d.find(&[("path", v)]).map(|(_, k)| k).unwrap();
        assert_eq!(key("/api/a/v1"), key("/apiXv1"));
        assert_ne!(key("/own/a/v2"), key("/ownXv2"));
    }

    #[test]
    fn statistics_keys_follow_envoyproxy_ratelimit() {
        let d = domain(
            "domain: st
descriptors:
  - key: client
    descriptors:
      - key: path
        value: /a/*
        rate_limit: { unit: second, requests_per_unit: 1 }
      - key: tier
        value: gold
        rate_limit: { unit: second, requests_per_unit: 1 }
  - key: user
    value_to_metric: true
    descriptors:
      - key: path
        value: /b/*
        value_to_metric: true
        rate_limit: { unit: second, requests_per_unit: 1 }
  - key: ip
    detailed_metric: true
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: shared
    value: s*
    share_threshold: true
    detailed_metric: true
    descriptors:
      - key: sub
        detailed_metric: true
        rate_limit: { unit: second, requests_per_unit: 1 }
  - key: quota
    quota_mode: true
    rate_limit: { unit: second, requests_per_unit: 1 }
",
        );
        let stat = |pairs: &[(&str, &str)]| d.find(pairs).unwrap().0.stat_key;
        // By configuration: the wildcard pattern, the key alone.
        assert_eq!(
            stat(&[("client", "c1"), ("path", "/a/x")]),
            "st.client.path_/a/*"
        );
        assert_eq!(
            stat(&[("client", "c1"), ("tier", "gold")]),
            "st.client.tier_gold"
        );
        // value_to_metric: the request's values where a key alone or a
        // wildcard matched.
        assert_eq!(
            stat(&[("user", "u1"), ("path", "/b/x")]),
            "st.user_u1.path_/b/x"
        );
        // detailed_metric: every request value.
        assert_eq!(stat(&[("ip", "10.1.2.3")]), "st.ip_10.1.2.3");
        // detailed_metric with share_threshold: the shared entry keeps its
        // pattern, the others their values.
        assert_eq!(
            stat(&[("shared", "s1"), ("sub", "v")]),
            "st.shared_s*.sub_v"
        );
        // quota_mode reaches the match.
        assert!(d.find(&[("quota", "q")]).unwrap().0.quota);
        assert!(!d.find(&[("ip", "q")]).unwrap().0.quota);
        // An override: the request's entries.
        let (m, _) = d
            .find_override(&[("a", "1"), ("b", "")], super::Unit::Hour, 3)
            .unwrap();
        assert_eq!(m.stat_key, "st.a_1.b");
    }
}
