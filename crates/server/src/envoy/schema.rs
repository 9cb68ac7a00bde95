//! The Envoy descriptor schema as written: a `domains:` entry of the
//! tollgate configuration, or the whole of an envoyproxy/ratelimit file
//! (envoyproxy/ratelimit's schema plus `policy` and `algorithm`), and its
//! validation into the [`Descriptor`] trees that [`Domain`](super::Domain)
//! compiles. Each mapping is [`Checked`], so an error carries its location.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use tollgate::Algorithm;

use super::metadata::Metadata;
use super::{Descriptor, Limit, Rule, Unit, check_siblings};
use crate::config::parse::{self, AlgorithmName, Checked, Validate};

/// One domain: its name and descriptors (also the whole of an
/// envoyproxy/ratelimit file).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDomain {
    domain: String,
    #[serde(default, deserialize_with = "null_is_empty")]
    descriptors: Vec<Checked<RawDescriptor>>,
    // Keys of the schema that mean nothing here (see `parse::misplaced`).
    #[serde(default)]
    key: Misplaced,
    #[serde(default)]
    value: Misplaced,
    #[serde(default)]
    rate_limit: Misplaced,
    #[serde(default)]
    unit: Misplaced,
    #[serde(default)]
    requests_per_unit: Misplaced,
    #[serde(default)]
    unlimited: Misplaced,
    #[serde(default)]
    name: Misplaced,
    #[serde(default)]
    replaces: Misplaced,
    #[serde(default)]
    shadow_mode: Misplaced,
    #[serde(default)]
    quota_mode: Misplaced,
    #[serde(default)]
    detailed_metric: Misplaced,
    #[serde(default)]
    value_to_metric: Misplaced,
    #[serde(default)]
    share_threshold: Misplaced,
    #[serde(default)]
    metadata: MisplacedMetadata,
}

/// A list left empty (`descriptors:` with nothing after it) is an empty
/// list, as envoyproxy/ratelimit reads it.
fn null_is_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Vec<T>>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Every value of an envoyproxy/ratelimit file, checked as that service
/// checks them before it reads the file: each leaf outside `metadata` is a
/// string, an integer, a boolean or empty. A floating-point number
/// (`value: 1.5`, `1e3`) or an integer beyond 64-bit signed range is refused
/// there, so it is here, at its line; quoted, it is text. Deserialized
/// from the file on its own, before the schema.
pub(crate) struct Leaves;

impl<'de> Deserialize<'de> for Leaves {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LeafVisitor;

