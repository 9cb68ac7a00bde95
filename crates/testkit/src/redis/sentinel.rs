//! A master, its replicas and the `redis-sentinel` processes watching them,
//! all on free loopback ports: [`RedisSentinel`].

use std::fmt;
use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    DIR_COUNTER, POLL_INTERVAL, PROBE_TIMEOUT, READY_TIMEOUT, RedisServer, START_ATTEMPTS,
    find_binary, info_field, log_tail, request_as,
};
use crate::ports;
use crate::tls::Certificates;

const SENTINEL_HINT: &str = "install Redis Sentinel with `apt-get install redis-sentinel` \
     (Debian/Ubuntu)";
/// Bound on waiting for the sentinels to agree on a new topology.
const AGREE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a sentinel waits by default before it deems an unanswering
/// master down (Redis's default is 30 s; tests fail over in a few seconds).
const DOWN_AFTER: Duration = Duration::from_secs(1);

/// What [`RedisSentinel::start_with`] starts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SentinelSetup {
    /// Replicas of the master (at least 1 for a failover).
    pub replicas: usize,
    /// `redis-sentinel` processes; the quorum is a majority of them.
    pub sentinels: usize,
    /// The master name the sentinels monitor.
    pub master_name: String,
    /// `requirepass` (and `masterauth`) of every Redis server, given to the
    /// sentinels with `sentinel auth-pass`.
    pub master_password: Option<String>,
    /// `requirepass` of the sentinels themselves.
    pub sentinel_password: Option<String>,
    /// TLS with these certificates: every server and sentinel also listens
    /// on a TLS port, the servers replicate and the sentinels monitor over
    /// TLS, and [`RedisSentinel::sentinel_urls`] are `rediss://` (the
    /// plain ports stay, for the test kit's own probes).
    pub tls: Option<Certificates>,
    /// How long the sentinels wait before they deem an unanswering master
    /// down (`down-after-milliseconds`): 1 s by default, so that failover
    /// tests fail over in a few seconds. Tests that must not fail over
    /// take longer, so that a master starved of CPU on a busy machine is
    /// not replaced under them (losing the writes it had not replicated).
    pub down_after: Duration,
}

impl Default for SentinelSetup {
    /// One master, one replica, three sentinels (quorum 2), master name
    /// `tollgate-master`, no passwords.
    fn default() -> Self {
        SentinelSetup {
            replicas: 1,
            sentinels: 3,
            master_name: "tollgate-master".to_owned(),
            master_password: None,
            sentinel_password: None,
            tls: None,
            down_after: DOWN_AFTER,
        }
    }
}

impl SentinelSetup {
    /// Sets the number of replicas and of sentinels.
    pub fn nodes(mut self, replicas: usize, sentinels: usize) -> Self {
        self.replicas = replicas;
        self.sentinels = sentinels;
        self
    }

    /// Protects every Redis server with `password`.
    pub fn master_password(mut self, password: &str) -> Self {
        self.master_password = Some(password.to_owned());
        self
    }

    /// Protects every sentinel with `password`.
    pub fn sentinel_password(mut self, password: &str) -> Self {
        self.sentinel_password = Some(password.to_owned());
        self
    }

    /// Speaks TLS with `certificates` (see [`SentinelSetup::tls`]).
    pub fn tls(mut self, certificates: Certificates) -> Self {
        self.tls = Some(certificates);
        self
    }

    /// Sets how long the sentinels wait before they deem the master down.
    pub fn down_after(mut self, down_after: Duration) -> Self {
        self.down_after = down_after;
        self
    }
}

/// One master, its replicas and `redis-sentinel` processes watching them,
/// every process on a free loopback port, all killed on drop.
///
/// Each sentinel has its own configuration file in a temporary directory
/// (sentinels rewrite theirs). They deem a master down after 1 s without
/// an answer, so a killed or hung master is failed over in a few seconds.
///
/// ```no_run
/// use tollgate_testkit::redis::RedisSentinel;
///
/// let mut group = RedisSentinel::start();
/// let before = group.master_port();
/// group.failover(); // SENTINEL FAILOVER, then waits until all agree
/// assert_ne!(group.master_port(), before);
/// ```
pub struct RedisSentinel {
    setup: SentinelSetup,
    /// The first started as the master; roles change with failovers, so ask
    /// [`master_port`](Self::master_port).
    servers: Vec<RedisServer>,
    /// `(plain port, TLS port)` of each server with TLS: the sentinels name
    /// TLS ports, the probes use plain ones.
    tls_ports: Vec<(u16, u16)>,
    sentinels: Vec<SentinelProcess>,
}

