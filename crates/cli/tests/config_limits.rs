//! Configuration files the YAML parser must not see: one nested too deeply
//! (the parser's time grows with the square of the depth) and one too
//! large. `tollgate serve` refuses them on reload, with a precise message,
//! while it keeps answering requests on the running configuration, and
//! `tollgate check` refuses them with the same message.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{serve, tollgate};
use tollgate_testkit::files::temp_dir;

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

    // 100 000 levels of `[`: about 16 s of parsing on a 2-core VM. And a
    // valid file of 5 MiB, one above the cap.
    let deep = format!("policies: {}", "[".repeat(100_000));
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
