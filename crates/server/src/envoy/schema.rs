//! The Envoy descriptor schema as written: a `domains:` entry of the
//! tollgate configuration, or the whole of an envoyproxy/ratelimit file
//! (envoyproxy/ratelimit's schema plus `policy` and `algorithm`), and its
//! validation into the [`Descriptor`] trees that [`Domain`](super::Domain)
//! compiles. Each mapping is [`Checked`], so an error carries its location.

use serde::Deserialize;
use tollgate::Algorithm;

use super::{Descriptor, Limit, Rule, Unit, check_siblings};
use crate::config::parse::{self, AlgorithmName, Checked, Validate};

/// One domain: its name and descriptors (also the whole of an
/// envoyproxy/ratelimit file).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDomain {
    domain: String,
    #[serde(default)]
    descriptors: Vec<Checked<RawDescriptor>>,
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
    requests_per_unit: Option<u32>,
    #[serde(default)]
    unlimited: bool,
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<RawReplace>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: String,
}

/// One descriptor entry as written (envoyproxy/ratelimit's schema plus
/// `policy` and `algorithm`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: String,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    descriptors: Vec<Checked<RawDescriptor>>,
    #[serde(default)]
    shadow_mode: bool,
    /// Accepted for compatibility; tollgate's metrics are per policy.
    #[serde(default)]
    #[allow(dead_code)]
    detailed_metric: bool,
    /// Accepted for compatibility; tollgate's metrics are per policy.
    #[serde(default)]
    #[allow(dead_code)]
    value_to_metric: bool,
    #[serde(default)]
    share_threshold: bool,
    policy: Option<String>,
    algorithm: Option<AlgorithmName>,
}

impl Validate for RawDescriptor {
    type Output = Descriptor;

    fn validate(self) -> Result<Descriptor, String> {
        if self.key.is_empty() {
            return Err("descriptor `key` must not be empty".into());
        }
        let children: Vec<Descriptor> = self.descriptors.into_iter().map(|d| d.0).collect();
        check_siblings(children.iter())?;
        let what = match &self.value {
            Some(v) => format!("descriptor `{}={v}`", self.key),
            None => format!("descriptor `{}`", self.key),
        };
        if self.share_threshold && !self.value.as_deref().is_some_and(|v| v.ends_with('*')) {
            return Err(format!(
                "{what}: share_threshold needs a wildcard value ending in `*`"
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
        Ok(Descriptor {
            key: self.key,
            value: self.value,
            rule,
            children,
            shadow_mode: self.shadow_mode,
            share_threshold: self.share_threshold,
        })
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
        let replaces = self
            .replaces
            .into_iter()
            .map(|r| r.name)
            .collect::<Vec<_>>();
        if replaces.iter().any(String::is_empty) {
            return Err(format!("{what}: `replaces` entries need a `name`"));
        }
        if self.name.as_deref().is_some_and(str::is_empty) {
            return Err(format!("{what}: rate_limit `name` must not be empty"));
        }
        let limit = if self.unlimited {
            if self.unit.is_some() || self.requests_per_unit.is_some() {
                return Err(format!(
                    "{what}: an `unlimited` rate_limit takes no unit or requests_per_unit"
                ));
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
            let requests = self
                .requests_per_unit
                .ok_or_else(|| format!("{what}: rate_limit needs `requests_per_unit`"))?;
            let algorithm = algorithm.unwrap_or(Algorithm::FixedWindow);
            Limit::rate(unit, requests, algorithm).map_err(|e| format!("{what}: {e}"))?
        };
        Ok(Rule {
            name: self.name,
            replaces,
            limit,
        })
    }
}
