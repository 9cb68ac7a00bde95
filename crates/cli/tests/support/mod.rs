//! The `tollgate` binary under test: a command for it, and `tollgate serve`
//! on free ports with a configuration file, as a
//! [`ServeProcess`](tollgate_testkit::process::ServeProcess) (its
//! addresses, its log, HTTP requests, SIGTERM; killed on drop).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tollgate_testkit::process::ServeProcess;

/// A command running the binary under test.
pub fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

/// `command` (the binary, or a shell that execs it) with
/// `serve --http 127.0.0.1:0 --grpc 127.0.0.1:0 --config <config>`.
pub fn serve_command(mut command: Command, config: &Path) -> Command {
    command
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(config);
    command
}

/// Starts `tollgate serve --config <config>` on free ports, logging at
/// `info` without colours, and waits for its banner.
pub fn serve(config: &Path) -> ServeProcess {
    let mut command = serve_command(tollgate(), config);
    command.env("RUST_LOG", "info").env("NO_COLOR", "1");
    ServeProcess::start(command, true)
}

/// The value of the unlabelled series `name` on `serve`'s `/metrics`.
///
/// # Panics
/// When `/metrics` does not answer 200 or has no such series.
pub fn metric(serve: &ServeProcess, name: &str) -> u64 {
    let (status, body) = serve
        .request("GET", "/metrics", &[], "", Duration::from_secs(5))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
        .parse()
        .unwrap()
}
