//! Reservations where the rules are easiest to get wrong, each a hole found
//! in review and fixed: second overdrafts, settles under changed numbers,
//! settles in the next window, the table's bound and shares, the deny
//! cache. Memory store, manual clock, the public `Limiter` API only.

use std::sync::Arc;
use std::time::Duration;

use tollgate::overrides::{OverrideLimit, Overrides};
use tollgate::{Limiter, ManualClock, MemoryStore, Policy};

const SECOND: u64 = 1_000_000;
const MINUTE: Duration = Duration::from_secs(60);

fn policy(text: &str) -> Policy {
    text.parse().expect("policy")
}

/// `sliding_window`: a second overdraft in a window counts the debt the
/// first left (`decide` reads a count past the limit as the limit; an
/// overdraft must not), so the window owes at most `max_overdraft`.
#[tokio::test]
async fn a_second_overdraft_in_a_sliding_window_counts_the_first() {
    let clock = ManualClock::new(0);
    let limiter = Limiter::builder(MemoryStore::with_clock(clock.clone()))
        .policy(
            "tokens",
            policy("sliding_window 100/1s")
                .with_max_overdraft(100)
                .unwrap(),
        )
        .build();
    let a = limiter.reserve(&["tokens"], "k", 50, MINUTE).await.unwrap();
    let b = limiter.reserve(&["tokens"], "k", 50, MINUTE).await.unwrap();
    let (a, b) = (a.id.expect("fits"), b.id.expect("fits"));
    let first = limiter.settle(&a, 150).await.unwrap().expect("open");
    let second = limiter.settle(&b, 150).await.unwrap().expect("open");
    let charged = 50 + first.settled[0].charged + 50 + second.settled[0].charged;
    assert!(
        charged <= 100 + 100,
        "one window charged {charged} against limit 100 + max_overdraft 100 \
         (first {:?}, second {:?})",
        first.settled[0],
        second.settled[0]
    );
    assert_eq!(second.settled[0].unpaid, 100, "the policy already owes 100");
}

/// `fixed_window`: a settle under another period than its reserve's (an
/// override that expired) gives nothing back: the counter its `until`
/// would name under the new period holds other requests' units.
#[tokio::test]
async fn a_fixed_window_settled_under_another_period_gives_nothing_back() {
    let clock = ManualClock::new(90 * SECOND);
    let overrides = Arc::new(Overrides::with_clock(clock.clone()));
    let limiter = Limiter::builder(MemoryStore::with_clock(clock.clone()))
        .policy(
            "tokens",
            policy("fixed_window 100/1m").with_max_overdraft(0).unwrap(),
        )
        .overrides(overrides)
        .build();
    limiter
        .set_override(
            "tokens",
            "k",
            OverrideLimit::Policy(policy("fixed_window 100/2m")),
            Some(Duration::from_millis(500)),
        )
        .unwrap();
    // 90 s: in the override's window [0, 120 s); given back until 120 s.
    let r = limiter
        .reserve(&["tokens"], "k", 100, MINUTE)
        .await
        .unwrap();
    let r = r.id.expect("fits");
    // 91 s: the override has expired; under 1m the window is [60 s, 120 s).
    clock.set_us(91 * SECOND);
    assert!(limiter.check("tokens", "k", 100).await.unwrap().allowed);
    clock.set_us(92 * SECOND);
    let cancelled = limiter.cancel(&r).await.unwrap().expect("open");
    clock.set_us(93 * SECOND);
    let again = limiter.check("tokens", "k", 100).await.unwrap();
    assert!(
        !again.allowed,
        "fixed_window 100/1m admitted 200 in [60 s, 120 s): the cancel gave back \
         {} units that another request had been charged",
        cancelled.settled[0].returned
    );
    assert_eq!(cancelled.settled[0].returned, 0);
}

