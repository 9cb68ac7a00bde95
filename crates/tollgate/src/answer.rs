//! The answer of one check, written once for every adapter.
//!
//! A check yields one [`Decision`] per policy; what a client is told is
//! derived from them by rules that must not differ between the tower layer,
//! the HTTP API and the gRPC services. This module is those rules, pure (no
//! I/O, no clock): [`Answer::new`] turns the decisions of one check into
//!
//! - a [`Verdict`]: allow, delay (a `leaky_bucket` admitted the request
//!   with a wait) or deny;
//! - the deciding policy ([`Answer::deciding`]);
//! - [`Answer::retry_after`], [`Answer::delay`], [`Answer::degraded`];
//! - the values of the header fields adapters send:
//!   [`policy_field`] and [`Answer::ratelimit_field`] for the IETF
//!   `RateLimit-Policy` and `RateLimit` fields
//!   (draft-ietf-httpapi-ratelimit-headers-10), [`Answer::legacy_fields`]
//!   for `X-RateLimit-*` and [`Answer::retry_after_seconds`] for
//!   `Retry-After`;
//!
//! and holds the helpers every adapter rounds with ([`ceil_seconds`],
//! [`ceil_millis`]) and the names of the fields ([`RATELIMIT_POLICY`],
//! [`RATELIMIT`], [`TOLLGATE_DEGRADED`], ...). Adapters only translate an
//! [`Answer`] into their protocol.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::answer::{Answer, PolicyDecision, Verdict};
//! use tollgate::{Decision, Policy};
//!
//! let per_second: Policy = "10/s".parse().unwrap();
//! let per_hour: Policy = "1000/1h".parse().unwrap();
//! let denied = Decision {
//!     allowed: false,
//!     limit: 10,
//!     remaining: 0,
//!     reset_after: Duration::from_millis(400),
//!     retry_after: Some(Duration::from_millis(100)),
//!     delay: Duration::ZERO,
//!     degraded: false,
//! };
//! let allowed = Decision {
//!     allowed: true,
//!     remaining: 975,
//!     limit: 1000,
//!     reset_after: Duration::from_secs(90),
//!     retry_after: None,
//!     ..denied
//! };
//! let decisions = [
//!     PolicyDecision::new("per_second", &per_second, denied),
//!     PolicyDecision::new("per_hour", &per_hour, allowed),
//! ];
//! let answer = Answer::new(&decisions);
//! assert_eq!(answer.verdict(), Verdict::Deny);
//! assert_eq!(answer.deciding().map(|d| d.name), Some("per_second"));
//! assert_eq!(answer.retry_after(), Some(Duration::from_millis(100)));
//! assert_eq!(answer.retry_after_seconds(), Some(1));
//! assert_eq!(
//!     answer.ratelimit_field(),
//!     r#""per_second";r=0;t=1, "per_hour";r=975;t=90"#
//! );
//! ```

use std::cmp::Reverse;
use std::time::Duration;

use crate::{Decision, Policy};

/// The `RateLimit-Policy` header field's name (lower case, as HTTP/2 sends
/// it).
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// The `RateLimit` header field's name.
pub const RATELIMIT: &str = "ratelimit";
/// The legacy `X-RateLimit-Limit` header field's name.
pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
/// The legacy `X-RateLimit-Remaining` header field's name.
pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
/// The legacy `X-RateLimit-Reset` header field's name (seconds until
/// reset, not a timestamp).
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";
/// The header field (value `true`) adapters add when some decision was made
/// without the shared store ([`Answer::degraded`]).
pub const TOLLGATE_DEGRADED: &str = "tollgate-degraded";

/// One policy's decision in a check: the policy's name, the policy, and
/// what it decided.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PolicyDecision<'a> {
    /// The policy's name.
    pub name: &'a str,
    /// The policy.
    pub policy: &'a Policy,
    /// Its decision.
    pub decision: Decision,
}

impl<'a> PolicyDecision<'a> {
    /// The decision of the policy `name`.
    pub const fn new(name: &'a str, policy: &'a Policy, decision: Decision) -> Self {
        PolicyDecision {
            name,
            policy,
            decision,
        }
    }
}

