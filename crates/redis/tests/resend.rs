//! A decision never runs twice. Each decision is one script run that
//! charges quota, so the store may re-send it only after an error proving
//! it did not run (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `NOSCRIPT`);
//! a reply lost after the script ran must reach the caller as an error,
//! never as a second run. A settle likewise, and its retry by the caller
//! replays instead of charging again.
//!
//! The lost replies come from a TCP proxy between the store and Redis that
//! forwards every request but, for some decisions, ends the client's
//! connection instead of forwarding the reply, after Redis has run the
//! script. On a Cluster every master announces its proxy's port
//! (`cluster-announce-port`), so the client reaches every node through one.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tollgate::{Limiter, MultiDecision};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_testkit::redis::{RedisCluster, RedisServer};

/// Generous: a lost reply must surface as the connection's error, not as a
/// timeout; and a slot migration must fit in it.
const TIMEOUT: Duration = Duration::from_secs(3);
const TASKS: usize = 8;
const PER_TASK: usize = 40;
/// One decision reply in this many is lost (with every other reply still
/// in flight on the same connection).
const LOSE_EVERY: u64 = 16;
const POLICY: &str = "fixed_window 10/1h";

// ---------------------------------------------------------------- RESP

/// The end (exclusive) of the RESP2 frame starting at `at`, if `buf` holds
/// all of it.
fn frame_end(buf: &[u8], at: usize) -> Option<usize> {
    let kind = *buf.get(at)?;
    let cr = at + 1 + buf[at + 1..].windows(2).position(|w| w == b"\r\n")?;
    let after_line = cr + 2;
    let number = || -> i64 {
        std::str::from_utf8(&buf[at + 1..cr])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad RESP length {:?}", &buf[at..cr]))
    };
    match kind {
        b'+' | b'-' | b':' => Some(after_line),
        b'$' => match usize::try_from(number()) {
            Err(_) => Some(after_line), // nil
            Ok(len) => Some(after_line + len + 2).filter(|&end| end <= buf.len()),
        },
        b'*' => {
            let mut end = after_line;
            for _ in 0..number().max(0) {
                end = frame_end(buf, end)?;
            }
            Some(end)
        }
        other => panic!("unexpected RESP type {:?}", other as char),
    }
}

/// A complete request at the start of `buf` (an array of bulk strings, as
/// every client sends): its length and its arguments.
fn request(buf: &[u8]) -> Option<(usize, Vec<Vec<u8>>)> {
    let end = frame_end(buf, 0)?;
    assert_eq!(buf[0], b'*', "a request is an array");
    let mut args = Vec::new();
    let mut at = buf.iter().position(|&b| b == b'\n')? + 1;
    while at < end {
        let next = frame_end(buf, at)?;
        let start = at + buf[at..].iter().position(|&b| b == b'\n')? + 1;
        args.push(buf[start..next - 2].to_vec());
        at = next;
    }
    Some((end, args))
}

/// The identity of a decision request (`FCALL`, or `EVALSHA`/`EVAL`),
/// from its first key `<prefix>:{<identity>}:...`; `None` for any other
/// command.
fn decision_identity(args: &[Vec<u8>]) -> Option<String> {
    let verb = args.first()?.to_ascii_uppercase();
    if verb != b"FCALL" && verb != b"EVALSHA" && verb != b"EVAL" {
        return None;
    }
    identity_of(&String::from_utf8_lossy(args.get(3)?))
}

/// `<identity>` of a state key `<prefix>:{<identity>}:...` (the identities
/// of this file need no escaping).
fn identity_of(key: &str) -> Option<String> {
    let open = key.find('{')?;
    let close = open + key[open..].find('}')?;
    Some(key[open + 1..close].to_owned())
}

// ---------------------------------------------------------------- proxy

/// Which decision replies the proxies lose, and what they lost.
struct Faults {
    on: AtomicBool,
    replies: AtomicU64,
    /// Identities whose script ran (Redis replied with its array) but whose
    /// reply never reached the store.
    lost: Mutex<Vec<String>>,
}

