//! The dashboard in a real browser: Debian's `chromium`, headless, driven
//! through the DevTools protocol (tollgate_testkit::browser), against a
//! real `tollgate serve` on the memory store. The page loads without a
//! single error, shows the configured policies, the store and the
//! configuration, and after a burst of denials for one key shows that key
//! at the top of its policy within two refreshes, as text (a key is
//! client input: markup in it stays text, and a key made to pass for
//! another reads as itself); it follows a reload; when the server goes
//! away it says so. With `server.metrics_auth` it asks for the admin token.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::serve;
use tollgate_testkit::browser::Browser;
use tollgate_testkit::files::temp_dir;

/// The bound on each wait for the page (a refresh is once a second).
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// A key that would run script if the page ever parsed data as markup.
const HOSTILE_KEY: &str = r#"<img src=x onerror="document.title='pwned'">"#;

/// The first row of the top-keys table of `policy`, with the refresh it
/// was rendered by: `{refreshes, key, denied}`, or `null` before the
/// policy is shown.
fn top_row(policy: &str) -> String {
    format!(
        r#"(() => {{
            const card = document.querySelector('[data-policy="{policy}"]');
            if (!card) return null;
            const row = card.querySelector("tbody tr");
            return {{
                refreshes: Number(document.body.dataset.refreshes || 0),
                key: row.cells[0].textContent,
                denied: row.cells[1].textContent,
            }};
        }})()"#
    )
}

