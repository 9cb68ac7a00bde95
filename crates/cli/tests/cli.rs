//! The `tollgate` binary: `check` on good and broken configurations, and
//! `serve` answering, then exiting 0 on SIGTERM.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::tollgate;
use tollgate_testkit::files::{temp_dir, temp_file};
use tollgate_testkit::process::ServeProcess;

const GOOD: &str = "policies:\n  - name: api\n    algorithm: sliding_log\n    limit: 100\n    period: 1m\ndomains:\n  - domain: edge\n    descriptors:\n      - key: path\n        policy: api\n";

#[test]
fn check_accepts_a_good_config() {
    let file = temp_file("good.yaml", GOOD);
    let output = tollgate()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("ok (1 policies, 1 envoy domains"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_broken_configs_with_file_line_and_field() {
    for (name, text, expected) in [
        (
            "typo.yaml",
            "policies:\n  - name: api\n    limit: 100\n    period: 1m\n    burts: 5\n",
            "typo.yaml:5:5: policies[0]: unknown field `burts`",
        ),
        (
            "zero.yaml",
            "store:\n  kind: memory\npolicies:\n  - name: api\n    limit: 0\n    period: 1m\n",
            "zero.yaml:4:5: policies[0]: policy `api`: limit must be at least 1",
        ),
        (
            "period.yaml",
            "policies:\n  - name: api\n    limit: 1\n    period: 3 weeks\n",
            "period.yaml:4:13: policies[0].period: unknown unit",
        ),
        (
            "ref.yaml",
            "policies: []\ndomains:\n  - domain: d\n    descriptors:\n      - key: k\n        policy: missing\n",
            "ref.yaml:5:9: domains[0].descriptors[0]: descriptor `k`: unknown policy `missing`",
        ),
    ] {
        let file = temp_file(name, text);
        let output = tollgate()
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.contains(expected),
            "{name}: `{stderr}` lacks `{expected}`"
        );
    }
    let output = tollgate()
        .args(["check", "--config", "/nonexistent/tollgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn check_validates_envoy_files_with_the_config() {
    let envoy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../server/tests/data/envoy");
    let file = temp_file("base.yaml", "policies: []\n");
    let output = tollgate()
        .args(["check", "--config"])
        .arg(&file)
        .arg("--envoy-config")
        .arg(&envoy)
        .arg("--envoy-ignore-dot-files")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .contains("3 envoy domains")
    );
}

/// `check --envoy-config` needs no `--config`; dot files are read unless
/// told otherwise (envoyproxy/ratelimit's RUNTIME_IGNOREDOTFILES default),
/// and the directory's broken `..hidden.yaml` is then reported by line.
#[test]
fn check_takes_envoy_files_alone_and_reads_dot_files_by_default() {
    let envoy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../server/tests/data/envoy");
    let output = tollgate()
        .args(["check", "--envoy-config"])
        .arg(&envoy)
        .arg("--envoy-ignore-dot-files")
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .contains("3 envoy domains")
    );
    let output = tollgate()
        .args(["check", "--envoy-config"])
        .arg(&envoy)
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    // Named with its line: `..hidden.yaml:<line>:<column>: ...`.
    let at = stderr.find("..hidden.yaml:").expect("names the file");
    let line = &stderr[at + "..hidden.yaml:".len()..];
    assert!(line.starts_with(|c: char| c.is_ascii_digit()), "{stderr}");
}

/// A `--config` file with nothing but whitespace and comments is the empty
/// configuration at start and in `check` (a reload refuses it), and is
/// warned about so that a file emptied by mistake is not taken in silence;
/// `{}` says the same without a warning.
#[test]
fn check_warns_of_an_empty_config_file() {
    let dir = tollgate_testkit::files::temp_dir("check-empty");
    let run = |text: &str| {
        let file = dir.join("tollgate.yaml");
        std::fs::write(&file, text).unwrap();
        let output = tollgate()
            .args(["check", "--config"])
            .arg(&file)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    for blank in ["", "\n  \n", "# nothing yet\n", "\u{feff}\n"] {
        let all = run(blank);
        assert!(
            all.contains("WARN") && all.contains("the configuration file is empty"),
            "{blank:?}: {all}"
        );
    }
    let all = run("{}\n");
    assert!(!all.contains("is empty"), "{all}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `metadata` on a descriptor that never sends it (no limit, or an
/// `unlimited` one) loads, with a warning naming the file and the
/// descriptor; on a limit it loads quietly.
#[test]
fn check_warns_of_metadata_that_is_never_sent() {
    let dir = tollgate_testkit::files::temp_dir("check-metadata");
    let file = dir.join("meta.yaml");
    std::fs::write(
        &file,
        "domain: d\ndescriptors:\n  - key: parent\n    metadata: { x: 1 }\n    descriptors:\n\
         \x20     - key: child\n        metadata: { y: 2 }\n        rate_limit: { unit: second, requests_per_unit: 1 }\n\
         \x20 - key: free\n    metadata: { z: 3 }\n    rate_limit: { unlimited: true }\n",
    )
    .unwrap();
    let output = tollgate()
        .args(["check", "--envoy-config"])
        .arg(&file)
        .env_remove("TOLLGATE_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let warned: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("`metadata` is never sent"))
        .collect();
    assert_eq!(warned.len(), 2, "{all}");
    assert!(
        warned[0].contains("descriptor `parent`") && warned[0].contains("meta.yaml"),
        "{all}"
    );
    assert!(warned[1].contains("descriptor `free`"), "{all}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn serve_answers_and_exits_zero_on_sigterm() {
    let mut command = tollgate();
    command
        .args(["serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .env("RUST_LOG", "warn");
    let mut serve = ServeProcess::start(command, false);
    let (status, body) = serve
        .request(
            "POST",
            "/v1/check",
            &[],
            r#"{"policy":"api","key":"me"}"#,
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""remaining":99"#), "{body}");

    let (status, _) = serve
        .terminate_within(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "exits 0 after SIGTERM");
}

/// `--grpc unix:PATH` serves gRPC on a unix socket: the banner names it,
/// the socket is there while serving and gone after SIGTERM. An empty path
/// is a usage error, and a path that cannot be bound stops the start with
/// the address in the message.
#[cfg(unix)]
#[test]
fn serve_listens_for_grpc_on_a_unix_socket() {
    use std::os::unix::fs::FileTypeExt;
    let dir = temp_dir("cli-grpc-unix");
    let socket = dir.join("rls.sock");
    let mut command = tollgate();
    command
        .args(["serve", "--http", "127.0.0.1:0", "--grpc"])
        .arg(format!("unix:{}", socket.display()))
        .env("RUST_LOG", "warn");
    let mut serve = ServeProcess::start(command, false);
    assert_eq!(serve.grpc_listen, format!("unix:{}", socket.display()));
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    // Serving (its SIGTERM handler installed).
    let (status, _) = serve
        .request("GET", "/healthz", &[], "", Duration::from_secs(10))
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = serve
        .terminate_within(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "the socket file outlived the server");

    let empty = tollgate()
        .args(["serve", "--grpc", "unix:"])
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("the unix socket path is empty"), "{stderr}");

    let missing = dir.join("no-such-dir").join("rls.sock");
    let unbound = tollgate()
        .args(["serve", "--http", "127.0.0.1:0", "--grpc"])
        .arg(format!("unix:{}", missing.display()))
        .output()
        .unwrap();
    assert_eq!(unbound.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unbound.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on unix:{}", missing.display())),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The help names every command and every bench target, so a newcomer
/// finds `tollgate bench grpc` without reading the docs.
#[test]
fn help_lists_every_command_and_bench_target() {
    let help = tollgate().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for command in ["serve", "check", "bench", "simulate"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
    assert!(text.contains("Envoy RLS gRPC"), "{text}");
    let bench = tollgate().args(["bench", "--help"]).output().unwrap();
    let text = String::from_utf8(bench.stdout).unwrap();
    for target in ["direct", "http", "api", "grpc"] {
        assert!(text.contains(target), "{target} missing from:\n{text}");
    }
}