impl Faults {
    fn new() -> Arc<Faults> {
        Arc::new(Faults {
            on: AtomicBool::new(true),
            replies: AtomicU64::new(0),
            lost: Mutex::new(Vec::new()),
        })
    }

    fn lose_next(&self) -> bool {
        self.on.load(Ordering::SeqCst)
            && (self.replies.fetch_add(1, Ordering::SeqCst) + 1) % LOSE_EVERY == 0
    }

    fn lost(&self) -> Vec<String> {
        self.lost.lock().expect("not poisoned").clone()
    }
}

/// A proxy on a free loopback port in front of `127.0.0.1:<upstream>`;
/// stops (with every connection it relays) when dropped.
struct Proxy {
    port: u16,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(upstream: u16, faults: Arc<Faults>) -> Proxy {
        // Port 0: the kernel picks a free port; nothing is hard-coded.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every relay.
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                relays.spawn(relay(client, upstream, Arc::clone(&faults)));
            }
        });
        Proxy { port, task }
    }
}

/// Relays one connection, request by request and reply by reply. When a
/// decision reply is to be lost, it ends the client's connection instead
/// of forwarding it, stops forwarding requests, and reads the replies to
/// every request already forwarded (all of which Redis ran), recording the
/// decisions among them as lost.
///
/// The connection ends in order: a FIN after the replies already written,
/// and the client's requests read (and dropped) until it closes its side.
/// Dropping the socket with requests unread would send a reset instead,
/// and a reset throws away replies written but not yet sent: their
/// decisions ran, yet they would count as delivered.
async fn relay(client: TcpStream, upstream: u16, faults: Arc<Faults>) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)).await else {
        return;
    };
    let (mut server_read, mut server_write) = server.into_split();
    let (client_read, to_client) = client.into_split();
    let mut client_read = Some(client_read);
    // `None` once the connection is ended: every reply from then on is lost.
    let mut to_client = Some(to_client);
    // One entry per request forwarded and not yet answered: the identity if
    // it is a decision.
    let mut pending: VecDeque<Option<String>> = VecDeque::new();
    let (mut from_client, mut from_server) = (Vec::new(), Vec::new());
    let (mut chunk_c, mut chunk_s) = ([0u8; 16384], [0u8; 16384]);
    loop {
        if client_read.is_none() && pending.is_empty() {
            return;
        }
        tokio::select! {
            read = async { client_read.as_mut().expect("guarded").read(&mut chunk_c).await },
                if client_read.is_some() =>
            {
                let n = match read {
                    Ok(0) | Err(_) if to_client.is_some() => return,
                    // The client closed the connection this proxy ended.
                    Ok(0) | Err(_) => {
                        client_read = None;
                        continue;
                    }
                    Ok(n) => n,
                };
                if to_client.is_none() {
                    continue; // sent after the end: never forwarded, never run
                }
                from_client.extend_from_slice(&chunk_c[..n]);
                while let Some((len, args)) = request(&from_client) {
                    pending.push_back(decision_identity(&args));
                    if server_write.write_all(&from_client[..len]).await.is_err() {
                        return;
                    }
                    from_client.drain(..len);
                }
            }
            read = server_read.read(&mut chunk_s), if !pending.is_empty() => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                from_server.extend_from_slice(&chunk_s[..n]);
                while let Some(len) = frame_end(&from_server, 0) {
                    let reply: Vec<u8> = from_server.drain(..len).collect();
                    let Some(identity) = pending.pop_front() else {
                        panic!("a reply to no request: {:?}", String::from_utf8_lossy(&reply));
                    };
                    // An array is the script's answer: it ran (an error such
                    // as NOSCRIPT means it did not).
                    let ran = identity.filter(|_| reply[0] == b'*');
                    if to_client.is_some() && ran.is_some() && faults.lose_next() {
                        // A FIN after what was written; the client's reads
                        // go on until it closes.
                        let mut ended = to_client.take().expect("checked");
                        let _ = ended.shutdown().await;
                    }
                    match (&mut to_client, ran) {
                        (Some(to_client), _) => {
                            if to_client.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                        (None, Some(identity)) => {
                            faults.lost.lock().expect("not poisoned").push(identity);
                        }
                        (None, None) => {}
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- workload

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Allowed,
    Denied,
    Failed(String),
}

fn limiter(store: RedisStore) -> Limiter<RedisStore> {
    Limiter::builder(store)
        .policy("api", POLICY.parse().expect("valid policy"))
        .build()
}

/// `TASKS` tasks each deciding `PER_TASK` fresh identities (`<tag>-t-n`)
/// once, concurrently: what the store reported for each.
async fn decide_all(limiter: &Limiter<RedisStore>, tag: &str) -> BTreeMap<String, Outcome> {
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let limiter = limiter.clone();
        let tag = tag.to_owned();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..PER_TASK {
                let identity = format!("{tag}-{t}-{n}");
                let outcome = match limiter.check("api", &identity, 1).await {
                    Ok(d) if d.allowed => Outcome::Allowed,
                    Ok(_) => Outcome::Denied,
                    Err(e) => Outcome::Failed(e.to_string()),
                };
                outcomes.push((identity, outcome));
            }
            outcomes
        });
    }
    let mut all = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("no panic"));
    }
    all
}

