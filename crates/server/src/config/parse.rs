//! The machinery that validates a configuration where it is written: one
//! document's parse context (a thread-local, set only while
//! [`parse_document`] runs), [`Validate`] and [`Checked`], which run a
//! section's checks inside its mapping so the parser adds the location, and
//! scalars parsed in their own visitor (durations, algorithm and failure
//! mode names). Used by `raw` and by the Envoy descriptor schema.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::value::MapAccessDeserializer};
use tollgate::Algorithm;
use tollgate::policy::parse_duration;
use tollgate::resilience::FailureMode;

use super::{ConfigError, limits};
use crate::listen::ListenAddr;

thread_local! {
    /// What validation inside the parser needs to know beyond the mapping
    /// being read. Set only for the duration of one `parse_document`.
    static CONTEXT: RefCell<ParseContext> = RefCell::new(ParseContext::default());
}

#[derive(Default)]
struct ParseContext {
    /// The policy names descriptors may reference; `None`: not checked.
    known_policies: Option<HashSet<String>>,
    /// Names already defined in this document (duplicates are errors).
    seen_policies: HashSet<String>,
    /// Domains already defined in this document.
    seen_domains: HashSet<String>,
    /// An envoyproxy/ratelimit file: keys it knows but ignores where they
    /// are written are warned about, not refused (see [`misplaced`]).
    envoy_file: bool,
    /// Warnings to log once the document is parsed.
    warnings: Vec<String>,
}

pub(crate) fn parse_document<T: de::DeserializeOwned>(
    text: &str,
    file: &str,
    known_policies: Option<HashSet<String>>,
) -> Result<T, ConfigError> {
    parse_with(text, file, known_policies, false)
}

/// [`parse_document`] for an envoyproxy/ratelimit file: what that service
/// ignores is warned about (logged, naming the file), not refused, and
/// only the first YAML document is read, as it reads only that one.
pub(crate) fn parse_envoy_document<T: de::DeserializeOwned>(
    text: &str,
    file: &str,
    known_policies: Option<HashSet<String>>,
) -> Result<T, ConfigError> {
    parse_with(text, file, known_policies, true)
}

fn parse_with<T: de::DeserializeOwned>(
    text: &str,
    file: &str,
    known_policies: Option<HashSet<String>>,
    envoy_file: bool,
) -> Result<T, ConfigError> {
    // Before the parser, whose time grows with the square of the nesting,
    // and the deserializer, which copies an anchored node for each alias.
    limits::check_text(text, file)?;
    CONTEXT.with(|c| {
        *c.borrow_mut() = ParseContext {
            known_policies,
            envoy_file,
            ..ParseContext::default()
        }
    });
    // An empty document is an empty configuration, not an error.
    let result = if text.trim().is_empty() {
        serde_norway::from_str::<T>("{}")
    } else if envoy_file {
        // envoyproxy/ratelimit reads a file's first document only.
        match serde_norway::Deserializer::from_str(text).next() {
            Some(document) => T::deserialize(document),
            None => serde_norway::from_str::<T>("{}"),
        }
    } else {
        serde_norway::from_str::<T>(text)
    };
    let warnings = CONTEXT.with(|c| std::mem::take(&mut *c.borrow_mut()).warnings);
    if result.is_ok() {
        for warning in warnings {
            tracing::warn!(file, "{warning}");
        }
    }
    result.map_err(|e| ConfigError::from_yaml(file, &e))
}

/// A warning about the document being parsed, logged (naming the file)
/// once it has parsed.
pub(crate) fn warn(message: String) {
    CONTEXT.with(|c| c.borrow_mut().warnings.push(message));
}

