//! Real `redis-server` processes for tests: one standalone server (on TCP,
//! and on a unix socket too if asked), a Redis Cluster, or a master with
//! replicas watched by `redis-sentinel` processes ([`RedisSentinel`]), each
//! on free loopback ports, killed when dropped.
//!
//! Nothing here is a mock. Every server is a child process of the test, so
//! a test can kill it, restart it on the same port, or hang it with
//! `SIGSTOP`, and see exactly what a client would see in production.
//!
//! The binaries come from `TOLLGATE_REDIS_SERVER` and `TOLLGATE_REDIS_CLI`
//! when set, else `redis-server` and `redis-cli` on `PATH`. A missing binary
//! is a panic that says how to install it, never a silently skipped test.
//!
//! ```
//! use tollgate_testkit::redis::RedisServer;
//!
//! let mut server = RedisServer::start();
//! assert_eq!(server.cli(&["SET", "greeting", "hello"]), "OK");
//! assert_eq!(server.cli(&["GET", "greeting"]), "hello");
//! server.kill();
//! server.restart(); // same port, empty data set: nothing is persisted
//! assert_eq!(server.cli(&["EXISTS", "greeting"]), "0");
//! ```
//!
//! Ports come from [`crate::ports`]: remembered for the life of the test
//! process and never handed out twice, so parallel tests cannot collide
//! with each other (nor with a cluster node's bus port, `port + 10000`). Collisions with
//! other processes are caught at start (the server fails to bind, or another
//! server answers on the port) and retried on a fresh port.
//!
//! Limitation: cleanup runs in `Drop`, which also runs when a test panics,
//! but not when the test process itself is killed (`SIGKILL`, an aborting
//! panic); servers started by such a process are left running.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::ports;

mod sentinel;
pub use sentinel::{RedisSentinel, SentinelSetup};

/// How long a server may take from spawn to answering `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports `start` tries when another process takes its port.
const START_ATTEMPTS: usize = 5;
/// The cluster bus listens on `port + 10000`, so a node's port must leave
/// room for it below 65536.
const CLUSTER_BUS_OFFSET: u16 = 10_000;
/// Bound on every `redis-cli` run by [`RedisServer::cli`].
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on `redis-cli --cluster create`, which itself waits for the join.
const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on waiting for a new cluster to agree on its shape.
const CLUSTER_FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one internal request to a node while polling.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between polls.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Lines of the server log quoted in a panic message.
const LOG_TAIL_LINES: usize = 30;
/// The number of hash slots in every Redis Cluster.
const CLUSTER_SLOTS: usize = 16_384;

const INSTALL_HINT: &str = "install Redis with `apt-get install redis-server redis-tools` \
     (Debian/Ubuntu)";
/// Where a server started by [`RedisServer::start_with_unix_socket`]
/// listens, relative to its directory (Redis changes into `--dir` first).
const UNIX_SOCKET: &str = "redis.sock";

/// Makes directory names unique even if a port is reused by another process.
static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A key prefix no other store in this test process uses, so that stores
/// sharing one Redis never see each other's keys.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One standalone `redis-server` on `127.0.0.1:<free port>`, killed on drop
/// (also when the test panics).
///
/// The server runs with no persistence (`--save "" --appendonly no`) in a
/// temporary directory of its own, which holds its log and is removed on
/// drop.
pub struct RedisServer {
    /// Resolved once, so a restart runs the same binary.
    binary: PathBuf,
    /// Fixed for the server's life: `restart` comes back on the same port.
    port: u16,
    /// Arguments after the defaults, so they can override them; replayed by
    /// `restart`.
    extra_args: Vec<String>,
    /// Working directory: the log, and `nodes.conf` for a cluster node (kept
    /// across a restart so the node rejoins its cluster as itself).
    dir: PathBuf,
    /// `None` once killed; dropping a `Child` would not kill the process.
    child: Option<Child>,
    /// The pid of the latest process, kept after `kill` for `/proc` checks.
    pid: u32,
    /// Set by `stop_signal`: a stopped node cannot answer, so cluster polls
    /// skip it rather than wait for it.
    stopped: AtomicBool,
}

