//! The Redis process helpers start real servers, clusters and sentinel
//! groups, and killing, restarting, hanging, failing over and dropping them
//! does what a store's tests rely on.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use tollgate_testkit::redis::{RedisCluster, RedisSentinel, RedisServer, SentinelSetup};

/// Sends an inline `PING` and returns the first reply line, waiting at most
/// 200 ms for it.
fn ping(port: u16) -> io::Result<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    (&stream).write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[test]
fn a_standalone_server_answers_ping_and_set_get() {
    let server = RedisServer::start();
    assert_eq!(ping(server.port()).unwrap(), "+PONG");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_eq!(server.cli(&["SET", "tollgate:key", "41"]), "OK");
    assert_eq!(server.cli(&["INCR", "tollgate:key"]), "42");
    assert_eq!(server.cli(&["GET", "tollgate:key"]), "42");
    let info = server.cli(&["INFO", "server"]);
    assert!(
        info.contains(&format!("process_id:{}", server.pid())),
        "{info}"
    );
}

#[test]
fn extra_arguments_reach_the_server() {
    let server = RedisServer::start_with(&["--maxmemory", "1mb"]);
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n1048576"
    );
    // The defaults hold: nothing is persisted, only loopback is served.
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );
    assert_eq!(server.cli(&["CONFIG", "GET", "save"]), "save");
    assert_eq!(server.cli(&["CONFIG", "GET", "bind"]), "bind\n127.0.0.1");
}

#[test]
fn two_servers_get_different_ports() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    assert_ne!(first.port(), second.port());
    first.cli(&["SET", "only-here", "1"]);
    assert_eq!(second.cli(&["EXISTS", "only-here"]), "0");
}

#[test]
fn kill_makes_connections_fail_and_is_idempotent() {
    let mut server = RedisServer::start();
    let pid = server.pid();
    server.kill();
    let error = ping(server.port()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    server.kill();
}

#[test]
fn restart_comes_back_on_the_same_port_with_no_data() {
    let mut server = RedisServer::start_with(&["--maxmemory", "2mb"]);
    let port = server.port();
    let first_pid = server.pid();
    server.cli(&["SET", "before", "1"]);
    server.kill();
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), first_pid);
    assert_eq!(ping(port).unwrap(), "+PONG");
    assert_eq!(server.cli(&["EXISTS", "before"]), "0");
    // The same arguments again.
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n2097152"
    );
    // Restarting a running server replaces it.
    let second_pid = server.pid();
    server.restart();
    assert_ne!(server.pid(), second_pid);
    assert!(!Path::new(&format!("/proc/{second_pid}")).exists());
    assert_eq!(ping(port).unwrap(), "+PONG");
}

#[test]
fn sigstop_hangs_the_server_and_sigcont_resumes_it() {
    let server = RedisServer::start();
    server.stop_signal();
    let error = ping(server.port()).unwrap_err();
    assert!(is_timeout(&error), "expected a timeout, got {error}");
    server.cont_signal();
    assert_eq!(ping(server.port()).unwrap(), "+PONG");
}

#[test]
fn drop_leaves_no_process_even_when_stopped() {
    let server = RedisServer::start();
    let pid = server.pid();
    let port = server.port();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    server.stop_signal();
    drop(server);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(ping(port).is_err());
}