/// Keys envoyproxy/ratelimit knows (it checks every key name against the
/// names of its schema, wherever written) but ignores where `present`
/// says they are written, in the entry `what`: in an envoyproxy/ratelimit
/// file a warning, as that service reads on without them; in tollgate's
/// own `domains:` an error, as every other unknown field there.
///
/// # Errors
/// The message, outside an envoyproxy/ratelimit file.
pub(crate) fn misplaced(what: &str, present: &[&str]) -> Result<(), String> {
    if present.is_empty() {
        return Ok(());
    }
    let message = format!(
        "{what}: {} has no meaning here (envoyproxy/ratelimit ignores it)",
        present
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    CONTEXT.with(|c| {
        let mut context = c.borrow_mut();
        if context.envoy_file {
            context.warnings.push(message);
            Ok(())
        } else {
            Err(message)
        }
    })
}

/// Records a policy defined in this document: `false` when it already was.
pub(crate) fn first_policy_definition(name: &str) -> bool {
    CONTEXT.with(|c| c.borrow_mut().seen_policies.insert(name.to_owned()))
}

/// Records a domain defined in this document: `false` when it already was.
pub(crate) fn first_domain_definition(name: &str) -> bool {
    CONTEXT.with(|c| c.borrow_mut().seen_domains.insert(name.to_owned()))
}

/// Whether a descriptor may reference the policy `name`: always, when this
/// parse does not check references.
pub(crate) fn policy_known(name: &str) -> bool {
    CONTEXT.with(|c| {
        c.borrow()
            .known_policies
            .as_ref()
            .is_none_or(|k| k.contains(name))
    })
}

/// A section validated as it is parsed, so its errors carry its location.
pub(crate) trait Validate: Sized {
    /// What the section becomes.
    type Output;
    /// Checks the section; the message is what is wrong, without location.
    fn validate(self) -> Result<Self::Output, String>;
}

/// A mapping deserialized as `R`, then validated into `R::Output` inside
/// the mapping's visitor, where the parser attaches the mapping's location
/// to an error.
pub(crate) struct Checked<R: Validate>(pub(crate) R::Output);

impl<'de, R> Deserialize<'de> for Checked<R>
where
    R: Validate + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CheckedVisitor<R>(PhantomData<R>);

        impl<'de, R: Validate + Deserialize<'de>> Visitor<'de> for CheckedVisitor<R> {
            type Value = Checked<R>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let raw = R::deserialize(MapAccessDeserializer::new(map))?;
                raw.validate().map(Checked).map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_map(CheckedVisitor(PhantomData))
    }
}

/// A duration written like `50ms` or `1m`.
pub(crate) struct DurationText(pub(crate) Duration);

/// A string parsed inside the scalar's visitor, so the parser marks an
/// error with the scalar's own line and column.
struct ParsedStr<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for ParsedStr<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParsedStr {
            expecting: "a duration such as `50ms`, `1s` or `1m`",
            parse: |text| parse_duration(text).map(DurationText),
        })
    }
}

/// A listen address: `IP:PORT` or `unix:PATH` ([`ListenAddr`]).
pub(crate) struct ListenText(pub(crate) ListenAddr);

impl<'de> Deserialize<'de> for ListenText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParsedStr {
            expecting: "an address: IP:PORT or unix:PATH",
            parse: |text| text.parse().map(ListenText),
        })
    }
}

/// An algorithm name.
pub(crate) struct AlgorithmName(pub(crate) Algorithm);

impl<'de> Deserialize<'de> for AlgorithmName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParsedStr {
            expecting: "an algorithm name",
            parse: |text| {
                text.parse()
                    .map(AlgorithmName)
                    .map_err(|e: tollgate::PolicyError| e.to_string())
            },
        })
    }
}

/// A failure mode as configuration writes it: `open`, `closed` or `local`,
/// by the library's own names ([`FailureMode::name`]). `error` is not
/// offered: the server always answers with a decision. The library has no
/// serde support (it does not depend on serde), hence this adapter.
pub(crate) struct FailureModeName(pub(crate) FailureMode);

impl FailureModeName {
    /// The modes configuration accepts.
    const MODES: [FailureMode; 3] = [FailureMode::Open, FailureMode::Closed, FailureMode::Local];
}

impl<'de> Deserialize<'de> for FailureModeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;

        impl Visitor<'_> for ModeVisitor {
            type Value = FailureModeName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`open`, `closed` or `local`")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<FailureModeName, E> {
                const NAMES: [&str; 3] = [
                    FailureModeName::MODES[0].name(),
                    FailureModeName::MODES[1].name(),
                    FailureModeName::MODES[2].name(),
                ];
                FailureModeName::MODES
                    .into_iter()
                    .find(|mode| mode.name() == text)
                    .map(FailureModeName)
                    .ok_or_else(|| E::unknown_variant(text, &NAMES))
            }
        }

        deserializer.deserialize_str(ModeVisitor)
    }
}