/// What a check says to do with the request.
///
/// Exhaustive on purpose: a new kind of verdict must stop every adapter
/// from compiling until it says what to do with it, not fall into a
/// wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every policy allowed it, with no wait: forward it.
    Allow,
    /// Every policy allowed it and a `leaky_bucket` asks for a wait
    /// ([`Answer::delay`]) before it proceeds.
    Delay,
    /// Some policy denied it (or its wait is longer than the adapter
    /// accepts, see [`Answer::within_max_delay`]).
    Deny,
}

/// The legacy `X-RateLimit-*` values: one policy's, see
/// [`Answer::legacy_fields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LegacyFields {
    /// `X-RateLimit-Limit`: the policy's limit ([`Policy::limit`]).
    pub limit: u64,
    /// `X-RateLimit-Remaining`: the decision's `remaining`.
    pub remaining: u64,
    /// `X-RateLimit-Reset`: the decision's `reset_after` in whole seconds,
    /// rounded up.
    pub reset: u64,
}

/// The answer of one check: its decisions, and what follows from them.
///
/// Built with [`Answer::new`]; an adapter that enforces a maximum wait
/// passes it through [`within_max_delay`](Self::within_max_delay), one that
/// only observes (shadow mode) through [`shadowed`](Self::shadowed).
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    decisions: &'a [PolicyDecision<'a>],
    verdict: Verdict,
    /// Index of the deciding policy; `None` only without decisions.
    deciding: Option<usize>,
    /// Index of the most constrained policy (see [`most_constrained`]).
    constrained: Option<usize>,
    retry_after: Option<Duration>,
    delay: Duration,
    degraded: bool,
    queued_too_long: bool,
}

