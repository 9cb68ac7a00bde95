//! Unit tests of every rule of [`Answer`](super::Answer).

use std::time::Duration;

use super::*;

fn policy(text: &str) -> Policy {
    text.parse().expect("policy")
}

const ALLOWED: Decision = Decision {
    allowed: true,
    limit: 10,
    remaining: 5,
    reset_after: Duration::from_secs(1),
    retry_after: None,
    delay: Duration::ZERO,
    degraded: false,
};

fn denied(retry_after: Option<Duration>) -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        retry_after,
        ..ALLOWED
    }
}

fn waits(ms: u64) -> Decision {
    Decision {
        delay: Duration::from_millis(ms),
        ..ALLOWED
    }
}

fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

/// What `MultiDecision::retry_after` computed before it asked
/// [`retry_after`]: the longest wait among the denials, `None` if allowed
/// or if some denial can never pass.
fn longest_wait(decisions: &[Decision]) -> Option<Duration> {
    let denied = decisions.iter().filter(|d| !d.allowed);
    denied.map(|d| d.retry_after).try_fold(None, |acc, r| {
        r.map(|r| Some(acc.map_or(r, |a: Duration| a.max(r))))
    })?
}

#[test]
fn rounds_up_to_whole_seconds_and_millis() {
    assert_eq!(ceil_seconds(Duration::ZERO), 0);
    assert_eq!(ceil_seconds(Duration::from_nanos(1)), 1);
    assert_eq!(ceil_seconds(Duration::from_secs(17)), 17);
    assert_eq!(ceil_seconds(Duration::from_millis(16_001)), 17);
    assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
    assert_eq!(ceil_millis(Duration::from_micros(59_500_000)), 59_500);
    assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
    assert_eq!(ceil_millis(Duration::from_millis(60_000)), 60_000);
    assert_eq!(ceil_millis(Duration::ZERO), 0);
}

#[test]
fn the_latest_denial_decides_and_never_is_latest() {
    assert_eq!(denying(&[]), None);
    assert_eq!(denying(&[ALLOWED, waits(10)]), None);
    assert_eq!(denying(&[denied(secs(1)), ALLOWED]), Some(0));
    assert_eq!(denying(&[denied(secs(9)), denied(secs(1))]), Some(0));
    assert_eq!(
        denying(&[denied(secs(1)), denied(None), denied(secs(9))]),
        Some(1)
    );
    // The last of equals, "never" included.
    assert_eq!(denying(&[denied(secs(3)), denied(secs(3))]), Some(1));
    assert_eq!(denying(&[denied(None), denied(None)]), Some(1));
}

#[test]
fn retry_after_is_the_deciding_denials_and_what_multi_decision_said() {
    let cases: [&[Decision]; 7] = [
        &[],
        &[ALLOWED],
        &[denied(secs(2))],
        &[denied(secs(2)), denied(secs(7)), ALLOWED],
        &[denied(None)],
        &[denied(secs(2)), denied(None)],
        &[ALLOWED, denied(Some(Duration::from_nanos(1)))],
    ];
    for decisions in cases {
        assert_eq!(
            retry_after(decisions),
            longest_wait(decisions),
            "{decisions:?}"
        );
    }
    assert_eq!(retry_after(&[denied(secs(2)), denied(secs(7))]), secs(7));
    assert_eq!(retry_after(&[denied(secs(2)), denied(None)]), None);
}

#[test]
fn the_longest_wait_delays_and_zero_is_no_wait() {
    assert_eq!(delaying(&[]), None);
    assert_eq!(delaying(&[ALLOWED, ALLOWED]), None);
    assert_eq!(delaying(&[waits(5), ALLOWED, waits(9)]), Some(2));
    assert_eq!(delaying(&[waits(9), waits(9), ALLOWED]), Some(1));
}

#[test]
fn the_most_constrained_has_least_left_then_longest_reset_then_comes_first() {
    let left = |remaining, reset_s| Decision {
        remaining,
        reset_after: Duration::from_secs(reset_s),
        ..ALLOWED
    };
    assert_eq!(most_constrained(&[]), None);
    assert_eq!(most_constrained(&[left(3, 1), left(2, 1)]), Some(1));
    assert_eq!(most_constrained(&[left(2, 9), left(2, 1)]), Some(0));
    assert_eq!(most_constrained(&[left(2, 1), left(2, 9)]), Some(1));
    assert_eq!(most_constrained(&[left(2, 1), left(2, 1)]), Some(0));
}

