//! The `Limiter`'s reservation API: what it refuses before the store is
//! asked, how overrides apply, and that an id binds its key and policies.

use std::sync::Arc;
use std::time::Duration;

use tollgate::overrides::{OverrideLimit, Overrides};
use tollgate::reservation::{MAX_AMOUNT, MAX_DEADLINE};
use tollgate::{Error, Limiter, ManualClock, MemoryStore, Policy, ReservationId};

const MINUTE: Duration = Duration::from_secs(60);

fn policy(text: &str) -> Policy {
    text.parse().expect("policy")
}

fn limiter(clock: &ManualClock) -> Limiter {
    Limiter::builder(MemoryStore::with_clock(clock.clone()))
        .policy("tokens", policy("fixed_window 1000/1m"))
        .policy("requests", policy("sliding_window 10/1m"))
        .policy("log", policy("sliding_log 10/1m"))
        .policy("queue", policy("leaky_bucket 10/1m"))
        .build()
}

#[tokio::test]
async fn what_cannot_be_reserved_is_refused_before_anything_is_charged() {
    let clock = ManualClock::new(0);
    let limiter = limiter(&clock);
    for name in ["log", "queue"] {
        let err = limiter
            .reserve(&["tokens", name], "k", 5, MINUTE)
            .await
            .expect_err(name);
        assert!(
            matches!(&err, Error::NotReservable { policy, .. } if policy == name),
            "{err}"
        );
        assert!(err.to_string().contains("cannot be reserved"), "{err}");
    }
    for (estimate, deadline) in [
        (0, MINUTE),
        (MAX_AMOUNT + 1, MINUTE),
        (5, Duration::ZERO),
        (5, MAX_DEADLINE + Duration::from_millis(1)),
    ] {
        let err = limiter
            .reserve(&["tokens"], "k", estimate, deadline)
            .await
            .expect_err("refused");
        assert!(
            matches!(err, Error::ZeroCost | Error::InvalidReservation(_)),
            "{err}"
        );
    }
    assert!(matches!(
        limiter.reserve(&["tokens", "tokens"], "k", 5, MINUTE).await,
        Err(Error::DuplicatePolicy(_))
    ));
    assert_eq!(
        limiter.peek("tokens", "k", 1).await.unwrap().remaining,
        1000
    );
}

#[tokio::test]
async fn an_id_settles_only_its_own_key_and_policies() {
    let clock = ManualClock::new(0);
    let limiter = limiter(&clock);
    let id = limiter
        .reserve(&["tokens"], "alice", 300, MINUTE)
        .await
        .unwrap()
        .id
        .expect("allowed");
    // The same secret, presented for another key or other policies, finds
    // nothing and changes nothing.
    let text = id.to_string();
    let forged_key = reissue(&id, b"bob", &["tokens"]);
    let forged_policy = reissue(&id, b"alice", &["requests"]);
    for forged in [forged_key, forged_policy] {
        assert_eq!(limiter.settle(&forged, 0).await.unwrap(), None);
    }
    assert_eq!(
        limiter.peek("tokens", "alice", 1).await.unwrap().remaining,
        700
    );
    assert_eq!(
        limiter
            .peek("requests", "alice", 1)
            .await
            .unwrap()
            .remaining,
        10
    );
    let id: ReservationId = text.parse().unwrap();
    let settled = limiter.cancel(&id).await.unwrap().expect("open");
    assert_eq!(settled.settled[0].returned, 300);
    assert_eq!(
        limiter.peek("tokens", "alice", 1).await.unwrap().remaining,
        1000
    );
}

/// `id`'s nonce under another key and policies, built through the text
/// form (the only way a client can build one).
fn reissue(id: &ReservationId, key: &[u8], policies: &[&str]) -> ReservationId {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&id.nonce().to_le_bytes());
    bytes.push(policies.len() as u8);
    for p in policies {
        bytes.push(p.len() as u8);
        bytes.extend_from_slice(p.as_bytes());
    }
    bytes.extend_from_slice(key);
    engine.encode(bytes).parse().expect("well formed")
}