impl<'a> Answer<'a> {
    /// The answer of a check that decided `decisions`, one per policy, in
    /// the order the policies were named.
    ///
    /// - A denial makes the verdict [`Verdict::Deny`]; the deciding policy
    ///   is the denying one named by [`denying`], and `retry_after` is its
    ///   own (`None` when it can never pass).
    /// - Otherwise the longest `delay` ([`delaying`]), if not zero, makes
    ///   it [`Verdict::Delay`], decided by that policy.
    /// - Otherwise [`Verdict::Allow`], decided by the most constrained
    ///   policy ([`most_constrained`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::answer::{Answer, PolicyDecision, Verdict};
    /// use tollgate::{Decision, Policy};
    ///
    /// let shape: Policy = "leaky_bucket 10/s burst 5".parse().unwrap();
    /// let queued = Decision {
    ///     allowed: true,
    ///     limit: 5,
    ///     remaining: 2,
    ///     reset_after: Duration::from_millis(300),
    ///     retry_after: None,
    ///     delay: Duration::from_millis(200),
    ///     degraded: false,
    /// };
    /// let decisions = [PolicyDecision::new("shape", &shape, queued)];
    /// let answer = Answer::new(&decisions);
    /// assert_eq!(answer.verdict(), Verdict::Delay);
    /// assert_eq!(answer.delay(), Duration::from_millis(200));
    /// assert_eq!(answer.retry_after(), None);
    /// assert!(!answer.degraded());
    /// ```
    pub fn new(decisions: &'a [PolicyDecision<'a>]) -> Self {
        let all = || decisions.iter().map(|d| &d.decision);
        let constrained = most_constrained(all());
        let mut answer = Answer {
            decisions,
            verdict: Verdict::Allow,
            deciding: constrained,
            constrained,
            retry_after: None,
            delay: Duration::ZERO,
            degraded: all().any(|d| d.degraded),
            queued_too_long: false,
        };
        if let Some(i) = denying(all()) {
            answer.verdict = Verdict::Deny;
            answer.deciding = Some(i);
            answer.retry_after = decisions[i].decision.retry_after;
        } else if let Some(i) = delaying(all()) {
            answer.verdict = Verdict::Delay;
            answer.deciding = Some(i);
            answer.delay = decisions[i].decision.delay;
        }
        answer
    }

    /// This answer for an adapter that waits at most `max`: a
    /// [`Verdict::Delay`] longer than `max` becomes a [`Verdict::Deny`]
    /// ([`queued_too_long`](Self::queued_too_long)) by the delaying policy.
    /// `Duration::ZERO` refuses every wait; other answers are unchanged.
    ///
    /// The store admitted that request, so its place in the queue is spent
    /// and a retry queues behind it: the retry waits no longer than `max`
    /// once the queue has drained `delay - max` plus the request's own
    /// `cost` units (`cost * period / limit`, rounded up to the
    /// microsecond). That is its `retry_after`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::answer::{Answer, PolicyDecision, Verdict};
    /// use tollgate::{Decision, Policy};
    ///
    /// let shape: Policy = "leaky_bucket 10/s burst 50".parse().unwrap();
    /// let queued = Decision {
    ///     allowed: true,
    ///     limit: 50,
    ///     remaining: 20,
    ///     reset_after: Duration::from_secs(3),
    ///     retry_after: None,
    ///     delay: Duration::from_millis(2_500),
    ///     degraded: false,
    /// };
    /// let decisions = [PolicyDecision::new("shape", &shape, queued)];
    /// let waits = Answer::new(&decisions).within_max_delay(Duration::from_secs(3), 1);
    /// assert_eq!(waits.verdict(), Verdict::Delay);
    ///
    /// let refused = Answer::new(&decisions).within_max_delay(Duration::from_secs(1), 1);
    /// assert_eq!(refused.verdict(), Verdict::Deny);
    /// assert!(refused.queued_too_long());
    /// assert_eq!(refused.delay(), Duration::ZERO);
    /// // 2.5 s - 1 s, plus one unit at 10/s.
    /// assert_eq!(refused.retry_after(), Some(Duration::from_millis(1_600)));
    /// ```
    #[must_use]
    pub fn within_max_delay(self, max: Duration, cost: u64) -> Self {
        let Some(i) = self.deciding.filter(|_| self.verdict == Verdict::Delay) else {
            return self;
        };
        if self.delay <= max {
            return self;
        }
        let policy = self.decisions[i].policy;
        let own_units_us = u128::from(cost) * u128::from(policy.period_us());
        let own_units_us = own_units_us.div_ceil(u128::from(policy.limit()));
        let own_units = Duration::from_micros(u64::try_from(own_units_us).unwrap_or(u64::MAX));
        Answer {
            verdict: Verdict::Deny,
            retry_after: Some(self.delay.saturating_sub(max).saturating_add(own_units)),
            delay: Duration::ZERO,
            queued_too_long: true,
            ..self
        }
    }

    /// This answer for an adapter in shadow mode, which decides and charges
    /// but never rejects nor delays: [`Verdict::Allow`], no wait, no
    /// `retry_after`, decided (and described in the legacy fields) by the
    /// most constrained policy. The decisions, and so the `RateLimit`
    /// field, are unchanged.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::answer::{Answer, PolicyDecision, Verdict};
    /// use tollgate::{Decision, Policy};
    ///
    /// let api: Policy = "2/1m".parse().unwrap();
    /// let denied = Decision {
    ///     allowed: false,
    ///     limit: 2,
    ///     remaining: 0,
    ///     reset_after: Duration::from_secs(60),
    ///     retry_after: Some(Duration::from_secs(30)),
    ///     delay: Duration::ZERO,
    ///     degraded: false,
    /// };
    /// let decisions = [PolicyDecision::new("api", &api, denied)];
    /// let shadow = Answer::new(&decisions).shadowed();
    /// assert_eq!(shadow.verdict(), Verdict::Allow);
    /// assert_eq!(shadow.retry_after(), None);
    /// assert_eq!(shadow.ratelimit_field(), r#""api";r=0;t=60"#);
    /// ```
    #[must_use]
    pub fn shadowed(self) -> Self {
        Answer {
            verdict: Verdict::Allow,
            deciding: self.constrained,
            retry_after: None,
            delay: Duration::ZERO,
            queued_too_long: false,
            ..self
        }
    }

    /// What to do with the request.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The policy that decided: for a denial the one [`denying`] names (or,
    /// when the wait was too long, the delaying one); for a delay the one
    /// with the longest wait; for an allow the most constrained. `None`
    /// only for a check of no policy.
    pub fn deciding(&self) -> Option<&'a PolicyDecision<'a>> {
        self.deciding.map(|i| &self.decisions[i])
    }

    /// For a denial, when the same request would pass if nothing else
    /// happens; `None` when it can never pass, and for an allow or a delay.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// For [`Verdict::Delay`], how long to wait before proceeding; zero
    /// otherwise.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Whether some decision was made without the shared store (see
    /// [`Decision::degraded`]).
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// Whether this denial is a `leaky_bucket` wait longer than the
    /// adapter's maximum (see [`within_max_delay`](Self::within_max_delay)).
    pub fn queued_too_long(&self) -> bool {
        self.queued_too_long
    }

    /// Every policy's decision, in the order the check named them.
    pub fn decisions(&self) -> &'a [PolicyDecision<'a>] {
        self.decisions
    }

    /// The `RateLimit` field value: one list member per policy, in order,
    /// `"<name>";r=<remaining>;t=<reset_after in whole seconds, rounded
    /// up>` (a client waiting `t` seconds is never early). Names are
    /// written by [`write_sf_string`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::answer::{Answer, PolicyDecision};
    /// use tollgate::{Decision, Policy};
    ///
    /// let api: Policy = "100/1m".parse().unwrap();
    /// let decision = Decision {
    ///     allowed: true,
    ///     limit: 100,
    ///     remaining: 42,
    ///     reset_after: Duration::from_millis(16_200),
    ///     retry_after: None,
    ///     delay: Duration::ZERO,
    ///     degraded: false,
    /// };
    /// let decisions = [PolicyDecision::new("api", &api, decision)];
    /// assert_eq!(Answer::new(&decisions).ratelimit_field(), r#""api";r=42;t=17"#);
    /// ```
    pub fn ratelimit_field(&self) -> String {
        // This runs for every decided request: the numbers are written by
        // hand (`write!` costs more than the rest of the field together),
        // and the value is allocated at its exact length, so that turning
        // it into a header value's bytes does not reallocate.
        let numbers =
            |d: &PolicyDecision<'_>| (d.decision.remaining, ceil_seconds(d.decision.reset_after));
        let len: usize = self
            .decisions
            .iter()
            .map(|d| {
                let (remaining, reset) = numbers(d);
                // `, ` before each member but the first; `;r=` and `;t=`.
                2 + sf_string_len(d.name) + 6 + decimal_len(remaining) + decimal_len(reset)
            })
            .sum();
        let mut value = String::with_capacity(len.saturating_sub(2));
        for (i, d) in self.decisions.iter().enumerate() {
            if i > 0 {
                value.push_str(", ");
            }
            let (remaining, reset) = numbers(d);
            write_sf_string(&mut value, d.name);
            value.push_str(";r=");
            value.push_str(Decimal::new(remaining).as_str());
            value.push_str(";t=");
            value.push_str(Decimal::new(reset).as_str());
        }
        value
    }

    /// The legacy `X-RateLimit-*` values, of one policy: for a denial the
    /// deciding one, otherwise (allow, delay, shadow) the most constrained
    /// ([`most_constrained`]). `None` only for a check of no policy.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::answer::{Answer, LegacyFields, PolicyDecision};
    /// use tollgate::{Decision, Policy};
    ///
    /// let api: Policy = "3/1m".parse().unwrap();
    /// let decision = Decision {
    ///     allowed: true,
    ///     limit: 3,
    ///     remaining: 2,
    ///     reset_after: Duration::from_millis(59_001),
    ///     retry_after: None,
    ///     delay: Duration::ZERO,
    ///     degraded: false,
    /// };
    /// let decisions = [PolicyDecision::new("api", &api, decision)];
    /// let legacy = Answer::new(&decisions).legacy_fields().unwrap();
    /// assert_eq!((legacy.limit, legacy.remaining, legacy.reset), (3, 2, 60));
    /// ```
    pub fn legacy_fields(&self) -> Option<LegacyFields> {
        let described = match self.verdict {
            Verdict::Deny => self.deciding,
            Verdict::Allow | Verdict::Delay => self.constrained,
        };
        let d = &self.decisions[described?];
        Some(LegacyFields {
            limit: d.policy.limit(),
            remaining: d.decision.remaining,
            reset: ceil_seconds(d.decision.reset_after),
        })
    }

    /// The `Retry-After` value: [`retry_after`](Self::retry_after) in whole
    /// seconds, rounded up (never `0` for a positive wait); `None` when
    /// there is nothing to wait for, or no wait helps.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.retry_after.map(ceil_seconds)
    }
}