/// Why one attempt to bring a server up failed.
struct StartFailure {
    /// Another process holds the port: worth retrying elsewhere (or later,
    /// for a restart on the same port).
    port_taken: bool,
    message: String,
}

impl fmt::Display for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl RedisServer {
    /// Starts a standalone server on a free loopback port and waits until it
    /// answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` cannot be found (the message says how to install
    /// it), or the server does not come up within 10 s (the message quotes
    /// its log).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments
    /// (`--option value` pairs) after the defaults, so they can override
    /// them, e.g. `&["--maxmemory", "1mb"]`.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start); bad arguments make the server exit, which
    /// panics with its log.
    pub fn start_with(args: &[&str]) -> RedisServer {
        Self::launch(args.iter().map(|a| (*a).to_owned()).collect(), false)
    }

    /// Like [`start`](Self::start), and also listening on a unix socket in
    /// its directory (mode 700): see [`unix_socket`](Self::unix_socket) and
    /// [`unix_url`](Self::unix_url). `args` as for
    /// [`start_with`](Self::start_with).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start), and if the socket is missing once the
    /// server answers.
    pub fn start_with_unix_socket(args: &[&str]) -> RedisServer {
        let mut all = vec!["--unixsocket", UNIX_SOCKET, "--unixsocketperm", "700"];
        all.extend_from_slice(args);
        let server = Self::start_with(&all);
        assert!(
            server.unix_socket().exists(),
            "redis-server answers on port {} but its unix socket {} is missing",
            server.port,
            server.unix_socket().display()
        );
        server
    }

    /// The unix socket of a server started by
    /// [`start_with_unix_socket`](Self::start_with_unix_socket) (the path
    /// is in its temporary directory, so it is unique).
    pub fn unix_socket(&self) -> PathBuf {
        self.dir.join(UNIX_SOCKET)
    }

