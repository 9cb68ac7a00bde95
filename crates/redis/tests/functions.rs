//! Decisions are `FCALL`s of the function library (loaded by the store on
//! every master when missing), and `EVALSHA`s of scripts where functions
//! cannot be used: the choice is made once, by what Redis answers.

mod common;

use tollgate::Limiter;
use tollgate_redis::{RedisStore, script::LIBRARY};
use tollgate_testkit::redis::{RedisCluster, RedisServer};

async fn limiter(url: &str) -> Limiter<RedisStore> {
    let store = RedisStore::connect(url, common::options())
        .await
        .expect("connect");
    Limiter::builder(store)
        .policy("api", "gcra 3/1h".parse().expect("valid"))
        .build()
}

async fn three_decisions(limiter: &Limiter<RedisStore>) {
    for remaining in [2, 1, 0] {
        let d = limiter.check("api", "k", 1).await.expect("redis");
        assert!(d.allowed);
        assert_eq!(d.remaining, remaining);
    }
    assert!(!limiter.check("api", "k", 1).await.expect("redis").allowed);
}

#[tokio::test]
async fn a_user_who_may_call_but_not_load_functions_falls_back_to_scripts() {
    let server = RedisServer::start();
    let limiter = limiter(&common::user_without(&server, "caller", &["-function"])).await;
    three_decisions(&limiter).await;
    assert!(!limiter.store().uses_functions());
    // One FCALL, refused (the function is missing), then scripts only.
    assert_eq!(common::calls(&server, "fcall"), 1);
    assert_eq!(common::calls(&server, "evalsha"), 4);
}

#[tokio::test]
async fn a_user_who_may_only_call_functions_uses_a_library_an_operator_loaded() {
    let server = RedisServer::start();
    server.cli(&["FUNCTION", "LOAD", &LIBRARY.source]);
    let denied = ["-function", "-eval", "-evalsha", "-script"];
    let limiter = limiter(&common::user_without(&server, "caller", &denied)).await;
    three_decisions(&limiter).await;
    assert!(limiter.store().uses_functions());
    assert_eq!(common::calls(&server, "fcall"), 4);
}

#[tokio::test]
async fn another_versions_library_is_left_alone() {
    let server = RedisServer::start();
    // What an older tollgate would have loaded: another name.
    let old = "#!lua name=tollgate_0000000000000000\n\
               redis.register_function('tollgate_0000000000000000', function() return 7 end)";
    server.cli(&["FUNCTION", "LOAD", old]);
    let limiter = limiter(&server.url()).await;
    three_decisions(&limiter).await;
    assert!(limiter.store().uses_functions());
    // Both versions can decide side by side (a rolling upgrade).
    assert_eq!(
        server.cli(&["FCALL", "tollgate_0000000000000000", "0"]),
        "7"
    );
    let libraries = server.cli(&["FUNCTION", "LIST"]);
    assert!(libraries.contains(&LIBRARY.name), "{libraries}");
    assert!(
        libraries.contains("tollgate_0000000000000000"),
        "{libraries}"
    );
}

#[tokio::test]
async fn a_cluster_loads_the_library_on_every_master_again_after_a_flush() {
    let mut cluster = RedisCluster::start(3, 0);
    let store = RedisStore::connect_cluster(&cluster.urls(), common::options())
        .await
        .expect("connect");
    let limiter = Limiter::builder(store)
        .policy("api", "gcra 3/1h".parse().expect("valid"))
        .build();
    // Identities in every master's slots.
    let identities: Vec<String> = (0..30).map(|i| format!("id-{i}")).collect();
    for round in 0..2 {
        for id in &identities {
            assert!(limiter.check("api", id, 1).await.expect("redis").allowed);
        }
        let masters = cluster.master_ports();
        for node in cluster.nodes() {
            assert!(masters.contains(&node.port()));
            let list = node.cli(&["FUNCTION", "LIST"]);
            assert!(list.contains(&LIBRARY.name), "round {round}: {list}");
            // As a new master would be: without the library.
            assert_eq!(node.cli(&["FUNCTION", "FLUSH"]), "OK");
        }
    }
    assert!(limiter.store().uses_functions());
}