/// The denial that decides a check: the one whose `retry_after` is latest,
/// "never" (`None`) counting as latest of all, and the last of equals in
/// the order named. `None` when nothing was denied.
///
/// ```
/// use std::time::Duration;
/// use tollgate::Decision;
/// use tollgate::answer::denying;
///
/// let denied = |retry_after| Decision {
///     allowed: false,
///     limit: 10,
///     remaining: 0,
///     reset_after: Duration::from_secs(1),
///     retry_after,
///     delay: Duration::ZERO,
///     degraded: false,
/// };
/// let allowed = Decision { allowed: true, remaining: 3, ..denied(None) };
/// let (soon, late) = (Some(Duration::from_secs(1)), Some(Duration::from_secs(9)));
/// assert_eq!(denying(&[allowed, allowed]), None);
/// assert_eq!(denying(&[denied(soon), allowed, denied(late)]), Some(2));
/// assert_eq!(denying(&[denied(None), denied(late)]), Some(0));
/// assert_eq!(denying(&[denied(late), denied(late)]), Some(1));
/// ```
pub fn denying<'d>(decisions: impl IntoIterator<Item = &'d Decision>) -> Option<usize> {
    decisions
        .into_iter()
        .enumerate()
        .filter(|(_, d)| !d.allowed)
        .max_by_key(|(_, d)| d.retry_after.unwrap_or(Duration::MAX))
        .map(|(i, _)| i)
}

