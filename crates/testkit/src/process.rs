//! `tollgate serve` as a child process: started from a [`Command`] the test
//! builds (the binary, its arguments, its environment), its addresses read
//! from the banner it prints, its log (stderr) collected line by line,
//! SIGTERM with a bounded wait, and a kill on drop.
//!
//! The test crate owns the binary (`env!("CARGO_BIN_EXE_tollgate")` is
//! only known there), so it passes the command:
//!
//! ```no_run
//! use std::process::Command;
//! use tollgate_testkit::process::ServeProcess;
//!
//! let mut command = Command::new("tollgate");
//! command
//!     .args(["serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
//!     .env("RUST_LOG", "info");
//! let mut serve = ServeProcess::start(command, true);
//! let (status, _body) = serve.check(r#"{"policy":"api","key":"me"}"#);
//! assert_eq!(status, 200);
//! serve.terminate();
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http;

/// How long [`ServeProcess::terminate`] waits for the exit.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);
/// The bound on one [`ServeProcess::check`].
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between polls of the process and its log.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A running `tollgate serve`.
pub struct ServeProcess {
    child: Child,
    /// The HTTP address, from the banner.
    pub http: SocketAddr,
    /// The gRPC address, from the banner: `IP:PORT` or `unix:PATH`.
    pub grpc_listen: String,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads stderr into `log` until the process closes it.
    log_reader: Option<JoinHandle<()>>,
}

impl ServeProcess {
    /// Spawns `command` (a `tollgate serve ...`) with stdout piped, and
    /// waits for the banner's addresses (its `HTTP` and `gRPC` lines, up
    /// to its `config` line); stdout is drained after that so the process
    /// never blocks on it. With `log`, stderr is collected line by line,
    /// without terminal colours (see [`log`](Self::log)); without, it is
    /// discarded.
    ///
    /// # Panics
    /// When the process cannot be spawned or its banner lacks an address.
    pub fn start(mut command: Command, log: bool) -> ServeProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(if log { Stdio::piped() } else { Stdio::null() })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log_reader = child.stderr.take().map(|stderr| {
            let sink = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(plain(&line));
                }
            })
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut banner = BufReader::new(stdout).lines();
        let (mut http, mut grpc) = (None, None);
        for line in banner.by_ref() {
            let Ok(line) = line else { break };
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("HTTP   http://") {
                http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("gRPC   ") {
                grpc = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.starts_with("config ") {
                break;
            }
        }
        std::thread::spawn(move || for _ in banner {});
        ServeProcess {
            child,
            http: http.expect("the banner names the HTTP address"),
            grpc_listen: grpc.expect("the banner names the gRPC address"),
            log: lines,
            log_reader,
        }
    }

    /// The gRPC TCP address.
    ///
    /// # Panics
    /// When gRPC listens on a unix socket.
    pub fn grpc(&self) -> SocketAddr {
        self.grpc_listen
            .parse()
            .unwrap_or_else(|_| panic!("gRPC listens on {}, not TCP", self.grpc_listen))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far (none when started without `log`). Complete
    /// once the process has exited through [`terminate`](Self::terminate)
    /// or [`terminate_within`](Self::terminate_within).
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `within` for a log line containing every one of `parts`.
    pub fn wait_for_log(&self, parts: &[&str], within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .log()
                .into_iter()
                .find(|line| parts.iter().all(|p| line.contains(p)))
            {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// One HTTP/1.1 request to the HTTP address: see [`http::request`].
    ///
    /// # Errors
    /// As [`http::request`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        timeout: Duration,
    ) -> std::io::Result<(u16, String)> {
        http::request(self.http, method, path, headers, body, timeout)
    }

    /// `POST /v1/check` with a JSON body, bounded by 10 s.
    ///
    /// # Panics
    /// On an I/O error.
    pub fn check(&self, body: &str) -> (u16, String) {
        self.request(
            "POST",
            "/v1/check",
            &[("content-type", "application/json")],
            body,
            CHECK_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("POST /v1/check {body}: {e}"))
    }

    /// Sends SIGTERM and waits up to `within` for the exit: its status and
    /// the time it took from the signal, or `None` if it is still running
    /// (it is then killed on drop). After an exit the log is complete.
    ///
    /// # Panics
    /// When `kill -TERM` cannot be run or fails.
    pub fn terminate_within(&mut self, within: Duration) -> Option<(ExitStatus, Duration)> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -TERM {}: {status}", self.child.id());
        let signalled = Instant::now();
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                let took = signalled.elapsed();
                if let Some(reader) = self.log_reader.take() {
                    let _ = reader.join();
                }
                return Some((exit, took));
            }
            if signalled.elapsed() >= within {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit, which must be
    /// status 0: the time it took.
    ///
    /// # Panics
    /// When the process does not exit in time or exits otherwise.
    pub fn terminate(&mut self) -> Duration {
        let Some((status, took)) = self.terminate_within(TERMINATE_TIMEOUT) else {
            let _ = self.child.kill();
            panic!("tollgate serve did not exit within 20 s of SIGTERM");
        };
        assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
        took
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `line` without ANSI escape sequences (terminal colours), in case the
/// logger adds them.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
