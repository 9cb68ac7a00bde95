//! The dashboard page: `GET /` on the HTTP port, a page that polls
//! `GET /v1/stats` once a second and shows every policy (its numbers, a
//! chart of its decisions per second, its most denied keys), the store and
//! the configuration (docs/DASHBOARD.md).
//!
//! Its four files are compiled into the binary (`include_str!`): no CDN,
//! no network, no build step. The page holds no data of its own, so it is
//! served to anyone while the dashboard is enabled (`404` otherwise,
//! [`crate::stats::dashboard_enabled`]); what it shows comes from
//! `/v1/stats`, which answers to the same access rule as `/metrics`
//! ([`crate::stats::admit_reader`]), and the page asks for the admin token
//! when that rule needs it. The script builds the DOM with `textContent` only (keys are
//! client input), and every response here carries a Content-Security-Policy
//! that allows nothing but this server's own script, style, image and
//! `fetch`, so even a bug that slipped markup into the page could not run
//! it.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::HeaderValue;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};

use crate::app::App;

/// The page's path.
pub const PAGE_PATH: &str = "/";

/// The page's Content-Security-Policy: its own script, style, images and
/// `fetch` (of `/v1/stats`) from this server, nothing inline, nothing
/// else, and no framing.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One file of the page, embedded in the binary.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page and what it loads.
static ASSETS: [Asset; 4] = [
    Asset {
        path: PAGE_PATH,
        content_type: "text/html; charset=utf-8",
        body: include_str!("index.html"),
    },
    Asset {
        path: "/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard.js"),
    },
    Asset {
        path: "/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("favicon.svg"),
    },
];

/// The routes of the page and its files (`GET`, and so `HEAD`).
pub fn routes() -> Router<Arc<App>> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move |State(app): State<Arc<App>>| serve(app, asset)),
        )
    })
}

async fn serve(app: Arc<App>, asset: &'static Asset) -> Response {
    if let Err(problem) = crate::stats::dashboard_enabled(&app.current()) {
        return problem.into_response();
    }
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Revalidated on every load, so that a new binary's page is never
    // mixed with an old script from the cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(path: &str) -> &'static str {
        ASSETS
            .iter()
            .find(|a| a.path == path)
            .map(|a| a.body)
            .unwrap_or_else(|| panic!("no asset {path}"))
    }

    /// Every `src="..."` and `href="..."` value of `html`.
    fn links(html: &str) -> Vec<&str> {
        ["src=\"", "href=\""]
            .iter()
            .flat_map(|attribute| {
                html.match_indices(attribute)
                    .map(|(i, a)| &html[i + a.len()..])
            })
            .map(|rest| rest.split('"').next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn the_page_loads_only_what_this_server_serves() {
        let page = asset(PAGE_PATH);
        let links = links(page);
        for asset in &ASSETS[1..] {
            assert!(links.contains(&asset.path), "{} is not loaded", asset.path);
        }
        for link in links {
            assert!(
                link.starts_with('/') && !link.starts_with("//"),
                "{link} is not a path on this server"
            );
        }
        // Nothing inline that the Content-Security-Policy would refuse.
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains(" style="), "inline style attribute");
        let style = asset("/dashboard.css");
        assert!(!style.contains("url(") && !style.contains("@import"));
    }

    #[test]
    fn the_script_fetches_only_the_stats_and_never_writes_markup() {
        let script = asset("/dashboard.js");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!script.contains(sink), "the script uses {sink}");
        }
        assert_eq!(script.matches("fetch(").count(), 1);
        assert!(script.contains("const STATS = \"/v1/stats\";"));
        // The one absolute URL is SVG's namespace, which is a name, not a request.
        let urls: Vec<_> = script
            .match_indices("http")
            .map(|(i, _)| &script[i..i + 26])
            .collect();
        assert_eq!(urls, ["http://www.w3.org/2000/svg"]);
    }
}