    /// `unix://<socket path>`: see [`unix_socket`](Self::unix_socket).
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.unix_socket().display())
    }

    /// Starts on a fresh port, retrying on another port when the first is
    /// taken; `cluster_bus` also requires `port + 10000` to be free.
    fn launch(extra_args: Vec<String>, cluster_bus: bool) -> RedisServer {
        let binary = redis_server_binary();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = ports::reserve(cluster_bus.then_some(CLUSTER_BUS_OFFSET));
            let dir = std::env::temp_dir().join(format!(
                "tollgate-redis-{}-{port}-{}",
                std::process::id(),
                DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            if let Err(e) = fs::create_dir_all(&dir) {
                panic!(
                    "cannot create the redis-server directory {}: {e}",
                    dir.display()
                );
            }
            let mut server = RedisServer {
                binary: binary.clone(),
                port,
                extra_args: extra_args.clone(),
                dir,
                child: None,
                pid: 0,
                stopped: AtomicBool::new(false),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                // Dropping `server` kills what is left and removes its dir.
                Err(failure) if failure.port_taken => failures.push(failure.message),
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!(
            "redis-server could not get a free port in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the server (of the latest one after a restart; of
    /// the dead one after [`kill`](Self::kill)).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the server with `SIGKILL` and reaps it, so its port is closed
    /// when this returns. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means the process has already exited; `wait`
            // still reaps it.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped.store(false, Ordering::Relaxed);
    }

    /// Starts the server again on the same port, with the same arguments and
    /// directory, and waits until it answers `PING`. Kills the running
    /// process first, if any. Data is not kept (nothing is persisted), but a
    /// cluster node keeps its `nodes.conf` and rejoins as the same node.
    ///
    /// # Panics
    ///
    /// If the server does not come back within 10 s, or the port stays
    /// taken by another process.
    pub fn restart(&mut self) {
        self.kill();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(failure) if failure.port_taken => {
                    failures.push(failure.message);
                    thread::sleep(Duration::from_millis(200));
                }
                Err(failure) => panic!("restart: {failure}"),
            }
        }
        panic!(
            "redis-server could not restart on port {}, which stays taken:\n{}",
            self.port,
            failures.join("\n---\n")
        );
    }

    /// Sends `SIGSTOP`: the process hangs, its socket still accepts
    /// connections, and nothing is answered until [`cont_signal`](Self::cont_signal).
    ///
    /// # Panics
    ///
    /// If the server is not running or `kill` fails.
    pub fn stop_signal(&self) {
        self.signal("-STOP");
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Sends `SIGCONT`, resuming a server hung by [`stop_signal`](Self::stop_signal).
    ///
    /// # Panics
    ///
    /// If the server is not running or `kill` fails.
    pub fn cont_signal(&self) {
        self.signal("-CONT");
        self.stopped.store(false, Ordering::Relaxed);
    }

    /// Runs `redis-cli -h 127.0.0.1 -p <port> <args>` and returns its
    /// standard output, trimmed. An error reply is output too (for example
    /// `MOVED 3999 127.0.0.1:40001`), so a test can assert on it.
    ///
    /// # Panics
    ///
    /// If `redis-cli` cannot be found or run, exits with a failure (for
    /// example when it cannot connect; the message quotes its stderr), or
    /// takes more than 10 s (as it would against a stopped server).
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut command = Command::new(redis_cli_binary());
        command.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        let description = format!("redis-cli -p {port} {}", args.join(" "));
        match run_bounded(&mut command, CLI_TIMEOUT) {
            Ok(output) if output.status.success() => output.stdout.trim().to_owned(),
            Ok(output) => panic!(
                "`{description}` failed ({}):\nstderr: {}\nstdout: {}",
                output.status,
                output.stderr.trim(),
                output.stdout.trim()
            ),
            Err(e) => panic!("`{description}`: {e}"),
        }
    }

    /// True while the process is running and not stopped: the nodes a
    /// cluster poll can expect an answer from.
    fn is_live(&self) -> bool {
        self.child.is_some() && !self.stopped.load(Ordering::Relaxed)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Spawns the process on `self.port` and waits until it is the one
    /// answering there. On failure, the process is killed.
    fn spawn_and_wait(&mut self) -> Result<(), StartFailure> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .and_then(|file| Ok((file.try_clone()?, file)));
        let (stdout_log, stderr_log) = match log {
            Ok(pair) => pair,
            Err(e) => panic!(
                "cannot open the redis-server log {}: {e}",
                log_path.display()
            ),
        };
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let child = Command::new(&self.binary)
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &port, "--dir", &dir])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .args(&self.extra_args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdout_log)
            .stderr(stderr_log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run {}: {e}; {INSTALL_HINT}, or set TOLLGATE_REDIS_SERVER",
                self.binary.display()
            ),
        };
        self.pid = child.id();
        self.child = Some(child);
        self.stopped.store(false, Ordering::Relaxed);
        let result = self.wait_ready();
        if result.is_err() {
            self.kill();
        }
        result
    }

    /// Polls until `PING` answers `PONG` and `INFO` names our pid (another
    /// server may own the port, answering before ours fails to bind).
    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                let tail = log_tail(&self.log_path());
                return Err(StartFailure {
                    port_taken: tail.contains("Address already in use"),
                    message: format!(
                        "redis-server on port {} exited during startup ({status}); log {}:\n{tail}",
                        self.port,
                        self.log_path().display()
                    ),
                });
            }
            if request(self.port, &["PING"], PROBE_TIMEOUT).is_ok_and(|reply| reply == "PONG") {
                let info = request(self.port, &["INFO", "server"], PROBE_TIMEOUT);
                match info.as_deref().map(|text| info_field(text, "process_id")) {
                    Ok(Some(pid)) if pid == self.pid.to_string() => return Ok(()),
                    Ok(Some(other)) => {
                        return Err(StartFailure {
                            port_taken: true,
                            message: format!(
                                "port {} is served by another redis-server (pid {other})",
                                self.port
                            ),
                        });
                    }
                    // Not an answer we understand yet: poll again.
                    Ok(None) | Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(StartFailure {
                    port_taken: false,
                    message: format!(
                        "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; log {}:\n{}",
                        self.port,
                        self.log_path().display(),
                        log_tail(&self.log_path())
                    ),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The exit status if the process has exited on its own.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    fn signal(&self, which: &str) {
        assert!(
            self.child.is_some(),
            "cannot send {which} to the redis-server on port {}: it is not running",
            self.port
        );
        let pid = self.pid.to_string();
        match run_bounded(Command::new("kill").args([which, &pid]), CLI_TIMEOUT) {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!("`kill {which} {pid}` failed: {}", output.stderr.trim()),
            Err(e) => panic!("`kill {which} {pid}`: {e}"),
        }
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("running", &self.child.is_some())
            .field("stopped", &self.stopped.load(Ordering::Relaxed))
            .field("dir", &self.dir)
            .finish()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `masters` masters with `replicas_per_master` replicas
/// each, every node a [`RedisServer`] on loopback, all killed on drop.
///
/// Nodes run with `--cluster-node-timeout 1000`, so a killed master is
/// failed over in a few seconds, and `--repl-diskless-sync-delay 0`, so
/// replicas sync at once instead of after Redis' default 5 s.
///
/// ```no_run
/// use std::time::Duration;
/// use tollgate_testkit::redis::RedisCluster;
///
/// let mut cluster = RedisCluster::start(3, 1);
/// let master = cluster.master_ports()[0];
/// let node = cluster.nodes().iter_mut().find(|n| n.port() == master).unwrap();
/// node.kill();
/// cluster.wait_until_ok(Duration::from_secs(15)); // a replica took over
/// assert!(!cluster.master_ports().contains(&master));
/// ```
pub struct RedisCluster {
    /// Masters first, as given to `redis-cli --cluster create`; roles change
    /// with failovers, so ask [`master_ports`](Self::master_ports).
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes, creates the
    /// cluster with `redis-cli --cluster create ... --cluster-yes`, and waits
    /// until every node reports `cluster_state:ok` with all 16384 slots
    /// assigned, knows every other node, sees the intended masters and
    /// replicas, and every replica's link to its master is up.
    ///
    /// # Panics
    ///
    /// If `masters < 3` (Redis Cluster needs three), a binary is missing, a
    /// node does not start, or the cluster does not form within 30 s.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters, {masters} requested"
        );
        let cli = redis_cli_binary();
        let total = masters * (1 + replicas_per_master);
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--repl-diskless-sync-delay",
            "0",
        ];
        let nodes = (0..total)
            .map(|_| {
                RedisServer::launch(cluster_args.iter().map(|a| (*a).to_owned()).collect(), true)
            })
            .collect();
        let cluster = RedisCluster { nodes };

        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let replicas = replicas_per_master.to_string();
        let mut create = Command::new(cli);
        create.args(["--cluster", "create"]).args(&addresses).args([
            "--cluster-replicas",
            &replicas,
            "--cluster-yes",
        ]);
        match run_bounded(&mut create, CLUSTER_CREATE_TIMEOUT) {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "`redis-cli --cluster create {}` failed ({}):\n{}\n{}",
                addresses.join(" "),
                output.status,
                output.stdout.trim(),
                output.stderr.trim()
            ),
            Err(e) => panic!("`redis-cli --cluster create`: {e}"),
        }

        let expected_replicas = masters * replicas_per_master;
        cluster.poll_until(CLUSTER_FORM_TIMEOUT, "form", |node| {
            let info = request(node.port, &["CLUSTER", "INFO"], PROBE_TIMEOUT)?;
            check_cluster_info(&info, Some(total))?;
            let view =
                parse_cluster_nodes(&request(node.port, &["CLUSTER", "NODES"], PROBE_TIMEOUT)?);
            let serving = serving_masters(&view)?;
            let seen_masters = view.iter().filter(|n| n.is_master()).count();
            let seen_replicas = view.iter().filter(|n| n.has_flag("slave")).count();
            if (serving.len(), seen_masters, seen_replicas) != (masters, masters, expected_replicas)
            {
                return Err(format!(
                    "sees {seen_masters} masters and {seen_replicas} replicas, \
                     expected {masters} and {expected_replicas}"
                ));
            }
            let myself = view.iter().find(|n| n.has_flag("myself"));
            if myself.is_some_and(|n| n.has_flag("slave")) {
                let replication = request(node.port, &["INFO", "replication"], PROBE_TIMEOUT)?;
                let link = info_field(&replication, "master_link_status");
                if link.as_deref() != Some("up") {
                    return Err(format!("replica link to its master is {link:?}"));
                }
            }
            Ok(serving)
        });
        cluster
    }

    /// A seed URL (`redis://127.0.0.1:<port>`) for every node, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every node, masters and replicas, to kill, restart, stop or query.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The ports of the current masters, sorted, as the first live node that
    /// answers `CLUSTER NODES` sees them. Masters flagged `fail` (confirmed
    /// down) are left out; those only suspected (`fail?`) are kept.
    ///
    /// # Panics
    ///
    /// If no live node answers.
    pub fn master_ports(&self) -> Vec<u16> {
        let mut errors = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_live()) {
            match request(node.port, &["CLUSTER", "NODES"], PROBE_TIMEOUT) {
                Ok(text) => {
                    let mut ports: Vec<u16> = parse_cluster_nodes(&text)
                        .iter()
                        .filter(|n| n.is_master())
                        .map(|n| n.port)
                        .collect();
                    ports.sort_unstable();
                    return ports;
                }
                Err(e) => errors.push(format!("port {}: {e}", node.port)),
            }
        }
        panic!(
            "no live cluster node answered CLUSTER NODES: {}",
            errors.join("; ")
        );
    }

    /// Polls every live node (running and not stopped) until all report
    /// `cluster_state:ok` with all 16384 slots assigned, and agree that
    /// every slot is served by a master that is live and not suspected
    /// down.
    ///
    /// The second half is what makes this useful right after a master was
    /// killed or stopped: the other nodes keep reporting `cluster_state:ok`
    /// until they notice (about a second, the node timeout), so `ok` alone
    /// would pass before the failover had even begun.
    ///
    /// # Panics
    ///
    /// If that does not happen within `timeout`; the message says what each
    /// node reported last.
    pub fn wait_until_ok(&self, timeout: Duration) {
        self.poll_until(timeout, "serve every slot from a live master", |node| {
            check_cluster_info(
                &request(node.port, &["CLUSTER", "INFO"], PROBE_TIMEOUT)?,
                None,
            )?;
            serving_masters(&parse_cluster_nodes(&request(
                node.port,
                &["CLUSTER", "NODES"],
                PROBE_TIMEOUT,
            )?))
        });
    }

    /// Polls `check` on every live node until it passes on all of them at
    /// once, they agree on the masters serving slots (what `check` returns),
    /// and those masters are live; or panics after `timeout` with the last
    /// reasons.
    fn poll_until<F>(&self, timeout: Duration, goal: &str, check: F)
    where
        F: Fn(&RedisServer) -> Result<BTreeSet<u16>, String>,
    {
        let live: BTreeSet<u16> = self
            .nodes
            .iter()
            .filter(|node| node.is_live())
            .map(|node| node.port)
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let mut failures = Vec::new();
            let mut views = BTreeSet::new();
            for node in self.nodes.iter().filter(|node| node.is_live()) {
                let port = node.port;
                match check(node) {
                    Ok(serving) => {
                        let down: Vec<&u16> = serving.difference(&live).collect();
                        if !down.is_empty() {
                            failures.push(format!(
                                "  127.0.0.1:{port}: slots served by masters that are down: {down:?}"
                            ));
                        }
                        views.insert(serving);
                    }
                    Err(why) => failures.push(format!("  127.0.0.1:{port}: {why}")),
                }
            }
            if views.len() > 1 {
                failures.push(format!(
                    "  nodes disagree on the masters serving slots: {views:?}"
                ));
            }
            if failures.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the Redis Cluster did not {goal} within {timeout:?}:\n{}",
                    failures.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// `Ok` if `CLUSTER INFO` says the cluster is up with every slot assigned
/// (and, when given, that the node knows `known_nodes` nodes).
fn check_cluster_info(info: &str, known_nodes: Option<usize>) -> Result<(), String> {
    let state = info_field(info, "cluster_state");
    if state.as_deref() != Some("ok") {
        return Err(format!("cluster_state is {state:?}"));
    }
    let slots = info_field(info, "cluster_slots_assigned");
    if slots != Some(CLUSTER_SLOTS.to_string()) {
        return Err(format!("cluster_slots_assigned is {slots:?}"));
    }
    if let Some(expected) = known_nodes {
        let known = info_field(info, "cluster_known_nodes");
        if known != Some(expected.to_string()) {
            return Err(format!(
                "cluster_known_nodes is {known:?}, expected {expected}"
            ));
        }
    }
    Ok(())
}

/// The ports of the masters that serve slots in one node's view.
///
/// # Errors
///
/// If one of them is flagged `fail` or `fail?`: its slots are not served
/// until a replica takes over (or it comes back).
fn serving_masters(view: &[NodeLine]) -> Result<BTreeSet<u16>, String> {
    let mut serving = BTreeSet::new();
    for node in view.iter().filter(|n| n.serves_slots) {
        if node.has_flag("fail") || node.has_flag("fail?") {
            return Err(format!(
                "the master on port {} serves slots but is flagged {}",
                node.port,
                node.flags.join(",")
            ));
        }
        serving.insert(node.port);
    }
    Ok(serving)
}

/// One line of `CLUSTER NODES`: the fields this module needs.
struct NodeLine {
    port: u16,
    flags: Vec<String>,
    /// Whether the line lists slot ranges (only a master's can).
    serves_slots: bool,
}

impl NodeLine {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_master(&self) -> bool {
        self.has_flag("master") && !self.has_flag("fail")
    }
}

/// Parses `<id> <ip:port@cport[,hostname]> <flags> ...` lines, skipping
/// nodes without an address yet.
fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _id = fields.next()?;
            let address = fields.next()?;
            let flags = fields.next()?;
            // master, ping-sent, pong-recv, config-epoch, link-state, slots.
            let serves_slots = fields.nth(5).is_some();
            let host_port = address.split(['@', ',']).next()?;
            let port = host_port.rsplit(':').next()?.parse().ok()?;
            Some(NodeLine {
                port,
                flags: flags.split(',').map(str::to_owned).collect(),
                serves_slots,
            })
        })
        .filter(|node| node.port != 0 && !node.has_flag("noaddr"))
        .collect()
}