/// What Redis charged, per identity: the count of each fixed window
/// (`<window start>:<count>`) under `prefix`, read directly from `ports`
/// (every master of a Cluster; each holds its own keys).
async fn charges(ports: &[u16], prefix: &str) -> BTreeMap<String, u64> {
    let mut charged = BTreeMap::new();
    for port in ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect directly");
        let keys: Vec<String> = redis::cmd("KEYS")
            // States only (a reservation's record ends otherwise).
            .arg(format!("{prefix}:*:fixed_window"))
            .query_async(&mut connection)
            .await
            .expect("KEYS");
        for key in keys {
            let value: String = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .expect("GET");
            let count = common::fixed_window_count(&value)
                .unwrap_or_else(|| panic!("{key} = {value:?}: not a fixed window"));
            let identity = identity_of(&key).expect("a state key");
            assert!(
                charged.insert(identity, count).is_none(),
                "{key}: on two nodes"
            );
        }
    }
    charged
}

/// The exactness this file is about: every decision reported allowed was
/// charged exactly once; a failed one at most once, and exactly once when
/// its reply was lost after the script ran; nothing else was charged.
fn assert_exact(
    outcomes: &BTreeMap<String, Outcome>,
    charged: &BTreeMap<String, u64>,
    lost: &[String],
) {
    let lost: BTreeSet<&String> = lost.iter().collect();
    let mut failed = 0;
    for (identity, outcome) in outcomes {
        let times = charged.get(identity).copied().unwrap_or(0);
        match outcome {
            Outcome::Allowed => assert_eq!(
                times,
                1,
                "{identity}: reported allowed, charged {times} times (lost reply: {})",
                lost.contains(identity)
            ),
            Outcome::Denied => panic!("{identity}: denied, but nothing else used its quota"),
            Outcome::Failed(why) => {
                failed += 1;
                assert!(
                    times <= 1,
                    "{identity}: failed ({why}), charged {times} times"
                );
            }
        }
    }
    for identity in &lost {
        let outcome = outcomes.get(*identity).expect("a decision of this test");
        assert!(
            matches!(outcome, Outcome::Failed(_)),
            "{identity}: its reply was lost after the script ran, yet the store reported {outcome:?}"
        );
        assert_eq!(
            charged.get(*identity),
            Some(&1),
            "{identity}: lost, so charged once"
        );
    }
    let unknown: Vec<&String> = charged
        .keys()
        .filter(|i| !outcomes.contains_key(*i))
        .collect();
    assert!(unknown.is_empty(), "charged but never decided: {unknown:?}");
    let allowed = outcomes
        .values()
        .filter(|o| **o == Outcome::Allowed)
        .count();
    assert!(
        !lost.is_empty(),
        "no reply was lost: the test tested nothing"
    );
    assert!(
        allowed > outcomes.len() / 2,
        "only {allowed} of {} decisions got through; {failed} failed",
        outcomes.len()
    );
    eprintln!(
        "{} decisions: {allowed} allowed, {failed} failed, {} lost after running",
        outcomes.len(),
        lost.len()
    );
}