#[test]
fn a_denial_outranks_a_wait_and_any_degraded_decision_marks_the_answer() {
    let (a, b, c) = (
        policy("10/s"),
        policy("leaky_bucket 10/s burst 5"),
        policy("5/1m"),
    );
    let decisions = [
        PolicyDecision::new("a", &a, ALLOWED),
        PolicyDecision::new("b", &b, waits(200)),
        PolicyDecision::new(
            "c",
            &c,
            Decision {
                degraded: true,
                ..denied(secs(4))
            },
        ),
    ];
    let answer = Answer::new(&decisions);
    assert_eq!(answer.verdict(), Verdict::Deny);
    assert_eq!(answer.deciding().map(|d| d.name), Some("c"));
    assert_eq!(answer.retry_after(), secs(4));
    assert_eq!(answer.retry_after_seconds(), Some(4));
    assert_eq!(answer.delay(), Duration::ZERO);
    assert!(answer.degraded());
    assert!(!answer.queued_too_long());
    assert_eq!(answer.decisions().len(), 3);

    // A denial that can never pass: named, and no wait helps.
    let never = [PolicyDecision::new("c", &c, denied(None))];
    let answer = Answer::new(&never);
    assert_eq!(answer.deciding().map(|d| d.name), Some("c"));
    assert_eq!(answer.retry_after(), None);
    assert_eq!(answer.retry_after_seconds(), None);
}

#[test]
fn an_allow_is_decided_by_the_most_constrained_and_a_wait_by_the_longest() {
    let (a, b) = (policy("10/s"), policy("leaky_bucket 10/s burst 5"));
    let tight = Decision {
        remaining: 1,
        ..ALLOWED
    };
    let allowed = [
        PolicyDecision::new("a", &a, ALLOWED),
        PolicyDecision::new("b", &b, tight),
    ];
    let answer = Answer::new(&allowed);
    assert_eq!(answer.verdict(), Verdict::Allow);
    assert_eq!(answer.deciding().map(|d| d.name), Some("b"));
    assert_eq!(
        (answer.retry_after(), answer.delay()),
        (None, Duration::ZERO)
    );
    assert!(!answer.degraded());

    let delayed = [
        PolicyDecision::new("a", &a, tight),
        PolicyDecision::new("b", &b, waits(300)),
    ];
    let answer = Answer::new(&delayed);
    assert_eq!(answer.verdict(), Verdict::Delay);
    assert_eq!(answer.deciding().map(|d| d.name), Some("b"));
    assert_eq!(answer.delay(), Duration::from_millis(300));
    // The legacy fields describe the most constrained, not the delaying.
    assert_eq!(answer.legacy_fields().map(|l| l.remaining), Some(1));

    let none = Answer::new(&[]);
    assert_eq!(none.verdict(), Verdict::Allow);
    assert!(none.deciding().is_none());
    assert_eq!(none.legacy_fields(), None);
    assert_eq!(none.ratelimit_field(), "");
}

#[test]
fn a_wait_beyond_the_maximum_is_a_denial_with_the_queue_s_retry_after() {
    let shape = policy("leaky_bucket 3/s burst 10");
    let decisions = [PolicyDecision::new("shape", &shape, waits(2_000))];
    let answer = Answer::new(&decisions);
    let at_most = |max_ms| answer.within_max_delay(Duration::from_millis(max_ms), 2);

    let kept = at_most(2_000);
    assert_eq!(kept.verdict(), Verdict::Delay);
    assert_eq!(kept.delay(), Duration::from_millis(2_000));
    assert!(!kept.queued_too_long());

    for max_ms in [1_999, 500, 0] {
        let refused = at_most(max_ms);
        assert_eq!(refused.verdict(), Verdict::Deny, "{max_ms}");
        assert!(refused.queued_too_long());
        assert_eq!(refused.delay(), Duration::ZERO);
        assert_eq!(refused.deciding().map(|d| d.name), Some("shape"));
        // 2 units at 3/s: 666 667 µs, rounded up to the microsecond.
        let expected = Duration::from_millis(2_000 - max_ms) + Duration::from_micros(666_667);
        assert_eq!(refused.retry_after(), Some(expected), "{max_ms}");
        // A denial's legacy fields describe the policy that decided it.
        assert_eq!(refused.legacy_fields().map(|l| l.limit), Some(3));
    }

    // A huge cost saturates instead of overflowing.
    let huge = answer.within_max_delay(Duration::ZERO, u64::MAX);
    assert!(
        huge.retry_after()
            .is_some_and(|r| r >= Duration::from_secs(1 << 40))
    );

    // Answers without a wait are unchanged.
    let api = policy("10/s");
    let plain = [PolicyDecision::new("api", &api, denied(secs(1)))];
    let denial = Answer::new(&plain).within_max_delay(Duration::ZERO, 1);
    assert_eq!(denial.retry_after(), secs(1));
    assert!(!denial.queued_too_long());
}

