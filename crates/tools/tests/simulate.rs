//! `tollgate simulate`: exact, reproducible tables and well-formed plots.

use std::time::Duration;

use clap::Parser;
use tollgate_testkit::files::temp_dir;
use tollgate_tools::simulate::{self, SimulateArgs, plot};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn args(line: &[&str]) -> SimulateArgs {
    let mut argv = vec!["simulate"];
    argv.extend_from_slice(line);
    Cli::parse_from(argv).args
}

/// (algorithm, admitted, denied, worst window) per run.
fn rows(report: &simulate::Report) -> Vec<(String, u64, u64, u64)> {
    report
        .runs
        .iter()
        .map(|r| {
            let name = r.policy.algorithm().name().to_owned();
            (name, r.admitted, r.denied, r.worst_window)
        })
        .collect()
}

fn row(name: &str, admitted: u64, denied: u64, worst: u64) -> (String, u64, u64, u64) {
    (name.to_owned(), admitted, denied, worst)
}

#[test]
fn edge_burst_table_is_exact() {
    let report = args(&[
        "--pattern",
        "edge-burst",
        "--policy",
        "10/1s",
        "--duration",
        "5s",
    ])
    .report()
    .expect("runs");
    assert_eq!(report.offered, 40);
    assert_eq!(
        rows(&report),
        vec![
            // The fixed window admits both halves of each burst: 20 in one period.
            row("fixed_window", 40, 0, 20),
            row("sliding_window", 20, 20, 10),
            // Exact: never more than 10 in any window of 1 s.
            row("sliding_log", 20, 20, 10),
            // A full bucket (10), plus what refills during the burst.
            row("token_bucket", 22, 18, 11),
            row("gcra", 22, 18, 11),
            // Shaped: it lets requests proceed at the rate.
            row("leaky_bucket", 22, 18, 10),
        ]
    );
    let again = args(&[
        "--pattern",
        "edge-burst",
        "--policy",
        "10/1s",
        "--duration",
        "5s",
    ])
    .report()
    .expect("runs");
    assert_eq!(rows(&again), rows(&report), "reproducible");
}

#[test]
fn steady_overload_shows_burst_then_rate() {
    // 30/s offered against 10/s for 5 s.
    let report = args(&[
        "--pattern",
        "steady",
        "--policy",
        "10/1s",
        "--duration",
        "5s",
    ])
    .report()
    .expect("runs");
    assert_eq!(report.offered, 150);
    let table = rows(&report);
    assert_eq!(table[0], row("fixed_window", 50, 100, 10));
    assert_eq!(table[2], row("sliding_log", 50, 100, 10));
    // The bucket: its 10 tokens at once, then 10/s: 10 + 4.9 s of refill.
    assert_eq!(table[3].1, table[4].1, "gcra is a token bucket");
    assert_eq!(table[3], row("token_bucket", 59, 91, 19));
}

#[test]
fn one_algorithm_and_burst() {
    let report = args(&[
        "--pattern",
        "burst",
        "--policy",
        "token_bucket 10/1s burst 20",
        "--duration",
        "4s",
        "--burst-size",
        "25",
    ])
    .report()
    .expect("runs");
    // Bursts of 25 at 0 s and 2 s: 20 from a full bucket, then 20 again.
    assert_eq!(rows(&report), vec![row("token_bucket", 40, 10, 20)]);
}

#[test]
fn trace_in_milliseconds() {
    let dir = temp_dir("simulate-trace");
    let trace = dir.join("trace.txt");
    std::fs::write(&trace, "# a client\n1000\n1000\n1000\n1500\n\n2600\n").expect("write");
    let report = args(&[
        "--pattern",
        "trace",
        "--trace",
        trace.to_str().expect("utf-8"),
        "--policy",
        "sliding_log 2/1s",
        "--duration",
        "10s",
    ])
    .report()
    .expect("runs");
    // Offsets 0, 0, 0, 500, 1600 ms: two at 0, then one at 1600 ms.
    assert_eq!(rows(&report), vec![row("sliding_log", 3, 2, 2)]);
}

#[test]
fn json_has_every_run() {
    let report = args(&["--pattern", "ramp", "--policy", "10/1s", "--duration", "2s"])
        .report()
        .expect("runs");
    let json: serde_json::Value = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["pattern"], "ramp");
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(6));
    assert_eq!(json["runs"][0]["policy"], "fixed_window 10/1s");
    assert!(json["runs"][0]["admitted"].is_u64());
    assert!(json["runs"][0].get("admitted_at").is_none());
}