/// The value of `name:` in `INFO` or `CLUSTER INFO` text.
fn info_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

fn redis_server_binary() -> PathBuf {
    find_binary("TOLLGATE_REDIS_SERVER", "redis-server", INSTALL_HINT)
}

fn redis_cli_binary() -> PathBuf {
    find_binary("TOLLGATE_REDIS_CLI", "redis-cli", INSTALL_HINT)
}

/// The binary named by `env_var`, else `name` on `PATH`.
///
/// # Panics
///
/// If it is not found, saying how to install it.
fn find_binary(env_var: &str, name: &str, install_hint: &str) -> PathBuf {
    let (wanted, source) = match std::env::var_os(env_var) {
        Some(value) if !value.is_empty() => (PathBuf::from(value), format!("{env_var} names")),
        _ => (PathBuf::from(name), format!("{env_var} is not set and")),
    };
    if wanted.components().count() > 1 {
        if wanted.is_file() {
            return wanted;
        }
    } else if let Some(found) = search_path(wanted.as_os_str()) {
        return found;
    }
    panic!(
        "{source} `{}`, which was not found (PATH searched for bare names). \
         Tollgate's Redis tests start real Redis servers: {install_hint}, \
         or set {env_var} to the path of `{name}`.",
        wanted.display()
    );
}