impl RedisSentinel {
    /// [`start_with`](Self::start_with) the default setup: one master, one
    /// replica, three sentinels.
    ///
    /// # Panics
    ///
    /// As [`start_with`](Self::start_with).
    pub fn start() -> RedisSentinel {
        Self::start_with(SentinelSetup::default())
    }

    /// Starts the servers (the replicas replicating from the first), then
    /// the sentinels, and waits until every sentinel names the master,
    /// sees every replica and every other sentinel, and every replica's link
    /// is up.
    ///
    /// # Panics
    ///
    /// If `redis-server` or `redis-sentinel` is missing (the message says
    /// how to install it), a process does not start, or the sentinels do
    /// not agree within 30 s (the message says what each reported last).
    pub fn start_with(setup: SentinelSetup) -> RedisSentinel {
        assert!(setup.sentinels >= 1, "at least one sentinel is needed");
        let binary = find_binary("TOLLGATE_REDIS_SENTINEL", "redis-sentinel", SENTINEL_HINT);
        let password = setup.master_password.clone();
        let mut servers: Vec<RedisServer> = Vec::new();
        let mut tls_ports = Vec::new();
        for index in 0..=setup.replicas {
            let mut args = vec!["--repl-diskless-sync-delay".to_owned(), "0".to_owned()];
            let tls_port = setup.tls.as_ref().map(|certificates| {
                let port = ports::reserve(None);
                args.extend(certificates.redis_args(port, false));
                args.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
                port
            });
            let server =
                RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
            if let Some(tls_port) = tls_port {
                tls_ports.push((server.port(), tls_port));
            }
            // Set after start so that the testkit's readiness probe needs
            // no password; every server may become the master, so each
            // gets both settings.
            let auth = password.as_deref();
            if let Some(password) = auth {
                for setting in ["masterauth", "requirepass"] {
                    probe(server.port(), None, &["CONFIG", "SET", setting, password]);
                }
            }
            if index > 0 {
                let master = named(&tls_ports, servers[0].port()).to_string();
                probe(server.port(), auth, &["REPLICAOF", "127.0.0.1", &master]);
            }
            servers.push(server);
        }
        let master = servers[0].port();
        let quorum = setup.sentinels / 2 + 1;
        let sentinels = (0..setup.sentinels)
            .map(|_| SentinelProcess::start(&binary, &setup, named(&tls_ports, master), quorum))
            .collect();
        let group = RedisSentinel {
            setup,
            servers,
            tls_ports,
            sentinels,
        };
        group.wait_until_agreed(master, AGREE_TIMEOUT);
        group
    }

    /// The master name the sentinels monitor.
    pub fn master_name(&self) -> &str {
        &self.setup.master_name
    }

    /// `redis://[:<sentinel password>@]127.0.0.1:<port>` for every sentinel
    /// (`rediss://` and its TLS port with [`SentinelSetup::tls`]).
    pub fn sentinel_urls(&self) -> Vec<String> {
        let auth = match &self.setup.sentinel_password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        self.sentinels
            .iter()
            .map(|s| match s.tls_port {
                Some(port) => format!("rediss://{auth}127.0.0.1:{port}"),
                None => format!("redis://{auth}127.0.0.1:{}", s.port),
            })
            .collect()
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// Every Redis server, master and replicas, to kill, stop or query.
    pub fn servers(&mut self) -> &mut [RedisServer] {
        &mut self.servers
    }

    /// The master's (plain) port, as the first sentinel that answers names
    /// it.
    ///
    /// # Panics
    ///
    /// If no sentinel answers.
    pub fn master_port(&self) -> u16 {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            match self.named_master(sentinel.port) {
                Ok(port) => return port,
                Err(e) => errors.push(e),
            }
        }
        panic!("no sentinel named the master: {}", errors.join("; "));
    }

