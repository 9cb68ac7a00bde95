//! A real browser for end-to-end tests of web pages: Debian's `chromium`,
//! headless, driven through the Chrome DevTools protocol; killed on drop.
//!
//! The binary is `TOLLGATE_CHROMIUM` when set, else `chromium` on `PATH`
//! (`scripts/test.sh` installs Debian's package). A missing binary is a
//! panic that says how to install it, never a skipped test.
//!
//! The protocol runs over two pipes (`--remote-debugging-pipe`: commands
//! into the browser's descriptor 3, answers and events out of its
//! descriptor 4, each message JSON ended by a NUL byte), made as named
//! pipes in the browser's scratch directory and handed to it by `sh`: no
//! port is opened, no WebSocket is needed. Every message the browser sends
//! is read by a thread into a channel, so every wait here is bounded.
//!
//! What a page logs as an error is collected: uncaught exceptions, console
//! errors, and the browser's own log entries at level error (a resource
//! that failed to load, a Content-Security-Policy violation).
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate_testkit::browser::Browser;
//!
//! let mut browser = Browser::start();
//! browser.navigate("http://127.0.0.1:8080/");
//! let title = browser.wait_for("document.title || null", Duration::from_secs(10));
//! assert_eq!(title, "tollgate");
//! assert!(browser.errors().is_empty(), "{:?}", browser.errors());
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::files::temp_dir;

/// How long the browser may take to start and open its pipes.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on one protocol command's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two evaluations in [`Browser::wait_for`].
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long [`Drop`] lets the browser close before killing it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of the browser's log quoted in a panic message.
const LOG_TAIL_LINES: usize = 30;
/// The window's size: what a laptop shows.
pub const WINDOW: (u32, u32) = (1280, 900);

/// The Chromium binary: `TOLLGATE_CHROMIUM`, else `chromium` on `PATH`.
///
/// # Panics
/// When neither exists; the message says how to install it.
pub fn chromium_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TOLLGATE_CHROMIUM={} is not a file; {}",
            path.display(),
            INSTALL_HINT
        );
        return path;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("no chromium on PATH and TOLLGATE_CHROMIUM is not set; {INSTALL_HINT}")
        })
}

const INSTALL_HINT: &str = "run the tests with scripts/test.sh, which installs it, or install \
     Debian's browser yourself: `apt-get install chromium` (or set TOLLGATE_CHROMIUM to a \
     Chromium or Chrome binary)";

/// The arguments of a headless Chromium that keeps to itself: no sandbox
/// (tests run as root), no GPU, a throwaway profile in `profile`, no
/// first-run screens, extensions, sync or background network.
pub fn headless_args(profile: &Path) -> Vec<String> {
    vec![
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        "--no-first-run".into(),
        "--no-default-browser-check".into(),
        "--disable-extensions".into(),
        "--disable-sync".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-default-apps".into(),
        "--hide-scrollbars".into(),
        "--mute-audio".into(),
    ]
}

/// A running headless Chromium with one page open, attached through the
/// DevTools protocol.
pub struct Browser {
    child: Child,
    /// Commands to the browser (its descriptor 3).
    commands: File,
    /// Everything the browser sends, one parsed message at a time.
    messages: Receiver<Value>,
    next_id: u64,
    /// The page's session (flat mode): every page command names it.
    session: String,
    /// What the page logged as an error, in order.
    errors: Vec<String>,
    /// The browser's own stderr.
    log: PathBuf,
}