fn search_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The last lines of a server log, for panic messages.
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(log unreadable: {e})"),
    }
}

/// What a finished command printed.
struct CommandOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to completion, killing it after `timeout`.
/// `std::process::Command::output` has no time limit, and `redis-cli`
/// against a stopped server would wait forever.
fn run_bounded(command: &mut Command, timeout: Duration) -> Result<CommandOutput, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    // Drain both pipes on threads, so a chatty child cannot block on a full
    // pipe while we wait for it.
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("timed out after {timeout:?} and was killed"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("cannot wait for it: {e}"));
            }
        }
    };
    let collect = |reader: Option<thread::JoinHandle<String>>| {
        reader
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default()
    };
    let stdout = collect(stdout);
    let stderr = collect(stderr);
    match status {
        Ok(status) => Ok(CommandOutput {
            status,
            stdout,
            stderr,
        }),
        Err(why) => Err(format!("{why}; stdout: {stdout}; stderr: {stderr}")),
    }
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Sends one command over a fresh connection and reads one reply, each step
/// bounded by `timeout`. Enough RESP for the probes here: an error reply is
/// an `Err`, an array's elements are joined by newlines.
fn request(port: u16, args: &[&str], timeout: Duration) -> Result<String, String> {
    request_as(port, None, args, timeout)
}