    /// Sends one command to the Redis server on `port` (authenticated with
    /// the master password, if any) and returns its reply (arrays joined by
    /// newlines).
    ///
    /// # Errors
    ///
    /// The error reply, or why the server could not be reached.
    pub fn query(&self, port: u16, args: &[&str]) -> Result<String, String> {
        request_as(
            port,
            self.setup.master_password.as_deref(),
            args,
            PROBE_TIMEOUT,
        )
    }

    /// Waits until every live replica has applied everything the master
    /// has written (its `master_repl_offset` equals the master's), so that
    /// a failover now loses nothing.
    ///
    /// # Panics
    ///
    /// If that does not happen within `timeout`.
    pub fn wait_replicated(&self, timeout: Duration) {
        let master = self.master_port();
        let deadline = Instant::now() + timeout;
        loop {
            let state = (|| {
                let info = self.query(master, &["INFO", "replication"])?;
                let wanted = info_field(&info, "master_repl_offset").ok_or("no offset")?;
                for replica in self
                    .servers
                    .iter()
                    .filter(|s| s.port() != master && s.is_live())
                {
                    let info = self.query(replica.port(), &["INFO", "replication"])?;
                    let offset = info_field(&info, "master_repl_offset");
                    if offset.as_deref() != Some(wanted.as_str()) {
                        return Err(format!(
                            "replica {} is at offset {offset:?}, the master at {wanted}",
                            replica.port()
                        ));
                    }
                }
                Ok::<(), String>(())
            })();
            match state {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("replicas did not catch up within {timeout:?}: {e}")
                }
                Err(_) => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Forces a failover with `SENTINEL FAILOVER` (the master stays up and
    /// is demoted to a replica of the promoted one), and waits until every
    /// sentinel names the new master, it says `ROLE` master, and the old
    /// master says it is a replica. Returns the new master's port.
    ///
    /// # Panics
    ///
    /// If the sentinel refuses, or that does not happen within 30 s.
    pub fn failover(&self) -> u16 {
        let old = self.master_port();
        let port = self.sentinels[0].port;
        let password = self.setup.sentinel_password.as_deref();
        let name = self.setup.master_name.as_str();
        if let Err(e) = request_as(
            port,
            password,
            &["SENTINEL", "FAILOVER", name],
            PROBE_TIMEOUT,
        ) {
            panic!("SENTINEL FAILOVER {name} on sentinel {port}: {e}");
        }
        let new = self.wait_for_new_master(old, AGREE_TIMEOUT);
        // The old master is reconfigured as a replica after the promotion.
        self.poll(AGREE_TIMEOUT, "demote the old master", || {
            let role = self.query(old, &["ROLE"])?;
            if role.starts_with("slave") {
                Ok(())
            } else {
                Err(format!("the old master {old} says ROLE {role:?}"))
            }
        });
        new
    }

    /// Kills the master (`SIGKILL`) and waits until the sentinels have
    /// promoted a replica. Returns `(old, new)` master ports.
    ///
    /// # Panics
    ///
    /// If no failover completes within 30 s.
    pub fn kill_master(&mut self) -> (u16, u16) {
        let old = self.master_port();
        let Some(server) = self.servers.iter_mut().find(|s| s.port() == old) else {
            panic!("the master {old} is not one of this group's servers");
        };
        server.kill();
        (old, self.wait_for_new_master(old, AGREE_TIMEOUT))
    }

    /// Waits until every sentinel names a master other than `old`, and that
    /// node says `ROLE` master. Returns its port.
    ///
    /// # Panics
    ///
    /// If that does not happen within `timeout`.
    pub fn wait_for_new_master(&self, old: u16, timeout: Duration) -> u16 {
        self.poll(timeout, "fail over", || {
            let mut named = Vec::new();
            for sentinel in &self.sentinels {
                named.push(self.named_master(sentinel.port)?);
            }
            let new = named[0];
            if new == old || named.iter().any(|p| *p != new) {
                return Err(format!("the sentinels name {named:?} (old master {old})"));
            }
            let role = self.query(new, &["ROLE"])?;
            if !role.starts_with("master") {
                return Err(format!("{new} says ROLE {role:?}"));
            }
            Ok(new)
        })
    }

    /// The master one sentinel names (its plain port).
    fn named_master(&self, sentinel: u16) -> Result<u16, String> {
        let reply = request_as(
            sentinel,
            self.setup.sentinel_password.as_deref(),
            &[
                "SENTINEL",
                "GET-MASTER-ADDR-BY-NAME",
                &self.setup.master_name,
            ],
            PROBE_TIMEOUT,
        )?;
        let port = reply.lines().nth(1).and_then(|p| p.parse().ok());
        let port = port.ok_or_else(|| format!("sentinel {sentinel} answered {reply:?}"))?;
        Ok(self
            .tls_ports
            .iter()
            .find(|(_, tls)| *tls == port)
            .map_or(port, |(plain, _)| *plain))
    }

    /// Polls until every sentinel names `master` and sees every replica and
    /// every other sentinel, and every replica's link is up.
    fn wait_until_agreed(&self, master: u16, timeout: Duration) {
        let replicas = self.setup.replicas.to_string();
        let others = (self.sentinels.len() - 1).to_string();
        self.poll(timeout, "agree", || {
            for sentinel in &self.sentinels {
                let reply = request_as(
                    sentinel.port,
                    self.setup.sentinel_password.as_deref(),
                    &["SENTINEL", "MASTER", &self.setup.master_name],
                    PROBE_TIMEOUT,
                )?;
                let fields: Vec<&str> = reply.lines().collect();
                let field = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|pair| pair[0] == name)
                        .and_then(|pair| pair.get(1).copied())
                        .unwrap_or("")
                };
                let seen = (
                    field("port"),
                    field("flags"),
                    field("num-slaves"),
                    field("num-other-sentinels"),
                );
                let wanted = (
                    named(&self.tls_ports, master).to_string(),
                    "master",
                    replicas.as_str(),
                    others.as_str(),
                );
                if (seen.0, seen.1, seen.2, seen.3)
                    != (wanted.0.as_str(), wanted.1, wanted.2, wanted.3)
                {
                    return Err(format!(
                        "sentinel {} sees (port, flags, replicas, other sentinels) = {seen:?}, \
                         expected {wanted:?}; log {}:\n{}",
                        sentinel.port,
                        sentinel.log().display(),
                        log_tail(&sentinel.log())
                    ));
                }
            }
            for replica in self.servers.iter().filter(|s| s.port() != master) {
                let info = self.query(replica.port(), &["INFO", "replication"])?;
                let link = info_field(&info, "master_link_status");
                if link.as_deref() != Some("up") {
                    return Err(format!("replica {} link is {link:?}", replica.port()));
                }
            }
            Ok(())
        });
    }

    /// Calls `probe` until it succeeds; panics with its last error after
    /// `timeout`.
    fn poll<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match probe() {
                Ok(value) => return value,
                Err(e) if Instant::now() >= deadline => {
                    panic!("the sentinel group did not {what} within {timeout:?}: {e}")
                }
                Err(_) => thread::sleep(POLL_INTERVAL * 5),
            }
        }
    }
}