#[test]
fn the_dashboard_shows_policies_and_the_most_denied_key_in_a_real_browser() {
    let dir = temp_dir("dashboard");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        "server:
  dashboard:
    show_keys: true
policies:
  - name: api
    algorithm: token_bucket
    limit: 100
    period: 1s
    burst: 200
  - name: login
    algorithm: fixed_window
    limit: 3
    period: 1h
",
    )
    .unwrap();
    let mut serve = serve(&config);
    let mut browser = Browser::start();
    browser.navigate(&format!("http://{}/", serve.http));

    // The first refresh shows every policy with its numbers, the store and
    // the configuration.
    browser.wait_for(
        "Number(document.body.dataset.refreshes || 0) >= 1 || null",
        PAGE_WAIT,
    );
    let shown = browser
        .evaluate(
            r#"({
                policies: [...document.querySelectorAll("[data-policy]")].map((card) => ({
                    name: card.dataset.policy,
                    numbers: card.querySelector(".numbers").textContent,
                    chart: card.querySelector("svg[role=img]").getAttribute("aria-label"),
                })),
                store: document.getElementById("store").textContent,
                config: document.getElementById("config").textContent,
                title: document.title,
            })"#,
        )
        .unwrap();
    assert_eq!(
        shown["policies"],
        json!([
            {
                "name": "api",
                "numbers": "token_bucket · 100 per 1s · burst 200",
                "chart": shown["policies"][0]["chart"],
            },
            {
                "name": "login",
                "numbers": "fixed_window · 3 per 1h",
                "chart": shown["policies"][1]["chart"],
            },
        ]),
        "{shown}"
    );
    for chart in [
        &shown["policies"][0]["chart"],
        &shown["policies"][1]["chart"],
    ] {
        assert!(
            chart.as_str().unwrap().contains("in the last second"),
            "{chart}"
        );
    }
    let store = shown["store"].as_str().unwrap();
    assert!(store.contains("Kindmemory"), "{store}");
    assert!(store.contains("Reachableyes"), "{store}");
    assert!(store.contains("Circuit breakerclosed"), "{store}");
    let config_text = shown["config"].as_str().unwrap();
    assert!(
        config_text.contains(&config.display().to_string()),
        "{config_text}"
    );
    assert_eq!(shown["title"], "tollgate");
    assert_eq!(
        browser.evaluate(&top_row("login")).unwrap()["key"],
        "none denied"
    );

    // A burst: 17 denials for the hostile key, 2 for another.
    for (key, checks) in [(HOSTILE_KEY, 20), ("bob", 5)] {
        for _ in 0..checks {
            let (status, body) = serve.check(&json!({"policy": "login", "key": key}).to_string());
            assert_eq!(status, 200, "{body}");
        }
    }
    let after_burst = browser
        .evaluate("Number(document.body.dataset.refreshes)")
        .unwrap()
        .as_u64()
        .unwrap();
    // The refresh after next fetched /v1/stats after the burst; the key is
    // at the top by then.
    let expected = format!(
        "(() => {{ const row = {}; return row && row.key.includes({}) ? row : null; }})()",
        top_row("login"),
        Value::from(HOSTILE_KEY)
    );
    let row = browser.wait_for(&expected, PAGE_WAIT);
    assert!(
        row["refreshes"].as_u64().unwrap() <= after_burst + 2,
        "the key was shown by refresh {} (the burst ended at refresh {after_burst})",
        row["refreshes"]
    );
    assert_eq!(row["denied"], "17", "{row}");
    let second = browser
        .evaluate(
            r#"(() => {
                const row = document.querySelectorAll('[data-policy="login"] tbody tr')[1];
                return [row.cells[0].textContent, row.cells[1].textContent];
            })()"#,
        )
        .unwrap();
    assert!(second[0].as_str().unwrap().contains("bob"), "{second}");
    assert_eq!(second[1], "2");
    // The key is text: no element came from it, no script ran.
    let page = browser
        .evaluate(r#"({ images: document.images.length, title: document.title })"#)
        .unwrap();
    assert_eq!(page, json!({ "images": 0, "title": "tollgate" }));

    // Not one error all along: none the browser saw, none the page caught.
    let caught = browser
        .evaluate(
            r#"({
                errors: document.getElementById("errors").textContent,
                problem: document.body.dataset.problem || null,
            })"#,
        )
        .unwrap();
    assert_eq!(caught, json!({ "errors": "", "problem": null }));
    assert_eq!(browser.errors(), Vec::<String>::new());

    // A reload removes `api` and adds `search`: the page follows, and
    // updates the card of `login` in place.
    browser
        .evaluate(r#"document.querySelector('[data-policy="login"]').dataset.mark = "kept""#)
        .unwrap();
    // Written whole, then renamed over the old file: the watcher never
    // reads half of it.
    let next = dir.join("next.yaml");
    std::fs::write(
        &next,
        "server:
  dashboard:
    show_keys: true
policies:
  - name: login
    algorithm: fixed_window
    limit: 3
    period: 1h
  - name: search
    algorithm: gcra
    limit: 10
    period: 1s
    burst: 20
",
    )
    .unwrap();
    std::fs::rename(&next, &config).unwrap();
    let reloaded = browser.wait_for(
        r#"(() => {
            const cards = [...document.querySelectorAll("[data-policy]")];
            const names = cards.map((card) => card.dataset.policy).join(",");
            return names === "login,search" ? {
                mark: cards[0].dataset.mark || null,
                numbers: cards[1].querySelector(".numbers").textContent,
                config: document.getElementById("config").textContent,
            } : null;
        })()"#,
        PAGE_WAIT,
    );
    assert_eq!(reloaded["mark"], "kept", "{reloaded}");
    assert_eq!(reloaded["numbers"], "gcra · 10 per 1s · burst 20");
    assert!(
        reloaded["config"]
            .as_str()
            .unwrap()
            .contains("Reloads1 (0 failed)"),
        "{reloaded}"
    );
    assert_eq!(browser.errors(), Vec::<String>::new());

    // The server goes away: the page says so, and keeps the last figures.
    serve.terminate();
    let problem = browser.wait_for("document.body.dataset.problem || null", PAGE_WAIT);
    assert!(
        problem
            .as_str()
            .unwrap()
            .contains("Cannot reach the server"),
        "{problem}"
    );
    let kept = browser.evaluate(&top_row("login")).unwrap();
    assert!(
        kept["key"].as_str().unwrap().contains(HOSTILE_KEY),
        "{kept}"
    );
}