/// When the whole check could pass: the [`denying`] decision's
/// `retry_after`, so the latest among the denials. `None` when nothing was
/// denied or some denial can never pass.
///
/// ```
/// use std::time::Duration;
/// use tollgate::Decision;
/// use tollgate::answer::retry_after;
///
/// let denied = |retry_after| Decision {
///     allowed: false,
///     limit: 10,
///     remaining: 0,
///     reset_after: Duration::from_secs(1),
///     retry_after,
///     delay: Duration::ZERO,
///     degraded: false,
/// };
/// let (soon, late) = (Some(Duration::from_secs(1)), Some(Duration::from_secs(9)));
/// assert_eq!(retry_after(&[denied(soon), denied(late)]), late);
/// assert_eq!(retry_after(&[denied(soon), denied(None)]), None);
/// assert_eq!(retry_after(&[]), None);
/// ```
pub fn retry_after<'d, I>(decisions: I) -> Option<Duration>
where
    I: IntoIterator<Item = &'d Decision>,
    I::IntoIter: Clone,
{
    let decisions = decisions.into_iter();
    let i = denying(decisions.clone())?;
    decisions.clone().nth(i)?.retry_after
}

/// The decision with the longest `delay`, the last of equals; `None` when
/// no decision asks for a wait.
///
/// ```
/// use std::time::Duration;
/// use tollgate::Decision;
/// use tollgate::answer::delaying;
///
/// let wait = |ms| Decision {
///     allowed: true,
///     limit: 5,
///     remaining: 1,
///     reset_after: Duration::from_secs(1),
///     retry_after: None,
///     delay: Duration::from_millis(ms),
///     degraded: false,
/// };
/// assert_eq!(delaying(&[wait(0), wait(0)]), None);
/// assert_eq!(delaying(&[wait(300), wait(100)]), Some(0));
/// assert_eq!(delaying(&[wait(300), wait(300)]), Some(1));
/// ```
pub fn delaying<'d>(decisions: impl IntoIterator<Item = &'d Decision>) -> Option<usize> {
    decisions
        .into_iter()
        .enumerate()
        .max_by_key(|(_, d)| d.delay)
        .filter(|(_, d)| !d.delay.is_zero())
        .map(|(i, _)| i)
}

/// The most constrained decision: the fewest `remaining`, then the longest
/// `reset_after`, then the first of equals. `None` without decisions.
///
/// ```
/// use std::time::Duration;
/// use tollgate::Decision;
/// use tollgate::answer::most_constrained;
///
/// let left = |remaining, reset_s| Decision {
///     allowed: true,
///     limit: 100,
///     remaining,
///     reset_after: Duration::from_secs(reset_s),
///     retry_after: None,
///     delay: Duration::ZERO,
///     degraded: false,
/// };
/// assert_eq!(most_constrained(&[left(9, 1), left(5, 60)]), Some(1));
/// assert_eq!(most_constrained(&[left(5, 1), left(5, 60)]), Some(1));
/// assert_eq!(most_constrained(&[left(5, 60), left(5, 60)]), Some(0));
/// assert_eq!(most_constrained(&[]), None);
/// ```
pub fn most_constrained<'d>(decisions: impl IntoIterator<Item = &'d Decision>) -> Option<usize> {
    decisions
        .into_iter()
        .enumerate()
        .min_by_key(|(_, d)| (d.remaining, Reverse(d.reset_after)))
        .map(|(i, _)| i)
}