/// [`request`], after `AUTH <password>` on the same connection when one is
/// given.
fn request_as(
    port: u16,
    password: Option<&str>,
    args: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let frame = |args: &[&str]| {
        let mut frame = format!("*{}\r\n", args.len());
        for arg in args {
            frame.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        frame
    };
    let exchange = || -> io::Result<String> {
        let stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut reader = BufReader::new(&stream);
        if let Some(password) = password {
            (&stream).write_all(frame(&["AUTH", password]).as_bytes())?;
            read_reply(&mut reader)?;
        }
        (&stream).write_all(frame(args).as_bytes())?;
        read_reply(&mut reader)
    };
    exchange().map_err(|e| format!("{} to port {port}: {e}", args.join(" ")))
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(malformed)?;
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(io::Error::other(rest.to_owned())),
        "$" => {
            let Ok(len) = usize::try_from(rest.parse::<i64>().map_err(|_| malformed())?) else {
                return Ok(String::new()); // nil
            };
            let mut bytes = vec![0; len + 2];
            reader.read_exact(&mut bytes)?;
            bytes.truncate(len);
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        "*" => {
            let count = rest.parse::<i64>().map_err(|_| malformed())?;
            let items = (0..count.max(0))
                .map(|_| read_reply(reader))
                .collect::<io::Result<Vec<_>>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_lines() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 disconnected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        let nodes = parse_cluster_nodes(text);
        let masters: Vec<u16> = nodes
            .iter()
            .filter(|n| n.is_master())
            .map(|n| n.port)
            .collect();
        assert_eq!(masters, [30002, 30001]);
        assert!(nodes[0].has_flag("slave"));
        assert!(!nodes[0].serves_slots && nodes[1].serves_slots && !nodes[2].serves_slots);
        assert_eq!(
            serving_masters(&nodes).unwrap(),
            BTreeSet::from([30001, 30002])
        );
        let suspected =
            parse_cluster_nodes("9a 127.0.0.1:7@8 master,fail? - 0 0 1 connected 0-9\n");
        assert!(serving_masters(&suspected).is_err());
    }

    #[test]
    fn reads_resp_replies() {
        let mut input: &[u8] = b"*3\r\n$5\r\nhello\r\n:7\r\n$-1\r\n";
        assert_eq!(read_reply(&mut input).unwrap(), "hello\n7\n");
        let mut error: &[u8] = b"-ERR nope\r\n";
        assert_eq!(read_reply(&mut error).unwrap_err().to_string(), "ERR nope");
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:42\r\n";
        assert_eq!(info_field(info, "process_id").as_deref(), Some("42"));
        assert_eq!(info_field(info, "missing"), None);
    }
}
