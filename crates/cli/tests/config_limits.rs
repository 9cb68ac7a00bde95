//! Configuration files that must not be parsed or read whole: one nested
//! too deeply (the parser's time grows with the square of the depth), the
//! same behind a quote inside a plain scalar, one whose aliases expand to
//! millions of nodes, and one too large. `tollgate serve` refuses them on
//! reload, with a precise message, while it keeps answering requests on
//! the running configuration, and `tollgate check` refuses them with the
//! same message. Also what a reload must not take: a FIFO in the file's
//! place (which blocked the reload, and every later one, in `open()`) and
//! an emptied file.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{serve, tollgate};
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::process::ServeProcess;

const GOOD: &str =
    "policies:\n  - name: api\n    algorithm: sliding_log\n    limit: 1000\n    period: 1h\n";

/// Replaces `path` atomically, as an editor or a ConfigMap update would, so
/// the watcher never reads half a file.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `tollgate check` on `path`: must fail; its message.
fn check_refuses(path: &Path) -> String {
    let output = tollgate()
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8(output.stderr).unwrap().trim().to_owned()
}

#[test]
fn pathological_files_are_refused_while_requests_are_answered() {
    let dir = temp_dir("config-limits");
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, GOOD).unwrap();
    let mut serve = serve(&config);
    let (status, body) = serve.check(r#"{"policy":"api","key":"k"}"#);
    assert_eq!(status, 200, "{body}");

    // 100 000 levels of `[`: about 16 s of parsing on a 2-core VM; the
    // same closed, after a quote that is text (`x "`), which the depth
    // check once took for the start of a quoted string: 24 s. 15 KB whose
    // aliases expand to 9 million nodes: 2.7 GB (a reload could abort the
    // server). And a valid file of 5 MiB, one above the cap.
    let deep = format!("policies: {}", "[".repeat(100_000));
    let quoted = format!(
        "server:\n  admin_token: x \"\npolicies: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (items, aliases) = (vec!["x"; 3000].join(","), vec!["*a"; 3000].join(","));
    let aliased = format!(
        "domains:\n  - domain: d\n    descriptors:\n      - key: k\n        \
         rate_limit: {{unit: second, requests_per_unit: 1}}\n        metadata:\n          \
         a: &a [{items}]\n          b: [{aliases}]\n"
    );
    let mut big = String::from(GOOD);
    while big.len() <= 5 * 1024 * 1024 {
        big.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let name = config.display().to_string();
    let cases = [
        (
            "deep",
            deep,
            vec![
                format!("{name}:1:"),
                "nested deeper than 64 levels".to_owned(),
            ],
        ),
        (
            "quoted",
            quoted,
            vec![
                format!("{name}:3:75:"),
                "nested deeper than 64 levels".to_owned(),
            ],
        ),
        (
            "aliased",
            aliased,
            vec![
                format!("{name}:7:"),
                "more than 1048576 YAML nodes once aliases".to_owned(),
            ],
        ),
        (
            "big",
            big,
            vec![
                name.clone(),
                "larger than the 4194304-byte limit".to_owned(),
            ],
        ),
    ];
    let mut answered = 1;
    for (what, text, expected) in &cases {
        replace(&config, text);
        // A client keeps asking while the watcher (500 ms polls) reloads.
        let started = Instant::now();
        let mut refused = None;
        while started.elapsed() < Duration::from_secs(15) {
            let sent = Instant::now();
            let result = serve.request(
                "POST",
                "/v1/check",
                &[("content-type", "application/json")],
                r#"{"policy":"api","key":"k"}"#,
                Duration::from_secs(2),
            );
            let took = sent.elapsed();
            let (status, body) = result.unwrap_or_else(|e| {
                panic!("{what}: a request failed during the reload after {took:?}: {e}")
            });
            assert_eq!(status, 200, "{what}: {body}");
            assert!(
                took < Duration::from_millis(500),
                "{what}: a request took {took:?} during the reload"
            );
            answered += 1;
            // The running configuration still decides, state included.
            assert!(
                body.contains(&format!("\"remaining\":{}", 1000 - answered)),
                "{what}: {body}"
            );
            if refused.is_none() {
                let parts: Vec<&str> = expected.iter().map(String::as_str).collect();
                refused = serve.wait_for_log(&parts, Duration::ZERO);
                if refused.is_some() {
                    // A few more requests after the refusal, then the next case.
                    continue;
                }
            } else if answered % 5 == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let line = refused.unwrap_or_else(|| {
            panic!(
                "{what}: no refusal naming {expected:?} in the log:\n{}",
                serve.log().join("\n")
            )
        });
        assert!(line.contains("ERROR"), "{what}: {line}");
        assert!(
            line.contains("keeping the running configuration"),
            "{what}: {line}"
        );
        // `tollgate check` says the same thing.
        let message = check_refuses(&config);
        for part in expected {
            assert!(message.contains(part.as_str()), "{what}: {message}");
        }
        assert!(
            line.contains(&message),
            "{what}: check said `{message}`, the server `{line}`"
        );
    }
    let (status, body) = serve
        .request("GET", "/v1/policies", &[], "", Duration::from_secs(5))
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"name\":\"api\""), "{body}");
    let took = serve.terminate();
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
}

/// Waits up to 15 s for `count` log lines of `serve` containing every one
/// of `parts`: the last of them.
fn wait_for_lines(serve: &ServeProcess, parts: &[&str], count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lines: Vec<String> = serve
            .log()
            .into_iter()
            .filter(|line| parts.iter().all(|p| line.contains(p)))
            .collect();
        if lines.len() >= count {
            return lines[count - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} log lines naming {parts:?}:\n{}",
            lines.len(),
            serve.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `limit` `/v1/check` answers for policy `api`.
fn api_limit(serve: &ServeProcess) -> String {
    let (status, body) = serve.check(r#"{"policy":"api","key":"k"}"#);
    assert_eq!(status, 200, "{body}");
    let start = body.find("\"limit\":").unwrap() + 8;
    body[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

/// Regression: `rm t.yaml; mkfifo t.yaml` left the reload thread blocked
/// in `open()`, waiting for a writer that never came, and every later
/// reload (file change or SIGHUP) behind it until a restart. The FIFO is
/// refused at once, by the watcher and by SIGHUP, and a valid file put
/// back is loaded.
#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_the_file_is_refused_and_reloads_go_on() {
    let dir = temp_dir("config-fifo");
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, GOOD).unwrap();
    let mut serve = serve(&config);
    assert_eq!(api_limit(&serve), "1000");

    std::fs::remove_file(&config).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&config)
        .status()
        .unwrap();
    assert!(made.success());
    let name = config.display().to_string();
    let refused = [
        name.as_str(),
        "a FIFO (named pipe), not a regular file",
        "keeping the running configuration",
    ];
    wait_for_lines(&serve, &refused, 1);
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &serve.pid().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    wait_for_lines(&serve, &refused, 2);
    assert_eq!(api_limit(&serve), "1000", "the running configuration stays");

    // Written elsewhere, renamed over the FIFO: the watcher loads it.
    replace(&config, &GOOD.replace("limit: 1000", "limit: 7"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while api_limit(&serve) != "7" {
        assert!(
            Instant::now() < deadline,
            "the file was not loaded:\n{}",
            serve.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    serve.terminate();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Regression: `: > t.yaml` while serving reloaded an empty configuration
/// ("config reloaded policies=0 domains=0"): every policy answered 404 and
/// every Envoy domain was gone. Emptied, or left with comments only, the
/// file is refused and the running configuration stays.
#[test]
fn an_emptied_file_is_refused_and_the_running_configuration_stays() {
    let dir = temp_dir("config-emptied");
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, GOOD).unwrap();
    let mut serve = serve(&config);
    assert_eq!(api_limit(&serve), "1000");
    let name = config.display().to_string();
    let refused = [
        name.as_str(),
        "the file is empty",
        "keeping the running configuration",
    ];
    // Truncated in place, as `: > file` does.
    std::fs::File::create(&config).unwrap();
    let line = wait_for_lines(&serve, &refused, 1);
    assert!(line.contains("ERROR"), "{line}");
    assert_eq!(api_limit(&serve), "1000", "the running configuration stays");
    replace(&config, "# nothing here yet\n\n");
    wait_for_lines(&serve, &refused, 2);
    assert_eq!(api_limit(&serve), "1000");
    assert!(
        !serve.log().iter().any(|l| l.contains("config reloaded")),
        "{}",
        serve.log().join("\n")
    );
    serve.terminate();
    std::fs::remove_dir_all(dir).unwrap();
}
