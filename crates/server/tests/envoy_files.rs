//! envoyproxy/ratelimit configuration files, loaded unchanged, answer
//! Envoy's requests.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Backend, TestServer, descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_server::{ConfigSource, ServerOptions};

fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(path)
}

#[test]
fn a_directory_of_envoy_files_loads_hidden_entries_skipped() {
    let source = ConfigSource {
        config: None,
        envoy: Some(data("envoy")),
        ignore_dot_files: true,
        ..ConfigSource::default()
    };
    let config = source.load().unwrap();
    let mut domains: Vec<&str> = config.domains.keys().map(String::as_str).collect();
    domains.sort_unstable();
    assert_eq!(domains, ["edge_proxy_per_ip", "messaging", "mongo_cps"]);
    assert!(
        config.policies.is_empty(),
        "no demo policies with envoy files alone"
    );
}

#[test]
fn broken_envoy_files_are_rejected_precisely() {
    let dir = tollgate_testkit::files::temp_dir("envoy-broken");
    let file = dir.join("bad.yaml");
    for (text, expected) in [
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      unknown: 2\n",
            "bad.yaml:7:7: descriptors[0].rate_limit: unknown field `unknown`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: parsec\n      requests_per_unit: 1\n",
            "bad.yaml:3:5: descriptors[0]: descriptor `k`: unknown unit `parsec`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
            "bad.yaml:1:1: duplicate descriptor `k=v`",
        ),
        ("descriptors: []\n", "missing field `domain`"),
    ] {
        std::fs::write(&file, text).unwrap();
        let source = ConfigSource {
            config: None,
            envoy: Some(file.clone()),
            ..ConfigSource::default()
        };
        let error = source.load().unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{text}\n`{error}` lacks `{expected}`"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn envoy_files_answer_envoy_requests_on_redis() {
    let source = ConfigSource {
        config: None,
        envoy: Some(data("envoy")),
        ignore_dot_files: true,
        ..ConfigSource::default()
    };
    let server = TestServer::start_with(
        Backend::redis(),
        "",
        source,
        ServerOptions::default()
            .watch_interval(None)
            .reload_on_sighup(false),
    )
    .await;
    let mut client = server.rls_client().await;
    let mut ask = async |domain: &str, entries: &[(&str, &str)]| {
        let response = client
            .should_rate_limit(RateLimitRequest {
                domain: domain.to_owned(),
                descriptors: vec![descriptor(entries, None)],
                hits_addend: 0,
            })
            .await
            .unwrap()
            .into_inner();
        response.statuses[0].clone()
    };
    // Nested: 5 marketing messages a day per number.
    let marketing = [("message_type", "marketing"), ("to_number", "2061234567")];
    for remaining in (0..5).rev() {
        let status = ask("messaging", &marketing).await;
        assert_eq!(
            (status.code, status.limit_remaining),
            (Code::Ok as i32, remaining)
        );
    }
    assert_eq!(
        ask("messaging", &marketing).await.code,
        Code::OverLimit as i32
    );
    assert_eq!(
        ask("messaging", &[("to_number", "2061234567")])
            .await
            .limit_remaining,
        99
    );
    // The blacklisted address; a wildcard prefix; unlimited; shadow mode.
    assert_eq!(
        ask("edge_proxy_per_ip", &[("remote_address", "50.0.0.5")])
            .await
            .code,
        Code::OverLimit as i32
    );
    assert_eq!(
        ask("edge_proxy_per_ip", &[("api", "/v1/users")])
            .await
            .limit_remaining,
        999
    );
    assert_eq!(
        ask("edge_proxy_per_ip", &[("client_id", "trusted")])
            .await
            .limit_remaining,
        u32::MAX
    );
    for _ in 0..3 {
        assert_eq!(
            ask("edge_proxy_per_ip", &[("path", "/noisy")]).await.code,
            Code::Ok as i32
        );
    }
    assert_eq!(
        ask("mongo_cps", &[("database", "users")])
            .await
            .limit_remaining,
        499
    );
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A file of domain `domain` with one descriptor `key`.
fn domain_file(domain: &str, key: &str) -> String {
    format!(
        "domain: {domain}\ndescriptors:\n  - key: {key}\n    rate_limit: {{ unit: second, requests_per_unit: 1 }}\n"
    )
}

fn envoy_source(dir: &Path, ignore_dot_files: bool, merge_domains: bool) -> ConfigSource {
    ConfigSource {
        config: None,
        envoy: Some(dir.to_owned()),
        ignore_dot_files,
        merge_domains,
        ..ConfigSource::default()
    }
}

fn domains(source: &ConfigSource) -> Vec<String> {
    let mut names: Vec<String> = source.load().unwrap().domains.into_keys().collect();
    names.sort_unstable();
    names
}

/// As envoyproxy/ratelimit's file provider reads its runtime directory:
/// every file whatever its name, subdirectories at any depth, dot files
/// unless told to skip them, links to files but never into directories.
#[test]
fn directories_load_as_envoyproxy_ratelimit_s_file_provider_does() {
    let dir = tollgate_testkit::files::temp_dir("envoy-walk");
    write(&dir.join("plain.yaml"), &domain_file("plain", "k"));
    write(&dir.join("no_extension"), &domain_file("no_extension", "k"));
    write(&dir.join("notes.txt"), &domain_file("txt", "k"));
    write(&dir.join("team/a/deep.yml"), &domain_file("deep", "k"));
    write(&dir.join(".dot.yaml"), &domain_file("dot", "k"));
    write(
        &dir.join(".hidden_dir/inside.yaml"),
        &domain_file("inside_dot_dir", "k"),
    );
    let outside = tollgate_testkit::files::temp_dir("envoy-walk-outside");
    write(&outside.join("linked.yaml"), &domain_file("linked", "k"));
    write(&outside.join("sub/never.yaml"), &domain_file("never", "k"));
    std::os::unix::fs::symlink(outside.join("linked.yaml"), dir.join("link.yaml")).unwrap();
    std::os::unix::fs::symlink(outside.join("sub"), dir.join("linked_dir")).unwrap();
    std::os::unix::fs::symlink(dir.join("gone.yaml"), dir.join("dangling.yaml")).unwrap();
    assert_eq!(
        domains(&envoy_source(&dir, false, false)),
        [
            "deep",
            "dot",
            "inside_dot_dir",
            "linked",
            "no_extension",
            "plain",
            "txt"
        ]
    );
    assert_eq!(
        domains(&envoy_source(&dir, true, false)),
        ["deep", "linked", "no_extension", "plain", "txt"]
    );
    // Every file is one configuration: one that is not a domain file
    // refuses them all.
    write(&dir.join("README.md"), "# Rate limits\n\nSee the files.\n");
    let error = envoy_source(&dir, true, false)
        .load()
        .unwrap_err()
        .to_string();
    assert!(error.contains("README.md"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(outside).unwrap();
}

/// A Kubernetes ConfigMap mount holds every file twice (the visible link
/// and the file in a hidden timestamped directory): with dot files read,
/// the domain is defined twice, as envoyproxy/ratelimit finds it; skipping
/// them (RUNTIME_IGNOREDOTFILES) reads each once.
#[test]
fn a_configmap_mount_needs_dot_files_ignored() {
    let dir = tollgate_testkit::files::temp_dir("envoy-configmap");
    write(
        &dir.join("..2026_01_01/limits.yaml"),
        &domain_file("cm", "k"),
    );
    std::os::unix::fs::symlink("..2026_01_01", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/limits.yaml", dir.join("limits.yaml")).unwrap();
    assert_eq!(domains(&envoy_source(&dir, true, false)), ["cm"]);
    let error = envoy_source(&dir, false, false)
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("domain `cm` is defined in another file too"),
        "{error}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn merge_domains_joins_files_of_one_domain() {
    let dir = tollgate_testkit::files::temp_dir("envoy-merge");
    write(&dir.join("one.yaml"), &domain_file("shared", "a"));
    write(&dir.join("two.yaml"), &domain_file("shared", "b"));
    let error = envoy_source(&dir, false, false)
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("two.yaml:1: domain `shared` is defined in another file too"),
        "{error}"
    );
    let config = envoy_source(&dir, false, true).load().unwrap();
    let shared = &config.domains["shared"];
    assert!(shared.find(&[("a", "1")]).is_some() && shared.find(&[("b", "1")]).is_some());
    write(&dir.join("three.yaml"), &domain_file("shared", "a"));
    let error = envoy_source(&dir, false, true)
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("three.yaml:1: merging into domain `shared`: duplicate descriptor `a`"),
        "{error}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_takes_envoy_files_alone() {
    let dir = tollgate_testkit::files::temp_dir("envoy-check");
    write(&dir.join("d.yaml"), &domain_file("d", "k"));
    let args = tollgate_server::cli::CheckArgs {
        config: None,
        envoy_config: Some(dir.join("d.yaml")),
        envoy_ignore_dot_files: false,
        envoy_merge_domains: false,
    };
    let summary = tollgate_server::cli::run_check(&args).unwrap();
    assert!(
        summary.contains("1 envoy domains with 1 inline limits"),
        "{summary}"
    );
    write(
        &dir.join("d.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight }\n",
    );
    let error = tollgate_server::cli::run_check(&args)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("d.yaml:3:5:") && error.contains("unknown unit `fortnight`"),
        "{error}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// As envoyproxy/ratelimit: a refused file does not stop the server; it
/// answers every call with an error until a reload loads the files.
#[tokio::test]
async fn refused_files_at_start_leave_the_server_without_them_until_fixed() {
    let dir = tollgate_testkit::files::temp_dir("envoy-refused");
    write(&dir.join("good.yaml"), &domain_file("good", "k"));
    write(
        &dir.join("bad.yaml"),
        "domain: bad\ndescriptors:\n  - key: k\n    rate_limit: { unit: parsec }\n",
    );
    let mut server = TestServer::start_with(
        Backend::memory(),
        "",
        envoy_source(&dir, false, false),
        ServerOptions::default()
            .watch_interval(None)
            .reload_on_sighup(false),
    )
    .await;
    let unloaded = server.app.current().config.envoy_unloaded.clone().unwrap();
    assert!(unloaded.contains("bad.yaml:3:5"), "{unloaded}");
    let mut client = server.rls_client().await;
    let request = RateLimitRequest {
        domain: "good".to_owned(),
        descriptors: vec![descriptor(&[("k", "v")], None)],
        hits_addend: 0,
    };
    let status = client.should_rate_limit(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unknown);
    assert!(
        status
            .message()
            .contains("no rate limit configuration loaded")
    );
    // A reload that still fails keeps it so; a fixed file loads.
    assert!(server.app.reload().is_err());
    std::fs::remove_file(dir.join("bad.yaml")).unwrap();
    server.app.reload().unwrap();
    let response = client
        .should_rate_limit(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.statuses[0].limit_remaining, 0);
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("ratelimit_service_config_load_success 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ratelimit_service_config_load_error 2\n"),
        "{metrics}"
    );
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A path that is not there stops the start, as it stops
/// envoyproxy/ratelimit.
#[test]
fn a_missing_envoy_path_is_an_error_at_start() {
    let dir = tollgate_testkit::files::temp_dir("envoy-missing");
    let error = envoy_source(&dir.join("nothing"), false, false)
        .load_or_unloaded()
        .unwrap_err()
        .to_string();
    assert!(error.contains("nothing"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Waits (bounded) until the server's Envoy domains are `expected`.
async fn wait_for_domains(server: &TestServer, expected: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut names: Vec<String> = server
            .app
            .current()
            .config
            .domains
            .keys()
            .cloned()
            .collect();
        names.sort_unstable();
        if names == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "domains {names:?}, expected {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Watched: a ConfigMap's `..data` swap (dot files ignored), and a file
/// added in a subdirectory, are reloaded.
#[tokio::test]
async fn a_configmap_swap_and_a_file_in_a_subdirectory_are_reloaded() {
    let dir = tollgate_testkit::files::temp_dir("envoy-cm-watch");
    write(&dir.join("..v1/limits.yaml"), &domain_file("first", "k"));
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/limits.yaml", dir.join("limits.yaml")).unwrap();
    let mut server = TestServer::start_with(
        Backend::memory(),
        "",
        envoy_source(&dir, true, false),
        ServerOptions::default()
            .watch_interval(Some(std::time::Duration::from_millis(50)))
            .reload_on_sighup(false),
    )
    .await;
    wait_for_domains(&server, &["first"]).await;
    write(&dir.join("..v2/limits.yaml"), &domain_file("second", "k"));
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for_domains(&server, &["second"]).await;
    write(&dir.join("team/extra"), &domain_file("extra", "k"));
    wait_for_domains(&server, &["extra", "second"]).await;
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
