//! The IETF `RateLimit-Policy` and `RateLimit` header fields
//! (draft-ietf-httpapi-ratelimit-headers-10), one list member per policy:
//!
//! ```text
//! RateLimit-Policy: "api";q=100;w=60
//! RateLimit: "api";r=42;t=17
//! ```
//!
//! `q` is the policy's limit, `w` its period in seconds rounded up, `r` the
//! remaining units and `t` the time until the state resets in seconds
//! rounded up (a client waiting `t` seconds is never early). The same
//! format as tollgate-tower's layer, which keeps its writer private.

use std::fmt::Write as _;
use std::time::Duration;

use tollgate::{Decision, Policy};

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// `RateLimit`.
pub const RATELIMIT: &str = "ratelimit";

/// Whole seconds, rounded up.
pub fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Writes `name` as a structured-field string: quotes and backslashes
/// escaped, anything outside printable ASCII replaced by `?`.
fn push_sf_string(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
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

/// The two header values for `(name, policy, decision)` triples, in order.
pub fn format<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a Policy, &'a Decision)>,
) -> (String, String) {
    let mut policy_field = String::new();
    let mut limit_field = String::new();
    for (name, policy, decision) in entries {
        if !policy_field.is_empty() {
            policy_field.push_str(", ");
            limit_field.push_str(", ");
        }
        push_sf_string(&mut policy_field, name);
        let _ = write!(
            policy_field,
            ";q={};w={}",
            policy.limit(),
            ceil_seconds(policy.period())
        );
        push_sf_string(&mut limit_field, name);
        let _ = write!(
            limit_field,
            ";r={};t={}",
            decision.remaining,
            ceil_seconds(decision.reset_after)
        );
    }
    (policy_field, limit_field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_draft_syntax() {
        let api: Policy = "sliding_log 100/1m".parse().unwrap();
        let burst: Policy = "gcra 10/1500ms".parse().unwrap();
        let d = |remaining, reset_ms| Decision {
            allowed: true,
            limit: 100,
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            retry_after: None,
            delay: Duration::ZERO,
            degraded: false,
        };
        let (a, b) = (d(42, 16_001), d(9, 0));
        let (policy, limit) = format([("api", &api, &a), ("b\"x", &burst, &b)]);
        assert_eq!(policy, r#""api";q=100;w=60, "b\"x";q=10;w=2"#);
        assert_eq!(limit, r#""api";r=42;t=17, "b\"x";r=9;t=0"#);
    }
}