impl fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSentinel")
            .field("master_name", &self.setup.master_name)
            .field("servers", &self.servers)
            .field("sentinels", &self.sentinel_ports())
            .finish()
    }
}

/// The port the sentinels know the server on plain `port` by: its TLS port
/// when it has one.
fn named(tls_ports: &[(u16, u16)], port: u16) -> u16 {
    tls_ports
        .iter()
        .find(|(plain, _)| *plain == port)
        .map_or(port, |(_, tls)| *tls)
}

/// Sends a setup command, panicking with the reason if it fails.
fn probe(port: u16, password: Option<&str>, args: &[&str]) {
    if let Err(e) = request_as(port, password, args, PROBE_TIMEOUT) {
        panic!("`{}` on redis-server {port}: {e}", args[0]);
    }
}

/// One `redis-sentinel` process, killed on drop.
struct SentinelProcess {
    port: u16,
    /// With TLS: the port clients reach it on over TLS.
    tls_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
}

impl SentinelProcess {
    /// Writes a configuration monitoring `master` and starts a sentinel on
    /// a fresh port, retrying elsewhere when the port is taken.
    fn start(
        binary: &PathBuf,
        setup: &SentinelSetup,
        master: u16,
        quorum: usize,
    ) -> SentinelProcess {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = ports::reserve(None);
            let dir = std::env::temp_dir().join(format!(
                "tollgate-sentinel-{}-{port}-{}",
                std::process::id(),
                DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            if let Err(e) = fs::create_dir_all(&dir) {
                panic!(
                    "cannot create the sentinel directory {}: {e}",
                    dir.display()
                );
            }
            let name = &setup.master_name;
            let mut config = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master} {quorum}\n\
                 sentinel down-after-milliseconds {name} {down_after}\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.display(),
                down_after = setup.down_after.as_millis(),
            );
            if let Some(password) = &setup.master_password {
                config.push_str(&format!("sentinel auth-pass {name} {password}\n"));
            }
            if let Some(password) = &setup.sentinel_password {
                config.push_str(&format!("requirepass {password}\n"));
            }
            let tls_port = setup.tls.as_ref().map(|certificates| {
                let tls_port = ports::reserve(None);
                config.push_str(&format!(
                    "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    certificates.server_cert.display(),
                    certificates.server_key.display(),
                    certificates.ca.display()
                ));
                tls_port
            });
            let file = dir.join("sentinel.conf");
            if let Err(e) = fs::write(&file, config) {
                panic!("cannot write {}: {e}", file.display());
            }
            let mut process = SentinelProcess {
                port,
                tls_port,
                dir,
                child: None,
            };
            match process.spawn_and_wait(binary, setup.sentinel_password.as_deref()) {
                Ok(()) => return process,
                Err((true, message)) => failures.push(message),
                Err((false, message)) => panic!("{message}"),
            }
        }
        panic!(
            "redis-sentinel could not get a free port in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    fn log(&self) -> PathBuf {
        self.dir.join("sentinel.log")
    }