/// A server that lost the library (a restart, `FUNCTION FLUSH`) finds it
/// missing for every call in flight: one load serves them all, instead of
/// one compile of the whole library each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_when_the_library_is_missing_share_one_load() {
    let server = RedisServer::start();
    let limiter = limiter(&server.url()).await;
    three_decisions(&limiter).await;
    assert_eq!(common::calls(&server, "function|load"), 1);
    assert_eq!(server.cli(&["FUNCTION", "FLUSH"]), "OK");
    let checks = (0..50).map(|i| {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.check("api", &format!("c{i}"), 1).await })
    });
    for check in checks.collect::<Vec<_>>() {
        let decision = check.await.expect("task").expect("redis");
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 2, "charged once");
    }
    assert_eq!(
        common::calls(&server, "function|load"),
        2,
        "one load for 50 calls"
    );
}

/// The library keeps parsed policies in two bounded generations: across
/// many one-off policies (more than both hold), a policy in steady use and
/// every one-off one are still decided exactly.
#[tokio::test]
async fn decisions_stay_exact_while_one_off_policies_turn_the_policy_cache_over() {
    use tollgate::{Check, Mode, Policy, PolicyRef, Store};
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    let steady: Policy = "fixed_window 1000/1h".parse().expect("valid");
    let check = |name: &'static str, policy: &Policy, key: &str| {
        let store = store.clone();
        let (policy, key) = (*policy, key.to_owned());
        async move {
            let refs = [PolicyRef {
                name,
                policy: &policy,
            }];
            let decisions = store
                .apply(Check::new(key.as_bytes(), &refs, 1, Mode::Consume))
                .await
                .expect("redis");
            decisions[0]
        }
    };
    for i in 0..1_500u64 {
        // A policy never seen before, of a limit of its own.
        let one_off: Policy = format!("fixed_window {}/1h", 2 + i).parse().expect("valid");
        let d = check("one_off", &one_off, &format!("o{i}")).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 1 + i, "one-off policy {i}");
        if i % 100 == 0 {
            let d = check("steady", &steady, "s").await;
            assert!(d.allowed);
            assert_eq!(d.remaining, 999 - i / 100, "steady policy at {i}");
        }
    }
    assert!(store.uses_functions());
}