#[test]
fn svg_is_well_formed_with_one_series_per_algorithm() {
    let dir = temp_dir("simulate-svg");
    let out = dir.to_str().expect("utf-8");
    let report = args(&[
        "--pattern",
        "edge-burst",
        "--policy",
        "10/1s",
        "--duration",
        "3s",
        "--out",
        out,
        "--name",
        "edge",
    ])
    .report()
    .expect("runs");
    assert_eq!(
        report.files,
        vec![dir.join("edge.svg"), dir.join("edge.png")]
    );
    let svg = std::fs::read_to_string(dir.join("edge.svg")).expect("svg written");
    check_xml(&svg);
    for run in &report.runs {
        let c = plot::color(run.policy.algorithm());
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        // The admitted series, and its legend sample when there is text.
        let series = svg
            .match_indices("<polyline")
            .filter(|(at, _)| {
                svg[*at..]
                    .split("/>")
                    .next()
                    .is_some_and(|el| el.contains(&stroke))
            })
            .count();
        assert!(series >= 1, "no series for {}", run.policy);
        if plot::font_available() {
            assert!(
                svg.contains(run.policy.algorithm().name()),
                "{} named",
                run.policy
            );
        }
    }
    // Offered and the limit line in each of the six panels.
    assert!(svg.matches("<polyline").count() >= 18);
    let png = std::fs::read(dir.join("edge.png")).expect("png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn plots_have_text_when_fonts_dejavu_core_is_installed() {
    assert!(
        plot::font_available(),
        "no font: install fonts-dejavu-core (apt-get install fonts-dejavu-core) or set \
         TOLLGATE_FONT to a .ttf file; without one the plots have no text"
    );
}

/// The `settle` pattern's line: `--policy 1000/1s`, estimates of 100,
/// lognormal costs (σ 0.5 unless `extra` says), overdrafts of at most 50,
/// over 5 s, and `extra`.
fn settle_args(extra: &[&str]) -> SimulateArgs {
    let mut line = vec![
        "--pattern",
        "settle",
        "--policy",
        "1000/1s",
        "--duration",
        "5s",
        "--estimate",
        "100",
        "--max-overdraft",
        "50",
    ];
    line.extend_from_slice(extra);
    args(&line)
}

#[test]
fn settle_keeps_each_algorithm_within_its_limit_plus_its_overdraft() {
    let report = settle_args(&["--cost-spread", "0.8"])
        .report()
        .expect("runs");
    let names: Vec<_> = report
        .runs
        .iter()
        .map(|r| r.policy.algorithm().name())
        .collect();
    assert_eq!(
        names,
        ["fixed_window", "sliding_window", "token_bucket", "gcra"],
        "only the algorithms that can be reserved"
    );
    // Twice the policy's rate in cost: 20 requests a second.
    assert_eq!(report.offered, 100);
    for run in &report.runs {
        let a = run.policy.algorithm();
        let c = run.costs.as_ref().expect("the settle pattern has costs");
        assert_eq!(run.policy.max_overdraft(), 50);
        assert!(run.denied > 0, "{a}: offered twice the limit: {c:?}");
        assert_eq!(
            c.kept,
            run.admitted * 100 - c.returned + c.overdrawn,
            "{a}: {c:?}"
        );
        assert_eq!(c.charged.iter().map(|x| x.1).sum::<u64>(), c.kept, "{a}");
        assert!(c.overdrawn > 0 && c.unpaid > 0, "{a}: {c:?}");
        assert_eq!(c.expired, 0, "{a}: holds of 0.2 s at most");
        if a.has_burst() {
            assert_eq!(c.returned, 0, "{a}: a bucket forfeits");
            // Its burst, a period of refill, and the overdraft.
            assert!(c.worst_window <= 1_000 + 1_000 + 50, "{a}: {c:?}");
        } else {
            assert!(c.returned > 0, "{a}: {c:?}");
        }
        if a == tollgate::Algorithm::FixedWindow {
            // Windows start on whole seconds of the run.
            for w in 0..5 {
                let window = w * 1_000_000..(w + 1) * 1_000_000;
                let kept: u64 = c
                    .charged
                    .iter()
                    .filter(|x| window.contains(&x.0))
                    .map(|x| x.1)
                    .sum();
                assert!(kept <= 1_050, "{a}: {kept} kept in second {w}");
            }
        }
    }
    let again = settle_args(&["--cost-spread", "0.8"])
        .report()
        .expect("runs");
    let costs =
        |r: &simulate::Report| -> Vec<_> { r.runs.iter().map(|r| r.costs.clone()).collect() };
    assert_eq!(costs(&again), costs(&report), "reproducible");
    let other = settle_args(&["--cost-spread", "0.8", "--seed", "2"])
        .report()
        .expect("runs");
    assert_ne!(costs(&other), costs(&report), "the seed draws other costs");
}

#[test]
fn settle_at_the_estimate_is_a_check_of_the_estimate() {
    let report = settle_args(&["--cost", "uniform", "--cost-spread", "0"])
        .report()
        .expect("runs");
    for run in &report.runs {
        let c = run.costs.as_ref().expect("costs");
        assert_eq!(
            (c.returned, c.overdrawn, c.unpaid),
            (0, 0, 0),
            "{}",
            run.policy
        );
        assert_eq!(c.kept, run.admitted * 100, "{}", run.policy);
    }
    // 20 requests of 100 a second against 1000 a second: 10 per window.
    let fixed = &report.runs[0];
    assert_eq!((fixed.admitted, fixed.denied), (50, 50));
    assert_eq!(fixed.costs.as_ref().map(|c| c.worst_window), Some(1_000));
}

#[test]
fn settle_refuses_what_cannot_be_reserved_or_drawn() {
    let refused = args(&["--pattern", "settle", "--policy", "sliding_log 10/1s"]).report();
    assert!(
        matches!(
            refused,
            Err(simulate::SimulateError::Policy(
                tollgate::PolicyError::ReserveNotSupported(_)
            ))
        ),
        "{refused:?}"
    );
    let too_much = args(&[
        "--pattern",
        "settle",
        "--policy",
        "1000/1s",
        "--max-overdraft",
        "1001",
    ])
    .report();
    assert!(
        matches!(too_much, Err(simulate::SimulateError::Policy(_))),
        "{too_much:?}"
    );
    for bad in [
        &["--cost", "uniform", "--cost-spread", "1.5"][..],
        &["--cost-spread=-0.5"],
        &["--estimate", "0"],
        &["--deadline", "2h"],
    ] {
        let mut line = vec!["--pattern", "settle", "--policy", "1000/1s"];
        line.extend_from_slice(bad);
        let report = args(&line).report();
        assert!(
            matches!(report, Err(simulate::SimulateError::Pattern(_))),
            "{bad:?}: {report:?}"
        );
    }
    // A deadline shorter than the holds: late settles find nothing, and
    // their estimates stay charged.
    let late = settle_args(&["--hold", "1s", "--deadline", "500ms"])
        .report()
        .expect("runs");
    for run in &late.runs {
        let c = run.costs.as_ref().expect("costs");
        assert!(c.expired > 0, "{}: {c:?}", run.policy);
    }
}

#[test]
fn settle_plots_cost_against_the_limit_and_the_overdraft() {
    let dir = temp_dir("simulate-settle");
    let out = dir.to_str().expect("utf-8");
    let report = settle_args(&["--out", out, "--name", "settle", "--no-png"])
        .report()
        .expect("runs");
    assert_eq!(report.files, vec![dir.join("settle.svg")]);
    let svg = std::fs::read_to_string(dir.join("settle.svg")).expect("svg written");
    check_xml(&svg);
    for run in &report.runs {
        let c = plot::color(run.policy.algorithm());
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        assert!(svg.contains(&stroke), "no series for {}", run.policy);
    }
    // Offered, the limit, the limit plus the overdraft and what was kept,
    // in each of the four panels.
    assert!(svg.matches("<polyline").count() >= 16);
    if plot::font_available() {
        assert!(svg.contains("units in the last period"));
        assert!(svg.contains("max_overdraft 50"));
    }
    let json: serde_json::Value = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["pattern"], "settle");
    assert_eq!(json["costs"]["estimate"], 100);
    assert!(json["runs"][0]["costs"]["kept"].is_u64());
    assert!(json["runs"][0]["costs"].get("charged").is_none());
    let table = simulate::table(&report);
    assert!(
        table.contains("overdrawn") && table.contains("fixed_window 1000/1s"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn pattern_arrivals_are_bounded() {
    let huge = simulate::Pattern::Steady { rate: 1e9 }.arrivals(Duration::from_secs(60), 1);
    assert!(huge.is_err());
}

/// A minimal XML check: every tag closes in order, attributes are quoted.
fn check_xml(text: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("unterminated tag") + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().expect("tag name");
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(text.trim_start().starts_with("<svg") || text.contains("<svg "));
}
