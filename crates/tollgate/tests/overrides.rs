//! Overrides through the limiter, on the memory store and a manual clock.

use std::sync::Arc;
use std::time::Duration;

use tollgate::overrides::{Override, OverrideError, OverrideLimit, Overrides, Source};
use tollgate::{Limiter, ManualClock, MemoryStore, Policy};

const START: u64 = 1_000_000_000;

fn setup(policies: &[(&str, &str)]) -> (Limiter, ManualClock) {
    let clock = ManualClock::new(START);
    let overrides = Arc::new(Overrides::with_clock(clock.clone()).with_max_entries(30));
    let mut builder = Limiter::builder(MemoryStore::with_clock(clock.clone())).overrides(overrides);
    for (name, text) in policies {
        builder = builder.policy(*name, text.parse().expect("valid"));
    }
    (builder.build(), clock)
}

fn numbers(text: &str) -> OverrideLimit {
    OverrideLimit::Policy(text.parse::<Policy>().expect("valid"))
}

async fn admitted(limiter: &Limiter, policy: &str, key: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        ok += usize::from(limiter.check(policy, key, 1).await.expect("ok").allowed);
    }
    ok
}

#[tokio::test]
async fn an_override_raises_one_keys_limit_and_no_other() {
    let (limiter, _) = setup(&[("api", "fixed_window 2/1h")]);
    limiter
        .set_override("api", "vip", numbers("fixed_window 5/1h"), None)
        .expect("set");
    assert_eq!(admitted(&limiter, "api", "vip", 10).await, 5);
    assert_eq!(admitted(&limiter, "api", "other", 10).await, 2);
    let multi = limiter.check_all(&["api"], "vip", 1).await.expect("ok");
    assert_eq!(&multi.overridden[..], &[true]);
    let multi = limiter.check_all(&["api"], "other", 1).await.expect("ok");
    assert!(
        multi.overridden.iter().all(|o| !o),
        "{:?}",
        multi.overridden
    );
}

#[tokio::test]
async fn an_expired_override_leaves_the_state_to_the_policy_in_absolute_units() {
    let (limiter, clock) = setup(&[("api", "fixed_window 3/1h")]);
    limiter
        .set_override(
            "api",
            "trial",
            numbers("fixed_window 10/1h"),
            Some(Duration::from_secs(60)),
        )
        .expect("set");
    assert_eq!(admitted(&limiter, "api", "trial", 6).await, 6);
    clock.advance(Duration::from_secs(60));
    // The trial is over: the 6 units spent count against the policy's 3.
    let d = limiter.check("api", "trial", 1).await.expect("ok");
    assert!(!d.allowed);
    assert_eq!(d.limit, 3);
}

#[tokio::test]
async fn blocked_denies_and_charges_nothing_anywhere() {
    let (limiter, clock) = setup(&[("api", "fixed_window 5/1h"), ("burst", "gcra 5/1h burst 5")]);
    limiter
        .set_override(
            "api",
            "bot",
            OverrideLimit::Blocked,
            Some(Duration::from_secs(30)),
        )
        .expect("set");
    let multi = limiter
        .check_all(&["api", "burst"], "bot", 1)
        .await
        .expect("ok");
    assert!(!multi.allowed);
    assert_eq!(
        multi.decisions[0].retry_after,
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        multi.decisions[1].remaining, 5,
        "the other policy was only looked at"
    );
    clock.advance(Duration::from_secs(30));
    // The block ended; nothing was charged while it held.
    assert_eq!(admitted(&limiter, "api", "bot", 10).await, 5);
    assert_eq!(
        limiter.peek("burst", "bot", 1).await.expect("ok").remaining,
        5
    );
}