        impl<'de> Visitor<'de> for LeafVisitor {
            type Value = Leaves;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer, a boolean, a list or a mapping")
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Leaves, E> {
                Ok(Leaves)
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Leaves, E> {
                Ok(Leaves)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Leaves, E> {
                if i64::try_from(value).is_ok() {
                    Ok(Leaves)
                } else {
                    Err(E::custom(format!(
                        "{value} is beyond a 64-bit signed integer, which envoyproxy/ratelimit refuses (quote it to make it text)"
                    )))
                }
            }

            fn visit_i128<E: de::Error>(self, value: i128) -> Result<Leaves, E> {
                Err(E::custom(format!(
                    "{value} is beyond a 64-bit signed integer, which envoyproxy/ratelimit refuses (quote it to make it text)"
                )))
            }

            fn visit_u128<E: de::Error>(self, value: u128) -> Result<Leaves, E> {
                self.visit_i128(i128::try_from(value).unwrap_or(i128::MAX))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Leaves, E> {
                Err(E::custom(format!(
                    "a floating-point number ({value}), which envoyproxy/ratelimit refuses outside `metadata` (quote it to make it text)"
                )))
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<Leaves, E> {
                Ok(Leaves)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Leaves, E> {
                Ok(Leaves)
            }

            fn visit_none<E: de::Error>(self) -> Result<Leaves, E> {
                Ok(Leaves)
            }

            fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Leaves, D::Error> {
                Leaves::deserialize(inner)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Leaves, A::Error> {
                while seq.next_element::<Leaves>()?.is_some() {}
                Ok(Leaves)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Leaves, A::Error> {
                while let Some(Key(name)) = map.next_key::<Key>()? {
                    // envoyproxy/ratelimit does not look inside `metadata`.
                    if name == "metadata" {
                        map.next_value::<de::IgnoredAny>()?;
                    } else {
                        map.next_value::<Leaves>()?;
                    }
                }
                Ok(Leaves)
            }
        }

        deserializer.deserialize_any(LeafVisitor)
    }
}

/// A mapping key of an envoyproxy/ratelimit file: a string (a number, a
/// boolean or an empty key is refused there).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key that is a string (envoyproxy/ratelimit refuses others)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Key, E> {
                Ok(Key(text.to_owned()))
            }
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}

/// The keys envoyproxy/ratelimit's schema knows, wherever they are written.
const SCHEMA_KEYS: [&str; 16] = [
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];

/// A key of envoyproxy/ratelimit's schema written where it has no meaning
/// (`unit:` on a descriptor): present or not. Its value means nothing
/// either, but is checked as envoyproxy/ratelimit checks every value before
/// it reads a file ([`Unread`]), so that what it refuses is refused here.
#[derive(Debug, Default, Clone, Copy)]
struct Misplaced(bool);

impl<'de> Deserialize<'de> for Misplaced {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Unread::deserialize(deserializer).map(|_| Misplaced(true))
    }
}

/// `metadata` written where it has no meaning (on a domain, inside
/// `rate_limit` or a `replaces` entry): as [`Misplaced`], but its value is
/// not checked, as envoyproxy/ratelimit looks into no `metadata`.
#[derive(Debug, Default, Clone, Copy)]
struct MisplacedMetadata(bool);

impl<'de> Deserialize<'de> for MisplacedMetadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(deserializer).map(|_| MisplacedMetadata(true))
    }
}

impl From<MisplacedMetadata> for Misplaced {
    fn from(metadata: MisplacedMetadata) -> Misplaced {
        Misplaced(metadata.0)
    }
}

/// A value the schema does not read, held to envoyproxy/ratelimit's check
/// of a file's keys: every list holds mappings only, every mapping's keys
/// are keys of the schema ([`SCHEMA_KEYS`]), and `metadata` is not looked
/// into. (Its leaves are checked by [`Leaves`], as everywhere.)
struct Unread;

impl<'de> Deserialize<'de> for Unread {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnreadVisitor { mapping: false })
    }
}

/// An element of a list under [`Unread`]: a mapping.
struct UnreadMapping;

impl<'de> Deserialize<'de> for UnreadMapping {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UnreadVisitor { mapping: true })
            .map(|Unread| UnreadMapping)
    }
}

struct UnreadVisitor {
    /// Only a mapping will do (an element of a list).
    mapping: bool,
}

impl UnreadVisitor {
    fn leaf<E: de::Error>(&self, what: &str) -> Result<Unread, E> {
        if self.mapping {
            Err(E::custom(format!(
                "a list holding {what}: envoyproxy/ratelimit refuses a list of anything but mappings"
            )))
        } else {
            Ok(Unread)
        }
    }
}

impl<'de> Visitor<'de> for UnreadVisitor {
    type Value = Unread;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.mapping {
            "a mapping"
        } else {
            "a value of the schema"
        })
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Unread, E> {
        self.leaf("a boolean")
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Unread, E> {
        self.leaf("a number")
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Unread, E> {
        self.leaf("a number")
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Unread, E> {
        self.leaf("a number")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Unread, E> {
        self.leaf("text")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Unread, E> {
        self.leaf("an empty element")
    }

    fn visit_none<E: de::Error>(self) -> Result<Unread, E> {
        self.leaf("an empty element")
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Unread, D::Error> {
        inner.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unread, A::Error> {
        if self.mapping {
            return Err(de::Error::custom(
                "a list holding a list: envoyproxy/ratelimit refuses a list of anything but mappings",
            ));
        }
        while seq.next_element::<UnreadMapping>()?.is_some() {}
        Ok(Unread)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Unread, A::Error> {
        while let Some(Key(name)) = map.next_key::<Key>()? {
            if !SCHEMA_KEYS.contains(&name.as_str()) {
                return Err(de::Error::custom(format!(
                    "unknown key `{name}` (envoyproxy/ratelimit refuses a key it does not know, wherever it is written)"
                )));
            }
            if name == "metadata" {
                map.next_value::<de::IgnoredAny>()?;
            } else {
                map.next_value::<Unread>()?;
            }
        }
        Ok(Unread)
    }
}

/// The names of the `fields` that are present.
fn present<'a>(fields: &[(&'a str, Misplaced)]) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(_, m)| m.0)
        .map(|(name, _)| *name)
        .collect()
}

/// A flag as envoyproxy/ratelimit's YAML 1.1 parser reads it: `true` and
/// `false`, also `yes`/`no`, `on`/`off` and `y`/`n` (in lower, title or
/// upper case); left empty, `false`.
#[derive(Debug, Default, Clone, Copy)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;

        impl Visitor<'_> for FlagVisitor {
            type Value = Flag;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean")
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Flag, E> {
                Ok(Flag(value))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Flag, E> {
                match text {
                    "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True"
                    | "TRUE" => Ok(Flag(true)),
                    "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False"
                    | "FALSE" => Ok(Flag(false)),
                    _ => Err(E::invalid_type(de::Unexpected::Str(text), &self)),
                }
            }
        }

        deserializer.deserialize_any(FlagVisitor)
    }
}