/// `sliding_window`: the same, through a reload of the period.
#[tokio::test]
async fn a_sliding_window_settled_under_another_period_gives_nothing_back() {
    let clock = ManualClock::new(90 * SECOND);
    let store = MemoryStore::with_clock(clock.clone());
    let old = Limiter::builder(store.clone())
        .policy("tokens", policy("sliding_window 100/2m"))
        .build();
    let new = Limiter::builder(store)
        .policy(
            "tokens",
            policy("sliding_window 100/1m")
                .with_max_overdraft(0)
                .unwrap(),
        )
        .build();
    let r = old.reserve(&["tokens"], "k", 100, MINUTE).await.unwrap();
    let r = r.id.expect("fits");
    clock.set_us(91 * SECOND);
    // Under 1m the 100 are the previous window, weighted 29/60: 51 fit.
    assert!(new.check("tokens", "k", 51).await.unwrap().allowed);
    clock.set_us(92 * SECOND);
    let cancelled = new.cancel(&r).await.unwrap().expect("open");
    clock.set_us(119 * SECOND);
    // 51 were admitted in this window under the new numbers; 98 more would
    // make 149 in [60 s, 120 s) against a limit of 100.
    let again = new.check("tokens", "k", 98).await.unwrap();
    assert!(
        !again.allowed,
        "sliding_window 100/1m admitted 51 + 98 in one window: the cancel gave back \
         {} units of the current window that the estimate was never charged to",
        cancelled.settled[0].returned
    );
}

/// A bucket's estimate settled after its policy became a window gives
/// nothing back to the window's counter, which never held it.
#[tokio::test]
async fn a_settle_after_an_algorithm_change_gives_nothing_back() {
    let clock = ManualClock::new(0);
    let store = MemoryStore::with_clock(clock.clone());
    let old = Limiter::builder(store.clone())
        .policy("tokens", policy("token_bucket 100/1m burst 100"))
        .build();
    let new = Limiter::builder(store)
        .policy(
            "tokens",
            policy("fixed_window 100/1m").with_max_overdraft(0).unwrap(),
        )
        .build();
    assert!(old.check("tokens", "k", 1).await.unwrap().allowed);
    let r = old.reserve(&["tokens"], "k", 99, MINUTE).await.unwrap();
    let r = r.id.expect("fits");
    clock.set_us(1_000);
    assert!(new.check("tokens", "k", 100).await.unwrap().allowed);
    clock.set_us(2_000);
    let cancelled = new.cancel(&r).await.unwrap().expect("open");
    clock.set_us(3_000);
    let again = new.check("tokens", "k", 99).await.unwrap();
    assert!(
        !again.allowed,
        "fixed_window 100/1m admitted 199 in its first window: the cancel gave back {} \
         units of a bucket's estimate to a window counter",
        cancelled.settled[0].returned
    );
}

/// docs/RESERVATIONS.md, "What holds": an estimate counts in the window
/// it was reserved in, a settle's excess in the window of the settle. A
/// reservation settled after its window ended charges its excess to the
/// settle's window, where it is bounded like any overdraft; the window it
/// was reserved in holds the estimate only.
#[tokio::test]
async fn a_settle_in_the_next_window_charges_its_excess_there() {
    let clock = ManualClock::new(999_000);
    let limiter = Limiter::builder(MemoryStore::with_clock(clock.clone()))
        .policy(
            "tokens",
            policy("fixed_window 100/1s")
                .with_max_overdraft(10)
                .unwrap(),
        )
        .build();
    let r = limiter.reserve(&["tokens"], "k", 1, MINUTE).await.unwrap();
    let r = r.id.expect("fits");
    assert!(limiter.check("tokens", "k", 99).await.unwrap().allowed);
    // [0, 1 s) holds the check's 99 and the estimate's 1: the limit.
    assert!(!limiter.peek("tokens", "k", 1).await.unwrap().allowed);
    clock.set_us(SECOND);
    let settled = limiter.settle(&r, 101).await.unwrap().expect("open");
    // The excess, 100, is charged in [1 s, 2 s), within 100 + 10.
    assert_eq!(
        (settled.settled[0].charged, settled.settled[0].unpaid),
        (100, 0)
    );
    assert!(!limiter.check("tokens", "k", 10).await.unwrap().allowed);
    let late = limiter.reserve(&["tokens"], "k", 1, MINUTE).await.unwrap();
    let settled = limiter
        .settle(late.id.as_ref().unwrap_or(&r), 50)
        .await
        .unwrap();
    assert!(late.id.is_none() && settled.expect("replayed").replayed);
}

