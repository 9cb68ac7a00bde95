//! The Grafana dashboard (`deploy/grafana/tollgate.json`) against what a
//! real server exports: a server runs with named, leased and Envoy
//! policies, traffic makes every metric family appear (allowed, denied,
//! shadow, overridden, leased, Envoy hits, a failed reload), `/metrics` is
//! scraped, and every metric name of every panel's `expr` (and of the
//! template variables' queries) must be one of the scraped samples' names.
//! Histograms are scraped as their `_bucket`, `_sum` and `_count`
//! samples, so a panel must name those, as PromQL does.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::{Backend, TestServer};
use serde_json::Value;
use tollgate_testkit::files::temp_dir;

const DASHBOARD: &str = include_str!("../../../deploy/grafana/tollgate.json");

const CONFIG: &str = r#"
server:
  admin_token: s3cret
policies:
  - name: tiny
    algorithm: fixed_window
    limit: 2
    period: 1h
  - name: leased
    algorithm: fixed_window
    limit: 100000
    period: 1h
    lease: { max: 10, ttl: 1s }
domains:
  - domain: edge
    descriptors:
      - key: user
        rate_limit: { unit: hour, requests_per_unit: 2 }
      - key: trial
        shadow_mode: true
        rate_limit: { unit: hour, requests_per_unit: 1 }
"#;

/// PromQL words that are not metric names.
const KEYWORDS: [&str; 12] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
];

