//! What bounds the reservation records one identity holds on Redis: each
//! open or settled record holds at least one unit its policy admitted; a
//! cancel, which gives everything back, leaves none.

mod common;

use std::time::Duration;

use tollgate::Limiter;
use tollgate_redis::RedisStore;
use tollgate_testkit::redis::RedisServer;

/// A client that reserves and cancels in a loop (through `POST /v1/reserve`
/// and `/v1/cancel`) leaves no record behind: a cancel deletes its record.
/// One that settles at one unit pays a unit per record: its records stop
/// at its budget.
#[tokio::test]
async fn a_reserve_and_cancel_loop_leaves_no_records() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    let limiter = Limiter::builder(store)
        .policy("api", "fixed_window 10/1h".parse().expect("valid"))
        .build();
    let deadline = Duration::from_secs(3600);
    for i in 0..200 {
        let reservation = limiter
            .reserve(&["api"], b"hostile", 1, deadline)
            .await
            .expect("reserve");
        assert!(reservation.allowed(), "reservation {i} refused");
        let id = reservation.id.expect("an id");
        limiter.cancel(&id).await.expect("cancel").expect("found");
    }
    // Records end in `%r:<nonce>` (tollgate_redis::keys::reservation_key).
    let records = server
        .cli(&["KEYS", "*%r:*"])
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(records, 0, "{records} records left by cancels");
    let mut settled = 0;
    for _ in 0..20 {
        let reservation = limiter
            .reserve(&["api"], b"hostile", 1, deadline)
            .await
            .expect("reserve");
        let Some(id) = reservation.id else {
            continue;
        };
        limiter
            .settle(&id, 1)
            .await
            .expect("settle")
            .expect("found");
        settled += 1;
    }
    assert_eq!(settled, 10, "one unit paid per settle: the budget of 10");
    let records = server
        .cli(&["KEYS", "*%r:*"])
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(records, 10, "one record per unit paid");
}