/// After the faults stop, the store works again: every call succeeds.
async fn assert_recovers(limiter: &Limiter<RedisStore>, tag: &str) {
    for n in 0..20 {
        let identity = format!("{tag}-after-{n}");
        let started = Instant::now();
        loop {
            match limiter.check("api", &identity, 1).await {
                Ok(d) => {
                    assert!(d.allowed, "{identity}");
                    break;
                }
                // The first call after the last lost reply may still meet
                // the broken connection.
                Err(e) => assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{identity}: still failing: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// redis-rs 0.32's ConnectionManager itself never re-sends a command, so
/// this guards the store's own re-sending (and a future redis-rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_lost_replies_are_errors_never_second_charges() {
    let server = RedisServer::start();
    let faults = Faults::new();
    let proxy = Proxy::start(server.port(), Arc::clone(&faults)).await;
    let prefix = common::unique_prefix();
    let store = RedisStore::connect(
        &format!("redis://127.0.0.1:{}", proxy.port),
        RedisOptions::default().prefix(&prefix).timeout(TIMEOUT),
    )
    .await
    .expect("connect through the proxy");
    let limiter = limiter(store);

    let outcomes = decide_all(&limiter, "s").await;
    faults.on.store(false, Ordering::SeqCst);
    let charged = charges(&[server.port()], &prefix).await;
    assert_exact(&outcomes, &charged, &faults.lost());
    assert_recovers(&limiter, "s").await;
}

/// A settle whose reply is lost after it ran is an error, never re-sent by
/// the store; the caller retries it, and the retry replays: the overdraft
/// is charged once. Concurrent settles, one reply in `LOSE_EVERY` lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_whose_reply_is_lost_replays_when_retried() {
    use tollgate::{Check, Mode, PolicyRef, ReserveCall, SettleCall, Store};
    let server = RedisServer::start();
    let faults = Faults::new();
    let proxy = Proxy::start(server.port(), Arc::clone(&faults)).await;
    let prefix = common::unique_prefix();
    let store = RedisStore::connect(
        &format!("redis://127.0.0.1:{}", proxy.port),
        RedisOptions::default().prefix(&prefix).timeout(TIMEOUT),
    )
    .await
    .expect("connect through the proxy");
    let policy: tollgate::Policy = POLICY.parse().expect("valid policy");
    let identities: Vec<String> = (0..TASKS * 8).map(|i| format!("settle-{i}")).collect();
    // Reserves reach the store and back: their replies are not lost.
    faults.on.store(false, Ordering::SeqCst);
    for (i, identity) in identities.iter().enumerate() {
        let refs = [PolicyRef {
            name: "api",
            policy: &policy,
        }];
        let call = ReserveCall {
            check: Check::new(identity.as_bytes(), &refs, 2, Mode::Consume),
            nonce: i as u128,
            deadline_us: 60_000_000,
        };
        let decisions = store.reserve(call).await.expect("reserve");
        assert!(decisions[0].allowed, "{decisions:?}");
    }
    faults.on.store(true, Ordering::SeqCst);
    // Each settled at 7: 5 more than its estimate of 2, retried until an
    // answer comes back.
    let mut tasks = JoinSet::new();
    for (i, identity) in identities.iter().cloned().enumerate() {
        let (store, policy) = (store.clone(), policy);
        tasks.spawn(async move {
            let refs = [PolicyRef {
                name: "api",
                policy: &policy,
            }];
            let call = SettleCall {
                key: identity.as_bytes(),
                policies: &refs,
                nonce: i as u128,
                actual: 7,
            };
            let mut failures = 0;
            loop {
                match store.settle(call).await {
                    Ok(answer) => return (identity, failures, answer),
                    Err(error) => {
                        failures += 1;
                        assert!(failures < 100, "{identity}: {error}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
    }
    let mut retried = 0;
    for (identity, failures, answer) in tasks.join_all().await {
        let answer = answer.unwrap_or_else(|| panic!("{identity}: no reservation"));
        assert_eq!(
            (answer.actual, answer.settled[0].charged),
            (7, 5),
            "{identity}"
        );
        // Only a retry after a lost reply (the settle ran) replays.
        let lost = faults.lost().contains(&identity);
        assert_eq!(answer.replayed, lost, "{identity}: {failures} failures");
        retried += usize::from(lost);
    }
    faults.on.store(false, Ordering::SeqCst);
    assert!(
        retried > 0,
        "no settle reply was lost: the test proved nothing"
    );
    // Every window holds 2 + 5: charged once.
    let charged = charges(&[server.port()], &prefix).await;
    for identity in &identities {
        assert_eq!(charged.get(identity), Some(&7), "{identity}: {charged:?}");
    }
}

/// The master ports that the node on `port` lists in `CLUSTER SLOTS`.
async fn announced_ports(port: u16) -> BTreeSet<u16> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return BTreeSet::new();
    };
    let Ok(Value::Array(ranges)) = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<Value>(&mut connection)
        .await
    else {
        return BTreeSet::new();
    };
    ranges
        .iter()
        .filter_map(|range| match range {
            Value::Array(fields) => match fields.get(2) {
                Some(Value::Array(master)) => match master.get(1) {
                    Some(Value::Int(port)) => u16::try_from(*port).ok(),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// With redis-rs's `retries(2)` the Cluster client re-sent a decision whose
/// reply was lost on a new connection: reported allowed, charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lost_replies_are_errors_never_second_charges() {
    let mut cluster = RedisCluster::start(3, 0);
    let masters = cluster.master_ports();
    let faults = Faults::new();
    let mut proxies = Vec::new();
    for &port in &masters {
        proxies.push(Proxy::start(port, Arc::clone(&faults)).await);
    }
    // Every master announces its proxy: CLUSTER SLOTS, MOVED and ASK name
    // the proxies, so the client never reaches a node directly.
    for (port, proxy) in masters.iter().zip(&proxies) {
        let node = cluster
            .nodes()
            .iter()
            .find(|n| n.port() == *port)
            .expect("a master is a node");
        let port = proxy.port.to_string();
        assert_eq!(
            node.cli(&["CONFIG", "SET", "cluster-announce-port", &port]),
            "OK"
        );
    }
    let proxy_ports: BTreeSet<u16> = proxies.iter().map(|p| p.port).collect();
    let started = Instant::now();
    for &port in &masters {
        while announced_ports(port).await != proxy_ports {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "node {port} still announces {:?}, expected {proxy_ports:?}",
                announced_ports(port).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let prefix = common::unique_prefix();
    let seeds: Vec<String> = proxy_ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let store = RedisStore::connect_cluster(
        &seeds,
        RedisOptions::default().prefix(&prefix).timeout(TIMEOUT),
    )
    .await
    .expect("connect to the cluster through the proxies");
    let limiter = limiter(store);

    let outcomes = decide_all(&limiter, "c").await;
    faults.on.store(false, Ordering::SeqCst);
    let charged = charges(&masters, &prefix).await;
    assert_exact(&outcomes, &charged, &faults.lost());
    assert_recovers(&limiter, "c").await;
}

// ---------------------------------------------------------------- slot migration

/// A Cluster store checking two policies of one identity (two keys in one
/// slot) at once, and the slot's migration in the test's hands.
struct Migration {
    cluster: RedisCluster,
    limiter: Limiter<RedisStore>,
    identity: &'static str,
    /// The state keys of policies `a` and `b`.
    keys: [String; 2],
    slot: String,
    source: u16,
    target: u16,
}

impl Migration {
    async fn start(identity: &'static str) -> Migration {
        let mut cluster = RedisCluster::start(3, 0);
        let store = RedisStore::connect_cluster(
            &cluster.urls(),
            RedisOptions::default()
                .prefix(common::unique_prefix())
                .timeout(TIMEOUT),
        )
        .await
        .expect("connect to the cluster");
        let limiter = Limiter::builder(store)
            .policy("a", "fixed_window 100/1h".parse().expect("valid"))
            .policy("b", "fixed_window 50/1h".parse().expect("valid"))
            .build();
        let keys = ["a", "b"].map(|name| {
            let policy = limiter.policy(name).expect("registered");
            let key = limiter
                .store()
                .key(identity.as_bytes(), &tollgate::PolicyRef { name, policy });
            String::from_utf8(key).expect("an ASCII key")
        });
        let masters = cluster.master_ports();
        let first = cluster
            .nodes()
            .iter()
            .find(|n| n.port() == masters[0])
            .expect("a master is a node");
        let slot = first.cli(&["CLUSTER", "KEYSLOT", &keys[0]]);
        assert_eq!(
            slot,
            first.cli(&["CLUSTER", "KEYSLOT", &keys[1]]),
            "one slot"
        );
        // A master that does not own the slot answers `MOVED <slot> <owner>`.
        let answer = first.cli(&["GET", &keys[0]]);
        let source = match answer.strip_prefix("MOVED ") {
            Some(redirect) => redirect
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("bad redirect {answer:?}")),
            None => masters[0],
        };
        let target = *masters.iter().find(|&&m| m != source).expect("3 masters");
        Migration {
            cluster,
            limiter,
            identity,
            keys,
            slot,
            source,
            target,
        }
    }

    fn cli(&mut self, port: u16, args: &[&str]) -> String {
        self.cluster
            .nodes()
            .iter()
            .find(|n| n.port() == port)
            .expect("a node of the cluster")
            .cli(args)
    }

    /// Marks the slot IMPORTING on the target and MIGRATING on the source.
    fn begin(&mut self) {
        let source_id = self.cli(self.source, &["CLUSTER", "MYID"]);
        let target_id = self.cli(self.target, &["CLUSTER", "MYID"]);
        let slot = self.slot.clone();
        let importing = ["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id];
        assert_eq!(self.cli(self.target, &importing), "OK");
        let migrating = ["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id];
        assert_eq!(self.cli(self.source, &migrating), "OK");
    }

    /// Moves policy `index`'s key from the source to the target.
    fn migrate(&mut self, index: usize) {
        let key = self.keys[index].clone();
        let target = self.target.to_string();
        let args = [
            "MIGRATE",
            "127.0.0.1",
            &target,
            "",
            "0",
            "5000",
            "KEYS",
            &key,
        ];
        assert_eq!(self.cli(self.source, &args), "OK", "MIGRATE {key}");
    }

    /// Gives the slot to the target, on every master.
    fn finish(&mut self) {
        let target_id = self.cli(self.target, &["CLUSTER", "MYID"]);
        let slot = self.slot.clone();
        for port in self.cluster.master_ports() {
            let args = ["CLUSTER", "SETSLOT", &slot, "NODE", &target_id];
            assert_eq!(self.cli(port, &args), "OK");
        }
    }

    /// Checks both policies for the identity, charging 1.
    async fn check(&self) -> Result<MultiDecision, tollgate::Error> {
        self.limiter.check_all(&["a", "b"], self.identity, 1).await
    }

    /// The count in each policy's fixed window on the node on `port`, 0
    /// if the key is not there. Asked directly, after `ASKING`, so that an
    /// importing node answers for the keys it already holds.
    async fn counts(&self, port: u16) -> [u64; 2] {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect directly");
        let mut counts = [0; 2];
        for (count, key) in counts.iter_mut().zip(&self.keys) {
            let held: (u64,) = redis::pipe()
                .cmd("ASKING")
                .ignore()
                .cmd("EXISTS")
                .arg(key)
                .query_async(&mut connection)
                .await
                .unwrap_or((0,)); // ASK or MOVED: not here
            if held.0 == 0 {
                continue;
            }
            let (value,): (String,) = redis::pipe()
                .cmd("ASKING")
                .ignore()
                .cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
                .expect("GET a key the node holds");
            *count = common::fixed_window_count(&value)
                .unwrap_or_else(|| panic!("{key} = {value:?} on {port}"));
        }
        counts
    }
}

/// Checks both policies once; asserts it was allowed and what remains.
fn assert_allowed(result: Result<MultiDecision, tollgate::Error>, checks_so_far: u64) {
    let decision = result.expect("the check is decided");
    assert!(decision.allowed, "{decision:?}");
    let remaining: Vec<u64> = decision.decisions.iter().map(|d| d.remaining).collect();
    assert_eq!(
        remaining,
        [100 - checks_so_far, 50 - checks_so_far],
        "each check charged exactly once"
    );
}

/// With the keys of one check split between two nodes, every attempt gets
/// TRYAGAIN until the migration ends; the check must be retried within its
/// timeout (redis-rs's two retries gave up after some 60 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_multi_policy_check_waits_out_a_migration_that_splits_its_keys() {
    let mut m = Migration::start("split").await;
    assert_allowed(m.check().await, 1);
    m.begin();
    m.migrate(0);
    // The keys are split between the two nodes: every multi-key command on
    // the slot gets TRYAGAIN until the migration ends.
    let (a, b) = (m.keys[0].clone(), m.keys[1].clone());
    let answer = m.cli(m.source, &["EXISTS", &a, &b]);
    assert!(answer.starts_with("TRYAGAIN"), "{answer}");

    let limiter = m.limiter.clone();
    let started = Instant::now();
    let during = tokio::spawn(async move {
        let result = limiter.check_all(&["a", "b"], "split", 1).await;
        (result, started.elapsed())
    });
    const MIGRATION: Duration = Duration::from_millis(500);
    tokio::time::sleep(MIGRATION).await;
    if during.is_finished() {
        let (result, took) = during.await.expect("no panic");
        panic!("the check gave up during the migration, after {took:?}: {result:?}");
    }
    m.migrate(1);
    m.finish();
    let (result, took) = during.await.expect("no panic");
    assert_allowed(result, 2);
    assert!(took >= MIGRATION, "decided during the migration? {took:?}");
    assert!(took < TIMEOUT, "{took:?}");
    // Charged once, where the keys now live.
    assert_eq!(m.counts(m.target).await, [2, 2]);
    assert_eq!(m.counts(m.source).await, [0, 0]);
    assert_allowed(m.check().await, 3);
}

/// The node an ASK names may lack the library: a master taking its first
/// slot owns none, so a load sent to every master misses it. The call is
/// sent there again as an EVAL of its script (which carries its code),
/// after ASKING, and is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_to_a_node_without_the_library_is_decided_there_by_eval() {
    let mut m = Migration::start("asknolib").await;
    assert_allowed(m.check().await, 1);
    m.begin();
    m.migrate(0);
    m.migrate(1);
    let target = m.target;
    assert_eq!(m.cli(target, &["FUNCTION", "FLUSH"]), "OK");
    assert_allowed(m.check().await, 2);
    assert_eq!(m.counts(m.target).await, [2, 2]);
    assert_eq!(
        m.cli(target, &["FUNCTION", "LIST"]),
        "",
        "decided by EVAL on the target, not by loading the library there"
    );
}

/// The redirections the store now follows itself, redis-rs's retries being
/// off: ASK (with ASKING, on the importing node) and MOVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_check_follows_ask_then_moved_during_a_migration() {
    let mut m = Migration::start("ask").await;
    assert_allowed(m.check().await, 1);
    m.begin();
    m.migrate(0);
    m.migrate(1);
    // Both keys moved, the slot still MIGRATING: the source answers ASK,
    // the target runs the call after ASKING.
    let started = Instant::now();
    assert_allowed(m.check().await, 2);
    assert!(started.elapsed() < TIMEOUT / 2, "{:?}", started.elapsed());
    assert_eq!(m.counts(m.target).await, [2, 2]);
    // The slot is the target's: the source answers MOVED.
    m.finish();
    assert_allowed(m.check().await, 3);
    assert_eq!(m.counts(m.target).await, [3, 3]);
    assert_eq!(m.counts(m.source).await, [0, 0]);
}