/// A validated domain, before it is compiled into a
/// [`Domain`](super::Domain).
pub(crate) struct DomainSpec {
    /// The domain's name.
    pub(crate) domain: String,
    /// Its top-level descriptors.
    pub(crate) descriptors: Vec<Descriptor>,
}

impl Validate for RawDomain {
    type Output = DomainSpec;

    fn validate(self) -> Result<DomainSpec, String> {
        if self.domain.is_empty() {
            return Err("domain must not be empty".into());
        }
        parse::misplaced(
            &format!("domain `{}`", self.domain),
            &present(&[
                ("key", self.key),
                ("value", self.value),
                ("rate_limit", self.rate_limit),
                ("unit", self.unit),
                ("requests_per_unit", self.requests_per_unit),
                ("unlimited", self.unlimited),
                ("name", self.name),
                ("replaces", self.replaces),
                ("shadow_mode", self.shadow_mode),
                ("quota_mode", self.quota_mode),
                ("detailed_metric", self.detailed_metric),
                ("value_to_metric", self.value_to_metric),
                ("share_threshold", self.share_threshold),
                ("metadata", self.metadata.into()),
            ]),
        )?;
        let descriptors: Vec<Descriptor> = self.descriptors.into_iter().map(|d| d.0).collect();
        check_siblings(descriptors.iter())?;
        if !parse::first_domain_definition(&self.domain) {
            return Err(format!("domain `{}` is defined twice", self.domain));
        }
        Ok(DomainSpec {
            domain: self.domain,
            descriptors,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: Option<String>,
    /// 0 when left out, as envoyproxy/ratelimit reads it (always over the
    /// limit).
    requests_per_unit: Option<u32>,
    #[serde(default)]
    unlimited: Flag,
    name: Option<String>,
    #[serde(default, deserialize_with = "null_is_empty")]
    replaces: Vec<RawReplace>,
    // Keys of the schema that mean nothing here (see `parse::misplaced`).
    #[serde(default)]
    domain: Misplaced,
    #[serde(default)]
    key: Misplaced,
    #[serde(default)]
    value: Misplaced,
    #[serde(default)]
    descriptors: Misplaced,
    #[serde(default)]
    rate_limit: Misplaced,
    #[serde(default)]
    shadow_mode: Misplaced,
    #[serde(default)]
    quota_mode: Misplaced,
    #[serde(default)]
    detailed_metric: Misplaced,
    #[serde(default)]
    value_to_metric: Misplaced,
    #[serde(default)]
    share_threshold: Misplaced,
    #[serde(default)]
    metadata: MisplacedMetadata,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: String,
    // Keys of the schema that mean nothing here (see `parse::misplaced`).
    #[serde(default)]
    domain: Misplaced,
    #[serde(default)]
    key: Misplaced,
    #[serde(default)]
    value: Misplaced,
    #[serde(default)]
    descriptors: Misplaced,
    #[serde(default)]
    rate_limit: Misplaced,
    #[serde(default)]
    unit: Misplaced,
    #[serde(default)]
    requests_per_unit: Misplaced,
    #[serde(default)]
    unlimited: Misplaced,
    #[serde(default)]
    replaces: Misplaced,
    #[serde(default)]
    shadow_mode: Misplaced,
    #[serde(default)]
    quota_mode: Misplaced,
    #[serde(default)]
    detailed_metric: Misplaced,
    #[serde(default)]
    value_to_metric: Misplaced,
    #[serde(default)]
    share_threshold: Misplaced,
    #[serde(default)]
    metadata: MisplacedMetadata,
}

/// One descriptor entry as written (envoyproxy/ratelimit's schema plus
/// `policy` and `algorithm`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: String,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default, deserialize_with = "null_is_empty")]
    descriptors: Vec<Checked<RawDescriptor>>,
    #[serde(default)]
    shadow_mode: Flag,
    #[serde(default)]
    quota_mode: Flag,
    #[serde(default)]
    detailed_metric: Flag,
    #[serde(default)]
    value_to_metric: Flag,
    #[serde(default)]
    share_threshold: Flag,
    /// tollgate: the limit is charged after the fact (Envoy's
    /// `apply_on_stream_done`), see [`Descriptor::settle`].
    #[serde(default)]
    settle: Flag,
    /// Sent in a response's dynamic metadata when the descriptor's limit
    /// passes, with `envoy.response_dynamic_metadata` (envoyproxy/ratelimit's
    /// `RESPONSE_DYNAMIC_METADATA`); see [`super::metadata`].
    #[serde(default)]
    metadata: Option<serde_norway::Mapping>,
    policy: Option<String>,
    algorithm: Option<AlgorithmName>,
    // Keys of the schema that mean nothing here (see `parse::misplaced`).
    #[serde(default)]
    domain: Misplaced,
    #[serde(default)]
    unit: Misplaced,
    #[serde(default)]
    requests_per_unit: Misplaced,
    #[serde(default)]
    unlimited: Misplaced,
    #[serde(default)]
    name: Misplaced,
    #[serde(default)]
    replaces: Misplaced,
}

impl Validate for RawDescriptor {
    type Output = Descriptor;

    fn validate(self) -> Result<Descriptor, String> {
        if self.key.is_empty() {
            return Err("descriptor `key` must not be empty".into());
        }
        let children: Vec<Descriptor> = self.descriptors.into_iter().map(|d| d.0).collect();
        check_siblings(children.iter())?;
        // An empty value is no value, as envoyproxy/ratelimit reads it.
        let value = self.value.filter(|v| !v.is_empty());
        let what = match &value {
            Some(v) => format!("descriptor `{}={v}`", self.key),
            None => format!("descriptor `{}`", self.key),
        };
        parse::misplaced(
            &what,
            &present(&[
                ("domain", self.domain),
                ("unit", self.unit),
                ("requests_per_unit", self.requests_per_unit),
                ("unlimited", self.unlimited),
                ("name", self.name),
                ("replaces", self.replaces),
            ]),
        )?;
        let metadata = match &self.metadata {
            Some(mapping) => Metadata::from_yaml(mapping)
                .map_err(|e| format!("{what}: {e}"))?
                .map(Arc::new),
            None => None,
        };
        if self.share_threshold.0 && !value.as_deref().is_some_and(|v| v.contains('*')) {
            return Err(format!(
                "{what}: share_threshold needs a wildcard value (one containing `*`)"
            ));
        }
        let algorithm = self.algorithm.map(|a| a.0);
        let rule = match (self.rate_limit, self.policy) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{what}: give either `rate_limit` or `policy`, not both"
                ));
            }
            (None, None) => {
                if algorithm.is_some() {
                    return Err(format!("{what}: `algorithm` needs a `rate_limit`"));
                }
                None
            }
            (None, Some(policy)) => Some(named_rule(&what, policy, algorithm)?),
            (Some(rate), None) => Some(rate.rule(&what, algorithm)?),
        };
        if self.settle.0 {
            settle_rule(&what, rule.as_ref())?;
        }
        if metadata.is_some()
            && matches!(
                rule.as_ref().map(|r| &r.limit),
                None | Some(Limit::Unlimited)
            )
        {
            // envoyproxy/ratelimit attaches it to the limit it found, and
            // sets unlimited ones aside.
            parse::warn(format!(
                "{what}: `metadata` is never sent: only a descriptor with a limit \
                 (`rate_limit` that is not `unlimited`, or `policy`) sends its metadata"
            ));
        }
        Ok(Descriptor {
            key: self.key,
            value,
            rule,
            children,
            shadow_mode: self.shadow_mode.0,
            quota_mode: self.quota_mode.0,
            share_threshold: self.share_threshold.0,
            detailed_metric: self.detailed_metric.0,
            value_to_metric: self.value_to_metric.0,
            settle: self.settle.0,
            metadata,
        })
    }
}