/// A settled reservation is kept until its deadline (for replays), but a
/// full table drops it before any open one, whatever the deadlines, and
/// `reservation_evictions` counts open reservations only.
#[tokio::test]
async fn settled_records_go_before_open_ones() {
    let clock = ManualClock::new(0);
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_reservations(2)
        .build();
    let limiter = Limiter::builder(store.clone())
        .policy("tokens", policy("fixed_window 1000/1h"))
        .build();
    let ten_minutes = Duration::from_secs(600);
    let five_minutes = Duration::from_secs(300);
    // Three identities (one identity's share of a table of 2 is 1).
    let a = limiter.reserve(&["tokens"], "a", 100, ten_minutes).await;
    let a = a.unwrap().id.expect("fits");
    limiter.settle(&a, 100).await.unwrap().expect("open");
    let b = limiter.reserve(&["tokens"], "b", 400, five_minutes).await;
    let b = b.unwrap().id.expect("fits");
    let c = limiter.reserve(&["tokens"], "c", 100, ten_minutes).await;
    c.unwrap().id.expect("fits");
    let cancelled = limiter.cancel(&b).await.unwrap();
    assert!(
        cancelled.is_some(),
        "the open reservation B was evicted while settled A was kept for replays"
    );

    // One reservation, settled; the next evicts it: no open one was lost.
    let clock = ManualClock::new(0);
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_reservations(1)
        .build();
    let limiter = Limiter::builder(store.clone())
        .policy("tokens", policy("fixed_window 1000/1h"))
        .build();
    let a = limiter.reserve(&["tokens"], "k", 100, MINUTE).await;
    limiter
        .settle(&a.unwrap().id.expect("fits"), 100)
        .await
        .unwrap()
        .expect("open");
    limiter
        .reserve(&["tokens"], "k", 100, MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.reservation_evictions(),
        0,
        "a settled record dropped is counted as an open reservation evicted"
    );
}

