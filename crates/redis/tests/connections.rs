//! URL forms against real servers: TLS (rediss://, rustls) with a private
//! CA and with a client certificate, an ACL user with a password, a
//! database number, and unix sockets.

use tollgate::Limiter;
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::ports::free_port;
use tollgate_testkit::redis::RedisServer;
use tollgate_testkit::tls::Certificates;

#[tokio::test]
async fn rediss_with_a_private_ca() {
    let dir = temp_dir("tls");
    let files = Certificates::create(&dir);
    let tls_port = free_port();
    let args = files.redis_args(tls_port, false);
    let server = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca = std::fs::read(&files.ca).expect("ca");
    let store = RedisStore::connect(&url, RedisOptions::default().tls_root_cert(ca))
        .await
        .expect("TLS connection");
    let limiter = Limiter::builder(store)
        .policy("api", "fixed_window 2/1h".parse().expect("valid"))
        .build();
    assert_eq!(
        limiter
            .check("api", "tls-client", 1)
            .await
            .expect("decides over TLS")
            .remaining,
        1
    );
    assert_eq!(
        server.cli(&["EXISTS", "tollgate:{tls-client}:api:fixed_window"]),
        "1",
        "state written through TLS"
    );
    // The public roots do not trust a private CA: connecting must fail, not
    // silently fall back to plain text.
    let err = RedisStore::connect(&url, RedisOptions::default())
        .await
        .expect_err("untrusted certificate");
    assert!(err.to_string().contains("connect"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn acl_user_password_and_database_from_the_url() {
    let server = RedisServer::start();
    server.cli(&[
        "ACL", "SETUSER", "limiter", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    // From here on, only the ACL user can log in.
    server.cli(&["ACL", "SETUSER", "default", "off"]);
    let url = format!("redis://limiter:s3cret@127.0.0.1:{}/3", server.port());
    let store = RedisStore::connect(&url, RedisOptions::default())
        .await
        .expect("ACL login");
    let limiter = Limiter::builder(store)
        .policy("api", "fixed_window 2/1h".parse().expect("valid"))
        .build();
    assert!(
        limiter
            .check("api", "acl-client", 1)
            .await
            .expect("decides")
            .allowed
    );
    let in_db3 = server.cli(&[
        "--user",
        "limiter",
        "--pass",
        "s3cret",
        "--no-auth-warning",
        "-n",
        "3",
        "EXISTS",
        "tollgate:{acl-client}:api:fixed_window",
    ]);
    assert_eq!(in_db3, "1", "the key lives in database 3");
    let wrong = format!("redis://limiter:wrong@127.0.0.1:{}/3", server.port());
    let err = RedisStore::connect(&wrong, RedisOptions::default())
        .await
        .expect_err("bad password");
    assert!(
        !err.to_string().contains("wrong"),
        "the password is not echoed: {err}"
    );
}

#[tokio::test]
async fn unix_socket_urls_with_database_password_and_prefix() {
    let server = RedisServer::start_with_unix_socket(&[]);
    server.cli(&["CONFIG", "SET", "requirepass", "s0cket"]);
    let socket = server.unix_socket();
    let socket = socket.display();
    for (url, db) in [
        (format!("unix://{socket}?pass=s0cket"), "0"),
        (format!("redis+unix://{socket}?db=2&pass=s0cket"), "2"),
    ] {
        let store = RedisStore::connect(&url, RedisOptions::default().prefix("sock"))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let limiter = Limiter::builder(store)
            .policy("api", "fixed_window 2/1h".parse().expect("valid"))
            .build();
        let decision = limiter
            .check("api", "unix-client", 1)
            .await
            .expect("decides");
        assert_eq!((decision.allowed, decision.remaining), (true, 1), "{url}");
        let exists = server.cli(&[
            "-a",
            "s0cket",
            "--no-auth-warning",
            "-n",
            db,
            "EXISTS",
            "sock:{unix-client}:api:fixed_window",
        ]);
        assert_eq!(
            exists, "1",
            "{url}: the key, under the prefix, in database {db}"
        );
    }
    // A wrong password fails without echoing it; so does a missing socket.
    let wrong = format!("unix://{socket}?pass=wr0ng");
    let err = RedisStore::connect(&wrong, RedisOptions::default())
        .await
        .expect_err("bad password");
    assert!(!err.to_string().contains("wr0ng"), "{err}");
    let missing = format!("unix://{socket}.missing");
    let err = RedisStore::connect(&missing, RedisOptions::default())
        .await
        .expect_err("no such socket");
    assert!(err.to_string().contains("connect"), "{err}");
}

#[tokio::test]
async fn rediss_with_a_client_certificate() {
    let dir = temp_dir("mtls");
    let files = Certificates::create(&dir);
    let tls_port = free_port();
    let args = files.redis_args(tls_port, true);
    let server = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca = std::fs::read(&files.ca).expect("ca");
    let cert = std::fs::read(&files.client_cert).expect("cert");
    let key = std::fs::read(&files.client_key).expect("key");
    let options = RedisOptions::default()
        .prefix("mtls")
        .connect_timeout(std::time::Duration::from_secs(5))
        .tls_root_cert(ca.clone())
        .tls_client_cert(cert, key.clone());
    assert!(
        !format!("{options:?}").contains("PRIVATE KEY"),
        "the key is not printed"
    );
    let store = RedisStore::connect(&url, options)
        .await
        .expect("mutual TLS connection");
    let limiter = Limiter::builder(store)
        .policy("api", "fixed_window 2/1h".parse().expect("valid"))
        .build();
    let decision = limiter
        .check("api", "mtls-client", 1)
        .await
        .expect("decides");
    assert_eq!((decision.allowed, decision.remaining), (true, 1));
    assert_eq!(
        server.cli(&["EXISTS", "mtls:{mtls-client}:api:fixed_window"]),
        "1"
    );
    // Without the client certificate the server refuses the handshake.
    let no_cert = RedisStore::connect(&url, RedisOptions::default().tls_root_cert(ca)).await;
    assert!(no_cert.is_err(), "connected without a client certificate");
    std::fs::remove_dir_all(&dir).ok();
}