#[tokio::test]
async fn unlimited_allows_without_charging_until_deleted() {
    let (limiter, _) = setup(&[("api", "fixed_window 2/1h")]);
    assert_eq!(admitted(&limiter, "api", "k", 1).await, 1);
    limiter
        .set_override("api", "k", OverrideLimit::Unlimited, None)
        .expect("set");
    assert_eq!(admitted(&limiter, "api", "k", 100).await, 100);
    let table = limiter.overrides().expect("table");
    assert!(table.remove("api", b"k"));
    assert!(!table.remove("api", b"k"), "removed once");
    // Only the unit spent before the override counts.
    assert_eq!(admitted(&limiter, "api", "k", 10).await, 1);
}

#[tokio::test]
async fn a_runtime_override_wins_over_a_declared_one() {
    let (limiter, _) = setup(&[("api", "fixed_window 1/1h")]);
    let table = limiter.overrides().expect("table");
    let declared = tollgate::overrides::Override {
        limit: numbers("fixed_window 3/1h"),
        expires_at_us: None,
    };
    table.replace_file([("api".to_owned(), b"k".to_vec(), declared)]);
    assert_eq!(
        table.lookup("api", b"k").map(|(_, s)| s),
        Some(Source::File)
    );
    limiter
        .set_override("api", "k", numbers("fixed_window 10/1h"), None)
        .expect("set");
    assert_eq!(admitted(&limiter, "api", "k", 20).await, 10);
    assert!(table.remove("api", b"k"));
    assert_eq!(
        table.lookup("api", b"k").map(|(_, s)| s),
        Some(Source::File)
    );
    // A reload without the declared override drops it.
    table.replace_file([]);
    assert!(table.is_empty());
}

#[tokio::test]
async fn refused_overrides_say_why_and_the_table_is_bounded() {
    let (limiter, clock) = setup(&[("api", "fixed_window 2/1h")]);
    assert!(matches!(
        limiter.set_override("nope", "k", OverrideLimit::Blocked, None),
        Err(OverrideError::UnknownPolicy(_))
    ));
    assert!(matches!(
        limiter.set_override("api", "k", numbers("gcra 5/1h"), None),
        Err(OverrideError::OtherAlgorithm { .. })
    ));
    assert!(matches!(
        limiter.set_override("api", vec![b'x'; 2000], OverrideLimit::Blocked, None),
        Err(OverrideError::KeyTooLong { .. })
    ));
    for i in 0..30 {
        limiter
            .set_override(
                "api",
                format!("k{i}"),
                OverrideLimit::Blocked,
                Some(Duration::from_secs(1)),
            )
            .expect("within the cap");
    }
    assert_eq!(
        limiter.set_override("api", "one-more", OverrideLimit::Blocked, None),
        Err(OverrideError::Full(30))
    );
    // Replacing one is not adding one.
    limiter
        .set_override("api", "k0", OverrideLimit::Unlimited, None)
        .expect("replace");
    // Expired ones make room.
    clock.advance(Duration::from_secs(1));
    limiter
        .set_override("api", "one-more", OverrideLimit::Blocked, None)
        .expect("room after expiry");
}

#[tokio::test]
async fn listing_pages_through_every_override_once_in_order() {
    let (limiter, _) = setup(&[("api", "fixed_window 2/1h"), ("other", "fixed_window 2/1h")]);
    for i in 0..25 {
        limiter
            .set_override("api", format!("k{i:02}"), OverrideLimit::Unlimited, None)
            .expect("set");
    }
    limiter
        .set_override("other", "x", OverrideLimit::Blocked, None)
        .expect("set");
    let table = limiter.overrides().expect("table");
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = table.list(Some("api"), cursor.as_deref(), 10);
        assert!(page.items.len() <= 10);
        seen.extend(
            page.items
                .iter()
                .map(|l| String::from_utf8(l.key.clone()).expect("utf-8")),
        );
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(table.list(None, None, 100).items.len(), 26);
}