/// One identity holds at most a share of the table: a client allowed many
/// cheap reservations with the longest deadline evicts only its own, and
/// another identity's open reservation stays.
#[tokio::test]
async fn one_identity_cannot_evict_another_identitys_reservations() {
    let clock = ManualClock::new(0);
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_reservations(8)
        .build();
    let limiter = Limiter::builder(store)
        .policy("tokens", policy("fixed_window 1000/1h"))
        .build();
    let alice = limiter
        .reserve(&["tokens"], "alice", 500, Duration::from_secs(300))
        .await
        .unwrap()
        .id
        .expect("fits");
    for _ in 0..8 {
        let r = limiter
            .reserve(&["tokens"], "mallory", 1, Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(r.allowed());
    }
    let cancelled = limiter.cancel(&alice).await.unwrap();
    let remaining = limiter.peek("tokens", "alice", 1).await.unwrap().remaining;
    assert!(
        cancelled.is_some(),
        "mallory's reservations evicted alice's: her cancel finds nothing and \
         she keeps {remaining} of 1000"
    );
}

/// A store that counts the reservations it is asked for.
#[derive(Clone)]
struct Counting {
    inner: MemoryStore,
    reserves: Arc<std::sync::atomic::AtomicU64>,
}

impl tollgate::Store for Counting {
    async fn apply(
        &self,
        check: tollgate::Check<'_>,
    ) -> Result<tollgate::Decisions, tollgate::StoreError> {
        self.inner.apply(check).await
    }
    async fn reset(
        &self,
        key: &[u8],
        policies: &[tollgate::PolicyRef<'_>],
    ) -> Result<(), tollgate::StoreError> {
        self.inner.reset(key, policies).await
    }
    async fn reserve(
        &self,
        call: tollgate::ReserveCall<'_>,
    ) -> Result<tollgate::Decisions, tollgate::StoreError> {
        self.reserves
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.reserve(call).await
    }
    async fn settle(
        &self,
        call: tollgate::SettleCall<'_>,
    ) -> Result<Option<tollgate::SettleAnswer>, tollgate::StoreError> {
        self.inner.settle(call).await
    }
    fn reserves(&self) -> bool {
        true
    }
}

/// A reservation of a key the deny cache denies is answered from it (a
/// denied reservation records and charges nothing, so the cached denial is
/// exact): a flood costs the store nothing.
#[tokio::test]
async fn a_denied_key_is_answered_from_the_deny_cache() {
    let clock = ManualClock::new(0);
    let store = Counting {
        inner: MemoryStore::with_clock(clock.clone()),
        reserves: Arc::default(),
    };
    let resilient = tollgate::Resilient::new(
        store.clone(),
        tollgate::ResilienceOptions::default()
            .deny_cache(true)
            .clock(clock.clone()),
    );
    let limiter = Limiter::builder(resilient)
        .policy("tokens", policy("fixed_window 10/1m"))
        .build();
    assert!(limiter.check("tokens", "k", 10).await.unwrap().allowed);
    assert!(!limiter.check("tokens", "k", 1).await.unwrap().allowed);
    for _ in 0..100 {
        let r = limiter.reserve(&["tokens"], "k", 1, MINUTE).await.unwrap();
        assert!(!r.allowed());
    }
    let calls = store.reserves.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        calls, 0,
        "100 reservations of a key the deny cache denies went to the store"
    );
}

/// The "done" criterion on the memory store, which the lead's test
/// of it (`crates/redis/tests/reservation_budget.rs`) leaves out (Redis and
/// Cluster only): an LLM-token budget under concurrency, 32 tasks on 4
/// limiters sharing one store, each streaming three responses at once and
/// settling them at up to twice their estimate. It passes: in this
/// workload at most one overdraft lands after a `sliding_window` is full,
/// so it does not reach the hole that
/// `a_second_overdraft_in_a_sliding_window_counts_the_first`
/// pins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_on_the_memory_store_under_concurrency() {
    const LIMIT: u64 = 20_000;
    const OVERDRAFT: u64 = 1_500;
    let clock = ManualClock::new(3_600 * SECOND / 2);
    let store = MemoryStore::with_clock(clock.clone());
    let mut over = Vec::new();
    for algorithm in ["fixed_window", "sliding_window", "token_bucket", "gcra"] {
        let p = policy(&format!("{algorithm} {LIMIT}/1h"))
            .with_max_overdraft(OVERDRAFT)
            .unwrap();
        let limiters: Vec<_> = (0..4)
            .map(|_| Limiter::builder(store.clone()).policy(algorithm, p).build())
            .collect();
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let limiter = limiters[t as usize % 4].clone();
                tokio::spawn(async move {
                    let mut rng = (0x9E37_79B9 * (t + 1)) | 1;
                    let mut next = move || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    let mut charged = 0;
                    // Three responses stream at once per task.
                    for _ in 0..4 {
                        let mut open = Vec::new();
                        for _ in 0..3 {
                            let estimate = 200 + next() % 600;
                            let actual = next() % (2 * estimate + 1);
                            let r = limiter
                                .reserve(&[algorithm], "tenant", estimate, MINUTE)
                                .await
                                .unwrap();
                            if let Some(id) = r.id {
                                open.push((id, estimate, actual));
                            }
                            tokio::task::yield_now().await;
                        }
                        for (id, estimate, actual) in open {
                            let s = limiter.settle(&id, actual).await.unwrap().unwrap();
                            let s = s.settled[0];
                            charged += estimate - s.returned + s.charged;
                            tokio::task::yield_now().await;
                        }
                    }
                    charged
                })
            })
            .collect();
        let mut charged = 0;
        for t in tasks {
            charged += t.await.unwrap();
        }
        if charged > LIMIT + OVERDRAFT {
            over.push(format!("{algorithm}: {charged}"));
        }
    }
    assert!(
        over.is_empty(),
        "charged past {LIMIT} + {OVERDRAFT}: {over:?}"
    );
}