/// Whether a descriptor with `settle: true` has a limit to charge after the
/// fact: a `rate_limit` (not `unlimited`) or a `policy`, of an algorithm
/// that can be reserved (a named policy's is checked where the domain is
/// built, knowing its algorithm).
fn settle_rule(what: &str, rule: Option<&Rule>) -> Result<(), String> {
    match rule.map(|r| &r.limit) {
        None | Some(Limit::Unlimited) => Err(format!(
            "{what}: `settle: true` needs a limit to charge (a `rate_limit` that is not `unlimited`, or a `policy`)"
        )),
        Some(Limit::Inline { policy, .. })
            if !tollgate::algorithm::can_reserve(policy.algorithm()) =>
        {
            Err(format!(
                "{what}: `settle: true`: {}",
                tollgate::PolicyError::ReserveNotSupported(policy.algorithm())
            ))
        }
        Some(_) => Ok(()),
    }
}

/// The rule of a descriptor that names a policy; `what` names the
/// descriptor in messages.
fn named_rule(what: &str, policy: String, algorithm: Option<Algorithm>) -> Result<Rule, String> {
    if algorithm.is_some() {
        return Err(format!(
            "{what}: `algorithm` applies to `rate_limit`; policy `{policy}` has its own"
        ));
    }
    if !parse::policy_known(&policy) {
        return Err(format!("{what}: unknown policy `{policy}`"));
    }
    Ok(Rule {
        name: None,
        replaces: Vec::new(),
        limit: Limit::Named(policy),
    })
}