#[test]
fn drop_during_a_panic_leaves_no_process() {
    let (pid_sender, pid_receiver) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let server = RedisServer::start();
        pid_sender.send(server.pid()).unwrap();
        panic!("the test failed while the server ran");
    })
    .join();
    assert!(outcome.is_err());
    let pid = pid_receiver.recv().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn a_three_master_cluster_is_ok_with_every_slot_assigned() {
    let mut cluster = RedisCluster::start(3, 0);
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.master_ports().len(), 3);
    for node in cluster.nodes() {
        let info = node.cli(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
    // Keys are spread by slot: `redis-cli -c` follows redirections.
    let node = &cluster.nodes()[0];
    for key in ["a", "b", "c", "d"] {
        assert_eq!(node.cli(&["-c", "SET", key, "1"]), "OK");
    }
}

#[test]
fn a_cluster_with_replicas_fails_over_when_a_master_dies() {
    let mut cluster = RedisCluster::start(3, 1);
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.urls().len(), 6);
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3);
    let nodes = cluster.nodes()[0].cli(&["CLUSTER", "NODES"]);
    assert_eq!(
        nodes.lines().filter(|l| l.contains("slave")).count(),
        3,
        "{nodes}"
    );

    let dead = masters[0];
    let node = cluster
        .nodes()
        .iter_mut()
        .find(|n| n.port() == dead)
        .unwrap();
    node.kill();
    cluster.wait_until_ok(Duration::from_secs(15));
    let after = cluster.master_ports();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!after.contains(&dead), "{after:?}");

    // The old master comes back as the same node and rejoins as a replica.
    let node = cluster
        .nodes()
        .iter_mut()
        .find(|n| n.port() == dead)
        .unwrap();
    node.restart();
    cluster.wait_until_ok(Duration::from_secs(15));
    // The rejoined node first believes its old `nodes.conf` (a master) and
    // turns into a replica only when gossip tells it that its slots moved,
    // so a single look right after `wait_until_ok` may still see it as a
    // (slot-less) master. Wait for the outcome instead of sampling once.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let masters = cluster.master_ports();
        if !masters.contains(&dead) {
            assert_eq!(masters.len(), 3, "{masters:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.1:{dead} still a master 15 s after rejoining: {masters:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_unix_socket_server_answers_on_its_socket_and_removes_it_on_drop() {
    use std::os::unix::net::UnixStream;

    let server = RedisServer::start_with_unix_socket(&[]);
    let socket = server.unix_socket();
    assert_eq!(server.unix_url(), format!("unix://{}", socket.display()));
    let stream = UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    (&stream).write_all(b"PING\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "+PONG");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "unixsocketperm"]),
        "unixsocketperm\n700"
    );
    drop(server);
    assert!(
        !socket.exists(),
        "the socket's directory is removed on drop"
    );
}

#[test]
fn a_sentinel_group_agrees_fails_over_and_leaves_no_process() {
    let mut group = RedisSentinel::start();
    let first = group.servers()[0].port();
    assert_eq!(
        group.master_port(),
        first,
        "the first server starts as the master"
    );
    let sentinels = group.sentinel_ports();
    assert_eq!(sentinels.len(), 3);
    for port in &sentinels {
        assert_eq!(ping(*port).unwrap(), "+PONG", "sentinel {port}");
    }
    let replica = group.servers()[1].port();
    assert!(
        group
            .query(replica, &["ROLE"])
            .unwrap()
            .starts_with("slave")
    );

    let new = group.failover();
    assert_eq!(new, replica, "the only replica is promoted");
    assert_eq!(group.master_port(), replica);
    assert!(group.query(first, &["ROLE"]).unwrap().starts_with("slave"));

    let (old, promoted) = group.kill_master();
    assert_eq!((old, promoted), (replica, first), "and back to the first");
    drop(group);
    for port in sentinels.iter().chain([&first, &replica]) {
        assert!(ping(*port).is_err(), "port {port} is closed after drop");
    }
}

#[test]
fn a_sentinel_group_with_passwords_refuses_who_has_none() {
    let group = RedisSentinel::start_with(
        SentinelSetup::default()
            .nodes(0, 1)
            .master_password("m-pw")
            .sentinel_password("s-pw"),
    );
    let urls = group.sentinel_urls();
    assert_eq!(
        urls,
        [format!(
            "redis://:s-pw@127.0.0.1:{}",
            group.sentinel_ports()[0]
        )]
    );
    assert!(
        ping(group.sentinel_ports()[0])
            .unwrap()
            .starts_with("-NOAUTH")
    );
    let master = group.master_port();
    assert!(ping(master).unwrap().starts_with("-NOAUTH"));
    assert_eq!(group.query(master, &["PING"]).unwrap(), "PONG");
}