#[test]
fn shadow_mode_allows_without_a_wait_and_describes_the_most_constrained() {
    let (a, b) = (policy("10/s"), policy("5/1m"));
    let decisions = [
        PolicyDecision::new("a", &a, denied(secs(1))),
        PolicyDecision::new(
            "b",
            &b,
            Decision {
                remaining: 0,
                ..waits(50)
            },
        ),
    ];
    let real = Answer::new(&decisions);
    let shadow = real.shadowed();
    assert_eq!(shadow.verdict(), Verdict::Allow);
    assert_eq!(
        (shadow.retry_after(), shadow.delay()),
        (None, Duration::ZERO)
    );
    assert_eq!(shadow.ratelimit_field(), real.ratelimit_field());
    // Both have 0 left; `b`'s reset is no longer, so the first, `a`.
    assert_eq!(shadow.deciding().map(|d| d.name), Some("a"));
    assert_eq!(shadow.legacy_fields().map(|l| l.limit), Some(10));
    let waiting = [PolicyDecision::new("b", &b, waits(50))];
    let shadow = Answer::new(&waiting).shadowed();
    assert_eq!(
        (shadow.verdict(), shadow.delay()),
        (Verdict::Allow, Duration::ZERO)
    );
}

#[test]
fn policy_and_ratelimit_fields_are_structured_field_lists() {
    let api = policy("100/1m");
    let fast = policy("10/500ms");
    let header = policy_field([("api", &api), ("fa\"st", &fast)]);
    assert_eq!(header, r#""api";q=100;w=60, "fa\"st";q=10;w=1"#);
    let decision = Decision {
        allowed: true,
        limit: 100,
        remaining: 42,
        reset_after: Duration::from_millis(16_200),
        retry_after: None,
        delay: Duration::ZERO,
        degraded: false,
    };
    let decisions = [PolicyDecision::new("api", &api, decision)];
    let header = Answer::new(&decisions).ratelimit_field();
    assert_eq!(header, r#""api";r=42;t=17"#);

    // What `tollgate serve` writes today (its `headers::format`): a period
    // of 1.5 s is `w=2`, a fresh state `t=0`, members in the order named.
    let burst = policy("gcra 10/1500ms");
    let fresh = Decision {
        remaining: 9,
        reset_after: Duration::ZERO,
        ..decision
    };
    let two = [
        PolicyDecision::new("api", &api, decision),
        PolicyDecision::new("b\"x", &burst, fresh),
    ];
    assert_eq!(
        policy_field(two.iter().map(|d| (d.name, d.policy))),
        r#""api";q=100;w=60, "b\"x";q=10;w=2"#
    );
    assert_eq!(
        Answer::new(&two).ratelimit_field(),
        r#""api";r=42;t=17, "b\"x";r=9;t=0"#
    );
}

#[test]
fn structured_field_strings_escape_and_replace_what_they_cannot_hold() {
    let sf = |text: &str| {
        let mut out = String::new();
        write_sf_string(&mut out, text);
        out
    };
    assert_eq!(sf(""), r#""""#);
    assert_eq!(sf("api v2"), r#""api v2""#);
    assert_eq!(sf(r#"q"b\s"#), r#""q\"b\\s""#);
    assert_eq!(sf("café ☕"), r#""caf? ?""#);
    assert_eq!(sf("tab\t\u{7f}"), r#""tab??""#);
    assert!(is_sf_printable("api v2"));
    assert!(!is_sf_printable("café"));
    assert!(!is_sf_printable("tab\t"));
    assert!(is_sf_printable(r#"q"b\s"#));
}

#[test]
fn legacy_and_retry_after_values_round_up() {
    let api = policy("7/90s");
    let decision = Decision {
        remaining: 0,
        reset_after: Duration::from_millis(1_001),
        ..denied(Some(Duration::from_millis(1)))
    };
    let decisions = [PolicyDecision::new("api", &api, decision)];
    let answer = Answer::new(&decisions);
    let legacy = answer.legacy_fields().expect("legacy");
    assert_eq!(
        legacy,
        LegacyFields {
            limit: 7,
            remaining: 0,
            reset: 2
        }
    );
    assert_eq!(answer.retry_after_seconds(), Some(1));
}

#[test]
fn decimals_and_strings_are_measured_and_written_as_format_writes_them() {
    for n in [0, 1, 9, 10, 99, 100, 4_294_967_295, u64::MAX - 1, u64::MAX] {
        assert_eq!(Decimal::new(n).as_str(), n.to_string());
        assert_eq!(decimal_len(n), n.to_string().len());
    }
    for text in ["", "api", r#"a"b\c"#, "café\t", "€"] {
        let mut out = String::new();
        write_sf_string(&mut out, text);
        assert_eq!(sf_string_len(text), out.len(), "{text}");
    }
}
