//! Leases across a fleet, end to end: three `tollgate serve` processes on
//! one Redis (and on a 3-master Redis Cluster) share one leased
//! `fixed_window` policy, each with its own random lease `ttl`; clients
//! hammer one key over HTTP at every server at once while Redis is paused
//! (SIGSTOP, then SIGCONT) and the key is reset through a server's admin
//! API. Every allowed answer is attributed to its window, and no window
//! may have admitted more than the limit: the exactness invariant of
//! leasing (docs/LEASES.md), whatever the timing, the failures and the
//! number of instances. The run is bounded (a few seconds, a few thousand
//! requests) and its seed is printed; `LEASE_FLEET_SEED=<seed>` replays its
//! random choices (the timing of a run on real processes is its own).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{metric, serve};
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::http::Client;
use tollgate_testkit::process::ServeProcess;
use tollgate_testkit::redis::{RedisCluster, RedisServer};
use tollgate_tools::bench::load::{KeyDistribution, KeyPicker};

/// The policy's limit per window.
const LIMIT: u64 = 300;
/// The policy's period. The windows are `[k * PERIOD, (k + 1) * PERIOD)` of
/// Unix time (Redis's clock, this host's clock: everything runs here).
///
/// An allowed answer is attributed to the window of the instant its unit
/// was admitted, which lies between the check's send and its answer: a
/// check the store decided, at the store's instant; one served from a
/// lease, at the instance's, before the lease's deadline, which is never
/// later than the end of the window the lease was charged in (a lease
/// lives at most to its window's end), and never before the charge. A
/// check takes milliseconds and windows last a second, so the span
/// between send and answer nearly always lies in one window, and the
/// answer belongs to it. When the span crosses a window edge, the
/// answer's `reset_after_ms` says which side: `answer + reset_after` is the
/// window's end, early by at most the lease call's round trip (a lease
/// counts its time from when its call was sent, docs/LEASES.md) and late
/// by at most the check's own latency, so the nearer of the candidate
/// ends is the right one while those stay below half a period; an answer
/// for which none is that near fails the test rather than be guessed.
const PERIOD: Duration = Duration::from_secs(1);
/// The most units one lease holds.
const LEASE_MAX: u64 = 50;
/// Each server's lease ttl is drawn in `MIN_TTL_MS..MAX_TTL_MS`.
const MIN_TTL_MS: u64 = 50;
/// See [`MIN_TTL_MS`].
const MAX_TTL_MS: u64 = 500;
/// Servers in the fleet.
const SERVERS: usize = 3;
/// Concurrent clients per server.
const CLIENTS_PER_SERVER: usize = 4;
/// Each client sends one check per tick: 100 checks a second per client,
/// 400 per server, 1200 for the fleet against a limit of 300 per second
/// (four times the allowance: overload).
const CLIENT_TICK: Duration = Duration::from_millis(10);
/// How long the clients hammer: at most 4320 checks in all, over four or
/// five windows.
const RUN: Duration = Duration::from_millis(3600);
/// How long Redis is paused.
const PAUSE: Duration = Duration::from_millis(300);
/// The bound on one check; a check with no answer fails the test (it may
/// have been admitted, and could not be counted).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The servers' bound on one store call (`store.timeout`): well inside the
/// pause (calls time out, and Redis runs them when it resumes), well above
/// a busy machine's latency otherwise.
const STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// How far the instances' clocks (each reads the system clock's Unix time
/// once, then counts on a monotonic one) may stray from this process's.
const CLOCK_SLACK: Duration = Duration::from_millis(1);
/// Attempts at the reset (see [`reset`]).
const RESET_ATTEMPTS: u64 = 5;
/// The admin token of the servers.
const ADMIN_TOKEN: &str = "s3cret";