/// When the library is missing and loading it is refused (here: Redis is
/// out of memory), the calls in flight do not queue up to be refused one
/// after another: one attempt answers them all, and each fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_share_one_refused_load() {
    let server = RedisServer::start();
    let limiter = limiter(&server.url()).await;
    three_decisions(&limiter).await;
    assert_eq!(server.cli(&["FUNCTION", "FLUSH"]), "OK");
    assert_eq!(
        server.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    assert_eq!(server.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    // Every call in flight before the first answer: Redis holds all
    // clients' commands for a moment. Without it, on a loaded machine the
    // calls can be sent one after another's load has failed, and each then
    // rightly tries its own.
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "500", "ALL"]), "OK");
    let checks = (0..50).map(|i| {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.check("api", &format!("c{i}"), 1).await })
    });
    for check in checks.collect::<Vec<_>>() {
        assert!(
            check.await.expect("task").is_err(),
            "no library, none loadable"
        );
    }
    let refused: u64 = server
        .cli(&["INFO", "commandstats"])
        .lines()
        .find(|l| l.starts_with("cmdstat_function|load:"))
        .and_then(|l| l.split("rejected_calls=").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("FUNCTION LOAD was refused");
    assert!(refused <= 2, "{refused} refused loads for 50 calls");
    assert_eq!(server.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    let decision = limiter.check("api", "after", 1).await.expect("redis");
    assert!(decision.allowed);
}

/// A lease call on `store`: cost 1 of `policy` for `k`, wanting 50 units.
async fn lease(store: &RedisStore, policy: &tollgate::Policy) -> tollgate::LeaseAnswer {
    let refs = [tollgate::PolicyRef {
        name: "api",
        policy,
    }];
    let asks = [tollgate::LeaseAsk {
        want: 50,
        ttl_us: 10_000_000,
        held: tollgate::Held::default(),
    }];
    let check = tollgate::Check::new(b"k", &refs, 1, tollgate::Mode::Consume);
    tollgate::Store::lease(store, tollgate::LeaseCall { check, asks: &asks })
        .await
        .expect("redis")
}

/// A lease call follows the decision's rules when Redis lacks its code: the
/// library is loaded again after `FUNCTION FLUSH`; on the scripts path the
/// lease script (not the decision's) is sent whole after `SCRIPT FLUSH`.
#[tokio::test]
async fn a_lease_call_loads_its_code_as_a_decision_does() {
    let server = RedisServer::start();
    let policy: tollgate::Policy = "fixed_window 160/1h".parse().expect("valid");
    let store = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    server.cli(&["FUNCTION", "FLUSH"]);
    let first = lease(&store, &policy).await;
    assert_eq!(
        (first.leased[0].units, first.decisions[0].remaining),
        (9, 150)
    );
    assert!(store.uses_functions());
    assert!(server.cli(&["FUNCTION", "LIST"]).contains(&LIBRARY.name));
    // Scripts only (another prefix: fresh state): the lease script, sent
    // whole once, then by its hash.
    let url = common::scripts_only_user(&server);
    let store = RedisStore::connect(&url, common::options())
        .await
        .expect("connect");
    server.cli(&["SCRIPT", "FLUSH"]);
    for remaining in [150, 140] {
        let answer = lease(&store, &policy).await;
        assert_eq!(answer.decisions[0].remaining, remaining, "{answer:?}");
    }
    assert!(!store.uses_functions());
    assert_eq!(common::calls(&server, "eval"), 1);
    let mask = tollgate_redis::script::mask(&[tollgate::PolicyRef {
        name: "api",
        policy: &policy,
    }]);
    let sha = tollgate_redis::script::for_lease_mask(mask)
        .script
        .get_hash();
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", sha]), "1");
}

/// A reservation's steps follow the decision's rules when Redis lacks
/// their code: the library is loaded again after `FUNCTION FLUSH`; on the
/// scripts path the reservation script (holding both steps) is sent whole
/// once after `SCRIPT FLUSH`, then by its hash.
#[tokio::test]
async fn a_reservation_loads_its_code_as_a_decision_does() {
    use tollgate::{Check, Mode, PolicyRef, ReserveCall, SettleCall, Store};
    let server = RedisServer::start();
    let policy: tollgate::Policy = "fixed_window 100/1h".parse().expect("valid");
    let refs = [PolicyRef {
        name: "api",
        policy: &policy,
    }];
    let reserve = |nonce| ReserveCall {
        check: Check::new(b"k", &refs, 10, Mode::Consume),
        nonce,
        deadline_us: 60_000_000,
    };
    let settle = |nonce| SettleCall {
        key: b"k",
        policies: &refs,
        nonce,
        actual: 4,
    };
    let store = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    server.cli(&["FUNCTION", "FLUSH"]);
    let reserved = store.reserve(reserve(1)).await.expect("reserve");
    assert_eq!(reserved[0].remaining, 90);
    server.cli(&["FUNCTION", "FLUSH"]);
    let settled = store.settle(settle(1)).await.expect("settle");
    assert_eq!(settled.expect("found").decisions[0].remaining, 96);
    assert!(store.uses_functions());
    // Scripts only (another prefix: fresh state).
    let url = common::scripts_only_user(&server);
    let store = RedisStore::connect(&url, common::options())
        .await
        .expect("connect");
    server.cli(&["SCRIPT", "FLUSH"]);
    let reserved = store.reserve(reserve(2)).await.expect("reserve");
    assert_eq!(reserved[0].remaining, 90);
    let settled = store.settle(settle(2)).await.expect("settle");
    assert_eq!(settled.expect("found").decisions[0].remaining, 96);
    assert!(!store.uses_functions());
    assert_eq!(common::calls(&server, "eval"), 1);
    let sha = tollgate_redis::script::for_reserve_mask(tollgate_redis::script::mask(&refs))
        .script
        .get_hash();
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", sha]), "1");
}