    /// Spawns the process and waits until it answers `PING` as itself.
    /// `Err((port_taken, message))`.
    fn spawn_and_wait(
        &mut self,
        binary: &PathBuf,
        password: Option<&str>,
    ) -> Result<(), (bool, String)> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .and_then(|file| Ok((file.try_clone()?, file)));
        let (stdout, stderr) = match log {
            Ok(pair) => pair,
            Err(e) => panic!("cannot open {}: {e}", self.log().display()),
        };
        let child = Command::new(binary)
            .arg(self.dir.join("sentinel.conf"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run {}: {e}; {SENTINEL_HINT}, or set TOLLGATE_REDIS_SENTINEL",
                binary.display()
            ),
        };
        let pid = child.id().to_string();
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let tail = log_tail(&self.log());
                self.child = None;
                return Err((
                    tail.contains("Address already in use"),
                    format!(
                        "redis-sentinel on port {} exited ({status}):\n{tail}",
                        self.port
                    ),
                ));
            }
            if let Ok(info) = request_as(self.port, password, &["INFO", "server"], PROBE_TIMEOUT) {
                match info_field(&info, "process_id") {
                    Some(found) if found == pid => return Ok(()),
                    Some(other) => {
                        self.kill();
                        return Err((true, format!("port {} is served by pid {other}", self.port)));
                    }
                    None => {}
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err((
                    false,
                    format!(
                        "redis-sentinel on port {} did not answer within {READY_TIMEOUT:?}:\n{}",
                        self.port,
                        log_tail(&self.log())
                    ),
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_sentinel_binary_says_how_to_install_it() {
        let outcome = std::panic::catch_unwind(|| {
            find_binary(
                "TOLLGATE_TEST_UNSET_SENTINEL_VARIABLE",
                "tollgate-no-such-redis-sentinel",
                SENTINEL_HINT,
            )
        });
        let panic = outcome.unwrap_err();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            message.contains("apt-get install redis-sentinel")
                && message.contains("tollgate-no-such-redis-sentinel"),
            "{message}"
        );
    }
}