/// One test at a time: each runs a fleet at full load, and two at once on
/// two cores would measure the machine, not the fleet.
static ONE_FLEET_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where the fleet keeps its state.
enum Backend {
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    /// The `store:` section of the servers' configuration.
    fn store_section(&self) -> String {
        let (kind, url) = match self {
            Backend::Redis(redis) => ("redis", format!("url: {}", redis.url())),
            Backend::Cluster(cluster) => (
                "redis_cluster",
                format!("urls: [{}]", cluster.urls().join(", ")),
            ),
        };
        // `closed`: while Redis cannot answer, checks are denied. The
        // other modes admit without the store by design, and would break
        // the invariant this test asserts for leases.
        format!(
            "store:\n  kind: {kind}\n  {url}\n  prefix: fleet\n  timeout: {}ms\n  on_failure: closed\n",
            STORE_TIMEOUT.as_millis()
        )
    }

    /// Every redis-server process of the backend, to signal and query.
    fn nodes(&mut self) -> Vec<&RedisServer> {
        match self {
            Backend::Redis(redis) => vec![redis],
            Backend::Cluster(cluster) => cluster.nodes().iter().collect(),
        }
    }
}

/// One answered check.
struct Answer {
    /// The server asked.
    server: SocketAddr,
    /// Unix µs when the request was sent.
    send_us: u64,
    /// Unix µs when the answer was read.
    receive_us: u64,
    allowed: bool,
    reset_after_ms: u64,
}

/// What the fleet was told to do, beside the checks.
struct Disturbances {
    /// Unix µs when the pause began and ended.
    pause_us: (u64, u64),
    /// Unix µs when the reset was first sent and last answered.
    reset_us: (u64, u64),
    /// Resets sent (each may have run: see [`reset`]).
    resets: u64,
}

fn unix_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap()
}

/// The run's seed: `LEASE_FLEET_SEED`, or the clock.
fn seed() -> u64 {
    match std::env::var("LEASE_FLEET_SEED") {
        Ok(text) => text.parse().expect("LEASE_FLEET_SEED is a u64"),
        Err(_) => unix_us(),
    }
}

/// The configuration of one server: the leased policy with `ttl_ms`.
fn write_config(dir: &Path, index: usize, store: &str, ttl_ms: u64) -> std::path::PathBuf {
    let path = dir.join(format!("tollgate-{index}.yaml"));
    std::fs::write(
        &path,
        format!(
            "server:\n  admin_token: {ADMIN_TOKEN}\n{store}policies:
  - name: hot
    algorithm: fixed_window
    limit: {LIMIT}
    period: {}ms
    lease: {{ max: {LEASE_MAX}, ttl: {ttl_ms}ms }}
",
            PERIOD.as_millis()
        ),
    )
    .unwrap();
    path
}

/// The calls of the store's scripts and functions every node has served
/// since its statistics were last reset: decisions, leases and give-backs.
fn script_calls(nodes: &[&RedisServer]) -> u64 {
    let mut calls = 0;
    for node in nodes {
        for line in node.cli(&["INFO", "commandstats"]).lines() {
            let Some((command, stats)) = line.split_once(':') else {
                continue;
            };
            if !matches!(
                command,
                "cmdstat_fcall" | "cmdstat_fcall_ro" | "cmdstat_evalsha" | "cmdstat_eval"
            ) {
                continue;
            }
            calls += stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no calls= in {line}"));
        }
    }
    calls
}

