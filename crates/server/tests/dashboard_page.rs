//! The dashboard's page over a real socket: `GET /` and the files it loads
//! are served from the binary with the headers a browser needs to trust
//! them (type, Content-Security-Policy, nosniff, no caching without
//! revalidation). What the page shows, in a real browser, is tested in
//! crates/cli/tests/dashboard.rs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer};
use tollgate_server::dashboard::CONTENT_SECURITY_POLICY_VALUE;

#[tokio::test]
async fn the_page_and_its_files_are_served_with_strict_headers() {
    let server = TestServer::start(Backend::memory()).await;
    for (path, content_type, contains) in [
        (
            "/",
            "text/html; charset=utf-8",
            r#"<script src="/dashboard.js" defer>"#,
        ),
        (
            "/dashboard.js",
            "text/javascript; charset=utf-8",
            "/v1/stats",
        ),
        ("/dashboard.css", "text/css; charset=utf-8", ".policies"),
        ("/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some(content_type),
            "{path}"
        );
        assert_eq!(
            reply.header("content-security-policy").as_deref(),
            Some(CONTENT_SECURITY_POLICY_VALUE),
            "{path}"
        );
        assert_eq!(
            reply.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(reply.header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-cache"));
        assert!(reply.body.contains(contains), "{path}: {}", reply.body);
    }
    // The policy allows this server's own files and nothing inline.
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            CONTENT_SECURITY_POLICY_VALUE.contains(directive),
            "{directive}"
        );
    }
    assert!(!CONTENT_SECURITY_POLICY_VALUE.contains("unsafe"));
    // Only the page's own files: anything else is still a problem+json 404.
    let reply = server.get("/dashboard.json").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/problem+json")
    );
    // The page takes no input: a POST is refused.
    let response = server.post("/", "{}").await;
    assert_eq!(response.status(), 405);
}

const PAGE_FILES: [&str; 4] = ["/", "/dashboard.js", "/dashboard.css", "/favicon.svg"];

#[tokio::test]
async fn a_disabled_dashboard_serves_no_page() {
    let server = TestServer::start_text(
        Backend::memory(),
        "server:\n  dashboard:\n    enabled: false\npolicies: []\n",
    )
    .await;
    for path in PAGE_FILES.iter().chain(&["/v1/stats"]) {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(
            reply.body.contains("server.dashboard.enabled: false"),
            "{path}: {}",
            reply.body
        );
    }
}

/// The page holds no figures: under `server.metrics_auth` it is served
/// without the token (a browser opening it could not send one), and
/// `/v1/stats`, where its figures come from, is not.
#[tokio::test]
async fn under_metrics_auth_the_page_is_served_and_its_figures_are_not() {
    let server = TestServer::start_text(
        Backend::memory(),
        "server:\n  admin_token: t0ken\n  metrics_auth: true\npolicies: []\n",
    )
    .await;
    for path in PAGE_FILES {
        assert_eq!(server.get(path).await.status, 200, "{path}");
    }
    assert_eq!(server.get("/v1/stats").await.status, 401);
    let reply = server
        .get_with("/v1/stats", &[("authorization", "Bearer t0ken")])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
