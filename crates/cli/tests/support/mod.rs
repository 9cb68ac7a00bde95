//! `tollgate serve` as a child process: its addresses from the banner, its
//! log (stderr) collected line by line, a tiny HTTP/1.1 client, and SIGTERM
//! on drop.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

/// A fresh directory for one test's files.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `tollgate serve`.
pub struct Serve {
    child: Child,
    pub http: String,
    pub grpc: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// Removes ANSI colour sequences, in case the logger adds them.
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

impl Serve {
    /// Starts `tollgate serve --config <config>` on free ports, logging at
    /// `info`, and waits for its banner.
    pub fn start(config: &Path) -> Serve {
        let mut child = tollgate()
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(plain(&line));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut http, mut grpc) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("HTTP   http://") {
                http = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_prefix("gRPC   ") {
                grpc = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.starts_with("config ") {
                break;
            }
        }
        // Keep reading stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve {
            child,
            http: http.expect("the banner names the HTTP address"),
            grpc: grpc.expect("the banner names the gRPC address"),
            log,
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
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
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One HTTP/1.1 request on a new connection, bounded by `timeout`:
    /// the status and body, or the I/O error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        timeout: Duration,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.http)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// `POST /v1/check` with a JSON body; panics on an I/O error.
    pub fn check(&self, body: &str) -> (u16, String) {
        self.request(
            "POST",
            "/v1/check",
            &[("content-type", "application/json")],
            body,
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// Sends SIGTERM and waits (bounded) for the exit; the time it took.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = started + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
                return started.elapsed();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("tollgate serve did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