#[tokio::test]
async fn overrides_apply_to_reservations_as_to_checks() {
    let clock = ManualClock::new(0);
    let overrides = Arc::new(Overrides::with_clock(clock.clone()));
    let limiter = Limiter::builder(MemoryStore::with_clock(clock.clone()))
        .policy("tokens", policy("fixed_window 1000/1m"))
        .policy("requests", policy("fixed_window 10/1m"))
        .overrides(overrides)
        .build();
    let numbers = OverrideLimit::Policy(policy("fixed_window 5000/1m"));
    limiter
        .set_override("tokens", "big", numbers, None)
        .unwrap();
    limiter
        .set_override("tokens", "free", OverrideLimit::Unlimited, None)
        .unwrap();
    limiter
        .set_override("tokens", "banned", OverrideLimit::Blocked, None)
        .unwrap();

    // Numbers: the override's limit, and its own capacity as the default
    // overdraft (a settle 5000 past the estimate owes at most 5000).
    let big = limiter
        .reserve(&["tokens"], "big", 3000, MINUTE)
        .await
        .unwrap();
    assert!(big.allowed());
    assert_eq!(big.decision.decisions[0].remaining, 2000);
    let settled = limiter
        .settle(big.id.as_ref().unwrap(), 9000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (settled.settled[0].charged, settled.settled[0].unpaid),
        (6000, 0)
    );

    // Unlimited: allowed, not reserved in that policy.
    let free = limiter
        .reserve(&["tokens", "requests"], "free", 3000, MINUTE)
        .await;
    // 3000 is above `requests`' capacity: denied there, nothing charged.
    assert!(!free.unwrap().allowed());
    let free = limiter
        .reserve(&["tokens", "requests"], "free", 4, MINUTE)
        .await
        .unwrap();
    assert!(free.allowed());
    let id = free.id.expect("requests is reserved");
    assert_eq!(id.policies().collect::<Vec<_>>(), ["requests"]);
    assert_eq!(
        limiter.peek("requests", "free", 1).await.unwrap().remaining,
        6
    );

    // Blocked: denied, nothing reserved or charged.
    let banned = limiter
        .reserve(&["tokens", "requests"], "banned", 1, MINUTE)
        .await
        .unwrap();
    assert!(!banned.allowed() && banned.id.is_none());
    assert_eq!(
        limiter
            .peek("requests", "banned", 1)
            .await
            .unwrap()
            .remaining,
        10
    );
}

#[tokio::test]
async fn a_store_without_reservations_says_so() {
    struct Plain(MemoryStore);
    impl tollgate::Store for Plain {
        async fn apply(
            &self,
            check: tollgate::Check<'_>,
        ) -> Result<tollgate::Decisions, tollgate::StoreError> {
            self.0.apply(check).await
        }
        async fn reset(
            &self,
            key: &[u8],
            policies: &[tollgate::PolicyRef<'_>],
        ) -> Result<(), tollgate::StoreError> {
            self.0.reset(key, policies).await
        }
    }
    let limiter = Limiter::builder(Plain(MemoryStore::new()))
        .policy("tokens", policy("fixed_window 1000/1m"))
        .build();
    let err = limiter
        .reserve(&["tokens"], "k", 5, MINUTE)
        .await
        .expect_err("unsupported");
    assert!(
        matches!(err, Error::Store(tollgate::StoreError::Unsupported(_))),
        "{err}"
    );
}

#[tokio::test]
async fn past_its_deadline_a_reservation_stays_at_its_estimate() {
    let clock = ManualClock::new(0);
    let limiter = limiter(&clock);
    let id = limiter
        .reserve(&["tokens"], "k", 400, Duration::from_secs(10))
        .await
        .unwrap()
        .id
        .unwrap();
    clock.advance_us(10_000_000);
    assert_eq!(limiter.settle(&id, 0).await.unwrap(), None);
    assert_eq!(limiter.peek("tokens", "k", 1).await.unwrap().remaining, 600);
}