#[test]
fn with_metrics_auth_the_page_asks_for_the_admin_token_and_keeps_it_in_the_tab() {
    let dir = temp_dir("dashboard-token");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        "server:
  admin_token: s3cret-token
  metrics_auth: true
policies:
  - name: api
    algorithm: fixed_window
    limit: 10
    period: 1s
",
    )
    .unwrap();
    let serve = serve(&config);
    let mut browser = Browser::start();
    // The page itself holds no figures: it loads without the token.
    browser.navigate(&format!("http://{}/", serve.http));
    let asking = r#"(() => {
        const problem = document.body.dataset.problem;
        const form = getComputedStyle(document.getElementById("token-form")).display;
        return problem && form !== "none" ? problem : null;
    })()"#;
    let problem = browser.wait_for(asking, PAGE_WAIT);
    assert!(
        problem.as_str().unwrap().contains("needs the admin token"),
        "{problem}"
    );
    let submit = |token: &str| {
        format!(
            r#"(() => {{
                document.getElementById("token").value = {};
                document.getElementById("token-form").requestSubmit();
                return true;
            }})()"#,
            Value::from(token)
        )
    };

    // A wrong token is refused, and the page says so.
    browser.evaluate(&submit("wrong")).unwrap();
    let refused = browser.wait_for(
        r#"(document.body.dataset.problem || "").includes("was refused") || null"#,
        PAGE_WAIT,
    );
    assert_eq!(refused, true);
    assert_eq!(
        browser
            .evaluate("Number(document.body.dataset.refreshes || 0)")
            .unwrap(),
        0
    );

    // A token no HTTP header can carry (pasted with a character outside
    // printable ASCII) is not "Cannot reach the server", polled every
    // second with the form gone: the page says what is wrong and asks
    // again.
    browser.evaluate(&submit("s3cret-token\u{200b}")).unwrap();
    let unsendable = browser.wait_for(
        r#"(() => {
            const problem = document.body.dataset.problem || "";
            const form = getComputedStyle(document.getElementById("token-form")).display;
            return problem.includes("cannot be sent") ? { problem, form } : null;
        })()"#,
        PAGE_WAIT,
    );
    assert_ne!(unsendable["form"], "none", "{unsendable}");
    assert!(
        !unsendable["problem"]
            .as_str()
            .unwrap()
            .contains("Cannot reach"),
        "{unsendable}"
    );

    // The right one: figures, the problem and the form gone, the token kept
    // in this tab.
    browser.evaluate(&submit("s3cret-token")).unwrap();
    browser.wait_for(
        "Number(document.body.dataset.refreshes || 0) >= 2 || null",
        PAGE_WAIT,
    );
    let state = browser
        .evaluate(
            r#"({
                policies: [...document.querySelectorAll("[data-policy]")].map((c) => c.dataset.policy),
                problem: document.body.dataset.problem || null,
                shown: ["problem", "token-form"].map((id) => getComputedStyle(document.getElementById(id)).display),
                kept: sessionStorage.getItem("tollgate.admin_token"),
                errors: document.getElementById("errors").textContent,
            })"#,
        )
        .unwrap();
    assert_eq!(
        state,
        json!({
            "policies": ["api"],
            "problem": null,
            "shown": ["none", "none"],
            "kept": "s3cret-token",
            "errors": "",
        })
    );
    // The only errors the browser saw are the two refused requests (the
    // page stops asking until it is given a token).
    let errors = browser.errors();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    for error in errors {
        assert!(
            error.contains("status of 401") && error.ends_with("/v1/stats"),
            "{error}"
        );
    }
}

/// A JavaScript function of an element: whether every character of its
/// text stands right of the one before it (no bidirectional reordering).
const IN_ORDER: &str = r#"((element) => {
    const text = element.firstChild;
    let left = -Infinity;
    for (let i = 0; text && i < text.length; i++) {
        if (i > 0 && text.data.codePointAt(i - 1) > 0xffff) continue;
        const range = document.createRange();
        range.setStart(text, i);
        range.setEnd(text, i + (text.data.codePointAt(i) > 0xffff ? 2 : 1));
        const rect = range.getBoundingClientRect();
        if (rect.left < left - 0.5) return false;
        left = Math.max(left, rect.left);
    }
    return true;
})"#;

