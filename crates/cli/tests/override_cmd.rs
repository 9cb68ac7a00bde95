//! `tollgate override` against a real `tollgate serve`: set, get, list,
//! delete, and the errors an operator sees.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Output;

use support::{serve, tollgate};
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::process::ServeProcess;

fn run(serve: &ServeProcess, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = tollgate();
    command
        .arg("override")
        .args(args)
        .env("TOLLGATE_SERVER", format!("http://{}", serve.http))
        .env_remove("TOLLGATE_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("TOLLGATE_ADMIN_TOKEN", token);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn allowed(serve: &ServeProcess, key: &str) -> bool {
    let (status, body) = serve.check(&format!(r#"{{"policy": "tiny", "key": "{key}"}}"#));
    assert_eq!(status, 200, "{body}");
    body.contains(r#""allowed":true"#)
}

#[test]
fn an_operator_raises_one_key_with_one_command() {
    let dir = temp_dir("override-cmd");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        "server:\n  admin_token: s3cret\npolicies:\n  - name: tiny\n    algorithm: fixed_window\n    limit: 1\n    period: 1h\n",
    )
    .unwrap();
    let serve = serve(&config);
    let token = Some("s3cret");

    let set = stdout(&run(
        &serve,
        token,
        &[
            "set",
            "tiny",
            "customer 1",
            "--limit",
            "3",
            "--expires-in",
            "1d",
        ],
    ));
    let shown: serde_json::Value = serde_json::from_str(&set).unwrap();
    assert_eq!(
        (shown["limit"].as_u64(), shown["key"].as_str()),
        (Some(3), Some("customer 1"))
    );
    assert_eq!((0..5).filter(|_| allowed(&serve, "customer 1")).count(), 3);
    assert_eq!((0..3).filter(|_| allowed(&serve, "other")).count(), 1);

    let got: serde_json::Value =
        serde_json::from_str(&stdout(&run(&serve, token, &["get", "tiny", "customer 1"]))).unwrap();
    assert_eq!(got["source"], "api");
    stdout(&run(&serve, token, &["set", "tiny", "bot", "--blocked"]));
    let list = stdout(&run(&serve, token, &["list", "--policy", "tiny"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains(r#""blocked":true"#), "{list}");

    stdout(&run(&serve, token, &["delete", "tiny", "bot"]));
    assert!(allowed(&serve, "bot"));

    // What goes wrong says so, and exits non-zero.
    let failed = |output: Output, expect: &str| {
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{stderr}");
    };
    failed(run(&serve, None, &["list"]), "TOLLGATE_ADMIN_TOKEN");
    failed(run(&serve, Some("wrong"), &["list"]), "401");
    failed(
        run(&serve, token, &["set", "nope", "k", "--limit", "2"]),
        "unknown policy `nope`",
    );
    failed(run(&serve, token, &["delete", "tiny", "bot"]), "404");
    failed(
        run(
            &serve,
            token,
            &["set", "tiny", "k", "--limit", "2", "--blocked"],
        ),
        "cannot be used with",
    );
}