/// Pages hold the overrides in force in (policy, key) order, each once,
/// for every page size, policy filter and starting point: both layers,
/// expired overrides left out, keys that are prefixes of others and
/// policies whose names are prefixes of others, set in no particular
/// order. (A page is found with a bounded heap, not by sorting them all.)
#[test]
fn every_page_is_the_next_overrides_in_order() {
    let clock = ManualClock::new(START);
    let table = Overrides::with_clock(clock.clone()).with_max_entries(1000);
    let policies = ["a", "ab", "b"];
    let keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"k".to_vec(),
        b"k\0".to_vec(),
        b"k1".to_vec(),
        b"k10".to_vec(),
        b"k2".to_vec(),
        vec![0xff],
        vec![0xff, 0],
    ];
    let mut live = Vec::new();
    let mut file = Vec::new();
    // A fixed shuffle: i * 7 mod 24 visits every (policy, key) once.
    for i in 0..24usize {
        let j = i * 7 % 24;
        let (policy, key) = (policies[j / 8], &keys[j % 8]);
        match j % 3 {
            0 => file.push((
                policy.to_owned(),
                key.clone(),
                Override {
                    limit: OverrideLimit::Blocked,
                    expires_at_us: None,
                },
            )),
            1 => table
                .set(
                    policy,
                    key,
                    Override {
                        limit: OverrideLimit::Unlimited,
                        expires_at_us: Some(START + 10),
                    },
                )
                .expect("set"),
            _ => table
                .set(
                    policy,
                    key,
                    Override {
                        limit: OverrideLimit::Unlimited,
                        expires_at_us: None,
                    },
                )
                .expect("set"),
        }
        if j % 3 != 1 {
            live.push((policy.to_owned(), key.clone()));
        }
    }
    table.replace_file(file);
    // The overrides that expire at START + 10 are gone.
    clock.advance_us(10);
    live.sort();
    for filter in [None, Some("a"), Some("ab"), Some("b"), Some("c")] {
        let expected: Vec<(String, Vec<u8>)> = live
            .iter()
            .filter(|(p, _)| filter.is_none_or(|f| f == p))
            .cloned()
            .collect();
        for limit in [1, 2, 3, 5, 16, 100] {
            let mut seen = Vec::new();
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let page = table.list(filter, cursor.as_deref(), limit);
                assert!(page.items.len() <= limit);
                seen.extend(page.items.iter().map(|l| (l.policy.clone(), l.key.clone())));
                match page.next {
                    Some(next) => {
                        assert_eq!(page.items.len(), limit, "a short page has no next");
                        cursor = Some(next);
                    }
                    None => break,
                }
            }
            assert_eq!(seen, expected, "policy {filter:?}, pages of {limit}");
        }
    }
    // A page of 0 is a page of 1, so that paging moves on.
    let first = table.list(None, None, 0);
    assert_eq!(first.items.len(), 1);
    assert!(first.next.is_some());
    // A cursor no page hands out ends the paging instead of starting over.
    for made_up in [&b""[..], &[0][..], &[0, 9, b'a'][..]] {
        let page = table.list(None, Some(made_up), 10);
        assert!(page.items.is_empty() && page.next.is_none(), "{made_up:?}");
    }
}

#[tokio::test]
async fn an_override_for_another_algorithm_is_ignored_after_a_reload() {
    let clock = ManualClock::new(START);
    let overrides = Arc::new(Overrides::with_clock(clock.clone()));
    let before = Limiter::builder(MemoryStore::with_clock(clock.clone()))
        .policy("api", "token_bucket 2/1h burst 2".parse().expect("valid"))
        .overrides(Arc::clone(&overrides))
        .build();
    before
        .set_override("api", "k", numbers("token_bucket 9/1h burst 9"), None)
        .expect("set");
    // The policy became a window: the bucket numbers mean nothing there.
    let after = Limiter::builder(MemoryStore::with_clock(clock))
        .policy("api", "fixed_window 2/1h".parse().expect("valid"))
        .overrides(overrides)
        .build();
    assert_eq!(admitted(&after, "api", "k", 5).await, 2);
    let multi = after.check_all(&["api"], "k", 1).await.expect("ok");
    assert!(multi.overridden.iter().all(|o| !o));
}