/// PromQL's aggregation operators: `sum by (x) (...)` puts a clause
/// between the name and its parenthesis.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names a PromQL expression selects: identifiers outside
/// label matchers (`{...}`), ranges (`[...]`) and strings, that are not
/// functions (followed by `(`), aggregations, keywords, or the label
/// lists after `by`, `without`, `on`, `ignoring`, `group_left` and
/// `group_right`.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Set after a keyword whose parenthesised list holds labels.
    let mut labels_follow = false;
    while i < chars.len() {
        let c = chars[i];
        let skip_to = |close: char, from: usize| -> usize {
            let mut j = from + 1;
            let mut quote = None;
            while j < chars.len() {
                match (quote, chars[j]) {
                    (Some(q), '\\') if q != '`' => j += 1,
                    (Some(q), ch) if ch == q => quote = None,
                    (None, '"' | '\'' | '`') => quote = Some(chars[j]),
                    (None, ch) if ch == close => return j + 1,
                    _ => {}
                }
                j += 1;
            }
            j
        };
        match c {
            '{' => i = skip_to('}', i),
            '[' => i = skip_to(']', i),
            '"' | '\'' | '`' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != c {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
                i = j + 1;
            }
            // A number or a duration (`5m`, `1e3`): not a name.
            c if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            '(' if labels_follow => {
                labels_follow = false;
                i = skip_to(')', i);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    labels_follow = true;
                } else if KEYWORDS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&lower.as_str())
                    || chars.get(next) == Some(&'(')
                {
                    // A keyword, an aggregation, or a function.
                } else {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every `expr` of every panel (rows' nested panels included), with its
/// panel's title.
fn panel_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            if panel["type"] != "row" {
                let targets = panel["targets"].as_array();
                assert!(
                    targets.is_some_and(|t| !t.is_empty()),
                    "panel {title:?} has no query"
                );
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| {
                    panic!("panel {title:?}: a target without `expr`: {target}")
                });
                out.push((title.clone(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The metric of each template variable's `label_values(<metric>, <label>)`.
fn variable_metrics(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let query = v["query"]["query"].as_str().unwrap();
            let args = query
                .strip_prefix("label_values(")
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            args.split(',').next().unwrap().trim().to_owned()
        })
        .collect()
}

/// The names of the samples in a Prometheus text scrape.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_extractor_finds_metric_names_and_nothing_else() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(tollgate_store_latency_seconds_bucket{instance=~"$instance", x="a{b}"}[$__rate_interval])))"#
        ),
        ["tollgate_store_latency_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "sum(rate(a_total[5m])) / on (instance) group_left (policy) sum without (le) (b_count) > bool 0 or c offset 5m"
        ),
        ["a_total", "b_count", "c"]
    );
    assert_eq!(
        metric_names(r#"topk(10, sum by (domain, key1) (rate(x{y="z"}[1m])))"#),
        ["x"]
    );
}

#[tokio::test]
async fn every_panel_queries_metrics_the_server_exports() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let dir = temp_dir("grafana");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    let server = TestServer::start_file(Backend::Memory, &file).await;

    // Allowed and denied; leased; a decision under an override.
    for _ in 0..4 {
        server
            .post_json("/v1/check", r#"{"policy":"tiny","key":"k"}"#)
            .await;
        server
            .post_json("/v1/check", r#"{"policy":"leased","key":"k"}"#)
            .await;
    }
    let put = server
        .reqwest
        .put(server.url("/v1/overrides/tiny/vip"))
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json")
        .body(r#"{"limit": 5}"#)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    server
        .post_json("/v1/check", r#"{"policy":"tiny","key":"vip"}"#)
        .await;
    // A reservation settled past its estimate, and one denied.
    let reserved = server
        .post_json(
            "/v1/reserve",
            r#"{"policy":"leased","key":"r","estimate":3}"#,
        )
        .await;
    let id = reserved.1["reservation"].as_str().unwrap().to_owned();
    let settled = server
        .post_json(
            "/v1/settle",
            &format!(r#"{{"reservation":"{id}","actual":5}}"#),
        )
        .await;
    assert_eq!(settled.0, 200, "{}", settled.1);
    server
        .post_json("/v1/reserve", r#"{"policy":"tiny","key":"k","estimate":3}"#)
        .await;
    // Envoy: within, near and over the limit; shadow mode.
    for (key, value) in [
        ("user", "u"),
        ("user", "u"),
        ("user", "u"),
        ("trial", "t"),
        ("trial", "t"),
    ] {
        let body = format!(
            r#"{{"domain":"edge","descriptors":[{{"entries":[{{"key":"{key}","value":"{value}"}}]}}]}}"#
        );
        server.post_json("/json", &body).await;
    }
    // A failed reload and a good one.
    std::fs::write(&file, "policies: [").unwrap();
    assert!(server.app.reload().is_err());
    std::fs::write(&file, CONFIG).unwrap();
    server.app.reload().unwrap();

    let text = server.get("/metrics").await.body;
    let exported = scraped_names(&text);
    for family in [
        "tollgate_decisions_total",
        "tollgate_store_latency_seconds_bucket",
        "tollgate_leases_taken_total",
        "tollgate_reservations_total",
        "tollgate_settle_units_total",
        "ratelimit_service_rate_limit_shadow_mode",
    ] {
        assert!(
            exported.contains(family),
            "the traffic did not make {family} appear:\n{text}"
        );
    }
    assert!(text.contains(r#"override="true""#), "{text}");

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    let exprs = panel_exprs(&dashboard);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "panel {title:?} queries no metric: {expr}"
        );
        for name in names {
            if !exported.contains(&name) {
                missing.push(format!("panel {title:?}: {name} in {expr}"));
            }
            used.insert(name);
        }
    }
    for name in variable_metrics(&dashboard) {
        if !exported.contains(&name) {
            missing.push(format!("template variable: {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the server does not export:\n{}\n\nexported:\n{exported:#?}",
        missing.join("\n")
    );
    // What the dashboard is for: decisions, store latency, breaker, deny
    // cache, leases, reloads.
    for family in [
        "tollgate_decisions_total",
        "tollgate_store_latency_seconds_bucket",
        "tollgate_circuit_breaker_state",
        "tollgate_deny_cache_hits_total",
        "tollgate_deny_cache_lookups_total",
        "tollgate_lease_units_total",
        "tollgate_config_reloads_total",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}