impl RawRateLimit {
    /// The rule of a descriptor with this inline `rate_limit` and
    /// `algorithm`; `what` names the descriptor in messages.
    fn rule(self, what: &str, algorithm: Option<Algorithm>) -> Result<Rule, String> {
        parse::misplaced(
            &format!("{what}: rate_limit"),
            &present(&[
                ("domain", self.domain),
                ("key", self.key),
                ("value", self.value),
                ("descriptors", self.descriptors),
                ("rate_limit", self.rate_limit),
                ("shadow_mode", self.shadow_mode),
                ("quota_mode", self.quota_mode),
                ("detailed_metric", self.detailed_metric),
                ("value_to_metric", self.value_to_metric),
                ("share_threshold", self.share_threshold),
                ("metadata", self.metadata.into()),
            ]),
        )?;
        for replace in &self.replaces {
            parse::misplaced(
                &format!("{what}: replaces"),
                &present(&[
                    ("domain", replace.domain),
                    ("key", replace.key),
                    ("value", replace.value),
                    ("descriptors", replace.descriptors),
                    ("rate_limit", replace.rate_limit),
                    ("unit", replace.unit),
                    ("requests_per_unit", replace.requests_per_unit),
                    ("unlimited", replace.unlimited),
                    ("replaces", replace.replaces),
                    ("shadow_mode", replace.shadow_mode),
                    ("quota_mode", replace.quota_mode),
                    ("detailed_metric", replace.detailed_metric),
                    ("value_to_metric", replace.value_to_metric),
                    ("share_threshold", replace.share_threshold),
                    ("metadata", replace.metadata.into()),
                ]),
            )?;
        }
        let replaces = self
            .replaces
            .into_iter()
            .map(|r| r.name)
            .collect::<Vec<_>>();
        if replaces.iter().any(String::is_empty) {
            return Err(format!("{what}: `replaces` entries need a `name`"));
        }
        // envoyproxy/ratelimit reads an empty name as no name.
        let name = self.name.filter(|n| !n.is_empty());
        if let Some(name) = &name {
            if replaces.contains(name) {
                return Err(format!(
                    "{what}: rate_limit `{name}` names itself in `replaces`"
                ));
            }
        }
        let limit = if self.unlimited.0 {
            // As envoyproxy/ratelimit: a valid unit is refused, anything
            // else beside `unlimited` is ignored.
            if self.unit.as_deref().and_then(Unit::parse).is_some() {
                return Err(format!("{what}: an `unlimited` rate_limit takes no unit"));
            }
            if algorithm.is_some() {
                return Err(format!(
                    "{what}: an `unlimited` rate_limit has no algorithm"
                ));
            }
            Limit::Unlimited
        } else {
            let unit = self
                .unit
                .ok_or_else(|| format!("{what}: rate_limit needs a `unit`"))?;
            let unit = Unit::parse(&unit).ok_or_else(|| {
                format!(
                    "{what}: unknown unit `{unit}` (expected second, minute, hour, day, week, month or year)"
                )
            })?;
            let requests = self.requests_per_unit.unwrap_or(0);
            let algorithm = algorithm.unwrap_or(Algorithm::FixedWindow);
            Limit::rate(unit, requests, algorithm).map_err(|e| format!("{what}: {e}"))?
        };
        Ok(Rule {
            name,
            replaces,
            limit,
        })
    }
}