/// Sends checks of the one hot key to `address` every [`CLIENT_TICK`] until
/// `until`.
async fn hammer(address: SocketAddr, until: Instant) -> Vec<Answer> {
    let client = Client::new(address);
    let mut tick = tokio::time::interval(CLIENT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answers = Vec::new();
    loop {
        tick.tick().await;
        if Instant::now() >= until {
            return answers;
        }
        let send_us = unix_us();
        let (status, body) = tokio::time::timeout(
            CHECK_TIMEOUT,
            client.post_json("/v1/check", r#"{"policy":"hot","key":"k"}"#),
        )
        .await
        .unwrap_or_else(|_| panic!("a check at {address} got no answer in {CHECK_TIMEOUT:?}"));
        let receive_us = unix_us();
        assert_eq!(status, 200, "{body}");
        answers.push(Answer {
            server: address,
            send_us,
            receive_us,
            allowed: body["allowed"].as_bool().unwrap(),
            reset_after_ms: body["reset_after_ms"].as_u64().unwrap(),
        });
    }
}

/// The end of the window an allowed answer's unit was admitted in (Unix
/// µs), as [`PERIOD`] says, or why it cannot be told.
fn window_end(answer: &Answer) -> Result<u64, String> {
    let period = micros(PERIOD);
    let reset_after = answer.reset_after_ms * 1000;
    // A fixed window resets within one period.
    if reset_after > period {
        return Err(format!(
            "{} answered reset_after_ms {}, beyond one period",
            answer.server, answer.reset_after_ms
        ));
    }
    let slack = micros(CLOCK_SLACK);
    // The ends of the windows the span from send to answer touches.
    let first = ((answer.send_us.saturating_sub(slack)) / period + 1) * period;
    let last = ((answer.receive_us + slack) / period + 1) * period;
    if first == last {
        return Ok(first);
    }
    let said = answer.receive_us + reset_after;
    let nearest = (first..=last)
        .step_by(usize::try_from(period).unwrap())
        .min_by_key(|end| end.abs_diff(said))
        .unwrap_or(first);
    if nearest.abs_diff(said) >= period / 2 {
        return Err(format!(
            "{} sent at {} µs, answered at {} µs, reset_after_ms {}: no window end in [{first}, {last}] near {said}",
            answer.server, answer.send_us, answer.receive_us, answer.reset_after_ms
        ));
    }
    Ok(nearest)
}

/// Resets the hot key through `server`'s admin API, trying again while
/// the store times out (a busy machine): a reset that timed out may still
/// run, as the one that succeeds does, between the first attempt and the
/// answer to the last. Returns the number of attempts.
fn reset(server: &ServeProcess) -> u64 {
    let mut answers = Vec::new();
    for attempt in 1..=RESET_ATTEMPTS {
        let (status, body) = server
            .request(
                "POST",
                "/v1/reset",
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ],
                r#"{"policy":"hot","key":"k"}"#,
                CHECK_TIMEOUT,
            )
            .unwrap();
        if status == 204 {
            return attempt;
        }
        assert_eq!(status, 503, "{body}");
        answers.push(body);
    }
    panic!("the reset failed {RESET_ATTEMPTS} times: {answers:?}");
}

/// Runs the fleet on `backend` and asserts the invariant.
fn fleet_never_over_admits(mut backend: Backend) {
    let _one = ONE_FLEET_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seed = seed();
    // A value in `from..to` (in steps of a thousandth of the span).
    let mut random = KeyPicker::new(1000, KeyDistribution::Uniform, 0.0, seed);
    let mut draw = |from: u64, to: u64| from + u64::from(random.next_key()) * (to - from) / 1000;
    let ttls: Vec<u64> = (0..SERVERS).map(|_| draw(MIN_TTL_MS, MAX_TTL_MS)).collect();
    // When the pause starts, and when the reset is sent: apart, both well
    // inside the run.
    let pause_at = Duration::from_millis(draw(800, 1600));
    let reset_at = Duration::from_millis(draw(2000, 2800));
    println!(
        "LEASE_FLEET_SEED={seed}: lease ttls {ttls:?} ms, pause at {pause_at:?}, reset at {reset_at:?}"
    );

    let dir = temp_dir("lease-fleet");
    let store = backend.store_section();
    let servers: Vec<ServeProcess> = ttls
        .iter()
        .enumerate()
        .map(|(i, ttl)| serve(&write_config(&dir, i, &store, *ttl)))
        .collect();
    let nodes = backend.nodes();
    for node in &nodes {
        assert_eq!(node.cli(&["CONFIG", "RESETSTAT"]), "OK");
    }

    let started = Instant::now();
    let until = started + RUN;
    let addresses: Vec<SocketAddr> = servers.iter().map(|s| s.http).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (disturbances, answers) = std::thread::scope(|scope| {
        let disturb = scope.spawn(|| {
            std::thread::sleep(pause_at);
            let pause_start = unix_us();
            for node in &nodes {
                node.stop_signal();
            }
            std::thread::sleep(PAUSE);
            for node in &nodes {
                node.cont_signal();
            }
            let pause_end = unix_us();
            std::thread::sleep(reset_at.saturating_sub(started.elapsed()));
            let reset_send = unix_us();
            let resets = reset(&servers[0]);
            let reset_receive = unix_us();
            Disturbances {
                pause_us: (pause_start, pause_end),
                reset_us: (reset_send, reset_receive),
                resets,
            }
        });
        let answers = runtime.block_on(async {
            let clients: Vec<_> = addresses
                .iter()
                .flat_map(|address| std::iter::repeat_n(*address, CLIENTS_PER_SERVER))
                .map(|address| tokio::spawn(hammer(address, until)))
                .collect();
            let mut answers = Vec::new();
            for client in clients {
                answers.extend(client.await.unwrap());
            }
            answers
        });
        (disturb.join().unwrap(), answers)
    });
    let calls = script_calls(&nodes);
    let leases_taken: Vec<u64> = servers
        .iter()
        .map(|server| metric(server, "tollgate_leases_taken_total"))
        .collect();

    // Attribute every allowed answer to its window.
    let period = micros(PERIOD);
    let mut admitted: BTreeMap<u64, u64> = BTreeMap::new();
    let mut unattributed = Vec::new();
    for answer in answers.iter().filter(|a| a.allowed) {
        match window_end(answer) {
            Ok(end) => *admitted.entry(end).or_default() += 1,
            Err(why) => unattributed.push(why),
        }
    }
    let allowed = answers.iter().filter(|a| a.allowed).count() as u64;
    let denied = answers.len() as u64 - allowed;
    println!(
        "{} checks: {allowed} allowed, {denied} denied; {calls} store script calls; \
         leases taken per server {leases_taken:?}; \
         pause {:?} µs, reset {:?} µs; admitted per window end: {admitted:?}",
        answers.len(),
        disturbances.pause_us,
        disturbances.reset_us
    );
    assert!(
        unattributed.is_empty(),
        "{} allowed answers cannot be placed in one window:\n{}",
        unattributed.len(),
        unattributed.join("\n")
    );
    // A reset forgets the window's count, and re-grants it by design: the
    // windows the reset may have landed in are exempt from the limit. Not
    // from every bound: a lease taken before the reset ends with its
    // window at the latest, so no other window is touched, and what the
    // reset lets through beyond a fresh limit is bounded by the units held
    // in leases when it was made (spent before its notice arrives, or
    // given back into the count after it: docs/LEASES.md), at most one
    // lease per server. Each reset sent may have run.
    let (reset_send, reset_receive) = disturbances.reset_us;
    let exempt = |end: u64| end > reset_send && end - period <= reset_receive;
    let reset_bound = (disturbances.resets + 1) * LIMIT + SERVERS as u64 * LEASE_MAX;
    let over: Vec<String> = admitted
        .iter()
        .filter_map(|(end, count)| {
            let bound = if exempt(*end) { reset_bound } else { LIMIT };
            (*count > bound)
                .then(|| format!("window ending at {end} µs admitted {count} > {bound}"))
        })
        .collect();
    assert!(over.is_empty(), "over-admission:\n{}", over.join("\n"));
    // The invariant was put to the test: several windows, under overload.
    let checked = admitted.keys().filter(|end| !exempt(**end)).count();
    assert!(checked >= 2, "only {checked} windows checked: {admitted:?}");
    assert!(
        denied > 0,
        "no check was denied: the fleet was not overloaded"
    );
    // The leases did something, on every server, as its metrics say.
    for (server, taken) in leases_taken.iter().enumerate() {
        assert!(
            *taken > 0,
            "server {server} took no lease: {leases_taken:?} (a store whose Store::leases is \
             false is never asked for one)"
        );
    }
    // And fewer store calls: without leases every admitted check is one
    // script call of its own (and denials add more), so fewer calls than
    // admitted checks means checks were served from leases.
    assert!(
        calls < allowed,
        "{calls} script calls for {allowed} admitted checks: no check was served from a lease"
    );
}

#[test]
fn three_servers_on_one_redis_never_over_admit_a_leased_key() {
    fleet_never_over_admits(Backend::Redis(RedisServer::start()));
}

#[test]
fn three_servers_on_a_redis_cluster_never_over_admit_a_leased_key() {
    fleet_never_over_admits(Backend::Cluster(RedisCluster::start(3, 0)));
}