/// The `RateLimit-Policy` field value of these policies: one list member
/// per policy, in order, `"<name>";q=<limit>;w=<period in whole seconds,
/// rounded up>`. Names are written by [`write_sf_string`]. It depends on
/// the policies only, so an adapter may write it once.
///
/// ```
/// use tollgate::Policy;
/// use tollgate::answer::policy_field;
///
/// let api: Policy = "100/1m".parse().unwrap();
/// let fast: Policy = "10/500ms".parse().unwrap();
/// assert_eq!(
///     policy_field([("api", &api), ("fast", &fast)]),
///     r#""api";q=100;w=60, "fast";q=10;w=1"#
/// );
/// ```
pub fn policy_field<'a>(policies: impl IntoIterator<Item = (&'a str, &'a Policy)>) -> String {
    let mut value = String::new();
    for (i, (name, policy)) in policies.into_iter().enumerate() {
        if i > 0 {
            value.push_str(", ");
        }
        write_sf_string(&mut value, name);
        // The server writes this field for every request (the layer only
        // once): numbers by hand, as in `ratelimit_field`.
        value.push_str(";q=");
        value.push_str(Decimal::new(policy.limit()).as_str());
        value.push_str(";w=");
        value.push_str(Decimal::new(ceil_seconds(policy.period())).as_str());
    }
    value
}

/// Writes `text` as a structured-field string (RFC 8941): in quotes, with
/// `"` and `\` escaped by a backslash, and every character outside
/// printable ASCII (`' '..='~'`) replaced by `?`, as a string may hold
/// nothing else. The output is therefore always a valid field value; a
/// name that [`is_sf_printable`] refuses is better refused where it is
/// configured than sent altered.
///
/// ```
/// use tollgate::answer::write_sf_string;
///
/// let mut out = String::new();
/// write_sf_string(&mut out, r#"a"b\c"#);
/// assert_eq!(out, r#""a\"b\\c""#);
/// out.clear();
/// write_sf_string(&mut out, "café\t");
/// assert_eq!(out, r#""caf??""#);
/// ```
pub fn write_sf_string(out: &mut String, text: &str) {
    out.push('"');
    if text
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        // Nothing to escape or replace (every policy name in practice).
        out.push_str(text);
        out.push('"');
        return;
    }
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// A number in decimal, as `format!("{n}")` writes it, on the stack.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Decimal {
        let mut digits = [b'0'; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            // A remainder below 10: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            let digit = (n % 10) as u8;
            digits[start] = b'0' + digit;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(&self.digits[self.start..]).unwrap_or("0")
    }
}

/// The number of digits of `n` in decimal.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// The length of what [`write_sf_string`] writes for `text`.
fn sf_string_len(text: &str) -> usize {
    2 + text
        .chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            _ => 1,
        })
        .sum::<usize>()
}

/// Whether [`write_sf_string`] writes `text` unaltered: it is printable
/// ASCII.
///
/// ```
/// use tollgate::answer::is_sf_printable;
///
/// assert!(is_sf_printable("api v2"));
/// assert!(!is_sf_printable("café"));
/// ```
pub fn is_sf_printable(text: &str) -> bool {
    text.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Whole seconds, rounded up: a client waiting that long is never early.
///
/// ```
/// use std::time::Duration;
/// use tollgate::answer::ceil_seconds;
///
/// assert_eq!(ceil_seconds(Duration::from_millis(16_001)), 17);
/// assert_eq!(ceil_seconds(Duration::from_secs(17)), 17);
/// ```
pub fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Whole milliseconds, rounded up (saturating at `u64::MAX`).
///
/// ```
/// use std::time::Duration;
/// use tollgate::answer::ceil_millis;
///
/// assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
/// assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
/// ```
pub fn ceil_millis(duration: Duration) -> u64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