impl Browser {
    /// Starts the browser with a blank page and enables the page's runtime
    /// and log events (so that errors are collected from the start).
    ///
    /// # Panics
    /// When the binary is missing (see [`chromium_binary`]) or does not
    /// start and answer in time.
    pub fn start() -> Browser {
        let binary = chromium_binary();
        let dir = temp_dir("chromium");
        let (to_browser, from_browser) = (dir.join("to-browser"), dir.join("from-browser"));
        for fifo in [&to_browser, &from_browser] {
            let status = Command::new("mkfifo")
                .arg(fifo)
                .status()
                .unwrap_or_else(|e| panic!("cannot run mkfifo: {e}"));
            assert!(status.success(), "mkfifo {}: {status}", fifo.display());
        }
        let log = dir.join("chromium.log");
        let stderr =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        // sh opens the pipes in this order (3 then 4), as this process does
        // below, so neither side waits for the other forever.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<"$TO_BROWSER" 4>"$FROM_BROWSER""#)
            .arg(&binary)
            .args(headless_args(&dir.join("profile")))
            .args([
                "--remote-debugging-pipe",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg("about:blank")
            .env("TO_BROWSER", &to_browser)
            .env("FROM_BROWSER", &from_browser)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Opening a named pipe blocks until the other side opens it: done
        // on a thread, so that a browser that never starts is a bounded
        // wait.
        let (opened, pipes) = channel();
        std::thread::spawn(move || {
            let commands = OpenOptions::new().write(true).open(&to_browser);
            let events = commands.and_then(|c| File::open(&from_browser).map(|e| (c, e)));
            let _ = opened.send(events);
        });
        let (commands, events) = match pipes.recv_timeout(START_TIMEOUT) {
            Ok(Ok(pipes)) => pipes,
            Ok(Err(e)) => panic!("cannot open the browser's pipes: {e}"),
            Err(_) => panic!(
                "{} did not open its DevTools pipes within {START_TIMEOUT:?}; its log:\n{}",
                binary.display(),
                tail(&log)
            ),
        };
        let (sender, messages) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(events);
            let mut message = Vec::new();
            loop {
                message.clear();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if message.last() == Some(&0) {
                    message.pop();
                }
                let Ok(value) = serde_json::from_slice::<Value>(&message) else {
                    continue;
                };
                if sender.send(value).is_err() {
                    break;
                }
            }
        });
        let mut browser = Browser {
            child,
            commands,
            messages,
            next_id: 0,
            session: String::new(),
            errors: Vec::new(),
            log,
        };
        let target =
            browser.browser_command("Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().unwrap_or_default().to_owned();
        let attached = browser.browser_command(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {attached}"))
            .to_owned();
        for domain in ["Runtime", "Log", "Page"] {
            browser.command(&format!("{domain}.enable"), json!({}));
        }
        browser
    }

    /// Sends `method` with `params` to the page and waits for its result.
    ///
    /// # Panics
    /// When the browser answers with an error or not in time.
    pub fn command(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
    }

    /// Sends `method` to the browser itself (no page session).
    fn browser_command(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        if let Err(e) = self
            .commands
            .write_all(&bytes)
            .and_then(|()| self.commands.flush())
        {
            panic!(
                "cannot send {method} to the browser: {e}; its log:\n{}",
                tail(&self.log)
            );
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.messages.recv_timeout(left) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no answer to {method} within {COMMAND_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the browser closed its pipe while answering {method}; its log:\n{}",
                    tail(&self.log)
                ),
            };
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
            self.observe(&message);
        }
    }

    /// Records an event that reports an error of the page.
    fn observe(&mut self, message: &Value) {
        let params = &message["params"];
        match message["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                self.errors.push(format!(
                    "uncaught: {} {}",
                    details["text"].as_str().unwrap_or_default(),
                    details["exception"]["description"]
                        .as_str()
                        .unwrap_or_default()
                ));
            }
            Some("Runtime.consoleAPICalled")
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                let text: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|arg| match &arg["value"] {
                        Value::Null => arg["description"].as_str().unwrap_or_default().to_owned(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                self.errors
                    .push(format!("console.error: {}", text.join(" ")));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                let entry = &params["entry"];
                self.errors.push(format!(
                    "{}: {} {}",
                    entry["source"].as_str().unwrap_or_default(),
                    entry["text"].as_str().unwrap_or_default(),
                    entry["url"].as_str().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }

    /// Takes the events that arrived since the last command.
    fn drain(&mut self) {
        while let Ok(message) = self.messages.try_recv() {
            self.observe(&message);
        }
    }

    /// Opens `url` in the page and waits until its `load` event has
    /// fired (scripts with `defer` have run).
    ///
    /// # Panics
    /// When navigation fails or the page does not load in time.
    pub fn navigate(&mut self, url: &str) {
        let result = self.command("Page.navigate", json!({ "url": url }));
        if let Some(error) = result["errorText"].as_str() {
            panic!("cannot open {url}: {error}");
        }
        self.wait_for(
            "document.readyState === 'complete' || null",
            COMMAND_TIMEOUT,
        );
    }

    /// The value of the JavaScript `expression` in the page (promises
    /// awaited), as JSON; an exception is an `Err` with its description.
    pub fn evaluate(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.command(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(details) = result.get("exceptionDetails") {
            return Err(details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("exception")
                .to_owned());
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` until it is neither `null`, `undefined`,
    /// `false` nor an exception, and returns that value.
    ///
    /// # Panics
    /// When it is not within `within`; the message quotes the last value
    /// and the page's errors.
    pub fn wait_for(&mut self, expression: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.evaluate(expression);
            match &value {
                Ok(Value::Null | Value::Bool(false)) | Err(_) => {}
                Ok(value) => return value.clone(),
            }
            assert!(
                Instant::now() < deadline,
                "`{expression}` was still {value:?} after {within:?}; the page's errors: {:?}",
                self.errors()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Everything the page reported as an error so far.
    pub fn errors(&mut self) -> Vec<String> {
        self.drain();
        self.errors.clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing asks the browser to end its renderers too; a kill after a
        // bound is the fallback.
        let mut bytes = json!({ "id": 0, "method": "Browser.close" })
            .to_string()
            .into_bytes();
        bytes.push(0);
        let _ = self.commands.write_all(&bytes);
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of the log at `path`.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