/// Each row of every policy's top-keys table, as the browser lays it out:
/// `{policy: [{text, ordered}]}` ([`IN_ORDER`]); or `null` until every
/// table has all its rows.
fn key_cells() -> String {
    format!(
        r#"(() => {{
            const inOrder = {IN_ORDER};
            const shown = {{}};
            for (const card of document.querySelectorAll("[data-policy]")) {{
                const rows = [...card.querySelectorAll("tbody tr")].map((row) => ({{
                    text: row.cells[0].textContent,
                    ordered: inOrder(row.cells[0]),
                }}));
                if (rows.some((row) => row.text === "" || row.text === "none denied")) return null;
                shown[card.dataset.policy] = rows;
            }}
            return Object.keys(shown).length ? shown : null;
        }})()"#
    )
}

/// A key cannot pass for another: what would not show, or would show as
/// something else (control, format and bidirectional characters, spaces
/// that collapse, a combining mark of a key not in NFC, a backslash that
/// spells an escape) is written as `\u{..}` or `\\`, and the characters
/// stand in the order they were sent (right-to-left letters do not reorder
/// the key).
#[test]
fn a_key_never_reads_as_another_in_a_real_browser() {
    let dir = temp_dir("dashboard-lookalikes");
    let config = dir.join("tollgate.yaml");
    let mut text = "server:\n  dashboard:\n    show_keys: true\npolicies:\n".to_owned();
    for name in ["a", "b", "c", "d", "e"] {
        text += &format!(
            "  - name: {name}\n    algorithm: fixed_window\n    limit: 1\n    period: 1h\n"
        );
    }
    std::fs::write(&config, text).unwrap();
    // Per policy, five keys (the table's rows), the first denied most, and
    // how each must read.
    let keys: [(&str, [(&str, &str); 5]); 5] = [
        (
            "a",
            [
                ("user-1", "http:user-1"),
                ("user-1 ", r"http:user-1\u{20}"),
                ("user-1\u{2060}", r"http:user-1\u{2060}"),
                ("\u{61c}1-2", r"http:\u{61c}1-2"),
                (r"user-1\u{2060}", r"http:user-1\\u{2060}"),
            ],
        ),
        (
            "b",
            [
                ("\u{5d0}1-2", "http:\u{5d0}1-2"),
                ("1-2\u{5d0}", "http:1-2\u{5d0}"),
                ("user-1\u{e0041}", r"http:user-1\u{e0041}"),
                ("user\u{ad}-1", r"http:user\u{ad}-1"),
                ("user-1\u{202e}", r"http:user-1\u{202e}"),
            ],
        ),
        (
            "c",
            [
                ("j\u{fc}rgen", "http:j\u{fc}rgen"),
                ("ju\u{308}rgen", r"http:ju\u{308}rgen"),
                ("user\u{a0}1", r"http:user\u{a0}1"),
                ("user 1", "http:user 1"),
                ("user  1", r"http:user\u{20}\u{20}1"),
            ],
        ),
        // The server keeps a key's first 64 bytes: a longer key is marked
        // as cut, or it would read as the key that is those 64 bytes (59
        // and `http:`), and one cut inside a character too.
        (
            "d",
            [
                (
                    "long-key-of-59-bytes-which-with-http-fills-the-64-kept-byte",
                    "http:long-key-of-59-bytes-which-with-http-fills-the-64-kept-byte",
                ),
                (
                    "long-key-of-59-bytes-which-with-http-fills-the-64-kept-bytes",
                    "http:long-key-of-59-bytes-which-with-http-fills-the-64-kept-byte\u{2026}",
                ),
                (
                    "long-key-of-59-bytes-which-with-http-fills-the-64-kept-byt\u{e9}",
                    "http:long-key-of-59-bytes-which-with-http-fills-the-64-kept-byt\u{fffd}\u{2026}",
                ),
                (
                    "long-key-of-59-bytes-which-with-http-fills-the-64-kept-b\u{2026}",
                    "http:long-key-of-59-bytes-which-with-http-fills-the-64-kept-b\u{2026}",
                ),
                ("user-1\u{2026}", "http:user-1\u{2026}"),
            ],
        ),
        // Combining marks in a key in NFC: shown only as a spelling needs
        // them (up to three on a Devanagari letter), not where they make a
        // letter pass for another (dotless i and a dot above read as i), a
        // character of their own (on a space) or stack out of the row.
        (
            "e",
            [
                ("adm\u{131}\u{307}n", "http:adm\u{131}\\u{307}n"),
                ("q\u{308}", r"http:q\u{308}"),
                ("a \u{301}b", r"http:a \u{301}b"),
                (
                    "\u{915}\u{947}\u{902}\u{901}\u{902}",
                    "http:\u{915}\u{947}\u{902}\u{901}\\u{902}",
                ),
                (
                    "\u{928}\u{92e}\u{938}\u{94d}\u{924}\u{947}",
                    "http:\u{928}\u{92e}\u{938}\u{94d}\u{924}\u{947}",
                ),
            ],
        ),
    ];
    let mut serve = serve(&config);
    for (policy, keys) in &keys {
        for (rank, (key, _)) in keys.iter().enumerate() {
            // 6 - rank checks: one allowed, 5 - rank denied.
            for _ in 0..6 - rank {
                let (status, body) =
                    serve.check(&json!({"policy": policy, "key": key}).to_string());
                assert_eq!(status, 200, "{body}");
            }
        }
    }
    let mut browser = Browser::start();
    browser.navigate(&format!("http://{}/", serve.http));
    let shown = browser.wait_for(&key_cells(), PAGE_WAIT);
    for (policy, keys) in &keys {
        for (rank, (key, reads)) in keys.iter().enumerate() {
            let row = &shown[policy][rank];
            assert_eq!(row["text"], *reads, "{key:?} in {policy}: {shown}");
            assert_eq!(row["ordered"], true, "{key:?} in {policy}: {shown}");
        }
    }
    assert_eq!(
        browser
            .evaluate(r#"document.getElementById("errors").textContent"#)
            .unwrap(),
        ""
    );
    assert_eq!(browser.errors(), Vec::<String>::new());
    serve.terminate();
}

/// A policy's name cannot pass for another's either: an Envoy descriptor's
/// value (part of the name of its limit) with a right-to-left override, a
/// control character or right-to-left letters is shown as a key is.
#[test]
fn a_policy_name_never_reads_as_another_in_a_real_browser() {
    let dir = temp_dir("dashboard-names");
    let config = dir.join("tollgate.yaml");
    let values = [
        ("/login", "/login"),
        // As YAML escapes in a double-quoted value.
        (r"\u202enigol/", r"\u{202e}nigol/"),
        (r"/x\u0007\u2066y", r"/x\u{7}\u{2066}y"),
        (r"\u05d01-2", "\u{5d0}1-2"),
        (r"1-2\u05d0", "1-2\u{5d0}"),
    ];
    let mut text = "domains:\n  - domain: edge\n    descriptors:\n".to_owned();
    for (value, _) in values {
        text += &format!(
            "      - key: path\n        value: \"{value}\"\n        \
             rate_limit: {{ unit: second, requests_per_unit: 10 }}\n"
        );
    }
    std::fs::write(&config, text).unwrap();
    let serve = serve(&config);
    let mut browser = Browser::start();
    browser.navigate(&format!("http://{}/", serve.http));
    let shown = browser.wait_for(
        &format!(
            r#"(() => {{
                const inOrder = {IN_ORDER};
                const titles = [...document.querySelectorAll("[data-policy] h3")];
                return titles.length === {} ? titles.map((h) => [h.textContent, inOrder(h)]) : null;
            }})()"#,
            values.len()
        ),
        PAGE_WAIT,
    );
    let mut names: Vec<(String, bool)> = serde_json::from_value(shown.clone()).unwrap();
    names.sort();
    let mut expected: Vec<(String, bool)> = values
        .iter()
        .map(|(_, reads)| (format!("envoy/edge/path={reads}"), true))
        .collect();
    expected.sort();
    assert_eq!(names, expected, "{shown}");
    assert_eq!(browser.errors(), Vec::<String>::new());
}
